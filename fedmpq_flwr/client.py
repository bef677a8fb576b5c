"""Flower clients: local training of the received global model on one data partition."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.client import NumPyClient
from flwr.common import RecordDict
from torch import nn
from torch.utils.data import DataLoader

from fedmpq_flwr.costs import peak_gpu_mb, peak_rss_mb, reset_peak_gpu
from fedmpq_flwr.dataset import client_loader, load_data
from fedmpq_flwr.models import build_model
from fedmpq_flwr.train import resolve_device, train_epochs
from fedmpq_flwr.weights import get_weights, set_weights


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Seed of one client's local training in one round: reproducible, distinct per (round, client)."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


class FedAvgClient(NumPyClient):
    """Full-precision client: SGD with momentum for `train.local_epochs` epochs.

    Subclasses change what is trained and sent by overriding `train`.
    """

    def __init__(
        self, config: dict[str, Any], partition_id: int, num_partitions: int, state: RecordDict | None = None
    ) -> None:
        self.config = config
        self.partition_id = partition_id
        self.num_partitions = num_partitions
        # What the node keeps between rounds (Flower's `context.state`: client objects are rebuilt every round).
        self.state = state if state is not None else RecordDict()
        self.device = resolve_device(config["federation"]["device"])

    def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
        """Tell the server which data partition this node holds (it samples by partition id)."""
        return {"partition_id": self.partition_id}

    def optimizer(self, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        train_cfg = self.config["train"]
        return torch.optim.SGD(
            parameters, lr=train_cfg["lr"], momentum=train_cfg["momentum"], weight_decay=train_cfg["weight_decay"]
        )

    def train(
        self, model: nn.Module, loader: DataLoader, config: dict[str, Any], seed: int
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Train the received global model; return what to upload and the metrics to report."""
        stats = train_epochs(
            model, loader, self.optimizer(model.parameters()), self.config["train"]["local_epochs"], self.device
        )
        return get_weights(model), stats

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        started = time.perf_counter()
        reset_peak_gpu(self.device)
        seed = client_seed(self.config["seed"], int(config["server_round"]), self.partition_id)
        torch.manual_seed(seed)
        data = load_data(self.config["dataset"])
        loader = client_loader(
            data,
            self.partition_id,
            self.num_partitions,
            self.config["dataset"],
            self.config["train"]["batch_size"],
            seed,
        )
        model = build_model(self.config["model"]["name"], data.num_classes).to(self.device)
        set_weights(model, parameters)
        weights, metrics = self.train(model, loader, config, seed)
        metrics.update(
            partition_id=self.partition_id,
            client_time_s=time.perf_counter() - started,
            peak_rss_mb=peak_rss_mb(),
            **peak_gpu_mb(self.device),
        )
        return weights, len(loader.dataset), metrics
