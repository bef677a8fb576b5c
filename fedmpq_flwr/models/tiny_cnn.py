"""A small, fast CNN for smoke tests and CPU runs (20,138 parameters with 10 classes)."""

from __future__ import annotations

import torch
from torch import nn

from fedmpq_flwr.models.common import rules_by_module
from fedmpq_flwr.quant import QuantRules


class TinyCNN(nn.Module):
    """Two conv-BN-ReLU-maxpool stages, global average pooling, then `fc`."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def quant_rules(self) -> QuantRules:
        """Both convolutions and `fc` quantized, both ReLUs "relu6"; BatchNorm float."""
        return rules_by_module(
            self,
            layers=[self.conv1, self.conv2, self.fc],
            activations=[(self.relu1, "relu6"), (self.relu2, "relu6")],
        )

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, 64]: the input of `fc`."""
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.penultimate(x))


def tiny_cnn(num_classes: int = 10) -> TinyCNN:
    """The smoke-test model: 20,138 parameters with 10 classes."""
    return TinyCNN(num_classes)
