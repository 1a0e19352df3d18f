"""Online policies as plan candidates (issue 10; docs/solver.md, "Policies as candidates").

A policy only pays off when workers are slowed for a while, so `plan` tries policies only
when the cluster has transient stragglers (`[stragglers]` with a rate): the best static
all-bsp candidates (by estimate) are tried again with each built-in policy below on their
bsp phases, and scored by the same simulations as every other candidate.
"""

from __future__ import annotations

from typing import Any

from hybridps.spec import Cluster, Job, Plan, PolicySpec
from solver.candidates import Candidate, Constraints, make_plan

# The built-in policies `plan` tries, each with its defaults (docs/policies.md). Their
# detector compares a worker with its own best, so the default threshold (1.5) fires on any
# straggler model slower than that; threshold variants would multiply the simulations for
# little. A built-in joins with one line here.
POLICY_SPECS: tuple[dict[str, Any], ...] = (
    {"kind": "sync-switch-greedy"},
    {"kind": "sync-switch-elastic"},
    {"kind": "lb-rebalance"},
)
# Static candidates tried with each policy: the best this many all-bsp ones by estimate,
# chosen before the proxies so that the policy candidates' proxies run beside the others.
# 1 parent x 2 policies = 2 more proxy simulations; 2 parents made the 64-worker search
# 12-15 % slower (docs/solver.md), and the second parent was the first with another
# compression, the same bsp rounds.
POLICY_PARENTS = 1


def searches_policies(cluster: Cluster, cons: Constraints) -> bool:
    """Policies are tried when the cluster has transient stragglers and asp is allowed
    (both built-ins apply some pushes on their own: stale gradients)."""
    return cluster.stragglers.rate_per_hour > 0 and "asp" in cons.sync_modes


def is_static_bsp(plan: Plan) -> bool:
    """A plan a policy can be added to: every phase bsp, none with a policy yet."""
    return all(ph.sync == "bsp" and ph.policy is None for ph in plan.phases)


def with_policy(cluster: Cluster, job: Job, parent: Candidate, spec: dict[str, Any]) -> Candidate:
    """`parent` with the policy `spec` on each of its bsp phases; its parameters gain
    `policy` (the kind), its meta `policy` and `parent` (the parent's label). The estimate
    is the parent's: the closed form knows no stragglers."""
    policy = PolicySpec(**spec)
    phases = [ph.model_copy(update={"policy": policy}) if ph.sync == "bsp" else ph for ph in parent.plan.phases]
    params = {**parent.params, "policy": spec["kind"]}
    meta = {**parent.plan.meta, "parameters": params, "policy": dict(spec), "parent": parent.label}
    plan = make_plan(cluster, job, phases, meta)
    return Candidate(parent.strategy, params, plan, parent.estimate_s, parent.bsp_fraction)
