"""Chapter 12 — the absorbed query of Multi-head Latent Attention."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.mla import absorb_query
from attention_lab.exercises.core import (InputGuard, call, exercise_check, expect_close, random_generator,
                                          which_mistake)

# (B, H, T, D, d_c). The first shape is square (D == d_c), so multiplying by W^UK_i instead of its
# transpose gives an answer of the right shape with the wrong values; the others are not square.
_SHAPES = [(2, 3, 5, 6, 6), (1, 2, 3, 4, 10), (2, 4, 1, 8, 5), (1, 1, 7, 3, 12)]

_HINT = ("Head i's key is k_i = W_UK[i] @ c, where W_UK[i] is the block of D rows i·D … (i+1)·D−1 of w_uk, shape "
         "(D, d_c); so q_i · k_i = (W_UK[i]ᵀ q_i) · c. Split w_uk into its H blocks of shape (D, d_c), one per "
         "head, and multiply each head's query by the TRANSPOSE of its own block — the result has d_c numbers per "
         "head and token. No softmax scale here: that stays in the score.")


def _mistakes(q: torch.Tensor, w_uk: torch.Tensor) -> list[tuple[str, Callable]]:
    batch, heads, seq, head_dim = q.shape
    latent = w_uk.shape[1]
    blocks = w_uk.reshape(heads, head_dim, latent)  # (H, D, d_c): W_UK[i]
    right = (q.unsqueeze(-2) @ blocks.unsqueeze(0).unsqueeze(2)).squeeze(-2)  # (B, H, T, d_c)
    return [
        ("Mind which side the matrix goes on: multiplying by W_UK[i] itself (W_UK[i] q_i) only has the right "
         "shape when D == d_c — the absorbed query is W_UK[i]ᵀ q_i, the query row times W_UK[i].",
         lambda: (blocks.unsqueeze(0).unsqueeze(2) @ q.unsqueeze(-1)).squeeze(-1) if head_dim == latent else None),
        ("The H·D rows of w_uk are H consecutive blocks of D rows (head i = rows i·D … (i+1)·D−1): viewing them "
         "as (D, H, d_c) interleaves the heads.",
         lambda: (q.unsqueeze(-2) @ w_uk.reshape(head_dim, heads, latent).transpose(0, 1).unsqueeze(0).unsqueeze(2)
                  ).squeeze(-2)),
        ("No softmax scale here: the 1/√D belongs to the score, which multiplies this query by the latents later.",
         lambda: right * head_dim ** -0.5),
        ("No softmax scale here: the 1/√D belongs to the score, which multiplies this query by the latents later.",
         lambda: right * latent ** -0.5),
        ("Each head has its OWN block W_UK[i]: one product of all heads' queries with the whole w_uk sums over "
         "the heads and loses them.",
         lambda: (q.transpose(1, 2).reshape(batch, seq, heads * head_dim) @ w_uk).unsqueeze(1)),
        ("Each head has its OWN block W_UK[i]: one product of all heads' queries with the whole w_uk sums over "
         "the heads and loses them.",
         lambda: (q.transpose(1, 2).reshape(batch, seq, heads * head_dim) @ w_uk).unsqueeze(1).expand(
             batch, heads, seq, latent)),
    ]


@exercise_check("absorbed query")
def check_absorbed_query(absorbed_query: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``absorbed_query(q_content (B, H, T, D), w_uk (H·D, d_c))`` must return ``(B, H, T, d_c)`` with
    ``result[b, i, t] · c == q_content[b, i, t] · (W^UK_i c)`` for every latent ``c``."""
    generator = random_generator(12)
    for batch, heads, seq, head_dim, latent_dim in _SHAPES:
        q = torch.randn(batch, heads, seq, head_dim, generator=generator)
        w_uk = torch.randn(heads * head_dim, latent_dim, generator=generator)
        what = f"absorbed query for q {tuple(q.shape)}, w_uk {tuple(w_uk.shape)}"
        expected = absorb_query(q, w_uk)
        guard = InputGuard(q_content=q, w_uk=w_uk)
        actual = call(absorbed_query, q, w_uk, what=what,
                      hint=f"Here H={heads}, D={head_dim}, d_c={latent_dim}: the sizes come from the inputs' shapes. "
                           + _HINT)
        guard.check(what)
        if isinstance(actual, torch.Tensor) and actual.shape == (batch, seq, heads, latent_dim) != expected.shape:
            hint = "The heads come before the tokens: return (B, H, T, d_c), like q_content's (B, H, T, D)."
        else:
            hint = which_mistake(actual, _mistakes(q, w_uk), expected, atol=1e-4, rtol=1e-4) or _HINT
        expect_close(actual, expected, what, hint=hint, atol=1e-4, rtol=1e-4)
    # The point of it all: scores against latents equal scores against the decompressed keys.
    latents = torch.randn(1, 9, _SHAPES[1][4], generator=generator)  # (1, N, d_c)
    q = torch.randn(1, 2, 3, 4, generator=generator)
    w_uk = torch.randn(8, _SHAPES[1][4], generator=generator)
    keys = (latents @ w_uk.T).view(1, 9, 2, 4).transpose(1, 2)  # (1, H, N, D): W^UK_i c_j
    actual = call(absorbed_query, q, w_uk, what="absorbed query against latents", hint=_HINT)
    expect_close(actual @ latents.unsqueeze(1).transpose(-1, -2), q @ keys.transpose(-1, -2),
                 "scores of the absorbed query against the latents", hint=_HINT, atol=1e-4, rtol=1e-4)
