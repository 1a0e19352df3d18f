"""Helpers for the runtime's tests and benchmark: tiny cluster/job/plan files and a
single-process SGD reference that sees exactly the batches a bsp run sees."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from runtime.data import epoch_permutation, load_dataset, share_indices
from runtime.context import num_classes
from runtime.models import build_model, count_parameters


def write_specs(d: Path, workers: list[tuple[str, int, int]], *, sync: str = "bsp", exchange: str = "gradient",
                epochs: int = 2, lr: float = 0.1, staleness: int | None = None, local_steps: int | None = None,
                compression: dict | None = None, slowdown: dict[str, float] | None = None, resolution: int = 8,
                model: str = "mlp", data: str = "synthetic", momentum: float = 0.9, weight_decay: float = 1e-4,
                ps_count: int = 1, phases: list[dict] | None = None,
                s_per_sample: float = 0.0001) -> tuple[Path, Path, Path]:
    """workers: (name, batch, samples per epoch). Writes cluster.toml, job.toml, plan.json;
    the device's t(B) = s_per_sample x B + 1 ms (what `run --compute-time model` sleeps)."""
    d.mkdir(parents=True, exist_ok=True)
    slowdown = slowdown or {}
    resolutions = sorted({resolution, *(ph["resolution"] for ph in phases or [])})
    lines = ['format = "hybridps.cluster/1"', "[ps]", f"count = {ps_count}", "bandwidth_gbps = 1000.0",
             "latency_ms = 0.0"]
    for r in resolutions:
        lines += [f"[devices.cpu.resolutions.{r}]", f"a = {s_per_sample}", "b = 0.001", "max_batch = 4096"]
    for name, _, _ in workers:
        lines += ["[[workers]]", f'name = "{name}"', 'device = "cpu"', "bandwidth_gbps = 1000.0", "latency_ms = 0.0",
                  f"slowdown = {float(slowdown.get(name, 1.0))}"]
    (d / "cluster.toml").write_text("\n".join(lines) + "\n")
    samples = sum(s for _, _, s in workers)
    parameters = count_parameters(build_model(model, num_classes(data, samples, 0, None)))  # `run` checks it
    (d / "job.toml").write_text(
        f'format = "hybridps.job/1"\n[model]\nname = "{model}"\nparameters = {parameters}\n[data]\nname = "{data}"\n'
        f"samples = {samples}\n[train]\nepochs = {sum(ph['epochs'] for ph in phases) if phases else epochs}\n"
        f"resolutions = {resolutions}\nbase_batch = 32\n"
        f"base_lr = {lr}\nmomentum = {momentum}\nweight_decay = {weight_decay}\n")
    phase = {"epochs": epochs, "resolution": resolution, "sync": sync, "staleness": staleness, "exchange": exchange,
             "local_steps": local_steps, "lr": lr, "compression": compression or {"kind": "none"},
             "workers": [{"name": n, "batch": b, "samples": s} for n, b, s in workers]}
    plan = {"format": "hybridps.plan/1", "phases": phases or [phase]}
    (d / "plan.json").write_text(json.dumps(plan, indent=1))
    return d / "cluster.toml", d / "job.toml", d / "plan.json"


def reference_bsp_sgd(workers: list[tuple[str, int, int]], epochs: int, lr: float, momentum: float,
                      weight_decay: float, seed: int = 0, model: str = "mlp", data: str = "synthetic",
                      resolution: int = 8, losses: list[float] | None = None,
                      rebalanced: tuple[int, list[tuple[str, int, int]]] | None = None) -> torch.Tensor:
    """Single-process SGD where each step uses the union of the workers' batches of that
    step (what a bsp gradient-exchange run must reproduce). Returns the flat parameters;
    appends each step's mean loss on the union to `losses` when given. `rebalanced`:
    (epoch, workers) -- from that epoch on, these batches and shares (a policy's rebalance)."""
    samples = sum(s for _, _, s in workers)
    ds = load_dataset(data, samples, seed)
    net = build_model(model, ds.num_classes, seed=seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    plan_workers = workers
    for epoch in range(epochs):
        if rebalanced is not None:
            workers = rebalanced[1] if epoch >= rebalanced[0] else plan_workers
        shares = [s for _, _, s in workers]
        perm = epoch_permutation(samples, epoch, seed)
        own = [share_indices(perm, shares, i) for i in range(len(workers))]
        steps = math.ceil(workers[0][2] / workers[0][1])
        for k in range(steps):
            idx = torch.cat([torch.from_numpy(own[i][k * b: (k + 1) * b]) for i, (_, b, _) in enumerate(workers)])
            x, y = ds.batch(idx.numpy(), resolution)
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            if losses is not None:
                losses.append(float(loss.detach()))
    return torch.nn.utils.parameters_to_vector(net.parameters()).detach()


def run_cli(args: list[str], timeout_s: float = 120.0, **kw):
    """`python -m hybridps ARGS` in a subprocess (the real entry point)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "hybridps", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout_s, env=env, **kw)


def spec_args(d: Path) -> list[str]:
    return ["--cluster", d / "cluster.toml", "--job", d / "job.toml", "--plan", d / "plan.json"]


def per_sample_noise_scale(params: torch.Tensor, model: str = "cnn", data: str = "digits", resolution: int = 8,
                           samples: int = 1437, seed: int = 0) -> dict:
    """The exact gradient noise scale of the whole training set at the flat parameters
    `params`, from every per-sample gradient (torch.func): |G|^2 of the full-data mean
    gradient, tr(Sigma) of the per-sample gradients' sample covariance (divisor N - 1), and
    their ratio -- the reference for the PS's estimate (traces.noise_scale)."""
    from torch.func import functional_call, grad, vmap

    import numpy as np

    ds = load_dataset(data, samples, seed)
    net = build_model(model, ds.num_classes, seed=seed)
    torch.nn.utils.vector_to_parameters(params, net.parameters())
    named = {k: v.detach() for k, v in net.named_parameters()}

    def loss(p, x, y):
        return F.cross_entropy(functional_call(net, p, (x[None],)), y[None])

    x, y = ds.batch(np.arange(ds.train_size), resolution)
    g = vmap(grad(loss), in_dims=(None, 0, 0))(named, x, y)
    flat = torch.cat([v.reshape(v.shape[0], -1) for v in g.values()], 1).double()
    mean = flat.mean(0)
    grad_sq = float(mean @ mean)
    trace_cov = float(((flat - mean) ** 2).sum()) / (flat.shape[0] - 1)
    return {"noise_scale": trace_cov / grad_sq, "grad_sq": grad_sq, "trace_cov": trace_cov}
