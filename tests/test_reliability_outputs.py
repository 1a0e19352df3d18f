"""Every output flag × {read-only directory, a directory, one of the command's inputs, a
symlink, a FIFO, ''}: refused with one line and exit 2 before any work (inputs and special
files untouched), except a symlink, which is written through (the link stays a link), and
a directory where the output is one (`plan --keep`).
And `plan --json` prints JSON on file descriptor 1 (HiGHS's banner silenced), checked
through a real pipe."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hybridps.cli import main
from hybridps.spec import resolve_path

CASES = ["readonly", "directory", "input", "symlink", "fifo", "empty"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    shutil.copy(resolve_path("cluster", "gtx1080x4"), d / "cluster.toml")
    shutil.copy(resolve_path("job", "cifar100-resnet18"), d / "job.toml")
    shutil.copy(resolve_path("plan", "gtx1080x4-cifar100-dbsl"), d / "plan.json")
    assert main(["simulate", "--cluster", str(d / "cluster.toml"), "--job", str(d / "job.toml"),
                 "--plan", str(d / "plan.json"), "--trace", str(d / "trace.jsonl")]) == 0
    with open(d / "trace.jsonl", "a") as f:  # eval records, for calibrate --job-out
        for epoch in range(0, 141, 20):
            f.write(json.dumps({"kind": "eval", "t_s": 6.0 * epoch, "epoch": float(epoch), "loss": 4.6 - epoch / 40,
                                "accuracy": 0.75 * (1 - math.exp(-epoch / 30))}) + "\n")
    return d


def _command(flag: str, d: Path, target: str, out_dir: Path) -> tuple[list[str], Path | None]:
    """(argv, the input that `input` aims the output at)."""
    specs = ["--cluster", str(d / "cluster.toml"), "--job", str(d / "job.toml")]
    trace = str(d / "trace.jsonl")
    if flag == "plan -o":
        return ["plan", *specs, "--strategy", "uniform", "--jobs", "1", "-o", target], d / "cluster.toml"
    if flag == "plan --keep":
        return ["plan", *specs, "--strategy", "uniform", "--jobs", "1", "-o", str(out_dir / "p.json"),
                "--keep", target], d / "cluster.toml"
    if flag == "calibrate -o":
        return ["calibrate", trace, "-o", target], d / "trace.jsonl"
    if flag == "calibrate --job-out":
        return ["calibrate", trace, "--job", str(d / "job.toml"), "--job-out", target], d / "job.toml"
    if flag in ("gantt --out", "chrome --out"):
        return [flag.split()[0], trace, "--out", target], d / "trace.jsonl"
    if flag == "schema --out":
        return ["schema", "job", "--out", target], None  # schema reads no file
    if flag.startswith("simulate"):
        return ["simulate", *specs, "--plan", str(d / "plan.json"), flag.split()[1], target], d / "plan.json"
    if flag == "profile --out":
        pytest.importorskip("torch")
        return ["profile", "--model", "mlp", "--resolutions", "8", "--batches", "4", "--max-batch", "4",
                "--warmup", "0", "--repeats", "1", "--out", target], None  # profile reads no file
    raise AssertionError(flag)


@pytest.fixture
def readonly_dir(tmp_path) -> Path:
    """A read-only directory that root cannot write either (a read-only tmpfs), else a
    directory under /proc (nobody can create files there)."""
    d = tmp_path / "ro"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], capture_output=True).returncode:
        yield Path("/proc/self")
        return
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


FLAGS = ["plan -o", "plan --keep", "calibrate -o", "calibrate --job-out", "simulate --trace", "simulate --chrome",
         "simulate --gantt", "profile --out", "gantt --out", "chrome --out", "schema --out"]
DIR_FLAGS = {"plan --keep"}  # their output is a directory: a directory (or a link to one) is what they want


def _written_through(flag: str, link: Path, real: Path) -> bool:
    """The link is still a link and the output went to its target."""
    if flag in DIR_FLAGS:
        return link.is_symlink() and (real / "ranking.json").is_file()
    return link.is_symlink() and real.read_bytes() != b"old\n"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("flag", FLAGS)
def test_output_flags(flag, case, inputs, tmp_path, readonly_dir, capsys):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    target = {"readonly": readonly_dir / "out", "directory": out_dir, "symlink": tmp_path / "link",
              "fifo": tmp_path / "fifo", "empty": ""}.get(case)
    argv, own_input = _command(flag, inputs, "", out_dir)
    if case == "input":
        if own_input is None:
            pytest.skip("this command has no input file")
        target = own_input
    argv[-1] = str(target)
    if case == "symlink":
        if flag in DIR_FLAGS:
            (tmp_path / "real").mkdir()
        else:
            (tmp_path / "real").write_text("old\n")
        target.symlink_to(tmp_path / "real")
    if case == "fifo":
        os.mkfifo(target)
    before = {p: p.read_bytes() for p in inputs.iterdir()}
    code = main(argv)
    err = capsys.readouterr().err
    if case == "symlink" or (case == "directory" and flag in DIR_FLAGS):
        assert code == 0, err
        assert _written_through(flag, target, tmp_path / "real") if case == "symlink" else \
            (target / "ranking.json").is_file()
    else:
        assert code == 2, err
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("note:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert flag.split()[1] in lines[0]
    if case == "fifo":
        assert Path(target).is_fifo()
    assert {p: p.read_bytes() for p in inputs.iterdir()} == before  # no input lost


def test_run_out_must_be_a_writable_directory(inputs, tmp_path, readonly_dir):
    pytest.importorskip("torch")
    from runtime.testing import run_cli, spec_args, write_specs

    write_specs(tmp_path, [("w0", 32, 256)], epochs=1)
    for out in (tmp_path / "plan.json", readonly_dir / "out", ""):
        r = run_cli(["run", *spec_args(tmp_path), "--out", out, "--local"], timeout_s=120)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("hybridps: error")]  # argparse adds usage
        assert r.returncode == 2 and len(errors) == 1, r.stderr
        assert "--out" in errors[0] and "Traceback" not in r.stderr


@pytest.mark.slow
def test_plan_json_is_json_through_a_pipe(tmp_path):
    """HiGHS writes its banner on fd 1 (capsys cannot see that): a real pipe to json.tool."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    plan = subprocess.Popen([sys.executable, "-m", "hybridps", "plan", "--cluster", "gtx1080x4", "--job",
                             "cifar100-resnet18", "--strategy", "balanced", "--jobs", "1", "--json",
                             "-o", str(tmp_path / "p.json")], stdout=subprocess.PIPE, env=env)
    tool = subprocess.run([sys.executable, "-m", "json.tool"], stdin=plan.stdout, capture_output=True, text=True,
                          timeout=600)
    plan.stdout.close()
    assert plan.wait(timeout=600) == 0
    assert tool.returncode == 0, tool.stderr
    assert "Running HiGHS" not in tool.stdout


def test_chrome_writer_refuses_a_fifo_and_writes_through_a_link(inputs, tmp_path):
    """The library writer, not only the command, never replaces a special file."""
    from hybridps.errors import UserError
    from traces.chrome import write_chrome
    from traces.stream import stream_trace

    header, _ = stream_trace(inputs / "trace.jsonl")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        write_chrome(fifo, header, [])
    assert fifo.is_fifo() and [p.name for p in tmp_path.iterdir()] == ["fifo"]  # no temporary file left
    (tmp_path / "real").write_text("old\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    write_chrome(tmp_path / "link", header, [])
    assert (tmp_path / "link").is_symlink() and json.loads((tmp_path / "real").read_text())["traceEvents"]
