"""Split the training set over clients with flwr-datasets partitioners; each client's (noisy) labels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import datasets
import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

from fedmpq_flwr.data.load import FederatedData
from fedmpq_flwr.data.noise import noisy_partition_labels


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


@dataclass(frozen=True)
class ClientPartition:
    """One client's training data: `idx` into the training arrays, its labels after label noise
    (in the order of `idx`), and which of them were flipped."""

    idx: np.ndarray
    labels: np.ndarray
    flipped: np.ndarray

    @property
    def num_flipped(self) -> int:
        return int(self.flipped.sum())


def client_partition(
    data: FederatedData, partition_id: int, num_partitions: int, alpha: float, seed: int, label_noise: float
) -> ClientPartition:
    """The partition of one client (`partition_indices` with `alpha` and dataset `seed`) and its
    labels, each flipped with probability `label_noise` (seeded by `seed` and `partition_id`)."""
    idx = partition_indices(data.y_train, num_partitions, alpha, seed)[partition_id]
    labels, flipped = noisy_partition_labels(data.y_train[idx], label_noise, data.num_classes, seed, partition_id)
    return ClientPartition(idx, labels, flipped)


def flipped_label_counts(
    data: FederatedData, num_partitions: int, alpha: float, seed: int, label_noise: float
) -> list[int]:
    """How many training labels label noise flipped in each partition (index = partition id): the
    same flips the clients train on, computed without them (for the server's record)."""
    return [
        client_partition(data, i, num_partitions, alpha, seed, label_noise).num_flipped for i in range(num_partitions)
    ]
