"""The simulator against makespans computed by hand (each to within 1%).

Every case uses tiny specs whose numbers are easy to follow: a 1 Gbps NIC moves
1.25e8 B/s, a model of 1,250,000 fp32 parameters is 5e6 bytes (0.04 s alone on 1 Gbps).
"""

from __future__ import annotations

import pytest

from hybridps.spec import cluster_from_dict, job_from_dict, plan_from_dict
from sim import simulate

GBPS = 1.25e8  # bytes per second on a 1 Gbps link
P = 1_250_000  # parameters: 5e6 bytes on the wire


def make_cluster(workers, ps_count=1, ps_gbps=1.0, ps_latency_ms=0.0, apply_s_per_mparam=0.0, a=0.001, b=0.01,
                 stragglers=None):
    """workers: list of dicts {name, slowdown?, bandwidth_gbps?, latency_ms?}."""
    data = {
        "format": "hybridps.cluster/1",
        "ps": {"count": ps_count, "bandwidth_gbps": ps_gbps, "latency_ms": ps_latency_ms,
               "apply_s_per_mparam": apply_s_per_mparam},
        "devices": {"dev": {"resolutions": {"32": {"a": a, "b": b, "max_batch": 1000}}}},
        "workers": [{"device": "dev", "bandwidth_gbps": 1.0, "latency_ms": 0.0, **w} for w in workers],
    }
    if stragglers:
        data["stragglers"] = stragglers
    return cluster_from_dict(data)


def make_job(samples, epochs, parameters=P):
    return job_from_dict({
        "format": "hybridps.job/1",
        "model": {"name": "m", "parameters": parameters, "bytes_per_parameter": 4},
        "data": {"name": "d", "samples": samples},
        "train": {"epochs": epochs, "resolutions": [32], "base_batch": 10, "base_lr": 0.1},
    })


def make_plan(cluster, job, phases):
    full = []
    for ph in phases:
        full.append({"epochs": job.train.epochs, "resolution": 32, "staleness": None, "local_steps": None,
                     "lr": 0.1, "compression": {"kind": "none"}, **ph})
    return plan_from_dict({"format": "hybridps.plan/1", "phases": full}, cluster=cluster, job=job)


def assert_close(got, want, rel=0.01):
    assert got == pytest.approx(want, rel=rel), f"simulated {got}, hand-computed {want}"


def test_homogeneous_bsp_pushes_share_the_ps_nic():
    # 4 workers, batch 10, one iteration per epoch (40 samples / 4 workers), 5 epochs.
    # Per round: compute (0.001*10 + 0.01) = 0.02 s; four 5e6-byte pushes share the PS
    # NIC, 1.25e8/4 = 3.125e7 B/s each: 5e6/3.125e7 = 0.16 s, plus one-way latency
    # 0.5 ms (worker NIC) + 0.5 ms (PS NIC) = 0.001 s; the pulls likewise 0.161 s.
    # Round = 0.02 + 0.161 + 0.161 = 0.342 s; 5 rounds = 1.71 s.
    cluster = make_cluster([{"name": "w", "count": 4, "latency_ms": 0.5}], ps_latency_ms=0.5)
    job = make_job(samples=40, epochs=5)
    plan = make_plan(cluster, job, [{"sync": "bsp", "exchange": "gradient",
                                     "workers": [{"name": f"w{i}", "batch": 10, "samples": 10} for i in range(4)]}])
    s = simulate(cluster, job, plan).summary()
    assert_close(s["makespan_s"], 5 * (0.02 + 0.16 + 0.001 + 0.16 + 0.001))
    assert s["updates"] == 4 * 5 and s["staleness"]["max"] == 0
    for w in s["workers"].values():
        assert w["iterations"] == 5 and w["samples"] == 50
        assert_close(w["comm_s"], 5 * 2 * 0.161)
        assert w["bytes_pushed"] == w["bytes_pulled"] == 5 * 5_000_000
    assert len(s["epoch_end_s"]) == 5
    assert_close(s["epoch_end_s"][0], 0.02 + 0.161)  # the first round's update


def test_bsp_persistent_straggler_fair_share_differs_from_naive():
    # Two workers, one at slowdown 2: computes take 0.02 s (fast) and 0.04 s (slow).
    # Fast push starts alone at 0.02 at 1.25e8 B/s; by 0.04 it has sent 2.5e6 bytes.
    # From 0.04 both share the PS NIC at 6.25e7 B/s: fast's last 2.5e6 bytes take
    # 0.04 s (done at 0.08) while slow sends 2.5e6; slow's last 2.5e6 bytes then run
    # alone at 1.25e8 B/s: 0.02 s, done at 0.10. Both pulls share: 2*5e6/1.25e8 = 0.08 s.
    # Round = 0.18 s; 3 epochs of one round each = 0.54 s.
    # The naive "N x bytes / bandwidth" model: slowest compute 0.04 + 2*0.04 + 2*0.04
    # = 0.20 s per round, 0.60 s, which is 11% off.
    cluster = make_cluster([{"name": "fast"}, {"name": "slow", "slowdown": 2.0}])
    job = make_job(samples=20, epochs=3)
    plan = make_plan(cluster, job, [{"sync": "bsp", "exchange": "gradient",
                                     "workers": [{"name": "fast", "batch": 10, "samples": 10},
                                                 {"name": "slow", "batch": 10, "samples": 10}]}])
    result = simulate(cluster, job, plan, record=True)
    fair, naive = 3 * 0.18, 3 * (0.04 + 2 * 5e6 / GBPS + 2 * 5e6 / GBPS)
    assert_close(result.makespan_s, fair)
    assert abs(result.makespan_s - naive) / naive > 0.05
    pushes = {r["worker"]: r for r in result.records if r["kind"] == "push" and r["start_s"] < 0.1}
    assert pushes["fast"]["end_s"] == pytest.approx(0.08) and pushes["slow"]["end_s"] == pytest.approx(0.10)
    s = result.summary()
    assert s["workers"]["fast"]["wait_s"] == pytest.approx(3 * 0.02)  # waits for the slow push each round


def test_two_ps_shards_split_the_bytes_and_apply_in_parallel():
    # 4 workers, 2 shards of 1 Gbps, apply 0.008 s per Mparam on 625,000 parameters per
    # shard = 0.005 s per round (shards in parallel). Each worker sends 2.5e6 bytes to
    # each shard; each shard NIC carries 4 such flows at 3.125e7 B/s each: 0.08 s
    # (worker NIC: 2 x 3.125e7 = 6.25e7 B/s, below its 1.25e8). Pulls the same 0.08 s.
    # Round = 0.02 + 0.08 + 0.005 + 0.08 = 0.185 s; 5 rounds = 0.925 s.
    # (With one shard the same run takes 5 x (0.02 + 0.16 + 0.01 + 0.16) = 1.75 s.)
    workers = [{"name": "w", "count": 4}]
    job = make_job(samples=40, epochs=5)
    phase = {"sync": "bsp", "exchange": "gradient",
             "workers": [{"name": f"w{i}", "batch": 10, "samples": 10} for i in range(4)]}
    two = make_cluster(workers, ps_count=2, apply_s_per_mparam=0.008)
    one = make_cluster(workers, ps_count=1, apply_s_per_mparam=0.008)
    assert_close(simulate(two, job, make_plan(two, job, [phase])).makespan_s, 0.925)
    assert_close(simulate(one, job, make_plan(one, job, [phase])).makespan_s, 1.75)


def test_asp_iterations_in_proportion_to_speed():
    # b = 0.1 s per iteration, a = 0; "slow" has slowdown 2. A tiny model (1,000 params =
    # 4,000 bytes) moves in tau = 4000/1.25e8 = 3.2e-5 s each way, so exchanges never
    # overlap and the cycles are fast: 0.1 + 2 tau, slow: 0.2 + 2 tau.
    # Target: 10 epochs x 300 samples = 3000 samples = 300 pushes of batch 10.
    # fast's 200th push is applied at 200 (0.1 + 2 tau) - tau = 20.01277 s, slow's 100th
    # earlier (100 x 0.200064 - tau = 20.00637): the count reaches 3000 with fast's 200th.
    # slow's 100th exchange ended at 20.0064 with 2990 applied, so it started a 101st
    # interval; the phase drains when that one is pulled: 20.0064 + 0.200064 = 20.206464.
    cluster = make_cluster([{"name": "fast"}, {"name": "slow", "slowdown": 2.0}], a=0.0, b=0.1)
    job = make_job(samples=300, epochs=10, parameters=1000)
    plan = make_plan(cluster, job, [{"sync": "asp", "exchange": "gradient",
                                     "workers": [{"name": "fast", "batch": 10, "samples": 200},
                                                 {"name": "slow", "batch": 10, "samples": 100}]}])
    s = simulate(cluster, job, plan).summary()
    tau = 4000 / GBPS
    assert_close(s["makespan_s"], 100 * (0.2 + 2 * tau) + (0.2 + 2 * tau))
    assert s["workers"]["fast"]["iterations"] == 200
    assert s["workers"]["slow"]["iterations"] == 101
    assert s["updates"] == 301


def test_dbsl_mini_epochs_with_model_exchange():
    # asp + model exchange + local_steps null: each worker pushes its model once per
    # worker-epoch (its whole share). "small": batch 10, 0.001*10+0.01 = 0.02 s, share
    # 100 = 10 iterations = 0.20 s. "large": batch 40, 0.05 s, share 200 = 5 iterations
    # = 0.25 s. A 5e6-byte model takes 0.04 s each way alone (exchanges never overlap
    # here), so small cycles every 0.28 s and large every 0.33 s.
    # Each worker runs exactly the phase's 3 mini-epochs (docs/semantics.md, the mini-epoch
    # rule). small: compute 0-0.20, push 0.20-0.24, pull 0.24-0.28; then 0.28-0.48-0.52-0.56
    # and 0.56-0.76-0.80-0.84: its 3rd commit is at 0.80, it stops at 0.84. large: compute
    # 0-0.25, push -0.29, pull -0.33; 0.33-0.58-0.62-0.66; 0.66-0.91-0.95-0.99: it stops at
    # 0.99, the makespan. Applied samples: 100 at 0.24, 300 at 0.29 (epoch 1), 400 at 0.52,
    # 600 at 0.62 (epoch 2), 700 at 0.80, 900 at 0.95 (epoch 3). (The old sample rule had
    # small run a 4th mini-epoch, 0.84 + 0.28 = 1.12 s.)
    cluster = make_cluster([{"name": "small"}, {"name": "large"}])
    job = make_job(samples=300, epochs=3)
    plan = make_plan(cluster, job, [{"sync": "asp", "exchange": "model",
                                     "workers": [{"name": "small", "batch": 10, "samples": 100},
                                                 {"name": "large", "batch": 40, "samples": 200}]}])
    result = simulate(cluster, job, plan, record=True)
    s = result.summary()
    assert_close(s["makespan_s"], 0.99)
    assert s["workers"]["small"]["iterations"] == 30 and s["workers"]["large"]["iterations"] == 15
    assert s["workers"]["small"]["bytes_pushed"] == 3 * 5_000_000
    updates = [(r["worker"], r["t_s"], r["staleness"]) for r in result.records if r["kind"] == "update"]
    assert [u[0] for u in updates] == ["small", "large", "small", "large", "small", "large"]
    assert updates[2][1] == pytest.approx(0.52) and updates[2][2] == 1  # large's update came in between
    assert s["epoch_end_s"] == pytest.approx([0.29, 0.62, 0.95])


ELEMENTS = 1_000_003  # odd, so the two shards get 500,002 and 500,001 parameters


@pytest.mark.parametrize("compression, per_push_bytes", [
    ({"kind": "none"}, 4 * 500_002 + 4 * 500_001),  # fp32, uncompressed
    # keep round(0.01 * 500,002) = 5000 and round(0.01 * 500,001) = 5000 elements, 8 bytes each
    ({"kind": "topk", "ratio": 0.01}, 8 * 5000 + 8 * 5000),
    # round(0.05 * 500,002) = round(25000.1) = 25000; round(25000.05) = 25000
    ({"kind": "randomk", "ratio": 0.05}, 8 * 25000 + 8 * 25000),
    # ceil(500,002 / 8) = 62,501 and ceil(500,001 / 8) = 62,501 sign bytes, + 4 (scale) each
    ({"kind": "onebit"}, (62_501 + 4) + (62_501 + 4)),
    # levels 3: 1 + ceil(log2 4) = 3 bits; ceil(500,002*3/8) = 187,501, ceil(500,001*3/8) = 187,501; + 4
    ({"kind": "dithering", "levels": 3}, (187_501 + 4) + (187_501 + 4)),
    # levels 7: 1 + ceil(log2 8) = 4 bits; 500,002*4/8 = 250,001, ceil(500,001*4/8) = 250,001; + 4
    ({"kind": "dithering", "levels": 7, "normalize": "l2"}, (250_001 + 4) + (250_001 + 4)),
])
def test_compression_wire_bytes_exact(compression, per_push_bytes):
    # 2 workers, 2 shards, 2 iterations per worker-epoch, 3 epochs: 6 exchanges each.
    cluster = make_cluster([{"name": "w", "count": 2}], ps_count=2)
    job = make_job(samples=40, epochs=3, parameters=ELEMENTS)
    plan = make_plan(cluster, job, [{"sync": "bsp", "exchange": "gradient", "compression": compression,
                                     "workers": [{"name": f"w{i}", "batch": 10, "samples": 20} for i in range(2)]}])
    result = simulate(cluster, job, plan, record=True)
    s = result.summary()
    for w in s["workers"].values():
        assert w["bytes_pushed"] == 6 * per_push_bytes
        assert w["bytes_pulled"] == 6 * 4 * ELEMENTS  # pulls are never compressed
    assert s["bytes_total"] == 2 * 6 * (per_push_bytes + 4 * ELEMENTS)
    assert {r["bytes"] for r in result.records if r["kind"] == "push"} == {per_push_bytes}
    # a compressed push is also shorter on the wire: 2 workers on 2 shard NICs of 1 Gbps
    # are limited by their own 1 Gbps NIC, so a push takes its bytes / 1.25e8 s
    first_push = min((r for r in result.records if r["kind"] == "push"), key=lambda r: r["start_s"])
    assert first_push["end_s"] - first_push["start_s"] == pytest.approx(per_push_bytes / GBPS, rel=1e-3)


def test_bsp_heterogeneous_nics_water_fill():
    # PS 1 Gbps = 1.25e8 B/s; "slow" has a 0.25 Gbps NIC (3.125e7 B/s), two others 1 Gbps.
    # Round 1 pushes start together at 0.02: slow is capped at 3.125e7, the two others
    # share the remaining 9.375e7: 4.6875e7 each, done at 0.02 + 5e6/4.6875e7 = 0.126667
    # (an equal three-way split would give 0.02 + 5e6/4.1667e7 = 0.14). A capped flow
    # always gets its cap, so slow's push and pull take 5e6/3.125e7 = 0.16 s each in every
    # round and slow is the critical path: 3 rounds x (0.02 + 0.16 + 0.16) = 1.02 s.
    cluster = make_cluster([{"name": "w", "count": 2}, {"name": "slow", "bandwidth_gbps": 0.25}])
    job = make_job(samples=30, epochs=3)
    plan = make_plan(cluster, job, [{"sync": "bsp", "exchange": "gradient",
                                     "workers": [{"name": n, "batch": 10, "samples": 10}
                                                 for n in ("w0", "w1", "slow")]}])
    result = simulate(cluster, job, plan, record=True)
    assert_close(result.makespan_s, 1.02)
    first = {r["worker"]: r["end_s"] for r in result.records if r["kind"] == "push" and r["start_s"] == 0.02}
    assert first["w0"] == pytest.approx(0.126667, rel=1e-4) and first["slow"] == pytest.approx(0.18)
    assert result.summary()["workers"]["slow"]["comm_s"] == pytest.approx(6 * 0.16)
