"""`hybridps validate --trace RUN/trace.jsonl`: replay the run's plan in the simulator
and report predicted against measured."""

from __future__ import annotations

import argparse
import sys

from hybridps.cli import int_range_arg, seed_arg, unit_fraction_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate", help="re-simulate a run's plan and compare with what the run measured",
        description="Re-simulate the plan in a run trace's header (job and plan from the header; the cluster "
                    "from --cluster, default the header's) and print predicted against measured: makespan, "
                    "each phase, each epoch end, each worker's iterations and bytes, with relative errors.")
    p.add_argument("--trace", required=True, help="the run's trace.jsonl")
    p.add_argument("--cluster", help="cluster to simulate on (path or bundled name), e.g. a calibrated one; "
                                     "default: the cluster in the trace header")
    p.add_argument("--seed", type=seed_arg, help="straggler seed (default: the trace header's seed)")
    p.add_argument("--repeats", type=int_range_arg(1, 1000), default=10,
                   help="when the cluster's [stragglers] are not the ones the run emulated (e.g. fitted by "
                        "calibrate from noise), average the prediction over this many seeds (default 10)")
    p.add_argument("--job", help="job (path or bundled name) whose [convergence] model predicts validation accuracy "
                                 "and loss, compared with the run's eval records (default: the trace header's job)")
    p.add_argument("--target-accuracy", type=unit_fraction_arg, metavar="A",
                   help="also compare the predicted and measured time to this validation accuracy")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw predicted against measured: phase durations, each worker's compute and "
                        "communication time")
    p.set_defaults(func=run)


def load_run(trace_path: str, cluster_arg: str | None):
    """The trace, and the cluster/job/plan to re-simulate it with (UserError if unusable)."""
    from hybridps.errors import UserError
    from hybridps.spec import check_plan, cluster_from_dict, job_from_dict, load_cluster, plan_from_dict
    from traces import read_trace

    trace = read_trace(trace_path)
    h = trace.header
    for key in ("job", "plan"):
        if not h.get(key):
            raise UserError(f"{trace_path}: the header has no {key}; validate needs a run trace "
                            f"(written by `hybridps run` or `hybridps simulate --trace`), not a {h['source']} trace")
    job = job_from_dict(h["job"], f"{trace_path} (header job)")
    plan = plan_from_dict(h["plan"], f"{trace_path} (header plan)")
    if cluster_arg:
        cluster, label = load_cluster(cluster_arg), cluster_arg
    elif h.get("cluster"):
        cluster, label = cluster_from_dict(h["cluster"], f"{trace_path} (header cluster)"), "the trace header's cluster"
    else:
        raise UserError(f"{trace_path}: the header has no cluster; pass --cluster")
    missing = sorted({wa.name for ph in plan.phases for wa in ph.workers} - set(cluster.worker_by_name))
    if missing:
        have = ", ".join(w.name for w in cluster.worker_list)
        raise UserError(f"{trace_path}: the run's plan names worker(s) {', '.join(missing)} that cluster {label} "
                        f"does not have (it has: {have}); pass the cluster the run used, or one calibrated from "
                        f"this trace (`hybridps calibrate {trace_path} -o cluster.toml`)")
    check_plan(plan, cluster, job, f"{trace_path} (header plan, against {label})")
    done = len(trace.of_kind("phase"))
    if trace.torn or done < len(plan.phases):  # an interrupted run: say so, compare what there is
        cut = "its last line is cut; " if trace.torn else ""
        print(f"hybridps validate: warning: {trace_path}: {cut}the run is incomplete ({done} of {len(plan.phases)} "
              f"phases); finish it with `hybridps run --resume DIR` for a full comparison", file=sys.stderr)
    return trace, cluster, job, plan


def run(args: argparse.Namespace) -> int:
    import json

    from sim import simulate
    from traces.compare import compare, compare_decisions, format_comparison, measured_summary, policy_decisions

    from hybridps.errors import UserError
    from traces.compare import mean_summary

    if args.plot is not None:
        from hybridps.fileio import check_output_file

        check_output_file(args.plot, "--plot", [args.trace, args.cluster, args.job])
    trace, cluster, job, plan = load_run(args.trace, args.cluster)
    if args.job:
        from hybridps.spec import load_job

        given = load_job(args.job)
        if (given.data.samples, given.model.parameters) != (job.data.samples, job.model.parameters):
            raise UserError(f"--job {args.job}: data.samples/model.parameters ({given.data.samples}, "
                            f"{given.model.parameters}) differ from the run's ({job.data.samples}, "
                            f"{job.model.parameters}); pass the job the run used")
        job = given
    if args.target_accuracy is not None and job.convergence is None:
        raise UserError("--target-accuracy: the job has no [convergence] table, so quality is not modelled; pass "
                        "--job with one (hybridps calibrate TRACE... --job J --job-out OUT.toml)")
    seed = args.seed if args.seed is not None else trace.header.get("seed")
    emulated = (trace.header.get("cluster") or {}).get("stragglers")
    noiseless = cluster.stragglers.rate_per_hour == 0 and cluster.stragglers.jitter_cv == 0
    same_episodes = noiseless or cluster.stragglers.model_dump() == emulated
    # the run's own episodes are reproduced exactly by its seed; fitted ones are a
    # statistical model, so their prediction is the mean over several seeds
    seeds = [seed] if same_episodes else [(seed or 0) + k for k in range(args.repeats)]
    # the run's --eval-every (in its header since 2026-12-06; older runtime traces: the default, 1)
    eval_every = int((trace.header.get("meta") or {}).get("eval_every", 1))
    # with a policy, the first seed's run keeps its records: its decisions against the run's
    with_policy = any(ph.policy is not None for ph in plan.phases)
    runs = [simulate(cluster, job, plan, seed=s, log_updates=job.convergence is not None, eval_every=eval_every,
                     record=with_policy and i == 0) for i, s in enumerate(seeds)]
    predicted = mean_summary([r.summary() for r in runs])
    measured = measured_summary(trace)
    result = compare(predicted, measured)
    if with_policy:
        result["policy"] = compare_decisions(policy_decisions(runs[0].records), policy_decisions(trace.records))
    qual = _quality(trace, args.trace, runs[0], plan, job, args.target_accuracy) if job.convergence else None
    if args.plot is not None:
        from traces.plots import write_validate_plot

        write_validate_plot(args.plot, result, f"validate {args.trace} on {args.cluster or 'the header cluster'}")
    if args.json:
        out = {"trace": args.trace, "cluster": args.cluster or "header", "seeds": seeds,
               "comparison": result, "predicted": predicted, "measured": measured}
        if qual is not None:
            out["quality"] = qual
        print(json.dumps(out, indent=2))
    else:
        print(f"validate {args.trace} on {args.cluster or 'the header cluster'}: predicted (simulator) vs measured (run)")
        print(format_comparison(result))
        if len(seeds) > 1:
            lo, hi = predicted["makespan_s_spread"]
            print(f"predicted: mean of {len(seeds)} straggler seeds (fitted [stragglers]); makespan ranged "
                  f"{lo:.3f}..{hi:.3f} s")
        if qual is not None:
            from traces.compare import format_quality

            print(f"\nvalidation quality: convergence model on the simulated update stream (seed {seeds[0]}) vs the "
                  f"run's eval records")
            print(format_quality(qual))
    return 0


def _quality(trace, path: str, sim_result, plan, job, target: float | None) -> dict | None:
    """Predicted (convergence model over the simulated stream) against measured (eval
    records, on the simulator's clock) accuracy and loss."""
    from sim.convergence import accuracy_at, loss_at, predict_sim, time_to_target_s
    from traces.compare import compare_quality
    from traces.update_stream import eval_points, measured_time_to_accuracy_s, update_stream

    spec = job.convergence
    pts = eval_points(trace)
    if pts.t_s.size == 0:
        return None
    origin = update_stream(trace, path).origin_s
    pred = predict_sim(sim_result, plan, spec)
    at = pred.progress_at(pts.t_s - origin)
    return compare_quality(pts.epoch.tolist(), (pts.t_s - origin).tolist(), pts.accuracy.tolist(), pts.loss.tolist(),
                           accuracy_at(at, spec).tolist(), loss_at(at, spec).tolist(),
                           time_to_target_s(pred, spec, target) if target is not None else None,
                           measured_time_to_accuracy_s(pts, target, origin) if target is not None else None, target)
