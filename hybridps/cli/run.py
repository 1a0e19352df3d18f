"""`hybridps run`: execute a plan on real processes (torch.distributed, gloo) with a
parameter server, recording a trace the simulator can be checked against.

With --local it spawns the PS shard(s) and one process per worker on this machine;
under torchrun (RANK/WORLD_SIZE set) the same command is one rank of the run.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from hybridps.cli import (TORCH_INSTALL_HINT, nonnegative_float_arg, nonnegative_int_arg, path_arg, positive_float_arg,
                          positive_int_arg, seed_arg)


def _flag(help: str, default: Any = None, type: Callable | None = None, metavar: str | None = None,
          choices: tuple[str, ...] | None = None, short: str | None = None, child: bool = True) -> Any:
    """A field of RunArgs: its argparse settings; `child`: the --local children get it too."""
    return field(default=default, metadata={"help": help, "type": type, "metavar": metavar, "choices": choices,
                                            "short": short, "child": child})


@dataclass(frozen=True)
class RunArgs:
    """`hybridps run`'s options: the argparse flags and the argv of the --local children
    are both derived from these fields (a bool is a switch)."""
    cluster: str | None = _flag("cluster.toml (path or bundled name)")
    job: str | None = _flag("job.toml (path or bundled name)")
    plan: str | None = _flag("plan.json (path or bundled name)")
    out: Path | None = _flag("output directory (trace.jsonl, summary.json, checkpoint.pt)", type=path_arg,
                             metavar="DIR", short="-o")
    local: bool = _flag("spawn every process on this machine", default=False, child=False)
    resume: Path | None = _flag("continue the run in DIR from its checkpoint", type=path_arg, metavar="DIR")
    overwrite: bool = _flag("start afresh in an --out that holds an unfinished run (its trace and checkpoints "
                            "are deleted)", default=False, child=False)
    on_worker_loss: str = _flag("stop (default: checkpoint, stop all, exit 3) or continue without the worker "
                                "(any sync mode; the others re-split its data share)", default="stop",
                                choices=("stop", "continue"))
    worker_timeout: float = _flag("seconds without heartbeat/progress before a worker counts as lost (default 60)",
                                  default=60.0, type=positive_float_arg, metavar="S")
    model: str | None = _flag("override the job's model.name (resnet18, cnn, mlp, torchvision:NAME)")
    data: str | None = _flag("override the job's data.name (synthetic[:C], cifar10, cifar100, imagefolder:DIR)")
    data_dir: str | None = _flag("directory holding the CIFAR python batches", metavar="DIR")
    seed: int | None = _flag("seed for data order, model init and stragglers (default: 0, stragglers: the "
                             "cluster's [stragglers].seed)", type=seed_arg)
    eval_every: int = _flag("evaluate every N epochs (0: only at phase ends; default 1)", default=1,
                            type=nonnegative_int_arg, metavar="EPOCHS")
    eval_samples: int | None = _flag("held-out samples per evaluation (default: the whole held-out split)",
                                     type=positive_int_arg, metavar="N")
    checkpoint_every: float = _flag("seconds between periodic checkpoints (default 300; always at phase ends)",
                                    default=300.0, type=positive_float_arg, metavar="S")
    device: str = _flag("where workers compute: auto (cuda when available), cpu or cuda (default auto)",
                        default="auto", choices=("auto", "cpu", "cuda"))
    threads: int = _flag("torch threads per process (default 1)", default=1, type=positive_int_arg)
    no_emulate: bool = _flag("do not enforce the cluster's slowdown, bandwidth and stragglers", default=False)
    bucket_mb: float = _flag("with --no-emulate, a gradient phase without compression and one iteration per "
                             "exchange pushes its gradient during backward in buckets of MB (as DDP's "
                             "bucket_cap_mb; 0: after backward in one piece; default 25)", default=25.0,
                             type=nonnegative_float_arg, metavar="MB")
    compute_time: str = _flag("measured (default): an iteration takes its real compute time times the worker's "
                              "slowdown and straggler factor; model: the cluster's predicted t(B) times the same "
                              "factors (never less than the real compute), to check a plan's or a policy's "
                              "execution against `simulate`", default="measured", choices=("measured", "model"))
    json: bool = _flag("print summary.json on stdout at the end (progress and the human lines go to stderr)",
                       default=False, child=False)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="execute a plan on real processes (torch.distributed PS); needs torch",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(RunArgs):
        m = f.metadata
        names = [m["short"], _option(f.name)] if m["short"] else [_option(f.name)]
        if f.default is False:
            p.add_argument(*names, action="store_true", help=m["help"])
            continue
        extra = {k: m[k] for k in ("type", "metavar", "choices") if m[k] is not None}
        p.add_argument(*names, default=f.default, help=m["help"], **extra)
    p.set_defaults(func=run_maybe_json)


def _specs(args: argparse.Namespace):
    from hybridps.errors import UserError
    from hybridps.spec import check_plan, cluster_from_dict, job_from_dict, load_cluster, load_job, load_plan, plan_from_dict

    if args.resume is not None and not (args.cluster or args.job or args.plan):
        from traces.jsonl import read_trace

        h = read_trace(args.resume / "trace.jsonl").header
        cluster = cluster_from_dict(h["cluster"], f"{args.resume}/trace.jsonl header")
        job = job_from_dict(h["job"], f"{args.resume}/trace.jsonl header")
        plan = plan_from_dict(h["plan"], f"{args.resume}/trace.jsonl header", cluster, job)
        meta = h.get("meta") or {}
        args.model = args.model or meta.get("model")
        args.data = args.data or meta.get("data")
        if args.seed is None:
            args.seed = h.get("seed")
        return cluster, job, plan
    missing = [f"--{n}" for n in ("cluster", "job", "plan") if getattr(args, n) is None]
    if missing:
        raise UserError(f"hybridps run needs {', '.join(missing)} (or --resume DIR)")
    cluster, job = load_cluster(args.cluster), load_job(args.job)
    plan = load_plan(args.plan, cluster, job)
    check_plan(plan, cluster, job, args.plan)
    _policies_runnable(plan, cluster)
    return cluster, job, plan


def _policies_runnable(plan, cluster) -> None:
    """A phase's online policy runs at the PS (docs/policies.md) with one shard only: the
    workers' records, which feed its observer, reach shard 0 alone, and several shards
    would have to agree on every decision. Refuse rather than ignore it."""
    from hybridps.errors import UserError

    for p, phase in enumerate(plan.phases):
        if phase.policy is not None and cluster.ps.count > 1:
            raise UserError(f"phase {p}: an online policy runs with one PS shard only, the cluster has "
                            f"ps.count = {cluster.ps.count}; set ps.count = 1 or remove the phase's `policy`")


def run(args: argparse.Namespace) -> int:
    from hybridps.errors import UserError
    from runtime.launch import launch_wall_s

    started_s = launch_wall_s()  # start-up (summary.json's startup_s) counts from here, the launcher's under --local
    try:
        import torch
    except ImportError:
        raise UserError(f"hybridps run needs torch; {TORCH_INSTALL_HINT}") from None
    from runtime.context import RunOptions, expected_world_size
    from runtime.launch import run_local, run_process

    out = args.resume if args.resume is not None else args.out
    if out is None:
        raise UserError("hybridps run needs --out DIR (or --resume DIR)")
    if args.local and "RANK" not in os.environ and args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available on this machine; use --device cpu or auto")
    on_ps_host = os.environ.get("RANK", "0") == "0"  # other torchrun ranks may not see DIR
    launched = "HYBRIDPS_PARENT_PID" in os.environ  # a rank of --local: the launcher checked DIR
    if args.resume is not None and on_ps_host and not (args.resume / "checkpoint.pt").is_file():
        raise UserError(f"{args.resume}: no checkpoint.pt to resume from")
    cluster, job, plan = _specs(args)
    opts = RunOptions(out_dir=Path(out), model=args.model, data=args.data, data_dir=args.data_dir, seed=args.seed,
                      eval_every=args.eval_every, eval_samples=args.eval_samples,
                      checkpoint_every_s=args.checkpoint_every, worker_timeout_s=args.worker_timeout,
                      on_worker_loss=args.on_worker_loss, resume=args.resume is not None, device=args.device,
                      threads=args.threads, emulate=not args.no_emulate, bucket_mb=args.bucket_mb,
                      compute_time=args.compute_time,
                      launch_wall_s=started_s)
    from runtime.data import check_data

    data = args.data or job.data.name
    check_data(data, args.data_dir)
    if args.local and "RANK" not in os.environ:  # the ranks check it too, but after the launcher's start line
        check_data_size(job, data, args.data_dir)
    job_file = args.job or f"{args.resume}/trace.jsonl header"
    note = check_model(job, job_file, args.model, data, args.data_dir, 0 if args.seed is None else args.seed)
    if note and "HYBRIDPS_PARENT_PID" not in os.environ and os.environ.get("RANK", "0") == "0":
        print(f"hybridps run: warning: {note}", file=sys.stderr)  # once, not once per rank
    if on_ps_host and not launched:
        if check_out_dir(Path(out), args, cluster, job, plan) == "finished":
            print(f"hybridps run: {out} holds a finished run (summary.json); nothing to resume")
            return 0
    if args.local and "RANK" not in os.environ:
        # the children re-read the same arguments, without --local, plus what --resume recovered
        argv = _rebuild_argv(args)
        grace = None if args.on_worker_loss == "continue" else args.worker_timeout + 30.0
        return run_local(argv, expected_world_size(cluster, plan), grace_s=grace, shards=cluster.ps.count,
                         out_dir=str(out), launch_wall_s=started_s)
    return run_process(cluster, job, plan, opts)


RUN_FILES = ("trace.jsonl", "summary.json", "checkpoint.pt")


def check_out_dir(out: Path, args: argparse.Namespace, cluster, job, plan) -> str:
    """Before any process starts: `out` must be a writable directory; --resume must find
    checkpoints of this very run (digests of cluster, job, plan, model, data, seed); a new
    run refuses an `out` holding an unfinished one unless --overwrite. Returns "finished"
    when --resume finds the run complete (nothing is touched), else "go"."""
    from hybridps.errors import UserError
    from hybridps.fileio import check_output_dir
    from runtime.checkpoint import check_resume, load_checkpoint, spec_digests
    from runtime.context import canonical_model_name

    flag = "--resume" if args.resume is not None else "--out"
    check_output_dir(out, flag)
    if args.resume is not None:
        digests = spec_digests(cluster, job, plan, canonical_model_name(args.model or job.model.name),
                               args.data or job.data.name, args.seed)
        # under torchrun, shard s > 0 keeps its checkpoint on its own node (that rank checks it as it loads)
        ck = check_resume(out, cluster.ps.count if args.local else 1, digests)
        return "finished" if ck["complete"] else "go"
    present = [name for name in RUN_FILES if (out / name).exists()]
    if not present:
        return "go"
    ck = out / "checkpoint.pt"
    finished = False
    if ck.is_file():
        try:
            finished = bool(load_checkpoint(ck)["complete"])
        except UserError:
            finished = False
    if not finished and not args.overwrite:
        raise UserError(f"--out {out}: holds an unfinished run ({', '.join(present)}); continue it with "
                        f"hybridps run --resume {out} --local, or pass --overwrite to start afresh (deletes them)")
    for path in [out / n for n in RUN_FILES] + sorted(out.glob("checkpoint-shard*.pt")):
        path.unlink(missing_ok=True)  # a new run: no stale shard checkpoint may mix in
    return "go"


def check_data_size(job, data: str, data_dir: str | None) -> None:
    """The job's data.samples against the training set's size (runtime.data.check_samples),
    in the launcher: an error is then its one line, before any process starts."""
    from runtime.data import check_samples, load_dataset

    if not data.startswith("synthetic"):  # generated with data.samples: nothing to check
        check_samples(load_dataset(data, job.data.samples, 0, data_dir), data, job.data.samples, job.data.subset)


def check_model(job, job_file: str, model: str | None, data: str, data_dir: str | None, seed: int) -> str | None:
    """Build the run's model (an unknown name fails here, once) and check the job's model
    size against it: raises UserError for bytes_per_parameter other than 4 (the runtime
    exchanges fp32) or a parameter count more than 1% off; returns a warning when it is
    off by less, else None."""
    from hybridps.errors import UserError
    from runtime.context import canonical_model_name, num_classes
    from runtime.models import build_model, count_parameters

    if job.model.bytes_per_parameter != 4:
        raise UserError(f"{job_file}: model.bytes_per_parameter = {job.model.bytes_per_parameter}, but hybridps run "
                        f"exchanges fp32 parameters; set model.bytes_per_parameter = 4")
    name = canonical_model_name(model or job.model.name)
    real = count_parameters(build_model(name, num_classes(data, job.data.samples, seed, data_dir), seed=None))
    declared = job.model.parameters
    if real == declared:
        return None
    off = abs(declared - real) / real
    text = (f"{job_file}: model.parameters = {declared:,} but model {name!r} on {data!r} has {real:,} "
            f"({off:.2%} off)")
    if off > 0.01:
        raise UserError(f"{text}; set model.parameters = {real} in the job file, or choose the matching --model")
    return f"{text}; running with {real:,} (summary.json records both)"


def _rebuild_argv(args: argparse.Namespace) -> list[str]:
    """The children's argv: every RunArgs option they take, as given (or recovered by --resume)."""
    out: list[str] = []
    for f in fields(RunArgs):
        value = getattr(args, f.name)
        if not f.metadata["child"] or value is None or value is False:
            continue
        out += [_option(f.name)] if value is True else [_option(f.name), str(value)]
    return out


def run_maybe_json(args: argparse.Namespace) -> int:
    """`run`; with --json every rank's human lines go to stderr and the launcher prints
    the run's summary.json on stdout once it ends well."""
    if not args.json:
        return run(args)
    from hybridps.fileio import stdout_to_stderr

    with stdout_to_stderr():
        code = run(args)
    out = args.resume if args.resume is not None else args.out
    if code == 0 and os.environ.get("RANK", "0") == "0" and "HYBRIDPS_PARENT_PID" not in os.environ:
        print((Path(out) / "summary.json").read_text(), end="")
    return code
