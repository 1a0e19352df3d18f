"""The parameter server: receives pushes over the push network, applies updates one at a
time in arrival order (FIFO), and sends the new parameters back over the pull network.

With S shards every shard receives its slice of every push at the same moment and
applies it in the same time (within one parameter), so the shards move in lock-step;
the server models them as one FIFO whose apply time is the largest shard's and whose
NIC is the S shard NICs together (docs/simulator.md says why this is exact).

bsp: pushes of a round are collected; when the last one arrives, one combined update is
applied and every worker pulls. asp/ssp: each push is applied on arrival and that
worker pulls at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import simpy
from simpy.core import NORMAL

from sim.network import make_link
from sim.predictor import message_latency_s, nic_caps_bytes_per_s

if TYPE_CHECKING:
    from sim.engine import Simulation


class Arrival(simpy.Event):
    """An event that fires at a known future time (what `Timeout` does), created before
    that time is known: the worker waits on it from its push until its pull arrives."""

    def succeed_at(self, t_s: float) -> None:
        self._ok = True
        self._value = None
        self.env.schedule(self, NORMAL, t_s - self.env.now)


class ParameterServer:
    def __init__(self, sim: "Simulation"):
        self.sim = sim
        self.env = sim.env
        n = len(sim.cluster.worker_list)
        ps_cap, worker_caps = nic_caps_bytes_per_s(sim.cluster)
        self.push_link = make_link(self.env, ps_cap, worker_caps, self._on_push_delivered, sim.fast)
        self.pull_link = make_link(self.env, ps_cap, worker_caps, self._on_pull_delivered, sim.fast)
        self.latency_s = message_latency_s(sim.cluster)
        self.version = 0  # global model version: one per applied asp/ssp push, one per bsp round
        self.busy_until_s = 0.0  # FIFO apply queue: when the server is free again
        self.read_version = [0] * n  # version each worker last pulled
        self.push_samples = [0] * n  # samples carried by each worker's in-flight push
        self.done_event: list[simpy.Event | None] = [None] * n
        self.round: list[int] = []  # bsp: workers whose push has arrived this round
        self.round_ready_s = 0.0  # bsp: when the round's last push arrives
        self.round_size = 0
        self.bsp = False
        self.costs = None
        self.phase = 0

    def start_phase(self, phase_index: int, costs, sync: str) -> None:
        self.phase = phase_index
        self.costs = costs
        self.bsp = sync == "bsp"
        self.round = []
        self.round_ready_s = 0.0
        self.round_size = len(costs.workers)
        # every worker starts a phase from the current parameters: a phase start counts as a pull
        self.read_version = [self.version] * len(self.read_version)

    # worker side ------------------------------------------------------------------
    def exchange(self, worker: int, samples: int) -> simpy.Event:
        """Push `samples` worth of work, then pull; the event fires when the pull is in."""
        ev = Arrival(self.env)
        self.done_event[worker] = ev
        self.push_samples[worker] = samples
        self.push_link.send(worker, self.costs.push_wire_bytes, self.latency_s[worker])
        return ev

    # server side ------------------------------------------------------------------
    def _on_push_delivered(self, worker: int, start_s: float, end_s: float) -> None:
        """The push's last byte has left (now); it arrives at the server at `end_s`."""
        sim = self.sim
        c = sim.counters
        c.comm_s[worker] += end_s - start_s
        c.bytes_pushed[worker] += self.costs.push_bytes
        if sim.recorder is not None:
            sim.recorder.add({"kind": "push", "worker": sim.names[worker], "phase": self.phase, "start_s": start_s,
                              "end_s": end_s, "bytes": self.costs.push_bytes,
                              "samples": self.push_samples[worker]})
        if self.bsp:
            self.round.append(worker)
            if end_s > self.round_ready_s:
                self.round_ready_s = end_s
            if len(self.round) == self.round_size:
                workers, self.round = self.round, []
                ready_s, self.round_ready_s = self.round_ready_s, 0.0
                self._apply(self._apply_round, workers, ready_s)
        else:
            self._apply(self._apply_one, worker, end_s)

    def _apply(self, fn, arg, arrival_s: float) -> None:
        """Run `fn(arg)` when the server has applied this update (FIFO, one at a time).

        The queue is ordered by when pushes finish sending; with equal latencies that is
        their arrival order."""
        now = self.env.now
        start = arrival_s if arrival_s > self.busy_until_s else self.busy_until_s
        end = start + self.costs.apply_s
        self.busy_until_s = end
        if end == now:
            fn(arg)
        else:
            self.env.timeout(end - now).callbacks.append(lambda _ev: fn(arg))

    def _apply_one(self, worker: int) -> None:
        sim = self.sim
        self.version += 1
        staleness = self.version - 1 - self.read_version[worker]
        sim.counters.add_staleness(staleness)
        if sim.counters.update_log is not None:
            sim.counters.update_log.add(self.env.now, self.phase, worker, staleness, self.push_samples[worker])
        if sim.recorder is not None:
            sim.recorder.add({"kind": "update", "worker": sim.names[worker], "phase": self.phase,
                              "t_s": self.env.now, "version": self.version, "staleness": staleness})
        eval_s = sim.samples_applied(self.push_samples[worker])
        self.read_version[worker] = self.version
        if eval_s > 0:  # an evaluation at this epoch end: the pull waits for it
            self.env.timeout(eval_s).callbacks.append(
                lambda _ev: self.pull_link.send(worker, self.costs.pull_wire_bytes, self.latency_s[worker]))
        else:
            self.pull_link.send(worker, self.costs.pull_wire_bytes, self.latency_s[worker])

    def _apply_round(self, workers: list[int]) -> None:
        sim = self.sim
        self.version += 1
        sim.counters.add_staleness(0, len(workers))
        if sim.counters.update_log is not None:
            sim.counters.update_log.add(self.env.now, self.phase, -1, 0, sum(self.push_samples[w] for w in workers))
        if sim.recorder is not None:
            for w in workers:
                sim.recorder.add({"kind": "update", "worker": sim.names[w], "phase": self.phase,
                                  "t_s": self.env.now, "version": self.version, "staleness": 0})
        eval_s = sim.samples_applied(sum(self.push_samples[w] for w in workers))
        for w in workers:
            self.read_version[w] = self.version
        if eval_s > 0:  # an evaluation at this epoch end: the pulls wait for it
            self.env.timeout(eval_s).callbacks.append(
                lambda _ev: self.pull_link.send_many(workers, self.costs.pull_wire_bytes, self.latency_s))
        else:
            self.pull_link.send_many(workers, self.costs.pull_wire_bytes, self.latency_s)

    def _on_pull_delivered(self, worker: int, start_s: float, end_s: float) -> None:
        """The pull's last byte has left the server; the worker has it at `end_s`."""
        sim = self.sim
        c = sim.counters
        c.comm_s[worker] += end_s - start_s
        c.bytes_pulled[worker] += self.costs.pull_bytes
        c.exchanges += 1
        if sim.recorder is not None:
            sim.recorder.add({"kind": "pull", "worker": sim.names[worker], "phase": self.phase, "start_s": start_s,
                              "end_s": end_s, "bytes": self.costs.pull_bytes})
        self.done_event[worker].succeed_at(end_s)
