"""What a PS shard measures of the pushed gradients for the gradient noise scale
(traces.noise_scale): per pushed vector one dot product on the shard's slice, kept as
plain floats; the estimate is formed once, at the phase end, on shard 0.

bsp (two-batch): per round each worker's |g_i|^2 and the applied average's |G_big|^2.
With S > 1 shards every quantity is a sum over the shards' slices, and bsp rounds are the
same on every shard, so at the phase end shards 1..S-1 send their per-round partial sums
to shard 0 (one small float64 message each, tag TAG_NOISE).
asp/ssp (differenced): per push |g|^2 and g . g_previous (one buffer holding the previous
push). Push order can differ between shards, so the partial dot products do not line up:
the differenced estimate is made with one PS shard only (S = 1), none otherwise.
Gradient exchange without lossy compression only: a lossy codec's decoded vector is not
the worker's gradient, and model exchange pushes weights.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from traces.noise_scale import NoiseEstimate, differenced, two_batch

TAG_NOISE = 4  # beside runtime.protocol's tags 0-3


def measures_noise(phase, shards: int) -> bool:
    """Whether a phase gets a noise record (see the module docstring)."""
    if phase.exchange != "gradient" or phase.compression.lossy:
        return False
    return phase.sync == "bsp" or shards == 1


class NoiseMeter:
    def __init__(self, sync: str):
        self.bsp = sync == "bsp"
        self.batches: list = []  # bsp: per round the workers' batches; else per push the batch
        self.small_sq: list[list[float]] = []  # bsp
        self.big_sq: list[float] = []  # bsp
        self.sq: list[float] = []  # asp/ssp
        self.dot_prev: list[float] = []  # asp/ssp
        self.prev: torch.Tensor | None = None

    def add_round(self, items: list[tuple[int, torch.Tensor]], applied: torch.Tensor) -> None:
        """bsp: items = (samples, mean gradient) per worker; `applied` = their weighted average."""
        self.batches.append([n for n, _ in items])
        self.small_sq.append([float(torch.dot(v, v)) for _, v in items])
        self.big_sq.append(float(torch.dot(applied, applied)))

    def add_push(self, samples: int, vec: torch.Tensor) -> None:
        """asp/ssp: one pushed mean gradient."""
        self.batches.append(samples)
        self.sq.append(float(torch.dot(vec, vec)))
        if self.prev is None:
            self.dot_prev.append(0.0)
            self.prev = vec.detach().clone()
        else:
            self.dot_prev.append(float(torch.dot(vec, self.prev)))
            self.prev.copy_(vec)

    def _partials(self) -> torch.Tensor:
        return torch.tensor([s + [b] for s, b in zip(self.small_sq, self.big_sq)], dtype=torch.float64)

    def send_partials(self) -> None:
        """Shard s > 0 (bsp): its per-round partial sums to shard 0."""
        if self.bsp and self.big_sq:
            dist.send(self._partials().reshape(-1).contiguous(), 0, tag=TAG_NOISE)

    def gather_partials(self, shards: int) -> None:
        """Shard 0 (bsp): add the other shards' partial sums to its own."""
        if not (self.bsp and self.big_sq) or shards == 1:
            return
        total = self._partials()
        for s in range(1, shards):
            buf = torch.empty(total.numel(), dtype=torch.float64)
            dist.recv(buf, s, tag=TAG_NOISE)
            total += buf.reshape(total.shape)
        self.small_sq = [row[:-1] for row in total.tolist()]
        self.big_sq = [row[-1] for row in total.tolist()]

    def estimate(self, population: int) -> NoiseEstimate | None:
        if self.bsp:
            return two_batch(self.batches, self.small_sq, self.big_sq, population)
        return differenced(self.batches, self.sq, self.dot_prev, population)
