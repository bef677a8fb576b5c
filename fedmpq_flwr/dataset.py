"""Data for the federation: load a source once per process, carve a validation pool, partition.

Images stay uint8 [N,32,32,3] RGB numpy arrays until a DataLoader turns them into normalised
float tensors: that keeps the per-process cache small (every simulated client shares it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from flwr_datasets import FederatedDataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.datasets import CIFAR10
from torchvision.transforms import v2

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
NUM_CLASSES = 10
HUB_DATASET = "uoft-cs/cifar10"
_SOURCE_OPTIONS = "(options for dataset.source: npz, torchvision, hub)"


class DataSourceError(ValueError):
    """A data source that cannot be read; the one-line message names the config key to fix."""


@dataclass(frozen=True)
class FederatedData:
    """Read-only arrays shared by every client of a process: x uint8 [N,32,32,3], y int64 [N]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


# ---- sources ------------------------------------------------------------------------------


def _load_npz(path: str) -> tuple[np.ndarray, ...]:
    files = [Path(path) / "train.npz", Path(path) / "test.npz"]
    if not all(f.is_file() for f in files):
        raise DataSourceError(
            f"dataset.path {path!r}: no train.npz/test.npz there; dataset.source 'npz' needs a directory "
            f"holding them {_SOURCE_OPTIONS}"
        )
    arrays = []
    for f in files:
        with np.load(f) as npz:
            if "x" not in npz or "y" not in npz:
                raise DataSourceError(f"dataset.path {path!r}: {f.name} lacks arrays 'x' and 'y'")
            x, y = npz["x"], npz["y"]
        if x.dtype != np.uint8 or x.shape[1:] != (32, 32, 3) or len(x) != len(y):
            raise DataSourceError(
                f"dataset.path {path!r}: {f.name} holds x {x.dtype}{list(x.shape)}, y {list(y.shape)}; "
                "expected x uint8 [N,32,32,3] and y [N]"
            )
        arrays += [x, y]
    return tuple(arrays)


def _load_torchvision(path: str) -> tuple[np.ndarray, ...]:
    # torchvision wants the parent of cifar-10-batches-py; accept the folder itself too.
    root = Path(path)
    if root.name == CIFAR10.base_folder:
        root = root.parent
    if not (root / CIFAR10.base_folder).is_dir():
        raise DataSourceError(
            f"dataset.path {path!r}: no {CIFAR10.base_folder} folder there; dataset.source 'torchvision' needs "
            f"that folder or its parent {_SOURCE_OPTIONS}"
        )
    try:
        splits = [CIFAR10(str(root), train=train, download=False) for train in (True, False)]
    except RuntimeError as err:  # torchvision checks the md5 of every batch file
        raise DataSourceError(
            f"dataset.path {path!r}: {CIFAR10.base_folder} is incomplete or corrupted ({err}); "
            "dataset.source 'torchvision' needs the original python-version batches"
        ) from err
    return tuple(a for s in splits for a in (s.data, np.asarray(s.targets)))


def _load_hub(path: str) -> tuple[np.ndarray, ...]:
    # shuffle=False keeps the original order, so train_subset picks the same images as npz/torchvision.
    fds = FederatedDataset(dataset=HUB_DATASET, partitioners={"train": 1}, shuffle=False, cache_dir=path or None)
    try:
        splits = [fds.load_split(split).with_format("numpy")[:] for split in ("train", "test")]
    except OSError as err:  # ConnectionError offline, HfHubHTTPError, DatasetNotFoundError, ...
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise DataSourceError(
            f"dataset.source 'hub': could not load {HUB_DATASET!r} from the Hugging Face Hub ({reason}); "
            "without internet use dataset.source 'npz' or 'torchvision' with dataset.path"
        ) from err
    return tuple(a for s in splits for a in (s["img"], s["label"]))


def _synthetic(train_size: int, test_size: int, seed: int) -> tuple[np.ndarray, ...]:
    """Class templates (smooth random colour patterns) seen through random shift, gain and noise.

    Learnable by a small CNN within a few epochs, but the noise keeps it from being solved at once.
    """
    template_ss, train_ss, test_ss = np.random.SeedSequence(seed).spawn(3)
    coarse = np.random.default_rng(template_ss).standard_normal((NUM_CLASSES, 3, 5, 5), dtype=np.float32)
    templates = F.interpolate(torch.from_numpy(coarse), size=(40, 40), mode="bicubic", align_corners=False).numpy()
    templates /= templates.std(axis=(1, 2, 3), keepdims=True)
    windows = np.lib.stride_tricks.sliding_window_view(templates, (32, 32), axis=(2, 3))  # [C,3,9,9,32,32]

    def draw(n: int, ss: np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(ss)
        y = rng.permutation(np.arange(n) % NUM_CLASSES)
        dy, dx = rng.integers(0, windows.shape[2], size=(2, n))
        gain = rng.uniform(0.5, 1.5, size=(n, 1, 1, 1)).astype(np.float32)
        offset = rng.normal(0.0, 20.0, size=(n, 1, 1, 1)).astype(np.float32)
        noise = rng.standard_normal((n, 3, 32, 32), dtype=np.float32)
        images = 128 + 35 * gain * windows[y, :, dy, dx] + offset + 45 * noise
        return np.clip(images, 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1), y

    return (*draw(train_size, train_ss), *draw(test_size, test_ss))


_CIFAR10_SOURCES = {"npz": _load_npz, "torchvision": _load_torchvision, "hub": _load_hub}


# ---- load_data ----------------------------------------------------------------------------


def _carve_validation(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
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
    name: str,
    source: str,
    path: str,
    train_subset: int,
    val_fraction: float,
    seed: int,
    synthetic_sizes: tuple[int, int],
) -> FederatedData:
    if name == "synthetic":
        x_train, y_train, x_test, y_test = _synthetic(*synthetic_sizes, seed)
    else:  # cifar10 (name and source are validated with the rest of the config)
        x_train, y_train, x_test, y_test = _CIFAR10_SOURCES[source](path)
    if train_subset:
        if train_subset > len(y_train):
            raise DataSourceError(f"dataset.train_subset {train_subset}: the source has only {len(y_train)} images")
        x_train, y_train = x_train[:train_subset], y_train[:train_subset]
    y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
    train_idx, val_idx = _carve_validation(y_train, val_fraction, seed)
    arrays = [x_train[train_idx], y_train[train_idx], x_train[val_idx], y_train[val_idx], x_test, y_test]
    for a in arrays:
        a.setflags(write=False)  # shared by every client of the process through the cache
    return FederatedData(*arrays, num_classes=NUM_CLASSES)


def load_data(dataset_cfg: dict[str, Any]) -> FederatedData:
    """Load the configured source, keep the first `train_subset` images, carve the validation pool.

    Cached per process on the keys that change the arrays (not alpha or augment).
    """
    synthetic = dataset_cfg["name"] == "synthetic"
    return _load_data_cached(
        dataset_cfg["name"],
        "" if synthetic else dataset_cfg["source"],
        "" if synthetic else dataset_cfg["path"],
        int(dataset_cfg["train_subset"]),
        float(dataset_cfg["val_fraction"]),
        int(dataset_cfg["seed"]),
        (int(dataset_cfg["synthetic_train_size"]), int(dataset_cfg["synthetic_test_size"])) if synthetic else (0, 0),
    )


# ---- partitioning -------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _partition_cached(label_bytes: bytes, num_partitions: int, alpha: float, seed: int) -> tuple[np.ndarray, ...]:
    labels = np.frombuffer(label_bytes, dtype=np.int64)
    if num_partitions > len(labels):
        raise ValueError(
            f"{len(labels)} training images cannot be split over {num_partitions} clients (num_partitions): "
            "lower the number of clients or raise dataset.train_subset / dataset.synthetic_train_size"
        )
    features = datasets.Features(
        {"label": datasets.ClassLabel(num_classes=int(labels.max()) + 1), "idx": datasets.Value("int64")}
    )  # partition by label, read back idx
    ds = datasets.Dataset.from_dict({"label": labels, "idx": np.arange(len(labels))}, features=features)
    if math.isinf(alpha):
        # IidPartitioner cuts contiguous shards and has no seed: shuffle first so shards are random.
        partitioner = IidPartitioner(num_partitions)
        partitioner.dataset = ds.shuffle(seed=seed)
    else:
        # flwr's default of at least 10 images per client, but never more than half an even share so
        # small smoke-test data can be split; the partitioner resamples 10 times, then raises.
        min_size = max(1, min(10, len(labels) // (2 * num_partitions)))
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=alpha, min_partition_size=min_size, seed=seed
        )
        partitioner.dataset = ds
        try:
            partitioner.load_partition(0)
        except ValueError as err:
            raise ValueError(
                f"dataset.alpha {alpha}: Dirichlet partitioning of {len(labels)} images over {num_partitions} "
                f"clients left a client with fewer than {min_size} images in 10 tries; raise dataset.alpha, "
                "use fewer clients or more training data"
            ) from err
    parts = tuple(np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64) for i in range(num_partitions))
    for part in parts:
        part.setflags(write=False)  # cached: shared by every caller
    return parts


def partition_indices(labels: np.ndarray, num_partitions: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Indices into `labels` for each client: Dirichlet(alpha) over labels, or IID when alpha is inf.

    Disjoint and covering, reproducible for a seed, cached per process.
    """
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    return list(_partition_cached(labels.tobytes(), int(num_partitions), float(alpha), int(seed)))


# ---- loaders ------------------------------------------------------------------------------

_TO_FLOAT = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
_AUGMENT = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])


class _TransformedImages(Dataset):
    """uint8 CHW images transformed per sample (random augmentation must differ per draw)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: v2.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


def _chw(x: np.ndarray) -> torch.Tensor:
    """A writable uint8 [N,3,32,32] copy of HWC images (the cached arrays are read-only)."""
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def client_loader(
    data: FederatedData, partition_id: int, num_partitions: int, dataset_cfg: dict[str, Any], batch_size: int, seed: int
) -> DataLoader:
    """Shuffled (torch.Generator seeded by `seed`) training batches of one client's partition.

    Augmentation draws from torch's global RNG (num_workers=0), so seed that for repeatable crops.
    """
    idx = partition_indices(data.y_train, num_partitions, dataset_cfg["alpha"], dataset_cfg["seed"])[partition_id]
    transform = v2.Compose([_AUGMENT, _TO_FLOAT]) if dataset_cfg["augment"] else _TO_FLOAT
    dataset = _TransformedImages(_chw(data.x_train[idx]), torch.from_numpy(data.y_train[idx]), transform)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size, shuffle=True, generator=generator, num_workers=0, drop_last=False)


def eval_loader(x: np.ndarray, y: np.ndarray, batch_size: int) -> DataLoader:
    """Fixed-order normalised batches; converted once, since the server evaluates every round."""
    dataset = TensorDataset(_TO_FLOAT(_chw(x)), torch.tensor(y, dtype=torch.int64))
    return DataLoader(dataset, batch_size, shuffle=False, num_workers=0)
