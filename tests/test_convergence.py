"""The convergence model (sim/convergence.py), its fit (sim/convergence_fit.py), the
trace -> update stream reader, and how plan/simulate/validate/calibrate use them.
Torch-free: simulated traces stand in for runs (tests/test_convergence_e2e.py has the real ones)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from hybridps.spec import ConvergenceSpec, load_cluster, load_job, load_plan
from sim import simulate
from sim.convergence import (DEFAULT_STALENESS_PENALTY, Stream, accuracy_at, cumulative_progress, is_sync_switch, merge_progress,
                             predict_sim, progress_curve, progress_for_accuracy, risks, step_progress,
                             update_progress)
from solver.candidates import Constraints
from solver.search import search
from traces import TraceWriter, read_trace
from traces.update_stream import update_stream


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybridps", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("hybridps: error: "), r.stderr
    for n in needles:
        assert n in last, last


SPEC = load_job("digits-cnn").convergence


# --------------------------------------------------------------------------- the model


def test_step_progress_matches_mccandlish_closed_forms():
    phi, b = 16.0, 32.0
    x_opt = 1.0 / (1.0 + phi / b)
    assert float(step_progress(x_opt, b, phi)) == pytest.approx(1.0 / (1.0 + phi / b))  # Pollux's efficiency
    assert float(step_progress(2 * x_opt, b, phi)) == pytest.approx(0.0)  # twice the best LR: no progress
    assert float(step_progress(3 * x_opt, b, phi)) < 0  # beyond it a step diverges
    # staleness inflates the curvature term: (1 + kappa*s)
    assert float(step_progress(0.5, b, phi, 2.0, 0.25)) == pytest.approx(1.0 - 0.25 * 1.5 * 1.5)


def test_model_merge_steady_state_is_alpha_over_one_plus_alpha_one_plus_s():
    # 3 equal workers (alpha 1) in round robin: s = 2 merges between pull and push
    workers = np.tile([0, 1, 2], 200)
    deltas = merge_progress(workers, np.ones(3), np.ones(3))
    assert deltas[-30:].mean() == pytest.approx(1.0 / (1.0 + 1.0 * (1 + 2)), rel=1e-3)
    # a worker that fell far behind does not undo the server's progress
    assert merge_progress(np.array([0, 0, 0, 1]), np.array([5.0, 0.1]), np.array([1.0, 1.0]))[-1] == 0.0


def test_cumulative_progress_never_falls_below_the_initial_model():
    p = cumulative_progress(np.array([1.0, -3.0, 0.5, 2.0]))
    assert p.tolist() == [1.0, 0.0, 0.5, 2.5]


def _digits_plan(*phases):
    from hybridps.spec import plan_from_dict

    c, j = load_cluster("digits-cpu3"), load_job("digits-cnn")
    base = {"resolution": 8, "exchange": "gradient", "lr": 0.02,
            "workers": [{"name": f"w{i}", "batch": 32, "samples": 479} for i in range(3)]}
    return plan_from_dict({"format": "hybridps.plan/1", "phases": [{**base, **p} for p in phases]}, "<t>", c, j)


def test_a_sync_switch_keeps_its_stated_fraction_of_the_bsp_progress():
    plan = _digits_plan({"epochs": 4, "sync": "bsp"}, {"epochs": 6, "sync": "asp"})
    assert [is_sync_switch(plan, p) for p in (0, 1)] == [False, True]
    back = _digits_plan({"epochs": 4, "sync": "asp"}, {"epochs": 6, "sync": "bsp"})
    model = _digits_plan({"epochs": 4, "sync": "bsp"}, {"epochs": 6, "sync": "asp", "exchange": "model"})
    assert not is_sync_switch(back, 1) and not is_sync_switch(model, 1)
    res = simulate(load_cluster("digits-cpu3"), load_job("digits-cnn"), plan, log_updates=True)
    stream = Stream.from_update_log(res.counters.update_log, res.worker_names)
    delta = update_progress(stream, plan, SPEC)
    first = int(np.searchsorted(stream.phase, 1))
    bsp_end = float(cumulative_progress(delta[:first])[-1])
    for kept in (1.0, 0.25, 0.0):
        spec = SPEC.model_copy(update={"switch_progress_kept": kept})
        got = progress_curve(stream, plan, spec)
        assert got[first - 1] == pytest.approx(bsp_end)
        assert np.allclose(got[first:], cumulative_progress(delta[first:], kept * bsp_end))
    assert np.allclose(progress_curve(stream, plan, SPEC.model_copy(update={"switch_progress_kept": 1.0})),
                       cumulative_progress(delta))  # kept = 1: the plain cumulative sum


def test_accuracy_curve_and_its_inverse():
    p = progress_for_accuracy(0.9, SPEC)
    assert float(accuracy_at(p, SPEC)) == pytest.approx(0.9)
    assert progress_for_accuracy(SPEC.accuracy_final + 1e-6, SPEC) == float("inf")


def test_trace_stream_equals_the_simulator_update_log(tmp_path):
    """One convergence function serves sim and measured traces: a simulated trace read back
    gives the same stream as the simulator's update log, hence the same prediction."""
    c, j = load_cluster("gtx1080x4"), load_job("cifar100-resnet18")
    spec = SPEC.model_copy(update={"lr_max": 1.0})  # cifar's LR 0.2 is past digits' lr_max
    j = j.model_copy(update={"convergence": spec})
    for plan_name in ("gtx1080x4-cifar100-uniform", "gtx1080x4-cifar100-dbsl"):
        plan = load_plan(plan_name, c, j)
        short = plan.model_copy(update={"phases": [p.model_copy(update={"epochs": 2}) for p in plan.phases[:2]]})
        res = simulate(c, j, short, record=True, log_updates=True)
        path = tmp_path / f"{plan_name}.jsonl"
        with TraceWriter(path, res.header) as w:
            w.write_many(res.records)
        ms = update_stream(read_trace(path))
        log = res.counters.update_log
        assert ms.samples.tolist() == log.samples and ms.worker.tolist() == log.worker
        assert ms.staleness.tolist() == log.staleness and ms.phase.tolist() == log.phase
        a = update_progress(Stream(ms.t_s, ms.phase, ms.worker, ms.staleness, ms.samples, ms.names), short, spec)
        b = update_progress(Stream.from_update_log(log, res.worker_names), short, spec)
        assert np.allclose(a, b) and a.sum() > 0


def test_known_risks_are_named():
    c, j = load_cluster("gtx1080x4"), load_job("cifar100-resnet18")
    plan = load_plan("gtx1080x4-cifar100-uniform", c, j)
    assert risks(plan, None) == []
    onebit = plan.model_copy(update={"phases": [plan.phases[0].model_copy(update={
        "compression": plan.phases[0].compression.model_copy(update={"kind": "onebit", "scaling": False})})]})
    assert any("onebit compression (efficiency -1, default)" in r for r in risks(onebit, None))

    switch = _digits_plan({"epochs": 4, "sync": "bsp"}, {"epochs": 6, "sync": "asp"})
    assert risks(switch, None) == ["phase 1: asp (stale gradients)",
                                   "phase 1: bsp -> asp switch (keeps 0 of the progress made before it)"]
    assert risks(switch, SPEC.model_copy(update={"switch_progress_kept": 0.25}))[1].endswith("keeps 0.25 of the progress made before it)")


# --------------------------------------------------------------------------- the fit


def _synthetic_trace(tmp_path, truth: ConvergenceSpec, sync: str):
    """A simulated digits run with eval records drawn from `truth` (plus 0.5-point noise);
    sync "switch" is 10 bsp epochs, then 20 asp epochs."""
    c, j = load_cluster("digits-cpu3"), load_job("digits-cnn").model_copy(update={"convergence": None})
    phases = [{"epochs": 10, "sync": "bsp"}, {"epochs": 20, "sync": "asp"}] if sync == "switch" else \
        [{"epochs": 30, "sync": sync}]
    plan = _digits_plan(*phases)
    res = simulate(c, j, plan, record=True, log_updates=True)
    pred = predict_sim(res, plan, truth)
    rng = np.random.default_rng(0)
    ends = [0.0, *res.counters.epoch_end_s]
    at = pred.progress_at(np.array(ends))
    recs = list(res.records)
    for e, (t, p) in enumerate(zip(ends, at)):
        acc = float(np.clip(accuracy_at(p, truth) + (rng.normal(0, 0.005) if e else 0.0), 0, 1))
        loss = float(truth.loss_initial if e == 0 else (truth.loss_final + (truth.loss_initial - truth.loss_final)
                                                         * np.exp(-(p / truth.loss_progress) ** truth.loss_shape)))
        recs.append({"kind": "eval", "t_s": t, "epoch": float(e), "loss": loss, "accuracy": acc})
    path = tmp_path / f"{sync}.jsonl"
    with TraceWriter(path, res.header) as w:
        w.write_many(sorted(recs, key=lambda r: r.get("t_s", r.get("start_s", 0.0))))
    return path


def _truth(**changes) -> ConvergenceSpec:
    """A known model on the fit's assumptions: simulated traces carry no noise records, so the
    fit assumes the default noise scale (16) and the tied lr_max = base_lr * (1 + 16/32)."""
    return SPEC.model_copy(update={"accuracy_final": 0.97, "accuracy_progress": 120.0, "noise_scale": 16.0,
                                   "lr_max": 0.03, **changes})


def _calibrate(tmp_path, *traces) -> tuple[str, ConvergenceSpec]:
    out = tmp_path / "job.toml"
    r = cli("calibrate", *traces, "--job", "digits-cnn", "--job-out", out)
    assert r.returncode == 0, r.stderr
    return r.stdout, load_job(out).convergence


def test_calibrate_recovers_a_known_model_from_bsp_and_asp_traces(tmp_path):
    # a truth on the fit's assumptions identifies kappa_s from the asp trace
    traces = [_synthetic_trace(tmp_path, _truth(staleness_penalty=0.2), s) for s in ("bsp", "asp")]
    stdout, got = _calibrate(tmp_path, *traces)
    assert "not identifiable: noise_scale" in stdout and "not identifiable: staleness" not in stdout
    assert got.staleness_penalty == pytest.approx(0.2, rel=0.15)
    assert got.accuracy_final == pytest.approx(0.97, abs=0.01)
    assert got.accuracy_progress == pytest.approx(120.0, rel=0.1)
    assert got.fit.eval_points == 62 and got.fit.rmse_accuracy < 0.01
    assert "noise_scale" in got.defaults and "staleness_penalty" not in got.defaults
    # bsp alone cannot identify the staleness penalty: one line says so, the default is written
    stdout, got = _calibrate(tmp_path, traces[0])
    assert "not identifiable: staleness_penalty" in stdout
    assert got.staleness_penalty == DEFAULT_STALENESS_PENALTY == 1.0


def test_calibrate_fits_the_progress_a_sync_switch_keeps(tmp_path):
    traces = [_synthetic_trace(tmp_path, _truth(switch_progress_kept=0.3), s) for s in ("bsp", "switch")]
    stdout, got = _calibrate(tmp_path, *traces)
    assert got.switch_progress_kept == pytest.approx(0.3, abs=0.05)
    assert "switch_progress_kept" not in got.defaults and "not identifiable: switch_progress_kept" not in stdout
    # without a switch in the traces: one line, and the stated (conservative) default
    stdout, got = _calibrate(tmp_path, traces[0])
    assert "not identifiable: switch_progress_kept" in stdout and got.switch_progress_kept == 0.0


# --------------------------------------------------------------------------- plan / simulate


def test_plan_never_returns_a_plan_predicted_to_miss_while_one_reaches():
    c, j = load_cluster("gtx1080x4"), load_job("cifar100-resnet18").model_copy(update={"convergence": SPEC})

    def scorer(cluster, job, plan, seed):
        """Fast asp plans miss the target; bsp ones reach it at 90% of their makespan."""
        from solver.candidates import estimate_makespan_s

        t = estimate_makespan_s(cluster, job, plan)
        miss = any(p.sync != "bsp" for p in plan.phases)
        return {"makespan_s": t, "quality": {"final_accuracy": 0.5 if miss else 0.95, "final_loss": 1.0,
                                             "time_to_target_s": None if miss else 0.9 * t}}

    res = search(c, j, Constraints(), scorer=scorer, jobs=1, target_accuracy=0.9)
    assert all(p.sync == "bsp" for p in res.plan.phases)
    assert res.plan.meta["objective"] == "time_to_accuracy" and res.plan.meta["target_accuracy"] == 0.9
    assert res.plan.meta["predicted_time_to_target_s"] == pytest.approx(0.9 * res.best.best_s)
    reach = [r.reaches for r in res.ranked if r.reaches is not None]
    assert reach == sorted(reach, reverse=True)  # every plan that reaches ranks before every miss
    fastest_time = search(c, j, Constraints(), scorer=scorer, jobs=1)  # time only: asp wins
    assert any(p.sync != "bsp" for p in fastest_time.plan.phases)


def test_bundled_digits_plan_with_target(tmp_path):
    out = tmp_path / "p.json"
    keep = tmp_path / "keep"
    r = cli("plan", "--cluster", "digits-cpu3", "--job", "digits-cnn", "--target-accuracy", "0.95", "-o", out,
            "--keep", keep, "--jobs", "1")
    assert r.returncode == 0, r.stderr
    meta = json.loads(out.read_text())["meta"]
    assert meta["objective"] == "time_to_accuracy" and meta["target_accuracy"] == 0.95
    assert meta["predicted_final_accuracy"] >= 0.95 and meta["predicted_time_to_target_s"] > 0
    assert meta["predicted_time_to_target_s"] < meta["uniform_makespan_s"]
    ranking = json.loads((keep / "ranking.json").read_text())
    fulls = [x for x in ranking["ranked"] if x["how"] == "full"]
    assert len(fulls) == len(list(keep.glob("*/plan.json"))) >= 2
    assert sum(x["baseline"] for x in ranking["ranked"]) == 1
    assert "[baseline]" in r.stdout and "to_target_s" in r.stdout


def test_simulate_reports_quality(tmp_path):
    r = cli("simulate", "--cluster", "digits-cpu3", "--job", "digits-cnn", "--plan", _uniform_digits_plan(tmp_path),
            "--json", "--target-accuracy", "0.9")
    assert r.returncode == 0, r.stderr
    q = json.loads(r.stdout)["quality"]
    assert 0.9 < q["final_accuracy"] <= SPEC.accuracy_final and q["final_loss"] > 0
    assert 0 < q["time_to_target_s"] < json.loads(r.stdout)["makespan_s"]
    r = cli("simulate", "--cluster", "digits-cpu3", "--job", "digits-cnn", "--plan", _uniform_digits_plan(tmp_path),
            "--json", "--target-accuracy", "0.999")
    assert json.loads(r.stdout)["quality"]["time_to_target_s"] is None
    text = cli("simulate", "--cluster", "digits-cpu3", "--job", "digits-cnn", "--plan", _uniform_digits_plan(tmp_path),
               "--target-accuracy", "0.9").stdout
    assert "predicted quality: final accuracy" in text and "0.900 reached at" in text


def _uniform_digits_plan(tmp_path):
    p = tmp_path / "uniform.json"
    p.write_text(json.dumps({"format": "hybridps.plan/1", "phases": [
        {"epochs": 30, "resolution": 8, "sync": "bsp", "exchange": "gradient", "lr": 0.02,
         "workers": [{"name": f"w{i}", "batch": 32, "samples": 479} for i in range(3)]}]}))
    return p


# --------------------------------------------------------------------------- user errors


def _job_with(tmp_path, **changes):
    import tomllib

    data = tomllib.loads(open(load_job.__globals__["resolve_path"]("job", "digits-cnn")).read())
    for k, v in changes.items():
        data["convergence"][k] = v
    from traces.job_toml import job_to_toml
    import tomli_w

    p = tmp_path / "bad.toml"
    p.write_text(tomli_w.dumps(data))
    return p


@pytest.mark.parametrize("field,value,message", [
    ("lr_max", float("nan"), "convergence.lr_max: Input should be a finite number"),
    ("noise_scale", -1.0, "convergence.noise_scale: input should be greater than or equal to 0"),
    ("accuracy_final", 0.05, "convergence.accuracy_final: must be >= accuracy_initial"),
    ("bogus", 1.0, "convergence.bogus: unknown field"),
    ("compression", {"zip": 0.5}, "convergence.compression.zip: unknown compression efficiency"),
    ("compression", {"topk": 2.0}, "convergence.compression.topk: efficiency must be a finite number in [-10, 1]"),
    ("format", "hybridps.convergence/9", "convergence.format: expected"),
])
def test_bad_convergence_fields_are_one_line_errors(tmp_path, field, value, message):
    bad = _job_with(tmp_path, **{field: value})
    one_line_error(cli("simulate", "--cluster", "digits-cpu3", "--job", bad, "--plan", _uniform_digits_plan(tmp_path)),
                   str(bad), message)


def test_bad_flags_are_one_line_errors(tmp_path):
    plan = _uniform_digits_plan(tmp_path)
    no_model = ["--cluster", "digits-cpu3", "--job", "cifar100-resnet18"]
    one_line_error(cli("simulate", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "--plan",
                       "gtx1080x4-cifar100-uniform", "--target-accuracy", "0.9"),
                   "--target-accuracy", "no [convergence] table")
    for v in ("1.5", "0", "nan", "x"):
        one_line_error(cli("simulate", "--cluster", "digits-cpu3", "--job", "digits-cnn", "--plan", plan,
                           "--target-accuracy", v), "argument --target-accuracy")
    one_line_error(cli("plan", *no_model, "--target-accuracy", "0.9"), "--target-accuracy", "no [convergence]")
    one_line_error(cli("plan", *no_model, "--target-loss", "0.5"), "--target-loss", "no [convergence]")
    one_line_error(cli("plan", "--cluster", "digits-cpu3", "--job", "digits-cnn", "--target-accuracy", "0.9",
                       "--target-loss", "0.5"), "give one target")
    one_line_error(cli("plan", "--cluster", "digits-cpu3", "--job", "digits-cnn", "--target-loss", "-1"),
                   "argument --target-loss")
    one_line_error(cli("plan", "--cluster", "digits-cpu3", "--job", "digits-cnn", "--objective", "time_to_accuracy"),
                   "needs --target-accuracy")
    one_line_error(cli("calibrate", "x.jsonl", "--job", "digits-cnn"), "--job and --job-out go together")
    one_line_error(cli("calibrate", "x.jsonl"), "say what to write")
    # a simulated trace has no eval records: the fit says so
    c, j = load_cluster("digits-cpu3"), load_job("digits-cnn").model_copy(update={"convergence": None})
    from hybridps.spec import load_plan as lp

    res = simulate(c, j, lp(plan, c, j), record=True)
    t = tmp_path / "sim.jsonl"
    with TraceWriter(t, res.header) as w:
        w.write_many(res.records)
    one_line_error(cli("calibrate", t, "--job", "digits-cnn", "--job-out", tmp_path / "o.toml"), "no eval records")
    one_line_error(cli("validate", "--trace", t, "--job", "cifar100-resnet18"), "--job cifar100-resnet18")
    one_line_error(cli("validate", "--trace", t, "--target-accuracy", "0.9"), "--target-accuracy", "[convergence]")
    one_line_error(cli("validate", "--trace", t, "--job", "digits-cnn", "--target-accuracy", "2"),
                   "argument --target-accuracy")


def test_plan_without_model_says_quality_is_not_modelled_and_marks_risks(tmp_path):
    r = cli("plan", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "-o", tmp_path / "p.json", "--jobs", "1")
    assert r.returncode == 0, r.stderr
    assert "note: quality is not modelled" in r.stderr
    risk_lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("risk: ")]
    assert any(ln.endswith(": asp (stale gradients)") for ln in risk_lines), r.stdout
    assert "risk: phases 0, 1, 2, 3, 4, 5: model exchange with no small-batch worker" in risk_lines  # once, not per phase


def test_validate_compares_quality_at_every_eval(tmp_path):
    path = _synthetic_trace(tmp_path, SPEC, "bsp")
    r = cli("validate", "--trace", path, "--cluster", "digits-cpu3", "--job", "digits-cnn", "--target-accuracy",
            "0.9", "--json")
    assert r.returncode == 0, r.stderr
    q = json.loads(r.stdout)["quality"]
    assert len(q["evals"]) == 31
    assert q["predicted_final_accuracy"] == pytest.approx(q["measured_final_accuracy"], abs=0.02)
    assert q["rmse_accuracy"] < 0.02
    # measured time is the first eval at or above the target: at most one epoch after the predicted one
    assert q["predicted_time_to_target_s"] <= q["measured_time_to_target_s"] <= q["predicted_time_to_target_s"] + 0.3
    text = cli("validate", "--trace", path, "--cluster", "digits-cpu3", "--job", "digits-cnn", "--target-accuracy",
               "0.9").stdout
    assert "final accuracy: predicted" in text and "time to accuracy 0.9: predicted" in text


def test_proxy_quality_scales_progress_per_phase_like_the_time():
    from solver.search import proxy_quality, shorten

    c, j = load_cluster("digits-cpu3"), load_job("digits-cnn")
    ph = {"epochs": 10, "resolution": 8, "sync": "bsp", "exchange": "gradient", "lr": 0.02,
          "workers": [{"name": f"w{i}", "batch": 32, "samples": 479} for i in range(3)]}
    from hybridps.spec import plan_from_dict

    plan = plan_from_dict({"format": "hybridps.plan/1", "phases": [ph, {**ph, "epochs": 20}]}, "<t>", c, j)
    short = shorten(plan, 2)  # one proxy phase of 2 epochs: both full phases share its configuration
    summary = {"makespan_s": 2.0, "phases": [{"start_s": 0.0, "end_s": 2.0}], "epoch_end_s": [1.0, 2.0],
               "quality": {"phase_progress": [10.0]}}
    q = proxy_quality(c, j, plan, short, summary, target_accuracy=0.9)
    # 5 ideal steps per epoch x 30 epochs; 1 s per epoch; the target's progress is crossed linearly
    p_end = 150.0
    assert q["final_accuracy"] == pytest.approx(float(accuracy_at(p_end, SPEC)))
    assert q["time_to_target_s"] == pytest.approx(progress_for_accuracy(0.9, SPEC) / 5.0)
    # a sync switch: the asp phase starts from the fraction of the bsp progress the model keeps
    switch = plan.model_copy(update={"phases": [plan.phases[0], plan.phases[1].model_copy(update={"sync": "asp"})]})
    short = shorten(switch, 2)
    summary = {"makespan_s": 4.0, "phases": [{"start_s": 0.0, "end_s": 2.0}, {"start_s": 2.0, "end_s": 4.0}],
               "epoch_end_s": [1.0, 2.0, 3.0, 4.0], "quality": {"phase_progress": [10.0, 10.0]}}
    spec = SPEC.model_copy(update={"switch_progress_kept": 0.5})
    q = proxy_quality(c, j.model_copy(update={"convergence": spec}), switch, short, summary)
    assert q["final_accuracy"] == pytest.approx(float(accuracy_at(0.5 * 50.0 + 100.0, spec)))
