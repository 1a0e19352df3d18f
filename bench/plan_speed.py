"""Wall time of `hybridps plan --strategy all` on mixed16 and on a 64-worker mixed
cluster, and of the `balanced` MILP alone at 64 and 256 workers.

Target: the 64-worker search in 30 s or less on a 2-core machine. Each figure is printed
with its ratio to the target (the MILP figures against the same 30 s, for scale).

    python bench/plan_speed.py [--repeat N] [--jobs J]
    python bench/plan_speed.py --large [--xl]   # 256 workers of 3 device types (target 10 s); --xl: also 1,024

--large times `hybridps plan --strategy all` at 256 workers (issue 14: 10 s or less on
this 2-core machine) and, in the same run, the old path (`search(..., reuse=False)`: the
baseline's full run waits for the full stage, the balanced MILPs are not shared, each
stage scores its own plans) in a fresh interpreter with the same defaults; it prints the
ratio of the two and stops with an error unless both chose the same plan with the same
predicted and uniform makespans. It also times candidate generation in-process with the
DBSL pruning the search uses (`generate(..., dbsl_keep=12)`) against the unpruned
generation.

It also times, interleaved with the others, the same `hybridps plan` with the balanced
batches' fixed-K problems solved as MILPs by HiGHS (`--milp-solver highs`, as before the
default `exact` step existed), and stops unless that chose the same plan with the same
predicted and uniform makespans; and the same `hybridps plan` with the simulator's
bsp fast-forward off (`simulate(..., fast_forward=False)` everywhere, as before it
existed) and stops unless that chose the same plan with the same predictions.
`--no-old-path` skips the old path (about a minute of CPU on this machine).

    python bench/plan_speed.py --timeline   # where the 256-worker search's time goes
    python bench/plan_speed.py --proxy-error   # the proxy's error on the 256-worker finalists
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 30.0

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def mixed_cluster_toml(n_workers: int) -> str:
    """mixed16's device profiles, scaled to n workers (1/4 rtx3090, 1/2 v100, 1/4 t4, one
    throttled t4) with n/16 PS shards, and its stragglers."""
    from hybridps.spec import example_dir

    base = (example_dir("cluster") / "mixed16.toml").read_text()
    head, _, _ = base.partition("[[workers]]")
    head = head.replace("count = 2\n", f"count = {max(2, n_workers // 8)}\n", 1)
    q = n_workers // 4
    groups = [("rtx", "rtx3090", q, 25.0, 1.0), ("v100_", "v100", 2 * q, 25.0, 1.0),
              ("t4_", "t4", q - 1, 10.0, 1.0), ("t4_slow", "t4", 1, 10.0, 1.5)]
    body = "".join(f'[[workers]]\nname = "{n}"\ndevice = "{d}"\ncount = {c}\nbandwidth_gbps = {bw}\nslowdown = {s}\n\n'
                   for n, d, c, bw, s in groups)
    strag = "[stragglers]\nrate_per_hour = 2.0\nslowdown = 2.0\nmean_duration_s = 60.0\nworkers = []\nseed = 0\n"
    return head + body + strag


def time_plan(cluster: str, job: str, jobs: int | None, out_dir: Path, *extra: str,
              fast_forward: bool = True, out_name: str = "plan.json") -> tuple[float, float, str]:
    """Wall and CPU seconds of `hybridps plan` (`out_name` into `out_dir`; with fast_forward
    False, plan-noff.json and the simulator's bsp fast-forward off), and what it wrote."""
    head = [sys.executable, "-m", "hybridps"] if fast_forward else [sys.executable, __file__, "--no-fast-forward"]
    out = out_dir / (out_name if fast_forward else "plan-noff.json")
    cmd = [*head, "plan", "--cluster", cluster, "--job", job, "--strategy", "all", "-o", str(out), *extra]
    if jobs:
        cmd += ["--jobs", str(jobs)]
    wall, cpu, out = timed(cmd, "plan")
    return wall, cpu, out.stdout.strip().splitlines()[-1].split(":", 1)[-1].strip()


def timed(cmd: list[str], what: str) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run `cmd`: its wall and CPU seconds (its own and its children's) and its output."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{what} failed: {out.stderr}")
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), out


def time_old_path(cluster: str, job: str, jobs: int | None, out: Path) -> tuple[float, float]:
    """Wall and CPU seconds of `search(..., reuse=False)` in a fresh interpreter (this
    script's --old-path), with `hybridps plan`'s defaults; its plan is written to `out`."""
    cmd = [sys.executable, __file__, "--old-path", cluster, job, str(out)] + (["--jobs", str(jobs)] if jobs else [])
    wall, cpu, _ = timed(cmd, "old path")
    return wall, cpu


def plan_without_fast_forward(argv: list[str]) -> int:
    """--no-fast-forward: `hybridps plan` with every simulation's bsp fast-forward off
    (the search's pool processes are forked, so they inherit it)."""
    import sim.engine
    from hybridps.cli import main as cli_main

    init = sim.engine.Simulation.__init__

    def every_round(self, *args, **kw):
        init(self, *args, **{**kw, "fast_forward": False})

    sim.engine.Simulation.__init__ = every_round
    return cli_main(argv)


def old_path(cluster: str, job: str, out: str, jobs: int | None) -> None:
    """--old-path: the search as before the shared scoring pool, its plan written to `out`."""
    from hybridps.fileio import atomic_write_json
    from hybridps.spec import load_cluster, load_job
    from solver.candidates import Constraints
    from solver.search import search

    result = search(load_cluster(cluster), load_job(job), Constraints(), seed=0, jobs=jobs or os.cpu_count() or 1,
                    reuse=False)
    atomic_write_json(out, result.plan.to_json_dict())


def same_plan(new: Path, old: Path, exact: bool = True) -> str:
    """Stop unless the two plan.json files have the same phases and predictions (exact=False:
    makespans to 1e-9 relative, the simulator's fast-forward bound)."""
    import json
    import math

    a, b = json.loads(new.read_text()), json.loads(old.read_text())
    keys = ("strategy", "parameters") if not exact else ("predicted_makespan_s", "uniform_makespan_s", "strategy",
                                                          "parameters")
    close = exact or all(math.isclose(a["meta"][k], b["meta"][k], rel_tol=1e-9)
                         for k in ("predicted_makespan_s", "uniform_makespan_s"))
    if a["phases"] != b["phases"] or any(a["meta"][k] != b["meta"][k] for k in keys) or not close:
        raise SystemExit(f"the two paths chose different plans: {new} vs {old}")
    return "same plan (phases, predicted and uniform makespans " + ("identical)" if exact else "to 1e-9)")


def time_milp(n_workers: int, resolution: int = 224, solver: str = "highs") -> tuple[float, object]:
    from hybridps.spec import cluster_from_dict, load_job
    from solver.balanced import solve_balanced
    import tomllib

    cluster = cluster_from_dict(tomllib.loads(mixed_cluster_toml(n_workers)), f"<mixed{n_workers}>")
    job = load_job("imagenet-resnet18")
    t0 = time.perf_counter()
    sol = solve_balanced(cluster, job, resolution, solver=solver)
    return time.perf_counter() - t0, sol


def report(name: str, wall: float, extra: str = "") -> None:
    print(f"{name:<44} {wall:8.2f} s   {wall / TARGET_S:5.2f}x of the {TARGET_S:.0f} s target   {extra}", flush=True)


def time_generate(n_workers: int, repeat: int) -> None:
    """Candidate generation with and without DBSL pruning, and without sharing the balanced
    MILPs' fixed-K solves, same run, CPU seconds (best of N)."""
    import tomllib

    from hybridps.spec import cluster_from_dict, load_job
    from solver.candidates import Constraints, generate

    cluster = cluster_from_dict(tomllib.loads(mixed_cluster_toml(n_workers)), f"<mixed{n_workers}>")
    job = load_job("imagenet-resnet18")
    generate(cluster, job, Constraints(strategies=("uniform", "balanced"), milp_solver="highs"))  # warm the MILP imports

    def best(solver: str = "exact", **kw):
        runs = []
        for _ in range(repeat):
            t0 = time.process_time()
            cands = generate(cluster, job, Constraints(milp_solver=solver), **kw)
            runs.append(time.process_time() - t0)
        return min(runs), cands

    highs_s, highs = best("highs", dbsl_keep=12)
    pruned_s, pruned = best(dbsl_keep=12)
    unshared_s, unshared = best(dbsl_keep=12, share_milps=False)
    full_s, full = best()
    print(f"generate, {n_workers} workers: {len(full)} candidates in {full_s:.2f} s cpu unpruned, {len(pruned)} in "
          f"{pruned_s:.2f} s cpu with dbsl_keep=12 ({pruned_s / full_s:.2f}x; includes the same "
          f"{sum(c.strategy != 'dbsl' for c in full) - 1} MILP-based candidates)", flush=True)
    same = [c.plan for c in unshared] == [c.plan for c in pruned]
    print(f"  the same {len(unshared)} without sharing fixed-K MILPs across compressions: {unshared_s:.2f} s cpu "
          f"(shared/unshared {pruned_s / unshared_s:.2f}x; {'the same' if same else 'DIFFERENT'} plans)", flush=True)
    same = [c.plan.phases for c in highs] == [c.plan.phases for c in pruned]
    print(f"  the same {len(highs)} with the fixed-K MILPs solved by HiGHS (--milp-solver highs): {highs_s:.2f} s cpu "
          f"(exact/highs {pruned_s / highs_s:.2f}x; {'the same' if same else 'DIFFERENT'} plans)", flush=True)


START_S = [0.0]  # --timeline: when the search started (pool processes inherit it)


def timed_scorer(cluster, job, plan, seed):
    """The search's default scorer, printing where and when each simulation ran and its CPU seconds."""
    from solver.search import simulate_summary

    t0, c0 = time.time(), time.process_time()
    out = simulate_summary(cluster, job, plan, seed)
    syncs = "/".join(dict.fromkeys(p.sync for p in plan.phases))
    print(f"  pid {os.getpid():>7}  {t0 - START_S[0]:6.2f}-{time.time() - START_S[0]:6.2f} s  "
          f"cpu {time.process_time() - c0:5.2f} s  {sum(p.epochs for p in plan.phases):>3} epochs  {syncs} "
          f"{plan.phases[0].compression.kind}", flush=True)
    return out


def timeline(args) -> None:
    """--timeline: where the 256-worker search's time goes: cProfile of candidate generation,
    then every simulation of one search with the default pool (process, start-end, CPU)."""
    import cProfile
    import pstats
    import tomllib

    import highspy  # noqa: F401 - imported before timing, as the search has it by then
    import pulp  # noqa: F401

    from hybridps.spec import cluster_from_dict, load_job
    from solver.candidates import Constraints, generate
    from solver.search import search

    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}")
    cluster = cluster_from_dict(tomllib.loads(mixed_cluster_toml(256)), "<mixed256>")
    job = load_job("imagenet-resnet18")
    prof = cProfile.Profile()
    c0 = time.process_time()
    prof.runcall(generate, cluster, job, Constraints(), dbsl_keep=12)
    print(f"generate, 256 workers: {time.process_time() - c0:.2f} s cpu under cProfile")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(14)
    jobs = args.jobs or os.cpu_count() or 1
    print(f"search, 256 workers, jobs={jobs}: every simulation (main process pid {os.getpid()})", flush=True)
    START_S[0] = time.time()
    c0 = time.process_time()
    res = search(cluster, job, Constraints(), scorer=timed_scorer, seed=0, jobs=jobs)
    print(f"wall {time.time() - START_S[0]:.2f} s (generate {res.stage_s['generate_s']:.2f}, proxy "
          f"{res.stage_s['proxy_s']:.2f}, full {res.stage_s['full_s']:.2f}), main process cpu "
          f"{time.process_time() - c0:.2f} s; {res.best.candidate.label}, predicted {res.best.best_s:.1f} s "
          f"(load average {os.getloadavg()[0]:.1f})")


def proxy_error(args) -> None:
    """--proxy-error: on the 256-worker cluster, the proxy at 2, 4 and 8 epochs per phase
    against the full simulation, for the two finalists of the default search and the
    uniform baseline (can a bound from the proxy skip a full run? can asp stretches be
    simulated shorter and extrapolated?)."""
    import tomllib

    from hybridps.spec import cluster_from_dict, load_job
    from solver.candidates import Constraints, generate, phase_overheads_s
    from solver.search import scale_up, shorten, simulate_summary

    cluster = cluster_from_dict(tomllib.loads(mixed_cluster_toml(256)), "<mixed256>")
    job = load_job("imagenet-resnet18")
    wanted = ("uniform(schedule=fixed, compression=none, batch=256)",
              "sync-switch(schedule=cyclic, compression=topk, f=0.0625, bsp_epochs=7)",
              "sync-switch(schedule=cyclic, compression=onebit, f=0.0625, bsp_epochs=7)")
    for cand in (c for c in generate(cluster, job, Constraints(), dbsl_keep=12) if c.label in wanted):
        c0 = time.process_time()
        full = simulate_summary(cluster, job, cand.plan, 0)["makespan_s"]
        row = [f"full {full:.2f} s (cpu {time.process_time() - c0:.2f} s)"]
        for epochs in (2, 4, 8):
            short = shorten(cand.plan, epochs)
            c0 = time.process_time()
            proxy = scale_up(cand.plan, short, simulate_summary(cluster, job, short, 0)) + phase_overheads_s(
                cluster, cand.plan)
            row.append(f"{epochs} epochs {proxy:.2f} s ({proxy / full - 1:+.2%}, cpu {time.process_time() - c0:.2f} s)")
        print(f"{cand.label}: " + "; ".join(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="runs per figure; the best is reported")
    ap.add_argument("--jobs", type=int, default=None, help="--jobs for hybridps plan (default: CPU count)")
    ap.add_argument("--large", action="store_true", help="256 workers of 3 device types (target 10 s)")
    ap.add_argument("--xl", action="store_true", help="with --large: also 1,024 workers (report; no old-path run)")
    ap.add_argument("--timeline", action="store_true",
                    help="256 workers: cProfile of candidate generation, then when and where each simulation ran")
    ap.add_argument("--no-old-path", action="store_true", help="with --large: skip the old path's run")
    ap.add_argument("--proxy-error", action="store_true",
                    help="256 workers: the proxy's error on the finalists at 2, 4 and 8 epochs per phase")
    ap.add_argument("--old-path", nargs=3, metavar=("CLUSTER", "JOB", "OUT"), help=argparse.SUPPRESS)
    if sys.argv[1:2] == ["--no-fast-forward"]:
        raise SystemExit(plan_without_fast_forward(sys.argv[2:]))
    args = ap.parse_args()
    if args.old_path:
        old_path(*args.old_path, args.jobs)
        return
    if args.large:
        large(args)
        return
    if args.timeline:
        timeline(args)
        return
    if args.proxy_error:
        proxy_error(args)
        return
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f} "
          "(other work on the machine inflates wall times; cpu = the command's own CPU seconds)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        c64 = tmp / "mixed64.toml"
        c64.write_text(mixed_cluster_toml(64))
        for name, cluster, extra in (
                ("plan --strategy all, mixed16 (16 workers)", "mixed16", ()),
                ("plan --strategy all, mixed64 (64 workers)", str(c64), ()),
                ("  same, --baseline auto (64 workers)", str(c64), ("--baseline", "auto"))):
            runs = [time_plan(cluster, "imagenet-resnet18", args.jobs, tmp, *extra) for _ in range(args.repeat)]
            wall, cpu, last = min(runs)
            report(name, wall, f"cpu {cpu:.1f} s; {last}"[:100])
        for n, solver in ((64, "exact"), (64, "highs"), (256, "exact"), (256, "highs"), (256, "cbc")):
            runs = [time_milp(n, solver=solver) for _ in range(args.repeat)]
            wall, sol = min(runs, key=lambda r: r[0])
            report(f"balanced batches alone, {n} workers, 224 px, {solver}", wall,
                   f"K={sol.steps} status={sol.status} gap={sol.gap:.2e} milps={sol.milps}")


def large(args) -> None:
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}")
    time_generate(256, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in (256, 1024) if args.xl else (256,):
            path = tmp / f"mixed{n}.toml"
            path.write_text(mixed_cluster_toml(n))
            runs, old, noff, milp = [], [], [], []
            for _ in range(args.repeat):  # interleaved, so that all paths see the same load
                runs.append(time_plan(str(path), "imagenet-resnet18", args.jobs, tmp))
                milp.append(time_plan(str(path), "imagenet-resnet18", args.jobs, tmp, "--milp-solver", "highs",
                                      out_name="plan-highs.json"))
                noff.append(time_plan(str(path), "imagenet-resnet18", args.jobs, tmp, fast_forward=False))
                if n <= 256 and not args.no_old_path:  # about a minute at 1,024; the issue asks only for the figure
                    old.append(time_old_path(str(path), "imagenet-resnet18", args.jobs, tmp / "old.json"))
            wall, cpu, last = min(runs)
            print(f"plan --strategy all, mixed{n} ({n} workers) {wall:8.2f} s   {wall / 10.0:5.2f}x of the 10 s target   "
                  f"cpu {cpu:.1f} s; {last[:110]}   (load average {os.getloadavg()[0]:.1f})", flush=True)
            milp_wall, milp_cpu, _ = min(milp)
            print(f"  --milp-solver highs, same run      {milp_wall:8.2f} s   cpu {milp_cpu:.1f} s; exact/highs: wall "
                  f"{wall / milp_wall:.2f}x, cpu {cpu / milp_cpu:.2f}x; "
                  f"{same_plan(tmp / 'plan.json', tmp / 'plan-highs.json')}", flush=True)
            noff_wall, noff_cpu, _ = min(noff)
            print(f"  fast-forward off, same run        {noff_wall:8.2f} s   cpu {noff_cpu:.1f} s; on/off: wall "
                  f"{wall / noff_wall:.2f}x, cpu {cpu / noff_cpu:.2f}x; "
                  f"{same_plan(tmp / 'plan.json', tmp / 'plan-noff.json', exact=False)}", flush=True)
            if not old:
                continue
            old_wall, old_cpu = min(old)
            print(f"  old path (reuse=False), same run {old_wall:8.2f} s   cpu {old_cpu:.1f} s; "
                  f"new/old: wall {wall / old_wall:.2f}x, cpu {cpu / old_cpu:.2f}x; "
                  f"{same_plan(tmp / 'plan.json', tmp / 'old.json')}   (load average {os.getloadavg()[0]:.1f})",
                  flush=True)


if __name__ == "__main__":
    main()
