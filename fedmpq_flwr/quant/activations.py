"""Activation quantization: ReLU6-style clipping, per-sample max-abs scaling, N-bit rounding, STE.

The scale is the maximum of each sample's clipped activation, so a sample's quantized activations
do not depend on which other samples share its batch (training and evaluation agree).
"""

from __future__ import annotations

import torch
from torch import nn

CLIP = 6.0


class _QuantReLU(torch.autograd.Function):
    """Forward: clip to [0, 6] and round to 2^N - 1 levels of the sample's max; backward: STE
    (gradient passes where the input was inside the clipping range)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int) -> torch.Tensor:  # type: ignore[override]
        clipped = x.clamp(0.0, CLIP)
        dims = tuple(range(1, x.dim()))
        top = float((1 << bits) - 1)
        step = clipped.amax(dim=dims, keepdim=True).clamp_min(1e-8) / top
        ctx.save_for_backward((x > 0) & (x < CLIP))
        return torch.round(clipped / step) * step

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None


class QuantReLU(nn.Module):
    """Drop-in replacement of `nn.ReLU` that outputs `bits`-bit activations."""

    def __init__(self, bits: int = 4) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QuantReLU.apply(x, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
