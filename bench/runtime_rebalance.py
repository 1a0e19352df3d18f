"""lb-rebalance in `hybridps run` (issue 10): the bsp barrier wait it leaves, against the
wait the same machine leaves with no slowed worker at all (the floor its timing noise
sets), measured side by side in one run.

    python bench/runtime_rebalance.py              # 3 rounds of the three cases
    python bench/runtime_rebalance.py --repeat 5
    python bench/runtime_rebalance.py --compute-time model   # the issue's persistent 2x

Real processes on 127.0.0.1: 1 PS + 3 workers, the MLP on synthetic data, batch 512,
8 steps an epoch, 8 epochs, bsp gradient exchange (as tests/test_runtime_rebalance.py).
Every worker's iterations are emulated 5x slower than this machine, so that sleep, not
the shared cores, sets their time:

(a) floor: no worker slowed further; no policy. Whatever barrier wait is left here is
    the machine's timing noise between identical workers, which no re-split can remove.
(b) slowed: w2 emulated 20x (4x the others); no policy.
(c) slowed + `lb-rebalance` (window 8, min_gain 0.3): the wait once its batches are in
    effect.

`--compute-time model` (`run --compute-time model`): every iteration lasts the cluster's
t(B) = 0.4 ms x B + 1 ms (206 ms at batch 512, a GPU-like step) times the worker's slowdown, whatever this
machine's compute took (it takes less), so the workers' times are the model's, not the
shared cores'; w2 is slowed 2x (the issue's persistent 2x slowdown), the others not.

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


def cases(compute_time: str) -> dict[str, tuple[dict[str, float], dict | None]]:
    """name -> (slowdowns, policy): measured compute is emulated 5x (w2 20x), model 1x (w2 2x)."""
    base, slow = (5.0, 20.0) if compute_time == "measured" else (1.0, 2.0)
    return {"floor": ({"w0": base, "w1": base, "w2": base}, None),
            "slowed": ({"w0": base, "w1": base, "w2": slow}, None),
            "slowed + lb-rebalance": ({"w0": base, "w1": base, "w2": slow}, POLICY)}


def _wait_fraction(d: Path, slowdown: dict[str, float], policy: dict | None, compute_time: str) -> float:
    """One run; the barrier wait from the epoch it is counted from (see the docstring)."""
    write_specs(d, WORKERS, sync="bsp", epochs=EPOCHS, lr=0.05, slowdown=slowdown,
                s_per_sample=0.0004)  # model steps long against the exchange's jitter (docstring)
    if policy is not None:
        plan = json.loads((d / "plan.json").read_text())
        plan["phases"][0]["policy"] = policy
        (d / "plan.json").write_text(json.dumps(plan))
    r = run_cli(["run", *spec_args(d), "--out", d / "out", "--local", "--eval-every", "0",
                 "--worker-timeout", "60", "--compute-time", compute_time], timeout_s=600)
    if r.returncode != 0:
        raise SystemExit(f"run failed in {d}:\n{r.stderr}")
    records = read_trace(d / "out" / "trace.jsonl").records
    computes = [r for r in records if r["kind"] == "compute"]
    decisions = [r for r in records if r["kind"] == "policy"]
    if policy is None:
        from_epoch = 2
    elif decisions:
        from_epoch = max(r["epoch"] for r in computes if r["end_s"] <= decisions[0]["t_s"]) + 1
    else:
        raise SystemExit(f"{d}: lb-rebalance made no decision")
    since = min(r["start_s"] for r in computes if r["epoch"] == from_epoch)
    return barrier_wait(records, 0, since_s=since).fraction


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compute-time", choices=("measured", "model"), default="measured",
                    help="run's --compute-time (see the docstring)")
    args = ap.parse_args()
    CASES = cases(args.compute_time)
    waits: dict[str, list[float]] = {name: [] for name in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            for c, (name, (slowdown, policy)) in enumerate(CASES.items()):
                waits[name].append(_wait_fraction(Path(tmp) / f"round{i}-case{c}", slowdown, policy,
                                                   args.compute_time))
                print(f"round {i + 1}: {name}: barrier wait {waits[name][-1]:.1%}", flush=True)
    print("\nbarrier wait (share of the time), median over rounds [all rounds]:")
    for name, values in waits.items():
        print(f"  {name:24s} {statistics.median(values):6.1%}  [{', '.join(f'{v:.1%}' for v in values)}]")
    floor, after = statistics.median(waits["floor"]), statistics.median(waits["slowed + lb-rebalance"])
    print(f"lb-rebalance leaves {after:.1%} against the floor's {floor:.1%} (ratio {after / floor:.2f}; "
          f"above the floor by {after - floor:+.1%} of the time); without it {statistics.median(waits['slowed']):.1%}")


if __name__ == "__main__":
    main()
