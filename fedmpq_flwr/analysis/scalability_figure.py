"""`images/scalability.pdf`: every quantity of the scalability fits against the participants per round,
the measured points of each method with their values, and its linear and logarithmic fits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedmpq_flwr.analysis.plotting import LABEL_BOX, MARKERS, Figure, pyplot, save
from fedmpq_flwr.analysis.scalability import QUANTITIES

NAME = "scalability"
CAPTION = (
    "per-round costs against the participants per round along federation.num_clients: measured points "
    "(mean over seeds), linear fit (solid) and logarithmic fit (dashed) per method, R^2 in the legend"
)


def scalability_figure(section: dict[str, Any]) -> Figure:
    """The figure, or why it is skipped (no method with fits)."""
    fitted = {s: e for s, e in section["methods"].items() if e["fits"]}
    if not fitted:
        why = "no method has 3 client counts with 3 distinct participant counts" if section["methods"] else ""
        return Figure(NAME, CAPTION, why=why or f"no run varies {section['axis']}")
    return Figure(NAME, CAPTION, lambda path: _draw(fitted, path))


def _value_text(value: float) -> str:
    """3 significant digits, large numbers (bits) with a k, M or G suffix."""
    for suffix, unit in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= unit:
            return f"{value / unit:.3g}{suffix}"
    return f"{value:.3g}"


def _draw(methods: dict[str, dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    quantities = [q for q in QUANTITIES if any(q in e["fits"] for e in methods.values())]
    columns = 3
    rows = -(-len(quantities) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.9 * rows), squeeze=False)
    for ax, quantity in zip(axes.flat, quantities):
        for i, (strategy, entry) in enumerate(methods.items()):
            found = entry["fits"].get(quantity)
            if found is None:
                continue
            n = np.array([p["num_sampled"] for p in entry["points"]], dtype=float)
            y = np.array([p[quantity] for p in entry["points"]], dtype=float)
            (marks,) = ax.plot(n, y, linestyle="", marker=MARKERS[i % len(MARKERS)], markersize=5, label=strategy)
            color = marks.get_color()
            grid = np.linspace(n.min(), n.max(), 100)
            for model, curve, linestyle in (("linear", grid, "-"), ("logarithmic", np.log(grid), "--")):
                line = found[model]
                r2 = "–" if line["r2"] is None else f"{line['r2']:.3f}"
                label = f"{strategy} {model} fit (R²={r2})"
                ax.plot(grid, line["intercept"] + line["slope"] * curve, linestyle, color=color, lw=1, label=label)
            for x_point, y_point in zip(n, y):
                ax.annotate(
                    _value_text(y_point), (x_point, y_point), xytext=(4, 4 + 9 * i), textcoords="offset points",
                    fontsize=6.5, color=color, bbox=LABEL_BOX,
                )  # fmt: skip
        ax.set_xlabel("Participants per round (num_sampled)")
        ax.set_ylabel(QUANTITIES[quantity][1], fontsize=8)
        ax.margins(x=0.15, y=0.2)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="best", frameon=False)
    for ax in list(axes.flat)[len(quantities) :]:
        ax.set_visible(False)
    save(fig, path)
