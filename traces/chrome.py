"""Chrome trace-event export: open the file in Perfetto (ui.perfetto.dev) or
chrome://tracing. Each worker is a process with two lanes, compute and communication;
the PS updates and phase boundaries get lanes of their own.

`to_chrome` builds the whole document in memory (small traces, tests);
`ChromeWriter` streams the same events to a file batch by batch, so a run with
millions of records never holds them all (the simulator's `--chrome`)."""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from hybridps.fileio import _umask

_US = 1e6


class _Events:
    """Turns trace records into trace events; remembers which workers have lanes."""

    def __init__(self, header: dict[str, Any]):
        self.header = header
        self.pids: dict[str, int] = {}

    def _pid_of(self, worker: str, out: list[dict[str, Any]]) -> int:
        pid = self.pids.get(worker)
        if pid is None:  # a new worker: its process and two lanes, before its first event
            pid = len(self.pids) + 1
            self.pids[worker] = pid
            out.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": worker}})
            out.append({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}})
            out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": 0, "args": {"name": "compute"}})
            out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": 1, "args": {"name": "communication"}})
        return pid

    def opening(self) -> list[dict[str, Any]]:
        """The metadata events that come first: worker lanes in plan order, then the PS."""
        out: list[dict[str, Any]] = []
        for w in (self.header.get("plan") or {}).get("phases", [{}])[0].get("workers", []):
            self._pid_of(w["name"], out)
        out.append({"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "PS / phases"}})
        return out

    def convert(self, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for r in records:
            k = r["kind"]
            if k == "compute":
                out.append({"ph": "X", "name": f"step e{r['epoch']}", "cat": "compute",
                            "pid": self._pid_of(r["worker"], out), "tid": 0, "ts": r["start_s"] * _US,
                            "dur": (r["end_s"] - r["start_s"]) * _US,
                            "args": {"batch": r["batch"], "resolution": r["resolution"], "phase": r["phase"],
                                     "step": r["step"]}})
            elif k in ("push", "pull"):
                out.append({"ph": "X", "name": k, "cat": "comm", "pid": self._pid_of(r["worker"], out), "tid": 1,
                            "ts": r["start_s"] * _US, "dur": (r["end_s"] - r["start_s"]) * _US,
                            "args": {"bytes": r["bytes"], "phase": r["phase"]}})
            elif k == "update":
                out.append({"ph": "i", "s": "t", "name": "update", "pid": 0, "tid": 1, "ts": r["t_s"] * _US,
                            "args": {"worker": r["worker"], "version": r["version"], "staleness": r["staleness"]}})
            elif k == "phase":
                out.append({"ph": "X", "name": f"phase {r['index']}", "cat": "phase", "pid": 0, "tid": 0,
                            "ts": r["start_s"] * _US, "dur": (r["end_s"] - r["start_s"]) * _US})
            elif k == "eval":
                out.append({"ph": "i", "s": "g", "name": f"eval acc={r['accuracy']:.3f}", "pid": 0, "tid": 2,
                            "ts": r["t_s"] * _US, "args": {"loss": r["loss"], "epoch": r["epoch"]}})
        return out


def _other_data(header: dict[str, Any]) -> dict[str, Any]:
    return {"source": header.get("source"), "format": header.get("format")}


def to_chrome(header: dict[str, Any], records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The whole trace-event document as one dict (holds every event in memory)."""
    events = _Events(header)
    return {"traceEvents": events.opening() + events.convert(records), "displayTimeUnit": "ms",
            "otherData": _other_data(header)}


class ChromeWriter:
    """Streams a trace-event file: `write_many(records)` as often as needed, then
    `close()`. The events go to a temporary file beside `path` that `close()` moves into
    place (atomic: a reader never sees half a file); `abort()` removes it instead.
    The parsed JSON equals `to_chrome(header, all records)`."""

    def __init__(self, path: str | os.PathLike, header: dict[str, Any]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._header = header
        self._events = _Events(header)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            os.chmod(self._tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
            self._f = os.fdopen(fd, "w", encoding="utf-8")
        except BaseException:
            os.close(fd)
            os.unlink(self._tmp)
            raise
        self._f.write('{"traceEvents":[')
        self._first = True
        self._write_events(self._events.opening())

    def _write_events(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        text = json.dumps(events, separators=(",", ":"))[1:-1]  # one C-encoder call per batch
        self._f.write(text if self._first else "," + text)
        self._first = False

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        self._write_events(self._events.convert(records))

    def close(self) -> None:
        """Finish the document and move it to `path`."""
        try:
            tail = {"displayTimeUnit": "ms", "otherData": _other_data(self._header)}
            self._f.write("]," + json.dumps(tail, separators=(",", ":"))[1:] + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the unfinished file; a previous file at `path` stays as it was."""
        self._f.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


def write_chrome(path: str | os.PathLike, header: dict[str, Any], records: Iterable[dict[str, Any]]) -> None:
    """Write `records` as a trace-event file at `path` (streamed, atomic)."""
    writer = ChromeWriter(path, header)
    records = iter(records)
    try:
        while batch := list(itertools.islice(records, 5000)):
            writer.write_many(batch)
    except BaseException:
        writer.abort()
        raise
    writer.close()
