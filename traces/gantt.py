"""A timeline PNG of a trace (simulated or measured): workers as rows, compute and
push/pull coloured, phases marked and described (resolution, batches, sync mode), and
the accuracy over time when the trace has eval records.

A short run is drawn bar by bar. A long one (a 140-epoch run has ~10^5 bars) would be an
unreadable smear, so it gets two panels: an overview where each row shows, per time bin,
the share of the bin spent computing, pushing and pulling (white = waiting), and a
detail panel with the exact bars of the first few exchanges.

Drawing happens in two steps so tests can check what is drawn without comparing images:
`layout()` decides everything (lanes and their labels, panels and titles, phase marks,
bin width, bar counts) and returns a `Picture`; `draw()` only renders it.
"""

from __future__ import annotations

import io
import math
import os
from array import array
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from hybridps.fileio import atomic_write_bytes

COLORS = {"compute": "#4C72B0", "push": "#DD8452", "pull": "#55A868"}
EXACT_MAX_BARS = 4000  # above this many bars, draw the overview + detail panels
OVERVIEW_BINS = 400  # at most; fewer when exchanges are rarer (each bin then holds ≥ 2 of them)
DETAIL_BARS_PER_WORKER = 40
WIDTH_IN, DPI = 13.0, 110
MIN_BAR_PX = 1.5  # push/pull bars are drawn at least this wide, so short exchanges stay visible
COMM_ZOOM_BELOW = 0.1  # a push/pull share under this gets a magnified strip
ITERATION_EDGE_PX = 4.0  # iterations at least this wide get white separators in bar panels


def _time_unit(span_s: float) -> tuple[float, str]:
    if span_s >= 3 * 3600:
        return 3600.0, "hours"
    if span_s >= 600:
        return 60.0, "minutes"
    return 1.0, "seconds"


def format_s(seconds: float) -> str:
    """A duration people read at a glance: 2.1 s, 12 min, 3.5 h."""
    if seconds < 120:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.2g} min"
    return f"{seconds / 3600:.2g} h"


def _nice(x: float) -> float:
    """The smallest of 1, 2, 5 × 10^k that is ≥ x."""
    if x <= 0:
        return 1.0
    k = math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * 10**k >= x * (1 - 1e-9):
            return m * 10**k
    return 10 ** (k + 1)


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
    start and end times as float arrays (16 bytes a bar, not a dict), the phases and the
    evaluations.

    Feed it records with `write_many` (it is a trace sink the simulator can stream into),
    then draw it with `write_png`."""

    def __init__(self, header: dict[str, Any]):
        self.header = header
        self.names: list[str] = []  # rows: plan order, then workers as they first appear
        self._starts_s: dict[str, dict[str, array]] = {}
        self._ends_s: dict[str, dict[str, array]] = {}
        self.phases: list[dict[str, Any]] = []
        self.evals: list[tuple[float, float]] = []  # (t_s, accuracy)
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
            elif kind == "eval":
                self.evals.append((float(r["t_s"]), float(r["accuracy"])))

    def end_s(self) -> float:
        """The trace's last time: the end of its last bar, phase or evaluation."""
        ends = [float(np.frombuffer(e).max()) for n in self.names for e in self._ends_s[n].values() if len(e)]
        return max(ends + [r["end_s"] for r in self.phases] + [t for t, _ in self.evals] + [1e-9])

    def bars(self) -> Bars:
        """worker -> kind -> (start times, end times), as numpy arrays (copies)."""
        return {n: {k: (np.array(self._starts_s[n][k], dtype=float), np.array(self._ends_s[n][k], dtype=float))
                    for k in COLORS} for n in self.names}

    def write_png(self, path: str | os.PathLike, title: str | None = None,
                  window_s: tuple[float, float] | None = None, max_lanes: int | None = None) -> "Picture":
        """Draw the timeline to `path`; returns what was drawn."""
        picture = layout(self, title, window_s, max_lanes)
        draw(picture, path)
        return picture


# --------------------------------------------------------------------------- layout


@dataclass
class Lane:
    """One row: a worker, or a group of workers drawn as their mean share."""

    label: str
    members: list[str]
    bars: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)  # within the window
    share: dict[str, float]  # of the window, mean over members: compute, push, pull

    @property
    def grouped(self) -> bool:
        return len(self.members) > 1


@dataclass
class Panel:
    kind: str  # "bars" (exact), "overview" (share per bin), "detail" (exact, a short span), "accuracy"
    title: str
    start_s: float
    end_s: float
    bin_s: float | None = None  # overview: bin width
    comm_full_share: float = 1.0  # share of a bin a full push/pull strip stands for (overview)
    bars_drawn: dict[str, int] = field(default_factory=dict)  # lane label -> bars drawn (bar panels)
    iterations_per_bar: float | None = None  # median back-to-back iterations that draw as one compute bar
    iteration_edges: bool = False  # white separators between iterations are drawn


@dataclass
class Picture:
    """Everything the PNG shows, decided before drawing (tests assert on it)."""

    title: str
    lanes: list[Lane]
    panels: list[Panel]
    phase_marks: list[tuple[float, str]]  # (start_s, short label at the boundary: "P0")
    phase_key: list[str]  # one line per phase: "P0  0–200 s: 24 px, batch 130/600, asp, model exchange"
    accuracy: list[tuple[float, float]]
    legend: list[str]
    size_px: tuple[int, int] = (0, 0)


def _phase_text(index: int, plan_phase: dict[str, Any] | None) -> str:
    if not plan_phase:
        return ""
    batches = sorted({w["batch"] for w in plan_phase.get("workers", [])})
    batch = "/".join(map(str, batches)) if len(batches) <= 4 else f"{batches[0]}–{batches[-1]}"
    sync = plan_phase.get("sync", "?")
    if sync == "ssp":
        sync += f" (staleness {plan_phase.get('staleness')})"
    text = f"{plan_phase.get('resolution')} px, batch {batch}, {sync}, {plan_phase.get('exchange')} exchange"
    comp = (plan_phase.get("compression") or {}).get("kind", "none")
    if comp != "none":
        text += f", {comp} compression"
    policy = (plan_phase.get("policy") or {}).get("kind") if isinstance(plan_phase.get("policy"), dict) else None
    if policy:
        text += f", policy {policy}"
    return text


def _phases_text(data: GanttData, window: tuple[float, float]) -> tuple[list[tuple[float, str]], list[str]]:
    plan_phases = (data.header.get("plan") or {}).get("phases", [])
    marks, key = [], []
    for ph in sorted(data.phases, key=lambda r: r["index"]):
        i = ph["index"]
        if ph["end_s"] < window[0] or ph["start_s"] > window[1]:
            continue
        marks.append((max(ph["start_s"], window[0]), f"P{i}"))
        what = _phase_text(i, plan_phases[i] if i < len(plan_phases) else None)
        key.append(f"P{i}  {ph['start_s']:,.1f}–{ph['end_s']:,.1f} s" + (f": {what}" if what else ""))
    return marks, key


def _clip(bars: dict[str, tuple[np.ndarray, np.ndarray]], lo: float, hi: float):
    out = {}
    for k, (s, e) in bars.items():
        keep = (e >= lo) & (s <= hi)
        out[k] = (np.maximum(s[keep], lo), np.minimum(e[keep], hi))
    return out


def _lanes(data: GanttData, window: tuple[float, float], max_lanes: int | None) -> list[Lane]:
    all_bars = data.bars()
    names = list(data.names)
    groups = [[n] for n in names]
    if max_lanes is not None and len(names) > max_lanes:
        groups = [[n] for n in names[:max_lanes - 1]] + [names[max_lanes - 1:]]
    span = max(window[1] - window[0], 1e-12)
    lanes = []
    for members in groups:
        clipped = [_clip(all_bars[n], *window) for n in members]
        bars = {k: (np.concatenate([c[k][0] for c in clipped]), np.concatenate([c[k][1] for c in clipped]))
                for k in COLORS}
        share = {k: float(np.sum(e - s)) / span / len(members) for k, (s, e) in bars.items()}
        comm = share["push"] + share["pull"]
        name = members[0] if len(members) == 1 else f"{members[0]} … {members[-1]} ({len(members)}, mean)"
        lanes.append(Lane(f"{name}\ncompute {share['compute']:.0%}, comm {comm:.1%}", members, bars, share))
    return lanes


def _exchange_interval_s(lanes: list[Lane]) -> float:
    """Median time between a worker's pulls (0 when unknown)."""
    for lane in lanes:
        if not lane.grouped:
            s = np.sort(lane.bars["pull"][0])
            if len(s) > 2:
                return float(np.median(np.diff(s)))
    return 0.0


def _iterations_per_bar(lanes: list[Lane], lo: float, hi: float) -> tuple[float, float]:
    """(median back-to-back iterations per drawn compute bar, median iteration length) in [lo, hi]."""
    runs, lengths = [], []
    for lane in lanes:
        if lane.grouped:
            continue
        s, e = lane.bars["compute"]
        keep = s < hi
        s, e = np.sort(s[keep]), np.sort(e[keep])
        if not len(s):
            continue
        lengths.append(float(np.median(e - s)))
        breaks = np.flatnonzero(s[1:] - e[:-1] > 1e-9 * max(1.0, hi))
        runs.append(len(s) / (len(breaks) + 1))
    return (float(np.median(runs)) if runs else 1.0), (float(np.median(lengths)) if lengths else 0.0)


def layout(data: GanttData, title: str | None = None, window_s: tuple[float, float] | None = None,
           max_lanes: int | None = None) -> Picture:
    """Decide what the timeline shows (see `Picture`)."""
    t_end = data.end_s()
    lo, hi = window_s if window_s is not None else (0.0, t_end)
    hi = min(hi, t_end) if window_s is not None and hi > t_end else hi
    window = (lo, max(hi, lo + 1e-9))
    lanes = _lanes(data, window, max_lanes)
    marks, key = _phases_text(data, window)
    n_bars = sum(len(l.bars[k][0]) for l in lanes for k in COLORS)
    any_group = any(l.grouped for l in lanes)
    name = title or "timeline"
    where = "" if window_s is None else f", {window[0]:,.6g}–{window[1]:,.6g} s"
    legend = ["compute", "push", "pull", "phase boundary"]
    panels: list[Panel] = []
    px_per_s = WIDTH_IN * DPI * 0.9 / (window[1] - window[0])
    if n_bars <= EXACT_MAX_BARS:
        per_bar, iter_s = _iterations_per_bar(lanes, *window)
        edges = iter_s * px_per_s >= ITERATION_EDGE_PX
        panels.append(Panel("bars", f"{name}{where}\n{_bar_caption(per_bar, edges)}", *window,
                            bars_drawn=_bar_counts(lanes, *window), iterations_per_bar=per_bar,
                            iteration_edges=edges))
        if any_group:
            _group_bins(panels[-1], lanes)
    else:
        interval = _exchange_interval_s(lanes)
        bin_s = _nice(max((window[1] - window[0]) / OVERVIEW_BINS, 2 * interval))
        overview = Panel("overview", "", *window, bin_s=bin_s)
        overview.comm_full_share = comm_scale(lanes, overview)
        overview.title = (f"{name}{where}: share of each {format_s(bin_s)} bin\n"
                          f"blue band: computing (full = 100%, white = waiting); grey strip: pushing / pulling "
                          f"(full = {overview.comm_full_share:.0%})")
        panels.append(overview)
        detail_hi = _detail_end_s(lanes, window)
        per_bar, iter_s = _iterations_per_bar(lanes, window[0], detail_hi)
        edges = iter_s * WIDTH_IN * DPI * 0.9 / (detail_hi - window[0]) >= ITERATION_EDGE_PX
        panels.append(Panel("detail", f"detail: {format_s(detail_hi - window[0])} from "
                                      f"{window[0]:,.6g} s, {_bar_caption(per_bar, edges)}", window[0], detail_hi,
                            bars_drawn=_bar_counts(lanes, window[0], detail_hi), iterations_per_bar=per_bar,
                            iteration_edges=edges))
        if any_group:
            _group_bins(panels[-1], lanes)
    accuracy = [(t, a) for t, a in data.evals if window[0] <= t <= window[1]]
    if accuracy:
        panels.append(Panel("accuracy", "evaluation accuracy of the global model", *window))
        legend.append("accuracy")
    return Picture(name, lanes, panels, marks, key, accuracy, legend)


def _group_bins(panel: Panel, lanes: list[Lane]) -> None:
    """A bar panel draws a group of workers as their mean share per bin; say so."""
    panel.bin_s = (panel.end_s - panel.start_s) / OVERVIEW_BINS
    panel.comm_full_share = comm_scale(lanes, panel)
    panel.title += (f"\nthe grouped row: mean share of each {format_s(panel.bin_s)} bin (push/pull strip full = "
                    f"{panel.comm_full_share:.0%})")


def _bar_caption(per_bar: float, edges: bool) -> str:
    if edges:
        return "bar by bar, one block per iteration (white lines separate back-to-back iterations)"
    if per_bar > 1.5:
        return f"bar by bar; back-to-back iterations merge into one blue bar (median {per_bar:.0f} per bar)"
    return "bar by bar, one blue bar per iteration"


def _bar_counts(lanes: list[Lane], lo: float, hi: float) -> dict[str, int]:
    return {l.label: int(sum(np.count_nonzero((s <= hi) & (e >= lo)) for s, e in l.bars.values()))
            for l in lanes if not l.grouped}


def _detail_end_s(lanes: list[Lane], window: tuple[float, float]) -> float:
    """Long enough for DETAIL_BARS_PER_WORKER bars and two exchanges of every worker."""
    lo, hi = window
    ends = []
    for lane in lanes:
        if lane.grouped:
            continue
        starts = np.sort(np.concatenate([lane.bars[k][0] for k in COLORS]))
        if len(starts):
            ends.append(float(starts[min(DETAIL_BARS_PER_WORKER, len(starts)) - 1]))
    end = min(ends) if ends else hi
    pulls = [float(np.sort(l.bars["pull"][1])[1]) for l in lanes if not l.grouped and len(l.bars["pull"][1]) > 1]
    return min(hi, max([end, lo + (hi - lo) / 1000] + pulls))


# --------------------------------------------------------------------------- drawing


def _draw_bars(ax, lanes: list[Lane], panel: Panel, scale: float) -> None:
    min_w = MIN_BAR_PX / (WIDTH_IN * DPI * 0.9) * (panel.end_s - panel.start_s)
    for y, lane in enumerate(lanes):
        if lane.grouped:
            _draw_shares(ax, y, lane, panel, scale)
            continue
        for kind, (lo, h) in (("compute", (y - 0.4, 0.45)), ("push", (y + 0.08, 0.32)), ("pull", (y + 0.08, 0.32))):
            s, e = lane.bars[kind]
            keep = (s <= panel.end_s) & (e >= panel.start_s)
            s, e = s[keep], e[keep]
            if not len(s):
                continue
            width = e - s if kind == "compute" else np.maximum(e - s, min_w)
            spans = list(zip((s / scale).tolist(), (width / scale).tolist()))
            if kind == "compute" and panel.iteration_edges:
                ax.broken_barh(spans, (lo, h), facecolors=COLORS[kind], edgecolors="white", linewidth=0.6)
            else:
                ax.broken_barh(spans, (lo, h), facecolors=COLORS[kind], linewidth=0)


def share_per_bin(lane: Lane, panel: Panel) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Bin edges and, per kind, the share of each bin (mean over the lane's workers)."""
    n = max(1, int(round((panel.end_s - panel.start_s) / panel.bin_s)))
    edges = np.linspace(panel.start_s, panel.end_s, n + 1)
    width = edges[1] - edges[0]
    return edges, {k: _busy_per_bin(*lane.bars[k], edges) / width / len(lane.members) for k in COLORS}


def comm_scale(lanes: list[Lane], panel: Panel) -> float:
    """The share a full communication strip stands for: 100%, unless no bin's push+pull
    share reaches COMM_ZOOM_BELOW; then the busiest bin's share rounded up to 1, 2 or
    5 × 10^k, so a 4% share is not a hairline. (Zooming larger shares would make 16% of
    comm look bigger than 18% of compute.)"""
    peak = max([float(np.max(f["push"] + f["pull"])) for lane in lanes
                for f in (share_per_bin(lane, panel)[1],) if len(f["push"])] + [0.0])
    return _nice(max(peak, 0.01)) if peak < COMM_ZOOM_BELOW else 1.0


def _draw_shares(ax, y: int, lane: Lane, panel: Panel, scale: float) -> None:
    """Upper band: compute share of each bin (full band = 100%); lower strip: push and
    pull share, full strip = `panel.comm_full_share`."""
    from matplotlib.collections import PolyCollection

    edges, frac = share_per_bin(lane, panel)
    x0, x1 = edges[:-1] / scale, edges[1:] / scale

    def band(bottom: np.ndarray, height: np.ndarray, kind: str) -> np.ndarray:
        top = bottom + height
        # one bar per bin, as one collection of rectangles (ax.bar makes a patch each: slow)
        corners = np.stack([np.column_stack([x0, bottom]), np.column_stack([x1, bottom]),
                            np.column_stack([x1, top]), np.column_stack([x0, top])], axis=1)
        ax.add_collection(PolyCollection(corners, facecolors=COLORS[kind], linewidths=0))
        return top

    n = len(x0)
    band(np.full(n, y - 0.42), np.clip(frac["compute"], 0, 1) * 0.5, "compute")
    bottom = np.full(n, y + 0.13)
    ax.add_patch(_strip_frame(edges[0] / scale, edges[-1] / scale, y + 0.13, 0.27))
    for kind in ("push", "pull"):
        bottom = band(bottom, np.clip(frac[kind] / panel.comm_full_share, 0, 1) * 0.27, kind)


def _strip_frame(x0: float, x1: float, y: float, h: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x0, y), x1 - x0, h, facecolor="#f2f2f2", edgecolor="none", zorder=0)


def _mark_phases(ax, marks: list[tuple[float, str]], panel: Panel, scale: float) -> None:
    for start_s, label in marks:
        if start_s > panel.end_s:
            continue
        if start_s > panel.start_s:
            ax.axvline(start_s / scale, color="black", linestyle="--", linewidth=1.0, alpha=0.7)
        ax.annotate(label, (max(start_s, panel.start_s) / scale, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, 3), textcoords="offset points", fontsize=8, va="bottom", fontweight="bold")


def draw(picture: Picture, path: str | os.PathLike) -> None:
    """Render `picture` to a PNG at `path` (atomic write); sets `picture.size_px`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    lanes = picture.lanes
    lane_h = min(14.0, max(2.5, 0.36 * len(lanes) + 1.5))
    heights = [2.2 if p.kind == "accuracy" else lane_h for p in picture.panels]
    key_lines = len(picture.phase_key)
    key_h = 0.15 + 0.15 * key_lines if key_lines else 0.0
    fig = plt.figure(figsize=(WIDTH_IN, sum(heights) + key_h + 0.4))
    grid = fig.add_gridspec(len(heights) + (1 if key_lines else 0), 1,
                            height_ratios=heights + ([key_h] if key_lines else []))
    for i, panel in enumerate(picture.panels):
        ax = fig.add_subplot(grid[i, 0])
        scale, unit = _time_unit(panel.end_s - panel.start_s)
        if panel.kind == "accuracy":
            ts, accs = zip(*picture.accuracy)
            ax.plot(np.array(ts) / scale, accs, marker="o", markersize=3, color="#8172B3")
            ax.set_ylabel("accuracy")
            ax.set_ylim(0, max(1e-9, max(accs)) * 1.1)
        elif panel.kind == "overview":
            for y, lane in enumerate(lanes):
                _draw_shares(ax, y, lane, panel, scale)
        else:
            _draw_bars(ax, lanes, panel, scale)
        if panel.kind != "accuracy":
            every = 1 if len(lanes) <= 40 else len(lanes) // 32 + 1  # label every k-th row when crowded
            labels = [l.label for l in lanes]
            if len(lanes) > 20:
                labels = [l.replace("\n", "  ") for l in labels]
            ax.set_yticks(range(0, len(lanes), every))
            ax.set_yticklabels(labels[::every], fontsize=7 if len(lanes) > 20 else 8)
            ax.set_ylim(len(lanes) - 0.4, -0.6)
        ax.set_xlim(panel.start_s / scale, panel.end_s / scale)
        _mark_phases(ax, picture.phase_marks, panel, scale)
        ax.set_title(panel.title, loc="left", fontsize=10, pad=16)
        ax.set_xlabel(f"time ({unit})")
        ax.grid(axis="x", alpha=0.3)
    if key_lines:
        kax = fig.add_subplot(grid[len(heights), 0])
        kax.axis("off")
        kax.text(0.0, 1.0, "phases:\n" + "\n".join(picture.phase_key), va="top", ha="left", fontsize=8,
                 family="monospace", transform=kax.transAxes)
    handles = [Patch(color=COLORS["compute"], label="compute"), Patch(color=COLORS["push"], label="push"),
               Patch(color=COLORS["pull"], label="pull"),
               plt.Line2D([0], [0], color="black", linestyle="--", label="phase boundary")]
    if picture.accuracy:
        handles.append(plt.Line2D([0], [0], color="#8172B3", marker="o", label="accuracy"))
    fig.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    picture.size_px = (int(round(fig.get_figwidth() * DPI)), int(round(fig.get_figheight() * DPI)))
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_gantt(path: str | os.PathLike, header: dict[str, Any], records: Iterable[dict[str, Any]],
                title: str | None = None, window_s: tuple[float, float] | None = None,
                max_lanes: int | None = None) -> Picture:
    """Write the timeline of `records` (a trace's records) to a PNG at `path`."""
    data = GanttData(header)
    data.write_many(records)
    return data.write_png(path, title, window_s, max_lanes)
