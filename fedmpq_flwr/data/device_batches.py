"""A client's training batches, made on its training device.

The partition is staged once per round as a uint8 tensor [N, C, H, W] (zero-padded once when it is
augmented) with its labels, on the device that trains. Every batch is then a handful of tensor
operations there: a slice of a seeded `randperm`, a gather for the random crop and horizontal flip
of every image at once, the conversion to float and the normalisation. Per-sample transforms in a
DataLoader, on the client's one CPU, would leave a GPU waiting for most of each step.

The draws follow torchvision's `RandomCrop(padding)` + `RandomHorizontalFlip()`: crop offsets uniform
over 0..2*padding on each axis, independently per image, flip with probability 0.5, padded pixels 0
before normalisation; un-augmented batches equal `loaders.to_float` of the images exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from fedmpq_flwr.data.load import FederatedData
from fedmpq_flwr.data.loaders import to_float
from fedmpq_flwr.data.partition import client_partition


def crop_flip(
    padded: torch.Tensor,
    idx: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """Images `idx` of the zero-padded [N, C, H+2p, W+2p] stack, each cropped to `size` (H, W) at its own
    (`top`, `left`) and mirrored left-right where `flip`: two gathers, no loop over the images."""
    height, width = size
    batch, channels, _, padded_width = len(idx), padded.shape[1], padded.shape[2], padded.shape[3]
    rows = top[:, None] + torch.arange(height, device=padded.device)
    cols = left[:, None] + torch.arange(width, device=padded.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    images = padded[idx].gather(2, rows[:, None, :, None].expand(batch, channels, height, padded_width))
    return images.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))


class ClientBatches:
    """One client's shuffled training batches on `device`, re-drawn on every pass (epoch).

    `padding` > 0 augments (random crop of the image size from the image padded with `padding`
    zeros, random horizontal flip); 0 does not. `channels_last` lays the images out NHWC in memory
    (`train.channels_last`); `autocast` is the dtype the training steps on these batches run their
    forward passes in (`train.amp`; None: float32). `num_flipped` counts the labels label noise changed.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        padding: int,
        seed: int,
        device: torch.device,
        channels_last: bool = False,
        autocast: torch.dtype | None = None,
        num_flipped: int = 0,
    ) -> None:
        host = torch.from_numpy(np.require(images, requirements=["C", "W"]))  # copied only if read-only
        staged = host.to(device).permute(0, 3, 1, 2).contiguous()
        self.size = tuple(staged.shape[2:])
        self.padding = padding
        if padding:
            self.images = staged.new_zeros(*staged.shape[:2], self.size[0] + 2 * padding, self.size[1] + 2 * padding)
            self.images[:, :, padding : padding + self.size[0], padding : padding + self.size[1]] = staged
        else:
            self.images = staged
        self.labels = torch.tensor(labels, dtype=torch.int64, device=device)
        self.batch_size = batch_size
        self.normalise = to_float(mean, std)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.device = device
        self.channels_last = channels_last
        self.autocast = autocast
        self.num_flipped = num_flipped

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        """Batches per pass (the last one may be smaller)."""
        return -(-self.num_examples // self.batch_size)

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """The normalised float images at partition positions `idx`, augmented when asked (the
        offsets and flips drawn from this client's generator)."""
        if self.padding:
            draw = {"generator": self.generator, "device": self.device}
            offsets = torch.randint(0, 2 * self.padding + 1, (2, len(idx)), **draw)
            flip = torch.rand(len(idx), **draw) < 0.5
            images = crop_flip(self.images, idx, offsets[0], offsets[1], flip, self.size)
        else:
            images = self.images[idx]
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.normalise(images)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(self.num_examples, generator=self.generator, device=self.device)
        for idx in order.split(self.batch_size):
            yield self.batch(idx), self.labels[idx]


def client_batches(
    data: FederatedData,
    partition_id: int,
    num_partitions: int,
    dataset_cfg: dict[str, Any],
    batch_size: int,
    seed: int,
    *,
    label_noise: float,
    device: torch.device,
    channels_last: bool = False,
    autocast: torch.dtype | None = None,
) -> ClientBatches:
    """The training batches of one client's partition (dataset_cfg: alpha, seed, augment), shuffled
    and augmented from a generator seeded by `seed`, normalised with the dataset's mean and std; each
    label flipped to another class with probability `label_noise`."""
    part = client_partition(
        data, partition_id, num_partitions, dataset_cfg["alpha"], dataset_cfg["seed"], float(label_noise)
    )
    return ClientBatches(
        data.x_train[part.idx],
        part.labels,
        batch_size,
        mean=data.mean,
        std=data.std,
        padding=data.spec.crop_padding if dataset_cfg["augment"] else 0,
        seed=seed,
        device=device,
        channels_last=channels_last,
        autocast=autocast,
        num_flipped=part.num_flipped,
    )
