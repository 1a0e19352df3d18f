"""DBSL closed form, cyclic progressive layouts and their errors (no simulator needed)."""

from __future__ import annotations

import json

import pytest

from hybridps.errors import UserError
from hybridps.spec import check_plan, example_dir, load_cluster, load_job
from solver.candidates import dbsl_plan
from solver.dbsl import dbsl_allocation
from solver.schedule import cyclic_layout, fixed_layout
from solver.timemodel import coeffs


@pytest.fixture(scope="module")
def gtx():
    return load_cluster("gtx1080x4"), load_job("cifar100-resnet18")


def test_worked_example_exactly(gtx):
    cluster, job = gtx
    for res, b_small, b_large in ((24, 130, 600), (32, 102, 560)):
        alloc = dbsl_allocation(cluster, job, res, 1.05, 1)
        got = [(w.name, w.batch, w.samples) for w in alloc.workers]
        assert got == [("gtx0", b_small, 10625), ("gtx1", b_large, 13125),
                       ("gtx2", b_large, 13125), ("gtx3", b_large, 13125)]
        assert alloc.small == ("gtx0",)


def _phases(plan_dict):
    return [{k: v for k, v in p.items()} for p in plan_dict["phases"]]


@pytest.mark.parametrize("cluster_name, job_name, bundled", [
    ("gtx1080x4", "cifar100-resnet18", "gtx1080x4-cifar100-dbsl"),
    ("rtx3090x4", "imagenet-resnet18", "rtx3090x4-imagenet-dbsl"),
])
def test_dbsl_plan_reproduces_bundled_examples(cluster_name, job_name, bundled):
    cluster, job = load_cluster(cluster_name), load_job(job_name)
    plan, _ = dbsl_plan(cluster, job, 1.05, 1, "cyclic")
    check_plan(plan, cluster, job)
    want = json.loads((example_dir("plan") / f"{bundled}.json").read_text())
    assert _phases(plan.to_json_dict()) == _phases(want)


def test_cyclic_layout_cifar_and_imagenet_from_one_rule():
    cifar = cyclic_layout(load_job("cifar100-resnet18"))
    assert [s.end_epoch for s in cifar] == [40, 80, 100, 120, 130, 140]
    assert [s.resolution for s in cifar] == [24, 32, 24, 32, 24, 32]
    assert [s.lr for s in cifar] == pytest.approx([0.2, 0.2, 0.02, 0.02, 0.002, 0.002])
    imnet = cyclic_layout(load_job("imagenet-resnet18"))
    assert [s.end_epoch for s in imnet] == [20, 40, 60, 70, 80, 90, 95, 100, 105]
    assert [s.resolution for s in imnet] == [160, 224, 288] * 3
    assert [s.lr for s in imnet] == pytest.approx([0.1] * 3 + [0.01] * 3 + [0.001] * 3)


def test_layout_uneven_stages_and_fixed():
    job = load_job("imagenet-resnet18")
    job = job.model_copy(update={"train": job.train.model_copy(update={"epochs": 11, "lr_milestones": [7]})})
    cyc = cyclic_layout(job)
    # stage 0..7 -> 2, 2, 3 (the remainder goes to the higher resolutions); 7..11 -> 1, 1, 2
    assert [(s.epochs, s.resolution) for s in cyc] == [(2, 160), (2, 224), (3, 288), (1, 160), (1, 224), (2, 288)]
    assert sum(s.epochs for s in cyc) == 11
    fixed = fixed_layout(job)
    assert [(s.start_epoch, s.epochs, s.resolution) for s in fixed] == [(0, 7, 288), (7, 4, 288)]


def test_heterogeneous_dbsl_every_worker_fits_the_budget():
    cluster, job = load_cluster("mixed16"), load_job("imagenet-resnet18")
    for res in (160, 224, 288):
        alloc = dbsl_allocation(cluster, job, res, 1.1, 4)
        c = coeffs(cluster, res)
        assert abs(sum(w.samples for w in alloc.workers) - job.data.samples) <= len(alloc.workers)
        for i, w in enumerate(alloc.workers):
            t = w.samples * (c.a_s[i] + c.b_s[i] / w.batch)
            # rounding the batch (and the samples) moves a worker's time by well under 1 %
            assert t == pytest.approx(alloc.budget_s, rel=0.01), (w, t, alloc.budget_s)
            assert w.batch <= c.max_batch[i]
        assert len(alloc.small) == 4
        assert all(alloc.workers[i].batch < c.max_batch[i] for i in range(16) if c.names[i] in alloc.small)


def test_time_ratio_below_one_with_small_workers(gtx):
    with pytest.raises(UserError, match=r"--time-ratio 0.9: with 1 small worker\(s\) the extra-time ratio t must be >= 1"):
        dbsl_allocation(*gtx, 32, 0.9, 1)


def test_budget_no_small_batch_can_meet(gtx):
    with pytest.raises(UserError, match=r"no small batch meets the time budget for 'gtx0'.*B_S = b/\(T1/d_S - a\)"):
        dbsl_allocation(*gtx, 32, 1.33, 1)
    with pytest.raises(UserError, match=r"the large workers already take all 50000 samples"):
        dbsl_allocation(*gtx, 32, 1.4, 1)


def test_missing_resolution_is_named():
    cluster, job = load_cluster("gtx1080x4"), load_job("imagenet-resnet18")
    with pytest.raises(UserError, match=r"devices.gtx1080.resolutions: worker 'gtx0' has no profile for resolution 160"):
        dbsl_allocation(cluster, job, 160, 1.05, 1)



def test_small_batch_is_positive_whenever_t_at_least_one():
    """For t >= 1, T1/d_S >= t·c_S > a_S, so B_S is never negative: the reachable failure is B_S < 1."""
    cluster, job = load_cluster("mixed16"), load_job("imagenet-resnet18")
    for t in (1.0, 1.02, 1.05):
        for s in (1, 4, 8, 15):
            try:
                alloc = dbsl_allocation(cluster, job, 288, t, s)
            except UserError as e:
                assert "the large workers already take all" in str(e) or "(< 1)" in str(e)
                continue
            assert all(w.batch >= 1 for w in alloc.workers)


def test_cyclic_layout_substages_parameter():
    job = load_job("imagenet-resnet18")
    # two sub-stages per LR stage: lowest then highest resolution
    two = cyclic_layout(job, substages=2)
    assert [(s.end_epoch, s.resolution) for s in two] == [(30, 160), (60, 288), (75, 160), (90, 288), (97, 160), (105, 288)]
    # one sub-stage: the highest resolution only, i.e. the fixed layout
    assert cyclic_layout(job, substages=1) == fixed_layout(job)
    # six sub-stages over three resolutions: each resolution twice in a row (merged into one phase)
    six = cyclic_layout(job, substages=6)
    assert [(s.end_epoch, s.resolution) for s in six][:3] == [(20, 160), (40, 224), (60, 288)]


def test_every_worker_small_gives_the_journal_batches_and_shares(gtx):
    """s = n (4 of 4): the baseline's equal split d_S = N/n, and the batch that fills the
    budget t·T0: B_S = b / (t·(a + b/B_L) − a). At 24 px (a = 0.3527 ms, b = 14.79 ms,
    B_L = 600): t = 1 keeps 600; 1.05 gives 0.014789 / 4.351e-5 = 339.9 -> 340."""
    cluster, job = gtx
    c = coeffs(cluster, 24)
    for t, want in ((1.0, 600), (1.05, 340), (1.1, 237)):
        alloc = dbsl_allocation(cluster, job, 24, t, 4)
        assert alloc.small == ("gtx0", "gtx1", "gtx2", "gtx3")
        assert alloc.shares == (12500,) * 4
        assert alloc.batches == (want,) * 4
        a, b, big = c.a_s[0], c.b_s[0], c.max_batch[0]
        assert want == round(b / (t * (a + b / big) - a))
    with pytest.raises(UserError, match="between 0 and 4"):
        dbsl_allocation(cluster, job, 24, 1.05, 5)
