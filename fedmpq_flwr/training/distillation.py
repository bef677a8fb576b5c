"""Distillation building blocks shared by the methods that distil (plain PyTorch, no Flower)."""

from __future__ import annotations

import copy
from collections import Counter
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
from torch.utils.flop_counter import FlopCounterMode

# (layer, BatchNorm) pairs that fold, as in torch.fx.experimental.optimization.fuse
_FOLDABLE: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
    nn.Linear: nn.BatchNorm1d,
}


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """`T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`, averaged over the batch (Hinton et al., 2015):
    the T^2 keeps its gradient on the scale of the cross-entropy's as T changes. With per-sample
    `weights` w_i it is `T^2 * mean_i(w_i * KL_i)`, summed in the same order as the unweighted loss,
    so weights that are all 1 give it bit for bit."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.softmax(teacher_logits / temperature, dim=1)
    if weights is None:
        return F.kl_div(log_student, teacher, reduction="batchmean") * temperature**2
    pointwise = F.kl_div(log_student, teacher, reduction="none")
    return (pointwise * weights[:, None]).sum() / student_logits.shape[0] * temperature**2


def gate_weights(teacher_logits: torch.Tensor, labels: torch.Tensor | None, gate: str) -> torch.Tensor:
    """Per-sample weight w_i of the distillation term (`kd.gate`, `gkd.gate`), so that a teacher that is
    wrong on a sample teaches it less (FedKD, Wu et al., 2022, scales distillation by the teacher's
    correctness): `none` 1; `correct` 1 where the teacher's top class is the label, else 0;
    `confidence` the teacher's probability of the label at temperature 1. No gradient flows through
    w_i (the teacher's logits carry none)."""
    if gate == "none":
        return torch.ones(teacher_logits.shape[0], dtype=teacher_logits.dtype, device=teacher_logits.device)
    if labels is None:
        raise ValueError(f"the distillation gate {gate!r} needs the batch's labels")
    if gate == "correct":
        return (teacher_logits.argmax(dim=1) == labels).to(teacher_logits.dtype)
    if gate == "confidence":
        return F.softmax(teacher_logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    raise ValueError(f"unknown distillation gate {gate!r} (options: none, correct, confidence)")


def round_gate_mean(clients: list[dict[str, Any]]) -> dict[str, float]:
    """`kd_gate_mean` of a round: the participants' means weighted by their sample counts, i.e. the
    share of the round's training samples distilled (empty when a participant reports none, as in a
    round without a teacher)."""
    if not clients or any("kd_gate_mean" not in client for client in clients):
        return {}
    total = sum(client["num_examples"] for client in clients)
    return {"kd_gate_mean": sum(client["kd_gate_mean"] * client["num_examples"] for client in clients) / total}


def fold_batchnorm_(model: nn.Module) -> nn.Module:
    """Fold, in place, every BatchNorm whose input is the output of a convolution or Linear used
    by nothing else into that layer, and replace the BatchNorm by `nn.Identity` (the model must be
    in eval mode). The data flow comes from a torch.fx trace, but the model stays its own class:
    `torch.fx.experimental.optimization.fuse` would return a `GraphModule`, and torch.fx keeps the
    generated source of every `GraphModule` in `linecache` for the life of the process, which a
    client building a teacher every round would accumulate (docs/measurements.md). A layer or
    BatchNorm called more than once in the forward is left as it is."""
    graph = fx.Tracer().trace(model)  # only the graph: no code is generated
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    for node in graph.nodes:
        layer_node = node.args[0] if node.op == "call_module" and node.args else None
        if not isinstance(layer_node, fx.Node) or layer_node.op != "call_module" or len(layer_node.users) > 1:
            continue
        layer, bn = modules[layer_node.target], modules[node.target]
        if _FOLDABLE.get(type(layer)) is not type(bn) or not bn.track_running_stats:
            continue
        if calls[layer_node.target] > 1 or calls[node.target] > 1:
            continue
        fold = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
        model.set_submodule(layer_node.target, fold(layer, bn))
        model.set_submodule(node.target, nn.Identity())
    return model


def inference_teacher(model: nn.Module, fold_batchnorm: bool = True) -> nn.Module:
    """A copy of the float model for inference only: eval mode, no gradients, channels-last memory
    and (unless its weights will change) BatchNorm folded into the preceding layer
    (`fold_batchnorm_`). The same logits up to float rounding at about 80 % of the cost of a plain
    `no_grad` forward on CPU (experiments/bench/kd_teacher_cost.py: 0.106 s against 0.131 s, ResNet-20,
    batch 64, one thread; measured with torch.fx's `fuse`, which folds the same convolutions)."""
    teacher = copy.deepcopy(model).eval()
    if fold_batchnorm:
        fold_batchnorm_(teacher)
    return teacher.to(memory_format=torch.channels_last).requires_grad_(False)


class TeacherDistillation:
    """The distillation term a client adds to its loss, `weight * T^2 * mean_i(w_i * KL_i(teacher ||
    student))` on the student's own (augmented) batch, for the methods that distil from a float teacher
    (FedMPQ-KD, FedGKD); w_i comes from `gate` (`gate_weights`; all 1 for `none`). `terms` also returns
    what the analyzer plots: `kd_loss` (the term before `weight`) and `agreement` (share of equal
    top-1 predictions). The teacher's forward FLOPs are counted on the first batch (the same for every
    step); `report` moves them, times the steps, from `train_flops` (which `train.train_epochs`
    measures around whole steps) to `teacher_flops`, and adds `kd_gate_mean`, the mean w_i over every
    sample trained on."""

    def __init__(self, teacher: nn.Module, weight: float, temperature: float, gate: str = "none") -> None:
        self.teacher = teacher  # an `inference_teacher`
        self.weight = weight
        self.temperature = temperature
        self.gate = gate
        self.step_flops: int | None = None
        self.gate_sum: torch.Tensor | float = 0.0  # summed on the device: no sync per step
        self.samples = 0

    def terms(
        self, images: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """`loss` (the weighted term to add), `kd_loss` and `agreement` on one batch (`labels`: needed by
        the gates `correct` and `confidence`)."""
        counting = self.step_flops is None
        with torch.inference_mode(), FlopCounterMode(display=False) if counting else nullcontext() as counter:
            teacher_logits = self.teacher(images.contiguous(memory_format=torch.channels_last))
        if counting:
            self.step_flops = counter.get_total_flops()
        teacher_logits = teacher_logits.clone()  # a normal tensor: autograd may save it
        weights = gate_weights(teacher_logits, labels, self.gate)
        self.gate_sum = self.gate_sum + weights.sum()
        self.samples += weights.shape[0]
        kd_loss = distillation_loss(
            student_logits, teacher_logits, self.temperature, None if self.gate == "none" else weights
        )
        agreement = (student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).float().mean()
        return {"loss": self.weight * kd_loss, "kd_loss": kd_loss, "agreement": agreement}

    def report(self, metrics: dict[str, Any]) -> None:
        """`teacher_flops` = the teacher's FLOPs per step times the steps, taken out of `train_flops`;
        `kd_gate_mean` = the mean gate weight over the samples trained on."""
        teacher_flops = float(self.step_flops * metrics["steps"]) if self.step_flops is not None else 0.0
        metrics.update(teacher_flops=teacher_flops, train_flops=metrics["train_flops"] - teacher_flops)
        if self.samples:
            metrics["kd_gate_mean"] = float(self.gate_sum) / self.samples
