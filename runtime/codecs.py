"""Push compression codecs (BytePS-style) with error feedback.

Each codec turns a flat float32 tensor of n elements into a flat uint8 tensor whose
size is exactly `hybridps.spec.compressed_bytes(compression, n)`:

  none       the fp32 values (4n bytes)
  topk       k = topk_count(ratio, n) largest magnitudes: int32 indices, then fp32 values
  randomk    k seeded-random elements, same layout as topk
  onebit     sign bits packed 8 per byte (1 = negative), then an fp32 scale
             (mean |x| with scaling, else 1.0)
  dithering  per element 1 sign bit + ceil(log2(levels+1)) bits of a stochastically
             rounded level in [0, levels], packed little-endian, then the fp32 norm
             (max |x| or the l2 norm)

`ErrorFeedback` keeps the worker's residual: it compresses input + residual and keeps
(input + residual) - decompressed for the next push.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hybridps.spec import Compression, compressed_bytes, topk_count


def _f32_bytes(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32).view(np.uint8)


def _pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack each code's low `bits` bits (little-endian bit order) into bytes."""
    if bits == 1:
        return np.packbits(codes.astype(np.uint8), bitorder="little")
    shifts = np.arange(bits, dtype=np.uint32)
    bitmat = ((codes.astype(np.uint32)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bitmat.reshape(-1), bitorder="little")


def _unpack_bits(packed: np.ndarray, n: int, bits: int) -> np.ndarray:
    flat = np.unpackbits(packed, count=n * bits, bitorder="little")
    if bits == 1:
        return flat.astype(np.uint32)
    weights = (1 << np.arange(bits, dtype=np.uint32))
    return flat.reshape(n, bits).astype(np.uint32) @ weights


class Codec:
    """Compress/decompress one slice of `n` elements under `compression`."""

    def __init__(self, compression: Compression, n: int, seed: int = 0):
        self.c = compression
        self.n = n
        self.nbytes = compressed_bytes(compression, n)
        self._rng = np.random.default_rng([seed, 4049])
        if compression.kind in ("topk", "randomk"):
            self.k = topk_count(compression.ratio, n)
        if compression.kind == "dithering":
            self.level_bits = math.ceil(math.log2(compression.levels + 1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        kind = self.c.kind
        v = x.detach().to(torch.float32).reshape(-1).cpu()
        if kind == "none":
            out = v.contiguous().view(torch.uint8)  # no copy: the sender waits before touching it again
        else:
            a = v.numpy()
            if kind in ("topk", "randomk"):
                if kind == "topk":
                    idx = torch.topk(v.abs(), self.k, sorted=False).indices.numpy()
                else:
                    idx = self._rng.choice(self.n, self.k, replace=False)
                idx = np.sort(idx).astype(np.int32)
                raw = np.concatenate([idx.view(np.uint8), _f32_bytes(a[idx])])
            elif kind == "onebit":
                scale = float(np.abs(a).mean()) if self.c.onebit_scaling else 1.0
                raw = np.concatenate([np.packbits(a < 0, bitorder="little"), _f32_bytes(np.array([scale]))])
            elif kind == "dithering":
                s = self.c.levels
                norm = float(np.abs(a).max()) if self.c.dithering_normalize == "max" else float(np.linalg.norm(a))
                scaled = np.abs(a) / norm * s if norm > 0 else np.zeros_like(a)
                low = np.floor(scaled)
                level = low + (self._rng.random(self.n) < (scaled - low))
                level = np.minimum(level, s).astype(np.uint32)
                codes = level | ((a < 0).astype(np.uint32) << self.level_bits)
                raw = np.concatenate([_pack_bits(codes, 1 + self.level_bits), _f32_bytes(np.array([norm]))])
            else:
                raise AssertionError(kind)
            out = torch.from_numpy(np.ascontiguousarray(raw))
        assert out.numel() == self.nbytes, (kind, out.numel(), self.nbytes)
        return out

    def decode(self, payload: torch.Tensor) -> torch.Tensor:
        kind = self.c.kind
        if kind == "none":  # a view: the PS uses it before the worker can send again
            return payload.reshape(-1).view(torch.float32)
        raw = payload.reshape(-1).cpu().numpy()
        out = np.zeros(self.n, dtype=np.float32)
        if kind in ("topk", "randomk"):
            idx = raw[: 4 * self.k].view(np.int32)
            out[idx] = raw[4 * self.k: 8 * self.k].view(np.float32)
        elif kind == "onebit":
            nb = math.ceil(self.n / 8)
            neg = np.unpackbits(raw[:nb], count=self.n, bitorder="little").astype(bool)
            scale = raw[nb: nb + 4].view(np.float32)[0]
            out[:] = np.where(neg, -scale, scale)
        elif kind == "dithering":
            bits = 1 + self.level_bits
            nb = math.ceil(self.n * bits / 8)
            codes = _unpack_bits(raw[:nb], self.n, bits)
            norm = raw[nb: nb + 4].view(np.float32)[0]
            level = (codes & ((1 << self.level_bits) - 1)).astype(np.float32)
            sign = np.where((codes >> self.level_bits) & 1, -1.0, 1.0).astype(np.float32)
            out[:] = sign * level / self.c.levels * norm
        return torch.from_numpy(out)


class ErrorFeedback:
    """Worker-side codec with an optional residual carried from one push to the next."""

    def __init__(self, compression: Compression, n: int, seed: int = 0):
        self.codec = Codec(compression, n, seed)
        self.enabled = compression.uses_error_feedback
        self.residual = torch.zeros(n, dtype=torch.float32) if self.enabled else None
        self.input_sq = 0.0  # |what the last encode compressed|^2 (the worker's train record)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to(torch.float32).reshape(-1).cpu()
        if not self.enabled:
            self.input_sq = float(torch.dot(x, x))
            return self.codec.encode(x)
        corrected = x + self.residual
        self.input_sq = float(torch.dot(corrected, corrected))
        payload = self.codec.encode(corrected)
        self.residual = corrected - self.codec.decode(payload)
        return payload
