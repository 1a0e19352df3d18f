"""Renders docs/formats.md from the code's own definitions: the pydantic models of
hybridps.spec (cluster.toml, job.toml, plan.json), traces.records.RECORD_KINDS
(trace.jsonl), the keys of a real `simulate --json` summary (and of a run's
summary.json, which shares them) and of a real `plan --json` ranking. The field tables are
walked, never typed by hand, so a field added to a model shows up on the next
`hybridps schema docs -o docs/formats.md` and tests/test_formats.py fails until then.

Only the prose and the one-line meanings below are written by hand; a field without a
meaning here is still listed (its meaning reads "(not described yet)").
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

REGENERATE = "hybridps schema docs -o docs/formats.md"
NOT_DESCRIBED = "(not described yet)"

# Units by field name (the last part of the path); names ending in a unit suffix
# (_s, _ms, _gbps, ...) need no entry: `unit_of` reads the suffix.
UNITS_BY_NAME = {
    "a": "s per sample", "b": "s per iteration", "max_batch": "samples", "batch": "samples",
    "base_batch": "samples", "samples": "samples", "resolution": "pixels", "resolutions": "pixels",
    "R": "pixels", "epochs": "epochs", "epoch": "epochs", "lr_milestones": "epochs", "bytes": "bytes",
    "parameters": "parameters", "bytes_per_parameter": "bytes", "slowdown": "factor", "count": "count",
    "staleness": "model versions", "local_steps": "iterations", "iterations": "iterations",
    "updates": "updates", "events": "events", "version": "model versions", "step": "iterations",
    "bytes_pushed": "bytes", "bytes_pulled": "bytes", "bytes_total": "bytes", "accuracy": "fraction 0..1",
    "ratio": "fraction of elements", "levels": "levels", "rounds": "rounds",
    "batch_small": "samples", "batch_big": "samples", "repeats": "count",
    "samples_applied": "samples", "split_samples": "samples",
}
UNITS_BY_SUFFIX = [
    ("_s_per_mparam", "s per 1e6 parameters"), ("_per_hour", "1/hour"), ("_gbps", "Gbps (1e9 bit/s)"),
    ("_ms", "ms"), ("_s", "s"), ("_bytes", "bytes"), ("_cv", "coefficient of variation"),
]

# One-line meanings, by dotted path (generic parts: NAME, R, [] for list items).
MEANINGS = {
    # additions: fidelity costs, data subset, the convergence model (docs/convergence.md)
    "ps.eval_s": "seconds per in-phase evaluation at the PS (every epoch end inside a phase), blocking applies and pulls",
    "devices.NAME.resolutions.R.c": "seconds per sample squared: t = a*B + b + c*B^2; set by calibrate only for a clearly bent profile (docs/fidelity.md)",
    "data.subset": "true: train on the first `samples` of a larger training set; else samples must equal the training size",
    "convergence": "the fitted convergence model (written by `hybridps calibrate --job J --job-out OUT`); absent: quality not modelled",
    "convergence.format": "the model's format tag; exactly this string",
    "convergence.lr_max": "LR of the largest useful step with an infinite batch (momentum absorbed); x = lr / lr_max",
    "convergence.noise_scale": "gradient noise scale B_simple = tr(Sigma)/|G|^2, in samples (measured at the PS)",
    "convergence.switch_progress_kept": "fraction of the progress kept when a bsp phase is followed by an asp/ssp "
                                        "gradient phase (the transient after a Sync-Switch switch); absent: the stated "
                                        "default 0",
    "convergence.staleness_penalty": "kappa_s: a step s versions stale has its curvature term scaled by (1 + kappa_s*s)",
    "convergence.drift_steps": "model exchange: H local steps keep 1/(1 + (H-1)/drift_steps) of their progress",
    "convergence.accuracy_initial": "validation accuracy before training (A0)",
    "convergence.accuracy_final": "validation accuracy plateau (A_inf)",
    "convergence.accuracy_progress": "tau_A: ideal steps to go 1 - 1/e of the way from A0 to A_inf",
    "convergence.accuracy_shape": "beta_A: the shape of the saturating accuracy curve",
    "convergence.loss_initial": "validation loss before training, nats",
    "convergence.loss_final": "validation loss plateau, nats",
    "convergence.loss_progress": "tau_L: ideal steps to go 1 - 1/e of the way from L0 to L_inf",
    "convergence.loss_shape": "beta_L: the shape of the saturating loss curve",
    "convergence.compression": "lossy compression kind -> progress efficiency (<= 1; negative: diverges)",
    "convergence.defaults": "parameters that are stated defaults because the traces could not identify them",
    "convergence.fit": "how well the fit matched the calibration traces' eval records",
    "convergence.fit.rmse_accuracy": "root-mean-square accuracy error over the eval points",
    "convergence.fit.rmse_loss": "root-mean-square loss error over the eval points, nats",
    "convergence.fit.eval_points": "eval records the fit used",
    "convergence.fit.traces": "the traces it was fitted from",
    # cluster.toml
    "format": "the format tag; exactly this string",
    "ps": "the parameter server(s)",
    "ps.count": "PS shards; the parameters are split evenly across them",
    "ps.bandwidth_gbps": "each shard's NIC, per direction (full duplex)",
    "ps.latency_ms": "one-way latency, added once per message",
    "ps.apply_s_per_mparam": "server time to apply one update, per 1e6 parameters (divided across shards)",
    "ps.phase_overhead_s": "time between two phases when no worker computes (evaluation, checkpoint, restart); "
                           "`hybridps calibrate` fits it from a run",
    "devices": "device types, by name",
    "devices.NAME.resolutions": "per input resolution R (a TOML key: `[devices.NAME.resolutions.32]`)",
    "devices.NAME.resolutions.R.a": "iteration time t(B) = a·B + b: seconds per sample",
    "devices.NAME.resolutions.R.b": "iteration time t(B) = a·B + b: seconds per iteration",
    "devices.NAME.resolutions.R.max_batch": "largest batch that fits in the device's memory",
    "workers": "worker groups (`[[workers]]`); at least one",
    "workers[].name": "with count > 1 the workers are named NAME0, NAME1, ...; names must be unique",
    "workers[].device": "a key of `[devices]`",
    "workers[].count": "identical workers in this group",
    "workers[].bandwidth_gbps": "the worker's own NIC, per direction",
    "workers[].latency_ms": "one-way latency, added once per message",
    "workers[].slowdown": "persistent factor on compute time (2.0 = twice as slow); the runtime enforces it",
    "workers[].exchange_overhead_s": "worker-local seconds per exchange",
    "stragglers": "transient slowdowns: Poisson episodes per worker",
    "stragglers.rate_per_hour": "episodes per worker per hour",
    "stragglers.slowdown": "compute-time factor during an episode",
    "stragglers.mean_duration_s": "mean episode length (exponentially distributed)",
    "stragglers.workers": "worker names affected; empty = all workers",
    "stragglers.seed": "seed of the episode draws (`simulate --seed` overrides it)",
    "stragglers.jitter_cv": "per-iteration compute noise on every worker: gamma draws of mean 1 and this "
                            "coefficient of variation; 0 = none",
    # job.toml
    "model": "the model being trained",
    "model.name": "model name (the runtime builds `cnn`, `mlp`, `resnet18`, ... by this name)",
    "model.parameters": "parameter count; wire size = parameters × bytes_per_parameter",
    "model.bytes_per_parameter": "bytes per parameter on the wire (the runtime exchanges fp32: 4)",
    "data": "the data set",
    "data.name": "data set name (`synthetic`, `digits`, `cifar100`, ...)",
    "data.samples": "one epoch = this many samples, summed over all workers",
    "train": "the training recipe",
    "train.epochs": "epochs in the whole run",
    "train.resolutions": "input resolutions a plan may use",
    "train.base_batch": "the conventional per-worker batch of the uniform baseline",
    "train.base_lr": "learning rate at base_batch",
    "train.momentum": "SGD momentum",
    "train.weight_decay": "SGD weight decay (L2)",
    "train.lr_milestones": "epochs at which the learning rate is multiplied by lr_decay",
    "train.lr_decay": "learning-rate factor at each milestone",
    # plan.json
    "phases": "the phases, run in order; at least one",
    "phases[].epochs": "the phase ends once epochs × data.samples samples are processed, summed over workers",
    "phases[].resolution": "input resolution; one of the job's train.resolutions",
    "phases[].sync": "`bsp` (every exchange a barrier), `asp` (none), `ssp` (at most `staleness` ahead)",
    "phases[].staleness": "ssp's bound (exchanges ahead of the slowest); null otherwise",
    "phases[].exchange": "`gradient` (PS applies the optimizer) or `model` (PS merges weights)",
    "phases[].local_steps": "iterations between exchanges; null = 1 for gradient, the worker's whole "
                            "per-epoch share for model (DBSL's mini-epoch)",
    "phases[].lr": "learning rate of the phase",
    "phases[].compression": "gradient compression of pushes (pulls are never compressed)",
    "phases[].compression.kind": "codec",
    "phases[].compression.ratio": "topk/randomk: fraction of elements kept (8 bytes each on the wire)",
    "phases[].compression.scaling": "onebit: scale signs by the mean magnitude (null = true)",
    "phases[].compression.levels": "dithering: quantisation levels",
    "phases[].compression.normalize": "dithering: norm to scale by (null = max)",
    "phases[].compression.error_feedback": "carry the compression error to the next push (null = true for "
                                           "lossy kinds)",
    "phases[].workers": "each worker's assignment in this phase",
    "phases[].workers[].name": "a worker name of the cluster",
    "phases[].workers[].batch": "batch size; at most the device's max_batch at this resolution",
    "phases[].workers[].samples": "this worker's share of one epoch; the shares sum to data.samples",
    "meta": "free-form; ignored by the simulator and the runtime",
    "phases[].policy": "an online policy (docs/policies.md): in `simulate`, and in `run` with one PS shard; absent: the phase runs as planned",
    "phases[].policy.kind": "`sync-switch-greedy`, `sync-switch-elastic`, `lb-rebalance`, `adaptive-ssp` or `python` (with `target` = "
                            "\"module:Class\"); other keys are the kind's parameters",
}

TRACE_MEANINGS = {
    "worker_lost.reason": "why the worker was lost (no heartbeat, no progress, connection failed, send timed out)",
    "worker_lost.shares": "worker -> samples per epoch each remaining worker trains on from its next worker-epoch",
    "resume.version": "the model version the resumed run continues from",
    "resume.discarded_records": "records of discarded work cut from the trace",
    "resume.discarded_bytes": "bytes cut from the trace",
    "resume.applied_in_phase": "samples already applied in the phase at the checkpoint",
    "header": "first line of every trace",
    "header.format": "`hybridps.trace/1`",
    "header.source": "`sim`, `runtime` or `profile`",
    "header.cluster": "the cluster, as loaded (cluster.toml's fields)",
    "header.job": "the job, as loaded",
    "header.plan": "the plan that ran",
    "header.seed": "the straggler seed used",
    "header.meta": "free-form; the runtime writes model, data, parameters, world_size, workers and eval_every (its --eval-every, which validate re-simulates with)",
    "compute": "one training iteration of one worker",
    "compute.worker": "worker name",
    "compute.phase": "phase index",
    "compute.epoch": "epoch index within the run",
    "compute.step": "iteration index within the worker's share of the epoch",
    "compute.batch": "batch size",
    "compute.resolution": "input resolution",
    "compute.start_s": "start, from the run's start",
    "compute.end_s": "end, from the run's start",
    "compute.samples": "samples in this iteration when less than batch (the share's last iteration)",
    "push": "a worker sends its gradient or model to the PS",
    "push.buckets": "pieces the gradient went in, during backward (`hybridps run --bucket-mb`; absent: one piece)",
    "push.buckets_in_backward": "of those, pieces handed to the transport before backward ended",
    "pull": "a worker receives the model from the PS",
    "update": "the PS applied one update",
    "update.t_s": "when the update was applied",
    "update.version": "global model version after the update",
    "update.staleness": "versions applied between the worker's pull and its push",
    "phase": "one phase's span",
    "phase.index": "phase index",
    "eval": "an evaluation of the global model",
    "eval.t_s": "when it was measured",
    "eval.epoch": "epochs done (fractional)",
    "eval.loss": "mean loss",
    "eval.accuracy": "top-1 accuracy",
    "eval.split": "data split evaluated",
    "eval.samples": "held-out samples evaluated",
    "eval.start_s": "when the evaluation began (t_s: when it ended)",
    "train": "training loss per exchange interval, per worker (mean over the interval's samples)",
    "train.loss": "mean training loss over the interval",
    "train.samples": "samples in the interval",
    "train.update_norm": "with lossy compression: norm of the vector handed to the codec",
    "train.residual_norm": "with lossy compression: norm of the residual error feedback keeps",
    "noise": "the gradient noise scale measured at the PS over a phase (McCandlish et al. 2018)",
    "noise.estimator": "`two-batch` (bsp rounds) or `differenced` (asp/ssp)",
    "noise.noise_scale": "B_simple = tr(Σ) / |G|²",
    "noise.grad_sq": "the estimate of |G|², the squared norm of the true gradient",
    "noise.trace_cov": "the estimate of tr(Σ), the per-sample gradient covariance's trace",
    "noise.stderr": "standard error of noise_scale",
    "noise.rounds": "measurements behind the estimate",
    "noise.batch_small": "two-batch estimator: the small batch",
    "noise.batch_big": "two-batch estimator: the big batch",
    "policy": "an online policy's action (docs/policies.md); no-ops are not recorded",
    "policy.t_s": "when the push that prompted it arrived at the PS",
    "policy.observed": "what the policy saw: worker, sync, compute_s_per_iteration and exchange_s by worker, "
                       "staleness, phase_fraction, barrier, staleness_bound (null outside ssp)",
    "policy.action": "`{kind: set_sync, sync}` (with `staleness` for ssp), `{kind: set_staleness, staleness}`, "
                     "`{kind: exclude|include, worker}` or `{kind: rebalance, batches: {worker: batch}}`",
    "profile.resolution": "input resolution", "profile.batch": "batch size",
    "profile": "one timed iteration size (`hybridps profile`)",
    "profile.device": "device type name",
    "profile.iteration_s": "median iteration time",
    "profile.repeats": "timed iterations behind the median",
    "profile.model": "model name",
}
COMMON_TRACE_FIELDS = {  # meanings shared by several record kinds
    "worker": "worker name", "phase": "phase index", "start_s": "start, from the run's start",
    "end_s": "end, from the run's start", "bytes": "bytes on the wire", "shard": "PS shard index",
    "samples": "samples behind the message", "t_s": "when, from the run's start",
}

SUMMARY_MEANINGS = {
    "makespan_s": "end of the last phase from time zero (counts the initial evaluation and the time between phases)",
    "phases": "each phase's span",
    "phases[].start_s": "phase start", "phases[].end_s": "phase end",
    "epoch_end_s": "when each epoch's samples were all processed",
    "workers": "per worker, by name",
    "workers.NAME.iterations": "training iterations", "workers.NAME.samples": "samples trained on",
    "workers.NAME.compute_s": "time computing", "workers.NAME.comm_s": "time pushing or pulling",
    "workers.NAME.wait_s": "time neither (barriers, ssp waits, PS queue)",
    "workers.NAME.bytes_pushed": "bytes sent to the PS", "workers.NAME.bytes_pulled": "bytes received",
    "updates": "updates the PS applied",
    "staleness": "staleness of the applied updates",
    "staleness.mean": "mean", "staleness.p50": "median (nearest rank: an observed value)",
    "staleness.p99": "99th percentile (nearest rank: an observed value)",
    "staleness.max": "largest",
    "bytes_total": "bytes pushed and pulled by all workers",
    "policy_actions": "online policies' actions by kind (`set_sync`, `set_staleness`, `exclude`, `include`, "
                      "`rebalance`); "
                      "{} without a policy",
    "events": "SimPy events processed", "wall_s": "wall-clock time the simulation took",
}

# `hybridps run`'s RUN/summary.json: traces/summary.py's keys (those of `simulate --json`,
# computed from the run's trace) plus what the runtime adds (runtime/summary.py, and the
# parameter counts of runtime/server.py). Those additions need torch to produce, so they
# are listed here: (type, meaning); tests/test_cli_help.py checks them against a real run.
RUN_SUMMARY_ADDED = {
    "events": ("int", "records in the trace"),
    "evals": ("list of objects", "every eval record of the trace"),
    "epoch_end_s": ("list[number]", "when the PS had applied each epoch's samples"),
    "status": ("str", "`complete`; a stopped run's summary says why: `interrupted`, `worker-lost`, `io-error`, "
                         "`policy-error` (a policy's invalid action)"),
    "startup_s": ("number", "from the launcher's start to the first training step (ready_s plus the first "
                            "compute record's start)"),
    "ready_s": ("number", "from the launcher's start until every process was ready: time zero (imports, model, "
                          "data, rendezvous)"),
    "wall_s": ("number", "wall-clock time of training, from time zero"),
    "source": ("str", "`runtime`"),
    "final_eval": ("object or null", "the last eval record: the trained model's held-out accuracy and loss"),
    "version": ("int", "model version at the end: updates the PS (shard 0) applied"),
    "samples_applied": ("int", "samples behind the applied updates"),
    "eval": ("object", "what evaluation measured on"),
    "eval.split": ("str", "the held-out split (`test`)"),
    "eval.samples": ("int", "held-out samples per evaluation (`--eval-samples`, default all)"),
    "eval.split_samples": ("int", "size of the held-out split"),
    "eval.mode": ("str", "`eval`: batch norm uses the merged running statistics"),
    "policy_actions": ("object", "online policies' actions by kind (`set_sync`, `set_staleness`, `exclude`, "
                                 "`include`, `rebalance`), counted "
                                 "from the trace's policy records as `simulate --json` has them; {} without a policy"),
    "parameters": ("object", "the model's size"),
    "parameters.model": ("int", "parameters of the model the run built"),
    "parameters.job": ("int", "the job's `model.parameters`"),
}

RANKING_OPAQUE = ("best.parameters", "ranked[].parameters", "ranked[].policy_actions")  # keys that vary
RANKING_MEANINGS = {
    "best": "the plan written to -o", "best.strategy": "its strategy",
    "best.parameters": "its strategy's parameters (as in its label)",
    "best.predicted_makespan_s": "its predicted makespan (full simulation)",
    "best.quality": "its predicted quality (null without a [convergence] table)",
    "best.quality.final_accuracy": "predicted final validation accuracy",
    "best.quality.final_loss": "predicted final validation loss, nats",
    "best.quality.time_to_target_s": "predicted time to the target (null: missed, or no target)",
    "objective": "`time` (predicted makespan) or `time_to_accuracy` / `time_to_loss` (with a target)",
    "uniform_makespan_s": "the uniform baseline's predicted makespan",
    "ratio_to_uniform": "best makespan / baseline makespan",
    "ranked": "the candidates, best first (plan --json: the --top ones; ranking.json: every one)",
    "ranked[].label": "the candidate, whole", "ranked[].strategy": "its strategy",
    "ranked[].parameters": "its strategy's parameters",
    "ranked[].estimate_s": "closed-form makespan estimate",
    "ranked[].proxy_s": "shortened-horizon simulation, scaled back (null: not simulated)",
    "ranked[].full_s": "full simulation (null: not simulated in full)",
    "ranked[].how": "which of the three its rank rests on: `full`, `proxy` or `estimate`",
    "ranked[].quality": "predicted quality, as best.quality (null without a [convergence] table)",
    "ranked[].quality.final_accuracy": "predicted final validation accuracy",
    "ranked[].quality.final_loss": "predicted final validation loss, nats",
    "ranked[].quality.time_to_target_s": "predicted time to the target (null: missed, or no target)",
    "ranked[].risks": "known quality risks, one line each",
    "ranked[].baseline": "true for the uniform baseline",
    "ranked[].policy": "a policy candidate only (docs/solver.md, \"Policies as candidates\"): the online policy "
                       "on its bsp phases, as in plan.json",
    "ranked[].policy.kind": "the policy's kind",
    "ranked[].parent": "a policy candidate only: the label of the static candidate it adds the policy to",
    "ranked[].policy_actions": "a policy candidate only: the policy's decisions by kind in the run its time rests on",
    "ranked[].gain_s": "a policy candidate only: its parent's predicted time minus its own (> 0: the policy is "
                       "faster)",
    "ranked[].gain_basis": "what both figures of gain_s (and of the quality changes) come from: `full` when both "
                           "were simulated in full, else `proxy`",
    "ranked[].final_accuracy_change": "a policy candidate only, with a [convergence] table: its predicted final "
                                      "accuracy minus its parent's",
    "ranked[].gain_to_target_s": "a policy candidate only, with a [convergence] table: its parent's predicted time "
                                 "to the target minus its own (null: either misses it, or no target)",
    "counts": "how many candidates each stage saw",
    "counts.candidates": "generated", "counts.proxy": "simulated on the shortened horizon",
    "counts.full": "simulated in full",
    "counts.policy": "candidates with an online policy, among `candidates` (only when the cluster has transient "
                     "stragglers)",
    "stage_s": "wall-clock time per stage", "stage_s.generate_s": "generating and estimating",
    "stage_s.proxy_s": "proxy simulations", "stage_s.full_s": "full simulations",
    "wall_s": "wall-clock time of the search",
    "output": "the plan file written; null with --json and no -o (only in plan --json)",
}


def unit_of(name: str) -> str:
    """The unit a field's name implies: a known name, else its unit suffix, else ''."""
    if name in UNITS_BY_NAME:
        return UNITS_BY_NAME[name]
    if name in ("mean", "p50", "p99", "max"):  # the summary's staleness statistics
        return "model versions"
    for suffix, unit in UNITS_BY_SUFFIX:
        if name.endswith(suffix):
            return unit
    return ""


# --------------------------------------------------------------------------- spec models


def _unwrap(ann: Any) -> Any:
    while get_origin(ann) is Annotated:
        ann = get_args(ann)[0]
    return ann


def _strip_optional(ann: Any) -> tuple[Any, bool]:
    ann = _unwrap(ann)
    if get_origin(ann) in (Union, types.UnionType):
        args = [_unwrap(a) for a in get_args(ann) if a is not type(None)]
        optional = len(args) < len(get_args(ann))
        if len(args) == 1:
            return args[0], optional
        if optional:
            return Union[tuple(args)], True
    return ann, False


def _models_in(ann: Any) -> list[type[BaseModel]]:
    """The model classes `ann` is: one model, or a union of models (e.g. one per `kind`)."""
    ann = _unwrap(ann)
    if _is_model(ann):
        return [ann]
    if get_origin(ann) in (Union, types.UnionType):
        members = [_unwrap(a) for a in get_args(ann)]
        if members and all(_is_model(m) for m in members):
            return members
    return []


def _kinds(models: list[type[BaseModel]]) -> str:
    """`table`, or for a union of tables told apart by `kind`: table (kind `a` | `b`)."""
    kinds = [f"`{a}`" for m in models if "kind" in m.model_fields
             for a in get_args(_unwrap(m.model_fields["kind"].annotation))]
    return "table (kind " + " \\| ".join(kinds) + ")" if len(models) > 1 and kinds else "table"


def type_name(ann: Any) -> str:
    """A short human name of a field's type: `int`, `list[int]`, one of `a` `b`, table."""
    ann, optional = _strip_optional(ann)
    origin = get_origin(ann)
    if origin is Literal:
        text = " \\| ".join(f"`{a}`" for a in get_args(ann))
    elif _models_in(ann):
        text = _kinds(_models_in(ann))
    elif origin is dict:
        key, value = get_args(ann)
        text = f"tables by {'name' if key is str else 'number'}" if _models_in(value) else "table"
    elif origin is list:
        (item,) = get_args(ann)
        text = "array of tables" if _models_in(item) else f"list[{type_name(item)}]"
    elif isinstance(ann, type):
        text = ann.__name__
    else:
        text = str(ann)
    return text + " or null" if optional else text


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _range(field: Any) -> str:
    parts = []
    for m in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None:
                parts.append(f"{sign} {v:g}" if isinstance(v, float) else f"{sign} {v}")
        if getattr(m, "min_length", None) and field.annotation is str:
            parts.append("non-empty")
        elif getattr(m, "min_length", None):
            parts.append(f"at least {m.min_length} item{'s' if m.min_length > 1 else ''}")
        if getattr(m, "max_length", None) is not None:
            parts.append(f"at most {m.max_length} items")
    return ", ".join(parts)


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "all defaults"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)) and not value:
        return "[]" if isinstance(value, list) else "{}"
    return str(value)


def model_rows(model: type[BaseModel], prefix: str = "", json: bool = False) -> list[dict[str, str]]:
    """One row per field of `model` and of every model nested in it, depth first:
    path (NAME, R and [] stand for keys and list items), type, unit, default, range.
    `json`: name tables "objects" (plan.json is JSON, not TOML)."""
    if json:
        return [{**r, "type": r["type"].replace("table", "object")} for r in model_rows(model, prefix)]
    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        ann, _ = _strip_optional(field.annotation)
        origin = get_origin(ann)
        if origin is list:
            children, sub = _models_in(get_args(ann)[0]), f"{path}[]."
        elif origin is dict:
            children, sub = _models_in(get_args(ann)[1]), f"{path}.{'NAME' if get_args(ann)[0] is str else 'R'}."
        else:
            children, sub = _models_in(ann), f"{path}."
        rows.append({"path": path, "type": type_name(field.annotation), "unit": "" if children else unit_of(name),
                     "default": _default(field), "range": _range(field),
                     "meaning": field.description or MEANINGS.get(path, NOT_DESCRIBED)})
        seen = set()
        for child in children:  # a union of tables: each field once, from the first kind that has it
            for row in model_rows(child, sub):
                if row["path"] not in seen:
                    seen.add(row["path"])
                    rows.append(row)
    return rows


# --------------------------------------------------------------------------- trace records


def trace_rows() -> list[dict[str, str]]:
    """One row per (record kind, field) of traces.records.RECORD_KINDS."""
    from traces.records import RECORD_KINDS

    rows = []
    for kind, (required, optional) in RECORD_KINDS.items():
        for fields, req in ((required, "required"), (optional, "optional")):
            for name, accepted in fields.items():
                meaning = TRACE_MEANINGS.get(f"{kind}.{name}") or COMMON_TRACE_FIELDS.get(name, NOT_DESCRIBED)
                rows.append({"kind": kind, "field": name, "type": _py_types(accepted), "unit": unit_of(name),
                             "presence": req, "meaning": meaning})
    return rows


def _py_types(accepted: tuple[type, ...]) -> str:
    names = {int: "int", float: "number", str: "str", dict: "object", type(None): "null"}
    got = [names.get(t, t.__name__) for t in accepted]
    if "int" in got and "number" in got:
        got.remove("int")
    return " or ".join(got)


# --------------------------------------------------------------------------- simulate --json


def summary_example() -> tuple[dict[str, Any], list[str]]:
    """A real `simulate --json` summary (bundled gtx1080x4 DBSL plan) and its worker names."""
    from hybridps.spec import load_cluster, load_job, load_plan
    from sim import simulate

    cluster, job = load_cluster("gtx1080x4"), load_job("cifar100-resnet18")
    plan = load_plan("gtx1080x4-cifar100-dbsl", cluster, job)
    return simulate(cluster, job, plan).summary(), [w.name for w in cluster.worker_list]


def run_summary_rows(summary: dict[str, Any], worker_names: list[str]) -> list[dict[str, str]]:
    """RUN/summary.json: the trace summary's rows (traces/summary.py, on a simulated trace
    of the same plan), then the runtime's additions; evals[] and final_eval are eval records."""
    trace_keys = ("makespan_s", "phases", "workers", "updates", "staleness", "bytes_total")
    rows = [r for r in summary_rows(summary, worker_names) if r["path"].split(".")[0].split("[")[0] in trace_keys]
    eval_fields = [{"field": "kind", "type": "str", "unit": "", "meaning": "`eval`"},
                   *(r for r in trace_rows() if r["kind"] == "eval")]
    for path, (kind, meaning) in RUN_SUMMARY_ADDED.items():
        rows.append({"path": path, "type": kind, "unit": unit_of(path.split(".")[-1]), "meaning": meaning})
        if path in ("evals", "final_eval"):  # eval records, as in the trace
            sep = "[]." if path == "evals" else "."
            rows += [{"path": f"{path}{sep}{r['field']}", "type": r["type"], "unit": r["unit"],
                      "meaning": r["meaning"]} for r in eval_fields]
    return rows


def ranking_example() -> dict[str, Any]:
    """A real `plan --json` output: the bundled digits-cnn job with --target-accuracy 0.95,
    so quality is filled in."""
    from hybridps.spec import load_cluster, load_job
    from solver.candidates import Constraints
    from solver.search import search, summary_json

    result = search(load_cluster("digits-cpu3"), load_job("digits-cnn"), Constraints(), seed=0, jobs=1,
                    target_accuracy=0.95)
    return {**summary_json(result, None), "output": "plan.json"}


def summary_rows(summary: dict[str, Any], worker_names: list[str], meanings: dict[str, str] | None = None,
                 opaque: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """One row per key of the summary, nested keys as paths (workers.NAME.iterations);
    the keys inside an `opaque` path vary (a strategy's parameters) and are not listed."""
    meanings = SUMMARY_MEANINGS if meanings is None else meanings
    rows: list[dict[str, str]] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict) and value and sorted(value) == sorted(worker_names):
            value = {"NAME": value[worker_names[0]]}  # keyed by worker: document one worker's keys
            path_of = lambda key: f"{path}.NAME"  # noqa: E731
        else:
            path_of = lambda key: f"{path}.{key}" if path else key  # noqa: E731
        items = value.items() if isinstance(value, dict) else (
            ((f"[].{k}", v) for k, v in _item_keys(value).items()) if isinstance(value, list) and value and
            isinstance(value[0], dict) else ())
        for key, sub in items:
            sub_path = f"{path}{key}" if key.startswith("[]") else path_of(key)
            if not sub_path.endswith(".NAME"):
                unit = "" if sub_path in opaque else unit_of(key.split(".")[-1])
                rows.append({"path": sub_path, "type": _json_type(sub), "unit": unit,
                             "meaning": meanings.get(sub_path, NOT_DESCRIBED)})
            if sub_path not in opaque:
                walk(sub, sub_path)

    walk(summary, "")
    return rows


def _item_keys(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Every key of a list's objects, with its first non-null value: keys that only some
    items have (a policy candidate's in `ranked`) are documented too."""
    out: dict[str, Any] = {}
    for item in items:
        for k, v in item.items():
            if out.get(k) is None:
                out[k] = v
    return out


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        inner = _json_type(value[0]) if value else "any"
        return f"list[{inner}]" if not isinstance(value[0] if value else None, dict) else "list of objects"
    if isinstance(value, dict):
        return "object"
    return "null"


# --------------------------------------------------------------------------- markdown


def _table(rows: list[dict[str, str]], columns: list[tuple[str, str]]) -> str:
    def cell(row: dict[str, str], key: str) -> str:
        v = row[key]
        if key in ("path", "field", "kind"):
            return f"`{v}`"
        return v.replace("|", "\\|") if key == "meaning" else v

    lines = ["| " + " | ".join(title for _, title in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r, k) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


SUMMARY_COLUMNS = [("path", "key"), ("type", "type"), ("unit", "unit"), ("meaning", "meaning")]
SPEC_COLUMNS = [("path", "field"), ("type", "type"), ("unit", "unit"), ("default", "default"),
                ("range", "valid range"), ("meaning", "meaning")]


def render() -> str:
    """The whole of docs/formats.md."""
    from hybridps.spec import CLUSTER_FORMAT, JOB_FORMAT, PLAN_FORMAT, Cluster, Job, Plan
    from traces.records import TRACE_FORMAT

    summary, names = summary_example()
    parts = [
        "# File formats",
        "",
        f"<!-- generated by `{REGENERATE}` from hybridps/spec.py, traces/records.py and a real "
        "`simulate --json` run; do not edit by hand: tests/test_formats.py fails when this file is stale -->",
        "",
        "Every file hybridps reads or writes, field by field. The tables are generated from the code "
        "that loads the files (the pydantic models of `hybridps/spec.py`, the record kinds of "
        "`traces/records.py`), so they list exactly what the loaders accept.",
        "",
        "Conventions:",
        "",
        "- Times are seconds (`_s`) unless the name says otherwise (`_ms`). Trace times are seconds "
        "from the run's start.",
        "- Network units are decimal: 1 Gbps = 1e9 bit/s = 1.25e8 bytes/s. Sizes are bytes (`_bytes`).",
        "- Model size on the wire = `parameters × bytes_per_parameter`.",
        "- Unknown fields are an error, and so is a string where a number belongs (strict validation). "
        "A bad file gets one line naming the file, the field path (e.g. `workers[3].device`) and what "
        "was expected, and exit code 2.",
        "- Fields may be added; existing names and meanings do not change without a format version bump.",
        "- In field paths, `NAME` stands for a table key you choose, `R` for a resolution in pixels, "
        "and `[]` for each item of an array.",
        "- JSON Schemas of the same formats: `hybridps schema cluster|job|plan|trace [-o FILE]`.",
        "",
        f"## cluster.toml — `format = \"{CLUSTER_FORMAT}\"`",
        "",
        "The machines: parameter-server shards, device types with their per-resolution iteration-time "
        "fit, the workers, and transient stragglers. `hybridps examples --show gtx1080x4` prints a "
        "complete one; `hybridps calibrate` writes one from traces.",
        "",
        _table(model_rows(Cluster), SPEC_COLUMNS),
        "",
        "A resolution missing for a device is an error when a plan uses it (no silent scaling).",
        "",
        f"## job.toml — `format = \"{JOB_FORMAT}\"`",
        "",
        "What is trained: the model, the data, the training recipe. `hybridps examples --show "
        "cifar100-resnet18` prints one.",
        "",
        _table(model_rows(Job), SPEC_COLUMNS),
        "",
        f"## plan.json — `\"format\": \"{PLAN_FORMAT}\"`",
        "",
        "Written by `hybridps plan`; read by `simulate`, `run` and `check`. Each phase fixes the "
        "resolution, the synchronisation, the compression and every worker's batch and share. How a "
        "phase executes, step by step, is [docs/semantics.md](semantics.md).",
        "",
        _table(model_rows(Plan, json=True), SPEC_COLUMNS),
        "",
        "Checked against the cluster and job: every worker named exists and its batch fits its "
        "device's `max_batch` at the phase's resolution; the shares sum to `data.samples` (± one per "
        "worker for rounding); under `bsp` with `gradient` exchange every worker takes the same "
        "number of iterations per epoch (`ceil(samples / batch)`).",
        "",
        "Compression bytes on the wire: topk/randomk 8 per kept element (int32 index + fp32 value); "
        "onebit ⌈n/8⌉ + 4; dithering ⌈n·(1+⌈log2(levels+1)⌉)/8⌉ + 4.",
        "",
        f"## trace.jsonl — `\"format\": \"{TRACE_FORMAT}\"`",
        "",
        "One JSON object per line. The first is a `header`; every other line is a record whose `kind` "
        "is one of the kinds below. The simulator (`simulate --trace`), the runtime (`run`, "
        "`RUN/trace.jsonl`) and the profiler write the same schema, so any two traces compare record "
        "for record. A record with a missing required field, an unknown field or a wrong type is an "
        "error on reading, naming the line. A torn last line (a crash mid-write) is skipped.",
        "",
        _table(trace_rows(), [("kind", "kind"), ("field", "field"), ("presence", "presence"),
                              ("type", "type"), ("unit", "unit"), ("meaning", "meaning")]),
        "",
        "`hybridps gantt TRACE -o FILE.png` and `hybridps chrome TRACE -o FILE.json` draw any trace, "
        "simulated or measured; both take `--window START:END` (seconds) and `--max-lanes N` (the workers "
        "beyond the first N-1 share one lane, their mean). A whole run's Chrome file can be more than a "
        "browser opens: the mixed16 ImageNet trace (`hybridps simulate --cluster mixed16 --job "
        "imagenet-resnet18 --plan mixed16-imagenet-uniform --trace m16.jsonl`, 2.1 M records) converts "
        "to 303 MB with `hybridps chrome m16.jsonl -o m16.json`, to 6.1 MB with `--window 0:600`, to "
        "20.4 MB with `--max-lanes 8 --window 0:3600`, and to 2.0 MB with `--bin-s 30` (the whole run as "
        "counters: each worker's share of every 30 s bin computing and communicating, PS updates per bin).",
        "",
        "## `simulate --json` — the summary",
        "",
        "Printed on stdout by `hybridps simulate --json`. The keys below are those of a real run "
        "(the bundled `gtx1080x4-cifar100-dbsl` plan); options may add keys.",
        "",
        _table(summary_rows(summary, names), SUMMARY_COLUMNS),
        "",
        "## `RUN/summary.json` — a run's summary",
        "",
        "Written by `hybridps run` into its output directory when the run ends (also when it stops: "
        "`status` says why), and printed on stdout by `hybridps run --json` when it completes (progress "
        "and the human lines go to stderr). The first keys are those of `simulate --json`, computed from "
        "the run's own trace by `traces/summary.py` (so a resumed run's summary covers both parts); the "
        "rest are the runtime's.",
        "",
        _table(run_summary_rows(summary, names), SUMMARY_COLUMNS),
        "",
        "## `plan --json` — the ranking",
        "",
        "Printed on stdout by `hybridps plan --json`; `plan --keep DIR` writes the same object as "
        "`DIR/ranking.json`, with every candidate in `ranked` and no `output`. With `--json` the best plan "
        "is written only when `-o` is given (`output` is then its path, else null); without `--json`, "
        "`-o` defaults to `plan.json`, and replacing an existing file is said on stderr. The keys below "
        "are those of a real search (the bundled `digits-cnn` job on `digits-cpu3`, `--target-accuracy "
        "0.95`); without a `[convergence]` table every `quality` is null.",
        "",
        _table(summary_rows(ranking_example(), [], RANKING_MEANINGS, RANKING_OPAQUE),
               SUMMARY_COLUMNS),
        "",
    ]
    return "\n".join(parts)


def documented_paths(markdown: str) -> dict[str, set[str]]:
    """The field paths in each section's table of a rendered formats.md (first column)."""
    out: dict[str, set[str]] = {}
    section = ""
    for line in markdown.splitlines():
        if line.startswith("## "):
            section = line[3:].split(" — ")[0].strip("`")
            out[section] = set()
        elif line.startswith("| `") and section:
            cells = [c.strip().strip("`") for c in line.strip("|").split(" | ")]
            out[section].add(f"{cells[0]}.{cells[1]}" if section == "trace.jsonl" else cells[0])
    return out
