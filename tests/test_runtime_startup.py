"""What a user sees while `hybridps run` starts and when it ends: one line as soon as the
launcher starts, one per rank when it is ready, summary.json's startup_s from the
launcher's start to the first training step, and the held-out split evaluation used."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from runtime.summary import first_step_s  # noqa: E402
from runtime.testing import spec_args, write_specs  # noqa: E402
from traces.jsonl import read_trace  # noqa: E402

WORKERS = [("w0", 16, 64), ("w1", 48, 192)]
READY = re.compile(r"hybridps run: rank (\d) \((.*)\) ready ([\d.]+) s after start \(torch imported at ([\d.]+) s\)")


def _run_watching_stderr(args: list[str]) -> dict:
    """Run `python -m hybridps ARGS`, stamping each stderr line with the time it was read."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    t_spawn = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "hybridps", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.time(), ln.rstrip("\n")) for ln in proc.stderr))
    reader.start()
    stdout = proc.stdout.read()
    proc.wait(timeout=180)
    t_exit = time.time()
    reader.join(timeout=10)
    return {"code": proc.returncode, "stdout": stdout, "lines": lines, "t_spawn": t_spawn, "t_exit": t_exit}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("startup")
    write_specs(d, WORKERS, epochs=1)
    out = d / "out"
    r = _run_watching_stderr(["run", *spec_args(d), "--out", out, "--local", "--eval-every", "0",
                              "--eval-samples", "500", "--worker-timeout", "30"])
    assert r["code"] == 0, "\n".join(ln for _, ln in r["lines"])
    r["summary"] = json.loads((out / "summary.json").read_text())
    r["trace"] = read_trace(out / "trace.jsonl")
    return r


def test_start_line_then_one_ready_line_per_rank(run):
    texts = [ln for _, ln in run["lines"] if ln.startswith("hybridps")]  # not torch's or gloo's own notes
    assert texts[0] == ("hybridps run: starting 1 PS + 2 workers on this machine (3 processes; each imports "
                        "torch, loads the data and builds the model)")
    ready = [READY.fullmatch(t) for t in texts[1:4]]
    assert all(ready), texts
    assert sorted((int(m[1]), m[2]) for m in ready) == [(0, "PS"), (1, "worker w0 on cpu"), (2, "worker w1 on cpu")]
    for m in ready:  # torch comes first; every rank is ready before time zero (lines round to 0.1 s)
        assert 0 < float(m[4]) <= float(m[3]) <= run["summary"]["ready_s"] + 0.05


def test_startup_s_runs_from_the_launchers_start_to_the_first_compute_record(run):
    s, computes = run["summary"], run["trace"].of_kind("compute")
    first = min(c["start_s"] for c in computes)
    assert s["startup_s"] == pytest.approx(s["ready_s"] + first, abs=1e-9)
    # the launch precedes the start line and the first step follows every ready line, so
    # start-up spans at least the time between those lines as this test read them
    t_start_line = min(t for t, ln in run["lines"] if "hybridps run: starting" in ln)
    t_last_ready = max(t for t, ln in run["lines"] if READY.fullmatch(ln))
    assert s["startup_s"] >= t_last_ready - t_start_line - 0.25
    # ... and start-up plus the training after the first step fit in the process's life
    assert s["startup_s"] + (s["makespan_s"] - first) <= run["t_exit"] - run["t_spawn"] + 0.05


def test_the_end_names_the_eval_split_and_its_size(run):
    assert run["summary"]["eval"] == {"split": "test", "samples": 500, "split_samples": 2000, "mode": "eval"}
    ev = run["summary"]["final_eval"]
    assert ev["samples"] == 500 and ev["split"] == "test"
    assert (f"test accuracy {ev['accuracy']:.3f} (loss {ev['loss']:.3f}) on the first 500 of 2,000 samples of "
            f"the held-out 'test' split") in run["stdout"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_device_cuda_without_a_gpu_is_one_line_before_any_process_starts(tmp_path):
    write_specs(tmp_path, WORKERS, epochs=1)
    r = _run_watching_stderr(["run", *spec_args(tmp_path), "--out", tmp_path / "out", "--local", "--device", "cuda"])
    assert r["code"] == 2
    assert [ln for _, ln in r["lines"]] == ["hybridps: error: --device cuda: no CUDA device is available on this "
                                            "machine; use --device cpu or auto"]


def test_first_step_counts_from_this_launchs_time_zero():
    # a resumed trace keeps the earlier records on the same clock: only this launch's count
    computes = [{"start_s": 0.5}, {"start_s": 3.0}, {"start_s": 10.25}, {"start_s": 10.75}]
    assert first_step_s(computes, 0.0) == 0.5
    assert first_step_s(computes, 10.0) == 0.25
    assert first_step_s(computes, 11.0) == 0.0
