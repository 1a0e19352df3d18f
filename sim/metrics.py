"""Metrics collection: per-worker counters (plain lists, always on), the optional trace
recorder (record dicts are only built when someone wants them), and the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from traces.summary import staleness_stats, worker_row


class UpdateLog:
    """Every applied update, in order, as plain parallel lists (what the convergence model
    reads; kept only when asked for). A bsp round is one entry with `worker` = -1 and the
    round's total samples; an asp/ssp push is one entry with its staleness. An online
    policy's switches of the sync mode inside a phase are kept beside the updates (when,
    which phase, to which mode): the convergence model charges a switch into stale
    gradients as it charges one between phases."""

    def __init__(self) -> None:
        self.t_s: list[float] = []
        self.phase: list[int] = []
        self.worker: list[int] = []  # global worker index, -1 for a bsp round
        self.staleness: list[int] = []
        self.samples: list[int] = []
        self.sync_changes: list[tuple[float, int, str]] = []  # (t_s, phase, new sync) of a policy's set_sync

    def add(self, t_s: float, phase: int, worker: int, staleness: int, samples: int) -> None:
        self.t_s.append(t_s)
        self.phase.append(phase)
        self.worker.append(worker)
        self.staleness.append(staleness)
        self.samples.append(samples)

    def set_sync(self, t_s: float, phase: int, sync: str) -> None:
        """A policy switched the phase to `sync` at `t_s` (from the next push on)."""
        self.sync_changes.append((t_s, phase, sync))

    def add_rounds(self, t0_s: float, period_s: float, rounds: int, phase: int, samples: int) -> None:
        """`rounds` bsp rounds of `samples` each, applied every `period_s` after `t0_s`
        (what a fast-forward skipped)."""
        self.t_s.extend(t0_s + j * period_s for j in range(1, rounds + 1))
        self.phase.extend([phase] * rounds)
        self.worker.extend([-1] * rounds)
        self.staleness.extend([0] * rounds)
        self.samples.extend([samples] * rounds)

    def __len__(self) -> int:
        return len(self.t_s)


class Counters:
    """What the summary needs, as plain lists indexed by global worker index."""

    def __init__(self, n_workers: int, log_updates: bool = False):
        self.iterations = [0] * n_workers
        self.samples = [0] * n_workers
        self.compute_s = [0.0] * n_workers
        self.comm_s = [0.0] * n_workers
        self.bytes_pushed = [0] * n_workers
        self.bytes_pulled = [0] * n_workers
        self.exchanges = 0
        self.staleness_hist: dict[int, int] = {}  # staleness -> number of updates
        self.phases: list[tuple[float, float]] = []
        self.epoch_end_s: list[float] = []
        self.update_log: UpdateLog | None = UpdateLog() if log_updates else None
        self.policy_actions: dict[str, int] = {}  # online policies: action kind -> decisions

    def add_staleness(self, staleness: int, count: int = 1) -> None:
        self.staleness_hist[staleness] = self.staleness_hist.get(staleness, 0) + count


class Recorder:
    """Builds trace records; keeps them in memory and/or streams them to a TraceWriter."""

    FLUSH_EVERY = 2000

    def __init__(self, keep: bool, writer: Any | None):
        self.records: list[dict[str, Any]] = []
        self.keep = keep
        self.writer = writer
        self._pending: list[dict[str, Any]] = []

    def add(self, rec: dict[str, Any]) -> None:
        if self.keep:
            self.records.append(rec)
        if self.writer is not None:
            self._pending.append(rec)
            if len(self._pending) >= self.FLUSH_EVERY:
                self.flush()

    def flush(self) -> None:
        if self.writer is not None and self._pending:
            self.writer.write_many(self._pending)
            self._pending = []


@dataclass
class SimResult:
    """The outcome of one simulation; `summary()` is the `simulate --json` dict."""

    makespan_s: float
    worker_names: list[str]
    counters: Counters
    updates: int
    events: int
    wall_s: float
    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The figures by traces/summary.py's definitions, from the running counters (which
        sum exactly what the trace's records would)."""
        c = self.counters
        workers = {name: worker_row(self.makespan_s, c.iterations[i], c.samples[i], c.compute_s[i], c.comm_s[i],
                                    c.bytes_pushed[i], c.bytes_pulled[i])
                   for i, name in enumerate(self.worker_names)}
        total_bytes = sum(w["bytes_pushed"] + w["bytes_pulled"] for w in workers.values())
        staleness = staleness_stats(c.staleness_hist)
        return {
            "makespan_s": self.makespan_s,
            "phases": [{"start_s": s, "end_s": e} for s, e in c.phases],
            "epoch_end_s": list(c.epoch_end_s),
            "workers": workers,
            "updates": self.updates,
            "staleness": staleness,
            "bytes_total": total_bytes,
            "policy_actions": dict(c.policy_actions),
            "events": self.events,
            "wall_s": self.wall_s,
        }
