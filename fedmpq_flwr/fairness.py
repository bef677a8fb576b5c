"""Per-client accuracy for the fairness analysis (numpy only, no torch).

Client k's expected accuracy is the accuracy a model would have on client k's own label mix:
sum_c p_k(c) * class_accuracy[c], p_k the label distribution of k's training partition and
class_accuracy the per-class test accuracy (`fedmpq_flwr.train.evaluate_classes`). A class absent
from the test set has no accuracy (None or NaN): it is left out and p_k is renormalised over the
classes that have one; a client whose labels all lie in such classes gets None. The summary over
clients (`summarize_clients`) uses the clients that have a value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

P10_METHOD = "linear"  # numpy's default percentile interpolation (Hyndman & Fan type 7)


def label_distribution(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """p(c) for c in 0..num_classes-1: the share of each class among `labels` (float64, sums to 1)."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        raise ValueError("label_distribution needs at least one label")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return np.bincount(labels.astype(np.int64), minlength=num_classes) / labels.size


def label_distributions(labels_per_client: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """One `label_distribution` row per client: shape (clients, num_classes). For partition k's labels
    use `data.y_train[partition_indices(...)[k]]`."""
    return np.stack([label_distribution(labels, num_classes) for labels in labels_per_client])


def _class_accuracy_array(class_accuracy: Sequence[float | None]) -> np.ndarray:
    return np.array([math.nan if a is None else float(a) for a in class_accuracy], dtype=np.float64)


def expected_accuracy(distribution: Sequence[float], class_accuracy: Sequence[float | None]) -> float | None:
    """sum_c p(c) * class_accuracy[c] over the classes that have an accuracy, divided by their total
    share p (1 when every class of the client is in the test set); None when that share is 0."""
    p = np.asarray(distribution, dtype=np.float64)
    accuracy = _class_accuracy_array(class_accuracy)
    if p.shape != accuracy.shape:
        raise ValueError(f"label distribution has {p.size} classes, class accuracy {accuracy.size}")
    known = ~np.isnan(accuracy)
    share = float(p[known].sum())
    if share <= 0:
        return None
    return float(np.dot(p[known], accuracy[known]) / share)


def client_accuracies(
    distributions: Sequence[Sequence[float]] | np.ndarray, class_accuracy: Sequence[float | None]
) -> list[float | None]:
    """`expected_accuracy` of every client (one label distribution per row)."""
    return [expected_accuracy(row, class_accuracy) for row in np.asarray(distributions, dtype=np.float64)]


def summarize_clients(accuracies: Sequence[float | None]) -> dict[str, float]:
    """Spread of the clients' accuracies (None/NaN left out): `mean`, `std` (population, ddof = 0:
    these are all the clients of the federation, not a sample of them), `worst` (the minimum) and
    `p10` (the 10th percentile, `numpy.percentile` with method 'linear'). All NaN when no client
    has a value."""
    values = np.array([a for a in accuracies if a is not None and not math.isnan(a)], dtype=np.float64)
    if values.size == 0:
        return {"mean": math.nan, "std": math.nan, "worst": math.nan, "p10": math.nan}
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=0)),
        "worst": float(values.min()),
        "p10": float(np.percentile(values, 10, method=P10_METHOD)),
    }
