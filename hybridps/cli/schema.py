"""`hybridps schema`: JSON Schemas of the file formats (for editors and validators in
other languages), and docs/formats.md rendered from the same definitions.

The spec schemas are pydantic's own (`model_json_schema`), so they are the loaders'
rules; the trace schema is built from traces.records.RECORD_KINDS, one `oneOf` branch
per record kind."""

from __future__ import annotations

import argparse
import json
from typing import Any

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
FORMATS = ["cluster", "job", "plan", "trace", "docs"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of a file format, or docs/formats.md",
                       description="Print the JSON Schema of cluster.toml, job.toml, plan.json or a trace.jsonl "
                                   "record; `docs` prints docs/formats.md, the field tables generated from the "
                                   "same code.")
    p.add_argument("format", choices=FORMATS, metavar="FORMAT",
                   help="one of: " + ", ".join(FORMATS))
    p.add_argument("-o", "--out", metavar="FILE", help="write to FILE (atomically) instead of stdout")
    p.add_argument("--check", metavar="FILE",
                   help="with `docs`: exit 1 if FILE differs from what would be generated (stale docs)")
    p.set_defaults(func=run)


def spec_schema(kind: str) -> dict[str, Any]:
    """pydantic's JSON Schema of cluster/job/plan, with the dialect and format tag."""
    from hybridps import spec

    model = {"cluster": spec.Cluster, "job": spec.Job, "plan": spec.Plan}[kind]
    return {"$schema": SCHEMA_DIALECT, **model.model_json_schema()}


_JSON_TYPES = {int: "integer", float: "number", str: "string", dict: "object", type(None): "null"}


def _types(accepted: tuple[type, ...]) -> dict[str, Any]:
    names = [_JSON_TYPES[t] for t in accepted]
    if "integer" in names and "number" in names:
        names.remove("integer")  # JSON Schema's number includes integers
    return {"type": names[0] if len(names) == 1 else names}


def trace_schema() -> dict[str, Any]:
    """One trace.jsonl line: a oneOf with one closed object schema per record kind."""
    from traces.records import RECORD_KINDS, TRACE_FORMAT

    branches = []
    for kind, (required, optional) in RECORD_KINDS.items():
        props: dict[str, Any] = {"kind": {"const": kind}}
        props.update({name: _types(t) for name, t in {**required, **optional}.items()})
        if kind == "header":
            props["format"] = {"const": TRACE_FORMAT}
        branches.append({"title": kind, "type": "object", "properties": props,
                         "required": ["kind", *required], "additionalProperties": False})
    return {"$schema": SCHEMA_DIALECT, "title": f"{TRACE_FORMAT} record",
            "description": "One line of a trace.jsonl file; the first line is the header.", "oneOf": branches}


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hybridps.errors import UserError
    from hybridps.fileio import atomic_write_text, check_output_file

    if args.check and args.format != "docs":
        raise UserError("schema: --check applies to `hybridps schema docs` only")
    if args.out is not None:
        args.out = check_output_file(args.out, "--out", [args.check])
    if args.format == "docs":
        from hybridps.cli.formats_doc import REGENERATE, render

        text = render()
    elif args.format == "trace":
        text = json.dumps(trace_schema(), indent=2) + "\n"
    else:
        text = json.dumps(spec_schema(args.format), indent=2) + "\n"
    if args.check:
        try:
            on_disk = Path(args.check).read_text(encoding="utf-8")
        except OSError as e:
            raise UserError(f"--check {args.check}: cannot read: {e.strerror}") from None
        if on_disk != text:
            print(f"{args.check} is stale (the models or record kinds changed); regenerate with: {REGENERATE}")
            return 1
        print(f"{args.check} is up to date")
        return 0
    if args.out:
        try:
            atomic_write_text(args.out, text)
        except OSError as e:
            raise UserError(f"--out {args.out}: cannot write: {e.strerror}") from None
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0
