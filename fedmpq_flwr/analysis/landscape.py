"""Loss-landscape figures from landscape.npz (`diagnostics.landscape`), each from a variation's first seed.

`loss_landscape_<variation>`: per snapshot round (the last MAX_ROUNDS), contours of the test loss over
the two filter-normalized directions, the model (centre) and the grid's minimum marked with their values,
and below, for quantized methods, the loss along the line from the median client's quantized weights to
the float model. `loss_landscape_<variation>_pair1`: a FedMPQ-KD variation beside its FedMPQ partner in
the same setting (`reference.partner`), at the last round both snapshot, on one colour scale, with both
lines in a third panel. Contour levels are geometric: losses far from the model grow by orders of size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmpq_flwr.analysis.plotting import LABEL_BOX, Figure, legend, pyplot, save, slug, style
from fedmpq_flwr.analysis.reference import FEDMPQ, PROPOSED, partner
from fedmpq_flwr.analysis.runs import read_run_arrays
from fedmpq_flwr.analysis.stats import axis_values
from fedmpq_flwr.rundir.results import LANDSCAPE_FILE, landscape_key

MAX_ROUNDS = 4  # snapshot rounds drawn side by side in a variation's figure (the last ones)
LEVELS = 12  # contour levels between the smallest and largest loss drawn


@dataclass(frozen=True)
class Line:
    """Loss and accuracy from the quantized weights (t = 0) to the float model (t = 1), and the
    quantized model itself (activations quantized too)."""

    t: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    partition: int
    avg_bits: float
    quant_loss: float
    quant_accuracy: float


@dataclass(frozen=True)
class Snapshot:
    """One round's grid: loss[i, j] and accuracy[i, j] at (coords[i], coords[j])."""

    round: int
    coords: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    line: Line | None


def read_landscape(run: dict[str, Any]) -> tuple[list[Snapshot], int] | str:
    """A run's snapshots by round and the number of test images, or why they cannot be used."""
    run_id = run["run_id"]
    arrays = read_run_arrays(run, LANDSCAPE_FILE)
    if isinstance(arrays, str):
        return arrays
    snapshots = []
    for server_round in arrays.get("rounds", np.array([], dtype=np.int64)).tolist():
        got = {name: arrays.get(landscape_key(server_round, name)) for name in ("coords", "loss", "accuracy")}
        size = None if got["coords"] is None else (len(got["coords"]), len(got["coords"]))
        if any(value is None for value in got.values()) or got["loss"].shape != size or got["accuracy"].shape != size:
            return f"{LANDSCAPE_FILE} of run {run_id} has no complete grid for round {server_round}"
        line = None
        if landscape_key(server_round, "line_t") in arrays:
            fields = {name: arrays[landscape_key(server_round, f"line_{name}")] for name in ("t", "loss", "accuracy")}
            numbers = ("line_partition", "line_avg_bits", "quant_loss", "quant_accuracy")
            partition, avg_bits, quant_loss, quant_accuracy = (arrays[landscape_key(server_round, n)] for n in numbers)
            line = Line(
                **fields,
                partition=int(partition),
                avg_bits=float(avg_bits),
                quant_loss=float(quant_loss),
                quant_accuracy=float(quant_accuracy),
            )
        snapshots.append(Snapshot(int(server_round), got["coords"], got["loss"], got["accuracy"], line))
    if not snapshots:
        return f"{LANDSCAPE_FILE} of run {run_id} holds no snapshot"
    return snapshots, int(arrays.get("images", 0))


def enabled(run: dict[str, Any]) -> bool:
    """Whether the run's config asked for snapshots (older configs lack the section: no)."""
    return bool((run["config"].get("diagnostics") or {}).get("landscape"))


def _levels(snapshots: list[Snapshot]) -> np.ndarray | None:
    """Geometric contour levels over the finite losses of `snapshots` (None when there are none)."""
    values = np.concatenate([s.loss[np.isfinite(s.loss)].ravel() for s in snapshots])
    values = values[values > 0]
    if not len(values):
        return None
    low, high = float(values.min()), float(values.max())
    return np.geomspace(low, max(high, low * 1.001), LEVELS)


def _contour(fig: Any, ax: Any, snapshot: Snapshot, levels: np.ndarray, title: str) -> None:
    """Filled loss contours with labelled lines, the model and the grid's minimum marked, a colour bar."""
    from matplotlib.colors import LogNorm

    x, y = np.meshgrid(snapshot.coords, snapshot.coords, indexing="ij")  # loss[i, j] at (coords[i], coords[j])
    loss = np.ma.masked_invalid(snapshot.loss)
    filled = ax.contourf(x, y, loss, levels=levels, norm=LogNorm(levels[0], levels[-1]), cmap="viridis", extend="both")
    lines = ax.contour(x, y, loss, levels=levels[::2], colors="black", linewidths=0.5)
    ax.clabel(lines, fmt="%.3g", fontsize=6)
    fig.colorbar(filled, ax=ax, label="Test loss (nats, log scale)", format="%.3g")
    centre = len(snapshot.coords) // 2
    i, j = np.unravel_index(np.nanargmin(np.where(np.isfinite(snapshot.loss), snapshot.loss, np.nan)), loss.shape)
    marks = [
        ((centre, centre), "o", "white", "model"),
        ((i, j), "*", "red", "grid minimum"),
    ]
    for (a, b), marker, color, label in marks:
        value, accuracy = snapshot.loss[a, b], 100 * snapshot.accuracy[a, b]
        ax.plot(
            snapshot.coords[a],
            snapshot.coords[b],
            marker=marker,
            color=color,
            markeredgecolor="black",
            markersize=9,
            linestyle="",
            label=f"{label}: loss {value:.3g}, acc. {accuracy:.1f}%",
        )
        ax.annotate(
            f"{value:.3g}",
            (snapshot.coords[a], snapshot.coords[b]),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=7,
            bbox=LABEL_BOX,
        )
    ax.set_xlabel("Direction 1 (filter-normalized steps)")
    ax.set_ylabel("Direction 2 (filter-normalized steps)")
    ax.set_title(title, fontsize=9)
    legend(ax, 2)


def _line(ax: Any, lines: list[tuple[str, Line]], title: str) -> None:
    """Loss along each line, both ends annotated (loss, accuracy), the quantized model's own loss marked."""
    for k, (label, line) in enumerate(lines):
        (drawn,) = ax.plot(
            line.t,
            line.loss,
            markersize=4,
            label=f"{label}: client {line.partition}, {line.avg_bits:.2f} avg. bits",
            **style(k),
        )
        ax.plot(
            0.0,
            line.quant_loss,
            marker="X",
            color=drawn.get_color(),
            markeredgecolor="black",
            linestyle="",
            markersize=8,
            label=f"{label}: quantized model, activations too ({line.quant_loss:.3g}, "
            f"{100 * line.quant_accuracy:.1f}%)",
        )
        for end, offset in ((0, (6, 8 + 12 * k)), (-1, (-60, 8 + 12 * k))):
            ax.annotate(
                f"{line.loss[end]:.3g} ({100 * line.accuracy[end]:.1f}%)",
                (line.t[end], line.loss[end]),
                xytext=offset,
                textcoords="offset points",
                fontsize=7,
                color=drawn.get_color(),
                bbox=LABEL_BOX,
            )
    ax.set_xlabel("t: 0 = quantized weights (dequantized), 1 = float model")
    ax.set_ylabel("Test loss (nats)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.margins(y=0.25)
    legend(ax, 2 * len(lines))


def variation_figure(variation: str, run: dict[str, Any]) -> Figure:
    """The snapshots of a variation's first seed, one column per round."""
    name = f"loss_landscape_{slug(variation)}"
    caption = f"{variation}: test loss around the global model along two filter-normalized directions"
    read = read_landscape(run)
    if isinstance(read, str):
        return Figure(name, caption, why=read)
    snapshots, images = read[0][-MAX_ROUNDS:], read[1]
    levels = _levels(snapshots)
    if levels is None:
        return Figure(name, caption, why=f"{LANDSCAPE_FILE} of run {run['run_id']} has no finite positive loss")

    def draw(path: Path) -> None:
        plt = pyplot()
        rows = 2 if any(s.line is not None for s in snapshots) else 1
        fig, axes = plt.subplots(rows, len(snapshots), figsize=(5.4 * len(snapshots), 5.6 * rows), squeeze=False)
        for col, snapshot in enumerate(snapshots):
            _contour(fig, axes[0][col], snapshot, levels, f"Round {snapshot.round}: test loss")
            if rows == 2:
                if snapshot.line is None:
                    axes[1][col].set_axis_off()
                else:
                    _line(axes[1][col], [(variation, snapshot.line)], f"Round {snapshot.round}: quantized to float")
        fig.suptitle(f"{variation}: first seed's run (seed {run['seed']}), {images} test images", fontsize=10)
        save(fig, path)

    return Figure(name, caption, draw)


def pair_figure(left: tuple[str, dict[str, Any]], right: tuple[str, dict[str, Any]]) -> Figure:
    """FedMPQ's variation (left) beside FedMPQ-KD's (right) at the last round both snapshot, one scale."""
    name = f"loss_landscape_{slug(right[0])}_pair1"
    caption = f"{right[0]} beside {left[0]}: test loss around the global model, one colour scale"
    reads = [read_landscape(run) for _, run in (left, right)]
    why = next((read for read in reads if isinstance(read, str)), None)
    if why is not None:
        return Figure(name, caption, why=why)
    by_round = [{s.round: s for s in read[0]} for read in reads]
    common = sorted(set(by_round[0]) & set(by_round[1]))
    if not common:
        return Figure(name, caption, why=f"{left[0]} and {right[0]} snapshot no common round")
    shown = [rounds[common[-1]] for rounds in by_round]
    levels = _levels(shown)
    if levels is None:
        return Figure(name, caption, why=f"{LANDSCAPE_FILE} of {left[0]} or {right[0]} has no finite positive loss")
    lines = [(variation, s.line) for (variation, _), s in zip((left, right), shown) if s.line is not None]

    def draw(path: Path) -> None:
        plt = pyplot()
        panels = 2 + bool(lines)
        fig, axes = plt.subplots(1, panels, figsize=(5.4 * panels, 5.8), squeeze=False)
        for ax, (variation, run), snapshot in zip(axes[0], (left, right), shown):
            _contour(fig, ax, snapshot, levels, f"{variation} (seed {run['seed']}): round {snapshot.round}")
        if lines:
            _line(axes[0][2], lines, f"Round {common[-1]}: quantized to float")
        fig.suptitle(f"{left[0]} vs {right[0]}: first seed's runs, {reads[0][1]} test images", fontsize=10)
        save(fig, path)

    return Figure(name, caption, draw)


def landscape_figures(variations: dict[str, dict[str, Any]], groups: dict[str, list[dict[str, Any]]]) -> list[Figure]:
    """A figure per variation whose runs took snapshots, and a pair per FedMPQ-KD variation with its
    FedMPQ partner; nothing when no run asked for snapshots."""
    shown = [name for name in variations if enabled(groups[name][0])]
    figures = [variation_figure(name, groups[name][0]) for name in shown]
    values = axis_values(variations, groups) if shown else {}
    for name in (n for n in shown if variations[n]["strategy"] == PROPOSED):
        other = partner(name, FEDMPQ, variations, values)
        if other is None or not enabled(groups[other][0]):
            why = f"no {FEDMPQ} variation in the same setting took snapshots"
            figures.append(Figure(f"loss_landscape_{slug(name)}_pair1", "", why=why))
            continue
        figures.append(pair_figure((other, groups[other][0]), (name, groups[name][0])))
    return figures
