"""ssp in the policy interface (issue 10, docs/policies.md): the actions that switch a phase
into ssp and change its bound, what they do to the ssp gate (docs/semantics.md,
"Policies"), the built-in `adaptive-ssp` on a cluster with transient stragglers, bad
parameters, and the runtime honouring the actions on real processes (1 PS + 3 workers on
127.0.0.1). Assertions are on simulated times, counts and decisions, never on speed."""

from __future__ import annotations

import json
import os

import pytest

from hybridps.cli import main
from hybridps.errors import SpecError
from hybridps.policy import Action, AdaptiveSSP, Observer, Policy, PolicyError, make_policy
from hybridps.semantics import Barrier, SSPGate
from hybridps.spec import cluster_from_dict, job_from_dict, plan_from_dict
from sim import simulate

# 4 identical workers with short transient episodes: 360 an hour each, about 1 s long, 4x
# slower; an iteration takes 0.084 s, so an episode spans a few intervals, which a bound
# of a few exchanges can absorb
CLUSTER = {"format": "hybridps.cluster/1", "ps": {"bandwidth_gbps": 10.0, "latency_ms": 0.1},
           "devices": {"d": {"resolutions": {"32": {"a": 0.002, "b": 0.02, "max_batch": 256}}},
                       "slow": {"resolutions": {"32": {"a": 0.004, "b": 0.04, "max_batch": 256}}}},
           "workers": [{"name": "w", "device": "d", "count": 4, "bandwidth_gbps": 10.0}],
           "stragglers": {"rate_per_hour": 360.0, "slowdown": 4.0, "mean_duration_s": 1.0, "seed": 3}}
JOB = {"format": "hybridps.job/1", "model": {"name": "m", "parameters": 1_000_000},
       "data": {"name": "d", "samples": 12800},
       "train": {"epochs": 10, "resolutions": [32], "base_batch": 32, "base_lr": 0.1}}


def _plan(policy: dict | None = None, sync: str = "ssp", staleness: int | None = 2) -> dict:
    phase = {"epochs": 10, "resolution": 32, "sync": sync, "staleness": staleness if sync == "ssp" else None,
             "exchange": "gradient", "local_steps": None, "lr": 0.1,
             "workers": [{"name": f"w{i}", "batch": 32, "samples": 3200} for i in range(4)]}
    if policy is not None:
        phase["policy"] = policy
    return {"format": "hybridps.plan/1", "phases": [phase]}


def _sim(policy: dict | None = None, seed: int = 3, record: bool = False, cluster: dict = CLUSTER, **plan):
    c, job = cluster_from_dict(cluster), job_from_dict(JOB)
    return simulate(c, job, plan_from_dict(_plan(policy, **plan)), seed=seed, record=record)


def _updates_before(records: list[dict], record: dict) -> int:
    """Updates applied before `record` (a round's workers share one version: one update)."""
    return len({r["version"] for r in records[:records.index(record)] if r["kind"] == "update"})


def check_bound_after(records: list[dict], decision: dict, bound: int) -> int:
    """The ssp rule from the update order: a worker whose k-th push of the phase is applied
    started that interval after k-1 exchanges, so every other worker still in the phase
    had at least k-1-bound pushes applied by then. Checked for the intervals started after
    `decision` (each worker's first update after it may come from an interval already
    running, which a new bound does not cut short), up to the next policy record.
    Returns how often a worker ran exactly `bound` ahead (the bound was tight)."""
    phase = decision["phase"]
    updates = [r for r in records if r["kind"] == "update" and r["phase"] == phase]
    total: dict[str, int] = {}
    for u in updates:
        total[u["worker"]] = total.get(u["worker"], 0) + 1
    seen = dict.fromkeys(total, 0)
    start = records.index(decision)
    after = [r for r in records[start + 1:] if r["kind"] == "policy"]
    end = records.index(after[0]) if after else len(records)
    fresh: set[str] = set()
    tight = 0
    for i, r in enumerate(records):
        if r["kind"] != "update" or r["phase"] != phase:
            continue
        w = r["worker"]
        k = seen[w] + 1
        if start < i < end:
            if w in fresh:
                for v in seen:
                    if v != w:
                        assert seen[v] >= min(k - 1 - bound, total[v]), (r, seen, bound)
                        tight += seen[v] == k - 1 - bound
            fresh.add(w)
        seen[w] = k
    return tight


# --------------------------------------------------------------------------- the gate rule


def test_a_new_bound_holds_at_the_next_exchange_and_a_larger_one_releases_at_once():
    gate = SSPGate(None, [0, 1, 2])  # a phase with a policy: counted from the start, no bound yet
    for _ in range(3):
        gate.exchanged(0)
    gate.exchanged(1)
    assert gate.may_start(0) and gate.ahead(0) == 3
    gate.set_bound(1)  # counts kept from the phase's start: worker 0 is 3 ahead of worker 2
    assert not gate.may_start(0) and gate.may_start(1) and gate.ahead(0) == 3
    gate.hold(0)
    assert gate.release() == []
    gate.set_bound(3)  # a larger bound: worker 0 may go now
    assert gate.release() == [0]
    gate.set_bound(0)
    gate.hold(0)
    gate.hold(1)
    gate.set_bound(None)  # out of ssp: every waiting worker goes, in the order they waited
    assert gate.release() == [0, 1] and gate.waiting == []


def test_switching_into_ssp_applies_the_round_in_progress_and_bounds_the_gate():
    gate = SSPGate(None, [0, 1, 2])
    b = Barrier([0, 1, 2], bsp=True, gate=gate)
    assert b.sync == "bsp" and b.push(0) == [] and b.push(1) == []
    assert b.act(Action.set_sync("ssp", staleness=2)) == [0, 1]  # as bsp -> asp: applied as it stands
    assert b.sync == "ssp" and gate.bound == 2 and b.push(2) is None  # then each push on its own
    assert b.act(Action.set_staleness(2)) is None  # the same bound: a no-op, not recorded
    assert b.act(Action.set_staleness(0)) == [] and gate.bound == 0
    assert b.act(Action.set_sync("asp")) == [] and b.sync == "asp" and gate.bound is None
    assert b.act(Action.set_sync("ssp", staleness=1)) == [] and b.sync == "ssp"
    assert b.act(Action.set_sync("bsp")) == [] and b.sync == "bsp" and gate.bound is None
    with pytest.raises(ValueError, match="without an SSPGate"):
        Barrier([0], bsp=True).switch("ssp", 1)


@pytest.mark.parametrize("action, now, words", [
    (Action.set_sync("ssp"), "bsp", "set_sync('ssp') needs staleness=k, an integer from 0"),
    (Action.set_sync("ssp", staleness=-1), "asp", "got -1"),
    (Action.set_sync("ssp", staleness=True), "asp", "got True"),
    (Action.set_sync("ssp", staleness=1.5), "asp", "got 1.5"),
    (Action.set_sync("asp", staleness=2), "bsp", "staleness applies to set_sync('ssp') only"),
    (Action.set_sync("sometimes"), "bsp", "set_sync needs sync 'bsp', 'asp' or 'ssp'"),
    (Action.set_staleness(3), "bsp", "set_staleness changes the bound of an ssp phase, and the phase is bsp now"),
    (Action.set_staleness(-2), "ssp", "set_staleness needs staleness=k"),
])
def test_bad_ssp_actions_are_clear_errors(action, now, words):
    with pytest.raises(PolicyError, match=r"^policy action: ") as e:
        action.check((0, 1), now)
    assert words in str(e.value)


# --------------------------------------------------------------------------- adaptive-ssp in the simulator


def test_adaptive_ssp_beats_the_same_ssp_plan_under_transient_stragglers():
    for seed in (3, 5):
        plain, adaptive = _sim(seed=seed), _sim({"kind": "adaptive-ssp"}, seed=seed, record=True)
        # measured: seed 3 136.5 s against 143.4 s (0.952), seed 5 129.2 s against 136.1 s (0.949)
        assert adaptive.makespan_s < 0.96 * plain.makespan_s, (seed, adaptive.makespan_s, plain.makespan_s)
        s, p = adaptive.summary()["staleness"], plain.summary()["staleness"]
        # what it costs: the slowed worker's updates are staler (max 23 and 26 against 11 and
        # 12); the mean stays the 4-worker asp-like 3.0 (each push sees the 3 others')
        assert s["max"] > p["max"] and abs(s["mean"] - p["mean"]) < 0.01
        assert 4000 <= adaptive.summary()["updates"] <= 4004  # the phase drains: at most one interval a worker over
        if seed == 3:
            rec = adaptive.records
    policy = [r for r in rec if r["kind"] == "policy"]
    assert len(policy) == 80 and {r["action"]["kind"] for r in policy} == {"set_staleness"}
    bounds = [r["action"]["staleness"] for r in policy]
    assert min(bounds) == 2 and max(bounds) == 14  # min_staleness + ceil(4 x (4 - 1)) for a 4x episode
    assert policy[0]["observed"]["staleness_bound"] == 2 and policy[0]["observed"]["sync"] == "ssp"
    for before, r in zip([2] + bounds, policy):
        assert r["observed"]["staleness_bound"] == before  # each change starts from the last one
        check_bound_after(rec, r, r["action"]["staleness"])


def test_adaptive_ssp_is_deterministic_for_a_seed_and_differs_across_seeds():
    a, b, c = (_sim({"kind": "adaptive-ssp"}, seed=s) for s in (3, 3, 5))
    assert a.summary() | {"wall_s": 0} == b.summary() | {"wall_s": 0}
    assert a.makespan_s == pytest.approx(136.491, abs=1e-3) and c.makespan_s == pytest.approx(129.177, abs=1e-3)
    assert a.summary()["policy_actions"] == {"set_staleness": 80}
    assert c.summary()["policy_actions"] == {"set_staleness": 70}


def test_a_plans_slower_device_does_not_widen_the_bound():
    # no stragglers, one worker on a device twice as slow: each worker is its own reference,
    # so the lasting spread (which no bound can absorb) moves nothing
    cluster = dict(CLUSTER, stragglers={"rate_per_hour": 0.0},
                   workers=[{"name": "w", "device": "d", "count": 3, "bandwidth_gbps": 10.0},
                            {"name": "w3", "device": "slow", "bandwidth_gbps": 10.0}])
    plain, adaptive = _sim(cluster=cluster), _sim({"kind": "adaptive-ssp"}, cluster=cluster)
    assert adaptive.summary()["policy_actions"] == {}
    assert adaptive.makespan_s == plain.makespan_s


def test_ssp_plans_without_a_policy_and_other_policies_on_ssp_keep_their_makespans():
    plain = _sim()
    assert plain.makespan_s == pytest.approx(143.380, abs=1e-3)
    greedy = _sim({"kind": "sync-switch-greedy"})  # acts on bsp phases only: not consulted
    assert greedy.makespan_s == plain.makespan_s and greedy.summary()["policy_actions"] == {}
    on_bsp = _sim({"kind": "adaptive-ssp"}, sync="bsp")  # acts on ssp phases only
    assert on_bsp.makespan_s == _sim(sync="bsp").makespan_s and on_bsp.summary()["policy_actions"] == {}


def test_the_target_bound_follows_the_largest_slowdown_with_hysteresis():
    p = AdaptiveSSP(min_staleness=1, max_staleness=10, gain=2.0, window=1, hysteresis=2)
    obs = Observer([0, 1], window=1)

    def push(w: int, compute_s: float, bound: int) -> list:
        obs.interval(w, compute_s, 1, 10)
        return list(p.decide(obs.observe(0.0, 0, (w,), "ssp", "ssp", 0, {0, 1}, bound)))

    push(0, 1.0, 1)
    assert push(1, 1.0, 1) == []  # alike: the bound stays at min_staleness
    assert push(1, 3.0, 1) == [Action.set_staleness(5)]  # 3x slowed: 1 + ceil(2 x 2)
    assert push(1, 9.0, 5) == [Action.set_staleness(10)]  # capped at max_staleness
    assert push(1, 2.0, 10) == [Action.set_staleness(3)]  # 1 + 2 = 3, more than 2 below 10
    assert push(1, 1.6, 3) == []  # target 1 + ceil(2 x 0.6) = 3: the bound it has
    assert push(1, 1.5, 3) == []  # not above threshold (1.5): target 1, but only 2 below 3
    assert push(1, 1.0, 3) == []  # the same: within the hysteresis
    assert push(1, 1.0, 4) == [Action.set_staleness(1)]  # 3 below 4: back to min_staleness
    assert push(0, 1.0, None) == []  # not in ssp now: not its business


# --------------------------------------------------------------------------- user policies and bad specs


class SspSteps(Policy):
    """bsp, then ssp with bound `first` from a quarter of the phase, bound `then` from half:
    decisions of the phase's progress, so they fall at the same update in any run."""

    window = 1
    uses_ssp = True  # it takes a bsp phase to ssp: the PS counts exchanges from the start

    def __init__(self, first: int = 2, then: int = 0):
        self.first, self.then = first, then

    def decide(self, obs):
        if obs.sync == "bsp" and obs.phase_fraction >= 0.25:
            return [Action.set_sync("ssp", staleness=self.first)]
        if obs.sync == "ssp" and obs.phase_fraction >= 0.5 and obs.staleness_bound != self.then:
            return [Action.set_staleness(self.then)]
        return []


def test_a_user_policy_takes_a_bsp_phase_to_ssp_and_tightens_the_bound():
    cluster = dict(CLUSTER, workers=[{"name": "w", "device": "d", "count": 3, "bandwidth_gbps": 10.0},
                                     {"name": "w3", "device": "slow", "bandwidth_gbps": 10.0}])
    result = _sim({"kind": "python", "target": "tests.test_policy_ssp:SspSteps"}, sync="bsp", cluster=cluster,
                  record=True)
    assert result.summary()["policy_actions"] == {"set_sync": 1, "set_staleness": 1}
    to_ssp, tighter = [r for r in result.records if r["kind"] == "policy"]
    assert to_ssp["action"] == {"kind": "set_sync", "sync": "ssp", "staleness": 2}
    assert to_ssp["observed"]["sync"] == "bsp" and to_ssp["observed"]["staleness_bound"] is None
    assert tighter["action"] == {"kind": "set_staleness", "staleness": 0}
    assert tighter["observed"]["staleness_bound"] == 2
    # 1000 rounds; a quarter of the samples are in after 250, the 251st is consulted
    assert _updates_before(result.records, to_ssp) == 250
    assert check_bound_after(result.records, to_ssp, 2) > 0  # the fast workers ran 2 ahead of w3
    assert check_bound_after(result.records, tighter, 0) > 0


class SetsABadBound(Policy):
    def decide(self, obs):
        return [Action.set_staleness(-1)]


class SspUndeclared(Policy):
    def decide(self, obs):
        return [Action.set_sync("ssp", staleness=1)]


def _files(tmp_path, policy: dict) -> list[str]:
    import tomli_w

    (tmp_path / "c.toml").write_text(tomli_w.dumps(CLUSTER))
    (tmp_path / "j.toml").write_text(tomli_w.dumps(JOB))
    (tmp_path / "p.json").write_text(json.dumps(_plan(policy)))
    return ["--cluster", str(tmp_path / "c.toml"), "--job", str(tmp_path / "j.toml"), "--plan", str(tmp_path / "p.json")]


def test_a_bad_bound_from_a_policy_stops_the_simulation_with_one_line(tmp_path, capsys):
    assert main(["simulate", *_files(tmp_path, {"kind": "python", "target": "tests.test_policy_ssp:SetsABadBound"}),
                 "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "policy action: set_staleness needs staleness=k" in err


def test_a_switch_to_ssp_needs_a_policy_that_declares_it(tmp_path, capsys):
    # without uses_ssp the PS keeps no exchange counts on a bsp phase: a clear error, not a wrong gate
    files = _files(tmp_path, {"kind": "python", "target": "tests.test_policy_ssp:SspUndeclared"})
    plan = json.loads((tmp_path / "p.json").read_text())
    plan["phases"][0].update(sync="bsp", staleness=None)
    (tmp_path / "p.json").write_text(json.dumps(plan))
    assert main(["simulate", *files, "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "set_sync('ssp') on a phase planned bsp needs a policy that declares uses_ssp = True" in err


@pytest.mark.parametrize("policy, field, words", [
    ({"kind": "adaptive-ssp", "min_staleness": 8, "max_staleness": 4}, "phases[0].policy.max_staleness",
     "expected at least min_staleness (8), got 4"),
    ({"kind": "adaptive-ssp", "min_staleness": -1}, "phases[0].policy.min_staleness", "expected 0 to"),
    ({"kind": "adaptive-ssp", "gain": "wide"}, "phases[0].policy.gain", "expected a number"),
    ({"kind": "adaptive-ssp", "window": 0}, "phases[0].policy.window", "expected 1 to 10000"),
    ({"kind": "adaptive-ssp", "hysteresis": 1.5}, "phases[0].policy.hysteresis", "expected an integer"),
    ({"kind": "adaptive-ssp", "patience": 2}, "phases[0].policy.patience", "unknown parameter"),
    ({"kind": "adaptive-ssp", "threshold": 0.5}, "phases[0].policy.threshold", "expected 1.0 to"),
])
def test_bad_adaptive_ssp_parameters_exit_2_naming_the_field(tmp_path, capsys, policy, field, words):
    assert main(["simulate", *_files(tmp_path, policy), "--json"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and len(err.splitlines()) == 1
    assert field in err and words in err and "p.json" in err


def test_adaptive_ssp_parameters_and_a_policy_on_an_ssp_phase_are_accepted():
    p = make_policy({"kind": "adaptive-ssp", "min_staleness": 0, "max_staleness": 8, "gain": 2, "hysteresis": 0})
    assert (p.min_staleness, p.max_staleness, p.gain, p.window, p.hysteresis) == (0, 8, 2.0, 1, 0)
    d = _plan({"kind": "adaptive-ssp", "max_staleness": 8})
    assert plan_from_dict(d).phases[0].policy.as_dict() == {"kind": "adaptive-ssp", "max_staleness": 8}
    with pytest.raises(SpecError, match=r"phases\[0\]\.staleness: sync 'ssp' needs an integer staleness bound"):
        plan_from_dict(_plan({"kind": "adaptive-ssp"}, staleness=None))


# --------------------------------------------------------------------------- the runtime


SSP_STEPS_MODULE = '''
from hybridps.policy import Action, Policy


class SspSteps(Policy):
    window = 1
    uses_ssp = True

    def decide(self, obs):
        if obs.sync == "bsp" and obs.phase_fraction >= 0.25:
            return [Action.set_sync("ssp", staleness=2)]
        if obs.sync == "ssp" and obs.phase_fraction >= 0.5 and obs.staleness_bound != 0:
            return [Action.set_staleness(0)]
        return []
'''


@pytest.mark.torch
@pytest.mark.slow
def test_the_runtime_switches_to_ssp_and_keeps_each_new_bound(tmp_path, monkeypatch):
    # 1 PS + 3 workers; w2 is emulated 4x slower than the others, so under ssp w0 and w1 run
    # ahead of it up to the bound (2, then 0) and wait there
    pytest.importorskip("torch")
    from runtime.testing import run_cli, spec_args, write_specs
    from traces import read_trace

    (tmp_path / "sspsteps.py").write_text(SSP_STEPS_MODULE)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}")
    write_specs(tmp_path, [("w0", 16, 128), ("w1", 16, 128), ("w2", 16, 128)], sync="bsp", epochs=4, lr=0.05,
                slowdown={"w0": 2.0, "w1": 2.0, "w2": 8.0})
    plan = json.loads((tmp_path / "plan.json").read_text())
    plan["phases"][0]["policy"] = {"kind": "python", "target": "sspsteps:SspSteps"}
    (tmp_path / "plan.json").write_text(json.dumps(plan, indent=1))
    r = run_cli(["simulate", *spec_args(tmp_path), "--json", "--trace", tmp_path / "sim.jsonl"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["policy_actions"] == {"set_staleness": 1, "set_sync": 1}
    out = tmp_path / "out"
    r = run_cli(["run", *spec_args(tmp_path), "--out", out, "--local", "--eval-every", "0", "--worker-timeout", "30"],
                timeout_s=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["policy_actions"] == {"set_staleness": 1, "set_sync": 1}
    index = {}
    for source, records in (("sim", read_trace(tmp_path / "sim.jsonl").records),
                            ("run", read_trace(out / "trace.jsonl").records)):
        to_ssp, tighter = [x for x in records if x["kind"] == "policy"]
        assert to_ssp["action"] == {"kind": "set_sync", "sync": "ssp", "staleness": 2}
        assert tighter["action"] == {"kind": "set_staleness", "staleness": 0}
        index[source] = (_updates_before(records, to_ssp), _updates_before(records, tighter))
        check_bound_after(records, to_ssp, 2)
        assert check_bound_after(records, tighter, 0) > 0  # w0 and w1 waited for w2 (8x against 2x)
        assert sum(1 for x in records if x["kind"] == "update") >= 4 * 384 // 16  # the phase ran to its end
    # 4 epochs x 8 rounds: a quarter of the samples are in after 8 rounds, the 9th is consulted
    assert index["sim"][0] == 8
    assert all(abs(a - b) <= 1 for a, b in zip(index["run"], index["sim"])), index


@pytest.mark.torch
@pytest.mark.slow
def test_adaptive_ssp_in_the_runtime_widens_the_bound_for_a_straggler_and_keeps_it(tmp_path):
    # w2 has transient episodes 8x slower (as in tests/test_runtime_policy.py's greedy test):
    # adaptive-ssp widens the bound while it is slowed; every bound it sets is kept.
    # Which updates it decides at follows the run's clock: only the behaviour is asserted.
    pytest.importorskip("torch")
    from runtime.testing import run_cli, spec_args, write_specs
    from traces import read_trace

    write_specs(tmp_path, [("w0", 16, 128), ("w1", 16, 128), ("w2", 16, 128)], sync="ssp", staleness=2, epochs=12,
                lr=0.05, slowdown={"w0": 10.0, "w1": 10.0, "w2": 10.0})
    text = (tmp_path / "cluster.toml").read_text().replace("slowdown = 10.0\n",
                                                           "slowdown = 10.0\nexchange_overhead_s = 0.01\n")
    (tmp_path / "cluster.toml").write_text(text + '[stragglers]\nrate_per_hour = 7200.0\nslowdown = 8.0\n'
                                           'mean_duration_s = 0.25\nworkers = ["w2"]\nseed = 4\n')
    plan = json.loads((tmp_path / "plan.json").read_text())
    plan["phases"][0]["policy"] = {"kind": "adaptive-ssp"}
    (tmp_path / "plan.json").write_text(json.dumps(plan, indent=1))
    out = tmp_path / "out"
    r = run_cli(["run", *spec_args(tmp_path), "--out", out, "--local", "--eval-every", "0", "--worker-timeout", "30"],
                timeout_s=300)
    assert r.returncode == 0, r.stderr
    records = read_trace(out / "trace.jsonl").records
    policy = [x for x in records if x["kind"] == "policy"]
    assert policy and {p["action"]["kind"] for p in policy} == {"set_staleness"}
    assert max(p["action"]["staleness"] for p in policy) > 2  # widened while w2 was slowed
    before = 2
    for p in policy:
        assert p["observed"]["sync"] == "ssp" and p["observed"]["staleness_bound"] == before
        before = p["action"]["staleness"]
        assert 2 <= before <= 32
        check_bound_after(records, p, before)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["policy_actions"] == {"set_staleness": len(policy)}


def test_adaptive_ssp_keeps_the_bound_while_another_worker_is_still_slowed():
    """When the slowest worker recovers, the spread is the next slowest's, not none: the
    bound falls to that worker's target, not to min_staleness (a bug until 2026-12-06: the
    policy kept pointing at the recovered worker). The slowdowns are set by hand."""
    from types import SimpleNamespace

    from hybridps.policy import AdaptiveSSP

    class Handset(AdaptiveSSP):
        def update_slowdowns(self, obs, slowed=None, above=0.0, below=0.0):
            self.slowdowns.update(obs.handset)
            slowed.clear()
            slowed.update(w for w, f in self.slowdowns.items() if f > above)

    policy = Handset()  # min 2, gain 4, threshold 1.5, hysteresis 2

    def push(worker: int, bound: int, **slowdowns: float):
        obs = SimpleNamespace(source=SimpleNamespace(unseen={worker}, workers=[0, 1, 2, 3]), pushed=(worker,),
                              staleness_bound=bound, handset={int(w[1:]): f for w, f in slowdowns.items()})
        return [a.staleness for a in policy.decide(obs)]

    assert push(0, 2, w0=4.0, w1=3.0, w2=1.0, w3=1.0) == [14]  # 2 + ceil(4 x 3)
    assert push(1, 14, w1=3.0) == []  # w0 (4x) is still the slowest: 14 kept
    assert push(0, 14, w0=1.0) == [10]  # w0 recovered; w1 is still 3x slower: its target, not 2
    assert push(1, 10, w1=1.0) == [2]  # now nobody is slowed
