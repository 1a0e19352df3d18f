"""Closed-form time models shared by every strategy.

A worker's compute time for `d` samples at batch `B` and resolution `r` is
`d·(a + b/B)·slowdown` (the `(a·B + b)` iteration time of docs/formats.md spread over B
samples). Communication is a closed-form estimate of what the simulator's network model
implies (max-min fair sharing of the worker and PS NICs, one latency per message, the
PS apply cost); the optimizer uses it to compare options, the simulator gives the real
answer. No straggler episodes here: they are random and the simulator draws them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybridps import exchange_cost as cost
from hybridps.errors import UserError
from hybridps.spec import Cluster, Compression, Job


@dataclass(frozen=True)
class Coeffs:
    """Per-worker arrays at one resolution, in cluster worker order (slowdown folded in)."""

    a_s: np.ndarray  # seconds per sample × slowdown
    b_s: np.ndarray  # seconds per iteration × slowdown
    max_batch: np.ndarray  # int
    names: tuple[str, ...]

    def step_s(self, batch: np.ndarray) -> np.ndarray:
        return self.a_s * batch + self.b_s

    def sample_s(self, batch: np.ndarray) -> np.ndarray:
        """Seconds per sample at `batch` (a + b/B, times slowdown)."""
        return self.a_s + self.b_s / batch


def coeffs(cluster: Cluster, resolution: int, config_file: str = "<cluster>") -> Coeffs:
    """The cluster's per-worker time coefficients at `resolution`; a missing profile is a UserError."""
    a, b, mb = [], [], []
    for w in cluster.worker_list:
        prof = cluster.devices[w.device].resolutions.get(resolution)
        if prof is None:
            have = ", ".join(str(r) for r in sorted(cluster.devices[w.device].resolutions))
            raise UserError(
                f"{config_file}: devices.{w.device}.resolutions: worker {w.name!r} has no profile for "
                f"resolution {resolution} (have {have}); add [devices.{w.device}.resolutions.{resolution}] "
                f"or drop {resolution} from the job's train.resolutions"
            )
        a.append(max(0.0, prof.a + prof.c * prof.max_batch) * w.slowdown)  # a bent profile: exact at max_batch
        b.append(prof.b * w.slowdown)
        mb.append(prof.max_batch)
    return Coeffs(np.array(a), np.array(b), np.array(mb, dtype=np.int64), tuple(w.name for w in cluster.worker_list))


def check_resolutions(cluster: Cluster, job: Job, config_file: str = "<cluster>") -> None:
    """Fail early (UserError) if any worker lacks a profile for a job resolution."""
    for r in job.train.resolutions:
        coeffs(cluster, r, config_file)


@dataclass(frozen=True)
class ExchangeCost:
    """Estimated seconds for one exchange (push then pull), per worker."""

    concurrent_s: np.ndarray  # every worker exchanging at once (a BSP round)
    alone_s: np.ndarray  # the worker exchanging with the PS otherwise idle (ASP lower bound)
    push_bytes: np.ndarray  # bytes one push puts on the wire, per worker (summed over shards)
    pull_bytes: int


def exchange_cost(cluster: Cluster, job: Job, compression: Compression) -> ExchangeCost:
    """One exchange's time under the fluid fair-share network model, without queueing detail.

    A worker sends 1/S of the bytes to each of S shards in parallel, so its own NIC carries
    the whole message; with all n workers exchanging at once each shard's NIC carries n
    slices. The transfer takes the longer of the two bottlenecks, plus one latency (worker's
    + PS's) per message; the PS apply cost (the largest shard's: all shards apply at once) is
    paid once per update (a BSP round applies once; we charge it once per round). A worker's
    `exchange_overhead_s` is its own time before each push (worker-local, not shared): added
    to its exchange; a BSP round waits for the largest. Every term comes from
    `hybridps.exchange_cost`, as in the simulator and the runtime.
    """
    workers, ps = cluster.worker_list, cluster.ps
    n = len(workers)
    push = cost.push_message(cluster, job, compression).shard_bytes
    pull = cost.pull_message(cluster, job).shard_bytes
    lat = np.array([cost.latency_s(w, ps) for w in workers])
    apply_s = cost.update_apply_s(ps, job.model.parameters)
    overhead_s = np.array([w.exchange_overhead_s for w in workers])
    alone = (np.array([cost.transfer_s(push, w, ps) + cost.transfer_s(pull, w, ps) for w in workers])
             + 2 * lat + apply_s + overhead_s)
    # all at once: each shard NIC carries n slices; each worker NIC its own message
    push_all = np.array([cost.transfer_s(push, w, ps, flows_per_shard=n) for w in workers])
    pull_all = np.array([cost.transfer_s(pull, w, ps, flows_per_shard=n) for w in workers])
    concurrent = np.full(n, push_all.max() + pull_all.max() + 2 * lat.max() + apply_s + overhead_s.max())
    return ExchangeCost(concurrent, alone, np.full(n, sum(push)), sum(pull))


def eval_overhead_s(cluster: Cluster, phase_epochs: list[int], eval_every: int = 1) -> float:
    """PS evaluation time of a plan whose phases have these epoch counts: `ps.eval_s` for the
    initial model and each epoch end inside a phase (docs/semantics.md; the phase-end
    evaluation is in `phase_overhead_s`). The runtime evaluates in-phase only with one shard."""
    if cluster.ps.eval_s == 0 or eval_every <= 0:
        return 0.0
    done, count = 0, 1
    for epochs in (phase_epochs if cluster.ps.count == 1 else []):
        count += sum(1 for e in range(done + 1, done + epochs) if e % eval_every == 0)
        done += epochs
    return count * cluster.ps.eval_s


def ps_capacity_bytes_per_s(cluster: Cluster) -> float:
    """Aggregate PS bandwidth per direction (all shards)."""
    return cluster.ps.total_bandwidth_bytes_per_s
