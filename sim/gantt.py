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


def _worker_order(header: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for ph in (header.get("plan") or {}).get("phases", []):
        for w in ph.get("workers", []):
            if w["name"] not in names:
                names.append(w["name"])
    for r in records:
        if "worker" in r and r["kind"] in COLORS and r["worker"] not in names:
            names.append(r["worker"])
    return names


def _draw_bars(ax, rows: dict[str, int], bars: dict[str, dict[str, list[tuple[float, float]]]], scale: float) -> None:
    for name, y in rows.items():
        for kind, (lo, h) in (("compute", (y - 0.4, 0.45)), ("push", (y + 0.08, 0.32)), ("pull", (y + 0.08, 0.32))):
            spans = [(s / scale, max((e - s) / scale, 0.0)) for s, e in bars[name][kind]]
            if spans:
                ax.broken_barh(spans, (lo, h), facecolors=COLORS[kind], linewidth=0)


def _draw_overview(ax, rows, bars, t_end: float, scale: float) -> None:
    edges = np.linspace(0.0, t_end, OVERVIEW_BINS + 1)
    width = edges[1] - edges[0]
    for name, y in rows.items():
        bottom = np.full(OVERVIEW_BINS, y - 0.4)
        for kind in ("compute", "push", "pull"):
            iv = bars[name][kind]
            s = np.array([a for a, _ in iv], dtype=float)
            e = np.array([b for _, b in iv], dtype=float)
            frac = _busy_per_bin(s, e, edges) / width
            height = np.clip(frac, 0.0, 1.0) * 0.8
            ax.bar(edges[:-1] / scale, height, width=width / scale, bottom=bottom, align="edge",
                   color=COLORS[kind], linewidth=0)
            bottom = bottom + height


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    records = list(records)
    names = _worker_order(header, records)
    rows = {n: i for i, n in enumerate(names)}
    bars: dict[str, dict[str, list[tuple[float, float]]]] = {n: {k: [] for k in COLORS} for n in names}
    for r in records:
        if r["kind"] in COLORS:
            bars[r["worker"]][r["kind"]].append((r["start_s"], r["end_s"]))
    phases = sorted((r for r in records if r["kind"] == "phase"), key=lambda r: r["index"])
    t_end = max([r["end_s"] for r in phases] + [e for n in names for k in COLORS for _, e in bars[n][k]] + [1e-9])
    n_bars = sum(len(v) for n in names for v in bars[n].values())
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
            sorted(s for k in COLORS for s, _ in bars[n][k])[min(DETAIL_BARS_PER_WORKER, n_k) - 1]
            for n in names if (n_k := sum(len(bars[n][k]) for k in COLORS))
        )
        second_pulls = [sorted(e for _, e in bars[n]["pull"])[1] for n in names if len(bars[n]["pull"]) > 1]
        window_s = min(t_end, max([window_s, t_end / 1000] + second_pulls))
        clipped = {n: {k: [(s, e) for s, e in bars[n][k] if s < window_s] for k in COLORS} for n in names}
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
