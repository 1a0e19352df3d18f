"""`hybridps plan`: search candidate plans with the simulator and write the fastest.

The objective is time: the simulator predicts makespan, not accuracy, so training
quality is held by the constraints the user sets (--time-ratio, --min-bsp-fraction,
--sync, --compression, --schedule, --strategy). See docs/solver.md.
"""

from __future__ import annotations

import argparse

from hybridps.cli import positive_float_arg, positive_int_arg, seed_arg
import json
import os
import sys

STRATEGY_NAMES = ("uniform", "dbsl", "balanced", "sync-switch", "ssp")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="search plans with the simulator and write the fastest as plan.json",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", required=True, help="cluster.toml path or bundled example name")
    p.add_argument("--job", required=True, help="job.toml path or bundled example name")
    p.add_argument("--strategy", default="all",
                   help=f"one or more of {', '.join(STRATEGY_NAMES)} (comma-separated), or all (default)")
    p.add_argument("--time-ratio", type=positive_float_arg, default=1.05,
                   help="DBSL extra-time ratio t >= 1 that small-batch workers may cost (default 1.05)")
    p.add_argument("--small-workers", type=int, default=None,
                   help="DBSL small-batch worker count (default: try 0..n-1)")
    p.add_argument("--min-bsp-fraction", type=float, default=0.0,
                   help="keep only plans that train at least this fraction of epochs under bsp (default 0)")
    p.add_argument("--sync", default="bsp,asp,ssp", help="allowed sync modes (default bsp,asp,ssp)")
    p.add_argument("--compression", default="none,topk,onebit",
                   help="allowed gradient compression: none, topk (1%%), onebit (default all three)")
    p.add_argument("--schedule", default="fixed,cyclic",
                   help="resolution schedules: fixed (highest), cyclic (progressive per LR stage)")
    p.add_argument("--substages", type=int, default=None,
                   help="cyclic schedule: sub-stages per LR stage, resolution rising low to high "
                        "(default: one per resolution)")
    p.add_argument("--objective", default="time", choices=["time"],
                   help="what is minimised: predicted makespan (the only objective; see docs/solver.md)")
    p.add_argument("--top", type=int, default=10, help="rows in the ranked table (default 10)")
    p.add_argument("-o", "--output", default="plan.json", help="where to write the best plan (default plan.json)")
    p.add_argument("--json", action="store_true", help="print the ranking as JSON instead of a table")
    p.add_argument("--seed", type=seed_arg, default=0, help="simulation seed (stragglers), default 0")
    p.add_argument("--jobs", type=positive_int_arg, default=None, help="simulation processes (default: CPU count)")
    p.add_argument("--proxy-epochs", type=int, default=2,
                   help="shortened horizon for ranking: epochs per phase (default 2)")
    p.add_argument("--proxy-count", type=int, default=12,
                   help="candidates simulated on the shortened horizon, best by estimate (default 12)")
    p.add_argument("--full-count", type=int, default=2,
                   help="candidates simulated in full, best by proxy, besides the uniform baseline (default 2)")
    p.add_argument("--baseline", default="full", choices=["auto", "full"],
                   help="simulate the uniform baseline in full (full, default), or only when the shortened "
                        "horizon does not show it clearly beaten (auto: faster, the ratio is then against a proxy)")
    p.add_argument("--milp-solver", default="highs", choices=["highs", "cbc"], help="MILP solver (default highs)")
    p.add_argument("--milp-time-limit", type=positive_float_arg, default=10.0, help="seconds per MILP (default 10)")
    p.set_defaults(func=run)


def _constraints(args: argparse.Namespace):
    from hybridps.errors import UserError
    from solver.candidates import COMPRESSIONS, Constraints, STRATEGIES
    from solver.schedule import LAYOUTS

    strategies = STRATEGIES if args.strategy == "all" else _csv(args.strategy)
    for s in strategies:
        if s not in STRATEGIES:
            raise UserError(f"--strategy: unknown strategy {s!r}; use one of: {', '.join(STRATEGIES)}, or all")
    if not strategies:
        raise UserError("--strategy: name at least one strategy, or all")
    syncs = _csv(args.sync)
    for s in syncs:
        if s not in ("bsp", "asp", "ssp"):
            raise UserError(f"--sync: unknown sync mode {s!r}; use bsp, asp and/or ssp")
    comps = _csv(args.compression)
    for k in comps:
        if k not in COMPRESSIONS:
            raise UserError(f"--compression: unknown kind {k!r}; use one of: {', '.join(COMPRESSIONS)}")
    schedules = _csv(args.schedule)
    for k in schedules:
        if k not in LAYOUTS:
            raise UserError(f"--schedule: unknown schedule {k!r}; use one of: {', '.join(LAYOUTS)}")
    if not 0.0 <= args.min_bsp_fraction <= 1.0:
        raise UserError(f"--min-bsp-fraction {args.min_bsp_fraction}: must be between 0 and 1")
    for flag, values in (("--sync", syncs), ("--schedule", schedules)):
        if not values:
            raise UserError(f"{flag}: name at least one (got {getattr(args, flag[2:])!r})")
    if args.min_bsp_fraction > 0 and "bsp" not in syncs:
        raise UserError(f"--min-bsp-fraction {args.min_bsp_fraction} needs bsp phases, but --sync {args.sync} "
                        f"excludes bsp; add bsp to --sync or drop --min-bsp-fraction")
    if args.time_ratio <= 0:
        raise UserError(f"--time-ratio {args.time_ratio}: must be positive (and >= 1 with small workers)")
    if args.top < 1 or args.proxy_epochs < 1 or args.proxy_count < 0 or args.full_count < 0:
        raise UserError("--top and --proxy-epochs must be >= 1; --proxy-count and --full-count >= 0")
    if args.substages is not None and args.substages < 1:
        raise UserError(f"--substages {args.substages}: must be at least 1")
    small = None if args.small_workers is None else (args.small_workers,)
    return Constraints(strategies=tuple(strategies), time_ratio=args.time_ratio, small_workers=small,
                       min_bsp_fraction=args.min_bsp_fraction, sync_modes=syncs, compressions=comps or ("none",),
                       schedules=schedules, substages=args.substages, milp_solver=args.milp_solver,
                       milp_time_limit_s=args.milp_time_limit)


def run(args: argparse.Namespace) -> int:
    from hybridps.errors import UserError
    from hybridps.fileio import atomic_write_text, check_output_file
    from hybridps.spec import load_cluster, load_job, resolve_path
    from solver.search import search, summary_json, table
    from solver.timemodel import check_resolutions

    cons = _constraints(args)
    cluster = load_cluster(args.cluster)
    job = load_job(args.job)
    check_resolutions(cluster, job, str(resolve_path("cluster", args.cluster)))
    check_output_file(args.output, "-o", [resolve_path("cluster", args.cluster), resolve_path("job", args.job)])
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    result = search(cluster, job, cons, seed=args.seed, jobs=jobs, proxy_epochs=args.proxy_epochs,
                    proxy_count=args.proxy_count, full_count=args.full_count, objective=args.objective,
                    baseline=args.baseline)
    if result.best.candidate.strategy not in cons.strategies or \
            not {ph.sync for ph in result.plan.phases} <= set(cons.sync_modes):
        raise UserError("no candidate plan satisfies the constraints (--strategy, --sync, --min-bsp-fraction); "
                        "relax one of them")
    atomic_write_text(args.output, result.plan.to_json())
    m = result.plan.meta
    if args.json:
        out = summary_json(result, args.top)
        out["output"] = str(args.output)
        print(json.dumps(out, indent=2))
    else:
        print(table(result, args.top))
        print(f"\n{result.counts['candidates']} candidates, {result.counts['proxy']} simulated on a "
              f"{args.proxy_epochs}-epoch-per-phase horizon, {result.counts['full']} in full; "
              f"{result.wall_s:.1f} s (generate {result.stage_s['generate_s']:.1f} s, proxy "
              f"{result.stage_s['proxy_s']:.1f} s, full {result.stage_s['full_s']:.1f} s)")
        print(f"wrote {args.output}: {result.best.candidate.label}, predicted makespan "
              f"{m['predicted_makespan_s']:.1f} s = {m['ratio_to_uniform']:.3f}x the uniform baseline "
              f"({m['uniform_makespan_s']:.1f} s)")
    for line in dict.fromkeys(cons.extra.get("skipped", [])):
        print(f"note: skipped {line}", file=sys.stderr)
    return 0
