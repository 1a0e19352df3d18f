"""Wiring: one SimPy environment, the parameter server and its two network directions,
and the engine process that runs the phases one after the other: it starts each phase's
worker processes, waits for them, records the phase and waits out the time between
phases (docs/semantics.md). The rules themselves are hybridps/semantics.py's."""

from __future__ import annotations

import time
from typing import Any, Callable, Generator

import simpy

from hybridps.policy import has_ssp_gate, make_policy
from hybridps.semantics import Ledger, SSPGate, ends_on_mini_epochs
from hybridps.spec import Cluster, Job, Plan, check_plan
from hybridps.stragglers import StragglerSchedule
from sim.fastforward import FastForward
from sim.metrics import Counters, Recorder, SimResult
from sim.predictor import WorkerPhase, phase_costs
from sim.ps import ParameterServer
from sim.worker import SimGate, WorkerContext, worker_phase
from traces.records import header as trace_header_record


def trace_header(cluster: Cluster, job: Job, plan: Plan, seed: int | None = None) -> dict[str, Any]:
    """The header record of a simulated trace (what `TraceWriter(path, header)` wants)."""
    used_seed = cluster.stragglers.seed if seed is None else seed
    return trace_header_record("sim", cluster=cluster.model_dump(mode="json"), job=job.model_dump(mode="json"),
                               plan=plan.to_json_dict(), seed=used_seed)


class Simulation:
    """One run of a plan. `run()` returns the SimResult; use `simulate()` normally."""

    def __init__(self, cluster: Cluster, job: Job, plan: Plan, seed: int | None = None, record: bool = False,
                 trace: Any | None = None, log_updates: bool = False, fast: bool = True, eval_every: int = 1,
                 fast_forward: bool = True):
        check_plan(plan, cluster, job)  # a SpecError naming the field beats a KeyError deep inside
        self.cluster, self.job, self.plan = cluster, job, plan
        self.seed = cluster.stragglers.seed if seed is None else seed
        self.env = simpy.Environment()
        self.names = [w.name for w in cluster.worker_list]
        self.counters = Counters(len(self.names), log_updates)
        self.record = record
        self.recorder = Recorder(record, trace) if (record or trace is not None) else None
        self.header = trace_header(cluster, job, plan, seed) if record else None
        self.stragglers = StragglerSchedule(cluster, self.seed)
        self.costs = [phase_costs(cluster, job, ph) for ph in plan.phases]
        self.phase_workers: list[dict[int, WorkerPhase]] = [{wp.index: wp for wp in c.workers} for c in self.costs]
        self.makespan_s = 0.0
        # PS evaluation every `eval_every` epochs (0: none), as the runtime's --eval-every: the
        # initial model, and epoch ends inside a phase with one PS shard (the runtime's rule;
        # the phase-end evaluation is phase_overhead_s)
        self.eval_s = cluster.ps.eval_s if eval_every > 0 else 0.0
        self.ledger = Ledger(job.data.samples, [ph.epochs for ph in plan.phases], eval_every,
                             epoch_end_s=self.counters.epoch_end_s)
        # steady bsp rounds are skipped (sim/fastforward.py) unless every round must be
        # simulated: the reference path, a trace (written record for record), or jitter
        skip = fast and fast_forward and self.recorder is None and self.stragglers.jitter_cv == 0
        self.ps = ParameterServer(
            self.env, cluster, self.ledger, self.counters, self.recorder, self.names, fast,
            eval_in_phase_s=self.eval_s if cluster.ps.count == 1 else 0.0,
            fast_forward=FastForward(self.stragglers.next_change_s if self.stragglers.active else None)
            if skip else None)
        self.context = WorkerContext(
            self.env, self.ps, self.ledger, self.counters, self.recorder,
            self.stragglers.factor_at if self.stragglers.active else None,
            self.stragglers.jitter if self.stragglers.jitter_cv > 0 else None)

    def _phases(self) -> Generator:
        """The engine process: the phases in order, each started when the last one is over."""
        env, plan = self.env, self.plan
        if self.eval_s > 0:  # the runtime evaluates the initial model before phase 0
            yield env.timeout(self.eval_s)
        for p, phase in enumerate(plan.phases):
            start_s = float(env.now)
            workers = self.phase_workers[p]
            self.ledger.start_phase(p, workers, mini_epochs=ends_on_mini_epochs(phase))
            policy = make_policy(phase.policy.as_dict()) if phase.policy is not None else None  # new each phase
            if policy is not None and not policy.acts_on(phase.sync):
                policy = None  # not consulted at all in such a phase
            # a policy that may turn the phase ssp: its gate counts exchanges from the start, unbounded till then
            gate = SimGate(env, SSPGate(phase.staleness, workers)) if has_ssp_gate(phase.sync, policy) else None
            self.ps.start_phase(p, self.costs[p], phase.sync, policy, gate)
            yield env.all_of([env.process(worker_phase(self.context, w, self.names[w], p, phase.resolution, wp, gate))
                              for w, wp in workers.items()])
            for e in self.ledger.end_phase(env.now):  # mini-epochs whose shares fall short of the dataset
                if self.ps.progress is not None:
                    self.ps.progress(e)
            self._phase_done(p, start_s)
            if p + 1 < len(plan.phases) and self.cluster.ps.phase_overhead_s > 0:
                yield env.timeout(self.cluster.ps.phase_overhead_s)  # phase-end evaluation, checkpoint

    def _phase_done(self, p: int, start_s: float) -> None:
        now = self.env.now
        self.counters.phases.append((start_s, now))
        if self.recorder is not None:
            self.recorder.add({"kind": "phase", "index": p, "start_s": start_s, "end_s": now})
            self.recorder.flush()
        self.makespan_s = now

    # run --------------------------------------------------------------------------
    def run(self, progress: Callable[[int], None] | None = None) -> SimResult:
        """Simulate the whole plan; `progress(epochs_done)` is called at each epoch end."""
        wall0 = time.perf_counter()
        self.ps.progress = progress
        self.env.process(self._phases())
        self.env.run()
        if self.recorder is not None:
            self.recorder.flush()
        c = self.counters
        c.policy_actions = dict(self.ps.policy_actions)
        updates = sum(c.staleness_hist.values())
        iterations = sum(c.iterations)
        events = iterations + 2 * c.exchanges + updates + len(c.phases)
        return SimResult(
            makespan_s=self.makespan_s, worker_names=list(self.names), counters=c, updates=updates, events=events,
            wall_s=time.perf_counter() - wall0, header=self.header,
            records=self.recorder.records if self.record else [],
        )


def simulate(cluster: Cluster, job: Job, plan: Plan, seed: int | None = None, record: bool = False,
             trace: Any | None = None, log_updates: bool = False, fast: bool = True, eval_every: int = 1,
             fast_forward: bool = True) -> SimResult:
    """Simulate `plan` on `cluster` for `job`.

    seed: transient-straggler seed (default: cluster.stragglers.seed). record: keep the
    trace records (`result.records`, header in `result.header`). trace: a
    traces.TraceWriter to stream the records into as the simulation goes. log_updates:
    keep every applied update in `result.counters.update_log` (sim.metrics.UpdateLog),
    what the convergence model reads. fast=False: the reference event-by-event model with
    the per-flow water-fill (the fast paths are checked against it by
    tests/test_sim_equivalence.py). eval_every: the PS evaluates every this many epochs,
    `ps.eval_s` each (default 1, the runtime's --eval-every default; 0: never).
    fast_forward=False: simulate every steady bsp round event by event too (on by default
    with fast=True and no trace; tests/test_sim_fastforward.py checks the two agree).
    """
    return Simulation(cluster, job, plan, seed=seed, record=record, trace=trace, log_updates=log_updates,
                      fast=fast, eval_every=eval_every, fast_forward=fast_forward).run()
