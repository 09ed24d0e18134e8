"""Small argument checks shared by every module: clear ``ValueError`` messages, never silent broadcasts.

Every message names the argument and says what was expected, then what was given, so that a bad call
anywhere in the library reads the same way: ``"<name> must be <expected>, got <value>"``.
"""

from __future__ import annotations

import math
import numbers

import torch

INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)  # bool is not a number here


def check_rank(name: str, tensor: torch.Tensor, rank: int, layout: str) -> None:
    """Raise ``ValueError`` unless ``tensor`` has ``rank`` dimensions, naming the expected ``layout``."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {layout}, got {type(tensor).__name__}")
    if tensor.dim() != rank:
        raise ValueError(f"{name} must have shape {layout} ({rank} dims), got shape {tuple(tensor.shape)}")


def is_integer(value: object) -> bool:
    """True for a Python/NumPy integer that is not a bool (``True`` is not a count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    """Return ``value`` if it is an int ≥ ``minimum``; else raise ``ValueError`` naming ``name``."""
    if not is_integer(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_int_range(name: str, value: int, low: int, high: int) -> int:
    """Return ``value`` if it is an int in ``[low, high)``; else raise ``ValueError`` naming ``name``."""
    if not is_integer(value) or not low <= value < high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}), got {value!r}")
    return int(value)


def check_optional_bool(name: str, value: bool | None) -> None:
    """A switch that is True, False or None (None: the module's default); anything else is a ``ValueError``."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name} must be True, False or None, got {value!r}")


def check_real(name: str, value: float, minimum: float | None = None, strict: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number (not a bool, a string or a tensor) ``>= minimum``
    (``> minimum`` when ``strict``); else raise ``ValueError`` naming ``name``."""
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number{bound}, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be a finite real number{bound}, got {value!r}")
    return float(value)


def check_divides(name_small: str, small: int, name_big: str, big: int) -> None:
    """Raise ``ValueError`` unless ``small`` divides ``big``."""
    if small < 1 or big % small != 0:
        raise ValueError(f"{name_small}={small} must divide {name_big}={big}")


def check_float_dtype(name: str, tensor: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``tensor`` has a (real) floating-point dtype."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a floating-point torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")


def check_int_dtype(name: str, tensor: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``tensor`` holds integers (int8 … int64 or uint8; not bool, not float)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be an integer torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in INTEGER_DTYPES:
        raise ValueError(f"{name} must be an integer tensor (int32 or int64), got dtype {tensor.dtype}")


def check_dtype_matches(name: str, tensor: torch.Tensor, dtype: torch.dtype, owner: str) -> None:
    """Raise ``ValueError`` unless ``tensor`` is floating point of ``dtype``, the dtype of ``owner``'s weights."""
    check_float_dtype(name, tensor)
    if tensor.dtype != dtype:
        raise ValueError(f"{name} must have the dtype of {owner}'s weights, {dtype}, got {tensor.dtype} "
                         f"(convert one of them with .to(...))")


def check_values_in_range(name: str, tensor: torch.Tensor, low: int, high: int) -> None:
    """Raise ``ValueError`` unless every entry of the integer ``tensor`` lies in ``[low, high)`` (one device sync)."""
    if tensor.numel() == 0:
        return
    smallest, largest = (int(x) for x in torch.stack([tensor.min(), tensor.max()]).tolist())
    if smallest < low or largest >= high:
        bad = tensor[(tensor < low) | (tensor >= high)]
        raise ValueError(f"{name} must hold values in [{low}, {high}), got {bad.flatten()[:8].tolist()}"
                         f"{' …' if bad.numel() > 8 else ''}")
