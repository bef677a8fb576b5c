"""What every registry model shares: its quantization rules are declared by module, not by name."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from fedmpq_flwr.quant import QuantRules


def rules_by_module(
    model: nn.Module,
    layers: Iterable[nn.Module],
    float_layers: Iterable[nn.Module] = (),
    activations: Iterable[tuple[nn.Module, str]] = (),
) -> QuantRules:
    """`QuantRules` from the modules themselves: a model lists its layers as objects (so a renamed
    attribute cannot silently change what is quantized) and this turns them into module names."""
    names = {id(module): name for name, module in model.named_modules()}
    return QuantRules(
        layers=tuple(names[id(m)] for m in layers),
        float_layers=tuple(names[id(m)] for m in float_layers),
        activations={names[id(m)]: kind for m, kind in activations},
    )
