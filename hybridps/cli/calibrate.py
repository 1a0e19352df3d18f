"""`hybridps calibrate TRACE... -o cluster.toml [--job J --job-out OUT.toml]`: fit the
cluster model and/or the convergence model (docs/convergence.md) to measured traces."""

from __future__ import annotations

import argparse
import json
import sys

from hybridps.cli import float_range_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="fit a cluster.toml (a, b, slowdowns, links, stragglers) to profile/run traces",
        description="Fit t = slowdown x (a*n + b) per device and resolution from profile records and run "
                    "compute records, each worker's bandwidth and latency from its push/pull records, and "
                    "transient stragglers from outlier iterations. Prints the fit report and writes a "
                    "cluster file that `hybridps plan/simulate` accept.")
    p.add_argument("traces", nargs="+", metavar="TRACE",
                   help="trace.jsonl files (profile and/or run traces), or wall-time logs (.csv, or .json with "
                        "format hybridps.walltime/1: one row per worker per epoch; docs/fidelity.md)")
    p.add_argument("-o", "--out", metavar="cluster.toml", help="cluster.toml to write (atomically)")
    p.add_argument("--job", help="job.toml (path or bundled name) to add the fitted [convergence] table to")
    p.add_argument("--job-out", metavar="OUT.toml",
                   help="write JOB plus the convergence model fitted to the traces' eval records (needs --job)")
    p.add_argument("--base", help="cluster (path or bundled name) giving the workers, PS and anything the traces "
                                  "do not measure; default: the first run trace's header cluster")
    p.add_argument("--outlier-factor", type=float_range_arg(1.0, 1000.0), default=1.5, metavar="FACTOR",
                   help="an iteration slower than this x the fit is a straggler outlier (default 1.5)")
    p.add_argument("--no-absorb-gaps", action="store_true",
                   help="fit raw record durations instead of stretching them over the gaps between records")
    p.add_argument("--json", action="store_true",
                   help="print the fits (and the convergence model with --job) as JSON instead of the report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hybridps.errors import UserError
    from hybridps.fileio import check_output_file
    from hybridps.spec import resolve_path
    from traces import read_trace

    from traces.walltime import is_walltime_log, read_walltime_log

    if (args.job is None) != (args.job_out is None):
        raise UserError("calibrate: --job and --job-out go together (the job to extend, the file to write)")
    if args.out is None and args.job_out is None:
        raise UserError("calibrate: say what to write: -o cluster.toml and/or --job J --job-out OUT.toml")
    inputs = [*args.traces, resolve_path("cluster", args.base) if args.base else None,
              resolve_path("job", args.job) if args.job else None]
    if args.out is not None:
        check_output_file(args.out, "-o", inputs)
    if args.job_out is not None:
        check_output_file(args.job_out, "--job-out", inputs)
    logs = [read_walltime_log(p) for p in args.traces if is_walltime_log(p)]
    traces = [read_trace(p) for p in args.traces if not is_walltime_log(p)]
    result: dict = {"wrote": []}
    if args.job_out is not None:
        result["convergence"] = _fit_convergence(args, traces)
        result["wrote"].append(str(args.job_out))
    if args.out is not None:
        result.update(_fit_cluster(args, traces, logs))
        result["wrote"].append(str(args.out))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def _fit_cluster(args: argparse.Namespace, traces: list, logs: list) -> dict:
    """Fit and write -o; warnings on stderr, the report on stdout (unless --json); return
    the fits as JSON."""
    from hybridps.fileio import atomic_write_text
    from hybridps.spec import load_cluster
    from traces.calibrate import calibrate, calibration_json, format_report
    from traces.cluster_toml import cluster_to_toml

    base = load_cluster(args.base) if args.base else None
    cal = calibrate(traces, base, outlier_factor=args.outlier_factor, absorb_gaps=not args.no_absorb_gaps, logs=logs)
    comment = "calibrated by `hybridps calibrate` from: " + ", ".join(args.traces)
    atomic_write_text(args.out, cluster_to_toml(cal.cluster, comment))  # first: `| head` must not lose it
    for w in cal.warnings:
        print(f"hybridps calibrate: warning: {w}", file=sys.stderr)
    if not args.json:
        print(format_report(cal))
        print(f"wrote {args.out}")
    return calibration_json(cal)


def _fit_convergence(args: argparse.Namespace, traces: list) -> dict:
    """Fit and write --job-out; print the fit report (unless --json); return the fitted
    [convergence] table as JSON."""
    from hybridps.fileio import atomic_write_text
    from hybridps.spec import load_job
    from sim.convergence_fit import fit, format_fit
    from traces.job_toml import job_to_toml

    job = load_job(args.job)
    res = fit(list(zip(args.traces, traces)), job.model_copy(update={"convergence": None}))
    out = job.model_copy(update={"convergence": res.spec})
    comment = ("[convergence] fitted by `hybridps calibrate --job` from: " + ", ".join(args.traces)
               + "\nparameters listed in convergence.defaults are stated defaults the traces could not identify")
    try:
        atomic_write_text(args.job_out, job_to_toml(out, comment))
    except OSError as e:
        from hybridps.errors import UserError

        raise UserError(f"--job-out {args.job_out}: cannot write: {e.strerror}") from None
    if not args.json:
        print(format_fit(res))
        print(f"wrote {args.job_out}")
    return {**res.spec.model_dump(mode="json"), "not_identifiable": res.notes, "per_trace_rmse": res.per_trace_rmse}
