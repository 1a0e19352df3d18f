"""The execution-time predictor: how long compute, transfers and PS applies take and how
many bytes go on the wire, for one phase of a plan. Plain numbers, computed once per
phase, so the event loop only does arithmetic."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from hybridps import exchange_cost
from hybridps.semantics import ends_on_mini_epochs
from hybridps.spec import Cluster, Job, Phase


@dataclass(frozen=True)
class WorkerPhase:
    """One worker's fixed numbers in one phase (see docs/semantics.md)."""

    index: int  # global worker index
    name: str
    batch: int
    share: int  # samples per worker-epoch (d_w)
    iters_per_epoch: int  # k_w = ceil(d_w / B_w)
    last_batch: int  # samples in the last iteration of a worker-epoch
    exchange_every: int  # E_w
    a_s: float  # seconds per sample, times the persistent slowdown (with c: the chord through B and L)
    b_s: float  # seconds per iteration, times the persistent slowdown
    exchange_overhead_s: float = 0.0  # worker-local, between an interval's compute and its push
    c_s: float = 0.0  # the profile's bend c, times the persistent slowdown (a_s, b_s hold its chord)
    every_epoch: bool = False  # exchanges once per worker-epoch (DBSL's mini-epoch rule)

    def iteration_s(self, samples: int) -> float:
        """Compute time of one iteration before transient stragglers."""
        return self.a_s * samples + self.b_s

    def rebatched(self, batch: int, share: int) -> "WorkerPhase":
        """The same worker at a policy's new batch and share (docs/semantics.md,
        "Policies"): its iterations per epoch, last batch, chord and exchange interval."""
        k = math.ceil(share / batch)
        last = share - (k - 1) * batch
        a0 = self.a_s - self.c_s * (self.batch + self.last_batch)  # the profile's own a, b (times slowdown)
        b0 = self.b_s + self.c_s * self.batch * self.last_batch
        return replace(self, batch=batch, share=share, iters_per_epoch=k, last_batch=last,
                       exchange_every=k if self.every_epoch else self.exchange_every,
                       a_s=a0 + self.c_s * (batch + last), b_s=b0 - self.c_s * batch * last)


@dataclass(frozen=True)
class PhaseCosts:
    workers: tuple[WorkerPhase, ...]
    target_samples: int  # epochs x dataset size, summed over workers
    push_bytes: int  # actual bytes one push puts on the wire, all shards together
    pull_bytes: int
    push_wire_bytes: float  # what the aggregated PS link carries (S x largest slice)
    pull_wire_bytes: float
    apply_s: float  # one update on every shard: the largest shard's (hybridps.exchange_cost)


def phase_costs(cluster: Cluster, job: Job, phase: Phase) -> PhaseCosts:
    push = exchange_cost.push_message(cluster, job, phase.compression)
    pull = exchange_cost.pull_message(cluster, job)
    workers = []
    for wa in phase.workers:
        w = cluster.worker_by_name[wa.name]
        prof = cluster.profile(w, phase.resolution)
        k = math.ceil(wa.samples / wa.batch)
        last = wa.samples - (k - 1) * wa.batch
        # a phase only ever sees two sizes, B and the last partial batch L: the line through
        # t(B) and t(L) is exact for both, so a bent profile (c != 0) costs the loop nothing
        a_s = (prof.a + prof.c * (wa.batch + last)) * w.slowdown
        b_s = (prof.b - prof.c * wa.batch * last) * w.slowdown
        workers.append(WorkerPhase(
            index=w.index, name=w.name, batch=wa.batch, share=wa.samples, iters_per_epoch=k,
            last_batch=last, exchange_every=phase.exchange_every(wa),
            a_s=a_s, b_s=b_s, exchange_overhead_s=w.exchange_overhead_s, c_s=prof.c * w.slowdown,
            every_epoch=ends_on_mini_epochs(phase)))
    return PhaseCosts(
        workers=tuple(workers),
        target_samples=phase.epochs * job.data.samples,
        push_bytes=push.total_bytes, pull_bytes=pull.total_bytes,
        push_wire_bytes=push.wire_bytes, pull_wire_bytes=pull.wire_bytes,
        apply_s=exchange_cost.update_apply_s(cluster.ps, job.model.parameters),
    )


def message_latency_s(cluster: Cluster) -> list[float]:
    """One-way latency of a message between each worker and the PS: both NICs' latencies."""
    return [exchange_cost.latency_s(w, cluster.ps) for w in cluster.worker_list]


def nic_caps_bytes_per_s(cluster: Cluster) -> tuple[float, list[float]]:
    """(aggregate PS capacity over all shards, each worker's NIC capacity), per direction."""
    return exchange_cost.nic_caps_bytes_per_s(cluster)
