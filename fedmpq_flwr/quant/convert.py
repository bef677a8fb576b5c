"""Model-level quantization: which layers are quantized, conversion, regularizer, pruning.

What is quantized is the model's own declaration: a model with a `quant_rules()` method returns a
`QuantRules` (plain data: module names), which says which Conv2d/Linear layers go to bit planes,
which stay float (shortcuts, a patch embedding...) and which activation modules are replaced by
which activation quantizer. Everything that is not a Conv2d/Linear layer (BatchNorm, LayerNorm,
embeddings, class tokens) always stays float. Every model of the registry declares its rules.

A model that declares nothing (an ad-hoc `nn.Sequential`, a test module) gets `inferred_rules`:
every Conv2d/Linear quantized except those inside a module named `downsample` or `shortcut`,
every `nn.ReLU` replaced by the ReLU6-style quantizer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from fedmpq_flwr.quant.activations import ACTIVATION_QUANTIZERS
from fedmpq_flwr.quant.bitplanes import BitTensor, QuantConv2d, QuantLayer, QuantLinear, bit_tensors

SHORTCUT_NAMES = frozenset({"downsample", "shortcut"})


@dataclass(frozen=True)
class QuantRules:
    """A model's quantization rules, by module name (as in `model.named_modules()`).

    layers:       Conv2d/Linear modules whose weight and bias are stored as bit planes.
    float_layers: Conv2d/Linear modules that deliberately stay float (e.g. 1x1 shortcuts).
                  Together the two lists must name every Conv2d/Linear of the model exactly once,
                  so a layer added to a model without a rule is an error, not a silent choice.
    activations:  activation module -> kind of activation quantizer that replaces it (a key of
                  `ACTIVATION_QUANTIZERS`: "relu6" = clip to [0, 6], unsigned N-bit per-sample
                  max scaling). Activations not named here stay float.
    """

    layers: tuple[str, ...]
    float_layers: tuple[str, ...] = ()
    activations: dict[str, str] = field(default_factory=dict)


def _on_shortcut(name: str) -> bool:
    return any(part in SHORTCUT_NAMES for part in name.split("."))


def inferred_rules(model: nn.Module) -> QuantRules:
    """The rules of a model that declares none (see the module docstring)."""
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return QuantRules(
        layers=tuple(n for n in layers if not _on_shortcut(n)),
        float_layers=tuple(n for n in layers if _on_shortcut(n)),
        activations={n: "relu6" for n, m in model.named_modules() if isinstance(m, nn.ReLU)},
    )


def quant_rules(model: nn.Module) -> QuantRules:
    """The model's declared rules (`model.quant_rules()`), checked against the model; for a model
    that declares none, `inferred_rules(model)`."""
    declare = getattr(model, "quant_rules", None)
    rules = declare() if callable(declare) else inferred_rules(model)
    modules = dict(model.named_modules())
    weighted = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
    declared = list(rules.layers) + list(rules.float_layers)
    twice = sorted({n for n in declared if declared.count(n) > 1})
    not_layers = sorted(set(declared) - set(weighted))
    undeclared = [n for n in weighted if n not in declared]
    if twice or not_layers or undeclared:
        raise ValueError(
            f"{type(model).__name__}'s quantization rules do not match its layers "
            f"(named twice {twice}, not Conv2d/Linear layers {not_layers}, without a rule {undeclared})"
        )
    for name, kind in rules.activations.items():
        if name not in modules or not name:
            raise ValueError(f"{type(model).__name__}'s quantization rules name a missing activation {name!r}")
        if kind not in ACTIVATION_QUANTIZERS:
            raise ValueError(
                f"activation {name!r} asks for an unknown quantizer {kind!r} "
                f"(known: {', '.join(ACTIVATION_QUANTIZERS)})"
            )
    return rules


def quantizable_layers(model: nn.Module) -> dict[str, int]:
    """Name -> parameter count (weight + bias) of every layer FedMPQ quantizes (the model's
    `QuantRules.layers`), in model order."""
    quantized = set(quant_rules(model).layers)
    return {
        name: sum(p.numel() for p in module.parameters(recurse=False))
        for name, module in model.named_modules()
        if name in quantized
    }


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def quantize_model(model: nn.Module, bits: dict[str, int], act_bits: int = 4) -> nn.Module:
    """A quantized copy of `model` following its `quant_rules`: each quantized layer converted to
    `bits[name]` bit planes, each declared activation replaced by its `act_bits` activation
    quantizer. `model` is untouched."""
    rules = quant_rules(model)
    expected = set(rules.layers)
    if set(bits) != expected:
        missing, extra = sorted(expected - set(bits)), sorted(set(bits) - expected)
        raise ValueError(f"bit assignment does not match the model's layers (missing {missing}, unknown {extra})")
    quantized = copy.deepcopy(model)
    for name, module in list(quantized.named_modules()):
        if name in bits:
            layer_cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
            _replace(quantized, name, layer_cls(module, bits[name]))
        elif name in rules.activations:
            _replace(quantized, name, ACTIVATION_QUANTIZERS[rules.activations[name]](act_bits))
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
