"""Chapter 04 — the band mask of sliding-window attention and the rolling buffer's read order."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.caches.rolling import RollingKVCache
from attention_lab.masks import sliding_window_mask
from attention_lab.exercises.core import (ExerciseError, call, exercise_check, expect_bool_mask, expect_close,
                                          which_mistake)


_BAND_HINT = "True = may attend; query i sees keys i-window+1 … i (window keys including itself)."


def _band_mistakes(n: int, window: int) -> list[tuple[str, torch.Tensor]]:
    ones = torch.ones(n, n, dtype=torch.bool)
    causal = ones.tril()
    return [
        (f"The diagonal is missing: window={window} counts the query itself, so query i sees keys "
         f"i-window+1 … i — including key i.", causal.tril(-1) & ones.triu(-window)),
        ("That is the transpose: rows are queries and columns keys; query i sees the window of keys ENDING at i.",
         ones.triu() & ones.tril(window - 1)),
        ("Inverted: True must mean 'may attend' (inside the window), not 'blocked'.",
         ~(causal & ones.triu(-(window - 1)))),
        ("No window at all: that is the plain causal mask. Key j is kept only when j > i - window as well as "
         "j <= i.", causal),
        (f"Each query sees one key too few: window={window} keys INCLUDING the query itself, so key j is kept "
         "when j > i - window, not j > i - window + 1.", causal & ones.triu(-(window - 2)) if window > 1 else None),
    ]


@exercise_check("sliding-window (band) mask")
def check_band_mask(band_mask: Callable[[int, int], torch.Tensor]) -> None:
    """``band_mask(n, window)`` must return the ``(n, n)`` bool mask where query i may see key j iff
    ``i - window < j <= i``: ``window`` keys including the query itself."""
    for n, window in [(6, 3), (1, 1), (7, 1), (9, 2), (13, 4), (5, 5), (4, 10)]:
        expected = sliding_window_mask(n, window)
        what = f"band mask n={n}, window={window}"
        actual = call(band_mask, n, window, what=what)
        if isinstance(actual, torch.Tensor) and actual.shape == expected.shape:
            pattern = actual != 0  # judge the pattern of any dtype; expect_bool_mask then names a wrong dtype
            hint = which_mistake(pattern, _band_mistakes(n, window), expected)
            if hint is not None:
                expect_bool_mask(actual, expected, what, hint)
            if pattern.triu(1).any():
                raise ExerciseError(f"{what}: a query sees a FUTURE key — the sliding window is causal: j <= i as "
                                    "well as j > i - window.")
            keys_seen = pattern.sum(-1)  # (n,)
            extra = (keys_seen - expected.sum(-1)).max().item()
            if extra == 1:
                raise ExerciseError(f"{what}: some query sees {keys_seen.max().item()} keys, one too many: "
                                    f"window={window} counts the query itself, so key j is kept only when "
                                    "j > i - window (strictly).")
            if extra > 1:
                raise ExerciseError(f"{what}: some query sees {keys_seen.max().item()} keys, more than the "
                                    f"{window} a window of {window} allows (the query itself included).")
        expect_bool_mask(actual, expected, what, hint=_BAND_HINT)


_DTYPE_HINT = ("Slots index the buffer, so they are int64 (torch.long), the dtype torch.arange of ints gives. "
               "Watch out: torch.tensor([]) of an EMPTY list is float32 — pass dtype=torch.long — and don't pick "
               "int32 or a float.")
_ORDER_HINT = ("The previous min(length, window-1) positions are length-kept … length-1; "
               "position p lives in slot p % window.")


@exercise_check("rolling-buffer read order")
def check_read_order(read_order: Callable[[int, int], torch.Tensor]) -> None:
    """``read_order(length, window)``: a rolling buffer of ``window`` slots keeps position p in slot
    ``p % window`` and has seen ``length`` tokens. The next token (position ``length``) must attend to the
    ``min(length, window - 1)`` positions before it (plus itself, which is not in the cache yet). Return
    their slots, OLDEST first, as an int64 tensor ``(min(length, window - 1),)`` on the CPU."""
    for window in (5, 3, 2, 1):  # the widest buffer first: there every mistake below is told apart
        for length in [7, 12, 3, 0, 1] + list(range(0, 3 * window + 2)):
            cache = RollingKVCache(1, window, 1, 1)
            cache.length = length  # pretend `length` tokens were written
            kept = min(length, window - 1)
            expected = cache.slot_of(torch.arange(length - kept, length))  # (kept,) oldest first
            what = f"read order length={length}, window={window}"
            actual = call(read_order, length, window, what=what, hint=_ORDER_HINT)
            if isinstance(actual, torch.Tensor) and actual.dim() == 1:
                if actual.shape[0] == window - 1 and kept < window - 1:
                    raise ExerciseError(f"{what}: {window - 1} slots, but only {length} token(s) have been seen: "
                                        f"read min(length, window-1) = {kept} position(s) — before the buffer "
                                        "fills up there are fewer than window-1 of them.")
                if actual.shape[0] == kept + 1:
                    raise ExerciseError(f"{what}: {kept + 1} slots, one too many — with the new token itself that "
                                        f"makes window+1 keys. Read only the {kept} position(s) just before "
                                        f"position {length}.")
                if actual.shape == expected.shape and not actual.is_floating_point():
                    same_slots = torch.equal(actual.long().sort().values, expected.sort().values)
                    if same_slots and kept > 1 and torch.equal(actual.long(), expected.flip(0)):
                        raise ExerciseError(f"{what}: the right slots, newest first ({actual.tolist()}): return them "
                                            f"OLDEST first, {expected.tolist()} — position length-kept first.")
                    if same_slots and not torch.equal(actual.long(), expected):
                        raise ExerciseError(
                            f"{what}: the right slots {expected.tolist()} in the wrong order {actual.tolist()}. "
                            f"After the buffer wraps, slot 0 no longer holds the oldest position: go through the "
                            f"positions in order and take each one mod window. (The slots now hold positions "
                            f"{cache.slot_positions().tolist()}.)")
                hint = which_mistake(actual, [
                    ("Those are the positions themselves: return the SLOTS that hold them, p % window for "
                     "position p.", torch.arange(length - kept, length)),
                    ("Those include the new token's position `length` (not in the cache yet) and leave out the "
                     "oldest one: read positions length-kept … length-1.",
                     torch.arange(length - kept + 1, length + 1) % window),
                    ("Slots 0 … kept-1 hold those positions only until the buffer wraps; after that position p "
                     "is in slot p % window, wherever that is.", torch.arange(kept)),
                ], expected)
                expect_close(actual, expected, what, hint=hint or _ORDER_HINT, atol=0, rtol=0, dtype_hint=_DTYPE_HINT)
            expect_close(actual, expected, what, hint=_ORDER_HINT, atol=0, rtol=0)
