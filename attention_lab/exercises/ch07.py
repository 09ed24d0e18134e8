"""Chapter 07 — count the bytes one kernel of unfused attention moves through device memory."""

from __future__ import annotations

import math
from typing import Callable

from attention_lab.costs.hbm_traffic import unfused_forward_kernels
from attention_lab.exercises.core import ExerciseError, call, exercise_check

# (batch, heads, n, d, bytes_per_element): odd sizes, fp16/bf16 and fp32, so no formula passes by luck.
_CASES = [(1, 1, 1024, 64, 2), (2, 3, 777, 80, 2), (4, 16, 4096, 128, 2), (3, 5, 333, 40, 4), (1, 7, 9, 64, 4)]


def _matrix(b: int, h: int, n: int) -> int:
    return b * h * n * n  # elements of one (B, H, N, N) tensor


# (hint, count a mistake gives for (batch, heads, n, d, bytes_per_element)). The checker compares the student's
# counts over ALL cases with each mistake's, so a slip that coincides with another on one case is still told apart.
_MISTAKES: list[tuple[str, Callable[[int, int, int, int, int], float]]] = [
    ("That counts only the READ of the scores — the softmax also WRITES its N × N result back to HBM.",
     lambda b, h, n, d, e: _matrix(b, h, n) * e),
    ("That is one head's traffic — every (batch, head) pair has its own N × N matrix.",
     lambda b, h, n, d, e: 2 * n * n * e),
    ("That counts the heads but not the batch: every (batch, head) pair has its own N × N matrix.",
     lambda b, h, n, d, e: 2 * h * n * n * e),
    ("That counts the batch but not the heads: every (batch, head) pair has its own N × N matrix.",
     lambda b, h, n, d, e: 2 * b * n * n * e),
    ("That is a number of ELEMENTS: multiply by bytes_per_element.", lambda b, h, n, d, e: 2 * _matrix(b, h, n)),
    *[(f"bytes_per_element is an argument (2 for fp16/bf16, 4 for fp32): use it instead of a fixed {fixed}.",
       lambda b, h, n, d, e, fixed=fixed: 2 * _matrix(b, h, n) * fixed) for fixed in (1, 2, 4, 8)],
    ("That is in bits: bytes_per_element already counts bytes (2 for fp16/bf16, 4 for fp32).",
     lambda b, h, n, d, e: 2 * _matrix(b, h, n) * e * 8),
    ("The scores and the weights are N × N per head; N × d is the size of Q, K, V and the output, which the "
     "softmax kernel does not touch (d does not appear).", lambda b, h, n, d, e: 2 * b * h * n * d * e),
    ("Twice too much: the kernel reads the scores ONCE and writes the weights ONCE (the count is the fewest "
     "bytes the kernel must move).", lambda b, h, n, d, e: 4 * _matrix(b, h, n) * e),
    ("The mask is applied by the kernel before it in the chain: the softmax kernel reads the scores and writes "
     "the weights, nothing else.", lambda b, h, n, d, e: 2 * _matrix(b, h, n) * e + _matrix(b, h, n)),
    ("The whole N × N matrix is read and written, masked entries included: a tensor stores them all.",
     lambda b, h, n, d, e: n * (n + 1) * b * h * e),
    ("The answer is in bytes, not in megabytes.", lambda b, h, n, d, e: 2 * _matrix(b, h, n) * e / 1e6),
    ("The answer is in bytes, not in MiB.", lambda b, h, n, d, e: 2 * _matrix(b, h, n) * e / 2 ** 20),
    ("The answer is in bytes, not in gigabytes.", lambda b, h, n, d, e: 2 * _matrix(b, h, n) * e / 1e9),
]


@exercise_check("bytes of the softmax kernel")
def check_softmax_bytes(softmax_bytes: Callable[[int, int, int, int, int], int]) -> None:
    """``softmax_bytes(batch, heads, n, d, bytes_per_element)`` must return the bytes the softmax kernel of
    the unfused chain reads PLUS writes in HBM: it reads the ``(B, H, N, N)`` scores and writes the
    ``(B, H, N, N)`` weights, each element ``bytes_per_element`` bytes."""
    answers, wrong = [], []
    for case in _CASES:
        batch, heads, n, d, element = case
        expected = next(k for k in unfused_forward_kernels(n, d, batch * heads, element) if k.name == "softmax")
        what = f"B={batch}, H={heads}, N={n}, d={d}, {element} bytes/element"
        answer = call(softmax_bytes, *case, what=what)
        if isinstance(answer, bool) or not isinstance(answer, (int, float)):
            raise ExerciseError(f"softmax_bytes must return a number of bytes, got {type(answer).__name__}")
        answers.append(answer)
        if not math.isclose(answer, expected.bytes_moved, rel_tol=1e-9):
            wrong.append((what, answer, expected.bytes_moved))
    if not wrong:
        return
    hint = next((h for h, mistake in _MISTAKES
                 if all(math.isclose(a, mistake(*case), rel_tol=1e-9) for a, case in zip(answers, _CASES))), None)
    what, answer, expected = wrong[0]
    shown = f"{answer:.0f}" if float(answer).is_integer() else f"{answer:.6g}"
    raise ExerciseError(f"{what}: got {shown} bytes, expected {expected:.0f}. " + (hint or (
        "The kernel's input and output are N × N per head (d does not appear); count read + write, for "
        "every (batch, head) pair, in bytes.")))
