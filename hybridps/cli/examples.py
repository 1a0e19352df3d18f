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
        for name in list_examples(kind):
            print(f"  {name}")
    return 0
