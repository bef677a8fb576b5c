"""Where the bits go in quantized runs: per-layer bit-width histograms per client (from
bit_assignments.json) and the mean bit-width of every layer over rounds (from metrics.jsonl), both
from the first seed of a variation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fedmpq_flwr.analysis.plotting import HATCHES, Figure, pyplot, save, slug
from fedmpq_flwr.rundir.results import BIT_ASSIGNMENTS_FILE

BIT_WIDTHS = list(range(1, 9))
MAX_ANNOTATED_CELLS = 20  # heatmaps up to 20 layers x 20 rounds get their values written in the cells


def read_assignments(run: dict[str, Any]) -> dict[str, Any] | str:
    """The run's final per-client bits, or why they cannot be read."""
    path = Path(run["run_dir"]) / BIT_ASSIGNMENTS_FILE
    try:
        data = json.loads(path.read_text())
    except OSError:
        return f"no {BIT_ASSIGNMENTS_FILE} in run {run['run_id']}"
    except json.JSONDecodeError:
        return f"unreadable {BIT_ASSIGNMENTS_FILE} in run {run['run_id']}"
    clients = data.get("clients") if isinstance(data, dict) else None
    if not clients or not all(
        isinstance(c, dict) and isinstance(c.get("bits"), dict) and c["bits"] for c in clients.values()
    ):
        return f"{BIT_ASSIGNMENTS_FILE} of run {run['run_id']} has no per-client bits"
    return data


def _client_panels(clients: dict[str, dict[str, Any]]) -> list[tuple[list[str], dict[str, Any]]]:
    """Clients with identical bits share one panel (equal budgets usually get one assignment)."""
    panels: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for pid in sorted(clients, key=lambda p: (not p.isdigit(), int(p) if p.isdigit() else 0, p)):
        key = json.dumps(clients[pid]["bits"], sort_keys=True)
        panels.setdefault(key, ([], clients[pid]))[0].append(pid)
    return list(panels.values())


def histogram_figure(variation: str, run: dict[str, Any]) -> Figure:
    name = f"bit_histogram_{slug(variation)}"
    caption = f"{variation}: how many layers each client holds at each bit-width, final assignment (seed {run['seed']})"
    data = read_assignments(run)
    if isinstance(data, str):
        return Figure(name, caption, why=data)
    panels = _client_panels(data["clients"])

    def draw(path: Path) -> None:
        plt = pyplot()
        cols = min(4, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.6 * rows + 0.4), squeeze=False)
        top = max(len(client["bits"]) for _, client in panels)
        for ax, (pids, client) in zip(axes.flat, panels):
            counts = [sum(1 for b in client["bits"].values() if int(b) == width) for width in BIT_WIDTHS]
            bars = ax.bar(BIT_WIDTHS, counts, color="0.75", edgecolor="black", hatch=HATCHES[0])
            for bar, count in zip(bars, counts):
                ax.annotate(
                    str(count),
                    (bar.get_x() + bar.get_width() / 2, count),
                    xytext=(0, 1),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
            who = "client " + pids[0] if len(pids) == 1 else "clients " + ", ".join(pids)
            budget = client.get("budget")
            avg = client.get("avg_bits")
            ax.set_title(
                f"{who}\nbudget {budget:g}, average {avg:.2f} bits"
                if isinstance(budget, (int, float)) and isinstance(avg, (int, float))
                else who,
                fontsize=8,
            )
            ax.set_xticks(BIT_WIDTHS)
            ax.set_ylim(0, top * 1.2)
            ax.set_xlabel("Bit-width (bits)", fontsize=8)
            ax.set_ylabel("Layers (count)", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle(f"{variation}: per-layer bit-widths per client (seed {run['seed']})", fontsize=9)
        save(fig, path)

    return Figure(name, caption, draw)


def allocation_matrix(history: list[dict[str, Any]]) -> tuple[list[str], list[int], np.ndarray] | None:
    """(layers, rounds, [layers, rounds] mean over clients of clients[].bits[layer]), None without bits."""
    layers: list[str] = []
    columns: list[tuple[int, dict[str, float]]] = []
    for record in history:
        clients = [c["bits"] for c in record.get("clients") or [] if isinstance(c.get("bits"), dict) and c["bits"]]
        if not clients:
            continue
        for bits in clients:
            layers += [layer for layer in bits if layer not in layers]
        means = {
            layer: float(np.mean([b[layer] for b in clients if layer in b]))
            for layer in layers
            if any(layer in b for b in clients)
        }
        columns.append((record["round"], means))
    if not columns:
        return None
    matrix = np.array([[means.get(layer, np.nan) for _, means in columns] for layer in layers])
    return layers, [rnd for rnd, _ in columns], matrix


def heatmap_figure(variation: str, run: dict[str, Any]) -> Figure:
    name = f"bit_allocation_heatmap_{slug(variation)}"
    caption = f"{variation}: mean bit-width over clients of every layer per round (seed {run['seed']})"
    found = allocation_matrix(run["history"])
    if found is None:
        return Figure(name, caption, why=f"run {run['run_id']} records no per-client bits per round")
    layers, rounds, matrix = found

    def draw(path: Path) -> None:
        plt = pyplot()
        fig, ax = plt.subplots(
            figsize=(min(18.0, max(5.5, 0.42 * len(rounds) + 3.5)), max(3.0, 0.3 * len(layers) + 1.6))
        )
        image = ax.imshow(matrix, aspect="auto", cmap="Greys", vmin=1, vmax=8, interpolation="nearest")
        bar = fig.colorbar(image, ax=ax)
        bar.set_label("Mean bit-width over clients (bits)")
        step = max(1, math.ceil(len(rounds) / 20))
        ax.set_xticks(range(0, len(rounds), step), [str(r) for r in rounds[::step]], fontsize=7)
        ax.set_yticks(range(len(layers)), layers, fontsize=7)
        ax.set_xlabel("Communication round")
        ax.set_ylabel("Layer")
        if len(layers) <= MAX_ANNOTATED_CELLS and len(rounds) <= MAX_ANNOTATED_CELLS:
            for (i, j), value in np.ndenumerate(matrix):
                if not np.isnan(value):
                    ax.text(
                        j,
                        i,
                        f"{value:.1f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if value > 4.5 else "black",
                    )
        ax.set_title(f"{variation}: mean bit-width per layer over rounds (seed {run['seed']})", fontsize=9)
        save(fig, path)

    return Figure(name, caption, draw)
