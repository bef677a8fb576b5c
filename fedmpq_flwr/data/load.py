"""Load a dataset once per process: read its source, keep `train_subset` images, carve a validation pool.

Images stay uint8 [N,H,W,C] numpy arrays until a DataLoader turns them into normalised float
tensors: that keeps the per-process cache small (every simulated client shares it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from fedmpq_flwr.data.registry import DatasetSpec, DataSourceError, get_spec
from fedmpq_flwr.data.sources import read_source


@dataclass(frozen=True)
class FederatedData:
    """Read-only arrays shared by every client of a process: x uint8 [N,H,W,C], y int64 [N], and the
    declaration of the dataset they come from (classes, image shape, normalisation)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    spec: DatasetSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return self.spec.image_shape

    @property
    def mean(self) -> tuple[float, ...]:
        return self.spec.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.spec.std


def carve_validation(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split -> (train_idx, val_idx): images are picked in order of their random
    rank within their class divided by the class size, so each class gives its share and the total
    is exactly round(fraction * N)."""
    n_val = round(fraction * len(y))
    perm = np.random.default_rng(seed).permutation(len(y))
    labels = y[perm]
    counts = np.bincount(labels)
    order = np.argsort(labels, kind="stable")
    rank = np.empty(len(y))
    rank[order] = np.arange(len(y)) - np.repeat(np.cumsum(counts) - counts, counts)
    chosen = np.zeros(len(y), dtype=bool)
    chosen[np.argsort((rank + 0.5) / counts[labels], kind="stable")[:n_val]] = True
    return np.sort(perm[~chosen]), np.sort(perm[chosen])


@lru_cache(maxsize=4)
def _load_data_cached(
    spec: DatasetSpec,
    source: str,
    path: str,
    train_subset: int,
    val_fraction: float,
    seed: int,
    synthetic_sizes: tuple[int, int],
) -> FederatedData:
    x_train, y_train, x_test, y_test = read_source(spec, source, path, synthetic_sizes, seed)
    if train_subset:
        if train_subset > len(y_train):
            raise DataSourceError(f"dataset.train_subset {train_subset}: the source has only {len(y_train)} images")
        x_train, y_train = x_train[:train_subset], y_train[:train_subset]
    y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
    train_idx, val_idx = carve_validation(y_train, val_fraction, seed)
    arrays = [x_train[train_idx], y_train[train_idx], x_train[val_idx], y_train[val_idx], x_test, y_test]
    for a in arrays:
        a.setflags(write=False)  # shared by every client of the process through the cache
    return FederatedData(*arrays, spec=spec)


def load_data(dataset_cfg: dict[str, Any]) -> FederatedData:
    """Load the dataset named by dataset.name from dataset.source at dataset.path (generated for a
    synthetic one), keep the first `train_subset` images, carve the validation pool.

    Cached per process on the keys that change the arrays (not alpha, augment or label_noise).
    """
    spec = get_spec(dataset_cfg["name"])
    return _load_data_cached(
        spec,
        "" if spec.synthetic else dataset_cfg["source"],
        "" if spec.synthetic else dataset_cfg["path"],
        int(dataset_cfg["train_subset"]),
        float(dataset_cfg["val_fraction"]),
        int(dataset_cfg["seed"]),
        (int(dataset_cfg["synthetic_train_size"]), int(dataset_cfg["synthetic_test_size"]))
        if spec.synthetic
        else (0, 0),
    )
