"""ResNet-20 and ResNet-32 for 32x32 inputs (He et al., 2016, Sec. 4.2), written in torchvision's style.

Shape-changing shortcuts are a 1x1 convolution + BatchNorm held in `downsample`.

Quantization rules (`CifarResNet.quant_rules`): every 3x3 convolution (the stem and both of each
block) and `fc` are quantized; the 1x1 `downsample` shortcut convolutions stay float (FedMPQ's
choice: they are few parameters on the identity path); BatchNorm stays float; every ReLU becomes the
ReLU6-style unsigned activation quantizer ("relu6").
"""

from __future__ import annotations

import torch
from torch import nn

from fedmpq_flwr.models.common import rules_by_module
from fedmpq_flwr.quant import QuantRules


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or `downsample`) shortcut.

    Each ReLU is its own module so activation quantizers can replace them one by one.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class CifarResNet(nn.Module):
    """3x3 stem with 16 channels, three stages of BasicBlocks (16/32/64), global pooling, `fc`."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(32, 64, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def blocks(self) -> list[BasicBlock]:
        return [block for stage in (self.layer1, self.layer2, self.layer3) for block in stage]

    def quant_rules(self) -> QuantRules:
        """Stem, block convolutions and `fc` quantized; `downsample` shortcuts float; ReLUs "relu6"."""
        blocks = self.blocks()
        return rules_by_module(
            self,
            layers=[self.conv1, *(conv for b in blocks for conv in (b.conv1, b.conv2)), self.fc],
            float_layers=[b.downsample[0] for b in blocks if b.downsample is not None],
            activations=[(relu, "relu6") for relu in (self.relu, *(r for b in blocks for r in (b.relu1, b.relu2)))],
        )

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, 64]: the input of `fc` (for distillation analyses and t-SNE)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.penultimate(x))


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20: 3 stages x 3 BasicBlocks, 272,474 parameters (10 classes)."""
    return CifarResNet(blocks_per_stage=3, num_classes=num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32: 3 stages x 5 BasicBlocks, 466,906 parameters (10 classes); the same stage widths
    as ResNet-20 (16/32/64), so its penultimate features match ResNet-20's (FedKD's mentor)."""
    return CifarResNet(blocks_per_stage=5, num_classes=num_classes)
