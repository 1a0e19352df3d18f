"""The whole loop at small size: profile -> calibrate -> plan -> run --local -> calibrate
from the run -> validate. Real processes (1 PS + 3 gloo workers on 127.0.0.1, emulating
slowdowns 1, 1.5 and 2), a tiny CNN, synthetic data. The simulator's prediction of the
run's own plan, with evaluation every epoch, must be within 5% (makespan) and 10% (each
phase) on a quiet machine (HYBRIDPS_QUIET_MACHINE=1; 10% / 15% otherwise); a run whose iteration times drift (other work on the cores, or
the two busy loops the test starts in the middle of a run) must be flagged by calibrate,
and is then held to a sanity bound only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from hybridps.spec import load_cluster  # noqa: E402
from runtime.models import build_model, count_parameters  # noqa: E402
from runtime.profile import largest_fitting, profile  # noqa: E402
from traces import read_trace  # noqa: E402
from traces.calibrate import calibrate  # noqa: E402

BASE_CLUSTER = """\
# Three CPU workers on this machine emulating a heterogeneous cluster: the runtime
# slows them down 3x, 4.5x and 6x and throttles every NIC to 1 Gbps. (Slowed enough that
# their 4 processes mostly sleep on the 2-core machine: at 1x, 1.5x and 2x the fast worker
# finished its share early and the others sped up as it stopped competing for the cores,
# a contention the run changes itself, which calibrate rightly flags as drift.)
format = "hybridps.cluster/1"

[ps]
bandwidth_gbps = 10.0
latency_ms = 0.05

[devices.cpu.resolutions.16]   # placeholder: `hybridps calibrate` replaces it
a = 0.0001
b = 0.001
max_batch = 128

[[workers]]
name = "w0"
device = "cpu"
bandwidth_gbps = 1.0
slowdown = 3.0

[[workers]]
name = "w1"
device = "cpu"
bandwidth_gbps = 1.0
slowdown = 4.5

[[workers]]
name = "w2"
device = "cpu"
bandwidth_gbps = 1.0
slowdown = 6.0
"""

JOB = """\
format = "hybridps.job/1"

[model]
name = "cnn"
parameters = {parameters}

[data]
name = "synthetic"
samples = {samples}

[train]
epochs = {epochs}
resolutions = [24, 32]
base_batch = 32
base_lr = 0.05
"""


def test_largest_fitting_doubles_then_bisects():
    calls = []

    def fits(b):
        calls.append(b)
        return b <= 300

    assert largest_fitting(fits, 16, 4096) == 300
    assert calls[:6] == [16, 32, 64, 128, 256, 512]  # doubling, then bisection in (256, 512)
    assert len(calls) <= 6 + 9
    assert largest_fitting(lambda b: b <= 5, 16, 4096) == 5  # the start itself does not fit
    assert largest_fitting(lambda b: True, 16, 100) == 100  # capped
    assert largest_fitting(lambda b: False, 16, 100) == 0


def test_profile_times_each_batch_and_records_the_cap(tmp_path):
    out = tmp_path / "p.jsonl"
    recs = profile("mlp", [8, 16], [4, 16, 64], str(out), max_batch=32, warmup=1, repeats=3, threads=1)
    trace = read_trace(out)
    assert trace.source == "profile" and trace.header["meta"]["model"] == "mlp"
    assert [(r["resolution"], r["batch"]) for r in trace.of_kind("profile")] == \
        [(8, 4), (8, 16), (8, 32), (16, 4), (16, 16), (16, 32)]  # 64 > the CPU cap 32: skipped
    assert all(r["iteration_s"] > 0 and r["repeats"] == 3 for r in recs)
    cal = calibrate([trace])
    assert {(f.resolution, f.max_batch) for f in cal.compute} == {(8, 32), (16, 32)}


def _hybridps(*args, timeout=300, stderr=False):
    """Run the CLI; its stdout (or stderr, with `stderr=True`)."""
    proc = subprocess.run([sys.executable, "-m", "hybridps", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    shown = "(JSON)\n" if "--json" in args else proc.stdout
    print(f"$ hybridps {' '.join(map(str, args))}\n{shown}{proc.stderr}")
    assert proc.returncode == 0, proc.stderr
    return proc.stderr if stderr else proc.stdout


class BusyLoops:
    """Two busy-loop processes (one per core of the 2-core CI machine) started once the
    run's trace holds `after_evals` evaluation records, so that the contention changes in
    the middle of the run: the case calibrate cannot fit, and must say so."""

    def __init__(self, trace_path, after_evals: int):
        self.trace_path, self.after_evals = trace_path, after_evals
        self.procs: list[subprocess.Popen] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stop.wait(0.2):
            try:
                evals = self.trace_path.read_text().count('"kind":"eval"')
            except OSError:
                continue
            if evals >= self.after_evals:
                self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.mark.slow
@pytest.mark.parametrize("contention", ["quiet", "busy"])
def test_the_loop_predicts_the_run_or_says_it_cannot(tmp_path, contention):
    """Evaluation every epoch. Quiet: the run-calibrated prediction within 5% (makespan) and
    10% (each phase) on a machine known to be quiet, else 10% / 15%. Busy (two busy loops start a third of the way into the run): within
    10%, or calibrate warns that the iteration times drifted."""
    parameters = count_parameters(build_model("cnn", 10))
    (tmp_path / "base.toml").write_text(BASE_CLUSTER)
    (tmp_path / "job.toml").write_text(JOB.format(parameters=parameters, samples=4096, epochs=6))
    prof, cal, cal_run = tmp_path / "profile.jsonl", tmp_path / "cluster.toml", tmp_path / "cluster-run.toml"
    plan, run = tmp_path / "plan.json", tmp_path / "run"

    _hybridps("profile", "--model", "cnn", "--resolutions", 24, 32, "--batches", 8, 16, 32, 64,
              "--max-batch", 128, "--out", prof)
    _hybridps("calibrate", prof, "--base", tmp_path / "base.toml", "-o", cal)
    _hybridps("plan", "--cluster", cal, "--job", tmp_path / "job.toml", "-o", plan)
    run_args = ("run", "--cluster", cal, "--job", tmp_path / "job.toml", "--plan", plan, "--out", run, "--local",
                "--eval-every", 1, "--eval-samples", 200)
    if contention == "busy":
        with BusyLoops(run / "trace.jsonl", after_evals=3) as busy:  # the initial one, epochs 1 and 2 of 6
            _hybridps(*run_args, timeout=300)
        assert busy.procs, "the busy loops never started"
    else:
        _hybridps(*run_args, timeout=240)
    # before: the profile-only cluster; after: recalibrated from the run's own records
    before = json.loads(_hybridps("validate", "--trace", run / "trace.jsonl", "--cluster", cal, "--json"))
    calibrate_stderr = _hybridps("calibrate", prof, run / "trace.jsonl", "--base", cal, "-o", cal_run,
                                 stderr=True)
    after = json.loads(_hybridps("validate", "--trace", run / "trace.jsonl", "--cluster", cal_run, "--json",
                                 "--repeats", 30))
    _hybridps("validate", "--trace", run / "trace.jsonl", "--cluster", cal_run, "--repeats", 30)  # the table, for the log

    assert load_cluster(cal_run).worker_by_name["w2"].slowdown > load_cluster(cal_run).worker_by_name["w0"].slowdown
    for label, report in (("profile-calibrated", before), ("run-calibrated", after)):
        c = report["comparison"]
        print(f"{label}: makespan predicted {c['makespan']['predicted']:.3f} s, measured "
              f"{c['makespan']['measured']:.3f} s, error {c['makespan']['rel_error']:+.1%}; phases "
              + ", ".join(f"{r['rel_error']:+.1%}" for r in c["phases"]))
        print(f"{label}: per-worker compute_s errors "
              + ", ".join(f"{n} {next(r for r in rows if r['name'] == 'compute_s')['rel_error']:+.1%}"
                          for n, rows in c["workers"].items()))
    fitted = load_cluster(cal_run)
    print(f"run-calibrated: jitter_cv {fitted.stragglers.jitter_cv:.3f}, apply_s_per_mparam "
          f"{fitted.ps.apply_s_per_mparam:.4g}")
    assert 0.0 < fitted.stragglers.jitter_cv < 2.0  # a shared 2-core machine is never noise-free
    c = after["comparison"]
    assert not c["mismatched_counts"]
    # The run's own iteration times say whether other work shared the cores while it ran:
    # calibrate compares each worker's first and last third of the trace and warns when
    # they drift by more than 10%. Steady contention is calibrated in; changing contention
    # cannot be, so such a run is held only to a sanity bound, and the warning must be there.
    drift = [d for d in calibrate([read_trace(prof), read_trace(run / "trace.jsonl")]).drift if abs(d.change) > 0.10]
    warned = "contention that changed during the run" in calibrate_stderr
    assert warned == bool(drift)
    # On a machine its user knows to be quiet (HYBRIDPS_QUIET_MACHINE=1) the 5% / 10%;
    # in CI, whose neighbours are unknown and whose steady load calibrate cannot tell from a
    # quiet machine's, 10% / 15% (a shared machine gave a phase +16% with no drift flagged)
    strict = contention == "quiet" and os.environ.get("HYBRIDPS_QUIET_MACHINE") == "1"
    if not drift:
        makespan_bound, phase_bound = (0.05, 0.10) if strict else (0.10, 0.15)
    else:
        makespan_bound, phase_bound = 0.50, 0.75
        print(f"{contention}: calibrate warned of changing contention ("
              + ", ".join(f"{d.worker} {d.change:+.0%}" for d in drift)
              + f"): sanity bounds {makespan_bound:.0%} makespan / {phase_bound:.0%} per phase")
    print(f"{contention}: run-calibrated makespan error {c['makespan']['rel_error']:+.1%} (bound "
          f"{makespan_bound:.0%}), phases " + ", ".join(f"{r['rel_error']:+.1%}" for r in c["phases"])
          + f" (bound {phase_bound:.0%})")
    assert abs(c["makespan"]["rel_error"]) <= makespan_bound
    assert all(abs(r["rel_error"]) <= phase_bound for r in c["phases"])
    # what a run cannot get wrong: the iterations and bytes the plan implies
    for name, rows in c["workers"].items():
        by = {r["name"]: r for r in rows}
        assert by["bytes_pulled"]["rel_error"] == pytest.approx(0, abs=0.1), name
