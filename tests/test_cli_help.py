"""Every subcommand's `--help` runs, and the options follow the CLI's conventions:
- every option and argument has help text;
- a metavar is a unit or a noun (SECONDS, N, FILE.png, START:END), not a Python name
  such as TIME_RATIO (argparse's default, the dest upper-cased);
- a command that writes a file names it with `-o/--out`, and that metavar says what
  the file is (not OUT). `simulate` writes several outputs, each named by kind
  (--trace, --chrome, --gantt), so it has no `-o`.

Known breaches in commands owned elsewhere are strict xfails: fixing one turns its
xfail into a failure, so the mark must go with the fix."""

from __future__ import annotations

import argparse
import re

import pytest

from hybridps.cli import COMMANDS, build_parser, main

OUTPUT_COMMANDS = {"plan", "run", "profile", "calibrate", "schema", "gantt", "chrome"}
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
