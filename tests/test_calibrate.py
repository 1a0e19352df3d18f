"""Calibration: recovers known compute coefficients, slowdowns, links and stragglers from
synthetic traces (seeded noise), and writes a cluster.toml the loader reads back."""

from __future__ import annotations

import numpy as np
import pytest

from hybridps.cli import main
from hybridps.spec import load_cluster
from traces import TraceWriter, read_trace
from traces.calibrate import _ps_gaps, calibrate
from traces.cluster_toml import cluster_to_toml
from traces.records import header

A_S, B_S = 0.0005, 0.015  # seconds per sample, seconds per iteration
BW_GBPS, LAT_MS = 2.0, 0.4


def _cluster_dict(slowdowns=(1.0, 1.5, 2.0)):
    return {
        "format": "hybridps.cluster/1",
        "devices": {"dev": {"resolutions": {"32": {"a": 0.001, "b": 0.001, "max_batch": 128}}}},
        "workers": [{"name": f"w{i}", "device": "dev", "slowdown": s, "bandwidth_gbps": 10.0, "latency_ms": 0.05}
                    for i, s in enumerate(slowdowns)],
    }


def _profile_trace(path, rng, noise=0.005, repeats=5):
    """Profile records are medians of several timed iterations: 0.5% noise each."""
    with TraceWriter(path, header("profile")) as w:
        for res, scale in ((24, 0.6), (32, 1.0)):
            for batch in (16, 32, 64, 128, 256, 512):
                for _ in range(repeats):
                    t = (A_S * scale * batch + B_S) * (1 + noise * rng.standard_normal())
                    w.write({"kind": "profile", "device": "gtx", "resolution": res, "batch": batch, "iteration_s": t})
    return path


def _run_trace(path, rng, slowdowns=(1.0, 1.5, 2.0), straggle=None, iters=60, noise=0.01):
    """Each worker: compute (batch 64, every 10th a partial batch of 20), then push
    (compressed: 1/8 of the bytes) and pull (full bytes). `straggle` = {worker: (first, last, factor)}."""
    full = 400_000
    with TraceWriter(path, header("runtime", cluster=_cluster_dict(slowdowns))) as w:
        for wi, s in enumerate(slowdowns):
            t = 0.0
            for k in range(iters):
                n = 20 if k % 10 == 9 else 64
                f = 1.0
                if straggle and wi in straggle and straggle[wi][0] <= k <= straggle[wi][1]:
                    f = straggle[wi][2]
                dt = s * (A_S * n + B_S) * f * (1 + noise * rng.standard_normal())
                w.write({"kind": "compute", "worker": f"w{wi}", "phase": 0, "epoch": 0, "step": k, "batch": 64,
                         "resolution": 32, "start_s": t, "end_s": t + dt, "samples": n})
                t += dt
                for kind, nbytes in (("push", full // 8), ("pull", full)):
                    dt = (LAT_MS / 1e3 + nbytes / (BW_GBPS * 1.25e8)) * (1 + noise * rng.standard_normal())
                    w.write({"kind": kind, "worker": f"w{wi}", "phase": 0, "start_s": t, "end_s": t + dt,
                             "bytes": nbytes})
                    t += dt
    return path


def test_recovers_a_and_b_from_a_noisy_profile_within_1_percent(tmp_path):
    rng = np.random.default_rng(7)
    cal = calibrate([read_trace(_profile_trace(tmp_path / "p.jsonl", rng))])
    fits = {(f.device, f.resolution): f for f in cal.compute}
    for res, scale in ((24, 0.6), (32, 1.0)):
        f = fits[("gtx", res)]
        print(f"res {res}: a={f.a:.6g} (true {A_S * scale:.6g}) b={f.b:.6g} (true {B_S}) R²={f.r2:.5f}")
        assert f.a == pytest.approx(A_S * scale, rel=0.01)
        assert f.b == pytest.approx(B_S, rel=0.01)
        assert f.r2 > 0.99 and f.max_batch == 512
    assert not cal.warnings
    # profile traces alone: one worker per device, round-trips through the loader
    path = tmp_path / "c.toml"
    path.write_text(cluster_to_toml(cal.cluster))
    assert load_cluster(path) == cal.cluster
    assert [w.device for w in cal.cluster.worker_list] == ["gtx"]


def test_recovers_bandwidth_and_latency_from_push_pull_within_2_percent(tmp_path):
    rng = np.random.default_rng(11)
    cal = calibrate([read_trace(_run_trace(tmp_path / "r.jsonl", rng))])
    assert len(cal.links) == 3
    for lf in cal.links:
        print(f"{lf.worker}: {lf.bandwidth_gbps:.4f} Gbps (true {BW_GBPS}), {lf.latency_ms:.4f} ms (true {LAT_MS})")
        assert lf.separable
        assert lf.bandwidth_gbps == pytest.approx(BW_GBPS, rel=0.02)
        # a message pays the worker's and the PS's latency: the worker keeps the rest
        assert lf.latency_ms + cal.cluster.ps.latency_ms == pytest.approx(LAT_MS, rel=0.02)


def test_separates_device_speed_from_worker_slowdown(tmp_path):
    rng = np.random.default_rng(3)
    cal = calibrate([read_trace(_run_trace(tmp_path / "r.jsonl", rng))])
    (f,) = cal.compute
    assert (f.device, f.resolution, f.sizes) == ("dev", 32, (20, 64))
    assert f.a == pytest.approx(A_S, rel=0.03) and f.b == pytest.approx(B_S, rel=0.03)
    slow = {w.worker: w.slowdown for w in cal.workers}
    assert slow == pytest.approx({"w0": 1.0, "w1": 1.5, "w2": 2.0}, rel=0.01)
    # the written cluster keeps the run's worker names and carries the fits
    c = cal.cluster
    assert [w.name for w in c.worker_list] == ["w0", "w1", "w2"]
    assert c.worker_by_name["w2"].slowdown == pytest.approx(2.0, rel=0.01)
    assert c.devices["dev"].resolutions[32].max_batch == 128  # from the header cluster (larger than used)
    assert cal.stragglers.episodes == 0 and c.stragglers.rate_per_hour == 0


def test_a_run_rescales_the_profile_and_sets_the_slowdowns(tmp_path):
    """The profile gives the shape of t(n); a run whose device is 1.2x slower than when
    profiled (other processes, overheads) rescales a and b; slowdowns are relative to the
    fastest worker. The run alone (one batch size per worker) could not separate them."""
    rng = np.random.default_rng(5)
    prof = _profile_trace(tmp_path / "p.jsonl", rng)
    run = _run_trace(tmp_path / "r.jsonl", rng, slowdowns=(1.2, 1.8, 2.4))
    text = tmp_path / "run.jsonl"
    text.write_text(run.read_text().replace('"dev"', '"gtx"'))  # the run's workers are gtx devices
    cal = calibrate([read_trace(prof), read_trace(text)])
    slow = {w.worker: w.slowdown for w in cal.workers}
    assert slow == pytest.approx({"w0": 1.0, "w1": 1.5, "w2": 2.0}, rel=0.02)
    fits = {(x.device, x.resolution): x for x in cal.compute}
    f = fits[("gtx", 32)]
    assert f.a == pytest.approx(1.2 * A_S, rel=0.02) and f.b == pytest.approx(1.2 * B_S, rel=0.02)
    assert f.max_batch == 512  # the profile's largest batch
    f24 = fits[("gtx", 24)]  # no run records at 24: the profile as measured
    assert f24.a == pytest.approx(0.6 * A_S, rel=0.02) and f24.b == pytest.approx(B_S, rel=0.02)


def test_estimates_transient_stragglers(tmp_path):
    rng = np.random.default_rng(9)
    straggle = {1: (10, 19, 3.0), 2: (30, 34, 3.0)}  # two episodes, factor 3
    cal = calibrate([read_trace(_run_trace(tmp_path / "r.jsonl", rng, straggle=straggle))])
    s = cal.stragglers
    print(s)
    assert s.episodes == 2
    assert s.slowdown == pytest.approx(3.0, rel=0.05)
    # the persistent slowdowns are not dragged up by the episodes
    slow = {w.worker: w.slowdown for w in cal.workers}
    assert slow == pytest.approx({"w0": 1.0, "w1": 1.5, "w2": 2.0}, rel=0.02)
    # episode lengths: 10 iterations of w1 and 5 of w2 at 3 x their normal time
    iter_s = {1: 1.5 * 3 * (A_S * 64 + B_S), 2: 2.0 * 3 * (A_S * 64 + B_S)}
    assert s.mean_duration_s > 0.5 * (10 * iter_s[1] + 5 * iter_s[2]) / 2
    assert cal.cluster.stragglers.rate_per_hour == pytest.approx(s.rate_per_hour)


def test_a_bad_linear_fit_is_reported_with_where(tmp_path):
    path = tmp_path / "p.jsonl"
    with TraceWriter(path, header("profile")) as w:
        for batch, t in ((16, 0.02), (32, 0.02), (64, 0.09), (128, 0.05), (256, 0.2)):
            w.write({"kind": "profile", "device": "cpu", "resolution": 8, "batch": batch, "iteration_s": t})
    cal = calibrate([read_trace(path)])
    text = " | ".join(cal.warnings)
    assert "device cpu at resolution 8" in text and "batch=64" in text


def test_cli_writes_a_cluster_the_loader_reads(tmp_path, capsys):
    rng = np.random.default_rng(1)
    run = _run_trace(tmp_path / "r.jsonl", rng)
    out = tmp_path / "cal.toml"
    assert main(["calibrate", str(run), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "R²" in text and "w2" in text and f"wrote {out}" in text
    c = load_cluster(out)
    assert c.worker_by_name["w1"].slowdown == pytest.approx(1.5, rel=0.02)
    assert c.worker_by_name["w1"].bandwidth_gbps == pytest.approx(BW_GBPS, rel=0.02)


def test_cli_unknown_worker_without_base_is_a_user_error(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    with TraceWriter(path, header("runtime")) as w:
        w.write({"kind": "compute", "worker": "ghost", "phase": 0, "epoch": 0, "step": 0, "batch": 8,
                 "resolution": 32, "start_s": 0.0, "end_s": 0.1})
    assert main(["calibrate", str(path), "-o", str(tmp_path / "c.toml")]) == 2
    assert "ghost" in capsys.readouterr().err
    assert not (tmp_path / "c.toml").exists()


def test_parameter_server_time_from_push_to_pull_gaps(tmp_path):
    """asp: each push's end to the worker's next pull's start; bsp: per round, from the
    last push to the last pull (the server answers the workers one after another)."""
    job = {"format": "hybridps.job/1", "model": {"name": "m", "parameters": 2_000_000},
           "data": {"name": "d", "samples": 100}, "train": {"epochs": 2, "resolutions": [32], "base_batch": 8,
                                                            "base_lr": 0.1}}
    workers = [{"name": f"w{i}", "batch": 8, "samples": 50} for i in range(2)]
    phase = {"epochs": 1, "resolution": 32, "staleness": None, "exchange": "gradient", "local_steps": None,
             "lr": 0.1, "workers": workers}
    plan = {"format": "hybridps.plan/1", "phases": [dict(phase, sync="asp"), dict(phase, sync="bsp")]}
    path = tmp_path / "r.jsonl"
    with TraceWriter(path, header("runtime", cluster=_cluster_dict((1.0, 1.0)), job=job, plan=plan)) as w:
        for k in range(20):  # asp: a 3 ms gap each time
            for i in range(2):
                t = 1.0 * k + 0.1 * i
                w.write({"kind": "push", "worker": f"w{i}", "phase": 0, "start_s": t, "end_s": t + 0.01, "bytes": 8})
                w.write({"kind": "pull", "worker": f"w{i}", "phase": 0, "start_s": t + 0.013, "end_s": t + 0.02,
                         "bytes": 8})
        for k in range(20):  # bsp: pushes end at +10/+12 ms, pulls start at +15/+17 ms -> 5 ms per round
            t = 100.0 + k
            for i in range(2):
                w.write({"kind": "push", "worker": f"w{i}", "phase": 1, "start_s": t, "end_s": t + 0.010 + 0.002 * i,
                         "bytes": 8})
                w.write({"kind": "pull", "worker": f"w{i}", "phase": 1, "start_s": t + 0.015 + 0.002 * i,
                         "end_s": t + 0.02 + 0.002 * i, "bytes": 8})
    gaps = sorted(_ps_gaps(read_trace(path)))
    assert gaps[:40] == pytest.approx([0.003] * 40) and gaps[40:] == pytest.approx([0.005] * 20)
    cal = calibrate([read_trace(path)])
    assert cal.ps_apply_s == pytest.approx(0.003)  # the median of all gaps
    assert cal.cluster.ps.apply_s_per_mparam == pytest.approx(0.003 / 2.0)  # 2 Mparam, one shard
