"""`balanced`: the MILP on a three-device-type cluster, its bounds, its solvers and its honesty."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hybridps.errors import UserError
from hybridps.spec import check_plan, cluster_from_dict, load_job
from solver.balanced import _solve_fixed_k_exact, lp_step_s, solve_balanced, solve_with_status
from solver.candidates import BalancedCache, balanced_plan
from solver.timemodel import Coeffs, coeffs


def three_types():
    """2 fast (a100-like), 3 medium, 2 slow workers, one of them throttled."""
    dev = lambda a, b, mb: {"resolutions": {"32": {"a": a, "b": b, "max_batch": mb}, "24": {"a": a * 0.6, "b": b, "max_batch": mb * 2}}}
    return cluster_from_dict({
        "format": "hybridps.cluster/1",
        "ps": {"count": 2, "bandwidth_gbps": 25.0},
        "devices": {"fast": dev(0.00021, 0.011, 1024), "mid": dev(0.00050, 0.0156, 560),
                    "slow": dev(0.00110, 0.024, 256)},
        "workers": [{"name": "f", "device": "fast", "count": 2, "bandwidth_gbps": 25.0},
                    {"name": "m", "device": "mid", "count": 3},
                    {"name": "s", "device": "slow", "count": 1},
                    {"name": "s_hot", "device": "slow", "count": 1, "slowdown": 1.3}],
    }, "<test>")


@pytest.fixture(scope="module")
def solved():
    cluster, job = three_types(), load_job("cifar100-resnet18")
    return cluster, job, {s: solve_balanced(cluster, job, 32, solver=s) for s in ("exact", "highs", "cbc")}


def test_step_times_balanced_as_close_as_integers_allow(solved):
    cluster, job, sols = solved
    sol = sols["highs"]
    c = coeffs(cluster, 32)
    B = np.array([w.batch for w in sol.workers], dtype=float)
    step = c.step_s(B)
    T = step.max()
    assert T == pytest.approx(sol.step_s)
    for i in range(len(B)):
        at_max = B[i] == c.max_batch[i]
        # either within 2 % of the slowest step, or pinned at max_batch; and in every case
        # one more sample would overshoot T (nobody idles more than one sample's time).
        assert at_max or step[i] >= 0.98 * T, (c.names[i], step[i], T)
        assert at_max or step[i] + c.a_s[i] > T * (1 - 1e-12)
    assert (step.max() - step.min()) / T < 0.02


def test_shares_give_every_worker_exactly_k_iterations(solved):
    cluster, job, sols = solved
    sol = sols["highs"]
    assert sum(w.samples for w in sol.workers) == job.data.samples
    assert {math.ceil(w.samples / w.batch) for w in sol.workers} == {sol.steps}
    plan, _ = balanced_plan(BalancedCache(cluster, job), "cyclic", "none")
    check_plan(plan, cluster, job)
    assert all(p.sync == "bsp" and p.exchange == "gradient" for p in plan.phases)


def test_makespan_within_one_percent_of_lp_bound(solved):
    cluster, job, sols = solved
    sol = sols["highs"]
    assert sol.status == "optimal"
    assert sol.lp_bound_s <= sol.epoch_s
    makespan = job.train.epochs * sol.epoch_s
    assert makespan <= 1.01 * job.train.epochs * sol.lp_bound_s
    assert sol.gap == pytest.approx((sol.epoch_s - sol.lp_bound_s) / sol.epoch_s)
    # the bound is the relaxation: at the chosen K, no fractional batches beat it
    c = coeffs(cluster, 32)
    assert sol.lp_bound_s <= sol.steps * (lp_step_s(c, np.array([job.data.samples / sol.steps]))[0] + sol.exchange_s) + 1e-9


def test_highs_and_cbc_agree(solved):
    _, _, sols = solved
    h, c = sols["highs"], sols["cbc"]
    assert h.solver == "highs" and c.solver == "cbc"
    assert h.steps == c.steps
    assert h.epoch_s == pytest.approx(c.epoch_s, rel=1e-9)
    assert c.status == "optimal"


def test_brute_force_agrees_on_a_tiny_case():
    """Two workers, small dataset: enumerate every (B1, B2) and compare."""
    cluster = cluster_from_dict({
        "format": "hybridps.cluster/1",
        "devices": {"x": {"resolutions": {"32": {"a": 0.001, "b": 0.01, "max_batch": 40}}},
                    "y": {"resolutions": {"32": {"a": 0.003, "b": 0.02, "max_batch": 30}}}},
        "workers": [{"name": "x", "device": "x"}, {"name": "y", "device": "y"}]}, "<test>")
    job = load_job("cifar100-resnet18")
    job = job.model_copy(update={"data": job.data.model_copy(update={"samples": 997})})
    sol = solve_balanced(cluster, job, 32)
    comm = sol.exchange_s
    best = math.inf
    for b1 in range(1, 41):
        for b2 in range(1, 31):
            for K in range(1, 998):
                if K * (b1 + b2) < 997:
                    continue
                if (K - 1) * (b1 + b2) + 2 > 997:
                    break
                best = min(best, K * (max(0.001 * b1 + 0.01, 0.003 * b2 + 0.02) + comm))
    assert sol.epoch_s == pytest.approx(best, rel=1e-12)


def test_status_is_honest_after_a_time_limit():
    """A hard MILP (market split) cut off at 0.3 s: PuLP's LpStatus says "Optimal", we say "feasible"."""
    import pulp

    rng = np.random.default_rng(1)
    A = rng.integers(0, 100, (5, 50))
    b = A.sum(1) // 2
    for solver in ("highs", "cbc"):
        prob = pulp.LpProblem("market_split", pulp.LpMinimize)
        x = [prob.add_variable(f"x{j}", cat="Binary") for j in range(50)]
        sp = [prob.add_variable(f"sp{i}", lowBound=0) for i in range(5)]
        sm = [prob.add_variable(f"sm{i}", lowBound=0) for i in range(5)]
        prob += pulp.lpSum(sp) + pulp.lpSum(sm)
        for i in range(5):
            prob += pulp.lpSum(int(A[i, j]) * x[j] for j in range(50)) + sp[i] - sm[i] == int(b[i])
        status, own = solve_with_status(prob, solver, 0.3, 1e-9)
        assert pulp.LpStatus[prob.status] == "Optimal"  # what PuLP claims
        assert status == "feasible", (solver, own)
        if solver == "highs":
            assert own == "Time limit reached"


def test_dataset_that_cannot_be_covered():
    cluster = three_types()
    job = load_job("cifar100-resnet18")
    job = job.model_copy(update={"data": job.data.model_copy(update={"samples": 5})})
    with pytest.raises(UserError, match=r"the dataset \(5 samples per epoch, data.samples\) cannot be covered"):
        solve_balanced(cluster, job, 32)


@pytest.mark.parametrize("compression", ["none", "onebit"])
def test_simulated_makespan_within_one_percent_of_lp_bound(compression):
    """The simulator's makespan of the balanced plan (cyclic schedule, every phase bsp) is
    within 1 % of the LP relaxation bound summed over the phases."""
    from sim import simulate

    cluster, job = three_types(), load_job("cifar100-resnet18")
    cache = BalancedCache(cluster, job)
    plan, info = balanced_plan(cache, "cyclic", compression)
    bound = sum(p.epochs * cache.get(p.resolution, p.compression).lp_bound_s for p in plan.phases)
    closed_form = sum(p.epochs * cache.get(p.resolution, p.compression).epoch_s for p in plan.phases)
    simulated = simulate(cluster, job, plan, seed=0).makespan_s
    assert abs(simulated - bound) <= 0.01 * bound
    assert abs(simulated - closed_form) <= 0.01 * closed_form
    assert {m["status"] for m in info["milp"].values()} == {"optimal"}


def test_falls_back_to_cbc_when_highs_fails(monkeypatch, solved):
    import pulp

    cluster, job, sols = solved

    def broken(*args, **kwargs):
        raise pulp.PulpSolverError("HiGHS unavailable")

    monkeypatch.setattr(pulp, "HiGHS", broken)
    sol = solve_balanced(cluster, job, 32, solver="highs")
    assert sol.solver == "cbc" and sol.status == "optimal"
    assert sol.epoch_s == pytest.approx(sols["highs"].epoch_s, rel=1e-9)


def test_exact_gives_the_milps_batches(solved):
    """The default `exact` fixed-K step (no MILP solver) gives HiGHS's answer, batch for batch."""
    _, _, sols = solved
    e, h = sols["exact"], sols["highs"]
    assert e.solver == "exact" and e.status == "optimal"
    assert (e.steps, e.workers, e.step_s, e.epoch_s, e.milps) == (h.steps, h.workers, h.step_s, h.epoch_s, h.milps)


def many_types(n: int, seed: int):
    """n workers of 3 device types, each with its own seeded slowdown (many distinct step times)."""
    rng = np.random.default_rng(seed)
    dev = lambda a, b, mb: {"resolutions": {"32": {"a": a, "b": b, "max_batch": mb}}}
    kinds = ["fast", "mid", "slow"]
    return cluster_from_dict({
        "format": "hybridps.cluster/1",
        "devices": {"fast": dev(0.00021, 0.011, 1024), "mid": dev(0.00050, 0.0156, 560),
                    "slow": dev(0.00110, 0.024, 256)},
        "workers": [{"name": f"w{i}", "device": kinds[i % 3], "slowdown": float(rng.uniform(1.0, 1.6))}
                    for i in range(n)]}, "<test>")


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_agrees_with_highs_on_64_workers(seed):
    cluster, job = many_types(64, seed), load_job("cifar100-resnet18")
    e, h = (solve_balanced(cluster, job, 32, solver=s) for s in ("exact", "highs"))
    assert h.status == "optimal"
    assert (e.steps, e.workers, e.step_s, e.milps) == (h.steps, h.workers, h.step_s, h.milps)


def test_exact_fixed_k_matches_brute_force():
    """Three workers with seeded random profiles, every feasible [lo, hi]: the least slowest
    step over all batch vectors, and batches that meet the bounds (the smallest lo
    included, where a batch of 1 on the slowest worker sets T*)."""
    rng = np.random.default_rng(7)
    for _ in range(30):
        mb = rng.integers(1, 9, 3)
        c = Coeffs(a_s=rng.uniform(0.001, 0.01, 3), b_s=rng.uniform(0.0, 0.05, 3), max_batch=mb, names=("x", "y", "z"))
        grid = np.stack(np.meshgrid(*[np.arange(1, m + 1) for m in mb], indexing="ij"), -1).reshape(-1, 3)
        steps = c.step_s(grid.astype(float)).max(axis=1)
        sums = grid.sum(axis=1)
        for lo in range(3, int(mb.sum()) + 1):
            hi = int(rng.integers(lo, int(mb.sum()) + 1))
            res = _solve_fixed_k_exact(c, lo, hi)
            B = np.array(res.batches)
            assert lo <= B.sum() <= hi and (B >= 1).all() and (B <= mb).all()
            assert res.step_s == steps[(sums >= lo) & (sums <= hi)].min() == c.step_s(B.astype(float)).max()
