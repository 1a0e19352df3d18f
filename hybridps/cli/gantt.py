"""`hybridps gantt`: the timeline PNG of any trace, simulated or measured by
`hybridps run`; with the accuracy over time as a panel when the trace has eval records."""

from __future__ import annotations

import argparse
import math

from hybridps.cli import positive_int_arg


def window_arg(text: str) -> tuple[float, float]:
    """START:END in seconds (either may be empty: from the start, to the end)."""
    lo, sep, hi = text.partition(":")
    try:
        start = float(lo) if lo else 0.0
        end = float(hi) if hi else math.inf
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:END in seconds (e.g. 0:600), got {text!r}") from None
    if not sep or math.isnan(start) or math.isnan(end) or start < 0 or end <= start:
        raise argparse.ArgumentTypeError(f"expected START:END in seconds with 0 <= START < END, got {text!r}")
    return start, end


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gantt", help="draw the timeline PNG of a trace",
                       description="Draw TRACE (from `simulate --trace` or `run`) as a timeline: a row per worker, "
                                   "compute and push/pull bars, phases marked and described, and the accuracy "
                                   "over time when the trace has eval records. Long traces get an overview "
                                   "(share of each time bin) and a bar-by-bar detail.")
    p.add_argument("trace", metavar="TRACE", help="a trace.jsonl file")
    p.add_argument("-o", "--out", metavar="FILE.png", required=True, help="the PNG to write")
    p.add_argument("--window", type=window_arg, metavar="START:END",
                   help="draw only this span, in seconds from the run's start (e.g. 0:600)")
    p.add_argument("--max-lanes", type=positive_int_arg, metavar="N",
                   help="at most N rows: the workers beyond the first N-1 share one row showing their mean")
    p.add_argument("--title", metavar="TEXT", help="the chart's title (default: model/data on N workers)")
    p.set_defaults(func=run)


def default_title(header: dict) -> str:
    job = header.get("job") or {}
    workers = {w["name"] for ph in (header.get("plan") or {}).get("phases", []) for w in ph.get("workers", [])}
    model, data = (job.get("model") or {}).get("name"), (job.get("data") or {}).get("name")
    what = f"{model}/{data}" if model and data else "trace"
    return f"{what} on {len(workers)} workers ({header.get('source')})" if workers else what


def run(args: argparse.Namespace) -> int:
    from hybridps.errors import UserError
    from hybridps.fileio import check_output_file
    from traces.gantt import GanttData
    from traces.stream import stream_trace

    if args.max_lanes is not None and args.max_lanes < 2:
        raise UserError("--max-lanes: expected at least 2 (one worker row and the group row)")
    args.out = check_output_file(args.out, "--out", [args.trace])
    header, records = stream_trace(args.trace)
    data = GanttData(header)
    data.write_many(records)
    if not data.names:
        raise UserError(f"{args.trace}: no compute, push or pull records to draw (a profile trace?)")
    if args.window and args.window[0] >= data.end_s():
        raise UserError(f"--window {args.window[0]:g}:{args.window[1]:g}: the trace ends at {data.end_s():,.1f} s; "
                        f"start the window before that")
    try:
        picture = data.write_png(args.out, args.title or default_title(header), args.window, args.max_lanes)
    except OSError as e:
        raise UserError(f"--out {args.out}: cannot write: {e.strerror}") from None
    panels = ", ".join(p.kind for p in picture.panels)
    print(f"wrote {args.out}: {len(picture.lanes)} rows, panels: {panels}")
    return 0
