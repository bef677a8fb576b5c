"""FedPAQ (Reisizadeh, Mokhtari, Hassani, Jadbabaie, Pedarsani, AISTATS 2020): full-precision local
training, a quantized upload of the model update.

Client: train the received global model x exactly as FedAvg does, then upload the unbiased bucketed
QSGD quantization of d = x_local - x (`fedmpq_flwr.quant.qsgd`, `paq.bits` per coordinate including
the sign, `paq.bucket` coordinates per float32 norm) for every trainable tensor; BatchNorm running
statistics (not trained by SGD) go as raw float32. The stochastic rounding draws from a numpy
generator seeded with the client's per-(seed, round, partition) seed, so a run is reproducible.

Server: decode every upload against the global model it sent this round, x + Q(d_k), and average
the decoded models: x <- x + sum_k w_k Q(d_k) with the weights w_k of `strategy.weighting` (default
`samples`: n_k / n). The paper averages uniformly (1/r over the r sampled clients); its analysis
has equally large client datasets, where both coincide. With Dirichlet partitions of unequal size
the sample weights are FedAvg's estimate of the global objective, so FedPAQ differs from this
project's FedAvg only in the quantized upload; `strategy.weighting: uniform` gives the paper's rule.
BatchNorm statistics are averaged with the same weights.

Bits: up, `paq.bits` per trainable coordinate + 32 per bucket norm + 32 per raw float
(`model_update_bits`); down, the float32 global model (the paper quantizes only the upload).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.common import NDArrays
from torch import nn

from fedmpq_flwr.data.device_batches import ClientBatches
from fedmpq_flwr.methods.fedavg import FedAvgClient, FedAvgStrategy
from fedmpq_flwr.quant.qsgd import decode_model_update, encode_model_update, model_update_bits
from fedmpq_flwr.rundir.results import RunRecorder
from fedmpq_flwr.server.round_log import RoundInProgress
from fedmpq_flwr.server.update import ClientUpdate
from fedmpq_flwr.training.weights import get_weights, trainable_mask


class FedPAQClient(FedAvgClient):
    """FedAvg's local training; the upload is Q(x_local - x) for trainable tensors."""

    def train(
        self, model: nn.Module, loader: ClientBatches, config: dict[str, Any], seed: int
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        received = get_weights(model)
        local, metrics = super().train(model, loader, config, seed)
        paq = self.config["paq"]
        rng = np.random.default_rng(seed)  # seed: client_seed(seed, round, partition)
        upload = encode_model_update(local, received, trainable_mask(model), rng, paq["bits"], paq["bucket"])
        return upload, metrics


class FedPAQStrategy(FedAvgStrategy):
    """Decodes each upload against the global model sent this round and averages the results."""

    def __init__(self, config: dict[str, Any], recorder: RunRecorder) -> None:
        super().__init__(config, recorder)
        self.quantized = trainable_mask(self.model)
        self.sent: NDArrays = self.latest_parameters  # the global model of the round in progress

    def start_round(self, server_round: int, sampled: list[int], parameters: NDArrays) -> RoundInProgress:
        self.sent = parameters
        return super().start_round(server_round, sampled, parameters)

    def upload_bits(self, update: ClientUpdate) -> int:
        paq = self.config["paq"]
        return model_update_bits(update.arrays, self.quantized, paq["bits"], paq["bucket"])

    def aggregate(self, updates: list[ClientUpdate]) -> NDArrays:
        """x + Q(d_k) per client, averaged as FedAvg (`strategy.weighting`): x + sum_k w_k Q(d_k)."""
        paq = self.config["paq"]
        decoded = [
            u.replace_arrays(decode_model_update(u.arrays, self.sent, self.quantized, paq["bits"], paq["bucket"]))
            for u in updates
        ]
        return super().aggregate(decoded)
