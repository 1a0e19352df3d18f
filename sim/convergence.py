"""The convergence model: an update stream plus the plan -> training progress and the
predicted validation accuracy and loss over time (docs/convergence.md).

One function serves simulate, calibrate and validate: the simulator's update log
(sim.metrics.UpdateLog) and a measured trace's update records (traces.update_stream)
are the same stream, so the same `progress()` is replayed over either.

Progress is counted in *ideal steps* (McCandlish et al. 2018, "An Empirical Model of
Large-Batch Training", eq. 2.6-2.7): one step of LR ε on a batch of B samples reduces
the loss by ΔL(ε)/ΔL_max = 2x − x²(1 + φ/B), x = ε/ε_max, φ the gradient noise scale.
Staleness s (asp/ssp) inflates the curvature term by (1 + κ_s·s); model exchange keeps
α/(1 + α(1+s)) of a worker's H local steps; lossy compression multiplies by a per-kind
efficiency. Accuracy and loss are saturating functions of cumulative progress P.
Vectorised numpy over the stream; never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybridps.policy import may
from hybridps.spec import CONVERGENCE_FORMAT, Compression, ConvergenceSpec, Job, Plan

# Stated conservative defaults (used where the traces cannot identify a parameter).
DEFAULT_NOISE_SCALE = 16.0  # samples; McCandlish et al. (2018, fig. 4) put MNIST-scale tasks at tens of samples
# Each version of staleness adds the curvature term once more. Fitted on digits (three asp runs
# of one seed with two bsp runs at LR 0.02 and 0.05: kappa_s = 1.015); the earlier 0.5 was
# not conservative: it predicted 20 asp epochs at 0.954 where the runs measured 0.81-0.95.
DEFAULT_STALENESS_PENALTY = 1.0
DEFAULT_DRIFT_STEPS = 1000.0  # local steps before model-exchange drift halves a round's progress
# A bsp phase followed by stale gradients keeps none of its progress unless a trace with such a
# switch shows otherwise: on digits every bsp->asp switch fell back to near-chance accuracy
# (docs/convergence.md, "Transitions"), and a planner must not count on the bsp phase surviving.
DEFAULT_SWITCH_PROGRESS_KEPT = 0.0
DEFAULT_COMPRESSION = {  # progress efficiency per lossy kind, error feedback on (docs/convergence.md)
    "topk": 0.7, "randomk": 0.3, "dithering": 0.7, "onebit": 0.5,
    "onebit_unscaled": -1.0,  # sign only, no magnitude: each step has the size of the whole model -> diverges
    "no_error_feedback": 0.5,  # multiplies the kind's efficiency when error_feedback = false
}
RISKY_EFFICIENCY = 0.9  # a compression kind at or below this (fitted or default) is flagged as a risk


@dataclass(frozen=True)
class Stream:
    """An update stream: one entry per applied update, in time order. worker = global
    index into `names`, -1 for a bsp round (samples = the round's total)."""
    t_s: np.ndarray
    phase: np.ndarray
    worker: np.ndarray
    staleness: np.ndarray
    samples: np.ndarray
    names: tuple[str, ...]
    # an online policy's switches of the sync mode inside a phase: (t_s, phase, new sync)
    sync_changes: tuple[tuple[float, int, str], ...] = ()

    @classmethod
    def from_update_log(cls, log, names: list[str]) -> "Stream":
        return cls(np.asarray(log.t_s, float), np.asarray(log.phase, np.int64), np.asarray(log.worker, np.int64),
                   np.asarray(log.staleness, float), np.asarray(log.samples, float), tuple(names),
                   tuple(log.sync_changes))


def compression_efficiency(c: Compression, spec: ConvergenceSpec | None) -> float:
    """Progress kept by a lossy push: the fitted value when calibrate saw that kind, else
    the stated default; onebit without scaling is its own (diverging) kind."""
    if not c.lossy:
        return 1.0
    table = {**DEFAULT_COMPRESSION, **(spec.compression if spec is not None else {})}
    key = "onebit_unscaled" if c.kind == "onebit" and not c.onebit_scaling else c.kind
    eff = table[key]
    if not c.uses_error_feedback:
        eff = eff * table["no_error_feedback"] if eff > 0 else eff
    return float(eff)


def step_progress(x: np.ndarray | float, batch: np.ndarray | float, noise_scale: float,
                  staleness: np.ndarray | float = 0.0, staleness_penalty: float = 0.0) -> np.ndarray:
    """Ideal steps made by one SGD step: 2x − x²(1 + φ/B)(1 + κ_s·s); negative = diverging."""
    x = np.asarray(x, float)
    b = np.maximum(np.asarray(batch, float), 1.0)
    return 2.0 * x - x * x * (1.0 + noise_scale / b) * (1.0 + staleness_penalty * np.asarray(staleness, float))


def _phase_tables(plan: Plan, names: tuple[str, ...], spec: ConvergenceSpec):
    """Per phase, per global worker: batch, local steps H, merge weight α, and the phase's
    x = lr/lr_max, compression efficiency, exchange kind."""
    n_ph, n_w = len(plan.phases), len(names)
    index = {n: i for i, n in enumerate(names)}
    batch = np.ones((n_ph, n_w))
    steps = np.ones((n_ph, n_w))
    share = np.zeros((n_ph, n_w))
    x = np.zeros(n_ph)
    eff = np.ones(n_ph)
    model_ex = np.zeros(n_ph, bool)
    bsp = np.zeros(n_ph, bool)
    for p, ph in enumerate(plan.phases):
        x[p] = ph.lr / spec.lr_max
        eff[p] = compression_efficiency(ph.compression, spec)
        model_ex[p] = ph.exchange == "model"
        bsp[p] = ph.sync == "bsp"
        for wa in ph.workers:
            i = index[wa.name]
            batch[p, i] = wa.batch
            steps[p, i] = ph.exchange_every(wa)
            share[p, i] = wa.samples
    return batch, steps, share, x, eff, model_ex, bsp


def update_progress(stream: Stream, plan: Plan, spec: ConvergenceSpec) -> np.ndarray:
    """Progress (ideal steps) of every update in the stream, vectorised."""
    batch, steps, share, x, eff, model_ex, bsp = _phase_tables(plan, stream.names, spec)
    ph = stream.phase
    w = np.maximum(stream.worker, 0)
    xs = x[ph]
    s = stream.staleness
    phi, kappa = spec.noise_scale, spec.staleness_penalty
    drift = 1.0 / (1.0 + (steps - 1.0) / spec.drift_steps)  # (phase, worker)
    # gradient exchange: one optimizer step on the averaged gradient of `samples` samples
    grad = step_progress(xs, stream.samples, phi, s, kappa)
    alpha = share / np.maximum(share.max(axis=1, keepdims=True), 1.0)
    local = steps * drift * step_progress(x[:, None], batch, phi)  # (phase, worker) displacement per round
    # model exchange, bsp: the samples-weighted mean of the workers' displacements
    weights = share / np.maximum(share.sum(axis=1, keepdims=True), 1.0)
    model_bsp = (weights * local).sum(axis=1)[ph]
    out = np.where(model_ex[ph], model_bsp, grad) * eff[ph]
    async_model = model_ex[ph] & (stream.worker >= 0)
    for p in np.unique(ph[async_model]):
        sel = np.flatnonzero(async_model & (ph == p))
        out[sel] = merge_progress(w[sel], local[p], alpha[p]) * eff[p]
    return out


def merge_progress(workers: np.ndarray, displacement: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Progress of each asp/ssp model merge w ← (w + α·w_i)/(1+α), replayed on the scalar
    progress: the worker pulled the server's P_pull at its previous merge and comes back
    with P_pull + d_i, so P ← (P + α(P_pull + d_i))/(1+α). The map is translation-invariant,
    so a phase is replayed from 0. With n equal workers, steady state gives each merge
    α·d/(1 + α(1+s)), s = n−1 merges between a worker's pull and push (docs/convergence.md).
    A merge never lowers P: averaging weights that lie on one trajectory lands no worse than
    the server's model (the weight-averaging observation of Izmailov et al. 2018), which the
    scalar interpolation would otherwise count as lost progress (measured: DBSL on digits).
    One Python step per merge: model exchange merges once per mini-epoch or H local steps."""
    pulled = np.zeros(displacement.shape[0])
    server = 0.0
    deltas = np.empty(workers.shape[0])
    for k, i in enumerate(workers.tolist()):
        a = alpha[i]
        new = (server + a * (pulled[i] + displacement[i])) / (1.0 + a)
        deltas[k] = max(new - server, 0.0)  # merging a worker that fell behind does not undo progress
        server += deltas[k]
        pulled[i] = server
    return deltas


def cumulative_progress(delta: np.ndarray, start: float = 0.0) -> np.ndarray:
    """P after each update, starting from `start`, never below 0 (a diverging stretch falls
    back to the initial model, no further): the reflected cumulative sum S − min(0, running
    min of S)."""
    if delta.size == 0:
        return delta.astype(float)
    total = start + np.cumsum(delta)
    return total - np.minimum(0.0, np.minimum.accumulate(total))


def drops_progress(before: str, after: str, exchange: str) -> bool:
    """A switch from bsp to stale gradients (asp/ssp, gradient exchange): the Sync-Switch
    transition, where the measured accuracy falls back. The same rule between a plan's
    phases and inside a phase (an online policy's switch): it keeps `switch_progress_kept`."""
    return before == "bsp" and after in ("asp", "ssp") and exchange == "gradient"


def is_sync_switch(plan: Plan, p: int) -> bool:
    """Phase p runs stale gradients (asp/ssp, gradient exchange) right after a bsp phase."""
    if p == 0:
        return False
    prev, ph = plan.phases[p - 1], plan.phases[p]
    return drops_progress(prev.sync, ph.sync, ph.exchange)


def kept_at_phase_start(plan: Plan, p: int, spec: ConvergenceSpec) -> float:
    """The fraction of the progress made so far that survives the start of phase p."""
    return spec.switch_progress_kept if is_sync_switch(plan, p) else 1.0


def policy_switch_updates(stream: Stream, plan: Plan) -> np.ndarray:
    """Where a policy's switches into stale gradients inside a phase take effect: for each
    (a set_sync from bsp, drops_progress), the index of the first update of its phase
    applied on its own (worker >= 0) at or after it; sorted, each index once (a switch
    and back with no such update between made no stale step, and is not charged).
    Exclusions (sync-switch-elastic) are not switches: docs/convergence.md says why."""
    own = np.flatnonzero(stream.worker >= 0)
    out: set[int] = set()
    for t_s, p, sync in stream.sync_changes:
        if not drops_progress("bsp", sync, plan.phases[p].exchange):
            continue
        j = np.searchsorted(own, np.searchsorted(stream.t_s, t_s, side="left"))
        if j < own.size and stream.phase[own[j]] == p:
            out.add(int(own[j]))
    return np.array(sorted(out), dtype=np.int64)


def progress_curve(stream: Stream, plan: Plan, spec: ConvergenceSpec) -> np.ndarray:
    """Cumulative progress after every update of the stream (in time order, so phases in
    order), with the progress each phase start keeps (kept_at_phase_start) and each
    policy's switch inside a phase keeps (policy_switch_updates)."""
    delta = update_progress(stream, plan, spec)
    starts = np.searchsorted(stream.phase, np.arange(len(plan.phases) + 1), side="left")
    cuts = policy_switch_updates(stream, plan)
    out = np.empty(delta.size)
    carried = 0.0
    for p in range(len(plan.phases)):
        lo, hi = int(starts[p]), int(starts[p + 1])
        carried *= kept_at_phase_start(plan, p, spec)
        for a, b, charged in _segments(lo, hi, cuts):
            carried *= spec.switch_progress_kept if charged else 1.0
            if b > a:
                out[a:b] = cumulative_progress(delta[a:b], carried)
                carried = float(out[b - 1])
    return out


def _segments(lo: int, hi: int, cuts: np.ndarray) -> list[tuple[int, int, bool]]:
    """The updates [lo, hi) of a phase split at the policy's switches: (start, end, whether
    a switch precedes the segment)."""
    inner = set(cuts[(cuts >= lo) & (cuts < hi)].tolist())
    starts = sorted(inner | {lo})
    return [(a, b, a in inner) for a, b in zip(starts, starts[1:] + [hi])]


def phase_gains(stream: Stream, plan: Plan, spec: ConvergenceSpec,
                delta: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per phase, linear in the progress P entering it: P_end = kept·P + gain, kept the
    share its policy's switches keep (1: none), gain its updates' progress with the later
    switches' drops applied (no floor at 0). What the planner's proxy scales up to a
    phase's full length (solver.search.proxy_quality)."""
    delta = update_progress(stream, plan, spec) if delta is None else delta
    n = len(plan.phases)
    gain = np.bincount(stream.phase, weights=delta, minlength=n)
    kept = np.ones(n)
    cuts = policy_switch_updates(stream, plan)
    starts = np.searchsorted(stream.phase, np.arange(n + 1), side="left")
    rho = spec.switch_progress_kept
    for p in np.unique(stream.phase[cuts]).tolist():
        g = 0.0
        for a, b, charged in _segments(int(starts[p]), int(starts[p + 1]), cuts):
            if charged:
                g *= rho
                kept[p] *= rho
            g += float(delta[a:b].sum())
        gain[p] = g
    return gain, kept


def accuracy_at(progress: np.ndarray | float, spec: ConvergenceSpec) -> np.ndarray:
    """A(P) = A∞ − (A∞ − A0)·exp(−(P/τ_A)^β_A)."""
    p = np.maximum(np.asarray(progress, float), 0.0)
    a0, af = spec.accuracy_initial, spec.accuracy_final
    return af - (af - a0) * np.exp(-np.power(p / spec.accuracy_progress, spec.accuracy_shape))


def loss_at(progress: np.ndarray | float, spec: ConvergenceSpec) -> np.ndarray:
    """L(P) = L∞ + (L0 − L∞)·exp(−(P/τ_L)^β_L)."""
    p = np.maximum(np.asarray(progress, float), 0.0)
    l0, lf = spec.loss_initial, spec.loss_final
    return lf + (l0 - lf) * np.exp(-np.power(p / spec.loss_progress, spec.loss_shape))


def progress_for_accuracy(target: float, spec: ConvergenceSpec) -> float:
    """The progress where A(P) first reaches `target` (inf if never: target >= A∞)."""
    a0, af = spec.accuracy_initial, spec.accuracy_final
    if target <= a0:
        return 0.0
    if target >= af:
        return float("inf")
    return float(spec.accuracy_progress * (-np.log((af - target) / (af - a0))) ** (1.0 / spec.accuracy_shape))


def progress_for_loss(target: float, spec: ConvergenceSpec) -> float:
    """The progress where L(P) first falls to `target` (inf if never: target <= L∞)."""
    l0, lf = spec.loss_initial, spec.loss_final
    if target >= l0:
        return 0.0
    if target <= lf:
        return float("inf")
    return float(spec.loss_progress * (-np.log((target - lf) / (l0 - lf))) ** (1.0 / spec.loss_shape))


@dataclass(frozen=True)
class Prediction:
    """Progress over the stream and what it predicts at the end."""
    t_s: np.ndarray  # update times
    progress: np.ndarray  # cumulative progress after each update
    final_progress: float
    final_accuracy: float
    final_loss: float

    def time_to_progress_s(self, target_progress: float) -> float | None:
        """When cumulative progress first reaches `target_progress` (None if never)."""
        if target_progress <= 0:
            return 0.0
        hit = np.flatnonzero(self.progress >= target_progress)
        return float(self.t_s[hit[0]]) if hit.size else None

    def progress_at(self, t_s: np.ndarray) -> np.ndarray:
        """Cumulative progress at times t_s (a step function of the update times)."""
        k = np.searchsorted(self.t_s, np.asarray(t_s, float), side="right")
        padded = np.concatenate([[0.0], self.progress])
        return padded[k]


def predict(stream: Stream, plan: Plan, spec: ConvergenceSpec) -> Prediction:
    """The whole prediction for one stream."""
    prog = progress_curve(stream, plan, spec)
    final = float(prog[-1]) if prog.size else 0.0
    return Prediction(stream.t_s, prog, final, float(accuracy_at(final, spec)), float(loss_at(final, spec)))


def time_to_target_s(pred: Prediction, spec: ConvergenceSpec, target_accuracy: float | None = None,
                     target_loss: float | None = None) -> float | None:
    """Predicted time to the target accuracy (or loss); None when never reached or no target."""
    if target_accuracy is not None:
        return pred.time_to_progress_s(progress_for_accuracy(target_accuracy, spec))
    if target_loss is not None:
        return pred.time_to_progress_s(progress_for_loss(target_loss, spec))
    return None


def quality(pred: Prediction, spec: ConvergenceSpec, target_accuracy: float | None = None,
            target_loss: float | None = None) -> dict:
    """The `simulate --json` "quality" dict."""
    return {"final_accuracy": pred.final_accuracy, "final_loss": pred.final_loss,
            "time_to_target_s": time_to_target_s(pred, spec, target_accuracy, target_loss)}


def risks(plan: Plan, spec: ConvergenceSpec | None) -> list[str]:
    """Known quality risks of a plan, named once with the phases they concern (what `plan`
    marks when quality is not modelled, and what a compression efficiency falling back to
    a default means)."""
    phases_of: dict[str, list[int]] = {}
    for p, ph in enumerate(plan.phases):
        found = []
        if ph.sync in ("asp", "ssp") and ph.exchange == "gradient":
            found.append(f"{ph.sync} (stale gradients)")
        kept = DEFAULT_SWITCH_PROGRESS_KEPT if spec is None else spec.switch_progress_kept
        if is_sync_switch(plan, p):
            found.append(f"bsp -> {ph.sync} switch (keeps {kept:g} of the progress made before it)")
        found += _policy_risks(ph, kept)
        if ph.exchange == "model" and ph.sync != "bsp" and len(ph.workers) > 1:
            if len({wa.batch for wa in ph.workers}) == 1:
                found.append("model exchange with no small-batch worker")
        if ph.compression.lossy:
            eff = compression_efficiency(ph.compression, spec)
            fitted = spec is not None and ph.compression.kind in spec.compression
            if eff <= RISKY_EFFICIENCY or not fitted:
                found.append(f"{ph.compression.kind} compression (efficiency {eff:g}{'' if fitted else ', default'})")
        for what in found:
            phases_of.setdefault(what, []).append(p)
    return [f"{'phase' if len(ps) == 1 else 'phases'} {', '.join(map(str, ps))}: {what}"
            for what, ps in phases_of.items()]


def _policy_risks(ph, kept: float) -> list[str]:
    """What an online policy on a bsp phase may do to quality: switch to stale gradients
    (charged like a switch between phases), or take slowed workers out of the barrier."""
    if ph.policy is None or ph.sync != "bsp":
        return []
    kind = ph.policy.kind
    if may(kind, "switches_sync") and drops_progress("bsp", "asp", ph.exchange):
        return [f"policy {kind}: bsp -> asp switches inside the phase (each keeps {kept:g} of the progress "
                "made before it)"]
    if ph.exchange == "gradient" and may(kind, "excludes_workers"):
        return [f"policy {kind}: slowed workers' pushes are applied on their own (stale gradients)"]
    return []


def default_spec(job: Job) -> dict:
    """Starting values for a fit (a dict: calibrate fills in and validates)."""
    return {"format": CONVERGENCE_FORMAT, "lr_max": job.train.base_lr * (1.0 + DEFAULT_NOISE_SCALE / job.train.base_batch),
            "noise_scale": DEFAULT_NOISE_SCALE,
            "staleness_penalty": DEFAULT_STALENESS_PENALTY, "drift_steps": DEFAULT_DRIFT_STEPS,
            "switch_progress_kept": DEFAULT_SWITCH_PROGRESS_KEPT,
            "accuracy_initial": 0.1, "accuracy_final": 0.9, "accuracy_progress": 100.0, "accuracy_shape": 1.0,
            "loss_initial": 2.3, "loss_final": 0.1, "loss_progress": 100.0, "loss_shape": 1.0}


def predict_sim(result, plan: Plan, spec: ConvergenceSpec) -> Prediction:
    """The prediction for a simulation run with `log_updates=True` (a sim.metrics.SimResult)."""
    log = result.counters.update_log
    if log is None:
        raise ValueError("simulate with log_updates=True to predict quality")
    return predict(Stream.from_update_log(log, result.worker_names), plan, spec)
