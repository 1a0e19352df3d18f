"""How long bsp rounds kept workers waiting at the barrier, read from a trace's records
the same way for a simulated and a measured trace (docs/policies.md, lb-rebalance).

A round is the update records that share a version (a bsp round's workers all get its
version). A worker's i-th push of a phase is its i-th update of the phase (one update per
push, in both traces). In a round, each worker waits from the end of its push until the
end of the round's last push: the barrier holds it that long. Pushes applied on their own
(asp, a worker outside the barrier) wait for nobody."""

from __future__ import annotations

from typing import Iterable, NamedTuple


class BarrierWait(NamedTuple):
    wait_s: float  # summed over workers and rounds
    workers: int  # the phase's workers that pushed
    span_s: float  # from `since_s` (or the phase start) to the phase end
    rounds: int

    @property
    def fraction(self) -> float:
        """The mean worker's barrier wait as a share of the span."""
        return self.wait_s / (self.workers * self.span_s) if self.workers and self.span_s > 0 else 0.0


def barrier_wait(records: Iterable[dict], phase: int, since_s: float | None = None,
                 until_s: float | None = None) -> BarrierWait:
    """Barrier wait in phase `phase`, counting the rounds whose pushes all ended at or after
    `since_s` (default: the phase start) and before `until_s` (default: the phase end)."""
    push_ends: dict[str, list[float]] = {}
    nth_update: dict[str, int] = {}
    round_pushes: dict[int, list[tuple[str, int]]] = {}  # version -> (worker, its nth push)
    start_s = end_s = None
    for r in records:
        if r.get("phase") != phase and r.get("index") != phase:
            continue
        kind = r["kind"]
        if kind == "push":
            push_ends.setdefault(r["worker"], []).append(r["end_s"])
        elif kind == "update":
            i = nth_update.get(r["worker"], 0)
            nth_update[r["worker"]] = i + 1
            round_pushes.setdefault(r["version"], []).append((r["worker"], i))
        elif kind == "phase" and r.get("index") == phase:
            start_s, end_s = r["start_s"], r["end_s"]
    if start_s is None:
        raise ValueError(f"no phase record for phase {phase}")
    since = start_s if since_s is None else max(since_s, start_s)
    until = end_s if until_s is None else min(until_s, end_s)
    wait_s, rounds = 0.0, 0
    for pushes in round_pushes.values():
        if len(pushes) < 2:
            continue
        ends = [push_ends[w][i] for w, i in pushes]
        if min(ends) < since or max(ends) >= until:
            continue
        last = max(ends)
        wait_s += sum(last - e for e in ends)
        rounds += 1
    return BarrierWait(wait_s, len(push_ends), until - since, rounds)
