"""Model <-> list-of-ndarrays conversion: what travels between server and clients."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def communicated_keys(model: nn.Module) -> list[str]:
    """State entries that are sent: every floating tensor (BatchNorm counters stay local)."""
    return [key for key, value in model.state_dict().items() if value.is_floating_point()]


def trainable_mask(model: nn.Module) -> list[bool]:
    """Per `communicated_keys` entry: True for a trainable parameter (conv/linear weights and biases,
    BatchNorm affine weights), False for buffers (BatchNorm running statistics). FedPAQ quantizes
    the True entries; q-FFL applies its step to them and averages the others as FedAvg."""
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    return [key in trainable for key in communicated_keys(model)]


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's communicated state as float32 numpy arrays, in `communicated_keys` order."""
    state = model.state_dict()
    return [state[key].detach().cpu().numpy().astype(np.float32, copy=True) for key in communicated_keys(model)]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load arrays produced by `get_weights` (of a model of the same architecture)."""
    keys = communicated_keys(model)
    if len(keys) != len(weights):
        raise ValueError(f"expected {len(keys)} weight arrays for this model, got {len(weights)}")
    state = model.state_dict()
    with torch.no_grad():
        for key, array in zip(keys, weights):
            state[key].copy_(torch.from_numpy(np.asarray(array)).reshape(state[key].shape))
