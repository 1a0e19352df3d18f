"""Bucketed gradient pushes: the worker sends its gradient in pieces while backward still
runs (as DDP and BytePS overlap communication with computation), the PS shards receive
them into their push buffers.

`bucket_layout` is the one rule both sides follow: the worker sends these pieces, each
shard posts a receive for each of its own, in the same order. The worker's BUCKETS
message carries the bucket size, so the two sides compute the layout from the same numbers.
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

import torch
import torch.distributed as dist

from runtime import protocol as P

MB_BYTES = 1024 * 1024  # --bucket-mb's MB, as DDP's bucket_cap_mb
FLOAT_BYTES = 4


class Piece(NamedTuple):
    """One bucket piece: elements [lo, hi) of the flat gradient, all in PS shard `shard`."""
    shard: int
    lo: int
    hi: int


def bucket_bytes(bucket_mb: float) -> int:
    """--bucket-mb in bytes (0: no buckets)."""
    return int(bucket_mb * MB_BYTES)


def overlaps(n_params: int, cap_bytes: int) -> bool:
    """Buckets only pay when the gradient spans more than one: a single bucket is ready
    when backward ends, and its extra message would be all it changed."""
    return 0 < cap_bytes < FLOAT_BYTES * n_params


def bucket_layout(n_params: int, bounds: list[tuple[int, int]], cap_bytes: int) -> list[Piece]:
    """The pieces of a bucketed push, in sending order: slices of `cap_bytes` (at least one
    float) taken from the END of the flat vector (backward finishes the last layers first),
    each split at the PS shard bounds so that a piece goes to one shard."""
    cap = max(1, cap_bytes // FLOAT_BYTES)
    starts = [lo for lo, _ in bounds]
    pieces = []
    hi = n_params
    while hi > 0:
        lo = max(0, hi - cap)
        top = hi
        while top > lo:  # from the slice's end down, one piece per shard it touches
            s = bisect.bisect_right(starts, top - 1) - 1
            bottom = max(lo, bounds[s][0])
            pieces.append(Piece(s, bottom, top))
            top = bottom
        hi = lo
    return pieces


def shard_pieces(layout: list[Piece], shard: int) -> list[Piece]:
    """The pieces one shard receives, in the order they are sent."""
    return [pc for pc in layout if pc.shard == shard]


class BucketPusher:
    """The worker's side: sends each piece of `flat_grad` as soon as every parameter that
    overlaps it has its gradient accumulated (post-accumulate-grad hooks, counting), in
    layout order; `finish` sends what is left (parameters without a gradient) and waits."""

    def __init__(self, params: list[torch.Tensor], flat_grad: torch.Tensor, bounds: list[tuple[int, int]],
                 cap_bytes: int):
        n = flat_grad.numel()
        self.cap_bytes = cap_bytes
        self.flat_grad = flat_grad
        self.layout = bucket_layout(n, bounds, cap_bytes)
        self.shards = len(bounds)
        self.armed = False
        self.works: list = []
        self.in_backward = 0  # pieces of the last push sent before its backward ended
        self.bytes_per_shard = [0] * self.shards  # what every push sends each shard
        for pc in self.layout:
            self.bytes_per_shard[pc.shard] += (pc.hi - pc.lo) * FLOAT_BYTES
        offsets, off = [], 0
        for p in params:
            offsets.append(off)
            off += p.numel()
        # per parameter, the pieces it overlaps; per piece, how many parameters overlap it
        self.pieces_of: list[list[int]] = [[] for _ in params]
        self.overlaps = [0] * len(self.layout)
        for j, pc in enumerate(self.layout):
            first = bisect.bisect_right(offsets, pc.lo) - 1
            last = bisect.bisect_left(offsets, pc.hi) - 1
            for i in range(first, last + 1):
                if params[i].numel():
                    self.pieces_of[i].append(j)
                    self.overlaps[j] += 1
        for i, p in enumerate(params):
            p.register_post_accumulate_grad_hook(lambda _p, i=i: self._accumulated(i))

    def start(self, phase: int) -> None:
        """Before the backward of a bucketed push: tell every shard the pieces follow (its
        receiver then posts their receives at once), and start counting."""
        hdr = P.header(P.MSG_BUCKETS, phase=phase, bucket=self.cap_bytes)
        self.works = [dist.isend(hdr, s, tag=P.TAG_HEADER) for s in range(self.shards)]
        self.left = list(self.overlaps)
        self.next = 0
        self.armed = True

    def _accumulated(self, i: int) -> None:
        if not self.armed:
            return
        for j in self.pieces_of[i]:
            self.left[j] -= 1
        self._send_ready()

    def _send_ready(self, everything: bool = False) -> None:
        while self.next < len(self.layout) and (everything or self.left[self.next] <= 0):
            pc = self.layout[self.next]
            self.works.append(dist.isend(P.as_bytes(self.flat_grad[pc.lo:pc.hi]), pc.shard, tag=P.TAG_BUCKET))
            self.next += 1

    def finish(self) -> list[int]:
        """After backward: send the pieces not sent yet, wait for every send; returns the
        bytes sent to each shard."""
        self.in_backward = self.next
        self._send_ready(everything=True)
        self.armed = False
        for w in self.works:
            w.wait()
        return list(self.bytes_per_shard)


def recv_pieces(src: int, pieces: list[Piece], shard_lo: int, out: torch.Tensor) -> None:
    """The PS's side: post a receive for each of this shard's pieces into `out` (the
    shard's fp32 slice as bytes, element `shard_lo` at offset 0), then wait for them all.
    A lost worker surfaces as the error of a wait."""
    floats = out.view(torch.float32)
    works = [dist.irecv(P.as_bytes(floats[pc.lo - shard_lo: pc.hi - shard_lo]), src, tag=P.TAG_BUCKET)
             for pc in pieces]
    for w in works:
        w.wait()
