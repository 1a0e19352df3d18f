"""Runtime throughput, all in one run (CPU, gloo over 127.0.0.1):

1. PS push+pull GB/s of the real runtime path (`hybridps run`, 1 PS + 1 worker, bsp,
   gradient exchange, a wide MLP so that transfers dominate) against raw gloo
   send/recv of the same bytes, back and forth, between two processes.
   From the run's trace, per exchange: transfers = (push + pull bytes) / (push time +
   pull time), and the whole exchange = the same bytes / (pull end - push start), which
   adds the PS's decode and SGD step between the two. Medians over the exchanges (and
   over the raw round trips), so that other load on the machine does not decide the ratio.
2. samples/s of a bsp run (1 PS + 2 workers) against torch DDP (gloo, 2 processes) with
   the same model, batches and number of steps (runs alternate, best of --repeats; likewise part 1). For the bsp run, samples/s = applied
   samples / phase duration from the trace (start-up excluded, as for DDP).

    python bench/runtime_throughput.py [--hidden 50000] [--model cnn] [--batch 32] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.data import SyntheticData  # noqa: E402
from runtime.models import build_model, count_parameters  # noqa: E402
from runtime.testing import run_cli, spec_args, write_specs  # noqa: E402
from traces.jsonl import read_trace  # noqa: E402


def _free_port() -> int:
    from runtime.launch import free_port

    return free_port()


def _leave() -> None:
    """Exit without tearing gloo down under its own threads (that can abort at exit)."""
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)


def _raw_pingpong(rank: int, port: int, n_floats: int, reps: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    buf = torch.ones(n_floats)
    back = torch.empty(n_floats)
    times = []
    dist.barrier()
    for i in range(reps + 2):
        t0 = time.perf_counter()
        if rank == 1:
            dist.send(buf, 0)
            dist.recv(back, 0)
        else:
            dist.recv(back, 1)
            dist.send(buf, 1)
        times.append(time.perf_counter() - t0)
    if rank == 1:
        rates = sorted(2 * 4 * n_floats / t / 1e9 for t in times[2:])
        Path(out).write_text(json.dumps({"gbps": rates[len(rates) // 2]}))
    _leave()


def raw_gloo_gbps(n_floats: int, reps: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "raw.json")
        mp.spawn(_raw_pingpong, args=(_free_port(), n_floats, reps, out), nprocs=2)
        return json.loads(Path(out).read_text())["gbps"]


def ps_gbps(hidden: int, steps: int, work: Path) -> tuple[float, float, int]:
    model = f"mlp:{hidden}"
    d = work / "ps"
    write_specs(d, [("w0", 1, steps)], sync="bsp", exchange="gradient", epochs=1, lr=0.01, model=model)
    r = run_cli(["run", *spec_args(d), "--out", d / "out", "--local", "--no-emulate", "--eval-every", "0",
                 "--eval-samples", "10"], timeout_s=600)
    if r.returncode:
        raise SystemExit(r.stderr)
    tr = read_trace(d / "out" / "trace.jsonl")
    pushes, pulls = tr.of_kind("push")[2:], tr.of_kind("pull")[2:]  # skip warm-up exchanges
    def median(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    moved = [p["bytes"] + q["bytes"] for p, q in zip(pushes, pulls)]
    whole = median([b / (q["end_s"] - p["start_s"]) / 1e9 for b, p, q in zip(moved, pushes, pulls)])
    transfer = median([b / (p["end_s"] - p["start_s"] + q["end_s"] - q["start_s"]) / 1e9
                       for b, p, q in zip(moved, pushes, pulls)])
    return whole, transfer, pushes[0]["bytes"]


def bsp_samples_per_s(model: str, batch: int, steps: int, work: Path) -> float:
    d = work / f"bsp-{model.replace(':', '')}"
    samples = batch * steps
    write_specs(d, [("w0", batch, samples), ("w1", batch, samples)], sync="bsp", exchange="gradient", epochs=1,
                lr=0.01, model=model, resolution=32)
    r = run_cli(["run", *spec_args(d), "--out", d / "out", "--local", "--no-emulate", "--eval-every", "0",
                 "--eval-samples", "10"], timeout_s=600)
    if r.returncode:
        raise SystemExit(r.stderr)
    tr = read_trace(d / "out" / "trace.jsonl")
    ph = tr.of_kind("phase")[0]
    return 2 * samples / (ph["end_s"] - ph["start_s"])


def _ddp_worker(rank: int, port: int, model: str, batch: int, steps: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    data = SyntheticData(2 * batch * steps, 10, 0)
    net = torch.nn.parallel.DistributedDataParallel(build_model(model, 10, seed=0))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    dist.barrier()
    t0 = time.perf_counter()
    for k in range(steps):
        idx = torch.arange(batch) + (2 * k + rank) * batch
        x, y = data.batch(idx.numpy(), 32)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    dist.barrier()
    elapsed = time.perf_counter() - t0
    if rank == 0:
        Path(out).write_text(json.dumps({"samples_per_s": 2 * batch * steps / elapsed}))
    _leave()


def ddp_samples_per_s(model: str, batch: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "ddp.json")
        mp.spawn(_ddp_worker, args=(_free_port(), model, batch, steps, out), nprocs=2)
        return json.loads(Path(out).read_text())["samples_per_s"]


def transfer_part(args, work: Path) -> None:
    """Part 1: the PS's push+pull GB/s against raw gloo send/recv of the same bytes."""
    n = count_parameters(build_model(f"mlp:{args.hidden}", 10))
    ps = ps_transfer = raw = 0.0
    for _ in range(args.repeats):  # alternate, keep the best of each
        whole, transfer, nbytes = ps_gbps(args.hidden, args.exchanges, work)
        ps, ps_transfer = max(ps, whole), max(ps_transfer, transfer)
        raw = max(raw, raw_gloo_gbps(n, args.exchanges - 2))
    print(f"push+pull, {n:,} parameters ({nbytes / 1e6:.1f} MB each way), median of {args.exchanges - 2} "
          f"exchanges, best of {args.repeats} runs:")
    print(f"  raw gloo send/recv ping-pong               {raw:6.2f} GB/s")
    print(f"  PS push+pull transfers (push + pull time)  {ps_transfer:6.2f} GB/s  "
          f"ratio {ps_transfer / raw:.2f}x (target >= 0.8x)")
    print(f"  PS exchange incl. SGD apply on the PS      {ps:6.2f} GB/s  ratio {ps / raw:.2f}x")


def ddp_part(args, model: str, work: Path) -> None:
    """Part 2: bsp samples/s against DDP, runs interleaved; best and median of each."""
    bsp, ddp = [], []
    for _ in range(args.repeats):  # alternate: other load on the machine hits both alike
        bsp.append(bsp_samples_per_s(model, args.batch, args.steps, work))
        ddp.append(ddp_samples_per_s(model, args.batch, args.steps))
    p = count_parameters(build_model(model, 10))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"bsp vs DDP, model {model} ({p:,} parameters), 2 workers x batch {args.batch}, {args.steps} steps, "
          f"{args.repeats} interleaved runs (best / median):")
    print(f"  hybridps bsp (1 PS + 2 workers) {max(bsp):8.1f} / {med(bsp):8.1f} samples/s")
    print(f"  torch DDP gloo (2 processes)    {max(ddp):8.1f} / {med(ddp):8.1f} samples/s")
    print(f"  ratio bsp / DDP                 {max(bsp) / max(ddp):8.2f}x / {med(bsp) / med(ddp):5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=50_000, help="hidden units of the wide MLP (50000: ~10M parameters)")
    ap.add_argument("--exchanges", type=int, default=32)
    ap.add_argument("--models", default="cnn,mlp:50000", help="models for the bsp-vs-DDP comparison")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each kind, interleaved")
    ap.add_argument("--no-transfer", action="store_true", help="skip part 1 (PS push+pull against raw gloo)")
    args = ap.parse_args()
    print(f"# cores: {os.cpu_count()}, torch {torch.__version__}, gloo on 127.0.0.1, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.no_transfer:
            transfer_part(args, work)
        for model in args.models.split(","):
            ddp_part(args, model, work)
        print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
