"""`hybridps run`'s flags and the --local children's argv come from one dataclass: what
the parent parsed, the children parse back the same (less the parent-only switches)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hybridps.cli import run as run_cli


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    run_cli.add_parser(ap.add_subparsers())
    return ap


def test_children_parse_back_what_the_parent_parsed():
    ap = _parser()
    parent = ap.parse_args(["run", "--cluster", "c.toml", "--job", "j.toml", "--plan", "p.json", "-o", "out",
                            "--local", "--overwrite", "--no-emulate", "--seed", "3", "--eval-samples", "500",
                            "--on-worker-loss", "continue", "--worker-timeout", "2.5", "--device", "cpu"])
    argv = run_cli._rebuild_argv(parent)
    assert "--local" not in argv and "--overwrite" not in argv
    child = vars(ap.parse_args(["run", *argv]))
    differ = {k for k, v in vars(parent).items() if child[k] != v}
    assert differ == {"local", "overwrite"}
    assert child["out"] == Path("out") and child["seed"] == 3 and child["worker_timeout"] == 2.5


def test_every_option_is_a_flag_with_the_dataclass_default():
    args = vars(_parser().parse_args(["run"]))
    defaults = run_cli.RunArgs()
    for name in run_cli.RunArgs.__dataclass_fields__:
        assert args[name] == getattr(defaults, name)
