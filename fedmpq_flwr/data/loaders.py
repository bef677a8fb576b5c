"""Evaluation batches: uint8 HWC arrays -> normalised float CHW tensors, with the dataset's own statistics.

Training batches are made on the training device: `data.device_batches`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import v2


def to_float(mean: Sequence[float], std: Sequence[float]) -> v2.Transform:
    """uint8 CHW -> float in [0, 1] -> normalised per channel."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def _chw(x: np.ndarray) -> torch.Tensor:
    """A writable uint8 [N,C,H,W] copy of HWC images (the cached arrays are read-only)."""
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


Batches = list[tuple[torch.Tensor, torch.Tensor]]  # (images, labels) pairs, in a fixed order


def eval_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, mean: Sequence[float], std: Sequence[float], device: torch.device
) -> Batches:
    """`eval_loader`'s batches (the same order and values), normalised once and staged on `device`: the
    server passes over its test set several times a round (the float model, each quantized assignment),
    and a DataLoader would collate every batch and copy it to the device again on every pass."""
    images, labels = to_float(mean, std)(_chw(x)), torch.tensor(y, dtype=torch.int64)
    # Each batch its own allocation, as the DataLoader's collate makes it: a view into one big tensor
    # could start at an address whose alignment changes a BLAS kernel's summation order.
    return [
        (image_batch.to(device, copy=True), label_batch.to(device, copy=True))
        for image_batch, label_batch in zip(images.split(batch_size), labels.split(batch_size))
    ]


def eval_loader(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, mean: Sequence[float], std: Sequence[float]
) -> DataLoader:
    """Fixed-order batches normalised with `mean`/`std` (the dataset's: `data.mean`, `data.std`);
    converted once, since the server evaluates every round."""
    dataset = TensorDataset(to_float(mean, std)(_chw(x)), torch.tensor(y, dtype=torch.int64))
    return DataLoader(dataset, batch_size, shuffle=False, num_workers=0)
