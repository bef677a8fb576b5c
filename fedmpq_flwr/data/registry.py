"""Dataset registry: what each dataset is (shape, classes, normalisation) and where it can be read from.

Pure Python, no torch, no numpy: the config validator lists the names from here. Adding a dataset is
one `register(DatasetSpec(...))` below; the readers in `sources.py` work from the declaration alone.
"""

from __future__ import annotations

from dataclasses import dataclass


class DataSourceError(ValueError):
    """A data source that cannot be read; the one-line message names the config key to fix."""


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face Hub dataset read through flwr-datasets: its id and the image and label columns."""

    repo: str
    image_column: str = "img"
    label_column: str = "label"


@dataclass(frozen=True)
class TorchvisionSource:
    """A torchvision dataset class named by import path (imported only when read) and the folder it
    reads under its root (the parent of that folder, or the folder itself, is `dataset.path`)."""

    cls: str
    base_folder: str


SOURCE_NAMES = ("npz", "torchvision", "hub")  # every value dataset.source may take


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset. `image_shape` is (H, W, C) of the uint8 images; `mean`/`std` (one per channel,
    pixels in [0, 1]) normalise them for the model. Sources: `npz` (train.npz/test.npz in
    `dataset.path` holding x uint8 [N,H,W,C] and y [N]), `torchvision`, `hub`; a `synthetic`
    dataset has no source and is generated with the declared shape and class count."""

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    npz: bool = False
    torchvision: TorchvisionSource | None = None
    hub: HubSource | None = None
    synthetic: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        channels = self.image_shape[2] if len(self.image_shape) == 3 else 0
        problems = [
            not self.name and "an empty name",
            (len(self.image_shape) != 3 or min(self.image_shape) < 1) and f"image_shape {self.image_shape} (H, W, C)",
            self.num_classes < 2 and f"num_classes {self.num_classes} (at least 2)",
            (len(self.mean) != channels or len(self.std) != channels)
            and f"mean {self.mean} / std {self.std} (one value per channel, {channels} channels)",
            any(s <= 0 for s in self.std) and f"std {self.std} (positive values)",
            self.synthetic == bool(self.sources)
            and "sources and synthetic=True together, or neither (declare one of the two)",
        ]
        problems = [p for p in problems if p]
        if problems:
            raise ValueError(f"dataset {self.name!r} declares {'; '.join(problems)}")

    @property
    def sources(self) -> tuple[str, ...]:
        """The values of dataset.source this dataset can be read with, in the order of SOURCE_NAMES."""
        declared = {"npz": self.npz, "torchvision": self.torchvision is not None, "hub": self.hub is not None}
        return tuple(name for name in SOURCE_NAMES if declared[name])

    @property
    def crop_padding(self) -> int:
        """Zero padding of the random-crop augmentation: 4 pixels for 32x32 images, scaled with the height."""
        return max(1, self.image_shape[0] // 8)


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to `DATASETS` (its name must be new)."""
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} is registered twice")
    DATASETS[spec.name] = spec
    return spec


def dataset_names() -> tuple[str, ...]:
    """The values dataset.name may take."""
    return tuple(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The declaration of a dataset; an unknown name is a DataSourceError naming dataset.name."""
    if name not in DATASETS:
        raise DataSourceError(f"dataset.name {name!r} is unknown (options for dataset.name: {', '.join(DATASETS)})")
    return DATASETS[name]


# ---- declarations -------------------------------------------------------------------------

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # train set, per channel (all pixels)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

register(
    DatasetSpec(
        name="cifar10",
        image_shape=(32, 32, 3),
        num_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        npz=True,
        torchvision=TorchvisionSource("torchvision.datasets.CIFAR10", "cifar-10-batches-py"),
        hub=HubSource("uoft-cs/cifar10", image_column="img", label_column="label"),
        description="CIFAR-10: 50,000 train and 10,000 test RGB images, 10 classes",
    )
)
register(
    DatasetSpec(
        name="cifar100",
        image_shape=(32, 32, 3),
        num_classes=100,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        npz=True,
        torchvision=TorchvisionSource("torchvision.datasets.CIFAR100", "cifar-100-python"),
        hub=HubSource("uoft-cs/cifar100", image_column="img", label_column="fine_label"),
        description="CIFAR-100: 50,000 train and 10,000 test RGB images, 100 fine classes",
    )
)
# Generated stand-ins (sizes from dataset.synthetic_train_size / synthetic_test_size), normalised as
# the dataset they stand in for, so that they take the same code paths.
register(
    DatasetSpec(
        name="synthetic",
        image_shape=(32, 32, 3),
        num_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        synthetic=True,
        description="generated stand-in for CIFAR-10: class templates under random shift, gain and noise",
    )
)
register(
    DatasetSpec(
        name="synthetic100",
        image_shape=(32, 32, 3),
        num_classes=100,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        synthetic=True,
        description="generated stand-in for CIFAR-100: as synthetic, with 100 classes",
    )
)
