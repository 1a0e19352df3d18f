"""Streaming JSONL trace writer and a validating reader.

The writer flushes after every record, so a trace is readable up to the last complete
line after a crash; the reader accepts a torn last line (and says so in `Trace.torn`).
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from hybridps.errors import SpecError
from hybridps.spec import parse_json_strict
from traces.records import TRACE_FORMAT, validate_record


# Fault injection for tests where no small filesystem can be mounted: a trace that would
# grow beyond this many bytes fails as on a full disk (OSError ENOSPC, nothing written).
FULL_DISK_ENV = "HYBRIDPS_TEST_TRACE_LIMIT_BYTES"


def _dumps(rec: dict[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":"), allow_nan=False)


def _drop_torn_tail(path: Path) -> None:
    """Cut a half-written last line (a crash mid-write) so appended records start on a line of their own."""
    if not path.exists():
        return
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = pos - step + nl + 1
                break
            pos -= step
        else:
            keep = 0
        if keep < end:
            f.truncate(keep)


def cut_trace(path: str | os.PathLike, keep_bytes: int) -> tuple[int, int]:
    """Cut `path` back to its first `keep_bytes` bytes (what a checkpoint holds); returns
    (records cut, bytes cut). A resumed run calls it, so the records of work the
    checkpoint does not hold leave the trace."""
    path = Path(path)
    size = path.stat().st_size
    if size <= keep_bytes:
        return 0, 0
    with open(path, "r+b") as f:
        f.seek(keep_bytes)
        tail = f.read()
        f.truncate(keep_bytes)
        f.flush()
        os.fsync(f.fileno())
    return tail.count(b"\n") + (0 if tail.endswith(b"\n") else 1), len(tail)


class TraceWriter:
    """Append records to a JSONL trace, one flushed line each.

    `TraceWriter(path, header)` starts a new trace; `TraceWriter(path, append=True)`
    continues an existing one (a resumed run) without writing a second header.
    """

    def __init__(self, path: str | os.PathLike, header: dict[str, Any] | None = None, append: bool = False,
                 fsync_every: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync_every = fsync_every
        self._count = 0
        self.size_bytes = 0  # bytes in the file: where a checkpoint marks the trace
        limit = os.environ.get(FULL_DISK_ENV)
        self._limit_bytes = int(limit) if limit else None
        if append:
            _drop_torn_tail(self.path)
            self._f = open(self.path, "a", encoding="utf-8")
            self.size_bytes = self.path.stat().st_size
        else:
            if header is None or header.get("kind") != "header":
                raise ValueError("a new trace starts with a header record")
            self._f = open(self.path, "w", encoding="utf-8")
            self.write(header)

    def _make_room(self, n_bytes: int) -> None:
        if self._limit_bytes is not None and self.size_bytes + n_bytes > self._limit_bytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    def write(self, rec: dict[str, Any]) -> None:
        line = _dumps(rec) + "\n"
        n_bytes = len(line.encode("utf-8"))
        self._make_room(n_bytes)
        self._f.write(line)
        self._f.flush()
        self.size_bytes += n_bytes
        self._count += 1
        if self._fsync_every and self._count % self._fsync_every == 0:
            os.fsync(self._f.fileno())

    def write_many(self, recs: Iterable[dict[str, Any]]) -> None:
        """Write many records with one flush (for the simulator's bulk output)."""
        text = "".join(_dumps(r) + "\n" for r in recs)
        n_bytes = len(text.encode("utf-8"))
        self._make_room(n_bytes)
        self._f.write(text)
        self._f.flush()
        self.size_bytes += n_bytes

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class Trace:
    header: dict[str, Any]
    records: list[dict[str, Any]]
    path: str = ""
    torn: bool = False  # the last line was incomplete (a crash mid-write) and was skipped
    _by_kind: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    @property
    def source(self) -> str:
        return self.header["source"]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        if not self._by_kind:
            for r in self.records:
                self._by_kind.setdefault(r["kind"], []).append(r)
        return self._by_kind.get(kind, [])


def iter_lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, complete) per line; SpecError for a line that is not UTF-8."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SpecError(str(path), f"line {lineno}", f"not UTF-8 text (byte {e.start} of the line); "
                                f"a trace is UTF-8 JSON lines") from None
            yield lineno, line.rstrip("\n"), line.endswith("\n")


def parse_record(path: Path, lineno: int, text: str, complete: bool = True) -> dict[str, Any] | None:
    """One trace line, strictly parsed (no duplicate key, NaN or Infinity) and validated;
    SpecError names the file and line. None for a torn last line (incomplete, not JSON)."""
    try:
        rec = parse_json_strict(text)
    except json.JSONDecodeError as e:
        if not complete:
            return None  # a crash mid-write: the records before it stand
        raise SpecError(str(path), f"line {lineno}", f"invalid JSON: {e.msg}") from None
    except RecursionError:
        raise SpecError(str(path), f"line {lineno}", "nested too deeply to be a trace record") from None
    except ValueError as e:  # a duplicate key, NaN or Infinity
        raise SpecError(str(path), f"line {lineno}", f"invalid record: {e}") from None
    problem = validate_record(rec)
    if problem:
        raise SpecError(str(path), f"line {lineno}", problem)
    return rec


def check_header(path: Path, rec: dict[str, Any]) -> None:
    """The first record must be a header of this trace format."""
    if rec["kind"] != "header":
        raise SpecError(str(path), "line 1", "a trace starts with a header record")
    if rec["format"] != TRACE_FORMAT:
        raise SpecError(str(path), "line 1", f"format {rec['format']!r} is not {TRACE_FORMAT!r}")


def read_trace(path: str | os.PathLike) -> Trace:
    """Read and validate a trace; SpecError names the file, line and problem."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(str(path), "", "no such trace file")
    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = []
    torn = False
    for lineno, text, complete in iter_lines(path):
        if not text.strip():
            continue
        rec = parse_record(path, lineno, text, complete)
        if rec is None:
            torn = True  # a crash mid-write: keep everything before it
            break
        if header is None:
            check_header(path, rec)
            header = rec
        elif rec["kind"] == "header":
            continue  # a resumed run may repeat the header; the first one stands
        else:
            records.append(rec)
    if header is None:
        raise SpecError(str(path), "", "empty trace (no header record)")
    return Trace(header=header, records=records, path=str(path), torn=torn)
