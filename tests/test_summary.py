"""One run summary (traces/summary.py): the simulator's counters, summary.json's trace
summary and validate's measured summary give the same figures for the same trace."""

from __future__ import annotations

import pytest

from hybridps.spec import load_cluster, load_job, load_plan
from runtime.summary import summarize_trace
from sim import simulate
from traces import TraceWriter, read_trace
from traces.compare import measured_summary
from traces.summary import percentile_nearest_rank, staleness_stats, summarize

CLUSTER, JOB = "gtx1080x4", "cifar100-resnet18"


def test_percentiles_are_nearest_rank():
    # 99 fresh updates and one 7 versions stale: the 99th percentile is an observed value, 0
    # (numpy's linear interpolation would say 0.07)
    hist = {0: 99, 7: 1}
    assert percentile_nearest_rank(hist, 0.99) == 0.0
    assert percentile_nearest_rank(hist, 1.0) == 7.0
    assert percentile_nearest_rank({0: 1, 1: 1}, 0.5) == 0.0  # linear: 0.5
    assert percentile_nearest_rank({2: 1, 5: 1, 9: 2}, 0.5) == 5.0
    assert percentile_nearest_rank({}, 0.5) == 0.0
    assert staleness_stats({1: 3, 4: 1}) == {"mean": 1.75, "p50": 1.0, "p99": 4.0, "max": 4.0}


def _sim_trace(path, plan_name, eval_s):
    """A simulated trace with the PS evaluating the initial model for `eval_s` first."""
    c, j = load_cluster(CLUSTER), load_job(JOB)
    c = c.model_copy(update={"ps": c.ps.model_copy(update={"eval_s": eval_s})})
    res = simulate(c, j, load_plan(plan_name, c, j), record=True)
    with TraceWriter(path, dict(res.header, source="runtime")) as w:
        w.write_many(res.records)
    return res


@pytest.mark.parametrize("plan_name", ["gtx1080x4-cifar100-dbsl", "gtx1080x4-cifar100-uniform"])
def test_one_trace_gives_one_summary_on_every_path(tmp_path, plan_name):
    res = _sim_trace(tmp_path / "t.jsonl", plan_name, eval_s=0.5)
    sim = res.summary()
    assert sim["phases"][0]["start_s"] == 0.5  # the initial evaluation is before phase 0
    tr = read_trace(tmp_path / "t.jsonl")
    paths = {"traces.summary": summarize(tr), "summary.json": summarize_trace(tmp_path / "t.jsonl"),
             "validate": measured_summary(tr)}
    for label, s in paths.items():
        assert s["makespan_s"] == sim["makespan_s"], label  # from time zero, the initial evaluation included
        assert s["phases"] == sim["phases"], label
        assert s["updates"] == sim["updates"], label
        assert s["bytes_total"] == sim["bytes_total"], label
        for k in ("mean", "p50", "p99", "max"):
            assert s["staleness"][k] == pytest.approx(sim["staleness"][k], rel=1e-12), (label, k)
        assert set(s["workers"]) == set(sim["workers"]), label
        for name, w in s["workers"].items():
            for field, v in sim["workers"][name].items():
                assert w[field] == pytest.approx(v, rel=1e-12, abs=1e-12), (label, name, field)
    assert paths["validate"]["epoch_end_s"] == pytest.approx(sim["epoch_end_s"], rel=1e-12)
    assert paths["validate"]["before_first_phase_s"] == 0.5
    if plan_name.endswith("dbsl"):  # asp: the staleness figures are not trivial
        assert sim["staleness"]["max"] > sim["staleness"]["p99"] > sim["staleness"]["p50"] > 0


@pytest.mark.torch
def test_a_real_run_summary_json_is_the_trace_summary(tmp_path):
    """A real `run --local` (asp, 2 gloo workers, with the initial evaluation): summary.json,
    traces/summary.py and validate's measured summary agree on the run's trace."""
    pytest.importorskip("torch")
    import json

    from runtime.testing import run_cli, spec_args, write_specs

    write_specs(tmp_path, [("w0", 16, 64), ("w1", 16, 192)], sync="asp", epochs=2)
    out = tmp_path / "out"
    r = run_cli(["run", *spec_args(tmp_path), "--out", out, "--local", "--worker-timeout", "30"])
    assert r.returncode == 0, r.stderr
    tr = read_trace(out / "trace.jsonl")
    written = json.loads((out / "summary.json").read_text())
    ours, measured = summarize(tr), measured_summary(tr)
    assert tr.of_kind("eval") and min(e["t_s"] for e in tr.of_kind("eval")) < ours["phases"][0]["start_s"]
    for s in (ours, measured):
        assert written["makespan_s"] == s["makespan_s"] == max(p["end_s"] for p in tr.of_kind("phase"))
        assert written["phases"] == s["phases"] and written["updates"] == s["updates"] == len(tr.of_kind("update"))
        assert written["staleness"] == s["staleness"]
    assert written["staleness"]["max"] >= 1  # asp: w1's pushes land between w0's
    assert measured["before_first_phase_s"] == ours["phases"][0]["start_s"] > 0  # the initial evaluation
    assert written["workers"] == ours["workers"]  # record times, wait = the rest of the makespan
    for name, w in measured["workers"].items():
        for field in ("iterations", "samples", "bytes_pushed", "bytes_pulled"):
            assert w[field] == ours["workers"][name][field]
        # validate gives the gaps between records to compute and messages, as calibrate does
        assert w["compute_s"] + w["comm_s"] >= ours["workers"][name]["compute_s"] + ours["workers"][name]["comm_s"]
        assert w["wait_s"] == pytest.approx(max(0.0, measured["makespan_s"] - w["compute_s"] - w["comm_s"]))
