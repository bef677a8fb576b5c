"""Distillation building blocks shared by the methods that distil (plain PyTorch, no Flower)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.optimization import fuse


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`, averaged over the batch (Hinton et al., 2015):
    the T^2 keeps its gradient on the scale of the cross-entropy's as T changes."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_student, teacher, reduction="batchmean") * temperature**2


def inference_teacher(model: nn.Module, fold_batchnorm: bool = True) -> nn.Module:
    """A copy of the float model for inference only: eval mode, no gradients, channels-last memory
    and (unless its weights will change) BatchNorm folded into the preceding layer with torch.fx.
    The same logits up to float rounding at about 80 % of the cost of a plain `no_grad` forward on
    CPU (experiments/bench_kd_step.py: 0.106 s against 0.131 s, ResNet-20, batch 64, one thread)."""
    teacher = copy.deepcopy(model).eval()
    if fold_batchnorm:
        teacher = fuse(teacher, inplace=True)
    return teacher.to(memory_format=torch.channels_last).requires_grad_(False)
