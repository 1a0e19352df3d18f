"""`hybridps chrome`: a Chrome trace-event file (Perfetto, chrome://tracing) of any
trace, simulated or measured by `hybridps run`, cut down so a browser can open it:
a time window, counters per bin instead of one event per iteration, and one
aggregated process for the workers beyond `--max-lanes`."""

from __future__ import annotations

import argparse
import math
import os

from hybridps.cli import positive_float_arg, positive_int_arg
from hybridps.cli.gantt import window_arg

AUTO_BINS = 1000  # --max-lanes without --bin-s: the grouped workers' counters get this many bins
MAX_BINS = 100_000  # per lane: more would make a file no browser opens (and take long to write)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chrome", help="write a Chrome trace-event file of a trace (Perfetto, chrome://tracing)",
                       description="Convert TRACE (from `simulate --trace` or `run`) to a Chrome trace-event file: "
                                   "a process per worker with compute and communication lanes, and the PS's "
                                   "phases, updates and evaluations. Large traces: cut with --window, aggregate "
                                   "with --bin-s or --max-lanes.")
    p.add_argument("trace", metavar="TRACE", help="a trace.jsonl file")
    p.add_argument("-o", "--out", metavar="FILE.json", required=True, help="the trace-event file to write")
    p.add_argument("--window", type=window_arg, metavar="START:END",
                   help="keep only records overlapping this span, in seconds from the run's start (e.g. 0:600)")
    p.add_argument("--bin-s", type=positive_float_arg, metavar="SECONDS",
                   help="replace every bar by counters: each worker's share of each bin of SECONDS spent "
                        "computing and communicating, and PS updates per bin")
    p.add_argument("--max-lanes", type=positive_int_arg, metavar="N",
                   help="at most N worker processes: the workers beyond the first N-1 become one process "
                        "showing their mean share per bin (--bin-s, default 1/1000 of the span)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hybridps.errors import UserError
    from hybridps.fileio import check_output_file
    from traces.chrome import ChromeOptions, write_chrome
    from traces.stream import stream_trace, trace_end_s

    if args.max_lanes is not None and args.max_lanes < 2:
        raise UserError("--max-lanes: expected at least 2 (one worker lane and the group lane)")
    args.out = check_output_file(args.out, "--out", [args.trace])
    header, records = stream_trace(args.trace)
    lo, hi = args.window or (0.0, math.inf)
    span_s = max(min(hi, trace_end_s(args.trace)) - lo, 1e-6)
    bin_s = args.bin_s
    if bin_s is None and args.max_lanes is not None:
        bin_s = span_s / AUTO_BINS
    if bin_s is not None and span_s / bin_s > MAX_BINS:
        raise UserError(f"--bin-s {bin_s:g}: {span_s:,.1f} s of trace would be {span_s / bin_s:,.0f} bins (at most "
                        f"{MAX_BINS:,}); use --bin-s {span_s / MAX_BINS:.3g} or more, or a shorter --window")
    options = ChromeOptions(window_s=args.window, bin_s=bin_s, counters=args.bin_s is not None,
                            max_lanes=args.max_lanes)
    try:
        write_chrome(args.out, header, records, options)
    except OSError as e:
        raise UserError(f"--out {args.out}: cannot write: {e.strerror}") from None
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:,.1f} MB)")
    return 0
