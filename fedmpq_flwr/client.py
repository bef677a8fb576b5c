"""Flower clients: local training of the received global model on one data partition."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from flwr.client import NumPyClient

from fedmpq_flwr.dataset import client_loader, load_data
from fedmpq_flwr.models import build_model
from fedmpq_flwr.train import resolve_device, train_epochs
from fedmpq_flwr.weights import get_weights, set_weights


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Seed of one client's local training in one round: reproducible, distinct per (round, client)."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


class FedAvgClient(NumPyClient):
    """Full-precision client: SGD with momentum for `train.local_epochs` epochs."""

    def __init__(self, config: dict[str, Any], partition_id: int, num_partitions: int) -> None:
        self.config = config
        self.partition_id = partition_id
        self.num_partitions = num_partitions
        self.device = resolve_device(config["federation"]["device"])

    def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
        """Tell the server which data partition this node holds (it samples by partition id)."""
        return {"partition_id": self.partition_id}

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        started = time.perf_counter()
        train_cfg = self.config["train"]
        seed = client_seed(self.config["seed"], int(config["server_round"]), self.partition_id)
        torch.manual_seed(seed)
        data = load_data(self.config["dataset"])
        loader = client_loader(
            data, self.partition_id, self.num_partitions, self.config["dataset"], train_cfg["batch_size"], seed
        )
        model = build_model(self.config["model"]["name"], data.num_classes).to(self.device)
        set_weights(model, parameters)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=train_cfg["lr"],
            momentum=train_cfg["momentum"],
            weight_decay=train_cfg["weight_decay"],
        )
        stats = train_epochs(model, loader, optimizer, train_cfg["local_epochs"], self.device)
        metrics = {
            "partition_id": self.partition_id,
            "train_loss": stats["train_loss"],
            "client_time_s": time.perf_counter() - started,
        }
        return get_weights(model), len(loader.dataset), metrics
