"""The parameter server: receives pushes over the push network, applies updates one at a
time in arrival order (FIFO), and sends the new parameters back over the pull network.

With S shards every shard receives its slice of every push at the same moment and
applies it in the same time (within one parameter), so the shards move in lock-step;
the server models them as one FIFO whose apply time is the largest shard's and whose
NIC is the S shard NICs together (docs/simulator.md says why this is exact).

bsp: pushes of a round are collected; when the last one arrives, one combined update is
applied and every worker pulls. asp/ssp: each push is applied on arrival and that
worker pulls at once. Which pushes make a round is `hybridps.semantics.Barrier`'s rule.
A bsp round that later rounds would repeat exactly lets the server skip them at its
apply (`_skip_rounds`; when, sim/fastforward.py): it counts them at once and sends the
pulls of the last one when it would have.

A phase with an online policy (hybridps/policy.py) has it consulted at each update the PS
is about to apply (a round once complete, a push applied on its own); the PS feeds its
observer plain numbers as pushes arrive, as the runtime's PS would, and carries out the
actions through the Barrier; a rebalance reaches each worker with its pull (`assigned`,
which the worker takes up at its next worker-epoch). Steady rounds are skipped under a
policy that declares `decides_on_windows`, asked at the skipped rounds where its windows
change (`_policy_rounds`).
"""

from __future__ import annotations

from typing import Any, Callable

import simpy

from hybridps.policy import Observer, Policy, consult
from hybridps.semantics import Barrier, Ledger, Rebalance, VersionClock
from hybridps.spec import Cluster
from sim.events import Arrival, Call, call_later
from sim.fastforward import FastForward
from sim.metrics import Counters
from sim.network import make_link
from sim.predictor import message_latency_s, nic_caps_bytes_per_s


class ParameterServer:
    """The PS and its two network directions; it counts applied work in the ledger and
    versions in its clock (hybridps/semantics.py)."""

    def __init__(self, env: simpy.Environment, cluster: Cluster, ledger: Ledger, counters: Counters,
                 recorder: Any, names: list[str], fast: bool = True, eval_in_phase_s: float = 0.0,
                 fast_forward: FastForward | None = None):
        self.env = env
        self.ledger, self.counters, self.recorder, self.names = ledger, counters, recorder, names
        ps_cap, worker_caps = nic_caps_bytes_per_s(cluster)
        self.push_link = make_link(env, ps_cap, worker_caps, self._on_push_delivered, fast)
        self.pull_link = make_link(env, ps_cap, worker_caps, self._on_pull_delivered, fast)
        self.latency_s = message_latency_s(cluster)
        self.clock = VersionClock()
        self.eval_in_phase_s = eval_in_phase_s  # an evaluation inside a phase blocks the PS this long
        self.progress: Callable[[int], None] | None = None  # called with each epoch that ends
        self.busy_until_s = 0.0  # FIFO apply queue: when the server is free again
        n = len(names)
        self.push_samples = [0] * n  # samples carried by each worker's in-flight push
        self.push_compute_s = [0.0] * n  # a policy's observer: the compute time behind each push,
        self.push_iterations = [0] * n  # its iterations, its batch,
        self.push_batch = [0] * n
        self.exchange_s = [0.0] * n  # and each worker's last exchange, push start to pull end
        self.push_start_s = [0.0] * n
        self.push_s = [0.0] * n  # each worker's last push and pull, start to arrival (fast-forward)
        self.pull_s = [0.0] * n
        self.fast_forward = fast_forward
        self.ff_on = False  # this phase may skip steady bsp rounds (sim/fastforward.py)
        self.round_consulted_s = 0.0  # when the policy was consulted on the round at hand
        self.skipped = [0] * n  # per worker, rounds skipped before its pull in flight: it learns it with that pull
        self.rounds_skipped = 0  # over the run
        self.done_event: list[simpy.Event | None] = [None] * n
        self.barrier = Barrier((), False)
        self.gate = None  # the phase's sim.worker.SimGate, if any
        self.round_ready_s = 0.0  # bsp: when the round's last push arrives
        self.costs = None
        self.phase = 0
        self.sync = "asp"
        self.policy: Policy | None = None
        self.observer: Observer | None = None
        self.last_staleness = 0
        self.policy_actions: dict[str, int] = {}  # action kind -> count, over the run
        self.policy_names = names if recorder is not None else None  # policy trace records built only then
        self.alone = [(w,) for w in range(n)]  # `pushed` of a push applied on its own
        self.rebalance: Rebalance | None = None  # a policy's re-split of the batches, while it reaches the workers
        self.assigned: list[tuple[int, int] | None] = [None] * n  # (batch, share) pulled, for the next worker-epoch

    def start_phase(self, phase_index: int, costs, sync: str, policy: Policy | None = None, gate=None) -> None:
        """`policy`: consulted in this phase (None: none); `gate`: the phase's
        sim.worker.SimGate (ssp, or a policy that may set a bound), else None."""
        self.phase = phase_index
        self.costs = costs
        self.sync = sync
        workers = [wp.index for wp in costs.workers]
        self.gate = gate
        self.barrier = Barrier(workers, sync == "bsp", gate.gate if gate is not None else None)
        self.round_ready_s = 0.0
        self.clock.start_phase(range(len(self.names)))
        self.policy = policy
        self.observer = Observer(workers, policy.window, self.ledger.phase_fraction) if policy is not None else None
        self.rebalance = Rebalance(workers, [wp.batch for wp in costs.workers],
                                   sum(wp.share for wp in costs.workers)) if policy is not None else None
        self.assigned = [None] * len(self.names)
        self.last_staleness = 0
        self.exchange_s = [0.0] * len(self.names)  # none yet in this phase
        # a policy may ride along if its decisions can be shown not to change over the skipped
        # rounds (Policy.decides_on_windows, declared by its class for the whole phase, _policy_rounds)
        # and no ssp gate counts exchanges
        self.ff_on = self.fast_forward is not None and sync == "bsp" and (
            policy is None or (type(policy).decides_on_windows and gate is None))
        self.skipped = [0] * len(self.names)
        if self.ff_on:
            self.fast_forward.start_phase()

    # worker side ------------------------------------------------------------------
    def exchange(self, worker: int, samples: int, compute_s: float = 0.0, iterations: int = 0,
                 batch: int = 0, repeats: int = 0, push_in_s: float | None = None) -> simpy.Event:
        """Push `samples` worth of work (computed in `iterations` of batch `batch` taking
        `compute_s`) now, or `push_in_s` from now (when the worker's compute is over), then
        pull; the event fires when the pull is in, its value the number of whole rounds
        fast-forwarded meanwhile (the worker's next `repeats` intervals equal this one)."""
        ev = Arrival(self.env)
        self.done_event[worker] = ev
        self.push_samples[worker] = samples
        if self.observer is not None:
            self.push_compute_s[worker] = compute_s
            self.push_iterations[worker] = iterations
            self.push_batch[worker] = batch
        if self.ff_on:
            self.fast_forward.pushed(repeats)
        if push_in_s is None:
            self.push_link.send(worker, self.costs.push_wire_bytes, self.latency_s[worker])
        else:  # at the place in the event queue the worker's own timeout would take
            call_later(self.env, push_in_s, self._push, worker)
        return ev

    def _push(self, ev: Call) -> None:
        worker = ev.value
        self.push_link.send(worker, self.costs.push_wire_bytes, self.latency_s[worker])

    # server side ------------------------------------------------------------------
    def _on_push_delivered(self, worker: int, start_s: float, end_s: float) -> None:
        """The push's last byte has left (now); it arrives at the server at `end_s`."""
        c = self.counters
        self.push_s[worker] = end_s - start_s
        c.comm_s[worker] += end_s - start_s
        c.bytes_pushed[worker] += self.costs.push_bytes
        if self.recorder is not None:
            self.recorder.add({"kind": "push", "worker": self.names[worker], "phase": self.phase, "start_s": start_s,
                              "end_s": end_s, "bytes": self.costs.push_bytes,
                              "samples": self.push_samples[worker]})
        observer = self.observer
        if observer is not None:
            self.push_start_s[worker] = start_s
            observer.interval(worker, self.push_compute_s[worker], self.push_iterations[worker],
                              self.push_samples[worker], self.exchange_s[worker], self.push_batch[worker])
        done = self.barrier.push(worker)
        if done is None:
            if observer is not None:  # consulted at every push here: a call less when it does nothing
                acted = consult(self.policy, observer, self.barrier, end_s, self.phase, self.alone[worker], self.sync,
                                self.last_staleness, self.policy_names, self.rebalance)
                if acted:
                    self._carry_out(acted, end_s)
            delay_s = self._apply_delay_s(end_s)
            if delay_s == 0.0:
                self._apply_one(worker)
            else:
                call_later(self.env, delay_s, self._on_applied_one, worker)
        else:
            if end_s > self.round_ready_s:
                self.round_ready_s = end_s
            if done:
                if observer is not None:
                    self.round_consulted_s = end_s  # skipped rounds are consulted this long after their start
                    acted = consult(self.policy, observer, self.barrier, end_s, self.phase, tuple(done), self.sync,
                                    self.last_staleness, self.policy_names, self.rebalance)
                    if acted:
                        self._carry_out(acted, end_s)
                self._apply_now(done, end_s)

    def _apply_now(self, workers: list[int], at_s: float) -> None:
        """Apply the round of `workers` once its pushes are in (round_ready_s), and not
        before `at_s`: when the event that completed it (a push, a decision) happened."""
        ready_s = self.round_ready_s if self.round_ready_s > at_s else at_s
        self.round_ready_s = 0.0
        self._apply(self._apply_round, workers, ready_s)

    def leave(self, worker: int) -> None:
        """`worker` stopped for the phase: a round no longer waits for it."""
        done = self.barrier.leave(worker)
        if done:
            self._apply_now(done, self.env.now)

    # policy ---------------------------------------------------------------------
    def _carry_out(self, acted, arrival_s: float) -> None:
        """The actions of a policy consulted (hybridps.policy.consult) at an update about
        to be applied, its last push arriving at `arrival_s`: from the next push on; the
        update at hand is applied as it was formed. Workers that a new ssp bound (or
        leaving ssp) lets go start at `arrival_s`. No round before the next one's pulls is a
        fast-forward template: it would span the change (an asp stretch, an exclusion)."""
        if self.ff_on:
            self.fast_forward.start_phase()
        for action, done, record in acted:
            self.policy_actions[action.kind] = self.policy_actions.get(action.kind, 0) + 1
            if action.kind == "set_sync" and self.counters.update_log is not None:
                self.counters.update_log.set_sync(arrival_s, self.phase, action.sync)
            if record is not None:
                self.recorder.add(record)
            if done:
                self._apply_now(done, arrival_s)
            if self.gate is not None:
                self.gate.release_at(arrival_s)

    def _apply(self, fn, arg, arrival_s: float) -> None:
        """Run `fn(arg)` when the server has applied this update (`_apply_delay_s`)."""
        delay_s = self._apply_delay_s(arrival_s)
        if delay_s == 0.0:
            fn(arg)
        else:
            self.env.timeout(delay_s).callbacks.append(lambda _ev: fn(arg))

    def _apply_delay_s(self, arrival_s: float) -> float:
        """Queue an update whose last push arrives at `arrival_s` (FIFO, one at a time);
        returns the seconds from now until it has been applied.

        The queue is ordered by when pushes finish sending; with equal latencies that is
        their arrival order."""
        now = self.env.now
        start = arrival_s if arrival_s > self.busy_until_s else self.busy_until_s
        end = start + self.costs.apply_s
        self.busy_until_s = end
        return end - now

    def _on_applied_one(self, ev: Call) -> None:
        self._apply_one(ev.value)

    def _applied(self, samples: int) -> float:
        """Count an applied update; returns the seconds of PS evaluation it triggers (epoch
        ends inside the phase; they block the PS, and the pull waits for them)."""
        ended = self.ledger.apply(samples, self.env.now)
        if not ended:
            return 0.0
        eval_s = 0.0
        for e in ended:
            if self.eval_in_phase_s > 0 and self.ledger.evaluation_due(e):
                eval_s += self.eval_in_phase_s
            if self.progress is not None:
                self.progress(e)
        if eval_s > 0:  # later applies queue behind the evaluation
            self.busy_until_s = max(self.busy_until_s, self.env.now) + eval_s
        return eval_s

    def _apply_one(self, worker: int) -> None:
        c, now = self.counters, self.env.now
        version, staleness = self.clock.apply_push(worker)
        self.last_staleness = staleness
        c.add_staleness(staleness)
        if c.update_log is not None:
            c.update_log.add(now, self.phase, worker, staleness, self.push_samples[worker])
        if self.recorder is not None:
            self.recorder.add({"kind": "update", "worker": self.names[worker], "phase": self.phase,
                               "t_s": now, "version": version, "staleness": staleness})
        self.ledger.commit((worker,))
        eval_s = self._applied(self.push_samples[worker])
        self.clock.pulled(worker)
        if eval_s > 0:  # an evaluation at this epoch end: the pull waits for it
            self.env.timeout(eval_s).callbacks.append(
                lambda _ev: self.pull_link.send(worker, self.costs.pull_wire_bytes, self.latency_s[worker]))
        else:
            self.pull_link.send(worker, self.costs.pull_wire_bytes, self.latency_s[worker])

    def _apply_round(self, workers: list[int]) -> None:
        c, now = self.counters, self.env.now
        version = self.clock.apply_round(workers)
        self.last_staleness = 0
        c.add_staleness(0, len(workers))
        samples = sum(self.push_samples[w] for w in workers)
        if c.update_log is not None:
            c.update_log.add(now, self.phase, -1, 0, samples)
        if self.recorder is not None:
            for w in workers:
                self.recorder.add({"kind": "update", "worker": self.names[w], "phase": self.phase,
                                   "t_s": now, "version": version, "staleness": 0})
        self.ledger.commit(workers)
        eval_s = self._applied(samples)
        wait_s = eval_s if eval_s > 0 or not self.ff_on else self._skip_rounds(workers, samples)
        if wait_s > 0:  # an evaluation at this epoch end, or skipped rounds: the pulls wait for it
            self.env.timeout(wait_s).callbacks.append(lambda _ev: self._send_pulls(workers))
        else:
            self._send_pulls(workers)

    def _send_pulls(self, workers: list[int]) -> None:
        if self.ff_on:
            self.fast_forward.pulls_sent(self.env.now)
        self.pull_link.send_many(workers, self.costs.pull_wire_bytes, self.latency_s)

    def _skip_rounds(self, workers: list[int], samples: int) -> float:
        """Fast-forward the whole rounds that repeat the one just applied (sim/fastforward.py):
        count their pulls, pushes and applies here (the workers count their compute when
        the pull arrives); returns how long they take."""
        k, period_s = self.fast_forward.rounds(self.env.now, self.ledger.quiet_rounds(samples, workers))
        if k and self.observer is not None:
            k = self._policy_rounds(workers, k, period_s)
        if k == 0:
            return 0.0
        c, costs = self.counters, self.costs
        for w in workers:
            c.comm_s[w] += k * (self.push_s[w] + self.pull_s[w])
            c.bytes_pushed[w] += k * costs.push_bytes
            c.bytes_pulled[w] += k * costs.pull_bytes
        c.exchanges += k * len(workers)
        c.add_staleness(0, k * len(workers))
        if c.update_log is not None:
            c.update_log.add_rounds(self.env.now, period_s, k, self.phase, samples)
        self.clock.apply_round(workers, k)
        self.ledger.apply_rounds(samples, workers, k)
        for w in workers:  # not the pulls of a push applied on its own later (a policy's asp stretch)
            self.skipped[w] = k
        self.rounds_skipped += k
        self.busy_until_s = self.env.now + k * period_s
        if self.observer is not None:  # the exchange before the next push is the last skipped one
            for w in workers:
                self.push_start_s[w] += k * period_s
        return k * period_s

    def _policy_rounds(self, workers: list[int], k: int, period_s: float) -> int:
        """How many of `k` repeating rounds to skip under the phase's policy. It did not act
        on the template round (an action restarts the template) and decides on windowed
        figures alone (Policy.decides_on_windows), so it is asked again only where its
        windows change: the skipped rounds feed the observer the template's intervals, and
        it is consulted, at the round's simulated time as round by round, after each that
        drops an interval unlike them (Observer.changing_feeds); the other rounds show it
        the observation it last did not act on. If it acts at round j, the actions are carried out and j
        rounds are skipped (the update at hand applied as formed; they act from the next
        push on). 0 if the round lacks a worker of the phase (one excluded)."""
        observer = self.observer
        if len(workers) != len(observer.workers):
            return 0
        pushed = tuple(workers)
        fed = 0
        for j in observer.changing_feeds():
            if j > k:
                break
            observer.again(pushed, j - fed)
            fed = j
            t_s = self.round_consulted_s + j * period_s
            acted = consult(self.policy, observer, self.barrier, t_s, self.phase, pushed, self.sync, 0,
                            self.policy_names, self.rebalance)
            if acted:
                self._carry_out(acted, t_s)
                return j
        observer.again(pushed, min(k, observer.window) - fed)  # the rest drop intervals alike, in order
        return k

    def _on_pull_delivered(self, worker: int, start_s: float, end_s: float) -> None:
        """The pull's last byte has left the server; the worker has it at `end_s`."""
        c = self.counters
        self.pull_s[worker] = end_s - start_s
        c.comm_s[worker] += end_s - start_s
        c.bytes_pulled[worker] += self.costs.pull_bytes
        c.exchanges += 1
        if self.observer is not None:
            self.exchange_s[worker] = end_s - self.push_start_s[worker]
            rebalance = self.rebalance
            if rebalance.waiting:  # a rebalance reaches the worker with its pull (no call without one)
                batches = rebalance.pulled(worker)
                if batches is not None:
                    self.assigned[worker] = rebalance.assignment(batches, worker)
        if self.recorder is not None:
            self.recorder.add({"kind": "pull", "worker": self.names[worker], "phase": self.phase, "start_s": start_s,
                              "end_s": end_s, "bytes": self.costs.pull_bytes})
        skipped = self.skipped[worker]
        if skipped:
            self.skipped[worker] = 0
        self.done_event[worker].succeed_at(end_s, skipped)
