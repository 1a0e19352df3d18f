"""`hybridps check`: validate cluster, job and plan files without simulating."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate cluster/job/plan files (no simulation)",
                       description="Load and validate the given files; with all three, also check the plan "
                                   "against the cluster and job. Exit 0 if valid, 2 with the first problem.")
    p.add_argument("--cluster", help="cluster.toml path or bundled name")
    p.add_argument("--job", help="job.toml path or bundled name")
    p.add_argument("--plan", help="plan.json path or bundled name (checked against --cluster/--job if given)")
    p.add_argument("--json", action="store_true", help="print what was checked as JSON instead of the ok lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hybridps.errors import UserError
    from hybridps.spec import load_cluster, load_job, load_plan

    if not (args.cluster or args.job or args.plan):
        raise UserError("check: give at least one of --cluster, --job, --plan")
    cluster = load_cluster(args.cluster) if args.cluster else None
    job = load_job(args.job) if args.job else None
    plan = load_plan(args.plan, cluster, job) if args.plan else None
    checked = {}
    if cluster is not None:
        checked["cluster"] = {"workers": len(cluster.worker_list), "device_types": len(cluster.devices),
                              "ps_shards": cluster.ps.count}
    if job is not None:
        checked["job"] = {"model": job.model.name, "parameters": job.model.parameters, "data": job.data.name,
                          "samples": job.data.samples, "epochs": job.train.epochs}
    if plan is not None:
        checked["plan"] = {"phases": len(plan.phases), "checked_against_cluster_and_job": bool(cluster and job)}
    if args.json:
        print(json.dumps({"ok": True, **checked}, indent=2))
    else:
        print(_ok_lines(checked))
    return 0


def _ok_lines(checked: dict) -> str:
    lines = []
    if "cluster" in checked:
        c = checked["cluster"]
        lines.append(f"cluster ok: {c['workers']} workers, {c['device_types']} device types, {c['ps_shards']} PS shard(s)")
    if "job" in checked:
        j = checked["job"]
        lines.append(f"job ok: {j['model']} ({j['parameters']:,} parameters) on {j['data']} ({j['samples']:,} samples), "
                     f"{j['epochs']} epochs")
    if "plan" in checked:
        against = " (checked against cluster and job)" if checked["plan"]["checked_against_cluster_and_job"] else ""
        lines.append(f"plan ok: {checked['plan']['phases']} phases{against}")
    return "\n".join(lines)
