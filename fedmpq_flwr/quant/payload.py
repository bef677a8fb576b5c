"""What a quantized client uploads and how the server reads it back.

The upload is, in the float model's `communicated_keys` order, one array per state entry: the
signed integer codes (int16) of every quantized weight and bias, float32 for everything else
(BatchNorm, shortcut convolutions), then one float32 array with the scales of the quantized
tensors in the same order. A code c of an N-bit tensor with scale S stands for S * c / (2^N - 1).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedmpq_flwr.quant.bitplanes import levels
from fedmpq_flwr.quant.convert import tensors_by_state_key

FLOAT_BITS = 32


def _layer_of(key: str, bits: dict[str, int]) -> str | None:
    """The quantized layer a state key belongs to (its weight or bias), else None."""
    layer, _, leaf = key.rpartition(".")
    return layer if layer in bits and leaf in ("weight", "bias") else None


@torch.no_grad()
def encode_update(qmodel: nn.Module, float_keys: list[str]) -> list[np.ndarray]:
    """The arrays a client sends: codes for quantized tensors, float32 for the rest, then scales."""
    quantized = tensors_by_state_key(qmodel)
    state = qmodel.state_dict()
    arrays, scales = [], []
    for key in float_keys:
        if key in quantized:
            arrays.append(quantized[key].signed_codes().cpu().numpy().astype(np.int16))
            scales.append(float(quantized[key].scale))
        else:
            arrays.append(state[key].detach().cpu().numpy().astype(np.float32))
    return arrays + [np.asarray(scales, dtype=np.float32)]


def _split(
    arrays: list[np.ndarray], float_keys: list[str], bits: dict[str, int]
) -> tuple[list[np.ndarray], np.ndarray]:
    *tensors, scales = arrays
    expected_scales = sum(_layer_of(key, bits) is not None for key in float_keys)
    if len(tensors) != len(float_keys) or scales.size != expected_scales:
        raise ValueError(
            f"quantized upload has {len(tensors)} tensors and {scales.size} scales; "
            f"expected {len(float_keys)} and {expected_scales}"
        )
    return tensors, scales


def decode_update(arrays: list[np.ndarray], float_keys: list[str], bits: dict[str, int]) -> list[np.ndarray]:
    """The float32 weights an upload represents (what the server averages)."""
    tensors, scales = _split(arrays, float_keys, bits)
    decoded, scale_index = [], 0
    for key, array in zip(float_keys, tensors):
        layer = _layer_of(key, bits)
        if layer is None:
            decoded.append(np.asarray(array, dtype=np.float32))
            continue
        value = float(scales[scale_index]) * array.astype(np.float64) / levels(bits[layer])
        decoded.append(value.astype(np.float32))
        scale_index += 1
    return decoded


def upload_bits(arrays: list[np.ndarray], float_keys: list[str], bits: dict[str, int]) -> int:
    """Exact size of an upload: N bits per quantized weight, 32 per float (scales included)."""
    tensors, scales = _split(arrays, float_keys, bits)
    total = FLOAT_BITS * int(scales.size)
    for key, array in zip(float_keys, tensors):
        layer = _layer_of(key, bits)
        total += int(array.size) * (bits[layer] if layer is not None else FLOAT_BITS)
    return total
