"""adaptive-ssp against static ssp bounds on the cluster of tests/test_policy_ssp.py
(4 identical workers, transient episodes 360 an hour each, about 1 s long, 4x slower; 10
epochs of 12,800 samples, batch 32, gradient exchange): simulated makespan and update
staleness, per straggler seed. Deterministic (simulated time).

    python bench/adaptive_ssp.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hybridps.spec import cluster_from_dict, job_from_dict, plan_from_dict  # noqa: E402
from sim import simulate  # noqa: E402
from tests.test_policy_ssp import CLUSTER, JOB, _plan  # noqa: E402

CASES = [("ssp 2 (the plan)", None, "ssp", 2), ("ssp 2 + adaptive-ssp", {"kind": "adaptive-ssp"}, "ssp", 2),
         ("ssp 4", None, "ssp", 4), ("ssp 16", None, "ssp", 16), ("asp", None, "asp", None)]


def main() -> None:
    cluster, job = cluster_from_dict(CLUSTER), job_from_dict(JOB)
    print(f"{'seed':>4} {'plan':22} {'makespan_s':>10} {'vs plan':>8} {'staleness mean':>14} {'max':>4}  actions")
    for seed in (3, 5):
        base = None
        for label, policy, sync, bound in CASES:
            r = simulate(cluster, job, plan_from_dict(_plan(policy, sync=sync, staleness=bound)), seed=seed)
            s = r.summary()
            base = base or r.makespan_s
            print(f"{seed:>4} {label:22} {r.makespan_s:>10.1f} {r.makespan_s / base:>7.3f}x "
                  f"{s['staleness']['mean']:>14.2f} {s['staleness']['max']:>4}  {s['policy_actions']}")


if __name__ == "__main__":
    main()
