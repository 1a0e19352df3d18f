"""summary.json of a run, computed from its trace (so a resumed run's summary covers
both parts) in the shape of `simulate --json`, plus the run's status and start-up time."""

from __future__ import annotations

from hybridps.fileio import atomic_write_json
from traces.jsonl import read_trace
from traces.summary import summarize


def summarize_trace(path) -> dict:
    """traces/summary.py's summary of the run's trace, plus its record count and evals."""
    return _summary_of(read_trace(path))


def _summary_of(tr) -> dict:
    actions: dict[str, int] = {}  # online policies' actions by kind, as `simulate --json` has them
    for rec in tr.of_kind("policy"):
        kind = rec["action"]["kind"]
        actions[kind] = actions.get(kind, 0) + 1
    return dict(summarize(tr), events=len(tr.records), evals=tr.of_kind("eval"), policy_actions=actions)


def first_step_s(computes: list[dict], zero_s: float) -> float:
    """Seconds from this launch's time zero (`zero_s` on the trace's clock: a resumed run's
    trace continues the earlier clock) to its first training step; 0 without one."""
    starts = [r["start_s"] for r in computes if r["start_s"] >= zero_s]
    return min(starts) - zero_s if starts else 0.0


def write_summary(ctx, shard, status: str, ready_s: float, wall_s: float) -> dict:
    """`ready_s`: seconds from the launch to time zero (every rank ready). `startup_s` adds
    the time from there to the first compute record: launch to first training step."""
    tr = read_trace(ctx.opts.out_dir / "trace.jsonl")
    out = _summary_of(tr)
    out["epoch_end_s"] = list(shard.epoch_end_s)
    startup_s = ready_s + first_step_s(tr.of_kind("compute"), ctx.time_offset_s)
    out.update({"status": status, "startup_s": startup_s, "ready_s": ready_s, "wall_s": wall_s, "source": "runtime",
                "final_eval": shard.final_eval, "version": shard.version, "samples_applied": shard.applied_total})
    if shard.data is not None:  # what evaluation measured on: split, samples used, split size
        out["eval"] = {"split": "test", "samples": shard.eval_size(), "split_samples": shard.data.test_size,
                       "mode": "eval"}
    if shard.writer is not None and not shard.writer._f.closed:
        shard.writer._f.flush()
    atomic_write_json(ctx.opts.out_dir / "summary.json", out)
    return out


def final_message(ctx, summary: dict) -> str:
    """The line a finished run prints: work done, start-up, and what the final evaluation
    measured on (the held-out split and how many of its samples), so no figure is read
    as more than it is."""
    text = (f"hybridps run: {len(ctx.plan.phases)} phase(s), {summary['updates']} updates in "
            f"{summary['makespan_s']:.1f} s after {summary['startup_s']:.1f} s of start-up")
    if summary.get("policy_actions"):  # as `simulate`'s human summary says them
        text += "; policy actions: " + ", ".join(f"{k} {n}" for k, n in sorted(summary["policy_actions"].items()))
    ev, split = summary.get("final_eval"), summary.get("eval")
    if ev and split:
        part = "all" if split["samples"] == split["split_samples"] else f"the first {split['samples']:,} of"
        text += (f"; {split['split']} accuracy {ev['accuracy']:.3f} (loss {ev['loss']:.3f}) on {part} "
                 f"{split['split_samples']:,} samples of the held-out '{split['split']}' split")
    return f"{text}; wrote {ctx.opts.out_dir}/trace.jsonl, summary.json, checkpoint.pt"
