"""`hybridps simulate`: the JSON summary, the streamed trace, Chrome and Gantt outputs,
and one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hybridps.cli import main
from hybridps.spec import load_cluster, load_job, load_plan
from sim import simulate
from traces.gantt import GanttData, write_gantt
from traces import read_trace, to_chrome

CLUSTER_TOML = """\
format = "hybridps.cluster/1"
[ps]
count = 1
bandwidth_gbps = 1.0
latency_ms = 0.0
[devices.dev.resolutions.32]
a = 0.001
b = 0.01
max_batch = 100
[[workers]]
name = "w"
device = "dev"
count = 2
bandwidth_gbps = 1.0
latency_ms = 0.0
[stragglers]
rate_per_hour = 3600.0
slowdown = 2.0
mean_duration_s = 0.1
seed = 4
"""

JOB_TOML = """\
format = "hybridps.job/1"
[model]
name = "m"
parameters = 1_250_000
[data]
name = "d"
samples = 40
[train]
epochs = 3
resolutions = [32]
base_batch = 10
base_lr = 0.1
"""


def _plan(sync="asp", batch=10):
    return {"format": "hybridps.plan/1", "phases": [
        {"epochs": 2, "resolution": 32, "sync": sync, "staleness": None, "exchange": "gradient",
         "local_steps": None, "lr": 0.1, "workers": [{"name": "w0", "batch": batch, "samples": 20},
                                                     {"name": "w1", "batch": 10, "samples": 20}]},
        {"epochs": 1, "resolution": 32, "sync": "bsp", "staleness": None, "exchange": "gradient",
         "local_steps": None, "lr": 0.01, "workers": [{"name": "w0", "batch": 10, "samples": 20},
                                                      {"name": "w1", "batch": 10, "samples": 20}]}]}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "c.toml").write_text(CLUSTER_TOML)
    (tmp_path / "j.toml").write_text(JOB_TOML)
    (tmp_path / "p.json").write_text(json.dumps(_plan()))
    return tmp_path, ["--cluster", str(tmp_path / "c.toml"), "--job", str(tmp_path / "j.toml"),
                      "--plan", str(tmp_path / "p.json")]


def _expected(tmp_path, seed=None):
    cluster = load_cluster(tmp_path / "c.toml")
    job = load_job(tmp_path / "j.toml")
    return simulate(cluster, job, load_plan(tmp_path / "p.json", cluster, job), seed=seed, record=True)


def test_json_summary_is_the_simulate_summary(files, capsys):
    tmp_path, args = files
    assert main(["simulate", *args, "--json", "--seed", "9"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = _expected(tmp_path, seed=9).summary()
    assert set(got) == {"makespan_s", "phases", "epoch_end_s", "workers", "updates", "staleness", "bytes_total",
                        "policy_actions", "events", "wall_s"}
    assert got["policy_actions"] == {}  # no policy in the plan
    got.pop("wall_s"), want.pop("wall_s")
    assert got == want
    assert set(got["workers"]["w0"]) == {"iterations", "samples", "compute_s", "comm_s", "wait_s", "bytes_pushed",
                                         "bytes_pulled"}


def test_human_summary_names_the_makespan_and_workers(files, capsys):
    tmp_path, args = files
    assert main(["simulate", *args]) == 0
    out = capsys.readouterr().out
    makespan = _expected(tmp_path).makespan_s
    assert f"makespan {makespan:,.1f} s" in out
    assert "\nw0 " in out and "\nw1 " in out


def test_trace_file_reads_back_as_the_in_memory_records(files, capsys):
    tmp_path, args = files
    assert main(["simulate", *args, "--trace", str(tmp_path / "t.jsonl")]) == 0
    back = read_trace(tmp_path / "t.jsonl")
    want = _expected(tmp_path)
    assert back.source == "sim" and back.header == want.header
    assert back.records == want.records
    kinds = {r["kind"] for r in back.records}
    assert kinds == {"compute", "push", "pull", "update", "phase"}


def test_chrome_export_has_a_compute_and_a_communication_lane_per_worker(files, capsys):
    tmp_path, args = files
    assert main(["simulate", *args, "--chrome", str(tmp_path / "c.json")]) == 0
    doc = json.loads((tmp_path / "c.json").read_text())
    events = doc["traceEvents"]
    lanes = {}
    for e in events:
        assert e["ph"] in ("M", "X", "i")
        if e["ph"] == "M" and e["name"] == "thread_name":
            lanes.setdefault(e["pid"], {})[e["tid"]] = e["args"]["name"]
    procs = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    worker_pids = {pid for pid, name in procs.items() if name in ("w0", "w1")}
    assert len(worker_pids) == 2
    for pid in worker_pids:
        assert lanes[pid] == {0: "compute", 1: "communication"}
    want = _expected(tmp_path)
    n_compute = sum(1 for r in want.records if r["kind"] == "compute")
    n_comm = sum(1 for r in want.records if r["kind"] in ("push", "pull"))
    xs = [e for e in events if e["ph"] == "X" and e["pid"] in worker_pids]
    assert sum(1 for e in xs if e["tid"] == 0 and e["cat"] == "compute") == n_compute
    assert sum(1 for e in xs if e["tid"] == 1 and e["cat"] == "comm") == n_comm
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in xs)


def test_streamed_chrome_file_equals_the_in_memory_export(files, capsys):
    tmp_path, args = files
    (tmp_path / "c.json").write_text("old")
    assert main(["simulate", *args, "--chrome", str(tmp_path / "c.json")]) == 0
    streamed = json.loads((tmp_path / "c.json").read_text())
    want = _expected(tmp_path)
    in_memory = json.loads(json.dumps(to_chrome(want.header, want.records)))
    assert streamed == in_memory  # same events in the same order, same metadata
    assert len(streamed["traceEvents"]) == 4 * 2 + 5 + want.events  # lanes, PS process + its 3 lanes, one per record
    assert not list(tmp_path.glob(".c.json.*"))  # the temporary file was moved into place


def test_gantt_bars_are_the_trace_records_as_arrays(files, capsys):
    tmp_path, args = files
    want = _expected(tmp_path)
    data = GanttData(want.header)
    data.write_many(want.records[:7])  # in batches, as the simulator streams them
    data.write_many(want.records[7:])
    assert data.names == ["w0", "w1"]
    bars = data.bars()
    for name in ("w0", "w1"):
        for kind in ("compute", "push", "pull"):
            recs = [r for r in want.records if r["kind"] == kind and r["worker"] == name]
            assert len(recs) > 0
            assert bars[name][kind][0].tolist() == [r["start_s"] for r in recs]
            assert bars[name][kind][1].tolist() == [r["end_s"] for r in recs]
    assert [p["index"] for p in data.phases] == [0, 1]
    assert data.phases[-1]["end_s"] == want.makespan_s


def test_gantt_from_the_cli_equals_the_gantt_of_the_records(files, capsys):
    tmp_path, args = files
    assert main(["simulate", *args, "--gantt", str(tmp_path / "cli.png")]) == 0
    want = _expected(tmp_path)
    write_gantt(tmp_path / "records.png", want.header, want.records, title="m/d on 2 workers")
    assert (tmp_path / "cli.png").read_bytes() == (tmp_path / "records.png").read_bytes()


@pytest.mark.parametrize("big", [False, True])
def test_gantt_png_is_written(files, capsys, monkeypatch, big):
    import matplotlib.image

    import traces.gantt

    if big:  # force the overview + detail layout used for long runs
        monkeypatch.setattr(traces.gantt, "EXACT_MAX_BARS", 10)
    tmp_path, args = files
    assert main(["simulate", *args, "--gantt", str(tmp_path / "g.png")]) == 0
    data = (tmp_path / "g.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(tmp_path / "g.png")
    assert img.shape[1] > 1000 and img.shape[0] > (500 if big else 250)
    assert not list(tmp_path.glob(".g.png.*"))  # written atomically, no temp file left


def test_bad_plan_exits_2_with_one_line_and_no_traceback(files):
    tmp_path, args = files
    (tmp_path / "p.json").write_text(json.dumps(_plan(batch=500)))  # above max_batch 100
    proc = subprocess.run([sys.executable, "-m", "hybridps", "simulate", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "phases[0].workers[0].batch" in lines[0] and "max_batch 100" in lines[0] and "p.json" in lines[0]


def test_bsp_gradient_with_unequal_iterations_is_rejected(files, capsys):
    tmp_path, args = files
    (tmp_path / "p.json").write_text(json.dumps(_plan(sync="bsp", batch=5)))  # w0: 4 iterations, w1: 2
    assert main(["simulate", *args, "--trace", str(tmp_path / "t.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "w0=4" in err and "w1=2" in err
    assert not (tmp_path / "t.jsonl").exists()  # nothing written for a rejected plan


def test_unknown_cluster_name_exits_2(capsys):
    assert main(["simulate", "--cluster", "no-such-cluster", "--job", "cifar100-resnet18",
                 "--plan", "gtx1080x4-cifar100-dbsl"]) == 2
    err = capsys.readouterr().err
    assert "no-such-cluster" in err and "gtx1080x4" in err and len(err.strip().splitlines()) == 1
