"""The execution rules of docs/semantics.md, written once: the simulator (sim/) and the
runtime's PS (runtime/server.py) both run these objects, so their traces agree record for
record. Standard library only: no torch, no SimPy.

- `Ledger`: sample accounting (phase target, epoch ends, due evaluations, when a worker
  stops, the DBSL mini-epoch rule);
- `SSPGate`: who may start an interval, who waits, who is released;
- `VersionClock`: model versions and the staleness of each update;
- `Barrier`: which pushes a round combines, and what a policy's mid-phase switch does
  to the round in progress and to the ssp gate's bound (docs/semantics.md, "Policies");
- `equal_step_shares` and `Rebalance`: a re-split of the batches (a policy's `rebalance`)
  and the shares that keep every worker at the same steps per epoch (also the runtime's
  re-split after a worker loss).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence


def ends_on_mini_epochs(phase) -> bool:
    """A phase (anything with .exchange and .local_steps) whose workers each commit their
    mini-epochs: model exchange with local_steps null, DBSL's rule (docs/semantics.md)."""
    return phase.exchange == "model" and phase.local_steps is None


class Ledger:
    """Run-wide sample accounting. Samples count when a push is applied (`apply`); a
    worker stops after an exchange when `worker_done` says so ("When a phase ends")."""

    def __init__(self, dataset_samples: int, phase_epochs: Sequence[int], eval_every: int = 1,
                 applied_total: int = 0, epoch_end_s: list[float] | None = None):
        self.dataset_samples = dataset_samples
        self.phase_epochs = list(phase_epochs)
        self.epochs_before = [sum(self.phase_epochs[:p]) for p in range(len(self.phase_epochs))]
        self.total_epochs = sum(self.phase_epochs)
        self.eval_every = eval_every
        self.applied_total = applied_total
        self.epoch_end_s = epoch_end_s if epoch_end_s is not None else []  # filled in place
        self.phase = -1
        self.target = 0
        self.applied_in_phase = 0
        self.phase_end_epoch = 0
        self.commits: dict[int, int] | None = None  # mini-epoch rule: each worker's commits in the phase
        self.commits_total = 0

    def start_phase(self, p: int, workers: Iterable[int], mini_epochs: bool = False, applied: int = 0,
                    commits: dict[int, int] | None = None) -> None:
        """Phase `p` starts with `applied` samples and `commits` mini-epochs per worker
        already in (a resumed run); `mini_epochs`: model exchange with local_steps null."""
        self.phase = p
        self.target = self.phase_epochs[p] * self.dataset_samples
        self.applied_in_phase = applied
        self.phase_end_epoch = self.epochs_before[p] + self.phase_epochs[p]
        self.commits = None
        if mini_epochs:
            self.commits = {w: (commits or {}).get(w, 0) for w in workers}
            self.commits_total = sum(self.commits.values())

    def apply(self, samples: int, now_s: float) -> Sequence[int]:
        """Count an applied update of `samples`; returns the epochs (1-based, counted across
        phases, capped at the run's total) that it ended, their times kept in epoch_end_s."""
        self.applied_in_phase += samples
        self.applied_total += samples
        ends = self.epoch_end_s
        if self.applied_total < (len(ends) + 1) * self.dataset_samples:
            return ()  # the common case, kept cheap: the simulator calls this once per update
        ended = []
        while len(ends) < self.total_epochs and self.applied_total >= (len(ends) + 1) * self.dataset_samples:
            ends.append(now_s)
            ended.append(len(ends))
        return tuple(ended)

    def end_phase(self, now_s: float) -> Sequence[int]:
        """The phase is over (every worker stopped). Under the mini-epoch rule the phase's
        epochs are its workers' mini-epochs, whatever their shares sum to (the plan may round
        them up to a sample per worker below the dataset): epochs the applied samples did not
        end yet end now, and the count moves up to the phase's nominal end, so the next
        phase's epochs stay where the plan puts them. Returns the epochs it ended."""
        if self.commits is None:
            return ()
        nominal = (self.epochs_before[self.phase] + self.phase_epochs[self.phase]) * self.dataset_samples
        if self.applied_total >= nominal:
            return ()
        self.applied_in_phase += nominal - self.applied_total
        self.applied_total = nominal
        return self.apply(0, now_s)

    def quiet_rounds(self, round_samples: int, workers: Iterable[int]) -> int:
        """How many more bsp rounds of `round_samples`, each committing every one of
        `workers`, can be applied with none of them ending an epoch or reaching a worker's
        stop rule (the rounds the simulator may fast-forward; docs/simulator.md)."""
        if round_samples <= 0:
            return 0
        limit = (self.target - self.applied_in_phase - 1) // round_samples
        if len(self.epoch_end_s) < self.total_epochs:
            next_end = (len(self.epoch_end_s) + 1) * self.dataset_samples
            limit = min(limit, (next_end - self.applied_total - 1) // round_samples)
        if self.commits is not None:
            limit = min(limit, self.phase_epochs[self.phase] - 1 - max(self.commits[w] for w in workers))
        return max(0, limit)

    def apply_rounds(self, round_samples: int, workers: Iterable[int], rounds: int) -> None:
        """Count `rounds` bsp rounds at once, each `round_samples` and one commit per worker;
        `quiet_rounds` said that none of them ends an epoch."""
        self.applied_in_phase += rounds * round_samples
        self.applied_total += rounds * round_samples
        if self.commits is not None:
            for w in workers:
                self.commits[w] += rounds
                self.commits_total += rounds

    def commit(self, workers: Iterable[int]) -> None:
        """The pushes of `workers` were applied: under the mini-epoch rule, one mini-epoch each."""
        if self.commits is None:
            return
        for w in workers:
            self.commits[w] += 1
            self.commits_total += 1

    def evaluation_due(self, epoch: int) -> bool:
        """Whether the PS evaluates at the end of `epoch` inside the phase (every
        `eval_every` epochs; the phase's last epoch is the phase-end evaluation's)."""
        return self.eval_every > 0 and epoch % self.eval_every == 0 and epoch < self.phase_end_epoch

    def worker_done(self, worker: int) -> bool:
        """Does `worker` stop after its exchange? Under the mini-epoch rule once it has
        committed the phase's epochs itself (DBSL: each worker runs exactly that many
        mini-epochs, whatever the others or the sample count do); otherwise once the
        phase's applied samples reach its target."""
        if self.commits is not None:
            return self.commits[worker] >= self.phase_epochs[self.phase]
        return self.applied_in_phase >= self.target

    def phase_fraction(self) -> float:
        """How much of the phase is applied, 0..1 (what a policy observes): samples over the
        target, or under the mini-epoch rule commits over the phase's mini-epochs."""
        if self.commits is not None:
            return self.commits_total / (len(self.commits) * self.phase_epochs[self.phase])
        return min(1.0, self.applied_in_phase / self.target)


class SSPGate:
    """ssp's bound: a worker with `c` exchanges in the phase may start its next interval
    while `c - min_v c_v <= bound` over the workers still in the phase. An exchange
    counts when its pull reaches the worker (docs/semantics.md). bound None: never holds
    (a phase outside ssp; a policy may set a bound mid-phase with `set_bound`).

    The minimum is kept, not recomputed: counts only grow by one, so it moves up when the
    last active worker at it exchanges (or leaves). Each check is O(1), which keeps a
    256-worker ssp simulation linear in its exchanges (recomputing it made `release`
    O(workers x waiting) per exchange). Without a bound only the counts are kept (the
    minimum is rebuilt when a bound is set), so a phase that may turn ssp pays one
    addition an exchange."""

    def __init__(self, bound: int | None, workers: Iterable[int]):
        self.bound = None
        self.counts = {w: 0 for w in workers}
        self.active = set(self.counts)
        self.waiting: list[int] = []
        self.at_count: dict[int, int] = {}  # active workers per count (kept while there is a bound)
        self.min_count = 0
        self.set_bound(bound)

    def set_bound(self, bound: int | None) -> None:
        """A policy's switch into ssp, out of it, or a new bound (docs/semantics.md,
        "Policies"): from now on; counts keep running from the phase's start. The workers
        it now lets go are `release()`'s; nobody is stopped mid-interval."""
        if bound is not None and self.bound is None:  # rebuild what was not kept without a bound
            at: dict[int, int] = {}
            for w in self.active:
                c = self.counts[w]
                at[c] = at.get(c, 0) + 1
            self.at_count = at
            self.min_count = min(at) if at else 0
        self.bound = bound

    def exchanged(self, worker: int) -> None:
        c = self.counts[worker]
        self.counts[worker] = c + 1
        if self.bound is not None and worker in self.active:
            self._move(c, c + 1)

    def _move(self, old: int, new: int | None) -> None:
        """An active worker's count goes from `old` to `new` (None: it left)."""
        at = self.at_count
        at[old] -= 1
        if not at[old]:
            del at[old]
        if new is not None:
            at[new] = at.get(new, 0) + 1
        if old == self.min_count and old not in at and at:
            self.min_count = min(at) if new is None else new  # a leave may skip counts; an exchange moves one up

    def ahead(self, worker: int) -> int:
        """How many exchanges `worker` is ahead of the slowest worker still in the phase."""
        if not self.active:
            return 0
        if self.bound is None:  # the minimum is not kept: counted (not on a hot path)
            return self.counts[worker] - min(self.counts[w] for w in self.active)
        return self.counts[worker] - self.min_count

    def may_start(self, worker: int) -> bool:
        return self.bound is None or self.counts[worker] - self.min_count <= self.bound or not self.active

    def hold(self, worker: int) -> None:
        """`worker` waits until `release` lets it go."""
        self.waiting.append(worker)

    def leave(self, worker: int) -> None:
        """`worker` stopped for the phase (or was lost): it no longer holds anyone back."""
        if worker in self.active:
            self.active.discard(worker)
            if self.bound is not None:
                self._move(self.counts[worker], None)
        if worker in self.waiting:
            self.waiting.remove(worker)

    def release(self) -> list[int]:
        """The waiting workers that may start now, in the order they began to wait."""
        if not self.waiting:
            return []
        go = [w for w in self.waiting if self.may_start(w)]
        if go:
            self.waiting = [w for w in self.waiting if not self.may_start(w)]
        return go


class VersionClock:
    """Model versions count applies (one per asp/ssp push, one per bsp round); an update's
    staleness is the versions applied between its worker's previous pull and it."""

    def __init__(self, version: int = 0):
        self.version = version
        self.read: dict[int, int] = {}

    def start_phase(self, workers: Iterable[int]) -> None:
        """Every worker starts a phase from the current model: a phase start is a pull."""
        for w in workers:
            self.read[w] = self.version

    def apply_push(self, worker: int) -> tuple[int, int]:
        """One asp/ssp update of `worker`'s push (a worker of the phase): (new version, its staleness)."""
        staleness = self.version - self.read[worker]
        self.version += 1
        return self.version, staleness

    def apply_round(self, workers: Iterable[int], rounds: int = 1) -> int:
        """One bsp round of `workers`' pushes (staleness 0 for all), or `rounds` of them in a
        row: the new version, which they all pull."""
        self.version += rounds
        for w in workers:
            self.read[w] = self.version
        return self.version

    def pulled(self, worker: int) -> None:
        self.read[worker] = self.version


class Barrier:
    """Which pushes are applied together. Under bsp a round waits for every member (the
    phase's workers at its start); a push of a worker outside it, or any push under asp,
    is applied on its own. A policy may switch the mode and change the members mid-phase
    (docs/semantics.md, "Policies"); a worker that stops for the phase leaves.

    The methods that change something return the workers whose pushes are applied now as
    one round ([] for none); those that change nothing return None."""

    def __init__(self, workers: Iterable[int], bsp: bool, gate: SSPGate | None = None):
        self.bsp = bsp
        self.gate = gate  # the phase's ssp gate: a switch into or out of ssp sets its bound
        self.sync = self._mode()  # bsp, ssp (the gate has a bound) or asp: kept, read at every update
        self.members = set(workers)
        self.stopped: set[int] = set()
        self.round: list[int] = []  # pushes in, in arrival order
        self.missing = set(self.members)  # members whose push the round still waits for

    def push(self, worker: int) -> list[int] | None:
        """`worker`'s push arrived: None if it is applied on its own, else the round it
        completes ([] while the round still waits)."""
        if not self.bsp or worker not in self.members:
            return None
        self.round.append(worker)
        self.missing.discard(worker)
        return self._complete()

    def _complete(self) -> list[int]:
        if not self.round or self.missing:
            return []
        done, self.round = self.round, []
        self.missing = set(self.members)
        return done

    def _mode(self) -> str:
        if self.bsp:
            return "bsp"
        return "ssp" if self.gate is not None and self.gate.bound is not None else "asp"

    def switch(self, sync: str, staleness: int | None = None) -> list[int] | None:
        """A policy's set_sync (or set_staleness: `sync` "ssp" with a new bound). Outside
        bsp every push is applied on arrival (`set_sync`), so ssp is asp plus the gate's
        bound: the gate counts every worker's exchanges from the phase's start
        whatever the mode, and a new bound holds, at its next exchange, a worker then more
        than `staleness` ahead of the slowest (an interval in progress is never cut
        short); leaving ssp, or a larger bound, lets the waiting workers go at once (the
        PS's `release`)."""
        bound = staleness if sync == "ssp" else None
        gate = self.gate
        if sync == self.sync and (gate is None or gate.bound == bound):
            return None
        if gate is not None:
            gate.set_bound(bound)
        elif bound is not None:
            raise ValueError("a Barrier without an SSPGate cannot switch to ssp")
        done = self.set_sync(sync == "bsp")
        self.sync = sync
        return done or []

    def set_sync(self, bsp: bool) -> list[int] | None:
        """Switch mode. bsp -> asp: the round in progress is applied as it stands (one
        combined update of the pushes it has; its workers pull it). asp -> bsp: the next
        push of each member makes the first round."""
        if bsp == self.bsp:
            return None
        self.bsp = bsp
        self.sync = self._mode()
        done, self.round = self.round, []
        self.missing = set(self.members)
        return done

    def exclude(self, worker: int) -> list[int] | None:
        """`worker` leaves the barrier: a push of it already in the round stays there;
        the round may now be complete."""
        if worker not in self.members:
            return None
        self.members.discard(worker)
        self.missing.discard(worker)
        return self._complete()

    def include(self, worker: int) -> list[int] | None:
        """`worker` rejoins: the round in progress waits for it too (unless its push is in)."""
        if worker in self.members or worker in self.stopped:
            return None
        self.members.add(worker)
        if worker not in self.round:
            self.missing.add(worker)
        return []

    def act(self, action) -> list[int] | None:
        """Carry out a policy's action (hybridps.policy.Action: kind set_sync, set_staleness,
        exclude or include)."""
        if action.kind == "set_sync":
            return self.switch(action.sync, action.staleness)
        if action.kind == "set_staleness":
            return self.switch("ssp", action.staleness)
        if action.kind == "exclude":
            return self.exclude(action.worker)
        return self.include(action.worker)

    def leave(self, worker: int) -> list[int]:
        """`worker` stopped for the phase: no round waits for it any more."""
        self.stopped.add(worker)
        return self.exclude(worker) or []


def equal_step_shares(total: int, batches: Sequence[int]) -> list[int]:
    """Per-epoch shares for `batches` that give every worker the same steps per epoch, as
    bsp with gradient exchange needs: k = ceil(total / sum of the batches), share_i =
    k * batch_i, less what the last batches can give up (at most batch_i - 1 each, the
    largest first, ties in order) to sum to `total`; if they cannot, the shares sum to a
    little more and a few samples repeat (wrap)."""
    steps = -(-total // sum(batches))
    out = [steps * b for b in batches]
    excess = sum(out) - total
    for i in sorted(range(len(batches)), key=lambda i: -batches[i]):  # trim the largest last batches first
        cut = min(excess, batches[i] - 1)
        out[i] -= cut
        excess -= cut
    return out


class Rebalance:
    """A policy's re-split of the phase's batches (docs/semantics.md, "Policies"). Decided at
    an update, it reaches each worker with its pull of that update and the worker takes it
    up at the start of its next worker-epoch: its new batch and its share of
    `equal_step_shares`, so a bsp phase keeps equal steps per epoch. The global batch (the
    sum) stays the plan's."""

    def __init__(self, workers: Sequence[int], batches: Sequence[int], total_samples: int):
        self.workers = tuple(workers)  # plan order: the order of the shares in an epoch
        self.batches = tuple(batches)  # the latest decided
        self.total_samples = total_samples  # the plan's shares summed
        self.waiting: dict[int, tuple[int, ...]] = {}  # worker -> batches decided, not pulled yet
        self._shares: tuple[tuple[int, ...], list[int]] | None = None

    def set(self, batches: Mapping[int, int]) -> list[int] | None:
        """Decide `batches` (worker -> batch, every worker of the phase); [] when decided,
        None when it changes nothing. ValueError when the sum is not the plan's."""
        new = tuple(batches[w] for w in self.workers)
        if sum(new) != sum(self.batches):
            raise ValueError(f"rebalance must keep the global batch {sum(self.batches)}, got {sum(new)}")
        if new == self.batches:
            return None
        self.batches = new
        for w in self.workers:
            self.waiting[w] = new
        return []

    def pulled(self, worker: int) -> tuple[int, ...] | None:
        """`worker` pulls: the batches decided since its last pull (None: none)."""
        return self.waiting.pop(worker, None)

    def assignment(self, batches: tuple[int, ...], worker: int) -> tuple[int, int]:
        """(batch, share) of `worker` under `batches`."""
        if self._shares is None or self._shares[0] != batches:
            self._shares = (batches, equal_step_shares(self.total_samples, batches))
        i = self.workers.index(worker)
        return batches[i], self._shares[1][i]
