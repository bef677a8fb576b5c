"""FedKD (Wu et al., Nature Communications 2022; code wuch15/FedKD): a shared mentee, a private
mentor per client, adaptive mutual distillation and SVD-compressed mentee updates.

Client: the shared *mentee* is the configured model (`model.name`); the private *mentor*
(`fedkd.mentor`, ResNet-32 by default) lives in the node's Flower `context.state` (this client's
`self.state`) under `fedkd.mentor.partition_<id>` between rounds and is never sent. A node's first
mentor is initialised from the seed `client_seed(seed, 0, partition_id)` (round 0 is no training
round), without touching the training's random stream. On every batch both models train on the
same augmented images with adaptive mutual distillation (`fedmpq_flwr.training.mutual_distillation`: each
model's loss is its cross-entropy plus (KL towards the other's predictions + stage-output MSE)
divided by the sum of the two cross-entropies): the step of `mutual_step`, run inside
`train.train_epochs` (one backward of the two losses, which share no attached tensor, then each
model's SGD step), so the loop, its means and its FLOP count are every method's. Both optimizers
are SGD with `train.*` settings, fresh every round (no optimizer state is kept between rounds).

Uplink: the mentee update dW = local - received, every communicated state entry, compressed per
matrix by truncated SVD keeping a share T(t) of the energy (`fedmpq_flwr.quant.svd`), T linear
from `fedkd.energy_start` in round 1 to `fedkd.energy_end` in round `train.num_rounds` (the server
sends T(t) as `svd_energy`; rounds past the last keep `energy_end`). Vectors travel raw: biases,
BatchNorm affine parameters and BatchNorm running statistics, the latter as raw float32 *deltas*
like every other entry, so the server's average of them is FedAvg's average of the statistics, up
to float rounding. The layout (one rank per tensor, 0 = raw) travels in the metrics as JSON and is
not counted; `bits_up` = `svd_upload_bits`, 32 bits per number sent.

Server: decodes each update (U_K diag(S_K) V_K, raw tensors as sent), averages the updates with
FedAvg's weights (`strategy.weighting`: by sample count by default, or uniform) and adds the mean to
the global mentee it broadcast. Downlink: the float global mentee, 32 bits per float, as for every
method (FedKD's paper also compresses the downlink; here only the uplink is). The server evaluates
the global mentee.

Costs: `train_flops` is the mentee's part of the training FLOPs and `mentor_flops` the mentor's
(its forward and backward per step, counted on a meta-device copy, which computes nothing, times
the steps), so the client compute FedKD adds is visible; `mentor_state_bytes` is the size of the
state a node keeps between rounds (float32 parameters and BatchNorm statistics).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from flwr.common import ArrayRecord, NDArrays, Scalar
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedmpq_flwr.data.device_batches import ClientBatches
from fedmpq_flwr.data.load import load_data
from fedmpq_flwr.methods.fedavg import FedAvgClient, FedAvgStrategy, client_seed
from fedmpq_flwr.models import build_model
from fedmpq_flwr.quant.svd import energy_threshold, svd_decode, svd_encode, svd_upload_bits
from fedmpq_flwr.rundir.results import RunRecorder
from fedmpq_flwr.server.update import ClientUpdate
from fedmpq_flwr.training.loop import train_epochs
from fedmpq_flwr.training.mutual_distillation import mutual_terms
from fedmpq_flwr.training.weights import get_weights, set_weights

__all__ = ["FedKDClient", "FedKDStrategy"]

SVD_ENERGY = "svd_energy"  # fit instruction and client metric: the energy share T(t) kept
SVD_LAYOUT = "svd_layout"  # client metric: the upload's layout (JSON list, one rank per tensor, 0 = raw)


def mentor_key(partition_id: int) -> str:
    """Where a node keeps its mentor in its `context.state`."""
    return f"fedkd.mentor.partition_{partition_id}"


def training_step_flops(model: nn.Module, batch_shape: tuple[int, ...]) -> int:
    """FLOPs of one training step's forward and backward (cross-entropy) of `model` on a batch of
    `batch_shape`, counted on a copy on the meta device (shapes only: nothing is computed). The
    distillation terms add only element-wise operations, which the counter does not count."""
    meta = copy.deepcopy(model).to("meta").train()
    images = torch.zeros(batch_shape, device="meta")
    labels = torch.zeros(batch_shape[0], dtype=torch.int64, device="meta")
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(meta(images), labels).backward()
    return counter.get_total_flops()


class FedKDClient(FedAvgClient):
    """Trains the received mentee together with this node's private mentor; uploads the SVD of the
    mentee's update."""

    def mentor(self, num_classes: int) -> nn.Module:
        """This node's mentor: kept from its last round, or a fresh one seeded by (seed, partition)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(client_seed(self.config["seed"], 0, self.partition_id))
            mentor = build_model(self.config["fedkd"]["mentor"], num_classes)
        key = mentor_key(self.partition_id)
        if key in self.state:
            set_weights(mentor, self.state[key].to_numpy_ndarrays())
        return mentor.to(self.device)

    def train(
        self, model: nn.Module, loader: ClientBatches, config: dict[str, Any], seed: int
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        received = get_weights(model)
        num_classes = load_data(self.config["dataset"]).num_classes
        mentor = self.mentor(num_classes).train()
        mentor_optimizer = self.optimizer(mentor.parameters())
        mentor_grad_norms: list[torch.Tensor] = []
        batch_shapes: list[tuple[int, ...]] = []

        def loss_fn(mentee: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            if not batch_shapes:
                batch_shapes.append(tuple(images.shape))
            mentor_optimizer.zero_grad(set_to_none=True)
            return mutual_terms(mentee, mentor, images, labels)  # "loss": the sum of both models' losses

        def mentor_step() -> None:  # after the mentee's step; the one backward gave the mentor its gradient
            mentor_grad_norms.append(
                torch.nn.utils.get_total_norm([p.grad for p in mentor.parameters() if p.grad is not None]).detach()
            )
            mentor_optimizer.step()

        epochs = self.config["train"]["local_epochs"]
        metrics: dict[str, Any] = train_epochs(
            model,
            loader,
            self.optimizer(model.parameters()),
            epochs,
            self.device,
            loss_fn=loss_fn,
            after_step=mentor_step,
        )
        metrics.pop("train_loss")  # the sum of both losses: the mentee's own is what a round reports
        metrics["train_loss"] = metrics.pop("mentee_loss")
        mentor_flops = float(training_step_flops(mentor, batch_shapes[0]) * metrics["steps"])
        mentor_state = get_weights(mentor)
        self.state[mentor_key(self.partition_id)] = ArrayRecord(mentor_state)
        update = [local - start for local, start in zip(get_weights(model), received)]
        energy = float(config[SVD_ENERGY])
        arrays, layout = svd_encode(update, energy)
        metrics.update(
            mentor_grad_norm=float(torch.stack(mentor_grad_norms).mean()) if mentor_grad_norms else 0.0,
            mentor_flops=mentor_flops,
            train_flops=metrics["train_flops"] - mentor_flops,
            mentor_state_bytes=float(sum(array.nbytes for array in mentor_state)),
            svd_energy=energy,
            svd_layout=json.dumps(layout),
        )
        return arrays, metrics


def _layout(update: ClientUpdate) -> list[int]:
    return [int(rank) for rank in update.decoded[SVD_LAYOUT]]


class FedKDStrategy(FedAvgStrategy):
    """FedAvg's server for SVD-compressed updates: decode, average, add to the global mentee."""

    encoded_metrics = (SVD_LAYOUT,)

    def __init__(self, config: dict[str, Any], recorder: RunRecorder) -> None:
        super().__init__(config, recorder)
        self.shapes = [array.shape for array in self.latest_parameters]

    def energy(self, server_round: int) -> float:
        """T(t): the share of each matrix's energy the clients keep in `server_round`."""
        fedkd, num_rounds = self.config["fedkd"], self.config["train"]["num_rounds"]
        return energy_threshold(min(server_round, num_rounds), num_rounds, fedkd["energy_start"], fedkd["energy_end"])

    def fit_config(self, server_round: int, partition_id: int) -> dict[str, Scalar]:
        return {**super().fit_config(server_round, partition_id), SVD_ENERGY: self.energy(server_round)}

    def upload_bits(self, update: ClientUpdate) -> int:
        """Exactly the factors and raw tensors sent, 32 bits per number."""
        return svd_upload_bits(update.arrays, _layout(update))

    def aggregate(self, updates: list[ClientUpdate]) -> NDArrays:
        """The global mentee plus the (sample-weighted or uniform) mean of the decoded updates."""
        decoded = [u.replace_arrays(svd_decode(u.arrays, _layout(u), self.shapes)) for u in updates]
        mean_update = super().aggregate(decoded)
        return [(start + delta).astype(np.float32) for start, delta in zip(self.latest_parameters, mean_update)]

    def client_record(self, update: ClientUpdate) -> dict[str, Any]:
        """The rank kept per tensor (0: sent raw)."""
        return {"svd_ranks": _layout(update)}
