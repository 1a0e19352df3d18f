"""Read a trace record by record without holding it: a simulated ImageNet run has
millions of records (2.1 M for mixed16), which as dicts would take gigabytes.
`read_trace` (traces.jsonl) is for traces that fit in memory; the picture commands
(`hybridps gantt`, `hybridps chrome`) stream."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from hybridps.errors import SpecError
from traces.jsonl import check_header, iter_lines, parse_record


def stream_trace(path: str | os.PathLike) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """The header, and an iterator over the remaining records, read as strictly as
    `read_trace` (UTF-8, no duplicate keys, NaN or deep nesting; SpecError names the
    line) but as they come. A torn last line (a crash mid-write) ends the records."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(str(path), "", "no such trace file")
    lines = iter_lines(path)
    header = None
    for lineno, text, complete in lines:
        if text.strip():
            header = parse_record(path, lineno, text, complete)
            break
    if header is None:
        lines.close()
        raise SpecError(str(path), "", "empty trace (no header record)")
    check_header(path, header)

    def records() -> Iterator[dict[str, Any]]:
        with contextlib.closing(lines):
            for lineno, text, complete in lines:
                if not text.strip():
                    continue
                rec = parse_record(path, lineno, text, complete)
                if rec is None:
                    return  # torn last line
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
