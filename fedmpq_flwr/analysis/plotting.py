"""Drawing helpers shared by the figures: black-and-white-safe styles, line plots with a std band and
the final value written at each line's end (labels pushed apart so they never overlap), and bar
charts with the value above every bar. matplotlib is imported lazily on the Agg backend."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
MARKERS = ["o", "s", "^", "D", "v", "x", "P", "*", "<", ">"]
HATCHES = ["//", "..", "xx", "\\\\", "oo", "--", "++", "**", "||", "OO"]
GRAYS = ["0.85", "0.55", "0.95", "0.7", "0.4", "0.8"]
LABEL_BOX = {"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}  # text over lines
PREVIEW_DPI = 120  # a PNG preview (README) readable at page width


@dataclass
class Figure:
    """A planned figure: `draw(path)` writes it; without `draw` it is skipped because of `why`."""

    name: str
    caption: str
    draw: Callable[[Path], None] | None = None
    why: str = ""


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported lazily: importing the analyzer stays light)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def slug(text: str) -> str:
    """Lower-case, `_`-separated form of a name for figure file names."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def wrap(name: str, width: int = 14) -> str:
    """Break a long name into short lines, preferably after an underscore."""
    return "\n".join(textwrap.wrap(name.replace("_", "_ "), width)).replace("_ ", "_")


def style(i: int) -> dict[str, Any]:
    """Line style and marker of the i-th series (distinct without colour)."""
    return {"linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)]}


def save(fig: Any, path: Path) -> None:
    """Write a figure as its file name says: a PDF (no creation date, so the same figure is the same
    file) or, for a web page's preview, a PNG."""
    fig.tight_layout()
    if path.suffix == ".png":
        fig.savefig(path, format="png", dpi=PREVIEW_DPI, bbox_inches="tight")
    else:
        fig.savefig(path, format="pdf", bbox_inches="tight", metadata={"CreationDate": None})
    pyplot().close(fig)


def legend_columns(entries: int) -> int:
    return 1 if entries <= 2 else 2


def legend(ax: Any, entries: int) -> None:
    """Legend below the axes, where it can cover no line or label."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=legend_columns(entries), frameon=False)


def spread(values: Sequence[float], min_gap: float) -> list[float]:
    """Label heights near `values`, at least `min_gap` apart, in the input order."""
    order = np.argsort(values, kind="stable")
    placed = np.asarray(values, dtype=float)[order].copy()
    for i in range(1, len(placed)):
        placed[i] = max(placed[i], placed[i - 1] + min_gap)
    shift = (placed - np.asarray(values, dtype=float)[order]).mean() if len(placed) else 0.0
    placed -= shift / 2  # centre the pushed labels around the lines
    result = np.empty_like(placed)
    result[order] = placed
    return result.tolist()


@dataclass
class Series:
    """One line: x values, mean y, optional std band (same units as the axis)."""

    label: str
    x: Sequence[float]
    mean: Sequence[float]
    std: Sequence[float] | None = None
    style_index: int | None = None  # keeps one variation's style across panels (default: its position)


def figure_height(entries: int, base: float = 4.0) -> float:
    """Taller figures for more legend rows below the plot."""
    return base + 0.2 * -(-entries // legend_columns(entries))


def line_plot(ax: Any, series: list[Series], xlabel: str, ylabel: str, value_format: str = "{:.1f}") -> None:
    """Lines with std bands and the last value of each written at its end."""
    from matplotlib.ticker import MaxNLocator

    ends = []
    for position, s in enumerate(series):
        i = position if s.style_index is None else s.style_index
        x, mean = np.asarray(s.x, dtype=float), np.asarray(s.mean, dtype=float)
        (line,) = ax.plot(x, mean, markevery=max(1, len(x) // 10), markersize=4, label=s.label, **style(i))
        if s.std is not None:
            std = np.asarray(s.std, dtype=float)
            ax.fill_between(
                x,
                mean - std,
                mean + std,
                color=line.get_color(),
                alpha=0.15,
                hatch=HATCHES[i % len(HATCHES)],
                linewidth=0,
            )
        ends.append((x[-1], mean[-1], line.get_color()))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    first, last = min(min(np.asarray(s.x, dtype=float)) for s in series), max(e[0] for e in ends)
    if last - first < 5:  # a few rounds: tick every one (the locator would print fractions)
        ax.set_xticks(np.arange(first, last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    x_span = max(last - first, 2.0)
    ax.set_xlim(first - 0.03 * x_span, last + 0.18 * x_span)  # room on the right for the end labels
    ax.ticklabel_format(axis="y", useOffset=False)  # plain values, no "+1.58e1" offset
    ax.grid(True, alpha=0.3)
    low, high = ax.get_ylim()
    heights = spread([e[1] for e in ends], (high - low) * 0.045)
    for (x_end, y_end, color), y_label in zip(ends, heights):
        ax.annotate(
            value_format.format(y_end),
            xy=(x_end, y_end),
            xytext=(x_end + 0.04 * x_span, y_label),
            textcoords="data",
            va="center",
            fontsize=7,
            color=color,
            bbox=LABEL_BOX,
            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": color},
        )
    legend(ax, len(series))


def line_figure(series: list[Series], path: Path, xlabel: str, ylabel: str, value_format: str = "{:.1f}") -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.8, figure_height(len(series))))
    line_plot(ax, series, xlabel, ylabel, value_format)
    save(fig, path)


@dataclass
class BarSeries:
    """One group member across the bars: label and per-bar mean (None = no bar) and std."""

    label: str
    means: Sequence[float | None]
    stds: Sequence[float | None] | None = None


def bar_figure(
    names: list[str],
    series: list[BarSeries],
    path: Path,
    ylabel: str,
    value_format: str = "{:.1f}",
    log: bool = False,
    counts: Sequence[int] | None = None,
) -> None:
    """Bars per name (grouped for several series), std error bars, the value above every bar; hatches
    tell the bars apart without colour, and the figure widens with the number of bars."""
    plt = pyplot()
    groups, per_group = len(names), len(series)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.75 * groups * per_group + 1.8), 4.4))
    x = np.arange(groups)
    width = 0.8 / per_group
    rotate = per_group * groups > 10  # vertical value labels when the bars get narrow
    tops, lows = [], [0.0]
    has_std = False
    for j, s in enumerate(series):
        means = np.array([np.nan if m is None else m for m in s.means], dtype=float)
        stds = np.array([np.nan if sd is None else sd for sd in (s.stds or [None] * groups)], dtype=float)
        error_label = {} if has_std or np.isnan(stds).all() else {"label": "± 1 std over seeds"}
        has_std = has_std or bool(error_label)
        bars = ax.bar(
            x + (j - (per_group - 1) / 2) * width,
            np.nan_to_num(means),
            width,
            yerr=stds,
            capsize=3,
            edgecolor="black",
            color=GRAYS[j % len(GRAYS)],
            label=s.label,
            error_kw=error_label,
        )
        for i, bar in enumerate(bars):
            bar.set_hatch(HATCHES[(i if per_group == 1 else j) % len(HATCHES)])
            if np.isnan(means[i]):
                continue
            top = means[i] + (0.0 if np.isnan(stds[i]) else stds[i])
            tops.append(top)
            lows.append(means[i])
            ax.annotate(
                value_format.format(means[i]),
                (bar.get_x() + bar.get_width() / 2, top * 1.08 if log else max(top, 0.0)),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90 if rotate else 0,
            )
    labels = [wrap(n) + ("" if counts is None else f"\n(n={counts[i]})") for i, n in enumerate(names)]
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_xlabel("Variation")
    ax.set_ylabel(ylabel)
    top = max(tops, default=1.0)
    if log:
        ax.set_yscale("log")
        positive = [m for s in series for m in s.means if m]
        ax.set_ylim(min(positive, default=1.0) / 3, top * (30 if rotate else 8))
    else:
        low = min(lows)
        span = (max(top, 0.0) - low) or 1.0
        ax.set_ylim(low - (0.08 * span if low < 0 else 0.0), max(top, 0.0) + span * (0.35 if rotate else 0.18))
        ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(True, axis="y", alpha=0.3)
    if per_group > 1 or has_std:  # above the axes, where it can cover no bar
        ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=per_group + 1, frameon=False)
    save(fig, path)


@dataclass
class Distribution:
    """One group member across the names: the label and, per name, the values (empty = no box)."""

    label: str
    values: Sequence[Sequence[float]]


def distribution_figure(
    names: list[str],
    series: list[Distribution],
    path: Path,
    ylabel: str,
    value_format: str = "{:.1f}",
    counts: Sequence[int] | None = None,
) -> None:
    """A box (whiskers at the minimum and maximum) per name and series with every value drawn as a
    point beside a seeded jitter, the mean as a diamond, and the mean and minimum written above each
    box (the worst value); grays and hatches tell the series apart without colour."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    plt = pyplot()
    groups, per_group = len(names), len(series)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.95 * groups * per_group + 1.8), 4.6))
    width = 0.8 / per_group
    jitter = np.random.default_rng(0)  # the same point positions in every drawing
    tops = []
    for j, s in enumerate(series):
        for i, values in enumerate(s.values):
            if not len(values):
                continue
            x = i + (j - (per_group - 1) / 2) * width
            values = np.asarray(values, dtype=float)
            box = ax.boxplot(
                [values], positions=[x], widths=0.7 * width, whis=(0, 100), showfliers=False, patch_artist=True,
                medianprops={"color": "black", "linewidth": 0.8},
            )  # fmt: skip
            for patch in box["boxes"]:
                patch.set(facecolor=GRAYS[j % len(GRAYS)], hatch=HATCHES[j % len(HATCHES)], edgecolor="black")
            offsets = jitter.uniform(-0.22, 0.22, size=values.size) * width
            ax.scatter(
                x + offsets, values, s=9, marker=MARKERS[j % len(MARKERS)], facecolors="none",
                edgecolors="black", linewidths=0.5, zorder=3,
            )  # fmt: skip
            mean = float(values.mean())
            ax.plot([x], [mean], marker="D", markersize=5, color="white", markeredgecolor="black", zorder=4)
            top = float(values.max())
            tops.append(top)
            ax.annotate(
                f"mean {value_format.format(mean)}\nworst {value_format.format(float(values.min()))}",
                (x, top), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=6.5,
                bbox=LABEL_BOX,
            )  # fmt: skip
    labels = [wrap(n) + ("" if counts is None else f"\n(n={counts[i]})") for i, n in enumerate(names)]
    ax.set_xticks(np.arange(groups), labels, fontsize=7)
    ax.set_xlim(-0.6, groups - 0.4)
    ax.set_xlabel("Variation")
    ax.set_ylabel(ylabel)
    low, high = ax.get_ylim()
    ax.set_ylim(low, max(high, max(tops, default=high)) + 0.2 * (high - low))
    ax.grid(True, axis="y", alpha=0.3)
    handles = [
        Patch(facecolor=GRAYS[j % len(GRAYS)], hatch=HATCHES[j % len(HATCHES)], edgecolor="black", label=s.label)
        for j, s in enumerate(series)
    ]
    handles.append(
        Line2D([], [], marker="D", linestyle="", color="white", markeredgecolor="black", label="mean over clients")
    )
    ax.legend(
        handles=handles, fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=len(handles), frameon=False
    )
    save(fig, path)
