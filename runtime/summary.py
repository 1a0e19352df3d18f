"""summary.json of a run, computed from its trace (so a resumed run's summary covers
both parts) in the shape of `simulate --json`, plus the run's status and start-up time."""

from __future__ import annotations

from hybridps.fileio import atomic_write_json
from traces.jsonl import read_trace
from traces.summary import summarize


def summarize_trace(path) -> dict:
    """traces/summary.py's summary of the run's trace, plus its record count and evals."""
    tr = read_trace(path)
    return dict(summarize(tr), events=len(tr.records), evals=tr.of_kind("eval"))


def write_summary(ctx, shard, status: str, startup_s: float, wall_s: float) -> dict:
    out = summarize_trace(ctx.opts.out_dir / "trace.jsonl")
    out["epoch_end_s"] = list(shard.epoch_end_s)
    out.update({"status": status, "startup_s": startup_s, "wall_s": wall_s, "source": "runtime",
                "final_eval": shard.final_eval, "version": shard.version, "samples_applied": shard.applied_total})
    if shard.data is not None:  # what evaluation measured on: split, samples used, split size
        out["eval"] = {"split": "test", "samples": shard.eval_size(), "split_samples": shard.data.test_size,
                       "mode": "eval"}
    if shard.writer is not None and not shard.writer._f.closed:
        shard.writer._f.flush()
    atomic_write_json(ctx.opts.out_dir / "summary.json", out)
    return out
