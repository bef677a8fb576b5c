"""Activation quantization: ReLU6-style clipping, per-sample max-abs scaling, N-bit rounding, STE.

The scale is the maximum of each sample's clipped activation, so a sample's quantized activations
do not depend on which other samples share its batch (training and evaluation agree).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

CLIP = 6.0


class _RoundToSampleMax(torch.autograd.Function):
    """Round each sample to 2^N - 1 levels of its own maximum; straight-through gradient."""

    @staticmethod
    def forward(ctx, clipped: torch.Tensor, bits: int) -> torch.Tensor:  # type: ignore[override]
        dims = tuple(range(1, clipped.dim()))
        step = clipped.amax(dim=dims, keepdim=True).clamp_min_(1e-8).div_(float((1 << bits) - 1))
        return (clipped / step).round_().mul_(step)  # in place: one fresh tensor, not three

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


class QuantReLU(nn.Module):
    """Drop-in replacement of `nn.ReLU6` (and of `nn.ReLU`, which it clips at 6) that outputs
    `bits`-bit unsigned activations. The gradient passes where the input lies inside (0, 6), as
    ReLU6's (hardtanh's backward)."""

    def __init__(self, bits: int = 4) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RoundToSampleMax.apply(F.hardtanh(x, 0.0, CLIP), self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


# The activation quantizers a model's `QuantRules.activations` may ask for: kind -> factory(bits).
ACTIVATION_QUANTIZERS: dict[str, Callable[[int], nn.Module]] = {"relu6": QuantReLU}
