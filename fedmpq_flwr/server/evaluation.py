"""Server-side evaluation: which rounds evaluate, the float global model on the test set (and the
validation pool), the global model quantized to clients' assignments, the penultimate features saved
at the end, and the clients' label counts that the fairness analysis weighs the per-class accuracies with.

The test set (and validation pool) is normalised and staged on the device once, at construction, as
fixed-order batches that every pass reuses: the float model's and each quantized assignment's. Every
evaluation is exact, in eval mode. The quantized passes (one per distinct assignment, each costing
about a float pass) may use a fixed class-balanced subset of the test set (`eval.quant_test_images`);
the float global model is always evaluated on the whole test set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fedmpq_flwr.data.load import FederatedData
from fedmpq_flwr.data.loaders import Batches, eval_batches, eval_loader
from fedmpq_flwr.data.partition import partition_indices
from fedmpq_flwr.quant import quantize_model
from fedmpq_flwr.training.loop import loss_accuracy_per_class, loss_and_accuracy, penultimate_features

FEATURE_IMAGES = 2000  # test images whose features are saved for t-SNE


@dataclass(frozen=True)
class EvalSchedule:
    """The rounds that evaluate (`eval.every`, `eval.quant_every`): every `every`-th round, and always the
    last one, whose numbers are the run's final accuracies. Evaluating a large test set, and the model
    quantized to every client's assignment, can cost as much as a round's training."""

    num_rounds: int
    every: int = 1  # the float global model
    quant_every: int = 1  # the global model quantized to each client's assignment

    def evaluates(self, server_round: int) -> bool:
        """Whether the float global model is evaluated after `server_round`."""
        return server_round % self.every == 0 or server_round == self.num_rounds

    def evaluates_quantized(self, server_round: int) -> bool:
        """Whether the quantized global models are evaluated after `server_round`."""
        return server_round % self.quant_every == 0 or server_round == self.num_rounds


def balanced_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of `size` of `labels` (all when `size` is 0 or not smaller), as evenly spread over
    the classes as they allow: each class in a seeded random order, the first images of every class
    taken before the second of any; the same indices for the same labels and seed."""
    if size == 0 or size >= len(labels):
        return np.arange(len(labels))
    perm = np.random.default_rng(seed).permutation(len(labels))
    shuffled = labels[perm]
    counts = np.bincount(shuffled)
    order = np.argsort(shuffled, kind="stable")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.sort(perm[np.argsort(rank, kind="stable")[:size]])


class ServerEvaluator:
    """Test and validation batches staged once; evaluation of float and quantized global models.

    `quant_test_images` > 0: the quantized passes use that many test images (`balanced_subset` with
    `seed`, the same in every round); `quant_images` is how many they use."""

    def __init__(
        self, data: FederatedData, batch_size: int, device: torch.device, quant_test_images: int = 0, seed: int = 0
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.device = device
        self.test_batches = self.batches(data.x_test, data.y_test)
        self.val_batches = self.batches(data.x_val, data.y_val) if len(data.y_val) else None
        chosen = balanced_subset(data.y_test, quant_test_images, seed)
        self.quant_images = len(chosen)
        full = self.quant_images == len(data.y_test)
        self.quant_batches = self.test_batches if full else self.batches(data.x_test[chosen], data.y_test[chosen])

    @classmethod
    def from_config(cls, data: FederatedData, config: dict[str, Any], device: torch.device) -> ServerEvaluator:
        """The evaluator of a run: `train.eval_batch_size`, `eval.quant_test_images` drawn with `dataset.seed`."""
        quant_test_images = config["eval"]["quant_test_images"]
        return cls(data, config["train"]["eval_batch_size"], device, quant_test_images, config["dataset"]["seed"])

    def subset_fields(self) -> dict[str, int]:
        """What a round evaluating quantized models records about their test images: their number
        (`quant_test_images`) when they are a subset of the test set, nothing when they are all of it."""
        return {} if self.quant_batches is self.test_batches else {"quant_test_images": self.quant_images}

    def batches(self, x: np.ndarray, y: np.ndarray) -> Batches:
        """Fixed-order batches normalised with the dataset's own statistics, on the device."""
        return eval_batches(x, y, self.batch_size, mean=self.data.mean, std=self.data.std, device=self.device)

    def loader(self, x: np.ndarray, y: np.ndarray) -> DataLoader:
        """The same batches through a DataLoader, on the host (for one pass, like the features')."""
        return eval_loader(x, y, self.batch_size, mean=self.data.mean, std=self.data.std)

    def float_metrics(self, model: nn.Module) -> dict[str, Any]:
        """`test_accuracy`, `test_loss` and `class_accuracy` (per class, None for a class the test set
        lacks) from one pass (and `val_loss`, `val_accuracy` with a validation pool)."""
        num_classes = self.data.num_classes
        test_loss, test_accuracy, class_accuracy = loss_accuracy_per_class(
            model, self.test_batches, self.device, num_classes
        )
        metrics: dict[str, Any] = {"test_accuracy": test_accuracy, "test_loss": test_loss}
        if self.val_batches is not None:
            metrics["val_loss"], metrics["val_accuracy"] = loss_and_accuracy(model, self.val_batches, self.device)
        return {**metrics, "class_accuracy": class_accuracy}

    def quantized_metrics(
        self, model: nn.Module, assignments: dict[int, dict[str, int]], act_bits: int
    ) -> dict[int, tuple[float, list[float | None]]]:
        """Test accuracy and per-class test accuracy of `model` quantized to each client's assignment
        (one pass over the staged quantized-evaluation batches, `quant_images` test images, per
        distinct assignment: clients with equal budgets usually share one)."""
        metrics_of: dict[str, tuple[float, list[float | None]]] = {}
        metrics = {}
        for pid, bits in sorted(assignments.items()):
            key = json.dumps(bits, sort_keys=True)
            if key not in metrics_of:
                qmodel = quantize_model(model, bits, act_bits)
                _, accuracy, classes = loss_accuracy_per_class(
                    qmodel, self.quant_batches, self.device, self.data.num_classes
                )
                metrics_of[key] = (accuracy, classes)
            metrics[pid] = metrics_of[key]
        return metrics

    def save_features(self, path: Path, models: dict[str, nn.Module], numbers: dict[str, int], seed: int) -> None:
        """`features.npz`: labels and the penultimate features of each model (saved as `<name>_features`)
        on a fixed subset of the test set (the same images in every run with this `seed`)."""
        size = len(self.data.y_test)
        chosen = np.sort(np.random.default_rng(seed).choice(size, min(FEATURE_IMAGES, size), replace=False))
        loader = self.loader(self.data.x_test[chosen], self.data.y_test[chosen])
        arrays = {}
        for name, model in models.items():
            arrays[f"{name}_features"], labels = penultimate_features(model, loader, self.device)
        np.savez_compressed(path, labels=labels, **arrays, **numbers)


def client_label_counts(data: FederatedData, dataset_cfg: dict[str, Any], num_clients: int) -> dict[int, list[int]]:
    """Partition id -> how many training examples of each class the client holds (its partition of
    `data.y_train`, as the clients build it; true classes, before any label noise: the mix of data
    the device will see)."""
    parts = partition_indices(data.y_train, num_clients, dataset_cfg["alpha"], dataset_cfg["seed"])
    return {
        pid: np.bincount(data.y_train[idx], minlength=data.num_classes).astype(int).tolist()
        for pid, idx in enumerate(parts)
    }
