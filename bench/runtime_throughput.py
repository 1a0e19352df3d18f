"""Runtime throughput, all in one run (CPU, gloo over 127.0.0.1):

1. PS push+pull GB/s of the real runtime path (`hybridps run`, 1 PS + 1 worker, bsp,
   gradient exchange, a wide MLP so that transfers dominate) against raw gloo
   send/recv of the same bytes, back and forth, between two processes.
   From the run's trace, per exchange: transfers = (push + pull bytes) / (push time +
   pull time), and the whole exchange = the same bytes / (pull end - push start), which
   adds the PS's decode and SGD step between the two (pushes in one piece, `--bucket-mb 0`,
   so that a push record holds the whole transfer). Medians over the exchanges (and
   over the raw round trips), so that other load on the machine does not decide the ratio.
2. samples/s of a bsp run (1 PS + 2 workers, `--no-emulate`) with its gradient pushed in
   buckets during backward (`--bucket-mb`, default 25), the same without (`--bucket-mb 0`),
   and torch DDP (gloo, 2 processes, bucket_cap_mb the same) with the same model, batches,
   resolution and number of steps; the three alternate, --repeats times each (likewise
   part 1); best and median of each. For the bsp runs, samples/s = applied samples / phase
   duration from the trace (start-up excluded, as for DDP). Then where a bsp step's time
   goes, from the compute, push and pull records of the last bucketed run.

    python bench/runtime_throughput.py [--hidden 50000] [--models cnn,mlp:50000] [--batch 32] [--steps 30]
    python bench/runtime_throughput.py --no-transfer --models resnet18 --resolution 8 --steps 20
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
                 "--eval-samples", "10", "--bucket-mb", "0"], timeout_s=600)  # the push record: the whole push
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


def bsp_run(model: str, batch: int, steps: int, resolution: int, bucket_mb: float, work: Path):
    """One bsp run (1 PS + 2 workers); returns (samples/s, its trace)."""
    d = work / f"bsp-{model.replace(':', '')}"
    samples = batch * steps
    write_specs(d, [("w0", batch, samples), ("w1", batch, samples)], sync="bsp", exchange="gradient", epochs=1,
                lr=0.01, model=model, resolution=resolution)
    r = run_cli(["run", *spec_args(d), "--out", d / "out", "--local", "--no-emulate", "--eval-every", "0",
                 "--eval-samples", "10", "--bucket-mb", str(bucket_mb), "--overwrite"], timeout_s=600)
    if r.returncode:
        raise SystemExit(r.stderr)
    tr = read_trace(d / "out" / "trace.jsonl")
    ph = tr.of_kind("phase")[0]
    return 2 * samples / (ph["end_s"] - ph["start_s"]), tr


def step_breakdown(tr) -> dict[str, float]:
    """Per worker-step mean seconds of a bsp run, from its records (a worker's k-th push is
    in round k): compute (forward and backward, the bucketed pieces' sends among it), push
    (after backward: the remaining pieces, the header and records), other (waiting for the
    round's last push), ps (from the round's last push to the reply: the PS's hand-off,
    apply and reply), pull, and rest (the worker's loop between a pull and its next compute).
    A push ends when its sends have completed, which for a tiny model can be after the PS
    answered: its ps part may then come out slightly negative."""
    parts = {"compute": 0.0, "push": 0.0, "other": 0.0, "ps": 0.0, "pull": 0.0, "rest": 0.0}
    rec = {w: {k: [r for r in tr.of_kind(k) if r["worker"] == w] for k in ("compute", "push", "pull")}
           for w in tr.header["meta"]["workers"]}
    rounds = min(len(r["pull"]) for r in rec.values())
    for k in range(rounds):
        last_push = max(r["push"][k]["end_s"] for r in rec.values())
        for r in rec.values():
            c, p, q = r["compute"][k], r["push"][k], r["pull"][k]
            parts["compute"] += c["end_s"] - c["start_s"]
            parts["push"] += p["end_s"] - p["start_s"]
            parts["other"] += last_push - p["end_s"]
            parts["ps"] += q["start_s"] - last_push
            parts["pull"] += q["end_s"] - q["start_s"]
            parts["rest"] += r["compute"][k + 1]["start_s"] - q["end_s"] if k + 1 < len(r["compute"]) else 0.0
    return {k: v / (rounds * len(rec)) for k, v in parts.items()}


def _ddp_worker(rank: int, port: int, model: str, batch: int, steps: int, resolution: int, bucket_mb: float,
                out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    data = SyntheticData(2 * batch * steps, 10, 0)  # prepares the resolution at its first batch (timed, as in bsp)
    net = torch.nn.parallel.DistributedDataParallel(build_model(model, 10, seed=0), bucket_cap_mb=bucket_mb or 25)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    dist.barrier()
    t0 = time.perf_counter()
    for k in range(steps):
        idx = torch.arange(batch) + (2 * k + rank) * batch
        x, y = data.batch(idx.numpy(), resolution)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    dist.barrier()
    elapsed = time.perf_counter() - t0
    if rank == 0:
        Path(out).write_text(json.dumps({"samples_per_s": 2 * batch * steps / elapsed}))
    _leave()


def ddp_samples_per_s(model: str, batch: int, steps: int, resolution: int, bucket_mb: float) -> float:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "ddp.json")
        mp.spawn(_ddp_worker, args=(_free_port(), model, batch, steps, resolution, bucket_mb, out), nprocs=2)
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
    """Part 2: bsp with and without buckets against DDP, runs interleaved; best and median."""
    load0 = os.getloadavg()[0]
    runs: dict[str, list[float]] = {"bucketed": [], "whole": [], "ddp": []}
    push_ms: dict[str, list[float]] = {"bucketed": [], "whole": []}  # push records: what is left after backward
    for _ in range(args.repeats):  # alternate: other load on the machine hits all alike
        for kind, mb in (("bucketed", args.bucket_mb), ("whole", 0)):
            rate, tr = bsp_run(model, args.batch, args.steps, args.resolution, mb, work)
            runs[kind].append(rate)
            push_ms[kind] += [1e3 * (p["end_s"] - p["start_s"]) for p in tr.of_kind("push")]
            if kind == "bucketed":
                last = tr
        runs["ddp"].append(ddp_samples_per_s(model, args.batch, args.steps, args.resolution, args.bucket_mb))
    p = count_parameters(build_model(model, 10))
    best = {k: max(v) for k, v in runs.items()}
    med = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
    print(f"bsp vs DDP, model {model} ({p:,} parameters, {4 * p / 1e6:.1f} MB), 2 workers x batch {args.batch} at "
          f"{args.resolution} px, {args.steps} steps, {args.repeats} interleaved runs of each (best / median), "
          f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}:")
    names = {"bucketed": f"bsp, --bucket-mb {args.bucket_mb:g}", "whole": "bsp, --bucket-mb 0",
             "ddp": "torch DDP gloo (2 procs)"}
    for k, name in names.items():
        print(f"  {name:28s} {best[k]:8.1f} / {med[k]:8.1f} samples/s")
    for a, b in (("bucketed", "ddp"), ("whole", "ddp"), ("bucketed", "whole")):
        print(f"  {'ratio ' + a + ' / ' + b:28s} {best[a] / best[b]:8.2f}x / {med[a] / med[b]:7.2f}x")
    med_push = {k: sorted(v)[len(v) // 2] for k, v in push_ms.items()}
    print(f"  push record (after backward), median   {med_push['bucketed']:.1f} ms with buckets, "
          f"{med_push['whole']:.1f} ms in one piece")
    parts = step_breakdown(last)
    total = sum(parts.values())
    pushes = last.of_kind("push")
    early = sum(q.get("buckets_in_backward", 0) for q in pushes) / len(pushes)
    how = f"pieces per push {pushes[0]['buckets']}, handed to gloo during backward {early:.1f} on average" \
        if "buckets" in pushes[0] else "pushes in one piece (the gradient fits one bucket)"
    print(f"  last bucketed run, per worker-step {1e3 * total:.1f} ms: "
          + ", ".join(f"{k} {1e3 * v:.1f} ms ({100 * v / total:.0f}%)" for k, v in parts.items()) + f"; {how}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=50_000, help="hidden units of the wide MLP (50000: ~10M parameters)")
    ap.add_argument("--exchanges", type=int, default=32)
    ap.add_argument("--models", default="cnn,mlp:50000", help="models for the bsp-vs-DDP comparison")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--resolution", type=int, default=32, help="input pixels of part 2 (resnet18: 8 on CPU)")
    ap.add_argument("--bucket-mb", type=float, default=25.0, help="bsp's --bucket-mb and DDP's bucket_cap_mb")
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
