"""Online policies (issue 10; docs/policies.md): at every exchange boundary a policy sees
what a real parameter server can see and may change how the rest of the phase runs.

- `Observation`: plain numbers and tuples, built by an `Observer` that the PS feeds with
  plain values (an interval's compute time, an exchange's duration). The simulator's PS
  (sim/ps.py) feeds it; the runtime's PhaseServer can feed the same observer from its
  records, so one policy object runs in both.
- `Action`: switch the phase's sync mode (bsp <-> asp), take a worker out of the bsp
  barrier or bring it back. What an action does to the rounds is
  `hybridps.semantics.Barrier`'s rule (docs/semantics.md, "Policies").
- `Policy.decide(obs) -> list[Action]`: a deterministic function of what it observed.
- `make_policy(spec)`: the built-ins and a user's `{"kind": "python", "target": "m:C"}`.

Standard library only: no torch, no SimPy.
"""

from __future__ import annotations

import importlib
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

from hybridps.errors import UserError

SYNCS = ("bsp", "asp")
ACTION_KINDS = ("set_sync", "exclude", "include")


class PolicyError(UserError):
    """A bad policy spec or a bad action: `field` names the spec field (`threshold`,
    `target`) or `action`. The spec's loader turns it into a SpecError naming the path."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"policy {field}: {message}")


@dataclass(frozen=True)
class Observation:
    """What the PS sees when `worker`'s push arrives. Per-worker tuples are aligned with
    `workers` (the phase's workers, global indices, ascending). Compute figures are means
    over each worker's last `window` intervals of the phase; `exchange_s` is its last
    exchange, push start to pull end (barrier and queue waits included; 0.0 before its
    first one in the phase)."""

    t_s: float
    phase: int
    worker: int
    sync: str  # "bsp" or "asp", now
    planned_sync: str  # the plan's
    workers: tuple[int, ...]
    compute_s_per_iteration: tuple[float, ...]
    compute_s_per_sample: tuple[float, ...]
    exchange_s: tuple[float, ...]
    staleness: int  # of the last applied update (0 under bsp)
    phase_fraction: float  # of the phase's samples (or mini-epochs) applied, 0..1
    barrier: tuple[int, ...]  # the workers a bsp round waits for

    def as_record(self, names: Sequence[str]) -> dict[str, Any]:
        """The trace's `observed` object: worker names for indices."""
        def by_name(values: tuple[float, ...]) -> dict[str, float]:
            return {names[w]: v for w, v in zip(self.workers, values)}

        return {"worker": names[self.worker], "sync": self.sync,
                "compute_s_per_iteration": by_name(self.compute_s_per_iteration),
                "exchange_s": by_name(self.exchange_s), "staleness": self.staleness,
                "phase_fraction": self.phase_fraction, "barrier": [names[w] for w in self.barrier]}


@dataclass(frozen=True)
class Action:
    """`set_sync` to `sync`; `exclude` / `include` `worker` (a global index) from / in the
    bsp barrier. Build with Action.set_sync("asp"), Action.exclude(w), Action.include(w)."""

    kind: str
    sync: str | None = None
    worker: int | None = None

    @classmethod
    def set_sync(cls, sync: str) -> "Action":
        return cls("set_sync", sync=sync)

    @classmethod
    def exclude(cls, worker: int) -> "Action":
        return cls("exclude", worker=worker)

    @classmethod
    def include(cls, worker: int) -> "Action":
        return cls("include", worker=worker)

    def check(self, workers: Sequence[int]) -> None:
        """Raise PolicyError unless this action makes sense in a phase of `workers`."""
        if self.kind not in ACTION_KINDS:
            raise PolicyError("action", f"unknown action kind {self.kind!r} (known: {', '.join(ACTION_KINDS)})")
        if self.kind == "set_sync" and self.sync not in SYNCS:
            raise PolicyError("action", f"set_sync needs sync 'bsp' or 'asp', got {self.sync!r}")
        if self.kind != "set_sync" and self.worker not in workers:
            raise PolicyError("action", f"{self.kind} needs a worker of the phase, got {self.worker!r}")

    def as_record(self, names: Sequence[str]) -> dict[str, Any]:
        if self.kind == "set_sync":
            return {"kind": self.kind, "sync": self.sync}
        return {"kind": self.kind, "worker": names[self.worker]}


class Policy:
    """Base class. Subclasses set `window` (intervals the observer averages over) and
    override `decide`; they may keep state, as long as it comes from what they observed
    (decisions must be deterministic). A new instance runs each phase."""

    window: int = 5

    def decide(self, obs: Observation) -> list[Action]:
        return []


class Observer:
    """Per worker of a phase, its last `window` intervals (compute seconds, iterations,
    samples) and its last exchange's duration, fed with plain numbers by whoever sees them:
    the simulator's PS, or the runtime's from its records."""

    def __init__(self, workers: Sequence[int], window: int):
        self.workers = tuple(sorted(workers))
        self.slot = {w: i for i, w in enumerate(self.workers)}
        n = len(self.workers)
        self.windows: list[deque] = [deque(maxlen=window) for _ in range(n)]
        self.per_iteration_s = [0.0] * n
        self.per_sample_s = [0.0] * n
        self.exchange_s = [0.0] * n
        self.missing = n  # workers with no interval yet: no observation until 0

    def interval(self, worker: int, compute_s: float, iterations: int, samples: int) -> None:
        i = self.slot[worker]
        win = self.windows[i]
        if not win:
            self.missing -= 1
        win.append((compute_s, iterations, samples))
        total_s = sum(x[0] for x in win)
        self.per_iteration_s[i] = total_s / sum(x[1] for x in win)
        self.per_sample_s[i] = total_s / sum(x[2] for x in win)

    def exchanged(self, worker: int, exchange_s: float) -> None:
        self.exchange_s[self.slot[worker]] = exchange_s

    @property
    def ready(self) -> bool:
        """A policy is consulted only once every worker of the phase has an interval."""
        return self.missing == 0

    def observe(self, t_s: float, phase: int, worker: int, sync: str, planned_sync: str, staleness: int,
                phase_fraction: float, barrier: Sequence[int]) -> Observation:
        return Observation(t_s, phase, worker, sync, planned_sync, self.workers, tuple(self.per_iteration_s),
                           tuple(self.per_sample_s), tuple(self.exchange_s), staleness, phase_fraction,
                           tuple(sorted(barrier)))


# --------------------------------------------------------------------------- built-ins


class _Detector(Policy):
    """Shared detection: a worker is slowed when its compute time per sample over the last
    `window` intervals exceeds `threshold` times its own best such mean in the phase, and
    counts as recovered below `threshold - hysteresis` (so one noisy interval does not
    flip it). Each worker is its own reference: a plan's slower devices are not
    stragglers, and it holds however many workers are slowed at once."""

    PARAMS = {"threshold": (float, 1.0, 1e6), "window": (int, 1, 10_000), "hysteresis": (float, 0.0, 1e6)}

    def __init__(self, threshold: float = 1.5, window: int = 5, hysteresis: float = 0.2):
        self.threshold = threshold
        self.window = window
        self.hysteresis = hysteresis
        self.best_s: dict[int, float] = {}  # worker -> its lowest windowed time per sample

    def slowed(self, obs: Observation, was_slowed: set[int]) -> set[int]:
        """The workers slowed now; `was_slowed` (those slowed at the last decision) need to
        fall below the lower mark to leave the set."""
        out = set()
        for w, t in zip(obs.workers, obs.compute_s_per_sample):
            best = self.best_s[w] = min(t, self.best_s.get(w, t))
            ratio = t / best if best > 0 else 1.0
            if ratio > self.threshold or (w in was_slowed and ratio >= self.threshold - self.hysteresis):
                out.add(w)
        return out


class SyncSwitchGreedy(_Detector):
    """Sync-Switch's greedy policy for transient stragglers (Li et al., "Sync-Switch:
    Hybrid Parameterized Synchronization for Distributed Deep Learning", ICDCS 2021): a
    bsp phase switches to asp while a straggler is present and back to bsp once none is,
    so the fast workers never wait on a barrier held by a slowed one. Acts only on phases
    planned bsp."""

    def __init__(self, threshold: float = 1.5, window: int = 5, hysteresis: float = 0.2):
        super().__init__(threshold, window, hysteresis)
        self.stragglers: set[int] = set()

    def decide(self, obs: Observation) -> list[Action]:
        if obs.planned_sync != "bsp":
            return []
        self.stragglers = self.slowed(obs, self.stragglers)
        want = "asp" if self.stragglers else "bsp"
        return [Action.set_sync(want)] if want != obs.sync else []


class SyncSwitchElastic(_Detector):
    """The elastic variant (after Sync-Switch's online policies for transient stragglers,
    Li et al., ICDCS 2021): the phase stays bsp, but a slowed worker leaves the barrier
    (its pushes are applied on arrival, asp-style) and rejoins once it has recovered, so
    the others keep their synchronous rounds. Acts only on phases planned bsp."""

    def __init__(self, threshold: float = 1.5, window: int = 5, hysteresis: float = 0.2):
        super().__init__(threshold, window, hysteresis)
        self.excluded: set[int] = set()

    def decide(self, obs: Observation) -> list[Action]:
        if obs.planned_sync != "bsp":
            return []
        slowed = self.slowed(obs, self.excluded)
        out = [w for w in obs.barrier if w in slowed]
        back = sorted(w for w in self.excluded if w not in slowed)
        self.excluded = (self.excluded - set(back)) | set(out)
        return [Action.exclude(w) for w in out] + [Action.include(w) for w in back]


BUILT_INS: dict[str, type[_Detector]] = {"sync-switch-greedy": SyncSwitchGreedy,
                                         "sync-switch-elastic": SyncSwitchElastic}


def _checked_params(cls: type[_Detector], params: dict[str, Any]) -> dict[str, Any]:
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
    except (ImportError, AttributeError) as e:
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
