"""`balanced`: BSP with gradient exchange on heterogeneous workers, as a MILP.

Formulation. Worker i has step time `t_i(B) = (a_i·B + b_i)·slowdown_i`, an integer
batch `1 <= B_i <= max_batch_i`, and all workers take the same number K of steps per
epoch (the barrier). Its share d_i must satisfy `(K−1)·B_i < d_i <= K·B_i` (exactly K
iterations, the last one partial) and `Σ d_i = N`; such shares exist iff
`(K−1)·ΣB_i + n <= N <= K·ΣB_i`. The epoch takes `K·(T + c)` with T the slowest step
and c the per-round exchange estimate (`solver.timemodel.exchange_cost`). For a fixed K
the problem is the small MILP

    minimise T
    s.t.  (a_i·B_i + b_i)·slowdown_i <= T           for every worker i
          ceil(N/K) <= Σ B_i <= floor((N − n)/(K − 1))   (upper bound only when K > 1)
          B_i integer in [1, max_batch_i]

(a makespan variable linearises the max). K itself is enumerated: for every K the
continuous relaxation has a closed form (water-filling: the smallest T whose batches
`clip((T − b_i')/a_i', 0, max_batch_i)` sum to N/K), which gives a lower bound
`LB(K) = K·(T_LP(K) + c)`. We solve the MILPs in increasing order of LB(K) and stop once
the best integer epoch time is <= the next LB: then the answer is optimal over all K (up
to the MILP's own gap). The overall LP bound min_K LB(K) is reported with the gap.

A second pass makes the batches as balanced as the integers allow: with T* fixed, each
worker takes the largest batch whose step fits in T* (capped by max_batch and by the
share bound), so no worker idles at the barrier for more than one sample's time unless
it is at its max_batch.

Solvers. By default (`exact`) the fixed-K problem is solved without a MILP solver: for a
step time T, worker i can take at most `cap_i(T) = min(max_batch_i, max{B : a_i·B + b_i <= T})`
samples per step, and T is feasible iff every cap_i(T) >= 1 and Σ cap_i(T) >= ceil(N/K)
(lower batches then meet the upper bound). Σ cap_i is a step function of T that rises by
one at each step point `a_i·B + b_i`, so the optimum T* is found by starting from the
caps at a T below it (the LP relaxation's T, where the sum is short) and taking the next
step points in increasing order until the sum is reached: the last one taken is T*
(`_solve_fixed_k_exact`, milliseconds where HiGHS took up to a second at 256 workers).
HiGHS through PuLP (`pulp.HiGHS`, highspy) and CBC (`pulp.PULP_CBC_CMD`) solve the MILP
on request (`--milp-solver`; CBC also as the fallback when HiGHS fails), always with a
time limit and a relative gap; the status reported comes from the solution status (`LpSolutionOptimal` = proven
within the gap; `LpSolutionIntegerFeasible` = the best found when the limit hit), not
from `LpStatus` (which says "Optimal" after a time-out too), and for HiGHS also the
model status from highspy.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field

import numpy as np

from hybridps.errors import UserError, interrupts_deferred
from hybridps.spec import Cluster, Compression, Job, WorkerAssignment
from solver.timemodel import Coeffs, coeffs, exchange_cost

SOLVERS = ("exact", "highs", "cbc")  # exact: no MILP solver (module docstring)


@dataclass(frozen=True)
class MilpResult:
    """One fixed-K MILP: the solution and what the solver can prove about it."""

    batches: tuple[int, ...]
    step_s: float  # T
    status: str  # "optimal" (proven within gap) | "feasible" (best found at the limit) | "infeasible" | "none"
    solver: str
    solver_status: str  # the solver's own words (highspy model status / PuLP solution status)
    wall_s: float


@dataclass(frozen=True)
class BalancedSolution:
    resolution: int
    steps: int  # K
    workers: tuple[WorkerAssignment, ...]
    step_s: float  # slowest compute step T
    exchange_s: float  # per-round exchange estimate c
    epoch_s: float  # K·(T + c)
    lp_bound_s: float  # min over K of the relaxation
    gap: float  # (epoch − bound)/epoch
    status: str  # "optimal" or "feasible"
    solver: str
    milps: int  # fixed-K MILPs solved
    wall_s: float
    per_step_s: tuple[float, ...] = field(default=())  # each worker's compute time per (full) step

    def meta(self) -> dict:
        return {"steps_per_epoch": self.steps, "step_s": self.step_s, "exchange_s": self.exchange_s,
                "epoch_s": self.epoch_s, "lp_bound_epoch_s": self.lp_bound_s, "gap": self.gap,
                "status": self.status, "solver": self.solver, "milps": self.milps}


def _share_bounds(N: int, n: int, K: int, sum_max: int) -> tuple[int, int] | None:
    """Range of ΣB_i that lets shares of exactly K iterations sum to N."""
    lo = math.ceil(N / K)
    hi = sum_max if K == 1 else min(sum_max, (N - n) // (K - 1))
    return (max(lo, n), hi) if max(lo, n) <= hi else None


def lp_step_s(c: Coeffs, total_batch: np.ndarray) -> np.ndarray:
    """Water-filling: for each target ΣB (array), the smallest T with Σ clip((T−b)/a, 0, max) >= ΣB.

    Workers with a = 0 hold max_batch at step time b (their batch is free). Vectorised
    bisection over the array of targets.
    """
    total_batch = np.asarray(total_batch, dtype=float)
    a = np.maximum(c.a_s, 1e-15)[None, :]
    b = c.b_s[None, :]
    mb = c.max_batch[None, :].astype(float)
    lo = np.full(total_batch.shape, float((c.a_s + c.b_s).max()))  # every B_i >= 1
    hi = np.full(total_batch.shape, float((c.a_s * c.max_batch + c.b_s).max()))
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        cap = np.clip((mid[:, None] - b) / a, 1.0, mb).sum(axis=1)
        ok = cap >= total_batch
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    return hi


def _pulp():
    """The `pulp` module; its first import holds interrupts (`interrupts_deferred`: PuLP
    would swallow one that lands while it imports HiGHS)."""
    with interrupts_deferred():
        import pulp
    return pulp


def solve_with_status(prob, solver: str, time_limit_s: float, gap_rel: float) -> tuple[str, str]:
    """Solve a PuLP problem; return ("optimal" | "feasible" | "infeasible" | "none", the solver's own status).

    "optimal" only when the solver proved it (within `gap_rel`): PuLP's `LpStatus` reads
    "Optimal" after a time-out with an incumbent, so this reads `prob.sol_status`
    (LpSolutionOptimal vs LpSolutionIntegerFeasible) and, for HiGHS, highspy's model status.
    """
    from hybridps.fileio import native_stdout_silenced

    pulp = _pulp()

    if solver == "highs":
        s = pulp.HiGHS(msg=False, timeLimit=time_limit_s, gapRel=gap_rel)
    elif solver == "cbc":
        import warnings

        with warnings.catch_warnings():  # PuLP 3 marks its bundled CBC deprecated; it still ships it
            warnings.simplefilter("ignore", DeprecationWarning)
            s = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap_rel)
    else:
        raise UserError(f"unknown MILP solver {solver!r}; use one of: {', '.join(SOLVERS)}")
    with native_stdout_silenced():  # HiGHS prints its banner on fd 1 despite msg=False: not into --json
        prob.solve(s)
    sol = prob.sol_status
    own = pulp.LpSolution[sol]
    if solver == "highs":
        import highspy

        model_status = prob.solverModel.getModelStatus()
        own = prob.solverModel.modelStatusToString(model_status)
        if sol == pulp.LpSolutionOptimal and model_status != highspy.HighsModelStatus.kOptimal:
            sol = pulp.LpSolutionIntegerFeasible
    if sol == pulp.LpSolutionOptimal:
        return "optimal", own
    if sol == pulp.LpSolutionIntegerFeasible:
        return "feasible", own
    if sol == pulp.LpSolutionInfeasible:
        return "infeasible", own
    return "none", own


def _caps(c: Coeffs, step_s: float) -> np.ndarray:
    """Each worker's largest batch whose step fits in `step_s` (at most max_batch, at least 0)."""
    a = np.maximum(c.a_s, 1e-15)
    B = np.minimum(c.max_batch, np.floor((step_s - c.b_s) / a)).astype(np.int64)
    B -= (c.step_s(B.astype(float)) > step_s)  # the float floor may land one above
    return np.maximum(B, 0)


def _solve_fixed_k_exact(c: Coeffs, lo: int, hi: int) -> MilpResult:
    """The fixed-K problem by walking the step points (module docstring): batches with
    ΣB in [lo, hi] whose slowest step T* is the least possible."""
    t0 = time.perf_counter()
    one_s = float(c.step_s(np.ones(len(c.names))).max())  # every batch is at least 1
    start = max(one_s, float(lp_step_s(c, np.array([float(lo)]))[0]) * (1 - 1e-9))
    B = _caps(c, start)
    if B.sum() >= lo:  # the relaxation's T was not below T*: walk from the least T instead
        start = one_s
        B = _caps(c, start)
    B = np.maximum(B, 1)
    if B.sum() >= lo:  # T* = one_s: every worker fits a batch of 1 and more in the slowest one's step
        excess = int(B.sum()) - hi  # any batches with ΣB in [lo, hi] are optimal: trim to hi
        for i in range(len(B)):
            take = min(int(B[i]) - 1, max(excess, 0))
            B[i] -= take
            excess -= take
    else:
        nxt = [(float(c.a_s[i] * (B[i] + 1) + c.b_s[i]), i) for i in range(len(B)) if B[i] < c.max_batch[i]]
        heapq.heapify(nxt)
        for _ in range(lo - int(B.sum())):  # ΣB rises by one at each step point, in increasing order
            _, i = heapq.heappop(nxt)
            B[i] += 1
            if B[i] < c.max_batch[i]:
                heapq.heappush(nxt, (float(c.a_s[i] * (B[i] + 1) + c.b_s[i]), i))
    step = float(c.step_s(B.astype(float)).max())
    return MilpResult(tuple(int(v) for v in B), step, "optimal", "exact", "optimal (step points walked)",
                      time.perf_counter() - t0)


def _solve_fixed_k(c: Coeffs, lo: int, hi: int, solver: str, time_limit_s: float, gap_rel: float) -> MilpResult:
    if solver == "exact":
        return _solve_fixed_k_exact(c, lo, hi)
    pulp = _pulp()
    n = len(c.names)
    t0 = time.perf_counter()
    prob = pulp.LpProblem("balanced", pulp.LpMinimize)
    T = prob.add_variable("T", lowBound=0)
    B = [prob.add_variable(f"B{i}", lowBound=1, upBound=int(c.max_batch[i]), cat="Integer") for i in range(n)]
    prob += T
    for i in range(n):
        prob += float(c.a_s[i]) * B[i] + float(c.b_s[i]) <= T
    prob += pulp.lpSum(B) >= lo
    prob += pulp.lpSum(B) <= hi
    status, own = solve_with_status(prob, solver, time_limit_s, gap_rel)
    wall = time.perf_counter() - t0
    if status in ("infeasible", "none"):
        return MilpResult((), math.inf, status, solver, own, wall)
    batches = tuple(int(round(v.varValue)) for v in B)
    step = float(np.max(c.step_s(np.array(batches, dtype=float))))
    return MilpResult(batches, step, status, solver, own, wall)


def _solve_fixed_k_memo(c: Coeffs, resolution: int, bounds: tuple[int, int], solver: str, time_limit_s: float,
                        gap_rel: float, memo: dict | None) -> tuple[MilpResult, str]:
    """`_solve_fixed_k` at `c` = the cluster's coefficients at `resolution`, looked up in
    `memo` first; a broken HiGHS install falls back to CBC. Returns the result and the
    solver used."""
    key = (resolution, *bounds, solver, time_limit_s, gap_rel)
    if memo is not None and key in memo:
        return memo[key]
    try:
        res = _solve_fixed_k(c, bounds[0], bounds[1], solver, time_limit_s, gap_rel)
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - a broken HiGHS install falls back to CBC
        if solver != "highs":
            raise
        solver = "cbc"
        res = _solve_fixed_k(c, bounds[0], bounds[1], solver, time_limit_s, gap_rel)
    if memo is not None:
        memo[key] = (res, solver)
    return res, solver


def _fill(c: Coeffs, batches: np.ndarray, step_s: float, hi: int) -> np.ndarray:
    """Raise every batch to the largest that fits in `step_s` (and max_batch), keeping ΣB <= hi."""
    a = np.maximum(c.a_s, 1e-15)
    best = np.minimum(c.max_batch, np.floor((step_s * (1 + 1e-12) - c.b_s) / a)).astype(np.int64)
    best = np.maximum(best, batches)
    room = hi - int(batches.sum())
    out = batches.copy()
    # hand out the room to the workers furthest below their best, one sample at a time in bulk
    gain = best - batches
    if room >= int(gain.sum()):
        return best
    order = np.argsort(-(gain / np.maximum(best, 1)), kind="stable")
    for i in order:
        take = min(int(gain[i]), room)
        out[i] += take
        room -= take
        if room <= 0:
            break
    return out


def shares_for(N: int, K: int, batches: np.ndarray) -> np.ndarray:
    """Samples per worker summing to N with exactly K iterations each ((K−1)·B < d <= K·B)."""
    lo = (K - 1) * batches + 1
    hi = K * batches
    d = lo.copy()
    rest = N - int(lo.sum())
    if rest < 0 or rest > int((hi - lo).sum()):
        raise AssertionError("share bounds violated")
    room = hi - lo
    # spread the rest in proportion to each worker's room, then fix the rounding
    add = np.floor(rest * room / max(int(room.sum()), 1)).astype(np.int64)
    add = np.minimum(add, room)
    d += add
    left = rest - int(add.sum())
    i = 0
    while left > 0:
        if d[i] < hi[i]:
            d[i] += 1
            left -= 1
        i = (i + 1) % len(d)
    return d


def solve_balanced(cluster: Cluster, job: Job, resolution: int, compression: Compression | None = None,
                   solver: str = "exact", time_limit_s: float = 10.0, gap_rel: float = 1e-6,
                   max_milps: int = 50, memo: dict | None = None) -> BalancedSolution:
    """Best integer batches and common step count at one resolution (see the module docstring).

    `memo`: fixed-K MILP results to share between calls on the same cluster. A fixed-K
    MILP does not depend on the compression (only the choice of K does), so the three
    compressions of one resolution mostly solve the same MILPs."""
    t_start = time.perf_counter()
    c = coeffs(cluster, resolution)
    n = len(c.names)
    N = job.data.samples
    sum_max = int(c.max_batch.sum())
    if N < n:
        raise UserError(f"the dataset ({N} samples per epoch, data.samples) cannot be covered: every one of the "
                        f"{n} workers needs at least one sample per epoch under bsp; use fewer workers")
    comm = float(exchange_cost(cluster, job, compression or Compression()).concurrent_s.max())
    k_min = math.ceil(N / sum_max)
    # Any K pays at least K·(slowest worker's one-sample step + c): K beyond best/(that) cannot win.
    floor_step = float((c.a_s + c.b_s).max())
    first = float(lp_step_s(c, np.array([N / k_min]))[0])
    k_hi = min(N // n + 1, max(k_min, int(k_min * (first + comm) / (floor_step + comm) * 1.5) + 1))
    best: tuple[float, int, MilpResult, tuple[int, int]] | None = None
    proven, milps, used_solver = True, 0, solver
    lp_bound = math.inf
    k_lo = k_min
    while True:
        Ks = np.array([K for K in range(k_lo, k_hi + 1) if _share_bounds(N, n, K, sum_max) is not None])
        if len(Ks):
            lb = Ks * (lp_step_s(c, N / Ks) + comm)
            lp_bound = min(lp_bound, float(lb.min()))
            for j in np.argsort(lb, kind="stable"):
                if best is not None and lb[j] >= best[0] * (1 - 1e-12):
                    break
                if milps >= max_milps:
                    proven = False
                    break
                K = int(Ks[j])
                bounds = _share_bounds(N, n, K, sum_max)
                res, used_solver = _solve_fixed_k_memo(c, resolution, bounds, used_solver, time_limit_s, gap_rel,
                                                       memo)
                milps += 1
                if res.status in ("infeasible", "none"):
                    continue
                if res.status != "optimal":
                    proven = False
                epoch = K * (res.step_s + comm)
                if best is None or epoch < best[0]:
                    best = (epoch, K, res, bounds)
        if best is None and k_hi < N // n + 1:
            k_lo, k_hi = k_hi + 1, min(N // n + 1, 2 * k_hi)
            continue
        if best is None:
            raise UserError(f"the dataset ({N} samples per epoch) cannot be covered under max_batch at resolution "
                            f"{resolution}: no common step count K gives every one of the {n} workers exactly K "
                            f"iterations (sum of max_batch = {sum_max})")
        k_need = min(N // n + 1, int(best[0] / (floor_step + comm)))
        if k_need <= k_hi or milps >= max_milps:
            break
        k_lo, k_hi = k_hi + 1, k_need
    epoch, K, res, bounds = best
    batches = _fill(c, np.array(res.batches, dtype=np.int64), res.step_s, bounds[1])
    step = float(c.step_s(batches.astype(float)).max())
    epoch = K * (step + comm)
    shares = shares_for(N, K, batches)
    workers = tuple(WorkerAssignment(name=c.names[i], batch=int(batches[i]), samples=int(shares[i]))
                    for i in range(n))
    return BalancedSolution(
        resolution=resolution, steps=K, workers=workers, step_s=step, exchange_s=comm, epoch_s=epoch,
        lp_bound_s=lp_bound, gap=(epoch - lp_bound) / epoch, status="optimal" if proven else "feasible",
        solver=res.solver, milps=milps, wall_s=time.perf_counter() - t_start,
        per_step_s=tuple(float(x) for x in c.step_s(batches.astype(float))))
