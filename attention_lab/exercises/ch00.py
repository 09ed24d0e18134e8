"""Chapter 00 — additive (Bahdanau) attention for one decoder step."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.additive import additive_attention
from attention_lab.exercises.core import (ExerciseError, InputGuard, call, exercise_check, expect_close,
                                          random_generator, which_mistake)

# (B, N, Dq, Dk, Dv, A): one key; Dq != Dk != A so that a weight used the wrong way round raises; and a
# square case (Dq = Dk = A) where it does not raise but gives the wrong values.
_CASES = [(2, 7, 5, 3, 4, 6), (1, 1, 3, 3, 2, 4), (3, 11, 4, 4, 4, 5), (2, 5, 4, 4, 3, 4)]

_HINT = "score_j = v · tanh(W_q·query + W_k·key_j); softmax over the N keys; context = Σ_j weight_j · value_j."


def _mistakes(query, keys, values, w_query, w_key, v, context, weights):
    """(hint, answer) pairs: what each plausible mistake returns, for the weights and for the context."""
    projected = (query @ w_query.T).unsqueeze(1) + keys @ w_key.T  # (B, N, A)
    scores = torch.tanh(projected) @ v  # (B, N)

    weight_mistakes = [
        ("The weights are the scores without the softmax: normalise them with a softmax over the N keys "
         "(each row sums to 1).", lambda: scores),
        ("exp(score) alone is not normalised: divide by the sum over the N keys (a softmax).", lambda: scores.exp()),
        ("No tanh: score_j = v · tanh(W_q·query + W_k·key_j) — the nonlinearity comes before the dot with v.",
         lambda: torch.softmax(projected @ v, dim=-1)),
        ("tanh goes on the A-dimensional hidden vector W_q·query + W_k·key_j, BEFORE the dot with v, not on "
         "the score.", lambda: torch.softmax(torch.tanh(projected @ v), dim=-1)),
        ("The softmax runs over the N keys (the last dim of the (B, N) scores), not over the batch.",
         lambda: torch.softmax(scores, dim=0)),
        ("Bahdanau's score is additive (v · tanh(W_q·query + W_k·key)); a dot product of the projections is "
         "Luong's multiplicative score.",
         lambda: torch.softmax(((query @ w_query.T).unsqueeze(1) * (keys @ w_key.T)).sum(-1), dim=-1)),
        ("W_q·query is the matrix w_query (A, Dq) applied to each query, i.e. query @ w_query.T (and keys @ "
         "w_key.T): without the transpose the shapes only fit when the sizes happen to be equal.",
         lambda: torch.softmax(torch.tanh((query @ w_query).unsqueeze(1) + keys @ w_key) @ v, dim=-1)),
    ]
    context_mistakes = [
        ("The context is Σ_j weight_j · value_j, a weighted sum of the VALUES (not of the keys).",
         lambda: (weights.unsqueeze(1) @ keys).squeeze(1)),
        ("The context sums the values weighted by the attention weights: an unweighted mean of the values is "
         "the fixed summary attention replaces.", lambda: values.mean(1)),
    ]
    return weight_mistakes, context_mistakes


@exercise_check("additive attention")
def check_additive_attention(fn: Callable) -> None:
    """``fn(query, keys, values, w_query, w_key, v)`` must return ``(context (B, Dv), weights (B, N))``."""
    generator = random_generator(0)
    for batch, n, dq, dk, dv, a in _CASES:
        args = (torch.randn(batch, dq, generator=generator), torch.randn(batch, n, dk, generator=generator),
                torch.randn(batch, n, dv, generator=generator), torch.randn(a, dq, generator=generator),
                torch.randn(a, dk, generator=generator), torch.randn(a, generator=generator))
        context, weights = additive_attention(*args)
        what = f"additive attention for B={batch}, N={n}"
        guard = InputGuard(query=args[0], keys=args[1], values=args[2], w_query=args[3], w_key=args[4], v=args[5])
        result = call(fn, *args, what=what,
                      hint=f"Shapes: query (B, Dq), keys (B, N, Dk), values (B, N, Dv), w_query (A, Dq), "
                           f"w_key (A, Dk), v (A,) — here A={a}, Dq={dq}, Dk={dk}: W_q·query is query @ w_query.T.")
        guard.check(what)
        if not isinstance(result, tuple) or len(result) != 2:
            raise ExerciseError(f"{what}: return a pair (context, weights), got "
                                f"{type(result).__name__ if not isinstance(result, tuple) else f'{len(result)} values'}.")
        got_context, got_weights = result
        if (isinstance(got_context, torch.Tensor) and got_context.shape == weights.shape
                and isinstance(got_weights, torch.Tensor) and got_weights.shape == context.shape
                and weights.shape != context.shape):
            raise ExerciseError(f"{what}: the pair is the wrong way round — return (context, weights): the "
                                f"context (B, Dv) = {tuple(context.shape)} first, then the weights (B, N) = "
                                f"{tuple(weights.shape)}.")
        weight_mistakes, context_mistakes = _mistakes(*args, context, weights)
        hint = which_mistake(got_weights, weight_mistakes) or _HINT
        if isinstance(got_weights, torch.Tensor) and got_weights.dim() < weights.dim():
            hint = "Keep the batch dimension: weights are (B, N) even for B = 1 (squeeze(1), not squeeze())."
        expect_close(got_weights, weights, f"weights for B={batch}, N={n}", hint)
        hint = which_mistake(got_context, context_mistakes) or _HINT
        if isinstance(got_context, torch.Tensor) and got_context.dim() < context.dim():
            hint = "Keep the batch dimension: the context is (B, Dv) even for B = 1 (squeeze(1), not squeeze())."
        expect_close(got_context, context, f"context for B={batch}, N={n}", hint)
