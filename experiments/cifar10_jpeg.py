"""A copy of CIFAR-10 small enough to travel with the working tree to a GPU machine (64 MiB), and its unpacking there.

    .venv/bin/python experiments/cifar10_jpeg.py pack ../shared/data/cifar10 shared/cifar10_jpeg.npz
    .venv/bin/python experiments/cifar10_jpeg.py unpack shared/cifar10_jpeg.npz /tmp/cifar10  # train/test.npz

Lossless compression cannot get there: `np.savez_compressed` keeps 92 % of the 150 MB of training
images and LZMA with a gradient predictor 66 %. So every image (train and test) is stored as a JPEG
(quality 85, about 1 KB each, mean absolute pixel error about 1.8 of 255): real images, of the same
shapes and nearly the same pixels, for throughput measurements (gpu_check.sh's P4); not for accuracies
to compare with runs on the original files. `unpack` writes the npz files `dataset.source: npz` reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torchvision.io import decode_jpeg, encode_jpeg

QUALITY = 85
LIMIT = 64 * 2**20  # what a copy of the working tree may carry to the GPU machine


def pack(source: Path, target: Path) -> None:
    arrays = {}
    for split in ("train", "test"):
        with np.load(source / f"{split}.npz") as npz:
            x, y = npz["x"], npz["y"]
        images = list(torch.from_numpy(x).permute(0, 3, 1, 2))
        encoded = [blob.numpy() for blob in encode_jpeg(images, quality=QUALITY)]
        arrays[f"{split}_bytes"] = np.concatenate(encoded)
        arrays[f"{split}_ends"] = np.cumsum([len(blob) for blob in encoded])
        arrays[f"{split}_y"] = y
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, quality=QUALITY, **arrays)
    size = target.stat().st_size
    print(f"{target}: {size / 2**20:.1f} MiB (JPEG quality {QUALITY}); limit {LIMIT / 2**20:.0f} MiB")
    if size > LIMIT:
        raise SystemExit(f"{target} is larger than {LIMIT / 2**20:.0f} MiB")


def unpack(packed: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with np.load(packed) as npz:
        for split in ("train", "test"):
            data, ends = npz[f"{split}_bytes"], npz[f"{split}_ends"]
            blobs = [torch.from_numpy(blob) for blob in np.split(data, ends[:-1])]
            x = torch.stack(decode_jpeg(blobs)).permute(0, 2, 3, 1).numpy()
            np.savez(target / f"{split}.npz", x=x, y=npz[f"{split}_y"])
            print(f"{target / f'{split}.npz'}: {len(x)} images {list(x.shape[1:])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("pack", "unpack"))
    parser.add_argument("source", type=Path, help="pack: folder of train.npz/test.npz; unpack: the packed file")
    parser.add_argument("target", type=Path, help="pack: the packed file; unpack: folder for train.npz/test.npz")
    args = parser.parse_args()
    (pack if args.action == "pack" else unpack)(args.source, args.target)


if __name__ == "__main__":
    main()
