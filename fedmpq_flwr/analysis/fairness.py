"""Per-client accuracy at the final round (the design's fairness numbers), from files only.

Client k's accuracy is the accuracy of a model on k's own label mix: sum_c p_k(c) * class_accuracy[c]
(`expected_accuracy`), p_k from the run's partitions.json (training label
counts) and the per-class test accuracies of the final round in metrics.jsonl. Two models:
  - `float`: the global full-precision model (`class_accuracy`), for every method;
  - `quant`: client k's own quantized model, the global model at k's assignment
    (`quant_class_accuracy[k]`), for methods whose devices run quantized models.
The model a client's device runs (`device_model`) is `quant` where it exists, else `float`. Over the
clients of a run: mean, population std, worst client and 10th percentile
(`summarize_clients`); over seeds, the runner's usual mean ± sample std.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedmpq_flwr.rundir.results import read_partitions

MODELS = {"float": "client_accuracy", "quant": "client_quant_accuracy"}  # model -> run key prefix
STATS = ("mean", "std", "worst", "p10")
SCALARS = tuple(f"{prefix}_{stat}" for prefix in MODELS.values() for stat in STATS)
PER_CLIENT = {model: f"per_{prefix}" for model, prefix in MODELS.items()}  # model -> run key of {pid: acc}
MODEL_LABELS = {"float": "global float model", "quant": "client's quantized model"}


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


def _class_accuracies(record: dict[str, Any]) -> dict[str, dict[str, list[float | None]] | list | None]:
    """The final record's per-class accuracies: float (a list) and quant (pid -> list), or None."""
    float_classes = record.get("class_accuracy")
    quant_classes = record.get("quant_class_accuracy")
    return {
        "float": float_classes if isinstance(float_classes, list) else None,
        "quant": quant_classes if isinstance(quant_classes, dict) else None,
    }


def per_client(run_dir: Path, history: list[dict[str, Any]]) -> dict[str, dict[str, float | None] | None]:
    """Model -> {partition id: expected accuracy at the final round}, None where the run lacks the
    per-class accuracies or partitions.json (older runs), and for `quant` in full-precision runs."""
    counts = read_partitions(run_dir)
    classes = _class_accuracies(history[-1]) if history else {"float": None, "quant": None}
    result: dict[str, dict[str, float | None] | None] = dict.fromkeys(MODELS)
    if not counts:
        return result
    shares = {}
    for pid, row in counts.items():
        total = float(sum(row))
        shares[pid] = np.asarray(row, dtype=np.float64) / total if total > 0 else None

    def accuracy(share: np.ndarray | None, class_accuracy: Any) -> float | None:
        if share is None or not isinstance(class_accuracy, list) or len(class_accuracy) != share.size:
            return None
        return expected_accuracy(share, class_accuracy)

    if classes["float"] is not None:
        result["float"] = {pid: accuracy(share, classes["float"]) for pid, share in shares.items()}
    if classes["quant"] is not None:
        result["quant"] = {pid: accuracy(share, classes["quant"].get(pid)) for pid, share in shares.items()}
    return result


def summary(values: dict[str, float | None] | None) -> dict[str, float | None]:
    """mean, std (over clients, ddof 0), worst, p10 of one run's per-client accuracies (None when none)."""
    if not values or all(v is None for v in values.values()):
        return dict.fromkeys(STATS)
    stats = summarize_clients(list(values.values()))
    return {k: (None if math.isnan(v) else v) for k, v in stats.items()}


def run_fields(run_dir: Path, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The run row's per-client accuracies (`per_client_accuracy`, `per_client_quant_accuracy`:
    partition id -> accuracy) and their summaries (`client_accuracy_mean` ... `client_quant_accuracy_p10`)."""
    values = per_client(run_dir, history)
    fields: dict[str, Any] = {}
    for model, prefix in MODELS.items():
        fields[PER_CLIENT[model]] = values[model]
        fields.update({f"{prefix}_{stat}": value for stat, value in summary(values[model]).items()})
    return fields


def device_model(variation: dict[str, Any]) -> str | None:
    """`quant` when the variation has its clients' quantized accuracies, else `float` when it has the
    global model's, else None."""
    for model in ("quant", "float"):
        if variation[f"{MODELS[model]}_mean"]["mean"] is not None:
            return model
    return None


def method_fields(variation: dict[str, Any]) -> dict[str, Any]:
    """`client_accuracy` of a method: the model its devices run and the across-seed means of that
    model's per-client mean, std, worst and p10 (None without per-class data)."""
    model = device_model(variation)
    if model is None:
        return {"model": None, **dict.fromkeys(STATS)}
    return {"model": model, **{stat: variation[f"{MODELS[model]}_{stat}"]["mean"] for stat in STATS}}


def pooled(runs: list[dict[str, Any]], model: str) -> list[float]:
    """Every client's accuracy of every seed of a variation (for the distribution figure)."""
    return [
        float(v)
        for run in runs
        for v in (run.get(PER_CLIENT[model]) or {}).values()
        if v is not None and math.isfinite(float(v))
    ]
