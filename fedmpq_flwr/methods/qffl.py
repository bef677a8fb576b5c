"""q-FFL / q-FedAvg (Li, Sanjabi, Beirami, Smith, ICLR 2020), as the authors' `qffedavg` trainer.

Client k: first F_k, the mean cross-entropy of the RECEIVED global model w on k's whole training
partition with the labels it trains on (eval mode, no augmentation, `train.eval_batch_size`); then
local training exactly as FedAvg; then (`fedmpq_flwr.methods.qffl_update.client_update`, with the Lipschitz estimate
L = `qffl.lipschitz_scale` / `train.lr`, the authors' 1/lr at the default scale 1) it uploads
Delta_k = F_k^q L (w - w_k) for trainable tensors and its local BatchNorm statistics, and reports
h_k = q F_k^(q-1) ||L (w - w_k)||^2 + L F_k^q and F_k as fit metrics (`qffl_h`, `qffl_loss`).

Server: w <- w - sum_k Delta_k / sum_k h_k on the trainable tensors (`fedmpq_flwr.methods.qffl_update.aggregate`,
against the global model sent this round); BatchNorm statistics are averaged uniformly, so q = 0 is
exactly uniform FedAvg (`strategy.weighting: uniform`). `strategy.weighting` does not apply: the
clients' weights are q-FFL's F_k^q.

Costs: the F_k pass is inference over the client's partition before training. Its FLOPs are
reported apart from the training FLOPs, as `eval_flops` per client (summed per round), as
FedMPQ-KD reports its teacher's forward passes as `teacher_flops`, so `train_flops` stays comparable
with FedAvg's; its time is inside the client's `client_time_s`. Upload: FedAvg's 32 bits per float
plus 32 for h_k (F_k is sent for the record only, as FedAvg's train_loss, and is not counted).

Flower's built-in `QFedAvg` strategy is not used: it computes one loss on the server (its
`evaluate_fn`) for every client, losing the per-client reweighting, and fails without one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.common import NDArrays
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedmpq_flwr.data.device_batches import ClientBatches
from fedmpq_flwr.data.load import load_data
from fedmpq_flwr.data.loaders import eval_batches
from fedmpq_flwr.data.partition import client_partition
from fedmpq_flwr.methods.fedavg import FedAvgClient, FedAvgStrategy
from fedmpq_flwr.methods.qffl_update import aggregate as qffl_aggregate
from fedmpq_flwr.methods.qffl_update import client_update
from fedmpq_flwr.rundir.results import RunRecorder
from fedmpq_flwr.server.method_strategy import FLOAT_BITS
from fedmpq_flwr.server.round_log import RoundInProgress
from fedmpq_flwr.server.update import ClientUpdate
from fedmpq_flwr.training.loop import loss_and_accuracy
from fedmpq_flwr.training.weights import get_weights, trainable_mask


class QFFLClient(FedAvgClient):
    """F_k of the received model, FedAvg's local training, then q-FFL's Delta_k and h_k."""

    def received_loss(self, model: nn.Module) -> tuple[float, float]:
        """F_k: the received model's mean loss on this client's whole training partition (eval mode,
        no augmentation), and the FLOPs of that pass. Torch's RNG is left as it was, so the local
        training that follows draws the same batches and crops as a FedAvg client's."""
        dataset_cfg = self.config["dataset"]
        data = load_data(dataset_cfg)
        part = client_partition(
            data, self.partition_id, self.num_partitions, dataset_cfg["alpha"], dataset_cfg["seed"],
            dataset_cfg["label_noise"],
        )  # fmt: skip
        batch = self.config["train"]["eval_batch_size"]
        loader = eval_batches(
            data.x_train[part.idx], part.labels, batch, mean=data.mean, std=data.std, device=self.device
        )
        with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
            loss, _ = loss_and_accuracy(model, loader, self.device)
        return loss, float(counter.get_total_flops())

    def train(
        self, model: nn.Module, loader: ClientBatches, config: dict[str, Any], seed: int
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        received = get_weights(model)
        loss, eval_flops = self.received_loss(model)
        local, metrics = super().train(model, loader, config, seed)
        qffl = self.config["qffl"]
        lipschitz = qffl["lipschitz_scale"] / self.round_lr()  # the lr this round trains with
        upload, h = client_update(received, local, trainable_mask(model), loss, qffl["q"], lipschitz)
        metrics.update(qffl_h=h, qffl_loss=loss, eval_flops=eval_flops)
        return upload, metrics


class QFFLStrategy(FedAvgStrategy):
    """w <- w - sum Delta_k / sum h_k (trainable tensors); uniform mean of the BatchNorm statistics."""

    def __init__(self, config: dict[str, Any], recorder: RunRecorder) -> None:
        super().__init__(config, recorder)
        self.trainable = trainable_mask(self.model)
        self.sent: NDArrays = self.latest_parameters  # the global model of the round in progress

    def start_round(self, server_round: int, sampled: list[int], parameters: NDArrays) -> RoundInProgress:
        self.sent = parameters
        return super().start_round(server_round, sampled, parameters)

    def upload_bits(self, update: ClientUpdate) -> int:
        """FedAvg's 32 bits per float (Delta_k has the model's size) plus one float32 for h_k."""
        return super().upload_bits(update) + FLOAT_BITS

    def aggregate(self, updates: list[ClientUpdate]) -> NDArrays:
        uploads = [u.arrays for u in updates]
        hs = [float(u.metrics["qffl_h"]) for u in updates]
        return qffl_aggregate(self.sent, uploads, hs, self.trainable)
