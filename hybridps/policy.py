"""Online policies (issue 10; docs/policies.md): at every update the parameter server is
about to apply (a bsp round, or a push applied on its own) a policy sees what a real PS
can see and may change how the rest of the phase runs.

- `Observation`: an immutable record of plain numbers and tuples, built by an `Observer`
  that the PS feeds with plain values (an interval's compute time, an exchange's
  duration). The simulator's PS (sim/ps.py) feeds it, and the runtime's PhaseServer
  (runtime/server.py) from the records that come with the pushes, so one policy object
  runs in both.
- `Action`: switch the phase's sync mode (bsp, asp, ssp with a bound), change a running
  ssp phase's bound, take a worker out of the bsp barrier or bring it back, re-split the
  batches. What an action does to the rounds and to the ssp gate is
  `hybridps.semantics.Barrier`'s rule, what a rebalance does `semantics.Rebalance`'s
  (docs/semantics.md, "Policies").
- `Policy.decide(obs) -> list[Action]`: a deterministic function of what it observed.
- `consult(...)`: the PS's side, written once for both PSs: observe, decide, carry out
  the actions through the Barrier, build the trace records.
- `make_policy(spec)`: the built-ins (Sync-Switch's greedy and elastic, adaptive-ssp)
  and a user's `{"kind": "python", "target": "m:C"}`.

Standard library only: no torch, no SimPy.
"""

from __future__ import annotations

import heapq
import importlib
import math
from collections import deque
from dataclasses import dataclass
from typing import AbstractSet, Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from hybridps.errors import UserError

SYNCS = ("bsp", "asp", "ssp")
ACTION_KINDS = ("set_sync", "set_staleness", "exclude", "include", "rebalance")
MAX_STALENESS = 10**9  # an ssp bound's largest value (the plan's own bound has the same cap)


class PolicyError(UserError):
    """A bad policy spec or a bad action: `field` names the spec field (`threshold`,
    `target`) or `action`. The spec's loader turns it into a SpecError naming the path."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"policy {field}: {message}")


class Observation(NamedTuple):
    """What the PS sees at an update it is about to apply: a bsp round once its last push
    is in, or a push applied on its own. `pushed`: the workers whose pushes it carries (in
    arrival order; `worker` is the last, whose arrival completed it). Compute figures are
    means over a worker's last `window` intervals of the phase.

    Immutable and typed, a NamedTuple rather than a frozen dataclass: one is built at every
    update, and a frozen dataclass costs five times as much to build. For the same reason
    the per-worker figures are read from the observer when asked for: `workers` (the
    phase's workers, global indices ascending) and the tuples aligned with it,
    `compute_s_per_iteration`, `compute_s_per_sample`, `compute_s_per_interval`,
    `exchange_s` (the exchange before each one's latest push, push start to pull end,
    waits included; 0.0 for none), or one worker's with `compute_s_per_sample_of(w)`;
    `compute_spread`, slowest over fastest per interval. Read them inside `decide`."""

    t_s: float
    phase: int
    pushed: tuple[int, ...]
    sync: str  # "bsp", "asp" or "ssp", now
    planned_sync: str  # the plan's
    staleness: int  # of the last applied update (0 under bsp)
    source: "Observer"
    barrier_members: AbstractSet[int]  # the workers a bsp round waits for
    staleness_bound: int | None = None  # the ssp gate's bound now; None outside ssp
    worker: int = -1  # pushed[-1], a field rather than a property: most policies read it at every update

    @property
    def phase_fraction(self) -> float:
        """Share of the phase's samples (or mini-epochs, under DBSL's rule) applied, 0..1."""
        return self.source.phase_fraction()

    @property
    def barrier(self) -> tuple[int, ...]:
        return tuple(sorted(self.barrier_members))

    @property
    def workers(self) -> tuple[int, ...]:
        return self.source.workers

    def compute_s_per_sample_of(self, worker: int) -> float:
        src = self.source
        i = src.slot[worker]
        return src.sum_s[i] / src.sum_samples[i]  # per_sample_s's, without a call: read at every update

    def compute_s_per_iteration_of(self, worker: int) -> float:
        return self.source.per_iteration_s(self.source.slot[worker])

    def batch_of(self, worker: int) -> int:
        """The batch of `worker`'s latest interval (a rebalance shows here once in effect)."""
        return self.source.batch[self.source.slot[worker]]

    @property
    def compute_s_per_sample(self) -> tuple[float, ...]:
        return tuple(self.source.per_sample_s(i) for i in range(len(self.workers)))

    @property
    def compute_s_per_iteration(self) -> tuple[float, ...]:
        return tuple(self.source.per_iteration_s(i) for i in range(len(self.workers)))

    @property
    def compute_s_per_interval(self) -> tuple[float, ...]:
        return tuple(self.source.per_interval_s(i) for i in range(len(self.workers)))

    @property
    def compute_spread(self) -> float:
        """Slowest over fastest of the workers' mean compute time per interval (1.0: all
        alike): how many intervals the fastest runs while the slowest runs one, what an
        ssp bound must allow for the fastest not to wait (AdaptiveSSP)."""
        return self.source.spread()

    @property
    def exchange_s(self) -> tuple[float, ...]:
        return tuple(self.source.exchange_s)

    def as_record(self, names: Sequence[str]) -> dict[str, Any]:
        """The trace's `observed` object: worker names for indices."""
        def by_name(values: tuple[float, ...]) -> dict[str, float]:
            return {names[w]: v for w, v in zip(self.workers, values)}

        return {"worker": names[self.worker], "pushed": [names[w] for w in self.pushed], "sync": self.sync,
                "compute_s_per_iteration": by_name(self.compute_s_per_iteration),
                "exchange_s": by_name(self.exchange_s), "staleness": self.staleness,
                "phase_fraction": self.phase_fraction, "barrier": [names[w] for w in self.barrier],
                "staleness_bound": self.staleness_bound}


@dataclass(frozen=True)
class Action:
    """`set_sync` to `sync` (ssp with bound `staleness`); `set_staleness`: a new bound for
    the running ssp phase; `exclude` / `include` `worker` (a global index) from / in the
    bsp barrier. Build with Action.set_sync("asp"), Action.set_sync("ssp", staleness=2),
    Action.set_staleness(4), Action.exclude(w), Action.include(w)."""

    kind: str
    sync: str | None = None
    worker: int | None = None
    batches: tuple[tuple[int, int], ...] | None = None  # rebalance: (worker, batch) pairs
    staleness: int | None = None

    @classmethod
    def set_sync(cls, sync: str, staleness: int | None = None) -> "Action":
        return cls("set_sync", sync=sync, staleness=staleness)

    @classmethod
    def set_staleness(cls, staleness: int) -> "Action":
        return cls("set_staleness", staleness=staleness)

    @classmethod
    def exclude(cls, worker: int) -> "Action":
        return cls("exclude", worker=worker)

    @classmethod
    def include(cls, worker: int) -> "Action":
        return cls("include", worker=worker)

    @classmethod
    def rebalance(cls, batches: dict[int, int]) -> "Action":
        """New batches for every worker of the phase (global index -> batch), summing to
        the plan's global batch; each worker takes its up at its next worker-epoch."""
        return cls("rebalance", batches=tuple(sorted(batches.items())))

    def check(self, workers: Sequence[int], sync_now: str = "bsp") -> None:
        """Raise PolicyError unless this action makes sense in a phase of `workers` whose
        mode is `sync_now`."""
        kind = self.kind
        if kind not in ACTION_KINDS:
            raise PolicyError("action", f"unknown action kind {kind!r} (known: {', '.join(ACTION_KINDS)})")
        if kind == "set_sync":
            if self.sync not in SYNCS:
                raise PolicyError("action", f"set_sync needs sync 'bsp', 'asp' or 'ssp', got {self.sync!r}")
            if self.sync != "ssp" and self.staleness is not None:
                raise PolicyError("action", f"staleness applies to set_sync('ssp') only, got set_sync({self.sync!r}, "
                                            f"staleness={self.staleness!r})")
        elif kind == "set_staleness" and sync_now != "ssp":
            raise PolicyError("action", f"set_staleness changes the bound of an ssp phase, and the phase is "
                                        f"{sync_now} now: use Action.set_sync('ssp', staleness=k)")
        elif kind == "rebalance":
            self._check_batches(workers)
        elif kind in ("exclude", "include") and self.worker not in workers:
            raise PolicyError("action", f"{kind} needs a worker of the phase, got {self.worker!r}")
        if kind == "set_staleness" or self.sync == "ssp":
            k = self.staleness
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= MAX_STALENESS:
                what = "set_staleness" if kind == "set_staleness" else "set_sync('ssp')"
                raise PolicyError("action", f"{what} needs staleness=k, an integer from 0 to {MAX_STALENESS}, "
                                            f"got {k!r}")

    def _check_batches(self, workers: Sequence[int]) -> None:
        got = dict(self.batches or ())
        if sorted(got) != sorted(workers):
            raise PolicyError("action", f"rebalance needs a batch for every worker of the phase {sorted(workers)}, "
                                        f"got workers {sorted(got)}")
        for w, b in got.items():
            if not isinstance(b, int) or isinstance(b, bool) or b < 1:
                raise PolicyError("action", f"rebalance needs integer batches >= 1, got {b!r} for worker {w}")

    def as_record(self, names: Sequence[str]) -> dict[str, Any]:
        if self.kind == "set_sync":
            if self.sync == "ssp":
                return {"kind": self.kind, "sync": self.sync, "staleness": self.staleness}
            return {"kind": self.kind, "sync": self.sync}
        if self.kind == "rebalance":
            return {"kind": self.kind, "batches": {names[w]: b for w, b in self.batches}}
        if self.kind == "set_staleness":
            return {"kind": self.kind, "staleness": self.staleness}
        return {"kind": self.kind, "worker": names[self.worker]}


class Policy:
    """Base class. Subclasses set `window` (intervals the observer averages over) and
    override `decide`; they may keep state, as long as it comes from what they observed
    (decisions must be deterministic). A new instance runs each phase; `acts_on` says
    whether to consult it at all in a phase planned with that sync mode.

    `uses_ssp = True` declares that it may switch a phase planned bsp or asp to ssp: the
    PS then keeps the ssp gate's count of every worker's exchanges from the phase's start
    (docs/semantics.md, "Policies"), which a policy that never does is spared (on a phase
    planned ssp the gate is there anyway)."""

    window: int = 5
    # may it switch a bsp phase to asp (set_sync)? The convergence model charges such a switch
    # and `plan` marks it as a risk; a user's policy is assumed to (docs/convergence.md)
    switches_sync: bool = True
    # may it take a worker out of the barrier (its pushes then stale)? A risk `plan` marks
    excludes_workers: bool = True
    uses_ssp: bool = False
    # does it decide on the workers' windowed compute figures, the mode (and ssp bound) and the
    # barrier alone (not t_s, phase_fraction, exchange_s, staleness, nor how often or at whose
    # push it was asked), such that an observation it did not act on, repeated, leaves its
    # state unchanged and gets no action? Then `consult` does not ask it while none of these
    # changed since it last did not act, and, declared by the class (for the whole phase), the
    # simulator may fast-forward steady bsp rounds under it (sim/fastforward.py). An instance
    # may set it while it holds (adaptive-ssp, at rest); a user's policy is assumed not to
    decides_on_windows: bool = False
    PARAMS: dict[str, tuple[type, float, float]] = {}  # a built-in's parameters: name -> (type, min, max)

    def acts_on(self, planned_sync: str) -> bool:
        return True


def has_ssp_gate(planned_sync: str, policy: Policy | None) -> bool:
    """Does a phase run an ssp gate? Planned ssp, or a policy that may switch it to ssp
    (both PSs ask: the simulator's engine and the runtime's PhaseServer)."""
    return planned_sync == "ssp" or (policy is not None and policy.uses_ssp)

    def decide(self, obs: Observation) -> Sequence[Action]:
        return ()


class Observer:
    """Per worker of a phase, its last `window` intervals (compute seconds, iterations,
    samples) and its last exchange's duration, fed with plain numbers by whoever sees them:
    the simulator's PS, or the runtime's from its records. Running sums keep each push's
    update O(1) whatever the number of workers; means are divided out when read."""

    def __init__(self, workers: Sequence[int], window: int, phase_fraction: Callable[[], float] = lambda: 0.0):
        self.workers = tuple(sorted(workers))
        self.phase_fraction = phase_fraction  # how much of the phase is applied (Ledger.phase_fraction)
        self.slot = {w: i for i, w in enumerate(self.workers)}
        n = len(self.workers)
        self.window = window
        self.intervals: list[deque] = [deque(maxlen=window) for _ in range(n)]
        self.sum_s = [0.0] * n  # compute seconds in each worker's window
        self.sum_iterations = [0] * n
        self.sum_samples = [0] * n
        self.exchange_s = [0.0] * n
        self.batch = [0] * n  # the batch of each worker's latest interval
        self.missing = n  # workers with no interval yet: no observation until 0
        # what `consult` needs to know whether the policy would decide as it last did: the
        # workers whose windowed figures or batch changed since an update of theirs was last
        # shown to it (an interval equal to the one it drops from a full window changes none),
        # and whether the last consultation took no action; all of it for `policy`
        self.policy: Policy | None = None
        self.unseen = set(self.workers)
        self.declined = False

    def changing_feeds(self, rel_tol: float = 1e-9) -> list[int]:
        """If every worker computed more intervals like its latest (fast-forwarded rounds,
        sim/ps.py): after which of them (1, 2, ...) would some windowed figure change? Those
        that add to a window not yet full or drop an interval unlike the latest (iterations
        or samples different, compute seconds beyond `rel_tol`); the others drop one alike
        and change nothing. Past the last, every window holds only intervals alike."""
        window = self.window
        feeds: set[int] = set()
        for win in self.intervals:
            last_s, last_iterations, last_samples = win[-1]
            tol_s = rel_tol * last_s
            short = window - len(win)  # feeds that only add
            if short:
                feeds.update(range(1, short + 1))
            elif win.count(win[-1]) == window:
                continue  # all alike to the bit
            for position, (compute_s, iterations, samples) in enumerate(win, short + 1):
                if iterations != last_iterations or samples != last_samples or abs(compute_s - last_s) > tol_s:
                    feeds.add(position)
        return sorted(feeds)

    def again(self, workers: Iterable[int], times: int = 1) -> None:
        """Each of `workers` computed `times` more intervals like its latest, its last
        exchange and batch as they were (fast-forwarded rounds): `interval`'s sums, without
        the calls. A window that holds only intervals equal to the latest stays as it is."""
        slot, intervals, window, unseen = self.slot, self.intervals, self.window, self.unseen
        sum_s, sum_iterations, sum_samples = self.sum_s, self.sum_iterations, self.sum_samples
        for w in workers:
            i = slot[w]
            win = intervals[i]
            latest = win[-1]
            if win.count(latest) == window:
                continue
            compute_s, iterations, samples = latest
            for _ in range(times):
                if len(win) < window:
                    win.append(latest)
                    sum_s[i] += compute_s
                    sum_iterations[i] += iterations
                    sum_samples[i] += samples
                else:
                    old = win[0]
                    win.append(latest)  # maxlen: drops old
                    if old == latest:
                        continue  # the sums would add 0
                    old_s, old_iterations, old_samples = old
                    sum_s[i] += compute_s - old_s
                    sum_iterations[i] += iterations - old_iterations
                    sum_samples[i] += samples - old_samples
                unseen.add(w)

    def interval(self, worker: int, compute_s: float, iterations: int, samples: int,
                 last_exchange_s: float = 0.0, batch: int = 0) -> None:
        """`worker`'s push arrived with an interval of `iterations` (`samples`) computed in
        `compute_s` at batch `batch`; `last_exchange_s`: its previous exchange, push start to
        pull end (0.0 for none)."""
        i = self.slot[worker]
        self.exchange_s[i] = last_exchange_s
        new = (compute_s, iterations, samples)
        win = self.intervals[i]
        if len(win) == self.window:
            old = win[0]
            win.append(new)  # maxlen: drops old
            if old == new and self.batch[i] == batch:
                return  # the window's figures are as they were (the sums would add 0)
            old_s, old_iterations, old_samples = old
            compute_s -= old_s
            iterations -= old_iterations
            samples -= old_samples
        else:
            if not win:
                self.missing -= 1
            win.append(new)
        self.batch[i] = batch
        self.sum_s[i] += compute_s
        self.sum_iterations[i] += iterations
        self.sum_samples[i] += samples
        self.unseen.add(worker)

    def per_sample_s(self, i: int) -> float:
        """Mean compute seconds per sample of the worker in slot `i` (its window)."""
        return self.sum_s[i] / self.sum_samples[i]

    def per_iteration_s(self, i: int) -> float:
        return self.sum_s[i] / self.sum_iterations[i]

    def per_interval_s(self, i: int) -> float:
        return self.sum_s[i] / len(self.intervals[i])

    def spread(self) -> float:
        """Slowest over fastest mean compute time per interval (1.0 when the fastest's is 0)."""
        sum_s, intervals = self.sum_s, self.intervals
        means = [sum_s[i] / len(intervals[i]) for i in range(len(sum_s))]
        fastest = min(means)
        return max(means) / fastest if fastest > 0 else 1.0

    @property
    def ready(self) -> bool:
        """A policy is consulted only once every worker of the phase has an interval."""
        return self.missing == 0

    def observe(self, t_s: float, phase: int, pushed: tuple[int, ...], sync: str, planned_sync: str,
                staleness: int, barrier: AbstractSet[int], staleness_bound: int | None = None) -> Observation:
        """The Observation of an update (`consult` builds the same in place: a call less at
        every update). tuple.__new__ is Observation(...) without its Python-level __new__."""
        return tuple.__new__(Observation, (t_s, phase, pushed, sync, planned_sync, staleness, self, barrier,
                                           staleness_bound, pushed[-1]))


def consult(policy: Policy, observer: Observer, barrier, t_s: float, phase: int, pushed: tuple[int, ...],
            planned_sync: str, staleness: int, names: Sequence[str] | None = None,
            rebalance=None) -> Iterable[tuple[Action, list[int], dict | None]]:
    """Ask `policy` at an update the PS is about to apply (the pushes of `pushed`, the last
    arriving at `t_s`) and carry out its actions through `barrier` (a
    hybridps.semantics.Barrier): from the next push on; the update at hand is applied as it
    was formed (docs/semantics.md, "Policies"). The rule both PSs follow, the simulator's
    (sim/ps.py) and the runtime's (runtime/server.py).

    Yields the actions taken (no-ops left out) one by one, each carried out as it is
    yielded, with the round it completed ([]: none) for the PS to apply before the update
    at hand, and its trace record (`names` given: worker names by index; else None). A
    switch into or out of ssp, or a new bound, may let workers held by the ssp gate go:
    the PS releases them after the actions. Nothing until every worker of the phase has
    pushed once. An invalid action raises PolicyError. `rebalance` (a
    hybridps.semantics.Rebalance) carries out `rebalance` actions: they reach each worker
    with its next pull.

    The common case, no action, returns an empty tuple without building a generator: the
    PS may consult at every push. Nor is a policy that declares `decides_on_windows` asked
    while nothing it decides on changed since it last took no action (every worker's
    windows shown to it at an update of its own since they last changed, no worker stopped
    for the phase): it would take none again, its state as it was."""
    if observer.missing:
        return ()
    if observer.policy is not policy:  # what another policy saw is no news to this one
        observer.policy, observer.unseen, observer.declined = policy, set(observer.workers), False
    windowed = policy.decides_on_windows
    unseen = observer.unseen
    if windowed and observer.declined and not unseen and not barrier.stopped:
        return ()
    gate = barrier.gate
    seen = tuple.__new__(Observation, (t_s, phase, pushed, barrier.sync, planned_sync, staleness, observer,
                                       barrier.members, gate.bound if gate is not None else None,
                                       pushed[-1]))  # observe()
    actions = policy.decide(seen)
    if unseen:
        unseen.difference_update(pushed)
    observer.declined = not actions  # an action may change the mode or the barrier: ask again
    if not actions:
        return ()
    return _carry_out(actions, seen, observer, barrier, names, rebalance)


def _carry_out(actions: Sequence[Action], seen: Observation, observer: Observer, barrier,
               names: Sequence[str] | None, rebalance) -> Iterator[tuple[Action, list[int], dict | None]]:
    """consult's actions, one by one through the Barrier (see there)."""
    t_s, phase = seen.t_s, seen.phase
    observed = seen.as_record(names) if names is not None else None  # before any action changes the barrier
    for action in actions:
        action.check(observer.workers, barrier.sync)
        if barrier.gate is None and action.kind == "set_sync" and action.sync == "ssp":
            raise PolicyError("action", f"set_sync('ssp') on a phase planned {seen.planned_sync} needs a policy "
                                        f"that declares uses_ssp = True (the PS then counts exchanges for the "
                                        f"ssp gate from the phase's start)")
        done = barrier.act(action) if action.kind != "rebalance" else _rebalance(rebalance, action)
        if done is None:
            continue  # a no-op: not recorded
        record = None
        if names is not None:
            record = {"kind": "policy", "t_s": t_s, "phase": phase, "observed": observed,
                      "action": action.as_record(names)}
        yield action, done, record


def _rebalance(rebalance, action: Action) -> list[int] | None:
    try:
        return rebalance.set(dict(action.batches))
    except ValueError as e:
        raise PolicyError("action", str(e)) from None


# --------------------------------------------------------------------------- built-ins


class _OwnBest(Policy):
    """A worker's slowdown: its compute time per sample over the last `window` intervals
    against its own best such mean in the phase. Each worker is its own reference, so a
    plan's slower devices are not stragglers. A worker's mean changes only when it pushes,
    so each decision looks at the update's workers alone."""

    def __init__(self) -> None:
        self.best_s: dict[int, float] = {}  # worker -> its lowest windowed time per sample
        self.slowdowns: dict[int, float] = {}  # worker -> its slowdown at its latest push

    def update_slowdowns(self, obs: Observation, slowed: set[int] | None = None, above: float = 0.0,
                         below: float = 0.0) -> None:
        """The slowdowns (and bests) of the workers whose pushes the update carries; their
        sums read directly from the observer: a bsp round asks for every worker's. With
        `slowed`, in the same pass (read at every update): a worker joins it above `above`
        and leaves it below `below`. A worker whose windows did not change since its last
        update shown here (Observer.unseen) keeps its slowdown, and `slowed` its membership."""
        src = obs.source
        unseen = src.unseen
        if not unseen:
            return  # the common case at a steady push: nothing to read
        best_s, slowdowns = self.best_s, self.slowdowns
        sum_s, sum_samples, slot = src.sum_s, src.sum_samples, src.slot
        for w in obs.pushed:
            if w not in unseen:
                continue
            i = slot[w]
            t = sum_s[i] / sum_samples[i]
            best = best_s.get(w)
            if best is None or t < best:
                best_s[w] = best = t
            slowdowns[w] = ratio = t / best if best > 0 else 1.0
            if slowed is not None:
                if ratio > above:
                    slowed.add(w)
                elif ratio < below and w in slowed:
                    slowed.discard(w)


class _Detector(_OwnBest):
    """Shared detection: a worker is slowed when its slowdown (_OwnBest) exceeds
    `threshold`, and counts as recovered below `threshold - hysteresis` (so one noisy
    interval does not flip it). It holds however many workers are slowed at once."""

    PARAMS = {"threshold": (float, 1.0, 1e6), "window": (int, 1, 10_000), "hysteresis": (float, 0.0, 1e6)}
    # the same windows again: the same slowdowns, the bests and the slowed set unchanged (a
    # ratio above threshold is in it already, one below threshold - hysteresis out of it)
    decides_on_windows = True

    def __init__(self, threshold: float = 1.5, window: int = 5, hysteresis: float = 0.2):
        super().__init__()
        self.threshold = threshold
        self.window = window
        self.hysteresis = hysteresis
        self.slowed: set[int] = set()

    def acts_on(self, planned_sync: str) -> bool:
        return planned_sync == "bsp"

    def update(self, obs: Observation) -> None:
        """Update the state of the workers whose pushes the update carries."""
        self.update_slowdowns(obs, self.slowed, self.threshold, self.threshold - self.hysteresis)


class SyncSwitchGreedy(_Detector):
    """Sync-Switch's greedy policy for transient stragglers (Li et al., "Sync-Switch:
    Hybrid Parameterized Synchronization for Distributed Deep Learning", ICDCS 2021): a
    bsp phase switches to asp while a straggler is present and back to bsp once none is,
    so the fast workers never wait on a barrier held by a slowed one."""

    def decide(self, obs: Observation) -> Sequence[Action]:
        self.update(obs)
        want = "asp" if self.slowed else "bsp"
        return (Action.set_sync(want),) if want != obs.sync else ()


class SyncSwitchElastic(_Detector):
    """The elastic variant (after Sync-Switch's online policies for transient stragglers,
    Li et al., ICDCS 2021): the phase stays bsp, but a slowed worker leaves the barrier
    (its pushes are applied on arrival, asp-style) and rejoins once it has recovered, so
    the others keep their synchronous rounds."""

    switches_sync = False

    def __init__(self, threshold: float = 1.5, window: int = 5, hysteresis: float = 0.2):
        super().__init__(threshold, window, hysteresis)
        self.excluded: set[int] = set()

    def decide(self, obs: Observation) -> Sequence[Action]:
        self.update(obs)
        out = []
        for w in obs.pushed:
            if w in self.slowed and w in obs.barrier_members:
                self.excluded.add(w)
                out.append(Action.exclude(w))
            elif w in self.excluded and w not in self.slowed:
                self.excluded.discard(w)
                out.append(Action.include(w))
        return out


class LBRebalance(Policy):
    """LB-BSP-style batch re-balancing (S. Chen et al., "Semi-Dynamic Load Balancing:
    Efficient Distributed Learning in Non-Dedicated Environments", SoCC 2020; see also
    Cannikin, Middleware 2024): in a bsp phase every round waits for the slowest worker, so
    each worker's batch is re-sized in proportion to its measured speed (samples/s over its
    last `window` intervals), the global batch kept, to make the rounds' intervals equal.

    It looks once per `window` rounds (fresh windows, not overlapping ones) and acts only
    when the predicted round compute time (the slowest worker's interval, s_w x batch_w,
    which the barrier waits for) would fall by more than `min_gain` of what it is now, so
    noise does not make it oscillate. After a decision it waits until every worker computes
    at its new batch. A fixed per-iteration cost makes a small batch slower per sample than
    predicted; the next decisions correct that (the split is iterated to equal times)."""

    PARAMS = {"min_gain": (float, 0.0, 1.0), "window": (int, 1, 10_000)}
    switches_sync = False  # it re-sizes batches; the phase stays bsp, every push in its round
    excludes_workers = False

    def __init__(self, min_gain: float = 0.05, window: int = 5):
        self.min_gain = min_gain
        self.window = window
        self.decided: dict[int, int] | None = None  # batches decided, until every worker runs them
        self.rounds = 0  # consultations since the batches in effect last changed

    def acts_on(self, planned_sync: str) -> bool:
        return planned_sync == "bsp"

    def decide(self, obs: Observation) -> Sequence[Action]:
        if obs.sync != "bsp":
            return ()
        if self.decided is not None:
            if any(obs.batch_of(w) != b for w, b in self.decided.items()):
                return ()  # not in effect everywhere yet (it starts at each worker's next epoch)
            self.decided, self.rounds = None, 0
        self.rounds += 1
        if self.rounds % self.window:
            return ()  # look at fresh windows only, every one all at the current batches
        workers = obs.workers
        per_sample_s = [obs.compute_s_per_sample_of(w) for w in workers]
        if min(per_sample_s) <= 0.0:
            return ()
        now = [obs.batch_of(w) for w in workers]
        new = balanced_batches(sum(now), per_sample_s)
        now_s = max(t * b for t, b in zip(per_sample_s, now))
        new_s = max(t * b for t, b in zip(per_sample_s, new))
        if new == now or new_s >= (1.0 - self.min_gain) * now_s:
            return ()
        self.decided = dict(zip(workers, new))
        return (Action.rebalance(self.decided),)


def balanced_batches(total: int, per_sample_s: Sequence[float]) -> list[int]:
    """Integer batches >= 1 summing to `total`, in proportion to each worker's speed
    (1 / per_sample_s): the floors first, then the units left one by one to the worker whose
    interval would stay shortest (ties: the lower index). Deterministic."""
    n = len(per_sample_s)
    speed = [1.0 / t for t in per_sample_s]
    scale = total / sum(speed)
    out = [max(1, math.floor(v * scale)) for v in speed]
    while sum(out) > total:  # the floor of 1 overshot: take from the longest interval
        i = max((i for i in range(n) if out[i] > 1), key=lambda i: (per_sample_s[i] * out[i], -i))
        out[i] -= 1
    heap = [(t * (b + 1), i) for i, (t, b) in enumerate(zip(per_sample_s, out))]
    heapq.heapify(heap)
    for _ in range(total - sum(out)):  # fewer than n units
        _, i = heapq.heappop(heap)
        out[i] += 1
        heapq.heappush(heap, (per_sample_s[i] * (out[i] + 1), i))
    return out


class AdaptiveSSP(_OwnBest):
    """SSP with a staleness bound adapted to the observed spread of the workers' speeds,
    after DSSP (X. Zhao, A. An, J. Liu, B. X. Chen, "Dynamic Stale Synchronous Parallel
    Distributed Training for Deep Learning", ICDCS 2019), whose bound floats within a range
    by the workers' observed push intervals; here the range is [min_staleness,
    max_staleness] and the bound is the phase's, one for all workers.

    The spread is the largest slowdown of a worker against its own best (_OwnBest): while
    the slowest runs one interval slowed `f` times, the others run `f`, so the lead they
    build grows by `f - 1` exchanges per slowed interval. The bound is set to
    `min_staleness + ceil(gain x (f - 1))` (at most max_staleness): room for `gain` of the
    slowed worker's intervals before anyone waits, and back to min_staleness once no worker
    is slowed, i.e. none above `threshold` (as the Sync-Switch detectors: a partial last
    batch costs more per sample and must not count). The reference is each worker's own best, not the fastest worker's, because
    only a transient spread is worth absorbing: under a lasting one every bound ends with
    the fast workers paced by the slowest, and a larger bound would only add staleness.
    The bound rises to a larger target at once and falls only to one more than
    `hysteresis` below it, so one noisy interval does not move it back and forth.
    Consulted on phases planned ssp only."""

    PARAMS = {"min_staleness": (int, 0, MAX_STALENESS), "max_staleness": (int, 0, MAX_STALENESS),
              "gain": (float, 0.0, 1e6), "threshold": (float, 1.0, 1e6), "window": (int, 1, 10_000),
              "hysteresis": (int, 0, MAX_STALENESS)}

    def __init__(self, min_staleness: int = 2, max_staleness: int = 32, gain: float = 4.0, threshold: float = 1.5,
                 window: int = 1, hysteresis: int = 2):
        if max_staleness < min_staleness:
            raise PolicyError("max_staleness", f"expected at least min_staleness ({min_staleness}), "
                                               f"got {max_staleness}")
        super().__init__()
        self.min_staleness, self.max_staleness = min_staleness, max_staleness
        self.gain, self.threshold, self.window, self.hysteresis = gain, threshold, window, hysteresis
        self.slowest: int | None = None  # the worker with the largest slowdown
        self.above: set[int] = set()  # workers whose slowdown is above threshold
        # per instance, at rest: every worker of the phase has a slowdown, none above threshold.
        # Then an update of unchanged windows wants min_staleness, as the last one did; it may
        # point `slowest` at another worker, but while none is above threshold the bound wanted
        # is min_staleness whichever it points at, and the first worker above threshold
        # becomes `slowest` either way
        self.decides_on_windows = False

    def acts_on(self, planned_sync: str) -> bool:
        return planned_sync == "ssp"

    def target(self, slowdown: float) -> int:
        """The bound for the largest slowdown, once above `threshold`."""
        k = self.min_staleness + math.ceil(self.gain * (slowdown - 1.0) - 1e-9)  # 1e-9: float noise adds no step
        return min(self.max_staleness, k)

    def decide(self, obs: Observation) -> Sequence[Action]:
        # the largest slowdown, kept as pushes come: O(1) a push but when the slowest worker
        # itself speeds up (then one pass over the workers); consulted at every push
        slowdowns = self.slowdowns
        if obs.source.unseen:  # some window changed
            self.update_slowdowns(obs, self.above, self.threshold, self.threshold)
            self.decides_on_windows = not self.above and len(slowdowns) == len(obs.source.workers)
        for w in obs.pushed:
            top = self.slowest
            if w == top:  # the slowest itself may have sped up: find the slowest again
                self.slowest = max(slowdowns, key=slowdowns.__getitem__)
            elif top is None or slowdowns[w] >= slowdowns[top]:
                self.slowest = w
        bound = obs.staleness_bound
        if bound is None:  # another policy took the phase out of ssp: not this one's business
            return ()
        spread = slowdowns[self.slowest]
        want = self.target(spread) if spread > self.threshold else self.min_staleness
        if want > bound or want < bound - self.hysteresis:
            return (Action.set_staleness(want),)
        return ()


BUILT_INS: dict[str, type[Policy]] = {"sync-switch-greedy": SyncSwitchGreedy,
                                      "sync-switch-elastic": SyncSwitchElastic,
                                      "lb-rebalance": LBRebalance,
                                      "adaptive-ssp": AdaptiveSSP}


def _checked_params(cls: type[Policy], params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in params.items():
        if name not in cls.PARAMS:
            raise PolicyError(name, f"unknown parameter; allowed here: kind, {', '.join(cls.PARAMS)}")
        kind, lo, hi = cls.PARAMS[name]
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or (kind is int and not isinstance(value, int)):
            raise PolicyError(name, f"expected {'an integer' if kind is int else 'a number'}, got {value!r}")
        if not (lo <= value <= hi) or (isinstance(value, float) and not math.isfinite(value)):
            raise PolicyError(name, f"expected {lo} to {hi}, got {value!r}")
        out[name] = kind(value)
    return out


def _python_policy(params: dict[str, Any]) -> Policy:
    """Import `target` ("module:Class") and build it with the other parameters."""
    params = dict(params)
    target = params.pop("target", None)
    if not isinstance(target, str) or target.count(":") != 1:
        raise PolicyError("target", f"expected 'module:Class', got {target!r}")
    module_name, class_name = target.split(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, SyntaxError) as e:
        raise PolicyError("target", f"cannot import {target!r}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise PolicyError("target", f"{target!r} is not a subclass of hybridps.policy.Policy")
    try:
        policy = cls(**params)
    except (TypeError, ValueError) as e:
        raise PolicyError("target", f"{target}({', '.join(params)}): {e}") from None
    window = getattr(policy, "window", None)
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise PolicyError("target", f"{target}: window must be a positive integer, got {window!r}")
    return policy


def may(kind: str, trait: str) -> bool:
    """Whether a policy of this kind may do `trait` ("switches_sync": switch a bsp phase to
    asp; "excludes_workers": take a worker out of the bsp barrier). A built-in says, by its
    class attribute; a user's `python` policy is assumed to."""
    cls = BUILT_INS.get(kind)
    return True if cls is None else getattr(cls, trait)


def make_policy(spec: dict[str, Any]) -> Policy:
    """A new policy from a plan's `policy` object (`kind` and its parameters); raises
    PolicyError naming the field at fault."""
    params = dict(spec)
    kind = params.pop("kind", None)
    if kind == "python":
        return _python_policy(params)
    cls = BUILT_INS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise PolicyError("kind", f"unknown policy kind {kind!r} (known: {', '.join(BUILT_INS)}, python)")
    return cls(**_checked_params(cls, params))
