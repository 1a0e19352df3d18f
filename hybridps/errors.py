"""User-facing errors.

A `UserError` is a problem with what the user handed in (a file, a flag, a request the
solver cannot meet). The CLI prints its message on one line and exits 2, without a
traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator


class UserError(Exception):
    """A problem the user can fix; the CLI prints it and exits with code 2."""

    exit_code = 2


class SpecError(UserError):
    """A spec file (or an in-memory spec) is invalid.

    `file` is the path (or a label such as "<plan>"), `field` the field path in the
    form `workers[3].device`, `message` what was expected and how to fix it.
    """

    def __init__(self, file: str, field: str, message: str):
        self.file = str(file)
        self.field = field
        self.message = message
        where = f"{self.file}: {field}" if field else self.file
        super().__init__(f"{where}: {message}")


# Exit codes of every command (docs/runtime.md, "Guarantees"). 1 is a bug (a traceback).
EXIT_OK = 0
EXIT_USER_ERROR = 2  # bad input, flag, output path or checkpoint: one line naming it
EXIT_WORKER_LOST = 3  # hybridps run: a worker died, hung or lost its connection
EXIT_PS_LOST = 4  # hybridps run: a PS shard died, was stopped or stopped answering
EXIT_IO_ERROR = 5  # hybridps run: the PS could not write --out (disk full, ...); the last checkpoint stands
EXIT_INTERRUPTED = 130  # SIGINT or SIGTERM: every process stopped, a checkpoint kept


_interrupt: KeyboardInterrupt | None = None  # the last Ctrl-C or SIGTERM this command received


def interrupt(e: KeyboardInterrupt) -> KeyboardInterrupt:
    """Remember `e` as the command's interrupt and return it (for the handler to raise).

    Library code can swallow the raise: CPython ignores exceptions in at-fork callbacks
    (a SIGTERM that lands while the search's pool forks is printed as "Exception ignored"
    and dropped), and PuLP imports HiGHS under a bare `except:`. What is remembered is raised
    again by `raise_if_interrupted`, at the search's next wait and before any output file
    is committed, so such a command still stops with exit 130 and writes nothing."""
    global _interrupt
    _interrupt = e
    return e


def clear_interrupt() -> None:
    global _interrupt
    _interrupt = None


def raise_if_interrupted() -> None:
    """Raise the command's interrupt again if one arrived (see `interrupt`)."""
    if _interrupt is not None:
        raise _interrupt


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them as they would have
    been. For imports of libraries that catch everything: PuLP imports its HiGHS binding
    inside a bare `try/except:`, so an interrupt landing there was swallowed (and HiGHS
    reported missing) -- `plan` then ran to its end after a SIGTERM (CI, 2026-12-06).
    Outside the main thread, where handlers cannot be set, the block just runs."""
    held: list[int] = []
    wanted = (signal.SIGINT, signal.SIGTERM)
    try:
        before = {s: signal.signal(s, lambda signum, _frame: held.append(signum)) for s in wanted}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        if held:
            os.kill(os.getpid(), held[0])  # now the command's own handler sees it
