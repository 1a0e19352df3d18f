"""A measured trace's applied updates as the stream the convergence model reads (the
same fields as the simulator's sim.metrics.UpdateLog), and its evaluation points.

A bsp round is one entry (worker -1, the round's samples); an asp/ssp push is one entry
with its staleness. Samples come from the push records (`samples`, else counted from the
worker's compute records since its previous push). Lives in traces/ because it only
reads a trace; the model itself is sim/convergence.py. Never imports torch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from hybridps.errors import UserError
from traces.jsonl import Trace


@dataclass(frozen=True)
class MeasuredStream:
    t_s: np.ndarray
    phase: np.ndarray
    worker: np.ndarray
    staleness: np.ndarray
    samples: np.ndarray
    names: tuple[str, ...]
    origin_s: float  # the first phase's start: measured times minus this are on the simulator's clock


@dataclass(frozen=True)
class EvalPoints:
    t_s: np.ndarray  # run clock
    epoch: np.ndarray
    accuracy: np.ndarray
    loss: np.ndarray


def _push_samples(trace: Trace) -> dict[str, list[int]]:
    """Samples of each push, per worker, in time order."""
    computes: dict[str, list[dict]] = defaultdict(list)
    for r in trace.of_kind("compute"):
        computes[r["worker"]].append(r)
    out: dict[str, list[int]] = {}
    pushes: dict[str, list[dict]] = defaultdict(list)
    for r in trace.of_kind("push"):
        if r.get("shard", 0) == 0:
            pushes[r["worker"]].append(r)
    for worker, recs in pushes.items():
        recs.sort(key=lambda r: r["start_s"])
        comp = sorted(computes.get(worker, []), key=lambda r: r["start_s"])
        ci, counts = 0, []
        for p in recs:
            n = 0
            while ci < len(comp) and comp[ci]["start_s"] < p["start_s"]:
                n += comp[ci].get("samples", comp[ci]["batch"])
                ci += 1
            counts.append(int(p.get("samples", n)))
        out[worker] = counts
    return out


def update_stream(trace: Trace, path: str = "<trace>") -> MeasuredStream:
    """The trace's applied updates in time order (UserError when it has none or no plan)."""
    plan = trace.header.get("plan") or {}
    phases = plan.get("phases")
    if not phases:
        raise UserError(f"{path}: the header has no plan; the convergence model needs a run trace")
    names = tuple(dict.fromkeys(w["name"] for ph in phases for w in ph["workers"]))
    index = {n: i for i, n in enumerate(names)}
    sync = [ph["sync"] for ph in phases]
    ups = sorted((r for r in trace.of_kind("update") if r.get("shard", 0) == 0), key=lambda r: (r["t_s"], r["version"]))
    if not ups:
        raise UserError(f"{path}: no update records; the convergence model needs a run trace with its updates")
    samples = _push_samples(trace)
    taken: dict[str, int] = defaultdict(int)
    rows: list[tuple[float, int, int, int, int]] = []
    rounds: dict[tuple[int, int], list] = {}
    for r in ups:
        w = r["worker"]
        k = taken[w]
        taken[w] += 1
        seq = samples.get(w, [])
        n = seq[k] if k < len(seq) else 0
        if sync[r["phase"]] == "bsp":
            key = (r["phase"], r["version"])
            if key in rounds:
                rounds[key][4] += n
                continue
            rounds[key] = [r["t_s"], r["phase"], -1, 0, n]
            rows.append(rounds[key])  # the same list: later members add their samples
        else:
            rows.append([r["t_s"], r["phase"], index.get(w, 0), r["staleness"], n])
    arr = np.array(rows, float)
    ph_recs = sorted(trace.of_kind("phase"), key=lambda r: r["index"])
    origin = float(ph_recs[0]["start_s"]) if ph_recs else 0.0
    return MeasuredStream(arr[:, 0], arr[:, 1].astype(np.int64), arr[:, 2].astype(np.int64), arr[:, 3],
                          arr[:, 4], names, origin)


def eval_points(trace: Trace) -> EvalPoints:
    """The trace's evaluation records (validation split), in time order."""
    recs = sorted((r for r in trace.of_kind("eval") if r.get("split", "test") != "train"), key=lambda r: r["t_s"])
    return EvalPoints(np.array([r["t_s"] for r in recs], float), np.array([r["epoch"] for r in recs], float),
                      np.array([r["accuracy"] for r in recs], float), np.array([r["loss"] for r in recs], float))


def measured_time_to_accuracy_s(points: EvalPoints, target: float, origin_s: float = 0.0) -> float | None:
    """The first evaluation at or above `target`, on the simulator's clock (None if never)."""
    hit = np.flatnonzero(points.accuracy >= target)
    return float(points.t_s[hit[0]] - origin_s) if hit.size else None


def noise_scales(trace: Trace) -> list[tuple[int, float, float]]:
    """(phase, noise_scale, stderr) of the trace's `noise` records (empty when it has none)."""
    return [(r["phase"], float(r["noise_scale"]), float(r["stderr"])) for r in trace.of_kind("noise")
            if np.isfinite(r["noise_scale"]) and r["noise_scale"] > 0]
