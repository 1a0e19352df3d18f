"""The wire protocol between workers and PS shards (c10d point-to-point over gloo).

Every message is a fixed header, an int64 tensor of `HEADER_LEN` slots, sent with tag
`TAG_HEADER`, optionally followed by a flat uint8 payload (`PAYLOAD` bytes, tag
`TAG_PAYLOAD`) and by `RECORDS` bytes of UTF-8 JSON lines (tag `TAG_RECORDS`: the
worker's trace records, sent to shard 0 only). Payloads are never copied to be sent.
A bucketed push (runtime/buckets.py) sends its payload before its header: a BUCKETS
message, then the pieces of `buckets.bucket_layout` (tag `TAG_BUCKET`) while backward
runs, then the PUSH header with BUCKET set and no payload of its own.

Header slots:
  TYPE      message type (below)
  PHASE     phase index
  SAMPLES   samples computed since the last exchange (PUSH); samples already applied in
            the phase (PHASE message on resume)
  PAYLOAD   data bytes in the payload (a compressed slice, or fp32 parameters)
  RECORDS   JSON bytes after the data (REPLY: a policy's `_rebalance` line, the phase's
            new batches in plan order, which the worker takes up at its next worker-epoch)
  VERSION   the shard's model version after the apply (REPLY)
  STOP      1: the phase target is reached, stop after this exchange (REPLY, GO)
  GO        1: start the next interval now; 0: wait for a GO message (ssp bound)
  LOST      bit mask of lost workers (by worker position), so the rest re-split the data
  EPOCH     the worker's epoch (PUSH), for the PS's records
  OFFSET_US run time already elapsed before a resume, in microseconds (PHASE), so the
            resumed trace continues the old clock
  WEPOCH, WITER, WSTEP  (PHASE) where this worker starts the phase: its absolute epoch,
            the iterations already applied in that worker-epoch and its next step number
            (0s at a phase's start; after a resume, the point its applied work reached)
  BUCKET    (BUCKETS, PUSH) the bucket size in bytes the push's payload came in, before
            the PUSH header; 0: the payload follows the header in one piece

Message types:
  PHASE  PS -> worker: start phase PHASE; payload = the shard's fp32 parameters
  END    PS -> worker: the run is over
  PUSH   worker -> PS: payload = compressed update of the shard's slice (+ records to shard 0)
  REPLY  PS -> worker: the push was applied; payload = the shard's fp32 parameters (the pull)
  GO     PS (shard 0) -> worker: the ssp bound now allows the next interval
  DONE   worker -> PS: stopped for this phase (+ its last records to shard 0)
  ABORT  PS -> worker: stop now (a worker was lost, or Ctrl-C)
  BUCKETS  worker -> PS: the next PUSH's payload comes now, in buckets of BUCKET bytes
"""

from __future__ import annotations

import torch
import torch.distributed as dist

HEADER_LEN = 16
(TYPE, PHASE, SAMPLES, PAYLOAD, RECORDS, VERSION, STOP, GO, LOST, EPOCH, OFFSET_US, WEPOCH, WITER, WSTEP,
 BUCKET) = range(15)
MSG_PHASE, MSG_END, MSG_PUSH, MSG_REPLY, MSG_GO, MSG_DONE, MSG_ABORT, MSG_BUCKETS = range(1, 9)
TAG_HEADER, TAG_PAYLOAD, TAG_GATHER, TAG_RECORDS, TAG_BUCKET = 0, 1, 2, 3, 4
NAMES = {MSG_PHASE: "PHASE", MSG_END: "END", MSG_PUSH: "PUSH", MSG_REPLY: "REPLY", MSG_GO: "GO",
         MSG_DONE: "DONE", MSG_ABORT: "ABORT", MSG_BUCKETS: "BUCKETS"}


def header(kind: int, **fields: int) -> torch.Tensor:
    h = torch.zeros(HEADER_LEN, dtype=torch.int64)
    h[TYPE] = kind
    for name, value in fields.items():
        h[globals()[name.upper()]] = int(value)
    return h


def isend(dst: int, hdr: torch.Tensor, payload: torch.Tensor | None = None,
          records: torch.Tensor | None = None) -> list:
    """Send a header, its payload and records without waiting; returns the work handles."""
    works = [dist.isend(hdr, dst, tag=TAG_HEADER)]
    if payload is not None and payload.numel() > 0:
        works.append(dist.isend(payload, dst, tag=TAG_PAYLOAD))
    if records is not None and records.numel() > 0:
        works.append(dist.isend(records, dst, tag=TAG_RECORDS))
    return works


def send(dst: int, hdr: torch.Tensor, payload: torch.Tensor | None = None) -> None:
    for w in isend(dst, hdr, payload):
        w.wait()


def recv_header(src: int) -> torch.Tensor:
    h = torch.empty(HEADER_LEN, dtype=torch.int64)
    dist.recv(h, src, tag=TAG_HEADER)
    return h


def recv_payload(src: int, nbytes: int, out: torch.Tensor | None = None, tag: int = TAG_PAYLOAD) -> torch.Tensor:
    buf = out[:nbytes] if out is not None and out.numel() >= nbytes else torch.empty(nbytes, dtype=torch.uint8)
    if nbytes:
        dist.recv(buf, src, tag=tag)
    return buf


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous CPU tensor (no copy)."""
    return t.contiguous().view(-1).view(torch.uint8)
