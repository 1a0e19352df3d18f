"""What consulting an online policy at every update costs the simulator (issue 10).

    python bench/policy_overhead.py            # best of 5, the three cases below
    python bench/policy_overhead.py --repeat 9 --epochs 90 --cases ab

The large case of bench/sim_speed.py: 64 RTX 3090 workers, ImageNet-1k at 224 px, batch
256, gradient exchange, full network model, no trace. Each case is timed with and without
a policy in the same process, alternately (each repeat swaps which goes first, after a
garbage collection, so neither inherits the other's garbage), best of `--repeat`, in CPU
seconds of this process (time.process_time: on a shared machine wall time swings with
the neighbours' load, which would drown a 15 % difference):

(a) bsp, no stragglers, `sync-switch-greedy`, against the same plan without a policy, both
    as users run them: fast-forward on (bench/sim_speed.py). Without a policy only two
    rounds an epoch are simulated; greedy declares `decides_on_windows`, so its phase is
    fast-forwarded too (it is asked at the skipped rounds only while its windows change).
    It never acts, so the schedule is the same (makespans within fast-forward's 1e-9) and
    the difference is the policy's cost alone. `--no-fast-forward`: both simulate every
    round (the comparison this bench made before fast-forward engaged under a policy);
(b) asp with transient stragglers and a policy that watches every push (consulted at each
    one, reading the pushing worker's figures) and never acts, against the same plan
    without it (asp: every push simulated in both);
(c) ssp (bound 3), no stragglers, `adaptive-ssp` with min_staleness 3: consulted at every
    push, it tracks every worker's slowdown and never acts (the workers are alike), against
    the ssp plan without it. At rest (no slowdown above its threshold) it declares
    `decides_on_windows`, so `consult` asks it only at pushes that change a window (the
    partial batch at each epoch's end): 1,136 of 30,369 pushes in 6 epochs; every push
    still feeds the observer and enters `consult`.

`--cli`: the target as a user meets it: each case as `hybridps simulate --json` run as a
command (fast-forward on, as by default), with and without the policy, alternately, best
wall time of `--repeat` each: the command's whole run (start-up, loading and checking
the specs, the simulation, the JSON summary).

A policy that does act changes the schedule (greedy under stragglers runs asp stretches,
whose pushes cost the simulator more than bsp rounds), so its time is not an overhead.
Target: at most about 1.15x.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hybridps.policy import Observation, Policy  # noqa: E402
from hybridps.spec import plan_from_dict  # noqa: E402
from traces.spec_toml import spec_to_toml  # noqa: E402
from sim import simulate  # noqa: E402
from sim_speed import imagenet64  # noqa: E402

TARGET_RATIO = 1.15


class Watcher(Policy):
    """Reads the pushing worker's figures at every update and never acts."""

    def acts_on(self, planned_sync: str) -> bool:
        return True

    def decide(self, obs: Observation) -> tuple:
        obs.compute_s_per_sample_of(obs.worker)
        return ()


sys.modules.setdefault("policy_overhead", sys.modules[__name__])


def with_policy(cluster, job, plan, epochs: int, policy: dict | None):
    d = plan.to_json_dict()
    d["phases"][0]["epochs"] = epochs
    if policy is not None:
        d["phases"][0]["policy"] = policy
    return plan_from_dict(d, "bench", cluster, job)


def alternately(repeat: int, run_one) -> tuple[dict[str, float], dict]:
    """Best seconds of `repeat` runs of `run_one(key)` -> (seconds, result) for keys "plain"
    and "policy", each repeat swapping which goes first (after a garbage collection, so
    neither inherits the other's garbage); also each key's last result."""
    best = {"plain": float("inf"), "policy": float("inf")}
    results = {}
    for i in range(repeat):
        for key in ("plain", "policy") if i % 2 == 0 else ("policy", "plain"):
            gc.collect()
            seconds, results[key] = run_one(key)
            best[key] = min(best[key], seconds)
    return best, results


def verdict(best: dict[str, float]) -> tuple[float, str]:
    ratio = best["policy"] / best["plain"]
    return ratio, f"= {ratio:.2f}x (target {TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'missed'})"


def compare(label: str, sync: str, stragglers: bool, policy: dict, epochs: int, repeat: int,
            fast_forward: bool = True) -> float:
    """simulate() CPU time on a case's plan, with and without its policy."""
    cluster, job, plan = imagenet64(sync, stragglers)
    plans = {"plain": with_policy(cluster, job, plan, epochs, None),
             "policy": with_policy(cluster, job, plan, epochs, policy)}

    def run_one(key):
        t0 = time.process_time()
        result = simulate(cluster, job, plans[key], fast_forward=fast_forward)
        return time.process_time() - t0, result

    best, results = alternately(repeat, run_one)
    ratio, text = verdict(best)
    same = math.isclose(results["plain"].makespan_s, results["policy"].makespan_s, rel_tol=1e-9)
    print(f"{label}: {results['plain'].counters.exchanges:,} exchanges; CPU without policy {best['plain']:.2f} s, "
          f"with {best['policy']:.2f} s {text}; same makespan: {same}; "
          f"actions {results['policy'].counters.policy_actions}", flush=True)
    return ratio


def compare_cli(label: str, sync: str, stragglers: bool, policy: dict, epochs: int, repeat: int,
                fast_forward: bool = True) -> float:
    """`hybridps simulate --json` wall time on a case's plan, with and without its policy
    (the command as users run it: fast-forward on)."""
    assert fast_forward, "the command always fast-forwards"
    cluster, job, plan = imagenet64(sync, stragglers)
    here = Path(__file__).resolve().parent  # bench/ (the Watcher) and the checkout (hybridps)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "cluster.toml").write_text(spec_to_toml(cluster))
        (tmp / "job.toml").write_text(spec_to_toml(job))
        for key, pol in (("plain", None), ("policy", policy)):
            (tmp / f"{key}.json").write_text(json.dumps(with_policy(cluster, job, plan, epochs, pol).to_json_dict()))

        def run_one(key):
            cmd = [sys.executable, "-m", "hybridps", "simulate", "--cluster", str(tmp / "cluster.toml"),
                   "--job", str(tmp / "job.toml"), "--plan", str(tmp / f"{key}.json"), "--json"]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            return time.perf_counter() - t0, json.loads(out.stdout)["makespan_s"]

        best, makespans = alternately(repeat, run_one)
    ratio, text = verdict(best)
    print(f"{label}, `hybridps simulate --json`: wall without policy {best['plain']:.2f} s, with {best['policy']:.2f} s "
          f"{text}; same makespan: {math.isclose(makespans['plain'], makespans['policy'], rel_tol=1e-9)}", flush=True)
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30, help="epochs of the 90-epoch case to run (default 30)")
    ap.add_argument("--cases", default="abc", help="which cases to run (default abc)")
    ap.add_argument("--no-fast-forward", action="store_true", help="(a): simulate every bsp round, both runs")
    ap.add_argument("--cli", action="store_true", help="time `hybridps simulate --json` (wall) instead of simulate()")
    args = ap.parse_args()
    if args.cli and args.no_fast_forward:
        ap.error("--cli times the command as users run it: fast-forward on; drop --no-fast-forward")
    run = compare_cli if args.cli else compare
    print(f"64 workers, ImageNet-1k, {args.epochs} epochs, best of {args.repeat}")
    if "a" in args.cases:
        ff = not args.no_fast_forward
        run(f"(a) bsp, greedy, fast-forward {'on' if ff else 'off'}", "bsp", False, {"kind": "sync-switch-greedy"},
            args.epochs, args.repeat, ff)
    if "b" in args.cases:
        run("(b) asp + stragglers, watcher", "asp", True, {"kind": "python", "target": "policy_overhead:Watcher"},
            args.epochs, args.repeat)
    if "c" in args.cases:
        run("(c) ssp, adaptive-ssp", "ssp", False, {"kind": "adaptive-ssp", "min_staleness": 3}, args.epochs,
            args.repeat)


if __name__ == "__main__":
    main()
