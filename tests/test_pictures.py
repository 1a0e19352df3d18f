"""The pictures without golden images: `traces.gantt.layout` returns what the PNG shows
(lanes, panel titles, phase labels, bin width, bar counts), so the tests assert on that
data, and check that the PNG exists with the size the layout promised. Also
`hybridps gantt` and `hybridps chrome` on simulated and runtime-shaped traces."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest

from hybridps.cli import main
from hybridps.spec import load_cluster, load_job, load_plan
from sim import simulate
from traces import TraceWriter
from traces.chrome import ChromeOptions, to_chrome
from traces.gantt import GanttData, layout, share_per_bin, write_gantt
from traces.records import header


@pytest.fixture(scope="module")
def dbsl():
    """The bundled DBSL plan on gtx1080x4, simulated: 6 phases, ~25k records."""
    cluster, job = load_cluster("gtx1080x4"), load_job("cifar100-resnet18")
    result = simulate(cluster, job, load_plan("gtx1080x4-cifar100-dbsl", cluster, job), record=True)
    return result.header, result.records


def _data(hdr, records):
    data = GanttData(hdr)
    data.write_many(records)
    return data


def _png_size(path):
    img = matplotlib.image.imread(path)
    return img.shape[1], img.shape[0]


def test_long_run_gets_an_overview_with_a_readable_bin_and_a_detail(dbsl, tmp_path):
    hdr, records = dbsl
    picture = write_gantt(tmp_path / "g.png", hdr, records, title="dbsl")
    assert [p.kind for p in picture.panels] == ["overview", "detail"]
    overview, detail = picture.panels
    # a bin holds at least two exchanges (DBSL's mini-epoch: one exchange per ~5 s), in round seconds
    pulls = np.sort([r["start_s"] for r in records if r["kind"] == "pull" and r["worker"] == "gtx1"])
    assert overview.bin_s >= 2 * np.median(np.diff(pulls))
    assert overview.bin_s == 20
    assert "share of each 20 s bin" in overview.title and "minutes" not in overview.title
    assert overview.comm_full_share == 0.1  # comm is ~4%: its strip is scaled so it is not a hairline
    assert "full = 10%" in overview.title
    assert [lane.label.split("\n")[0] for lane in picture.lanes] == ["gtx0", "gtx1", "gtx2", "gtx3"]
    assert picture.lanes[1].label.split("\n")[1] == "compute 96%, comm 4.0%"
    # the detail says what a bar is, and draws real iterations
    assert detail.iteration_edges and "one block per iteration" in detail.title
    assert all(n > 40 for n in detail.bars_drawn.values())
    assert _png_size(tmp_path / "g.png") == picture.size_px == (1430, picture.size_px[1])


def test_phases_are_marked_and_described_from_the_trace_header_plan(dbsl):
    hdr, records = dbsl
    picture = layout(_data(hdr, records))
    assert [label for _, label in picture.phase_marks] == ["P0", "P1", "P2", "P3", "P4", "P5"]
    assert picture.phase_key[0].startswith("P0  0.0–")
    assert picture.phase_key[0].endswith(": 24 px, batch 130/600, asp, model exchange")
    assert picture.phase_key[1].endswith(": 32 px, batch 102/560, asp, model exchange")


def test_window_draws_only_that_span(dbsl, tmp_path):
    hdr, records = dbsl
    picture = _data(hdr, records).write_png(tmp_path / "w.png", "dbsl", window_s=(250.0, 260.0))
    assert [p.kind for p in picture.panels] == ["bars"]  # 10 s hold few bars: drawn exactly
    (panel,) = picture.panels
    assert (panel.start_s, panel.end_s) == (250.0, 260.0)
    assert "250–260 s" in panel.title
    assert [label for _, label in picture.phase_marks] == ["P1"]  # phase 1 spans 209.6-500 s
    for lane in picture.lanes:
        for s, e in lane.bars.values():
            assert np.all(s >= 250.0) and np.all(e <= 260.0)
    assert _png_size(tmp_path / "w.png") == picture.size_px


def test_max_lanes_groups_the_workers_beyond_it_into_one_mean_row(dbsl):
    hdr, records = dbsl
    picture = layout(_data(hdr, records), max_lanes=2)
    assert [lane.members for lane in picture.lanes] == [["gtx0"], ["gtx1", "gtx2", "gtx3"]]
    assert picture.lanes[1].label.startswith("gtx1 … gtx3 (3, mean)")
    overview = picture.panels[0]
    _, share = share_per_bin(picture.lanes[1], overview)
    assert 0.9 < float(np.median(share["compute"])) <= 1.0  # a mean share, not a sum over three workers
    assert set(picture.panels[1].bars_drawn) == {picture.lanes[0].label}  # the group is not drawn bar by bar
    assert "the grouped row: mean share of each" in picture.panels[1].title


def _runtime_trace(path, with_eval=True):
    """A small trace shaped like `hybridps run`'s: 2 workers, bsp, evaluations."""
    plan = {"format": "hybridps.plan/1", "phases": [
        {"epochs": 1, "resolution": 24, "sync": "bsp", "staleness": None, "exchange": "gradient",
         "local_steps": None, "lr": 0.1, "compression": {"kind": "none"},
         "workers": [{"name": "w0", "batch": 8, "samples": 32}, {"name": "w1", "batch": 8, "samples": 32}]}]}
    recs = []
    t = 0.0
    for step in range(4):
        for w, slow in (("w0", 1.0), ("w1", 1.5)):
            recs.append({"kind": "compute", "worker": w, "phase": 0, "epoch": 0, "step": step, "batch": 8,
                         "resolution": 24, "start_s": t, "end_s": t + 0.1 * slow})
            recs.append({"kind": "push", "worker": w, "phase": 0, "start_s": t + 0.15, "end_s": t + 0.17,
                         "bytes": 21672})
            recs.append({"kind": "pull", "worker": w, "phase": 0, "start_s": t + 0.18, "end_s": t + 0.2,
                         "bytes": 21672})
        recs.append({"kind": "update", "worker": "w0", "phase": 0, "t_s": t + 0.175, "version": step + 1,
                     "staleness": 0})
        t += 0.2
    recs.append({"kind": "phase", "index": 0, "start_s": 0.0, "end_s": t})
    if with_eval:
        recs += [{"kind": "eval", "t_s": 0.4, "epoch": 0.5, "loss": 2.0, "accuracy": 0.3},
                 {"kind": "eval", "t_s": t, "epoch": 1.0, "loss": 1.5, "accuracy": 0.45}]
    with TraceWriter(path, header("runtime", plan=plan)) as w:
        w.write_many(recs)
    return recs


def test_gantt_command_draws_a_runtime_trace_with_an_accuracy_panel(tmp_path, capsys):
    trace = tmp_path / "run" / "trace.jsonl"
    _runtime_trace(trace)
    assert main(["gantt", str(trace), "-o", str(tmp_path / "g.png")]) == 0
    assert "panels: bars, accuracy" in capsys.readouterr().out
    hdr = json.loads(trace.read_text().splitlines()[0])
    recs = [json.loads(line) for line in trace.read_text().splitlines()[1:]]
    picture = layout(_data(hdr, recs))
    assert picture.accuracy == [(0.4, 0.3), (0.8, 0.45)]
    assert picture.legend[-1] == "accuracy"
    assert picture.panels[0].bars_drawn == {"w0\ncompute 50%, comm 20.0%": 12, "w1\ncompute 75%, comm 20.0%": 12}
    assert picture.phase_key == ["P0  0.0–0.8 s: 24 px, batch 8, bsp, gradient exchange"]
    img_w, img_h = _png_size(tmp_path / "g.png")
    assert img_w == 1430 and img_h > 400


@pytest.mark.parametrize("argv,needle", [
    (["--window", "5:1"], "0 <= START < END"),
    (["--window", "abc"], "expected START:END"),
    (["--max-lanes", "1"], "at least 2"),
])
def test_picture_commands_refuse_bad_options_in_one_line(tmp_path, capsys, argv, needle):
    trace = tmp_path / "t.jsonl"
    _runtime_trace(trace)
    for cmd in ("gantt", "chrome"):
        with pytest.raises(SystemExit) as exc:
            code = main([cmd, str(trace), "-o", str(tmp_path / "out"), *argv])
            raise SystemExit(code)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err


def test_gantt_window_after_the_trace_ends_is_a_one_line_error(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    _runtime_trace(trace)
    assert main(["gantt", str(trace), "-o", str(tmp_path / "g.png"), "--window", "5:9"]) == 2
    assert "the trace ends at 0.8 s" in capsys.readouterr().err


def test_gantt_of_a_trace_without_workers_is_a_one_line_error(tmp_path, capsys):
    trace = tmp_path / "profile.jsonl"
    with TraceWriter(trace, header("profile")) as w:
        w.write({"kind": "profile", "device": "cpu", "resolution": 24, "batch": 8, "iteration_s": 0.01})
    assert main(["gantt", str(trace), "-o", str(tmp_path / "g.png")]) == 2
    assert "no compute, push or pull records" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def _lane_names(events):
    procs = {e["pid"]: e["args"]["name"] for e in events if e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    return procs, threads


def test_chrome_command_names_every_lane(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    _runtime_trace(trace)
    assert main(["chrome", str(trace), "-o", str(tmp_path / "c.json")]) == 0
    events = json.loads((tmp_path / "c.json").read_text())["traceEvents"]
    procs, threads = _lane_names(events)
    assert procs == {1: "w0", 2: "w1", 0: "PS / phases"}
    for e in events:
        if e["ph"] in ("X", "i"):
            assert (e["pid"], e["tid"]) in threads, e  # no "Thread 0" lanes
    assert threads[(0, 0)] == "phases" and threads[(0, 1)] == "updates" and threads[(0, 2)] == "evaluations"


def test_chrome_window_keeps_only_overlapping_records(dbsl):
    hdr, records = dbsl
    whole = to_chrome(hdr, records)["traceEvents"]
    cut = to_chrome(hdr, records, ChromeOptions(window_s=(100.0, 110.0)))["traceEvents"]
    timed = [e for e in cut if e["ph"] in ("X", "i")]
    assert 0 < len(timed) < len(whole) / 50
    for e in timed:
        assert e["ts"] <= 110e6 and e["ts"] + e.get("dur", 0) >= 100e6


def test_chrome_counters_add_up_to_the_compute_time(dbsl):
    hdr, records = dbsl
    events = to_chrome(hdr, records, ChromeOptions(bin_s=10.0, counters=True))["traceEvents"]
    assert not [e for e in events if e["ph"] in ("X",) and e.get("cat") != "phase"]  # no bar is left
    procs, _ = _lane_names(events)
    gtx1 = next(pid for pid, name in procs.items() if name == "gtx1")
    shares = [e["args"] for e in events if e["ph"] == "C" and e["pid"] == gtx1]
    assert all(0 <= s["compute"] <= 1 and 0 <= s["communication"] <= 1 for s in shares)
    compute_s = sum(r["end_s"] - r["start_s"] for r in records if r["kind"] == "compute" and r["worker"] == "gtx1")
    assert sum(s["compute"] for s in shares) * 10.0 == pytest.approx(compute_s, rel=1e-3)
    updates = [e for e in events if e["ph"] == "C" and e["pid"] == 0]
    assert sum(e["args"]["updates"] for e in updates) == sum(1 for r in records if r["kind"] == "update")


def test_chrome_max_lanes_keeps_n_minus_1_workers_and_one_group(dbsl):
    hdr, records = dbsl
    events = to_chrome(hdr, records, ChromeOptions(bin_s=10.0, max_lanes=3))["traceEvents"]
    procs, _ = _lane_names(events)
    assert sorted(n for n in procs.values() if n != "PS / phases") == ["gtx0", "gtx1", "gtx2 … gtx3 (2 workers, mean)"]
    group = next(pid for pid, n in procs.items() if n.startswith("gtx2"))
    assert not [e for e in events if e["ph"] == "X" and e["pid"] == group]
    assert [e for e in events if e["ph"] == "X" and e["pid"] == 1]  # own lanes keep their bars
    shares = [e["args"]["compute"] for e in events if e["ph"] == "C" and e["pid"] == group]
    assert max(shares) <= 1.0


def test_the_picture_and_schema_commands_never_import_torch(tmp_path):
    import subprocess
    import sys

    trace = tmp_path / "t.jsonl"
    _runtime_trace(trace)
    code = ("import sys\n"
            "from hybridps.cli import main\n"
            f"assert main(['gantt', {str(trace)!r}, '-o', {str(tmp_path / 'g.png')!r}]) == 0\n"
            f"assert main(['chrome', {str(trace)!r}, '-o', {str(tmp_path / 'c.json')!r}]) == 0\n"
            f"assert main(['schema', 'docs', '-o', {str(tmp_path / 'f.md')!r}]) == 0\n"
            "import matplotlib\n"
            "assert matplotlib.get_backend().lower() == 'agg', matplotlib.get_backend()\n"
            "assert 'torch' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- validate --plot, plan --plot


def test_validate_plot_draws_predicted_against_measured_per_phase_and_worker(dbsl, tmp_path, capsys):
    """The DBSL trace validated on a cluster 1.2x slower: every phase and every worker's
    compute is predicted about 20% long, communication unchanged."""
    from hybridps.spec import resolve_path
    from traces.plots import validate_panels

    hdr, records = dbsl
    trace = tmp_path / "dbsl.jsonl"
    with TraceWriter(trace, hdr) as w:
        w.write_many(records)
    slow = tmp_path / "slow.toml"
    slow.write_text(resolve_path("cluster", "gtx1080x4").read_text().replace("slowdown = 1.0", "slowdown = 1.2"))
    png = tmp_path / "v.png"
    assert main(["validate", "--trace", str(trace), "--cluster", str(slow), "--plot", str(png), "--json"]) == 0
    comparison = json.loads(capsys.readouterr().out)["comparison"]
    phases, compute, comm = validate_panels(comparison)
    assert phases.labels == tuple(f"phase {i}\nerror +{round(100 * r['rel_error'])}%"
                                  for i, r in enumerate(comparison["phases"]))
    assert len(phases.labels) == 6 and all(0.15 < r["rel_error"] < 0.25 for r in comparison["phases"])
    assert phases.series["predicted"] == tuple(r["predicted"] for r in comparison["phases"])
    assert phases.series["measured"] == tuple(r["measured"] for r in comparison["phases"])
    assert [label.split("\n")[0] for label in compute.labels] == ["gtx0", "gtx1", "gtx2", "gtx3"]
    assert all(p == pytest.approx(1.2 * m, rel=0.02) for p, m in zip(*compute.series.values()))
    assert all(p == pytest.approx(m, rel=0.02) for p, m in zip(*comm.series.values()))
    assert "communication" in comm.title and compute.axis_label == "time (s)"
    assert _png_size(png) == (1100, 1060)


def _plan_plot(capsys, tmp_path, *args):
    png = tmp_path / "plan.png"
    assert main(["plan", *args, "--jobs", "1", "--top", "5", "--json", "--plot", str(png)]) == 0
    return png, json.loads(capsys.readouterr().out)


def test_plan_plot_marks_how_each_time_was_obtained_and_the_baseline(tmp_path, capsys):
    from traces.plots import plan_panels, write_plan_plot

    png, report = _plan_plot(capsys, tmp_path, "--cluster", "gtx1080x4", "--job", "cifar100-resnet18")
    [times] = plan_panels(report, 5, None)  # no convergence model: no accuracy panel
    base = next(k for k, r in enumerate(report["ranked"], 1) if r["baseline"])
    assert times.labels[0].startswith("#1 " + report["ranked"][0]["label"][:30])
    assert [label.split()[0] for label in times.labels] == [f"#{k}" for k in range(1, 6)] + ([f"#{base}"] if base > 5 else [])
    [hatched] = times.hatched
    assert times.labels[hatched].startswith(f"#{base} uniform(") and times.labels[hatched].endswith("[baseline]")
    assert set(times.series) == {"full", "proxy"} and "time to target" not in times.series
    full = [v for v in times.series["full"] if v is not None]
    assert full == [r["full_s"] for r in report["ranked"][:5] if r["how"] == "full"]
    assert times.series["full"][hatched] == report["uniform_makespan_s"]
    assert all((f is None) != (p is None) for f, p in zip(times.series["full"], times.series["proxy"]))
    again = write_plan_plot(tmp_path / "again.png", report, "plan", 5, None)  # what the CLI drew, same size
    assert again.panels == (times,) and _png_size(png) == again.size_px == (1100, again.size_px[1])


def test_plan_plot_with_a_convergence_model_shows_time_to_target_and_accuracy(tmp_path, capsys):
    from traces.plots import plan_panels

    png, report = _plan_plot(capsys, tmp_path, "--cluster", "digits-cpu3", "--job", "digits-cnn",
                             "--target-accuracy", "0.95")
    times, accuracy = plan_panels(report, 5, 0.95)
    rows = [r for r in report["ranked"] if r["proxy_s"] is not None][:5]
    assert "ranked by predicted time to the target" in times.title
    assert times.series["time to target"][:len(rows)] == tuple(r["quality"]["time_to_target_s"] for r in rows)
    assert accuracy.series["final accuracy"][:len(rows)] == tuple(r["quality"]["final_accuracy"] for r in rows)
    assert "target 0.95" in accuracy.title and accuracy.hatched == times.hatched
    assert times.series["time to target"][0] <= report["ranked"][0]["full_s"]
    assert _png_size(png)[0] == 1100
