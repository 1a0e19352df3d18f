"""--on-worker-loss continue in a bsp phase: the PS drops the lost worker, finishes the
round it held up, and the others re-split the epoch with equal steps per epoch; a PS
send to a stopped worker times out instead of blocking the PS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from runtime.data import effective_shares  # noqa: E402
from runtime.server import load_checkpoint  # noqa: E402
from runtime.testing import spec_args, write_specs  # noqa: E402
from traces.jsonl import read_trace  # noqa: E402
from tests.test_runtime_faults import _alive, _children  # noqa: E402

TIMEOUT_S = 3.0


def test_bsp_resplit_keeps_equal_steps_and_covers_the_epoch():
    for shares, batches, lost in [([128, 128, 128], [32, 32, 32], {2}), ([64, 192, 128], [16, 48, 32], {2}),
                                  ([100, 100, 100], [32, 32, 32], {1}), ([96, 480, 288], [8, 40, 24], {0})]:
        got = effective_shares(shares, lost, [0, 1, 2], batches)
        alive = [i for i in range(3) if i not in lost]
        assert all(got[i] == 0 for i in lost)
        assert sum(got) == sum(shares)  # the phase still covers the epoch
        assert len({-(-got[i] // batches[i]) for i in alive}) == 1  # the same steps per epoch
    assert effective_shares([128, 128], set(), [0, 1], [32, 32]) == [128, 128]
    assert effective_shares([128, 128], {0, 1}, [0, 1], [32, 32]) == [0, 0]


def test_a_reply_gloo_refuses_at_once_makes_the_worker_lost_not_the_ps_crash():
    """A worker killed after its push: gloo may refuse the reply's send at once
    ("Connection closed by peer"). That send becomes a FailedSend, and waiting the round's
    sends reports the worker lost (so --on-worker-loss continue goes on); before, the error
    escaped the PS mid-round and aborted it (seen in CI, 2026-12-06)."""
    from types import SimpleNamespace

    from runtime.server import FailedSend, Shard, WorkerLost

    shard = SimpleNamespace(ctx=SimpleNamespace(opts=SimpleNamespace(worker_timeout_s=5.0), workers=["w0", "w1", "w2"],
                                                worker_rank=lambda pos: pos + 1), _waiters={})
    sent = []
    ok = SimpleNamespace(wait=lambda: sent.append("w0"))
    refused = FailedSend(RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:8592"))
    with pytest.raises(WorkerLost) as lost:
        Shard._wait_sends(shard, [(ok, 0), (refused, 2)])
    assert sent == ["w0"]  # the round's other replies were still waited for
    assert (lost.value.pos, lost.value.rank) == (2, 3) and "connection failed: " in str(lost.value)
    assert "Connection closed by peer" in str(lost.value)


def _start(tmp_path, workers, slowdown, model="mlp", epochs=12, timeout_s=TIMEOUT_S, extra=()):
    write_specs(tmp_path, workers, sync="bsp", exchange="gradient", epochs=epochs, lr=0.05, slowdown=slowdown,
                model=model)
    cmd = [sys.executable, "-m", "hybridps", "run", *map(str, spec_args(tmp_path)), "--out", str(tmp_path / "out"),
           "--local", "--eval-every", "0", "--eval-samples", "200", "--worker-timeout", str(timeout_s),
           "--on-worker-loss", "continue", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


def _wait_for_updates(launcher, trace, n: int) -> None:
    deadline = time.monotonic() + 90
    while not (trace.exists() and trace.read_text().count('"kind":"update"') >= n):
        assert time.monotonic() < deadline and launcher.poll() is None, launcher.communicate()
        time.sleep(0.05)


def _finish(launcher, ranks) -> str:
    try:
        _, err = launcher.communicate(timeout=150)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, err
    assert not [pid for pid in ranks if _alive(pid)]  # no orphans
    return err


def kill_w2_mid_run(tmp_path, slowdown, **start) -> tuple:
    """Three bsp workers (batch 32, 256 samples each) under --on-worker-loss continue; w2
    SIGKILLed after 10 rounds. Returns the trace's path and the launcher's stderr."""
    workers = [("w0", 32, 256), ("w1", 32, 256), ("w2", 32, 256)]
    launcher = _start(tmp_path, workers, slowdown, **start)
    trace = tmp_path / "out" / "trace.jsonl"
    _wait_for_updates(launcher, trace, 3 * 10)
    ranks = _children(launcher.pid)
    os.kill(next(pid for pid, rank in ranks.items() if rank == 3), signal.SIGKILL)  # w2
    return trace, _finish(launcher, ranks)


@pytest.mark.slow
def test_killed_worker_in_bsp_phase_the_others_resplit_and_finish(tmp_path):
    trace, err = kill_w2_mid_run(tmp_path, {"w0": 10.0, "w1": 10.0, "w2": 10.0})
    assert "worker w2 (rank 3) lost" in err and "continuing without it" in err, err
    tr = read_trace(trace)  # valid JSONL from start to end
    assert not tr.torn and len(tr.of_kind("phase")) == 1
    (lost,) = tr.of_kind("worker_lost")
    assert lost["worker"] == "w2" and lost["phase"] == 0 and lost["shares"] == {"w0": 384, "w1": 384}
    versions = [u["version"] for u in tr.of_kind("update")]
    assert versions == sorted(versions)
    late = [u for u in tr.of_kind("update") if u["t_s"] > lost["t_s"]]
    assert late and {u["worker"] for u in late} == {"w0", "w1"}
    # each round after the loss has exactly the two others' updates, and the re-split
    # worker-epochs take 384 / 32 = 12 steps each
    per_version: dict[int, set[str]] = {}
    for u in late:
        per_version.setdefault(u["version"], set()).add(u["worker"])
    assert all(ws == {"w0", "w1"} for ws in per_version.values())
    per_epoch: dict[tuple[str, int], int] = {}
    for c in tr.of_kind("compute"):
        per_epoch[(c["worker"], c["epoch"])] = per_epoch.get((c["worker"], c["epoch"]), 0) + 1
    after = {e for (w, e) in per_epoch if w == "w0" and any(c["epoch"] == e and c["start_s"] > lost["t_s"] + 0.5
                                                            for c in tr.of_kind("compute") if c["worker"] == "w1")}
    full = [per_epoch[(w, e)] for w in ("w0", "w1") for e in sorted(after)[1:-1]]
    assert full and set(full) == {12}
    ck = load_checkpoint(tmp_path / "out" / "checkpoint.pt")
    assert ck["complete"] and ck["applied_total"] >= 12 * 768


@pytest.mark.slow
def test_send_to_a_stopped_worker_times_out_and_the_run_finishes(tmp_path):
    """w0 is fast and spends its time waiting for the round's reply, which w1 (slow)
    holds up; SIGSTOPped then, its reply (an 81 MB model: more than loopback's socket
    buffers, 32 MB + 4 MB here)
    cannot be delivered, and the PS's send gives up after the timeout."""
    workers = [("w0", 8, 16), ("w1", 8, 16)]
    launcher = _start(tmp_path, workers, {"w0": 1.0, "w1": 10.0}, model="mlp:100000", epochs=3, timeout_s=15.0)
    trace = tmp_path / "out" / "trace.jsonl"
    _wait_for_updates(launcher, trace, 2 * 3)
    # a worker's train record travels with its push: once the PS has written w0's 4th,
    # it holds w0's 4th push, and w0 waits for the reply that w1 (10x slower) holds up
    deadline = time.monotonic() + 90
    while sum(1 for r in read_trace(trace).of_kind("train") if r["worker"] == "w0") < 4:
        assert time.monotonic() < deadline and launcher.poll() is None, launcher.communicate()
        time.sleep(0.02)
    ranks = _children(launcher.pid)
    os.kill(next(pid for pid, rank in ranks.items() if rank == 1), signal.SIGSTOP)  # w0
    err = _finish(launcher, ranks)
    assert "worker w0 (rank 1) lost: send timed out" in err, err
    tr = read_trace(trace)
    assert not tr.torn and len(tr.of_kind("phase")) == 1
    (lost,) = tr.of_kind("worker_lost")
    assert lost["worker"] == "w0" and lost["shares"] == {"w1": 32}
