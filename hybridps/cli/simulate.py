"""`hybridps simulate`: run a plan through the SimPy model and report the outcome."""

from __future__ import annotations

import argparse

from hybridps.cli import seed_arg, unit_fraction_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate a plan on a cluster (no GPU needed)",
                       description="Simulate PLAN for JOB on CLUSTER with the discrete-event model and print "
                                   "a summary (or the summary JSON with --json).")
    p.add_argument("--cluster", required=True, help="cluster.toml path or bundled name")
    p.add_argument("--job", required=True, help="job.toml path or bundled name")
    p.add_argument("--plan", required=True, help="plan.json path or bundled name")
    p.add_argument("--seed", type=seed_arg, default=None, help="transient-straggler seed (default: the cluster's)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--trace", metavar="T.jsonl", help="write the trace records (streamed as it simulates)")
    p.add_argument("--chrome", metavar="T.json", help="write a Chrome trace-event file (Perfetto, chrome://tracing)")
    p.add_argument("--gantt", metavar="G.png", help="write a timeline PNG")
    p.add_argument("--target-accuracy", type=unit_fraction_arg, metavar="A",
                   help="report the predicted time to this validation accuracy (0..1; needs the job's "
                        "[convergence] table, written by `hybridps calibrate --job J --job-out OUT`)")
    p.set_defaults(func=run)


def _human(summary: dict, cluster, job, plan, seed: int, target: float | None = None) -> str:
    s = summary
    mk = s["makespan_s"]
    lines = [
        f"{job.model.name} on {job.data.name}: {sum(p.epochs for p in plan.phases)} epochs in {len(plan.phases)} "
        f"phase(s), {len(cluster.worker_list)} workers, {cluster.ps.count} PS shard(s), straggler seed {seed}",
        f"makespan {mk:,.1f} s ({mk / 3600:.2f} h)   updates {s['updates']:,}   staleness mean "
        f"{s['staleness']['mean']:.2f} p99 {s['staleness']['p99']:.0f} max {s['staleness']['max']:.0f}   "
        f"traffic {s['bytes_total'] / 1e9:,.1f} GB",
    ]
    if s["policy_actions"]:
        lines.append("policy actions: " + ", ".join(f"{kind} {n}" for kind, n in sorted(s["policy_actions"].items())))
    if len(s["phases"]) > 1:
        lines.append("phase ends (s): " + ", ".join(f"{p['end_s']:,.1f}" for p in s["phases"]))
    width = max(6, max(len(n) for n in s["workers"]))
    lines.append(f"{'worker':<{width}} {'iters':>9} {'samples':>11} {'compute':>8} {'comm':>8} {'wait':>8} "
                 f"{'pushed GB':>10} {'pulled GB':>10}")
    for name, w in s["workers"].items():
        lines.append(f"{name:<{width}} {w['iterations']:>9,} {w['samples']:>11,} {w['compute_s'] / mk:>8.1%} "
                     f"{w['comm_s'] / mk:>8.1%} {w['wait_s'] / mk:>8.1%} {w['bytes_pushed'] / 1e9:>10.2f} "
                     f"{w['bytes_pulled'] / 1e9:>10.2f}")
    if "quality" in s:
        q = s["quality"]
        ttt = q["time_to_target_s"]
        reach = "" if target is None else (f", {target:.3f} reached at {ttt:,.1f} s" if ttt is not None
                                          else f", {target:.3f} never reached")
        lines.append(f"predicted quality: final accuracy {q['final_accuracy']:.3f}, loss {q['final_loss']:.3f}{reach}")
    lines.append(f"simulated {s['events']:,} events in {s['wall_s']:.2f} s")
    return "\n".join(lines)


class _Outputs:
    """The trace sinks the simulator streams its records into, batch by batch: the
    JSONL trace, the Chrome trace-event file and the Gantt bars. Nothing keeps the
    records themselves, so memory stays flat however long the run."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def write_many(self, records: list) -> None:
        for sink in self.sinks:
            sink.write_many(records)


def run(args: argparse.Namespace) -> int:
    import json

    from hybridps.errors import UserError
    from hybridps.progress import progress_bar
    from hybridps.fileio import check_output_file
    from hybridps.spec import load_cluster, load_job, load_plan, resolve_path
    from sim import Simulation, trace_header
    from traces.gantt import GanttData
    from traces import TraceWriter
    from traces.chrome import ChromeWriter

    cluster = load_cluster(args.cluster)
    job = load_job(args.job)
    plan = load_plan(args.plan, cluster, job)
    inputs = [resolve_path("cluster", args.cluster), resolve_path("job", args.job), resolve_path("plan", args.plan)]
    for flag in ("trace", "chrome", "gantt"):
        if getattr(args, flag) is not None:
            setattr(args, flag, check_output_file(getattr(args, flag), f"--{flag}", inputs))
            inputs.append(getattr(args, flag))  # two outputs must not be one file either
    if args.target_accuracy is not None and job.convergence is None:
        raise UserError(f"--target-accuracy: job {args.job} has no [convergence] table, so quality is not modelled; "
                        f"fit one with `hybridps calibrate TRACE... --job {args.job} --job-out JOB.toml`")
    seed = cluster.stragglers.seed if args.seed is None else args.seed
    header = trace_header(cluster, job, plan, seed)
    writer = chrome = None
    gantt = GanttData(header) if args.gantt else None
    try:
        try:
            writer = TraceWriter(args.trace, header) if args.trace else None
        except OSError as e:
            raise UserError(f"--trace {args.trace}: cannot write: {e.strerror}") from None
        try:
            chrome = ChromeWriter(args.chrome, header) if args.chrome else None
        except OSError as e:
            raise UserError(f"--chrome {args.chrome}: cannot write: {e.strerror}") from None
        sinks = [s for s in (writer, chrome, gantt) if s is not None]
        total_epochs = sum(p.epochs for p in plan.phases)
        with progress_bar(total_epochs, "simulating", unit="epoch") as bar:
            def advance(epochs_done: int) -> None:
                bar.update(epochs_done - bar.n)

            result = Simulation(cluster, job, plan, seed=seed, trace=_Outputs(sinks) if sinks else None,
                                log_updates=job.convergence is not None).run(progress=advance)
    except BaseException:
        if chrome is not None:
            chrome.abort()  # no half-written Chrome file; the JSONL trace keeps what it has
        raise
    finally:
        if writer is not None:
            writer.close()
    summary = result.summary()
    if job.convergence is not None:
        from sim.convergence import predict_sim, quality

        summary["quality"] = quality(predict_sim(result, plan, job.convergence), job.convergence, args.target_accuracy)
    if chrome is not None:
        try:
            chrome.close()
        except OSError as e:
            raise UserError(f"--chrome {args.chrome}: cannot write: {e.strerror}") from None
    if gantt is not None:
        title = f"{job.model.name}/{job.data.name} on {len(cluster.worker_list)} workers"
        try:
            gantt.write_png(args.gantt, title=title)
        except OSError as e:
            raise UserError(f"--gantt {args.gantt}: cannot write: {e.strerror}") from None
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_human(summary, cluster, job, plan, seed, args.target_accuracy))
    return 0
