"""Model-level quantization: which layers are quantized, conversion, regularizer, pruning.

Works for any model built from Conv2d/Linear layers: every such layer is quantized except those
on a shortcut path (a module named `downsample` or `shortcut`, as the 1x1 shortcuts of ResNet-20);
BatchNorm stays float; every `nn.ReLU` becomes a 4-bit `QuantReLU`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fedmpq_flwr.quant.activations import QuantReLU
from fedmpq_flwr.quant.bitplanes import BitTensor, QuantConv2d, QuantLayer, QuantLinear, bit_tensors

SHORTCUT_NAMES = frozenset({"downsample", "shortcut"})


def _on_shortcut(name: str) -> bool:
    return any(part in SHORTCUT_NAMES for part in name.split("."))


def quantizable_layers(model: nn.Module) -> dict[str, int]:
    """Name -> parameter count (weight + bias) of every layer FedMPQ quantizes, in model order."""
    return {
        name: sum(p.numel() for p in module.parameters(recurse=False))
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not _on_shortcut(name)
    }


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def quantize_model(model: nn.Module, bits: dict[str, int], act_bits: int = 4) -> nn.Module:
    """A quantized copy of `model`: each layer of `quantizable_layers` converted to `bits[name]`
    bit planes, each ReLU replaced by an `act_bits` activation quantizer. `model` is untouched."""
    expected = quantizable_layers(model)
    if set(bits) != set(expected):
        missing, extra = sorted(set(expected) - set(bits)), sorted(set(bits) - set(expected))
        raise ValueError(f"bit assignment does not match the model's layers (missing {missing}, unknown {extra})")
    quantized = copy.deepcopy(model)
    for name, module in list(quantized.named_modules()):
        if name in bits:
            layer_cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
            _replace(quantized, name, layer_cls(module, bits[name]))
        elif isinstance(module, nn.ReLU):
            _replace(quantized, name, QuantReLU(act_bits))
    return quantized


def quant_layers(qmodel: nn.Module) -> dict[str, QuantLayer]:
    """Name -> quantized layer of a model made by `quantize_model`."""
    return {name: m for name, m in qmodel.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}


def layer_bits(qmodel: nn.Module) -> dict[str, int]:
    """Current per-layer bit-width (pruning may have lowered it)."""
    return {name: layer.weight_bits.bits for name, layer in quant_layers(qmodel).items()}


def all_bit_tensors(qmodel: nn.Module) -> list[BitTensor]:
    return [m for m in qmodel.modules() if isinstance(m, BitTensor)]


def quantized_param_count(qmodel: nn.Module) -> int:
    """Number of weights stored in bit planes (the normaliser of the bit regularizer)."""
    return sum(t.sign.numel() for t in all_bit_tensors(qmodel))


def bit_regularizer(qmodel: nn.Module) -> torch.Tensor:
    """Group Lasso over bit planes with BSQ's memory reweighting:
    sum over tensors of (N x numel) * sum over planes of ||plane||_2."""
    terms = [t.bits * t.sign.numel() * t.planes.flatten(1).norm(dim=1).sum() for t in all_bit_tensors(qmodel)]
    return torch.stack(terms).sum()


@torch.no_grad()
def rebinarize_model(qmodel: nn.Module, generator: torch.Generator | None = None) -> None:
    """Put every quantized weight back on its N-bit grid (call after each optimizer step)."""
    for tensor in all_bit_tensors(qmodel):
        tensor.rebinarize(generator)


@torch.no_grad()
def prune_model(qmodel: nn.Module, thre: float) -> dict[str, int]:
    """Prune sparse planes layer by layer (decided on the weight; the bias drops the same planes,
    so a layer keeps one bit-width); return the bits removed per layer."""
    removed: dict[str, int] = {}
    for name, layer in quant_layers(qmodel).items():
        msb, lsb = layer.weight_bits.sparse_planes(thre)
        for tensor in bit_tensors(layer):
            tensor.drop_planes(msb, lsb)
        removed[name] = msb + lsb
    return removed


def tensors_by_state_key(qmodel: nn.Module) -> dict[str, BitTensor]:
    """State key of the float model (`layer.weight`, `layer.bias`) -> its BitTensor."""
    tensors: dict[str, BitTensor] = {}
    for name, layer in quant_layers(qmodel).items():
        tensors[f"{name}.weight"] = layer.weight_bits
        if layer.bias_bits is not None:
            tensors[f"{name}.bias"] = layer.bias_bits
    return tensors


@torch.no_grad()
def dequantized_state(qmodel: nn.Module, float_keys: list[str]) -> dict[str, torch.Tensor]:
    """The float model's state entries (`float_keys`) that the quantized model represents:
    dequantized weights and biases of the quantized layers, the other entries as they are."""
    quantized = tensors_by_state_key(qmodel)
    state = qmodel.state_dict()
    return {key: quantized[key].dequantize() if key in quantized else state[key] for key in float_keys}
