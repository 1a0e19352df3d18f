"""Resolution schedules: which resolution and learning rate each phase of a plan uses.

A *layout* is a list of `Stage(start_epoch, epochs, resolution, lr)`; strategies then
give each stage its workers, sync mode and compression. The LR of a stage is the job's
step schedule at the stage's first epoch (`train.lr_at_epoch`).

Cyclic progressive learning: every LR stage (bounded by `train.lr_milestones`) is split
into `substages` equal parts (default one per resolution) whose resolution rises from
the lowest to the highest. CIFAR-100 (140 epochs, milestones 80, 120, resolutions 24, 32)
gives ends at 40, 80, 100, 120, 130, 140; ImageNet (105 epochs, milestones 60, 90,
resolutions 160, 224, 288) gives 20, 40, 60, 70, 80, 90, 95, 100, 105. Same rule, no table.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridps.errors import UserError
from hybridps.spec import Job


@dataclass(frozen=True)
class Stage:
    start_epoch: int
    epochs: int
    resolution: int
    lr: float

    @property
    def end_epoch(self) -> int:
        return self.start_epoch + self.epochs


def _lr(job: Job, epoch: int) -> float:
    """The job's LR at `epoch`, rid of float noise from repeated decay (0.1·0.1 → 0.01)."""
    return float(f"{job.train.lr_at_epoch(epoch):.12g}")


def lr_stages(job: Job) -> list[tuple[int, int]]:
    """(start, end) epochs of each constant-LR stage."""
    bounds = [0, *job.train.lr_milestones, job.train.epochs]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def _split(epochs: int, parts: int) -> list[int]:
    """`epochs` into `parts` near-equal integer parts; the later (higher-resolution) parts
    take the remainder, and parts that would be empty are dropped from the front."""
    parts = min(parts, epochs)
    base, extra = divmod(epochs, parts)
    return [base + (1 if k >= parts - extra else 0) for k in range(parts)]


def _res_index(j: int, k: int, n_res: int) -> int:
    """Resolution of sub-stage j of k, rising from the lowest to the highest: with k <= n_res
    an evenly spread subset that always ends at the highest; with more sub-stages than
    resolutions each resolution covers consecutive sub-stages."""
    if k <= n_res:
        return n_res - 1 if k == 1 else round(j * (n_res - 1) / (k - 1))
    return (j * n_res) // k


def cyclic_layout(job: Job, substages: int | None = None) -> list[Stage]:
    """Cyclic progressive learning: resolution low → high inside every LR stage."""
    res = sorted(set(job.train.resolutions))
    k = len(res) if substages is None else substages
    if k < 1:
        raise UserError(f"--substages must be at least 1, got {k}")
    out: list[Stage] = []
    for start, end in lr_stages(job):
        lengths = _split(end - start, k)
        dropped = k - len(lengths)  # a stage shorter than k epochs keeps the high resolutions
        e = start
        for j, length in enumerate(lengths):
            r = res[_res_index(j + dropped, k, len(res))]
            out.append(Stage(e, length, r, _lr(job, e)))
            e += length
    return merge_equal(out)


def fixed_layout(job: Job, resolution: int | None = None) -> list[Stage]:
    """One resolution (default the highest) for the whole run: one stage per LR stage."""
    r = max(job.train.resolutions) if resolution is None else resolution
    if r not in job.train.resolutions:
        raise UserError(f"resolution {r} is not among the job's train.resolutions {job.train.resolutions}")
    return [Stage(s, e - s, r, _lr(job, s)) for s, e in lr_stages(job)]


def merge_equal(stages: list[Stage]) -> list[Stage]:
    """Join neighbours with the same resolution and LR (one resolution ⇒ no needless phases)."""
    out: list[Stage] = []
    for s in stages:
        if out and out[-1].resolution == s.resolution and out[-1].lr == s.lr:
            p = out[-1]
            out[-1] = Stage(p.start_epoch, p.epochs + s.epochs, p.resolution, p.lr)
        else:
            out.append(s)
    return out


def split_at(stages: list[Stage], epoch: int) -> tuple[list[Stage], list[Stage]]:
    """Stages before and after `epoch` (a stage crossing it is cut in two)."""
    before, after = [], []
    for s in stages:
        if s.end_epoch <= epoch:
            before.append(s)
        elif s.start_epoch >= epoch:
            after.append(s)
        else:
            before.append(Stage(s.start_epoch, epoch - s.start_epoch, s.resolution, s.lr))
            after.append(Stage(epoch, s.end_epoch - epoch, s.resolution, s.lr))
    return before, after


LAYOUTS = ("fixed", "cyclic")


def layout(job: Job, name: str, substages: int | None = None) -> list[Stage]:
    if name == "fixed":
        return fixed_layout(job)
    if name == "cyclic":
        return cyclic_layout(job, substages)
    raise UserError(f"unknown resolution schedule {name!r}; use one of: {', '.join(LAYOUTS)}")
