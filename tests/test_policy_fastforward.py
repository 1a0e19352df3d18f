"""bsp fast-forward under an online policy (sim/ps.py `_policy_steady`, docs/simulator.md):
a policy that decides on the workers' windowed figures alone (`decides_on_windows`: the
Sync-Switch built-ins) lets steady rounds be skipped once every worker's window holds
intervals alike and it did not act on the template round. Against every round simulated:
the same decisions at the same simulated times, summaries and update logs within the
fast-forward bound (integers exactly, times to 1e-9 relative). Then: it engages (SimPy
events far below every round simulated), and a user's policy keeps it off."""

from __future__ import annotations

import pytest
from test_sim_equivalence import assert_same, update_log
from test_sim_fastforward import N_WORKERS, _count_with, _counting, cluster, job, plan, run, uniform

from hybridps.policy import Observation, Policy, SyncSwitchElastic, SyncSwitchGreedy
from hybridps.spec import plan_from_dict
from sim.ps import ParameterServer

DECISIONS: list[tuple[float, int, tuple]] = []  # (t_s, phase, actions) of the recording policies below


class _Recording:
    def decide(self, obs: Observation):
        actions = super().decide(obs)
        if actions:
            DECISIONS.append((obs.t_s, obs.phase, tuple(actions)))
        return actions


class RecordingGreedy(_Recording, SyncSwitchGreedy):
    """sync-switch-greedy that notes each decision (it still declares decides_on_windows)."""


class RecordingElastic(_Recording, SyncSwitchElastic):
    """sync-switch-elastic that notes each decision."""


class Counting(Policy):
    """A user's policy that never acts: it does not declare decides_on_windows."""

    def decide(self, obs: Observation):
        return ()


def with_policy(c, j, p, policy: dict):
    d = p.to_json_dict()
    for phase in d["phases"]:
        phase["policy"] = policy
    return plan_from_dict(d, cluster=c, job=j)


def decisions_of(c, j, p, fast_forward: bool, **kw):
    DECISIONS.clear()
    result, skipped = run(c, j, p, fast_forward, **kw)
    return result, skipped, list(DECISIONS)


def assert_same_decisions(got, want):
    assert [(phase, actions) for _, phase, actions in got] == [(phase, actions) for _, phase, actions in want]
    assert_same([t for t, _, _ in got], [t for t, _, _ in want])


CASES = [(kind, stragglers, mixed, plan_name) for kind in ("RecordingGreedy", "RecordingElastic")
         for stragglers in (False, True) for mixed, plan_name in ((False, "gradient"), (True, "three-phases"))]


@pytest.mark.parametrize("kind,stragglers,mixed,plan_name", CASES,
                         ids=[f"{k}-{'strag' if s else 'calm'}-{'mixed' if m else 'equal'}-{p}" for k, s, m, p in CASES])
def test_fast_forward_under_a_policy_equals_every_round_simulated(kind, stragglers, mixed, plan_name):
    c, j = cluster(mixed=mixed, stragglers=stragglers), job(epochs=6)
    p = with_policy(c, j, plan(c, j, plan_name), {"kind": "python", "target": f"test_policy_fastforward:{kind}",
                                                 "window": 3})
    fast, skipped, fast_decisions = decisions_of(c, j, p, True)
    full, none, full_decisions = decisions_of(c, j, p, False)
    assert none == 0 and skipped > 0.2 * fast.summary()["updates"] / N_WORKERS
    assert_same(fast.summary(), full.summary())
    assert_same(update_log(fast), update_log(full))
    assert_same(fast.counters.update_log.sync_changes, full.counters.update_log.sync_changes)
    assert_same_decisions(fast_decisions, full_decisions)
    if stragglers:  # episodes of 2x against a threshold of 1.5: the policy acts
        assert full_decisions and fast.summary()["policy_actions"]
    else:
        assert full_decisions == []


def dense(kind: str):
    """Episodes every few rounds on some worker; window 2, so windows change often."""
    c = cluster(mixed=True, shards=2, stragglers=True)
    c = c.model_copy(update={"stragglers": c.stragglers.model_copy(update={"rate_per_hour": 900.0,
                                                                           "mean_duration_s": 1.0})})
    j = job(epochs=10)
    return c, j, with_policy(c, j, plan(c, j, "gradient"), {"kind": kind, "window": 2})


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["sync-switch-greedy", "sync-switch-elastic"])
def test_fast_forward_under_a_policy_between_dense_episodes(kind, seed, monkeypatch):
    c, j, p = dense(kind)
    in_skipped = []  # actions taken at a skipped round (ParameterServer._policy_rounds)
    asked = ParameterServer._policy_rounds

    def counting(ps, workers, k, period_s):
        before = sum(ps.policy_actions.values())
        out = asked(ps, workers, k, period_s)
        in_skipped.append(sum(ps.policy_actions.values()) - before)
        return out

    monkeypatch.setattr(ParameterServer, "_policy_rounds", counting)
    (fast, skipped), (full, _) = run(c, j, p, True, seed=seed), run(c, j, p, False, seed=seed)
    assert 0 < skipped and fast.summary()["policy_actions"]
    if seed == 1:  # this seed has decisions inside skipped rounds: carried out there, the rest not skipped
        assert sum(in_skipped) > 0
    assert_same(fast.summary(), full.summary())
    assert_same(update_log(fast), update_log(full))
    assert_same(fast.counters.update_log.sync_changes, full.counters.update_log.sync_changes)


def test_fast_forward_engages_under_greedy():
    # 16 equal workers, 40 full iterations a worker-epoch, 5 epochs: 200 rounds, and the
    # rounds skipped without a policy (tests/test_sim_fastforward.py): 37 + 4 x 38 = 189.
    # Greedy's windows (5 intervals) are not steady at the first templates: it is asked at
    # each of the first skipped rounds, fed the template's intervals, and never acts.
    c, j, p = uniform(16, 40, 5, policy={"kind": "sync-switch-greedy"})
    (fast, skipped), (full, _) = run(c, j, p, True), run(c, j, p, False)
    assert skipped == 189 and fast.summary()["updates"] == 200 * 16
    assert_same(fast.summary(), full.summary())
    with_ff, without = _count_with(_counting(), c, j, p), _count_with(_counting(), c, j, p, fast_forward=False)
    assert with_ff < 0.1 * without


def test_a_users_policy_keeps_fast_forward_off():
    c, j, p = uniform(4, 20, 3, policy={"kind": "python", "target": "test_policy_fastforward:Counting"})
    fast, skipped = run(c, j, p, True)
    assert skipped == 0 and fast.summary()["updates"] > 0
