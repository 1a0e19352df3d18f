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

from hybridps.errors import EXIT_INTERRUPTED, EXIT_PS_LOST, UserError, clear_interrupt

PR_SET_PDEATHSIG = 1
LAUNCH_ENV = "HYBRIDPS_LAUNCH_WALL_S"  # the --local launcher's start (time.time()), handed to its ranks


def launch_wall_s() -> float:
    """When this run started, as time.time(): a --local rank's launcher's start (start-up
    counts from there, torch imports included), else now (a launcher, a torchrun rank)."""
    if "HYBRIDPS_PARENT_PID" in os.environ and LAUNCH_ENV in os.environ:
        return float(os.environ[LAUNCH_ENV])
    return time.time()


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


def _proc_state(pid: int) -> str:
    """The kernel's one-letter state of a process (R, S, T = stopped, Z, ...), '?' if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def run_local(child_args: list[str], world_size: int, grace_s: float | None = 60.0, shards: int = 1,
              out_dir: str | os.PathLike | None = None, launch_wall_s: float | None = None) -> int:
    """Spawn `world_size` ranks of `python -m hybridps run CHILD_ARGS` (ranks below `shards`
    are the PS shards); return the run's exit code (hybridps.errors.EXIT_*).

    - rank 0 ends: its code (it printed why), after the workers had time to leave;
    - a PS shard dies (a signal, or an error it could not report): EXIT_PS_LOST, naming it;
    - every worker has left while the PS still runs (a stopped or wedged PS: the workers'
      watchdogs gave up on it): EXIT_PS_LOST, naming it; so does a child that failed when
      rank 0 has not stopped `grace_s` later (None: only the former);
    - SIGINT or SIGTERM to the launcher: SIGINT to every rank, the PS checkpoints, its code.
    """
    port = free_port()
    procs: list[subprocess.Popen] = []
    base_env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
                    HYBRIDPS_PARENT_PID=str(os.getpid()), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                    GLOO_SOCKET_IFNAME="lo",  # loopback only, like the store (`local_store`)
                    **{LAUNCH_ENV: repr(launch_wall_s or time.time())})
    workers = world_size - shards
    print(f"hybridps run: starting {shards} PS + {workers} worker{'s' if workers != 1 else ''} on this machine "
          f"({world_size} processes; each imports torch, loads the data and builds the model)",
          file=sys.stderr, flush=True)
    resume = f"continue with: hybridps run --resume {out_dir} --local" if out_dir is not None else ""
    checkpoint = os.path.join(out_dir, "checkpoint.pt") if out_dir is not None else None

    def ps_lost(rank: int, what: str) -> int:
        kept = f"checkpoint {checkpoint}" if checkpoint and os.path.isfile(checkpoint) else "no checkpoint"
        name = "PS" if shards == 1 else f"PS shard {rank}"
        print(f"hybridps: error: {name} (rank {rank}) lost: {what}; stopped every process; {kept}; {resume}",
              file=sys.stderr, flush=True)
        return EXIT_PS_LOST

    old_term = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM = Ctrl-C
    try:
        for rank in range(world_size):
            env = dict(base_env, RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
            procs.append(subprocess.Popen([sys.executable, "-m", "hybridps", "run", *child_args], env=env))
        failed_at = None
        workers_gone_at = None
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
                if code0 < 0:
                    return ps_lost(0, _describe_exit(code0))
                return code0
            for rank in range(1, shards):
                code = procs[rank].poll()
                if code is not None and code != 0:
                    return ps_lost(rank, _describe_exit(code))
            workers = procs[shards:]
            if failed_at is None and any(p.poll() not in (None, 0) for p in workers):
                failed_at = time.monotonic()
            if workers_gone_at is None and workers and all(p.poll() is not None for p in workers):
                workers_gone_at = time.monotonic()
            if workers_gone_at is not None and time.monotonic() - workers_gone_at > 10.0:
                state = {"T": "stopped (SIGSTOP?)", "t": "stopped by a debugger"}.get(_proc_state(procs[0].pid))
                why = f"process {state}" if state else "it did not answer nor stop"
                return ps_lost(0, f"{why}; every worker has left")
            if failed_at is not None and grace_s is not None and time.monotonic() - failed_at > grace_s:
                bad = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
                return ps_lost(0, f"rank(s) {bad} failed and the PS did not stop within {grace_s:.0f} s")
            time.sleep(0.05)
    except KeyboardInterrupt:
        # SIGINT or SIGTERM: make sure every rank has SIGINT (a terminal sends it to all, a
        # scheduler's SIGTERM only reaches us), then give the PS time to write its checkpoint.
        # The run's exit code is the PS's from here: the interrupt is handled.
        clear_interrupt()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGINT)
                except ProcessLookupError:
                    pass
        if not procs:
            return EXIT_INTERRUPTED
        try:
            code0 = procs[0].wait(timeout=120)
        except subprocess.TimeoutExpired:
            return ps_lost(0, "it did not stop within 120 s of the interrupt")
        return code0 if code0 >= 0 else ps_lost(0, _describe_exit(code0))
    finally:
        signal.signal(signal.SIGTERM, old_term)
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def local_store(rank: int, world: int, timeout: datetime.timedelta):
    """The rendezvous store of a --local run. TCPStore's own server listens on every
    interface, and it is unauthenticated: rank 0 hands it a socket bound to 127.0.0.1."""
    import torch.distributed as dist

    port = int(os.environ["MASTER_PORT"])
    if rank != 0:
        return dist.TCPStore("127.0.0.1", port, world, False, timeout)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(max(128, world))
    store = dist.TCPStore("127.0.0.1", port, world, True, timeout, wait_for_workers=False,
                          master_listen_fd=sock.detach())
    return store


def start_clock(ctx, who: str) -> float:
    """This rank is ready: say so on stderr, wait for every rank (a barrier), and start the
    run's clock there (time zero). Returns the seconds from the launch to time zero."""
    import torch.distributed as dist

    print(f"hybridps run: rank {ctx.rank} ({who}) ready {ctx.since_launch_s():.1f} s after start "
          f"(torch imported at {ctx.torch_ready_s:.1f} s)", file=sys.stderr, flush=True)
    dist.barrier()
    ctx.t0 = time.perf_counter()
    return ctx.since_launch_s()


def run_process(cluster, job, plan, opts) -> int:
    """One rank of the run (the env says which)."""
    import torch
    import torch.distributed as dist

    from runtime.context import make_context

    t_torch_s = time.time() - opts.launch_wall_s
    die_with_parent()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM = SIGINT until the rank installs its own
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except KeyError as e:
        raise UserError(f"environment variable {e.args[0]} is not set: run under torchrun or use --local") from None
    ctx = make_context(cluster, job, plan, opts, rank, world)
    ctx.torch_ready_s = t_torch_s
    torch.set_num_threads(max(1, opts.threads))
    if ctx.is_ps and rank == 0:
        opts.out_dir.mkdir(parents=True, exist_ok=True)
    timeout = datetime.timedelta(days=7)
    if "HYBRIDPS_PARENT_PID" in os.environ:  # --local: the store listens on 127.0.0.1 only
        dist.init_process_group("gloo", store=local_store(rank, world, timeout), rank=rank, world_size=world,
                                timeout=timeout)
    else:
        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world, timeout=timeout)
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
            code = EXIT_INTERRUPTED
        except RuntimeError as e:  # the connection to a PS shard failed (the PS is gone)
            from runtime.server import short_error

            if "HYBRIDPS_PARENT_PID" not in os.environ:  # under --local the launcher names the PS once
                print(f"hybridps: error: PS lost: worker {ctx.workers[rank - ctx.shards]} (rank {rank}) lost its "
                      f"connection to the PS: {short_error(e)}", file=sys.stderr)
            code = EXIT_PS_LOST
        # leave without tearing down gloo under its own threads (the PS may be gone)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    finally:
        try:
            dist.destroy_process_group()
        except Exception:
            pass
