"""Builders of hand-made results folders for the analyzer tests (no tests here).

A run of `write_variation` has 3 rounds with accuracies final - 0.2, final - 0.1, final, so its best
accuracy is `final` and its AUC is final - 0.1; quantized runs also record the clients' mean
quantized accuracy final - 0.05.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedmpq_flwr.analysis import cli as analyzer

LAYERS = {"conv1": 432, "layer1.conv": 2304, "fc": 650}
ROUNDS = 3


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-9, abs=1e-12)


def write_config(
    run_dir: Path,
    variation: str,
    seed: int,
    strategy: str,
    num_rounds: int = ROUNDS,
    axis: str = "",
    alpha: float = 0.5,
    budgets: list[float] | None = None,
    local_epochs: int = 1,
    quant: dict[str, Any] | None = None,
) -> None:
    run_dir.mkdir(parents=True)
    config = {
        "run_id": run_dir.name,
        "variation": variation,
        "description": f"{variation} test run",
        "seed": seed,
        "axis": axis,
        "strategy": {"name": strategy},
        "model": {"name": "tiny_cnn"},
        "dataset": {"name": "synthetic", "alpha": alpha},
        "train": {"num_rounds": num_rounds, "local_epochs": local_epochs},
        "quant": {
            "budgets": budgets if budgets is not None else ([] if strategy == "fedavg" else [2, 6]),
            "avg_bits": 4.0,
            **(quant or {}),
        },
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


def write_history(run_dir: Path, history: list[dict[str, Any]], complete: bool = True, torn: bool = False) -> None:
    text = "".join(json.dumps(rec) + "\n" for rec in history)
    if torn:
        text += '{"round": 9, "test_acc'
    (run_dir / "metrics.jsonl").write_text(text)
    if complete:
        results = {
            "run_id": run_dir.name,
            "status": "completed",
            "num_rounds": len(history),
            "history": history,
            "metadata": {},
        }
        (run_dir / "results.json").write_text(json.dumps(results))


def cost_fields(strategy: str, round_time: float, bits: tuple[float, float]) -> dict[str, Any]:
    """Per-round fields besides accuracy. FedMPQ writes round-level costs; FedMPQ-KD only per-client
    ones (the analyzer must derive: client compute 2 * 11 = 22 s, train 2 * 0.5 GFLOP, teacher
    2 * 0.25 GFLOP, client peak max(600, 650) MB); FedAvg writes none."""
    fields: dict[str, Any] = {
        "bits_up": bits[0],
        "bits_down": bits[1],
        "round_time_s": round_time,
        "client_time_s": round_time / 2,
        "grad_norm": 1.5,
    }
    if strategy == "fedmpq":
        fields.update(
            train_flops=1e9,
            client_compute_s=20.0,
            client_peak_rss_mb=500.0,
            server_peak_rss_mb=800.0,
            task_loss=1.0,
            bit_loss=0.5,
            avg_bits=4.0,
        )
    if strategy == "fedmpq_kd":
        fields.update(server_peak_rss_mb=900.0, task_loss=0.9, bit_loss=0.5, avg_bits=4.0, kd_loss=0.3, agreement=0.8)
    return fields


def clients_of(strategy: str, rnd: int) -> list[dict[str, Any]]:
    """Two participants; quantized ones carry per-layer bits (client 0: 2 + round % 2 on conv1)."""
    if strategy == "fedavg":
        return []
    clients = []
    for pid, rss in ((0, 600.0), (1, 650.0)):
        client = {
            "partition_id": pid,
            "num_examples": 10,
            "bits": {"conv1": 2 + (rnd % 2 if pid == 0 else 4), "layer1.conv": 3, "fc": 8},
        }
        if strategy == "fedmpq_kd":
            client.update(client_time_s=11.0, train_flops=0.5e9, teacher_flops=0.25e9, peak_rss_mb=rss)
        clients.append(client)
    return clients


def write_variation(
    root: Path,
    name: str,
    strategy: str,
    finals: dict[int, float],
    axis: str = "",
    alpha: float = 0.5,
    round_time: float = 10.0,
    bits: tuple[float, float] = (1000.0, 2000.0),
    costs: bool = True,
    budgets: list[float] | None = None,
    local_epochs: int = 1,
    quant: dict[str, Any] | None = None,
) -> list[Path]:
    """One run per seed (see the module docstring for its accuracies)."""
    run_dirs = []
    for seed, final in finals.items():
        run_dir = root / f"{name}_s{seed}"
        settings = {"axis": axis, "alpha": alpha, "budgets": budgets, "local_epochs": local_epochs, "quant": quant}
        write_config(run_dir, name, seed, strategy, **settings)
        history = []
        for rnd, acc in enumerate((final - 0.2, final - 0.1, final), start=1):
            record = {"run_id": run_dir.name, "round": rnd, "test_accuracy": acc, "test_loss": 1 - acc}
            if strategy != "fedavg":
                record["quant_test_accuracy_mean"] = acc - 0.05
            if costs:
                record.update(cost_fields(strategy, round_time, bits), clients=clients_of(strategy, rnd))
            history.append(record)
        write_history(run_dir, history)
        run_dirs.append(run_dir)
    return run_dirs


def write_bit_assignments(run_dir: Path) -> None:
    """Clients 0 and 1 share one assignment, client 2 has its own."""
    shared = {"conv1": 8, "layer1.conv": 2, "fc": 8}
    clients = {
        "0": {"budget": 2.0, "avg_bits": 2.4, "bits": shared},
        "1": {"budget": 2.0, "avg_bits": 2.4, "bits": shared},
        "2": {"budget": 6.0, "avg_bits": 6.1, "bits": {"conv1": 8, "layer1.conv": 6, "fc": 4}},
    }
    (run_dir / "bit_assignments.json").write_text(json.dumps({"layer_params": LAYERS, "clients": clients}))


def write_features(run_dir: Path, n: int = 60, classes: int = 3, dim: int = 8) -> None:
    """Clustered teacher features and noisier student features of n test images."""
    rng = np.random.default_rng(1)
    labels = np.arange(n) % classes
    centres = rng.normal(0, 5, (classes, dim))
    teacher = (centres[labels] + rng.normal(0, 1, (n, dim))).astype(np.float32)
    student = (teacher + rng.normal(0, 1, (n, dim))).astype(np.float32)
    np.savez(
        run_dir / "features.npz",
        labels=labels,
        float_features=teacher,
        quant_features=student,
        quant_partition=np.int64(1),
    )


# The main study: full precision, FedMPQ and FedMPQ-KD on 3 seeds, and the alpha axis.
FEDAVG = {0: 0.80, 1: 0.82, 2: 0.84}
FEDMPQ = {0: 0.60, 1: 0.62, 2: 0.64}
FEDMPQ_KD = {0: 0.70, 1: 0.71, 2: 0.72}
FEDMPQ_DIR = {0: 0.40, 1: 0.42}
FEDMPQ_KD_DIR = {0: 0.43, 1: 0.45}
FEDMPQ_IID = {0: 0.66}


def write_study(
    root: Path,
    kd: dict[int, float] | None = None,
    kd_dir: dict[int, float] | None = None,
    kd_round_time: float = 10.5,
    kd_bits: tuple[float, float] = (1000.0, 2000.0),
) -> Path:
    """The main experiment plus the dataset.alpha axis (0.1 for both methods, IID for FedMPQ only)."""
    write_variation(root, "fedavg", "fedavg", FEDAVG, round_time=8.0, bits=(32000.0, 32000.0))
    mpq = write_variation(root, "fedmpq", "fedmpq", FEDMPQ)
    kd_main = write_variation(root, "fedmpq_kd", "fedmpq_kd", kd or FEDMPQ_KD, round_time=kd_round_time, bits=kd_bits)
    write_variation(root, "fedmpq_dir0.1", "fedmpq", FEDMPQ_DIR, axis="dataset.alpha", alpha=0.1)
    write_variation(root, "fedmpq_kd_dir0.1", "fedmpq_kd", kd_dir or FEDMPQ_KD_DIR, axis="dataset.alpha", alpha=0.1)
    write_variation(root, "fedmpq_iid", "fedmpq", FEDMPQ_IID, axis="dataset.alpha", alpha=math.inf)
    write_bit_assignments(mpq[0])
    write_bit_assignments(kd_main[0])
    write_features(kd_main[0])
    return root


def run_main(root: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict[str, Any], str]:
    """analyzer.main on a folder: (comparison.json as written, stdout)."""
    assert analyzer.main(["--results-dir", str(root), *args]) == 0
    out = capsys.readouterr().out
    return json.loads((root / "comparison.json").read_text()), out


def write_client_accuracy(
    run_dir: Path,
    label_counts: dict[int, list[int]],
    class_accuracy: list[float | None],
    quant_class_accuracy: dict[int, list[float | None]] | None = None,
) -> None:
    """partitions.json with the clients' label counts, and per-class accuracies in the final round of
    metrics.jsonl and results.json (the float model's; per client of a quantized one if given)."""
    (run_dir / "partitions.json").write_text(
        json.dumps(
            {
                "num_classes": len(class_accuracy),
                "label_counts": {str(pid): c for pid, c in label_counts.items()},
            }
        )
    )
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    history[-1]["class_accuracy"] = class_accuracy
    if quant_class_accuracy is not None:
        history[-1]["quant_class_accuracy"] = {str(pid): c for pid, c in quant_class_accuracy.items()}
    write_history(run_dir, history)
