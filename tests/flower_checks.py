"""Checks shared by the end-to-end tests (no tests here): the results contract of a finished run and
the Flower/Ray processes a test may have left behind."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from fedmpq_flwr.config import validate
from fedmpq_flwr.data.load import load_data
from fedmpq_flwr.data.loaders import eval_loader
from fedmpq_flwr.data.registry import get_spec
from fedmpq_flwr.methods.catalog import CATALOG
from fedmpq_flwr.models import build_model, load_final_model
from fedmpq_flwr.rundir.provenance import checkout_commit
from fedmpq_flwr.runner.processes import terminate_then_kill
from fedmpq_flwr.training.loop import loss_and_accuracy
from fedmpq_flwr.training.weights import get_weights

ROUND_KEYS = {
    "run_id",
    "round",
    "test_accuracy",
    "test_loss",
    "bits_up",
    "bits_down",
    "round_time_s",
    "num_sampled",
    "num_failures",
}
FLOWER_PROCESS_MARKERS = ("flower-superlink", "flower-superexec", "flwr-simulation", "raylet", "gcs_server", "ray::")


def flower_processes_since(started: float) -> list[str]:
    """Command lines of Flower/Ray processes created after `started` that are still alive."""
    found = []
    for proc in psutil.process_iter(["cmdline", "create_time", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["create_time"] >= started - 1 and proc.info["status"] != psutil.STATUS_ZOMBIE:
            if any(marker in cmdline for marker in FLOWER_PROCESS_MARKERS):
                found.append(cmdline)
    return found


def check_results_contract(run_dir: Path, run_id: str, rounds: int, clients_per_round: int) -> dict:
    """The files of a finished run agree with each other and with its config; every client gets the
    float global model (a method that sends more down, like FedGKD's history teacher, does not fit)
    and uploads it whole unless its method compresses uploads. Returns results.json."""
    config = validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    num_classes = get_spec(config["dataset"]["name"]).num_classes
    floats = sum(w.size for w in get_weights(build_model(config["model"]["name"], num_classes)))
    compresses_upload = CATALOG[config["strategy"]["name"]].compresses_upload
    for record in records:
        assert ROUND_KEYS <= set(record) and record["run_id"] == run_id
        assert record["num_sampled"] == clients_per_round and record["num_failures"] == 0
        assert record["bits_down"] == clients_per_round * 32 * floats
        assert (
            record["bits_up"] < record["bits_down"] if compresses_upload else record["bits_up"] == record["bits_down"]
        )
        assert 0.0 <= record["test_accuracy"] <= 1.0 and record["round_time_s"] > 0
    results = json.loads((run_dir / "results.json").read_text())
    accuracies = [r["test_accuracy"] for r in records]
    assert results["status"] == "completed" and results["history"] == records
    assert results["final_accuracy"] == accuracies[-1] and results["best_accuracy"] == max(accuracies)
    assert min(accuracies) <= results["auc_accuracy"] <= max(accuracies)
    metadata = results["metadata"]
    assert metadata["seed"] == config["seed"] and {"git_commit", "versions", "device", "start_time", "end_time"} <= set(
        metadata
    )
    assert {"flwr", "torch", "flwr-datasets"} <= set(metadata["versions"])
    assert metadata["git_commit"] == checkout_commit()  # the launcher's checkout, not Flower's app copy
    # what decides whether a rerun matches digit for digit
    assert metadata["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert metadata["machine"]["torch"] == torch.__version__ and metadata["machine"]["cpu"]
    # the saved model is the final global model: it reproduces the last round's accuracy
    model = load_final_model(run_dir)
    data = load_data(config["dataset"])
    loader = eval_loader(data.x_test, data.y_test, config["train"]["eval_batch_size"], mean=data.mean, std=data.std)
    _, accuracy = loss_and_accuracy(model, loader, "cpu")
    assert accuracy == pytest.approx(results["final_accuracy"], abs=1e-9)
    return results


def _live_with_env(name: str, value: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and proc.environ().get(name) == value:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def processes_with_env(name: str, value: str) -> list[str]:
    """Command lines of live processes whose environment has `name=value` (children inherit it)."""
    return [" ".join(proc.info["cmdline"] or []) for proc in _live_with_env(name, value)]


def stop_processes_with_env(name: str, value: str) -> None:
    """Stop what a test started and left behind (e.g. a timed-out script's SuperLink and SuperNodes),
    so one failure does not load the machine for the tests after it."""
    terminate_then_kill(_live_with_env(name, value), grace_s=5.0)
