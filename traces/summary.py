"""The run summary, defined once: `simulate` (sim/metrics.py, from its running counters),
`run`'s summary.json (runtime/summary.py) and `validate` (traces/compare.py) all build
their figures with these functions, so a simulated and a measured trace are summarised
the same way.

Definitions:
- time zero is the trace's (every process ready, docs/semantics.md); `makespan_s` is the
  end of the last phase on that clock, so it counts the PS's evaluation of the initial
  model before phase 0 and the time between phases. A trace without phase records (an
  interrupted run) ends at its last record's end.
- staleness percentiles are nearest-rank: the q-quantile is the smallest observed
  staleness that at least ceil(q·n) of the n applied updates do not exceed (always a
  value that occurred; p50 of [0, 1] is 0, p99 of 99 zeros and one 7 is 0).
- per worker: `compute_s` is the sum of its compute records' durations, `comm_s` of its
  push and pull records', `wait_s` the rest of the makespan (barriers, ssp waits, PS
  queue, exchange overhead), never below 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable

from traces.jsonl import Trace

WORKER_COUNTS = ("iterations", "samples", "bytes_pushed", "bytes_pulled")


def percentile_nearest_rank(hist: dict[int, int], q: float) -> float:
    """The q-quantile (0..1) of integer values given as {value: count}, nearest-rank; 0 if empty."""
    total = sum(hist.values())
    if total == 0:
        return 0.0
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return float(value)
    return float(max(hist))


def staleness_stats(hist: dict[int, int]) -> dict[str, float]:
    """The summary's `staleness` object from {staleness: number of updates}."""
    n = sum(hist.values())
    if n == 0:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    return {"mean": sum(v * k for v, k in hist.items()) / n, "p50": percentile_nearest_rank(hist, 0.50),
            "p99": percentile_nearest_rank(hist, 0.99), "max": float(max(hist))}


def wait_s(makespan_s: float, compute_s: float, comm_s: float) -> float:
    """A worker's time neither computing nor communicating."""
    return max(0.0, makespan_s - compute_s - comm_s)


def worker_row(makespan_s: float, iterations: int, samples: int, compute_s: float, comm_s: float,
               bytes_pushed: int, bytes_pulled: int) -> dict[str, Any]:
    """One worker's entry of the summary's `workers` object."""
    return {"iterations": iterations, "samples": samples, "compute_s": compute_s, "comm_s": comm_s,
            "wait_s": wait_s(makespan_s, compute_s, comm_s), "bytes_pushed": bytes_pushed,
            "bytes_pulled": bytes_pulled}


def makespan_s(trace: Trace) -> float:
    """End of the last phase from time zero; without phase records, the last record's end."""
    phases = trace.of_kind("phase")
    if phases:
        return max(p["end_s"] for p in phases)
    return max((r.get("end_s", r.get("t_s", 0.0)) for r in trace.records), default=0.0)


def staleness_hist(updates: Iterable[dict]) -> dict[int, int]:
    """{staleness: count} over update records (one per applied push; shard 0 when sharded)."""
    hist: dict[int, int] = {}
    for r in updates:
        if r.get("shard", 0) == 0:
            hist[r["staleness"]] = hist.get(r["staleness"], 0) + 1
    return hist


def worker_totals(trace: Trace) -> dict[str, dict[str, Any]]:
    """Per worker name, in first-record order: counts, bytes and record times."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"iterations": 0, "samples": 0, "compute_s": 0.0,
                                                          "comm_s": 0.0, "bytes_pushed": 0, "bytes_pulled": 0})
    for r in trace.records:
        kind = r["kind"]
        if kind == "compute":
            w = out[r["worker"]]
            w["iterations"] += 1
            w["samples"] += r.get("samples", r["batch"])
            w["compute_s"] += r["end_s"] - r["start_s"]
        elif kind in ("push", "pull"):
            w = out[r["worker"]]
            w["comm_s"] += r["end_s"] - r["start_s"]
            w["bytes_pushed" if kind == "push" else "bytes_pulled"] += r["bytes"]
    return dict(out)


def summarize(trace: Trace) -> dict[str, Any]:
    """The summary fields a trace gives, in the shape of `simulate --json`: makespan_s,
    phases, workers, updates, staleness, bytes_total."""
    span = makespan_s(trace)
    phases = sorted(trace.of_kind("phase"), key=lambda r: r.get("index", 0))
    workers = {name: worker_row(span, **t) for name, t in worker_totals(trace).items()}
    hist = staleness_hist(trace.of_kind("update"))
    return {
        "makespan_s": span,
        "phases": [{"start_s": p["start_s"], "end_s": p["end_s"]} for p in phases],
        "workers": workers,
        "updates": sum(hist.values()),
        "staleness": staleness_stats(hist),
        "bytes_total": sum(w["bytes_pushed"] + w["bytes_pulled"] for w in workers.values()),
    }
