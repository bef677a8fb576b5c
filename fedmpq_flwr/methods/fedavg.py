"""FedAvg (McMahan et al., 2017): full-precision clients, sample-weighted averaging. The base of every method.

Client: train the received global model with SGD (momentum) for `train.local_epochs` epochs on its
partition and send the float32 weights back. Server: average them (by sample count, or unweighted
with `strategy.weighting: uniform`).

Every method subclasses these two classes and overrides hooks. Client: `train` (what is trained and
sent). Strategy: the hooks of `fedmpq_flwr.server.method_strategy.MethodStrategy`, which also keeps
sampling, the round record, failures and evaluation out of the method; `fedmpq_flwr.client.guard`
does the same on the client (node state, costs, failures). State a client keeps between rounds goes
in `self.state` (Flower's `context.state`): it is saved with the run's checkpoint and restored for
free, see `fedmpq_flwr.rundir.node_state`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.client import NumPyClient
from flwr.common import NDArrays, RecordDict
from flwr.server.strategy.aggregate import aggregate
from torch import nn

from fedmpq_flwr.data.device_batches import ClientBatches, client_batches
from fedmpq_flwr.data.load import load_data
from fedmpq_flwr.models import build_model
from fedmpq_flwr.server.method_strategy import MethodStrategy
from fedmpq_flwr.server.update import ClientUpdate
from fedmpq_flwr.training.loop import build_optimizer, resolve_device, round_lr, train_device_settings, train_epochs
from fedmpq_flwr.training.weights import get_weights, set_weights


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Seed of one client's local training in one round: reproducible, distinct per (round, client)."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


class FedAvgClient(NumPyClient):
    """Full-precision client: SGD with momentum (or AdamW, `train.optimizer`) for `train.local_epochs` epochs."""

    server_round = 0  # the round being trained (set by `fit`): the learning-rate schedule reads it

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

    def optimizer(self, parameters: Any) -> torch.optim.Optimizer:
        """`train.optimizer` at this round's learning rate (`train.lr` after `train.warmup_rounds` and
        `train.lr_schedule`; plain `train.lr` by default)."""
        train_cfg = self.config["train"]
        return build_optimizer(
            train_cfg["optimizer"], parameters, self.round_lr(), train_cfg["momentum"], train_cfg["weight_decay"]
        )

    def round_lr(self) -> float:
        """This round's learning rate (`train.lr` before the first round is set)."""
        train_cfg = self.config["train"]
        if self.server_round == 0:
            return train_cfg["lr"]
        return round_lr(
            train_cfg["lr"], self.server_round, train_cfg["num_rounds"], train_cfg["warmup_rounds"],
            train_cfg["lr_schedule"],
        )  # fmt: skip

    def train(
        self, model: nn.Module, loader: ClientBatches, config: dict[str, Any], seed: int
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Train the received global model; return what to upload and the metrics to report."""
        epochs = self.config["train"]["local_epochs"]
        stats = train_epochs(model, loader, self.optimizer(model.parameters()), epochs, self.device)
        return get_weights(model), stats

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """One round of local work: load the partition, train the received model (`train`), report."""
        self.server_round = int(config["server_round"])
        seed = client_seed(self.config["seed"], self.server_round, self.partition_id)
        torch.manual_seed(seed)
        dataset_cfg = self.config["dataset"]
        data = load_data(dataset_cfg)
        batch_size = self.config["train"]["batch_size"]
        loader = client_batches(
            data, self.partition_id, self.num_partitions, dataset_cfg, batch_size, seed,
            label_noise=dataset_cfg["label_noise"], device=self.device,
            **train_device_settings(self.config["train"], self.device),
        )  # fmt: skip
        model = build_model(self.config["model"]["name"], data.num_classes).to(self.device)
        set_weights(model, parameters)
        weights, metrics = self.train(model, loader, config, seed)
        return weights, loader.num_examples, metrics


class FedAvgStrategy(MethodStrategy):
    """FedAvg's server: the average of the clients' weights."""

    def aggregate(self, updates: list[ClientUpdate]) -> NDArrays:
        """By sample count (FedAvg, default) or unweighted (`strategy.weighting: uniform`, as the official
        FedMPQ code)."""
        uniform = self.config["strategy"]["weighting"] == "uniform"
        return aggregate([(u.arrays, 1 if uniform else u.num_examples) for u in updates])
