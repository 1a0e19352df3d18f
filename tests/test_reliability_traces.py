"""Traces that would have fed calibrate/validate wrong data: NaN, infinite or negative
times, non-UTF-8 bytes, deep nesting, duplicate keys, a header only, a base cluster of
other workers, a cut last line; read whole (calibrate, validate) or streamed (gantt,
chrome), and in wall-time logs. Each is one line naming the file (exit 2) or, for an
incomplete run, a warning."""

from __future__ import annotations

import json
import shutil

import pytest

from hybridps.cli import main
from hybridps.spec import resolve_path


@pytest.fixture(scope="module")
def sim_trace(tmp_path_factory):
    d = tmp_path_factory.mktemp("trace")
    path = d / "trace.jsonl"
    assert main(["simulate", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "--plan",
                 "gtx1080x4-cifar100-dbsl", "--trace", str(path)]) == 0
    return path


def _with_line(src, dst, line: bytes, index: int = 5):
    lines = src.read_bytes().splitlines(keepends=True)
    lines.insert(index, line + b"\n")
    dst.write_bytes(b"".join(lines))
    return dst


BAD_LINES = {
    "nan": b'{"kind":"compute","worker":"gtx0","phase":0,"epoch":0,"step":0,"batch":8,"resolution":24,'
           b'"start_s":NaN,"end_s":1.0}',
    "inf": b'{"kind":"compute","worker":"gtx0","phase":0,"epoch":0,"step":0,"batch":8,"resolution":24,'
           b'"start_s":0.0,"end_s":1e999}',
    "negative": b'{"kind":"update","worker":"gtx0","phase":0,"t_s":-1.0,"version":1,"staleness":0}',
    "latin1": '{"kind":"eval","t_s":1.0,"epoch":1.0,"loss":1.0,"accuracy":0.5,"split":"t\xe9st"}'.encode("latin-1"),
    "deep": b'{"kind":"header","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "duplicate": b'{"kind":"update","worker":"gtx0","worker":"gtx1","phase":0,"t_s":1.0,"version":1,"staleness":0}',
}


def _argv(command: str, path, out) -> list[str]:
    if command == "validate":
        return ["validate", "--trace", str(path), "--repeats", "1"]
    return [command, str(path), "-o", str(out)]  # calibrate reads the whole trace, gantt and chrome stream it


@pytest.mark.parametrize("command", ["calibrate", "validate", "gantt", "chrome"])
@pytest.mark.parametrize("bad", list(BAD_LINES))
def test_bad_record_is_one_line_naming_the_line(sim_trace, tmp_path, capsys, bad, command):
    path = _with_line(sim_trace, tmp_path / "bad.jsonl", BAD_LINES[bad])
    assert main(_argv(command, path, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "line 6" in err and str(path) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]  # no output, no temporary file


@pytest.mark.parametrize("command", ["gantt", "chrome"])
@pytest.mark.parametrize("line", [1, 2])
def test_streamed_header_is_read_strictly(sim_trace, tmp_path, capsys, command, line):
    """A bad header line (or a bad first record) is refused before anything is drawn."""
    lines = sim_trace.read_bytes().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1].replace(b'"kind":', b'"kind":"header","kind":', 1)
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(lines))
    assert main(_argv(command, path, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"line {line}" in err and "given twice" in err, err
    assert not (tmp_path / "out").exists()


WALLTIME_LOGS = {
    "latin1.csv": ("worker,resolution,batch,samples,wall_s\nw\xe9,8,4,100,1.0\n".encode("latin-1"),
                   "latin1.csv:2: not UTF-8"),
    "deep.json": (b'{"format": "hybridps.walltime/1", "rows": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                  "nested too deeply"),
    "dup.json": (b'{"format": "hybridps.walltime/1", "rows": [{"worker": "w", "worker": "v", "resolution": 8, '
                 b'"batch": 4, "samples": 100, "wall_s": 1.0}]}', "given twice"),
}


@pytest.mark.parametrize("name", list(WALLTIME_LOGS))
def test_bad_walltime_log_is_one_line(tmp_path, capsys, name):
    content, message = WALLTIME_LOGS[name]
    path = tmp_path / name
    path.write_bytes(content)
    assert main(["calibrate", str(path), "-o", str(tmp_path / "c.toml")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and str(path) in err, err
    assert not (tmp_path / "c.toml").exists()


def test_deep_walltime_log_read_directly_is_a_user_error(tmp_path):
    from hybridps.errors import UserError
    from traces.walltime import read_walltime_log

    path = tmp_path / "deep.json"
    path.write_bytes(WALLTIME_LOGS["deep.json"][0])
    with pytest.raises(UserError, match="nested too deeply to be a wall-time log"):
        read_walltime_log(path)


def test_header_only_trace_calibrates_nothing(sim_trace, tmp_path, capsys):
    path = tmp_path / "header.jsonl"
    path.write_bytes(sim_trace.read_bytes().splitlines(keepends=True)[0])
    assert main(["calibrate", str(path), "-o", str(tmp_path / "c.toml")]) == 2
    assert "no records" in capsys.readouterr().err
    assert not (tmp_path / "c.toml").exists()


def test_base_of_other_workers_is_refused(sim_trace, tmp_path, capsys):
    assert main(["calibrate", str(sim_trace), "--base", "rtx3090x4", "-o", str(tmp_path / "c.toml")]) == 2
    err = capsys.readouterr().err
    assert "gtx0" in err and "--base" in err, err
    assert not (tmp_path / "c.toml").exists()


def test_validate_warns_about_an_incomplete_run(sim_trace, tmp_path, capsys):
    data = sim_trace.read_bytes()
    lines = data.splitlines(keepends=True)
    path = tmp_path / "cut.jsonl"
    path.write_bytes(b"".join(lines[: len(lines) // 2]) + lines[len(lines) // 2][:10])  # cut mid-line
    assert main(["validate", "--trace", str(path), "--repeats", "1"]) == 0
    err = capsys.readouterr().err
    assert "last line is cut" in err and "incomplete" in err, err
