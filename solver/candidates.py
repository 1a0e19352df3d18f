"""Candidate plans: every strategy turned into a `hybridps.spec.Plan`, plus a closed-form
time estimate used to pre-rank them before the simulator scores them.

Strategies (docs/solver.md):
- `uniform`   the conventional baseline: every worker base_batch (capped at max_batch),
              equal shares, bsp + gradient exchange, highest resolution, no compression;
- `dbsl`      dual batch size learning (solver.dbsl), asp + model exchange per mini-epoch;
- `balanced`  bsp + gradient exchange with MILP batch sizes (solver.balanced);
- `sync-switch` balanced batches, bsp for the first fraction f of the epochs, then asp;
- `ssp`       balanced batches, ssp with a staleness bound, gradient exchange.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hybridps.errors import UserError
from hybridps.spec import Cluster, Compression, Job, Phase, Plan, WorkerAssignment, check_plan
from solver.balanced import BalancedSolution, solve_balanced
from solver.dbsl import dbsl_allocation, small_workers, speed_order
from solver.schedule import Stage, layout, split_at
from solver.timemodel import coeffs, eval_overhead_s, exchange_cost, ps_capacity_bytes_per_s

STRATEGIES = ("uniform", "dbsl", "balanced", "sync-switch", "ssp")
COMPRESSIONS = {
    "none": Compression(),
    "topk": Compression(kind="topk", ratio=0.01),
    "onebit": Compression(kind="onebit"),
}
SWITCH_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2)
STALENESS = (1, 3)


@dataclass(frozen=True)
class Candidate:
    strategy: str
    params: dict[str, Any]
    plan: Plan
    estimate_s: float  # closed-form makespan estimate
    bsp_fraction: float  # share of the epochs trained under bsp

    @property
    def label(self) -> str:
        inner = ", ".join(f"{k}={_fmt(v)}" for k, v in self.params.items())
        return f"{self.strategy}({inner})"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def make_phase(stage: Stage, workers: tuple[WorkerAssignment, ...], sync: str, exchange: str,
               compression: Compression = Compression(), staleness: int | None = None) -> Phase:
    return Phase(epochs=stage.epochs, resolution=stage.resolution, sync=sync, staleness=staleness,
                 exchange=exchange, local_steps=None, lr=stage.lr, compression=compression,
                 workers=list(workers))


def make_plan(cluster: Cluster, job: Job, phases: list[Phase], meta: dict[str, Any]) -> Plan:
    plan = Plan(format="hybridps.plan/1", phases=phases, meta=meta)
    check_plan(plan, cluster, job, "<solver plan>")
    return plan


# --------------------------------------------------------------------------- strategies


def uniform_workers(cluster: Cluster, job: Job, resolution: int) -> tuple[WorkerAssignment, ...]:
    """Every worker base_batch (capped at the smallest max_batch), equal shares, equal iterations."""
    c = coeffs(cluster, resolution)
    n = len(c.names)
    N = job.data.samples
    if N < n:
        raise UserError(f"the dataset ({N} samples per epoch, data.samples) cannot be covered: each of the "
                        f"{n} workers needs at least one sample")
    batch = int(min(job.train.base_batch, int(c.max_batch.min())))
    base, extra = divmod(N, n)
    shares = [base + (1 if i < extra else 0) for i in range(n)]
    if len({math.ceil(d / batch) for d in shares}) > 1:
        shares = [base] * n  # keeps the iteration count equal; the sum is within ±n of N
    return tuple(WorkerAssignment(name=c.names[i], batch=batch, samples=shares[i]) for i in range(n))


def uniform_plan(cluster: Cluster, job: Job) -> tuple[Plan, dict]:
    stages = layout(job, "fixed")
    phases = [make_phase(s, uniform_workers(cluster, job, s.resolution), "bsp", "gradient") for s in stages]
    return make_plan(cluster, job, phases, {}), {}


def dbsl_allocations(cluster: Cluster, job: Job, time_ratio: float, small: int, schedule: str,
                     substages: int | None = None, memo: dict | None = None) -> tuple[list[Stage], dict]:
    """The stages and the DBSL allocation per resolution (UserError if infeasible); `memo`
    shares allocations between schedules (they depend on the resolution, not the schedule)."""
    stages = layout(job, schedule, substages)
    top = max(job.train.resolutions)
    memo = {} if memo is None else memo
    allocs = {}
    for r in {s.resolution for s in stages}:
        if (r, small) not in memo:
            if "order" not in memo:
                memo["order"] = speed_order(cluster, top)
            if r not in memo:
                memo[r] = coeffs(cluster, r)
            chosen = small_workers(cluster, top, small, memo["order"])  # the same small workers in every phase
            memo[(r, small)] = dbsl_allocation(cluster, job, r, time_ratio, small, chosen, memo[r])
        allocs[r] = memo[(r, small)]
    return stages, allocs


def dbsl_plan(cluster: Cluster, job: Job, time_ratio: float, small: int, schedule: str,
              substages: int | None = None, built: tuple[list[Stage], dict] | None = None) -> tuple[Plan, dict]:
    stages, allocs = built or dbsl_allocations(cluster, job, time_ratio, small, schedule, substages)
    top = max(job.train.resolutions)
    phases = [make_phase(s, allocs[s.resolution].workers, "asp", "model") for s in stages]
    info = {"small_workers": list(allocs[top].small) if top in allocs else [],
            "budget_s_per_epoch": {str(r): a.budget_s for r, a in sorted(allocs.items())}}
    return make_plan(cluster, job, phases, {}), info


def dbsl_estimate_s(cache: "EstimateCache", stages: list[Stage], allocs: dict) -> float:
    """`estimate_makespan_s` of the DBSL plan these allocations make, without building it
    (the same arithmetic on the same arrays, so the same float; the rate of each
    allocation is computed once)."""
    cluster, N = cache.cluster, cache.job.data.samples
    total = 0.0
    for st in stages:
        total += st.epochs * N / cache.dbsl_rate(allocs[st.resolution])
    return (total + (len(stages) - 1) * cluster.ps.phase_overhead_s
            + eval_overhead_s(cluster, [s.epochs for s in stages]))


class BalancedCache:
    """One MILP per (resolution, compression kind): candidates share them."""

    def __init__(self, cluster: Cluster, job: Job, solver: str = "exact", time_limit_s: float = 10.0,
                 gap_rel: float = 1e-6, share_milps: bool = True):
        self.cluster, self.job = cluster, job
        self.solver, self.time_limit_s, self.gap_rel = solver, time_limit_s, gap_rel
        self._cache: dict[tuple[int, str], BalancedSolution] = {}
        # fixed-K MILPs shared across compressions (solve_balanced's memo); False: each solves its own
        self._milps: dict | None = {} if share_milps else None

    def get(self, resolution: int, compression: Compression) -> BalancedSolution:
        key = (resolution, compression.kind)
        if key not in self._cache:
            self._cache[key] = solve_balanced(self.cluster, self.job, resolution, compression, self.solver,
                                              self.time_limit_s, self.gap_rel, memo=self._milps)
        return self._cache[key]


def _milp_meta(sols: dict[int, BalancedSolution]) -> dict:
    return {str(r): s.meta() for r, s in sorted(sols.items())}


def balanced_plan(cache: BalancedCache, schedule: str, compression: str,
                  bsp_epochs: int | None = None, staleness: int | None = None,
                  substages: int | None = None) -> tuple[Plan, dict]:
    """bsp throughout (`bsp_epochs=None`), or bsp then asp/ssp after `bsp_epochs` epochs."""
    cluster, job = cache.cluster, cache.job
    comp = COMPRESSIONS[compression]
    stages = layout(job, schedule, substages)
    sols = {r: cache.get(r, comp) for r in {s.resolution for s in stages}}
    if staleness is not None:
        phases = [make_phase(s, sols[s.resolution].workers, "ssp", "gradient", comp, staleness) for s in stages]
    elif bsp_epochs is None:
        phases = [make_phase(s, sols[s.resolution].workers, "bsp", "gradient", comp) for s in stages]
    else:
        before, after = split_at(stages, bsp_epochs)
        phases = ([make_phase(s, sols[s.resolution].workers, "bsp", "gradient", comp) for s in before]
                  + [make_phase(s, sols[s.resolution].workers, "asp", "gradient", comp) for s in after])
    return make_plan(cluster, job, phases, {}), {"milp": _milp_meta(sols)}


# --------------------------------------------------------------------------- estimate


class EstimateCache:
    """Per-resolution coefficients and per-compression exchange costs, shared by every
    estimate of one generate() call (they depend on the cluster and job only)."""

    def __init__(self, cluster: Cluster, job: Job):
        self.cluster, self.job = cluster, job
        self._coeffs: dict[int, Any] = {}
        self._exchange: dict[Compression, Any] = {}
        self._indices: dict[tuple[str, ...], list[int]] = {}
        self._dbsl: dict[tuple, float] = {}

    def indices(self, names: tuple[str, ...]) -> list[int]:
        """Global worker indices of `names` (memoised: every DBSL variant lists all workers)."""
        if names not in self._indices:
            self._indices[names] = [self.cluster.worker_by_name[n].index for n in names]
        return self._indices[names]

    def coeffs(self, resolution: int):
        if resolution not in self._coeffs:
            self._coeffs[resolution] = coeffs(self.cluster, resolution)
        return self._coeffs[resolution]

    def exchange(self, compression: Compression):
        if compression not in self._exchange:
            self._exchange[compression] = exchange_cost(self.cluster, self.job, compression)
        return self._exchange[compression]

    def dbsl_rate(self, alloc) -> float:
        """`async_rate` of a DBSL allocation (asp, one exchange per mini-epoch), memoised:
        the stages and schedules that use one allocation share it (an allocation is fixed
        by its resolution, budget and small workers)."""
        key = (alloc.resolution, alloc.budget_s, alloc.small)
        if key not in self._dbsl:
            B = np.array(alloc.batches, dtype=float)
            d = np.array(alloc.shares, dtype=float)
            self._dbsl[key] = async_rate(self, alloc.resolution, "asp", Compression(), self.indices(alloc.names),
                                         B, d, np.ceil(d / B))
        return self._dbsl[key]


def estimate_makespan_s(cluster: Cluster, job: Job, plan: Plan, cache: EstimateCache | None = None) -> float:
    """Closed-form makespan (no stragglers): bsp phases pay K rounds of the slowest step plus
    a concurrent exchange; asp/ssp phases run at the workers' summed throughput, each
    interval paying an uncontended exchange, scaled down if the PS NICs saturate; ssp
    additionally holds every worker to the slowest worker's exchange rate."""
    cache = cache or EstimateCache(cluster, job)
    total = 0.0
    for ph in plan.phases:
        idx = [cluster.worker_by_name[w.name].index for w in ph.workers]
        B = np.array([w.batch for w in ph.workers], dtype=float)
        d = np.array([w.samples for w in ph.workers], dtype=float)
        E = np.array([ph.exchange_every(w) for w in ph.workers], dtype=float)
        total += phase_estimate_s(cache, ph.epochs, ph.resolution, ph.sync, ph.compression, idx, B, d, E)
    return total + phase_overheads_s(cluster, plan) + eval_overhead_s(cluster, [ph.epochs for ph in plan.phases])


def phase_estimate_s(cache: EstimateCache, epochs: int, resolution: int, sync: str, compression: Compression,
                     idx: list[int], B: np.ndarray, d: np.ndarray, E: np.ndarray) -> float:
    """One phase of `estimate_makespan_s`, from the workers' batch, share and exchange
    interval arrays (so DBSL variants can be estimated before a Plan is built)."""
    if sync == "bsp":
        c = cache.coeffs(resolution)
        a, b = c.a_s[idx], c.b_s[idx]
        K = np.ceil(d / B)
        last = d - (K - 1) * B
        epoch = float(((K - 1) * (a * B + b)).max() + (a * last + b).max()
                      + K.max() * cache.exchange(compression).concurrent_s.max())
        return epochs * epoch
    return epochs * cache.job.data.samples / async_rate(cache, resolution, sync, compression, idx, B, d, E)


def async_rate(cache: EstimateCache, resolution: int, sync: str, compression: Compression,
               idx: list[int], B: np.ndarray, d: np.ndarray, E: np.ndarray) -> float:
    """An asp/ssp phase's samples per second: the workers' summed throughput, each interval
    paying an uncontended exchange, scaled down if the PS NICs saturate; ssp holds every
    worker to the slowest worker's exchange rate."""
    c = cache.coeffs(resolution)
    a, b = c.a_s[idx], c.b_s[idx]
    ex = cache.exchange(compression)
    per_interval_samples = np.minimum(E * B, d)
    interval_s = per_interval_samples * a + np.ceil(per_interval_samples / B) * b + ex.alone_s[idx]
    rate = per_interval_samples / interval_s  # samples/s
    if sync == "ssp":
        ex_rate = (1.0 / interval_s).min()
        rate = per_interval_samples * ex_rate
    exchanges_per_s = rate / per_interval_samples
    # push and pull are separate directions of the full-duplex PS NICs: the busier one binds
    push_bytes_per_s = float(np.sum(exchanges_per_s * ex.push_bytes[idx]))
    pull_bytes_per_s = float(np.sum(exchanges_per_s * ex.pull_bytes))
    load = max(push_bytes_per_s, pull_bytes_per_s) / ps_capacity_bytes_per_s(cache.cluster)
    if load > 1:
        rate = rate / load
    return float(rate.sum())


def phase_overheads_s(cluster: Cluster, plan: Plan) -> float:
    """Time between phases (evaluation, checkpoint): `ps.phase_overhead_s` per boundary."""
    return (len(plan.phases) - 1) * cluster.ps.phase_overhead_s


def bsp_fraction(plan: Plan) -> float:
    total = sum(p.epochs for p in plan.phases)
    return sum(p.epochs for p in plan.phases if p.sync == "bsp") / total


# --------------------------------------------------------------------------- generation


def _dbsl_variants(cluster: Cluster, job: Job, cons: Constraints, schedule: str, memo: dict) -> list:
    """[(small_workers, (stages, allocations))] for every feasible small-worker count."""
    explicit = cons.small_workers is not None
    counts = cons.small_workers if explicit else tuple(range(len(cluster.worker_list)))
    variants = []
    for s in counts:
        try:
            variants.append((s, dbsl_allocations(cluster, job, cons.time_ratio, s, schedule, cons.substages, memo)))
        except UserError as e:
            # enumerated counts that the budget cannot meet are skipped; the user's own
            # count, t < 1, or no feasible dbsl plan when dbsl is all that was asked is an error
            if explicit or cons.time_ratio < 1 or (s == 0 and set(cons.strategies) == {"dbsl"}):
                raise
            cons.extra.setdefault("skipped", []).append(f"dbsl small_workers={s}: {e}")
    return variants


@dataclass
class Constraints:
    """What the user allows; the objective (time) is minimised inside these."""

    strategies: tuple[str, ...] = STRATEGIES
    time_ratio: float = 1.05
    small_workers: tuple[int, ...] | None = None  # None: 0..n-1
    min_bsp_fraction: float = 0.0
    sync_modes: tuple[str, ...] = ("bsp", "asp", "ssp")
    compressions: tuple[str, ...] = ("none", "topk", "onebit")
    schedules: tuple[str, ...] = ("fixed", "cyclic")
    substages: int | None = None  # cyclic sub-stages per LR stage (None: one per resolution)
    switch_fractions: tuple[float, ...] = SWITCH_FRACTIONS
    staleness: tuple[int, ...] = STALENESS
    milp_solver: str = "exact"  # the fixed-K step: exact (no MILP solver), highs or cbc (solver.balanced)
    milp_time_limit_s: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)


def _allowed(plan: Plan, cons: Constraints) -> bool:
    return (all(p.sync in cons.sync_modes for p in plan.phases)
            and bsp_fraction(plan) >= cons.min_bsp_fraction - 1e-12)


def generate(cluster: Cluster, job: Job, cons: Constraints, dbsl_keep: int | None = None,
             share_milps: bool = True) -> list[Candidate]:
    """All candidates the constraints allow, in a fixed order; `uniform` always comes first
    (it is the baseline every result is compared with, allowed or not).

    dbsl_keep = K: of the DBSL variants of each schedule, only the K with the best estimate
    (ties: generation order) become candidates. The search simulates only the best
    `proxy_count` estimates overall plus the best of each strategy, and picks among the
    simulated ones, so with K = proxy_count the dropped variants could never be simulated
    or chosen: the search result is the same (the variants are estimated without building
    their plans, which is most of what generating 500 of them cost on 256 workers).

    share_milps: the balanced MILPs of one resolution share their fixed-K solves across
    compressions (the same plans; False solves each afresh, the old path the bench times)."""
    for s in cons.strategies:
        if s not in STRATEGIES:
            raise UserError(f"unknown strategy {s!r}; use one of: {', '.join(STRATEGIES)}, or all")
    for k in cons.compressions:
        if k not in COMPRESSIONS:
            raise UserError(f"unknown compression {k!r}; use one of: {', '.join(COMPRESSIONS)}")
    out: list[Candidate] = []
    seen: set[str] = set()
    estimates = EstimateCache(cluster, job)

    def add(strategy: str, params: dict, built: tuple[Plan, dict]) -> None:
        plan, info = built
        if strategy != "uniform" and not _allowed(plan, cons):
            return
        key = strategy + repr(plan.model_dump(mode="json")["phases"])
        if key in seen:  # e.g. cyclic == fixed for a job with one resolution
            return
        seen.add(key)
        est = estimate_makespan_s(cluster, job, plan, estimates)
        meta = {"strategy": strategy, "parameters": params, **info}
        plan = plan.model_copy(update={"meta": meta})
        out.append(Candidate(strategy, params, plan, est, bsp_fraction(plan)))

    add("uniform", {"schedule": "fixed", "compression": "none", "batch": uniform_workers(
        cluster, job, max(job.train.resolutions))[0].batch}, uniform_plan(cluster, job))
    gradient_kinds = cons.compressions
    cache = BalancedCache(cluster, job, cons.milp_solver, cons.milp_time_limit_s, share_milps=share_milps)
    dbsl_memo: dict = {}
    for schedule in cons.schedules:
        if "dbsl" in cons.strategies:
            variants = _dbsl_variants(cluster, job, cons, schedule, dbsl_memo)
            if dbsl_keep is not None and len(variants) > dbsl_keep:
                best = sorted(range(len(variants)), key=lambda i: (dbsl_estimate_s(estimates, *variants[i][1]), i))
                kept = set(best[:dbsl_keep])
                cons.extra["dbsl_pruned"] = cons.extra.get("dbsl_pruned", 0) + len(variants) - len(kept)
                variants = [v for i, v in enumerate(variants) if i in kept]
            for s, built in variants:
                add("dbsl", {"schedule": schedule, "small_workers": s, "time_ratio": cons.time_ratio},
                    dbsl_plan(cluster, job, cons.time_ratio, s, schedule, cons.substages, built))
        for comp in gradient_kinds:
            base = {"schedule": schedule, "compression": comp}
            if "balanced" in cons.strategies:
                add("balanced", base, balanced_plan(cache, schedule, comp, substages=cons.substages))
            if "sync-switch" in cons.strategies:
                for f in cons.switch_fractions:
                    bsp_epochs = max(1, round(f * job.train.epochs))
                    add("sync-switch", {**base, "f": f, "bsp_epochs": bsp_epochs},
                        balanced_plan(cache, schedule, comp, bsp_epochs=bsp_epochs, substages=cons.substages))
            if "ssp" in cons.strategies:
                for st in cons.staleness:
                    add("ssp", {**base, "staleness": st},
                        balanced_plan(cache, schedule, comp, staleness=st, substages=cons.substages))
    return out
