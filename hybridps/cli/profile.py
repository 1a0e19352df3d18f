"""`hybridps profile`: time training iterations per resolution and batch size (needs torch)."""

from __future__ import annotations

import argparse

from hybridps.cli import int_range_arg

MAX_RESOLUTION = 4096  # pixels: one such image is already 200 MB of float32 input
MAX_BATCH = 65_536
MAX_INPUT_BYTES = 8 << 30  # the largest input batch (--max-batch x 3 x resolution^2 float32)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile", help="time training iterations (profile records for `hybridps calibrate`)",
        description="Time forward+backward+SGD iterations of a model on synthetic data for each resolution and "
                    "batch size (warm-up, then the median of several), plus the largest batch (found by "
                    "catching out-of-memory on CUDA; --max-batch on CPU), and write profile records.")
    p.add_argument("--model", required=True, help="model name (resnet18, cnn, mlp, torchvision:NAME)")
    p.add_argument("--resolutions", type=int_range_arg(1, MAX_RESOLUTION), nargs="+", required=True, metavar="R", help="input resolutions (pixels)")
    p.add_argument("--batches", type=int_range_arg(1, MAX_BATCH), nargs="+", required=True, metavar="B", help="batch sizes to time")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--name", help="device name written to the records and the cluster file "
                                  "(default: 'cpu' or the GPU's name)")
    p.add_argument("--classes", type=int_range_arg(1, 100_000), default=10, help="output classes of the model (default 10)")
    p.add_argument("--max-batch", type=int_range_arg(1, MAX_BATCH), default=256, metavar="B",
                   help="CPU: the largest batch (timed and recorded); CUDA: upper bound of the search (default 256)")
    p.add_argument("--warmup", type=int_range_arg(0, 1000), default=2, help="untimed iterations first (default 2)")
    p.add_argument("--repeats", type=int_range_arg(1, 1000), default=5, help="timed iterations; the median is recorded (default 5)")
    p.add_argument("--threads", type=int_range_arg(0, 1024), default=1,
                   help="torch CPU threads (default 1, as each process of `hybridps run`; 0: torch's choice)")
    p.add_argument("-o", "--out", required=True, metavar="T.jsonl", help="trace.jsonl to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hybridps.errors import UserError
    from hybridps.fileio import check_output_file

    from hybridps.cli import TORCH_INSTALL_HINT

    try:
        from runtime.profile import profile
    except ImportError as e:
        raise UserError(f"hybridps profile needs torch ({e}); {TORCH_INSTALL_HINT}") from None
    input_bytes = args.max_batch * 3 * max(args.resolutions) ** 2 * 4  # --max-batch is timed (CPU) or tried (CUDA)
    if input_bytes > MAX_INPUT_BYTES:
        raise UserError(f"profile: --max-batch {args.max_batch} at --resolutions {max(args.resolutions)} is "
                        f"{input_bytes / 2**30:,.1f} GiB of input (at most {MAX_INPUT_BYTES / 2**30:g}); "
                        f"lower --max-batch or the resolution")
    args.out = str(check_output_file(args.out, "--out"))
    records = profile(args.model, args.resolutions, args.batches, args.out, device=args.device,
                      classes=args.classes, device_name=args.name, max_batch=args.max_batch,
                      warmup=args.warmup, repeats=args.repeats, threads=args.threads, log=print)
    print(f"wrote {len(records)} profile records to {args.out}")
    return 0
