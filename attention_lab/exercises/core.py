"""What every exercise checker shares: a failure type with a helpful message, and comparison helpers.

A checker takes the student's function, runs it on random odd-shaped inputs against the
library's reference, prints one line on success and raises :class:`ExerciseError` otherwise.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch


class ExerciseError(AssertionError):
    """The student's answer is wrong (or not written yet); the message says what to look at."""


def exercise_check(title: str) -> Callable:
    """Decorator for checkers: turns NotImplementedError into a friendly failure, prints success."""

    def wrap(checker: Callable) -> Callable:
        @functools.wraps(checker)
        def run(*args, **kwargs) -> bool:
            try:
                checker(*args, **kwargs)
            except NotImplementedError as error:
                raise ExerciseError(f"{title}: not written yet — replace `raise NotImplementedError` "
                                    f"with your code ({error}).") from None
            print(f"✓ {title}: all checks passed")
            return True

        return run

    return wrap


def expect_close(actual, expected: torch.Tensor, what: str, hint: str = "", atol: float = 1e-5,
                 rtol: float = 1e-4) -> None:
    """Raise :class:`ExerciseError` unless ``actual`` is a tensor of ``expected``'s shape and values."""
    if not isinstance(actual, torch.Tensor):
        raise ExerciseError(f"{what}: expected a torch.Tensor, got {type(actual).__name__}")
    if tuple(actual.shape) != tuple(expected.shape):
        raise ExerciseError(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}. {hint}")
    if actual.dtype == torch.bool or expected.dtype == torch.bool:
        if actual.dtype != expected.dtype or not torch.equal(actual, expected):
            wrong = (actual != expected).nonzero()[:3].tolist() if actual.dtype == expected.dtype else "dtype"
            raise ExerciseError(f"{what}: wrong entries (first at {wrong}). {hint}")
        return
    actual64, expected64 = actual.detach().double(), expected.detach().double()
    if torch.isnan(actual64).any():
        raise ExerciseError(f"{what}: the result contains NaN. {hint}")
    if not torch.allclose(actual64, expected64, atol=atol, rtol=rtol):
        error = (actual64 - expected64).abs().max().item()
        raise ExerciseError(f"{what}: values differ from the reference (max abs error {error:.3g}). {hint}")


def random_generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
