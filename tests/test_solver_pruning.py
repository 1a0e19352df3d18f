"""DBSL pruning (generate(..., dbsl_keep=K)) drops only variants the search could never
simulate, so the search's answer is unchanged; the variants' estimates computed without
building their plans equal the built plans' estimates exactly."""

from __future__ import annotations

import pytest

from hybridps.spec import load_cluster, load_job
from solver.candidates import Constraints, EstimateCache, dbsl_allocations, dbsl_estimate_s, dbsl_plan, \
    estimate_makespan_s, generate
from solver.search import search


def estimate_scorer(cluster, job, plan, seed):
    """A cheap, deterministic scorer with per-phase durations (the estimate, phase by phase)."""
    phases, t = [], 0.0
    for ph in plan.phases:
        d = estimate_makespan_s(cluster, job, plan.model_copy(update={"phases": [ph]}))
        phases.append({"start_s": t, "end_s": t + d})
        t += d
    return {"makespan_s": t, "phases": phases}


@pytest.fixture(scope="module")
def mixed16():
    return load_cluster("mixed16"), load_job("imagenet-resnet18")


def test_dbsl_estimate_without_a_plan_equals_the_plan_estimate(mixed16):
    cluster, job = mixed16
    cache = EstimateCache(cluster, job)
    for schedule in ("fixed", "cyclic"):
        for s in (0, 1, 5, 11):
            built = dbsl_allocations(cluster, job, 1.05, s, schedule)
            plan, _ = dbsl_plan(cluster, job, 1.05, s, schedule, built=built)
            assert dbsl_estimate_s(cache, *built) == estimate_makespan_s(cluster, job, plan)


def test_pruned_generation_keeps_the_best_dbsl_estimates_in_order(mixed16):
    cluster, job = mixed16
    full = generate(cluster, job, Constraints())
    pruned = generate(cluster, job, Constraints(), dbsl_keep=4)
    labels = [c.label for c in pruned]
    assert [c.label for c in full if c.label in labels] == labels  # same relative order
    assert sum(c.strategy == "dbsl" for c in full) == 32  # 16 small-worker counts x 2 schedules
    for schedule in ("fixed", "cyclic"):
        ranked = sorted((c.estimate_s, i) for i, c in enumerate(full)
                        if c.strategy == "dbsl" and c.params["schedule"] == schedule)
        best = [full[i] for _, i in ranked[:4]]
        kept = [c for c in pruned if c.strategy == "dbsl" and c.params["schedule"] == schedule]
        assert sorted((c.label, c.estimate_s) for c in kept) == sorted((c.label, c.estimate_s) for c in best)
    assert [c for c in pruned if c.strategy != "dbsl"] == [c for c in full if c.strategy != "dbsl"]


@pytest.mark.parametrize("proxy_count", [1, 3, 12])
def test_search_picks_the_same_plan_with_and_without_pruning(mixed16, monkeypatch, proxy_count):
    cluster, job = mixed16
    pruned = search(cluster, job, Constraints(), scorer=estimate_scorer, jobs=1, proxy_count=proxy_count)
    import solver.search as search_mod

    real = search_mod.generate
    monkeypatch.setattr(search_mod, "generate", lambda c, j, cons, dbsl_keep=None, **kw: real(c, j, cons, **kw))
    unpruned = search(cluster, job, Constraints(), scorer=estimate_scorer, jobs=1, proxy_count=proxy_count)
    assert pruned.counts["candidates"] < unpruned.counts["candidates"]
    assert pruned.best.candidate.label == unpruned.best.candidate.label
    assert pruned.best.best_s == unpruned.best.best_s
    simulated = lambda res: [(r.candidate.label, r.proxy_s, r.full_s) for r in res.ranked if r.proxy_s is not None]
    assert simulated(pruned) == simulated(unpruned)
    assert pruned.plan.phases == unpruned.plan.phases
