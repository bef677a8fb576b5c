"""Symmetric label noise: the pure function, its per-partition seeding, the loader and the server count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmpq_flwr.data.device_batches import client_batches
from fedmpq_flwr.data.load import load_data
from fedmpq_flwr.data.loaders import eval_loader
from fedmpq_flwr.data.noise import flip_labels, noisy_partition_labels
from fedmpq_flwr.data.partition import client_partition, flipped_label_counts, partition_indices


def make_cfg(**overrides) -> dict:
    cfg = {
        "name": "synthetic",
        "source": "npz",
        "path": "",
        "train_subset": 0,
        "val_fraction": 0.1,
        "augment": False,
        "alpha": 0.5,
        "seed": 7,
        "synthetic_train_size": 2000,
        "synthetic_test_size": 200,
    }
    return cfg | overrides


# ---- flip_labels --------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [2, 10, 100])
@pytest.mark.parametrize("p", [0.05, 0.3, 0.8])
def test_rate_within_tolerance_and_never_the_same_class(p: float, num_classes: int) -> None:
    n = 200_000
    labels = np.random.default_rng(1).integers(0, num_classes, n)
    noisy, flipped = flip_labels(labels, p, num_classes, seed=5)
    assert abs(flipped.mean() - p) < 5 * math.sqrt(p * (1 - p) / n)  # 5 standard errors
    np.testing.assert_array_equal(flipped, noisy != labels)  # a flip always changes the class
    np.testing.assert_array_equal(noisy[~flipped], labels[~flipped])
    assert noisy.dtype == labels.dtype and noisy.min() >= 0 and noisy.max() < num_classes


def test_new_class_uniform_over_the_others() -> None:
    labels = np.full(90_000, 3)
    noisy, flipped = flip_labels(labels, 1.0, 10, seed=0)
    assert flipped.all()
    counts = np.bincount(noisy, minlength=10)
    assert counts[3] == 0
    others = np.delete(counts, 3)
    expected = 90_000 / 9
    assert np.abs(others - expected).max() < 5 * math.sqrt(expected)


def test_deterministic_and_input_untouched() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    before = labels.copy()
    a = flip_labels(labels, 0.3, 10, seed=11)
    b = flip_labels(labels, 0.3, 10, seed=11)
    c = flip_labels(labels, 0.3, 10, seed=12)
    np.testing.assert_array_equal(labels, before)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    # seeds may also be sequences (as for a partition) or SeedSequences
    np.testing.assert_array_equal(
        flip_labels(labels, 0.3, 10, seed=[7, 2])[0], flip_labels(labels, 0.3, 10, np.random.SeedSequence([7, 2]))[0]
    )


def test_zero_noise_is_identity() -> None:
    labels = np.random.default_rng(0).integers(0, 100, 5000).astype(np.int64)
    noisy, flipped = flip_labels(labels, 0.0, 100, seed=3)
    np.testing.assert_array_equal(noisy, labels)
    assert not flipped.any() and noisy is not labels and noisy.dtype == np.int64


def test_flips_nested_across_rates() -> None:
    """One seed: the labels flipped at p=0.1 are flipped at p=0.4 too, to the same classes."""
    labels = np.random.default_rng(0).integers(0, 10, 20_000)
    low, low_mask = flip_labels(labels, 0.1, 10, seed=4)
    high, high_mask = flip_labels(labels, 0.4, 10, seed=4)
    assert (low_mask <= high_mask).all() and low_mask.sum() < high_mask.sum()
    np.testing.assert_array_equal(low[low_mask], high[low_mask])


def test_bad_arguments() -> None:
    labels = np.arange(10) % 5
    for p in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="probability"):
            flip_labels(labels, p, 5, seed=0)
    with pytest.raises(ValueError, match=r"outside the 4 classes"):
        flip_labels(labels, 0.1, 4, seed=0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        flip_labels(np.zeros(3, np.int64), 0.1, 1, seed=0)
    with pytest.raises(ValueError, match="1-D integer"):
        flip_labels(labels.astype(float), 0.1, 5, seed=0)
    assert flip_labels(np.zeros(0, np.int64), 0.5, 10, seed=0)[0].shape == (0,)


# ---- per partition ------------------------------------------------------------------------


def test_partition_noise_depends_on_seed_and_partition_only() -> None:
    cfg = make_cfg()
    data = load_data(cfg)
    first = client_partition(data, 3, 10, 0.5, 7, 0.3)
    for other in (9, 0, 5):  # other clients first, in any order: client 3 is unchanged
        client_partition(data, other, 10, 0.5, 7, 0.3)
    again = client_partition(data, 3, 10, 0.5, 7, 0.3)
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(first.flipped, again.flipped)
    # exactly the pure function on the partition's clean labels, seeded by (dataset seed, partition id)
    idx = partition_indices(data.y_train, 10, 0.5, seed=7)[3]
    np.testing.assert_array_equal(first.idx, idx)
    noisy, flipped = noisy_partition_labels(data.y_train[idx], 0.3, 10, dataset_seed=7, partition_id=3)
    np.testing.assert_array_equal(first.labels, noisy)
    np.testing.assert_array_equal(first.flipped, flipped)
    # another partition id or dataset seed draws other flips for the same labels
    labels = data.y_train[idx]
    assert not np.array_equal(noisy_partition_labels(labels, 0.3, 10, 7, 4)[1], flipped)
    assert not np.array_equal(noisy_partition_labels(labels, 0.3, 10, 8, 3)[1], flipped)
    assert first.num_flipped == int(flipped.sum()) > 0


def test_flipped_counts_for_the_server() -> None:
    data = load_data(make_cfg())
    counts = flipped_label_counts(data, 10, 0.5, 7, 0.3)
    assert len(counts) == 10 and all(isinstance(c, int) for c in counts)
    assert counts == [client_partition(data, i, 10, 0.5, 7, 0.3).num_flipped for i in reversed(range(10))][::-1]
    assert abs(sum(counts) / len(data.y_train) - 0.3) < 0.05
    assert flipped_label_counts(data, 10, 0.5, 7, 0.0) == [0] * 10


def test_client_batches_train_on_noisy_labels_and_test_labels_stay_clean() -> None:
    cfg = make_cfg()
    data = load_data(cfg)
    y_test, y_val, y_train = data.y_test.copy(), data.y_val.copy(), data.y_train.copy()
    cpu = torch.device("cpu")
    clean = client_batches(data, 2, 10, cfg, batch_size=32, seed=1, label_noise=0.0, device=cpu)
    noisy = client_batches(data, 2, 10, cfg, batch_size=32, seed=1, label_noise=0.4, device=cpu)
    clean_x, clean_y = (torch.cat(t) for t in zip(*clean))
    noisy_x, noisy_y = (torch.cat(t) for t in zip(*noisy))
    assert torch.equal(clean_x, noisy_x)  # same images in the same order: only labels change
    changed = int((clean_y != noisy_y).sum())
    assert clean.num_flipped == 0 and changed == noisy.num_flipped
    assert changed == flipped_label_counts(data, 10, 0.5, 7, 0.4)[2]
    assert abs(changed / len(clean_y) - 0.4) < 0.15
    # the shared arrays, the validation pool and the test set are untouched
    for kept, now in ((y_train, data.y_train), (y_val, data.y_val), (y_test, data.y_test)):
        np.testing.assert_array_equal(kept, now)
    test_labels = torch.cat([y for _, y in eval_loader(data.x_test, data.y_test, 64, mean=data.mean, std=data.std)])
    np.testing.assert_array_equal(test_labels.numpy(), y_test)


def test_label_noise_with_100_classes() -> None:
    cfg = make_cfg(name="synthetic100", synthetic_train_size=3000, alpha=math.inf)
    data = load_data(cfg)
    counts = flipped_label_counts(data, 20, math.inf, 7, 0.2)
    assert abs(sum(counts) / 3000 - 0.2) < 0.04
    part = client_partition(data, 5, 20, math.inf, 7, 0.2)
    assert (part.labels[part.flipped] != data.y_train[part.idx][part.flipped]).all()
    assert part.labels.max() < 100
