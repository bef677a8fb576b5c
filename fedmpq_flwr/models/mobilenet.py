"""MobileNet-V2 (Sandler et al., 2018) for 32x32 inputs, in torchvision's layout (`features`, `classifier`).

The CIFAR variant: the stem convolution has stride 1 and so does the (t=6, c=24, n=2) stage, so the
feature map is 32x32 through the first three stages and 4x4 at the end (ImageNet's would be 1x1).
No dropout before the classifier (as ResNet-20, so that every method trains the same network).
2,236,682 parameters with 10 classes.

Quantization rules (`CifarMobileNetV2.quant_rules`): every convolution is quantized (the stem, each
block's 1x1 expansion, 3x3 depthwise and 1x1 projection, the final 1x1 to 1280 channels) and so is
`classifier`; BatchNorm stays float; the residual additions are identities (no shortcut layers);
every ReLU6 becomes the unsigned ReLU6 activation quantizer ("relu6"), which is ReLU6 itself
followed by N-bit rounding. The projection's output is linear (no activation), so it stays float.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedmpq_flwr.models.common import rules_by_module
from fedmpq_flwr.quant import QuantRules

# (expansion t, output channels c, blocks n, stride of the first block s), CIFAR strides.
CIFAR_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 on ImageNet
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never more than 10 % below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU6(nn.Module):
    """Convolution (no bias), BatchNorm, ReLU6."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """1x1 expansion (absent when t = 1), 3x3 depthwise, linear 1x1 projection; identity shortcut
    when the block keeps shape (stride 1, same channels)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        self.expand = ConvBNReLU6(in_ch, hidden, 1) if expansion != 1 else None
        self.depthwise = ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden)
        self.project = nn.Conv2d(hidden, out_ch, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_ch)

    def units(self) -> list[ConvBNReLU6]:
        return [u for u in (self.expand, self.depthwise) if u is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for unit in self.units():
            out = unit(out)
        out = self.project_bn(self.project(out))
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """`features` (stem, inverted residual blocks, 1x1 conv to `last_channel`), global pooling,
    `classifier`. `width_mult` scales every channel count but `last_channel`; `blocks` gives the
    number of blocks of each of the 7 stages of `CIFAR_SETTING` (smaller for tests)."""

    def __init__(
        self,
        num_classes: int = 10,
        width_mult: float = 1.0,
        blocks: Sequence[int] | None = None,
        last_channel: int = 1280,
    ) -> None:
        super().__init__()
        blocks = [n for _, _, n, _ in CIFAR_SETTING] if blocks is None else list(blocks)
        if len(blocks) != len(CIFAR_SETTING) or min(blocks) < 1:
            raise ValueError(f"blocks must give 7 stage lengths of at least 1, got {blocks}")
        in_ch = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [ConvBNReLU6(3, in_ch, 3, stride=1)]
        for (expansion, channels, _, stride), n in zip(CIFAR_SETTING, blocks):
            out_ch = make_divisible(channels * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, expansion))
                in_ch = out_ch
        layers.append(ConvBNReLU6(in_ch, last_channel, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channel, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def quant_rules(self) -> QuantRules:
        """Every convolution (depthwise included) and `classifier` quantized; every ReLU6 "relu6"."""
        stem, *blocks, last = self.features
        units = [stem, *(u for b in blocks for u in b.units()), last]
        convs = [stem.conv, *(c for b in blocks for c in (*(u.conv for u in b.units()), b.project)), last.conv]
        return rules_by_module(
            self,
            layers=[*convs, self.classifier],
            activations=[(u.act, "relu6") for u in units],
        )

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, last_channel]: the input of `classifier`."""
        return torch.flatten(self.avgpool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.penultimate(x))


def mobilenet_v2(
    num_classes: int = 10,
    width_mult: float = 1.0,
    blocks: Sequence[int] | None = None,
    last_channel: int = 1280,
) -> CifarMobileNetV2:
    """MobileNet-V2, CIFAR variant: 2,236,682 parameters at the defaults with 10 classes."""
    return CifarMobileNetV2(num_classes, width_mult, blocks, last_channel)
