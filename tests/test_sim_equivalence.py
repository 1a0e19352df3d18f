"""The fast paths against the reference event-by-event model (`simulate(..., fast=False)`).

A grid of small clusters (equal and mixed NICs, 1 or 2 PS shards, transient stragglers on
and off, unequal latencies) and plans (bsp / asp / ssp, gradient / model exchange,
compression) is simulated both ways; the summaries, the update logs and the trace records
must agree: exactly for the integer figures (iterations, samples, bytes, updates,
staleness, update order), and to 1e-9 relative for times (the class-wise water-fill and
the per-flow one round differently in the last bits; BSP is otherwise the same
arithmetic, ASP/SSP must stay within the issue's 1e-6).
"""

from __future__ import annotations

import itertools
import math

import pytest

from hybridps.spec import cluster_from_dict, job_from_dict, plan_from_dict
from sim import simulate

REL = 1e-9


def make_cluster(mixed: bool, shards: int, stragglers: bool, n: int = 6):
    workers = []
    for i in range(n):
        workers.append({"name": f"w{i}", "device": "dev" if i % 3 else "fast", "bandwidth_gbps":
                        (2.5 if i % 2 else 25.0) if mixed else 10.0, "latency_ms": 0.05 * (1 + i % 2),
                        "slowdown": 1.0 + 0.25 * (i == n - 1)})
    data = {
        "format": "hybridps.cluster/1",
        "ps": {"count": shards, "bandwidth_gbps": 20.0, "latency_ms": 0.05, "apply_s_per_mparam": 0.002},
        "devices": {"dev": {"resolutions": {"32": {"a": 0.0004, "b": 0.01, "max_batch": 512}}},
                    "fast": {"resolutions": {"32": {"a": 0.0002, "b": 0.008, "max_batch": 512}}}},
        "workers": workers,
    }
    if stragglers:
        data["stragglers"] = {"rate_per_hour": 600.0, "slowdown": 2.0, "mean_duration_s": 2.0, "seed": 3}
    return cluster_from_dict(data)


def make_job(epochs: int = 4):
    return job_from_dict({
        "format": "hybridps.job/1",
        "model": {"name": "m", "parameters": 2_000_001, "bytes_per_parameter": 4},
        "data": {"name": "d", "samples": 6_000},
        "train": {"epochs": epochs, "resolutions": [32], "base_batch": 100, "base_lr": 0.1},
    })


PLANS = {
    "bsp-gradient": dict(sync="bsp", exchange="gradient", batch=[100] * 6, samples=[1000] * 6),
    "bsp-gradient-topk": dict(sync="bsp", exchange="gradient", batch=[100] * 6, samples=[1000] * 6,
                              compression={"kind": "topk", "ratio": 0.01}),
    "bsp-model-local3": dict(sync="bsp", exchange="model", local_steps=3, batch=[100] * 6, samples=[1000] * 6),
    "asp-gradient": dict(sync="asp", exchange="gradient", batch=[150, 100, 100, 150, 100, 80],
                         samples=[1500, 1000, 1000, 1200, 800, 500]),
    "asp-model-mini-epoch": dict(sync="asp", exchange="model", batch=[200, 50, 100, 200, 100, 100],
                                 samples=[1500, 700, 1000, 1300, 900, 600]),
    "asp-onebit": dict(sync="asp", exchange="gradient", batch=[100] * 6, samples=[1000] * 6,
                       compression={"kind": "onebit"}),
    "ssp-1": dict(sync="ssp", staleness=1, exchange="gradient", batch=[150, 100, 100, 150, 100, 80],
                  samples=[1500, 1000, 1000, 1200, 800, 500]),
    "ssp-3-topk": dict(sync="ssp", staleness=3, exchange="gradient", batch=[100] * 6, samples=[1000] * 6,
                       compression={"kind": "topk", "ratio": 0.05}),
}


def make_plan(cluster, job, name: str, two_phases: bool = True):
    spec = dict(PLANS[name])
    batch, samples = spec.pop("batch"), spec.pop("samples")
    phase = {"epochs": 2, "resolution": 32, "staleness": None, "local_steps": None, "lr": 0.1,
             "compression": {"kind": "none"}, **spec,
             "workers": [{"name": f"w{i}", "batch": b, "samples": s} for i, (b, s) in enumerate(zip(batch, samples))]}
    phases = [phase, {**phase, "epochs": 2, "lr": 0.01}] if two_phases else [{**phase, "epochs": 4}]
    return plan_from_dict({"format": "hybridps.plan/1", "phases": phases}, cluster=cluster, job=job)


def assert_same(got, want, path=""):
    """Equal structure; ints and strings exactly, floats to REL."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), path
        for k in want:
            if k != "wall_s":
                assert_same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=REL, abs_tol=1e-12), f"{path}: {got} vs {want}"
    else:
        assert got == want, f"{path}: {got!r} vs {want!r}"


def update_log(result):
    log = result.counters.update_log
    return {"t_s": log.t_s, "phase": log.phase, "worker": log.worker, "staleness": log.staleness,
            "samples": log.samples}


GRID = list(itertools.product([False, True], [1, 2], [False, True], sorted(PLANS)))


@pytest.mark.parametrize("mixed,shards,stragglers,plan_name", GRID,
                         ids=[f"{'mixed' if m else 'equal'}-{s}shard-{'strag' if st else 'calm'}-{p}"
                              for m, s, st, p in GRID])
def test_fast_paths_equal_the_reference(mixed, shards, stragglers, plan_name):
    cluster, job = make_cluster(mixed, shards, stragglers), make_job()
    plan = make_plan(cluster, job, plan_name)
    fast = simulate(cluster, job, plan, log_updates=True)
    ref = simulate(cluster, job, plan, log_updates=True, fast=False)
    assert fast.summary()["updates"] > 0
    assert_same(fast.summary(), ref.summary())
    assert_same(update_log(fast), update_log(ref))


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("plan_name", ["bsp-gradient", "asp-gradient", "ssp-1"])
def test_fast_paths_write_the_same_trace(mixed, plan_name):
    cluster, job = make_cluster(mixed, 2, True), make_job()
    plan = make_plan(cluster, job, plan_name)
    fast = simulate(cluster, job, plan, record=True, log_updates=True)
    ref = simulate(cluster, job, plan, record=True, log_updates=True, fast=False)
    assert len(fast.records) > 100
    assert_same(fast.records, ref.records)
    assert_same(update_log(fast), update_log(ref))
