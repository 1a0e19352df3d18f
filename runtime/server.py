"""A parameter-server shard: owns one slice of the flat parameter vector, serves the
workers' pushes as they arrive and applies them per docs/semantics.md.

The shard keeps one receive posted per worker, each in its own receiver thread (gloo's
point-to-point work objects only complete inside `wait()`, so they cannot be polled),
and serves whichever message arrives first from a queue, so no worker waits behind
another's transfer. Shard 0 is the
coordinator: it decides when a worker stops (the phase's sample target), gates ssp
workers, writes the trace (the workers ship their records with their pushes),
evaluates, and writes checkpoints and summary.json; it also holds the model's buffers
(batch-norm statistics, docs/semantics.md) and writes each gradient phase's noise record
(runtime/noise.py). Other shards only apply and serve.

A phase with an online policy (docs/policies.md; one shard only) has it consulted at each
update about to be applied, fed from the records that come with the pushes, through the
simulator's rule (hybridps.policy.consult); its rounds are then formed by
hybridps.semantics.Barrier.

Liveness: each worker publishes a heartbeat in the rendezvous store (see
`runtime.worker.Heartbeat`). A worker is lost when its heartbeat stops (dead) or its
progress stops while the shard waits for its message (hung) for `worker_timeout_s`, or
when its connection fails.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import queue
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from hybridps.errors import EXIT_INTERRUPTED, EXIT_IO_ERROR, EXIT_USER_ERROR, EXIT_WORKER_LOST
from hybridps.exchange_cost import shard_apply_s
from hybridps.fileio import atomic_write_bytes, atomic_write_json
from hybridps.progress import progress_bar
from hybridps.policy import Observer, PolicyError, consult, has_ssp_gate, make_policy
from hybridps.semantics import Barrier, Ledger, Rebalance, SSPGate, VersionClock, ends_on_mini_epochs
from runtime import protocol as P
from runtime.buckets import Piece, bucket_layout, recv_pieces, shard_pieces
from runtime.checkpoint import CHECKPOINT_FORMAT, checkpoint_path, load_checkpoint, spec_digests
from runtime.codecs import Codec
from runtime.context import RunContext, num_classes, phase_lr, shard_bounds
from runtime.data import check_samples, effective_shares, load_dataset
from runtime.launch import start_clock
from runtime.merge import FlatSGD, merge_async, merge_sync, weighted_gradient
from runtime.models import build_model, buffers_vector, load_buffers
from runtime.noise import NoiseMeter, measures_noise
from runtime.summary import final_message
from traces.jsonl import TraceWriter, cut_trace
from traces.records import header as trace_header


def short_error(e: BaseException) -> str:
    """gloo's first sentence, without its source location ("Connection closed by peer ...")."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    text = text.rsplit("] ", 1)[-1]
    return text.split(". ", 1)[0]


class WorkerLost(Exception):
    def __init__(self, pos: int, name: str, rank: int, reason: str):
        self.pos, self.name, self.rank, self.reason = pos, name, rank, reason
        super().__init__(f"worker {name} (rank {rank}) lost: {reason}")


WORKER_RECORDS = {"compute", "push", "pull", "train"}  # record kinds the workers ship with their messages


class FailedSend:
    """A send that gloo refused at once (the peer's connection was closed): waiting on it
    raises that error, so `_wait_sends` reports the worker lost like any failed send."""

    def __init__(self, error: RuntimeError):
        self.error = error

    def wait(self) -> None:
        raise self.error


def isend_to_worker(rank: int, hdr: torch.Tensor, payload: torch.Tensor | None = None,
                    records: torch.Tensor | None = None) -> list:
    """P.isend to a worker whose sends `_wait_sends` will wait: a send refused at once (the
    worker died, e.g. after its push) becomes a FailedSend, so the others still go out and
    the worker is reported lost with them."""
    try:
        return P.isend(rank, hdr, payload, records)
    except RuntimeError as e:
        return [FailedSend(e)]


class Interrupted(Exception):
    """SIGINT or SIGTERM reached the PS; raised at the next safe point (between messages)."""


class Shard:
    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.s = ctx.rank
        self.lead = self.s == 0
        opts = ctx.opts
        self.data = load_dataset(ctx.data_name, ctx.job.data.samples, ctx.data_seed, opts.data_dir) \
            if self.lead else None
        if self.lead:
            check_samples(self.data, ctx.data_name, ctx.job.data.samples, ctx.job.data.subset)
            n_classes = self.data.num_classes
        else:
            n_classes = num_classes(ctx.data_name, ctx.job.data.samples, ctx.data_seed, opts.data_dir)
        self.model = build_model(ctx.model_name, n_classes, seed=ctx.data_seed)
        full = torch.nn.utils.parameters_to_vector(self.model.parameters()).detach()
        self.n_params = full.numel()
        self.bounds = shard_bounds(self.n_params, ctx.shards)
        lo, hi = self.bounds[self.s]
        self.w = full[lo:hi].clone()
        # the model's buffers (batch-norm running statistics), held by shard 0 only: the
        # workers ship theirs with every push; merged in `_merge_buffers`
        self.buffers = buffers_vector(self.model)
        self.worker_buffers: dict[int, torch.Tensor] = {}
        self._gathered: tuple[int, torch.Tensor] | None = None  # (version, full params), S > 1
        tr = ctx.job.train
        self.opt = FlatSGD(self.w, tr.momentum, tr.weight_decay)
        self.g_buf = torch.empty_like(self.w)  # a bsp round's weighted gradient, formed in place
        self.clock = VersionClock()  # model versions (hybridps/semantics.py)
        self.ledger = Ledger(ctx.job.data.samples, [ph.epochs for ph in ctx.plan.phases], opts.eval_every)
        self.start_phase = 0
        self.start_applied = 0  # samples already applied in start_phase (resume)
        self.lost: set[int] = set()
        self.phase_times: list[tuple[float, float]] = []
        n_workers = len(ctx.workers)
        self.rx = [torch.empty(0, dtype=torch.uint8) for _ in range(n_workers)]
        self._layouts: dict[int, list[Piece]] = {}  # bucket size -> this shard's pieces (receiver threads)
        self.hb_seen: dict[int, tuple[str, str, float]] = {}
        self._waiters: dict[int, ThreadPoolExecutor] = {}  # per worker: waits for sends (_wait_sends)
        self.last_ckpt = time.perf_counter()
        self.writer: TraceWriter | None = None
        self.bar = None
        self.final_eval: dict | None = None
        self.stop_signal = 0  # set by the SIGINT/SIGTERM handler, acted on between messages
        # per worker, the point its applied work reached in the current phase:
        # [absolute epoch, iterations done in that worker-epoch, next step], from its compute records
        self.resume_points: dict[str, list[int]] = {}
        self.trace_bytes = 0  # length of trace.jsonl that matches the state (a checkpoint keeps it)
        self._points_seen: dict[str, list[int]] = {}  # resume points including records not yet applied
        self.digests = spec_digests(ctx.cluster, ctx.job, ctx.plan, ctx.model_name, ctx.data_name, opts.seed)
        self._last_liveness = 0.0
        if opts.resume:
            self._restore()
        self.abort_state = (self.start_phase, self.start_applied)  # (phase, samples applied in it) for `abort`

    # ------------------------------------------------------------------ state

    @property
    def version(self) -> int:
        return self.clock.version

    @property
    def applied_total(self) -> int:
        """Samples applied over the whole run."""
        return self.ledger.applied_total

    @property
    def epoch_end_s(self) -> list[float]:
        return self.ledger.epoch_end_s

    def _restore(self) -> None:
        path = checkpoint_path(self.ctx.opts.out_dir, self.s)
        ck = load_checkpoint(path)
        self.w.data.copy_(ck["params"])
        self.opt.load_state_dict(ck["optimizer"])
        self.clock.version = int(ck["version"])
        self.ledger.applied_total = int(ck["applied_total"])
        self.start_phase = int(ck["phase"])
        self.start_applied = int(ck["applied_in_phase"])
        self.ledger.epoch_end_s[:] = [float(x) for x in ck["epoch_end_s"]]
        self.phase_times = [(float(a), float(b)) for a, b in ck["phase_times"]]
        self.ctx.time_offset_s = float(ck["elapsed_s"])
        torch.set_rng_state(ck["torch_rng"])
        self.buffers = ck.get("buffers", self.buffers)
        self.final_eval = ck.get("final_eval")
        self.resume_points = {k: [int(x) for x in v] for k, v in (ck.get("resume_points") or {}).items()}
        self._points_seen = {k: list(v) for k, v in self.resume_points.items()}
        self.trace_bytes = int(ck.get("trace_bytes", -1))
        # lost workers are not restored: a resumed run starts with every worker again

    def save_checkpoint(self, phase: int, applied_in_phase: int) -> Path:
        ck = {"format": CHECKPOINT_FORMAT, "shard": self.s, "shards": self.ctx.shards,
              "params": self.w.detach().clone(), "optimizer": self.opt.state_dict(), "phase": phase,
              "applied_in_phase": applied_in_phase, "applied_total": self.applied_total, "version": self.version,
              "elapsed_s": self.ctx.now(), "epoch_end_s": list(self.epoch_end_s),
              "phase_times": [list(t) for t in self.phase_times], "torch_rng": torch.get_rng_state(),
              "complete": phase >= len(self.ctx.plan.phases), "buffers": self.buffers, "digests": self.digests,
              "final_eval": self.final_eval, "resume_points": {k: list(v) for k, v in self.resume_points.items()},
              "trace_bytes": self.trace_bytes if self.writer is not None else -1}
        if self.lead and (state := self.model_state_dict()) is not None:
            ck["model_state_dict"] = state
        buf = io.BytesIO()
        torch.save(ck, buf)
        path = checkpoint_path(self.ctx.opts.out_dir, self.s)
        atomic_write_bytes(path, buf.getvalue())
        self.last_ckpt = time.perf_counter()
        return path

    # ------------------------------------------------------------------ trace and eval

    def open_trace(self) -> None:
        ctx = self.ctx
        path = ctx.opts.out_dir / "trace.jsonl"
        if ctx.opts.resume and path.is_file():
            # cut what the checkpoint does not hold (work done after it), then say so in one record
            cut, cut_bytes = cut_trace(path, self.trace_bytes) if self.trace_bytes >= 0 else (0, 0)
            self.writer = TraceWriter(path, append=True)
            self.record({"kind": "resume", "t_s": ctx.time_offset_s, "phase": self.start_phase,
                         "version": self.version, "discarded_records": cut, "discarded_bytes": cut_bytes,
                         "applied_in_phase": self.start_applied})
        else:
            meta = {"model": ctx.model_name, "data": ctx.data_name, "parameters": self.n_params,
                    "world_size": ctx.world_size, "workers": ctx.workers, "eval_every": ctx.opts.eval_every}
            hdr = trace_header("runtime", cluster=ctx.cluster.model_dump(mode="json"),
                               job=ctx.job.model_dump(mode="json"), plan=ctx.plan.model_dump(mode="json"),
                               seed=ctx.opts.seed, meta=meta)
            self.writer = TraceWriter(path, hdr)
            self.trace_bytes = self.writer.size_bytes

    def record(self, rec: dict) -> None:
        """Write a record, and keep the mark a checkpoint stores: the trace's length and each
        worker's resume point as of the last record the PS wrote itself (update, eval,
        phase, ...). Workers' records (shipped with their pushes) before that mark belong to
        applied work; those after it (a bsp round still waiting for a push) do not yet."""
        if self.writer is None:
            return
        self.writer.write(rec)
        kind = rec["kind"]
        if kind == "compute":  # where this worker resumes: its compute records travel with its pushes
            pt = self._points_seen.setdefault(rec["worker"], [rec["epoch"], 0, 0])
            if pt[0] != rec["epoch"]:
                pt[0], pt[1] = rec["epoch"], 0
            pt[1] += 1
            pt[2] = rec["step"] + 1
        if kind == "phase":
            self._points_seen.clear()
        if kind not in WORKER_RECORDS:
            self.trace_bytes = self.writer.size_bytes
            self.resume_points = {name: list(pt) for name, pt in self._points_seen.items()}

    def full_params(self) -> torch.Tensor:
        """The whole parameter vector (gathers the other shards' slices when S > 1)."""
        if self.ctx.shards == 1:
            return self.w.detach()
        parts = [self.w.detach()]
        for s in range(1, self.ctx.shards):
            lo, hi = self.bounds[s]
            buf = torch.empty(hi - lo, dtype=torch.float32)
            dist.recv(buf, s, tag=P.TAG_GATHER)
            parts.append(buf)
        full = torch.cat(parts)
        self._gathered = (self.version, full)
        return full

    def _load_model(self, params: torch.Tensor) -> torch.nn.Module:
        torch.nn.utils.vector_to_parameters(params, self.model.parameters())
        with torch.no_grad():
            load_buffers(self.model, self.buffers)
        return self.model

    def model_state_dict(self) -> dict | None:
        """Parameters and buffers named as the model names them (`load_state_dict` into
        `runtime.models.build_model(...)`); None with S > 1 shards unless the full vector
        was gathered at the current version (phase ends: the final checkpoint has it)."""
        if self.ctx.shards == 1:
            params = self.w.detach()
        elif self._gathered is not None and self._gathered[0] == self.version:
            params = self._gathered[1]
        else:
            return None
        return {k: v.detach().clone() for k, v in self._load_model(params).state_dict().items()}

    def _merge_buffers(self, ph, items: list, share: dict[int, int], max_share: int, bsp: bool) -> None:
        """Shard 0's copy of the buffers after an apply. Model exchange: the parameters'
        rule (bsp: samples-weighted average of the round's; asp/ssp: the DBSL merge).
        Gradient exchange: the share-weighted average of every worker's latest. A no-op
        for models without buffers. `bsp`: the update is a round (else a push on its own)."""
        if not self.worker_buffers:
            return
        if ph.exchange == "model":
            got = [(pos, n) for pos, n, _ in items if pos in self.worker_buffers]
            if not got:
                return
            if bsp:
                self.buffers = merge_sync([(n, self.worker_buffers[pos]) for pos, n in got])
            else:
                pos = got[0][0]
                self.buffers = merge_async(self.buffers, self.worker_buffers[pos], share[pos], max_share)
        else:
            latest = [(share[pos], b) for pos, b in self.worker_buffers.items() if pos in share]
            if latest:
                self.buffers = merge_sync(latest)

    def evaluate(self, epoch: float, phase: int, resolution: int, emulate_s: float = 0.0) -> None:
        """Loss and accuracy on the held-out split (all of it unless --eval-samples asks for
        fewer), in eval() mode: batch norm uses the PS's merged running statistics, so the
        result does not depend on the evaluation batch. Emulating, it lasts at least
        `emulate_s` (the cluster's `ps.eval_s`)."""
        start_s, wall0 = self.ctx.now(), time.perf_counter()
        self._load_model(self.full_params())
        n = self.eval_size()
        loss_sum, correct = 0.0, 0
        self.model.eval()
        with torch.no_grad():
            for lo in range(0, n, 500):
                x, y = self.data.batch(np.arange(lo, min(n, lo + 500)), resolution, split="test")
                out = self.model(x)
                loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
                correct += int((out.argmax(1) == y).sum())
        left = emulate_s - (time.perf_counter() - wall0)
        if self.ctx.opts.emulate and left > 0:
            time.sleep(left)
        rec = {"kind": "eval", "t_s": self.ctx.now(), "epoch": float(epoch), "loss": loss_sum / n,
               "accuracy": correct / n, "phase": phase, "split": "test", "samples": n, "start_s": start_s}
        self.final_eval = rec
        self.record(rec)

    def eval_size(self) -> int:
        asked = self.ctx.opts.eval_samples
        return self.data.test_size if not asked else min(asked, self.data.test_size)

    def _send_gather(self) -> None:
        if self.ctx.shards > 1 and not self.lead:
            dist.send(self.w.detach().contiguous(), 0, tag=P.TAG_GATHER)

    # ------------------------------------------------------------------ liveness

    def _check_liveness(self, watch: set[int], expecting: set[int]) -> None:
        ctx, store = self.ctx, dist.distributed_c10d._get_default_store()
        now = time.perf_counter()
        timeout = ctx.opts.worker_timeout_s
        for pos in watch:
            rank = ctx.worker_rank(pos)
            beat, prog = store.get(f"hybridps/hb/{rank}").decode().split()
            old = self.hb_seen.get(pos)
            if old is None:
                self.hb_seen[pos] = (beat, prog, now, now)
                continue
            beat_t = now if beat != old[0] else old[2]
            prog_t = now if prog != old[1] else old[3]
            self.hb_seen[pos] = (beat, prog, beat_t, prog_t)
            if now - beat_t > timeout:
                raise WorkerLost(pos, ctx.workers[pos], rank, f"no heartbeat for {now - beat_t:.1f} s (process dead or stopped?)")
            if pos in expecting and now - prog_t > timeout:
                raise WorkerLost(pos, ctx.workers[pos], rank, f"no progress for {now - prog_t:.1f} s (hung?)")

    def _reset_liveness(self) -> None:
        self.hb_seen.clear()

    def _wait_sends(self, works: list) -> None:
        """Wait for sends to workers ((work, position) pairs), at most --worker-timeout (a
        stopped worker never drains its socket). Each worker's sends are waited in that
        worker's own thread, all workers at once: gloo's `wait(timeout)` would close every
        connection of the process when it expires, so a timed-out send is left blocked
        there (the worker is lost). Raises the first loss once every wait has ended."""
        timeout_s = self.ctx.opts.worker_timeout_s
        by_pos: dict[int, list] = {}
        for w, pos in works:
            by_pos.setdefault(pos, []).append(w)
        futures = {}
        for pos, ws in by_pos.items():
            if pos not in self._waiters:
                self._waiters[pos] = ThreadPoolExecutor(1, thread_name_prefix=f"send-{self.ctx.workers[pos]}")
            futures[pos] = self._waiters[pos].submit(lambda ws=ws: [w.wait() for w in ws])
        deadline = time.monotonic() + timeout_s
        lost = None
        for pos, fut in futures.items():
            name, rank = self.ctx.workers[pos], self.ctx.worker_rank(pos)
            try:
                fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                lost = lost or WorkerLost(pos, name, rank, f"send timed out after {timeout_s:g} s (hung?)")
            except Exception as e:  # the connection to the worker failed
                lost = lost or WorkerLost(pos, name, rank, f"connection failed: {short_error(e)}")
        if lost is not None:
            raise lost

    def start_receivers(self) -> None:
        """One thread per worker: blocking receives of header + payload into the inbox."""
        self.inbox: queue.Queue = queue.Queue()
        last_phase = len(self.ctx.plan.phases) - 1
        for pos in range(len(self.ctx.workers)):
            threading.Thread(target=self._receive_loop, args=(pos, last_phase), daemon=True,
                             name=f"recv-{self.ctx.workers[pos]}").start()

    def _receive_loop(self, pos: int, last_phase: int) -> None:
        rank = self.ctx.worker_rank(pos)
        try:
            while True:
                hdr = P.recv_header(rank)
                if int(hdr[P.TYPE]) == P.MSG_BUCKETS:  # a push's pieces come now, during its backward
                    body = self._recv_buckets(pos, int(hdr[P.BUCKET]))
                    hdr = P.recv_header(rank)  # the PUSH they belong to, after the backward
                    if int(hdr[P.TYPE]) != P.MSG_PUSH or not int(hdr[P.BUCKET]):  # the worker lost the protocol
                        raise RuntimeError(f"expected a bucketed PUSH after BUCKETS, got {P.NAMES.get(int(hdr[P.TYPE]))}")
                else:
                    body = P.recv_payload(rank, int(hdr[P.PAYLOAD]), self._rx_buffer(pos, int(hdr[P.PAYLOAD])))
                records = P.recv_payload(rank, int(hdr[P.RECORDS]), tag=P.TAG_RECORDS)
                self.inbox.put((pos, hdr, (body, records)))
                if int(hdr[P.TYPE]) == P.MSG_DONE and int(hdr[P.PHASE]) >= last_phase:
                    return
        except Exception as e:
            self.inbox.put((pos, None, e))

    def _rx_buffer(self, pos: int, nbytes: int) -> torch.Tensor:
        """The worker's receive buffer, at least `nbytes` long (a worker's next push always
        follows the reply to its previous one, so it is free again)."""
        if self.rx[pos].numel() < nbytes:
            self.rx[pos] = torch.empty(nbytes, dtype=torch.uint8)
        return self.rx[pos]

    def _recv_buckets(self, pos: int, cap_bytes: int) -> torch.Tensor:
        """Receive a bucketed push's pieces for this shard (runtime/buckets.py) into the
        worker's receive buffer: every receive is posted at once, so each piece moves as
        soon as the worker's backward has it ready."""
        if cap_bytes not in self._layouts:
            layout = bucket_layout(self.n_params, self.bounds, cap_bytes)
            self._layouts[cap_bytes] = shard_pieces(layout, self.s)
        lo, hi = self.bounds[self.s]
        body = self._rx_buffer(pos, 4 * (hi - lo))[:4 * (hi - lo)]
        recv_pieces(self.ctx.worker_rank(pos), self._layouts[cap_bytes], lo, body)
        return body

    def _next_message(self, watch: set[int], expecting: set[int]) -> tuple[int, torch.Tensor, torch.Tensor]:
        """The next message; the safe point: every message before it is fully applied and
        recorded, so an interruption here leaves a checkpoint that matches the trace."""
        while True:
            if self.stop_signal:
                raise Interrupted(signal.Signals(self.stop_signal).name)
            now = time.perf_counter()
            if now - self._last_liveness >= 0.25:  # also while messages keep arriving
                self._last_liveness = now
                self._check_liveness(watch, expecting)
            try:
                pos, hdr, body = self.inbox.get(timeout=0.25)
            except queue.Empty:
                continue
            if pos in self.lost:
                continue
            if hdr is None:
                if self.stop_signal:  # the workers stopped because of the same signal
                    raise Interrupted(signal.Signals(self.stop_signal).name)
                raise WorkerLost(pos, self.ctx.workers[pos], self.ctx.worker_rank(pos), f"connection failed: {short_error(body)}")
            return pos, hdr, body

    # ------------------------------------------------------------------ the run

    def run(self) -> None:
        ctx = self.ctx
        self.start_receivers()
        if self.lead:
            self.open_trace()
            total = sum(ph.epochs for ph in ctx.plan.phases) * ctx.job.data.samples
            self.bar = progress_bar(total, "hybridps run", unit="sample")
            self.bar.update(self.applied_total)
        if ctx.opts.eval_every and not ctx.opts.resume and ctx.plan.phases:
            self._send_gather()
            if self.lead:
                self.evaluate(0.0, 0, ctx.plan.phases[0].resolution, ctx.cluster.ps.eval_s)
        if not ctx.opts.resume:  # a run always has a checkpoint to resume from
            self.save_checkpoint(0, 0)
        for p in range(self.start_phase, len(ctx.plan.phases)):  # none left when resuming a finished run
            PhaseServer(self, p, self.start_applied if p == self.start_phase else 0).run()
        for pos in range(len(ctx.workers)):
            if pos not in self.lost:
                P.send(ctx.worker_rank(pos), P.header(P.MSG_END))
        self.save_checkpoint(len(ctx.plan.phases), 0)
        if self.bar is not None:
            self.bar.close()

    def _take_records(self, pos: int, records: torch.Tensor) -> list[dict]:
        """The records a worker shipped with its message: its batch-norm statistics, and
        trace records to write (returned, for a phase's policy observer)."""
        taken = []
        for line in bytes(records.numpy()).decode().splitlines():
            rec = json.loads(line)
            if rec["kind"] == "_buffers":
                raw = bytearray(base64.b64decode(rec["data"]))
                self.worker_buffers[pos] = torch.frombuffer(raw, dtype=torch.float64)
            else:
                self.record(rec)
                taken.append(rec)
        return taken

    def _record_noise(self, noise: NoiseMeter, p: int) -> None:
        """The phase's gradient noise scale (runtime/noise.py): shard 0 sums the shards'
        partial norms and writes one `noise` record; none when |G|^2 is not resolved."""
        if not self.lead:
            noise.send_partials()
            return
        noise.gather_partials(self.ctx.shards)
        est = noise.estimate(self.ctx.job.data.samples)  # an epoch samples without replacement
        if est is not None and math.isfinite(est.noise_scale) and math.isfinite(est.stderr):
            self.record(est.record(p, self.ctx.now()))

    def _drop_worker(self, e: WorkerLost, p: int) -> None:
        """--on-worker-loss continue: forget the worker and record, in a `worker_lost`
        record, the shares the others train on from their next worker-epoch on (bsp:
        equal steps per epoch, runtime.data.effective_shares)."""
        self.lost.add(e.pos)
        self.worker_buffers.pop(e.pos, None)
        ph = self.ctx.plan.phases[p]
        positions = [self.ctx.workers.index(wa.name) for wa in ph.workers]
        batches = [wa.batch for wa in ph.workers] if ph.sync == "bsp" else None
        shares = effective_shares([wa.samples for wa in ph.workers], self.lost, positions, batches)
        self.record({"kind": "worker_lost", "worker": e.name, "phase": p, "t_s": self.ctx.now(), "reason": e.reason,
                     "shares": {wa.name: s for wa, s in zip(ph.workers, shares) if s}})

    def _lost_mask(self) -> int:
        return sum(1 << pos for pos in self.lost)

    def abort(self, save: bool = True) -> Path | None:
        """Keep a checkpoint (`save`: of the current state; else the last one written),
        tell every worker to stop; returns the path of the checkpoint to resume from."""
        p, applied = self.abort_state
        path = checkpoint_path(self.ctx.opts.out_dir, self.s)
        path = path if path.is_file() else None
        if save:
            try:
                path = self.save_checkpoint(p, applied)
            except Exception as e:  # never lose the abort message over a checkpoint problem
                print(f"hybridps run: could not write a checkpoint: {short_error(e)}", file=sys.stderr)
        works = []
        for pos in range(len(self.ctx.workers)):
            try:
                works += P.isend(self.ctx.worker_rank(pos), P.header(P.MSG_ABORT))
            except Exception:
                pass
        def wait_all() -> None:
            for w in works:
                try:
                    w.wait()
                except Exception:
                    pass  # that worker is gone already

        waiter = threading.Thread(target=wait_all, daemon=True)
        waiter.start()
        waiter.join(timeout=2.0)  # a dead worker never takes its ABORT
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:
                pass  # a full disk: the checkpoint's mark says how much of the trace counts
        return path



class PhaseServer:
    """One phase on one shard: serves the workers' pushes as they arrive, applies them and
    replies, per docs/semantics.md; the rules are the shared hybridps/semantics.py objects
    (the shard's ledger and clock, the phase's SSP gate). Shard 0 decides stop and go."""

    def __init__(self, shard: Shard, p: int, applied: int):
        ctx = shard.ctx
        self.shard, self.ctx, self.p, self.ph = shard, ctx, p, ctx.plan.phases[p]
        ph = self.ph
        self.participants = [ctx.workers.index(wa.name) for wa in ph.workers]
        self.share = {ctx.workers.index(wa.name): wa.samples for wa in ph.workers}
        self.max_share = max(self.share.values())
        lo, hi = shard.bounds[shard.s]
        self.codec = Codec(ph.compression, hi - lo)
        self.gradient = ph.exchange == "gradient"
        self.keep_pulled = not self.gradient and ph.compression.lossy
        self.apply_s = shard_apply_s(ctx.cluster.ps, hi - lo)
        self.pulled: dict[int, torch.Tensor] = {}  # lossy model exchange: what each worker last pulled
        self.ledger, self.clock = shard.ledger, shard.clock
        mini_epochs = ends_on_mini_epochs(ph)
        self.ledger.start_phase(p, self.participants, mini_epochs, applied,
                                self._resumed_commits() if mini_epochs and applied else None)
        # an online policy (docs/policies.md): a new one each phase, as in the simulator; with
        # one PS shard only (`run` refuses more: the workers' records reach shard 0 alone)
        policy = make_policy(ph.policy.as_dict()) if ph.policy is not None and ctx.shards == 1 else None
        self.policy = policy if policy is not None and policy.acts_on(ph.sync) else None
        self.gate = SSPGate(ph.staleness if ph.sync == "ssp" else None, self.participants)
        self.observer = self.barrier = self.rebalance = None
        if self.policy is not None:
            self.observer = Observer(self.participants, self.policy.window, self.ledger.phase_fraction)
            gate = self.gate if has_ssp_gate(ph.sync, self.policy) else None  # (only then may it turn ssp)
            self.barrier = Barrier(self.participants, ph.sync == "bsp", gate)  # rounds go through it
            self.rebalance = Rebalance(self.participants, [wa.batch for wa in ph.workers],
                                       sum(wa.samples for wa in ph.workers))
        self.last_staleness = 0
        self.stopping: list[int] = []  # with a policy: workers told to stop, to leave the barrier
        # the noise estimators assume one mode for the phase: none when a policy may switch it
        self.noise = NoiseMeter(ph.sync) if measures_noise(ph, ctx.shards) and self.policy is None else None
        self.done: set[int] = set()
        self.bsp_round: dict[int, tuple[int, torch.Tensor]] = {}
        self.params_bytes = P.as_bytes(shard.w.detach())  # a view: every send has the current parameters
        shard.abort_state = (p, applied)

    def _resumed_commits(self) -> dict[int, int]:
        """Mini-epochs already applied in a resumed phase, per worker: its resume point is
        in the last worker-epoch it committed."""
        before = self.ledger.epochs_before[self.p]
        return {self.ctx.workers.index(name): pt[0] - before + 1 for name, pt in self.shard.resume_points.items()}

    def _stop(self, pos: int) -> bool:
        return self.shard.lead and self.ledger.worker_done(pos)

    def reply(self, pos: int, wait: bool = True) -> list:
        """Send `pos` the new parameters (the pull), with stop and, under ssp, go; returns
        the sends when not waiting."""
        shard, gate = self.shard, self.gate
        stop = self._stop(pos)
        gate.exchanged(pos)  # counted as the reply goes; others are released once it is sent
        go = 1
        if stop:
            gate.leave(pos)
            if self.barrier is not None:
                self.stopping.append(pos)
        elif shard.lead and not gate.may_start(pos):
            go = 0
            gate.hold(pos)
        batches = self._rebalance_for(pos)
        hdr = P.header(P.MSG_REPLY, phase=self.p, version=shard.version, stop=int(stop), go=go,
                       payload=self.params_bytes.numel(), lost=shard._lost_mask(),
                       records=0 if batches is None else batches.numel())
        works = [(w, pos) for w in isend_to_worker(self.ctx.worker_rank(pos), hdr, self.params_bytes, batches)]
        self.clock.pulled(pos)
        if self.keep_pulled:
            self.pulled[pos] = shard.w.detach().clone()
        if not wait:
            return works
        shard._wait_sends(works)
        return []

    def release(self) -> None:
        """Let go the ssp workers the gate no longer holds; one whose phase ended while it
        waited stops instead of starting another interval (docs/semantics.md)."""
        for q in self.gate.release():
            stop = self._stop(q)
            if stop:
                self.gate.leave(q)
            P.send(self.ctx.worker_rank(q), P.header(P.MSG_GO, phase=self.p, go=1, stop=int(stop),
                                                      lost=self.shard._lost_mask()))

    def _step(self, items: list[tuple[int, int, torch.Tensor]], bsp: bool) -> None:
        """The optimizer step or the model merge of one version (`bsp`: of a round)."""
        shard, ph = self.shard, self.ph
        if self.gradient:
            g = weighted_gradient([(n, v) for _, n, v in items], out=shard.g_buf)
            if self.noise is not None:  # one dot product per pushed vector, before the step
                if bsp:
                    self.noise.add_round([(n, v) for _, n, v in items], g)
                else:
                    self.noise.add_push(items[0][1], g)
            shard.opt.step(g, phase_lr(ph))
            return
        models = [(pos, n, (self.pulled[pos] + v) if self.keep_pulled else v) for pos, n, v in items]
        with torch.no_grad():
            if bsp:
                shard.w.copy_(merge_sync([(n, m) for _, n, m in models]))
            else:
                pos, _, m = models[0]
                shard.w.copy_(merge_async(shard.w, m, self.share[pos], self.max_share))

    def apply(self, items: list[tuple[int, int, torch.Tensor]], bsp: bool | None = None) -> None:
        """items: (worker position, samples, decoded vector); one version step. `bsp`: a
        round (staleness 0, the sync merge) or a push applied on its own; default: the
        phase's planned mode (a policy may switch it)."""
        shard, ctx, ph, p = self.shard, self.ctx, self.ph, self.p
        if bsp is None:
            bsp = ph.sync == "bsp"
        t = ctx.now()
        wall0 = time.perf_counter()
        self._step(items, bsp)
        if shard.lead:
            shard._merge_buffers(ph, items, self.share, self.max_share, bsp)
        if ctx.opts.emulate:  # the cluster's PS apply cost, when the real one was faster
            left = self.apply_s - (time.perf_counter() - wall0)
            if left > 0:
                time.sleep(left)
        if bsp:
            version = self.clock.apply_round(pos for pos, _, _ in items)
            updates = [(pos, version, 0) for pos, _, _ in items]
        else:
            updates = [(items[0][0], *self.clock.apply_push(items[0][0]))]
        self.last_staleness = updates[-1][2]
        total = sum(n for _, n, _ in items)
        self.ledger.commit(pos for pos, _, _ in items)
        ended = self.ledger.apply(total, ctx.now())
        shard.abort_state = (p, self.ledger.applied_in_phase)  # what a checkpoint written on abort holds
        if not shard.lead:
            return
        for pos, version, stale in updates:
            shard.record({"kind": "update", "worker": ctx.workers[pos], "phase": p, "t_s": t,
                          "version": version, "staleness": stale})
        if shard.bar is not None:
            shard.bar.update(total)
        for e in ended:  # per-epoch evaluation (with one shard, as the simulator)
            if ctx.shards == 1 and self.ledger.evaluation_due(e):
                shard.evaluate(float(e), p, ph.resolution, ctx.cluster.ps.eval_s)

    def apply_round(self, workers: list[int] | None = None) -> None:
        """Apply a complete bsp round (all of bsp_round, or with a policy the pushes of
        `workers` that the Barrier formed) and reply to all its workers at once (as in the
        simulator). The round is cleared before the replies, so a worker lost while they
        are sent cannot get the round applied twice."""
        if workers is None:
            items = [(pos, n, v) for pos, (n, v) in sorted(self.bsp_round.items())]
            self.bsp_round.clear()
        else:  # a lost worker's push left the round (on_lost)
            items = [(pos, *self.bsp_round.pop(pos)) for pos in sorted(workers) if pos in self.bsp_round]
            if not items:
                return
        self.apply(items, bsp=True)
        works = []
        for pos, _, _ in items:
            works += self.reply(pos, wait=False)
        self.shard._wait_sends(works)

    def _round_complete(self) -> bool:
        return bool(self.bsp_round) and set(self.bsp_round) >= self.gate.active

    def on_push(self, pos: int, hdr: torch.Tensor, body: torch.Tensor) -> None:
        vec = self.codec.decode(body[:int(hdr[P.PAYLOAD])])
        samples = int(hdr[P.SAMPLES])
        if self.barrier is not None:
            self._on_push_policy(pos, samples, vec)
        elif self.ph.sync == "bsp":
            self.bsp_round[pos] = (samples, vec)
            if self._round_complete():
                self.apply_round()
        else:
            self.apply([(pos, samples, vec)])
            self.reply(pos)
            self.release()

    # ------------------------------------------------------------------ online policy

    def observe_interval(self, pos: int, samples: int, records: list[dict]) -> None:
        """Feed the policy's observer from a push's records (they travel with it to shard
        0): the interval's compute records (their durations, slowdown and straggler
        episodes included), and the worker's previous exchange (its push and pull records,
        shipped with the next push: push start to pull end)."""
        compute_s, iterations, push_start, pull_end, batch = 0.0, 0, None, None, 0
        for rec in records:
            if rec.get("phase") != self.p:
                continue
            kind = rec["kind"]
            if kind == "compute":
                compute_s += rec["end_s"] - rec["start_s"]
                iterations += 1
                batch = rec["batch"]
            elif kind == "push":
                push_start = rec["start_s"]
            elif kind == "pull":
                pull_end = rec["end_s"]
        exchange_s = pull_end - push_start if push_start is not None and pull_end is not None else 0.0
        self.observer.interval(pos, compute_s, iterations, samples, exchange_s, batch)

    def _rebalance_for(self, pos: int) -> torch.Tensor | None:
        """A policy's rebalance reaches a worker with its reply (the pull): the phase's
        batches, in plan order, as a `_rebalance` JSON line after the parameters."""
        batches = self.rebalance.pulled(pos) if self.rebalance is not None else None
        if batches is None:
            return None
        raw = json.dumps({"kind": "_rebalance", "batches": list(batches)}).encode()
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8)

    def _consult(self, pushed: tuple[int, ...]) -> None:
        """The policy at an update about to be applied (hybridps.policy.consult, the rule
        the simulator follows): its actions recorded (summary.json counts them from the
        trace), a round one of them completes applied before the update at hand, and the
        workers a new ssp bound (or leaving ssp) lets go released at once."""
        for action, done, record in consult(self.policy, self.observer, self.barrier, self.ctx.now(), self.p,
                                            pushed, self.ph.sync, self.last_staleness, self.ctx.workers,
                                            self.rebalance):
            self.shard.record(record)
            if action.kind == "rebalance":  # the model merges' share weights follow
                batches = self.rebalance.batches
                self.share = {pos: self.rebalance.assignment(batches, pos)[1] for pos in self.participants}
                self.max_share = max(self.share.values())
            if done:
                self.apply_round(done)
            self.release()

    def _on_push_policy(self, pos: int, samples: int, vec: torch.Tensor) -> None:
        """A push in a phase with a policy: the Barrier says whether it waits for a round,
        completes one, or is applied on its own; the policy is consulted first."""
        done = self.barrier.push(pos)
        if done is None:  # asp now, or a worker outside the barrier
            self._consult((pos,))
            self.apply([(pos, samples, vec)], bsp=False)
            self.reply(pos)
        else:
            self.bsp_round[pos] = (samples, vec)
            if done:
                self._consult(tuple(done))
                self.apply_round(done)
        self._leave_stopped()
        self.release()  # the replies moved the ssp gate's counts (a policy may have set a bound)

    def _leave_stopped(self) -> None:
        """Workers told to stop leave the barrier; a round that waited on them is applied."""
        while self.stopping:
            done = self.barrier.leave(self.stopping.pop(0))
            if done:
                self.apply_round(done)

    def on_done(self, pos: int) -> None:
        self.done.add(pos)
        self.gate.leave(pos)
        if self.barrier is not None:
            self.stopping.append(pos)
            self._leave_stopped()
        self.release()

    def on_lost(self, e: WorkerLost) -> None:
        """--on-worker-loss continue: go on without the worker (raises otherwise)."""
        if self.ctx.opts.on_worker_loss != "continue":
            raise e
        print(f"hybridps run: {e}; continuing without it", file=sys.stderr, flush=True)
        self.shard._drop_worker(e, self.p)
        self.bsp_round.pop(e.pos, None)
        self.gate.leave(e.pos)
        if self.barrier is not None:
            self.stopping.append(e.pos)
            self._leave_stopped()
        elif self.ph.sync == "bsp" and self._round_complete():  # the round it held up
            self.apply_round()
        self.release()

    def _start(self, alive: set[int]) -> None:
        """Every live worker gets the parameters (a phase start counts as a pull)."""
        shard, ctx, p = self.shard, self.ctx, self.p
        params_bytes = self.params_bytes
        lost_mask = shard._lost_mask()
        before = self.ledger.epochs_before[p]
        works = []
        for pos in sorted(alive):
            wepoch, witer, wstep = shard.resume_points.get(ctx.workers[pos], (before, 0, 0))
            hdr = P.header(P.MSG_PHASE, phase=p, samples=self.ledger.applied_in_phase, payload=params_bytes.numel(),
                           lost=lost_mask, offset_us=int(round(ctx.time_offset_s * 1e6)), wepoch=wepoch,
                           witer=witer, wstep=wstep)
            works += [(w, pos) for w in isend_to_worker(ctx.worker_rank(pos), hdr, params_bytes)]
            if self.keep_pulled:
                self.pulled[pos] = shard.w.detach().clone()
        self.clock.start_phase(self.participants)
        for pos in self.participants:
            if pos in shard.lost:
                self.gate.leave(pos)
                if self.barrier is not None:
                    self.barrier.leave(pos)
        shard._wait_sends(works)

    def _serve(self, alive: set[int]) -> None:
        """Messages until every live worker is done with the phase."""
        shard = self.shard
        while len(self.done) < len(alive - shard.lost):
            watch = alive - shard.lost - self.done
            expecting = watch - set(self.gate.waiting) - set(self.bsp_round)
            try:
                pos, hdr, (body, records) = shard._next_message(watch, expecting)
                taken = shard._take_records(pos, records) if records.numel() and shard.lead else []
                kind = int(hdr[P.TYPE])
                if kind == P.MSG_DONE:
                    self.on_done(pos)
                    continue
                assert kind == P.MSG_PUSH, P.NAMES.get(kind, kind)
                if self.observer is not None:
                    self.observe_interval(pos, int(hdr[P.SAMPLES]), taken)
                self.on_push(pos, hdr, body)
                if time.perf_counter() - shard.last_ckpt > self.ctx.opts.checkpoint_every_s:
                    shard.save_checkpoint(self.p, self.ledger.applied_in_phase)
            except WorkerLost as e:
                self.on_lost(e)

    def run(self) -> None:
        shard, ctx, ph, p = self.shard, self.ctx, self.ph, self.p
        t_phase = ctx.now()
        shard._reset_liveness()
        alive = {pos for pos in range(len(ctx.workers)) if pos not in shard.lost}
        self._start(alive)
        self._serve(alive)
        t_end = ctx.now()
        self.ledger.end_phase(t_end)  # mini-epochs whose shares fall short of the dataset end their epochs
        shard.phase_times.append((t_phase, t_end))
        if shard.lead:
            shard.record({"kind": "phase", "index": p, "start_s": t_phase, "end_s": t_end})
        shard.save_checkpoint(p + 1, 0)
        if self.noise is not None:
            shard._record_noise(self.noise, p)
        shard._send_gather()
        if shard.lead:
            shard.evaluate(float(self.ledger.epochs_before[p] + ph.epochs), p, ph.resolution)
        if ctx.opts.emulate and p + 1 < len(ctx.plan.phases):  # the cluster's time between phases
            left = ctx.cluster.ps.phase_overhead_s - (ctx.now() - t_end)
            if left > 0:
                time.sleep(left)


def write_summary(ctx: RunContext, shard: Shard, **kw) -> dict:
    """summary.json, plus the model's real parameter count beside the job's (they may
    differ by up to 1%: `hybridps run` rejects more)."""
    from runtime.summary import write_summary as summary_from_trace

    out = summary_from_trace(ctx, shard, **kw)
    out["parameters"] = {"model": shard.n_params, "job": ctx.job.model.parameters}
    atomic_write_json(ctx.opts.out_dir / "summary.json", out)
    return out


def resume_hint(ctx: RunContext) -> str:
    local = " --local" if "HYBRIDPS_PARENT_PID" in os.environ else ""
    return f"continue with: hybridps run --resume {ctx.opts.out_dir}{local}"


def run_server(ctx: RunContext) -> int:
    """One PS shard's whole run; returns the process's exit code (hybridps.errors.EXIT_*)."""
    shard = Shard(ctx)
    ready_s = start_clock(ctx, "PS" if ctx.shards == 1 else f"PS shard {shard.s}")  # time zero
    wall0 = time.time()

    def on_signal(signum, frame) -> None:  # SIGINT and SIGTERM alike: stop at the next safe point
        shard.stop_signal = shard.stop_signal or signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def stop(status: str, code: int, message: str, save: bool = True) -> int:
        path = shard.abort(save=save)
        if shard.lead or code == EXIT_IO_ERROR:
            where = f"checkpoint {path}" if path else "no checkpoint"
            print(f"{message}; stopped every process; {where}; {resume_hint(ctx)}", file=sys.stderr, flush=True)
        if shard.lead:
            try:
                write_summary(ctx, shard, status=status, ready_s=ready_s, wall_s=time.time() - wall0)
            except OSError:
                pass  # the disk is full: trace and checkpoint say what there is
        return code

    rank = f"PS shard {shard.s} (rank {ctx.rank})"
    try:
        shard.run()
    except Interrupted as e:
        return stop("interrupted", EXIT_INTERRUPTED, f"hybridps: interrupted by {e} at {rank}")
    except WorkerLost as e:
        if shard.stop_signal:
            name = signal.Signals(shard.stop_signal).name
            return stop("interrupted", EXIT_INTERRUPTED, f"hybridps: interrupted by {name} at {rank}")
        return stop("worker-lost", EXIT_WORKER_LOST, f"hybridps: error: {e}")
    except PolicyError as e:  # an invalid action: stops the run with one line, as it stops a simulation
        return stop("policy-error", EXIT_USER_ERROR, f"hybridps: error: phase {shard.abort_state[0]}: {e}")
    except OSError as e:  # a full disk, a read-only or vanished --out: keep the last consistent checkpoint
        what = e.filename or ctx.opts.out_dir
        return stop("io-error", EXIT_IO_ERROR, f"hybridps: error: {rank} cannot write {what}: "
                    f"{e.strerror or e}", save=False)
    if shard.lead:
        try:
            shard.writer.close()
            summary = write_summary(ctx, shard, status="complete", ready_s=ready_s, wall_s=time.time() - wall0)
        except OSError as e:
            print(f"hybridps: error: {rank} cannot write {e.filename or ctx.opts.out_dir}: {e.strerror or e}; "
                  f"the run finished (checkpoint.pt is complete)", file=sys.stderr, flush=True)
            return EXIT_IO_ERROR
        print(final_message(ctx, summary), flush=True)
    return 0
