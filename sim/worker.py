"""A worker's phase as a plain SimPy generator process (docs/semantics.md, "Per worker").

Compute an interval of `E` iterations (one event for the whole interval: nothing else
touches the worker meanwhile, and each iteration's straggler factor is still taken at its
own start; the event is the PS's, which starts the push when the interval is over), then
wait for the pull (one resumption per exchange), then stop if the ledger says so. Under ssp the
worker first waits while the gate holds it (so does a phase whose policy may switch it
to ssp: a gate without a bound until the policy sets one). When the PS fast-forwards bsp
rounds, the pull tells the worker how many intervals like its last one it skipped, and it
counts them. The worker gets its collaborators as
arguments and returns at the end of the phase; it knows nothing of the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator

import simpy

from hybridps.semantics import Ledger, SSPGate
from sim.fastforward import repeats_after
from sim.metrics import Counters
from sim.predictor import WorkerPhase


class SimGate:
    """An SSPGate whose held workers wait on SimPy events."""

    def __init__(self, env: simpy.Environment, gate: SSPGate):
        self.env, self.gate = env, gate
        self.events: dict[int, simpy.Event] = {}

    def wait(self, w: int) -> simpy.Event:
        ev = self.env.event()
        self.gate.hold(w)
        self.events[w] = ev
        return ev

    def exchanged(self, w: int) -> None:
        gate = self.gate
        gate.exchanged(w)
        if gate.waiting:
            self._release()

    def leave(self, w: int) -> None:
        self.gate.leave(w)
        if self.gate.waiting:
            self._release()

    def _release(self) -> None:
        for w in self.gate.release():
            self.events.pop(w).succeed()

    def release_at(self, t_s: float) -> None:
        """A policy decided at `t_s` (now or later: when the push it saw arrives) to move the
        bound: the workers it lets go start then."""
        if not self.gate.waiting:
            return
        delay = t_s - self.env.now
        for w in self.gate.release():
            ev = self.events.pop(w)
            if delay > 0:
                self.env.timeout(delay).callbacks.append(lambda _t, ev=ev: ev.succeed())
            else:
                ev.succeed()


@dataclass(frozen=True)
class WorkerContext:
    """What a worker's phase needs besides its costs: the run's shared objects."""
    env: simpy.Environment
    ps: Any  # sim.ps.ParameterServer: `exchange(w, samples)` -> event fired when the pull is in
    ledger: Ledger
    counters: Counters
    recorder: Any  # sim.metrics.Recorder or None
    factor_at: Callable[[str, float], float] | None  # transient stragglers
    jitter: Callable[[str], float] | None


def _loop_numbers(wp: WorkerPhase) -> tuple[int, int, int, int, float, float]:
    """The loop's plain numbers: batch, iterations per epoch, last batch, exchange interval,
    and the compute seconds of a full and of the last iteration."""
    return (wp.batch, wp.iters_per_epoch, wp.last_batch, wp.exchange_every,
            wp.a_s * wp.batch + wp.b_s, wp.a_s * wp.last_batch + wp.b_s)


def worker_phase(ctx: WorkerContext, w: int, name: str, p: int, resolution: int, wp: WorkerPhase,
                 gate: SimGate | None) -> Generator:
    """Worker `w`'s part of phase `p`; `gate` is None unless the phase is ssp or its policy may make it ssp."""
    env, ps, ledger, c, rec = ctx.env, ctx.ps, ctx.ledger, ctx.counters, ctx.recorder
    factor_at, jitter = ctx.factor_at, ctx.jitter
    batch, k, last, every, full_s, last_s = _loop_numbers(wp)
    overhead_s = wp.exchange_overhead_s
    skipping = ps.ff_on  # the PS may fast-forward whole bsp rounds (sim/fastforward.py)
    may_start = gate.gate.may_start if gate is not None else None
    pos = 0  # iterations done in the current worker-epoch
    epoch = ledger.epochs_before[p]  # the current worker-epoch, counted across phases
    while True:
        if pos == 0 and ps.assigned[w] is not None:  # a policy's rebalance, pulled: from this worker-epoch on
            wp = wp.rebatched(*ps.assigned[w])
            ps.assigned[w] = None
            batch, k, last, every, full_s, last_s = _loop_numbers(wp)
        if may_start is not None:
            while not may_start(w):
                yield gate.wait(w)
            if ledger.worker_done(w):  # the target was reached while it waited
                break
        t = t0 = env.now
        interval_samples = 0
        iterations = 0
        while True:
            if pos == k - 1:
                n, dt = last, last_s
            else:
                n, dt = batch, full_s
            if factor_at is not None:
                dt *= factor_at(name, t)
            if jitter is not None:
                dt *= jitter(name)
            if rec is not None:
                r = {"kind": "compute", "worker": name, "phase": p, "epoch": epoch,
                     "step": pos, "batch": batch, "resolution": resolution, "start_s": t, "end_s": t + dt}
                if n != batch:
                    r["samples"] = n
                rec.add(r)
            t += dt
            pos += 1
            iterations += 1
            interval_samples += n
            if pos == k:
                pos = 0
                epoch += 1
                break
            if pos % every == 0:
                break
        c.iterations[w] += iterations
        c.samples[w] += interval_samples
        c.compute_s[w] += t - t0
        repeats = repeats_after(pos, iterations, k, every) if skipping else 0
        # the push starts once the interval and the exchange overhead are over: the PS's
        # event then, not a resumption of this process; the worker wakes at its pull
        skipped = yield ps.exchange(w, interval_samples, t - t0, iterations, batch, repeats, t - t0 + overhead_s)
        if skipped:  # that many more intervals like this one were fast-forwarded: count them
            c.iterations[w] += skipped * iterations
            c.samples[w] += skipped * interval_samples
            c.compute_s[w] += skipped * (t - t0)
            if pos:
                pos += skipped * iterations
            else:  # whole-epoch intervals (DBSL's mini-epochs): each skipped one is an epoch
                epoch += skipped
        if gate is not None:
            gate.exchanged(w)  # an exchange counts when its pull reaches the worker
        if ledger.worker_done(w):
            break
    ps.leave(w)  # a bsp round no longer waits for it (a policy may have made rounds uneven)
    if gate is not None:
        gate.leave(w)
