"""Online policies (issue 10, docs/policies.md): the interface, the Sync-Switch built-ins
on a cluster with transient stragglers, a user's own policy through `simulate --json`,
bad specs, the Barrier rule of a mid-phase switch, and `run` refusing a policy with several
PS shards (tests/test_runtime_policy.py runs policies on real processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hybridps.cli import main
from hybridps.policy import Action, Observation, Observer, Policy, PolicyError, SyncSwitchGreedy, make_policy
from hybridps.semantics import Barrier
from hybridps.spec import cluster_from_dict, job_from_dict, plan_from_dict
from sim import simulate
from traces import read_trace

ROOT = Path(__file__).resolve().parents[1]

# 4 identical workers; each has transient episodes (20 an hour, 30 s long, 4x slower)
CLUSTER = {"format": "hybridps.cluster/1", "ps": {"bandwidth_gbps": 10.0, "latency_ms": 0.1},
           "devices": {"d": {"resolutions": {"32": {"a": 0.002, "b": 0.02, "max_batch": 256}}}},
           "workers": [{"name": "w", "device": "d", "count": 4, "bandwidth_gbps": 10.0}],
           "stragglers": {"rate_per_hour": 20.0, "slowdown": 4.0, "mean_duration_s": 30.0, "seed": 3}}
JOB = {"format": "hybridps.job/1", "model": {"name": "m", "parameters": 1_000_000},
       "data": {"name": "d", "samples": 12800},
       "train": {"epochs": 10, "resolutions": [32], "base_batch": 32, "base_lr": 0.1}}


def _plan_dict(policy: dict | None = None, sync: str = "bsp") -> dict:
    phase = {"epochs": 10, "resolution": 32, "sync": sync, "staleness": None, "exchange": "gradient",
             "local_steps": None, "lr": 0.1, "workers": [{"name": f"w{i}", "batch": 32, "samples": 3200}
                                                          for i in range(4)]}
    if policy is not None:
        phase["policy"] = policy
    return {"format": "hybridps.plan/1", "phases": [phase]}


def _sim(policy: dict | None = None, seed: int = 3, sync: str = "bsp", record: bool = False, **kw):
    cluster, job = cluster_from_dict(CLUSTER), job_from_dict(JOB)
    return simulate(cluster, job, plan_from_dict(_plan_dict(policy, sync)), seed=seed, record=record, **kw)


# --------------------------------------------------------------------------- built-ins in the simulator


def test_plans_without_a_policy_keep_their_makespans():
    # computed by the code before policies existed (commit 9ac02cb), to the last bit, with
    # every round simulated; fast-forwarded bsp rounds (the default) to 1e-12 relative
    assert _sim(seed=3, fast_forward=False).makespan_s == 201.96799999999422
    assert _sim(seed=3, sync="asp").makespan_s == 116.95967316647265
    assert _sim(seed=5, fast_forward=False).makespan_s == 134.70160000000152
    assert _sim(seed=3).makespan_s == pytest.approx(201.96799999999422, rel=1e-12)
    assert _sim(seed=5).makespan_s == pytest.approx(134.70160000000152, rel=1e-12)
    assert _sim(seed=3).summary()["policy_actions"] == {}


def test_greedy_beats_bsp_under_transient_stragglers_and_records_its_switches():
    bsp, greedy = _sim(seed=3), _sim({"kind": "sync-switch-greedy"}, seed=3, record=True)
    # measured: 118.5 s against 202.0 s (0.59); asp alone takes 117.0 s
    assert greedy.makespan_s < 0.65 * bsp.makespan_s
    assert greedy.summary()["policy_actions"] == {"set_sync": 2}
    records = [r for r in greedy.records if r["kind"] == "policy"]
    assert [r["action"] for r in records] == [{"kind": "set_sync", "sync": "asp"}, {"kind": "set_sync", "sync": "bsp"}]
    to_asp, to_bsp = records
    assert to_asp["phase"] == 0 and to_asp["t_s"] == pytest.approx(5.065, abs=1e-3)
    assert to_asp["observed"]["sync"] == "bsp" and to_bsp["observed"]["sync"] == "asp"
    slowed = to_asp["observed"]["compute_s_per_iteration"]
    assert max(slowed.values()) > 1.5 * min(slowed.values())  # a straggler was present
    assert len(set(to_bsp["observed"]["compute_s_per_iteration"].values())) == 1  # none any more
    # asp updates while it was off bsp: staleness shows up
    assert greedy.summary()["staleness"]["max"] > 0 and bsp.summary()["staleness"]["max"] == 0


def test_a_policy_is_deterministic_for_a_seed_and_differs_across_seeds():
    a = _sim({"kind": "sync-switch-greedy"}, seed=3)
    b = _sim({"kind": "sync-switch-greedy"}, seed=3)
    c = _sim({"kind": "sync-switch-greedy"}, seed=5)
    assert a.summary() | {"wall_s": 0} == b.summary() | {"wall_s": 0}
    assert c.makespan_s != a.makespan_s
    assert c.makespan_s == pytest.approx(115.70, abs=0.01)  # bsp alone: 134.7 s


def test_elastic_keeps_the_barrier_free_of_the_slowed_worker():
    bsp, elastic = _sim(seed=3), _sim({"kind": "sync-switch-elastic"}, seed=3, record=True)
    assert elastic.makespan_s < 0.7 * bsp.makespan_s  # measured 127.2 s against 202.0 s
    records = [r for r in elastic.records if r["kind"] == "policy"]
    assert {r["action"]["kind"] for r in records} == {"exclude", "include"}
    first = records[0]
    assert first["action"] == {"kind": "exclude", "worker": "w2"}
    assert "w2" in first["observed"]["barrier"]
    assert elastic.summary()["policy_actions"] == {"exclude": 5, "include": 4}


def test_a_policy_on_an_asp_phase_leaves_it_alone():
    plain, with_policy = _sim(seed=3, sync="asp"), _sim({"kind": "sync-switch-greedy"}, seed=3, sync="asp")
    assert with_policy.makespan_s == plain.makespan_s
    assert with_policy.summary()["policy_actions"] == {}


# --------------------------------------------------------------------------- a user's policy


class SlowerThanMedian(Policy):
    """Switch to asp (for good) when some worker is `factor` x slower than the median."""

    def __init__(self, factor: float = 1.5, window: int = 5):
        self.factor, self.window = factor, window

    def decide(self, obs: Observation) -> list[Action]:
        times = sorted(obs.compute_s_per_iteration)
        median = 0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2])
        if obs.sync == "bsp" and times[-1] > self.factor * median:
            return [Action.set_sync("asp")]
        return []


class OutAndBackIn(Policy):
    """Takes worker `worker` out of the barrier at once and back in at half the phase."""

    def __init__(self, worker: int = 0):
        self.worker = worker

    def decide(self, obs: Observation) -> list[Action]:
        inside = self.worker in obs.barrier
        if obs.phase_fraction < 0.5:
            return [Action.exclude(self.worker)] if inside else []
        return [] if inside else [Action.include(self.worker)]


class ExcludesAStranger(Policy):
    def decide(self, obs: Observation) -> list[Action]:
        return [Action.exclude(99)]


def _files(tmp_path: Path, policy: dict | None) -> list[str]:
    cluster = CLUSTER | {"stragglers": {**CLUSTER["stragglers"]}}
    (tmp_path / "c.toml").write_text(_toml(cluster))
    (tmp_path / "j.toml").write_text(_toml(JOB))
    (tmp_path / "p.json").write_text(json.dumps(_plan_dict(policy)))
    return ["--cluster", str(tmp_path / "c.toml"), "--job", str(tmp_path / "j.toml"), "--plan", str(tmp_path / "p.json")]


def _toml(d: dict) -> str:
    import tomli_w

    return tomli_w.dumps(d)


def test_a_user_policy_runs_through_simulate_json(tmp_path, capsys):
    args = _files(tmp_path, {"kind": "python", "target": "tests.test_policy:SlowerThanMedian", "factor": 1.5})
    assert main(["simulate", *args, "--json", "--trace", str(tmp_path / "t.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["policy_actions"] == {"set_sync": 1}
    trace = read_trace(tmp_path / "t.jsonl")
    policy = [r for r in trace.records if r["kind"] == "policy"]
    assert [r["action"] for r in policy] == [{"kind": "set_sync", "sync": "asp"}]
    assert summary["makespan_s"] < 0.65 * _sim(seed=3).makespan_s


def test_exclude_and_include_run_once_each(tmp_path, capsys):
    args = _files(tmp_path, {"kind": "python", "target": "tests.test_policy:OutAndBackIn", "worker": 1})
    assert main(["simulate", *args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["policy_actions"] == {"exclude": 1, "include": 1}
    assert summary["staleness"]["max"] > 0  # w1's pushes were applied alone meanwhile
    assert main(["simulate", *args]) == 0
    assert "policy actions: exclude 1, include 1" in capsys.readouterr().out


def test_a_user_policy_from_a_module_on_sys_path_in_a_fresh_process(tmp_path):
    (tmp_path / "mine.py").write_text(
        "from hybridps.policy import Action, Policy\n"
        "class AspAtHalf(Policy):\n"
        "    def decide(self, obs):\n"
        "        return [Action.set_sync('asp')] if obs.phase_fraction >= 0.5 and obs.sync == 'bsp' else []\n")
    args = _files(tmp_path, {"kind": "python", "target": "mine:AspAtHalf"})
    env = {"PYTHONPATH": f"{ROOT}:{tmp_path}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "hybridps", "simulate", *args, "--json"], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["policy_actions"] == {"set_sync": 1}


class Chaos(Policy):
    """Flips the mode every third update and a worker's barrier membership at every one."""

    window = 1

    def __init__(self) -> None:
        self.n = 0

    def decide(self, obs: Observation) -> list[Action]:
        self.n += 1
        w = obs.workers[self.n % len(obs.workers)]
        actions = [Action.exclude(w) if w in obs.barrier else Action.include(w)]
        if self.n % 3 == 0:
            actions.append(Action.set_sync("asp" if obs.sync == "bsp" else "bsp"))
        return actions


def test_a_policy_that_flips_everything_never_stalls_a_phase():
    # DBSL's mini-epoch rule: workers stop on their own commits, so some stop while others
    # still push; a round must never wait for a stopped worker
    from hybridps.spec import load_cluster, load_job, load_plan

    cluster, job = load_cluster("gtx1080x4"), load_job("cifar100-resnet18")
    d = load_plan("gtx1080x4-cifar100-dbsl", cluster, job).to_json_dict()
    for phase in d["phases"]:
        phase.update(sync="bsp", policy={"kind": "python", "target": "tests.test_policy:Chaos"})
    result = simulate(cluster, job, plan_from_dict(d, "<plan>", cluster, job), seed=1)
    s = result.summary()
    assert len(s["phases"]) == len(d["phases"]) and len(s["epoch_end_s"]) == 140  # as without a policy
    assert sum(w["samples"] for w in s["workers"].values()) == 140 * job.data.samples
    assert s["policy_actions"]["set_sync"] > 100 and s["policy_actions"]["exclude"] > 100
    chaos = _sim({"kind": "python", "target": "tests.test_policy:Chaos"}, seed=3)
    assert chaos.summary()["updates"] > 0 and len(chaos.counters.epoch_end_s) == 10


# --------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize("policy, field, words", [
    ({"kind": "sync-switch-lazy"}, "phases[0].policy.kind", "unknown policy kind"),
    ({"kind": "sync-switch-greedy", "threshold": "high"}, "phases[0].policy.threshold", "expected a number"),
    ({"kind": "sync-switch-greedy", "window": 0}, "phases[0].policy.window", "expected 1 to 10000"),
    ({"kind": "sync-switch-elastic", "patience": 3}, "phases[0].policy.patience", "unknown parameter"),
    ({"kind": "python", "target": "no_such_module_xyz:P"}, "phases[0].policy.target", "cannot import"),
    ({"kind": "python", "target": "json:dumps"}, "phases[0].policy.target", "not a subclass"),
    ({"kind": "python", "target": "tests.test_policy:SlowerThanMedian", "speed": 2},
     "phases[0].policy.target", "speed"),
])
def test_a_bad_policy_exits_2_with_one_line_naming_the_field(tmp_path, capsys, policy, field, words):
    args = _files(tmp_path, policy)
    assert main(["simulate", *args, "--json"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and len(err.splitlines()) == 1
    assert field in err and words in err and "p.json" in err


def test_a_plan_without_policy_dumps_as_before_and_one_with_it_round_trips():
    plain = plan_from_dict(_plan_dict())
    assert "policy" not in plain.to_json_dict()["phases"][0]
    spec = {"kind": "sync-switch-greedy", "threshold": 2.0, "window": 3}
    with_policy = plan_from_dict(_plan_dict(spec))
    assert with_policy.to_json_dict()["phases"][0]["policy"] == spec
    assert plan_from_dict(json.loads(with_policy.to_json())) == with_policy


def test_a_policy_that_acts_on_a_worker_outside_the_phase_stops_the_simulation_with_one_line(tmp_path, capsys):
    args = _files(tmp_path, {"kind": "python", "target": "tests.test_policy:ExcludesAStranger"})
    assert main(["simulate", *args, "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "policy action: exclude needs a worker of the phase, got 99" in err


def test_a_bad_action_from_a_policy_is_a_clear_error():
    with pytest.raises(PolicyError, match="set_sync needs sync 'bsp', 'asp' or 'ssp'"):
        Action.set_sync("sometimes").check((0, 1))
    with pytest.raises(PolicyError, match="exclude needs a worker of the phase"):
        Action.exclude(7).check((0, 1))


# --------------------------------------------------------------------------- the rule and the observer


def test_switching_to_asp_applies_the_round_in_progress_as_it_stands():
    b = Barrier([0, 1, 2], bsp=True)
    assert b.push(0) == [] and b.push(1) == []
    assert b.set_sync(False) == [0, 1]  # one combined update of the pushes it has
    assert b.push(2) is None  # then each push on its own
    assert b.set_sync(False) is None  # a no-op
    assert b.set_sync(True) == []
    assert b.push(2) == [] and b.push(0) == [] and b.push(1) == [2, 0, 1]


def test_exclude_include_and_leave_change_what_a_round_waits_for():
    b = Barrier([0, 1, 2], bsp=True)
    assert b.push(0) == [] and b.push(1) == []
    assert b.exclude(2) == [0, 1]  # the round no longer waits for 2
    assert b.push(2) is None  # applied on its own
    assert b.include(2) == [] and b.include(2) is None
    assert b.push(0) == [] and b.push(1) == [] and b.push(2) == [0, 1, 2]
    assert b.push(0) == [] and b.leave(1) == [] and b.leave(2) == [0]  # stopped workers leave
    assert b.include(2) is None  # a stopped worker does not come back


def test_the_observer_averages_the_last_window_intervals():
    obs = Observer([2, 0], window=2, phase_fraction=lambda: 0.5)
    obs.interval(0, 1.0, 10, 100)
    assert not obs.ready
    obs.interval(2, 2.0, 10, 50, last_exchange_s=0.25)
    for compute_s in (3.0, 5.0):
        obs.interval(0, compute_s, 10, 100)
    seen = obs.observe(9.0, 1, (2, 0), "bsp", "bsp", 0, {2, 0})
    assert seen.phase_fraction == 0.5
    assert seen.worker == 0 and seen.workers == (0, 2) and seen.barrier == (0, 2)
    assert seen.compute_s_per_sample_of(2) == 0.04 and seen.compute_s_per_iteration_of(0) == 0.4
    assert seen.compute_s_per_iteration == (0.4, 0.2)  # (3 + 5) / 20 iterations
    assert seen.compute_s_per_sample == (0.04, 0.04)
    assert seen.exchange_s == (0.0, 0.25)


def test_make_policy_gives_a_fresh_built_in_with_its_parameters():
    p = make_policy({"kind": "sync-switch-greedy", "threshold": 2, "window": 3})
    assert isinstance(p, SyncSwitchGreedy) and p.threshold == 2.0 and p.window == 3 and p.hysteresis == 0.2
    assert make_policy({"kind": "sync-switch-greedy"}) is not make_policy({"kind": "sync-switch-greedy"})


# --------------------------------------------------------------------------- run


@pytest.mark.torch
def test_run_refuses_a_policy_with_several_ps_shards(tmp_path, capsys):
    pytest.importorskip("torch")
    args = _files(tmp_path, {"kind": "sync-switch-greedy"})
    cluster = CLUSTER | {"ps": {**CLUSTER["ps"], "count": 2}}
    (tmp_path / "c.toml").write_text(_toml(cluster))
    assert main(["run", *args, "--out", str(tmp_path / "out"), "--local", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "phase 0: an online policy runs with one PS shard only" in err and "ps.count = 2" in err
    assert not (tmp_path / "out").exists()


def test_validate_pairs_predicted_and_measured_decisions(tmp_path, capsys):
    """validate re-simulates a policy run and reports its decisions against the trace's:
    on a simulated trace of greedy (seed 3: 2 switches) every decision comes after the
    same update (shift 0); a trace whose decisions came later shows the shift."""
    from hybridps.cli import main
    from traces import TraceWriter
    from traces.compare import compare_decisions, policy_decisions

    res = _sim({"kind": "sync-switch-greedy"}, record=True)
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, res.header) as w:
        w.write_many(res.records)
    assert main(["validate", "--trace", str(path), "--json"]) == 0
    pol = json.loads(capsys.readouterr().out)["comparison"]["policy"]
    assert pol["actions"] == {"set_sync": {"predicted": 2, "measured": 2}}
    assert [d["shift"] for d in pol["decisions"]] == [0, 0] and all(d["same_action"] for d in pol["decisions"])
    assert [d["measured_action"]["sync"] for d in pol["decisions"]] == ["asp", "bsp"]
    assert main(["validate", "--trace", str(path)]) == 0
    text = capsys.readouterr().out
    assert "policy decisions: predicted 2, measured 2 (set_sync 2/2)" in text
    assert "decision 0: set_sync sync=asp, phase 0: after update" in text

    predicted = policy_decisions(res.records)
    late = [dict(d, update=d["update"] + 3) for d in predicted[:1]]  # one decision, 3 updates later
    cmp = compare_decisions(predicted, late)
    assert cmp["max_abs_shift"] == 3 and cmp["actions"]["set_sync"] == {"predicted": 2, "measured": 1}
