"""Measure training-iteration times for `hybridps calibrate`: per resolution and batch
size, the median of several timed iterations (forward, backward, SGD step on synthetic
data) after a warm-up, written as `profile` records.

The largest batch that fits is found on CUDA by catching out-of-memory (doubling, then
bisection); on a CPU memory is not the limit, so a cap is taken instead. Either way it is
timed and recorded as the largest profiled batch, which calibrate reads as max_batch.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from hybridps.errors import UserError
from runtime.data import SyntheticData
from runtime.models import build_model
from traces import TraceWriter
from traces.records import header


def default_device_name(device: str) -> str:
    """A cluster-file device name for this machine: 'cpu', or the GPU's name ('nvidia-h100-80gb-hbm3')."""
    if device == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(torch.device(device)).lower()).strip("-")


def largest_fitting(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """The largest batch in [1, limit] for which `fits(batch)` holds, assuming fits is
    monotone: double from `start` until it fails, then bisect. 0 if not even 1 fits."""
    lo, hi = 0, None  # lo fits, hi does not
    b = max(1, min(start, limit))
    while True:
        if fits(b):
            lo = b
            if b == limit:
                return b
            b = min(2 * b, limit)
        else:
            hi = b
            break
    if lo == 0:  # the start did not fit: bisect below it
        lo_try = 1
        if not fits(lo_try):
            return 0
        lo = lo_try
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class _Bench:
    """One model on one device, with an SGD optimiser, ready to time iterations. An
    iteration includes making its batch (synthetic images resized to the resolution, as
    a worker of `hybridps run` does), so the profile's b carries that cost too."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    data: SyntheticData
    _next: int = 0

    def iteration(self, batch: int, resolution: int) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        idx = np.arange(self._next, self._next + batch)
        self._next += batch
        x, y = self.data.batch(idx, resolution)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0

    def fits(self, batch: int, resolution: int) -> bool:
        try:
            self.iteration(batch, resolution)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def time(self, batch: int, resolution: int, warmup: int, repeats: int) -> float:
        for _ in range(warmup):
            self.iteration(batch, resolution)
        return statistics.median(self.iteration(batch, resolution) for _ in range(repeats))


def profile(model_name: str, resolutions: Iterable[int], batches: Iterable[int], out: str, *,
            device: str = "cpu", classes: int = 10, device_name: str | None = None, max_batch: int = 256,
            warmup: int = 2, repeats: int = 5, threads: int | None = None,
            log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Time iterations and write a profile trace to `out`; returns the profile records.

    On CUDA `max_batch` bounds the out-of-memory search; on CPU it is the largest batch.
    """
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError("profile: --device cuda but torch sees no CUDA device; use --device cpu")
    elif device != "cpu":
        raise UserError(f"profile: --device must be cpu or cuda, got {device!r}")
    if threads:
        torch.set_num_threads(threads)
    resolutions, batches = sorted(set(resolutions)), sorted(set(batches))
    if not resolutions or not batches or min(resolutions) < 1 or min(batches) < 1:
        raise UserError("profile: give positive --resolutions and --batches")
    dev = torch.device(device)
    name = device_name or default_device_name(device)
    model = build_model(model_name, classes).to(dev)
    data = SyntheticData(max(max_batch, max(batches)) * 4, classes)
    bench = _Bench(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), dev, data)
    meta = {"model": model_name, "classes": classes, "torch": torch.__version__, "torch_device": device,
            "threads": torch.get_num_threads(), "warmup": warmup, "repeats": repeats}
    records: list[dict] = []
    with TraceWriter(out, header("profile", meta=meta)) as writer:
        for res in resolutions:
            if dev.type == "cuda":
                largest = largest_fitting(lambda b: bench.fits(b, res), max(batches), max_batch)
                if largest == 0:
                    raise UserError(f"profile: not even a batch of 1 fits on {name} at resolution {res}")
            else:
                largest = max_batch
            todo = [b for b in batches if b < largest] + [largest]
            skipped = [b for b in batches if b > largest]
            if skipped:
                log(f"resolution {res}: batches {skipped} exceed the largest batch {largest}; skipped")
            for b in todo:
                t = bench.time(b, res, warmup, repeats)
                rec = {"kind": "profile", "device": name, "resolution": res, "batch": b, "iteration_s": t,
                       "repeats": repeats, "model": model_name}
                writer.write(rec)
                records.append(rec)
                log(f"{name} resolution {res:>4} batch {b:>6}: {t * 1e3:9.3f} ms")
    return records
