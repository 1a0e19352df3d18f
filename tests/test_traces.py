"""Trace JSONL: streaming writer, validating reader (crash-tolerant), Chrome export."""

from __future__ import annotations

import json

import pytest

from hybridps.errors import SpecError
from traces import TraceWriter, read_trace, to_chrome, validate_record, write_chrome
from traces.chrome import ChromeWriter
from traces.records import header

RECORDS = [
    {"kind": "compute", "worker": "w0", "phase": 0, "epoch": 0, "step": 0, "batch": 8, "resolution": 32,
     "start_s": 0.0, "end_s": 0.5},
    {"kind": "push", "worker": "w0", "phase": 0, "start_s": 0.5, "end_s": 0.7, "bytes": 400},
    {"kind": "update", "worker": "w0", "phase": 0, "t_s": 0.7, "version": 1, "staleness": 0},
    {"kind": "pull", "worker": "w0", "phase": 0, "start_s": 0.7, "end_s": 0.9, "bytes": 400},
    {"kind": "compute", "worker": "w1", "phase": 0, "epoch": 0, "step": 0, "batch": 8, "resolution": 32,
     "start_s": 0.0, "end_s": 0.6, "samples": 5},
    {"kind": "phase", "index": 0, "start_s": 0.0, "end_s": 0.9},
    {"kind": "eval", "t_s": 0.9, "epoch": 1, "loss": 2.1, "accuracy": 0.25},
]


def test_written_trace_reads_back_identically(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, header("sim", plan={"phases": []}, seed=3)) as w:
        for r in RECORDS[:3]:
            w.write(r)
        w.write_many(RECORDS[3:])
    trace = read_trace(path)
    assert trace.source == "sim" and trace.header["seed"] == 3
    assert trace.records == RECORDS
    assert [r["worker"] for r in trace.of_kind("compute")] == ["w0", "w1"]
    assert not trace.torn


def test_each_record_is_on_disk_before_close(tmp_path):
    path = tmp_path / "t.jsonl"
    w = TraceWriter(path, header("runtime"))
    w.write(RECORDS[0])
    # another reader sees both lines although the writer is still open (flushed per record)
    assert len(path.read_text().splitlines()) == 2
    assert read_trace(path).records == RECORDS[:1]
    w.close()


def test_torn_last_line_after_a_crash_is_skipped(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, header("runtime")) as w:
        w.write_many(RECORDS[:2])
    with open(path, "a") as f:
        f.write('{"kind":"pull","worker":"w0","pha')  # the process died mid-write
    trace = read_trace(path)
    assert trace.torn and trace.records == RECORDS[:2]


def test_appending_a_resumed_run_keeps_one_header(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, header("runtime")) as w:
        w.write(RECORDS[0])
    with TraceWriter(path, append=True) as w:
        w.write(RECORDS[1])
    assert read_trace(path).records == RECORDS[:2]


@pytest.mark.parametrize("line,problem", [
    ('{"kind":"compute","worker":"w0"}', "compute record lacks field 'phase'"),
    ('{"kind":"push","worker":"w0","phase":0,"start_s":1,"end_s":0.5,"bytes":4}', "ends (0.5) before it starts (1)"),
    ('{"kind":"push","worker":"w0","phase":0,"start_s":0,"end_s":1,"bytes":4.5}', "field 'bytes' has type float"),
    ('{"kind":"teleport"}', "unknown record kind 'teleport'"),
    ('{"kind":"eval","t_s":0,"epoch":1,"loss":1,"accuracy":1,"colour":"red"}', "unknown field 'colour'"),
    ('not json at all', "invalid JSON"),
])
def test_invalid_records_are_named_by_line(tmp_path, line, problem):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(header("sim")) + "\n" + json.dumps(RECORDS[0]) + "\n" + line + "\n")
    with pytest.raises(SpecError) as e:
        read_trace(path)
    assert "line 3" in str(e.value) and problem in str(e.value)


def test_trace_must_start_with_header(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n")
    with pytest.raises(SpecError, match="starts with a header"):
        read_trace(path)


def test_validate_record_accepts_all_documented_kinds():
    for r in RECORDS + [header("profile"),
                        {"kind": "profile", "device": "cpu", "resolution": 32, "batch": 8, "iteration_s": 0.1}]:
        assert validate_record(r) is None, r


def test_chrome_export_has_compute_and_comm_lane_per_worker():
    plan = {"phases": [{"workers": [{"name": "w0"}, {"name": "w1"}]}]}
    out = to_chrome(header("sim", plan=plan), RECORDS)
    events = out["traceEvents"]
    lanes = {(e["pid"], e["args"]["name"]) for e in events if e.get("name") == "thread_name"}
    assert lanes == {(1, "compute"), (1, "communication"), (2, "compute"), (2, "communication"),
                     (0, "phases"), (0, "updates"), (0, "evaluations")}  # every lane named, the PS's too
    procs = {e["pid"]: e["args"]["name"] for e in events if e.get("name") == "process_name"}
    assert procs[1] == "w0" and procs[2] == "w1"
    push = next(e for e in events if e.get("name") == "push")
    assert (push["pid"], push["tid"], push["ts"], push["dur"]) == (1, 1, 0.5e6, pytest.approx(0.2e6))
    step = next(e for e in events if e.get("cat") == "compute" and e["pid"] == 2)
    assert step["tid"] == 0 and step["dur"] == pytest.approx(0.6e6)
    json.dumps(out)  # serialisable as-is


def test_streamed_chrome_writer_equals_to_chrome_across_batches(tmp_path):
    plan = {"phases": [{"workers": [{"name": "w0"}]}]}  # w1 is not in the plan: its lanes come mid-stream
    hdr = header("sim", plan=plan)
    path = tmp_path / "c.json"
    writer = ChromeWriter(path, hdr)
    for i in range(0, len(RECORDS), 3):
        writer.write_many(RECORDS[i:i + 3])
    writer.write_many([])
    assert not path.exists()  # nothing at the destination until close()
    writer.close()
    assert json.loads(path.read_text()) == json.loads(json.dumps(to_chrome(hdr, RECORDS)))
    procs = {e["pid"]: e["args"]["name"] for e in json.loads(path.read_text())["traceEvents"]
             if e.get("name") == "process_name"}
    assert procs == {1: "w0", 0: "PS / phases", 2: "w1"}
    write_chrome(tmp_path / "w.json", hdr, iter(RECORDS))
    assert json.loads((tmp_path / "w.json").read_text()) == json.loads(path.read_text())


def test_aborted_chrome_writer_leaves_the_previous_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("previous")
    writer = ChromeWriter(path, header("sim"))
    writer.write_many(RECORDS)
    writer.abort()
    assert path.read_text() == "previous"
    assert list(tmp_path.iterdir()) == [path]


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    import os
    import stat

    from hybridps.fileio import atomic_write_json

    path = tmp_path / "out" / "summary.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert list(path.parent.iterdir()) == [path]  # no temporary files left behind
    old = os.umask(0o022)
    os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~old


def test_resuming_after_a_torn_line_keeps_the_trace_readable(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, header("runtime")) as w:
        w.write_many(RECORDS[:2])
    with open(path, "a") as f:
        f.write('{"kind":"pull","worker":"w0","pha')  # the run died mid-write
    with TraceWriter(path, append=True) as w:  # --resume appends
        w.write(RECORDS[2])
    trace = read_trace(path)
    assert not trace.torn and trace.records == RECORDS[:3]
