"""Readers of a declared dataset's sources: npz, torchvision, Hugging Face Hub, or generated.

Each returns x_train, y_train, x_test, y_test with images uint8 [N,H,W,C] (RGB for colour data);
any failure is a one-line DataSourceError naming dataset.source / dataset.path.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
from flwr_datasets import FederatedDataset

from fedmpq_flwr.data.registry import DatasetSpec, DataSourceError
from fedmpq_flwr.data.synthetic import class_template_images

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _options(spec: DatasetSpec) -> str:
    return f"(options for dataset.source with dataset.name {spec.name!r}: {', '.join(spec.sources)})"


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[N," + ",".join(str(s) for s in shape) + "]"


def read_npz(spec: DatasetSpec, path: str) -> Arrays:
    files = [Path(path) / "train.npz", Path(path) / "test.npz"]
    if not all(f.is_file() for f in files):
        raise DataSourceError(
            f"dataset.path {path!r}: no train.npz/test.npz there; dataset.source 'npz' needs a directory "
            f"holding them {_options(spec)}"
        )
    arrays = []
    for f in files:
        with np.load(f) as npz:
            if "x" not in npz or "y" not in npz:
                raise DataSourceError(f"dataset.path {path!r}: {f.name} lacks arrays 'x' and 'y'")
            x, y = npz["x"], npz["y"]
        if x.dtype != np.uint8 or x.shape[1:] != spec.image_shape or y.ndim != 1 or len(x) != len(y):
            raise DataSourceError(
                f"dataset.path {path!r}: {f.name} holds x {x.dtype}{list(x.shape)}, y {list(y.shape)}; "
                f"expected x uint8 {_shape_text(spec.image_shape)} and y [N] for dataset.name {spec.name!r}"
            )
        arrays += [x, y]
    return tuple(arrays)


def read_torchvision(spec: DatasetSpec, path: str) -> Arrays:
    source = spec.torchvision
    module, _, class_name = source.cls.rpartition(".")
    dataset_class = getattr(importlib.import_module(module), class_name)
    # torchvision wants the parent of its base folder; accept the folder itself too.
    root = Path(path)
    if root.name == source.base_folder:
        root = root.parent
    if not (root / source.base_folder).is_dir():
        raise DataSourceError(
            f"dataset.path {path!r}: no {source.base_folder} folder there; dataset.source 'torchvision' needs "
            f"that folder or its parent {_options(spec)}"
        )
    try:
        splits = [dataset_class(str(root), train=train, download=False) for train in (True, False)]
    except RuntimeError as err:  # torchvision checks the md5 of every file
        raise DataSourceError(
            f"dataset.path {path!r}: {source.base_folder} is incomplete or corrupted ({err}); "
            "dataset.source 'torchvision' needs the original python-version files"
        ) from err
    return tuple(a for s in splits for a in (np.asarray(s.data), np.asarray(s.targets)))


def read_hub(spec: DatasetSpec, path: str) -> Arrays:
    hub = spec.hub
    # shuffle=False keeps the original order, so train_subset picks the same images as npz/torchvision.
    fds = FederatedDataset(dataset=hub.repo, partitioners={"train": 1}, shuffle=False, cache_dir=path or None)
    columns = [hub.image_column, hub.label_column]
    try:
        splits = [fds.load_split(split).select_columns(columns).with_format("numpy")[:] for split in ("train", "test")]
    except OSError as err:  # ConnectionError offline, HfHubHTTPError, DatasetNotFoundError, ...
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise DataSourceError(
            f"dataset.source 'hub': could not load {hub.repo!r} from the Hugging Face Hub ({reason}); "
            "without internet use dataset.source 'npz' or 'torchvision' with dataset.path"
        ) from err
    return tuple(a for s in splits for a in (s[hub.image_column], s[hub.label_column]))


READERS = {"npz": read_npz, "torchvision": read_torchvision, "hub": read_hub}


def _check(spec: DatasetSpec, source: str, arrays: Arrays) -> None:
    """Whatever the source, images of the declared shape and labels of the declared classes."""
    for split, x, y in (("train", *arrays[:2]), ("test", *arrays[2:])):
        where = f"dataset.source {source!r} gave {split} images {x.dtype}{list(x.shape)}"
        if x.dtype != np.uint8 or x.shape[1:] != spec.image_shape or len(x) != len(y):
            raise DataSourceError(
                f"{where} and {len(y)} labels; dataset.name {spec.name!r} expects uint8 "
                f"{_shape_text(spec.image_shape)} and one label per image"
            )
        if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= spec.num_classes):
            raise DataSourceError(
                f"dataset.source {source!r} gave {split} labels {y.dtype} in [{y.min()}, {y.max()}]; "
                f"dataset.name {spec.name!r} has {spec.num_classes} classes (labels 0 to {spec.num_classes - 1})"
            )


def read_source(spec: DatasetSpec, source: str, path: str, synthetic_sizes: tuple[int, int], seed: int) -> Arrays:
    """x_train, y_train, x_test, y_test of a dataset: generated (seeded, `synthetic_sizes` images)
    for a synthetic one, else read from `source` at `path`, checked against the declaration."""
    if spec.synthetic:
        return class_template_images(spec.image_shape, spec.num_classes, *synthetic_sizes, seed)
    if source not in spec.sources:
        raise DataSourceError(f"dataset.source {source!r} is not available {_options(spec)}")
    arrays = READERS[source](spec, path)
    _check(spec, source, arrays)
    return arrays
