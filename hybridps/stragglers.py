"""Transient straggler episodes, shared by the simulator and the runtime so that a real
run and its simulation slow down the same workers at the same times.

Per worker, episodes arrive as a Poisson process (`rate_per_hour`) and last an
exponential time (`mean_duration_s`); during one, compute takes `slowdown` times longer.
The draws for worker i come from `numpy.random.default_rng([seed, i])`, so adding a
worker does not change the others' episodes.

Jitter (`jitter_cv`): every iteration of every worker is also multiplied by an
independent gamma draw of mean 1 and that coefficient of variation, from
`default_rng([seed, i, 1])`, one draw per iteration in order. It is the run-to-run noise
of a shared machine; under bsp a round waits for the slowest worker, so noise lengthens
rounds even though it does not change the mean iteration time.
"""

from __future__ import annotations

import bisect

import numpy as np

from hybridps.spec import Cluster


class StragglerSchedule:
    """Episodes per worker as sorted (start_s, end_s) arrays, generated lazily up to a horizon."""

    def __init__(self, cluster: Cluster, seed: int | None = None):
        spec = cluster.stragglers
        self.factor = spec.slowdown
        self.rate_per_s = spec.rate_per_hour / 3600.0
        self.mean_duration_s = spec.mean_duration_s
        self.seed = spec.seed if seed is None else seed
        affected = set(spec.workers) if spec.workers else {w.name for w in cluster.worker_list}
        self._rngs: dict[str, np.random.Generator] = {}
        self._starts: dict[str, list[float]] = {}
        self._ends: dict[str, list[float]] = {}
        self._max_end: dict[str, list[float]] = {}  # running max of ends: episodes may overlap
        self._horizon: dict[str, float] = {}
        self._next_change = (0.0, -1.0)  # next_change_s's last answer: (asked at, change time)
        self.jitter_cv = spec.jitter_cv
        self._jitter_rngs = {w.name: np.random.default_rng([self.seed, w.index, 1]) for w in cluster.worker_list} \
            if self.jitter_cv > 0 else {}
        for w in cluster.worker_list:
            if w.name in affected and self.rate_per_s > 0:
                self._rngs[w.name] = np.random.default_rng([self.seed, w.index])
                self._starts[w.name] = []
                self._ends[w.name] = []
                self._max_end[w.name] = []
                self._horizon[w.name] = 0.0

    @property
    def active(self) -> bool:
        return bool(self._rngs)

    def _extend(self, worker: str, until_s: float) -> None:
        """Draw episodes until one starts after `until_s`. Draws come in vectorised chunks of
        (gap, duration) pairs, the same stream a one-at-a-time loop would consume."""
        rng = self._rngs[worker]
        starts, ends, max_end = self._starts[worker], self._ends[worker], self._max_end[worker]
        t = self._horizon[worker]
        while t <= until_s:
            k = 64 + int(1.1 * self.rate_per_s * (until_s - t))
            draws = rng.standard_exponential((k, 2))
            new_starts = np.cumsum(np.concatenate(([t], draws[:, 0] / self.rate_per_s)))[1:]
            new_ends = new_starts + draws[:, 1] * self.mean_duration_s
            running = np.maximum.accumulate(np.concatenate(([max_end[-1] if max_end else 0.0], new_ends)))[1:]
            starts.extend(new_starts.tolist())
            ends.extend(new_ends.tolist())
            max_end.extend(running.tolist())
            t = float(new_starts[-1])
        self._horizon[worker] = t

    def factor_at(self, worker: str, t_s: float) -> float:
        """Compute-time factor for an iteration of `worker` starting at `t_s`."""
        if worker not in self._rngs:
            return 1.0
        if t_s >= self._horizon[worker]:
            self._extend(worker, t_s + 3600.0)
        i = bisect.bisect_right(self._starts[worker], t_s) - 1
        # inside an episode iff some episode that started before t_s ends after it
        return self.factor if i >= 0 and self._max_end[worker][i] > t_s else 1.0

    def next_change_s(self, t_s: float) -> float:
        """The earliest time after `t_s` at which some worker's factor may change: the next
        episode start, or the end of the episode a worker is in (inf if none). The
        simulator fast-forwards no round past it. The answer holds until that time, so it
        is kept: one pass over the workers per change, not per call."""
        since_s, change_s = self._next_change
        if since_s <= t_s < change_s:
            return change_s
        change_s = float("inf")
        for worker in self._rngs:
            if t_s >= self._horizon[worker]:
                self._extend(worker, t_s + 3600.0)
            starts = self._starts[worker]
            i = bisect.bisect_right(starts, t_s)  # starts[i] exists: drawn past the horizon
            nxt = starts[i]
            if i > 0 and t_s < self._max_end[worker][i - 1] < nxt:
                nxt = self._max_end[worker][i - 1]
            if nxt < change_s:
                change_s = nxt
        self._next_change = (t_s, change_s)
        return change_s

    def jitter(self, worker: str) -> float:
        """The next iteration's noise factor for `worker` (mean 1; 1.0 when jitter_cv is 0)."""
        rng = self._jitter_rngs.get(worker)
        if rng is None:
            return 1.0
        shape = 1.0 / (self.jitter_cv * self.jitter_cv)
        return float(rng.gamma(shape, 1.0 / shape))

    def episodes(self, worker: str, until_s: float) -> list[tuple[float, float]]:
        if worker not in self._rngs:
            return []
        if until_s >= self._horizon[worker]:
            self._extend(worker, until_s)
        return [(s, e) for s, e in zip(self._starts[worker], self._ends[worker]) if s <= until_s]
