"""Chapter 00 — additive (Bahdanau) attention for one decoder step."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.additive import additive_attention
from attention_lab.exercises.core import exercise_check, expect_close, random_generator


@exercise_check("additive attention")
def check_additive_attention(fn: Callable) -> None:
    """``fn(query, keys, values, w_query, w_key, v)`` must return ``(context (B, Dv), weights (B, N))``."""
    generator = random_generator(0)
    for batch, n, dq, dk, dv, a in [(1, 1, 3, 3, 2, 4), (2, 7, 5, 3, 4, 6), (3, 11, 4, 4, 4, 5)]:
        args = (torch.randn(batch, dq, generator=generator), torch.randn(batch, n, dk, generator=generator),
                torch.randn(batch, n, dv, generator=generator), torch.randn(a, dq, generator=generator),
                torch.randn(a, dk, generator=generator), torch.randn(a, generator=generator))
        context, weights = additive_attention(*args)
        result = fn(*args)
        if not isinstance(result, tuple) or len(result) != 2:
            from attention_lab.exercises.core import ExerciseError

            raise ExerciseError("additive attention: return a pair (context, weights)")
        hint = ("score_j = v · tanh(W_q·query + W_k·key_j); softmax over the N keys; context = Σ_j weight_j · value_j.")
        expect_close(result[1], weights, f"weights for B={batch}, N={n}", hint)
        expect_close(result[0], context, f"context for B={batch}, N={n}", hint)
