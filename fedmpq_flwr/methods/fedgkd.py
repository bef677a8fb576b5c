"""FedGKD (Yao et al., arXiv 2107.00051; code CGCL-codes/FedGKD): full-precision FedAvg whose clients
distil from the parameter average of recent global models.

Client: train the received global model with `CE + gkd.gamma * T^2 * KL(teacher || student)`
(`T` = `gkd.temperature`; `fedmpq_flwr.training.distillation.TeacherDistillation`, batch mean), the
teacher being a frozen float model (eval mode, BatchNorm folded, `inference_teacher`) that holds
the average the server sent; the student, optimizer and data are FedAvg's. It uploads its float32
weights as FedAvg. Server: FedAvg's aggregation (`strategy.weighting`), plus the buffer of the last
`gkd.buffer` global models, the one broadcast this round included, whose average travels with the
fit instructions as extra arrays (`fedmpq_flwr.methods.history_teacher`): `bits_down` counts it.
Round 1: no aggregated model exists yet, so no teacher is sent and nobody distils (the reference's
rule, `worker_fedgkd.py`). Defaults are the code README's: gamma 0.1, M 5, T 1.

`gkd.gate` (`none` default, `correct`, `confidence`) weights each sample's KL term as FedMPQ-KD's
`kd.gate` does (`fedmpq_flwr.training.distillation.gate_weights`); gamma has no schedule (round 1
already trains without a teacher, and the paper keeps gamma constant).

Logged per client as for FedMPQ-KD: `kd_loss` (T^2 * KL, gated), `agreement` (student-teacher top-1),
`kd_gate_mean` (the mean gate weight), `teacher_flops` (the teacher's forward FLOPs, apart from
`train_flops`; 0 in a round without a teacher), `teacher_round` (the newest global round averaged) and
`teacher_models` (how many). The round record has the participants' sample-weighted `kd_gate_mean`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmpq_flwr.data.device_batches import ClientBatches
from fedmpq_flwr.methods.fedavg import FedAvgClient, FedAvgStrategy
from fedmpq_flwr.methods.history_teacher import HistoryTeacherClient, HistoryTeacherStrategy
from fedmpq_flwr.methods.model_history import ModelHistory
from fedmpq_flwr.rundir.results import RunRecorder
from fedmpq_flwr.training.distillation import TeacherDistillation, inference_teacher, round_gate_mean
from fedmpq_flwr.training.loop import train_epochs
from fedmpq_flwr.training.weights import get_weights

__all__ = ["FedGKDClient", "FedGKDStrategy"]


class FedGKDClient(HistoryTeacherClient, FedAvgClient):
    """FedAvg's client plus distillation from the teacher the server sent (none in round 1)."""

    def train(
        self, model: nn.Module, loader: ClientBatches, config: dict[str, Any], seed: int
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        teacher = self.teacher_model(model)
        if teacher is None:
            weights, metrics = super().train(model, loader, config, seed)
            metrics["teacher_flops"] = 0.0  # no teacher this round
            return weights, metrics
        gkd = self.config["gkd"]
        distillation = TeacherDistillation(inference_teacher(teacher), gkd["gamma"], gkd["temperature"], gkd["gate"])

        def loss_fn(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = net(images)
            task_loss = F.cross_entropy(logits, labels)
            terms = distillation.terms(images, logits, labels)
            return {"loss": task_loss + terms.pop("loss"), "task_loss": task_loss, **terms}

        epochs = self.config["train"]["local_epochs"]
        metrics = train_epochs(model, loader, self.optimizer(model.parameters()), epochs, self.device, loss_fn=loss_fn)
        distillation.report(metrics)
        metrics.update(teacher_round=max(self.teacher_rounds), teacher_models=len(self.teacher_rounds))
        return get_weights(model), metrics


class FedGKDStrategy(HistoryTeacherStrategy, FedAvgStrategy):
    """FedAvg's server plus the buffer of the last `gkd.buffer` global models; their average is sent
    to every sampled client from round 2 on."""

    def __init__(self, config: dict[str, Any], recorder: RunRecorder) -> None:
        super().__init__(config, recorder)
        self.history = ModelHistory(config["gkd"]["buffer"])

    def round_extra(self, server_round: int) -> dict[str, Any]:
        """The participants' sample-weighted `kd_gate_mean` (none in round 1, which has no teacher)."""
        fit = self.current.fit if self.current is not None else None
        return {
            **super().round_extra(server_round),
            **round_gate_mean(fit.fields.get("clients", []) if fit is not None else []),
        }
