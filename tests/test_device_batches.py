"""Client batches made on the device: the augmentation's distribution (counts over many draws), exact
agreement with torchvision's crop and flip, exact un-augmented images, determinism, every registry
dataset, label noise, and the GPU settings that a CPU can check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2
from torchvision.transforms.v2 import functional as TF

from fedmpq_flwr.config import ConfigError
from fedmpq_flwr.data.device_batches import ClientBatches, client_batches, crop_flip
from fedmpq_flwr.data.load import load_data
from fedmpq_flwr.data.loaders import eval_loader, to_float
from fedmpq_flwr.data.partition import client_partition
from fedmpq_flwr.data.registry import CIFAR10_MEAN, CIFAR10_STD, dataset_names, get_spec
from fedmpq_flwr.models import build_model
from fedmpq_flwr.training.loop import train_device_settings, train_epochs

CPU = torch.device("cpu")
SIGNIFICANCE = 1e-6  # a fair draw fails a count test this rarely


def make_cfg(**overrides) -> dict:
    cfg = {
        "name": "synthetic",
        "source": "npz",
        "path": "",
        "train_subset": 0,
        "val_fraction": 0.0,
        "augment": True,
        "alpha": math.inf,
        "seed": 0,
        "label_noise": 0.0,
        "synthetic_train_size": 400,
        "synthetic_test_size": 50,
    }
    return cfg | overrides


def reference(image: torch.Tensor, padding: int, top: int, left: int, flip: bool) -> torch.Tensor:
    """torchvision's RandomCrop(padding) + RandomHorizontalFlip for one draw, as the per-sample path did."""
    height, width = image.shape[-2:]
    out = TF.crop(TF.pad(image, [padding], fill=0), top, left, height, width)
    return TF.horizontal_flip(out) if flip else out


def chi2_fits(counts: np.ndarray) -> bool:
    """Counts consistent with a uniform distribution over their cells (Pearson's test)."""
    expected = counts.sum() / counts.size
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return statistic < chi2.isf(SIGNIFICANCE, counts.size - 1)


def test_crop_flip_equals_torchvision_for_every_offset() -> None:
    images = torch.randint(0, 256, (3, 3, 8, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    padding = 2
    padded = torch.nn.functional.pad(images, [padding] * 4)
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            for flip in (False, True):
                n = len(images)
                out = crop_flip(
                    padded,
                    torch.arange(n),
                    torch.full((n,), top),
                    torch.full((n,), left),
                    torch.full((n,), flip),
                    (8, 10),
                )
                for i in range(n):
                    assert torch.equal(out[i], reference(images[i], padding, top, left, flip))


def coordinate_images(n: int, size: int) -> np.ndarray:
    """uint8 HWC images whose pixels say where they are: channel 0 = row + 1, 1 = column + 1, 2 = 255."""
    rows, cols = np.meshgrid(np.arange(size) + 1, np.arange(size) + 1, indexing="ij")
    image = np.stack([rows, cols, np.full_like(rows, 255)], axis=-1).astype(np.uint8)
    return np.repeat(image[None], n, axis=0)


def test_augmentation_distribution_over_many_draws() -> None:
    """Offsets uniform over 0..2p on each axis, independent per axis and per image of a batch, flip
    with probability 1/2, padded pixels 0: each drawn crop is exactly torchvision's for its draw."""
    size, padding, n, passes = 32, 4, 256, 40
    images = coordinate_images(n, size)
    batches = ClientBatches(images, np.zeros(n), 64, mean=(0, 0, 0), std=(1, 1, 1), padding=padding, seed=5, device=CPU)
    drawn = torch.cat([x for _ in range(passes) for x, _ in batches])  # [passes * n, 3, H, W] in [0, 1]
    pixels = (drawn * 255).round().to(torch.uint8)
    centre = size // 2
    top = pixels[:, 0, centre, centre].long() - 1 - centre + padding
    flip = pixels[:, 1, centre, centre + 1] < pixels[:, 1, centre, centre]
    left = pixels[:, 1, centre, centre].long() - 1 - centre + padding + torch.where(flip, 1, 0)
    source = torch.from_numpy(images[0]).permute(2, 0, 1)
    for k in range(0, len(pixels), 97):  # exactness on a spread sample of the draws
        assert torch.equal(pixels[k], reference(source, padding, int(top[k]), int(left[k]), bool(flip[k])))
    cells = 2 * padding + 1
    assert top.min() == 0 and top.max() == 2 * padding and left.min() == 0 and left.max() == 2 * padding
    assert chi2_fits(np.bincount(top.numpy(), minlength=cells))
    assert chi2_fits(np.bincount(left.numpy(), minlength=cells))
    assert chi2_fits(np.bincount((top * cells + left).numpy(), minlength=cells**2))  # the axes are independent
    neighbours = (top[:-1] * cells + top[1:])[torch.arange(len(top) - 1) % 64 != 63]  # images of one batch
    assert chi2_fits(np.bincount(neighbours.numpy(), minlength=cells**2))
    flips = int(flip.sum())
    assert abs(flips - len(flip) / 2) < 5 * math.sqrt(len(flip) / 4)
    assert chi2_fits(np.bincount((top * 2 + flip.long()).numpy(), minlength=2 * cells))  # flip independent
    # Padded pixels are zero before the normalisation: channel 2 is 255 inside, 0 where padding shows.
    inside = (pixels[:, 2] == 255).sum(dim=(1, 2))
    expected = (size - (top - padding).abs()) * (size - (left - padding).abs())
    assert torch.equal(inside, expected) and torch.equal((pixels[:, 2] == 0).sum(dim=(1, 2)), size * size - expected)


def test_padded_pixels_normalise_as_zeros() -> None:
    images = np.full((64, 32, 32, 3), 200, np.uint8)
    batches = ClientBatches(images, np.zeros(64), 64, mean=CIFAR10_MEAN, std=CIFAR10_STD, padding=4, seed=0, device=CPU)
    normalise = to_float(CIFAR10_MEAN, CIFAR10_STD)
    zero, grey = (normalise(torch.full((1, 3, 1, 1), v, dtype=torch.uint8))[0, :, 0, 0] for v in (0, 200))
    corner = next(iter(batches))[0][:, :, 0, 0]  # padding shows there unless both offsets are at least p
    padded = (corner == zero).all(dim=1)
    assert padded.any() and torch.equal(corner[~padded], grey.expand(int((~padded).sum()), 3))


def test_unaugmented_batches_equal_the_normalised_images_exactly() -> None:
    cfg = make_cfg(augment=False, alpha=0.5)
    data = load_data(cfg)
    batches = client_batches(data, 1, 3, cfg, 16, seed=9, label_noise=0.0, device=CPU)
    part = client_partition(data, 1, 3, 0.5, 0, 0.0)
    order = torch.randperm(len(part.idx), generator=torch.Generator().manual_seed(9))  # the generator's first draw
    everything = torch.cat(
        [x for x, _ in eval_loader(data.x_train[part.idx], part.labels, 64, mean=data.mean, std=data.std)]
    )
    images, labels = (torch.cat(t) for t in zip(*batches))
    assert torch.equal(images, everything[order]) and torch.equal(labels, torch.from_numpy(part.labels)[order])
    assert [len(y) for _, y in batches] == [16] * (len(order) // 16) + ([len(order) % 16] if len(order) % 16 else [])
    assert len(batches) == math.ceil(len(order) / 16) and batches.num_examples == len(order)


def test_same_seed_same_batches_other_seed_others() -> None:
    cfg = make_cfg()
    data = load_data(cfg)

    def two_passes(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batches = client_batches(data, 0, 2, cfg, 32, seed=seed, label_noise=0.0, device=CPU)
        return [b for _ in range(2) for b in batches]

    first, again, other = two_passes(4), two_passes(4), two_passes(5)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    half = len(first) // 2
    assert not torch.equal(first[0][0], first[half][0])  # every pass draws anew
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))


@pytest.mark.parametrize("name", [n for n in dataset_names() if get_spec(n).synthetic])
def test_every_generated_dataset_with_label_noise(name: str) -> None:
    cfg = make_cfg(name=name, synthetic_train_size=600, alpha=0.5)
    data = load_data(cfg)
    noisy = client_batches(data, 1, 2, cfg, 32, seed=0, label_noise=0.3, device=CPU)
    part = client_partition(data, 1, 2, 0.5, 0, 0.3)
    assert noisy.num_flipped == part.num_flipped > 0
    np.testing.assert_array_equal(np.sort(noisy.labels.numpy()), np.sort(part.labels))
    images, labels = next(iter(noisy))
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32 and labels.max() < data.num_classes


def test_real_cifar10_batches(real_cifar10_path: str) -> None:
    cfg = make_cfg(name="cifar10", path=real_cifar10_path, train_subset=600, alpha=0.5)
    data = load_data(cfg)
    plain = client_batches(data, 0, 2, cfg | {"augment": False}, 64, seed=1, label_noise=0.0, device=CPU)
    augmented = client_batches(data, 0, 2, cfg, 64, seed=1, label_noise=0.0, device=CPU)
    part = client_partition(data, 0, 2, 0.5, 0, 0.0)
    expected = next(iter(eval_loader(data.x_train[part.idx], part.labels, 10, mean=data.mean, std=data.std)))[0]
    assert torch.equal(plain.batch(torch.arange(10)), expected)
    assert not torch.equal(augmented.batch(torch.arange(10)), expected)


def test_channels_last_batches_train_the_same_model() -> None:
    cfg = make_cfg()
    data = load_data(cfg)
    results = []
    for channels_last in (False, True):
        batches = client_batches(data, 0, 1, cfg, 64, seed=2, label_noise=0.0, device=CPU, channels_last=channels_last)
        images, _ = next(iter(batches))
        assert images.is_contiguous(memory_format=torch.channels_last) == channels_last
        torch.manual_seed(0)
        model = build_model("tiny_cnn", data.num_classes)
        stats = train_epochs(model, batches, torch.optim.SGD(model.parameters(), lr=0.05), 1, CPU)
        assert all(p.is_contiguous() for p in model.parameters())  # handed back in the default layout
        results.append((stats["train_loss"], torch.nn.utils.parameters_to_vector(model.parameters())))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-4)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-3, atol=1e-4)


def test_amp_needs_cuda() -> None:
    settings = train_device_settings({"amp": "off", "channels_last": True}, CPU)
    assert settings == {"channels_last": True, "autocast": None}
    with pytest.raises(ConfigError, match=r"^key 'train.amp': value 'bf16' needs a CUDA device, training runs on cpu"):
        train_device_settings({"amp": "bf16", "channels_last": False}, CPU)


def test_amp_on_a_cpu_run_fails_before_training(fedavg_config, fl) -> None:
    with pytest.raises(ConfigError, match="train.amp"):
        fl.strategy(fedavg_config(train={"amp": "bf16"}, federation={"device": "cpu"}))


def test_config_declares_the_new_keys() -> None:
    from fedmpq_flwr.config import validate

    config = validate({"train": {"channels_last": True, "amp": "bf16"}, "eval": {"quant_test_images": 2000}})
    assert config["train"]["amp"] == "bf16" and config["eval"]["quant_test_images"] == 2000
    with pytest.raises(ConfigError, match=r"key 'train.amp': value 'fp16' is not allowed; choose one of off, bf16"):
        validate({"train": {"amp": "fp16"}})
    with pytest.raises(ConfigError, match="eval.quant_test_images"):
        validate({"eval": {"quant_test_images": -1}})


def test_batches_with_an_autocast_dtype_run_the_forward_passes_under_autocast() -> None:
    """The loop's plumbing of `train.amp`, on CPU autocast (the key itself allows CUDA only)."""
    images = np.zeros((8, 32, 32, 3), np.uint8)
    seen = []

    def loss_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = model(x)
        seen.append(logits.dtype)
        loss = torch.nn.functional.cross_entropy(logits, y)
        return {"loss": loss}

    for autocast, expected in ((torch.bfloat16, torch.bfloat16), (None, torch.float32)):
        batches = ClientBatches(
            images, np.zeros(8), 4, mean=(0.5,) * 3, std=(0.5,) * 3, padding=0, seed=0, device=CPU, autocast=autocast
        )
        model = build_model("tiny_cnn", 10)
        train_epochs(model, batches, torch.optim.SGD(model.parameters(), lr=0.01), 1, CPU, loss_fn=loss_fn)
        assert seen[-2:] == [expected, expected]
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
