"""The shared vocabulary: Cluster, Job and Plan, loaded and validated as
docs/formats.md documents them (cluster.toml, job.toml, plan.json).

Every loader raises `SpecError(file, field_path, message)` for bad input, so the CLI can
print one clear line and exit 2. Models are frozen pydantic models in strict mode
(a string where a number belongs is an error, not a silent conversion) that forbid
unknown fields.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from hybridps.errors import SpecError

CLUSTER_FORMAT = "hybridps.cluster/1"
JOB_FORMAT = "hybridps.job/1"
PLAN_FORMAT = "hybridps.plan/1"

BITS_PER_GBPS = 1e9  # decimal units: 1 Gbps = 1e9 bit/s = 1.25e8 B/s


def gbps_to_bytes_per_s(gbps: float) -> float:
    return gbps * BITS_PER_GBPS / 8.0


# Upper bounds. Numbers must be finite (inf and nan are refused in every field); beyond
# these a value is a typo, and would hang the simulator or exhaust memory.
MAX_WORKERS = 10_000  # workers in a cluster, all groups together
MAX_PS_SHARDS = 1_024
MAX_GBPS = 1e6  # 1 Pbit/s
MAX_LATENCY_MS = 1e6  # 1000 s
MAX_SECONDS = 1e6  # any duration in a spec (~11.6 days)
MAX_SLOWDOWN = 1e6
MAX_BATCH = 10**8
MAX_RESOLUTION = 65_536
MAX_PARAMETERS = 10**13
MAX_SAMPLES = 10**11
MAX_EPOCHS = 100_000
MAX_RATE = 1e6  # learning rates, decays, weight decay
MAX_STEPS = 10**9  # staleness, local steps, ideal steps of the convergence model
MAX_NATS = 1e6  # losses (cross-entropy, nats)
MAX_ITERATIONS = 10**8  # a job's epochs x samples / base_batch; a plan's iterations of all workers
MAX_SEED = 2**63 - 1


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- cluster


class PSSpec(_Spec):
    count: int = Field(1, ge=1, le=MAX_PS_SHARDS)
    bandwidth_gbps: float = Field(10.0, gt=0, le=MAX_GBPS)
    latency_ms: float = Field(0.05, ge=0, le=MAX_LATENCY_MS)
    apply_s_per_mparam: float = Field(0.0, ge=0, le=MAX_SECONDS)
    # time between two phases when no worker computes: the PS's phase-end evaluation and
    # checkpoint, and the next phase's start (hybridps calibrate fits it from a run)
    phase_overhead_s: float = Field(0.0, ge=0, le=MAX_SECONDS)
    # seconds the PS spends on one in-phase evaluation (every epoch end inside a phase, as
    # the runtime's --eval-every 1 does), blocking applies and pulls; docs/semantics.md
    eval_s: float = Field(0.0, ge=0, le=MAX_SECONDS)

    @property
    def latency_s(self) -> float:
        return self.latency_ms / 1e3

    @property
    def bandwidth_bytes_per_s(self) -> float:
        """One shard's NIC, per direction."""
        return gbps_to_bytes_per_s(self.bandwidth_gbps)

    @property
    def total_bandwidth_bytes_per_s(self) -> float:
        """All shards' NICs together, per direction."""
        return self.count * self.bandwidth_bytes_per_s


class ResolutionProfile(_Spec):
    """Iteration time t(B) = a*B + b (+ c*B^2 where the profile bends) seconds for batch B;
    max_batch fits in memory."""

    a: float = Field(ge=0, le=MAX_SECONDS)
    b: float = Field(ge=0, le=MAX_SECONDS)
    max_batch: int = Field(ge=1, le=MAX_BATCH)
    # seconds per sample^2: calibrate sets it only when a profile is clearly not linear
    # (docs/fidelity.md); 0 keeps the linear model
    c: float = Field(0.0, ge=-MAX_SECONDS, le=MAX_SECONDS)

    @model_validator(mode="after")
    def _some_time(self) -> "ResolutionProfile":
        if self.a == 0 and self.b == 0 and self.c <= 0:
            raise ValueError("a and b are both 0: an iteration must take some time")
        if self.c != 0:
            sizes = [1.0, float(self.max_batch)]
            vertex = -self.a / (2 * self.c)
            if 1 < vertex < self.max_batch:
                sizes.append(vertex)
            if min(self.iteration_s(s) for s in sizes) <= 0:
                raise _FieldError("c", f"t(B) = a*B + b + c*B^2 must stay positive for B in 1..max_batch; "
                                       f"c = {self.c} makes it reach 0")
        return self

    def iteration_s(self, batch: float) -> float:
        return self.a * batch + self.b + self.c * batch * batch


class DeviceSpec(_Spec):
    resolutions: dict[int, ResolutionProfile]

    @field_validator("resolutions", mode="before")
    @classmethod
    def _int_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out = {}
        for key, prof in value.items():
            try:
                res = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"resolution key {key!r} is not an integer (pixels)") from None
            if not 0 < res <= MAX_RESOLUTION:
                raise ValueError(f"resolution {res} must be a number of pixels in 1..{MAX_RESOLUTION}")
            if res in out:
                raise ValueError(f"resolution {res} is given twice (keys {key!r} and another); keep one table")
            out[res] = prof
        if not out:
            raise ValueError("a device needs at least one [devices.NAME.resolutions.R] table")
        return out


class WorkerGroup(_Spec):
    name: str = Field(min_length=1)
    device: str
    count: int = Field(1, ge=1, le=MAX_WORKERS)
    bandwidth_gbps: float = Field(10.0, gt=0, le=MAX_GBPS)
    latency_ms: float = Field(0.05, ge=0, le=MAX_LATENCY_MS)
    slowdown: float = Field(1.0, gt=0, le=MAX_SLOWDOWN)
    # worker-local seconds per exchange, spent after the interval's compute and before its
    # push (DBSL: the mini-epoch's validation pass and model serialisation); not shared
    exchange_overhead_s: float = Field(0.0, ge=0, le=MAX_SECONDS)


MAX_STRAGGLER_RATE_PER_HOUR = 1e5  # ~28 episodes/s per worker: beyond this a worker is simply slow


class StragglerSpec(_Spec):
    rate_per_hour: float = Field(0.0, ge=0, le=MAX_STRAGGLER_RATE_PER_HOUR)
    slowdown: float = Field(2.0, gt=0, le=MAX_SLOWDOWN)
    mean_duration_s: float = Field(30.0, gt=0, le=MAX_SECONDS)
    workers: list[str] = []
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # per-iteration compute noise on every worker: each iteration's time is multiplied by
    # an independent draw of mean 1 and this coefficient of variation (gamma). 0 = none.
    jitter_cv: float = Field(0.0, ge=0, le=2.0)


@dataclass(frozen=True)
class Worker:
    """One expanded worker (a `[[workers]]` group with count > 1 gives several)."""

    index: int
    name: str
    device: str
    bandwidth_gbps: float
    latency_ms: float
    slowdown: float
    exchange_overhead_s: float = 0.0

    @property
    def latency_s(self) -> float:
        return self.latency_ms / 1e3

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return gbps_to_bytes_per_s(self.bandwidth_gbps)


class Cluster(_Spec):
    format: Literal["hybridps.cluster/1"]
    ps: PSSpec = PSSpec()
    devices: dict[str, DeviceSpec]
    workers: list[WorkerGroup] = Field(min_length=1)
    stragglers: StragglerSpec = StragglerSpec()

    @model_validator(mode="after")
    def _cross_check(self) -> "Cluster":
        total = sum(g.count for g in self.workers)
        if total > MAX_WORKERS:  # before expanding the groups into workers
            raise _FieldError("workers", f"{total:,} workers in all; at most {MAX_WORKERS:,} are supported")
        for i, group in enumerate(self.workers):
            if group.device not in self.devices:
                known = ", ".join(sorted(self.devices)) or "none"
                raise _FieldError(
                    f"workers[{i}].device",
                    f"unknown device {group.device!r}; define [devices.{group.device}] "
                    f"or use one of: {known}",
                )
        seen: dict[str, int] = {}
        for w in self.worker_list:
            if w.name in seen:
                raise _FieldError("workers", f"two workers are named {w.name!r}; names must be unique")
            seen[w.name] = 1
        for j, name in enumerate(self.stragglers.workers):
            if name not in seen:
                raise _FieldError(f"stragglers.workers[{j}]", f"unknown worker {name!r}")
        return self

    @cached_property
    def worker_list(self) -> tuple[Worker, ...]:
        out: list[Worker] = []
        for g in self.workers:
            names = [g.name] if g.count == 1 else [f"{g.name}{k}" for k in range(g.count)]
            for name in names:
                out.append(Worker(len(out), name, g.device, g.bandwidth_gbps, g.latency_ms, g.slowdown,
                                  g.exchange_overhead_s))
        return tuple(out)

    @cached_property
    def worker_by_name(self) -> dict[str, Worker]:
        return {w.name: w for w in self.worker_list}

    def profile(self, worker: str | Worker, resolution: int) -> ResolutionProfile:
        """The device profile of `worker` at `resolution` (SpecError if missing)."""
        w = worker if isinstance(worker, Worker) else self.worker_by_name[worker]
        dev = self.devices[w.device]
        try:
            return dev.resolutions[resolution]
        except KeyError:
            have = ", ".join(str(r) for r in sorted(dev.resolutions))
            raise SpecError(
                "<cluster>",
                f"devices.{w.device}.resolutions",
                f"no profile for resolution {resolution} (have {have}); add "
                f"[devices.{w.device}.resolutions.{resolution}] with a, b and max_batch",
            ) from None


# --------------------------------------------------------------------------- job


class ModelSpec(_Spec):
    name: str
    parameters: int = Field(ge=1, le=MAX_PARAMETERS)
    bytes_per_parameter: int = Field(4, ge=1, le=16)


class DataSpec(_Spec):
    name: str
    samples: int = Field(ge=1, le=MAX_SAMPLES)
    subset: bool = False  # true: train on the first `samples` of a larger training set (runtime)


class TrainSpec(_Spec):
    epochs: int = Field(ge=1, le=MAX_EPOCHS)
    resolutions: list[int] = Field(min_length=1)
    base_batch: int = Field(ge=1, le=MAX_BATCH)
    base_lr: float = Field(gt=0, le=MAX_RATE)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, le=MAX_RATE)
    # Added fields (the formats allow additions): step LR schedule.
    lr_milestones: list[int] = []  # epochs at which the LR is multiplied by lr_decay
    lr_decay: float = Field(0.1, gt=0, le=MAX_RATE)

    @field_validator("resolutions")
    @classmethod
    def _positive_res(cls, v: list[int]) -> list[int]:
        for r in v:
            if not 0 < r <= MAX_RESOLUTION:
                raise ValueError(f"resolution {r} must be a number of pixels in 1..{MAX_RESOLUTION}")
        return v

    @model_validator(mode="after")
    def _milestones(self) -> "TrainSpec":
        prev = 0
        for m in self.lr_milestones:
            if not (prev < m < self.epochs):
                raise _FieldError(
                    "train.lr_milestones",
                    f"milestones must increase strictly and lie in (0, epochs={self.epochs}); got {self.lr_milestones}",
                )
            prev = m
        return self

    def lr_at_epoch(self, epoch: float) -> float:
        lr = self.base_lr
        for m in self.lr_milestones:
            if epoch >= m:
                lr *= self.lr_decay
        return lr


CONVERGENCE_FORMAT = "hybridps.convergence/1"
COMPRESSION_EFFICIENCY_KEYS = ("topk", "randomk", "onebit", "onebit_unscaled", "dithering", "no_error_feedback")


def _finite(**kw: Any) -> Any:
    """A float field that refuses nan and inf (TOML can spell both)."""
    return Field(allow_inf_nan=False, **kw)


class ConvergenceFit(_Spec):
    """How well the fitted model reproduces the traces it was fitted on."""
    rmse_accuracy: float = _finite(ge=0, le=1)  # accuracy points as a fraction (0.02 = 2 points)
    rmse_loss: float = _finite(ge=0, le=MAX_NATS)  # nats (cross-entropy)
    eval_points: int = Field(ge=0, le=MAX_STEPS)  # eval records used
    traces: list[str] = []  # the traces fitted, as given to calibrate


class ConvergenceSpec(_Spec):
    """The fitted convergence model (docs/convergence.md): progress per update in ideal
    steps from lr, batch, noise scale, staleness, exchange and compression; accuracy and
    loss as saturating functions of cumulative progress. Written by `hybridps calibrate
    --job J --job-out OUT`."""
    format: Literal["hybridps.convergence/1"]
    lr_max: float = _finite(gt=0, le=MAX_RATE)  # LR of the largest step an infinite batch could take (momentum absorbed)
    noise_scale: float = _finite(ge=0, le=MAX_SAMPLES)  # gradient noise scale B_simple, samples
    staleness_penalty: float = _finite(ge=0, le=MAX_RATE)  # kappa_s: curvature term x (1 + kappa_s * staleness)
    drift_steps: float = _finite(gt=0, le=MAX_STEPS)  # model exchange: H local steps keep 1 / (1 + (H-1)/drift_steps)
    # a bsp phase followed by stale gradients (asp/ssp): the fraction of progress the switch keeps
    switch_progress_kept: float = _finite(default=0.0, ge=0, le=1)
    accuracy_initial: float = _finite(ge=0, le=1)
    accuracy_final: float = _finite(ge=0, le=1)  # A_inf, the plateau
    accuracy_progress: float = _finite(gt=0, le=MAX_STEPS)  # tau_A, ideal steps to 1 - 1/e of the way
    accuracy_shape: float = _finite(gt=0, le=10)  # beta_A
    loss_initial: float = _finite(gt=0, le=MAX_NATS)  # nats
    loss_final: float = _finite(ge=0, le=MAX_NATS)
    loss_progress: float = _finite(gt=0, le=MAX_STEPS)  # ideal steps
    loss_shape: float = _finite(gt=0, le=10)
    compression: dict[str, float] = {}  # kind -> progress efficiency (<= 1; negative = diverges)
    defaults: list[str] = []  # parameters that are stated defaults, not fitted
    fit: ConvergenceFit | None = None

    @field_validator("compression")
    @classmethod
    def _efficiencies(cls, v: dict[str, float]) -> dict[str, float]:
        for k, e in v.items():
            if k not in COMPRESSION_EFFICIENCY_KEYS:
                raise _FieldError(k, f"unknown compression efficiency; allowed: {', '.join(COMPRESSION_EFFICIENCY_KEYS)}")
            if not math.isfinite(e) or not -10.0 <= e <= 1.0:
                raise _FieldError(k, f"efficiency must be a finite number in [-10, 1], got {e!r}")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> "ConvergenceSpec":
        if self.accuracy_final < self.accuracy_initial:
            raise _FieldError("accuracy_final", f"must be >= accuracy_initial ({self.accuracy_initial}), "
                                                f"got {self.accuracy_final}")
        if self.loss_final > self.loss_initial:
            raise _FieldError("loss_final", f"must be <= loss_initial ({self.loss_initial}), got {self.loss_final}")
        return self


class Job(_Spec):
    format: Literal["hybridps.job/1"]
    model: ModelSpec
    data: DataSpec
    train: TrainSpec
    convergence: ConvergenceSpec | None = None  # optional: the fitted convergence model

    @model_validator(mode="after")
    def _bounded_work(self) -> "Job":
        """Refuse at load what would hang `simulate` and `plan`: each iteration is simulated."""
        iterations = self.train.epochs * math.ceil(self.data.samples / self.train.base_batch)
        if iterations > MAX_ITERATIONS:
            raise _FieldError("train.epochs", f"{self.train.epochs:,} epochs of {self.data.samples:,} samples at "
                                              f"base_batch {self.train.base_batch:,} are {iterations:,} iterations "
                                              f"(at most {MAX_ITERATIONS:,}); lower epochs or data.samples")
        return self

    @property
    def model_bytes(self) -> int:
        return self.model.parameters * self.model.bytes_per_parameter


# --------------------------------------------------------------------------- plan

CompressionKind = Literal["none", "topk", "randomk", "onebit", "dithering"]


class Compression(_Spec):
    kind: CompressionKind = "none"
    ratio: float | None = Field(None, gt=0, le=1)
    scaling: bool | None = None
    levels: int | None = Field(None, ge=1, le=2**16)
    normalize: Literal["max", "l2"] | None = None
    error_feedback: bool | None = None

    @model_validator(mode="after")
    def _fields_for_kind(self) -> "Compression":
        needs = {"topk": {"ratio"}, "randomk": {"ratio"}, "onebit": set(), "dithering": {"levels"}, "none": set()}
        allowed = {"topk": {"ratio"}, "randomk": {"ratio"}, "onebit": {"scaling"},
                   "dithering": {"levels", "normalize"}, "none": set()}
        for f in needs[self.kind]:
            if getattr(self, f) is None:
                raise _FieldError(f, f"compression kind {self.kind!r} needs {f!r}")
        for f in ("ratio", "scaling", "levels", "normalize"):
            if getattr(self, f) is not None and f not in allowed[self.kind]:
                raise _FieldError(f, f"{f!r} does not apply to compression kind {self.kind!r}")
        if self.kind == "none" and self.error_feedback:
            raise _FieldError("error_feedback", "error feedback needs a lossy compression kind")
        return self

    @property
    def lossy(self) -> bool:
        return self.kind != "none"

    @property
    def uses_error_feedback(self) -> bool:
        return self.lossy if self.error_feedback is None else self.error_feedback

    @property
    def onebit_scaling(self) -> bool:
        return True if self.scaling is None else self.scaling

    @property
    def dithering_normalize(self) -> str:
        return self.normalize or "max"


def topk_count(ratio: float, n_elements: int) -> int:
    """Elements kept by topk/randomk: round(ratio*n), at least 1, at most n."""
    return min(n_elements, max(1, round(ratio * n_elements)))


def compressed_bytes(c: Compression, n_elements: int, bytes_per_element: int = 4) -> int:
    n = n_elements
    if c.kind == "none":
        return n * bytes_per_element
    if c.kind in ("topk", "randomk"):
        return 8 * topk_count(c.ratio, n)  # int32 index + fp32 value per kept element
    if c.kind == "onebit":
        return math.ceil(n / 8) + 4  # sign bits + fp32 scale
    if c.kind == "dithering":
        bits = 1 + math.ceil(math.log2(c.levels + 1))  # sign + level index
        return math.ceil(n * bits / 8) + 4  # + fp32 norm
    raise AssertionError(c.kind)


def shard_sizes(n_elements: int, shards: int) -> list[int]:
    """Parameters per PS shard: an even split, the first `n % shards` shards one larger."""
    base, extra = divmod(n_elements, shards)
    return [base + (1 if s < extra else 0) for s in range(shards)]


def push_bytes_per_shard(c: Compression, n_elements: int, shards: int, bytes_per_element: int = 4) -> list[int]:
    """Bytes a worker pushes to each shard (compression applies per shard's slice)."""
    return [compressed_bytes(c, n, bytes_per_element) for n in shard_sizes(n_elements, shards)]


def pull_bytes_per_shard(n_elements: int, shards: int, bytes_per_element: int = 4) -> list[int]:
    """Bytes a worker pulls from each shard (pulls are never compressed)."""
    return [n * bytes_per_element for n in shard_sizes(n_elements, shards)]


class WorkerAssignment(_Spec):
    name: str
    batch: int = Field(ge=1, le=MAX_BATCH)
    samples: int = Field(ge=1, le=MAX_SAMPLES)  # this worker's share of one epoch

    @property
    def iterations_per_epoch(self) -> int:
        return math.ceil(self.samples / self.batch)


class PolicySpec(BaseModel):
    """An online policy for the phase (docs/policies.md): `kind` and that kind's
    parameters, checked by hybridps.policy.make_policy (a python target is imported)."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True, allow_inf_nan=False)
    kind: str = Field(min_length=1)

    @model_validator(mode="after")
    def _known(self) -> "PolicySpec":
        from hybridps.policy import PolicyError, make_policy

        try:
            make_policy(self.as_dict())
        except PolicyError as e:
            raise _FieldError(e.field, e.message) from None
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **(self.model_extra or {})}


class Phase(_Spec):
    epochs: int = Field(ge=1, le=MAX_EPOCHS)
    resolution: int = Field(ge=1, le=MAX_RESOLUTION)
    sync: Literal["bsp", "asp", "ssp"]
    staleness: int | None = Field(None, ge=0, le=MAX_STEPS)
    exchange: Literal["gradient", "model"]
    local_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    lr: float = Field(gt=0, le=MAX_RATE)
    compression: Compression = Compression()
    workers: list[WorkerAssignment] = Field(min_length=1)
    policy: PolicySpec | None = None

    @model_serializer(mode="wrap")
    def _without_null_policy(self, handler: Any) -> dict[str, Any]:
        """A phase without a policy dumps as before the field existed (same JSON, same digests)."""
        data = handler(self)
        if data.get("policy", 0) is None:
            del data["policy"]
        return data

    @model_validator(mode="after")
    def _sync_fields(self) -> "Phase":
        if self.sync == "ssp" and self.staleness is None:
            raise _FieldError("staleness", "sync 'ssp' needs an integer staleness bound (e.g. 3)")
        if self.sync != "ssp" and self.staleness is not None:
            raise _FieldError("staleness", f"staleness applies only to sync 'ssp' (this phase is {self.sync!r}); use null")
        seen: set[str] = set()
        dup = {w.name for w in self.workers if w.name in seen or seen.add(w.name)}  # O(n), not names.count
        if dup:
            raise _FieldError("workers", f"worker(s) listed twice: {', '.join(sorted(dup))}")
        return self

    def exchange_every(self, assignment: WorkerAssignment) -> int:
        """Iterations between two exchanges of a worker (mini-epoch = its whole share)."""
        if self.local_steps is not None:
            return self.local_steps
        return 1 if self.exchange == "gradient" else assignment.iterations_per_epoch


class Plan(_Spec):
    format: Literal["hybridps.plan/1"]
    phases: list[Phase] = Field(min_length=1)
    meta: dict[str, Any] = {}

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2) + "\n"


# --------------------------------------------------------------------------- errors


class _FieldError(ValueError):
    """Raised inside validators to name a field path relative to the model."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(message)


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    in_devices = bool(loc) and loc[0] == "devices"  # devices.X.resolutions.32 is a table key
    for part in loc:
        if isinstance(part, int) and not in_devices:
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Walk `loc` (without its last element) through the model to list allowed names."""
    from typing import get_args, get_origin

    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        else:
            args = [a for a in get_args(current) if a is not type(None)]
            origin = get_origin(current)
            if origin is dict:
                current = args[1]
            elif origin is list:
                current = args[0]
            elif args:
                current = args[0]
            else:
                return None
        while get_origin(current) is not None and get_origin(current) not in (dict, list):
            args = [a for a in get_args(current) if a is not type(None)]
            if not args:
                break
            current = args[0]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def _describe(model: type[BaseModel], err: dict[str, Any]) -> tuple[str, str]:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    path = _loc_to_path(loc)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, _FieldError):
        sub = inner.field
        joined = f"{path}.{sub}" if path and not sub.startswith("[") else f"{path}{sub}"
        return (joined if path else sub), inner.message
    given = err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, loc)
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return path, f"unknown field{hint}"
    if kind == "missing":
        return path, "missing required field"
    if kind == "literal_error":
        return path, f"expected {ctx.get('expected')}, got {given!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return path, f"{err['msg'].lower()}, got {given!r}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return path, f"{err['msg'].lower()}, got {given!r} ({type(given).__name__})"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return path, msg


def _validate(model: type[BaseModel], data: Any, file: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errs = e.errors(include_url=False)
        field, message = _describe(model, errs[0])
        if len(errs) > 1:
            message += f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})"
        raise SpecError(file, field, message) from None


# --------------------------------------------------------------------------- examples

EXAMPLE_KINDS = {"cluster": "clusters", "job": "jobs", "plan": "plans"}


def example_dir(kind: str) -> Path:
    return Path(str(resources.files("examples"))) / EXAMPLE_KINDS[kind]


def list_examples(kind: str) -> list[str]:
    suffix = ".json" if kind == "plan" else ".toml"
    return sorted(p.stem for p in example_dir(kind).glob(f"*{suffix}"))


def resolve_path(kind: str, name_or_path: str | Path) -> Path:
    """A path that exists, else the bundled example of that name."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    suffix = ".json" if kind == "plan" else ".toml"
    bundled = example_dir(kind) / f"{name_or_path}{suffix}"
    if isinstance(name_or_path, str) and "/" not in name_or_path and bundled.is_file():
        return bundled
    names = ", ".join(list_examples(kind))
    raise SpecError(str(name_or_path), "", f"no such {kind} file, nor a bundled {kind} example of that name "
                    f"(bundled: {names}; `hybridps examples` lists them)")


# --------------------------------------------------------------------------- loaders


def _read_text(path: Path) -> str:
    """A spec file's text: UTF-8, else one clear SpecError (binary, Latin-1, unreadable)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SpecError(str(path), "", f"cannot read: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(str(path), "", f"not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); "
                        f"save the file as UTF-8") from None


def _read_toml(path: Path) -> dict[str, Any]:
    text = _read_text(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(str(path), "", f"invalid TOML: {e}") from None
    except RecursionError:
        raise SpecError(str(path), "", "nested too deeply to be a spec file") from None


def json_object_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads(object_pairs_hook=...)`: a key given twice is an error, not "the last wins"."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} is given twice in one object")
        out[key] = value
    return out


def parse_json_strict(text: str) -> Any:
    """json.loads that refuses duplicate keys and NaN/Infinity (ValueError, RecursionError)."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number; use a finite number")

    return json.loads(text, object_pairs_hook=json_object_no_duplicates, parse_constant=no_constant)


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return parse_json_strict(text)
    except json.JSONDecodeError as e:
        raise SpecError(str(path), "", f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise SpecError(str(path), "", "nested too deeply to be a spec file") from None
    except ValueError as e:
        raise SpecError(str(path), "", f"invalid JSON: {e}") from None


def _check_format(data: Any, expected: str, file: str) -> None:
    if not isinstance(data, dict):
        raise SpecError(file, "", "expected a table/object at the top level")
    got = data.get("format")
    if got != expected:
        raise SpecError(file, "format", f"expected {expected!r}, got {got!r}; add format = \"{expected}\"")


def cluster_from_dict(data: Any, file: str = "<cluster>") -> Cluster:
    _check_format(data, CLUSTER_FORMAT, file)
    return _validate(Cluster, data, file)


def job_from_dict(data: Any, file: str = "<job>") -> Job:
    _check_format(data, JOB_FORMAT, file)
    return _validate(Job, data, file)


def plan_from_dict(data: Any, file: str = "<plan>", cluster: Cluster | None = None, job: Job | None = None) -> Plan:
    _check_format(data, PLAN_FORMAT, file)
    plan = _validate(Plan, data, file)
    if cluster is not None and job is not None:
        check_plan(plan, cluster, job, file)
    return plan


def load_cluster(name_or_path: str | Path) -> Cluster:
    path = resolve_path("cluster", name_or_path)
    return cluster_from_dict(_read_toml(path), str(path))


def load_job(name_or_path: str | Path) -> Job:
    path = resolve_path("job", name_or_path)
    return job_from_dict(_read_toml(path), str(path))


def load_plan(name_or_path: str | Path, cluster: Cluster | None = None, job: Job | None = None) -> Plan:
    """Load plan.json; with cluster and job, also check it against them (`check_plan`)."""
    path = resolve_path("plan", name_or_path)
    return plan_from_dict(_read_json(path), str(path), cluster, job)


def check_plan(plan: Plan, cluster: Cluster, job: Job, file: str = "<plan>") -> None:
    """Check a plan against the cluster and job it will run on (raises SpecError)."""
    n_data = job.data.samples
    for p, phase in enumerate(plan.phases):
        where = f"phases[{p}]"
        for i, wa in enumerate(phase.workers):
            w = cluster.worker_by_name.get(wa.name)
            if w is None:
                known = ", ".join(x.name for x in cluster.worker_list)
                raise SpecError(file, f"{where}.workers[{i}].name",
                                f"unknown worker {wa.name!r}; the cluster has: {known}")
            dev = cluster.devices[w.device]
            prof = dev.resolutions.get(phase.resolution)
            if prof is None:
                have = ", ".join(str(r) for r in sorted(dev.resolutions))
                raise SpecError(file, f"{where}.resolution",
                                f"worker {wa.name!r} (device {w.device!r}) has no profile for resolution "
                                f"{phase.resolution} (have {have}); add [devices.{w.device}.resolutions."
                                f"{phase.resolution}] to the cluster file or use another resolution")
            if wa.batch > prof.max_batch:
                raise SpecError(file, f"{where}.workers[{i}].batch",
                                f"batch {wa.batch} for {wa.name!r} exceeds max_batch {prof.max_batch} of device "
                                f"{w.device!r} at resolution {phase.resolution}")
        if phase.sync == "bsp" and phase.exchange == "gradient":
            iters = {wa.name: wa.iterations_per_epoch for wa in phase.workers}
            if len(set(iters.values())) > 1:
                listing = ", ".join(f"{n}={k}" for n, k in iters.items())
                raise SpecError(file, f"{where}.workers",
                                f"bsp with gradient exchange needs the same iterations per epoch "
                                f"(ceil(samples/batch)) on every worker; got {listing}")
        total = sum(wa.samples for wa in phase.workers)
        tolerance = len(phase.workers)  # rounding of per-worker shares
        if abs(total - n_data) > tolerance:
            raise SpecError(file, f"{where}.workers",
                            f"worker samples sum to {total} but the dataset has {n_data} samples per epoch "
                            f"(allowed rounding: ±{tolerance}); adjust the workers' samples")
        if phase.resolution not in job.train.resolutions:
            allowed = ", ".join(map(str, job.train.resolutions))
            raise SpecError(file, f"{where}.resolution",
                            f"resolution {phase.resolution} is not among the job's train.resolutions ({allowed})")
    _check_work(plan, file)


def _check_work(plan: Plan, file: str) -> None:
    """Refuse a plan whose iterations (all workers, all phases) would hang the simulator."""
    iterations = sum(ph.epochs * sum(wa.iterations_per_epoch for wa in ph.workers) for ph in plan.phases)
    if iterations > MAX_ITERATIONS:
        raise SpecError(file, "phases", f"{iterations:,} iterations over all workers and phases (at most "
                                        f"{MAX_ITERATIONS:,}); use fewer epochs or larger batches")
