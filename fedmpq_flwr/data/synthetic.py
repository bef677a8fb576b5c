"""Generated data of any declared shape and class count, for tests and smoke runs without a download."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SHIFT = 8  # templates are this many pixels larger than the images: the room for random shifts


def class_template_images(
    image_shape: tuple[int, int, int], num_classes: int, train_size: int, test_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class templates (smooth random colour patterns) seen through random shift, gain and noise.

    -> x_train uint8 [N,H,W,C], y_train, x_test, y_test; classes equally frequent (the first
    N mod num_classes one more). Learnable by a small CNN within a few epochs, but the noise keeps
    it from being solved at once.
    """
    height, width, channels = image_shape
    template_ss, train_ss, test_ss = np.random.SeedSequence(seed).spawn(3)
    coarse = np.random.default_rng(template_ss).standard_normal((num_classes, channels, 5, 5), dtype=np.float32)
    templates = F.interpolate(
        torch.from_numpy(coarse), size=(height + SHIFT, width + SHIFT), mode="bicubic", align_corners=False
    ).numpy()
    templates /= templates.std(axis=(1, 2, 3), keepdims=True)
    windows = np.lib.stride_tricks.sliding_window_view(templates, (height, width), axis=(2, 3))  # [K,C,9,9,H,W]

    def draw(n: int, ss: np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(ss)
        y = rng.permutation(np.arange(n) % num_classes)
        dy, dx = rng.integers(0, windows.shape[2], size=(2, n))
        gain = rng.uniform(0.5, 1.5, size=(n, 1, 1, 1)).astype(np.float32)
        offset = rng.normal(0.0, 20.0, size=(n, 1, 1, 1)).astype(np.float32)
        noise = rng.standard_normal((n, channels, height, width), dtype=np.float32)
        images = 128 + 35 * gain * windows[y, :, dy, dx] + offset + 45 * noise
        return np.clip(images, 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1), y

    return (*draw(train_size, train_ss), *draw(test_size, test_ss))
