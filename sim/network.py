"""The fluid max-min fair-share network, one object per direction (full duplex).

A flow goes from one worker's NIC to the parameter server (push direction) or back
(pull direction). Every flow crosses two links: its worker's NIC, which in one direction
carries at most one flow at a time (a worker never has two pushes or two pulls in flight),
and the PS NIC, shared by all flows. With S shards every worker sends 1/S of its bytes
to each shard in parallel and all shards see the same flows at the same times, so the S
shard NICs act as one link of S times the capacity (see docs/simulator.md).

Max-min fairness over that topology is water-filling: a flow gets
`min(own NIC capacity, level)` where `level` shares what is left of the PS link equally
among the flows not limited by their own NIC.

Rates change only when the flow set changes. The network keeps one pending SimPy
timeout for the next completion instead of one process per flow. When a flow's last
byte has left, `deliver(worker, start_s, end_s)` runs at once with `end_s` = now + the
path latency, the moment the message arrives; the receiver acts at `end_s` (this saves
one event per message).
`EqualShareLink` is the fast path when every worker NIC has the same capacity (all
flows then run at the same rate, so a virtual clock and a heap give O(log n) per
change). `ClassShareLink` handles any capacities: flows with the same NIC capacity
always get the same rate, so it keeps one virtual clock and heap per capacity class and
water-fills over the classes, O(#classes + log n) per change. `WaterFillLink` is the
reference: per-flow state and an O(n log n) water-fill on every change (what the
simulator used before; `simulate(..., fast=False)` still runs it, and the equivalence
tests compare the two).
"""

from __future__ import annotations

import heapq
from typing import Callable

import simpy

from sim.events import Call, call_later

# A flow is done when what is left would take at most this long: absorbs the float
# rounding of `remaining / rate` timers, which at large simulated times can be below the
# resolution of the clock itself (the ulp of t = 1e4 s is about 2e-12 s).
_DONE_S = 1e-7

DeliverFn = Callable[[int, float, float], None]  # (worker index, start_s, arrival end_s)


def water_fill(caps: list[float], shared_cap: float) -> list[float]:
    """Max-min fair rates of flows with private capacities `caps` sharing one link."""
    order = sorted(range(len(caps)), key=caps.__getitem__)
    rates = [0.0] * len(caps)
    left, n = shared_cap, len(caps)
    for j, i in enumerate(order):
        level = left / (n - j)
        if caps[i] < level:
            rates[i] = caps[i]
            left -= caps[i]
        else:
            for k in order[j:]:
                rates[k] = level
            break
    return rates


class _Link:
    """Timer and delivery logic shared by both implementations."""

    def __init__(self, env: simpy.Environment, shared_cap_bytes_per_s: float, deliver: DeliverFn):
        self.env = env
        self.shared_cap = shared_cap_bytes_per_s
        self.deliver = deliver
        self._timer_at = float("inf")  # when the pending timer fires (inf: none pending)
        self._timer_gen = 0  # timers of older generations are stale and ignored
        self.bytes_sent = 0.0

    # subclass hooks ---------------------------------------------------------------
    def _advance(self, now: float) -> None: ...
    def _insert(self, worker: int, nbytes: float, latency_s: float, start_s: float) -> None: ...  # no rate update
    def _set_rates(self) -> None: ...
    def _pop_done(self) -> list[tuple[int, float, float]]: ...  # (worker, latency_s, start_s)
    def _next_done_s(self) -> float: ...  # seconds from now to the next completion (inf if idle)

    # public -----------------------------------------------------------------------
    def send(self, worker: int, nbytes: float, latency_s: float) -> None:
        """Start a transfer of `nbytes` now; `deliver(worker, start, arrival)` runs when it has been sent."""
        now = self.env.now
        self._advance(now)
        self._insert(worker, nbytes, latency_s, now)
        self._set_rates()
        self._arm(now)

    def send_many(self, workers: list[int], nbytes: float, latency_s: list[float]) -> None:
        """Start one transfer of `nbytes` per worker now (one rate update for all)."""
        now = self.env.now
        self._advance(now)
        for w in workers:
            self._insert(w, nbytes, latency_s[w], now)
        self._set_rates()
        self._arm(now)

    # internals --------------------------------------------------------------------
    def _arm(self, now: float) -> None:
        at = now + self._next_done_s()
        if at < self._timer_at:  # a later target keeps the pending (earlier) timer
            self._timer_at = at
            self._timer_gen += 1
            call_later(self.env, at - now, self._on_timer, self._timer_gen)

    def _on_timer(self, ev: Call) -> None:
        if ev.value != self._timer_gen:
            return  # superseded by an earlier timer
        now = self.env.now
        self._timer_at = float("inf")
        self._advance(now)
        done = self._pop_done()
        self._arm(now)
        deliver = self.deliver
        for worker, latency_s, start_s in done:
            deliver(worker, start_s, now + latency_s)


class EqualShareLink(_Link):
    """All worker NICs equal: every active flow runs at min(worker_cap, shared_cap / n).

    A virtual clock `served` counts the bytes each active flow has received since the
    start; a flow that entered at served = v with b bytes finishes when served = v + b.
    """

    def __init__(self, env: simpy.Environment, shared_cap_bytes_per_s: float, worker_cap_bytes_per_s: float,
                 deliver: DeliverFn):
        super().__init__(env, shared_cap_bytes_per_s, deliver)
        self.worker_cap = worker_cap_bytes_per_s
        self._served = 0.0
        self._t_last = 0.0
        self._rate = 0.0
        self._heap: list[tuple[float, int, int, float, float]] = []  # (finish_served, seq, worker, latency, start)
        self._seq = 0

    def _advance(self, now: float) -> None:
        self._served += self._rate * (now - self._t_last)
        self._t_last = now

    def send(self, worker: int, nbytes: float, latency_s: float) -> None:
        # the generic send (advance, insert, arm), inlined: this is the hot path
        now = self.env.now
        served = self._served + self._rate * (now - self._t_last)
        self._served = served
        self._t_last = now
        self._seq += 1
        heap = self._heap
        heapq.heappush(heap, (served + nbytes, self._seq, worker, latency_s, now))
        self.bytes_sent += nbytes
        rate = self.shared_cap / len(heap)
        if rate > self.worker_cap:
            rate = self.worker_cap
        self._rate = rate
        # max(): a flow due at this very instant whose timer has not fired yet
        at = now + max(0.0, (heap[0][0] - served) / rate)
        if at < self._timer_at:
            self._timer_at = at
            self._timer_gen += 1
            call_later(self.env, at - now, self._on_timer, self._timer_gen)

    def _set_rates(self) -> None:
        n = len(self._heap)
        self._rate = min(self.worker_cap, self.shared_cap / n) if n else 0.0

    def _insert(self, worker: int, nbytes: float, latency_s: float, start_s: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self._served + nbytes, self._seq, worker, latency_s, start_s))
        self.bytes_sent += nbytes

    def _on_timer(self, ev: Call) -> None:
        # the generic _on_timer (advance, pop the finished flows, re-arm, deliver), inlined
        if ev.value != self._timer_gen:
            return
        now = self.env.now
        rate = self._rate
        served = self._served + rate * (now - self._t_last)
        self._t_last = now
        heap = self._heap
        limit = served + rate * _DONE_S
        done = []
        while heap and heap[0][0] <= limit:
            done.append(heapq.heappop(heap))
        if heap:
            rate = self.shared_cap / len(heap)
            if rate > self.worker_cap:
                rate = self.worker_cap
            self._rate = rate
            self._served = served
            at = now + (heap[0][0] - served) / rate
            self._timer_at = at
            self._timer_gen += 1
            call_later(self.env, at - now, self._on_timer, self._timer_gen)
        else:
            self._rate = 0.0
            self._served = 0.0  # rebase the virtual clock: keeps float precision
            self._timer_at = float("inf")
        deliver = self.deliver
        for _, _, worker, latency_s, start_s in done:
            deliver(worker, start_s, now + latency_s)

    def _pop_done(self) -> list[tuple[int, float, float]]:
        heap = self._heap
        limit = self._served + self._rate * _DONE_S
        done = []
        while heap and heap[0][0] <= limit:
            _, _, worker, latency_s, start_s = heapq.heappop(heap)
            done.append((worker, latency_s, start_s))
        if done:
            self._set_rates()
            if not heap:
                self._served = 0.0  # rebase the virtual clock: keeps float precision
        return done

    def _next_done_s(self) -> float:
        if not self._heap:
            return float("inf")
        return max(0.0, (self._heap[0][0] - self._served) / self._rate)


class WaterFillLink(_Link):
    """Any worker NIC capacities, per-flow state, water-filling recomputed whenever the flow
    set changes: O(n log n) per change. The reference implementation (fast=False)."""

    def __init__(self, env: simpy.Environment, shared_cap_bytes_per_s: float, worker_caps_bytes_per_s: list[float],
                 deliver: DeliverFn):
        super().__init__(env, shared_cap_bytes_per_s, deliver)
        self.worker_caps = worker_caps_bytes_per_s
        self._flows: list[list] = []  # [remaining_bytes, rate, worker, latency_s, start_s]
        self._t_last = 0.0

    def _advance(self, now: float) -> None:
        dt = now - self._t_last
        self._t_last = now
        if dt > 0.0:
            for f in self._flows:
                f[0] -= f[1] * dt

    def _set_rates(self) -> None:
        flows = self._flows
        if flows:
            rates = water_fill([self.worker_caps[f[2]] for f in flows], self.shared_cap)
            for f, r in zip(flows, rates):
                f[1] = r

    def _insert(self, worker: int, nbytes: float, latency_s: float, start_s: float) -> None:
        self._flows.append([float(nbytes), 0.0, worker, latency_s, start_s])
        self.bytes_sent += nbytes

    def _pop_done(self) -> list[tuple[int, float, float]]:
        done = [(f[2], f[3], f[4]) for f in self._flows if f[0] <= f[1] * _DONE_S]
        if done:
            self._flows = [f for f in self._flows if f[0] > f[1] * _DONE_S]
            self._set_rates()
        return done

    def _next_done_s(self) -> float:
        if not self._flows:
            return float("inf")
        return max(0.0, min(f[0] / f[1] for f in self._flows))


class ClassShareLink(_Link):
    """Any worker NIC capacities, O(#classes + log n) per change.

    Water-filling gives every flow of the same capacity the same rate, so the flows of one
    capacity class share a virtual clock `served[k]` (bytes each of its flows has received)
    and a heap of finish marks, as in EqualShareLink; water-filling runs over the classes,
    not the flows. Completions are delivered in insertion order, as WaterFillLink does.
    """

    def __init__(self, env: simpy.Environment, shared_cap_bytes_per_s: float, worker_caps_bytes_per_s: list[float],
                 deliver: DeliverFn):
        super().__init__(env, shared_cap_bytes_per_s, deliver)
        self.class_caps = sorted(set(worker_caps_bytes_per_s))  # ascending: the water-fill order
        index = {cap: k for k, cap in enumerate(self.class_caps)}
        self.class_of = [index[cap] for cap in worker_caps_bytes_per_s]
        n_classes = len(self.class_caps)
        self._served = [0.0] * n_classes
        self._rate = [0.0] * n_classes
        self._heaps: list[list[tuple[float, int, int, float, float]]] = [[] for _ in range(n_classes)]
        self._n_flows = 0
        self._t_last = 0.0
        self._seq = 0

    def _advance(self, now: float) -> None:
        dt = now - self._t_last
        self._t_last = now
        served, rate = self._served, self._rate
        for k in range(len(served)):
            served[k] += rate[k] * dt

    def send(self, worker: int, nbytes: float, latency_s: float) -> None:
        # the generic send (advance, insert, set rates, arm) with fewer calls: the hot path
        now = self.env.now
        if now != self._t_last:  # no time passed: nothing to advance
            self._advance(now)
        k = self.class_of[worker]
        self._seq += 1
        heapq.heappush(self._heaps[k], (self._served[k] + nbytes, self._seq, worker, latency_s, now))
        self._n_flows += 1
        self.bytes_sent += nbytes
        at = now + self._set_rates()
        if at < self._timer_at:
            self._timer_at = at
            self._timer_gen += 1
            call_later(self.env, at - now, self._on_timer, self._timer_gen)

    def _insert(self, worker: int, nbytes: float, latency_s: float, start_s: float) -> None:
        k = self.class_of[worker]
        self._seq += 1
        heapq.heappush(self._heaps[k], (self._served[k] + nbytes, self._seq, worker, latency_s, start_s))
        self._n_flows += 1
        self.bytes_sent += nbytes

    def _set_rates(self) -> float:
        """Water-filling over capacity classes (ascending): what `water_fill` gives each flow.
        Returns the seconds from now to the next completion (inf if idle), which needs the
        new rates: one pass over the classes for both."""
        left, n_left = self.shared_cap, self._n_flows
        level = None
        best = float("inf")
        rate, heaps, served = self._rate, self._heaps, self._served
        for k, cap in enumerate(self.class_caps):
            heap = heaps[k]
            if not heap:
                rate[k] = 0.0
                continue
            if level is not None:
                r = level
            elif cap < left / n_left:
                r = cap
                left -= cap * len(heap)
                n_left -= len(heap)
            else:
                level = r = left / n_left  # this class and every larger one share what is left
            rate[k] = r
            dt = (heap[0][0] - served[k]) / r
            if dt < best:
                best = dt
        return best if best > 0.0 else 0.0

    def _next_done_s(self) -> float:
        return self._set_rates()  # the rates depend on the flow counts alone: recomputing them changes nothing

    def _on_timer(self, ev: Call) -> None:
        # the generic _on_timer (advance, pop the finished flows, re-arm, deliver) with fewer calls
        if ev.value != self._timer_gen:
            return
        now = self.env.now
        self._timer_at = float("inf")
        self._advance(now)
        done = self._pop_done()
        at = now + self._set_rates()
        if at < self._timer_at:
            self._timer_at = at
            self._timer_gen += 1
            call_later(self.env, at - now, self._on_timer, self._timer_gen)
        deliver = self.deliver
        for _, _, worker, latency_s, start_s in done:
            deliver(worker, start_s, now + latency_s)

    def _pop_done(self) -> list[tuple[float, int, int, float, float]]:
        """The finished flows as their heap entries (finish, seq, worker, latency_s, start_s),
        in insertion order, as WaterFillLink delivers; the rates are not updated."""
        done = []
        served, rate = self._served, self._rate
        for k, heap in enumerate(self._heaps):
            if heap:
                limit = served[k] + rate[k] * _DONE_S
                while heap and heap[0][0] <= limit:
                    done.append(heapq.heappop(heap))
                if not heap:
                    served[k] = 0.0  # rebase the virtual clock: keeps float precision
        if len(done) > 1:
            done.sort(key=lambda f: f[1])
        self._n_flows -= len(done)
        return done


def make_link(env: simpy.Environment, shared_cap_bytes_per_s: float, worker_caps_bytes_per_s: list[float],
              deliver: DeliverFn, fast: bool = True) -> _Link:
    """The cheapest exact implementation for these capacities; fast=False: the reference
    per-flow water-fill for unequal NICs (what the simulator did before ClassShareLink)."""
    if len(set(worker_caps_bytes_per_s)) == 1:
        return EqualShareLink(env, shared_cap_bytes_per_s, worker_caps_bytes_per_s[0], deliver)
    if fast:
        return ClassShareLink(env, shared_cap_bytes_per_s, worker_caps_bytes_per_s, deliver)
    return WaterFillLink(env, shared_cap_bytes_per_s, worker_caps_bytes_per_s, deliver)
