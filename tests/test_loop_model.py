"""What the loop (docs/loop.md) taught the model, with numbers: per-iteration compute
noise (`[stragglers] jitter_cv`: the draws, a bsp round waiting for the slowest of noisy
workers, calibrate recovering it), the bsp server time taken from the round's last
pusher, the time between phases (`[ps] phase_overhead_s`: simulated, fitted, reported),
and validate counting the gaps around messages as the model does."""

from __future__ import annotations

import numpy as np
import pytest

from hybridps.spec import load_cluster
from hybridps.stragglers import StragglerSchedule
from sim import simulate
from test_sim_closed_form import make_cluster, make_job, make_plan
from traces import TraceWriter, read_trace
from traces.calibrate import _ps_gaps, calibrate
from traces.cluster_toml import cluster_to_toml
from traces.records import header

COMPUTE_S = 0.001 * 10 + 0.01  # make_cluster's a·n + b at batch 10


def _bsp(n_workers, epochs, jitter_cv, seed=0, record=False):
    cluster = make_cluster([{"name": f"w{i}"} for i in range(n_workers)],
                           stragglers={"jitter_cv": jitter_cv} if jitter_cv else None)
    job = make_job(samples=10 * n_workers, epochs=epochs, parameters=1000)
    plan = make_plan(cluster, job, [{"sync": "bsp", "exchange": "gradient",
                                     "workers": [{"name": f"w{i}", "batch": 10, "samples": 10}
                                                 for i in range(n_workers)]}])
    return cluster, job, plan, simulate(cluster, job, plan, seed=seed, record=record)


def test_jitter_draws_have_mean_1_and_the_cv_and_repeat_by_seed():
    cluster = make_cluster([{"name": "w0"}, {"name": "w1"}], stragglers={"jitter_cv": 0.3})
    s = StragglerSchedule(cluster, seed=5)
    draws = np.array([s.jitter("w0") for _ in range(40_000)])
    assert draws.mean() == pytest.approx(1.0, abs=0.01)
    assert draws.std() == pytest.approx(0.3, abs=0.01)
    again = StragglerSchedule(cluster, seed=5)
    assert [again.jitter("w0") for _ in range(5)] == list(draws[:5])  # same seed, same sequence
    other = StragglerSchedule(cluster, seed=5)
    assert [other.jitter("w1") for _ in range(5)] != list(draws[:5])  # each worker its own stream
    assert StragglerSchedule(make_cluster([{"name": "w0"}])).jitter("w0") == 1.0  # default: none


def test_bsp_rounds_wait_for_the_slowest_noisy_worker():
    # 1 worker: the noise averages out (mean 1): 1000 rounds of 0.02 s compute within 2%
    _, _, _, one = _bsp(1, 1000, 0.3)
    assert one.counters.compute_s[0] == pytest.approx(1000 * COMPUTE_S, rel=0.02)
    # 3 workers in lock-step: each round's compute is the max of 3 draws. Without noise the
    # round is 0.02 s + the exchange; with cv 0.3 the compute part is E[max of 3] ≈ 1.25×.
    _, _, _, quiet = _bsp(3, 1000, 0.0)
    _, _, _, noisy = _bsp(3, 1000, 0.3)
    shape = 1 / 0.3 ** 2
    e_max = np.random.default_rng(1).gamma(shape, 1 / shape, size=(200_000, 3)).max(axis=1).mean()
    exchange_s = quiet.makespan_s - 1000 * COMPUTE_S
    print(f"E[max of 3] = {e_max:.4f}; makespan quiet {quiet.makespan_s:.3f} s, noisy {noisy.makespan_s:.3f} s")
    assert e_max == pytest.approx(1.25, abs=0.02)
    assert noisy.makespan_s == pytest.approx(1000 * COMPUTE_S * e_max + exchange_s, rel=0.02)
    # deterministic by seed
    assert _bsp(3, 50, 0.3, seed=4)[3].makespan_s == _bsp(3, 50, 0.3, seed=4)[3].makespan_s


def test_calibrate_recovers_jitter_from_a_simulated_run(tmp_path):
    *_, res = _bsp(3, 400, 0.2, record=True)
    path = tmp_path / "run.jsonl"
    with TraceWriter(path, dict(res.header, source="runtime")) as w:
        for r in res.records:
            w.write(r)
    cal = calibrate([read_trace(path)])
    print(f"fitted jitter_cv {cal.jitter_cv:.4f} (true 0.2)")
    # iterations beyond 1.5× the fit (here ~1.5% of them) go to the stragglers' part, so
    # the inliers' spread is a little below the true 0.2
    assert 0.17 <= cal.jitter_cv <= 0.2
    assert cal.stragglers.episodes > 0
    assert cal.cluster.stragglers.jitter_cv == pytest.approx(cal.jitter_cv)
    out = tmp_path / "c.toml"
    out.write_text(cluster_to_toml(cal.cluster))
    assert "jitter_cv = " in out.read_text()
    assert load_cluster(out) == cal.cluster  # round-trips


def test_bsp_server_time_is_the_last_pushers_wait(tmp_path):
    # w0's push ends first but its reply is sent last (+300 ms): the round itself waits only
    # for w1, the last pusher, whose reply starts 1 ms after its push ends.
    job = {"format": "hybridps.job/1", "model": {"name": "m", "parameters": 1000},
           "data": {"name": "d", "samples": 16}, "train": {"epochs": 1, "resolutions": [32], "base_batch": 8,
                                                           "base_lr": 0.1}}
    plan = {"format": "hybridps.plan/1", "phases": [
        {"epochs": 1, "resolution": 32, "staleness": None, "exchange": "gradient", "local_steps": None,
         "lr": 0.1, "sync": "bsp", "workers": [{"name": f"w{i}", "batch": 8, "samples": 8} for i in range(2)]}]}
    cluster = {"format": "hybridps.cluster/1",
               "devices": {"dev": {"resolutions": {"32": {"a": 0.001, "b": 0.001, "max_batch": 128}}}},
               "workers": [{"name": f"w{i}", "device": "dev"} for i in range(2)]}
    path = tmp_path / "r.jsonl"
    with TraceWriter(path, header("runtime", cluster=cluster, job=job, plan=plan)) as w:
        for i, (push_end, pull_start) in enumerate(((1.0, 1.3), (1.2, 1.201))):
            w.write({"kind": "push", "worker": f"w{i}", "phase": 0, "start_s": 0.9, "end_s": push_end, "bytes": 8})
            w.write({"kind": "pull", "worker": f"w{i}", "phase": 0, "start_s": pull_start,
                     "end_s": pull_start + 0.001, "bytes": 8})
    assert _ps_gaps(read_trace(path)) == pytest.approx([0.001])


# ------------------------------------------------------------------ time between phases


def test_phase_overhead_delays_each_next_phase_and_counts_in_the_makespan():
    cluster, job, _, _ = _bsp(2, 3, 0.0)
    phase = {"sync": "bsp", "exchange": "gradient", "workers": [{"name": f"w{i}", "batch": 10, "samples": 10}
                                                                  for i in range(2)]}
    plan = make_plan(cluster, job, [phase, phase, phase])
    quiet = simulate(cluster, job, plan).summary()
    slow = cluster.model_copy(update={"ps": cluster.ps.model_copy(update={"phase_overhead_s": 0.25})})
    paused = simulate(slow, job, plan).summary()
    # three phases, two boundaries: 0.5 s more, and each phase lasts as long as before
    assert paused["makespan_s"] == pytest.approx(quiet["makespan_s"] + 0.5)
    for (a, b), (c, d) in zip([(p["start_s"], p["end_s"]) for p in quiet["phases"]],
                              [(p["start_s"], p["end_s"]) for p in paused["phases"]]):
        assert d - c == pytest.approx(b - a)
    gaps = [b["start_s"] - a["end_s"] for a, b in zip(paused["phases"], paused["phases"][1:])]
    assert gaps == pytest.approx([0.25, 0.25])


def test_calibrate_fits_the_time_between_phases_and_validate_reports_it(tmp_path):
    cluster, job, _, _ = _bsp(2, 3, 0.0)
    phase = {"sync": "bsp", "exchange": "gradient", "workers": [{"name": f"w{i}", "batch": 10, "samples": 10}
                                                                  for i in range(2)]}
    plan = make_plan(cluster, job, [phase, phase, phase])
    truth = cluster.model_copy(update={"ps": cluster.ps.model_copy(update={"phase_overhead_s": 0.04})})
    res = simulate(truth, job, plan, record=True)
    path = tmp_path / "run.jsonl"
    with TraceWriter(path, dict(res.header, source="runtime")) as w:
        for r in res.records:
            w.write(r)
    cal = calibrate([read_trace(path)], base=cluster)
    assert cal.phase_overhead_s == pytest.approx(0.04)
    assert cal.cluster.ps.phase_overhead_s == pytest.approx(0.04)
    out = tmp_path / "c.toml"
    out.write_text(cluster_to_toml(cal.cluster))
    assert "phase_overhead_s = 0.04" in out.read_text() and load_cluster(out) == cal.cluster
    from traces.compare import compare, measured_summary
    cmp = compare(simulate(cal.cluster, job, plan).summary(), measured_summary(read_trace(path)))
    assert cmp["between_phases"]["measured"] == pytest.approx(0.08)
    assert cmp["between_phases"]["rel_error"] == pytest.approx(0, abs=1e-9)
    assert cmp["makespan"]["rel_error"] == pytest.approx(0, abs=1e-9)


def test_measured_comm_time_includes_the_gaps_the_model_gives_to_messages(tmp_path):
    # compute 0-10 ms, 2 ms gap (encoding), push 12-15 ms, pull 15-16 ms, 1 ms gap (loading),
    # compute 17-27 ms, then a gap of 3 ms to the next compute (given to the compute)
    recs = [("compute", 0.000, 0.010), ("push", 0.012, 0.015), ("pull", 0.015, 0.016),
            ("compute", 0.017, 0.027), ("compute", 0.030, 0.040)]
    cluster = {"format": "hybridps.cluster/1",
               "devices": {"dev": {"resolutions": {"32": {"a": 0.001, "b": 0.001, "max_batch": 128}}}},
               "workers": [{"name": "w0", "device": "dev"}]}
    path = tmp_path / "r.jsonl"
    with TraceWriter(path, header("runtime", cluster=cluster)) as w:
        for k, (kind, a, b) in enumerate(recs):
            r = {"kind": kind, "worker": "w0", "phase": 0, "start_s": a, "end_s": b}
            if kind == "compute":
                r.update(epoch=0, step=k, batch=8, resolution=32)
            else:
                r["bytes"] = 8
            w.write(r)
    from traces.compare import measured_summary
    m = measured_summary(read_trace(path))["workers"]["w0"]
    assert m["comm_s"] == pytest.approx(0.003 + 0.002 + 0.001 + 0.001)  # push + 2 ms before, pull + 1 ms after
    assert m["compute_s"] == pytest.approx(0.010 + 0.013 + 0.010)  # the 3 ms gap goes to the first compute
