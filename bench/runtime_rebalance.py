"""lb-rebalance in `hybridps run` (issue 10): the bsp barrier wait it leaves, against the
wait the same machine leaves with no slowed worker at all (the floor its timing noise
sets), measured side by side in one run.

    python bench/runtime_rebalance.py              # 3 rounds of the three cases
    python bench/runtime_rebalance.py --repeat 5

Real processes on 127.0.0.1: 1 PS + 3 workers, the MLP on synthetic data, batch 512,
8 steps an epoch, 8 epochs, bsp gradient exchange (as tests/test_runtime_rebalance.py).
Every worker's iterations are emulated 5x slower than this machine, so that sleep, not
the shared cores, sets their time:

(a) floor: no worker slowed further; no policy. Whatever barrier wait is left here is
    the machine's timing noise between identical workers, which no re-split can remove.
(b) slowed: w2 emulated 20x (4x the others); no policy.
(c) slowed + `lb-rebalance` (window 8, min_gain 0.3): the wait once its batches are in
    effect.

The barrier wait is traces.barrier's (the mean worker's wait at the barrier as a share
of the time), counted from the third epoch on in (a) and (b), and from the epoch the new
batches start in (c). The cases run interleaved, so load changes touch all three alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.testing import run_cli, spec_args, write_specs  # noqa: E402
from traces.barrier import barrier_wait  # noqa: E402
from traces.jsonl import read_trace  # noqa: E402

BATCH, STEPS, EPOCHS = 512, 8, 8
WORKERS = [(name, BATCH, STEPS * BATCH) for name in ("w0", "w1", "w2")]
POLICY = {"kind": "lb-rebalance", "window": STEPS, "min_gain": 0.3}
CASES = {"floor": ({"w0": 5.0, "w1": 5.0, "w2": 5.0}, None),
         "slowed": ({"w0": 5.0, "w1": 5.0, "w2": 20.0}, None),
         "slowed + lb-rebalance": ({"w0": 5.0, "w1": 5.0, "w2": 20.0}, POLICY)}


def _wait_fraction(d: Path, slowdown: dict[str, float], policy: dict | None) -> float:
    """One run; the barrier wait from the epoch it is counted from (see the docstring)."""
    write_specs(d, WORKERS, sync="bsp", epochs=EPOCHS, lr=0.05, slowdown=slowdown)
    if policy is not None:
        plan = json.loads((d / "plan.json").read_text())
        plan["phases"][0]["policy"] = policy
        (d / "plan.json").write_text(json.dumps(plan))
    r = run_cli(["run", *spec_args(d), "--out", d / "out", "--local", "--eval-every", "0",
                 "--worker-timeout", "60"], timeout_s=600)
    if r.returncode != 0:
        raise SystemExit(f"run failed in {d}:\n{r.stderr}")
    records = read_trace(d / "out" / "trace.jsonl").records
    computes = [r for r in records if r["kind"] == "compute"]
    decisions = [r for r in records if r["kind"] == "policy"]
    if policy is None:
        from_epoch = 2
    elif decisions:
        from_epoch = max(r["epoch"] for r in computes if r["start_s"] < decisions[0]["t_s"]) + 1
    else:
        raise SystemExit(f"{d}: lb-rebalance made no decision")
    since = min(r["start_s"] for r in computes if r["epoch"] == from_epoch)
    return barrier_wait(records, 0, since_s=since).fraction


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    waits: dict[str, list[float]] = {name: [] for name in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            for c, (name, (slowdown, policy)) in enumerate(CASES.items()):
                waits[name].append(_wait_fraction(Path(tmp) / f"round{i}-case{c}", slowdown, policy))
                print(f"round {i + 1}: {name}: barrier wait {waits[name][-1]:.1%}", flush=True)
    print("\nbarrier wait (share of the time), median over rounds [all rounds]:")
    for name, values in waits.items():
        print(f"  {name:24s} {statistics.median(values):6.1%}  [{', '.join(f'{v:.1%}' for v in values)}]")
    floor, after = statistics.median(waits["floor"]), statistics.median(waits["slowed + lb-rebalance"])
    print(f"lb-rebalance leaves {after:.1%} against the floor's {floor:.1%} (ratio {after / floor:.2f}; "
          f"above the floor by {after - floor:+.1%} of the time); without it {statistics.median(waits['slowed']):.1%}")


if __name__ == "__main__":
    main()
