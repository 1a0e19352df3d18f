"""Chrome trace-event export: open the file in Perfetto (ui.perfetto.dev) or
chrome://tracing. Each worker is a process with two lanes, compute and communication;
the PS updates and phase boundaries get lanes of their own."""

from __future__ import annotations

import os
from typing import Any, Iterable

from hybridps.fileio import atomic_write_json

_US = 1e6


def to_chrome(header: dict[str, Any], records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    pids: dict[str, int] = {}

    def pid_of(worker: str) -> int:
        if worker not in pids:
            pid = len(pids) + 1
            pids[worker] = pid
            events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": worker}})
            events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}})
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": 0, "args": {"name": "compute"}})
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": 1, "args": {"name": "communication"}})
        return pids[worker]

    for w in (header.get("plan") or {}).get("phases", [{}])[0].get("workers", []):
        pid_of(w["name"])  # lanes in plan order
    events.append({"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "PS / phases"}})
    for r in records:
        k = r["kind"]
        if k == "compute":
            events.append({"ph": "X", "name": f"step e{r['epoch']}", "cat": "compute", "pid": pid_of(r["worker"]),
                           "tid": 0, "ts": r["start_s"] * _US, "dur": (r["end_s"] - r["start_s"]) * _US,
                           "args": {"batch": r["batch"], "resolution": r["resolution"], "phase": r["phase"],
                                    "step": r["step"]}})
        elif k in ("push", "pull"):
            events.append({"ph": "X", "name": k, "cat": "comm", "pid": pid_of(r["worker"]), "tid": 1,
                           "ts": r["start_s"] * _US, "dur": (r["end_s"] - r["start_s"]) * _US,
                           "args": {"bytes": r["bytes"], "phase": r["phase"]}})
        elif k == "update":
            events.append({"ph": "i", "s": "t", "name": "update", "pid": 0, "tid": 1, "ts": r["t_s"] * _US,
                           "args": {"worker": r["worker"], "version": r["version"], "staleness": r["staleness"]}})
        elif k == "phase":
            events.append({"ph": "X", "name": f"phase {r['index']}", "cat": "phase", "pid": 0, "tid": 0,
                           "ts": r["start_s"] * _US, "dur": (r["end_s"] - r["start_s"]) * _US})
        elif k == "eval":
            events.append({"ph": "i", "s": "g", "name": f"eval acc={r['accuracy']:.3f}", "pid": 0, "tid": 2,
                           "ts": r["t_s"] * _US, "args": {"loss": r["loss"], "epoch": r["epoch"]}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"source": header.get("source"), "format": header.get("format")}}


def write_chrome(path: str | os.PathLike, header: dict[str, Any], records: Iterable[dict[str, Any]]) -> None:
    atomic_write_json(path, to_chrome(header, records), indent=None)
