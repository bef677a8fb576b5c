"""FedMPQ-KD: FedMPQ whose clients distil, within the round, from a full-precision teacher.

Local objective: `CE + lambda_b * reg / total_params + alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`,
where z_s are the quantized student's logits and z_t those of a full-precision copy of the global
model the client received, on the same augmented batch. The teacher never leaves the client, so
uploads, bit allocation, aggregation and bit counting are FedMPQ's: the strategy is
`FedMPQStrategy` itself.

Ablations (`kd.*` config keys): `alpha` and `temperature`; `teacher: updating` (the teacher follows
an EMA of the student's dequantized weights during local training); `refresh_every: k` (the
teacher is the global model of the latest round that is a multiple of k, kept in the node's
Flower `context.state` under `kd.teacher.partition_<id>`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from flwr.common import ArrayRecord, ConfigRecord
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedmpq_flwr.distillation import distillation_loss, inference_teacher
from fedmpq_flwr.methods.fedmpq import FedMPQClient, FedMPQStrategy, ObjectiveExtension
from fedmpq_flwr.quant import dequantized_state
from fedmpq_flwr.weights import communicated_keys, get_weights, set_weights

__all__ = ["FedMPQKDClient", "FedMPQStrategy"]  # the server is FedMPQ's: the teacher stays on the client


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


class FedMPQKDClient(FedMPQClient):
    """A FedMPQ client that adds distillation from a full-precision teacher to its objective."""

    def teacher_source(self, model: nn.Module, server_round: int) -> tuple[nn.Module, int]:
        """The float model to distil from and its global round: the one just received, or the one
        this node kept from the latest refresh round (`kd.refresh_every`). A node that missed that
        round (partial participation) refreshes at its next round instead."""
        refresh_every = self.config["kd"]["refresh_every"]
        received = server_round - 1
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

    def extension(self, model: nn.Module, student: nn.Module, config: dict[str, Any]) -> ObjectiveExtension:
        kd_cfg = self.config["kd"]
        alpha, temperature = kd_cfg["alpha"], kd_cfg["temperature"]
        source, source_round = self.teacher_source(model, int(config["server_round"]))
        updating = kd_cfg["teacher"] == "updating"
        teacher = inference_teacher(source, fold_batchnorm=not updating)

        teacher_step_flops: list[int] = []  # measured on the first step (the same for every step)

        def terms(images: torch.Tensor, student_logits: torch.Tensor) -> dict[str, torch.Tensor]:
            counting = not teacher_step_flops
            with torch.inference_mode(), FlopCounterMode(display=False) if counting else nullcontext() as counter:
                teacher_logits = teacher(images.contiguous(memory_format=torch.channels_last))
            if counting:
                teacher_step_flops.append(counter.get_total_flops())
            teacher_logits = teacher_logits.clone()  # a normal tensor: autograd may save it
            kd_loss = distillation_loss(student_logits, teacher_logits, temperature)
            agreement = (student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).float().mean()
            return {"loss": alpha * kd_loss, "kd_loss": kd_loss, "agreement": agreement}

        def report(metrics: dict[str, Any]) -> None:
            """The teacher's FLOPs, taken out of the training FLOPs (measured around whole steps)."""
            teacher_flops = float(teacher_step_flops[0] * metrics["steps"]) if teacher_step_flops else 0.0
            metrics.update(
                teacher_round=source_round,
                teacher_flops=teacher_flops,
                train_flops=metrics["train_flops"] - teacher_flops,
            )

        return ObjectiveExtension(
            terms=terms,
            after_step=ema_update(teacher, student, communicated_keys(model), kd_cfg["ema_decay"])
            if updating
            else None,
            report=report,
        )
