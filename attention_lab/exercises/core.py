"""What every exercise checker shares: a failure type with a helpful message, and comparison helpers.

A checker takes the student's function, runs it on random odd-shaped inputs against the
library's reference, prints one line on success and raises :class:`ExerciseError` otherwise.

A checker does more than compare with the reference: when the answer is wrong it compares it with the
answers the usual mistakes give (:func:`which_mistake`) and names the mistake actually made; it checks
the dtype, shape and device of a tensor exactly (:func:`expect_close`); it refuses an answer that
changes its inputs in place (:class:`InputGuard`); and it never prints the solution itself.
"""

from __future__ import annotations

import functools
import operator
from typing import Callable, Iterable

import torch


class ExerciseError(AssertionError):
    """The student's answer is wrong (or not written yet); the message says what to look at."""


_STUB_MESSAGES = ("", "exercise: write this part")  # what the student notebook's stub raises


def exercise_check(title: str) -> Callable:
    """Decorator for checkers: turns NotImplementedError into a friendly failure, prints success."""

    def wrap(checker: Callable) -> Callable:
        @functools.wraps(checker)
        def run(*args, **kwargs) -> bool:
            try:
                checker(*args, **kwargs)
            except NotImplementedError as error:
                detail = str(error)
                if detail in _STUB_MESSAGES:
                    note = f" ({detail})" if detail else ""
                else:  # raised by something the student called, not by the stub
                    note = (f" (your code raised NotImplementedError: {detail} — if you did write it, an "
                            "operation you used is not implemented for these inputs)")
                raise ExerciseError(f"{title}: not written yet — replace `raise NotImplementedError` "
                                    f"with your code{note}.") from None
            print(f"✓ {title}: all checks passed")
            return True

        return run

    return wrap


def call(fn: Callable, *args, what: str, hint: str | Callable[[Exception], str] = ""):
    """``fn(*args)``, the student's function. NotImplementedError (the stub, which :func:`exercise_check`
    reports) and ExerciseError pass through; any other exception becomes an ExerciseError that, like the
    grader's own report of a crash, starts "the check stopped with <type>: <message>", then names ``what`` and
    gives ``hint`` (a string, or a function of the exception). It is chained to the original, so that a
    notebook still shows the student's line."""
    try:
        return fn(*args)
    except (NotImplementedError, ExerciseError):
        raise
    except Exception as error:  # noqa: BLE001 - any error inside the student's code
        advice = hint(error) if callable(hint) else hint
        raise ExerciseError(f"the check stopped with {type(error).__name__}: {error} — in {what}. "
                            f"{advice}".rstrip()) from error


class InputGuard:
    """Copies of the arguments a student's function must not modify; :meth:`check` after the call.

    >>> guard = InputGuard(q=q, k=k)   # doctest: +SKIP
    >>> out = fn(q, k); guard.check("attention")   # doctest: +SKIP
    """

    def __init__(self, **inputs) -> None:
        self.inputs = inputs
        self.copies = {name: (value.detach().clone() if isinstance(value, torch.Tensor) else _copy(value))
                       for name, value in inputs.items()}

    def check(self, what: str, hint: str = "") -> None:
        for name, value in self.inputs.items():
            before = self.copies[name]
            if isinstance(value, torch.Tensor):
                same = value.shape == before.shape and value.dtype == before.dtype
                if same and value.is_floating_point():
                    same = torch.equal(value.detach().isnan(), before.isnan()) and torch.equal(
                        value.detach().nan_to_num(0.0), before.nan_to_num(0.0))
                elif same:
                    same = torch.equal(value, before)
            else:
                same = value == before
            if not same:
                raise ExerciseError(
                    f"{what}: your function changed its argument `{name}` in place (an operation ending in _ such "
                    "as masked_fill_, mul_ or div_, an augmented assignment such as x *= s or x /= s, or an "
                    f"indexed assignment x[...] = ...). The caller still needs `{name}` as it was: compute a new "
                    f"tensor instead (x = x * s, masked_fill without the underscore). {hint}".rstrip())


def _copy(value):
    return list(value) if isinstance(value, list) else value


def same_values(actual, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """True when ``actual`` is a tensor of ``expected``'s shape whose values match (NaN where it has NaN)."""
    if not isinstance(actual, torch.Tensor) or tuple(actual.shape) != tuple(expected.shape):
        return False
    if actual.dtype == torch.bool or expected.dtype == torch.bool:
        return actual.dtype == expected.dtype and torch.equal(actual, expected)
    return torch.allclose(actual.detach().double(), expected.detach().double(), atol=atol, rtol=rtol, equal_nan=True)


def which_mistake(actual, mistakes: Iterable[tuple[str, Callable[[], torch.Tensor] | torch.Tensor]],
                  expected: torch.Tensor | None = None, atol: float = 1e-5, rtol: float = 1e-4) -> str | None:
    """The hint of the first ``(hint, answer)`` whose answer (a tensor, or a function making it) ``actual``
    equals, else None. Each answer is what one plausible mistake would return on the same inputs; one that
    equals ``expected`` (the mistake makes no difference on these inputs) is skipped."""
    for hint, answer in mistakes:
        try:
            value = answer() if callable(answer) else answer
        except Exception:  # noqa: BLE001 - a mistake that cannot be formed on these inputs
            continue
        if value is None or (expected is not None and same_values(value, expected, atol=atol, rtol=rtol)):
            continue
        if same_values(actual, value, atol=atol, rtol=rtol):
            return hint
    return None


_DTYPE_HINT = ("Return the dtype the inputs have (no .double(), .float(), .int() or dtype=... conversions; "
               "torch.tensor of Python numbers makes float32 or int64 whatever the inputs were).")


def expect_close(actual, expected: torch.Tensor, what: str, hint: str = "", atol: float = 1e-5,
                 rtol: float = 1e-4, check_dtype: bool = True, dtype_hint: str | None = None) -> None:
    """Raise :class:`ExerciseError` unless ``actual`` is a tensor of ``expected``'s shape, dtype (unless
    ``check_dtype`` is False), device and values. ``dtype_hint`` replaces the generic advice given when
    only the dtype is wrong."""
    if not isinstance(actual, torch.Tensor):
        raise ExerciseError(f"{what}: expected a torch.Tensor, got {type(actual).__name__}. {hint}".rstrip())
    if tuple(actual.shape) != tuple(expected.shape):
        raise ExerciseError(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}. {hint}")
    if actual.dtype == torch.bool or expected.dtype == torch.bool:
        if actual.dtype != expected.dtype:
            raise ExerciseError(f"{what}: wrong entries: expected a tensor of dtype {expected.dtype}, got "
                                f"{actual.dtype}. {hint}")
        if not torch.equal(actual, expected):
            wrong = (actual != expected).nonzero()[:3].tolist()
            raise ExerciseError(f"{what}: wrong entries (first at {wrong}). {hint}")
        return
    if check_dtype and actual.dtype != expected.dtype:
        if same_values(actual, expected, atol=max(atol, 1e-3), rtol=max(rtol, 1e-3)):  # right up to rounding
            raise ExerciseError(f"{what}: expected dtype {expected.dtype}, got {actual.dtype} — the values are right, "
                                "only the dtype is not. " + (dtype_hint or _DTYPE_HINT))
        raise ExerciseError(f"{what}: expected dtype {expected.dtype}, got {actual.dtype}. {hint}")
    if actual.device != expected.device:
        raise ExerciseError(f"{what}: expected a tensor on {expected.device}, got one on {actual.device}. {hint}")
    actual64, expected64 = actual.detach().double(), expected.detach().double()
    if torch.isnan(actual64).any() and not torch.isnan(expected64).any():
        raise ExerciseError(f"{what}: the result contains NaN. {hint}")
    if not torch.allclose(actual64, expected64, atol=atol, rtol=rtol, equal_nan=True):
        error = (actual64 - expected64).abs().nan_to_num(float("inf")).max().item()
        raise ExerciseError(f"{what}: values differ from the reference (max abs error {error:.3g}). {hint}")


def expect_bool_mask(actual, expected: torch.Tensor, what: str, hint: str = "") -> None:
    """Like :func:`expect_close` for a mask: a torch.bool tensor, True = may attend, with a message that
    says so when the dtype is wrong (and whether the pattern itself is right)."""
    if isinstance(actual, torch.Tensor) and tuple(actual.shape) == tuple(expected.shape) and actual.dtype != torch.bool:
        pattern = ("the pattern of ones is right, only the type is wrong" if torch.equal(actual != 0, expected)
                   else f"and the pattern of ones is wrong too: {hint}")
        raise ExerciseError(
            f"{what}: wrong entries: a mask holds True/False — a torch.bool tensor, True = may attend — but yours "
            f"has dtype {actual.dtype} ({pattern}). Comparisons (<=, >, &) give bool directly; "
            "torch.ones(..., dtype=torch.bool) or .bool() convert. (~ and masked_fill need a bool mask.)")
    expect_close(actual, expected, what, hint)


def expect_int(value, what: str, hint: str = "") -> int:
    """``value`` as a Python int; an ExerciseError for a float (even a whole one), a bool or a non-number."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.is_floating_point()):
        raise ExerciseError(f"{what}: return an int, got {value!r}. {hint}".rstrip())
    try:
        return operator.index(value)
    except TypeError:
        raise ExerciseError(f"{what}: return an int, got {type(value).__name__} {value!r}. {hint}".rstrip()) from None


def random_generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
