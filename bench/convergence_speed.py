"""What the convergence model adds to a simulation: the 64-worker ImageNet cases of
bench/sim_speed.py simulated with the update log on and the quality predicted, against
the same simulation without them, in the same process (same-run ratio).

    python bench/convergence_speed.py

Goal: at most +10% of simulate's wall time (docs/convergence.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hybridps.spec import load_job  # noqa: E402
from sim import simulate  # noqa: E402
from sim.convergence import predict_sim, quality  # noqa: E402
from sim_speed import imagenet64  # noqa: E402

REPEATS = 3


def main() -> int:
    spec = load_job("digits-cnn").convergence  # any fitted table: the cost does not depend on its values
    worst = 0.0
    for sync in ("bsp", "asp"):
        cluster, job, plan = imagenet64(sync, stragglers=sync == "asp")
        job = job.model_copy(update={"convergence": spec})
        plain = logged = model = float("inf")
        for _ in range(REPEATS):  # alternate, keep the fastest of each: the machine is shared
            t0 = time.perf_counter()
            base = simulate(cluster, job, plan)
            t1 = time.perf_counter()
            res = simulate(cluster, job, plan, log_updates=True)
            t2 = time.perf_counter()
            q = quality(predict_sim(res, plan, spec), spec, 0.7)
            t3 = time.perf_counter()
            plain, logged, model = min(plain, t1 - t0), min(logged, t2 - t1), min(model, t3 - t2)
        ratio = (logged + model) / plain
        worst = max(worst, ratio)
        print(f"imagenet64 {sync}: {len(res.counters.update_log):,} updates; simulate {plain:.2f} s, with update log "
              f"{logged:.2f} s, convergence model {model * 1000:.1f} ms -> {ratio:.3f}x "
              f"(makespan equal: {base.makespan_s == res.makespan_s}; final accuracy {q['final_accuracy']:.3f})")
    print(f"worst same-run ratio {worst:.3f}x (goal <= 1.10x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
