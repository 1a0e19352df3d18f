"""`hybridps examples`: list the bundled clusters, jobs and plans."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("examples", help="list the bundled example clusters, jobs and plans",
                       description="List bundled examples; --cluster/--job/--plan accept these names.")
    p.add_argument("--show", metavar="NAME", help="print the bundled file of that name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hybridps.errors import UserError
    from hybridps.spec import example_dir, list_examples

    if args.show:
        for kind in ("cluster", "job", "plan"):
            if args.show in list_examples(kind):
                suffix = ".json" if kind == "plan" else ".toml"
                print((example_dir(kind) / f"{args.show}{suffix}").read_text(), end="")
                return 0
        raise UserError(f"--show {args.show}: no bundled example of that name; `hybridps examples` lists them")
    for kind in ("cluster", "job", "plan"):
        print(f"{kind}s:")
        names = list_examples(kind)
        width = max(map(len, names), default=0)
        for name in names:
            print(f"  {name:<{width}}  {_summary(name, kind)}")
    return 0


def _summary(name: str, kind: str) -> str:
    """One line that says what the example is, read from the file itself (so it cannot
    go stale): a cluster's workers by device, a job's model and data, a plan's strategy."""
    from collections import Counter

    from hybridps.spec import load_cluster, load_job, load_plan

    if kind == "cluster":
        c = load_cluster(name)
        devices = Counter(w.device for w in c.worker_list)
        return (f"{len(c.worker_list)} workers ({', '.join(f'{n} {d}' for d, n in devices.items())}), "
                f"{c.ps.count} PS shard{'s' if c.ps.count > 1 else ''}")
    if kind == "job":
        j = load_job(name)
        res = "/".join(map(str, j.train.resolutions))
        return (f"{j.model.name} ({j.model.parameters:,} parameters) on {j.data.name}, {j.train.epochs} epochs "
                f"at {res} px")
    p = load_plan(name)
    workers = {w.name for ph in p.phases for w in ph.workers}
    return f"{p.meta.get('strategy', 'plan')}: {len(p.phases)} phase{'s' if len(p.phases) > 1 else ''}, " \
           f"{len(workers)} workers"
