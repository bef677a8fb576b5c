"""t-SNE of penultimate features, teacher (full-precision global model) beside student (the same model
quantized to one client's bits), from the features.npz of a variation's first seed.

Both sets are embedded together, so the two panels share one map and distances compare across them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedmpq_flwr.analysis.plotting import MARKERS, Figure, pyplot, save, slug
from fedmpq_flwr.analysis.runs import read_run_arrays
from fedmpq_flwr.rundir.results import FEATURES_FILE

MAX_POINTS = 2000  # embedded points, teacher and student samples together
SEED = 0


def read_features(run: dict[str, Any]) -> dict[str, np.ndarray] | str:
    """labels, float_features, quant_features (and quant_partition) of a run, or why they cannot be used."""
    arrays = read_run_arrays(run, FEATURES_FILE)
    if isinstance(arrays, str):
        return arrays
    missing = [k for k in ("labels", "float_features", "quant_features") if k not in arrays]
    if missing:
        return f"{FEATURES_FILE} of run {run['run_id']} lacks {', '.join(missing)}"
    n = len(arrays["labels"])
    if n < 3 or len(arrays["float_features"]) != n or len(arrays["quant_features"]) != n:
        return f"{FEATURES_FILE} of run {run['run_id']} has fewer than 3 points or arrays of different lengths"
    return arrays


def embed(teacher: np.ndarray, student: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded subsample (at most MAX_POINTS // 2 per set) and a joint 2-D t-SNE: (teacher xy, student xy, labels)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    per_set = min(len(labels), MAX_POINTS // 2)
    index = np.sort(np.random.default_rng(SEED).choice(len(labels), per_set, replace=False))
    points = np.vstack([teacher[index], student[index]]).astype(np.float64)
    tsne = TSNE(n_components=2, init="pca", random_state=SEED, perplexity=min(30.0, (len(points) - 1) / 3))
    with threadpool_limits(limits=1, user_api="openmp"):  # OpenMP threads spin and crawl on cores busy with training
        xy = tsne.fit_transform(points)
    return xy[:per_set], xy[per_set:], labels[index]


def pair_figure(variation: str, run: dict[str, Any]) -> Figure:
    name = f"tsne_{slug(variation)}_pair1"
    caption = (
        f"{variation}: t-SNE of penultimate features, teacher (full precision) beside student "
        f"(quantized), one shared map (seed {run['seed']})"
    )
    arrays = read_features(run)
    if isinstance(arrays, str):
        return Figure(name, caption, why=arrays)

    def draw(path: Path) -> None:
        teacher, student, labels = embed(arrays["float_features"], arrays["quant_features"], arrays["labels"])
        partition = arrays.get("quant_partition")  # the client whose bits the student has
        student_title = "Student: quantized" + ("" if partition is None else f" to client {int(partition)}'s bits")
        plt = pyplot()
        classes = sorted(set(labels.tolist()))
        fig, axes = plt.subplots(1, 2, figsize=(10.5, 5.2), sharex=True, sharey=True)
        colors = plt.get_cmap("tab10")
        for ax, xy, title in zip(axes, (teacher, student), ("Teacher: full-precision global model", student_title)):
            for i, cls in enumerate(classes):
                mask = labels == cls
                ax.scatter(
                    xy[mask, 0],
                    xy[mask, 1],
                    s=9,
                    marker=MARKERS[i % len(MARKERS)],
                    color=colors(i % 10),
                    linewidths=0.6,
                    alpha=0.8,
                    label=f"class {cls}",
                )
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("t-SNE dimension 1 (arbitrary units)")
            ax.grid(True, alpha=0.2)
        axes[0].set_ylabel("t-SNE dimension 2 (arbitrary units)")
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(
            handles,
            names,
            loc="lower center",
            ncol=min(10, len(classes)),
            fontsize=7,
            markerscale=1.5,
            bbox_to_anchor=(0.5, -0.06),
            frameon=False,
        )
        fig.suptitle(f"{variation} (seed {run['seed']}, {len(labels)} test images)", fontsize=9)
        save(fig, path)

    return Figure(name, caption, draw)
