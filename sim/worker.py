"""A worker as a plain SimPy generator process (docs/semantics.md, "Per worker").

Per phase: compute an interval of `E` iterations (one timeout for the whole interval:
nothing else touches the worker meanwhile, and each iteration's straggler factor is
still taken at its own start), push and pull (one event), then stop if the phase's
sample target has been reached. Under ssp the worker first waits while it is more than
`staleness` exchanges ahead of the slowest active worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generator

if TYPE_CHECKING:
    from sim.engine import Simulation


def worker_process(sim: "Simulation", w: int) -> Generator:
    env = sim.env
    c = sim.counters
    name = sim.names[w]
    stragglers = sim.stragglers if sim.stragglers.active else None
    jitter = sim.stragglers.jitter if sim.stragglers.jitter_cv > 0 else None
    for p, phase in enumerate(sim.plan.phases):
        yield sim.phase_started[p]
        wp = sim.phase_workers[p].get(w)
        if wp is None:
            continue  # not in this phase: idle until the next one
        rec = sim.recorder
        epoch0 = sim.epochs_before[p]
        resolution = phase.resolution
        batch, share, k, last, every = wp.batch, wp.share, wp.iters_per_epoch, wp.last_batch, wp.exchange_every
        a_s, b_s, overhead_s = wp.a_s, wp.b_s, wp.exchange_overhead_s
        full_s = a_s * batch + b_s
        last_s = a_s * last + b_s
        ssp_bound = phase.staleness if phase.sync == "ssp" else None
        pos = 0  # iterations done in the current worker-epoch
        computed = 0  # samples computed in this phase
        while True:
            if ssp_bound is not None:
                while sim.ssp_ahead(w) > ssp_bound:
                    yield sim.ssp_wait(w)
                if sim.phase_done_counting():
                    break
            t = t0 = env.now
            interval_samples = 0
            iterations = 0
            while True:
                if pos == k - 1:
                    n, dt = last, last_s
                else:
                    n, dt = batch, full_s
                if stragglers is not None:
                    dt *= stragglers.factor_at(name, t)
                if jitter is not None:
                    dt *= jitter(name)
                if rec is not None:
                    r = {"kind": "compute", "worker": name, "phase": p, "epoch": epoch0 + computed // share,
                         "step": pos, "batch": batch, "resolution": resolution, "start_s": t, "end_s": t + dt}
                    if n != batch:
                        r["samples"] = n
                    rec.add(r)
                t += dt
                pos += 1
                iterations += 1
                interval_samples += n
                computed += n
                if pos == k:
                    pos = 0
                    break
                if pos % every == 0:
                    break
            c.iterations[w] += iterations
            c.samples[w] += interval_samples
            c.compute_s[w] += t - t0
            yield env.timeout(t - t0 + overhead_s)  # the exchange overhead ends the interval, before the push
            yield sim.ps.exchange(w, interval_samples)
            if ssp_bound is not None:
                sim.ssp_exchanged(w)
            if sim.phase_done_counting():
                break
        sim.worker_stopped(w)
