"""Notebook set-up: seed everything, pick the device, print versions (the second half of every setup cell)."""

from __future__ import annotations

import platform
import random

import numpy as np
import torch


def triton_version() -> str | None:
    """Triton's installed version, read from the package metadata: importing triton here would fix its mode
    before a notebook can set ``TRITON_INTERPRET=1`` (the flag is read when triton's own kernels are defined)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("triton")
    except PackageNotFoundError:
        return None


def pick_device() -> torch.device:
    """CUDA when a GPU is visible, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup(seed: int = 0, threads: int | None = None) -> torch.device:
    """Seed python/numpy/torch, print versions and the device, and return the device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    device = pick_device()
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "no GPU (CPU path)"
    print(f"python {platform.python_version()} | torch {torch.__version__} | triton {triton_version() or 'not installed'}"
          f" | device: {device} ({gpu})")
    return device
