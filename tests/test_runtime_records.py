"""The workers' `train` records (per exchange interval: the mean training loss, and with a
lossy codec the norms going into and left over from error feedback), on real gloo runs."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from runtime.testing import reference_bsp_sgd, run_cli, spec_args, write_specs  # noqa: E402
from traces.jsonl import read_trace  # noqa: E402
from traces.records import validate_record  # noqa: E402

WORKERS = [("w0", 16, 64), ("w1", 48, 192)]  # 4 rounds per epoch, weights 1:3


def _run(tmp_path, **kw):
    write_specs(tmp_path, WORKERS, lr=0.05, momentum=0.9, weight_decay=1e-3, **kw)
    out = tmp_path / "out"
    r = run_cli(["run", *spec_args(tmp_path), "--out", out, "--local", "--eval-every", "0", "--worker-timeout", "30"])
    assert r.returncode == 0, r.stderr
    tr = read_trace(out / "trace.jsonl")
    assert all(validate_record(x) is None for x in tr.records)
    return tr


def test_bsp_train_losses_are_the_single_process_losses_of_each_step(tmp_path):
    # per bsp round the samples-weighted mean of the workers' interval losses is the loss
    # of single-process SGD on the union of their batches, step for step
    tr = _run(tmp_path, sync="bsp", epochs=2)
    train = tr.of_kind("train")
    assert len(train) == len(tr.of_kind("push")) == 2 * 2 * 4
    per_worker = defaultdict(list)
    for t in sorted(train, key=lambda t: t["t_s"]):
        per_worker[t["worker"]].append(t)
    assert [t["samples"] for t in per_worker["w0"]] == [16] * 8
    ref: list[float] = []
    reference_bsp_sgd(WORKERS, 2, 0.05, 0.9, 1e-3, losses=ref)
    got = [(a["samples"] * a["loss"] + b["samples"] * b["loss"]) / (a["samples"] + b["samples"])
           for a, b in zip(per_worker["w0"], per_worker["w1"])]
    assert got == pytest.approx(ref, abs=1e-5)
    assert ref[-1] < ref[0]  # it trained
    assert not any("update_norm" in t for t in train)  # no lossy codec
    (noise,) = tr.of_kind("noise")  # one per gradient-exchange phase without lossy codec
    assert noise["estimator"] == "two-batch" and noise["rounds"] == 8 and noise["batch_big"] == 64


def test_topk_train_records_carry_the_error_feedback_norms(tmp_path):
    # top-k keeps the largest 10%: what goes into the codec splits into the kept part and
    # the residual, so 0 < residual_norm < update_norm; no noise record (lossy pushes)
    tr = _run(tmp_path, sync="asp", epochs=1, compression={"kind": "topk", "ratio": 0.1})
    train = tr.of_kind("train")
    assert len(train) == len(tr.of_kind("push")) and train
    for t in train:
        assert 0 < t["residual_norm"] < t["update_norm"]
        assert math.isfinite(t["loss"]) and t["loss"] > 0
    assert not tr.of_kind("noise")


def test_asp_gradient_phase_gets_a_differenced_noise_record(tmp_path):
    tr = _run(tmp_path, sync="asp", epochs=2)
    (noise,) = tr.of_kind("noise")
    pushes = len(tr.of_kind("push"))
    assert noise["estimator"] == "differenced" and noise["rounds"] == pushes - 1
    assert noise["noise_scale"] > 0 and noise["grad_sq"] > 0 and noise["trace_cov"] > 0
    assert "batch_small" not in noise


def test_two_shards_give_the_same_noise_record_as_one(tmp_path):
    # the shards' partial squared norms add up on shard 0 to the one-shard values
    one = _run(tmp_path / "s1", sync="bsp", epochs=1).of_kind("noise")[0]
    two = _run(tmp_path / "s2", sync="bsp", epochs=1, ps_count=2).of_kind("noise")[0]
    for key in ("noise_scale", "grad_sq", "trace_cov", "stderr"):
        assert two[key] == pytest.approx(one[key], rel=1e-4)
    assert two["rounds"] == one["rounds"] == 4
