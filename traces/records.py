"""The record kinds of hybridps.trace/1 and their fields (docs/formats.md, trace.jsonl).

Records are plain dicts (cheap to build in hot loops); `validate_record` checks one
when a trace is read back. Optional fields are additions the format allows.
"""

from __future__ import annotations

import math
from typing import Any

TRACE_FORMAT = "hybridps.trace/1"

TIME_FIELDS = ("start_s", "end_s", "t_s", "iteration_s")  # never negative
_NUM = (int, float)
_INT = (int,)
_STR = (str,)
_OPT_INT = (int, type(None))
_OPT_NUM = (int, float, type(None))
_OPT_DICT = (dict, type(None))

# kind -> (required fields, optional fields); each field -> accepted Python types
RECORD_KINDS: dict[str, tuple[dict[str, tuple[type, ...]], dict[str, tuple[type, ...]]]] = {
    "header": (
        {"format": _STR, "source": _STR},
        {"cluster": _OPT_DICT, "job": _OPT_DICT, "plan": _OPT_DICT, "seed": _OPT_INT, "meta": _OPT_DICT},
    ),
    "compute": (
        {"worker": _STR, "phase": _INT, "epoch": _INT, "step": _INT, "batch": _INT, "resolution": _INT,
         "start_s": _NUM, "end_s": _NUM},
        {"samples": _INT},
    ),
    # buckets: a push sent in pieces during backward (hybridps run --bucket-mb), how many,
    # and how many of them were handed to the transport before backward ended
    "push": (
        {"worker": _STR, "phase": _INT, "start_s": _NUM, "end_s": _NUM, "bytes": _INT},
        {"shard": _INT, "samples": _INT, "buckets": _INT, "buckets_in_backward": _INT},
    ),
    "pull": (
        {"worker": _STR, "phase": _INT, "start_s": _NUM, "end_s": _NUM, "bytes": _INT},
        {"shard": _INT},
    ),
    "update": (
        {"worker": _STR, "phase": _INT, "t_s": _NUM, "version": _INT, "staleness": _INT},
        {"shard": _INT},
    ),
    "phase": ({"index": _INT, "start_s": _NUM, "end_s": _NUM}, {}),
    "eval": (
        {"t_s": _NUM, "epoch": _NUM, "loss": _NUM, "accuracy": _NUM},
        # samples: how many held-out samples; start_s: when the evaluation began (t_s: ended)
        {"phase": _INT, "split": _STR, "samples": _INT, "start_s": _NUM},
    ),
    # training loss per exchange interval, per worker (mean over the interval's samples);
    # with lossy compression also the norm of the vector handed to the codec (error
    # feedback included) and of the residual error feedback keeps
    "train": (
        {"worker": _STR, "phase": _INT, "t_s": _NUM, "samples": _INT, "loss": _NUM},
        {"update_norm": _NUM, "residual_norm": _NUM},
    ),
    # the gradient noise scale B_simple = tr(Sigma) / |G|^2 measured at the PS over a phase
    # (McCandlish et al. 2018): estimator "two-batch" (bsp rounds) or "differenced" (asp/ssp)
    "noise": (
        {"phase": _INT, "t_s": _NUM, "estimator": _STR, "noise_scale": _NUM, "grad_sq": _NUM,
         "trace_cov": _NUM, "stderr": _NUM, "rounds": _INT},
        {"batch_small": _NUM, "batch_big": _NUM},
    ),
    # a resumed run: where it continued (the checkpoint's clock, phase and model version)
    # and how much of the interrupted run's trace it cut (work the checkpoint did not hold)
    "resume": (
        {"t_s": _NUM, "phase": _INT, "version": _INT, "discarded_records": _INT},
        {"discarded_bytes": _INT, "applied_in_phase": _INT},
    ),
    # a worker lost under --on-worker-loss continue: why, and the samples per epoch each
    # remaining worker of the phase trains on from its next worker-epoch on
    "worker_lost": (
        {"worker": _STR, "phase": _INT, "t_s": _NUM, "reason": _STR},
        {"shares": _OPT_DICT},
    ),
    # an online policy's decision (docs/policies.md): what it observed and what it did
    "policy": ({"t_s": _NUM, "phase": _INT, "observed": (dict,), "action": (dict,)}, {}),
    "profile": (
        {"device": _STR, "resolution": _INT, "batch": _INT, "iteration_s": _NUM},
        {"samples": _INT, "repeats": _INT, "model": _STR},
    ),
}


def validate_record(rec: Any) -> str | None:
    """None if `rec` is a valid record, else a message saying what is wrong."""
    if not isinstance(rec, dict):
        return "a record must be a JSON object"
    kind = rec.get("kind")
    if kind not in RECORD_KINDS:
        return f"unknown record kind {kind!r} (known: {', '.join(RECORD_KINDS)})"
    required, optional = RECORD_KINDS[kind]
    for name, types in required.items():
        if name not in rec:
            return f"{kind} record lacks field {name!r}"
        v = rec[name]
        if isinstance(v, bool) or not isinstance(v, types):
            return f"{kind} record field {name!r} has type {type(v).__name__}, expected {'/'.join(t.__name__ for t in types)}"
    for name, v in rec.items():
        if name == "kind" or name in required:
            continue
        if name not in optional:
            return f"{kind} record has unknown field {name!r}"
        if isinstance(v, bool) or not isinstance(v, optional[name]):
            return f"{kind} record field {name!r} has type {type(v).__name__}"
    for name, v in rec.items():
        if isinstance(v, float) and not math.isfinite(v):
            return f"{kind} record field {name!r} is {v}, not a finite number"
        if name in TIME_FIELDS and isinstance(v, (int, float)) and v < 0:
            return f"{kind} record field {name!r} is negative ({v}); times are seconds from the run's start"
    if "start_s" in rec and "end_s" in rec and rec["end_s"] < rec["start_s"]:
        return f"{kind} record ends ({rec['end_s']}) before it starts ({rec['start_s']})"
    return None


def header(source: str, cluster: dict | None = None, job: dict | None = None, plan: dict | None = None,
           **extra: Any) -> dict[str, Any]:
    """A header record; `source` is "sim", "runtime" or "profile"."""
    rec: dict[str, Any] = {"kind": "header", "format": TRACE_FORMAT, "source": source}
    if cluster is not None:
        rec["cluster"] = cluster
    if job is not None:
        rec["job"] = job
    if plan is not None:
        rec["plan"] = plan
    rec.update(extra)
    return rec
