"""User-facing errors.

A `UserError` is a problem with what the user handed in (a file, a flag, a request the
solver cannot meet). The CLI prints its message on one line and exits 2, without a
traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


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
