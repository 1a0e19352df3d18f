"""Lightweight SimPy events for the simulator's internal timers and the workers' wake-ups.

`env.timeout(d).callbacks.append(fn)` costs three Python calls (the BoundClass lookup,
`Timeout.__init__` with its checks, `Environment.schedule`). The network's completion
timers, the PS's applies and the workers' compute ends need none of that generality:
nothing yields them and nothing fails. `call_later` builds a bare object that
`Environment.step` can process (it reads `callbacks` and `_ok`) and puts it in the event
queue exactly where a Timeout of the same delay would go (time `now + delay`, NORMAL
priority, the next insertion number), so the simulation is the same event for event.
`Arrival` (a worker waits on it from its push until its pull arrives) is scheduled the
same way once its time is known. This module is the one place that touches SimPy's queue
directly.
"""

from __future__ import annotations

from heapq import heappush
from typing import Any, Callable

import simpy
from simpy.core import NORMAL


class Call:
    """A triggered event with one callback, `fn(event)`; `event.value` is its argument."""

    __slots__ = ("callbacks", "_ok", "value")


_new = object.__new__


class Arrival(simpy.Event):
    """An event that fires at a known future time (what `Timeout` does), created before
    that time is known: the worker waits on it from its push until its pull arrives."""

    def succeed_at(self, t_s: float, value: int = 0) -> None:
        """Fire at `t_s` with `value`, where `Environment.schedule` would put it."""
        self._ok = True
        self._value = value
        env = self.env
        now = env._now
        # now + (t_s - now), not t_s: the float Environment.schedule(delay) would compute
        heappush(env._queue, (now + (t_s - now), NORMAL, next(env._eid), self))


def call_later(env: simpy.Environment, delay_s: float, fn: Callable[[Call], None], value: Any = None) -> None:
    """Run `fn(event)` `delay_s` from now (`event.value` is `value`), where a Timeout would."""
    ev = _new(Call)
    ev.callbacks = [fn]
    ev._ok = True
    ev.value = value
    heappush(env._queue, (env._now + delay_s, NORMAL, next(env._eid), ev))
