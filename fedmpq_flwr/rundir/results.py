"""The results contract: file names, the per-run recorder and the summary numbers.

Pure Python (no torch), so the analyzer can read runs without importing training code.
Layout of one run, `<results_dir>/<run_id>/`:
  config.yaml     the resolved config
  metrics.jsonl   one JSON object per round, flushed as the round ends (accuracy keys only in the
                  rounds that evaluated, `eval.every` / `eval.quant_every`; the last round always)
  results.json    history, final/best/auc accuracy and metadata; written last, with status
                  (completed, or failed with its reason) and run facts such as `flipped_labels`
  final_model.pt  see `fedmpq_flwr.models.load_final_model`
  bit_assignments.json  quantized methods: final per-client per-layer bits and layer sizes
  features.npz    penultimate features of the final model(s) on a fixed test subset (`labels`,
                  `float_features`; quantized methods also `quant_features`, `quant_partition`)
  landscape.npz   with `diagnostics.landscape`: loss-landscape snapshots of the global model, per round
                  (`landscape_key`; written after each snapshot round, so a resumed run keeps them)
  partitions.json each client's training label counts, written once when the server starts:
                  {"num_classes": C, "label_counts": {"<partition id>": [count of class 0, ...]}}
                  (with metrics.jsonl's per-class `class_accuracy` and, for quantized methods,
                  `quant_class_accuracy`, the analyzer's per-client expected accuracy)
  stdout.log, stderr.log  written by the experiment runner (a resumed run appends to them)
  superlink.log   the private SuperLink's log (`fedmpq_flwr.launch`)
  checkpoint/     only while the run is unfinished: `server.npz`, the server after its latest
                  completed round, and `clients/partition_<id>.round_<r>.npz`, state nodes keep
                  between rounds (see `fedmpq_flwr.rundir.checkpoint`). Rerunning the same command resumes
                  from it; removed once results.json is written
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
MODEL_FILE = "final_model.pt"
BIT_ASSIGNMENTS_FILE = "bit_assignments.json"
FEATURES_FILE = "features.npz"
PARTITIONS_FILE = "partitions.json"
LANDSCAPE_FILE = "landscape.npz"
CHECKPOINT_DIR = "checkpoint"
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"  # the run stopped early for a recorded `reason` (e.g. a round without any update)
# Round fields of metrics.jsonl derived from the participants' entries in `clients`:
# round key -> (client key, reduction over participants). The strategy writes them; the analyzer
# derives them for runs recorded before a field existed.
ROUND_FROM_CLIENTS: dict[str, tuple[str, Callable[[list[float]], float]]] = {
    **{
        key: (key, statistics.fmean)
        for key in ("task_loss", "bit_loss", "kd_loss", "agreement", "grad_norm", "avg_bits")
    },
    "train_flops": ("train_flops", sum),
    "teacher_flops": ("teacher_flops", sum),
    "eval_flops": ("eval_flops", sum),
    "mentor_flops": ("mentor_flops", sum),  # FedKD: the private mentors' training
    "client_compute_s": ("client_time_s", sum),
    "client_peak_rss_mb": ("peak_rss_mb", max),
    "client_peak_gpu_mb": ("peak_gpu_mb", max),
}


def landscape_key(server_round: int, name: str) -> str:
    """The landscape.npz array `name` (coords, loss, accuracy; line_t, line_loss, line_accuracy,
    line_partition, line_avg_bits, quant_loss, quant_accuracy) of the snapshot after `server_round`."""
    return f"round{server_round}_{name}"


def round_from_clients(round_key: str, clients: list[dict[str, Any]]) -> float | None:
    """A `ROUND_FROM_CLIENTS` field of a round, or None when a participant lacks its client key."""
    client_key, reduce = ROUND_FROM_CLIENTS[round_key]
    values = [client.get(client_key) for client in clients]
    if not values or any(value is None for value in values):
        return None
    return float(reduce([float(value) for value in values]))


def auc_accuracy(rounds: Sequence[float], accuracies: Sequence[float]) -> float:
    """Normalised area under the accuracy-vs-round curve (trapezoids / round span).

    Equals the mean accuracy over the span, so runs of different length stay comparable;
    a single round gives its own accuracy.
    """
    if len(rounds) != len(accuracies) or not rounds:
        raise ValueError("auc_accuracy needs equally long, non-empty rounds and accuracies")
    if len(rounds) == 1:
        return float(accuracies[0])
    area = sum((rounds[i + 1] - rounds[i]) * (accuracies[i + 1] + accuracies[i]) / 2.0 for i in range(len(rounds) - 1))
    return float(area / (rounds[-1] - rounds[0]))


def evaluated(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of rounds that evaluated the float global model: all of them with `eval.every` 1;
    else every `eval.every`-th round and the last, which every run evaluates."""
    return [rec for rec in history if isinstance(rec.get("test_accuracy"), (int, float))]


def summarize_history(history: Sequence[dict[str, Any]]) -> dict[str, float]:
    """final, best and AUC test accuracy over the evaluated rounds of a list of per-round records
    (the AUC's trapezoids span the rounds without evaluation)."""
    history = evaluated(history)
    if not history:
        return {"final_accuracy": math.nan, "best_accuracy": math.nan, "auc_accuracy": math.nan}
    rounds = [rec["round"] for rec in history]
    accs = [rec["test_accuracy"] for rec in history]
    return {
        "final_accuracy": float(accs[-1]),
        "best_accuracy": float(max(accs)),
        "auc_accuracy": auc_accuracy(rounds, accs),
    }


def read_metrics(run_dir: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Per-round records of a run, and how many non-empty lines could not be parsed (a torn last
    line of a run killed mid-write is ignored, not fatal)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return [], 0
    records, torn = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            torn += 1
    return records, torn


def read_results(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's results.json, or None when it is missing or unreadable."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_partitions(run_dir: str | Path, label_counts: dict[int, list[int]]) -> None:
    """partitions.json: every client's per-class count of training examples."""
    num_classes = len(next(iter(label_counts.values()))) if label_counts else 0
    data = {"num_classes": num_classes, "label_counts": {str(pid): list(c) for pid, c in sorted(label_counts.items())}}
    write_atomic(Path(run_dir) / PARTITIONS_FILE, json.dumps(data, indent=1))


def read_partitions(run_dir: str | Path) -> dict[str, list[int]] | None:
    """Partition id (a string, as in metrics.jsonl) -> per-class training label counts; None when the
    run has no readable partitions.json."""
    try:
        data = json.loads((Path(run_dir) / PARTITIONS_FILE).read_text())
        counts = data["label_counts"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
    return counts if isinstance(counts, dict) else None


def has_completed_status(results: dict[str, Any] | None) -> bool:
    """True for the contents of a complete results.json."""
    return bool(results) and results.get("status") == STATUS_COMPLETED


def is_complete(run_dir: str | Path) -> bool:
    """True when the run wrote a complete results.json (the runner skips such runs)."""
    return has_completed_status(read_results(run_dir))


def write_atomic(path: Path, text: str) -> None:
    """Write a file through a temporary one and a rename, so a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def kept_metrics(run_dir: str | Path, completed_rounds: int) -> list[str]:
    """The metrics.jsonl lines of rounds 1..`completed_rounds` of a run being resumed, in order.

    Records after that round are dropped (a run killed between writing a round's record and its
    checkpoint); ValueError when a round up to it is missing, repeated or out of order.
    """
    path = Path(run_dir) / METRICS_FILE
    kept: list[str] = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line
        if isinstance(record, dict) and isinstance(record.get("round"), int) and record["round"] <= completed_rounds:
            kept.append(line)
    rounds = [json.loads(line)["round"] for line in kept]
    if rounds != list(range(1, completed_rounds + 1)):
        raise ValueError(
            f"{path} holds rounds {rounds} but the checkpoint is of round {completed_rounds}: "
            "the run folder was changed; use --overwrite to start the run again"
        )
    return kept


class RunRecorder:
    """Writes metrics.jsonl round by round (and echoes each record as a JSON line on stdout).

    `completed_rounds` > 0 resumes a run: metrics.jsonl keeps exactly the records of rounds
    1..completed_rounds (see `kept_metrics`), which become the start of the history.
    """

    def __init__(self, run_dir: str | Path, run_id: str, completed_rounds: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.info: dict[str, Any] = {}  # run facts the strategy learns (e.g. flipped_labels), kept in results.json
        self.failure: str | None = None  # why the run stopped early (set by server/outcome.py): finish() writes failed
        self.run_dir.mkdir(parents=True, exist_ok=True)
        kept = kept_metrics(self.run_dir, completed_rounds) if completed_rounds else []
        self.history: list[dict[str, Any]] = [json.loads(line) for line in kept]
        write_atomic(self.run_dir / METRICS_FILE, "".join(line + "\n" for line in kept))
        (self.run_dir / RESULTS_FILE).unlink(missing_ok=True)

    def log_round(self, record: dict[str, Any]) -> None:
        record = {"run_id": self.run_id, **record}
        line = json.dumps(record, sort_keys=False)
        with open(self.run_dir / METRICS_FILE, "a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.history.append(record)
        print(line, flush=True)

    def finish(self, metadata: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write results.json atomically (temp file + rename) and return it; a run marked failed
        (`self.failure`) is written by `fail` instead."""
        if self.failure is not None:
            return self.fail(self.failure, metadata, extra)
        results = {
            "run_id": self.run_id,
            "status": STATUS_COMPLETED,
            "num_rounds": len(self.history),
            **summarize_history(self.history),
            **(extra or {}),
            **self.info,
            "history": self.history,
            "metadata": metadata,
        }
        write_atomic(self.run_dir / RESULTS_FILE, json.dumps(results, indent=2))
        summary = {k: results[k] for k in ("run_id", "final_accuracy", "best_accuracy", "auc_accuracy")}
        print(json.dumps({"event": "run_finished", **summary}), file=sys.stdout, flush=True)
        return results

    def fail(self, reason: str, metadata: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write results.json with status `failed` and the one-line `reason` (the rounds recorded so far
        stay in `history`; accuracies are those of its evaluated rounds, or null) and return it."""
        accuracies = (
            summarize_history(self.history) if evaluated(self.history) else dict.fromkeys(summarize_history([]))
        )
        results = {
            "run_id": self.run_id,
            "status": STATUS_FAILED,
            "reason": reason,
            "num_rounds": len(self.history),
            **accuracies,
            **(extra or {}),
            **self.info,
            "history": self.history,
            "metadata": metadata,
        }
        write_atomic(self.run_dir / RESULTS_FILE, json.dumps(results, indent=2))
        print(json.dumps({"event": "run_failed", "run_id": self.run_id, "reason": reason}), file=sys.stdout, flush=True)
        return results
