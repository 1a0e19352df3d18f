"""Fault injection on real `hybridps run --local` runs: a killed, a stopped PS, SIGTERM to
the launcher, a full disk, a corrupt checkpoint, a resume with other specs. Each fault:
the documented exit code and one line naming the rank, a loadable checkpoint, a valid
trace; then `--resume` gives the uninterrupted run's summary (updates, samples,
per-worker iterations), the same model parameters, and a trace with one `resume` record
and versions 1..N. Where no small tmpfs can be mounted, the full disk is injected (the
trace writer's ENOSPC hook)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

from hybridps.errors import EXIT_INTERRUPTED, EXIT_IO_ERROR, EXIT_PS_LOST  # noqa: E402
from runtime.checkpoint import load_checkpoint  # noqa: E402
from runtime.testing import run_cli, spec_args, write_specs  # noqa: E402
from traces.jsonl import FULL_DISK_ENV, read_trace  # noqa: E402

EPOCHS = 16
WORKERS = [("w0", 32, 256), ("w1", 32, 256)]  # bsp: 8 rounds per epoch, deterministic counts
FLAGS = ["--eval-every", "0", "--eval-samples", "200", "--checkpoint-every", "0.3"]


def _specs(d: Path) -> list:
    write_specs(d, WORKERS, sync="bsp", exchange="gradient", epochs=EPOCHS, lr=0.05,
                slowdown={"w0": 15.0, "w1": 15.0})
    return spec_args(d)


def _counts(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    return {"updates": s["updates"], "samples_applied": s["samples_applied"], "version": s["version"],
            "workers": {n: (w["iterations"], w["samples"]) for n, w in s["workers"].items()}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run (started with --overwrite over a left-over unfinished run)."""
    d = tmp_path_factory.mktemp("reference")
    out = d / "out"
    out.mkdir()
    (out / "trace.jsonl").write_text("left over\n")
    r = run_cli(["run", *_specs(d), "--out", out, "--local", *FLAGS], timeout_s=300)
    assert r.returncode == 2 and "--resume" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli(["run", *_specs(d), "--out", out, "--local", "--overwrite", *FLAGS], timeout_s=300)
    assert r.returncode == 0, r.stderr
    return {"counts": _counts(out), "params": load_checkpoint(out / "checkpoint.pt")["params"]}


def _rank_pids(launcher_pid: int) -> dict[int, int]:
    """{RANK: pid} of the launcher's children."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != launcher_pid:
                continue
            env = dict(kv.split("=", 1) for kv in (entry / "environ").read_text().split("\0") if "=" in kv)
            out[int(env["RANK"])] = int(entry.name)
        except (OSError, IndexError, KeyError, ValueError):
            continue
    return out


def _interrupt(d: Path, out: Path, fault, timeout_flag: float = 5.0, min_updates: int = 20):
    """Start a run, wait until it is under way, apply `fault(launcher, {rank: pid})`; returns (rc, stderr)."""
    cmd = [sys.executable, "-m", "hybridps", "run", *map(str, _specs(d)), "--out", str(out), "--local",
           *FLAGS, "--worker-timeout", str(timeout_flag)]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
    pids: dict[int, int] = {}
    try:
        trace = out / "trace.jsonl"
        deadline = time.monotonic() + 120
        while not (trace.exists() and trace.read_text(errors="replace").count('"kind":"update"') >= min_updates):
            assert time.monotonic() < deadline and launcher.poll() is None, launcher.communicate()
            time.sleep(0.1)
        pids = _rank_pids(launcher.pid)
        assert sorted(pids) == [0, 1, 2]
        fault(launcher, pids)
        _, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in pids.values():  # a stopped PS must not outlive the test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return launcher.returncode, err


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "hybridps: error" in ln or "hybridps: interrupted" in ln]
    assert "Traceback" not in err, err
    assert lines, err
    return lines[0]


def _check_stopped_state(out: Path) -> None:
    ck = load_checkpoint(out / "checkpoint.pt")  # loadable
    assert not ck["complete"]
    read_trace(out / "trace.jsonl")  # valid JSONL (a torn last line is allowed and cut on resume)


def _resume_equals(out: Path, reference: dict) -> None:
    r = run_cli(["run", "--resume", out, "--local", "--worker-timeout", "30"], timeout_s=300)
    assert r.returncode == 0, r.stderr
    assert _counts(out) == reference["counts"]
    params = load_checkpoint(out / "checkpoint.pt")["params"]
    assert torch.equal(params, reference["params"])  # bsp, 2 workers: the resumed model is the same bits
    tr = read_trace(out / "trace.jsonl")
    assert not tr.torn and len(tr.of_kind("resume")) == 1
    versions = [u["version"] for u in tr.of_kind("update")]
    # no discarded update left in the trace: versions never step back and none is missing (bsp: one per round)
    assert versions == sorted(versions) and sorted(set(versions)) == list(range(1, versions[-1] + 1))
    assert len(versions) == reference["counts"]["updates"]
    assert sum(1 for ln in (out / "trace.jsonl").read_text().splitlines() if '"kind":"header"' in ln) == 1


def test_killed_ps_is_named_and_resume_is_exact(tmp_path, reference):
    out = tmp_path / "out"
    rc, err = _interrupt(tmp_path, out, lambda launcher, pids: os.kill(pids[0], signal.SIGKILL))
    assert rc == EXIT_PS_LOST, err
    line = _error_line(err)
    assert "PS (rank 0) lost" in line and "SIGKILL" in line and "--resume" in line, err
    _check_stopped_state(out)
    _resume_equals(out, reference)


def test_stopped_ps_is_caught_by_the_workers_watchdog(tmp_path, reference):
    out = tmp_path / "out"
    t0 = []

    def stop(launcher, pids):
        os.kill(pids[0], signal.SIGSTOP)
        t0.append(time.monotonic())

    rc, err = _interrupt(tmp_path, out, stop, timeout_flag=4.0)
    assert rc == EXIT_PS_LOST, err
    assert time.monotonic() - t0[0] < 100  # caught (generous bound: a loaded machine)
    assert "PS (rank 0) lost" in _error_line(err), err
    _check_stopped_state(out)
    _resume_equals(out, reference)


@pytest.fixture(scope="module")
def terminated(tmp_path_factory) -> tuple[Path, int, str]:
    """A run stopped by SIGTERM to the launcher (what a batch scheduler sends)."""
    d = tmp_path_factory.mktemp("sigterm")
    out = d / "out"
    rc, err = _interrupt(d, out, lambda launcher, pids: launcher.send_signal(signal.SIGTERM))
    return out, rc, err


def _copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run.parent, dst)
    return dst / "out"


def test_sigterm_is_handled_like_ctrl_c(tmp_path, terminated, reference):
    out, rc, err = terminated
    assert rc == EXIT_INTERRUPTED, err
    line = _error_line(err)
    assert "interrupted" in line and "rank 0" in line and "--resume" in line, err
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    _check_stopped_state(out)
    _resume_equals(_copy(out, tmp_path / "copy"), reference)


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "zeros"])
def test_corrupt_checkpoint_is_one_line_naming_rank_0(tmp_path, terminated, damage):
    out = _copy(terminated[0], tmp_path / "copy")
    ck = out / "checkpoint.pt"
    data = ck.read_bytes()
    ck.write_bytes({"truncated": data[: len(data) // 2], "random": os.urandom(len(data)), "empty": b"",
                    "zeros": bytes(len(data))}[damage])
    before = (out / "trace.jsonl").read_bytes()
    r = run_cli(["run", "--resume", out, "--local"], timeout_s=120)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "rank 0" in r.stderr and ("corrupt checkpoint" in r.stderr or "not a hybridps checkpoint" in r.stderr)
    assert (out / "trace.jsonl").read_bytes() == before  # nothing touched


def test_resume_with_other_specs_is_refused(tmp_path, terminated, reference):
    out = _copy(terminated[0], tmp_path / "copy")
    specs = tmp_path / "copy"
    plan = json.loads((specs / "plan.json").read_text())
    plan["phases"][0]["lr"] = 0.01
    (tmp_path / "other-plan.json").write_text(json.dumps(plan))
    args = ["--cluster", specs / "cluster.toml", "--job", specs / "job.toml"]
    r = run_cli(["run", *args, "--plan", tmp_path / "other-plan.json", "--resume", out, "--local"], timeout_s=120)
    assert r.returncode == 2 and "another plan" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli(["run", *args, "--plan", specs / "plan.json", "--resume", out, "--local", "--seed", "7"])
    assert r.returncode == 2 and "--seed" in r.stderr, r.stderr
    r = run_cli(["run", *spec_args(specs), "--out", out, "--local"])  # a new run into it: refused
    assert r.returncode == 2 and "--resume" in r.stderr and "--overwrite" in r.stderr, r.stderr
    _resume_equals(out, reference)


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    write_specs(tmp_path, WORKERS, sync="bsp", epochs=1)
    out = tmp_path / "out"
    assert run_cli(["run", *spec_args(tmp_path), "--out", out, "--local"], timeout_s=180).returncode == 0
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert json.loads(files["summary.json"])["final_eval"] is not None
    r = run_cli(["run", "--resume", out, "--local"], timeout_s=180)
    assert r.returncode == 0 and "finished run" in r.stdout, r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


@pytest.fixture(params=["tmpfs", "injected"])
def small_disk(request, tmp_path, monkeypatch):
    """(directory, free): a 320 KiB tmpfs (needs mount rights: root in a container usually
    has them; skipped without), or a trace limited to 40 kB by the writer's ENOSPC hook
    (always). `free()` makes room again."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if request.param == "injected":
        monkeypatch.setenv(FULL_DISK_ENV, "40000")  # the run's subprocesses inherit it
        yield mnt, lambda: monkeypatch.delenv(FULL_DISK_ENV)
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt, lambda: subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_keeps_the_last_checkpoint_and_resumes(tmp_path, small_disk, reference):
    disk, free = small_disk
    out = disk / "out"
    cmd = ["run", *_specs(tmp_path), "--out", out, "--local", *FLAGS, "--worker-timeout", "30"]
    r = run_cli(cmd, timeout_s=300)
    assert r.returncode == EXIT_IO_ERROR, r.stderr
    line = _error_line(r.stderr)
    assert "rank 0" in line and "No space left on device" in line, r.stderr
    _check_stopped_state(out)
    free()
    _resume_equals(out, reference)


def test_stopped_asp_worker_is_caught_while_the_others_keep_the_ps_busy(tmp_path):
    """Liveness is checked between messages too, not only when the PS inbox is idle."""
    write_specs(tmp_path, [("w0", 16, 256), ("w1", 16, 256), ("w2", 16, 256)], sync="asp", exchange="gradient",
                epochs=200, lr=0.05, slowdown={"w0": 3.0, "w1": 3.0, "w2": 3.0})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hybridps", "run", *map(str, spec_args(tmp_path)), "--out", str(out), "--local",
           "--eval-every", "0", "--worker-timeout", "3"]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 120
        while not ((out / "trace.jsonl").exists() and (out / "trace.jsonl").read_text().count('"update"') >= 30):
            assert time.monotonic() < deadline and launcher.poll() is None, launcher.communicate()
            time.sleep(0.1)
        os.kill(_rank_pids(launcher.pid)[3], signal.SIGSTOP)  # w2
        t_stop = time.monotonic()
        _, err = launcher.communicate(timeout=180)
        caught_after_s = time.monotonic() - t_stop
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 3, err
    line = _error_line(err)
    assert "worker w2 (rank 3) lost: no heartbeat for" in line, err
    # caught near the 3 s timeout (a generous margin for a loaded machine), not only once the
    # others happened to pause (that took a minute here)
    assert caught_after_s < 3 + 27, caught_after_s
    load_checkpoint(out / "checkpoint.pt")
