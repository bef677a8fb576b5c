"""Per-client accuracy at the final round (the design's fairness numbers), from files only.

Client k's accuracy is the accuracy of a model on k's own label mix: sum_c p_k(c) * class_accuracy[c]
(`fedmpq_flwr.fairness.expected_accuracy`), p_k from the run's partitions.json (training label
counts) and the per-class test accuracies of the final round in metrics.jsonl. Two models:
  - `float`: the global full-precision model (`class_accuracy`), for every method;
  - `quant`: client k's own quantized model, the global model at k's assignment
    (`quant_class_accuracy[k]`), for methods whose devices run quantized models.
The model a client's device runs (`device_model`) is `quant` where it exists, else `float`. Over the
clients of a run: mean, population std, worst client and 10th percentile
(`fedmpq_flwr.fairness.summarize_clients`); over seeds, the runner's usual mean ± sample std.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from fedmpq_flwr.fairness import expected_accuracy, summarize_clients
from fedmpq_flwr.results import read_partitions

MODELS = {"float": "client_accuracy", "quant": "client_quant_accuracy"}  # model -> run key prefix
STATS = ("mean", "std", "worst", "p10")
SCALARS = tuple(f"{prefix}_{stat}" for prefix in MODELS.values() for stat in STATS)
PER_CLIENT = {model: f"per_{prefix}" for model, prefix in MODELS.items()}  # model -> run key of {pid: acc}
MODEL_LABELS = {"float": "global float model", "quant": "client's quantized model"}


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
