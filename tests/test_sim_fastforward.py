"""bsp steady-state fast-forward (sim/fastforward.py) against every round simulated.

A grid of small clusters (equal and mixed NICs, 1 or 2 PS shards, transient stragglers,
jitter and in-phase evaluations each on and off, one worker with an exchange overhead)
and bsp plans (gradient and model exchange, exchange every 1, 2 or 3 iterations, top-k
compression, DBSL mini-epochs, three phases; asp and ssp phases between bsp ones) is
simulated with fast-forward on and off:
the summaries and update logs agree, integers exactly and times to 1e-9 relative
(skipped rounds are counted by multiplication, not by K additions). Then: fast-forward
engages (rounds skipped, counted by hand; SimPy events), and it stays off where it must.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import simpy
from test_sim_equivalence import assert_same, update_log

from hybridps.semantics import Ledger
from hybridps.spec import cluster_from_dict, job_from_dict, plan_from_dict
from hybridps.stragglers import StragglerSchedule
from sim import Simulation, simulate
from sim.fastforward import ALWAYS, repeats_after

N_WORKERS = 6


def cluster(mixed: bool = False, shards: int = 1, stragglers: bool = False, jitter: bool = False,
            evaluate: bool = False, n: int = N_WORKERS):
    workers = [{"name": f"w{i}", "device": "fast" if i % 3 == 0 else "dev", "latency_ms": 0.05 * (1 + i % 2),
                "bandwidth_gbps": (2.5 if i % 2 else 25.0) if mixed else 10.0,
                "slowdown": 1.25 if i == n - 1 else 1.0, "exchange_overhead_s": 0.002 if i == 1 else 0.0}
               for i in range(n)]
    data = {
        "format": "hybridps.cluster/1",
        "ps": {"count": shards, "bandwidth_gbps": 20.0, "latency_ms": 0.05, "apply_s_per_mparam": 0.002,
               "eval_s": 0.3 if evaluate else 0.0},
        "devices": {"dev": {"resolutions": {"32": {"a": 0.0004, "b": 0.01, "max_batch": 512}}},
                    "fast": {"resolutions": {"32": {"a": 0.0002, "b": 0.008, "max_batch": 512}}}},
        "workers": workers,
    }
    if stragglers or jitter:
        data["stragglers"] = {"rate_per_hour": 300.0 if stragglers else 0.0, "slowdown": 2.0,
                              "mean_duration_s": 3.0, "seed": 5, "jitter_cv": 0.1 if jitter else 0.0}
    return cluster_from_dict(data)


def job(samples: int = 6_000, epochs: int = 6):
    return job_from_dict({
        "format": "hybridps.job/1",
        "model": {"name": "m", "parameters": 2_000_001, "bytes_per_parameter": 4},
        "data": {"name": "d", "samples": samples},
        "train": {"epochs": epochs, "resolutions": [32], "base_batch": 100, "base_lr": 0.1},
    })


EVEN = [1000] * N_WORKERS
PHASES = {  # bsp phases; shares 5 short of the dataset put epoch ends one round into a worker-epoch
    "gradient": dict(exchange="gradient", batch=[50, 50, 60, 50, 40, 50], samples=[995, 1000, 1200, 1000, 800, 1000]),
    "gradient-local2-topk": dict(exchange="gradient", local_steps=2, batch=[60] * N_WORKERS, samples=EVEN,
                                 compression={"kind": "topk", "ratio": 0.01}),
    "model-local3": dict(exchange="model", local_steps=3, batch=[100] * N_WORKERS,
                         samples=[1000, 800, 1000, 1200, 1000, 1000]),
    "dbsl-mini-epochs": dict(exchange="model", batch=[200, 50, 100, 200, 100, 100],
                             samples=[1500, 700, 1000, 1300, 900, 599]),
    "asp": dict(sync="asp", exchange="gradient", batch=[100] * N_WORKERS, samples=EVEN),
    "ssp": dict(sync="ssp", staleness=1, exchange="gradient", batch=[100] * N_WORKERS, samples=EVEN),
}
PLANS = {name: [name] for name in PHASES if name not in ("asp", "ssp")} | {
    "three-phases": ["gradient", "model-local3", "gradient-local2-topk"],
    "asp-bsp-ssp-bsp": ["asp", "gradient", "ssp", "model-local3"]}


def plan(c, j, name: str):
    """The plan `name` of PLANS, the job's epochs split evenly over its phases."""
    phases = []
    for kind in PLANS[name]:
        spec = dict(PHASES[kind])
        batch, samples = spec.pop("batch"), spec.pop("samples")
        phases.append({"epochs": j.train.epochs // len(PLANS[name]), "resolution": 32,
                       "sync": "bsp", "staleness": None, "local_steps": None, "lr": 0.1,
                       "compression": {"kind": "none"}, **spec,
                       "workers": [{"name": f"w{i}", "batch": b, "samples": s}
                                   for i, (b, s) in enumerate(zip(batch, samples))]})
    return plan_from_dict({"format": "hybridps.plan/1", "phases": phases}, cluster=c, job=j)


def run(c, j, p, fast_forward: bool, **kw):
    sim = Simulation(c, j, p, log_updates=True, fast_forward=fast_forward, **kw)
    return sim.run(), sim.ps.rounds_skipped


GRID = list(itertools.product([False, True], [1, 2], [False, True], [False, True], [False, True], sorted(PLANS)))


@pytest.mark.parametrize("mixed,shards,stragglers,jitter,evaluate,plan_name", GRID, ids=[
    f"{'mixed' if m else 'equal'}-{s}shard-{'strag' if st else 'calm'}-{'jitter' if ji else 'steady'}-"
    f"{'eval' if ev else 'noeval'}-{p}" for m, s, st, ji, ev, p in GRID])
def test_fast_forward_equals_every_round_simulated(mixed, shards, stragglers, jitter, evaluate, plan_name):
    c, j = cluster(mixed, shards, stragglers, jitter, evaluate), job(epochs=max(6, 2 * len(PLANS[plan_name])))
    p = plan(c, j, plan_name)
    (fast, skipped), (full, none) = run(c, j, p, True), run(c, j, p, False)
    assert none == 0 and fast.summary()["updates"] > 0
    assert_same(fast.summary(), full.summary())
    assert_same(update_log(fast), update_log(full))
    if jitter or plan_name == "dbsl-mini-epochs":  # every iteration differs; every round ends an epoch
        assert skipped == 0
    elif plan_name.startswith("gradient"):  # equal worker-epochs: most rounds repeat, between episodes too
        assert skipped > (0.3 if stragglers else 0.5) * fast.summary()["updates"] / N_WORKERS


@pytest.mark.parametrize("seed", range(8))
def test_fast_forward_between_dense_straggler_episodes(seed):
    # episodes every few rounds on some worker: skipped windows end right at factor changes
    c = cluster(mixed=True, shards=2, stragglers=True)
    c = c.model_copy(update={"stragglers": c.stragglers.model_copy(update={"rate_per_hour": 900.0,
                                                                           "mean_duration_s": 1.0})})
    j = job(epochs=10)
    p = plan(c, j, "gradient")
    (fast, skipped), (full, _) = run(c, j, p, True, seed=seed), run(c, j, p, False, seed=seed)
    assert 0 < skipped < fast.summary()["updates"] / N_WORKERS
    assert_same(fast.summary(), full.summary())
    assert_same(update_log(fast), update_log(full))


def uniform(n_workers: int, k: int, epochs: int, sync: str = "bsp", policy: dict | None = None):
    """n equal workers, k full iterations of 100 samples per worker-epoch and no partial one."""
    c = cluster(n=n_workers)
    j = job(samples=n_workers * k * 100, epochs=epochs)
    phase = {"epochs": epochs, "resolution": 32, "sync": sync, "staleness": 1 if sync == "ssp" else None,
             "exchange": "gradient", "local_steps": None, "lr": 0.1,
             "workers": [{"name": f"w{i}", "batch": 100, "samples": k * 100} for i in range(n_workers)]}
    if policy is not None:
        phase["policy"] = policy
    return c, j, plan_from_dict({"format": "hybridps.plan/1", "phases": [phase]}, cluster=c, job=j)


def _counting():
    """A simpy.Environment class that counts the events it processes (deterministic)."""
    class Counting(simpy.Environment):
        count = 0

        def step(self) -> None:
            Counting.count += 1
            super().step()
    return Counting


def _count_with(env_class, c, j, p, **kw) -> int:
    real = simpy.Environment
    simpy.Environment = env_class
    try:
        simulate(c, j, p, **kw)
    finally:
        simpy.Environment = real
    return env_class.count


def test_fast_forward_skips_all_but_two_rounds_an_epoch():
    # 16 equal workers, 40 iterations per worker-epoch, 5 epochs: 200 rounds. Round 1 has
    # no pull before it (no template); round 2 is the template and leaves every worker at
    # position 2, so rounds 3..39 (37) repeat it; round 40 ends the worker-epoch and the
    # epoch. Each later epoch: its first round is the template, rounds 2..39 (38) are
    # skipped, round 40 is simulated. 37 + 4 x 38 = 189 skipped, 11 simulated.
    c, j, p = uniform(16, 40, 5)
    (fast, skipped), (full, _) = run(c, j, p, True), run(c, j, p, False)
    assert skipped == 189 and fast.summary()["updates"] == 200 * 16
    assert_same(fast.summary(), full.summary())
    with_ff, without = _count_with(_counting(), c, j, p), _count_with(_counting(), c, j, p, fast_forward=False)
    assert without > 16 * 200 * 2  # about two events per worker-iteration, every round simulated
    assert with_ff < 0.1 * without


@pytest.mark.parametrize("case", ["asp", "ssp", "trace", "reference"])
def test_fast_forward_stays_off(case):
    sync = case if case in ("asp", "ssp") else "bsp"
    c, j, p = uniform(4, 20, 3, sync)
    sim = Simulation(c, j, p, record=case == "trace", fast=case != "reference")
    result = sim.run()
    assert sim.ps.rounds_skipped == 0 and result.summary()["updates"] > 0
    if case == "trace":  # every round is simulated and written record for record
        assert result.records == simulate(c, j, p, record=True, fast_forward=False).records
        assert_same(result.summary(), simulate(c, j, p).summary())


def test_repeats_after():
    # k = 10, every iteration exchanged: after position 2, intervals 2..8 repeat (index 9 is the partial batch)
    assert repeats_after(3, 1, 10, 1) == 6
    assert repeats_after(9, 1, 10, 1) == 0  # the next one is the partial batch
    assert repeats_after(0, 1, 10, 1) == 0  # that was the partial batch: the next epoch differs
    assert repeats_after(3, 3, 10, 3) == 2  # local_steps 3: intervals 3-5 and 6-8; then 9, the last
    assert repeats_after(6, 3, 10, 3) == 1 and repeats_after(9, 3, 10, 3) == 0
    assert repeats_after(0, 10, 10, 10) == ALWAYS  # DBSL's whole-epoch interval
    assert repeats_after(0, 1, 1, 1) == ALWAYS  # one iteration per epoch


def test_ledger_quiet_rounds_stop_short_of_epoch_ends_and_stops():
    ledger = Ledger(1000, [3, 2])
    ledger.start_phase(0, [0, 1])
    ledger.apply(250, 1.0)
    # rounds of 100: epoch 1 ends when 1000 are in, so 250 + 100 x 7 = 950 is the last quiet one
    assert ledger.quiet_rounds(100, [0, 1]) == 7
    ledger.apply_rounds(100, [0, 1], 7)
    assert (ledger.applied_total, ledger.applied_in_phase, ledger.epoch_end_s) == (950, 950, [])
    assert ledger.quiet_rounds(100, [0, 1]) == 0 and ledger.apply(100, 2.0) == (1,)
    ledger.apply(1950, 3.0)  # 3000: the phase's target
    ledger.start_phase(1, [0, 1], mini_epochs=True)
    ledger.commit([0, 1])
    # mini-epochs: 2 per worker; one committed, so no more round may be skipped
    assert ledger.quiet_rounds(1, [0, 1]) == 0 and ledger.quiet_rounds(0, [0, 1]) == 0


def test_straggler_next_change_bounds_a_constant_factor():
    c = cluster(stragglers=True)
    sched = StragglerSchedule(c, seed=5)
    episodes = [e for w in c.worker_list for e in sched.episodes(w.name, 600.0)]
    points = sorted({t for e in episodes for t in e})
    rng = np.random.default_rng(0)
    for t in sorted(rng.uniform(0.0, 500.0, 200)):
        change = sched.next_change_s(float(t))
        assert change > t and change in points  # an episode's start or end
        factors = [[sched.factor_at(w.name, float(u)) for w in c.worker_list]
                   for u in np.linspace(t, change, 50, endpoint=False)[1:]]
        assert all(f == factors[0] for f in factors)
