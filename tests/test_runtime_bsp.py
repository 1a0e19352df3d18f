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
