"""`hybridps simulate` (not built yet)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="(not built yet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hybridps.errors import UserError

    raise UserError("`hybridps simulate` is not built yet")
