"""Wiring: one SimPy environment, one process per worker, the parameter server and its
two network directions, and the global phase boundaries (docs/semantics.md)."""

from __future__ import annotations

import time
from typing import Any, Callable

import simpy

from hybridps.spec import Cluster, Job, Plan, check_plan
from hybridps.stragglers import StragglerSchedule
from sim.metrics import Counters, Recorder, SimResult
from sim.predictor import WorkerPhase, phase_costs
from sim.ps import ParameterServer
from sim.worker import worker_process
from traces.records import header as trace_header_record


def trace_header(cluster: Cluster, job: Job, plan: Plan, seed: int | None = None) -> dict[str, Any]:
    """The header record of a simulated trace (what `TraceWriter(path, header)` wants)."""
    used_seed = cluster.stragglers.seed if seed is None else seed
    return trace_header_record("sim", cluster=cluster.model_dump(mode="json"), job=job.model_dump(mode="json"),
                               plan=plan.to_json_dict(), seed=used_seed)


class Simulation:
    """One run of a plan. `run()` returns the SimResult; use `simulate()` normally."""

    def __init__(self, cluster: Cluster, job: Job, plan: Plan, seed: int | None = None, record: bool = False,
                 trace: Any | None = None, log_updates: bool = False, fast: bool = True, eval_every: int = 1):
        check_plan(plan, cluster, job)  # a SpecError naming the field beats a KeyError deep inside
        self.cluster, self.job, self.plan = cluster, job, plan
        self.seed = cluster.stragglers.seed if seed is None else seed
        self.fast = fast
        self.env = simpy.Environment()
        self.names = [w.name for w in cluster.worker_list]
        self.counters = Counters(len(self.names), log_updates)
        self.record = record
        self.recorder = Recorder(record, trace) if (record or trace is not None) else None
        self.header = trace_header(cluster, job, plan, seed) if record else None
        self.stragglers = StragglerSchedule(cluster, self.seed)
        self.costs = [phase_costs(cluster, job, ph) for ph in plan.phases]
        self.phase_workers: list[dict[int, WorkerPhase]] = [{wp.index: wp for wp in c.workers} for c in self.costs]
        self.epochs_before = []
        done = 0
        for ph in plan.phases:
            self.epochs_before.append(done)
            done += ph.epochs
        self.total_epochs = done
        self.dataset_samples = job.data.samples
        self.ps = ParameterServer(self)
        self.phase_started = [self.env.event() for _ in plan.phases]
        self.phase_index = -1
        self.phase_start_s = 0.0
        self.applied_in_phase = 0
        self.applied_total = 0
        self.target = 0
        self.active: set[int] = set()
        self.stopped = 0
        self.ssp_count = [0] * len(self.names)
        self.ssp_waiting: list[tuple[int, simpy.Event]] = []
        self.progress: Callable[[int], None] | None = None
        self.makespan_s = 0.0
        # PS evaluation every `eval_every` epochs (0: none), as the runtime's --eval-every: the
        # initial model, and epoch ends inside a phase with one PS shard (the runtime's rule;
        # the phase-end evaluation is phase_overhead_s)
        self.eval_every = eval_every
        self.eval_s = cluster.ps.eval_s if eval_every > 0 else 0.0
        self.eval_in_phase_s = self.eval_s if cluster.ps.count == 1 else 0.0
        self.phase_end_epoch = 0

    # phases -----------------------------------------------------------------------
    def _start_phase(self, p: int) -> None:
        self.phase_index = p
        self.phase_start_s = float(self.env.now)
        self.applied_in_phase = 0
        self.target = self.costs[p].target_samples
        self.phase_end_epoch = self.epochs_before[p] + self.plan.phases[p].epochs
        self.active = set(self.phase_workers[p])
        self.stopped = 0
        self.ssp_count = [0] * len(self.names)  # exchanges completed in this phase
        self.ps.start_phase(p, self.costs[p], self.plan.phases[p].sync)
        self.phase_started[p].succeed()

    def phase_done_counting(self) -> bool:
        """Has the current phase's applied sample count reached its target?"""
        return self.applied_in_phase >= self.target

    def samples_applied(self, n: int) -> float:
        """Count applied samples; returns the seconds of PS evaluation this update triggers
        (epoch ends inside the phase, `ps.eval_s` each; the pull waits for them)."""
        self.applied_in_phase += n
        self.applied_total += n
        ends = self.counters.epoch_end_s
        eval_s = 0.0
        while len(ends) < self.total_epochs and self.applied_total >= (len(ends) + 1) * self.dataset_samples:
            ends.append(self.env.now)
            if self.eval_in_phase_s > 0 and len(ends) % self.eval_every == 0 and len(ends) < self.phase_end_epoch:
                eval_s += self.eval_in_phase_s
            if self.progress is not None:
                self.progress(len(ends))
        if eval_s > 0:  # the evaluation blocks the PS: later applies queue behind it
            self.ps.busy_until_s = max(self.ps.busy_until_s, self.env.now) + eval_s
        return eval_s

    def worker_stopped(self, w: int) -> None:
        self.active.discard(w)
        self.stopped += 1
        if self.ssp_waiting:
            self._ssp_release()
        if self.stopped < len(self.phase_workers[self.phase_index]):
            return
        now = self.env.now
        p = self.phase_index
        self.counters.phases.append((self.phase_start_s, now))
        if self.recorder is not None:
            self.recorder.add({"kind": "phase", "index": p, "start_s": self.phase_start_s, "end_s": now})
            self.recorder.flush()
        self.makespan_s = now
        if p + 1 < len(self.plan.phases):
            overhead_s = self.cluster.ps.phase_overhead_s  # phase-end evaluation, checkpoint
            if overhead_s > 0:
                self.env.timeout(overhead_s).callbacks.append(lambda _ev: self._start_phase(p + 1))
            else:
                self._start_phase(p + 1)

    # ssp --------------------------------------------------------------------------
    def ssp_ahead(self, w: int) -> int:
        """How many exchanges `w` is ahead of the slowest worker still in the phase."""
        counts = self.ssp_count
        return counts[w] - min(counts[v] for v in self.active)

    def ssp_wait(self, w: int) -> simpy.Event:
        ev = self.env.event()
        self.ssp_waiting.append((w, ev))
        return ev

    def ssp_exchanged(self, w: int) -> None:
        self.ssp_count[w] += 1
        if self.ssp_waiting:
            self._ssp_release()

    def _ssp_release(self) -> None:
        if not self.active:
            waiting, self.ssp_waiting = self.ssp_waiting, []
            for _, ev in waiting:
                ev.succeed()
            return
        bound = self.plan.phases[self.phase_index].staleness
        slowest = min(self.ssp_count[v] for v in self.active)
        still = []
        for w, ev in self.ssp_waiting:
            if self.ssp_count[w] - slowest <= bound:
                ev.succeed()
            else:
                still.append((w, ev))
        self.ssp_waiting = still

    # run --------------------------------------------------------------------------
    def run(self, progress: Callable[[int], None] | None = None) -> SimResult:
        """Simulate the whole plan; `progress(epochs_done)` is called at each epoch end."""
        wall0 = time.perf_counter()
        self.progress = progress
        for w in range(len(self.names)):
            self.env.process(worker_process(self, w))
        if self.eval_s > 0:  # the runtime evaluates the initial model before phase 0
            self.env.timeout(self.eval_s).callbacks.append(lambda _ev: self._start_phase(0))
        else:
            self._start_phase(0)
        self.env.run()
        if self.recorder is not None:
            self.recorder.flush()
        c = self.counters
        updates = sum(c.staleness_hist.values())
        iterations = sum(c.iterations)
        events = iterations + 2 * c.exchanges + updates + len(c.phases)
        return SimResult(
            makespan_s=self.makespan_s, worker_names=list(self.names), counters=c, updates=updates, events=events,
            wall_s=time.perf_counter() - wall0, header=self.header,
            records=self.recorder.records if self.record else [],
        )


def simulate(cluster: Cluster, job: Job, plan: Plan, seed: int | None = None, record: bool = False,
             trace: Any | None = None, log_updates: bool = False, fast: bool = True, eval_every: int = 1) -> SimResult:
    """Simulate `plan` on `cluster` for `job`.

    seed: transient-straggler seed (default: cluster.stragglers.seed). record: keep the
    trace records (`result.records`, header in `result.header`). trace: a
    traces.TraceWriter to stream the records into as the simulation goes. log_updates:
    keep every applied update in `result.counters.update_log` (sim.metrics.UpdateLog),
    what the convergence model reads. fast=False: the reference event-by-event model with
    the per-flow water-fill (the fast paths are checked against it by
    tests/test_sim_equivalence.py). eval_every: the PS evaluates every this many epochs,
    `ps.eval_s` each (default 1, the runtime's --eval-every default; 0: never).
    """
    return Simulation(cluster, job, plan, seed=seed, record=record, trace=trace, log_updates=log_updates,
                      fast=fast, eval_every=eval_every).run()
