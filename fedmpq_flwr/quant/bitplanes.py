"""Weights stored as bit planes (BSQ / FedMPQ): `w = S * sign * q_N(sum_i b_i 2^(N-1-i) / (2^N - 1))`.

`b_0` is the most significant plane. Between optimizer steps every plane holds 0/1 digits, so
every weight is exactly an N-bit number; during a step the optimizer moves the planes as floats
and `rebinarize` rounds the value they encode back to the N-bit grid.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from fedmpq_flwr.quant.allocation import MAX_BITS, MIN_BITS


def levels(bits: int) -> int:
    """Largest N-bit magnitude code: 2^N - 1."""
    return (1 << bits) - 1


@functools.lru_cache(maxsize=64)
def plane_values(bits: int, device: torch.device | None = None) -> torch.Tensor:
    """2^(N-1-i) for plane i: what a set digit in plane i is worth (plane 0 most significant).
    Cached: built once per (bits, device), not on every forward pass; always a normal tensor (even
    when first asked for under `torch.inference_mode`), so training can use it afterwards."""
    with torch.inference_mode(False):
        return torch.tensor([float(1 << (bits - 1 - i)) for i in range(bits)], device=device)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass (straight-through)."""
    return x + (torch.round(x) - x).detach()


def codes_to_planes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer magnitudes in [0, 2^N - 1] -> float digit planes of shape [N, *codes.shape]."""
    shifts = torch.arange(bits - 1, -1, -1, device=codes.device).view(-1, *([1] * codes.dim()))
    return ((codes.long().unsqueeze(0) >> shifts) & 1).float()


def planes_to_value(planes: torch.Tensor) -> torch.Tensor:
    """The (float) magnitude code the planes encode: sum_i b_i 2^(N-1-i)."""
    weights = plane_values(planes.shape[0], planes.device)
    return torch.tensordot(weights, planes, dims=1)


def check_bits(bits: int) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bit-width {bits} is out of range; expected an integer in [{MIN_BITS}, {MAX_BITS}]")


# How the scale S of a bit-plane tensor learns (`quant.scale_grad`):
#   plain  - S is an ordinary parameter (FedMPQ's official code): its gradient is the sum over the
#            whole tensor of grad(w) * w / S, so it grows with the layer's size;
#   lsq    - the same forward value, but the gradient reaching S is multiplied by
#            1 / sqrt(numel * (2^N - 1)), LSQ's step-size gradient scale (Esser et al., ICLR 2020);
#   frozen - S keeps the value it was given (max |w| at conversion): no gradient, not trained.
SCALE_GRAD_MODES = ("plain", "lsq", "frozen")


def check_scale_grad(mode: str) -> None:
    if mode not in SCALE_GRAD_MODES:
        raise ValueError(f"scale_grad mode {mode!r} is unknown; expected one of {', '.join(SCALE_GRAD_MODES)}")


def lsq_grad_factor(numel: int, bits: int) -> float:
    """LSQ's gradient scale for a step size shared by `numel` weights of `bits` bits: 1/sqrt(numel * (2^N - 1))."""
    return 1.0 / math.sqrt(max(numel, 1) * levels(bits))


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward pass; the backward pass multiplies the gradient by `factor`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.factor, None


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """`x` unchanged, with its gradient multiplied by `factor` on the way back."""
    return _ScaleGradient.apply(x, factor)


class BitTensor(nn.Module):
    """One tensor (a layer's weight or bias) as a scale, a sign and N trainable bit planes.

    How the scale trains is `scale_grad` (one of `SCALE_GRAD_MODES`, default `plain`); change it
    with `set_scale_grad`.
    """

    def __init__(self, values: torch.Tensor, bits: int, scale_grad: str = "plain") -> None:
        super().__init__()
        check_bits(bits)
        values = values.detach().float()
        scale = values.abs().max() if values.numel() else values.new_tensor(0.0)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero tensor keeps code 0
        codes = torch.round(values.abs() / scale * levels(bits)).clamp(0, levels(bits))
        self.scale = nn.Parameter(scale.reshape(()).clone())
        self.register_buffer("sign", torch.where(values < 0, -1.0, 1.0))
        self.planes = nn.Parameter(codes_to_planes(codes, bits))
        self.scale_grad = "plain"
        self.set_scale_grad(scale_grad)

    @property
    def bits(self) -> int:
        return self.planes.shape[0]

    def set_scale_grad(self, mode: str) -> None:
        """Choose how the scale learns (see `SCALE_GRAD_MODES`); `frozen` also sets
        `scale.requires_grad = False`, so optimizers and gradient norms skip it."""
        check_scale_grad(mode)
        self.scale_grad = mode
        self.scale.requires_grad_(mode != "frozen")

    def effective_scale(self) -> torch.Tensor:
        """The scale as the forward pass uses it: the same value in every mode, only its gradient differs."""
        if self.scale_grad == "lsq":
            return scale_gradient(self.scale, lsq_grad_factor(self.sign.numel(), self.bits))
        if self.scale_grad == "frozen":
            return self.scale.detach()
        return self.scale

    def forward(self) -> torch.Tensor:
        """The effective weight, differentiable in the planes and (unless frozen) the scale (STE in the rounding)."""
        top = levels(self.bits)
        fraction = planes_to_value(self.planes) / top
        return self.effective_scale() * self.sign * round_ste(fraction.clamp(-1.0, 1.0) * top) / top

    def extra_repr(self) -> str:
        return f"bits={self.bits}, numel={self.sign.numel()}, scale_grad={self.scale_grad}"

    @torch.no_grad()
    def signed_codes(self) -> torch.Tensor:
        """Integer codes in [-(2^N - 1), 2^N - 1]: value = scale * code / (2^N - 1)."""
        return (self.sign * planes_to_value(self.planes)).round().clamp(-levels(self.bits), levels(self.bits)).long()

    @torch.no_grad()
    def dequantize(self) -> torch.Tensor:
        """The represented float tensor (no autograd)."""
        return self.scale * self.signed_codes().float() / levels(self.bits)

    @torch.no_grad()
    def rebinarize(self, generator: torch.Generator | None = None) -> None:
        """Round the encoded signed value back to an N-bit integer and rewrite sign and digits.

        With a generator the rounding is stochastic (P(round up) = fractional part), so updates
        smaller than one least significant bit survive in expectation; without, to nearest.
        A value pushed below zero flips the weight's sign.
        """
        value = self.sign * planes_to_value(self.planes)
        if generator is None:
            value = torch.round(value)
        else:
            noise = torch.rand(value.shape, generator=generator, device=generator.device).to(value.device)
            value = torch.floor(value + noise)
        value = value.clamp(-levels(self.bits), levels(self.bits))
        self.sign.copy_(torch.where(value < 0, -1.0, torch.where(value > 0, 1.0, self.sign)))
        self.planes.copy_(codes_to_planes(value.abs(), self.bits))

    @torch.no_grad()
    def sparse_planes(self, thre: float) -> tuple[int, int]:
        """How many planes FedMPQ's pruning drops: most significant ones while under `thre` %
        non-zeros, then least significant ones while at most `thre` % (keeping at least 1 bit)."""
        codes, bits, msb, lsb = self.signed_codes().abs(), self.bits, 0, 0
        density = lambda plane: 100.0 * float(plane.count_nonzero()) / max(plane.numel(), 1)  # noqa: E731
        while bits - msb > MIN_BITS and density(codes >> (bits - msb - 1)) < thre:
            codes = codes.clamp(max=levels(bits - msb - 1))
            msb += 1
        while bits - msb - lsb > MIN_BITS and density((codes >> lsb) & 1) <= thre:
            lsb += 1
        return msb, lsb

    @torch.no_grad()
    def drop_planes(self, msb: int, lsb: int) -> None:
        """Remove `msb` most and `lsb` least significant planes, rescaling so that kept values are
        unchanged; set digits in a dropped plane saturate (MSB) or truncate (LSB) their weight."""
        codes, bits, scale = self.signed_codes().abs(), self.bits, float(self.scale)
        for _ in range(msb):
            codes, scale, bits = codes.clamp(max=levels(bits - 1)), scale * levels(bits - 1) / levels(bits), bits - 1
        for _ in range(lsb):
            codes, scale, bits = codes >> 1, scale * 2 * levels(bits - 1) / levels(bits), bits - 1
        if msb or lsb:
            self.scale.fill_(scale)
            self.planes = nn.Parameter(codes_to_planes(codes, bits))


class QuantConv2d(nn.Module):
    """A Conv2d whose weight (and bias) live in bit planes."""

    def __init__(self, conv: nn.Conv2d, bits: int) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"QuantConv2d supports padding_mode 'zeros' only, got {conv.padding_mode!r}")
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.weight_bits = BitTensor(conv.weight, bits)
        self.bias_bits = BitTensor(conv.bias, bits) if conv.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias_bits() if self.bias_bits is not None else None
        return F.conv2d(x, self.weight_bits(), bias, self.stride, self.padding, self.dilation, self.groups)


class QuantLinear(nn.Module):
    """A Linear layer whose weight (and bias) live in bit planes."""

    def __init__(self, linear: nn.Linear, bits: int) -> None:
        super().__init__()
        self.weight_bits = BitTensor(linear.weight, bits)
        self.bias_bits = BitTensor(linear.bias, bits) if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias_bits() if self.bias_bits is not None else None
        return F.linear(x, self.weight_bits(), bias)


QuantLayer = QuantConv2d | QuantLinear


def bit_tensors(layer: QuantLayer) -> list[BitTensor]:
    """The layer's weight and (if any) bias BitTensors."""
    return [t for t in (layer.weight_bits, layer.bias_bits) if t is not None]


def set_scale_grad(qmodel: nn.Module, mode: str) -> nn.Module:
    """Set how the scale of every bit-plane tensor in `qmodel` learns (`plain`, `lsq` or `frozen`,
    see `SCALE_GRAD_MODES`); returns `qmodel`. Apply it after `quantize_model` and before building
    the optimizer (a frozen scale has `requires_grad = False`)."""
    check_scale_grad(mode)
    for module in qmodel.modules():
        if isinstance(module, BitTensor):
            module.set_scale_grad(mode)
    return qmodel
