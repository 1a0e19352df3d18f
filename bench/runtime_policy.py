"""Online policies in `hybridps run` (issue 10): what a switch costs the runtime, and how
closely its decisions line up with the simulator's.

    python bench/runtime_policy.py              # 3 runs of each case
    python bench/runtime_policy.py --repeat 5

Real processes on 127.0.0.1: 1 PS + 3 workers, the MLP on synthetic data, as in
tests/test_runtime_policy.py.

(a) switch cost: bsp + `sync-switch-greedy` on a cluster where w2 has transient episodes
    (8x slower). For each decision, the time from the decision (the policy record's t_s)
    to the next reply reaching a worker (the next pull record's start), against the same
    time for the rounds applied without a decision (the update record's t_s to the next
    pull's start) and against one exchange (push start to pull end, median).
(b) alignment: a user policy that switches to asp at phase_fraction >= 0.5
    (deterministic), through `simulate` and `run`: the update index of the decision in
    each trace (updates applied before it).
(c) the cost of a policy that never acts: bsp without a policy and with greedy at
    threshold 1e6 (consulted at every round, never acting), the phase's wall time.

Wall-clock figures on a shared machine: read them as orders of magnitude.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.testing import run_cli, spec_args, write_specs  # noqa: E402
from traces.jsonl import read_trace  # noqa: E402

WORKERS = [("w0", 16, 128), ("w1", 16, 128), ("w2", 16, 128)]
STRAGGLERS = ('[stragglers]\nrate_per_hour = 7200.0\nslowdown = 8.0\nmean_duration_s = 0.25\nworkers = ["w2"]\n'
              'seed = 4\n')
HALFWAY = '''
from hybridps.policy import Action, Policy


class HalfwayAsp(Policy):
    window = 1

    def decide(self, obs):
        if obs.sync == "bsp" and obs.phase_fraction >= 0.5:
            return [Action.set_sync("asp")]
        return []
'''


def specs(d: Path, policy: dict | None, epochs: int, stragglers: bool = False) -> None:
    write_specs(d, WORKERS, sync="bsp", epochs=epochs, lr=0.05, slowdown={n: 10.0 for n, _, _ in WORKERS})
    text = (d / "cluster.toml").read_text().replace("slowdown = 10.0\n", "slowdown = 10.0\nexchange_overhead_s = 0.01\n")
    (d / "cluster.toml").write_text(text + (STRAGGLERS if stragglers else ""))
    if policy is not None:
        plan = json.loads((d / "plan.json").read_text())
        plan["phases"][0]["policy"] = policy
        (d / "plan.json").write_text(json.dumps(plan, indent=1))


def run(d: Path):
    out = d / "out"
    r = run_cli(["run", *spec_args(d), "--out", out, "--local", "--eval-every", "0", "--worker-timeout", "30"],
                timeout_s=600)
    if r.returncode:
        sys.exit(r.stderr)
    return read_trace(out / "trace.jsonl")


def next_pull_s(pull_starts: list[float], t: float) -> float | None:
    later = [s for s in pull_starts if s >= t]
    return min(later) - t if later else None


def switch_cost(tr) -> tuple[list[float], list[float], list[float]]:
    """(decision -> next reply, round apply -> next reply without a decision, exchanges), seconds."""
    pulls = sorted(p["start_s"] for p in tr.of_kind("pull"))
    decided = [next_pull_s(pulls, p["t_s"]) for p in tr.of_kind("policy")]
    rounds, seen, decision_times = [], set(), {p["t_s"] for p in tr.of_kind("policy")}
    updates = tr.of_kind("update")
    by_version = {}
    for u in updates:
        by_version.setdefault(u["version"], []).append(u)
    for version, ups in by_version.items():
        if len(ups) == 3 and version not in seen:  # a full round
            seen.add(version)
            t = ups[0]["t_s"]
            if not any(0 <= t - dt < 0.05 for dt in decision_times):
                rounds.append(next_pull_s(pulls, t))
    by_worker: dict[str, list] = {}
    for r in tr.records:
        if r["kind"] in ("push", "pull"):
            by_worker.setdefault(r["worker"], []).append(r)
    exchanges = []
    for recs in by_worker.values():
        recs.sort(key=lambda r: r["start_s"])
        for a, b in zip(recs, recs[1:]):
            if a["kind"] == "push" and b["kind"] == "pull":
                exchanges.append(b["end_s"] - a["start_s"])
    return [x for x in decided if x is not None], [x for x in rounds if x is not None], exchanges


def update_index(records: list[dict]) -> int:
    (p,) = [r for r in records if r["kind"] == "policy"]
    return len({r["version"] for r in records[:records.index(p)] if r["kind"] == "update"})


def ms(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1e3:.2f} ms (n={len(xs)})" if xs else "none"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        decided, rounds, exchanges, n_decisions = [], [], [], []
        for i in range(args.repeat):
            d = root / f"a{i}"
            specs(d, {"kind": "sync-switch-greedy", "threshold": 2.0, "window": 2, "hysteresis": 0.5}, 12, True)
            a, b, c = switch_cost(run(d))
            decided += a
            rounds += b
            exchanges += c
            n_decisions.append(len(a))
        print(f"(a) greedy under transient stragglers, {args.repeat} runs, decisions per run {n_decisions}")
        print(f"    decision -> next reply: {ms(decided)}")
        print(f"    round applied without a decision -> next reply: {ms(rounds)}")
        print(f"    one exchange (push start -> pull end): {ms(exchanges)}")

        (root / "mod").mkdir()
        (root / "mod" / "halfway.py").write_text(HALFWAY)
        os.environ["PYTHONPATH"] = f"{root / 'mod'}:{os.environ.get('PYTHONPATH', '')}"
        pairs = []
        for i in range(args.repeat):
            d = root / f"b{i}"
            specs(d, {"kind": "python", "target": "halfway:HalfwayAsp"}, 2)
            r = run_cli(["simulate", *spec_args(d), "--trace", d / "sim.jsonl"])
            if r.returncode:
                sys.exit(r.stderr)
            pairs.append((update_index(read_trace(d / "sim.jsonl").records), update_index(run(d).records)))
        print(f"(b) switch at phase_fraction >= 0.5, update index of the decision (simulate, run): {pairs}")

        walls = {"none": [], "greedy, never acting": []}
        for i in range(args.repeat):
            for name, policy in (("none", None), ("greedy, never acting",
                                                  {"kind": "sync-switch-greedy", "threshold": 1e6})):
                d = root / f"c{i}{len(walls[name])}{name[0]}"
                specs(d, policy, 12)
                ph = run(d).of_kind("phase")[0]
                walls[name].append(ph["end_s"] - ph["start_s"])
        print("(c) bsp, 12 epochs (96 rounds), phase wall time, best of "
              f"{args.repeat}: " + ", ".join(f"{k} {min(v):.3f} s" for k, v in walls.items())
              + f" = {min(walls['greedy, never acting']) / min(walls['none']):.3f}x")


if __name__ == "__main__":
    main()
