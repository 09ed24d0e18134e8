"""Chapter 04 — the band mask of sliding-window attention and the rolling buffer's read order."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.caches.rolling import RollingKVCache
from attention_lab.masks import sliding_window_mask
from attention_lab.exercises.core import ExerciseError, exercise_check, expect_close


@exercise_check("sliding-window (band) mask")
def check_band_mask(band_mask: Callable[[int, int], torch.Tensor]) -> None:
    """``band_mask(n, window)`` must return the ``(n, n)`` bool mask where query i may see key j iff
    ``i - window < j <= i``: ``window`` keys including the query itself."""
    for n, window in [(6, 3), (1, 1), (7, 1), (9, 2), (13, 4), (5, 5), (4, 10)]:
        expected = sliding_window_mask(n, window)
        actual = band_mask(n, window)
        if isinstance(actual, torch.Tensor) and actual.shape == expected.shape and actual.dtype == torch.bool:
            if actual.triu(1).any():
                raise ExerciseError(f"band mask n={n}, window={window}: a query sees a FUTURE key — the sliding "
                                    "window is causal: j <= i as well as j > i - window.")
            keys_seen = actual.sum(-1)  # (n,)
            if (keys_seen > expected.sum(-1)).any():
                raise ExerciseError(f"band mask n={n}, window={window}: some query sees {keys_seen.max().item()} keys, "
                                    f"one too many: window={window} counts the query itself, so key j is kept "
                                    "only when j > i - window (strictly).")
        expect_close(actual, expected, f"band mask n={n}, window={window}",
                     hint="True = may attend; query i sees keys i-window+1 … i (window keys including itself).")


@exercise_check("rolling-buffer read order")
def check_read_order(read_order: Callable[[int, int], torch.Tensor]) -> None:
    """``read_order(length, window)``: a rolling buffer of ``window`` slots keeps position p in slot
    ``p % window`` and has seen ``length`` tokens. The next token (position ``length``) must attend to the
    ``min(length, window - 1)`` positions before it (plus itself, which is not in the cache yet). Return
    their slots, OLDEST first, as an int64 tensor ``(min(length, window - 1),)``."""
    for window in (1, 2, 3, 5):
        for length in range(0, 3 * window + 2):
            cache = RollingKVCache(1, window, 1, 1)
            cache.length = length  # pretend `length` tokens were written
            kept = min(length, window - 1)
            expected = cache.slot_of(torch.arange(length - kept, length))  # (kept,) oldest first
            actual = read_order(length, window)
            what = f"read order length={length}, window={window}"
            if isinstance(actual, torch.Tensor) and actual.dim() == 1:
                if actual.shape[0] == kept + 1:
                    raise ExerciseError(f"{what}: {kept + 1} slots, one too many — with the new token itself that "
                                        f"makes window+1 keys. Read only the {kept} position(s) just before "
                                        f"position {length}.")
                same_slots = (actual.shape == expected.shape
                              and torch.equal(actual.sort().values, expected.sort().values))
                if same_slots and not torch.equal(actual, expected):
                    raise ExerciseError(f"{what}: the right slots {expected.tolist()} in the wrong order "
                                        f"{actual.tolist()}. After the buffer wraps, slot 0 no longer holds the "
                                        f"oldest position: go through the positions in order and take each one mod "
                                        f"window. (The slots now hold positions {cache.slot_positions().tolist()}.)")
            expect_close(actual, expected, what,
                         hint="The previous min(length, window-1) positions are length-kept … length-1; "
                              "position p lives in slot p % window.")
