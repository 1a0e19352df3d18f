"""How fast the simulator runs: simulated worker-iterations per second and wall time.

    python bench/sim_speed.py            # the three cases
    python bench/sim_speed.py --profile  # also cProfile case (b) and print the top functions

(a) the bundled CIFAR-100 DBSL plan on gtx1080x4, whole training;
(b) 64 workers (RTX 3090 profiles), ImageNet-1k, 90 epochs at 224 px, batch 256, bsp with
    gradient exchange: 79 iterations x 64 workers x 90 epochs = 455,040 worker-iterations;
(c) the same with asp and transient stragglers.
Target: (b) in 10 s or less, with the full network model on.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hybridps.spec import cluster_from_dict, job_from_dict, load_cluster, load_job, load_plan, plan_from_dict  # noqa: E402
from sim import simulate  # noqa: E402

TARGET_S = 10.0
N_WORKERS = 64
BATCH = 256
RESOLUTION = 224


def imagenet64(sync: str, stragglers: bool):
    rtx = load_cluster("rtx3090x4").model_dump(mode="json")
    cluster = cluster_from_dict({
        "format": "hybridps.cluster/1",
        # 8 PS shards of 25 Gbps, 25 Gbps workers, 0.5 ms per Mparam to apply an update
        "ps": {"count": 8, "bandwidth_gbps": 25.0, "latency_ms": 0.05, "apply_s_per_mparam": 0.0005},
        "devices": {"rtx3090": rtx["devices"]["rtx3090"]},
        "workers": [{"name": "rtx", "device": "rtx3090", "count": N_WORKERS, "bandwidth_gbps": 25.0}],
        "stragglers": {"rate_per_hour": 2.0 if stragglers else 0.0, "slowdown": 2.0, "mean_duration_s": 60.0,
                       "seed": 0},
    })
    job_d = load_job("imagenet-resnet18").model_dump(mode="json")
    job_d["train"].update(epochs=90, lr_milestones=[30, 60])
    job = job_from_dict(job_d)
    n = job.data.samples
    shares = [n // N_WORKERS + (1 if i < n % N_WORKERS else 0) for i in range(N_WORKERS)]
    plan = plan_from_dict({"format": "hybridps.plan/1", "phases": [{
        "epochs": 90, "resolution": RESOLUTION, "sync": sync, "staleness": None, "exchange": "gradient",
        "local_steps": None, "lr": 0.1, "compression": {"kind": "none"},
        "workers": [{"name": f"rtx{i}", "batch": BATCH, "samples": s} for i, s in enumerate(shares)]}]},
        cluster=cluster, job=job)
    return cluster, job, plan


def cifar_dbsl():
    cluster = load_cluster("gtx1080x4")
    job = load_job("cifar100-resnet18")
    return cluster, job, load_plan("gtx1080x4-cifar100-dbsl", cluster, job)


def run_case(label: str, cluster, job, plan) -> float:
    t0 = time.perf_counter()
    result = simulate(cluster, job, plan)
    wall_s = time.perf_counter() - t0
    s = result.summary()
    iterations = sum(w["iterations"] for w in s["workers"].values())
    print(f"{label}: {iterations:,} worker-iterations, {s['events']:,} trace events, simulated makespan "
          f"{s['makespan_s'] / 3600:.2f} h; wall {wall_s:.2f} s = {iterations / wall_s:,.0f} worker-iterations/s",
          flush=True)
    return wall_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", action="store_true", help="cProfile case (b) and print the top functions")
    args = ap.parse_args()
    run_case("(a) gtx1080x4 CIFAR-100 DBSL, 140 epochs", *cifar_dbsl())
    wall_b = run_case("(b) 64 x rtx3090 ImageNet-1k bsp/gradient, 90 epochs", *imagenet64("bsp", False))
    print(f"    target {TARGET_S:.0f} s: (b) took {wall_b / TARGET_S:.2f}x the target "
          f"({'met' if wall_b <= TARGET_S else 'missed'})")
    wall_c = run_case("(c) same, asp with transient stragglers", *imagenet64("asp", True))
    print(f"    (c) / (b) wall time: {wall_c / wall_b:.2f}x; (c) took {wall_c / TARGET_S:.2f}x the target")
    if args.profile:
        cluster, job, plan = imagenet64("bsp", False)
        prof = cProfile.Profile()
        prof.enable()
        simulate(cluster, job, plan)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
        print("\nprofile of (b), by own time:\n" + out.getvalue())


if __name__ == "__main__":
    main()
