"""What every process of a run knows: the specs, the options, its role, the worker
order, the shard split and the time base. Built identically in every rank."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from hybridps.errors import UserError
from hybridps.spec import Cluster, Job, Plan, shard_sizes


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    model: str | None = None  # override job.model.name
    data: str | None = None  # override job.data.name
    data_dir: str | None = None
    seed: int | None = None  # None: cluster.stragglers.seed for stragglers, 0 for data/model
    eval_every: int = 1  # epochs between evaluations (0: only at phase ends)
    eval_samples: int | None = None  # None or 0: the whole held-out split
    checkpoint_every_s: float = 300.0
    worker_timeout_s: float = 60.0
    on_worker_loss: str = "stop"  # or "continue"
    resume: bool = False
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 1
    emulate: bool = True  # enforce slowdown, bandwidth and stragglers
    bucket_mb: float = 25.0  # bucketed gradient pushes during backward (runtime/buckets.py); 0: none
    compute_time: str = "measured"  # "model": each iteration lasts the cluster's t(B), times the same factors
    launch_wall_s: float = field(default_factory=time.time)  # when the run started (runtime.launch.launch_wall_s)


@dataclass
class RunContext:
    cluster: Cluster
    job: Job
    plan: Plan
    opts: RunOptions
    rank: int
    world_size: int
    workers: list[str] = field(default_factory=list)  # worker names by position
    t0: float = 0.0  # time.perf_counter() when every process was ready
    time_offset_s: float = 0.0  # elapsed run time before a resume
    torch_ready_s: float = 0.0  # seconds from the launch until this rank had imported torch

    @property
    def shards(self) -> int:
        return self.cluster.ps.count

    @property
    def is_ps(self) -> bool:
        return self.rank < self.shards

    @property
    def data_seed(self) -> int:
        return 0 if self.opts.seed is None else self.opts.seed

    def worker_rank(self, position: int) -> int:
        return self.shards + position

    def since_launch_s(self) -> float:
        """Wall-clock seconds since the run started (its launcher's start under --local)."""
        return time.time() - self.opts.launch_wall_s

    def now(self) -> float:
        """Seconds since time zero (all processes ready), continuing across resumes."""
        return time.perf_counter() - self.t0 + self.time_offset_s

    @property
    def model_name(self) -> str:
        return canonical_model_name(self.opts.model or self.job.model.name)

    @property
    def data_name(self) -> str:
        return self.opts.data or self.job.data.name


def canonical_model_name(name: str) -> str:
    return {"resnet-18": "resnet18", "resnet_18": "resnet18"}.get(name.lower(), name)


def num_classes(data_name: str, samples: int, seed: int, data_dir: str | None) -> int:
    """The number of classes of a data set, without loading it where the name says."""
    if data_name.startswith("synthetic"):
        return int(data_name.split(":", 1)[1]) if ":" in data_name else 10
    if data_name == "digits":
        return 10
    if data_name.startswith("cifar100"):
        return 100
    if data_name.startswith("cifar10"):
        return 10
    from runtime.data import load_dataset

    return load_dataset(data_name, samples, seed, data_dir).num_classes


def worker_order(cluster: Cluster, plan: Plan) -> list[str]:
    """Workers in the order of the plan's first phase, then any that join later."""
    names: list[str] = []
    for phase in plan.phases:
        for wa in phase.workers:
            if wa.name not in names:
                names.append(wa.name)
    return names


def expected_world_size(cluster: Cluster, plan: Plan) -> int:
    return cluster.ps.count + len(worker_order(cluster, plan))


def phase_lr(phase) -> float:
    """The learning rate of a plan phase: the plan's `lr`, used as is. The solver already
    folds the job's `lr_milestones` step decay into each phase's lr (solver/schedule.py), so the
    runtime applies no decay of its own."""
    return phase.lr


def shard_bounds(n_params: int, shards: int) -> list[tuple[int, int]]:
    out, start = [], 0
    for size in shard_sizes(n_params, shards):
        out.append((start, start + size))
        start += size
    return out


def make_context(cluster: Cluster, job: Job, plan: Plan, opts: RunOptions, rank: int, world_size: int) -> RunContext:
    order = worker_order(cluster, plan)
    need = cluster.ps.count + len(order)
    if world_size != need:
        raise UserError(f"world size {world_size} does not match the run: {cluster.ps.count} PS shard(s) "
                        f"(cluster ps.count) + {len(order)} workers (plan) = {need} processes; "
                        f"start torchrun with --nproc-per-node/--nnodes adding up to {need}")
    return RunContext(cluster, job, plan, opts, rank, world_size, order)
