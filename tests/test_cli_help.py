"""Every subcommand's `--help` runs, and the options follow the CLI's conventions:
- every option and argument has help text;
- a metavar is a unit or a noun (SECONDS, N, FILE.png, START:END), not a Python name
  such as TIME_RATIO (argparse's default, the dest upper-cased);
- a command that writes a file names it with `-o/--out`, and that metavar says what
  the file is (not OUT). `simulate` writes several outputs, each named by kind
  (--trace, --chrome, --gantt), so it has no `-o`;
- every command with a result takes `--json` (the result as JSON on stdout), and
  warnings go to stderr;
- the "needs torch" hint names the README's CPU-torch install.

Known breaches in commands owned elsewhere are strict xfails: fixing one turns its
xfail into a failure, so the mark must go with the fix."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pytest

from hybridps.cli import COMMANDS, TORCH_INSTALL_HINT, build_parser, main

OUTPUT_COMMANDS = {"plan", "run", "profile", "calibrate", "schema", "gantt", "chrome"}
RESULT_COMMANDS = {"check", "simulate", "plan", "run", "calibrate", "validate"}
ROOT = Path(__file__).resolve().parents[1]
PYTHON_NAME = re.compile(r"^[A-Z0-9]+(_[A-Z0-9]+)+$")  # TIME_RATIO, DATA_DIR


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


SUBPARSERS = _subparsers()


def _options():
    for cmd, parser in SUBPARSERS.items():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                yield cmd, action


def _name(action: argparse.Action) -> str:
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def _metavar(action: argparse.Action) -> str | None:
    if action.nargs == 0 or action.choices:
        return None  # a flag, or a choice argparse spells out
    if action.metavar:
        return action.metavar
    return action.dest.upper() if action.option_strings else action.dest


def _xfail(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


NO_HELP: dict[tuple[str, str], str] = {}


METAVAR_BREACHES: dict[tuple[str, str], str] = {}  # (command, option) -> the metavar it should have


OUTPUT_BREACHES: dict[str, str] = {}


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hybridps {cmd}")
    assert len(out.splitlines()) > 3


def _help_params():
    for cmd, action in _options():
        key = (cmd, _name(action))
        marks = [_xfail(NO_HELP[key])] if key in NO_HELP else []
        yield pytest.param(cmd, _name(action), id=f"{cmd} {_name(action)}", marks=marks)


def _metavar_params():
    for cmd, action in _options():
        mv = _metavar(action)
        if mv is None:
            continue
        name = _name(action)
        marks = []
        if (cmd, name) in METAVAR_BREACHES:
            marks = [_xfail(f"{cmd}.py: {name}'s metavar is {mv} (argparse's default); use "
                            f"metavar={METAVAR_BREACHES[(cmd, name)]!r}")]
        yield pytest.param(cmd, name, id=f"{cmd} {name}", marks=marks)


def _action(cmd: str, name: str) -> argparse.Action:
    return next(a for c, a in _options() if c == cmd and _name(a) == name)


@pytest.mark.parametrize("cmd,name", list(_help_params()))
def test_every_option_has_help_text(cmd, name):
    action = _action(cmd, name)
    assert action.help and action.help.strip() and action.help != argparse.SUPPRESS


@pytest.mark.parametrize("cmd,name", list(_metavar_params()))
def test_metavars_are_units_or_nouns_not_python_names(cmd, name):
    assert not PYTHON_NAME.match(_metavar(_action(cmd, name)))


@pytest.mark.parametrize("cmd", [pytest.param(c, marks=[_xfail(OUTPUT_BREACHES[c])] if c in OUTPUT_BREACHES else [])
                                 for c in sorted(OUTPUT_COMMANDS)])
def test_commands_with_a_file_output_take_dash_o_and_out(cmd):
    outs = [a for a in SUBPARSERS[cmd]._actions if "-o" in a.option_strings]
    assert len(outs) == 1, f"{cmd} has no -o"
    assert {"-o", "--out"} <= set(outs[0].option_strings)
    assert outs[0].metavar not in (None, "OUT", "OUTPUT")


def test_the_output_commands_are_exactly_those_with_an_out_option():
    """Keeps OUTPUT_COMMANDS honest: a new command writing a file must join it."""
    with_out = {c for c, a in _options() if {"-o", "--out", "--output"} & set(a.option_strings)}
    assert with_out == OUTPUT_COMMANDS


def test_every_command_with_a_result_takes_json():
    with_json = {c for c, a in _options() if "--json" in a.option_strings}
    assert with_json == RESULT_COMMANDS


def test_check_json_is_the_result_on_stdout(capsys):
    assert main(["check", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "--plan",
                 "gtx1080x4-cifar100-dbsl", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"ok": True, "cluster": {"workers": 4, "device_types": 1, "ps_shards": 1},
                   "job": {"model": "resnet18", "parameters": 11_227_812, "data": "cifar100", "samples": 50_000,
                           "epochs": 140},
                   "plan": {"phases": 6, "checked_against_cluster_and_job": True}}


def _bent_profile(path: Path) -> Path:
    """A profile whose batch-64 point is far off the line: calibrate warns about it."""
    from traces import TraceWriter
    from traces.records import header

    with TraceWriter(path, header("profile")) as w:
        for batch, t in ((16, 0.02), (32, 0.02), (64, 0.09), (128, 0.05), (256, 0.2)):
            w.write({"kind": "profile", "device": "cpu", "resolution": 8, "batch": batch, "iteration_s": t})
    return path


def test_calibrate_warns_on_stderr_and_json_holds_the_fits(tmp_path, capsys):
    prof = _bent_profile(tmp_path / "p.jsonl")
    assert main(["calibrate", str(prof), "-o", str(tmp_path / "c.toml")]) == 0
    human = capsys.readouterr()
    assert "warning" not in human.out and "a (ms/sample)" in human.out
    assert "hybridps calibrate: warning: " in human.err and "batch=64" in human.err

    assert main(["calibrate", str(prof), "-o", str(tmp_path / "c2.toml"), "--json"]) == 0
    got = capsys.readouterr()
    out = json.loads(got.out)
    assert "batch=64" in got.err
    [fit] = out["compute"]
    assert (fit["device"], fit["resolution"], fit["points"]) == ("cpu", 8, 5)
    assert fit["a"] == pytest.approx(out["cluster"]["devices"]["cpu"]["resolutions"]["8"]["a"])
    assert any("batch=64" in w for w in out["warnings"])
    assert out["wrote"] == [str(tmp_path / "c2.toml")]


def test_the_torch_hint_is_the_readme_cpu_install():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    pin = re.search(r'"(torch==[0-9.]+)"', setup).group(1)
    assert f"pip install {pin}" in TORCH_INSTALL_HINT
    assert "pip install -e '.[runtime]'" in TORCH_INSTALL_HINT
    readme = (ROOT / "README.md").read_text()
    assert pin in readme and "pip install -e ." in readme


@pytest.mark.parametrize("argv", [["run", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "--plan",
                                   "gtx1080x4-cifar100-dbsl", "-o", "unused", "--local"],
                                  ["profile", "--model", "cnn", "--resolutions", "8", "--batches", "4",
                                   "-o", "unused.jsonl"]])
def test_commands_needing_torch_give_the_one_hint(argv, monkeypatch, capsys):
    for name in ("torch", "runtime.profile"):
        monkeypatch.setitem(sys.modules, name, None)  # as if torch were not installed
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith(TORCH_INSTALL_HINT)


@pytest.mark.torch
def test_run_json_prints_summary_json_and_keeps_the_human_line_on_stderr(tmp_path):
    """A real `run --local --json` (bsp, 2 gloo workers): stdout is exactly summary.json."""
    pytest.importorskip("torch")
    from runtime.testing import run_cli, spec_args, write_specs

    write_specs(tmp_path, [("w0", 16, 64), ("w1", 16, 64)], sync="bsp", epochs=1)
    out = tmp_path / "out"
    r = run_cli(["run", *spec_args(tmp_path), "-o", out, "--local", "--eval-every", "0", "--json"])
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert "hybridps run: 1 phase(s)" in r.stderr
    # every key of a real summary.json is in docs/formats.md, and every documented key is here
    from hybridps.cli.formats_doc import documented_paths, summary_rows

    real = {row["path"] for row in summary_rows(summary, list(summary["workers"]))}
    assert real == documented_paths((ROOT / "docs" / "formats.md").read_text())["RUN/summary.json"]
