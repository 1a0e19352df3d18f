"""A worker process: computes its share of each epoch, pushes updates to the PS shards
and pulls their parameters, exactly per docs/semantics.md, while emulating its cluster
entry (slowdown, NIC bandwidth and latency, straggler episodes).

Gradient exchange: the worker keeps no optimizer. Over an exchange interval it sums the
per-sample gradients of its iterations (loss with reduction="sum", accumulated by
autograd at fixed weights into one flat buffer) and pushes their mean (sum / samples)
with the sample count (with one iteration per interval: the batch-mean loss directly);
the PS re-weights by samples, so a bsp round equals one SGD step on the union of the
batches and local_steps > 1 acts as a larger batch. Under --no-emulate, with one iteration
per exchange and no compression, the push goes in buckets during backward (runtime/buckets.py). Model exchange: the worker trains
with a local SGD (momentum, weight decay, the phase's LR as the plan gives it) and pushes its weights; with a
lossy codec it pushes (w_local - w_pulled) and the PS rebuilds w_local.

With each push the worker ships, to shard 0, a `train` record (the interval's mean loss,
docs/runtime.md) and, for models with buffers, its batch-norm statistics (an internal
`_buffers` record that the PS merges and never writes to the trace).
"""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hybridps import exchange_cost
from hybridps.errors import EXIT_INTERRUPTED, EXIT_PS_LOST, UserError
from hybridps.stragglers import StragglerSchedule
from runtime import protocol as P
from runtime.buckets import BucketPusher, bucket_bytes, overlaps
from runtime.codecs import ErrorFeedback
from runtime.context import RunContext, phase_lr, shard_bounds
from runtime.data import check_samples, effective_shares, epoch_permutation, load_dataset, share_indices
from runtime.launch import start_clock
from runtime.models import build_model, buffers_vector

STAGE_ENV = "HYBRIDPS_STAGE_TRANSFERS"  # "1": stage PS traffic through host buffers on CPU too


class Aborted(Exception):
    """The PS told this worker to stop (ABORT)."""


class Heartbeat:
    """Publishes `beat progress` to the rendezvous store every 0.25 s from a thread: the
    PS declares the worker dead when the beat stops and hung when progress stops while
    the PS waits for it.

    It is also the worker's PS watchdog: the store is served by rank 0 (the PS), so when
    no `set` has succeeded for `ps_timeout_s` the PS is dead, stopped or cut off. A second
    thread (the first may be blocked inside `set`) then names it and ends the process
    with EXIT_PS_LOST. After SIGINT/SIGTERM the worker waits for the PS's ABORT, and
    leaves by itself (EXIT_INTERRUPTED) if none comes within `ps_timeout_s`."""

    def __init__(self, rank: int, ps_timeout_s: float | None = None, who: str = "worker"):
        self.key = f"hybridps/hb/{rank}"
        self.who = who
        self.store = dist.distributed_c10d._get_default_store()
        self.progress = 0
        self.ps_timeout_s = ps_timeout_s
        self.signalled_at: float | None = None
        self._beat = 0
        self._stop = threading.Event()
        self.store.set(self.key, "0 0")
        self.last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")
        self._thread.start()
        if ps_timeout_s is not None:
            threading.Thread(target=self._watch, daemon=True, name="ps-watchdog").start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._beat += 1
            try:
                self.store.set(self.key, f"{self._beat} {self.progress}")
                self.store.get(self.key)  # `set` does not wait for the store's answer; `get` does
                self.last_ok = time.monotonic()
            except Exception:
                pass  # the store (the PS) is gone or unreachable: the watchdog decides

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            quiet = now - self.last_ok
            if quiet > self.ps_timeout_s:
                self._leave(EXIT_PS_LOST, f"hybridps: error: PS (rank 0) lost: {self.who} has had no answer from "
                                          f"rank 0 for {quiet:.1f} s (process stopped or dead); {self.who} stops")
            if self.signalled_at is not None and now - self.signalled_at > self.ps_timeout_s:
                self._leave(EXIT_INTERRUPTED, f"hybridps: {self.who} interrupted; the PS sent no stop; leaving")

    def _leave(self, code: int, message: str) -> None:
        if self._stop.is_set():
            return  # the run ended normally meanwhile
        if "HYBRIDPS_PARENT_PID" not in os.environ:  # under --local the launcher names the PS once
            print(message, file=sys.stderr, flush=True)
        os._exit(code)

    def stop(self) -> None:
        self._stop.set()


class WorkerProcess:
    def __init__(self, ctx: RunContext, device: torch.device):
        self.ctx = ctx
        self.pos = ctx.rank - ctx.shards
        self.name = ctx.workers[self.pos]
        self.spec = ctx.cluster.worker_by_name[self.name]
        self.device = device
        self.data = load_dataset(ctx.data_name, ctx.job.data.samples, ctx.data_seed, ctx.opts.data_dir)
        check_samples(self.data, ctx.data_name, ctx.job.data.samples, ctx.job.data.subset)
        self.model = build_model(ctx.model_name, self.data.num_classes, seed=ctx.data_seed).to(device)
        self.params = list(self.model.parameters())
        self.has_buffers = any(True for _ in self.model.buffers())
        n = sum(p.numel() for p in self.params)
        self.n_params = n
        self.flat = torch.zeros(n, dtype=torch.float32, device=device)
        self.flat_grad = torch.zeros(n, dtype=torch.float32, device=device)
        off = 0
        for p in self.params:  # parameters and gradients become views of flat buffers:
            self.flat[off: off + p.numel()].copy_(p.data.reshape(-1))  # a pull lands in place,
            p.data = self.flat[off: off + p.numel()].view_as(p)  # a push needs no gather
            p.grad = self.flat_grad[off: off + p.numel()].view_as(p)
            off += p.numel()
        self.bounds = shard_bounds(n, ctx.shards)
        # On CUDA, PS traffic is staged through pinned host buffers. STAGE_ENV takes the same
        # path on CPU (unpinned), so the CPU tests run the CUDA path's copies and buffers.
        self.staged = device.type == "cuda" or os.environ.get(STAGE_ENV) == "1"
        self.push_buf = None
        if self.staged:
            pin = device.type == "cuda"
            self.pull_bufs = [torch.empty(hi - lo, dtype=torch.float32, pin_memory=pin) for lo, hi in self.bounds]
            self.push_buf = torch.empty(n, dtype=torch.float32, pin_memory=pin)
        else:  # pulls land directly in the parameters
            self.pull_bufs = [self.flat[lo:hi] for lo, hi in self.bounds]
        # bucketed pushes during backward (runtime/buckets.py): never under emulation, whose
        # timing model pushes after compute; never staged (the pieces are views of flat_grad)
        cap = bucket_bytes(ctx.opts.bucket_mb)
        self.bucketer = BucketPusher(self.params, self.flat_grad, self.bounds, cap) \
            if overlaps(n, cap) and not ctx.opts.emulate and not self.staged else None
        self.stragglers = StragglerSchedule(ctx.cluster, seed=ctx.opts.seed)
        self.records: list[dict] = []
        self.hb = Heartbeat(ctx.rank, ctx.opts.worker_timeout_s, f"worker {self.name} (rank {ctx.rank})")
        self.lost: set[int] = set()

    # ------------------------------------------------------------------ helpers

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _sleep_until(self, start: float, target_s: float) -> None:
        left = target_s - (time.perf_counter() - start)
        if left > 0 and self.ctx.opts.emulate:
            time.sleep(left)

    def _link_time_s(self, shard_bytes: list[int]) -> float:
        """The modelled time of one push or pull (docs/semantics.md, `hybridps.exchange_cost`):
        slices in parallel through the worker's NIC and each shard's, plus one latency. The
        sharing of the PS NIC between concurrent flows is not emulated."""
        return exchange_cost.message_s(shard_bytes, self.spec, self.ctx.cluster.ps)

    def _records_payload(self) -> bytes:
        if not self.records:
            return b""
        raw = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in self.records).encode()
        self.records.clear()
        return raw

    def _send_all(self, kind: int, phase: int, payloads: list[torch.Tensor] | None,
                  bucketed: list[int] | None = None, **fields: int) -> list[int]:
        """Send one message to every shard (records to shard 0); returns the data bytes per
        shard. `bucketed`: the bytes per shard the bucketed pieces already carried."""
        rec = self._records_payload()
        works, sent = [], []
        for s in range(self.ctx.shards):
            data = payloads[s] if payloads is not None else torch.empty(0, dtype=torch.uint8)
            extra = torch.frombuffer(bytearray(rec), dtype=torch.uint8) if (s == 0 and rec) else None
            nbytes = data.numel() if bucketed is None else bucketed[s]
            cap = 0 if bucketed is None else self.bucketer.cap_bytes
            hdr = P.header(kind, phase=phase, payload=nbytes, records=len(rec) if s == 0 else 0, bucket=cap, **fields)
            works += P.isend(s, hdr, data, extra)
            sent.append(nbytes)
        for w in works:
            w.wait()
        self.hb.progress += 1
        return sent

    def _recv_phase(self) -> torch.Tensor | None:
        """Wait for the next PHASE (returns shard 0's header) or END (returns None)."""
        hdrs = []
        for s in range(self.ctx.shards):
            h = P.recv_header(s)
            if h[P.TYPE] == P.MSG_ABORT:
                raise Aborted()
            hdrs.append(h)
            if h[P.TYPE] == P.MSG_PHASE:
                P.recv_payload(s, int(h[P.PAYLOAD]), P.as_bytes(self.pull_bufs[s]))
        if hdrs[0][P.TYPE] == P.MSG_END:
            return None
        self.ctx.time_offset_s = int(hdrs[0][P.OFFSET_US]) / 1e6
        self._load_pulled()
        return hdrs[0]

    def _load_pulled(self) -> None:
        if not self.staged:
            return
        for (lo, hi), buf in zip(self.bounds, self.pull_bufs):
            self.flat[lo:hi].copy_(buf, non_blocking=True)
        self._sync()

    def _train_record(self, p: int, samples: int, loss_sum: float, codecs: list[ErrorFeedback] | None) -> dict:
        """The interval's mean training loss (the loss the iterations computed anyway, at the
        weights each iteration saw), stamped at the push it travels with; with a lossy codec
        also the L2 norms of what went into the codec (error feedback included) and of the
        residual kept, summed over the shards' slices."""
        rec = {"kind": "train", "worker": self.name, "phase": p, "t_s": self.ctx.now(), "samples": samples,
               "loss": loss_sum / samples}
        if codecs is not None:
            rec["update_norm"] = math.sqrt(sum(c.input_sq for c in codecs))
            if all(c.residual is not None for c in codecs):
                rec["residual_norm"] = math.sqrt(sum(float(torch.dot(c.residual, c.residual)) for c in codecs))
        return rec

    def _payloads(self, gradient: bool, every: int, samples: int, pulled: torch.Tensor | None,
                  codecs: list[ErrorFeedback]) -> list[torch.Tensor]:
        """An unbucketed push's payload per shard: the mean gradient over the interval's
        samples, the weights, or with a lossy codec the weights' change since the pull."""
        if gradient:
            vec = self.flat_grad if every == 1 else self.flat_grad.div_(samples)
        elif pulled is not None:
            vec = self.flat - pulled
        else:
            vec = self.flat
        vec = vec.detach() if self.push_buf is None else self.push_buf.copy_(vec.detach())
        return [c.encode(vec[lo:hi]) for c, (lo, hi) in zip(codecs, self.bounds)]

    def _update_lost(self, mask: int) -> None:
        self.lost = {i for i in range(len(self.ctx.workers)) if mask >> i & 1}

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        try:
            while True:
                h0 = self._recv_phase()
                if h0 is None:
                    return
                p = int(h0[P.PHASE])
                self._update_lost(int(h0[P.LOST]))
                names = [wa.name for wa in self.ctx.plan.phases[p].workers]
                if self.name not in names:
                    self._send_all(P.MSG_DONE, p, None)
                    continue
                self._run_phase(p, (int(h0[P.WEPOCH]), int(h0[P.WITER]), int(h0[P.WSTEP])))
        finally:
            self.hb.stop()

    def _run_phase(self, p: int, start: tuple[int, int, int]) -> None:
        """Run phase p from `start` = (absolute epoch, iterations done in it, next step): the
        phase's beginning, or after a resume exactly where this worker's applied work ended."""
        ctx, ph = self.ctx, self.ctx.plan.phases[p]
        wa = next(w for w in ph.workers if w.name == self.name)
        positions = [ctx.workers.index(w.name) for w in ph.workers]
        my_index = positions.index(self.pos)
        plan_shares = [w.samples for w in ph.workers]
        B, res = wa.batch, ph.resolution
        batches = [w.batch for w in ph.workers] if ph.sync == "bsp" else None  # equal steps
        every = ph.exchange_every(wa)
        epochs_before = sum(x.epochs for x in ctx.plan.phases[:p])
        n_data = ctx.job.data.samples
        gradient = ph.exchange == "gradient"
        lossy = ph.compression.lossy
        codecs = [ErrorFeedback(ph.compression, hi - lo, seed=hash((ctx.data_seed, self.pos, p, s)) % 2**31)
                  for s, (lo, hi) in enumerate(self.bounds)]
        tr = ctx.job.train
        opt = None
        if not gradient:
            opt = torch.optim.SGD(self.params, lr=phase_lr(ph), momentum=tr.momentum, weight_decay=tr.weight_decay)
        pulled = self.flat.clone() if (not gradient and lossy) else None
        self.data.batch([0], ph.resolution)  # prepares the resolution once, outside the compute records
        # --compute-time model: an iteration lasts the cluster's t(B) (never less than the real compute)
        model_s = self.ctx.cluster.devices[self.spec.device].resolutions[res] \
            if self.ctx.opts.compute_time == "model" else None
        worker_epoch, it, step = max(0, start[0] - epochs_before), start[1], start[2]
        indices, k = None, 0  # it: iteration within the worker-epoch
        self.rebalanced, resplit = None, False
        while True:
            # ---------------------------------------------------------- one interval
            interval_samples, iters, loss_sum = 0, 0, 0.0
            bucketed = gradient and every == 1 and ph.compression.kind == "none" and self.bucketer is not None
            if gradient:
                self.flat_grad.zero_()
            while iters < every:
                while it == 0 or indices is None:
                    if it == 0 and self.rebalanced is not None:  # a policy's, pulled: from this worker-epoch on
                        batches, self.rebalanced, resplit = self.rebalanced, None, True
                        B = batches[my_index]
                    shares = effective_shares(plan_shares, self.lost, positions, batches, resplit)
                    perm = epoch_permutation(n_data, epochs_before + worker_epoch, ctx.data_seed)
                    indices = share_indices(perm, shares, my_index)
                    k = math.ceil(len(indices) / B)
                    if resplit:
                        every = ph.exchange_every(wa.model_copy(update={"batch": B, "samples": len(indices)}))
                    if it < k:
                        break
                    worker_epoch, it = worker_epoch + 1, 0  # resumed at the end of a worker-epoch
                lo = it * B
                n = min(B, len(indices) - lo)
                t_start = ctx.now()
                wall0 = time.perf_counter()
                x, y = self.data.batch(indices[lo: lo + n], res)
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                if bucketed:  # the shards post the pieces' receives while the forward runs
                    self.bucketer.start(p)
                out = self.model(x)
                if gradient:  # accumulates in place into flat_grad
                    loss = F.cross_entropy(out, y, reduction="mean" if every == 1 else "sum")
                    loss.backward()
                    loss_sum += float(loss.detach()) * (n if every == 1 else 1)
                else:
                    opt.zero_grad(set_to_none=False)
                    loss = F.cross_entropy(out, y)
                    loss.backward()
                    opt.step()
                    loss_sum += float(loss.detach()) * n
                self._sync()
                factor = (self.spec.slowdown * self.stragglers.factor_at(self.name, t_start)
                          * self.stragglers.jitter(self.name))
                base_s = time.perf_counter() - wall0 if model_s is None else model_s.iteration_s(n)
                self._sleep_until(wall0, base_s * factor)
                rec = {"kind": "compute", "worker": self.name, "phase": p, "epoch": epochs_before + worker_epoch,
                       "step": step, "batch": B, "resolution": res, "start_s": t_start, "end_s": ctx.now()}
                if n != B:
                    rec["samples"] = n
                self.records.append(rec)
                self.hb.progress += 1
                step += 1
                iters += 1
                interval_samples += n
                it += 1
                if it == k:  # end of the worker-epoch: always exchange
                    it = 0
                    worker_epoch += 1
                    break
            # ---------------------------------------------------------- push
            t_ready = time.perf_counter()  # the interval's compute is done: the exchange overhead starts
            payloads = None if bucketed else self._payloads(gradient, every, interval_samples, pulled, codecs)
            self.records.append(self._train_record(p, interval_samples, loss_sum, codecs if lossy else None))
            if self.has_buffers:  # batch-norm statistics travel to shard 0 with every push
                raw = buffers_vector(self.model).numpy().tobytes()
                self.records.append({"kind": "_buffers", "data": base64.b64encode(raw).decode()})
            # post the replies' receives before pushing: a REPLY is a header and the shard's
            # parameters (known size), so the pull starts streaming as soon as the PS sends
            reply_works, pull_works = [], []
            hdr_bufs = [torch.empty(P.HEADER_LEN, dtype=torch.int64) for _ in range(ctx.shards)]
            for s in range(ctx.shards):
                reply_works.append(dist.irecv(hdr_bufs[s], s, tag=P.TAG_HEADER))
                pull_works.append(dist.irecv(P.as_bytes(self.pull_bufs[s]), s, tag=P.TAG_PAYLOAD))
            self._sleep_until(t_ready, self.spec.exchange_overhead_s)  # emulated; encoding counts toward it
            t_push = ctx.now()
            wall0 = time.perf_counter()
            pushed = self._send_all(P.MSG_PUSH, p, payloads, self.bucketer.finish() if bucketed else None,
                                    samples=interval_samples, epoch=epochs_before + worker_epoch)
            self._sleep_until(wall0, self._link_time_s(pushed))
            rec = {"kind": "push", "worker": self.name, "phase": p, "start_s": t_push, "end_s": ctx.now(),
                   "bytes": sum(pushed), "samples": interval_samples}
            if bucketed:
                rec.update(buckets=len(self.bucketer.layout), buckets_in_backward=self.bucketer.in_backward)
            self.records.append(rec)
            # ---------------------------------------------------------- pull
            reply_works[0].wait()
            h0 = hdr_bufs[0]
            if h0[P.TYPE] == P.MSG_ABORT:
                raise Aborted()
            if int(h0[P.RECORDS]):  # a policy's rebalance comes with the reply
                raw = P.recv_payload(0, int(h0[P.RECORDS]), tag=P.TAG_RECORDS)
                self.rebalanced = json.loads(bytes(raw.numpy()))["batches"]
            t_pull = ctx.now()
            wall0 = time.perf_counter()
            pulled_bytes = []
            for s in range(ctx.shards):
                if s:
                    reply_works[s].wait()
                    if hdr_bufs[s][P.TYPE] == P.MSG_ABORT:
                        raise Aborted()
                assert int(hdr_bufs[s][P.PAYLOAD]) == self.pull_bufs[s].numel() * 4
                pull_works[s].wait()
                pulled_bytes.append(int(hdr_bufs[s][P.PAYLOAD]))
            self._load_pulled()
            if pulled is not None:
                pulled.copy_(self.flat)
            self._sleep_until(wall0, self._link_time_s(pulled_bytes))
            self.records.append({"kind": "pull", "worker": self.name, "phase": p, "start_s": t_pull,
                                 "end_s": ctx.now(), "bytes": sum(pulled_bytes)})
            self.hb.progress += 1
            self._update_lost(int(h0[P.LOST]))
            stop = bool(h0[P.STOP])
            if not stop and not h0[P.GO]:  # ssp: wait until the slowest catches up
                g = P.recv_header(0)
                if g[P.TYPE] == P.MSG_ABORT:
                    raise Aborted()
                self._update_lost(int(g[P.LOST]))
                stop = bool(g[P.STOP])
            if stop:
                self._send_all(P.MSG_DONE, p, None)
                return


def run_worker(ctx: RunContext, device: torch.device) -> int:
    try:
        w = WorkerProcess(ctx, device)
    except UserError:
        if os.environ.get("HYBRIDPS_PARENT_PID"):  # --local: rank 0 reports the same error, once
            return 2
        raise

    def on_signal(signum, frame) -> None:  # SIGINT = SIGTERM: the PS checkpoints and sends ABORT
        if w.hb.signalled_at is None:
            w.hb.signalled_at = time.monotonic()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if any(ph.exchange == "model" for ph in ctx.plan.phases):
        # the first torch.optim.SGD of a process takes ~1.5 s (lazy imports): build one before
        # time zero, so the first model-exchange phase does not start with it (start-up time)
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    staged = ", staged transfers" if w.staged else ""
    start_clock(ctx, f"worker {w.name} on {device}{staged}")  # every process ready: time zero
    try:
        w.run()
    except Aborted:
        return 3
    return 0
