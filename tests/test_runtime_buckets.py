"""Bucketed gradient pushes (runtime/buckets.py, `hybridps run --bucket-mb`): the layout
both sides follow, and real gloo runs on 127.0.0.1 whose results equal those of pushes
in one piece."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from runtime.buckets import bucket_layout, overlaps, shard_pieces  # noqa: E402
from runtime.context import shard_bounds  # noqa: E402
from runtime.server import load_checkpoint  # noqa: E402
from runtime.testing import reference_bsp_sgd, run_cli, spec_args, write_specs  # noqa: E402
from traces.jsonl import read_trace  # noqa: E402
from tests.test_runtime_bsp_loss import kill_w2_mid_run  # noqa: E402

LR, MOM, WD = 0.05, 0.9, 1e-3
SMALL_MB = "0.01"  # 2,621 floats: the 13,002-parameter mlp goes in 5 slices


def _check_layout(n: int, shards: int, cap_bytes: int) -> None:
    bounds = shard_bounds(n, shards)
    pieces = bucket_layout(n, bounds, cap_bytes)
    cap = max(1, cap_bytes // 4)
    covered = np.zeros(n, dtype=int)
    for pc in pieces:
        covered[pc.lo:pc.hi] += 1
        lo, hi = bounds[pc.shard]
        assert lo <= pc.lo < pc.hi <= hi  # one shard each, never empty
        assert pc.hi - pc.lo <= cap
    assert (covered == 1).all()  # the whole vector, once
    assert [pc.hi for pc in pieces] == [n] + [pc.lo for pc in pieces[:-1]]  # from the end, contiguous
    for s in range(shards):  # a shard's pieces, in sending order, also run from its end down
        mine = shard_pieces(pieces, s)
        assert mine[0].hi == bounds[s][1] and mine[-1].lo == bounds[s][0]


def test_layout_covers_the_vector_once_from_the_end_split_at_shard_bounds():
    for n, shards, cap_bytes in [(10, 1, 16), (10, 2, 12), (13_002, 1, 10_485), (13_002, 2, 10_485),
                                 (13_002, 3, 4), (7, 3, 1), (1_000_003, 4, 25 * 2**20), (100, 1, 10_000)]:
        _check_layout(n, shards, cap_bytes)
    assert [tuple(p) for p in bucket_layout(10, [(0, 6), (6, 10)], 12)] == \
        [(1, 7, 10), (1, 6, 7), (0, 4, 6), (0, 1, 4), (0, 0, 1)]
    assert len(bucket_layout(100, [(0, 100)], 10_000)) == 1  # a bucket larger than the model
    assert not overlaps(100, 400) and overlaps(100, 396) and not overlaps(100, 0)  # ... is pushed in one piece
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(1, 5_000))
        _check_layout(n, int(rng.integers(1, min(n, 5) + 1)), int(rng.integers(1, 8_000)))


def _run(d, workers, *, sync="bsp", ps_count=1, bucket_mb=SMALL_MB, epochs=2):
    write_specs(d, workers, sync=sync, exchange="gradient", epochs=epochs, lr=LR, momentum=MOM, weight_decay=WD,
                ps_count=ps_count)
    out = d / "out"
    r = run_cli(["run", *spec_args(d), "--out", out, "--local", "--eval-every", "0", "--eval-samples", "200",
                 "--worker-timeout", "30", "--no-emulate", "--bucket-mb", bucket_mb])
    assert r.returncode == 0, r.stderr
    shards = [load_checkpoint(out / "checkpoint.pt")]
    shards += [load_checkpoint(out / f"checkpoint-shard{s}.pt") for s in range(1, ps_count)]
    return torch.cat([ck["params"] for ck in shards]), read_trace(out / "trace.jsonl")


@pytest.mark.parametrize("ps_count,workers", [(1, [("w0", 32, 128), ("w1", 32, 128)]),
                                              (2, [("w0", 16, 64), ("w1", 48, 192)])])
def test_bsp_with_buckets_equals_single_process_sgd(tmp_path, ps_count, workers):
    got, tr = _run(tmp_path, workers, ps_count=ps_count)
    ref = reference_bsp_sgd(workers, 2, LR, MOM, WD)
    assert float((got - ref).abs().max()) < 1e-5
    pieces = len(bucket_layout(got.numel(), shard_bounds(got.numel(), ps_count), int(0.01 * 2**20)))
    assert pieces == (5 if ps_count == 1 else 6)  # 2 shards: one slice splits at the bound
    pushes = tr.of_kind("push")
    assert len(pushes) == 2 * 8
    for p in pushes:  # every push went in buckets, all bytes of it, and the trace's order holds
        assert p["buckets"] == pieces and 0 <= p["buckets_in_backward"] <= pieces
        assert p["bytes"] == 4 * got.numel()
    computes = {(c["worker"], c["step"]): c for c in tr.of_kind("compute")}
    steps = {}
    for p in pushes:
        k = steps.get(p["worker"], 0)
        steps[p["worker"]] = k + 1
        assert p["start_s"] >= computes[(p["worker"], k)]["end_s"]


def test_asp_with_buckets_ends_where_pushes_in_one_piece_end(tmp_path):
    # one worker: asp applies its pushes in order, so both runs compute the same floats
    workers = [("w0", 32, 256)]
    bucketed, tr = _run(tmp_path / "b", workers, sync="asp")
    whole, tr0 = _run(tmp_path / "w", workers, sync="asp", bucket_mb="0")
    assert torch.equal(bucketed, whole)
    assert all(p["buckets"] == 5 for p in tr.of_kind("push"))
    assert not any("buckets" in p for p in tr0.of_kind("push"))
    assert float((whole - reference_bsp_sgd(workers, 0, LR, MOM, WD)).abs().max()) > 1e-2  # it did train


@pytest.mark.parametrize("flags", [["--bucket-mb", SMALL_MB],  # emulated: pushes after compute, as simulated
                                   ["--no-emulate"]])  # 52 KB of gradient, one 25 MB bucket: nothing to overlap
def test_pushes_in_one_piece_when_emulated_or_the_model_fits_one_bucket(tmp_path, flags):
    write_specs(tmp_path, [("w0", 32, 64)], sync="bsp", exchange="gradient", epochs=1, lr=LR)
    r = run_cli(["run", *spec_args(tmp_path), "--out", tmp_path / "out", "--local", "--eval-every", "0",
                 "--eval-samples", "100", *flags])
    assert r.returncode == 0, r.stderr
    pushes = read_trace(tmp_path / "out" / "trace.jsonl").of_kind("push")
    assert len(pushes) == 2 and not any("buckets" in p for p in pushes)


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_bucket_mb_must_be_finite_and_not_negative(tmp_path, value):
    write_specs(tmp_path, [("w0", 32, 64)])
    r = run_cli(["run", *spec_args(tmp_path), "--out", tmp_path / "out", "--local", "--bucket-mb", value])
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "--bucket-mb" in errors[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_killed_worker_in_a_bucketed_bsp_phase_the_others_finish(tmp_path):
    trace, err = kill_w2_mid_run(tmp_path, {}, model="mlp:2000", epochs=40,
                                 extra=["--no-emulate", "--bucket-mb", "0.1"])  # 406,010 parameters: 16 pieces
    assert "worker w2 (rank 3) lost" in err and "continuing without it" in err, err
    tr = read_trace(trace)
    assert not tr.torn and len(tr.of_kind("phase")) == 1
    (lost,) = tr.of_kind("worker_lost")
    assert lost["worker"] == "w2" and lost["shares"] == {"w0": 384, "w1": 384}
    late = [u for u in tr.of_kind("update") if u["t_s"] > lost["t_s"]]
    assert late and {u["worker"] for u in late} == {"w0", "w1"}
    assert all(p["buckets"] == 16 for p in tr.of_kind("push"))
    ck = load_checkpoint(tmp_path / "out" / "checkpoint.pt")
    assert ck["complete"] and ck["applied_total"] >= 40 * 768
