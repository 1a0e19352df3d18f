"""Chrome trace-event export: open the file in Perfetto (ui.perfetto.dev) or
chrome://tracing. Each worker is a process with two named lanes, compute and
communication; the PS process has named lanes for phases, updates and evaluations.

A whole simulated ImageNet run is millions of events (mixed16: 303 MB), more than a
browser opens, so `ChromeOptions` can cut it down: a time window, per-bin counters
instead of one event per iteration (`bin_s`), and one aggregated process for the
workers beyond the first `max_lanes - 1`.

`to_chrome` builds the whole document in memory (small traces, tests);
`ChromeWriter` streams the same events to a file batch by batch, so a run with
millions of records never holds them all (the simulator's `--chrome`)."""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

from hybridps.fileio import _umask, replaceable_path

_US = 1e6
PS_PID = 0
PS_LANES = {0: "phases", 1: "updates", 2: "evaluations"}


@dataclass(frozen=True)
class ChromeOptions:
    """What to keep. `window_s`: (start, end) seconds; records outside are dropped.
    `counters`: replace every worker's bars and the PS updates by counters per bin of
    `bin_s` seconds (share of the bin computing / communicating; updates per bin).
    `max_lanes`: at most this many worker processes; the workers beyond the first
    `max_lanes - 1` become one process of counters (their mean share per `bin_s` bin)."""

    window_s: tuple[float, float] | None = None
    bin_s: float | None = None
    counters: bool = False
    max_lanes: int | None = None

    def __post_init__(self) -> None:
        if (self.counters or self.max_lanes is not None) and not (self.bin_s and self.bin_s > 0):
            raise ValueError("counters and max_lanes need bin_s > 0")
        if self.max_lanes is not None and self.max_lanes < 2:
            raise ValueError("max_lanes must be at least 2 (one worker lane and the group)")


def _overlaps(rec: dict[str, Any], window: tuple[float, float]) -> bool:
    lo, hi = window
    if "start_s" in rec:
        return rec["end_s"] >= lo and rec["start_s"] <= hi
    if "t_s" in rec:
        return lo <= rec["t_s"] <= hi
    return True


class _Bins:
    """Seconds of busy time per (lane, series) and bin; intervals split across bins."""

    def __init__(self, width_s: float):
        self.width_s = width_s
        self.busy: dict[tuple[int, str], dict[int, float]] = defaultdict(lambda: defaultdict(float))

    def add(self, lane: int, series: str, start_s: float, end_s: float) -> None:
        w = self.width_s
        b = int(start_s // w)
        cell = self.busy[(lane, series)]
        while True:
            hi = (b + 1) * w
            cell[b] += min(end_s, hi) - max(start_s, b * w)
            if end_s <= hi:
                return
            b += 1

    def count(self, lane: int, series: str, t_s: float) -> None:
        self.busy[(lane, series)][int(t_s // self.width_s)] += 1.0


class _Events:
    """Turns trace records into trace events; remembers which workers have lanes."""

    def __init__(self, header: dict[str, Any], options: ChromeOptions | None = None):
        self.header = header
        self.options = options or ChromeOptions()
        self.pids: dict[str, int] = {}
        self.group: list[str] = []  # workers aggregated into one process (max_lanes)
        self.group_pid: int | None = None
        self.bins = _Bins(self.options.bin_s) if self.options.bin_s else None
        plan_workers = self._plan_workers()
        limit = self.options.max_lanes
        self.own_lanes = limit - 1 if limit is not None and len(plan_workers) > limit else limit

    def _plan_workers(self) -> list[str]:
        return [w["name"] for w in (self.header.get("plan") or {}).get("phases", [{}])[0].get("workers", [])]

    def _pid_of(self, worker: str, out: list[dict[str, Any]]) -> int:
        pid = self.pids.get(worker)
        if pid is not None:
            return pid
        if self.own_lanes is not None and len(self.pids) - len(self.group) >= self.own_lanes:
            if self.group_pid is None:
                self.group_pid = 10_000  # after every worker process (sort index below)
            self.group.append(worker)
            self.pids[worker] = self.group_pid
            return self.group_pid
        pid = len(self.pids) - len(self.group) + 1
        self.pids[worker] = pid
        out.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": worker}})
        out.append({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}})
        if not self.options.counters:  # counters need no thread lanes
            out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": 0, "args": {"name": "compute"}})
            out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": 1, "args": {"name": "communication"}})
        return pid

    def opening(self) -> list[dict[str, Any]]:
        """The metadata events that come first: worker lanes in plan order, then the PS."""
        out: list[dict[str, Any]] = []
        for name in self._plan_workers():
            self._pid_of(name, out)
        out.append({"ph": "M", "name": "process_name", "pid": PS_PID, "args": {"name": "PS / phases"}})
        out.append({"ph": "M", "name": "process_sort_index", "pid": PS_PID, "args": {"sort_index": -1}})
        for tid, lane in PS_LANES.items():
            out.append({"ph": "M", "name": "thread_name", "pid": PS_PID, "tid": tid, "args": {"name": lane}})
        return out

    def convert(self, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        window = self.options.window_s
        bins = self.bins
        counters = self.options.counters
        for r in records:
            if window is not None and not _overlaps(r, window):
                continue
            k = r["kind"]
            if k == "compute":
                pid = self._pid_of(r["worker"], out)
                if counters or pid == self.group_pid:
                    bins.add(pid, "compute", r["start_s"], r["end_s"])
                    continue
                out.append({"ph": "X", "name": f"step e{r['epoch']}", "cat": "compute",
                            "pid": pid, "tid": 0, "ts": r["start_s"] * _US,
                            "dur": (r["end_s"] - r["start_s"]) * _US,
                            "args": {"batch": r["batch"], "resolution": r["resolution"], "phase": r["phase"],
                                     "step": r["step"]}})
            elif k in ("push", "pull"):
                pid = self._pid_of(r["worker"], out)
                if counters or pid == self.group_pid:
                    bins.add(pid, "communication", r["start_s"], r["end_s"])
                    continue
                out.append({"ph": "X", "name": k, "cat": "comm", "pid": pid, "tid": 1,
                            "ts": r["start_s"] * _US, "dur": (r["end_s"] - r["start_s"]) * _US,
                            "args": {"bytes": r["bytes"], "phase": r["phase"]}})
            elif k == "update":
                if counters:
                    bins.count(PS_PID, "updates", r["t_s"])
                    continue
                out.append({"ph": "i", "s": "t", "name": "update", "pid": PS_PID, "tid": 1, "ts": r["t_s"] * _US,
                            "args": {"worker": r["worker"], "version": r["version"], "staleness": r["staleness"]}})
            elif k == "phase":
                out.append({"ph": "X", "name": f"phase {r['index']}", "cat": "phase", "pid": PS_PID, "tid": 0,
                            "ts": r["start_s"] * _US, "dur": (r["end_s"] - r["start_s"]) * _US})
            elif k == "eval":
                out.append({"ph": "i", "s": "g", "name": f"eval acc={r['accuracy']:.3f}", "pid": PS_PID, "tid": 2,
                            "ts": r["t_s"] * _US, "args": {"loss": r["loss"], "epoch": r["epoch"]}})
        return out

    def closing(self) -> list[dict[str, Any]]:
        """The counter events of the binned series, once all records are in."""
        if self.bins is None:
            return []
        out: list[dict[str, Any]] = []
        if self.group_pid is not None:
            first, last = self.group[0], self.group[-1]
            out.append({"ph": "M", "name": "process_name", "pid": self.group_pid,
                        "args": {"name": f"{first} … {last} ({len(self.group)} workers, mean)"}})
            out.append({"ph": "M", "name": "process_sort_index", "pid": self.group_pid,
                        "args": {"sort_index": self.group_pid}})
        w = self.bins.width_s
        lanes = sorted({lane for lane, _ in self.bins.busy})
        for lane in lanes:
            if lane == PS_PID:
                counts = self.bins.busy[(PS_PID, "updates")]
                for b in range(min(counts), max(counts) + 2):
                    out.append({"ph": "C", "name": f"updates per {w:g} s", "pid": PS_PID, "ts": b * w * _US,
                                "args": {"updates": counts.get(b, 0.0)}})
                continue
            members = len(self.group) if lane == self.group_pid else 1
            series = {name: self.bins.busy.get((lane, name), {}) for name in ("compute", "communication")}
            used = [b for cell in series.values() for b in cell]
            for b in range(min(used), max(used) + 2):  # one bin past the end: the counter drops to 0
                out.append({"ph": "C", "name": f"share of each {w:g} s", "pid": lane, "ts": b * w * _US,
                            "args": {name: round(cell.get(b, 0.0) / (w * members), 4)
                                     for name, cell in series.items()}})
        return out


def _other_data(header: dict[str, Any]) -> dict[str, Any]:
    return {"source": header.get("source"), "format": header.get("format")}


def to_chrome(header: dict[str, Any], records: Iterable[dict[str, Any]],
              options: ChromeOptions | None = None) -> dict[str, Any]:
    """The whole trace-event document as one dict (holds every event in memory)."""
    events = _Events(header, options)
    body = events.opening() + events.convert(records)
    return {"traceEvents": body + events.closing(), "displayTimeUnit": "ms", "otherData": _other_data(header)}


class ChromeWriter:
    """Streams a trace-event file: `write_many(records)` as often as needed, then
    `close()`. The events go to a temporary file beside `path` that `close()` moves into
    place (atomic: a reader never sees half a file); `abort()` removes it instead.
    The parsed JSON equals `to_chrome(header, all records)`."""

    def __init__(self, path: str | os.PathLike, header: dict[str, Any], options: ChromeOptions | None = None):
        self.path = replaceable_path(path)  # a link's target; a FIFO or directory is refused
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._header = header
        self._events = _Events(header, options)
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
            self._write_events(self._events.closing())
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


def write_chrome(path: str | os.PathLike, header: dict[str, Any], records: Iterable[dict[str, Any]],
                 options: ChromeOptions | None = None) -> None:
    """Write `records` as a trace-event file at `path` (streamed, atomic)."""
    writer = ChromeWriter(path, header, options)
    records = iter(records)
    try:
        while batch := list(itertools.islice(records, 5000)):
            writer.write_many(batch)
    except BaseException:
        writer.abort()
        raise
    writer.close()
