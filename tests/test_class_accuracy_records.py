"""What every run records for the per-client accuracy analysis: per-class test accuracy of the global
model (and of each client's quantized model) every round, and each client's label counts once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedmpq_flwr.data.load import load_data
from fedmpq_flwr.data.partition import partition_indices
from fedmpq_flwr.rundir.results import PARTITIONS_FILE, read_partitions


def check_consistent(class_accuracy: list[float | None], accuracy: float, labels: np.ndarray) -> None:
    """sum_c count_c * acc_c / N == accuracy, None exactly for the classes the test set lacks."""
    counts = np.bincount(labels, minlength=len(class_accuracy))
    assert len(class_accuracy) == 10
    assert [a is None for a in class_accuracy] == [c == 0 for c in counts]
    hits = sum(c * a for c, a in zip(counts, class_accuracy) if a is not None)
    assert hits / counts.sum() == pytest.approx(accuracy, abs=1e-12)
    assert all(
        a is None or (0 <= a <= 1 and (a * c) == pytest.approx(round(a * c))) for a, c in zip(class_accuracy, counts)
    )


@pytest.mark.parametrize("method", ["fedavg", "fedpaq", "qffl"])
def test_full_precision_rounds_record_class_accuracy(tmp_path: Path, fedavg_config, fl, method: str) -> None:
    config = fedavg_config(strategy={"name": method})
    records, _ = fl.run(config, rounds=2, participants=[[1, 5], [0, 9]])
    y_test = load_data(config["dataset"]).y_test
    for record in records:
        check_consistent(record["class_accuracy"], record["test_accuracy"], y_test)
        assert "quant_class_accuracy" not in record


@pytest.mark.parametrize("method", ["fedmpq", "fedpq", "fedmpq_kd"])
def test_quantized_rounds_record_each_clients_class_accuracy(tmp_path: Path, fedmpq_config, fl, method: str) -> None:
    config = fedmpq_config(method=method)
    records, _ = fl.run(config, rounds=2)
    y_test = load_data(config["dataset"]).y_test
    for record in records:
        check_consistent(record["class_accuracy"], record["test_accuracy"], y_test)
        assert sorted(record["quant_class_accuracy"]) == ["0", "1", "2", "3"]
        for pid, classes in record["quant_class_accuracy"].items():
            check_consistent(classes, record["quant_test_accuracy"][pid], y_test)


def test_label_counts_are_saved_once_per_run(tmp_path: Path, fedavg_config, fl) -> None:
    config = fedavg_config()
    strategy = fl.strategy(config)
    saved = json.loads((tmp_path / "unit" / PARTITIONS_FILE).read_text())
    data = load_data(config["dataset"])
    parts = partition_indices(data.y_train, 10, config["dataset"]["alpha"], config["dataset"]["seed"])
    assert saved["num_classes"] == 10
    assert saved["label_counts"] == {
        str(pid): np.bincount(data.y_train[idx], minlength=10).tolist() for pid, idx in enumerate(parts)
    }
    assert read_partitions(strategy.recorder.run_dir) == saved["label_counts"]
    assert sum(map(sum, saved["label_counts"].values())) == len(data.y_train)
    # the counts are the data the clients train on: a client's num_examples is its count total
    records, _ = fl.run(config, rounds=1, participants=[[2, 7]])
    for client in records[0]["clients"]:
        assert client["num_examples"] == sum(saved["label_counts"][str(client["partition_id"])])
    assert read_partitions(tmp_path / "missing") is None
