"""bsp with gradient exchange on real gloo processes (1 PS + 2 workers on 127.0.0.1)
equals single-process SGD on the union of the workers' batches."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from runtime.server import load_checkpoint  # noqa: E402
from runtime.testing import reference_bsp_sgd, run_cli, spec_args, write_specs  # noqa: E402
from traces.jsonl import read_trace  # noqa: E402

LR, MOM, WD = 0.05, 0.9, 1e-3


def _run_and_compare(tmp_path, workers, epochs=2, ps_count=1):
    write_specs(tmp_path, workers, sync="bsp", exchange="gradient", epochs=epochs, lr=LR, momentum=MOM,
                weight_decay=WD, ps_count=ps_count)
    out = tmp_path / "out"
    r = run_cli(["run", *spec_args(tmp_path), "--out", out, "--local", "--eval-every", "0", "--eval-samples", "200",
                 "--worker-timeout", "30"])
    assert r.returncode == 0, r.stderr
    shards = [load_checkpoint(out / "checkpoint.pt")]
    shards += [load_checkpoint(out / f"checkpoint-shard{s}.pt") for s in range(1, ps_count)]
    got = torch.cat([ck["params"] for ck in shards])
    ref = reference_bsp_sgd(workers, epochs, LR, MOM, WD)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 1e-5
    assert float((ref - reference_bsp_sgd(workers, 0, LR, MOM, WD)).abs().max()) > 1e-2  # it did train
    return read_trace(out / "trace.jsonl")


def test_bsp_equal_batches_equals_single_process_sgd(tmp_path):
    tr = _run_and_compare(tmp_path, [("w0", 32, 128), ("w1", 32, 128)])
    updates = tr.of_kind("update")
    steps = 2 * 128 // 32
    assert len(updates) == 2 * steps  # one per worker per round
    assert sorted({u["version"] for u in updates}) == list(range(1, steps + 1))
    assert all(u["staleness"] == 0 for u in updates)
    pushes = tr.of_kind("push")
    assert len(pushes) == 2 * steps and all(p["bytes"] == 4 * tr.header["meta"]["parameters"] for p in pushes)
    assert len(tr.of_kind("phase")) == 1


def test_bsp_unequal_batches_is_the_batch_weighted_average_over_two_shards(tmp_path):
    # same iterations per epoch (4), batches 16 and 48: the PS weights 1:3; parameters
    # split over 2 PS shards (shard_sizes), each applying its slice
    tr = _run_and_compare(tmp_path, [("w0", 16, 64), ("w1", 48, 192)], ps_count=2)
    computes = tr.of_kind("compute")
    assert {(c["worker"], c["batch"]) for c in computes} == {("w0", 16), ("w1", 48)}
    assert sum(c.get("samples", c["batch"]) for c in computes) == 2 * 256


def test_phase_after_a_milestone_uses_exactly_the_plans_lr(tmp_path):
    # job: base_lr 0.1, decay x0.1 at epoch 1. The plan's phase 1 (epoch 1-2) already
    # carries the decayed lr 0.02 (the solver folds the decay in); the runtime must apply
    # 0.02, not 0.02 x 0.1 again. Reference: single-process SGD, lr 0.05 then 0.02.
    workers = [("w0", 32, 128), ("w1", 32, 128)]
    wl = [{"name": n, "batch": b, "samples": s} for n, b, s in workers]
    ph0 = {"epochs": 1, "resolution": 8, "sync": "bsp", "exchange": "gradient", "lr": 0.05, "workers": wl}
    ph1 = dict(ph0, lr=0.02)
    write_specs(tmp_path, workers, lr=0.1, momentum=MOM, weight_decay=WD, phases=[ph0, ph1])
    with open(tmp_path / "job.toml", "a") as f:
        f.write("lr_milestones = [1]\nlr_decay = 0.1\n")
    out = tmp_path / "out"
    r = run_cli(["run", *spec_args(tmp_path), "--out", out, "--local", "--eval-every", "0", "--eval-samples", "200",
                 "--worker-timeout", "30"])
    assert r.returncode == 0, r.stderr
    got = load_checkpoint(out / "checkpoint.pt")["params"]
    ref = _reference_sgd_per_epoch(workers, [0.05, 0.02])
    assert float((got - ref).abs().max()) < 1e-5
    twice = _reference_sgd_per_epoch(workers, [0.05, 0.002])  # the old double decay
    assert float((got - twice).abs().max()) > 1e-3


def _reference_sgd_per_epoch(workers, lrs):
    """Single-process SGD on the union of the workers' batches, lr `lrs[e]` in epoch e
    (one optimizer throughout: momentum carries over, as on the PS)."""
    import math

    import torch.nn.functional as F

    from runtime.data import epoch_permutation, load_dataset, share_indices
    from runtime.models import build_model

    samples = sum(s for _, _, s in workers)
    ds = load_dataset("synthetic", samples, 0)
    net = build_model("mlp", ds.num_classes, seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=lrs[0], momentum=MOM, weight_decay=WD)
    shares = [s for _, _, s in workers]
    for epoch, lr in enumerate(lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        perm = epoch_permutation(samples, epoch, 0)
        own = [share_indices(perm, shares, i) for i in range(len(workers))]
        for k in range(math.ceil(workers[0][2] / workers[0][1])):
            idx = torch.cat([torch.from_numpy(own[i][k * b: (k + 1) * b]) for i, (_, b, _) in enumerate(workers)])
            x, y = ds.batch(idx.numpy(), 8)
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return torch.nn.utils.parameters_to_vector(net.parameters()).detach()

