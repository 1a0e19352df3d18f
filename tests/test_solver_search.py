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


def test_scale_up_is_per_phase(cifar):
    cluster, job = cifar
    plan = generate(cluster, job, Constraints(strategies=("dbsl",), small_workers=(1,), schedules=("cyclic",)))[1].plan
    short = shorten(plan, 2)
    assert [p.epochs for p in short.phases] == [2] * 6
    summary = {"makespan_s": 0.0, "phases": [{"start_s": 10.0 * k, "end_s": 10.0 * k + k + 1} for k in range(6)]}
    # phase k took k+1 s for 2 epochs; the full phase has 40, 40, 20, 20, 10, 10 epochs
    assert scale_up(plan, short, summary) == pytest.approx(sum((k + 1) * e / 2 for k, e in enumerate([40, 40, 20, 20, 10, 10])))


def test_search_follows_the_scorer_and_never_loses_to_uniform(cifar):
    cluster, job = cifar
    res = search(cluster, job, Constraints(), scorer=estimate_scorer, jobs=1, proxy_epochs=140)
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
