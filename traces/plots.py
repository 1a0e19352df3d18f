"""Comparison pictures as PNGs: `validate --plot` (predicted against measured, per phase
and per worker) and `plan --plot` (the candidates' predicted times, and their predicted
quality when the job has a convergence model).

Both draw from the commands' own JSON (`traces.compare.compare`'s result, the plan
ranking of `plan --json`), so this module needs neither the simulator nor the solver.
As in traces/gantt.py, each function returns what it drew as a small dataclass, so
tests check the data instead of comparing images.
"""

from __future__ import annotations

import io
import os
import textwrap
from dataclasses import dataclass
from typing import Any

from hybridps.fileio import atomic_write_bytes

WIDTH_IN, DPI = 11.0, 100
PREDICTED, MEASURED = "#4C72B0", "#DD8452"
HOW_COLORS = {"full": "#4C72B0", "proxy": "#A1C4E8", "estimate": "#DDDDDD"}
HOW_LEGEND = {"full": "full simulation", "proxy": "proxy: shortened horizon, scaled back",
              "estimate": "closed-form estimate"}
LABEL_WIDTH = 48  # characters per line of a candidate label


@dataclass(frozen=True)
class BarPanel:
    """One panel of bars: a value per label for each series (legend entry)."""

    title: str
    axis_label: str  # the value axis, with its unit
    labels: tuple[str, ...]
    series: dict[str, tuple[float | None, ...]]  # legend name -> one value per label (None: not drawn)
    hatched: tuple[int, ...] = ()  # labels drawn hatched: the uniform baseline


@dataclass(frozen=True)
class Figure:
    """What a PNG shows: its title, its panels top to bottom, its size in pixels."""

    title: str
    panels: tuple[BarPanel, ...]
    size_px: tuple[int, int]


def _pct(row: dict[str, Any]) -> str:
    e = row.get("rel_error")
    return "error n/a" if e is None else "error 0%" if abs(e) < 0.005 else f"error {e:+.0%}"


def validate_panels(comparison: dict[str, Any]) -> tuple[BarPanel, ...]:
    """Phase durations, then each worker's compute and communication time, predicted
    against measured; labels carry the relative error."""
    phases = comparison["phases"]
    panels = [BarPanel("phase durations: predicted (simulator) vs measured (run)", "duration (s)",
                       tuple(f"{r['name']}\n{_pct(r)}" for r in phases),
                       {"predicted": tuple(r["predicted"] for r in phases),
                        "measured": tuple(r["measured"] for r in phases)})]
    workers = comparison["workers"]
    for field, what in (("compute_s", "compute"), ("comm_s", "communication (push + pull)")):
        rows = {name: next(r for r in worker_rows if r["name"] == field) for name, worker_rows in workers.items()}
        panels.append(BarPanel(f"per-worker {what} time", "time (s)",
                               tuple(f"{name}\n{_pct(r)}" for name, r in rows.items()),
                               {"predicted": tuple(r["predicted"] for r in rows.values()),
                                "measured": tuple(r["measured"] for r in rows.values())}))
    return tuple(panels)


def write_validate_plot(path: str | os.PathLike, comparison: dict[str, Any], title: str) -> Figure:
    """`validate --plot`: grouped bars, predicted and measured side by side."""
    m = comparison["makespan"]
    full_title = (f"{title}\nmakespan predicted {m['predicted']:.3f} s, measured {m['measured']:.3f} s "
                  f"({_pct(m)}); error = (predicted - measured) / measured")
    panels = validate_panels(comparison)
    return _render(path, full_title, panels, _draw_grouped, height_in=3.2 * len(panels) + 1.0)


def _row_time_s(row: dict[str, Any]) -> float:
    return {"full": row["full_s"], "proxy": row["proxy_s"], "estimate": row["estimate_s"]}[row["how"]]


def plan_rows(ranking: dict[str, Any], top: int) -> list[tuple[int, dict[str, Any]]]:
    """(rank, row) as `plan`'s table shows them: the top simulated candidates, and the
    uniform baseline even when it ranks lower."""
    ranked = list(enumerate(ranking["ranked"], 1))
    shown = [(k, r) for k, r in ranked if r["proxy_s"] is not None][:top]
    shown += [(k, r) for k, r in ranked if r["baseline"] and (k, r) not in shown]
    return shown


def plan_panels(ranking: dict[str, Any], top: int, target_accuracy: float | None) -> tuple[BarPanel, ...]:
    """Predicted time per candidate, coloured by how it was obtained (series = `how`);
    with a convergence model also the time to the target and the final accuracy."""
    rows = plan_rows(ranking, top)
    labels = tuple(f"#{k} " + textwrap.fill(r["label"] + ("  [baseline]" if r["baseline"] else ""), LABEL_WIDTH)
                   for k, r in rows)
    series = {how: tuple(_row_time_s(r) if r["how"] == how else None for _, r in rows)
              for how in HOW_COLORS if any(r["how"] == how for _, r in rows)}
    quality = [r["quality"] or {} for _, r in rows]
    if target_accuracy is not None and any(quality):
        series["time to target"] = tuple(q.get("time_to_target_s") for q in quality)
    baseline = tuple(i for i, (_, r) in enumerate(rows) if r["baseline"])
    by = "predicted time" if ranking.get("objective", "time") == "time" else "predicted time to the target"
    panels = [BarPanel(f"predicted time per candidate, ranked by {by} (full simulations rank before proxies)",
                       "predicted time (s)", labels, series, baseline)]
    if any(q.get("final_accuracy") is not None for q in quality):
        where = f"; dashed: target {target_accuracy:g}" if target_accuracy is not None else ""
        panels.append(BarPanel(f"predicted final validation accuracy (convergence model; hollow: the baseline{where})",
                               "accuracy",
                               labels, {"final accuracy": tuple(q.get("final_accuracy") for q in quality)}, baseline))
    return tuple(panels)


def write_plan_plot(path: str | os.PathLike, ranking: dict[str, Any], title: str, top: int = 10,
                    target_accuracy: float | None = None) -> Figure:
    """`plan --plot`: one horizontal bar per candidate, best at the top."""
    panels = plan_panels(ranking, top, target_accuracy)
    rows = len(panels[0].labels)
    lines = sum(label.count("\n") + 1 for label in panels[0].labels)
    height = len(panels) * (1.0 + 0.14 * lines + 0.1 * rows) + 0.6
    return _render(path, title, panels, lambda ax, p: _draw_horizontal(ax, p, target_accuracy), height_in=height)


def _render(path, title: str, panels: tuple[BarPanel, ...], draw_panel, height_in: float) -> Figure:
    """One panel above the other, `draw_panel(ax, panel)` each; the PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(WIDTH_IN, height_in), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        draw_panel(ax, panel)
        ax.set_title(panel.title, loc="left", fontsize=10)
    fig.suptitle(title, x=0.01, ha="left", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    size = (int(round(fig.get_figwidth() * DPI)), int(round(fig.get_figheight() * DPI)))
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Figure(title, panels, size)


def _seconds(v: float) -> str:
    return f"{v:,.0f} s" if v >= 100 else f"{v:.3g} s" if v >= 0.1 or v == 0 else f"{v * 1e3:.3g} ms"


def _draw_grouped(ax, panel: BarPanel) -> None:
    """Predicted and measured bars side by side per label, each with its value."""
    import numpy as np

    x = np.arange(len(panel.labels))
    width = 0.8 / len(panel.series)
    colors = {"predicted": PREDICTED, "measured": MEASURED}
    for i, (name, values) in enumerate(panel.series.items()):
        heights = [v or 0.0 for v in values]
        bars = ax.bar(x + (i - (len(panel.series) - 1) / 2) * width, heights, width, label=name, color=colors.get(name))
        ax.bar_label(bars, labels=[_seconds(v) for v in heights], fontsize=7, padding=1)
    ax.set_xticks(x)
    ax.set_xticklabels(panel.labels, fontsize=8)
    ax.set_xlim(-0.5, max(len(x), 3) - 0.5)  # a lone phase keeps a bar's usual width
    ax.set_ylim(0, max(max(v or 0.0 for v in vs) for vs in panel.series.values()) * 1.2 or 1.0)
    ax.set_ylabel(panel.axis_label)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def _draw_horizontal(ax, panel: BarPanel, target_accuracy: float | None) -> None:
    """Predicted times: one bar per candidate (best at the top), a time to target as a
    black diamond. Accuracies: one dot per candidate (an axis that need not start at 0)."""
    from matplotlib.patches import Patch

    if panel.axis_label == "accuracy":
        _draw_accuracy_dots(ax, panel, target_accuracy)
    else:
        to_target = panel.series.get("time to target")
        handles = []
        for name, values in panel.series.items():
            if name == "time to target":
                continue
            ys = [k for k, v in enumerate(values) if v is not None]
            color = HOW_COLORS[name]
            bars = ax.barh(ys, [values[k] for k in ys], color=color, edgecolor="#555555", height=0.7)
            handles.append(Patch(facecolor=color, edgecolor="#555555", label=HOW_LEGEND[name]))
            for k, bar in zip(ys, bars):
                bar.set_hatch("//" if k in panel.hatched else "")
                reach = "" if to_target is None else "; target missed" if to_target[k] is None else \
                    f"; target at {to_target[k]:,.1f} s"
                ax.text(values[k], k, f" {values[k]:,.1f} s{reach}", va="center", fontsize=7)
        if to_target is not None:
            ys = [k for k, v in enumerate(to_target) if v is not None]
            handles.append(ax.scatter([to_target[k] for k in ys], ys, marker="D", color="black", zorder=3,
                                      label="predicted time to target"))
        if panel.hatched:
            handles.append(Patch(facecolor="white", edgecolor="#555555", hatch="//", label="uniform baseline"))
        ax.set_xlim(0, max(v for vs in panel.series.values() for v in vs if v is not None) * 1.3)
        ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles),
                  frameon=False, borderaxespad=4.0)  # below the axis label, whatever the axes' height
        ax.grid(axis="x", alpha=0.3)
    ax.set_yticks(range(len(panel.labels)))
    ax.set_yticklabels(panel.labels, fontsize=7, family="monospace")
    ax.set_ylim(len(panel.labels) - 0.5, -0.5)
    ax.set_xlabel(panel.axis_label)


def _draw_accuracy_dots(ax, panel: BarPanel, target_accuracy: float | None) -> None:
    values = panel.series["final accuracy"]
    ys = [k for k, v in enumerate(values) if v is not None]
    ax.hlines(ys, 0, [values[k] for k in ys], color="#CCCCCC", linewidth=1)
    for k in ys:
        hollow = k in panel.hatched
        ax.plot(values[k], k, "o", color="#8172B3", markerfacecolor="white" if hollow else "#8172B3")
        ax.text(values[k], k, f"  {values[k]:.3f}", va="center", fontsize=7)
    lo = min(values[k] for k in ys)
    ax.set_xlim(max(0.0, lo - 0.05), 1.0)
    if target_accuracy is not None:
        ax.axvline(target_accuracy, color="black", linestyle="--")
    ax.grid(axis="x", alpha=0.3)
