"""Loss-landscape snapshots (Li et al., "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018):
test loss and accuracy of a model moved over a 2-D grid along two filter-normalized random directions,
and along the straight line from another set of weights (a quantized model's, dequantized) to its own.

A direction holds one tensor per parameter with more than one dimension (convolution and linear weights,
embeddings), drawn from N(0, 1) with a seeded CPU generator (the same numbers on every device) and scaled
filter by filter (slices along dimension 0: output channels, or a linear layer's rows) to the norm of the
weight's filter, so that a step of 1 moves every filter by its own size and the landscapes of differently
scaled networks compare. Biases and normalisation parameters (BatchNorm, LayerNorm: the one-dimensional
parameters) get no direction, the paper's recommended setting: BatchNorm undoes a filter's scale, and a
step that also moved its affine parameters would mix a second effect into the picture. Buffers (running
statistics) never move, and every point is evaluated in eval mode with them. Plain PyTorch.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fedmpq_flwr.training.loop import EvalBatches, loss_and_accuracy

Direction = dict[str, torch.Tensor]  # parameter name -> a tensor of its shape (none for 1-D parameters)


def grid_coordinates(points: int) -> np.ndarray:
    """`points` (odd) evenly spaced steps over [-1, 1], the middle one exactly 0 (the model itself)."""
    half = points // 2
    return np.arange(-half, half + 1, dtype=np.float64) / half


def line_coordinates(points: int) -> np.ndarray:
    """`points` evenly spaced interpolation weights from 0 (the start weights) to 1 (the model's own)."""
    return np.arange(points, dtype=np.float64) / (points - 1)


@torch.no_grad()
def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> Direction:
    """A random direction with, for every filter of every weight of more than one dimension, the norm of
    that filter (Li et al., section 4); drawn on the CPU from `generator`, placed like the weights."""
    direction: Direction = {}
    for name, weight in model.named_parameters():
        if weight.dim() <= 1:
            continue
        draw = torch.randn(weight.shape, generator=generator, dtype=torch.float32).to(weight.device, weight.dtype)
        filter_norms = weight.detach().flatten(1).norm(dim=1)
        draw_norms = draw.flatten(1).norm(dim=1).clamp_min(torch.finfo(draw.dtype).tiny)
        direction[name] = draw * (filter_norms / draw_norms).view(-1, *([1] * (weight.dim() - 1)))
    return direction


def random_directions(model: nn.Module, seed: int) -> tuple[Direction, Direction]:
    """The two directions of a snapshot, drawn one after the other from one generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return filter_normalized_direction(model, generator), filter_normalized_direction(model, generator)


@torch.no_grad()
def loss_grid(
    model: nn.Module,
    directions: tuple[Direction, Direction],
    coordinates: Sequence[float],
    batches: EvalBatches,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy [i, j] of the model's weights plus coordinates[i] x first direction plus
    coordinates[j] x second, over `batches` in eval mode (a copy of the model moves; `model` does not)."""
    first, second = directions
    probe = copy.deepcopy(model).to(device)
    parameters = dict(probe.named_parameters())
    origin = {name: parameters[name].detach().clone() for name in first}
    size = len(coordinates)
    loss, accuracy = np.empty((size, size)), np.empty((size, size))
    for i, a in enumerate(coordinates):
        for j, b in enumerate(coordinates):
            for name, weight in origin.items():
                parameters[name].copy_(weight + float(a) * first[name] + float(b) * second[name])
            loss[i, j], accuracy[i, j] = loss_and_accuracy(probe, batches, device)
    return loss, accuracy


@torch.no_grad()
def loss_line(
    model: nn.Module,
    start: dict[str, torch.Tensor],
    coordinates: Sequence[float],
    batches: EvalBatches,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy at each weight t of `coordinates` on the straight line from `start` (t = 0:
    parameters by name, e.g. a quantized model's dequantized weights) to the model's own parameters
    (t = 1); parameters `start` does not name stay the model's. A copy moves; `model` does not."""
    probe = copy.deepcopy(model).to(device)
    parameters = dict(probe.named_parameters())
    own = {name: parameters[name].detach().clone() for name in start}
    begin = {name: start[name].to(device, own[name].dtype) for name in start}
    loss, accuracy = np.empty(len(coordinates)), np.empty(len(coordinates))
    for k, t in enumerate(coordinates):
        for name, end in own.items():
            parameters[name].copy_(torch.lerp(begin[name], end, float(t)))  # exact at both ends
        loss[k], accuracy[k] = loss_and_accuracy(probe, batches, device)
    return loss, accuracy
