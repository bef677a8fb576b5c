"""Which figures to draw from a comparison, and writing them as PDFs into DIR/images/.

Each topic plans its figures as `Figure`s: one with `draw` is written, one without is skipped and
`why` says why. Curves over rounds show the main-experiment variations (the axes have their own
figures); bar charts show every variation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmpq_flwr.analysis import bit_figures, fairness, landscape, tsne
from fedmpq_flwr.analysis.plotting import (
    LABEL_BOX,
    BarSeries,
    Distribution,
    Figure,
    Series,
    bar_figure,
    distribution_figure,
    figure_height,
    legend,
    line_figure,
    line_plot,
    pyplot,
    save,
    slug,
    spread,
    style,
)
from fedmpq_flwr.analysis.reference import is_quantized
from fedmpq_flwr.analysis.runs import axis_order, axis_point, curve_rounds
from fedmpq_flwr.analysis.scalability import scalability
from fedmpq_flwr.analysis.scalability_figure import scalability_figure

IMAGES_DIR = "images"
AXIS_LABELS = {
    "train.local_epochs": "Local epochs per round",
    "quant.avg_bits": "Average bit budget (bits)",
    "dataset.alpha": "Dirichlet alpha (label skew; inf = IID)",
    "model.name": "Model",
    "federation.num_clients": "Number of clients",
    "federation.dropout": "Share of sampled clients dropping per round",
    "dataset.label_noise": "Share of training labels flipped (label noise)",
}


@dataclass
class Context:
    """Everything the figures are drawn from."""

    results_dir: Path
    variations: dict[str, dict[str, Any]]
    groups: dict[str, list[dict[str, Any]]]
    methods: dict[str, dict[str, Any]]
    robustness: dict[str, Any]


def _main_or_all(variations: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The main-experiment variations with recorded rounds (all of them when no run names an axis)."""
    plottable = {n: v for n, v in variations.items() if v["rounds"]}
    main = {n: v for n, v in plottable.items() if v["axis"] == ""}
    return main or plottable


def axis_names(axes: list[str]) -> dict[str, str]:
    """File-name part per axis key: its last component (its section for a `name`: model.name -> model),
    or the whole key when two axes share it."""
    last = [a.rsplit(".", 2)[-2] if a.endswith(".name") else a.rsplit(".", 1)[-1] for a in axes]
    return {a: slug(a if last.count(short) > 1 else short) for a, short in zip(axes, last)}


def _curve_series(
    variations: dict[str, dict[str, Any]], curve: str, scale: float = 1.0, labels: dict[str, str] | None = None
) -> list[Series]:
    """One series per variation that has the curve, over its rounds (for an accuracy, the rounds every
    seed evaluated: thinned evaluation draws fewer points, never gaps); a round without a value, NaN or
    None, is a gap."""

    def scaled(values: list[float | None]) -> list[float]:
        return [math.nan if v is None else scale * v for v in values]

    series = []
    for i, (name, var) in enumerate(variations.items()):
        mean, std = var[f"{curve}_per_round_mean"], var[f"{curve}_per_round_std"]
        if mean is not None:
            label = (labels or {}).get(name, name) + f" (n={var['n']})"
            series.append(
                Series(
                    label, curve_rounds(var, curve), scaled(mean), None if std is None else scaled(std), style_index=i
                )
            )
    return series


def _curve_figure(name: str, caption: str, series: list[Series], ylabel: str, value_format: str = "{:.1f}") -> Figure:
    if not series:
        return Figure(name, caption, why="no variation records it")
    return Figure(name, caption, lambda path: line_figure(series, path, "Communication round", ylabel, value_format))


def curve_figures(ctx: Context) -> list[Figure]:
    main = _main_or_all(ctx.variations)
    return [
        _curve_figure(
            "accuracy_vs_rounds",
            "test accuracy of the global model per round (mean over seeds, ± std band)",
            _curve_series(main, "accuracy", 100),
            "Test accuracy (%)",
        ),
        _curve_figure(
            "quantized_accuracy_vs_rounds",
            "mean test accuracy of the clients' quantized models per round",
            _curve_series(main, "quant_accuracy", 100),
            "Test accuracy of the quantized client models,\nmean over clients (%)",
        ),
        _curve_figure(
            "agreement_vs_rounds",
            "student-teacher top-1 agreement per round (distillation methods)",
            _curve_series(main, "agreement", 100),
            "Student-teacher top-1 agreement (%)",
        ),
        _curve_figure(
            "grad_norm_vs_rounds",
            "mean L2 norm of the clients' gradients per round",
            _curve_series(main, "grad_norm"),
            "Gradient L2 norm, mean over clients and steps",
            "{:.3g}",
        ),
        _kd_losses_figure(main),
        _kd_weights_figure(main),
    ]


def _panels(variations: dict[str, dict[str, Any]], panels: list[tuple[str, str]]) -> Callable[[Path], None]:
    """Draws one panel per (curve, y label), side by side, each with one line per variation."""

    def draw(path: Path) -> None:
        plt = pyplot()
        entries = max(len(_curve_series(variations, c)) for c, _ in panels)
        fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), figure_height(entries)), squeeze=False)
        for ax, (curve, ylabel) in zip(axes[0], panels):
            line_plot(ax, _curve_series(variations, curve), "Communication round", ylabel, "{:.3g}")
        save(fig, path)

    return draw


def _kd_weights_figure(variations: dict[str, dict[str, Any]]) -> Figure:
    """FedMPQ-KD's alpha_t (`kd.schedule`) and mean gate weight (`kd.gate`) per round side by side."""
    name, caption = "kd_weights_vs_rounds", "distillation weight alpha_t and mean per-sample gate weight per round"
    panels = [
        (c, t)
        for c, t in (
            ("kd_alpha", "Distillation weight alpha_t"),
            ("kd_gate_mean", "Mean gate weight (share distilled)"),
        )
        if any(v[f"{c}_per_round_mean"] is not None for v in variations.values())
    ]
    if not panels:
        return Figure(name, caption, why="no variation records kd_alpha or kd_gate_mean")
    return Figure(name, caption, _panels(variations, panels))


def _kd_losses_figure(variations: dict[str, dict[str, Any]]) -> Figure:
    """Task, bit and distillation loss per round side by side."""
    name, caption = (
        "kd_losses_vs_rounds",
        "loss components per round: task (cross-entropy), bit regularizer, distillation",
    )
    if not any(v["kd_loss_per_round_mean"] is not None for v in variations.values()):
        return Figure(name, caption, why="no variation records kd_loss")
    panels = [
        (c, t)
        for c, t in (
            ("task_loss", "Task loss (cross-entropy, nats)"),
            ("bit_loss", "Bit loss (group lasso)"),
            ("kd_loss", "Distillation loss (T² · KL, nats)"),
        )
        if any(v[f"{c}_per_round_mean"] is not None for v in variations.values())
    ]
    return Figure(name, caption, _panels(variations, panels))


def axis_figures(ctx: Context) -> list[Figure]:
    """Per axis: accuracy per round of every point on the axis, and final accuracy against the axis value."""
    figures = []
    for axis, short in axis_names(sorted(ctx.robustness)).items():
        rows = ctx.robustness[axis]["methods"]
        if not any(rows.values()):  # e.g. model.name: no numeric value to draw against
            why = "no variation on this axis has a numeric value"
            figures += [Figure(f"{name}_{short}", "", why=why) for name in ("accuracy_vs_rounds_axis", "robustness")]
            continue
        members = {
            row["variation"]: f"{strategy}, {axis.rsplit('.', 1)[-1]}={_value_label(row['value'])}"
            for strategy, points in rows.items()
            for row in points
        }
        shown = {n: ctx.variations[n] for n in members if ctx.variations[n]["rounds"]}
        figures.append(
            _curve_figure(
                f"accuracy_vs_rounds_axis_{short}",
                f"test accuracy per round along the {axis} axis",
                _curve_series(shown, "accuracy", 100, members),
                "Test accuracy (%)",
            )
        )
        figures.append(
            Figure(
                f"robustness_{short}",
                f"final accuracy against {axis} per method (± std)",
                lambda path, a=axis, r=rows: _robustness_plot(a, r, path),
            )
        )
    return figures


def _value_label(value: Any) -> str:
    point = axis_point(value)
    return f"{point:g}" if isinstance(point, float) else str(point)


def _robustness_plot(axis: str, rows: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Final accuracy (%) per method at each axis value (categorical x: values may be infinite)."""
    plt = pyplot()
    values = sorted({axis_point(r["value"]) for points in rows.values() for r in points}, key=axis_order)
    position = {v: i for i, v in enumerate(values)}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(values) + 3), figure_height(len(rows))))
    labels_at: dict[float | str, list[tuple[float, str, str]]] = {}
    for i, (strategy, points) in enumerate(rows.items()):
        shown = [r for r in points if r["final_accuracy_mean"] is not None]
        x = [position[axis_point(r["value"])] for r in shown]
        y = [100 * r["final_accuracy_mean"] for r in shown]
        err = [0.0 if r["final_accuracy_std"] is None else 100 * r["final_accuracy_std"] for r in shown]
        line = ax.errorbar(x, y, yerr=err, capsize=3, label=strategy, markersize=5, **style(i))
        for r, yi in zip(shown, y):
            labels_at.setdefault(axis_point(r["value"]), []).append((yi, f"{yi:.1f}", line[0].get_color()))
    ax.margins(y=0.2)
    low, high = ax.get_ylim()
    for value, labels in labels_at.items():
        for (y, text, color), y_text in zip(labels, spread([lab[0] for lab in labels], (high - low) * 0.06)):
            ax.annotate(
                text,
                xy=(position[value], y),
                xytext=(position[value] + 0.12, y_text),
                textcoords="data",
                fontsize=7,
                va="center",
                color=color,
                bbox=LABEL_BOX,
            )
    ax.set_xticks(range(len(values)), [_value_label(v) for v in values])
    ax.set_xlim(-0.5, len(values) - 0.3)
    ax.set_xlabel(AXIS_LABELS.get(axis, axis))
    ax.set_ylabel("Final test accuracy (%)")
    ax.grid(True, alpha=0.3)
    legend(ax, len(rows))
    save(fig, path)


def _bars(
    name: str,
    caption: str,
    variations: dict[str, dict[str, Any]],
    parts: list[tuple[str, str]],
    ylabel: str,
    scale: float = 1.0,
    value_format: str = "{:.1f}",
    log: bool = False,
) -> Figure:
    """Bars of variation scalars (parts: (scalar key, series label)), only series and variations with data."""
    parts = [(k, label) for k, label in parts if any(v[k]["mean"] is not None for v in variations.values())]
    names = [n for n, v in variations.items() if any(v[k]["mean"] is not None for k, _ in parts)]
    if not names:
        return Figure(name, caption, why="no variation records it")

    def value(stat: float | None) -> float | None:
        return None if stat is None else scale * stat

    series = [
        BarSeries(
            label, [value(variations[n][k]["mean"]) for n in names], [value(variations[n][k]["std"]) for n in names]
        )
        for k, label in parts
    ]
    counts = [variations[n]["n"] for n in names]
    return Figure(name, caption, lambda path: bar_figure(names, series, path, ylabel, value_format, log, counts))


def _gap_figure(ctx: Context) -> Figure:
    """Full precision's final accuracy minus each quantized variation's, in the same setting."""
    name, caption = "gap_to_full_precision", "final accuracy of full precision minus each quantized variation (points)"
    gaps = {
        n: m["gap_to_full_precision_points"]
        for n, m in ctx.methods.items()
        if m["gap_to_full_precision_points"] is not None and is_quantized(ctx.variations[n]["strategy"])
    }
    if not gaps:
        return Figure(name, caption, why="no quantized variation with a full-precision run in the same setting")
    names = list(gaps)
    series = [BarSeries("gap (points)", [gaps[n] for n in names])]
    counts = [ctx.variations[n]["n"] for n in names]
    return Figure(
        name,
        caption,
        lambda path: bar_figure(
            names, series, path, "Gap to full precision (percentage points)", "{:.2f}", counts=counts
        ),
    )


def bar_figures(ctx: Context) -> list[Figure]:
    variations = ctx.variations
    return [
        _bars(
            "final_accuracy",
            "final test accuracy per variation (mean ± std over seeds)",
            variations,
            [("final_accuracy", "mean over seeds")],
            "Final test accuracy (%)",
            100,
        ),
        _bars(
            "auc_accuracy",
            "area under the accuracy-vs-round curve (= mean accuracy over rounds)",
            variations,
            [("auc_accuracy", "mean over seeds")],
            "AUC of accuracy vs rounds\n(mean accuracy over rounds, %)",
            100,
        ),
        _gap_figure(ctx),
        _bars(
            "bits_per_round",
            "bits communicated per round, all clients, up and down",
            variations,
            [
                ("mean_bits_up_per_round", "up (clients to server)"),
                ("mean_bits_down_per_round", "down (server to clients)"),
            ],
            "Bits per round (Mbit, log scale)",
            1e-6,
            "{:.3g}",
            log=True,
        ),
        _bars(
            "round_time",
            "wall time per round (server) and summed client compute time",
            variations,
            [
                ("mean_round_time_s", "round wall time (server)"),
                ("mean_client_compute_s", "client compute (sum over clients)"),
            ],
            "Seconds per round (s)",
            1.0,
            "{:.4g}",
        ),
        _bars(
            "flops_per_round",
            "FLOPs per round of the clients' training, the teacher forward passes, FedKD's private mentors "
            "and client-side evaluation",
            variations,
            [
                ("mean_train_flops_per_round", "student training"),
                ("mean_teacher_flops_per_round", "teacher forward"),
                ("mean_eval_flops_per_round", "client evaluation (q-FFL's F_k)"),
                ("mean_mentor_flops_per_round", "mentor training"),
            ],
            "FLOPs per round, all clients (GFLOP)",
            1e-9,
            "{:.4g}",
        ),
        _bars(
            "peak_memory",
            "peak resident memory (RSS) and GPU memory of clients and server",
            variations,
            [
                ("peak_client_rss_mb", "client RSS"),
                ("peak_server_rss_mb", "server RSS"),
                ("peak_client_gpu_mb", "client GPU"),
                ("peak_server_gpu_mb", "server GPU"),
            ],
            "Peak memory (MB)",
            1.0,
            "{:.0f}",
        ),
    ]


def per_variation_figures(ctx: Context) -> list[Figure]:
    """Bit-width histograms, bit-allocation heatmaps and t-SNE pairs of each quantized variation."""
    quantized = [n for n, v in ctx.variations.items() if is_quantized(v["strategy"])]
    if not quantized:
        return [
            Figure(topic, "", why="no quantized variation")
            for topic in ("bit_histogram", "bit_allocation_heatmap", "tsne")
        ]
    figures = []
    for name in quantized:
        first = ctx.groups[name][0]
        figures += [
            bit_figures.histogram_figure(name, first),
            bit_figures.heatmap_figure(name, first),
            tsne.pair_figure(name, first),
        ]
    return figures


def client_accuracy_figures(ctx: Context) -> list[Figure]:
    """The distribution of per-client accuracy at the final round, one box per method and model."""
    name = "client_accuracy"
    caption = (
        "accuracy of every client (all seeds) on its own label mix at the final round: the global float "
        "model and, for quantized methods, the client's own quantized model; mean and worst client above each box"
    )
    shown = _main_or_all(ctx.variations)
    models = [m for m in fairness.MODELS if any(fairness.pooled(ctx.groups[n], m) for n in shown)]
    names = [n for n in shown if any(fairness.pooled(ctx.groups[n], m) for m in models)]
    if not names:
        return [Figure(name, caption, why="no variation records per-class accuracy and its clients' label counts")]
    series = [
        Distribution(fairness.MODEL_LABELS[m], [[100 * v for v in fairness.pooled(ctx.groups[n], m)] for n in names])
        for m in models
    ]
    counts = [ctx.variations[n]["n"] for n in names]
    ylabel = "Accuracy on the client's own label mix (%)"
    return [Figure(name, caption, lambda path: distribution_figure(names, series, path, ylabel, counts=counts))]


def scalability_figures(ctx: Context) -> list[Figure]:
    """The per-round costs fitted against the participants per round (analysis/scalability.py)."""
    return [scalability_figure(scalability(ctx.variations, ctx.groups, ctx.robustness))]


def landscape_figures(ctx: Context) -> list[Figure]:
    """Loss-landscape snapshots (analysis/landscape.py), for the variations that took them."""
    return landscape.landscape_figures(ctx.variations, ctx.groups)


TOPICS = [
    curve_figures,
    axis_figures,
    bar_figures,
    per_variation_figures,
    client_accuracy_figures,
    scalability_figures,
    landscape_figures,
]


def make_figures(ctx: Context) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Write every planned figure into DIR/images; return (written: path and caption, skipped: name and why).
    Nothing is planned without a completed variation (the caller says so once)."""
    if not ctx.variations:
        return [], []
    planned = [figure for topic in TOPICS for figure in topic(ctx)]
    written, skipped = [], []
    for figure in planned:
        if figure.draw is None:
            skipped.append({"name": figure.name, "why": figure.why})
            continue
        rel = f"{IMAGES_DIR}/{figure.name}.pdf"
        if any(w["path"] == rel for w in written):
            skipped.append({"name": figure.name, "why": "another figure has the same file name"})
            continue
        (ctx.results_dir / IMAGES_DIR).mkdir(exist_ok=True)
        figure.draw(ctx.results_dir / rel)
        written.append({"path": rel, "caption": figure.caption})
    return written, skipped
