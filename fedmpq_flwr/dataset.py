"""The data API under its former module name, re-exported from `fedmpq_flwr.data` (kept for callers
written before the split; new code imports from `fedmpq_flwr.data.*`)."""

from fedmpq_flwr.data.load import FederatedData, load_data
from fedmpq_flwr.data.loaders import client_loader, eval_loader
from fedmpq_flwr.data.noise import flip_labels
from fedmpq_flwr.data.partition import ClientPartition, client_partition, flipped_label_counts, partition_indices
from fedmpq_flwr.data.registry import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATASETS,
    DatasetSpec,
    DataSourceError,
    dataset_names,
    get_spec,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "ClientPartition",
    "DataSourceError",
    "DatasetSpec",
    "FederatedData",
    "client_loader",
    "client_partition",
    "dataset_names",
    "eval_loader",
    "flip_labels",
    "flipped_label_counts",
    "get_spec",
    "load_data",
    "partition_indices",
]
