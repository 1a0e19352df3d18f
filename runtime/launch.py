"""Process start-up: `run_local` spawns the PS shards and the workers on this machine
(env:// rendezvous on 127.0.0.1); `run_process` is what each rank runs, under
`run_local` or under torchrun (which sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

No orphans: children ask the kernel to kill them when their parent dies
(prctl PR_SET_PDEATHSIG on Linux, plus a parent-pid check), and the launcher kills every
child still running when it returns, whatever the reason.
"""

from __future__ import annotations

import ctypes
import datetime
import faulthandler
import os
import signal
import socket
import subprocess
import sys
import time

from hybridps.errors import UserError

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits."""
    expected = os.environ.get("HYBRIDPS_PARENT_PID")
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass
    if expected and os.getppid() != int(expected):  # the parent died before prctl took effect
        os._exit(1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(child_args: list[str], world_size: int, grace_s: float | None = 60.0) -> int:
    """Spawn `world_size` ranks of `python -m hybridps run CHILD_ARGS`; return rank 0's
    exit code. When a child fails and rank 0 has not stopped `grace_s` later (it should
    have noticed: a fallback for a stuck PS), every process is killed; None: never."""
    port = free_port()
    procs: list[subprocess.Popen] = []
    base_env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
                    HYBRIDPS_PARENT_PID=str(os.getpid()), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        for rank in range(world_size):
            env = dict(base_env, RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
            procs.append(subprocess.Popen([sys.executable, "-m", "hybridps", "run", *child_args], env=env))
        failed_at = None
        while True:
            code0 = procs[0].poll()
            if code0 is not None:
                deadline = time.monotonic() + 10.0  # workers got END or ABORT: let them exit
                for p in procs[1:]:
                    left = deadline - time.monotonic()
                    try:
                        p.wait(timeout=max(0.0, left))
                    except subprocess.TimeoutExpired:
                        pass
                return code0
            if failed_at is None and any(p.poll() not in (None, 0) for p in procs[1:]):
                failed_at = time.monotonic()
            if failed_at is not None and grace_s is not None and time.monotonic() - failed_at > grace_s:
                bad = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
                print(f"hybridps: error: rank(s) {bad} exited with an error and the PS did not stop; "
                      f"killed every process", file=sys.stderr)
                return 3
            time.sleep(0.05)
    except KeyboardInterrupt:
        # The terminal sent SIGINT to every child too; make sure, then give the PS time
        # to write its checkpoint.
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGINT)
                except ProcessLookupError:
                    pass
        try:
            procs[0].wait(timeout=60)
        except (subprocess.TimeoutExpired, IndexError):
            pass
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def run_process(cluster, job, plan, opts) -> int:
    """One rank of the run (the env says which)."""
    import torch
    import torch.distributed as dist

    from runtime.context import make_context

    t_start = time.perf_counter()
    die_with_parent()
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except KeyError as e:
        raise UserError(f"environment variable {e.args[0]} is not set: run under torchrun or use --local") from None
    ctx = make_context(cluster, job, plan, opts, rank, world)
    ctx.t0 = t_start
    torch.set_num_threads(max(1, opts.threads))
    if ctx.is_ps and rank == 0:
        opts.out_dir.mkdir(parents=True, exist_ok=True)
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world,
                            timeout=datetime.timedelta(days=7))
    try:
        if ctx.is_ps:
            from runtime.server import run_server

            code = run_server(ctx)
            # receiver threads may still block in recv from a lost worker: leave without
            # tearing down the process group under them
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        from runtime.worker import run_worker

        device = torch.device("cpu")
        if opts.device == "cuda" or (opts.device == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise UserError("--device cuda: no CUDA device is available")
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = torch.device("cuda", local % torch.cuda.device_count())
            torch.cuda.set_device(device)
        try:
            code = run_worker(ctx, device)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            code = 130
        except RuntimeError as e:  # the PS went away (it reports why)
            from runtime.server import short_error

            print(f"hybridps run: worker {ctx.workers[rank - ctx.shards]} stopped: {short_error(e)}", file=sys.stderr)
            code = 3
        # leave without tearing down gloo under its own threads (the PS may be gone)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    finally:
        try:
            dist.destroy_process_group()
        except Exception:
            pass
