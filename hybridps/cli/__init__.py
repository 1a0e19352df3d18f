"""The `hybridps` command line. Each subcommand lives in its own module with
`add_parser(subparsers)`; heavy imports (sim, solver, torch) happen inside the
command's function, so `hybridps --help` and simulation-only installs stay light.

User errors (`hybridps.errors.UserError`) print one line and exit 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import math
import signal
import sys

from hybridps import __version__
from hybridps.errors import UserError, clear_interrupt, interrupt, raise_if_interrupted

# the README's CPU-torch install: pinning torch first keeps pip from pulling the CUDA build
TORCH_INSTALL_HINT = "install the CPU build of torch: pip install torch==2.13.0, then pip install -e '.[runtime]'"

COMMANDS = ["examples", "check", "simulate", "plan", "run", "profile", "calibrate", "validate", "schema", "gantt", "chrome"]


def _bounded_arg(cast: type, lowest: float, strict: bool, expected: str, highest: float = math.inf):
    """An argparse type: `cast(text)`, finite, >= `lowest` (> when `strict`) and <= `highest`
    (beyond it a value is a typo that would hang a command or exhaust memory)."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value) or value < lowest or (strict and value == lowest) or value > highest:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


def int_range_arg(lowest: int, highest: int):
    """An argparse type: an integer from `lowest` to `highest`."""
    return _bounded_arg(int, lowest, False, f"an integer from {lowest:,} to {highest:,}", highest)


def float_range_arg(above: float, highest: float):
    """An argparse type: a finite number > `above` and <= `highest`."""
    return _bounded_arg(float, above, True, f"a number > {above:g} and <= {highest:g}", highest)


seed_arg = _bounded_arg(int, 0, False, "a non-negative integer")  # numpy seeds must be
positive_int_arg = _bounded_arg(int, 1, False, "an integer >= 1")
nonnegative_int_arg = _bounded_arg(int, 0, False, "an integer >= 0")


def path_arg(text: str):
    """An argparse type: a non-empty path (Path('') would silently mean the current directory)."""
    from pathlib import Path

    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)
positive_float_arg = _bounded_arg(float, 0.0, True, "a finite number > 0")  # nan and inf refused
nonnegative_float_arg = _bounded_arg(float, 0.0, False, "a finite number >= 0")


def unit_fraction_arg(text: str) -> float:
    """An argparse type: a finite number strictly between 0 and 1 (an accuracy)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not math.isfinite(value) or not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors also exit 2
        self.print_usage(sys.stderr)
        print(f"hybridps: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hybridps", description="Plan, simulate and run data-parallel training on heterogeneous GPU clusters with a parameter server.")
    parser.add_argument("--version", action="version", version=f"hybridps {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"hybridps.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    clear_interrupt()
    old_handlers = _sigterm_interrupts()
    try:
        code = int(args.func(args) or 0)
        if code == 0:
            raise_if_interrupted()  # one that library code swallowed (hybridps.errors.interrupt)
        return code
    except UserError as e:
        print(f"hybridps: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(f"hybridps: interrupted{' by SIGTERM' if e.args == ('SIGTERM',) else ''}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # reading or writing a file the user named: one line, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"hybridps: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    finally:
        for signum, handler in (old_handlers or {}).items():
            signal.signal(signum, handler)


def _sigterm_interrupts() -> dict | None:
    """Make SIGTERM (what `kill` and batch schedulers send) stop a command as Ctrl-C does,
    and remember either (`hybridps.errors.interrupt`); returns the previous handlers
    (None where signals cannot be set: not the main thread)."""
    def on_term(signum, frame):
        raise interrupt(KeyboardInterrupt("SIGTERM"))

    def on_int(signum, frame):
        raise interrupt(KeyboardInterrupt())

    try:
        return {signal.SIGTERM: signal.signal(signal.SIGTERM, on_term), signal.SIGINT: signal.signal(signal.SIGINT, on_int)}
    except ValueError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
