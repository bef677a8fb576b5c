"""Local training and evaluation loops shared by clients and the server (plain PyTorch)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from fedmpq_flwr.config.fields import ConfigError

# (images, labels) batches to evaluate on: a DataLoader, or batches staged on the device once
# (`data.loaders.eval_batches`; moving them to the device is then a no-op).
EvalBatches = Iterable[tuple[torch.Tensor, torch.Tensor]]
# Training batches: `data.device_batches.ClientBatches` (made on the device; its `channels_last` and
# `autocast` say how the steps run) or any iterable of (images, labels), e.g. a DataLoader.
TrainBatches = Iterable[tuple[torch.Tensor, torch.Tensor]]
# A loss function returns named terms: "loss" is what is minimised, the others are logged.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def cross_entropy_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The task loss of full-precision training."""
    task_loss = F.cross_entropy(model(images), labels)
    return {"loss": task_loss, "task_loss": task_loss}


def round_lr(
    lr: float, server_round: int, num_rounds: int, warmup_rounds: int = 0, schedule: str = "constant"
) -> float:
    """The learning rate of every client in `server_round` (1-based): a linear warm-up over the first
    `warmup_rounds` rounds (lr * r / warmup_rounds), then `lr` (schedule `constant`) or a cosine decay
    from `lr` towards 0 over the remaining rounds (`cosine`: lr * (1 + cos(pi * t)) / 2, with t going
    from 0 in the first round after the warm-up to (n - 1) / n in the last, so no round trains at 0)."""
    if server_round <= warmup_rounds:
        return lr * server_round / warmup_rounds
    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r} (options: constant, cosine)")
    decay_rounds = max(1, num_rounds - warmup_rounds)
    progress = min(server_round - warmup_rounds - 1, decay_rounds - 1) / decay_rounds
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    name: str, parameters: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """`sgd`: SGD with momentum and L2 weight decay; `adamw`: AdamW (decoupled weight decay) with
    betas (momentum, 0.999), so `train.momentum` is its first-moment decay."""
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (options for train.optimizer: sgd, adamw)")


def resolve_device(preference: str) -> torch.device:
    """Map the `federation.device` config value (auto|cpu|cuda) to a torch device."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("federation.device is 'cuda' but no CUDA device is visible to this process")
    return torch.device(preference)


AMP_DTYPES = {"off": None, "bf16": torch.bfloat16}  # train.amp -> the autocast dtype of the forward passes


def train_device_settings(train_cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """`train.channels_last` and the autocast dtype of `train.amp` for training on `device` (the keyword
    arguments of `client_batches`), with cuDNN's autotuner on for CUDA (every batch but a client's
    last has one shape). `train.amp` other than `off` needs CUDA: a ConfigError elsewhere, raised
    before any training."""
    amp = train_cfg["amp"]
    if amp != "off" and device.type != "cuda":
        raise ConfigError(f"key 'train.amp': value {amp!r} needs a CUDA device, training runs on {device}; use off")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return {"channels_last": bool(train_cfg["channels_last"]), "autocast": AMP_DTYPES[amp]}


def train_epochs(
    model: nn.Module,
    loader: TrainBatches,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: torch.device,
    loss_fn: LossFn = cross_entropy_loss,
    after_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Run `epochs` passes of SGD over `loader` (calling `after_step` after each optimizer step);
    return the mean of every loss term (`loss` reported as `train_loss`), the mean L2 norm of the
    gradient of all trainable parameters (`grad_norm`), the step count and `train_flops`: the
    FLOPs of the first step's forward and backward (`torch.utils.flop_counter`) times the steps.

    Batches laid out channels-last train the model in that layout (it is handed back contiguous);
    batches with an `autocast` dtype run every forward in `loss_fn` (a teacher's or mentor's too)
    under autocast, the backward outside it."""
    channels_last = bool(getattr(loader, "channels_last", False))
    autocast_dtype = getattr(loader, "autocast", None)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, torch.Tensor] = {}
    steps = 0
    step_flops = 0
    for _ in range(epochs):
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with FlopCounterMode(display=False) if steps == 0 else contextlib.nullcontext() as counter:
                with torch.autocast(device.type, autocast_dtype) if autocast_dtype else contextlib.nullcontext():
                    terms = loss_fn(model, images, labels)
                terms["loss"].backward()
            if steps == 0:
                step_flops = counter.get_total_flops()
            terms["grad_norm"] = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
            optimizer.step()
            if after_step is not None:
                after_step()
            for name, value in terms.items():  # summed on the device: no sync per step
                sums[name] = sums.get(name, 0.0) + value.detach().double()
            steps += 1
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    means = {("train_loss" if name == "loss" else name): float(total) / max(steps, 1) for name, total in sums.items()}
    return {"train_loss": 0.0, **means, "steps": float(steps), "train_flops": float(step_flops * steps)}


def _evaluation_pass(
    model: nn.Module, loader: EvalBatches, device: torch.device, num_classes: int | None
) -> tuple[float, float, list[float | None]]:
    """One pass in eval mode: mean loss, accuracy and (when `num_classes` is given) per-class accuracy."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    if num_classes is not None:
        class_correct = torch.zeros(num_classes, dtype=torch.int64, device=device)
        class_count = torch.zeros(num_classes, dtype=torch.int64, device=device)
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        hits = logits.argmax(dim=1) == labels
        if num_classes is not None:  # checked before the loss, which would fail less clearly (on CUDA: assert)
            if logits.shape[1] != num_classes:
                raise ValueError(f"the model has {logits.shape[1]} outputs but num_classes is {num_classes}")
            # bincount grows past minlength for a label >= num_classes (and rejects negative ones)
            batch_count = torch.bincount(labels, minlength=num_classes)
            if batch_count.numel() != num_classes:
                raise ValueError(f"a label is outside [0, {num_classes})")
            class_count += batch_count
            class_correct += torch.bincount(labels[hits], minlength=num_classes)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += hits.sum().item()
        count += labels.numel()
    if count == 0:
        raise ValueError("loss_and_accuracy() got an empty loader")
    class_accuracy: list[float | None] = []
    if num_classes is not None:
        class_accuracy = [
            hit / total if total else None for hit, total in zip(class_correct.tolist(), class_count.tolist())
        ]
    return loss_sum / count, correct / count, class_accuracy


@torch.inference_mode()
def loss_and_accuracy(model: nn.Module, loader: EvalBatches, device: torch.device) -> tuple[float, float]:
    """Exact loss and top-1 accuracy over the whole loader, in eval mode (BatchNorm running stats).

    Over a client's training partition without augmentation (`dataset.eval_loader` of its
    examples) the loss of the received global model is q-FFL's F_k."""
    loss, accuracy, _ = _evaluation_pass(model, loader, device, None)
    return loss, accuracy


@torch.inference_mode()
def loss_accuracy_per_class(
    model: nn.Module, loader: EvalBatches, device: torch.device, num_classes: int
) -> tuple[float, float, list[float | None]]:
    """`loss_and_accuracy`'s loss and accuracy plus the top-1 accuracy of every class 0..num_classes-1, from
    the same pass. A class with no example in the loader gets None (JSON null: it has no accuracy,
    and `fedmpq_flwr.analysis.fairness` leaves it out of the clients' expected accuracies)."""
    return _evaluation_pass(model, loader, device, num_classes)


@torch.inference_mode()
def penultimate_features(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's inputs (`model.penultimate(x)`, which every registry model has) and the
    labels, over the whole loader in eval mode: what the analyzer's t-SNE draws."""
    model.eval()
    features, labels = [], []
    for images, batch_labels in loader:
        features.append(model.penultimate(images.to(device)).float().cpu().numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(features), np.concatenate(labels)
