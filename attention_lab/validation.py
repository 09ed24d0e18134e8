"""Small argument checks shared by every module: clear ``ValueError`` messages, never silent broadcasts."""

from __future__ import annotations

import torch


def check_rank(name: str, tensor: torch.Tensor, rank: int, layout: str) -> None:
    """Raise ``ValueError`` unless ``tensor`` has ``rank`` dimensions, naming the expected ``layout``."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {layout}, got {type(tensor).__name__}")
    if tensor.dim() != rank:
        raise ValueError(f"{name} must have shape {layout} ({rank} dims), got shape {tuple(tensor.shape)}")


def check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    """Return ``value`` if it is an int ≥ ``minimum``; else raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_divides(name_small: str, small: int, name_big: str, big: int) -> None:
    """Raise ``ValueError`` unless ``small`` divides ``big``."""
    if small < 1 or big % small != 0:
        raise ValueError(f"{name_small}={small} must divide {name_big}={big}")


def check_float_dtype(name: str, tensor: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``tensor`` has a floating-point dtype."""
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
