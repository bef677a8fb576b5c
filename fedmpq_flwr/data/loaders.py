"""DataLoaders: uint8 HWC arrays -> normalised float CHW tensors, with the dataset's own statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

from fedmpq_flwr.data.load import FederatedData
from fedmpq_flwr.data.partition import client_partition


def to_float(mean: Sequence[float], std: Sequence[float]) -> v2.Transform:
    """uint8 CHW -> float in [0, 1] -> normalised per channel."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def augmentation(image_shape: tuple[int, int, int], padding: int) -> v2.Transform:
    """Random crop of the image size from the zero-padded image, random horizontal flip."""
    return v2.Compose([v2.RandomCrop(image_shape[:2], padding=padding), v2.RandomHorizontalFlip()])


class _TransformedImages(Dataset):
    """uint8 CHW images transformed per sample (random augmentation must differ per draw).

    `num_flipped`: how many of `labels` label noise changed."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: v2.Transform, num_flipped: int) -> None:
        self.images, self.labels, self.transform = images, labels, transform
        self.num_flipped = num_flipped

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


def _chw(x: np.ndarray) -> torch.Tensor:
    """A writable uint8 [N,C,H,W] copy of HWC images (the cached arrays are read-only)."""
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def client_loader(
    data: FederatedData,
    partition_id: int,
    num_partitions: int,
    dataset_cfg: dict[str, Any],
    batch_size: int,
    seed: int,
    *,
    label_noise: float,
) -> DataLoader:
    """Shuffled (torch.Generator seeded by `seed`) training batches of one client's partition
    (dataset_cfg: alpha, seed, augment), normalised with the dataset's mean and std; each label is
    flipped to another class with probability `label_noise` (`loader.dataset.num_flipped` counts them).

    Augmentation draws from torch's global RNG (num_workers=0), so seed that for repeatable crops.
    """
    part = client_partition(
        data, partition_id, num_partitions, dataset_cfg["alpha"], dataset_cfg["seed"], float(label_noise)
    )
    transform = to_float(data.mean, data.std)
    if dataset_cfg["augment"]:
        transform = v2.Compose([augmentation(data.image_shape, data.spec.crop_padding), transform])
    dataset = _TransformedImages(
        _chw(data.x_train[part.idx]), torch.from_numpy(part.labels), transform, part.num_flipped
    )
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size, shuffle=True, generator=generator, num_workers=0, drop_last=False)


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
