"""Fit the convergence model (sim/convergence.py) to measured run traces: every trace's
update stream is replayed through the model and scipy.optimize.least_squares matches the
predicted accuracy and loss to the trace's eval records.

A parameter is fitted only when the traces can identify it; otherwise it keeps its
stated default and is listed in `defaults` (and in the notes calibrate prints):
- staleness_penalty: needs stale gradient updates (an asp/ssp gradient-exchange trace);
- drift_steps: needs an asp/ssp model-exchange trace;
- switch_progress_kept: needs a trace whose bsp phase is followed by an asp/ssp gradient phase;
- a compression kind's efficiency: needs a trace that used that kind;
- noise_scale: from the traces' `noise` records (their inverse-variance mean), else fitted
  when bsp gradient rounds of clearly different batch sizes are present, else default;
- lr_max: fitted when bsp phases ran at two or more learning rates, or when φ is measured
  and an asp/ssp gradient trace is present (its per-push batch differs from the bsp
  rounds'; staleness_penalty then keeps its default: at one LR the two are not
  separable); else tied to the noise scale so that the job's base_lr is the best LR at
  base_batch: lr_max = base_lr · (1 + φ / base_batch).
Lives in sim/ because it runs the model; traces/update_stream.py reads the traces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from hybridps.errors import UserError
from hybridps.spec import ConvergenceSpec, Job, Plan, plan_from_dict
from sim.convergence import (DEFAULT_COMPRESSION, DEFAULT_DRIFT_STEPS, DEFAULT_NOISE_SCALE,
                             DEFAULT_STALENESS_PENALTY, DEFAULT_SWITCH_PROGRESS_KEPT, Stream, accuracy_at,
                             default_spec, is_sync_switch, loss_at, progress_curve)
from traces.jsonl import Trace
from traces.update_stream import EvalPoints, eval_points, noise_scales, update_stream

LOSS_WEIGHT = 0.25  # a loss residual of 1 nat counts as 0.25 accuracy (loss spans ~10x the range)


@dataclass(frozen=True)
class _Run:
    label: str
    plan: Plan
    stream: Stream
    evals: EvalPoints


@dataclass(frozen=True)
class FitResult:
    spec: ConvergenceSpec
    notes: list[str]  # one line per parameter that could not be identified
    per_trace_rmse: dict[str, float]  # accuracy rmse per trace


def load_runs(traces: list[tuple[str, Trace]]) -> list[_Run]:
    runs = []
    if not any(tr.header.get("plan") for _, tr in traces):
        raise UserError(f"{traces[0][0]}: the header has no plan; fitting the convergence model needs run traces")
    for label, tr in traces:
        if not tr.header.get("plan"):
            continue  # a profile trace: only the cluster fit (-o) uses it
        plan = plan_from_dict(tr.header["plan"], f"{label} (header plan)")
        ms = update_stream(tr, label)
        ev = eval_points(tr)
        if ev.t_s.size == 0:
            raise UserError(f"{label}: no eval records; the convergence fit needs the run's evaluations")
        runs.append(_Run(label, plan, Stream(ms.t_s, ms.phase, ms.worker, ms.staleness, ms.samples, ms.names), ev))
    return runs


def _identifiable(runs: list[_Run]) -> dict[str, bool]:
    stale = model_async = switched = False
    kinds: set[str] = set()
    bsp_lrs: set[float] = set()
    bsp_batches: list[float] = []
    for r in runs:
        ph_sync = np.array([p.sync != "bsp" for p in r.plan.phases])
        ph_model = np.array([p.exchange == "model" for p in r.plan.phases])
        on = ph_sync[r.stream.phase]
        stale |= bool(np.any(on & ~ph_model[r.stream.phase] & (r.stream.staleness > 0)))
        model_async |= bool(np.any(on & ph_model[r.stream.phase]))
        switched |= any(is_sync_switch(r.plan, p) and bool(np.any(r.stream.phase == p))
                        for p in range(len(r.plan.phases)))
        for p in r.plan.phases:
            if p.compression.lossy:
                kinds.add("onebit_unscaled" if p.compression.kind == "onebit" and not p.compression.onebit_scaling
                          else p.compression.kind)
            if p.sync == "bsp" and p.exchange == "gradient":
                bsp_lrs.add(p.lr)
        rounds = (r.stream.worker < 0) & ~ph_model[r.stream.phase]
        bsp_batches += list(np.unique(r.stream.samples[rounds]))
    wide = len(bsp_batches) > 1 and max(bsp_batches) >= 1.5 * min(bsp_batches)
    out = {"staleness_penalty": stale, "drift_steps": model_async, "lr_max": len(bsp_lrs) >= 2,
           "noise_scale": wide, "switch_progress_kept": switched}
    out.update({f"compression.{k}": True for k in kinds})
    return out


def fit(traces: list[tuple[str, Trace]], job: Job) -> FitResult:
    """Fit the model to the traces' eval records; raises UserError when they cannot be used."""
    runs = load_runs(traces)
    ident = _identifiable(runs)
    notes: list[str] = []
    base = default_spec(job)
    zero = [(r.evals.accuracy[0], r.evals.loss[0]) for r in runs if r.evals.epoch[0] == 0]
    if not zero:
        raise UserError(f"{runs[0].label}: no eval record at epoch 0; the fit needs the initial accuracy and loss")
    base["accuracy_initial"] = float(np.mean([a for a, _ in zero]))
    base["loss_initial"] = float(np.mean([l for _, l in zero]))
    defaults: list[str] = []

    noise = [n for _, tr in traces for n in noise_scales(tr)]
    if noise:
        w = np.array([1.0 / max(se, 1e-9 * v) ** 2 for _, v, se in noise])
        base["noise_scale"] = float(np.sum(w * np.array([v for _, v, _ in noise])) / np.sum(w))
        ident["noise_scale"] = False  # measured, not fitted
        notes.append(f"noise_scale: measured, {base['noise_scale']:.4g} samples (inverse-variance mean of "
                     f"{len(noise)} noise record(s))")
        if ident["staleness_penalty"] and not ident["lr_max"]:
            # with phi measured, asp pushes (B = one worker's batch) against bsp rounds (B = all of
            # them) at one LR identify one more parameter: lr_max (x enters with the batch), or
            # kappa_s. lr_max is fitted: it also sets how small-batch (DBSL) steps count, which the
            # digits runs showed matters more (docs/convergence.md, "Measured").
            ident["lr_max"], ident["staleness_penalty"] = True, False
            notes.append(f"staleness_penalty: one LR, so not separable from lr_max (fitted from the asp/bsp batch "
                         f"difference); stated default {DEFAULT_STALENESS_PENALTY:g}")
    elif not ident["noise_scale"]:
        defaults.append("noise_scale")
        notes.append(f"noise_scale: no noise records and one batch size per bsp round; stated default "
                     f"{DEFAULT_NOISE_SCALE:g} samples")
    if not ident["lr_max"]:
        defaults.append("lr_max")
        notes.append("lr_max: the bsp phases ran at one LR; tied to the noise scale so that base_lr is optimal at "
                     "base_batch")
    if not ident["staleness_penalty"]:
        defaults.append("staleness_penalty")
    if not ident["staleness_penalty"] and not any(n.startswith("staleness_penalty") for n in notes):
        notes.append(f"staleness_penalty: no stale gradient updates in the traces (bsp only); stated default "
                     f"{DEFAULT_STALENESS_PENALTY:g}")
    if not ident["drift_steps"]:
        defaults.append("drift_steps")
        notes.append(f"drift_steps: no asp/ssp model-exchange trace; stated default {DEFAULT_DRIFT_STEPS:g} local steps")
    if not ident["switch_progress_kept"]:
        defaults.append("switch_progress_kept")
        notes.append(f"switch_progress_kept: no trace switches from bsp to asp/ssp gradients; stated default "
                     f"{DEFAULT_SWITCH_PROGRESS_KEPT:g} (a switch forgets the bsp phase's progress)")
    kinds = [k[len("compression."):] for k in ident if k.startswith("compression.")]
    for k in DEFAULT_COMPRESSION:
        if k not in kinds and k != "no_error_feedback":
            defaults.append(f"compression.{k}")
    if len(kinds) < len(DEFAULT_COMPRESSION) - 1:
        notes.append("compression: efficiencies of kinds no trace used stay at their stated defaults ("
                     + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_COMPRESSION.items() if k not in kinds) + ")")

    a0, l0 = base["accuracy_initial"], base["loss_initial"]
    top_acc = max(float(r.evals.accuracy.max()) for r in runs)
    low_loss = min(float(r.evals.loss.min()) for r in runs)
    # free parameters: (name, initial, lower, upper, log-scaled)
    free = [("accuracy_final", min(0.999, max(top_acc, a0 + 0.01)), a0 + 1e-3, 1.0, False),
            ("accuracy_progress", 30.0, 1e-3, 1e7, True),
            ("accuracy_shape", 1.0, 0.2, 5.0, False),
            ("loss_final", max(0.0, 0.5 * low_loss), 0.0, max(l0 - 1e-3, 1e-3), False),
            ("loss_progress", 30.0, 1e-3, 1e7, True),
            ("loss_shape", 1.0, 0.2, 5.0, False)]
    if ident["staleness_penalty"]:
        # start where stale steps still make progress: where every one diverges, progress sits
        # at its floor and the fit has no gradient to follow
        free.append(("staleness_penalty", 0.5, 1e-4, 1e3, True))
    if ident["drift_steps"]:
        free.append(("drift_steps", 100.0, 1.0, 1e5, True))
    if ident["switch_progress_kept"]:
        free.append(("switch_progress_kept", 0.5, 0.0, 1.0, False))
    if ident["noise_scale"]:
        free.append(("noise_scale", DEFAULT_NOISE_SCALE, 1e-2, 1e6, True))
    if ident["lr_max"]:
        free.append(("lr_max", 3.0 * job.train.base_lr, 1e-6, 1e3, True))
    for k in kinds:
        free.append((f"compression.{k}", 0.5, -2.0, 1.0, False))

    def unpack(theta: np.ndarray) -> dict:
        d = dict(base)
        comp = {}
        for (name, _, _, _, log), v in zip(free, theta):
            v = float(np.exp(v)) if log else float(v)
            if name.startswith("compression."):
                comp[name[len("compression."):]] = v
            else:
                d[name] = v
        if not ident["lr_max"]:
            d["lr_max"] = job.train.base_lr * (1.0 + d["noise_scale"] / job.train.base_batch)
        d["compression"] = comp
        return d

    def build(d: dict) -> ConvergenceSpec:
        return ConvergenceSpec.model_construct(**{k: v for k, v in d.items() if k != "fit"})

    def residuals(theta: np.ndarray) -> np.ndarray:
        spec = build(unpack(theta))
        out = []
        for r in runs:
            prog = progress_curve(r.stream, r.plan, spec)
            at = np.concatenate([[0.0], prog])[np.searchsorted(r.stream.t_s, r.evals.t_s, side="right")]
            out.append(accuracy_at(at, spec) - r.evals.accuracy)
            out.append(LOSS_WEIGHT * (loss_at(at, spec) - r.evals.loss))
        return np.concatenate(out)

    lo = np.array([np.log(f[2]) if f[4] else f[2] for f in free])
    hi = np.array([np.log(f[3]) if f[4] else f[3] for f in free])
    best = None
    for scale in (1.0, 10.0, 0.1):  # a few deterministic starts: progress scales span decades
        x0 = np.array([np.log(f[1] * (scale if "progress" in f[0] else 1.0)) if f[4] else f[1] for f in free])
        x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
        sol = least_squares(residuals, x0, bounds=(lo, hi), x_scale="jac", max_nfev=400)
        if best is None or sol.cost < best.cost:
            best = sol
    d = unpack(best.x)
    spec0 = build(d)
    n_points = sum(r.evals.t_s.size for r in runs)
    acc_err, loss_err, per = [], [], {}
    for r in runs:
        prog = progress_curve(r.stream, r.plan, spec0)
        at = np.concatenate([[0.0], prog])[np.searchsorted(r.stream.t_s, r.evals.t_s, side="right")]
        ea = accuracy_at(at, spec0) - r.evals.accuracy
        acc_err.append(ea)
        loss_err.append(loss_at(at, spec0) - r.evals.loss)
        per[r.label] = float(np.sqrt(np.mean(ea ** 2)))
    d["defaults"] = defaults
    d["fit"] = {"rmse_accuracy": float(np.sqrt(np.mean(np.concatenate(acc_err) ** 2))),
                "rmse_loss": float(np.sqrt(np.mean(np.concatenate(loss_err) ** 2))),
                "eval_points": int(n_points), "traces": [r.label for r in runs]}
    return FitResult(ConvergenceSpec.model_validate(d), notes, per)


def format_fit(res: FitResult) -> str:
    """The fit report calibrate prints."""
    s = res.spec
    lines = [f"convergence fit: {s.fit.eval_points} eval points from {len(s.fit.traces)} trace(s), rmse accuracy "
             f"{s.fit.rmse_accuracy:.4f}, loss {s.fit.rmse_loss:.4f}"]
    for label, e in res.per_trace_rmse.items():
        lines.append(f"  {label}: rmse accuracy {e:.4f}")
    lines.append(f"  accuracy {s.accuracy_initial:.3f} -> {s.accuracy_final:.3f} (tau {s.accuracy_progress:.4g} ideal "
                 f"steps, shape {s.accuracy_shape:.3g}); loss {s.loss_initial:.3f} -> {s.loss_final:.3f}")
    lines.append(f"  lr_max {s.lr_max:.4g}, noise_scale {s.noise_scale:.4g} samples, staleness_penalty "
                 f"{s.staleness_penalty:.4g}, drift_steps {s.drift_steps:.4g}, switch_progress_kept "
                 f"{s.switch_progress_kept:.3g}"
                 + "".join(f", {k} {v:.3g}" for k, v in s.compression.items()))
    lines += [n if n.startswith("noise_scale: measured") else f"not identifiable: {n}" for n in res.notes]
    return "\n".join(lines)
