"""checkpoint.pt: reading it back safely and deciding whether a run may resume from it.

A checkpoint carries digests of the specs it was written for (cluster, job, plan, and
the run's model/data/seed), so `--resume` with other specs is refused instead of
silently mixing two runs, and the byte length of trace.jsonl at the moment it was
written, so a resume cuts the records of work the checkpoint does not hold.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from hybridps.errors import UserError

CHECKPOINT_FORMAT = "hybridps.checkpoint/1"
REQUIRED = ("params", "optimizer", "phase", "applied_in_phase", "applied_total", "version", "elapsed_s",
            "epoch_end_s", "phase_times", "torch_rng", "complete")


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not belong to this run (exit 2)."""


def checkpoint_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / ("checkpoint.pt" if shard == 0 else f"checkpoint-shard{shard}.pt")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def spec_digests(cluster, job, plan, model: str, data: str, seed: int | None) -> dict[str, str]:
    """One digest per thing a resume must keep: the three specs and the run's settings."""
    return {"cluster": _digest(cluster.model_dump(mode="json")), "job": _digest(job.model_dump(mode="json")),
            "plan": _digest(plan.model_dump(mode="json")),
            "run": _digest({"model": model, "data": data, "seed": seed})}


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at `path`; CheckpointError (one line) if it is missing or not a valid checkpoint."""
    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint to resume from") from None
    except Exception as e:  # truncated, random bytes, empty, zeros: torch raises many kinds
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: corrupt checkpoint, cannot resume ({type(e).__name__}: {reason[:120]}); "
                              f"start the run again with --overwrite") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a hybridps checkpoint (expected format {CHECKPOINT_FORMAT!r}); "
                              f"start the run again with --overwrite")
    missing = [k for k in REQUIRED if k not in ck]
    if missing:
        raise CheckpointError(f"{path}: corrupt checkpoint, lacks {', '.join(missing)}; "
                              f"start the run again with --overwrite")
    return ck


def check_resume(out_dir: Path, shards: int, digests: dict[str, str]) -> dict:
    """Load every shard's checkpoint in `out_dir` and check it belongs to this run; returns shard 0's."""
    first = None
    for s in range(shards):
        try:
            ck = load_checkpoint(checkpoint_path(out_dir, s))
        except CheckpointError as e:
            raise CheckpointError(f"PS shard {s} (rank {s})'s {e}") from None
        saved = ck.get("digests") or {}
        for what, value in digests.items():
            if what in saved and saved[what] != value:
                hint = {"run": "the same --model, --data and --seed"}.get(what, f"the run's own --{what} file")
                raise CheckpointError(f"{checkpoint_path(out_dir, s)}: written for another {what} than the one "
                                      f"given (digest {saved[what]} != {value}); resume with {hint}, or omit "
                                      f"--cluster/--job/--plan to use the trace header's")
        if first is None:
            first = ck
    return first
