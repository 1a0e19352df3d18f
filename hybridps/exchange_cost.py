"""The cost of one exchange with the parameter server, written once (docs/semantics.md,
"Parameter-server shards"): bytes per shard slice, one message's latency, the transfer
through the worker's NIC and the shards' NICs, and a shard's apply cost.

The simulator's predictor, the solver's closed-form estimate and the runtime's emulation
all call these functions, so the three agree by construction. Plain numbers only: no
SimPy, no numpy, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridps.spec import Cluster, Compression, Job, PSSpec, Worker, pull_bytes_per_shard, push_bytes_per_shard, shard_sizes


@dataclass(frozen=True)
class Message:
    """One push or pull: the bytes it sends to each shard (shard order)."""

    shard_bytes: tuple[int, ...]

    @property
    def total_bytes(self) -> int:
        """What the worker's NIC carries: every slice."""
        return sum(self.shard_bytes)

    @property
    def largest_bytes(self) -> int:
        """The largest slice: what the busiest shard's NIC carries."""
        return max(self.shard_bytes)

    @property
    def wire_bytes(self) -> float:
        """What the S shard NICs taken as one link carry when the shards move in lock-step
        (S × the largest slice: the message ends when its largest slice does)."""
        return float(len(self.shard_bytes) * self.largest_bytes)


def push_message(cluster: Cluster, job: Job, compression: Compression) -> Message:
    """A push: each shard's slice, compressed per slice."""
    return Message(tuple(push_bytes_per_shard(compression, job.model.parameters, cluster.ps.count,
                                              job.model.bytes_per_parameter)))


def pull_message(cluster: Cluster, job: Job) -> Message:
    """A pull: each shard's slice, never compressed."""
    return Message(tuple(pull_bytes_per_shard(job.model.parameters, cluster.ps.count, job.model.bytes_per_parameter)))


def latency_s(worker: Worker, ps: PSSpec) -> float:
    """One message's one-way latency: its path crosses the worker's NIC and the PS's."""
    return worker.latency_s + ps.latency_s


def transfer_s(shard_bytes: list[int] | tuple[int, ...], worker: Worker, ps: PSSpec, flows_per_shard: int = 1) -> float:
    """The fluid transfer time of one message, latency excluded: the slices go to the shards
    in parallel, the worker's NIC carries them all, each shard's NIC carries its slice and
    shares its bandwidth equally with `flows_per_shard` - 1 other identical messages."""
    return max(sum(shard_bytes) / worker.bandwidth_bytes_per_s,
               flows_per_shard * max(shard_bytes) / ps.bandwidth_bytes_per_s)


def message_s(shard_bytes: list[int] | tuple[int, ...], worker: Worker, ps: PSSpec, flows_per_shard: int = 1) -> float:
    """One push or pull from start to arrival: transfer plus one latency."""
    return transfer_s(shard_bytes, worker, ps, flows_per_shard) + latency_s(worker, ps)


def shard_apply_s(ps: PSSpec, shard_parameters: int) -> float:
    """One update applied on one shard: `apply_s_per_mparam × shard_parameters / 1e6`."""
    return ps.apply_s_per_mparam * shard_parameters / 1e6


def update_apply_s(ps: PSSpec, parameters: int) -> float:
    """One update applied on every shard at once (they start together): the exchange waits
    for the last shard, the largest one (`hybridps.spec.shard_sizes`: the first)."""
    return shard_apply_s(ps, shard_sizes(parameters, ps.count)[0])


def nic_caps_bytes_per_s(cluster: Cluster) -> tuple[float, list[float]]:
    """(all shards' NICs together, each worker's NIC), per direction."""
    return cluster.ps.total_bandwidth_bytes_per_s, [w.bandwidth_bytes_per_s for w in cluster.worker_list]
