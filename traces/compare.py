"""Predicted against measured: the summary of a run trace in the shape of `simulate
--json`, and the relative errors between a simulator summary and it.

The simulator is not imported here (traces sits below sim); `hybridps validate` runs it
and hands both summaries in. Never imports torch.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from hybridps.semantics import Ledger, ends_on_mini_epochs
from traces.calibrate import _effective_records as effective_records  # the same gap rule as calibrate
from traces.jsonl import Trace
from traces.summary import summarize, wait_s

WORKER_FIELDS = ("iterations", "samples", "bytes_pushed", "bytes_pulled", "compute_s", "comm_s")


def _applied_pushes(trace: Trace) -> list[tuple[float, int]]:
    """(time applied, samples) per push: samples from the push record or else counted from
    the worker's compute records since its previous push; the time from the matching
    update record when the counts agree, else the push's end."""
    computes: dict[str, list[dict]] = defaultdict(list)
    for r in trace.of_kind("compute"):
        computes[r["worker"]].append(r)
    pushes: dict[str, list[dict]] = defaultdict(list)
    for r in trace.of_kind("push"):
        pushes[r["worker"]].append(r)
    updates: dict[str, list[float]] = defaultdict(list)
    for r in trace.of_kind("update"):
        if r.get("shard", 0) == 0:
            updates[r["worker"]].append(r["t_s"])
    out: list[tuple[float, int]] = []
    for worker, recs in pushes.items():
        recs.sort(key=lambda r: r["start_s"])
        comp = sorted(computes.get(worker, []), key=lambda r: r["start_s"])
        ups = sorted(updates.get(worker, []))
        use_updates = len(ups) == len(recs)
        ci = 0
        for k, p in enumerate(recs):
            n = 0
            while ci < len(comp) and comp[ci]["start_s"] < p["start_s"]:
                n += comp[ci].get("samples", comp[ci]["batch"])
                ci += 1
            samples = p.get("samples", n)
            out.append((ups[k] if use_updates else p["end_s"], samples))  # run time, not shifted
    out.sort()
    return out


def measured_summary(trace: Trace) -> dict[str, Any]:
    """The run's measurements in the shape of the simulator's summary: traces/summary.py's
    figures (makespan, phases, per-worker counters and bytes, updates, staleness) plus the
    epoch ends and the time outside the phases.

    Times are on the trace's clock, as in the simulator and summary.json: the makespan
    counts the initial evaluation before the first phase (reported as
    `before_first_phase_s`; the simulator models it as `ps.eval_s`) and the time between
    phases (`between_phases_s`).

    compute_s and comm_s are the records' times plus the gaps between them, given out as
    calibrate does (between two computes to the first, before a push to the push, after a
    pull to the pull: Python overhead the calibrated simulator counts as compute time or
    message latency), so that both sides count the same time; wait_s is the rest, by
    traces/summary.py's rule. On a trace without such gaps (a simulated one without ssp
    waits or exchange overhead) they are the records' times, as in summary.json."""
    out = summarize(trace)
    span, workers = out["makespan_s"], out["workers"]
    for w in workers.values():
        w["compute_s"] = w["comm_s"] = 0.0
    for name, recs in effective_records(trace).items():
        for r in recs:
            workers[name]["compute_s" if r["kind"] == "compute" else "comm_s"] += r["eff_s"]
    for w in workers.values():
        w["wait_s"] = wait_s(span, w["compute_s"], w["comm_s"])
    phases = out["phases"]
    return dict(out, workers=dict(sorted(workers.items())), epoch_end_s=_epoch_ends(trace),
                before_first_phase_s=phases[0]["start_s"] if phases else 0.0,
                between_phases_s=sum(max(0.0, b["start_s"] - a["end_s"]) for a, b in zip(phases, phases[1:])))


def _epoch_ends(trace: Trace) -> list[float]:
    """When the applied count first reached each multiple of the dataset (header's job),
    with each phase's end closing a mini-epoch phase's epochs as the PS's ledger does
    (`Ledger.end_phase`: shares summing below the dataset)."""
    plan, job = trace.header.get("plan") or {}, trace.header.get("job") or {}
    samples_per_epoch = (job.get("data") or {}).get("samples")
    if not samples_per_epoch:
        return []
    phases = plan.get("phases", [])
    ledger = Ledger(samples_per_epoch, [p.get("epochs", 0) for p in phases])
    ends = {int(r["index"]): float(r["end_s"]) for r in trace.of_kind("phase")}
    pushes = _applied_pushes(trace)
    i = 0
    for p, ph in enumerate(phases):
        mini = ends_on_mini_epochs(SimpleNamespace(exchange=ph.get("exchange"), local_steps=ph.get("local_steps")))
        ledger.start_phase(p, range(len(ph.get("workers", []))), mini_epochs=mini)
        end_s = ends.get(p, math.inf)
        while i < len(pushes) and (pushes[i][0] <= end_s or p == len(phases) - 1):
            ledger.apply(pushes[i][1], pushes[i][0])
            i += 1
        if p in ends:
            ledger.end_phase(end_s)
    for t, n in pushes[i:]:  # a trace without phase records or plan phases
        ledger.apply(n, t)
    return ledger.epoch_end_s


def mean_summary(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The field-by-field mean of several simulator summaries (one per straggler seed),
    plus `makespan_s_spread` = [min, max] over them."""
    first = summaries[0]
    if len(summaries) == 1:
        return dict(first, makespan_s_spread=[first["makespan_s"], first["makespan_s"]])

    def avg(values: list[float]) -> float:
        return float(sum(values) / len(values))

    n_ph = min(len(s["phases"]) for s in summaries)
    n_ep = min(len(s["epoch_end_s"]) for s in summaries)
    out = dict(first)
    out["makespan_s"] = avg([s["makespan_s"] for s in summaries])
    out["makespan_s_spread"] = [min(s["makespan_s"] for s in summaries), max(s["makespan_s"] for s in summaries)]
    out["phases"] = [{k: avg([s["phases"][i][k] for s in summaries]) for k in ("start_s", "end_s")}
                     for i in range(n_ph)]
    out["epoch_end_s"] = [avg([s["epoch_end_s"][e] for s in summaries]) for e in range(n_ep)]
    out["workers"] = {name: {f: avg([s["workers"][name][f] for s in summaries]) for f in w}
                      for name, w in first["workers"].items()}
    return out


def rel_error(predicted: float, measured: float) -> float | None:
    """(predicted − measured) / measured; None when measured is 0 and predicted is not."""
    if measured == 0:
        return 0.0 if predicted == 0 else None
    return (predicted - measured) / measured


def _row(name: str, predicted: float, measured: float) -> dict[str, Any]:
    return {"name": name, "predicted": predicted, "measured": measured, "rel_error": rel_error(predicted, measured)}


def compare(predicted: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """Rows of predicted vs measured with relative errors, grouped: makespan, phases
    (durations), epochs (end times), workers (counters and bytes)."""
    out: dict[str, Any] = {"makespan": _row("makespan_s", predicted["makespan_s"], measured["makespan_s"])}
    out["phases"] = []
    for i, (p, m) in enumerate(zip(predicted["phases"], measured["phases"])):
        row = _row(f"phase {i}", p["end_s"] - p["start_s"], m["end_s"] - m["start_s"])
        row["predicted_end_s"], row["measured_end_s"] = p["end_s"], m["end_s"]
        out["phases"].append(row)
    out["epochs"] = [_row(f"epoch {e}", p, m)
                     for e, (p, m) in enumerate(zip(predicted["epoch_end_s"], measured["epoch_end_s"]))]
    out["workers"] = {}
    for name, m in measured["workers"].items():
        p = predicted["workers"].get(name)
        if p is not None:
            out["workers"][name] = [_row(f, p[f], m[f]) for f in WORKER_FIELDS]
    counts = {"phases": (len(predicted["phases"]), len(measured["phases"])),
              "epochs": (len(predicted["epoch_end_s"]), len(measured["epoch_end_s"]))}
    out["mismatched_counts"] = {k: {"predicted": a, "measured": b} for k, (a, b) in counts.items() if a != b}
    errs = [abs(r["rel_error"]) for r in [out["makespan"], *out["phases"]] if r["rel_error"] is not None]
    out["max_abs_rel_error"] = max(errs, default=0.0)
    for key in ("before_first_phase_s", "between_phases_s"):
        if key in measured:
            out[key] = measured[key]
    if "between_phases_s" in measured and len(predicted["phases"]) > 1:
        ph = predicted["phases"]
        out["between_phases"] = _row("between phases", sum(b["start_s"] - a["end_s"] for a, b in zip(ph, ph[1:])),
                                     measured["between_phases_s"])
    return out


def policy_decisions(records: list[dict]) -> list[dict[str, Any]]:
    """A trace's policy decisions in order, each with the number of updates applied before
    it (distinct (phase, version) pairs of the update records before it: a bsp round is
    one), and the exchanges (pulls) that the worker whose push prompted it had completed
    by then: the same counts for a simulated trace and a measured one."""
    pull_ends: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r["kind"] == "pull" and r.get("shard", 0) == 0:
            pull_ends[r["worker"]].append(r["end_s"])
    for ends in pull_ends.values():
        ends.sort()
    out, applied = [], set()
    for r in records:
        if r["kind"] == "update" and r.get("shard", 0) == 0:
            applied.add((r["phase"], r["version"]))
        elif r["kind"] == "policy":
            worker = r["observed"]["worker"]
            out.append({"phase": r["phase"], "t_s": r["t_s"], "action": r["action"], "update": len(applied),
                        "worker": worker, "exchange": bisect.bisect_right(pull_ends[worker], r["t_s"])})
    return out


def compare_decisions(predicted: list[dict[str, Any]], measured: list[dict[str, Any]]) -> dict[str, Any]:
    """Predicted against measured policy decisions: counts by action kind, and the i-th
    decision of each paired, with where each came (`update`, see policy_decisions) and
    `shift` = measured − predicted (in updates); `same_action` says whether they agree."""
    kinds = sorted({d["action"]["kind"] for d in predicted + measured})
    actions = {k: {"predicted": sum(d["action"]["kind"] == k for d in predicted),
                   "measured": sum(d["action"]["kind"] == k for d in measured)} for k in kinds}
    pairs = [{"predicted_action": p["action"], "measured_action": m["action"], "same_action": p["action"] == m["action"],
              "phase": m["phase"], "predicted_update": p["update"], "measured_update": m["update"],
              "shift": m["update"] - p["update"], "predicted_worker": p["worker"], "measured_worker": m["worker"],
              "predicted_exchange": p["exchange"], "measured_exchange": m["exchange"],
              "exchange_shift": m["exchange"] - p["exchange"]} for p, m in zip(predicted, measured)]
    return {"actions": actions, "decisions": pairs, "predicted": len(predicted), "measured": len(measured),
            "max_abs_shift": max((abs(d["shift"]) for d in pairs), default=0),
            "max_abs_exchange_shift": max((abs(d["exchange_shift"]) for d in pairs), default=0)}


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.1%}"


def _num(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v:.3f} s"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.4g}"
    return f"{int(v):,}"


def format_comparison(cmp: dict[str, Any]) -> str:
    """The table `hybridps validate` prints."""
    lines = [f"{'':<24} {'predicted':>16} {'measured':>16} {'error':>8}"]

    def add(label: str, row: dict[str, Any], unit: str) -> None:
        lines.append(f"{label:<24} {_num(row['predicted'], unit):>16} {_num(row['measured'], unit):>16} "
                     f"{_pct(row['rel_error']):>8}")

    add("makespan", cmp["makespan"], "s")
    for row in cmp["phases"]:
        add(f"{row['name']} (duration)", row, "s")
    if "between_phases" in cmp:
        add("between phases (sum)", cmp["between_phases"], "s")
    for row in cmp["epochs"]:
        add(f"{row['name']} (end)", row, "s")
    for name, rows in cmp["workers"].items():
        for row in rows:
            add(f"{name} {row['name']}", row, "s" if row["name"].endswith("_s") else "")
    if "between_phases_s" in cmp:
        lines.append(f"measured outside the phases (counted in the makespan): {cmp['before_first_phase_s']:.3f} s "
                     f"before the first, {cmp['between_phases_s']:.3f} s between phases")
    for k, v in cmp["mismatched_counts"].items():
        lines.append(f"warning: {k}: predicted {v['predicted']}, measured {v['measured']}")
    if "policy" in cmp:
        lines += _format_decisions(cmp["policy"])
    return "\n".join(lines)


def _format_decisions(pol: dict[str, Any]) -> list[str]:
    def action(a: dict[str, Any]) -> str:
        return " ".join([a["kind"], *(f"{k}={v}" for k, v in a.items() if k != "kind")])

    lines = [f"policy decisions: predicted {pol['predicted']}, measured {pol['measured']} ("
             + ", ".join(f"{k} {v['predicted']}/{v['measured']}" for k, v in pol["actions"].items()) + ")"]
    for i, d in enumerate(pol["decisions"]):
        what = action(d["measured_action"]) if d["same_action"] else \
            f"{action(d['predicted_action'])} (measured: {action(d['measured_action'])})"
        lines.append(f"  decision {i}: {what}, phase {d['phase']}: after update {d['predicted_update']} predicted, "
                     f"{d['measured_update']} measured ({d['shift']:+d}); at exchange {d['predicted_exchange']} of "
                     f"{d['predicted_worker']} predicted, {d['measured_exchange']} of {d['measured_worker']} measured")
    return lines


def compare_quality(epoch: list[float], t_s: list[float], measured_accuracy: list[float], measured_loss: list[float],
                    predicted_accuracy: list[float], predicted_loss: list[float],
                    predicted_time_to_target_s: float | None = None, measured_time_to_target_s: float | None = None,
                    target_accuracy: float | None = None) -> dict[str, Any]:
    """Predicted against measured validation accuracy/loss at every eval record (t_s on the
    simulator's clock) and at the end: the `validate --json` "quality" dict."""
    rows = [{"epoch": e, "t_s": t, "predicted_accuracy": pa, "measured_accuracy": ma,
             "predicted_loss": pl, "measured_loss": ml}
            for e, t, ma, ml, pa, pl in zip(epoch, t_s, measured_accuracy, measured_loss, predicted_accuracy,
                                            predicted_loss)]
    err = [r["predicted_accuracy"] - r["measured_accuracy"] for r in rows]
    out: dict[str, Any] = {
        "predicted_final_accuracy": predicted_accuracy[-1] if rows else None,
        "measured_final_accuracy": measured_accuracy[-1] if rows else None,
        "predicted_final_loss": predicted_loss[-1] if rows else None,
        "measured_final_loss": measured_loss[-1] if rows else None,
        "rmse_accuracy": math.sqrt(sum(e * e for e in err) / len(err)) if err else None,
        "evals": rows,
    }
    if target_accuracy is not None:
        out["target_accuracy"] = target_accuracy
        out["predicted_time_to_target_s"] = predicted_time_to_target_s
        out["measured_time_to_target_s"] = measured_time_to_target_s
    return out


def format_quality(q: dict[str, Any]) -> str:
    """The quality comparison as text: one line per eval record, then the end."""
    lines = [f"{'epoch':>6} {'t_s':>9} {'acc pred':>9} {'acc meas':>9} {'loss pred':>10} {'loss meas':>10}"]
    for r in q["evals"]:
        lines.append(f"{r['epoch']:>6g} {r['t_s']:>9.2f} {r['predicted_accuracy']:>9.3f} {r['measured_accuracy']:>9.3f} "
                     f"{r['predicted_loss']:>10.3f} {r['measured_loss']:>10.3f}")
    lines.append(f"final accuracy: predicted {q['predicted_final_accuracy']:.3f}, measured "
                 f"{q['measured_final_accuracy']:.3f} ({q['predicted_final_accuracy'] - q['measured_final_accuracy']:+.3f}); "
                 f"rmse over evals {q['rmse_accuracy']:.3f}")
    if "target_accuracy" in q:
        def f(v: float | None) -> str:
            return "never" if v is None else f"{v:.2f} s"

        lines.append(f"time to accuracy {q['target_accuracy']:g}: predicted {f(q['predicted_time_to_target_s'])}, "
                     f"measured {f(q['measured_time_to_target_s'])}")
    return "\n".join(lines)
