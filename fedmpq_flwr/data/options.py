"""The `dataset` section of the run config, declared next to the data code (torch-free)."""

from __future__ import annotations

from fedmpq_flwr.config.fields import Field, Section, choice, flag, number, text
from fedmpq_flwr.data.registry import SOURCE_NAMES, dataset_names

DATASET: Section = {
    "name": Field(str, "cifar10", choices=dataset_names),
    "source": choice("hub", *SOURCE_NAMES),
    "path": text(),
    "train_subset": number(int, 0, 0),
    "val_fraction": number(float, 0.0, 0, 1, high_open=True),
    "augment": flag(True),
    "alpha": number(float, 0.5, 0, low_open=True),
    "seed": number(int, 42, 0),
    "label_noise": number(float, 0.0, 0, 1, high_open=True),  # share of each client's training labels flipped
    "synthetic_train_size": number(int, 2000, 20),
    "synthetic_test_size": number(int, 500, 10),
}
