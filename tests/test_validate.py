"""validate: a run trace's measurements in the simulator's summary shape, compared with a
re-simulation of the run's own plan. A simulated trace must validate with zero error,
and a cluster calibrated from it must reproduce it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hybridps.cli import main
from hybridps.spec import cluster_from_dict, load_cluster, load_job, load_plan, plan_from_dict
from sim import simulate
from traces import TraceWriter, read_trace
from traces.calibrate import calibrate
from traces.compare import compare, mean_summary, measured_summary
from traces.jsonl import Trace

CLUSTER, JOB = "gtx1080x4", "cifar100-resnet18"


def _sim_trace(path, plan_name):
    """A trace written by the simulator (the same schema a run writes)."""
    c, j = load_cluster(CLUSTER), load_job(JOB)
    res = simulate(c, j, load_plan(plan_name, c, j), record=True)
    with TraceWriter(path, res.header) as w:
        w.write_many(res.records)
    return path, res


def _all_rows(cmp):
    return [cmp["makespan"], *cmp["phases"], *cmp["epochs"], *[r for rows in cmp["workers"].values() for r in rows]]


@pytest.mark.parametrize("plan_name", ["gtx1080x4-cifar100-uniform", "gtx1080x4-cifar100-dbsl"])
def test_measured_summary_of_a_sim_trace_equals_the_sim_summary(tmp_path, plan_name):
    path, res = _sim_trace(tmp_path / "t.jsonl", plan_name)
    predicted, measured = res.summary(), measured_summary(read_trace(path))
    cmp = compare(predicted, measured)
    rows = _all_rows(cmp)
    assert len(cmp["epochs"]) == 140 and len(cmp["phases"]) == len(predicted["phases"])
    assert not cmp["mismatched_counts"]
    assert all(r["rel_error"] is not None and abs(r["rel_error"]) < 1e-9 for r in rows), \
        [r for r in rows if r["rel_error"] is None or abs(r["rel_error"]) >= 1e-9][:3]
    assert measured["bytes_total"] == predicted["bytes_total"]


def test_a_cluster_calibrated_from_a_trace_reproduces_it(tmp_path, capsys):
    """DBSL with asp model exchange: two resolutions, four workers whose pushes share the
    PS NIC. Calibrate from the trace alone, then validate on the calibrated cluster."""
    path, _ = _sim_trace(tmp_path / "t.jsonl", "gtx1080x4-cifar100-dbsl")
    out = tmp_path / "cal.toml"
    assert main(["calibrate", str(path), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["validate", "--trace", str(path), "--cluster", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    cmp = report["comparison"]
    print("makespan error", cmp["makespan"]["rel_error"], "phases", [r["rel_error"] for r in cmp["phases"]])
    assert abs(cmp["makespan"]["rel_error"]) < 1e-3
    assert all(abs(r["rel_error"]) < 1e-3 for r in cmp["phases"])
    assert {r["name"]: r["rel_error"] for r in cmp["workers"]["gtx0"]}["bytes_pushed"] == 0
    # the calibrated link absorbed no contention: bandwidth kept, latency ~ the true 0.05 ms
    cal = load_cluster(out)
    assert cal.worker_by_name["gtx1"].latency_ms == pytest.approx(0.05, abs=0.01)
    # a noiseless trace fits no jitter (not 1e-13), so validate needs no seed averaging
    assert cal.stragglers.jitter_cv == 0.0
    assert len(report["seeds"]) == 1


def test_validate_prints_the_table(tmp_path, capsys):
    path, _ = _sim_trace(tmp_path / "t.jsonl", "gtx1080x4-cifar100-uniform")
    assert main(["validate", "--trace", str(path)]) == 0
    out = capsys.readouterr().out
    assert "makespan" in out and "phase 2 (duration)" in out and "epoch 139 (end)" in out
    assert "gtx3 bytes_pulled" in out and "+0.0%" in out


def test_plan_worker_absent_from_the_cluster_is_a_clear_error_exit_2(tmp_path):
    path, _ = _sim_trace(tmp_path / "t.jsonl", "gtx1080x4-cifar100-uniform")
    proc = subprocess.run([sys.executable, "-m", "hybridps", "validate", "--trace", str(path),
                           "--cluster", "rtx3090x4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "gtx0" in lines[0] and "rtx3090x4" in lines[0] and str(path) in lines[0]


def test_a_profile_trace_cannot_be_validated(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    with TraceWriter(path, {"kind": "header", "format": "hybridps.trace/1", "source": "profile"}) as w:
        w.write({"kind": "profile", "device": "cpu", "resolution": 8, "batch": 4, "iteration_s": 0.01})
    assert main(["validate", "--trace", str(path)]) == 2
    assert "no job" in capsys.readouterr().err


@pytest.mark.parametrize("sync,seed", [("bsp", 1), ("asp", 2)])
def test_transient_stragglers_are_recovered_from_a_simulated_trace(sync, seed):
    """A cluster with known persistent and transient slowdowns: calibrating from its
    simulated trace recovers them, and the fitted cluster predicts the makespan."""
    base, job = load_cluster(CLUSTER), load_job(JOB)
    data = base.model_dump(mode="json")
    data["workers"][0]["count"] = 3
    data["workers"].append({"name": "slow", "device": "gtx1080", "slowdown": 1.5})
    data["stragglers"] = {"rate_per_hour": 60.0, "slowdown": 3.0, "mean_duration_s": 20.0, "workers": [], "seed": seed}
    cluster = cluster_from_dict(data)
    plan = load_plan("gtx1080x4-cifar100-uniform").to_json_dict()
    for ph in plan["phases"]:
        ph["sync"] = sync
        ph["workers"] = [{"name": n, "batch": 500, "samples": 12500} for n in ("gtx0", "gtx1", "gtx2", "slow")]
    plan = plan_from_dict(plan)
    res = simulate(cluster, job, plan, record=True)
    trace = Trace(header=res.header, records=res.records, path="sim")
    cal = calibrate([trace])
    s = cal.stragglers
    print(sync, s)
    assert {w.worker: w.slowdown for w in cal.workers} == pytest.approx(
        {"gtx0": 1.0, "gtx1": 1.0, "gtx2": 1.0, "slow": 1.5}, rel=1e-6)
    assert s.slowdown == pytest.approx(3.0, rel=0.01)
    assert s.mean_duration_s == pytest.approx(20.0, rel=0.15)
    assert s.rate_per_hour == pytest.approx(60.0, rel=0.3)  # ~60-160 episodes: sampling noise
    predicted = mean_summary([simulate(cal.cluster, job, plan, seed=k).summary() for k in range(5)])
    err = compare(predicted, measured_summary(trace))["makespan"]["rel_error"]
    print("makespan error", err)
    assert abs(err) < 0.03


def test_a_mini_epoch_plan_with_shares_one_short_validates_without_mismatch(tmp_path):
    """Shares summing to N - 1 under DBSL's mini-epoch rule: the PS ends each phase's last
    epoch with the phase (Ledger.end_phase); the measured summary of the trace must count
    the epochs the same way (it did not: 139 against 140, the README loop's CI failure of
    2026-12-06 when its second plan was such a DBSL plan)."""
    c, j = load_cluster(CLUSTER), load_job(JOB)
    d = load_plan("gtx1080x4-cifar100-dbsl", c, j).to_json_dict()
    for ph in d["phases"]:
        ph["workers"][0]["samples"] -= 1
    plan = plan_from_dict(d, "short", c, j)
    res = simulate(c, j, plan, record=True)
    with TraceWriter(tmp_path / "t.jsonl", res.header) as w:
        w.write_many(res.records)
    measured = measured_summary(read_trace(tmp_path / "t.jsonl"))
    cmp = compare(res.summary(), measured)
    assert len(measured["epoch_end_s"]) == len(res.summary()["epoch_end_s"]) == 140
    assert not cmp["mismatched_counts"]
    assert all(abs(r["rel_error"]) < 1e-9 for r in cmp["epochs"])


@pytest.mark.parametrize("eval_every", [0, 2])
def test_validate_resimulates_with_the_runs_eval_every(tmp_path, capsys, eval_every):
    """A run's --eval-every is in its header (meta.eval_every); validate re-simulates with
    it, so the PS's evaluations (`ps.eval_s`, 5 s here) are charged as often as the run
    paid them. A trace of eval_every 0 or 2 validates with zero error."""
    data = load_cluster(CLUSTER).model_dump(mode="json")
    data["ps"]["eval_s"] = 5.0
    c, j = cluster_from_dict(data), load_job(JOB)
    plan = load_plan("gtx1080x4-cifar100-uniform", c, j)
    res = simulate(c, j, plan, record=True, eval_every=eval_every)
    assert res.makespan_s != simulate(c, j, plan, eval_every=1).makespan_s  # the evaluations matter
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, {**res.header, "meta": {"eval_every": eval_every}}) as w:
        w.write_many(res.records)
    assert main(["validate", "--trace", str(path), "--json"]) == 0  # on the header's cluster
    cmp = json.loads(capsys.readouterr().out)["comparison"]
    assert abs(cmp["makespan"]["rel_error"]) < 1e-9, cmp["makespan"]
