"""Shared fixtures: small validated configs and the strategy/client round trip without Flower's runtime."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from flwr.common import Code, FitRes, RecordDict, Status, ndarrays_to_parameters

from fedmpq_flwr.client.guard import GuardedClient
from fedmpq_flwr.config import deep_merge, validate
from fedmpq_flwr.methods.registry import load_method
from fedmpq_flwr.rundir.results import RunRecorder

# What may differ between two runs of the same computation: times, memory and the run id.
VARYING_KEYS = {
    "run_id",
    "client_time_s",
    "round_time_s",
    "client_compute_s",
    "peak_rss_mb",
    "client_peak_rss_mb",
    "server_peak_rss_mb",
}

# A runner file of three tiny runs (a_seed0, a_seed1, b): the runner and --jobs tests expand or run it.
TINY = {
    "defaults": {
        "model": {"name": "tiny_cnn"},
        "dataset": {"name": "synthetic", "synthetic_train_size": 200, "synthetic_test_size": 50},
        "train": {"num_rounds": 2},
        "federation": {"num_clients": 2},
    },
    "runs": [
        {"run_id": "a", "description": "first", "seeds": [0, 1]},
        {"run_id": "b", "description": "second", "train": {"lr": 0.01}},
    ],
}


def write(tmp_path: Path, document: object, name: str = "runs.yaml") -> Path:
    """`document` as the YAML runner file tmp_path/name."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def fedavg_config(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """A tiny synthetic FedAvg run (10 clients' worth of defaults, half sampled), nested overrides merged."""

    def make(**overrides: Any) -> dict[str, Any]:
        base = {
            "run_id": "unit",
            "seed": 3,
            "results_dir": str(tmp_path),
            "model": {"name": "tiny_cnn"},
            "dataset": {"name": "synthetic", "synthetic_train_size": 200, "synthetic_test_size": 100},
            "train": {"num_rounds": 2, "batch_size": 32},
            "strategy": {"fraction_fit": 0.5},
            "federation": {"device": "cpu"},
        }
        return validate(deep_merge(base, overrides))

    return make


@pytest.fixture
def fedmpq_config(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """A tiny synthetic FedMPQ-family run: 4 clients with budgets [2, 3, 4, 5], IID split."""

    def make(method: str = "fedmpq", model: str = "tiny_cnn", run_id: str = "unit", **overrides: Any) -> dict:
        base = {
            "run_id": run_id,
            "seed": 1,
            "results_dir": str(tmp_path),
            "model": {"name": model},
            "strategy": {"name": method},
            "dataset": {"name": "synthetic", "synthetic_train_size": 96, "synthetic_test_size": 40, "alpha": "inf"},
            "train": {"num_rounds": 2, "batch_size": 16},
            "quant": {"budgets": [2, 3, 4, 5]},
            "federation": {"num_clients": 4, "device": "cpu"},
        }
        return validate(deep_merge(base, overrides))

    return make


class Rounds:
    """Drive a method's real strategy and clients directly, as Flower would (minus the transport)."""

    varying_keys = VARYING_KEYS

    @staticmethod
    def strategy(config: dict[str, Any]) -> Any:
        """The configured method's strategy, recording into `<results_dir>/<run_id>`."""
        run_dir = Path(config["results_dir"]) / config["run_id"]
        return load_method(config["strategy"]["name"]).strategy(config, RunRecorder(run_dir, config["run_id"]))

    @staticmethod
    def fit_result(client: Any, strategy: Any, pid: int, server_round: int = 1) -> FitRes:
        """One client's reply to what the strategy sends in a round (`fit_arrays`) and its instructions,
        through the guard every client runs in (a bare method client is wrapped)."""
        sent = strategy.fit_arrays(server_round, strategy.latest_parameters)
        if not isinstance(client, GuardedClient):
            client = GuardedClient(client)
        weights, n, metrics = client.fit(sent, strategy.fit_config(server_round, pid))
        return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), n, metrics)

    @staticmethod
    def run(
        config: dict[str, Any], rounds: int, participants: list[list[int]] | None = None
    ) -> tuple[list[dict[str, Any]], list]:
        """Rounds of the configured method's real strategy and clients, called as Flower would (minus the
        transport): a client's exception is that client's failure. Every node keeps its own state between
        rounds. Returns the metrics.jsonl records and the final global weights."""
        method = load_method(config["strategy"]["name"])
        strategy = Rounds.strategy(config)
        num_clients = config["federation"]["num_clients"]
        states = {pid: RecordDict() for pid in range(num_clients)}
        for server_round in range(1, rounds + 1):
            sampled = participants[server_round - 1] if participants else sorted(states)
            strategy.start_round(server_round, sampled, strategy.fit_arrays(server_round, strategy.latest_parameters))
            results, failures = [], []
            for pid in sampled:
                client = method.build_client(config, pid, num_clients, states[pid])
                try:
                    results.append((None, Rounds.fit_result(client, strategy, pid, server_round)))
                except Exception as err:  # Flower hands a client's exception to aggregate_fit as a failure
                    failures.append(err)
            strategy.aggregate_fit(server_round, results, failures)
            strategy.evaluate(server_round, ndarrays_to_parameters(strategy.latest_parameters))
        lines = (strategy.recorder.run_dir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines], strategy.latest_parameters

    @staticmethod
    def without(record: dict[str, Any], keys: set[str]) -> dict[str, Any]:
        """A metrics record minus some keys, also inside its `clients` entries."""
        kept = {k: v for k, v in record.items() if k not in keys}
        if "clients" in kept:
            kept["clients"] = [{k: v for k, v in client.items() if k not in keys} for client in kept["clients"]]
        return kept


@pytest.fixture
def fl() -> type[Rounds]:
    """The `Rounds` helpers: `fl.strategy(config)`, `fl.fit_result(...)`, `fl.run(config, rounds)`, `fl.without`."""
    return Rounds


@pytest.fixture
def real_cifar10_path() -> str:
    """The real CIFAR-10 npz folder (../shared/data/cifar10 next to the checkout or a folder holding it);
    the test is skipped where it is missing."""
    found = [p / "shared/data/cifar10" for p in Path(__file__).resolve().parents[1:]]
    folder = next((p for p in found if (p / "train.npz").is_file()), None)
    if folder is None:
        pytest.skip("real CIFAR-10 npz not on this machine")
    return str(folder)
