"""Outputs: checked before the work starts, written atomically.

`check_output_file` / `check_output_dir` run before a command does its work (a long
plan search must not fail at the end): an output must be a regular file or a new name
in a writable directory, never a directory, FIFO, device or one of the command's inputs.
A symbolic link is written through (the link stays, its target is replaced).
`atomic_write_*` then writes: a reader never sees a half-written output, a crash never
destroys the previous version. `native_stdout_silenced` keeps native libraries (HiGHS)
from printing onto file descriptor 1, where `--json` output goes; `stdout_to_stderr`
moves a whole command's human lines there.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from hybridps.errors import UserError, raise_if_interrupted


def _probe_dir(directory: Path, what: str) -> None:
    """Create `directory` if needed and prove a file can be made in it (UserError if not)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hybridps-probe.", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"{what}: cannot write in {directory}: {e.strerror or e}") from None


def _resolved(path: Path) -> Path:
    return path.resolve() if path.is_symlink() else path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(path: str | os.PathLike, flag: str, inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Check that `flag PATH` can be written; returns the path to write (a link's target)."""
    if not str(path).strip():
        raise UserError(f"{flag}: empty file name; give the output file's path")
    given = Path(path)
    target = _resolved(given)
    what = f"{flag} {given}"
    if target.is_dir():
        raise UserError(f"{what}: is a directory; give a file name (e.g. {given}/out)")
    if target.exists() and not target.is_file():
        raise UserError(f"{what}: is not a regular file (a FIFO, device or socket); hybridps only replaces "
                        f"regular files, give another path")
    for inp in inputs:
        if inp is not None and _same_file(target, Path(inp)):
            raise UserError(f"{what}: is also this command's input {inp}; write the output to another file")
    _probe_dir(target.parent, what)
    return target


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Check that `flag DIR` is (or can become) a directory files can be written in."""
    if not str(path).strip():
        raise UserError(f"{flag}: empty directory name; give the output directory")
    given = Path(path)
    if given.exists() and not given.is_dir():
        raise UserError(f"{flag} {given}: exists and is not a directory; give a directory")
    _probe_dir(given, f"{flag} {given}")
    return given


@contextlib.contextmanager
def _fd1_redirected(open_target) -> Iterator[None]:
    """Point file descriptor 1 at the file `open_target()` opens, meanwhile (Python's own
    sys.stdout is flushed first and unaffected afterwards)."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 at all: nothing to protect
        yield
        return
    try:
        with open_target() as target:
            os.dup2(target.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def native_stdout_silenced() -> contextlib.AbstractContextManager[None]:
    """Send what native code writes to file descriptor 1 to /dev/null meanwhile."""
    return _fd1_redirected(lambda: open(os.devnull, "wb"))


def stdout_to_stderr() -> contextlib.AbstractContextManager[None]:
    """Send everything written to file descriptor 1 (this process's prints and the child
    processes it starts) to stderr meanwhile, so that with `--json` stdout holds only the
    JSON and progress stays visible."""
    return _fd1_redirected(lambda: os.fdopen(os.dup(2), "wb"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replaceable_path(path: str | os.PathLike) -> Path:
    """The file a write to `path` replaces: a link's target; UserError for a directory or
    special file (a FIFO would otherwise become a regular file)."""
    path = _resolved(Path(path))
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: is not a regular file; hybridps only replaces regular files")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and a rename. A symbolic link is
    written through; a directory or special file is refused (UserError), never replaced."""
    path = replaceable_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        raise_if_interrupted()  # an interrupted command commits no output, even one swallowed on the way
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")
