"""Every output flag × {read-only directory, a directory, one of the command's inputs, a
symlink, a FIFO, ''}: refused with one line and exit 2 before any work (inputs and special
files untouched), except a symlink, which is written through (the link stays a link).
And `plan --json` prints JSON on file descriptor 1 (HiGHS's banner silenced), checked
through a real pipe."""

from __future__ import annotations

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
    return d


def _command(flag: str, d: Path, target: str) -> tuple[list[str], Path | None]:
    """(argv, the input that `input` aims the output at)."""
    specs = ["--cluster", str(d / "cluster.toml"), "--job", str(d / "job.toml")]
    if flag == "plan -o":
        return ["plan", *specs, "--strategy", "uniform", "--jobs", "1", "-o", target], d / "cluster.toml"
    if flag == "calibrate -o":
        return ["calibrate", str(d / "trace.jsonl"), "-o", target], d / "trace.jsonl"
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


FLAGS = ["plan -o", "calibrate -o", "simulate --trace", "simulate --chrome", "simulate --gantt", "profile --out"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("flag", FLAGS)
def test_output_flags(flag, case, inputs, tmp_path, readonly_dir, capsys):
    target = {"readonly": readonly_dir / "out", "directory": tmp_path, "symlink": tmp_path / "link",
              "fifo": tmp_path / "fifo", "empty": ""}.get(case)
    argv, own_input = _command(flag, inputs, "")
    if case == "input":
        if own_input is None:
            pytest.skip("this command has no input file")
        target = own_input
    argv[-1] = str(target)
    if case == "symlink":
        (tmp_path / "real").write_text("old\n")
        target.symlink_to(tmp_path / "real")
    if case == "fifo":
        os.mkfifo(target)
    before = {p: p.read_bytes() for p in inputs.iterdir()}
    code = main(argv)
    err = capsys.readouterr().err
    if case == "symlink":
        assert code == 0, err
        assert target.is_symlink() and (tmp_path / "real").read_bytes() != b"old\n"
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
