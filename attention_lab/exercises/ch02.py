"""Chapter 02 — build the causal mask and the masked softmax."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.masks import causal_mask
from attention_lab.exercises.core import ExerciseError, exercise_check, expect_close, random_generator


@exercise_check("causal mask")
def check_causal_mask(make_mask: Callable[[int], torch.Tensor]) -> None:
    """``make_mask(n)`` must return the ``(n, n)`` bool mask with True where query i may see key j (j <= i)."""
    for n in (1, 2, 6, 17):
        expect_close(make_mask(n), causal_mask(n), f"causal mask for n={n}",
                     hint="True means 'may attend'. Query i sees keys 0..i — the diagonal included, "
                          "nothing above it (torch.tril).")


@exercise_check("masked softmax")
def check_masked_softmax(masked_softmax: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``masked_softmax(scores, mask)``: softmax over the last dim with masked-out keys given weight 0,
    each row renormalised over the keys it may see."""
    generator = random_generator(2)
    for n in (1, 6, 13):
        scores = torch.randn(2, 3, n, n, generator=generator) * 3
        mask = causal_mask(n)
        expected = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        actual = masked_softmax(scores, mask)
        if isinstance(actual, torch.Tensor) and actual.shape == expected.shape:
            row_sums = actual.sum(-1)
            if not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-4):
                raise ExerciseError("masked softmax: rows must sum to 1 over the keys each query may see — "
                                    "set masked scores to -inf BEFORE the softmax instead of zeroing weights after it.")
        expect_close(actual, expected, f"masked softmax for n={n}",
                     hint="Fill masked positions (mask == False) with -inf, then softmax over the last dim.")
