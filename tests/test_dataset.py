"""Data loading, validation carve, partitioning and loaders (offline, CPU, a few seconds)."""

from __future__ import annotations

import hashlib
import math
import pickle
from pathlib import Path

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10

from fedmpq_flwr.data import load as load_mod
from fedmpq_flwr.data import sources as sources_mod
from fedmpq_flwr.data.device_batches import client_batches
from fedmpq_flwr.data.load import load_data
from fedmpq_flwr.data.loaders import eval_loader
from fedmpq_flwr.data.partition import partition_indices
from fedmpq_flwr.data.registry import CIFAR10_MEAN, CIFAR10_STD, DataSourceError
from fedmpq_flwr.models import build_model
from fedmpq_flwr.training.loop import loss_and_accuracy, train_epochs

# ../shared/data/cifar10 next to the checkout (or next to a folder holding it, for git worktrees)
REAL_CIFAR10 = next(
    (p / "shared/data/cifar10" for p in Path(__file__).resolve().parents[1:] if (p / "shared/data/cifar10").is_dir()),
    Path(__file__).resolve().parents[2] / "shared/data/cifar10",
)


def make_cfg(**overrides) -> dict:
    cfg = {
        "name": "synthetic",
        "source": "npz",
        "path": "",
        "train_subset": 0,
        "val_fraction": 0.0,
        "augment": False,
        "alpha": math.inf,
        "seed": 0,
        "synthetic_train_size": 500,
        "synthetic_test_size": 100,
    }
    return cfg | overrides


def random_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def balanced_labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % 10)


def label_entropy(labels: np.ndarray) -> float:
    p = np.bincount(labels, minlength=10) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


# ---- partitioning -------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.5, math.inf])
def test_partitions_reproducible_disjoint_and_covering(alpha: float) -> None:
    labels = balanced_labels(1000)
    parts = partition_indices(labels, 10, alpha, seed=1)
    assert len(parts) == 10
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(1000))
    again = partition_indices(labels.copy(), 10, alpha, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_indices(labels, 10, alpha, seed=2)
    assert not all(np.array_equal(np.sort(a), np.sort(b)) for a, b in zip(parts, other))


def test_iid_sizes_balanced_and_dirichlet_skewed() -> None:
    labels = balanced_labels(2000)
    iid = partition_indices(labels, 10, math.inf, seed=0)
    assert {len(p) for p in iid} == {200}
    skewed = partition_indices(labels, 10, 0.1, seed=0)
    iid_entropy = np.mean([label_entropy(labels[p]) for p in iid])
    skewed_entropy = np.mean([label_entropy(labels[p]) for p in skewed])
    assert iid_entropy > 0.9 * math.log(10)
    assert skewed_entropy < 0.6 * iid_entropy


def test_impossible_partitioning_names_the_cause() -> None:
    with pytest.raises(ValueError, match="num_partitions"):
        partition_indices(balanced_labels(20), 30, math.inf, seed=0)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"dataset\.alpha 0\.001"):
        partition_indices(balanced_labels(40), 20, 0.001, seed=0)


# ---- npz / torchvision / hub sources ------------------------------------------------------


def write_npz_dir(root: Path) -> tuple[np.ndarray, ...]:
    root.mkdir()
    x_train, y_train = random_images(40, seed=0)
    x_test, y_test = random_images(12, seed=1)
    np.savez(root / "train.npz", x=x_train, y=y_train)
    np.savez(root / "test.npz", x=x_test, y=y_test)
    return x_train, y_train, x_test, y_test


def test_npz_source(tmp_path: Path) -> None:
    x_train, y_train, x_test, y_test = write_npz_dir(tmp_path / "npz")
    data = load_data(make_cfg(name="cifar10", source="npz", path=str(tmp_path / "npz")))
    np.testing.assert_array_equal(data.x_train, x_train)
    np.testing.assert_array_equal(data.y_test, y_test)
    assert data.y_train.dtype == np.int64 and data.x_test.dtype == np.uint8 and data.num_classes == 10
    assert data.x_val.shape == (0, 32, 32, 3) and data.y_val.shape == (0,)


def test_npz_source_errors_name_the_key(tmp_path: Path) -> None:
    for path in (tmp_path / "absent", tmp_path):
        with pytest.raises(DataSourceError, match=r"dataset\.path .*train\.npz/test\.npz.*dataset\.source 'npz'"):
            load_data(make_cfg(name="cifar10", source="npz", path=str(path)))
    np.savez(tmp_path / "train.npz", x=np.zeros((4, 28, 28), np.uint8), y=np.zeros(4))
    np.savez(tmp_path / "test.npz", x=np.zeros((4, 28, 28), np.uint8), y=np.zeros(4))
    with pytest.raises(DataSourceError, match=r"dataset\.path .*expected x uint8 \[N,32,32,3\]"):
        load_data(make_cfg(name="cifar10", source="npz", path=str(tmp_path)))


def write_cifar_batches(parent: Path) -> tuple[np.ndarray, np.ndarray]:
    """A tiny cifar-10-batches-py in the real format: pickled dicts of uint8 [N,3072] rows (CHW) and labels."""
    folder = parent / CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, (6, 4, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, (6, 4))
    for i, (name, _) in enumerate(CIFAR10.train_list + CIFAR10.test_list):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows[i], "labels": labels[i].tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]},
            f,
        )
    return rows.reshape(6, 4, 3, 32, 32).transpose(0, 1, 3, 4, 2), labels


def test_torchvision_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = write_cifar_batches(tmp_path)
    cfg = make_cfg(name="cifar10", source="torchvision", path=str(tmp_path))
    # torchvision verifies every file against the md5 of the real CIFAR-10; a tiny stand-in cannot
    # match, which is exactly the corrupted-data error users must see ...
    with pytest.raises(DataSourceError, match=r"dataset\.path .*incomplete or corrupted"):
        load_data(cfg)

    # ... so register our files' checksums on the class for the reading test (torchvision then
    # runs its real reading code on them).
    def md5(name: str) -> str:
        return hashlib.md5((tmp_path / CIFAR10.base_folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5(n)] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5(n)] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", CIFAR10.meta | {"md5": md5("batches.meta")})
    for path in (tmp_path, tmp_path / CIFAR10.base_folder):  # the parent or the folder itself
        data = load_data(cfg | {"path": str(path)})
        np.testing.assert_array_equal(data.x_train, images[:5].reshape(20, 32, 32, 3))
        np.testing.assert_array_equal(data.y_train, labels[:5].reshape(20))
        np.testing.assert_array_equal(data.x_test, images[5])
        np.testing.assert_array_equal(data.y_test, labels[5])


def test_torchvision_source_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"dataset\.path .*no cifar-10-batches-py folder"):
        load_data(make_cfg(name="cifar10", source="torchvision", path=str(tmp_path)))


def test_hub_offline_is_a_data_source_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The libraries read these variables at import time (already done), so patch their constants too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataSourceError, match=r"dataset\.source 'hub'.*use dataset\.source 'npz' or 'torchvision'"):
        load_data(make_cfg(name="cifar10", source="hub", path=str(tmp_path)))


def test_hub_split_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub path with a local stand-in for the download: PIL `img` column -> uint8 HWC arrays."""
    splits = {"train": random_images(6, seed=0), "test": random_images(3, seed=1)}
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})

    class LocalFederatedDataset:
        def __init__(self, **kwargs) -> None:
            assert kwargs["dataset"] == "uoft-cs/cifar10" and kwargs["shuffle"] is False

        def load_split(self, split: str) -> datasets.Dataset:
            x, y = splits[split]
            return datasets.Dataset.from_dict({"img": [Image.fromarray(i) for i in x], "label": y}, features=features)

    monkeypatch.setattr(sources_mod, "FederatedDataset", LocalFederatedDataset)
    data = load_data(make_cfg(name="cifar10", source="hub", path="", train_subset=4))
    np.testing.assert_array_equal(data.x_train, splits["train"][0][:4])
    np.testing.assert_array_equal(data.y_train, splits["train"][1][:4])
    np.testing.assert_array_equal(data.x_test, splits["test"][0])


# ---- subset, validation carve, synthetic --------------------------------------------------


def test_train_subset_and_validation_carve() -> None:
    full = load_data(make_cfg())
    data = load_data(make_cfg(train_subset=300, val_fraction=0.2))
    assert len(data.y_val) == 60 and len(data.y_train) == 240 and len(data.y_test) == 100
    train_rows = {x.tobytes() for x in data.x_train}
    val_rows = {x.tobytes() for x in data.x_val}
    assert not train_rows & val_rows
    assert train_rows | val_rows == {x.tobytes() for x in full.x_train[:300]}
    expected_per_class = 0.2 * np.bincount(full.y_train[:300], minlength=10)
    assert np.abs(np.bincount(data.y_val, minlength=10) - expected_per_class).max() <= 1  # stratified
    with pytest.raises(DataSourceError, match=r"dataset\.train_subset 900"):
        load_data(make_cfg(train_subset=900))


def test_synthetic_is_deterministic_and_cached() -> None:
    first = load_data(make_cfg())
    assert load_data(make_cfg(alpha=0.5, augment=True)) is first  # keys that do not change the arrays
    load_mod._load_data_cached.cache_clear()
    second = load_data(make_cfg())
    assert second is not first
    for a, b in zip((first.x_train, first.y_train, first.x_test), (second.x_train, second.y_train, second.x_test)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(load_data(make_cfg(seed=1)).x_train, first.x_train)
    assert not np.array_equal(first.x_train[:100], first.x_test)  # separate streams
    with pytest.raises(ValueError):
        first.x_train[0, 0, 0, 0] = 1  # the cached arrays are shared: read-only


def test_synthetic_is_learnable() -> None:
    torch.manual_seed(0)
    cfg = make_cfg(synthetic_train_size=2000, synthetic_test_size=500)
    data = load_data(cfg)
    model = build_model("tiny_cnn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cpu = torch.device("cpu")
    train_epochs(model, client_batches(data, 0, 1, cfg, 64, seed=0, label_noise=0.0, device=cpu), optimizer, 2, cpu)
    _, accuracy = loss_and_accuracy(
        model, eval_loader(data.x_test, data.y_test, 256, mean=data.mean, std=data.std), torch.device("cpu")
    )
    assert accuracy > 0.5


# ---- loaders ------------------------------------------------------------------------------


def test_client_batches_order_and_normalisation() -> None:
    cfg = make_cfg(alpha=0.5)
    data = load_data(cfg)
    idx = partition_indices(data.y_train, 4, 0.5, seed=0)[1]
    cpu = torch.device("cpu")
    loader = client_batches(data, 1, 4, cfg, batch_size=16, seed=3, label_noise=0.0, device=cpu)
    batches = list(loader)
    images, labels = batches[0]
    assert images.dtype == torch.float32 and images.shape == (16, 3, 32, 32) and labels.dtype == torch.int64
    assert sum(len(b[1]) for b in batches) == len(idx)  # drop_last=False
    np.testing.assert_array_equal(np.sort(torch.cat([b[1] for b in batches]).numpy()), np.sort(data.y_train[idx]))

    def order(seed: int) -> torch.Tensor:
        return torch.cat([x for x, _ in client_batches(data, 1, 4, cfg, 16, seed=seed, label_noise=0.0, device=cpu)])

    assert torch.equal(order(3), torch.cat([x for x, _ in batches]))
    assert not torch.equal(order(4), order(3))

    # Without augmentation each sample is exactly the normalised image, as eval_loader gives it.
    mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    expected = (torch.from_numpy(data.x_train[idx]).permute(0, 3, 1, 2).float() / 255 - mean) / std
    samples = loader.batch(torch.arange(len(idx)))
    torch.testing.assert_close(samples, expected)
    eval_images = torch.cat(
        [x for x, _ in eval_loader(data.x_train[idx], data.y_train[idx], 32, mean=CIFAR10_MEAN, std=CIFAR10_STD)]
    )
    torch.testing.assert_close(eval_images, expected)


def test_client_batches_augment_when_asked() -> None:
    cfg = make_cfg(augment=True)
    data = load_data(cfg)
    cpu, first = torch.device("cpu"), torch.arange(20)
    plain = client_batches(data, 0, 2, cfg | {"augment": False}, 8, seed=0, label_noise=0.0, device=cpu).batch(first)
    augmented = client_batches(data, 0, 2, cfg, 8, seed=0, label_noise=0.0, device=cpu).batch(first)
    changed = [not torch.equal(a, b) for a, b in zip(augmented, plain)]
    assert augmented.shape == (20, 3, 32, 32) and sum(changed) >= 10


def test_eval_loader_keeps_order() -> None:
    data = load_data(make_cfg())
    labels = torch.cat([y for _, y in eval_loader(data.x_test, data.y_test, 32, mean=data.mean, std=data.std)])
    np.testing.assert_array_equal(labels.numpy(), data.y_test)


@pytest.mark.skipif(not (REAL_CIFAR10 / "train.npz").exists(), reason="real CIFAR-10 npz not on this machine")
def test_real_cifar10_npz_subset() -> None:
    data = load_data(make_cfg(name="cifar10", source="npz", path=str(REAL_CIFAR10), train_subset=10000))
    assert data.x_train.shape == (10000, 32, 32, 3) and data.x_test.shape == (10000, 32, 32, 3)
    np.testing.assert_array_equal(data.y_train[:10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3])  # SOURCE.md
    assert set(np.unique(data.y_train)) == set(range(10))
    np.testing.assert_array_equal(np.bincount(data.y_test), [1000] * 10)
