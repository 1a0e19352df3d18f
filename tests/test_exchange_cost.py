"""The cost of one exchange (hybridps/exchange_cost.py) by hand, and its users (the
simulator's predictor, the solver's closed form) taking every term from it."""

from __future__ import annotations

import pytest

from hybridps import exchange_cost as cost
from hybridps.spec import Compression, cluster_from_dict, load_job, plan_from_dict
from sim.predictor import message_latency_s, phase_costs
from solver.timemodel import exchange_cost

PARAMS = 11_227_812  # cifar100-resnet18; over 5 shards: 2,245,563 (twice) and 2,245,562 (three times)


def _cluster(shards=5):
    return cluster_from_dict({
        "format": "hybridps.cluster/1",
        "ps": {"count": shards, "bandwidth_gbps": 8.0, "latency_ms": 0.1, "apply_s_per_mparam": 0.02},
        "devices": {"g": {"resolutions": {"32": {"a": 0.001, "b": 0.01, "max_batch": 512}}}},
        "workers": [{"name": "w", "device": "g", "count": 3, "bandwidth_gbps": 4.0, "latency_ms": 0.4}]}, "<test>")


def test_messages_latency_transfer_and_apply_by_hand():
    cluster, job = _cluster(), load_job("cifar100-resnet18")
    push = cost.push_message(cluster, job, Compression())
    pull = cost.pull_message(cluster, job)
    assert push.shard_bytes == pull.shard_bytes == (4 * 2_245_563,) * 2 + (4 * 2_245_562,) * 3
    assert push.total_bytes == 4 * PARAMS and push.largest_bytes == 4 * 2_245_563
    assert push.wire_bytes == 5 * 4 * 2_245_563
    onebit = cost.push_message(cluster, job, Compression(kind="onebit"))
    assert onebit.shard_bytes[0] == (2_245_563 + 7) // 8 + 4  # compressed per slice
    w, ps = cluster.worker_list[0], cluster.ps
    assert cost.latency_s(w, ps) == pytest.approx(0.5e-3)
    worker_bps, shard_bps = 4e9 / 8, 8e9 / 8
    # alone: the worker NIC (every slice) is the bottleneck; with 3 flows per shard NIC, the shard
    assert cost.transfer_s(push.shard_bytes, w, ps) == pytest.approx(4 * PARAMS / worker_bps)
    assert cost.transfer_s(push.shard_bytes, w, ps, flows_per_shard=3) == pytest.approx(4 * PARAMS / worker_bps)
    assert cost.transfer_s(push.shard_bytes, w, ps, flows_per_shard=12) == pytest.approx(
        12 * 4 * 2_245_563 / shard_bps)
    assert cost.message_s(push.shard_bytes, w, ps) == pytest.approx(4 * PARAMS / worker_bps + 0.5e-3)
    # docs/semantics.md: apply_s_per_mparam x shard_parameters / 1e6; an update waits for the largest shard
    assert cost.shard_apply_s(ps, 2_245_562) == pytest.approx(0.02 * 2_245_562 / 1e6)
    assert cost.update_apply_s(ps, PARAMS) == pytest.approx(0.02 * 2_245_563 / 1e6)


def test_simulator_and_solver_use_the_same_costs():
    cluster, job = _cluster(), load_job("cifar100-resnet18")
    phase = {"epochs": job.train.epochs, "resolution": 32, "sync": "bsp", "staleness": None, "exchange": "gradient",
             "local_steps": None, "lr": 0.1,
             "workers": [{"name": f"w{i}", "batch": 100, "samples": 16_667 - (i == 2)} for i in range(3)]}
    plan = plan_from_dict({"format": "hybridps.plan/1", "phases": [phase]}, cluster=cluster, job=job)
    ps, w = cluster.ps, cluster.worker_list[0]
    push = cost.push_message(cluster, job, Compression()).shard_bytes
    pull = cost.pull_message(cluster, job).shard_bytes
    apply_s = cost.update_apply_s(ps, PARAMS)
    ex = exchange_cost(cluster, job, Compression())
    assert ex.alone_s[0] == pytest.approx(cost.message_s(push, w, ps) + cost.message_s(pull, w, ps) + apply_s,
                                          rel=1e-12)
    assert ex.concurrent_s[0] == pytest.approx(cost.message_s(push, w, ps, 3) + cost.message_s(pull, w, ps, 3)
                                               + apply_s, rel=1e-12)
    assert message_latency_s(cluster) == [cost.latency_s(x, ps) for x in cluster.worker_list]
    # the simulator: the shards as one lock-step link carrying S x the largest slice, the
    # largest shard's apply, the same bytes (the solver charged parameters / S before)
    pc = phase_costs(cluster, job, plan.phases[0])
    assert pc.apply_s == apply_s == pytest.approx(0.02 * 2_245_563 / 1e6)
    assert (pc.push_bytes, pc.pull_bytes) == (ex.push_bytes[0], ex.pull_bytes) == (4 * PARAMS, 4 * PARAMS)
    assert pc.push_wire_bytes == pc.pull_wire_bytes == 5 * 4 * 2_245_563
