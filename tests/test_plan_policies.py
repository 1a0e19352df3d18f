"""`plan` searches online policies (issue 10; docs/solver.md, "Policies as candidates"),
and the convergence model charges a policy's bsp -> asp switch inside a phase like one
between phases (docs/convergence.md). Real SimPy runs and real searches throughout."""

from __future__ import annotations

import hashlib
import json

import pytest

from hybridps.cli import main
from hybridps.spec import cluster_from_dict, job_from_dict, plan_from_dict
from sim.convergence import (Stream, phase_gains, policy_switch_updates, predict_sim, progress_curve, risks,
                             update_progress)
from sim.engine import Simulation
from solver.policies import POLICY_SPECS

# tests/test_policy.py's cluster: 4 identical workers, transient episodes (20 an hour, 30 s, 4x slower)
CLUSTER = {"format": "hybridps.cluster/1", "ps": {"bandwidth_gbps": 10.0, "latency_ms": 0.1},
           "devices": {"d": {"resolutions": {"32": {"a": 0.002, "b": 0.02, "max_batch": 256}}}},
           "workers": [{"name": "w", "device": "d", "count": 4, "bandwidth_gbps": 10.0}],
           "stragglers": {"rate_per_hour": 20.0, "slowdown": 4.0, "mean_duration_s": 30.0, "seed": 3}}
# a convergence model where asp is about as good per sample as bsp (κ_s = 0.4 at staleness 3)
CONVERGENCE = {"format": "hybridps.convergence/1", "lr_max": 0.2, "noise_scale": 16.0, "staleness_penalty": 0.4,
               "drift_steps": 1000.0, "switch_progress_kept": 0.0, "accuracy_initial": 0.1, "accuracy_final": 0.9,
               "accuracy_progress": 500.0, "accuracy_shape": 1.0, "loss_initial": 2.3, "loss_final": 0.3,
               "loss_progress": 500.0, "loss_shape": 1.0}
JOB = {"format": "hybridps.job/1", "model": {"name": "m", "parameters": 1_000_000},
       "data": {"name": "d", "samples": 12800},
       "train": {"epochs": 10, "resolutions": [32], "base_batch": 32, "base_lr": 0.1}}


def _toml(d: dict, prefix: str = "") -> str:
    """A small dict as TOML (tables and scalars; lists of tables as [[...]])."""
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append(_toml(v, f"{prefix}{k}."))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            tables += [f"[[{prefix}{k}]]\n" + _toml(item) for item in v]
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    head = f"[{prefix[:-1]}]\n" if prefix and lines else ""
    return head + "\n".join(lines) + "\n" + "\n".join(tables)


def _files(tmp_path, seed: int = 3, kept: float | None = None):
    cluster = {**CLUSTER, "stragglers": {**CLUSTER["stragglers"], "seed": seed}}
    job = JOB if kept is None else {**JOB, "convergence": {**CONVERGENCE, "switch_progress_kept": kept}}
    (tmp_path / "c.toml").write_text(_toml(cluster))
    (tmp_path / "j.toml").write_text(_toml(job))
    return str(tmp_path / "c.toml"), str(tmp_path / "j.toml")


def _plan_json(capsys, *argv: str) -> dict:
    assert main(["plan", "--jobs", "2", "--json", "--top", "100", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def _policy_rows(report: dict) -> list[dict]:
    return [r for r in report["ranked"] if "policy" in r]


# --------------------------------------------------------------------------- the convergence model


def _run(policy: dict | None, seed: int, kept: float):
    cluster = cluster_from_dict({**CLUSTER, "stragglers": {**CLUSTER["stragglers"], "seed": seed}})
    job = job_from_dict({**JOB, "convergence": {**CONVERGENCE, "switch_progress_kept": kept}})
    phase = {"epochs": 10, "resolution": 32, "sync": "bsp", "exchange": "gradient", "lr": 0.1,
             "workers": [{"name": f"w{i}", "batch": 32, "samples": 3200} for i in range(4)]}
    if policy is not None:
        phase["policy"] = policy
    plan = plan_from_dict({"format": "hybridps.plan/1", "phases": [phase]})
    res = Simulation(cluster, job, plan, seed=seed, log_updates=True).run()
    return res, plan, job.convergence


def test_a_policy_switch_inside_a_phase_keeps_switch_progress_kept():
    res, plan, spec = _run({"kind": "sync-switch-greedy"}, seed=8, kept=0.25)
    log = res.counters.update_log
    assert [(round(t, 1), p, s) for t, p, s in log.sync_changes] == [(50.7, 0, "asp")]  # one switch, stays asp
    stream = Stream.from_update_log(log, res.worker_names)
    (cut,) = policy_switch_updates(stream, plan)
    # the first push applied on its own after the switch; every update before it was a bsp round
    assert stream.worker[cut] >= 0 and stream.t_s[cut] >= 50.7 and (stream.worker[:cut] == -1).all()
    delta = update_progress(stream, plan, spec)
    curve = progress_curve(stream, plan, spec)
    before = float(curve[cut - 1])
    assert before == pytest.approx(delta[:cut].sum())
    assert curve[cut] == pytest.approx(0.25 * before + delta[cut])
    # P_end = kept·P_start + gain, what the planner's proxy scales up
    gain, kept = phase_gains(stream, plan, spec, delta)
    assert kept.tolist() == [0.25] and gain[0] == pytest.approx(curve[-1])
    # kept = 1 is the prediction without the rule
    res1, _, spec1 = _run({"kind": "sync-switch-greedy"}, seed=8, kept=1.0)
    assert predict_sim(res1, plan, spec1).final_progress == pytest.approx(float(delta.sum()))
    assert predict_sim(res, plan, spec).final_progress < 0.7 * float(delta.sum())


def test_elastic_exclusions_are_not_switches_and_plans_without_policies_are_unchanged():
    res, plan, spec = _run({"kind": "sync-switch-elastic"}, seed=3, kept=0.0)
    assert res.summary()["policy_actions"]["exclude"] > 0
    stream = Stream.from_update_log(res.counters.update_log, res.worker_names)
    assert stream.sync_changes == () and policy_switch_updates(stream, plan).size == 0
    assert (stream.worker >= 0).any()  # the excluded workers' stale pushes: charged by κ_s only
    # a static bsp plan: no switch, the phase's gain is the plain sum
    res, plan, spec = _run(None, seed=3, kept=0.0)
    stream = Stream.from_update_log(res.counters.update_log, res.worker_names)
    gain, kept = phase_gains(stream, plan, spec)
    assert kept.tolist() == [1.0] and gain[0] == float(update_progress(stream, plan, spec).sum())


def test_risks_name_a_policy_switch():
    _, greedy, spec = _run({"kind": "sync-switch-greedy"}, seed=3, kept=0.0)
    _, elastic, _ = _run({"kind": "sync-switch-elastic"}, seed=3, kept=0.0)
    assert risks(greedy, spec) == ["phase 0: policy sync-switch-greedy: bsp -> asp switches inside the phase "
                                   "(each keeps 0 of the progress made before it)"]
    assert risks(elastic, None) == ["phase 0: policy sync-switch-elastic: slowed workers' pushes are applied on "
                                    "their own (stale gradients)"]


# --------------------------------------------------------------------------- plan


def test_plan_adds_policy_candidates_and_greedy_wins_on_time(capsys, tmp_path):
    cluster, job = _files(tmp_path, seed=3)
    report = _plan_json(capsys, "--cluster", cluster, "--job", job, "--strategy", "uniform,balanced", "--seed", "3")
    rows = _policy_rows(report)
    assert sorted(r["policy"]["kind"] for r in rows) == sorted(s["kind"] for s in POLICY_SPECS)
    assert len(rows) == len(POLICY_SPECS) == report["counts"]["policy"]
    assert len({r["parent"] for r in rows}) == 1  # POLICY_PARENTS = 1
    best = report["ranked"][0]
    assert best["parameters"]["policy"] == "sync-switch-greedy" and report["best"]["parameters"] == best["parameters"]
    parent = next(r for r in report["ranked"] if r["label"] == best["parent"])
    # measured: 89.8 s against its parent's 152.9 s in full (0.59x); the uniform baseline 202.0 s
    assert best["gain_basis"] == "full" and best["full_s"] < 0.65 * parent["full_s"]
    assert best["gain_s"] == pytest.approx(parent["full_s"] - best["full_s"])
    assert best["policy_actions"] == {"set_sync": 1} and best["risks"]
    assert report["best"]["predicted_makespan_s"] < 0.5 * report["uniform_makespan_s"]
    # the written plan carries the policy on its bsp phase
    assert main(["plan", "--cluster", cluster, "--job", job, "--strategy", "uniform,balanced", "--seed", "3",
                 "--jobs", "1", "-o", str(tmp_path / "p.json")]) == 0
    text = capsys.readouterr().out
    assert "policy: 63.0 s faster than rank 3 (full); 1 decision(s) (set_sync 1)" in text
    plan = json.loads((tmp_path / "p.json").read_text())
    assert plan["phases"][0]["policy"] == {"kind": "sync-switch-greedy"}
    assert plan["meta"]["policy"] == {"kind": "sync-switch-greedy"} and plan["meta"]["parent"] == best["parent"]


def test_no_policy_candidates_when_asp_is_not_allowed(capsys, tmp_path):
    cluster, job = _files(tmp_path)
    report = _plan_json(capsys, "--cluster", cluster, "--job", job, "--sync", "bsp", "--seed", "3")
    assert not _policy_rows(report) and "policy" not in report["counts"]


def test_quality_aware_plan_does_not_pick_greedy_when_its_switch_makes_it_slower(capsys, tmp_path):
    """Seed 8: greedy switches to asp at 50.7 s and stays. By time it is the fastest plan;
    keeping none of the progress at the switch, it misses the target its parent reaches.
    Its 2-epoch proxy has no episode, so it ties with its parent there (the same
    fast-forwarded rounds): --full-count 4 runs both policies in full whatever the tie."""
    args = ["--strategy", "uniform", "--seed", "8", "--full-count", "4"]
    cluster, job = _files(tmp_path, seed=8, kept=0.0)
    by_time = _plan_json(capsys, "--cluster", cluster, "--job", job, *args)
    assert by_time["best"]["parameters"].get("policy") == "sync-switch-greedy"  # 127.1 s, elastic 128.8 s
    charged = _plan_json(capsys, "--cluster", cluster, "--job", job, "--target-accuracy", "0.6", *args)
    greedy = next(r for r in _policy_rows(charged) if r["policy"]["kind"] == "sync-switch-greedy")
    assert charged["best"]["parameters"].get("policy") != "sync-switch-greedy"
    assert greedy["quality"]["time_to_target_s"] is None and greedy["gain_to_target_s"] is None
    assert greedy["final_accuracy_change"] < -0.15  # measured: 0.526 against the parent's 0.710
    assert greedy["risks"] == ["phase 0: policy sync-switch-greedy: bsp -> asp switches inside the phase "
                               "(each keeps 0 of the progress made before it)"]
    # without the charge (kept = 1) the same greedy plan reaches the target 48.8 s before its parent
    _, job1 = _files(tmp_path, seed=8, kept=1.0)
    free = _plan_json(capsys, "--cluster", cluster, "--job", job1, "--target-accuracy", "0.6", *args)
    greedy1 = next(r for r in _policy_rows(free) if r["policy"]["kind"] == "sync-switch-greedy")
    assert greedy1["gain_to_target_s"] > 40.0


def test_bundled_digits_plan_does_not_pick_greedy_with_a_target(capsys):
    args = ["--cluster", "digits-cpu3", "--job", "digits-cnn", "--strategy", "uniform,balanced"]
    by_time = _plan_json(capsys, *args)
    assert by_time["best"]["parameters"].get("policy") == "sync-switch-greedy"  # 0.72x the baseline, by time alone
    targeted = _plan_json(capsys, *args, "--target-accuracy", "0.95")
    assert targeted["best"]["parameters"].get("policy") != "sync-switch-greedy"
    greedy = next(r for r in _policy_rows(targeted) if r["policy"]["kind"] == "sync-switch-greedy")
    assert greedy["quality"]["time_to_target_s"] is None and greedy["final_accuracy_change"] < -0.5


def _rounded(x):
    """Floats to 9 significant digits: bsp fast-forward (sim/fastforward.py) moves times in
    their last bits (1e-9 relative at most), nothing a ranking shows."""
    if isinstance(x, float):
        return float(f"{x:.9g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def _digest(report: dict) -> str:
    return hashlib.sha256(json.dumps(_rounded(report["ranked"]), sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("cluster_name, job_name, extra, expected", [
    # recorded by the code before policies were searched (577eacf): counts, best and baseline, the whole ranking
    # (its floats to 9 significant digits)
    ("gtx1080x4", "cifar100-resnet18", (), ({"candidates": 51, "proxy": 14, "full": 3}, 838.0910852017107,
                                           1946.0421547135602, "06ce1d75bd0c1647")),
    ("digits-nostrag", "digits-cnn", ("--target-accuracy", "0.95"),
     ({"candidates": 25, "proxy": 25, "full": 2}, 5.852373439563211, 6.271363895207732, "9ff0cb8724d8084f")),
])
def test_without_stragglers_the_search_is_unchanged(capsys, tmp_path, cluster_name, job_name, extra, expected):
    if cluster_name == "digits-nostrag":  # the bundled digits cluster without its [stragglers] table
        from hybridps.spec import example_dir

        text = (example_dir("cluster") / "digits-cpu3.toml").read_text()
        cluster_name = str(tmp_path / "c.toml")
        (tmp_path / "c.toml").write_text(text[:text.index("[stragglers]")])
    report = _plan_json(capsys, "--cluster", cluster_name, "--job", job_name, "--seed", "0", *extra)
    counts, best_s, uniform_s, digest = expected
    assert report["counts"] == counts
    assert report["best"]["predicted_makespan_s"] == pytest.approx(best_s, rel=1e-9)
    assert report["uniform_makespan_s"] == pytest.approx(uniform_s, rel=1e-9)
    assert _digest(report) == digest


def test_switch_points_are_the_first_own_push_after_each_switch_once_each():
    import numpy as np

    from hybridps.spec import ConvergenceSpec

    phase = {"epochs": 1, "resolution": 32, "sync": "bsp", "exchange": "gradient", "lr": 0.1,
             "workers": [{"name": f"w{i}", "batch": 32, "samples": 3200} for i in range(2)]}
    plan = plan_from_dict({"format": "hybridps.plan/1", "phases": [phase, {**phase, "exchange": "model"}]})
    # phase 0: rounds at 1, 2; own pushes at 3, 4; a round at 5; own pushes at 6, 7; phase 1: own pushes at 8, 9
    t = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9], float)
    stream = Stream(t, np.array([0] * 7 + [1, 1]), np.array([-1, -1, 0, 1, -1, 0, 1, 0, 1]), np.zeros(9),
                    np.full(9, 32.0), ("w0", "w1"),
                    ((2.5, 0, "asp"), (4.5, 0, "bsp"), (5.5, 0, "asp"), (5.6, 0, "bsp"), (5.7, 0, "asp"),
                     (7.5, 1, "asp")))  # the last: a model-exchange phase, not a switch into stale gradients
    assert policy_switch_updates(stream, plan).tolist() == [2, 5]
    spec = ConvergenceSpec(**{**CONVERGENCE, "switch_progress_kept": 0.5})
    delta = update_progress(stream, plan, spec)
    curve = progress_curve(stream, plan, spec)
    expected = 0.5 * (0.5 * delta[:2].sum() + delta[2:5].sum()) + delta[5:7].sum()
    assert curve[6] == pytest.approx(expected)
    gain, kept = phase_gains(stream, plan, spec, delta)
    assert kept.tolist() == [0.25, 1.0] and gain[0] == pytest.approx(expected)
    assert gain[1] == pytest.approx(delta[7:].sum())


def test_the_proxy_repeats_a_switching_phase_geometrically():
    from solver.search import _repeat

    assert _repeat(8.0, 3.0, 1.0, 2.5) == 11.0  # no switch: the plain sum
    once = 0.5 * 8.0 + 3.0 / 2
    assert _repeat(8.0, 3.0, 0.5, 2.0) == pytest.approx(0.5 * once + 3.0 / 2)  # two copies of the proxy phase
    assert _repeat(8.0, 3.0, 0.0, 4.0) == pytest.approx(3.0 / 4)  # nothing survives: the last copy's gain
