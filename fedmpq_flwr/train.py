"""Local training and evaluation loops shared by clients and the server (plain PyTorch)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The task loss of full-precision training."""
    return F.cross_entropy(model(images), labels)


def resolve_device(preference: str) -> torch.device:
    """Map the `federation.device` config value (auto|cpu|cuda) to a torch device."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("federation.device is 'cuda' but no CUDA device is visible to this process")
    return torch.device(preference)


def train_epochs(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: torch.device,
    loss_fn: LossFn = cross_entropy_loss,
) -> dict[str, float]:
    """Run `epochs` passes of SGD over `loader`; return the mean training loss and step count."""
    model.train()
    total_loss, steps = 0.0, 0
    for _ in range(epochs):
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, images, labels)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            steps += 1
    return {"train_loss": total_loss / max(steps, 1), "steps": float(steps)}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Exact loss and top-1 accuracy over the whole loader, in eval mode (BatchNorm running stats)."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
        count += labels.numel()
    if count == 0:
        raise ValueError("evaluate() got an empty loader")
    return loss_sum / count, correct / count
