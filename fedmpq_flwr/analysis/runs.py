"""Loading runs from a results folder and grouping them into variations (one per name, over seeds).

Accuracies are fractions (0..1) as in metrics.jsonl. Std is the sample std (ddof=1), None for a
single seed. A per-round field may be missing in older runs or other methods: every number
derived from one is None when any run of the variation lacks it.

A run may evaluate only some rounds (`eval.every`, `eval.quant_every`; the last round always): costs
are over all its rounds, accuracies over the evaluated ones. Its best and AUC accuracy are over its
evaluated rounds (`auc_rounds`) less any round another seed of its variation ran without evaluating,
so the seeds' numbers cover the same rounds; the accuracy curves are over the rounds every seed
evaluated (`accuracy_rounds`, `quant_accuracy_rounds`).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedmpq_flwr.analysis import fairness
from fedmpq_flwr.config import flatten
from fedmpq_flwr.rundir.results import (
    CONFIG_FILE,
    METRICS_FILE,
    ROUND_FROM_CLIENTS,
    STATUS_COMPLETED,
    STATUS_FAILED,
    evaluated,
    has_completed_status,
    read_metrics,
    read_results,
    round_from_clients,
    summarize_history,
)

ACCURACY_KEYS = ("final_accuracy", "best_accuracy", "auc_accuracy")
# Last-round values of quantized methods (None for full-precision runs): summary name -> metrics key.
FINAL_VALUES = {
    "final_quant_accuracy_mean": "quant_test_accuracy_mean",
    "final_quant_accuracy_min": "quant_test_accuracy_min",
    "final_avg_bits": "avg_bits",
    "final_quant_test_images": "quant_test_images",  # only where eval.quant_test_images took a subset
}
# Per-round means over rounds: summary name -> round key.
ROUND_MEANS = {
    "mean_round_time_s": "round_time_s",
    "mean_client_time_s": "client_time_s",
    "mean_client_compute_s": "client_compute_s",
    "mean_bits_up_per_round": "bits_up",
    "mean_bits_down_per_round": "bits_down",
    "mean_bits_total_per_round": "bits_total",
    "mean_train_flops_per_round": "train_flops",
    "mean_teacher_flops_per_round": "teacher_flops",
    "mean_eval_flops_per_round": "eval_flops",
    "mean_mentor_flops_per_round": "mentor_flops",
}
# Peaks over rounds: summary name -> round key.
ROUND_PEAKS = {
    "peak_client_rss_mb": "client_peak_rss_mb",
    "peak_server_rss_mb": "server_peak_rss_mb",
    "peak_client_gpu_mb": "client_peak_gpu_mb",
    "peak_server_gpu_mb": "server_peak_gpu_mb",
}
# Per-run scalars aggregated across seeds in each variation (add a key here to aggregate it).
VARIATION_SCALARS = (
    ACCURACY_KEYS
    + tuple(ROUND_MEANS)
    + ("total_bits_up", "total_bits_down")
    + tuple(ROUND_PEAKS)
    + tuple(FINAL_VALUES)
    + fairness.SCALARS  # per-client accuracy at the final round: mean, std, worst, p10 over clients
)
# Per-round curves averaged across seeds: name prefix -> round key (None when a run lacks it).
CURVES = {
    "accuracy": "test_accuracy",
    "quant_accuracy": "quant_test_accuracy_mean",
    "bits_up": "bits_up",
    "bits_down": "bits_down",
    "round_time": "round_time_s",
    "train_loss": "train_loss",
    "task_loss": "task_loss",
    "bit_loss": "bit_loss",
    "kd_loss": "kd_loss",
    "agreement": "agreement",
    "grad_norm": "grad_norm",
    "avg_bits": "avg_bits",
    "kd_alpha": "kd_alpha",  # FedMPQ-KD's distillation weight of the round (kd.schedule)
    "kd_gate_mean": "kd_gate_mean",  # mean per-sample gate weight: the share of samples distilled (kd.gate)
}
# Curves of evaluations, over the rounds every seed evaluated: curve prefix -> variation key of those rounds.
EVALUATED_CURVES = {"accuracy": "accuracy_rounds", "quant_accuracy": "quant_accuracy_rounds"}
RUN_LABELS = ("variation", "description", "strategy", "model", "dataset", "axis", "axis_value", "dataset_alpha")
INCOMPLETE_REASONS = {
    "failed-no-metrics": "no complete results.json and no metrics recorded (crashed before round 1)",
    "incomplete": "no complete results.json (crashed, killed or still running)",
    STATUS_FAILED: "the run failed",  # results.json says why: the reason follows
    STATUS_COMPLETED: "completed but no rounds recorded",
}
PRIVATE_KEYS = ("history", "config")  # kept in memory for the statistics, never written to JSON


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.yaml as a dict ({} when missing or unreadable)."""
    try:
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def read_run_arrays(run: dict[str, Any], name: str) -> dict[str, np.ndarray] | str:
    """Every array of the run's npz file `name` (features.npz, landscape.npz), or why it cannot be used."""
    try:
        with np.load(Path(run["run_dir"]) / name, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        return f"no {name} in run {run['run_id']}"
    except (OSError, ValueError, zipfile.BadZipFile):
        return f"unreadable {name} in run {run['run_id']}"


def config_value(config: dict[str, Any], key: str) -> Any:
    """The value of a dotted config key (`train.local_epochs`); `quant.avg_bits` is the mean of
    `quant.budgets` when budgets are set, since the budgets are what the clients get."""
    if key == "quant.avg_bits":
        budgets = (config.get("quant") or {}).get("budgets")
        if isinstance(budgets, list) and budgets:
            return float(np.mean([float(b) for b in budgets]))
    return flatten(config).get(key)


def axis_point(value: Any) -> float | str | None:
    """An axis value as one comparable point: a number (inf for IID alpha, also when written "inf"),
    or the text of a categorical value such as a model name; None when missing."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def axis_order(value: Any) -> tuple[int, float, str]:
    """Sort key of axis values: numbers in increasing order, then categorical values by name."""
    point = axis_point(value)
    return (0, point, "") if isinstance(point, float) else (1, 0.0, str(point))


def json_number(value: Any) -> Any:
    """A config value as JSON allows it: infinities (IID alpha) become "inf"/"-inf"."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def round_value(record: dict[str, Any], key: str) -> float | None:
    """A round's value of `key`, derived from its participants when the round lacks it."""
    if key == "bits_total":
        up, down = record.get("bits_up"), record.get("bits_down")
        return None if up is None or down is None else float(up) + float(down)
    if record.get(key) is not None:
        return float(record[key])
    if key in ROUND_FROM_CLIENTS:
        return round_from_clients(key, record.get("clients") or [])
    return None


def _over_rounds(history: list[dict[str, Any]], key: str, reduce: Callable[[Any], Any]) -> float | None:
    """reduce (np.mean / np.sum / np.max) over the rounds that carry `key`, or None when none do."""
    values = [v for v in (round_value(r, key) for r in history) if v is not None]
    return float(reduce(values)) if values else None


def load_run(run_dir: Path) -> dict[str, Any]:
    """One run's summary row (plus its `history` and `config`, dropped before writing JSON)."""
    config, results = read_config(run_dir), read_results(run_dir)
    metrics, torn_lines = read_metrics(run_dir)
    history = [
        r
        for r in (metrics or (results or {}).get("history") or [])
        if isinstance(r, dict) and isinstance(r.get("round"), int)
    ]
    history.sort(key=lambda r: r["round"])
    auc_rounds = [r["round"] for r in evaluated(history)]
    failed = (results or {}).get("status") == STATUS_FAILED
    status = (
        STATUS_COMPLETED
        if has_completed_status(results)
        else (STATUS_FAILED if failed else "incomplete" if history else "failed-no-metrics")
    )
    run_id = str(config.get("run_id") or run_dir.name)
    seed = config.get("seed", ((results or {}).get("metadata") or {}).get("seed"))
    axis = str(config.get("axis") or "")
    return {
        "run_id": run_id,
        "variation": str(config.get("variation") or run_id),
        "description": config.get("description", ""),
        **{key: (config.get(key) or {}).get("name") for key in ("strategy", "model", "dataset")},
        "axis": axis,
        "axis_value": json_number(config_value(config, axis)) if axis else None,
        "dataset_alpha": json_number(config_value(config, "dataset.alpha")),
        "seed": seed,
        "status": status,
        "failure_reason": str((results or {}).get("reason", "")) if failed else None,
        "rounds_completed": len(history),
        "num_rounds_planned": (config.get("train") or {}).get("num_rounds"),
        "has_config": bool(config),
        **(summarize_history(history) if auc_rounds else dict.fromkeys(ACCURACY_KEYS)),
        "auc_rounds": auc_rounds,  # the rounds its best and AUC accuracy are over
        **{name: _over_rounds(history, key, np.mean) for name, key in ROUND_MEANS.items()},
        **{f"total_{key}": _over_rounds(history, key, np.sum) for key in ("bits_up", "bits_down")},
        **{name: _over_rounds(history, key, np.max) for name, key in ROUND_PEAKS.items()},
        **{name: (history[-1].get(key) if history else None) for name, key in FINAL_VALUES.items()},
        **fairness.run_fields(run_dir, history),
        "torn_metrics_lines": torn_lines,
        "run_dir": str(run_dir),
        "history": history,
        "config": config,
    }


def incomplete_reason(run: dict[str, Any]) -> str | None:
    """Why a run is excluded from the variation statistics (None when it is not)."""
    reasons = []
    if not (run["status"] == STATUS_COMPLETED and run["rounds_completed"]):
        reason = INCOMPLETE_REASONS[run["status"]]
        reasons.append(f"{reason}: {run['failure_reason']}" if run.get("failure_reason") else reason)
    planned = run["num_rounds_planned"]
    if isinstance(planned, int) and 0 < run["rounds_completed"] < planned:
        reasons.append(f"{run['rounds_completed']} of {planned} planned rounds recorded")
    if not run["has_config"]:
        reasons.append("no readable config.yaml (variation, strategy and seed unknown)")
    if reasons and run["torn_metrics_lines"]:
        reasons.append(f"{run['torn_metrics_lines']} unparseable metrics line(s) ignored")
    return "; ".join(reasons) or None


def find_run_dirs(results_dir: Path) -> list[Path]:
    """Sub-directories that hold a config.yaml or a metrics.jsonl, sorted by name."""
    return sorted(
        d for d in results_dir.iterdir() if d.is_dir() and ((d / CONFIG_FILE).exists() or (d / METRICS_FILE).exists())
    )


def group_runs(runs: list[dict[str, Any]]) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Completed runs by variation (sorted by seed), and the incomplete runs with their reason."""
    groups: dict[str, list[dict[str, Any]]] = {}
    incomplete = []
    for run in runs:
        reason = incomplete_reason(run)
        if reason is None:
            groups.setdefault(run["variation"], []).append(run)
        else:
            incomplete.append(
                {k: run[k] for k in ("run_id", "variation", "status", "rounds_completed", "num_rounds_planned")}
                | {"reason": reason}
            )
    for group in groups.values():
        group.sort(
            key=lambda r: (not isinstance(r["seed"], int), r["seed"] if isinstance(r["seed"], int) else 0, r["run_id"])
        )
        align_accuracy_rounds(group)
    return dict(sorted(groups.items())), incomplete


def align_accuracy_rounds(runs: list[dict[str, Any]]) -> None:
    """Best and AUC accuracy of each seed again without the rounds another seed ran but did not evaluate
    (seeds with different `eval.every`), so that a variation's seeds are compared over the same rounds;
    `auc_rounds` says which. Seeds that evaluated every round they ran keep their numbers."""
    unevaluated = {rec["round"] for run in runs for rec in run["history"] if rec["round"] not in run["auc_rounds"]}
    for run in runs:
        kept = [rec for rec in evaluated(run["history"]) if rec["round"] not in unevaluated]
        rounds = [rec["round"] for rec in kept]
        if rounds != run["auc_rounds"]:
            summary = summarize_history(kept) if kept else dict.fromkeys(ACCURACY_KEYS)
            run.update(best_accuracy=summary["best_accuracy"], auc_accuracy=summary["auc_accuracy"], auc_rounds=rounds)


def mean_std(values: list[float | None]) -> dict[str, float | None]:
    """Mean and sample std (ddof=1; None when n == 1); both None if any value is missing."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None}
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else None}


def shared_rounds(runs: list[dict[str, Any]]) -> list[int]:
    """Rounds every run of a variation recorded (seeds may have run different lengths)."""
    return sorted(set.intersection(*({rec["round"] for rec in r["history"]} for r in runs)))


def recorded_rounds(runs: list[dict[str, Any]], key: str) -> list[int]:
    """Rounds in which every run of a variation records `key`: for an accuracy, the rounds all evaluated."""
    return sorted(
        set.intersection(*({rec["round"] for rec in r["history"] if round_value(rec, key) is not None} for r in runs))
    )


def curve_rounds(variation: dict[str, Any], curve: str) -> list[int]:
    """The rounds a variation's curve (a `CURVES` prefix) is over: the evaluated ones for an accuracy."""
    return variation[EVALUATED_CURVES[curve]] if curve in EVALUATED_CURVES else variation["rounds"]


def curve_matrix(runs: list[dict[str, Any]], key: str, rounds: list[int] | None = None) -> np.ndarray | None:
    """[seeds, rounds] values of a round key over `rounds` (default: the shared rounds), NaN in a round
    that no run records it in (e.g. the distillation diagnostics of FedGKD's round 1, which has no
    teacher); None when no round has it or a run lacks it in a round another run records it in."""
    rounds = shared_rounds(runs) if rounds is None else rounds
    per_run = [{rec["round"]: rec for rec in r["history"]} for r in runs]
    values = [[round_value(records[rnd], key) for rnd in rounds] for records in per_run]
    recorded = [any(row[j] is not None for row in values) for j in range(len(rounds))]
    if not any(recorded) or any(row[j] is None for row in values for j in range(len(rounds)) if recorded[j]):
        return None
    filled = [[math.nan if v is None else v for v in row] for row in values]
    return np.array(filled, dtype=float).reshape(len(runs), len(rounds))


def summarize_variation(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Across-seed statistics of the completed runs of one variation (sorted by seed)."""
    rounds = {"rounds": shared_rounds(runs)}
    rounds.update({name: recorded_rounds(runs, CURVES[prefix]) for prefix, name in EVALUATED_CURVES.items()})
    curves: dict[str, Any] = {}
    for prefix, key in CURVES.items():
        values = curve_matrix(runs, key, rounds[EVALUATED_CURVES.get(prefix, "rounds")])
        curves[f"{prefix}_per_round_mean"] = None if values is None else values.mean(axis=0).tolist()
        curves[f"{prefix}_per_round_std"] = (
            None if values is None or len(runs) < 2 else values.std(axis=0, ddof=1).tolist()
        )
    return {
        **{key: runs[0][key] for key in RUN_LABELS},
        "n": len(runs),
        "seeds": [r["seed"] for r in runs],
        "run_ids": [r["run_id"] for r in runs],
        **{key: mean_std([r[key] for r in runs]) for key in VARIATION_SCALARS},
        **rounds,
        **curves,
    }


def public_run(run: dict[str, Any]) -> dict[str, Any]:
    """A run row as written to comparison.json (without its history, config and folder)."""
    return {k: v for k, v in run.items() if k not in PRIVATE_KEYS + ("run_dir", "has_config")}
