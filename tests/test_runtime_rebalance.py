"""`lb-rebalance` in `hybridps run` (issue 10, docs/policies.md): 1 PS + 3 workers on
127.0.0.1, one worker emulated 4x slower than the others (the cluster's slowdown). The
PS's policy decides new batches; each worker gets them with its reply and trains on its
new batch and share from its next worker-epoch (equal steps, whole epochs).

The decision and the data split are asserted exactly. The barrier wait is timing: the
2-core machine is shared, and identical workers' iterations differ by ~20% from window
to window, which no re-split can remove; so the first test asks for a robust bound (the
wait after the new batches are in effect below 0.75x the wait before, in the same run)
and prints the figures (docs/policies.md reports them). The second takes that noise out
with `--compute-time model`: each iteration sleeps the cluster's t(B) (206 ms at batch
512, far above this machine's jitter), so the issue's 5% bound can be asserted."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

from runtime.testing import run_cli, spec_args, write_specs  # noqa: E402
from traces.barrier import barrier_wait  # noqa: E402
from traces.jsonl import read_trace  # noqa: E402
from traces.records import validate_record  # noqa: E402

BATCH, STEPS, EPOCHS = 512, 8, 8
WORKERS = [(name, BATCH, STEPS * BATCH) for name in ("w0", "w1", "w2")]
SAMPLES = 3 * STEPS * BATCH


def _run(tmp_path, policy: dict, slowdown: dict | None = None, compute_time: str = "measured"):
    # default: a small MLP whose iterations are emulated 5x (w2: 20x) slower than this
    # machine: a few ms each, mostly sleep, so the machine's load moves them less
    write_specs(tmp_path, WORKERS, sync="bsp", epochs=EPOCHS, lr=0.05, s_per_sample=0.0004,
                slowdown=slowdown or {"w0": 5.0, "w1": 5.0, "w2": 20.0})
    plan = json.loads((tmp_path / "plan.json").read_text())
    plan["phases"][0]["policy"] = policy
    (tmp_path / "plan.json").write_text(json.dumps(plan, indent=1))
    out = tmp_path / "out"
    r = run_cli(["run", *spec_args(tmp_path), "--out", out, "--local", "--eval-every", "0", "--worker-timeout", "30",
                 "--compute-time", compute_time], timeout_s=300)
    assert r.returncode == 0, r.stderr
    tr = read_trace(out / "trace.jsonl")
    assert all(validate_record(x) is None for x in tr.records)
    return tr.records, json.loads((out / "summary.json").read_text())


def test_lb_rebalance_resizes_the_slowed_workers_batch_from_its_next_epoch(tmp_path):
    records, summary = _run(tmp_path, {"kind": "lb-rebalance", "window": STEPS, "min_gain": 0.3})
    decisions, _, _ = _check_rebalance(records, summary)
    assert decisions[0]["action"]["batches"]["w2"] < 0.5 * min(decisions[0]["action"]["batches"]["w0"],
                                                               decisions[0]["action"]["batches"]["w1"])  # 171 at 4x


def _check_rebalance(records: list[dict], summary: dict):
    """What every lb-rebalance run must show: the decision, the global batch kept, the new
    batches from the next worker-epoch, equal steps and whole epochs; the barrier wait
    before and after, which must fall. Returns (decisions, wait before, wait after)."""
    assert summary["status"] == "complete"
    decisions = [r for r in records if r["kind"] == "policy"]
    assert decisions and summary["policy_actions"] == {"rebalance": len(decisions)}
    first = decisions[0]["action"]["batches"]
    assert sum(first.values()) == 3 * BATCH  # the global batch kept
    computes = [r for r in records if r["kind"] == "compute"]
    # the batches of each epoch: the plan's or one decision's, for every worker at once
    vectors = [{"w0": BATCH, "w1": BATCH, "w2": BATCH}] + [d["action"]["batches"] for d in decisions]
    batches, steps, samples = defaultdict(dict), defaultdict(lambda: defaultdict(int)), defaultdict(int)
    for r in computes:
        assert batches[r["epoch"]].setdefault(r["worker"], r["batch"]) == r["batch"]  # one batch a worker-epoch
        steps[r["epoch"]][r["worker"]] += 1
        samples[r["epoch"]] += r.get("samples", r["batch"])
    assert sorted(batches) == list(range(EPOCHS))
    for e in range(EPOCHS):
        assert batches[e] in vectors, (e, batches[e])
        assert len(set(steps[e].values())) == 1  # equal steps per epoch
        assert samples[e] == SAMPLES  # the shares still cover the epoch exactly
    # in effect from the epoch after the one the decision was taken in
    # (by the computes that ended before it: under load a worker released by the round's
    # reply may start its next compute a moment before the PS stamps the decision)
    decided_in = max(r["epoch"] for r in computes if r["end_s"] <= decisions[0]["t_s"])
    assert batches[decided_in + 1] == first and batches[decided_in] != first
    # the barrier wait, from the trace (traces.barrier): before the new batches and after
    since = min(r["start_s"] for r in computes if r["epoch"] == decided_in + 1)
    before = barrier_wait(records, 0, until_s=since)
    after = barrier_wait(records, 0, since_s=since)
    print(f"barrier wait: before {before.fraction:.1%} ({before.rounds} rounds), after {after.fraction:.1%} "
          f"({after.rounds} rounds); decisions {[d['action']['batches'] for d in decisions]}")
    assert after.rounds > 0 and before.rounds > 0
    assert after.fraction < 0.75 * before.fraction
    return decisions, before, after


def test_under_a_persistent_2x_slowdown_lb_rebalance_leaves_under_5_percent_barrier_wait(tmp_path):
    """The issue's case: one worker 2x slower for the whole phase, iterations of the
    model's length (`--compute-time model`). Measured 2026-12-06 (load 3.5): 32.5-33.0%
    without a policy, 0.7-2.2% once lb-rebalance's batches are in effect
    (`python bench/runtime_rebalance.py --compute-time model --repeat 3`)."""
    slowdown = {"w0": 1.0, "w1": 1.0, "w2": 2.0}
    records, summary = _run(tmp_path, {"kind": "lb-rebalance", "window": STEPS, "min_gain": 0.3}, slowdown, "model")
    decisions, before, after = _check_rebalance(records, summary)
    first = decisions[0]["action"]["batches"]
    assert 300 <= first["w2"] <= 315  # a fifth of the 1,536: 307 at exactly 2x, the fast ones 2x its speed each
    assert before.fraction > 0.25  # two workers wait half of w2's extra time in each round
    assert after.fraction < 0.05


REBALANCE_AT = '''
from hybridps.policy import Action, Policy


class RebalanceAt(Policy):
    """Re-splits the batches once, when `at` of the phase is applied: deterministic,
    whatever the timing."""

    window = 1

    def __init__(self, at: float = 0.25, batches: list = (24, 16, 8)):
        self.at, self.batches, self.done = at, list(batches), False

    def decide(self, obs):
        if self.done or obs.phase_fraction < self.at:
            return []
        self.done = True
        return [Action.rebalance(dict(zip(obs.workers, self.batches)))]
'''


def _batches_by_epoch(records: list[dict]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = defaultdict(dict)
    for r in records:
        if r["kind"] == "compute":
            out[r["epoch"]][r["worker"]] = r["batch"]
    return dict(out)


def test_a_rebalance_runs_alike_in_simulate_and_run_and_each_round_is_sgd_on_the_union(tmp_path, monkeypatch):
    # 3 workers, batch 16, 8 rounds an epoch, 4 epochs: the policy re-splits to 24/16/8
    # once a quarter is applied (consulted at the 9th round, in epoch 1), so from epoch 2
    # on the shares are 192/128/64 (hybridps.semantics.equal_step_shares: still 8 steps)
    from hybridps.semantics import equal_step_shares
    from runtime.server import load_checkpoint
    from runtime.testing import reference_bsp_sgd
    from traces.jsonl import read_trace as read

    (tmp_path / "rebalance_at.py").write_text(REBALANCE_AT)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{__import__('os').environ.get('PYTHONPATH', '')}")
    workers = [("w0", 16, 128), ("w1", 16, 128), ("w2", 16, 128)]
    lr, mom, wd = 0.05, 0.9, 1e-3
    write_specs(tmp_path, workers, sync="bsp", epochs=4, lr=lr, momentum=mom, weight_decay=wd)
    plan = json.loads((tmp_path / "plan.json").read_text())
    plan["phases"][0]["policy"] = {"kind": "python", "target": "rebalance_at:RebalanceAt"}
    (tmp_path / "plan.json").write_text(json.dumps(plan, indent=1))
    r = run_cli(["simulate", *spec_args(tmp_path), "--json", "--trace", tmp_path / "sim.jsonl"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["policy_actions"] == {"rebalance": 1}
    out = tmp_path / "out"
    r = run_cli(["run", *spec_args(tmp_path), "--out", out, "--local", "--eval-every", "0", "--worker-timeout", "30"],
                timeout_s=300)
    assert r.returncode == 0, r.stderr
    sim, run = read(tmp_path / "sim.jsonl").records, read(out / "trace.jsonl").records
    plan_b, new_b = dict.fromkeys(["w0", "w1", "w2"], 16), {"w0": 24, "w1": 16, "w2": 8}
    expected = {0: plan_b, 1: plan_b, 2: new_b, 3: new_b}
    assert _batches_by_epoch(sim) == expected and _batches_by_epoch(run) == expected
    for records in (sim, run):
        (p,) = [x for x in records if x["kind"] == "policy"]
        assert p["action"] == {"kind": "rebalance", "batches": new_b}
    # the PS weights each push by its samples: every round is one SGD step on the union
    shares = equal_step_shares(384, [24, 16, 8])
    after = [(n, b, s) for (n, b), s in zip(new_b.items(), shares)]
    ref = reference_bsp_sgd(workers, 4, lr, mom, wd, rebalanced=(2, after))
    got = load_checkpoint(out / "checkpoint.pt")["params"]
    assert float((got - ref).abs().max()) < 1e-5
    assert float((ref - reference_bsp_sgd(workers, 4, lr, mom, wd)).abs().max()) > 1e-4  # the split mattered
