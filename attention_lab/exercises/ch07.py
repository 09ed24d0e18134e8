"""Chapter 07 — count the bytes one kernel of unfused attention moves through device memory."""

from __future__ import annotations

from typing import Callable

from attention_lab.costs.hbm_traffic import unfused_forward_kernels
from attention_lab.exercises.core import ExerciseError, exercise_check

# (batch, heads, n, d, bytes_per_element): odd sizes, fp16/bf16 and fp32, so no formula passes by luck.
_CASES = [(1, 1, 1024, 64, 2), (2, 3, 777, 80, 2), (4, 16, 4096, 128, 2), (3, 5, 333, 40, 4), (1, 7, 9, 64, 4)]


@exercise_check("bytes of the softmax kernel")
def check_softmax_bytes(softmax_bytes: Callable[[int, int, int, int, int], int]) -> None:
    """``softmax_bytes(batch, heads, n, d, bytes_per_element)`` must return the bytes the softmax kernel of
    the unfused chain reads PLUS writes in HBM: it reads the ``(B, H, N, N)`` scores and writes the
    ``(B, H, N, N)`` weights, each element ``bytes_per_element`` bytes."""
    for batch, heads, n, d, element in _CASES:
        expected = next(k for k in unfused_forward_kernels(n, d, batch * heads, element) if k.name == "softmax")
        answer = softmax_bytes(batch, heads, n, d, element)
        if not isinstance(answer, (int, float)):
            raise ExerciseError(f"softmax_bytes must return a number of bytes, got {type(answer).__name__}")
        what = f"B={batch}, H={heads}, N={n}, d={d}, {element} bytes/element"
        if answer == expected.bytes_read:
            raise ExerciseError(f"{what}: {answer:.0f} counts only the READ of the scores — the softmax also "
                                "WRITES its N × N result back to HBM.")
        if answer == expected.bytes_moved / (batch * heads) and batch * heads > 1:
            raise ExerciseError(f"{what}: {answer:.0f} is one head's traffic — every (batch, head) pair has its "
                                "own N × N matrix.")
        if answer != expected.bytes_moved:
            raise ExerciseError(f"{what}: got {answer:.0f} bytes, expected {expected.bytes_moved:.0f}. The kernel's "
                                "input and output are N × N per head (d does not appear); count read + write.")
