"""`hybridps plan`: search candidate plans with the simulator and write the best.

With --target-accuracy (or --target-loss) and a job whose [convergence] table was fitted
by `hybridps calibrate --job`, the objective is the predicted time to that target: plans
predicted to miss it rank after every plan predicted to reach it. Without a target the
objective is predicted makespan; without a convergence model quality is not modelled,
and is held only by the constraints the user sets (--time-ratio, --min-bsp-fraction,
--sync, --compression, --schedule, --strategy); candidates with known quality risks are
marked. See docs/solver.md and docs/convergence.md.
"""

from __future__ import annotations

import argparse

from hybridps.cli import int_range_arg, positive_float_arg, positive_int_arg, seed_arg, unit_fraction_arg
import json
import os
import sys

STRATEGY_NAMES = ("uniform", "dbsl", "balanced", "sync-switch", "ssp")
MAX_WORKERS = 10_000  # as hybridps.spec.MAX_WORKERS (not imported: --help stays light)
MAX_CANDIDATES = 10_000  # --top, --proxy-count, --full-count


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="search plans with the simulator and write the fastest as plan.json",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", required=True, help="cluster.toml path or bundled example name")
    p.add_argument("--job", required=True, help="job.toml path or bundled example name")
    p.add_argument("--strategy", default="all",
                   help=f"one or more of {', '.join(STRATEGY_NAMES)} (comma-separated), or all (default)")
    p.add_argument("--time-ratio", type=positive_float_arg, default=1.05, metavar="RATIO",
                   help="DBSL extra-time ratio t >= 1 that small-batch workers may cost (default 1.05)")
    p.add_argument("--small-workers", type=int_range_arg(0, MAX_WORKERS - 1), default=None, metavar="N",
                   help="DBSL small-batch worker count (default: try 0..n-1)")
    p.add_argument("--min-bsp-fraction", type=float, default=0.0, metavar="FRACTION",
                   help="keep only plans that train at least this fraction of epochs under bsp (default 0)")
    p.add_argument("--sync", default="bsp,asp,ssp", help="allowed sync modes (default bsp,asp,ssp)")
    p.add_argument("--compression", default="none,topk,onebit",
                   help="allowed gradient compression: none, topk (1%%), onebit (default all three)")
    p.add_argument("--schedule", default="fixed,cyclic",
                   help="resolution schedules: fixed (highest), cyclic (progressive per LR stage)")
    p.add_argument("--substages", type=int_range_arg(1, 100), default=None,
                   help="cyclic schedule: sub-stages per LR stage, resolution rising low to high "
                        "(default: one per resolution)")
    p.add_argument("--objective", default="time", choices=["time", "time_to_accuracy"],
                   help="what is minimised: predicted makespan (time), or the predicted time to --target-accuracy "
                        "(time_to_accuracy, implied by a target; see docs/solver.md)")
    p.add_argument("--target-accuracy", type=unit_fraction_arg, metavar="A",
                   help="minimise the predicted time to this validation accuracy (0..1); needs the job's "
                        "[convergence] table (hybridps calibrate --job J --job-out OUT)")
    p.add_argument("--target-loss", type=positive_float_arg, metavar="L",
                   help="minimise the predicted time to this validation loss (nats); needs [convergence]")
    p.add_argument("--keep", metavar="DIR",
                   help="write every fully simulated plan as DIR/NN-STRATEGY/plan.json and the ranking as "
                        "DIR/ranking.json")
    p.add_argument("--top", type=int_range_arg(1, MAX_CANDIDATES), default=10,
                   help="rows in the ranked table (default 10)")
    p.add_argument("-o", "--out", "--output", dest="output", metavar="plan.json",
                   help="where to write the best plan (default plan.json; with --json, written only when -o is "
                        "given); replacing an existing file is said on stderr")
    p.add_argument("--json", action="store_true", help="print the ranking as JSON instead of a table")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw the --top candidates: predicted time (full or proxy), the baseline, and predicted "
                        "accuracy and time to target when the job has a [convergence] table")
    p.add_argument("--seed", type=seed_arg, default=0, help="simulation seed (stragglers), default 0")
    p.add_argument("--jobs", type=positive_int_arg, default=None, help="simulation processes (default: CPU count)")
    p.add_argument("--proxy-epochs", type=int_range_arg(1, 100_000), default=2, metavar="EPOCHS",
                   help="shortened horizon for ranking: epochs per phase (default 2)")
    p.add_argument("--proxy-count", type=int_range_arg(0, MAX_CANDIDATES), default=12, metavar="N",
                   help="candidates simulated on the shortened horizon, best by estimate (default 12)")
    p.add_argument("--full-count", type=int_range_arg(0, MAX_CANDIDATES), default=2, metavar="N",
                   help="candidates simulated in full, best by proxy, besides the uniform baseline (default 2)")
    p.add_argument("--baseline", default="full", choices=["auto", "full"],
                   help="simulate the uniform baseline in full (full, default), or only when the shortened "
                        "horizon does not show it clearly beaten (auto: faster, the ratio is then against a proxy)")
    p.add_argument("--milp-solver", default="exact", choices=["exact", "highs", "cbc"],
                   help="how the balanced batches' fixed-K problems are solved: exact (default: walks the step "
                        "times, no MILP solver) or the MILP with highs or cbc (the same batches, slower)")
    p.add_argument("--milp-time-limit", type=positive_float_arg, default=10.0, metavar="SECONDS", help="seconds per MILP (default 10)")
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
    small = None if args.small_workers is None else (args.small_workers,)
    return Constraints(strategies=tuple(strategies), time_ratio=args.time_ratio, small_workers=small,
                       min_bsp_fraction=args.min_bsp_fraction, sync_modes=syncs, compressions=comps or ("none",),
                       schedules=schedules, substages=args.substages, milp_solver=args.milp_solver,
                       milp_time_limit_s=args.milp_time_limit)


def run(args: argparse.Namespace) -> int:
    from hybridps.errors import UserError
    from hybridps.fileio import check_output_dir, check_output_file
    from hybridps.spec import load_cluster, load_job, resolve_path
    from solver.search import search, summary_json
    from solver.timemodel import check_resolutions

    cons = _constraints(args)
    if args.target_accuracy is not None and args.target_loss is not None:
        raise UserError("--target-accuracy and --target-loss: give one target, not both")
    if args.objective == "time_to_accuracy" and args.target_accuracy is None:
        raise UserError("--objective time_to_accuracy needs --target-accuracy A")
    cluster = load_cluster(args.cluster)
    job = load_job(args.job)
    targeted = args.target_accuracy is not None or args.target_loss is not None
    if job.convergence is None:
        if targeted:
            flag = "--target-accuracy" if args.target_accuracy is not None else "--target-loss"
            raise UserError(f"{flag}: job {args.job} has no [convergence] table, so quality is not modelled; fit one "
                            f"with `hybridps calibrate TRACE... --job {args.job} --job-out JOB.toml`")
    check_resolutions(cluster, job, str(resolve_path("cluster", args.cluster)))
    output = args.output if args.output is not None else (None if args.json else "plan.json")
    inputs = [resolve_path("cluster", args.cluster), resolve_path("job", args.job)]
    for flag, path in (("-o", output), ("--plot", args.plot)):
        if path is not None:
            check_output_file(path, flag, inputs)
    if args.keep is not None:
        check_output_dir(args.keep, "--keep")
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    result = search(cluster, job, cons, seed=args.seed, jobs=jobs, proxy_epochs=args.proxy_epochs,
                    proxy_count=args.proxy_count, full_count=args.full_count, objective=args.objective,
                    baseline=args.baseline, target_accuracy=args.target_accuracy, target_loss=args.target_loss)
    if result.best.candidate.strategy not in cons.strategies or \
            not {ph.sync for ph in result.plan.phases} <= set(cons.sync_modes):
        raise UserError("no candidate plan satisfies the constraints (--strategy, --sync, --min-bsp-fraction); "
                        "relax one of them")
    _write_outputs(args, result, output, job)
    if args.json:
        out = summary_json(result, args.top)
        out["output"] = None if output is None else str(output)
        print(json.dumps(out, indent=2))
    else:
        _print_table(args, result, output, targeted)
    if job.convergence is None:
        print("note: quality is not modelled (the job has no [convergence] table): ranked by predicted makespan "
              "only; candidates with known quality risks are marked", file=sys.stderr)
    for line in dict.fromkeys(cons.extra.get("skipped", [])):
        print(f"note: skipped {line}", file=sys.stderr)
    return 0


def _print_table(args: argparse.Namespace, result, output: str, targeted: bool) -> None:
    """The human output: the ranked table, the search's counts, what was written."""
    from solver.search import table

    m = result.plan.meta
    print(table(result, args.top))
    policies = (f" ({result.counts['policy']} with an online policy: the cluster has transient stragglers)"
                if "policy" in result.counts else "")
    print(f"\n{result.counts['candidates']} candidates{policies}, {result.counts['proxy']} simulated on a "
          f"{args.proxy_epochs}-epoch-per-phase horizon, {result.counts['full']} in full; "
          f"{result.wall_s:.1f} s (generate {result.stage_s['generate_s']:.1f} s, proxy "
          f"{result.stage_s['proxy_s']:.1f} s, full {result.stage_s['full_s']:.1f} s)")
    print(f"wrote {output}: {result.best.candidate.label}, predicted makespan "
          f"{m['predicted_makespan_s']:.1f} s = {m['ratio_to_uniform']:.3f}x the uniform baseline "
          f"({m['uniform_makespan_s']:.1f} s)")
    if "predicted_final_accuracy" in m:
        line = f"predicted final accuracy {m['predicted_final_accuracy']:.3f}"
        if targeted:
            target = m.get("target_accuracy", m.get("target_loss"))
            ttt = m["predicted_time_to_target_s"]
            line += (f", target {target:g} reached at {ttt:.1f} s" if ttt is not None
                     else f", target {target:g} predicted to be missed by every candidate")
        print(line)


def _write_outputs(args: argparse.Namespace, result, output: str | None, job) -> None:
    """The best plan (-o), every fully simulated plan (--keep) and the picture (--plot)."""
    from solver.search import summary_json

    if output is not None:
        _write_plan(output, result.plan)
    if args.keep:
        _keep(args.keep, result)
    if args.plot:
        from traces.plots import write_plan_plot

        write_plan_plot(args.plot, summary_json(result, None), f"plan: {job.model.name} on {job.data.name}, "
                        f"cluster {args.cluster}", args.top, args.target_accuracy)


def _write_plan(path: str, plan) -> None:
    """Write the best plan; a file it replaces is named on stderr (a plan is work to redo)."""
    from pathlib import Path

    from hybridps.fileio import atomic_write_text

    replaced = Path(path).exists()
    atomic_write_text(path, plan.to_json())
    if replaced:
        print(f"note: replaced the existing {path}", file=sys.stderr)


def _keep(folder: str, result) -> None:
    """Every fully simulated plan as DIR/NN-STRATEGY/plan.json (NN its rank) and DIR/ranking.json."""
    from pathlib import Path

    from hybridps.errors import UserError
    from hybridps.fileio import atomic_write_text
    from solver.search import summary_json

    root = Path(folder)
    try:
        for rank, r in enumerate(result.ranked, 1):
            if r.full_s is None:
                continue
            plan = r.candidate.plan.model_copy(update={"meta": {
                **r.candidate.plan.meta, "strategy": r.candidate.strategy, "parameters": r.candidate.params,
                "rank": rank, "predicted_makespan_s": r.full_s, "quality": r.quality, "risks": r.risks}})
            atomic_write_text(root / f"{rank:02d}-{r.candidate.strategy}" / "plan.json", plan.to_json())
        atomic_write_text(root / "ranking.json", json.dumps(summary_json(result, None), indent=2) + "\n")
    except OSError as e:
        raise UserError(f"--keep {folder}: cannot write: {e.strerror}") from None
