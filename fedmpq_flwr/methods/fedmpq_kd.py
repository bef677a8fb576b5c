"""FedMPQ-KD: FedMPQ whose clients distil, within the round, from a full-precision teacher.

Local objective: `CE + lambda_b * reg / total_params + alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`,
where z_s are the quantized student's logits and z_t those of a full-precision copy of the global
model the client received, on the same augmented batch. The teacher never leaves the client, so
uploads, bit allocation, aggregation and bit counting are FedMPQ's: the strategy
(`FedMPQKDStrategy`) is `FedMPQStrategy` itself unless the history teacher is configured.

Ablations (`kd.*` config keys): `alpha` and `temperature`; `teacher: updating` (the teacher follows
an EMA of the student's dequantized weights during local training); `refresh_every: k` (the
teacher is the global model of the latest round that is a multiple of k, kept in the node's
Flower `context.state` under `kd.teacher.partition_<id>`); `teacher: history` (FedGKD's teacher:
the parameter average of the last `kd.history` global models, kept and sent by the server with the
fit instructions, `fedmpq_flwr.methods.history_teacher`; an extra download, counted in `bits_down`;
no distillation in round 1, when no aggregated model exists yet). Without `teacher: history` the
strategy sends what FedMPQ's sends.

With any teacher: `schedule` (`constant`, `ramp`, `decay` over `schedule_rounds` rounds) makes the
weight a per-round alpha_t that the server computes (`scheduled_alpha`) and sends in the fit
instructions (`kd_alpha`, also in every round's record); `gate` weights each sample's KL term by the
teacher's correctness or confidence on its label (`fedmpq_flwr.training.distillation.gate_weights`),
and each client reports the mean weight, `kd_gate_mean`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.common import ArrayRecord, ConfigRecord, Scalar
from torch import nn

from fedmpq_flwr.data.device_batches import ClientBatches
from fedmpq_flwr.methods.fedmpq import FedMPQClient, FedMPQStrategy, ObjectiveExtension
from fedmpq_flwr.methods.history_teacher import HistoryTeacherClient, HistoryTeacherStrategy
from fedmpq_flwr.methods.model_history import ModelHistory
from fedmpq_flwr.quant import dequantized_state
from fedmpq_flwr.rundir.results import RunRecorder
from fedmpq_flwr.training.distillation import TeacherDistillation, inference_teacher, round_gate_mean
from fedmpq_flwr.training.weights import communicated_keys, get_weights, set_weights

__all__ = ["FedMPQKDClient", "FedMPQKDStrategy"]

KD_ALPHA = "kd_alpha"  # fit instruction and round field: the weight of the distillation term this round


def scheduled_alpha(alpha: float, schedule: str, rounds: int, server_round: int) -> float:
    """alpha_t of round t (1-based) under `kd.schedule` with N = `rounds`: `constant` alpha; `ramp`
    alpha * min(1, (t - 1) / N), no distillation in round 1 then up to alpha (QKD's self-study phase,
    Kim et al., 2019); `decay` alpha * max(0, 1 - (t - 1) / N), from alpha down to 0 (Shin, Boo and
    Sung, 2019, lower the soft-loss weight over training)."""
    if schedule == "constant":
        return alpha
    progress = (server_round - 1) / rounds
    if schedule == "ramp":
        return alpha * min(1.0, progress)
    if schedule == "decay":
        return alpha * max(0.0, 1.0 - progress)
    raise ValueError(f"unknown kd.schedule {schedule!r} (options: constant, ramp, decay)")


def teacher_round(server_round: int, refresh_every: int) -> int:
    """The global round whose model teaches in `server_round`: the latest multiple of k not after
    the round of the model just received (`server_round - 1`; round 0 is the initial model)."""
    return (server_round - 1) // refresh_every * refresh_every


def ema_update(teacher: nn.Module, student: nn.Module, keys: list[str], decay: float) -> Callable[[], None]:
    """A step that moves the teacher's state (`keys`) towards the student's dequantized state."""
    teacher_state = teacher.state_dict()

    def step() -> None:
        for key, value in dequantized_state(student, keys).items():
            teacher_state[key].lerp_(value, 1.0 - decay)

    return step


class FedMPQKDClient(HistoryTeacherClient, FedMPQClient):
    """A FedMPQ client that adds distillation from a full-precision teacher to its objective, weighted
    by the round's alpha_t (`kd_alpha` in the fit instructions)."""

    def teacher_source(self, model: nn.Module, server_round: int) -> tuple[nn.Module, int] | None:
        """The float model to distil from and its (newest) global round: the one just received, the
        one this node kept from the latest refresh round (`kd.refresh_every`; a node that missed that
        round refreshes at its next round instead), or the history teacher the server sent with the
        global model (None in a round without one)."""
        refresh_every = self.config["kd"]["refresh_every"]
        received = server_round - 1
        if self.config["kd"]["teacher"] == "history":
            teacher = self.teacher_model(model)
            return None if teacher is None else (teacher, max(self.teacher_rounds))
        if refresh_every == 1:
            return model, received
        weights_key = f"kd.teacher.partition_{self.partition_id}"
        round_key = f"kd.teacher_round.partition_{self.partition_id}"
        if weights_key not in self.state or int(self.state[round_key]["round"]) < teacher_round(
            server_round, refresh_every
        ):
            self.state[weights_key] = ArrayRecord(get_weights(model))
            self.state[round_key] = ConfigRecord({"round": received})
            return model, received
        kept = copy.deepcopy(model)
        set_weights(kept, self.state[weights_key].to_numpy_ndarrays())
        return kept, int(self.state[round_key]["round"])

    def extension(self, model: nn.Module, student: nn.Module, config: dict[str, Any]) -> ObjectiveExtension | None:
        kd_cfg = self.config["kd"]
        source = self.teacher_source(model, int(config["server_round"]))
        if source is None:
            return None  # no teacher this round: FedMPQ's objective
        source_model, source_round = source
        updating = kd_cfg["teacher"] == "updating"
        distillation = TeacherDistillation(
            inference_teacher(source_model, fold_batchnorm=not updating),
            float(config.get(KD_ALPHA, kd_cfg["alpha"])),  # sent under a ramp or decay schedule
            kd_cfg["temperature"],
            kd_cfg["gate"],
        )

        def terms(images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
            return distillation.terms(images, logits, labels)

        def report(metrics: dict[str, Any]) -> None:
            distillation.report(metrics)
            metrics["teacher_round"] = source_round

        return ObjectiveExtension(
            terms=terms,
            after_step=ema_update(distillation.teacher, student, communicated_keys(model), kd_cfg["ema_decay"])
            if updating
            else None,
            report=report,
        )

    def train(
        self, model: nn.Module, loader: ClientBatches, config: dict[str, Any], seed: int
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        weights, metrics = super().train(model, loader, config, seed)
        metrics.setdefault("teacher_flops", 0.0)  # a round without a teacher costs no teacher FLOPs
        return weights, metrics


class FedMPQKDStrategy(HistoryTeacherStrategy, FedMPQStrategy):
    """FedMPQ's server; with `kd.teacher: history` it also keeps the last `kd.history` global models
    and sends their average with the global model. Otherwise the teacher stays on the client."""

    def __init__(self, config: dict[str, Any], recorder: RunRecorder) -> None:
        super().__init__(config, recorder)
        kd_cfg = config["kd"]
        self.history = ModelHistory(kd_cfg["history"]) if kd_cfg["teacher"] == "history" else None

    def alpha(self, server_round: int) -> float:
        """The distillation weight of `server_round` (`kd.alpha` under `kd.schedule`)."""
        kd_cfg = self.config["kd"]
        return scheduled_alpha(kd_cfg["alpha"], kd_cfg["schedule"], kd_cfg["schedule_rounds"], server_round)

    def fit_config(self, server_round: int, partition_id: int) -> dict[str, Scalar]:
        """FedMPQ's instructions, plus alpha_t under a `ramp` or `decay` schedule (with `constant` the
        client's `kd.alpha` is the weight, and FedMPQ-KD sends exactly FedMPQ's messages)."""
        config = super().fit_config(server_round, partition_id)
        if self.config["kd"]["schedule"] == "constant":
            return config
        return {**config, KD_ALPHA: self.alpha(server_round)}

    def round_extra(self, server_round: int) -> dict[str, Any]:
        """FedMPQ's fields, the round's alpha_t and the participants' sample-weighted `kd_gate_mean`."""
        fit = self.current.fit if self.current is not None else None
        return {
            **super().round_extra(server_round),
            KD_ALPHA: self.alpha(server_round),
            **round_gate_mean(fit.fields.get("clients", []) if fit is not None else []),
        }
