"""summary.json of a run, computed from its trace (so a resumed run's summary covers
both parts) in the shape of `simulate --json`, plus the run's status and start-up time."""

from __future__ import annotations

import numpy as np

from hybridps.fileio import atomic_write_json
from traces.jsonl import read_trace


def summarize_trace(path) -> dict:
    tr = read_trace(path)
    workers: dict[str, dict] = {}

    def w(name: str) -> dict:
        return workers.setdefault(name, {"iterations": 0, "samples": 0, "compute_s": 0.0, "comm_s": 0.0,
                                         "wait_s": 0.0, "bytes_pushed": 0, "bytes_pulled": 0})

    end = 0.0
    for r in tr.records:
        k = r["kind"]
        if k == "compute":
            x = w(r["worker"])
            x["iterations"] += 1
            x["samples"] += r.get("samples", r["batch"])
            x["compute_s"] += r["end_s"] - r["start_s"]
        elif k in ("push", "pull"):
            x = w(r["worker"])
            x["comm_s"] += r["end_s"] - r["start_s"]
            x["bytes_pushed" if k == "push" else "bytes_pulled"] += r["bytes"]
        end = max(end, r.get("end_s", r.get("t_s", 0.0)))
    phases = [{"start_s": r["start_s"], "end_s": r["end_s"]} for r in tr.of_kind("phase")]
    makespan = phases[-1]["end_s"] if phases else end
    for x in workers.values():
        x["wait_s"] = max(0.0, makespan - x["compute_s"] - x["comm_s"])
    stale = np.array([r["staleness"] for r in tr.of_kind("update")] or [0])
    return {"makespan_s": makespan, "phases": phases, "workers": workers, "updates": len(tr.of_kind("update")),
            "staleness": {"mean": float(stale.mean()), "p50": float(np.percentile(stale, 50)),
                          "p99": float(np.percentile(stale, 99)), "max": int(stale.max())},
            "bytes_total": sum(x["bytes_pushed"] + x["bytes_pulled"] for x in workers.values()),
            "events": len(tr.records), "evals": tr.of_kind("eval")}


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
