"""The dataset registry: declarations, CIFAR-100 sources, 100-class stand-in, shapes other than 32x32x3.

Offline, CPU, a few seconds; no CIFAR-100 copy is needed (its sources are exercised with tiny local files).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import pickle
import subprocess
import sys
from pathlib import Path

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR100

from fedmpq_flwr.data import sources as sources_mod
from fedmpq_flwr.data.device_batches import client_batches
from fedmpq_flwr.data.load import carve_validation, load_data
from fedmpq_flwr.data.loaders import eval_loader
from fedmpq_flwr.data.partition import partition_indices
from fedmpq_flwr.data.registry import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    DATASETS,
    DatasetSpec,
    DataSourceError,
    HubSource,
    TorchvisionSource,
    dataset_names,
    get_spec,
    register,
)
from fedmpq_flwr.models import build_model
from fedmpq_flwr.training.loop import train_epochs

REAL = [name for name, spec in DATASETS.items() if not spec.synthetic]


def make_cfg(**overrides) -> dict:
    cfg = {
        "name": "synthetic100",
        "source": "npz",
        "path": "",
        "train_subset": 0,
        "val_fraction": 0.0,
        "augment": False,
        "alpha": math.inf,
        "seed": 0,
        "synthetic_train_size": 3000,
        "synthetic_test_size": 500,
    }
    return cfg | overrides


def entropy(labels: np.ndarray, num_classes: int) -> float:
    p = np.bincount(labels, minlength=num_classes) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


# ---- declarations -------------------------------------------------------------------------


def test_registry_is_torch_free() -> None:
    """The config validator lists dataset names without pulling in torch (or numpy, or flwr)."""
    code = (
        "import sys; from fedmpq_flwr.data import dataset_names; from fedmpq_flwr.data.registry import DATASETS; "
        "print(','.join(dataset_names())); "
        "print(','.join(m for m in ('torch', 'numpy', 'flwr', 'flwr_datasets', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]
    ).stdout.split("\n")
    assert out[0] == "cifar10,cifar100,synthetic,synthetic100" and out[1] == ""


@pytest.mark.parametrize("name", list(DATASETS))
def test_declaration_is_complete_and_consistent(name: str) -> None:
    spec = DATASETS[name]
    assert spec.name == name and get_spec(name) is spec and name in dataset_names()
    height, width, channels = spec.image_shape
    assert len(spec.mean) == len(spec.std) == channels and all(0 < s < 1 for s in spec.std)
    assert all(0 < m < 1 for m in spec.mean) and spec.num_classes >= 2
    if spec.synthetic:
        assert spec.sources == ()
        return
    assert spec.sources == ("npz", "torchvision", "hub")  # every real dataset offers all three
    # the class named by string exists and reads the declared folder
    module, _, class_name = spec.torchvision.cls.rpartition(".")
    assert getattr(importlib.import_module(module), class_name).base_folder == spec.torchvision.base_folder


def test_declared_values_of_cifar100_and_the_stand_ins() -> None:
    cifar100 = get_spec("cifar100")
    assert cifar100.num_classes == 100 and cifar100.image_shape == (32, 32, 3)
    assert cifar100.hub == HubSource("uoft-cs/cifar100", image_column="img", label_column="fine_label")
    assert cifar100.torchvision == TorchvisionSource("torchvision.datasets.CIFAR100", "cifar-100-python")
    assert (cifar100.mean, cifar100.std) == (CIFAR100_MEAN, CIFAR100_STD)
    for stand_in, real in (("synthetic", "cifar10"), ("synthetic100", "cifar100")):
        a, b = get_spec(stand_in), get_spec(real)
        assert (a.image_shape, a.num_classes, a.mean, a.std) == (b.image_shape, b.num_classes, b.mean, b.std)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mean": (0.5, 0.5)}, r"one value per channel, 3 channels"),
        ({"std": (0.2, 0.0, 0.2)}, r"positive values"),
        ({"num_classes": 1}, r"num_classes 1"),
        ({"image_shape": (32, 32)}, r"image_shape \(32, 32\)"),
        ({"npz": False}, r"sources and synthetic=True together, or neither"),
        ({"synthetic": True}, r"sources and synthetic=True together, or neither"),
    ],
)
def test_bad_declarations_are_rejected(changes: dict, message: str) -> None:
    fields = dict(name="bad", image_shape=(32, 32, 3), num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3, npz=True)
    with pytest.raises(ValueError, match=rf"dataset 'bad' declares .*{message}"):
        DatasetSpec(**(fields | changes))
    with pytest.raises(ValueError, match="registered twice"):
        register(get_spec("cifar10"))


def test_unknown_name_and_undeclared_source_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataSourceError, match=r"dataset\.name 'mnist' is unknown .*cifar10, cifar100, synthetic"):
        load_data(make_cfg(name="mnist"))
    npz_only = DatasetSpec("npz_only", (32, 32, 3), 10, (0.5,) * 3, (0.25,) * 3, npz=True)
    monkeypatch.setitem(DATASETS, "npz_only", npz_only)
    with pytest.raises(DataSourceError, match=r"dataset\.source 'hub' is not available .*'npz_only': npz\)$"):
        load_data(make_cfg(name="npz_only", source="hub"))


# ---- real datasets offline, without a local copy ------------------------------------------


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # The libraries read these variables at import time (already done), so patch their constants too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("name", REAL)
def test_missing_copy_is_a_one_line_error(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offline(monkeypatch)
    spec = get_spec(name)
    expected = {
        "npz": r"dataset\.path .*no train\.npz/test\.npz there; dataset\.source 'npz'",
        "torchvision": rf"dataset\.path .*no {spec.torchvision.base_folder} folder there; .*'torchvision'",
        "hub": rf"dataset\.source 'hub': could not load '{spec.hub.repo}' .*use dataset\.source 'npz' or 'torchvision'",
    }
    for source, message in expected.items():
        with pytest.raises(DataSourceError, match=message) as info:
            load_data(make_cfg(name=name, source=source, path=str(tmp_path)))
        assert "\n" not in str(info.value)


# ---- CIFAR-100 sources with tiny local files ----------------------------------------------


def random_images(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, num_classes, n).astype(np.uint8)


def test_cifar100_npz_and_label_range(tmp_path: Path) -> None:
    x_train, y_train = random_images(300, 100, seed=0)
    x_test, y_test = random_images(50, 100, seed=1)
    y_train[:2] = [0, 99]
    np.savez(tmp_path / "train.npz", x=x_train, y=y_train)
    np.savez(tmp_path / "test.npz", x=x_test, y=y_test)
    data = load_data(make_cfg(name="cifar100", source="npz", path=str(tmp_path), val_fraction=0.1))
    assert (
        data.num_classes == 100 and data.name == "cifar100" and (data.mean, data.std) == (CIFAR100_MEAN, CIFAR100_STD)
    )
    assert len(data.y_val) == 30 and set(data.y_train) | set(data.y_val) == set(y_train.tolist())
    np.testing.assert_array_equal(data.y_test, y_test)
    # CIFAR-100 files read as CIFAR-10: the labels do not fit its classes
    with pytest.raises(
        DataSourceError, match=r"train labels uint8 in \[0, 99\]; dataset\.name 'cifar10' has 10 classes"
    ):
        load_data(make_cfg(name="cifar10", source="npz", path=str(tmp_path)))


def test_cifar100_torchvision_reads_fine_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny cifar-100-python in the real format (pickled dicts: uint8 [N,3072] CHW rows, fine and
    coarse labels), read by torchvision's own code once our files' checksums are registered."""
    folder = tmp_path / CIFAR100.base_folder
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = {"train": rng.integers(0, 256, (8, 3072), dtype=np.uint8), "test": rng.integers(0, 256, (3, 3072), np.uint8)}
    fine = {"train": [0, 5, 99, 42, 17, 63, 88, 1], "test": [7, 99, 0]}
    for split in ("train", "test"):
        entry = {"data": rows[split], "fine_labels": fine[split], "coarse_labels": [f % 20 for f in fine[split]]}
        (folder / split).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    cfg = make_cfg(name="cifar100", source="torchvision", path=str(tmp_path))
    with pytest.raises(DataSourceError, match=r"cifar-100-python is incomplete or corrupted"):
        load_data(cfg)  # the checksums of the real CIFAR-100 do not match

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5("train")]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5("test")]])
    monkeypatch.setattr(CIFAR100, "meta", CIFAR100.meta | {"md5": md5("meta")})
    for path in (tmp_path, folder):
        data = load_data(cfg | {"path": str(path)})
        np.testing.assert_array_equal(data.x_train, rows["train"].reshape(8, 3, 32, 32).transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(data.y_train, fine["train"])
        np.testing.assert_array_equal(data.y_test, fine["test"])
        assert data.num_classes == 100


def test_cifar100_hub_reads_fine_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub path with a local stand-in for the download: `img` and `fine_label`, not `coarse_label`."""
    splits = {"train": random_images(6, 100, seed=0), "test": random_images(3, 100, seed=1)}
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(num_classes=100),
            "coarse_label": datasets.ClassLabel(num_classes=20),
        }
    )

    class LocalFederatedDataset:
        def __init__(self, **kwargs) -> None:
            assert kwargs["dataset"] == "uoft-cs/cifar100" and kwargs["shuffle"] is False

        def load_split(self, split: str) -> datasets.Dataset:
            x, y = splits[split]
            columns = {"img": [Image.fromarray(i) for i in x], "fine_label": y, "coarse_label": y // 5}
            return datasets.Dataset.from_dict(columns, features=features)

    monkeypatch.setattr(sources_mod, "FederatedDataset", LocalFederatedDataset)
    data = load_data(make_cfg(name="cifar100", source="hub"))
    np.testing.assert_array_equal(data.x_train, splits["train"][0])
    np.testing.assert_array_equal(data.y_train, splits["train"][1])
    np.testing.assert_array_equal(data.y_test, splits["test"][1])


# ---- the 100-class stand-in ---------------------------------------------------------------


def nearest_class_mean_accuracy(data) -> float:
    x = data.x_train.reshape(len(data.x_train), -1).astype(np.float32)
    means = np.stack([x[data.y_train == c].mean(0) for c in range(data.num_classes)])
    test = data.x_test.reshape(len(data.x_test), -1).astype(np.float32)
    distance = (means**2).sum(1)[None, :] - 2 * test @ means.T
    return float((distance.argmin(1) == data.y_test).mean())


def test_synthetic100_shape_classes_and_signal() -> None:
    data = load_data(make_cfg())
    assert data.x_train.shape == (3000, 32, 32, 3) and data.x_test.shape == (500, 32, 32, 3)
    assert data.num_classes == 100 and (data.mean, data.std) == (CIFAR100_MEAN, CIFAR100_STD)
    np.testing.assert_array_equal(np.bincount(data.y_train), [30] * 100)
    np.testing.assert_array_equal(np.bincount(data.y_test), [5] * 100)
    assert nearest_class_mean_accuracy(data) > 0.5  # 50x chance: the classes carry signal
    ten = load_data(make_cfg(name="synthetic"))
    assert ten.num_classes == 10 and set(ten.y_train.tolist()) == set(range(10))


@pytest.mark.parametrize("num_partitions", [10, 20])
def test_partitioning_100_classes(num_partitions: int) -> None:
    """flwr-datasets partitioners over 100 classes: disjoint, covering, reproducible; the label skew
    grows as alpha falls (mean label entropy per client, as a fraction of log 100)."""
    data = load_data(make_cfg(synthetic_train_size=5000))
    mean_entropy = {}
    for alpha in (0.1, 0.5, math.inf):
        parts = partition_indices(data.y_train, num_partitions, alpha, seed=1)
        assert len(parts) == num_partitions and min(len(p) for p in parts) >= 10
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(5000))
        again = partition_indices(data.y_train.copy(), num_partitions, alpha, seed=1)
        assert all(np.array_equal(a, b) for a, b in zip(parts, again))
        mean_entropy[alpha] = np.mean([entropy(data.y_train[p], 100) for p in parts]) / math.log(100)
        if math.isinf(alpha):
            assert {len(p) for p in parts} == {5000 // num_partitions}
            assert min(len(np.unique(data.y_train[p])) for p in parts) >= 80
    assert mean_entropy[0.1] + 0.1 < mean_entropy[0.5] < mean_entropy[math.inf] - 0.05
    assert mean_entropy[math.inf] > 0.93


def test_validation_carve_stratified_over_100_classes() -> None:
    y = np.random.default_rng(0).permutation(np.arange(5000) % 100)
    train_idx, val_idx = carve_validation(y, 0.2, seed=3)
    assert len(val_idx) == 1000 and not set(train_idx) & set(val_idx)
    np.testing.assert_array_equal(np.bincount(y[val_idx], minlength=100), [10] * 100)


def test_training_on_100_classes_and_dataset_statistics() -> None:
    cfg = make_cfg(alpha=0.5)
    data = load_data(cfg)
    loader = client_batches(data, 3, 10, cfg, batch_size=32, seed=0, label_noise=0.0, device=torch.device("cpu"))
    idx = partition_indices(data.y_train, 10, 0.5, seed=0)[3]
    mean, std = torch.tensor(CIFAR100_MEAN).view(3, 1, 1), torch.tensor(CIFAR100_STD).view(3, 1, 1)
    expected = (torch.from_numpy(data.x_train[idx]).permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(loader.batch(torch.arange(len(idx))), expected)
    loader_b = eval_loader(data.x_train[idx], data.y_train[idx], 64, mean=data.mean, std=data.std)
    torch.testing.assert_close(torch.cat([x for x, _ in loader_b]), expected)
    torch.manual_seed(0)
    model = build_model("tiny_cnn", data.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    stats = train_epochs(model, loader, optimizer, 1, torch.device("cpu"))
    assert model.fc.out_features == 100 and math.isfinite(stats["train_loss"])


# ---- a shape other than 32x32x3 -----------------------------------------------------------

GRAY28 = DatasetSpec("gray28", (28, 28, 1), 5, (0.3,), (0.2,), npz=True, description="test: 28x28 grayscale")


def test_other_image_shape_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One declaration is enough for a 28x28 grayscale 5-class dataset: npz check, crop, statistics."""
    monkeypatch.setitem(DATASETS, "gray28", GRAY28)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.integers(0, 256, (60, 28, 28, 1), np.uint8), y=np.arange(60) % 5)
    np.savez(tmp_path / "test.npz", x=rng.integers(0, 256, (20, 28, 28, 1), np.uint8), y=np.arange(20) % 5)
    cfg = make_cfg(name="gray28", path=str(tmp_path), augment=True)
    data = load_data(cfg)
    assert data.image_shape == (28, 28, 1) and data.num_classes == 5 and data.x_train.shape == (60, 28, 28, 1)
    cpu, first = torch.device("cpu"), torch.arange(20)
    plain = client_batches(data, 0, 2, cfg | {"augment": False}, 8, seed=0, label_noise=0.0, device=cpu).batch(first)
    augmented = client_batches(data, 0, 2, cfg, 8, seed=0, label_noise=0.0, device=cpu).batch(first)
    assert plain.shape == augmented.shape == (20, 1, 28, 28)
    idx = partition_indices(data.y_train, 2, math.inf, seed=0)[0]
    expected = (torch.from_numpy(data.x_train[idx[:1]]).permute(0, 3, 1, 2).float() / 255 - 0.3) / 0.2
    torch.testing.assert_close(plain[0], expected[0])
    assert sum(not torch.equal(a, b) for a, b in zip(augmented, plain)) >= 10
    images = next(iter(eval_loader(data.x_test, data.y_test, 8, mean=data.mean, std=data.std)))[0]
    assert images.shape == (8, 1, 28, 28)
    # CIFAR-shaped files for this dataset: the error names the declared shape
    np.savez(tmp_path / "train.npz", x=np.zeros((4, 32, 32, 3), np.uint8), y=np.zeros(4))
    with pytest.raises(DataSourceError, match=r"expected x uint8 \[N,28,28,1\] and y \[N\] for dataset\.name 'gray28'"):
        load_data(cfg | {"train_subset": 1})  # another cache key


def test_generated_data_follows_the_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = DatasetSpec("synthetic_gray", (20, 24, 1), 7, (0.5,), (0.25,), synthetic=True)
    monkeypatch.setitem(DATASETS, spec.name, spec)
    data = load_data(make_cfg(name=spec.name, synthetic_train_size=70, synthetic_test_size=14))
    assert data.x_train.shape == (70, 20, 24, 1) and data.x_test.shape == (14, 20, 24, 1)
    np.testing.assert_array_equal(np.bincount(data.y_train), [10] * 7)
    batches = client_batches(data, 0, 1, make_cfg(augment=True), 4, seed=0, label_noise=0.0, device=torch.device("cpu"))
    assert next(iter(batches))[0].shape == (4, 1, 20, 24)
