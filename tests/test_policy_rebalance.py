"""The `rebalance` action and the `lb-rebalance` built-in (issue 10, docs/policies.md) in
the simulator: a persistent 2x slowdown of one worker in a bsp gradient phase, the share
rule (hybridps.semantics.equal_step_shares), the action's checks and bad parameters.
tests/test_runtime_rebalance.py runs the same policy on real processes."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from hybridps.cli import main
from hybridps.policy import Action, Observer, Policy, PolicyError, balanced_batches, consult, make_policy
from hybridps.semantics import Barrier, Rebalance, equal_step_shares
from hybridps.spec import cluster_from_dict, job_from_dict, plan_from_dict
from sim import simulate
from traces.barrier import barrier_wait

# three workers and one persistently 2x slower ("slow"), identical devices
CLUSTER = {"format": "hybridps.cluster/1", "ps": {"bandwidth_gbps": 10.0, "latency_ms": 0.1},
           "devices": {"d": {"resolutions": {"32": {"a": 0.002, "b": 0.005, "max_batch": 1024}}}},
           "workers": [{"name": "w", "device": "d", "count": 3, "bandwidth_gbps": 10.0},
                       {"name": "slow", "device": "d", "bandwidth_gbps": 10.0, "slowdown": 2.0}]}
SAMPLES, EPOCHS = 6400, 20
JOB = {"format": "hybridps.job/1", "model": {"name": "m", "parameters": 1_000_000},
       "data": {"name": "d", "samples": SAMPLES},
       "train": {"epochs": EPOCHS, "resolutions": [32], "base_batch": 64, "base_lr": 0.1}}
NAMES = ["w0", "w1", "w2", "slow"]


def _plan(policy: dict | None = None) -> dict:
    phase = {"epochs": EPOCHS, "resolution": 32, "sync": "bsp", "staleness": None, "exchange": "gradient",
             "local_steps": None, "lr": 0.1,
             "workers": [{"name": n, "batch": 64, "samples": SAMPLES // 4} for n in NAMES]}
    if policy is not None:
        phase["policy"] = policy
    return {"format": "hybridps.plan/1", "phases": [phase]}


def _sim(policy: dict | None = None, cluster: dict = CLUSTER, seed: int | None = None, record: bool = True):
    return simulate(cluster_from_dict(cluster), job_from_dict(JOB), plan_from_dict(_plan(policy)), seed=seed,
                    record=record)


def _in_effect_s(records: list[dict]) -> float:
    """When the first rebalanced batch starts computing."""
    return min(r["start_s"] for r in records if r["kind"] == "compute" and r["batch"] != 64)


# --------------------------------------------------------------------------- the built-in on a 2x slowdown


def test_lb_rebalance_removes_the_barrier_wait_of_a_persistent_slowdown():
    plain, lb = _sim(), _sim({"kind": "lb-rebalance"})
    before, after = barrier_wait(plain.records, 0), barrier_wait(lb.records, 0)
    in_effect = barrier_wait(lb.records, 0, _in_effect_s(lb.records))
    print(f"barrier wait: no policy {before.fraction:.1%}, lb-rebalance {after.fraction:.1%} "
          f"({in_effect.fraction:.1%} once in effect); makespan {plain.makespan_s:.1f} s -> {lb.makespan_s:.1f} s "
          f"({lb.makespan_s / plain.makespan_s:.3f}x)")
    # measured: 33.6% without the policy; 3.3% with it over the whole phase (the first
    # epoch still runs the plan's batches), 0.7% once the new batches are in effect
    assert before.fraction > 0.30
    assert after.fraction < 0.05
    assert in_effect.fraction < 0.01
    # measured 91.1 s against 141.2 s (0.645x); ideal 3.5 workers' speed instead of 4 x 0.5
    assert lb.makespan_s < 0.66 * plain.makespan_s
    assert lb.summary()["policy_actions"] == {"rebalance": 1}
    (decision,) = [r for r in lb.records if r["kind"] == "policy"]
    assert decision["action"] == {"kind": "rebalance", "batches": {"w0": 74, "w1": 73, "w2": 73, "slow": 36}}
    times = decision["observed"]["compute_s_per_iteration"]
    assert times["slow"] == pytest.approx(2 * times["w0"])


def test_a_rebalance_takes_effect_at_the_next_worker_epoch_with_equal_steps_and_whole_epochs():
    lb = _sim({"kind": "lb-rebalance"})
    (decision,) = [r for r in lb.records if r["kind"] == "policy"]
    batches = decision["action"]["batches"]
    by_epoch: dict[int, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    steps: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    samples: dict[int, int] = defaultdict(int)
    for r in lb.records:
        if r["kind"] == "compute":
            by_epoch[r["epoch"]][r["worker"]].add(r["batch"])
            steps[r["epoch"]][r["worker"]] += 1
            samples[r["epoch"]] += r.get("samples", r["batch"])
    assert decision["observed"]["phase_fraction"] < 1 / EPOCHS  # decided in epoch 0 ...
    assert {w: b for w, (b,) in by_epoch[0].items()} == dict.fromkeys(NAMES, 64)  # ... in effect from epoch 1
    for e in range(1, EPOCHS):
        assert {w: b for w, (b,) in by_epoch[e].items()} == batches
    for e in range(EPOCHS):
        assert len(set(steps[e].values())) == 1  # bsp: equal steps per epoch
        assert samples[e] == SAMPLES  # every worker-epoch covers its share: whole epochs
    s = lb.summary()
    assert len(s["epoch_end_s"]) == EPOCHS
    assert sum(w["samples"] for w in s["workers"].values()) == EPOCHS * SAMPLES  # the ledger's count
    push_bytes = {r["bytes"] for r in lb.records if r["kind"] == "push"}
    assert len(push_bytes) == 1 and push_bytes == {r["bytes"] for r in _sim().records if r["kind"] == "push"}


def test_lb_rebalance_is_deterministic_for_a_seed_and_follows_transient_stragglers():
    stragglers = {**CLUSTER, "stragglers": {"rate_per_hour": 40.0, "slowdown": 4.0, "mean_duration_s": 20.0,
                                            "seed": 3}}
    a = _sim({"kind": "lb-rebalance"}, stragglers, seed=3, record=False)
    b = _sim({"kind": "lb-rebalance"}, stragglers, seed=3, record=False)
    c = _sim({"kind": "lb-rebalance"}, stragglers, seed=4, record=False)
    assert a.summary() | {"wall_s": 0} == b.summary() | {"wall_s": 0}
    assert c.makespan_s != a.makespan_s
    assert a.summary()["policy_actions"]["rebalance"] >= 1


def test_lb_rebalance_does_not_act_on_a_balanced_phase_or_an_asp_one():
    balanced = {**CLUSTER, "workers": [{"name": "w", "device": "d", "count": 3, "bandwidth_gbps": 10.0},
                                       {"name": "slow", "device": "d", "bandwidth_gbps": 10.0}]}
    plain, lb = _sim(cluster=balanced, record=False), _sim({"kind": "lb-rebalance"}, balanced, record=False)
    # the plain run is fast-forwarded (sim/fastforward.py: equal to 1e-9), a phase with a policy never
    assert lb.summary()["policy_actions"] == {} and lb.makespan_s == pytest.approx(plain.makespan_s, rel=1e-9)
    assert make_policy({"kind": "lb-rebalance"}).acts_on("asp") is False


# --------------------------------------------------------------------------- the action and its rule


def test_equal_step_shares_keep_steps_equal_and_sum_to_the_dataset():
    assert equal_step_shares(6400, [74, 73, 73, 36]) == [1850, 1825, 1825, 900]  # 25 steps each
    shares = equal_step_shares(12800, [37, 37, 36, 18])
    assert sum(shares) == 12800 and {-(-s // b) for s, b in zip(shares, [37, 37, 36, 18])} == {100}
    assert equal_step_shares(10, [4, 4]) == [5, 5]  # 2 steps: the last batches give up 3 each
    assert equal_step_shares(7, [4, 4]) == [3, 4]  # the largest last batches give first; ties in order


def test_balanced_batches_are_integers_proportional_to_speed_with_the_sum_kept():
    assert balanced_batches(256, [1.0, 1.0, 1.0, 2.0]) == [74, 73, 73, 36]
    assert balanced_batches(10, [1.0, 1.0, 1.0, 1000.0]) == [3, 3, 3, 1]  # at least 1 each
    assert balanced_batches(4, [1.0, 2.0, 3.0, 4.0]) == [1, 1, 1, 1]


def _consult_once(action: Action, batches=(32, 32)) -> tuple[list, Rebalance]:
    class Once(Policy):
        window = 1

        def decide(self, obs):
            return [action]

    observer = Observer([0, 1], 1)
    for w in (0, 1):
        observer.interval(w, 1.0, 1, 32, 0.0, 32)
    rebalance = Rebalance([0, 1], list(batches), 640)
    done = list(consult(Once(), observer, Barrier([0, 1], True), 1.0, 0, (0, 1), "bsp", 0, ["a", "b"], rebalance))
    return done, rebalance


def test_a_rebalance_reaches_each_worker_with_its_pull_and_same_batches_are_a_no_op():
    done, rebalance = _consult_once(Action.rebalance({0: 40, 1: 24}))
    ((action, completed, record),) = done
    assert completed == [] and record["action"] == {"kind": "rebalance", "batches": {"a": 40, "b": 24}}
    assert rebalance.pulled(0) == (40, 24) and rebalance.pulled(0) is None  # once, with the next pull
    assert rebalance.assignment((40, 24), 1) == (24, 240)  # 10 steps: 400 + 240 = 640
    assert _consult_once(Action.rebalance({0: 32, 1: 32}))[0] == []  # nothing changes: not recorded


@pytest.mark.parametrize("batches, words", [
    ({0: 40}, "a batch for every worker of the phase"),
    ({0: 64, 1: 0}, "integer batches >= 1"),
    ({0: 40, 1: 40}, "keep the global batch 64"),
])
def test_an_invalid_rebalance_is_a_policy_error(batches, words):
    with pytest.raises(PolicyError, match=words):
        _consult_once(Action.rebalance(batches))


# --------------------------------------------------------------------------- bad parameters


def _files(tmp_path: Path, policy: dict) -> list[str]:
    import tomli_w

    (tmp_path / "c.toml").write_text(tomli_w.dumps(CLUSTER))
    (tmp_path / "j.toml").write_text(tomli_w.dumps(JOB))
    (tmp_path / "p.json").write_text(json.dumps(_plan(policy)))
    return ["--cluster", str(tmp_path / "c.toml"), "--job", str(tmp_path / "j.toml"),
            "--plan", str(tmp_path / "p.json")]


@pytest.mark.parametrize("policy, field, words", [
    ({"kind": "lb-rebalance", "min_gain": 1.5}, "phases[0].policy.min_gain", "expected 0.0 to 1.0"),
    ({"kind": "lb-rebalance", "window": 0}, "phases[0].policy.window", "expected 1 to 10000"),
    ({"kind": "lb-rebalance", "threshold": 2}, "phases[0].policy.threshold", "unknown parameter"),
])
def test_bad_lb_rebalance_parameters_exit_2_with_one_line(tmp_path, capsys, policy, field, words):
    assert main(["simulate", *_files(tmp_path, policy), "--json"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and len(err.splitlines()) == 1
    assert field in err and words in err and "p.json" in err


def test_lb_rebalance_through_simulate_json(tmp_path, capsys):
    assert main(["simulate", *_files(tmp_path, {"kind": "lb-rebalance", "min_gain": 0.1}), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["policy_actions"] == {"rebalance": 1}
