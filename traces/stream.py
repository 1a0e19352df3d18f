"""Read a trace record by record without holding it: a simulated ImageNet run has
millions of records (2.1 M for mixed16), which as dicts would take gigabytes.
`read_trace` (traces.jsonl) is for traces that fit in memory; the picture commands
(`hybridps gantt`, `hybridps chrome`) stream."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from hybridps.errors import SpecError
from traces.records import TRACE_FORMAT, validate_record


def stream_trace(path: str | os.PathLike) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """The header, and an iterator over the remaining records (validated as they come;
    SpecError names the line). A torn last line (a crash mid-write) ends the records."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(str(path), "", "no such trace file")
    f = open(path, "r", encoding="utf-8")
    first = f.readline()
    try:
        header = json.loads(first)
    except json.JSONDecodeError as e:
        f.close()
        raise SpecError(str(path), "line 1", f"invalid JSON: {e.msg}") from None
    if not isinstance(header, dict) or header.get("kind") != "header":
        f.close()
        raise SpecError(str(path), "line 1", "a trace starts with a header record")
    if header.get("format") != TRACE_FORMAT:
        f.close()
        raise SpecError(str(path), "line 1", f"format {header.get('format')!r} is not {TRACE_FORMAT!r}")

    def records() -> Iterator[dict[str, Any]]:
        with f:
            for lineno, line in enumerate(f, 2):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    if not line.endswith("\n"):
                        return  # torn last line
                    raise SpecError(str(path), f"line {lineno}", f"invalid JSON: {e.msg}") from None
                problem = validate_record(rec)
                if problem:
                    raise SpecError(str(path), f"line {lineno}", problem)
                if rec["kind"] != "header":  # a resumed run may repeat the header; the first one stands
                    yield rec

    return header, records()


def record_end_s(rec: dict[str, Any]) -> float | None:
    """When a record ends (end_s, else t_s), or None for records without a time."""
    return rec.get("end_s", rec.get("t_s"))


def trace_end_s(path: str | os.PathLike, tail_bytes: int = 1 << 18) -> float:
    """An estimate of the trace's last time, from its last lines only (records are
    written in about time order), so sizing time bins costs no full pass."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - tail_bytes))
        lines = f.read().splitlines()[1:] if size > tail_bytes else f.read().splitlines()
    end = 0.0
    for line in lines:
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        t = record_end_s(rec) if isinstance(rec, dict) else None
        if isinstance(t, (int, float)):
            end = max(end, float(t))
    return end
