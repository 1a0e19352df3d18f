"""`hybridps check`: validate cluster, job and plan files without simulating."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate cluster/job/plan files (no simulation)",
                       description="Load and validate the given files; with all three, also check the plan "
                                   "against the cluster and job. Exit 0 if valid, 2 with the first problem.")
    p.add_argument("--cluster", help="cluster.toml path or bundled name")
    p.add_argument("--job", help="job.toml path or bundled name")
    p.add_argument("--plan", help="plan.json path or bundled name (checked against --cluster/--job if given)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hybridps.errors import UserError
    from hybridps.spec import load_cluster, load_job, load_plan

    if not (args.cluster or args.job or args.plan):
        raise UserError("check: give at least one of --cluster, --job, --plan")
    cluster = load_cluster(args.cluster) if args.cluster else None
    job = load_job(args.job) if args.job else None
    plan = load_plan(args.plan, cluster, job) if args.plan else None
    if cluster is not None:
        print(f"cluster ok: {len(cluster.worker_list)} workers, {len(cluster.devices)} device types, "
              f"{cluster.ps.count} PS shard(s)")
    if job is not None:
        print(f"job ok: {job.model.name} ({job.model.parameters:,} parameters) on {job.data.name} "
              f"({job.data.samples:,} samples), {job.train.epochs} epochs")
    if plan is not None:
        against = " (checked against cluster and job)" if cluster is not None and job is not None else ""
        print(f"plan ok: {len(plan.phases)} phases{against}")
    return 0
