"""Symmetric label noise: each training label is, with probability p, replaced by another class.

Pure numpy. The noise of a client depends only on (dataset seed, partition id) and its partition,
never on which other clients exist or in which order they run; test and validation labels stay clean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NOISE_STREAM = 0x6E6F6973  # keeps these draws apart from the other uses of dataset.seed


def flip_labels(
    labels: np.ndarray, p: float, num_classes: int, seed: int | Sequence[int] | np.random.SeedSequence
) -> tuple[np.ndarray, np.ndarray]:
    """-> (noisy_labels, flipped_mask): each label flips with probability `p` to a class drawn
    uniformly from the `num_classes - 1` others (never to itself); `labels` is left unchanged.

    Every label gets one uniform draw and one class offset from the seed whatever `p`, so for one
    seed the labels flipped at a lower p are a subset of those flipped at a higher p, with the same
    new classes; p = 0 returns an unchanged copy.
    """
    labels = np.asarray(labels)
    if not 0 <= p <= 1:
        raise ValueError(f"label noise {p!r} must be a probability in [0, 1]")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype}{list(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels span [{labels.min()}, {labels.max()}], outside the {num_classes} classes")
    if p > 0 and num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    rng = np.random.default_rng(seed)
    flipped = rng.random(len(labels)) < p
    offset = rng.integers(1, max(num_classes, 2), size=len(labels))  # (y + k) mod C, k in 1..C-1: another class
    noisy = np.where(flipped, (labels + offset) % num_classes, labels).astype(labels.dtype)
    return noisy, flipped


def partition_noise_seed(dataset_seed: int, partition_id: int) -> np.random.SeedSequence:
    """The seed of one client's label noise: a function of the dataset seed and its partition id only."""
    return np.random.SeedSequence([int(dataset_seed), int(partition_id), NOISE_STREAM])


def noisy_partition_labels(
    labels: np.ndarray, p: float, num_classes: int, dataset_seed: int, partition_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """`flip_labels` on the labels of one client's partition (in partition order), seeded per partition."""
    return flip_labels(labels, p, num_classes, partition_noise_seed(dataset_seed, partition_id))
