"""The closed-form time models the strategies share."""

from __future__ import annotations

import numpy as np
import pytest

from hybridps.spec import Compression, cluster_from_dict, load_cluster, load_job
from solver.candidates import estimate_makespan_s, uniform_plan
from solver.timemodel import coeffs, exchange_cost


def test_compute_time_folds_in_slowdown():
    cluster = load_cluster("mixed16")
    c = coeffs(cluster, 224)
    t4 = cluster.devices["t4"].resolutions[224]
    i = c.names.index("t4_3")  # slowdown 1.5
    assert c.a_s[i] == pytest.approx(1.5 * t4.a) and c.b_s[i] == pytest.approx(1.5 * t4.b)
    # d samples at batch B: d·(a + b/B)·slowdown
    assert 1000 * c.sample_s(np.full(16, 100.0))[i] == pytest.approx(1000 * (t4.a + t4.b / 100) * 1.5)


def test_exchange_cost_by_hand():
    cluster = cluster_from_dict({
        "format": "hybridps.cluster/1",
        "ps": {"count": 2, "bandwidth_gbps": 10.0, "latency_ms": 0.1, "apply_s_per_mparam": 0.01},
        "devices": {"g": {"resolutions": {"32": {"a": 0.001, "b": 0.01, "max_batch": 64}}}},
        "workers": [{"name": "w", "device": "g", "count": 4, "bandwidth_gbps": 5.0, "latency_ms": 0.2}]}, "<test>")
    job = load_job("cifar100-resnet18")  # 11,227,812 parameters, 4 bytes each
    n_bytes = 11_227_812 * 4
    ex = exchange_cost(cluster, job, Compression())
    worker_bps, ps_bps = 5e9 / 8, 10e9 / 8
    lat = 0.2e-3 + 0.1e-3
    apply_s = 0.01 * 11_227_812 / 2 / 1e6
    # alone: the worker NIC (whole message) is the bottleneck, not a shard (half of it)
    assert ex.alone_s[0] == pytest.approx(2 * n_bytes / worker_bps + 2 * lat + apply_s)
    # all four at once: each shard carries 4 half-messages at 10 Gbps = 2 messages per 1.25e9 B/s
    assert ex.concurrent_s[0] == pytest.approx(2 * max(n_bytes / worker_bps, 4 * n_bytes / 2 / ps_bps) + 2 * lat + apply_s)
    onebit = exchange_cost(cluster, job, Compression(kind="onebit"))
    assert onebit.push_bytes[0] == 2 * ((11_227_812 // 2 + 7) // 8 + 4)


def test_uniform_estimate_matches_the_simulator():
    """BSP with equal workers and no stragglers: the closed form is the simulator's answer."""
    from sim import simulate

    cluster, job = load_cluster("gtx1080x4"), load_job("cifar100-resnet18")
    plan, _ = uniform_plan(cluster, job)
    assert estimate_makespan_s(cluster, job, plan) == pytest.approx(simulate(cluster, job, plan, seed=0).makespan_s, rel=0.005)
