"""How fast the simulator runs: simulated worker-iterations per second and wall time.

    python bench/sim_speed.py            # the three cases
    python bench/sim_speed.py --profile  # also cProfile case (b) and print the top functions

(a) the bundled CIFAR-100 DBSL plan on gtx1080x4, whole training;
(b) 64 workers (RTX 3090 profiles), ImageNet-1k, 90 epochs at 224 px, batch 256, bsp with
    gradient exchange: 79 iterations x 64 workers x 90 epochs = 455,040 worker-iterations;
(c) the same with asp and transient stragglers.
Targets (issue 14, goal 3), with the full network model on and no trace: (b) in 0.2 s or
less, (c) in 1.5 s or less; each is printed with its ratio to its target. (b) runs with
the steady-state fast-forward (the default) and, in the same run, without it
(`simulate(..., fast_forward=False)`): both times, their ratio, and the largest relative
difference between the two summaries.

    After (c), the bare SimPy loop of (d) (64 processes, a timeout and a Resource request
    per iteration) timed in the same run at (c)'s worker-iterations: (c)'s ratio to it and
    what the 1.5 s target is relative to it; and one generator yielding as many timeouts
    (the floor of one SimPy event per worker-iteration).

    python bench/sim_speed.py --asp-periodicity [--epochs 6]  # can an exact fast-forward skip asp?

(f) the (c) cluster, asp, stragglers off, a few epochs with a trace: per epoch, the period
    p <= 64 (in worker-iterations) that best repeats every worker's intervals between
    compute starts (the epoch's partial batch left out) and the largest relative difference
    left (also on the epoch's second half, seen 3 times); each epoch against the previous
    one; and with (c)'s stragglers, the simulated seconds between straggler changes (an
    episode starting or ending) against one iteration.

    python bench/sim_speed.py --stragglers  # bsp fast-forward under transient stragglers

(e) bsp with transient stragglers on every worker, fast-forward on and off in the same
    run: CPU seconds, rounds skipped (between episodes only) and the largest relative
    difference between the summaries. mixed16: the bundled 16-worker uniform ImageNet plan,
    105 epochs, seed 3 (the `hybridps simulate` example of docs/simulator.md); mixed256:
    the uniform baseline `hybridps plan --strategy all` simulates in full on the
    256-worker cluster of `bench/plan_speed.py --large`.

    python bench/sim_speed.py --scaling  # cost per worker-iteration against cluster size

(d) scaling: 16 to 1,024 RTX 3090 workers, bsp, asp and ssp (bound 3), equal NICs (all 25 Gbps) and
    mixed NICs (half 25, half 10 Gbps), about the same number of worker-iterations per
    run; each figure is printed relative to a bare SimPy loop timed in the same process
    (N generator processes, each `yield env.timeout(t)` then a `simpy.Resource` request
    for the PS per iteration), and mixed relative to equal. SimPy events are counted in a
    separate run (deterministic). `--reference` also times the reference path
    (`simulate(..., fast=False)`: the per-flow water-fill).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import pstats
import os
import sys
import time
from pathlib import Path

import simpy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # plan_speed, for (e)

from hybridps.spec import cluster_from_dict, job_from_dict, load_cluster, load_job, load_plan, plan_from_dict  # noqa: E402
from sim import simulate  # noqa: E402

TARGET_B_S = 0.2  # (b) bsp, 64 workers, 90 epochs (issue 14 goal 3)
TARGET_C_S = 1.5  # (c) asp with transient stragglers
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
        "epochs": 90, "resolution": RESOLUTION, "sync": sync, "staleness": 3 if sync == "ssp" else None, "exchange": "gradient",
        "local_steps": None, "lr": 0.1, "compression": {"kind": "none"},
        "workers": [{"name": f"rtx{i}", "batch": BATCH, "samples": s} for i, s in enumerate(shares)]}]},
        cluster=cluster, job=job)
    return cluster, job, plan


def cifar_dbsl():
    cluster = load_cluster("gtx1080x4")
    job = load_job("cifar100-resnet18")
    return cluster, job, load_plan("gtx1080x4-cifar100-dbsl", cluster, job)


def run_case(label: str, cluster, job, plan, events: bool = False, **kw) -> tuple[float, dict]:
    """Simulate once, print the figures; returns (wall seconds, summary)."""
    t0 = time.perf_counter()
    result = simulate(cluster, job, plan, **kw)
    wall_s = time.perf_counter() - t0
    s = result.summary()
    iterations = sum(w["iterations"] for w in s["workers"].values())
    print(f"{label}: {iterations:,} worker-iterations, {s['events']:,} trace events, simulated makespan "
          f"{s['makespan_s'] / 3600:.2f} h; wall {wall_s:.2f} s = {iterations / wall_s:,.0f} worker-iterations/s",
          flush=True)
    if events:
        n = count_events(cluster, job, plan, **kw)
        print(f"    {n:,} SimPy events = {n / iterations:.2f} per worker-iteration", flush=True)
    return wall_s, s


def largest_difference(a, b) -> float:
    """The largest relative difference between two summaries' numbers (wall_s aside)."""
    if isinstance(a, dict):
        return max((largest_difference(a[k], b[k]) for k in a if k != "wall_s"), default=0.0)
    if isinstance(a, list):
        return max((largest_difference(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, (int, float)) and a != b:
        return abs(a - b) / max(abs(a), abs(b))
    return 0.0


def target_line(case: str, wall_s: float, target_s: float) -> str:
    return (f"    target {target_s:g} s: ({case}) took {wall_s / target_s:.2f}x the target "
            f"({'met' if wall_s <= target_s else 'missed'})")


class CountingEnvironment(simpy.Environment):
    """simpy.Environment that counts the events it processes."""

    events = 0

    def step(self) -> None:
        CountingEnvironment.events += 1
        super().step()


def count_events(cluster, job, plan, **kw) -> int:
    real = simpy.Environment
    simpy.Environment = CountingEnvironment
    CountingEnvironment.events = 0
    try:
        simulate(cluster, job, plan, **kw)
    finally:
        simpy.Environment = real
    return CountingEnvironment.events


def bare_loop_s(n_workers: int, iters_per_worker: int) -> float:
    """Wall time of the bare SimPy loop the issue compares with: one generator per worker,
    each iteration a timeout and then a Resource request for the PS."""
    env = simpy.Environment()
    ps = simpy.Resource(env, capacity=1)

    def worker(i: int):
        for _ in range(iters_per_worker):
            yield env.timeout(0.1 + 1e-4 * i)
            with ps.request() as req:
                yield req

    for i in range(n_workers):
        env.process(worker(i))
    t0 = time.perf_counter()
    env.run()
    return time.perf_counter() - t0


def best_period(seqs: list[list[float]], max_p: int, min_repeats: int = 2) -> tuple[int, float]:
    """The period p <= max_p (seen at least `min_repeats` times) that best fits every
    sequence, x[k] == x[k - p], and the largest relative difference left at it."""
    n = min(len(x) for x in seqs)
    best = (0, math.inf)
    for p in range(1, min(max_p, n // min_repeats) + 1):
        diff = max(abs(x[k] - x[k - p]) / max(abs(x[k]), abs(x[k - p])) for x in seqs for k in range(p, n))
        if diff < best[1]:
            best = (p, diff)
    return best


def compute_intervals(records: list[dict], epochs: int) -> list[dict[str, list[float]]]:
    """Per epoch, per worker: the seconds between successive compute starts of full batches
    (the interval from the epoch's partial batch, and to the next epoch, left out)."""
    starts: dict[tuple[int, str], list[tuple[int, float]]] = {}
    for r in records:  # a partial batch's record carries its "samples"
        if r["kind"] == "compute" and r["epoch"] < epochs and "samples" not in r:
            starts.setdefault((r["epoch"], r["worker"]), []).append((r["step"], r["start_s"]))
    out: list[dict[str, list[float]]] = [{} for _ in range(epochs)]
    for (epoch, worker), steps in starts.items():
        steps.sort()
        out[epoch][worker] = [b[1] - a[1] for a, b in zip(steps, steps[1:])]
    return out


def asp_periodicity(epochs: int, max_p: int) -> None:
    """(f): is an asp run periodic, so that an exact fast-forward could skip it?"""
    from hybridps.stragglers import StragglerSchedule

    cluster, job, plan = imagenet64("asp", False)
    plan = plan.model_copy(update={"phases": [plan.phases[0].model_copy(update={"epochs": epochs})]})
    result = simulate(cluster, job, plan, record=True)
    per_epoch = compute_intervals(result.records, epochs)
    workers = sorted(per_epoch[0])
    print(f"(f) 64 x rtx3090 ImageNet-1k asp, stragglers off, eval off, {epochs} epochs with a trace; "
          f"intervals between full-batch compute starts, per worker", flush=True)
    all_intervals = [x for e in per_epoch for w in workers for x in e[w]]
    print(f"    shortest {min(all_intervals):.8f} s, longest {max(all_intervals):.8f} s, "
          f"{len(set(round(x, 12) for x in all_intervals)):,} distinct values (to 1e-12 s) among "
          f"{len(all_intervals):,}")
    periodic = False
    for e, by_worker in enumerate(per_epoch):
        seqs = [by_worker[w] for w in workers]
        p, diff = best_period(seqs, max_p)
        half = len(seqs[0]) // 2
        p_tail, diff_tail = best_period([x[half:] for x in seqs], max_p, min_repeats=3)
        line = (f"    epoch {e}: best p {p:2d}, largest relative difference {diff:.1e}; "
                f"second half (3+ periods): p {p_tail:2d}, {diff_tail:.1e}")
        periodic |= diff_tail <= 1e-9
        if e > 0:
            prev = max(largest_difference(by_worker[w], per_epoch[e - 1][w]) for w in workers)
            line += f"; against epoch {e - 1}: {prev:.1e}"
            periodic |= prev <= 1e-9
        periodic |= diff <= 1e-9
        print(line, flush=True)
    print(f"    periodic to 1e-9 (p <= {max_p}, or one epoch): {'YES' if periodic else 'no'}", flush=True)
    summary = result.summary()
    iteration_s = summary["makespan_s"] / summary["workers"][workers[0]]["iterations"]
    straggler_changes(StragglerSchedule(imagenet64("asp", True)[0]), 90 * summary["makespan_s"] / epochs, iteration_s)


def straggler_changes(schedule, horizon_s: float, iteration_s: float) -> None:
    """How long, in simulated seconds and iterations, no straggler episode starts or ends."""
    t, gaps = 0.0, []
    while True:
        nxt = schedule.next_change_s(t)
        if nxt > horizon_s:
            break
        gaps.append(nxt - t)
        t = nxt
    mean_s = horizon_s / max(1, len(gaps))
    print(f"    with (c)'s stragglers, over {horizon_s:,.0f} simulated s (90 epochs): {len(gaps)} changes, one every "
          f"{mean_s:.1f} s on average (median {sorted(gaps)[len(gaps) // 2]:.1f} s) against {iteration_s:.3f} s an "
          f"iteration: about {mean_s / iteration_s:.0f} iterations per worker between changes", flush=True)


def timeout_loop_s(n_timeouts: int) -> float:
    """Wall time of one generator yielding `n_timeouts` timeouts: the floor of one SimPy
    event per worker-iteration."""
    env = simpy.Environment()

    def loop():
        for _ in range(n_timeouts):
            yield env.timeout(0.1)

    env.process(loop())
    t0 = time.perf_counter()
    env.run()
    return time.perf_counter() - t0


def scaled(n_workers: int, sync: str, mixed: bool, worker_iterations: int, stragglers: bool = False):
    """n RTX 3090 workers (half at 10 Gbps when mixed), n/8 PS shards of 25 Gbps, batch 256,
    one iteration per worker-epoch, about `worker_iterations` in all."""
    rtx = load_cluster("rtx3090x4").model_dump(mode="json")
    workers = [{"name": "fast", "device": "rtx3090", "count": n_workers // 2, "bandwidth_gbps": 25.0},
               {"name": "slow", "device": "rtx3090", "count": n_workers - n_workers // 2,
                "bandwidth_gbps": 10.0 if mixed else 25.0}]
    cluster = cluster_from_dict({
        "format": "hybridps.cluster/1",
        "ps": {"count": max(1, n_workers // 8), "bandwidth_gbps": 25.0, "latency_ms": 0.05,
               "apply_s_per_mparam": 0.0005},
        "devices": {"rtx3090": rtx["devices"]["rtx3090"]}, "workers": workers,
        "stragglers": {"rate_per_hour": 2.0 if stragglers else 0.0, "slowdown": 2.0, "mean_duration_s": 60.0,
                       "seed": 0},
    })
    job_d = load_job("imagenet-resnet18").model_dump(mode="json")
    epochs = max(1, worker_iterations // n_workers)
    job_d["data"]["samples"] = n_workers * BATCH
    job_d["train"].update(epochs=epochs, lr_milestones=[])
    job = job_from_dict(job_d)
    names = [w.name for w in cluster.worker_list]
    plan = plan_from_dict({"format": "hybridps.plan/1", "phases": [{
        "epochs": epochs, "resolution": RESOLUTION, "sync": sync, "staleness": 3 if sync == "ssp" else None, "exchange": "gradient",
        "local_steps": None, "lr": 0.1, "compression": {"kind": "none"},
        "workers": [{"name": n, "batch": BATCH, "samples": BATCH} for n in names]}]}, cluster=cluster, job=job)
    return cluster, job, plan


def best_wall_s(repeat: int, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def scaling(sizes: list[int], worker_iterations: int, repeat: int, reference: bool) -> None:
    print(f"\n(d) scaling, about {worker_iterations:,} worker-iterations per run, best of {repeat}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'sync':<5}{'workers':>8}{'NICs':>7}{'us/w-it':>9}{'vs bare':>9}{'mixed/eq':>9}{'events/w-it':>12}"
          + (f"{'ref vs bare':>12}" if reference else ""))
    for sync in ("bsp", "asp", "ssp"):  # ssp with staleness bound 3
        for n in sizes:
            iters = max(1, worker_iterations // n)
            bare = best_wall_s(repeat, lambda: bare_loop_s(n, iters)) / (n * iters)
            equal = None
            for mixed in (False, True):
                case = scaled(n, sync, mixed, worker_iterations)
                wit = n * iters
                per = best_wall_s(repeat, lambda: simulate(*case)) / wit
                events = count_events(*case) / wit
                equal = per if not mixed else equal
                ratio = f"{per / equal:8.2f}x" if mixed else f"{'':9}"
                line = (f"{sync:<5}{n:>8}{'mixed' if mixed else 'equal':>7}{per * 1e6:>9.2f}{per / bare:>8.2f}x"
                        f"{ratio}{events:>12.2f}")
                if reference and mixed:
                    ref = best_wall_s(1, lambda: simulate(*case, fast=False)) / wit
                    line += f"{ref / bare:>11.2f}x"
                print(line, flush=True)


def with_stragglers() -> None:
    """(e): bsp under transient stragglers, fast-forward on and off, CPU seconds."""
    import tomllib

    from plan_speed import mixed_cluster_toml
    from sim import Simulation
    from solver.candidates import uniform_plan

    mixed16 = load_cluster("mixed16")
    job = load_job("imagenet-resnet18")
    mixed256 = cluster_from_dict(tomllib.loads(mixed_cluster_toml(256)), "<mixed256>")
    cases = [("mixed16, uniform plan, seed 3", mixed16, load_plan("mixed16-imagenet-uniform", mixed16, job), 3),
             ("mixed256, uniform baseline, seed 0", mixed256, uniform_plan(mixed256, job)[0], 0)]
    for label, cluster, plan, seed in cases:
        cpu, summaries = {}, {}
        for on in (True, False):
            t0 = time.process_time()
            sim = Simulation(cluster, job, plan, seed=seed, fast_forward=on)
            summaries[on] = sim.run().summary()
            cpu[on] = time.process_time() - t0
            rounds = summaries[on]["updates"] // len(cluster.worker_list)
            print(f"(e) {label}, bsp, {sum(p.epochs for p in plan.phases)} epochs, fast_forward={on}: "
                  f"cpu {cpu[on]:.2f} s, {sim.ps.rounds_skipped:,} of {rounds:,} rounds skipped; makespan "
                  f"{summaries[on]['makespan_s']:,.1f} s", flush=True)
        print(f"    on/off cpu {cpu[True] / cpu[False]:.2f}x; summaries differ by "
              f"{largest_difference(summaries[True], summaries[False]):.1e} relative at most; load average "
              f"{os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", action="store_true", help="cProfile case (b) and print the top functions")
    ap.add_argument("--scaling", action="store_true", help="only case (d): cost per worker-iteration vs cluster size")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 1024])
    ap.add_argument("--worker-iterations", type=int, default=40_960)
    ap.add_argument("--repeat", type=int, default=3, help="best of N for (d)")
    ap.add_argument("--reference", action="store_true", help="(d) also times the reference path (fast=False)")
    ap.add_argument("--stragglers", action="store_true", help="only case (e): bsp fast-forward under stragglers")
    ap.add_argument("--asp-periodicity", action="store_true", help="only case (f): is an asp run periodic?")
    ap.add_argument("--epochs", type=int, default=6, help="epochs simulated for (f)")
    args = ap.parse_args()
    if args.asp_periodicity:
        asp_periodicity(args.epochs, max_p=64)
        return
    if args.stragglers:
        with_stragglers()
        return
    if args.scaling:
        scaling(args.sizes, args.worker_iterations, args.repeat, args.reference)
        return
    run_case("(a) gtx1080x4 CIFAR-100 DBSL, 140 epochs", *cifar_dbsl())
    print(f"load average {os.getloadavg()[0]:.2f}")
    case_b = imagenet64("bsp", False)
    wall_b, summary_b = run_case("(b) 64 x rtx3090 ImageNet-1k bsp/gradient, 90 epochs", *case_b, events=True)
    print(target_line("b", wall_b, TARGET_B_S))
    wall_full, summary_full = run_case("    same, fast_forward=False", *case_b, events=True, fast_forward=False)
    print(f"    fast-forward: {wall_b:.3f} s against {wall_full:.2f} s without = {wall_full / wall_b:.1f}x faster; "
          f"summaries differ by {largest_difference(summary_b, summary_full):.1e} relative at most", flush=True)
    wall_c, summary_c = run_case("(c) same, asp with transient stragglers", *imagenet64("asp", True), events=True)
    print(target_line("c", wall_c, TARGET_C_S) + f"; (c) / (b) wall time: {wall_c / wall_b:.2f}x")
    iters = math.ceil(sum(w["iterations"] for w in summary_c["workers"].values()) / N_WORKERS)
    bare_s = bare_loop_s(N_WORKERS, iters)
    print(f"    bare SimPy loop (a timeout and a Resource request per iteration), {N_WORKERS} x {iters:,}: "
          f"{bare_s:.2f} s; (c) / bare {wall_c / bare_s:.2f}x; the {TARGET_C_S:g} s target is "
          f"{TARGET_C_S / bare_s:.2f}x the bare loop", flush=True)
    floor_s = timeout_loop_s(N_WORKERS * iters)
    print(f"    one timeout per worker-iteration (one generator, {N_WORKERS * iters:,} timeouts): {floor_s:.2f} s",
          flush=True)
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
