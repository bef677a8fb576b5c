"""Resource use of the process a client or the server runs in: peak host and GPU memory."""

from __future__ import annotations

import resource
import sys

import torch

MB = 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


def reset_peak_gpu(device: torch.device) -> None:
    """Start a new peak-GPU-memory window (no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_mb(device: torch.device) -> dict[str, float]:
    """`{"peak_gpu_mb": ...}`: the most GPU memory tensors held since the last reset; {} off CUDA."""
    if device.type != "cuda":
        return {}
    return {"peak_gpu_mb": torch.cuda.max_memory_allocated(device) / MB}
