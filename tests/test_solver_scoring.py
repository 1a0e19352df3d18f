"""One scoring pool per search (solver.search.Scoring): each distinct plan is simulated
once, the uniform baseline's full run starts before candidate generation, and the
balanced MILPs share their fixed-K solves; none of it may change a single number of
the ranking (the old path is `search(..., reuse=False)`)."""

from __future__ import annotations

from functools import partial

import pytest

from hybridps.spec import job_from_dict, load_cluster, load_job, load_plan
from solver.candidates import Constraints
from solver.search import Scoring, search


def short_imagenet():
    """imagenet-resnet18 with 25,600 samples per epoch (about 6 rounds on mixed16), so that
    its full simulations take a fraction of a second."""
    d = load_job("imagenet-resnet18").model_dump(mode="json")
    d["data"]["samples"] = 25_600
    return job_from_dict(d)


def ranking(res) -> list[tuple]:
    return [(r.index, r.candidate.label, r.candidate.estimate_s, r.proxy_s, r.full_s, r.proxy_q, r.full_q, r.risks)
            for r in res.ranked]


@pytest.mark.parametrize("case", ["mixed16", "digits-target"])
def test_shared_scoring_ranks_bit_identically_to_the_old_path(case):
    """Real simulations: the same candidates, estimates, proxy and full figures (==, not
    approx), the same order and the same plan.json, with the pool and early baseline
    (jobs=2) against the old inline path."""
    if case == "mixed16":
        cluster, job, kw = load_cluster("mixed16"), short_imagenet(), {}
    else:
        cluster, job, kw = load_cluster("digits-cpu3"), load_job("digits-cnn"), {"target_accuracy": 0.95}
    new = search(cluster, job, Constraints(), seed=0, jobs=2, **kw)
    old = search(cluster, job, Constraints(), seed=0, jobs=1, reuse=False, **kw)
    assert ranking(new) == ranking(old)
    assert new.plan.to_json_dict() == old.plan.to_json_dict()
    assert new.counts == old.counts
    assert new.baseline.full_s is not None and new.counts["full"] >= 3


def logging_scorer(log, cluster, job, plan, seed):
    """Appends one line per simulation to `log`, then simulates nothing."""
    epochs = sum(p.epochs for p in plan.phases)
    with open(log, "a") as f:
        f.write(f"{epochs}\n")
    return {"makespan_s": float(epochs)}


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_plan_is_scored_once_per_search(tmp_path, jobs):
    cluster, job = load_cluster("gtx1080x4"), load_job("cifar100-resnet18")
    dbsl, uniform = (load_plan(n, cluster, job) for n in ("gtx1080x4-cifar100-dbsl", "gtx1080x4-cifar100-uniform"))
    log = tmp_path / "scored.txt"
    with Scoring(partial(logging_scorer, log), cluster, job, 0, jobs) as scoring:
        scoring.start([uniform])  # submitted before it is asked for (inline: nothing yet)
        first = scoring.score([dbsl, uniform, dbsl], "first")
        again = scoring.score([uniform, dbsl], "again")
    assert [s["makespan_s"] for s in first] == [140.0, 140.0, 140.0]
    assert again == [first[1], first[0]]
    assert log.read_text().split() == ["140", "140"]  # two distinct plans, each simulated once
    log.unlink()
    with Scoring(partial(logging_scorer, log), cluster, job, 0, jobs, reuse=False) as scoring:
        scoring.score([dbsl, dbsl], "first")
        scoring.score([dbsl], "again")
    assert log.read_text().split() == ["140", "140"]  # without reuse: once per call
