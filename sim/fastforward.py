"""bsp steady-state fast-forward: how many whole rounds the parameter server may skip.

A bsp round starts when the PS sends every worker the last update at once and ends at the
next apply. Its course is a function of what each worker computes in it (iterations,
samples, compute time) and of fixed costs (bytes, NICs, latencies, apply time): the
links are empty and the PS idle at both ends. So when the next rounds give every worker
the same interval as this one (full batches, no epoch wrap; or DBSL's whole-epoch
interval), with no straggler episode starting or ending, no jitter, no trace, no policy
but one whose decisions the PS can show the same over them (`ParameterServer._policy_rounds`),
and no epoch end (hence no evaluation, no phase end) among them, each repeats this one
shifted in time, and the PS can count them at once (`ParameterServer._skip_rounds`)
instead of simulating them. The simulation stays event by event everywhere else.

The template is the last round simulated event by event, measured from when its pulls
were sent (after any evaluation delay) to the apply that ends it; the first round of a
phase (no pull before it) is never one. Skipped rounds are counted by multiplication
(K x the template's per-worker times), not K additions: docs/simulator.md gives the bound.
"""

from __future__ import annotations

from typing import Callable

ALWAYS = 1 << 62  # a whole-epoch interval repeats until the ledger says otherwise


def repeats_after(pos: int, iterations: int, iters_per_epoch: int, every: int) -> int:
    """How many intervals identical to the one a worker just computed (`iterations` of
    them, leaving it at `pos` in its worker-epoch) follow it in a row.

    An interval that did not end the worker-epoch was `every` full batches; the next ones
    are the same while they stay clear of the epoch's last (partial) batch. One that
    ended it repeats only if it was the whole epoch (DBSL's mini-epoch)."""
    if pos == 0:
        return ALWAYS if iterations == iters_per_epoch else 0
    return (iters_per_epoch - 1 - pos) // every


class FastForward:
    """Per phase: the template round (when its pulls were sent) and the fewest repeats
    any worker can make; `rounds` says how many rounds to skip at an apply."""

    def __init__(self, next_change_s: Callable[[float], float] | None):
        self.next_change_s = next_change_s  # StragglerSchedule.next_change_s, None without episodes
        self.pulls_at_s: float | None = None
        self.repeats = ALWAYS

    def start_phase(self) -> None:
        self.pulls_at_s = None  # the first round starts from the phase start, not from a pull
        self.repeats = ALWAYS

    def pushed(self, repeats: int) -> None:
        """A worker of the round pushed an interval that `repeats` more would equal."""
        if repeats < self.repeats:
            self.repeats = repeats

    def pulls_sent(self, now_s: float) -> None:
        """A round's pulls left together now: the next round, whose pushes all come after
        them, may be a template."""
        self.pulls_at_s = now_s
        self.repeats = ALWAYS

    def rounds(self, now_s: float, quiet_rounds: int) -> tuple[int, float]:
        """At the apply of a round (now): (rounds to skip after it, the round's period).
        `quiet_rounds`: how many the ledger allows (Ledger.quiet_rounds)."""
        start_s = self.pulls_at_s
        if start_s is None:
            return 0, 0.0
        period_s = now_s - start_s
        k = min(self.repeats, quiet_rounds)
        if k > 0 and self.next_change_s is not None:
            # the last skipped round ends by the next factor change (its iterations start a
            # compute, a push and an apply earlier); none since the template's pulls either
            k = min(k, int((self.next_change_s(start_s) - now_s) / period_s))
        return max(k, 0), period_s
