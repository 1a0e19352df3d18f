"""Simulator behaviour: determinism, seeds, ssp bound, phases, exchange intervals, the
two network implementations, and the trace it records."""

from __future__ import annotations

import random

import pytest
import simpy

from hybridps.spec import load_cluster, load_job, load_plan
from sim import simulate
from sim.network import EqualShareLink, WaterFillLink, water_fill
from test_sim_closed_form import make_cluster, make_job, make_plan
from traces import TraceWriter, read_trace, validate_record

STRAGGLERS = {"rate_per_hour": 3600.0, "slowdown": 3.0, "mean_duration_s": 0.2, "seed": 1}


def straggler_case(sync="asp", staleness=None, seed_workers=4):
    cluster = make_cluster([{"name": "w", "count": seed_workers}], ps_gbps=4.0, stragglers=STRAGGLERS)
    job = make_job(samples=400, epochs=4, parameters=250_000)
    plan = make_plan(cluster, job, [{"sync": sync, "staleness": staleness, "exchange": "gradient",
                                     "workers": [{"name": f"w{i}", "batch": 10, "samples": 100}
                                                 for i in range(seed_workers)]}])
    return cluster, job, plan


def _without_wall(summary):
    return {k: v for k, v in summary.items() if k != "wall_s"}


def test_same_inputs_and_seed_give_identical_results():
    cluster, job, plan = straggler_case()
    a = simulate(cluster, job, plan, seed=7, record=True)
    b = simulate(cluster, job, plan, seed=7, record=True)
    assert _without_wall(a.summary()) == _without_wall(b.summary())
    assert a.records == b.records and a.header == b.header and a.header["seed"] == 7


def test_another_seed_changes_transient_stragglers_and_makespan():
    cluster, job, plan = straggler_case()
    a = simulate(cluster, job, plan, seed=1, record=True)
    b = simulate(cluster, job, plan, seed=2, record=True)
    assert a.makespan_s != b.makespan_s
    # a straggling iteration takes 3x the 0.02 s of a normal one
    slow_a = {(r["worker"], r["start_s"]) for r in a.records if r["kind"] == "compute" and r["end_s"] - r["start_s"] > 0.05}
    slow_b = {(r["worker"], r["start_s"]) for r in b.records if r["kind"] == "compute" and r["end_s"] - r["start_s"] > 0.05}
    assert slow_a and slow_b and slow_a != slow_b
    # without a seed argument, the cluster's stragglers.seed (1) is used
    assert simulate(cluster, job, plan).makespan_s == a.makespan_s


def test_record_false_gives_the_same_summary_as_record_true():
    cluster, job, plan = straggler_case(sync="ssp", staleness=1)
    fast = simulate(cluster, job, plan, seed=3)
    full = simulate(cluster, job, plan, seed=3, record=True)
    assert fast.records == [] and fast.header is None
    assert _without_wall(fast.summary()) == _without_wall(full.summary())
    assert full.summary()["events"] == len(full.records)
    for r in full.records:
        assert validate_record(r) is None, r


@pytest.mark.parametrize("bound", [0, 1, 2])
def test_ssp_never_exceeds_its_staleness_bound(bound):
    # worker w3 is twice as slow, so the others would run ahead without the bound
    cluster = make_cluster([{"name": "w", "count": 3}, {"name": "w3", "slowdown": 2.0}], ps_gbps=4.0)
    job = make_job(samples=400, epochs=4, parameters=250_000)
    plan = make_plan(cluster, job, [{"sync": "ssp", "staleness": bound, "exchange": "gradient",
                                     "workers": [{"name": n, "batch": 10, "samples": 100}
                                                 for n in ("w0", "w1", "w2", "w3")]}])
    result = simulate(cluster, job, plan, record=True)
    recs = result.records
    pull_ends = {}
    for r in recs:
        if r["kind"] == "pull":
            pull_ends.setdefault(r["worker"], []).append(r["end_s"])
    last_end = {w: max(ends) for w, ends in pull_ends.items()}
    max_ahead = 0
    for r in recs:
        if r["kind"] != "compute":
            continue
        t = r["start_s"]
        done = {w: sum(1 for e in ends if e <= t + 1e-12) for w, ends in pull_ends.items()}
        active = [w for w in done if last_end[w] > t]  # workers that have not stopped yet
        ahead = done[r["worker"]] - min(done[w] for w in active)
        max_ahead = max(max_ahead, ahead)
    assert max_ahead == bound  # the bound is reached and never exceeded
    # without the bound (asp, same inputs) the fast workers run further ahead of w3
    asp = make_plan(cluster, job, [{**plan.phases[0].model_dump(mode="json"), "sync": "asp", "staleness": None}])
    iters_asp = simulate(cluster, job, asp).summary()["workers"]
    iters_ssp = result.summary()["workers"]
    assert iters_asp["w0"]["iterations"] - iters_asp["w3"]["iterations"] > 10
    assert iters_ssp["w0"]["iterations"] - iters_ssp["w3"]["iterations"] <= bound + 1


def test_phase_boundaries_are_global_and_time_adds_up():
    cluster = load_cluster("gtx1080x4")
    job = load_job("cifar100-resnet18")
    plan = load_plan("gtx1080x4-cifar100-dbsl", cluster, job)
    result = simulate(cluster, job, plan, record=True)
    s = result.summary()
    phases = s["phases"]
    assert len(phases) == len(plan.phases) and phases[0]["start_s"] == 0.0
    for prev, nxt in zip(phases, phases[1:]):
        assert nxt["start_s"] == prev["end_s"]
    assert phases[-1]["end_s"] == s["makespan_s"]
    for r in result.records:
        if r["kind"] == "compute":  # no worker starts a phase early or works past its end
            ph = phases[r["phase"]]
            assert ph["start_s"] - 1e-9 <= r["start_s"] and r["end_s"] <= ph["end_s"] + 1e-9
    assert len(s["epoch_end_s"]) == job.train.epochs
    assert s["epoch_end_s"] == sorted(s["epoch_end_s"]) and s["epoch_end_s"][-1] <= s["makespan_s"]
    for name, w in s["workers"].items():  # every worker's time is compute, communication or waiting
        assert w["compute_s"] + w["comm_s"] + w["wait_s"] == pytest.approx(s["makespan_s"])
        assert w["samples"] >= sum(ph.epochs for ph in plan.phases) * 10_625 * (1 if name == "gtx0" else 13_125 / 10_625)


def test_local_steps_and_partial_batches_follow_the_semantics():
    # share 95, batch 10: k = 10 iterations, the last one of 5 samples; local_steps 3:
    # exchanges after iterations 3, 6, 9 and 10 of every worker-epoch (counter restarts).
    cluster = make_cluster([{"name": "w"}])
    job = make_job(samples=95, epochs=2)
    plan = make_plan(cluster, job, [{"sync": "asp", "exchange": "gradient", "local_steps": 3,
                                     "workers": [{"name": "w", "batch": 10, "samples": 95}]}])
    result = simulate(cluster, job, plan, record=True)
    pushes = [r["samples"] for r in result.records if r["kind"] == "push"]
    assert pushes == [30, 30, 30, 5] * 2
    computes = [r for r in result.records if r["kind"] == "compute"]
    assert [r["step"] for r in computes] == list(range(10)) * 2
    assert [r["epoch"] for r in computes] == [0] * 10 + [1] * 10
    assert [r.get("samples") for r in computes if "samples" in r] == [5, 5]
    # the partial iteration costs a*5 + b = 0.015 s, a full one 0.02 s
    assert computes[9]["end_s"] - computes[9]["start_s"] == pytest.approx(0.015)
    assert result.summary()["workers"]["w"]["samples"] == 190


def test_streamed_trace_equals_the_in_memory_records(tmp_path):
    from sim import trace_header

    cluster, job, plan = straggler_case(sync="ssp", staleness=1)
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, trace_header(cluster, job, plan, seed=5)) as writer:
        streamed = simulate(cluster, job, plan, seed=5, record=True, trace=writer)
    back = read_trace(path)
    assert back.header == streamed.header
    assert back.records == streamed.records


def test_water_fill_is_max_min_fair():
    # PS link 10; private caps 1, 2, 100, 100: 1 and 2 are capped, the rest share 7
    assert water_fill([1.0, 100.0, 2.0, 100.0], 10.0) == [1.0, 3.5, 2.0, 3.5]
    assert water_fill([5.0, 5.0], 100.0) == [5.0, 5.0]


def _run_link(cls, caps, flows, shared):
    env = simpy.Environment()
    done = {}
    link = None

    def deliver(w, start, end):
        done[w] = (start, end)

    link = EqualShareLink(env, shared, caps[0], deliver) if cls is EqualShareLink else WaterFillLink(env, shared, caps, deliver)

    def starter(w, t0, nbytes, lat):
        yield env.timeout(t0)
        link.send(w, nbytes, lat)

    for w, (t0, nbytes, lat) in enumerate(flows):
        env.process(starter(w, t0, nbytes, lat))
    env.run()
    return done


@pytest.mark.parametrize("grid", [False, True])
def test_the_two_network_implementations_agree(grid):
    rng = random.Random(0)
    if grid:  # starts and sizes on a grid: flows start at the very instant others finish
        flows = [(0.04 * rng.randrange(20), 5e6 * rng.randrange(1, 4), 0.0) for _ in range(40)]
    else:
        flows = [(rng.uniform(0, 2), rng.uniform(1e5, 5e7), rng.choice([0.0, 1e-3])) for _ in range(40)]
    caps = [1.25e8 if grid else 1.25e9] * len(flows)
    shared = 5e8 if grid else 5e9
    fast = _run_link(EqualShareLink, caps, flows, shared=shared)
    general = _run_link(WaterFillLink, caps, flows, shared=shared)
    assert fast.keys() == general.keys() == set(range(40))
    for w in fast:
        assert fast[w][1] == pytest.approx(general[w][1], rel=1e-9)


def test_heterogeneous_nics_hand_computed():
    # PS 3e8 B/s; worker 0 capped at 1e8, worker 1 at 1e9; both send 4e8 bytes from t=0.
    # Water-fill: w0 gets 1e8, w1 the remaining 2e8. w1 finishes at 2 s; w0 has 2e8 left,
    # now alone (still capped at 1e8): finishes at 4 s.
    done = _run_link(WaterFillLink, [1e8, 1e9], [(0.0, 4e8, 0.0), (0.0, 4e8, 0.0)], shared=3e8)
    assert done[1][1] == pytest.approx(2.0) and done[0][1] == pytest.approx(4.0)


def test_progress_callback_counts_epochs():
    from sim import Simulation

    cluster, job, plan = straggler_case()
    seen = []
    result = Simulation(cluster, job, plan).run(progress=seen.append)
    assert seen == list(range(1, job.train.epochs + 1))
    assert result.summary()["epoch_end_s"][-1] <= result.makespan_s


def test_an_unchecked_bad_plan_gets_a_spec_error():
    from hybridps.errors import SpecError
    from hybridps.spec import plan_from_dict

    cluster, job, plan = straggler_case()
    data = plan.to_json_dict()
    data["phases"][0]["workers"][0]["name"] = "ghost"
    bad = plan_from_dict(data)  # not checked against the cluster
    with pytest.raises(SpecError, match="ghost"):
        simulate(cluster, job, bad)


def test_staleness_restarts_at_a_phase_boundary():
    """A worker that sat out a phase starts the next one from the current model: its first
    update there is not charged with the versions the others applied meanwhile."""
    import json

    from hybridps.spec import example_dir, load_cluster, load_job, plan_from_dict
    from sim import simulate

    cluster, job = load_cluster("gtx1080x4"), load_job("cifar100-resnet18")
    data = json.loads((example_dir("plan") / "gtx1080x4-cifar100-dbsl.json").read_text())
    solo = dict(data["phases"][1])
    solo.update(workers=[{"name": "gtx0", "batch": 500, "samples": 50_000}], exchange="gradient", local_steps=1,
                epochs=2)
    data["phases"] = [data["phases"][0] | {"epochs": 2}, solo, data["phases"][2] | {"epochs": 2}]
    plan = plan_from_dict(data, cluster=cluster, job=job)
    result = simulate(cluster, job, plan, record=True)
    updates = [r for r in result.records if r["kind"] == "update"]
    phase1 = [u for u in updates if u["phase"] == 1]
    assert len(phase1) == 200  # gtx0 alone: 2 epochs x 100 pushes
    first_of_phase2 = {}
    for u in updates:
        if u["phase"] == 2:
            first_of_phase2.setdefault(u["worker"], u["staleness"])
    # 4 asp workers: nobody can have seen more than the other 3 workers' updates
    assert max(first_of_phase2.values()) <= 3, first_of_phase2
    assert result.summary()["staleness"]["max"] <= 3
