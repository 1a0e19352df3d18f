"""Candidate generation and the search pipeline with an injected scorer (the simulator's
own tests live with it; here the ranking logic is what is tested)."""

from __future__ import annotations

import pytest

from hybridps.spec import check_plan, load_cluster, load_job
from solver.candidates import Constraints, estimate_makespan_s, generate
from solver.search import scale_up, search, shorten, table


def estimate_scorer(cluster, job, plan, seed):
    """Stand-in for the simulator: the closed-form estimate, per phase."""
    phases, t = [], 0.0
    for ph in plan.phases:
        one = plan.model_copy(update={"phases": [ph]})
        d = estimate_makespan_s(cluster, job, one)
        phases.append({"start_s": t, "end_s": t + d})
        t += d
    return {"makespan_s": t, "phases": phases}


def asp_penalty_scorer(cluster, job, plan, seed):
    """A scorer that makes asp/ssp phases 3x slower: the ranking must follow the scorer."""
    out = estimate_scorer(cluster, job, plan, seed)
    t = 0.0
    for ph, rec in zip(plan.phases, out["phases"]):
        d = (rec["end_s"] - rec["start_s"]) * (3.0 if ph.sync != "bsp" else 1.0)
        rec["start_s"], rec["end_s"] = t, t + d
        t += d
    out["makespan_s"] = t
    return out


@pytest.fixture(scope="module")
def cifar():
    return load_cluster("gtx1080x4"), load_job("cifar100-resnet18")


def test_generate_covers_every_strategy_and_passes_check_plan(cifar):
    cluster, job = cifar
    cands = generate(cluster, job, Constraints())
    assert cands[0].strategy == "uniform"
    strategies = {c.strategy for c in cands}
    assert strategies == {"uniform", "dbsl", "balanced", "sync-switch", "ssp"}
    # dbsl: small-worker counts 0..3 x 2 schedules; gradient strategies x 3 compressions x 2 schedules
    assert sum(c.strategy == "dbsl" for c in cands) == 8
    assert sum(c.strategy == "balanced" for c in cands) == 6
    assert sum(c.strategy == "sync-switch" for c in cands) == 24
    assert sum(c.strategy == "ssp" for c in cands) == 12
    for c in cands:
        check_plan(c.plan, cluster, job)
        assert sum(p.epochs for p in c.plan.phases) == job.train.epochs
    sw = [c for c in cands if c.strategy == "sync-switch" and c.params["f"] == 0.25][0]
    assert sw.bsp_fraction == pytest.approx(35 / 140)
    assert [p.sync for p in sw.plan.phases][:2] == ["bsp", "asp"]  # cyclic: 0-35 bsp, 35-40 asp at 24 px


def test_constraints_filter_candidates(cifar):
    cluster, job = cifar
    cands = generate(cluster, job, Constraints(min_bsp_fraction=0.25, compressions=("none",), schedules=("fixed",)))
    assert {c.strategy for c in cands} == {"uniform", "balanced", "sync-switch"}
    assert all(c.bsp_fraction >= 0.25 for c in cands)
    assert sorted(c.params["f"] for c in cands if c.strategy == "sync-switch") == [0.25, 0.5]
    only_bsp = generate(cluster, job, Constraints(sync_modes=("bsp",)))
    assert {c.strategy for c in only_bsp} == {"uniform", "balanced"}


def test_shorten_and_scale_up_per_phase_configuration(cifar):
    cluster, job = cifar
    plan = generate(cluster, job, Constraints(strategies=("dbsl",), small_workers=(1,), schedules=("cyclic",)))[1].plan
    assert [(p.epochs, p.resolution) for p in plan.phases] == [(40, 24), (40, 32), (20, 24), (20, 32), (10, 24), (10, 32)]
    short = shorten(plan, 2)
    # phases that differ only in length and LR run at the same speed: one proxy phase each
    assert [(p.epochs, p.resolution) for p in short.phases] == [(2, 24), (2, 32)]
    # 24 px: 12 s for 2 epochs, crossings 5 s apart -> beta 5, alpha 2 (the asp drain);
    # 32 px: 14 s, crossings 6 s apart -> beta 6, alpha 2
    summary = {"makespan_s": 26.0, "phases": [{"start_s": 0.0, "end_s": 12.0}, {"start_s": 12.0, "end_s": 26.0}],
               "epoch_end_s": [5.0, 10.0, 18.0, 24.0]}
    assert scale_up(plan, short, summary) == pytest.approx(3 * 2 + 70 * 5 + 3 * 2 + 70 * 6)
    # without crossings the duration scales linearly
    summary.pop("epoch_end_s")
    assert scale_up(plan, short, summary) == pytest.approx(70 * 6 + 70 * 7)


def test_search_follows_the_scorer_and_never_loses_to_uniform(cifar):
    cluster, job = cifar
    res = search(cluster, job, Constraints(), scorer=estimate_scorer, jobs=1, proxy_epochs=140, baseline="full")
    assert res.best.full_s <= res.baseline.full_s
    best_full = min(r.full_s for r in res.ranked if r.full_s is not None)
    assert res.best.full_s == best_full
    meta = res.plan.meta
    assert meta["strategy"] == res.best.candidate.strategy
    assert meta["predicted_makespan_s"] == res.best.full_s
    assert meta["uniform_makespan_s"] == res.baseline.full_s
    assert meta["ratio_to_uniform"] == pytest.approx(res.best.full_s / res.baseline.full_s)
    assert meta["objective"] == "time" and "full simulation" in meta["prediction"]
    check_plan(res.plan, cluster, job)
    # with asp made 3x slower by the scorer, a bsp strategy must win
    res2 = search(cluster, job, Constraints(), scorer=asp_penalty_scorer, jobs=1)
    assert all(p.sync == "bsp" for p in res2.plan.phases)
    assert res2.best.candidate.strategy in ("balanced", "uniform")


def test_parallel_results_do_not_depend_on_completion_order(cifar):
    cluster, job = cifar
    one = search(cluster, job, Constraints(), scorer=estimate_scorer, jobs=1)
    two = search(cluster, job, Constraints(), scorer=estimate_scorer, jobs=2)
    assert [(r.index, r.proxy_s, r.full_s) for r in one.ranked] == [(r.index, r.proxy_s, r.full_s) for r in two.ranked]
    assert one.plan.to_json_dict()["phases"] == two.plan.to_json_dict()["phases"]
    text = table(two, 5)
    assert text.splitlines()[1].lstrip().startswith("1 ") and "uniform" in text


def full_only_slow_scorer(cluster, job, plan, seed):
    """Full runs (more than 20 epochs) of non-uniform plans take 3x what the proxy saw."""
    out = estimate_scorer(cluster, job, plan, seed)
    if sum(p.epochs for p in plan.phases) > 20 and plan.phases[0].workers[0].batch != job.train.base_batch:
        out = {"makespan_s": out["makespan_s"] * 3.0}
    return out


def test_baseline_full_run_skipped_only_when_clearly_beaten(cifar):
    cluster, job = cifar
    res = search(cluster, job, Constraints(), scorer=estimate_scorer, jobs=1, baseline="auto")
    assert res.baseline.full_s is None  # the proxy says the best is < 0.8x the baseline, and full runs confirm
    assert res.best.full_s <= 0.8 * res.baseline.proxy_s
    assert res.plan.meta["uniform_prediction"].startswith("shortened-horizon simulation")
    assert res.plan.meta["uniform_makespan_s"] == res.baseline.proxy_s
    # when the full runs disagree with the proxy, the baseline is simulated in full after all
    res = search(cluster, job, Constraints(), scorer=full_only_slow_scorer, jobs=1, baseline="auto")
    assert res.baseline.full_s is not None
    assert res.plan.meta["uniform_prediction"] == "full simulation"
    assert res.best.full_s <= res.baseline.full_s


def test_shortened_horizon_ranks_like_full_simulation(cifar):
    """The ranking proxy against full simulation on a small case (real simulator)."""
    from scipy.stats import spearmanr

    from sim import simulate

    cluster, job = cifar
    cands = generate(cluster, job, Constraints(compressions=("none",)))
    proxy, full = [], []
    for c in cands:
        short = shorten(c.plan, 2)
        proxy.append(scale_up(c.plan, short, simulate(cluster, job, short, seed=0).summary()))
        full.append(simulate(cluster, job, c.plan, seed=0).makespan_s)
    errors = [abs(p - f) / f for p, f in zip(proxy, full)]
    assert max(errors) < 0.05, max(errors)
    assert spearmanr(proxy, full).correlation > 0.9
    assert min(range(len(cands)), key=proxy.__getitem__) == min(range(len(cands)), key=full.__getitem__)


def test_time_between_phases_counts_in_estimate_and_proxy(cifar):
    """`ps.phase_overhead_s` per phase boundary is added by every stage of the ranking."""
    from hybridps.spec import cluster_from_dict
    from sim import simulate

    cluster, job = cifar
    data = cluster.model_dump(mode="json")
    data["ps"]["phase_overhead_s"] = 30.0
    slow = cluster_from_dict(data)
    cons = Constraints(strategies=("dbsl",), small_workers=(1,), schedules=("cyclic",))
    plan = next(c.plan for c in generate(cluster, job, cons) if c.strategy == "dbsl")
    boundaries = len(plan.phases) - 1
    assert boundaries == 5
    assert estimate_makespan_s(slow, job, plan) == pytest.approx(estimate_makespan_s(cluster, job, plan) + 150.0)
    full = simulate(slow, job, plan).makespan_s
    assert full == pytest.approx(simulate(cluster, job, plan).makespan_s + 150.0, rel=1e-6)
    found = search(slow, job, cons, jobs=1)
    row = next(r for r in found.ranked if r.candidate.strategy == "dbsl")
    assert row.full_s == pytest.approx(full, rel=1e-9)
    assert row.proxy_s == pytest.approx(full, rel=0.05)  # without the overhead it would be 150 s short
