"""Dual batch size learning (DBSL), the journal version's closed form, generalised to
heterogeneous workers.

Homogeneous rules (N samples, n workers, s small ones, extra-time ratio t, B_L = the
device's max_batch at the resolution):

- baseline time per worker `T0 = (a + b/B_L)·N/n`, budget `T1 = t·T0`;
- large workers' samples `d_L = round(t·N/n)` (s = 0: `round(N/n)`);
- small workers' samples `d_S = round((N − (n−s)·d_L)/s)` (s = n, every worker small:
  `d_S = round(N/n)`, the baseline's split, each on the smaller batch that fills t·T0);
- small batch `B_S = round(b / (T1/d_S − a))`; sync asp, model exchange, one exchange per
  worker-epoch (mini-epoch); the PS merge weight of a worker is d_i / d_L.

Heterogeneous generalisation (reduces to the above when all workers are alike): with
`c_i = (a_i + b_i/B_L,i)·slowdown_i` seconds per sample at the large batch, the baseline
splits data so that all finish together, `T0 = N / Σ 1/c_i`; a large worker gets
`d_i = round(t·T0/c_i)`; the rest `R = N − Σ_large d_i` goes to the small workers in
proportion to 1/c_i, and each small worker's batch is the one that makes its time
`d_i·(a_i + b_i/B_i)·slowdown_i` equal the common budget `T1 = t·T0`. The small workers
are the s fastest at the large batch (ties: cluster order, so gtx0 on gtx1080x4).

For t >= 1 a small worker's budget per sample is T1/d_i >= t·c_i > a_i, so B_S is
positive; what can fail is B_S < 1 (too few samples left for the small workers: t too
large) or no samples left at all. Both are UserErrors naming the constraint.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from hybridps.errors import UserError
from hybridps.spec import Cluster, Job, WorkerAssignment
from solver.timemodel import Coeffs, coeffs


@dataclass(frozen=True)
class DbslAllocation:
    resolution: int
    names: tuple[str, ...]  # cluster order
    batches: tuple[int, ...]
    shares: tuple[int, ...]  # samples per worker-epoch
    small: tuple[str, ...]
    budget_s: float  # T1: every worker's compute time per epoch (closed form)
    baseline_s: float  # T0

    @cached_property
    def workers(self) -> tuple[WorkerAssignment, ...]:
        """Built on first use: the planner estimates hundreds of variants from the plain tuples."""
        return tuple(WorkerAssignment(name=n, batch=b, samples=d) for n, b, d in zip(self.names, self.batches, self.shares))


def speed_order(cluster: Cluster, resolution: int) -> list[int]:
    """Worker indices, fastest first at their large batch (stable: cluster order breaks ties)."""
    c = coeffs(cluster, resolution)
    per_sample = c.sample_s(c.max_batch.astype(float))
    return sorted(range(len(per_sample)), key=lambda i: (round(per_sample[i], 15), i))


def small_workers(cluster: Cluster, resolution: int, s: int, order: list[int] | None = None) -> list[int]:
    """Indices of the s fastest workers at their large batch; `order`: speed_order's, if known."""
    return sorted((order if order is not None else speed_order(cluster, resolution))[:s])


def _small_batches(c: Coeffs, is_small: np.ndarray, shares: np.ndarray, T1: float, batch: np.ndarray,
                   samples: np.ndarray) -> bool:
    """The small workers' samples and batches, vectorised (the same values as the scalar
    loop of dbsl_allocation); False, and nothing set, if any worker is infeasible."""
    idx = np.flatnonzero(is_small)
    d = np.rint(shares)
    if (d < 1).any():
        return False
    denom = T1 / d - c.a_s[idx]
    if (denom <= 0).any():
        return False
    b_small = np.rint(c.b_s[idx] / denom)
    if (b_small < 1).any():
        return False
    samples[idx] = d
    batch[idx] = np.minimum(b_small.astype(np.int64), c.max_batch[idx])
    return True


def dbsl_allocation(cluster: Cluster, job: Job, resolution: int, t: float, s: int,
                    small: list[int] | None = None, c: Coeffs | None = None) -> DbslAllocation:
    """Per-worker batch and samples for one resolution (raises UserError naming the binding
    constraint); `c`: the cluster's coefficients at `resolution`, if already computed."""
    n = len(cluster.worker_list)
    N = job.data.samples
    if not 0 <= s <= n:
        raise UserError(f"--small-workers {s}: must be between 0 and {n} (the cluster has {n} workers)")
    if s > 0 and t < 1:
        raise UserError(f"--time-ratio {t}: with {s} small worker(s) the extra-time ratio t must be >= 1 "
                        f"(small batches are slower per sample; t < 1 gives them less time than the baseline)")
    if t <= 0:
        raise UserError(f"--time-ratio {t}: must be positive")
    c = c if c is not None else coeffs(cluster, resolution)
    B_L = c.max_batch.astype(float)
    per_sample = c.sample_s(B_L)  # c_i
    T0 = N / np.sum(1.0 / per_sample)
    T1 = t * T0
    idx_small = small if small is not None else small_workers(cluster, resolution, s)
    is_small = np.zeros(n, dtype=bool)
    is_small[idx_small] = True
    batch = c.max_batch.copy()
    samples = np.zeros(n, dtype=np.int64)
    ratio = t if s > 0 else 1.0
    large = np.flatnonzero(~is_small)
    samples[large] = np.rint(ratio * T0 / per_sample[large])  # round half to even, as round() does
    for i in large[samples[large] < 1][:1]:
        if samples[i] < 1:
            raise UserError(
                f"dbsl: worker {c.names[i]!r} is so slow at resolution {resolution} ({per_sample[i] * 1e3:.3g} ms "
                f"per sample against {T0:.3g} s per epoch for the cluster) that its share rounds to 0 samples; "
                f"remove it from the cluster or check its slowdown")
    if s > 0:
        rest = N - int(samples[~is_small].sum())
        inv = 1.0 / per_sample[is_small]
        shares = rest * inv / inv.sum()
        if _small_batches(c, is_small, shares, T1, batch, samples):
            shares = []  # all feasible, set; else the loop below raises for the first bad worker
        for i, share in zip(np.flatnonzero(is_small), shares):
            d = round(float(share))
            name = c.names[i]
            if d < 1:
                raise UserError(
                    f"--time-ratio {t}: the large workers already take all {N} samples (each gets "
                    f"round(t·T0/c) samples), leaving small worker {name!r} {d}; lower --time-ratio or "
                    f"--small-workers")
            samples[i] = d
            denom = T1 / d - c.a_s[i]
            b_small = round(c.b_s[i] / denom) if denom > 0 else 0
            if denom <= 0:
                raise UserError(
                    f"--time-ratio {t}: no small batch meets the time budget for {name!r} at resolution "
                    f"{resolution}: B_S = b/(T1/d_S - a) is negative ({name!r} cannot compute d_S = {d} samples "
                    f"within T1 = {T1:.3f} s at any batch); raise --time-ratio or --small-workers")
            if b_small < 1:
                raise UserError(
                    f"--time-ratio {t}: no small batch meets the time budget for {name!r} at resolution "
                    f"{resolution}: B_S = b/(T1/d_S - a) = {c.b_s[i] / denom:.3f} (< 1) with d_S = {d} samples "
                    f"and budget T1 = {T1:.3f} s; lower --time-ratio or --small-workers so that the small "
                    f"workers get more samples")
            batch[i] = min(int(b_small), int(c.max_batch[i]))
    return DbslAllocation(resolution, tuple(c.names), tuple(batch.tolist()), tuple(samples.tolist()),
                          tuple(c.names[i] for i in idx_small), float(T1), float(T0))
