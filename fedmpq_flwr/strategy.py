"""Server side of full-precision FedAvg: seeded sampling, weighted averaging, server evaluation.

Quantized methods subclass `FedAvgStrategy` and override the hooks (`fit_config`,
`aggregate`, `upload_bits`, `download_bits`, `client_record`, `round_metrics`, `evaluate_extra`,
`save_outputs`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.common import (
    FitIns,
    FitRes,
    GetPropertiesIns,
    NDArrays,
    Parameters,
    Scalar,
    log,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.server.strategy.aggregate import aggregate
from torch import nn

from fedmpq_flwr.costs import peak_gpu_mb, peak_rss_mb, reset_peak_gpu
from fedmpq_flwr.dataset import FederatedData, eval_loader, load_data
from fedmpq_flwr.models import build_model, save_final_model
from fedmpq_flwr.results import FEATURES_FILE, MODEL_FILE, ROUND_FROM_CLIENTS, RunRecorder, round_from_clients
from fedmpq_flwr.train import evaluate, penultimate_features, resolve_device
from fedmpq_flwr.weights import get_weights, set_weights

FLOAT_BITS = 32
FEATURE_IMAGES = 2000  # test images whose features are saved for t-SNE


def format_seconds(seconds: float) -> str:
    """1h02m03s / 2m03s: for progress lines."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class FedAvgStrategy(Strategy):
    """Sample-weighted FedAvg over clients sampled by partition id with a seeded RNG."""

    def __init__(self, config: dict[str, Any], recorder: RunRecorder) -> None:
        super().__init__()
        self.config = config
        self.recorder = recorder
        self.num_rounds = config["train"]["num_rounds"]
        self.rng = np.random.default_rng([config["seed"], 1])
        self.device = resolve_device(config["federation"]["device"])
        self.data: FederatedData = load_data(config["dataset"])
        batch = config["train"]["eval_batch_size"]
        self.test_loader = eval_loader(self.data.x_test, self.data.y_test, batch)
        self.val_loader = eval_loader(self.data.x_val, self.data.y_val, batch) if len(self.data.y_val) else None
        torch.manual_seed(config["seed"])
        self.model = build_model(config["model"]["name"], self.data.num_classes).to(self.device)
        self.partition_of_node: dict[str, int] = {}
        self.latest_parameters: NDArrays = get_weights(self.model)
        self.round_stats: dict[str, Any] = {}
        self.started = self.round_started = time.perf_counter()

    # ---- client sampling -------------------------------------------------------------

    def clients_by_partition(self, client_manager: ClientManager) -> dict[int, ClientProxy]:
        """Map partition id -> connected client, asking new nodes for their partition once."""
        proxies = client_manager.all()
        unknown = [cid for cid in proxies if cid not in self.partition_of_node]
        if unknown:
            ins = GetPropertiesIns(config={})
            with ThreadPoolExecutor(max_workers=min(16, len(unknown))) as pool:
                replies = pool.map(lambda cid: proxies[cid].get_properties(ins, timeout=None, group_id=None), unknown)
                for cid, reply in zip(unknown, replies):
                    self.partition_of_node[cid] = int(reply.properties["partition_id"])
        return {self.partition_of_node[cid]: proxy for cid, proxy in proxies.items()}

    def sample_partitions(self, available: list[int]) -> list[int]:
        """Seeded choice of this round's participants (same seed, same participants)."""
        count = max(1, int(round(self.config["strategy"]["fraction_fit"] * len(available))))
        return sorted(int(p) for p in self.rng.choice(sorted(available), size=count, replace=False))

    # ---- hooks for subclasses ---------------------------------------------------------

    def fit_config(self, server_round: int, partition_id: int) -> dict[str, Scalar]:
        """Per-client instructions sent with the global weights."""
        return {"server_round": server_round}

    def download_bits(self, parameters: NDArrays, partition_id: int) -> int:
        """Bits the server sends one client: the full-precision global model."""
        return FLOAT_BITS * sum(int(array.size) for array in parameters)

    def upload_bits(self, weights: NDArrays, fit_res: FitRes) -> int:
        """Bits one client sends back: its float32 weights."""
        return FLOAT_BITS * sum(int(array.size) for array in weights)

    def aggregate(self, updates: list[tuple[int, NDArrays, FitRes]]) -> NDArrays:
        """Average of the clients' weights: by sample count (FedAvg, default) or unweighted
        (`strategy.weighting: uniform`, as the official FedMPQ code)."""
        uniform = self.config["strategy"]["weighting"] == "uniform"
        return aggregate([(weights, 1 if uniform else fit_res.num_examples) for _, weights, fit_res in updates])

    def client_record(self, partition_id: int, fit_res: FitRes) -> dict[str, Any]:
        """Method-specific fields of one participant's entry in the round's `clients` list."""
        return {}

    def round_metrics(self, updates: list[tuple[int, NDArrays, FitRes]], bits_up: dict[int, int]) -> dict[str, Any]:
        """Per-round fields for metrics.jsonl (computed before `aggregate`): one entry per participant
        with every number it reported, the sample-weighted training loss and the fields of
        `ROUND_FROM_CLIENTS`."""
        clients = [
            {
                "partition_id": pid,
                "num_examples": res.num_examples,
                "bits_up": bits_up[pid],
                **{k: v for k, v in res.metrics.items() if isinstance(v, (int, float)) and k != "partition_id"},
                **self.client_record(pid, res),
            }
            for pid, _, res in updates
        ]
        total = sum(c["num_examples"] for c in clients)
        loss = sum(c["train_loss"] * c["num_examples"] for c in clients)
        metrics: dict[str, Any] = {"train_loss": loss / total if total else None, "clients": clients}
        for round_key in ROUND_FROM_CLIENTS:
            value = round_from_clients(round_key, clients)
            if value is not None:
                metrics[round_key] = value
        return metrics

    def evaluate_extra(self, server_round: int) -> dict[str, Any]:
        """More evaluation fields for the round, with `self.model` holding the new global model."""
        return {}

    def progress_fields(self, record: dict[str, Any]) -> str:
        """Extra text for the per-round progress line."""
        return ""

    # ---- Strategy interface -------------------------------------------------------------

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Every client starts from the same seeded global model."""
        return ndarrays_to_parameters(self.latest_parameters)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.round_started = time.perf_counter()
        reset_peak_gpu(self.device)
        clients = self.clients_by_partition(client_manager)
        sampled = self.sample_partitions(list(clients))
        arrays = parameters_to_ndarrays(parameters)
        self.round_stats = {
            "sampled_partitions": sampled,
            "bits_down": sum(self.download_bits(arrays, pid) for pid in sampled),
        }
        return [(clients[pid], FitIns(parameters, self.fit_config(server_round, pid))) for pid in sampled]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        # Sorting by partition makes the float summation order, hence the result, reproducible.
        updates = sorted(
            ((int(res.metrics["partition_id"]), parameters_to_ndarrays(res.parameters), res) for _, res in results),
            key=lambda update: update[0],
        )
        bits_up = {pid: self.upload_bits(weights, res) for pid, weights, res in updates}
        self.round_stats.update(
            num_failures=len(failures),
            bits_up=sum(bits_up.values()),
            client_time_s=max((float(res.metrics["client_time_s"]) for _, _, res in updates), default=0.0),
        )
        if not updates:
            return None, {}
        self.round_stats.update(self.round_metrics(updates, bits_up))
        self.latest_parameters = self.aggregate(updates)
        return ndarrays_to_parameters(self.latest_parameters), {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list:
        return []  # evaluation happens on the server, in `evaluate`

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[float | None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """Test (and validation) accuracy of the global model after each round; logs the round."""
        if server_round == 0:
            return None
        set_weights(self.model, parameters_to_ndarrays(parameters))
        test_loss, test_accuracy = evaluate(self.model, self.test_loader, self.device)
        record: dict[str, Any] = {"round": server_round, "test_accuracy": test_accuracy, "test_loss": test_loss}
        if self.val_loader is not None:
            record["val_loss"], record["val_accuracy"] = evaluate(self.model, self.val_loader, self.device)
        record.update(self.evaluate_extra(server_round))
        stats = dict(self.round_stats)
        sampled = stats.pop("sampled_partitions")
        record.update(
            bits_up=stats.pop("bits_up", 0),
            bits_down=stats.pop("bits_down"),
            round_time_s=time.perf_counter() - self.round_started,
            server_peak_rss_mb=peak_rss_mb(),
            **{f"server_{key}": value for key, value in peak_gpu_mb(self.device).items()},
            num_sampled=len(sampled),
            num_failures=stats.pop("num_failures", 0),
            sampled_partitions=sampled,
            **stats,
        )
        self.recorder.log_round(record)
        elapsed = time.perf_counter() - self.started
        eta = elapsed / server_round * (self.num_rounds - server_round)
        log(
            INFO,
            "[%s] round %d/%d  test_acc=%.4f%s  %.1f s/round  elapsed %s  ETA %s",
            self.config["run_id"],
            server_round,
            self.num_rounds,
            test_accuracy,
            self.progress_fields(record),
            record["round_time_s"],
            format_seconds(elapsed),
            format_seconds(eta),
        )
        return test_loss, {"test_accuracy": test_accuracy}

    def feature_models(self) -> tuple[dict[str, nn.Module], dict[str, int]]:
        """Models whose penultimate features are saved at the end (name -> model), and numbers to
        store with them: here the final global model."""
        return {"float": self.model}, {}

    def save_features(self) -> None:
        """`features.npz`: labels and penultimate features of `feature_models` on a fixed subset
        of the test set (the same images in every run: seeded by `dataset.seed`)."""
        size = len(self.data.y_test)
        chosen = np.sort(
            np.random.default_rng(self.config["dataset"]["seed"]).choice(size, min(FEATURE_IMAGES, size), replace=False)
        )
        loader = eval_loader(
            self.data.x_test[chosen], self.data.y_test[chosen], self.config["train"]["eval_batch_size"]
        )
        models, numbers = self.feature_models()
        arrays = {}
        for name, model in models.items():
            arrays[f"{name}_features"], labels = penultimate_features(model, loader, self.device)
        np.savez_compressed(self.recorder.run_dir / FEATURES_FILE, labels=labels, **arrays, **numbers)

    def save_outputs(self) -> None:
        """Files written after the last round: the final global model and its features."""
        set_weights(self.model, self.latest_parameters)
        save_final_model(
            self.recorder.run_dir / MODEL_FILE, self.model, self.config["model"]["name"], self.data.num_classes
        )
        self.save_features()
