"""A timeline PNG of a trace: workers as rows, compute and push/pull coloured, phase
boundaries marked.

A short run is drawn bar by bar. A long one (a 140-epoch run has ~10^5 bars) would be an
unreadable smear, so it gets two panels: an overview where each row shows, per time bin,
the fraction of time spent computing, pushing and pulling (white = waiting), and a
detail panel with the exact bars of the first few exchanges.
"""

from __future__ import annotations

import io
import os
from array import array
from typing import Any, Iterable

import numpy as np

from hybridps.fileio import atomic_write_bytes

COLORS = {"compute": "#4C72B0", "push": "#DD8452", "pull": "#55A868"}
EXACT_MAX_BARS = 4000  # above this many bars, draw the overview + detail panels
OVERVIEW_BINS = 400
DETAIL_BARS_PER_WORKER = 40


def _time_unit(span_s: float) -> tuple[float, str]:
    if span_s >= 3 * 3600:
        return 3600.0, "hours"
    if span_s >= 600:
        return 60.0, "minutes"
    return 1.0, "seconds"


def _busy_per_bin(starts: np.ndarray, ends: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Total length of the intervals inside each bin [edges[i], edges[i+1])."""
    if len(starts) == 0:
        return np.zeros(len(edges) - 1)

    def covered(t: np.ndarray, points: np.ndarray) -> np.ndarray:  # sum of max(0, t - p)
        order = np.sort(points)
        csum = np.concatenate([[0.0], np.cumsum(order)])
        k = np.searchsorted(order, t, side="right")
        return k * t - csum[k]

    total = covered(edges, starts) - covered(edges, ends)
    return np.diff(total)


Bars = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # worker -> kind -> (starts, ends)


class GanttData:
    """What the timeline needs from a trace, kept compact: per worker and kind, the bar
    start and end times as float arrays (16 bytes a bar, not a dict), and the phases.

    Feed it records with `write_many` (it is a trace sink the simulator can stream into),
    then draw it with `write_png`."""

    def __init__(self, header: dict[str, Any]):
        self.names: list[str] = []  # rows: plan order, then workers as they first appear
        self._starts_s: dict[str, dict[str, array]] = {}
        self._ends_s: dict[str, dict[str, array]] = {}
        self.phases: list[dict[str, Any]] = []
        for ph in (header.get("plan") or {}).get("phases", []):
            for w in ph.get("workers", []):
                self._add_worker(w["name"])

    def _add_worker(self, name: str) -> None:
        if name not in self._starts_s:
            self.names.append(name)
            self._starts_s[name] = {k: array("d") for k in COLORS}
            self._ends_s[name] = {k: array("d") for k in COLORS}

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            kind = r["kind"]
            if kind in COLORS:
                worker = r["worker"]
                if worker not in self._starts_s:
                    self._add_worker(worker)
                self._starts_s[worker][kind].append(r["start_s"])
                self._ends_s[worker][kind].append(r["end_s"])
            elif kind == "phase":
                self.phases.append(r)

    def bars(self) -> Bars:
        """worker -> kind -> (start times, end times), as numpy arrays (copies)."""
        return {n: {k: (np.array(self._starts_s[n][k], dtype=float), np.array(self._ends_s[n][k], dtype=float))
                    for k in COLORS} for n in self.names}

    def write_png(self, path: str | os.PathLike, title: str | None = None) -> None:
        _write_png(path, self.names, self.bars(), sorted(self.phases, key=lambda r: r["index"]), title)


def _draw_bars(ax, rows: dict[str, int], bars: Bars, scale: float) -> None:
    for name, y in rows.items():
        for kind, (lo, h) in (("compute", (y - 0.4, 0.45)), ("push", (y + 0.08, 0.32)), ("pull", (y + 0.08, 0.32))):
            s, e = bars[name][kind]
            if len(s):
                spans = list(zip((s / scale).tolist(), np.maximum((e - s) / scale, 0.0).tolist()))
                ax.broken_barh(spans, (lo, h), facecolors=COLORS[kind], linewidth=0)


def _draw_overview(ax, rows, bars: Bars, t_end: float, scale: float) -> None:
    from matplotlib.collections import PolyCollection

    edges = np.linspace(0.0, t_end, OVERVIEW_BINS + 1)
    width = edges[1] - edges[0]
    x0, x1 = edges[:-1] / scale, (edges[:-1] + width) / scale
    for name, y in rows.items():
        bottom = np.full(OVERVIEW_BINS, y - 0.4)
        for kind in ("compute", "push", "pull"):
            s, e = bars[name][kind]
            frac = _busy_per_bin(s, e, edges) / width
            height = np.clip(frac, 0.0, 1.0) * 0.8
            # one stacked bar per bin, as one collection of rectangles (ax.bar makes a patch each: slow)
            top = bottom + height
            corners = np.stack([np.column_stack([x0, bottom]), np.column_stack([x1, bottom]),
                                np.column_stack([x1, top]), np.column_stack([x0, top])], axis=1)
            ax.add_collection(PolyCollection(corners, facecolors=COLORS[kind], linewidths=0))
            bottom = top


def _mark_phases(ax, phases: list[dict[str, Any]], scale: float, t_max: float, label: bool) -> None:
    for ph in phases:
        if ph["start_s"] > 0 and ph["start_s"] <= t_max:
            ax.axvline(ph["start_s"] / scale, color="black", linestyle="--", linewidth=1.0, alpha=0.7)
        if label and ph["start_s"] < t_max:
            ax.annotate(f"phase {ph['index']}", (ph["start_s"] / scale, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, 3), textcoords="offset points", fontsize=8, va="bottom")


def write_gantt(path: str | os.PathLike, header: dict[str, Any], records: Iterable[dict[str, Any]],
                title: str | None = None) -> None:
    """Write the timeline of `records` (a trace's records) to a PNG at `path`."""
    data = GanttData(header)
    data.write_many(records)
    data.write_png(path, title)


def _write_png(path: str | os.PathLike, names: list[str], bars: Bars, phases: list[dict[str, Any]],
               title: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = {n: i for i, n in enumerate(names)}
    t_end = max([r["end_s"] for r in phases] + [float(e.max()) for n in names for _, e in bars[n].values() if len(e)]
                + [1e-9])
    n_bars = sum(len(s) for n in names for s, _ in bars[n].values())
    exact = n_bars <= EXACT_MAX_BARS
    height = min(14.0, max(2.5, 0.32 * len(names) + 1.5))  # per panel; many workers get thinner rows
    fig, axes = plt.subplots(1 if exact else 2, 1, figsize=(13, height if exact else 2 * height + 0.5),
                             squeeze=False)
    scale, unit = _time_unit(t_end)
    ax = axes[0][0]
    if exact:
        _draw_bars(ax, rows, bars, scale)
        ax.set_title(title or "timeline", loc="left", fontsize=11, pad=16)
    else:
        _draw_overview(ax, rows, bars, t_end, scale)
        ax.set_title(f"{title or 'timeline'}: whole run, share of time per bin of {t_end / OVERVIEW_BINS / scale:.3g} "
                     f"{unit} (white = waiting)", loc="left", fontsize=11, pad=16)
    ax.set_xlim(0, t_end / scale)
    _mark_phases(ax, phases, scale, t_end, label=True)
    ax.set_xlabel(f"time ({unit})")
    if not exact:  # the detail panel: the first exchanges, bar by bar
        window_s = min(
            np.sort(np.concatenate([bars[n][k][0] for k in COLORS]))[min(DETAIL_BARS_PER_WORKER, n_k) - 1]
            for n in names if (n_k := sum(len(bars[n][k][0]) for k in COLORS))
        )
        second_pulls = [float(np.sort(bars[n]["pull"][1])[1]) for n in names if len(bars[n]["pull"][1]) > 1]
        window_s = min(t_end, max([float(window_s), t_end / 1000] + second_pulls))
        clipped = {n: {k: (s[s < window_s], e[s < window_s]) for k, (s, e) in bars[n].items()} for n in names}
        dscale, dunit = _time_unit(window_s)
        dax = axes[1][0]
        _draw_bars(dax, rows, clipped, dscale)
        dax.set_xlim(0, window_s / dscale)
        _mark_phases(dax, phases, dscale, window_s, label=True)
        dax.set_title(f"detail: the first {window_s / dscale:.3g} {dunit}, bar by bar", loc="left", fontsize=11,
                      pad=16)
        dax.set_xlabel(f"time ({dunit})")
    for row in axes:
        a = row[0]
        every = 1 if len(names) <= 40 else len(names) // 32 + 1  # label every k-th row when crowded
        a.set_yticks(range(0, len(names), every))
        a.set_yticklabels(names[::every], fontsize=8 if len(names) > 20 else 9)
        a.set_ylim(len(names) - 0.4, -0.6)
        a.grid(axis="x", alpha=0.3)
    handles = [Patch(color=COLORS["compute"], label="compute"), Patch(color=COLORS["push"], label="push"),
               Patch(color=COLORS["pull"], label="pull"),
               plt.Line2D([0], [0], color="black", linestyle="--", label="phase boundary")]
    fig.legend(handles=handles, loc="upper right", ncol=4, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
