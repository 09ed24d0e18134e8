"""Chapter 12 — the absorbed query of Multi-head Latent Attention."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.mla import absorb_query
from attention_lab.exercises.core import ExerciseError, exercise_check, expect_close, random_generator

# (B, H, T, D, d_c). The first shape is square (D == d_c), so multiplying by W^UK_i instead of its
# transpose gives an answer of the right shape with the wrong values; the others are not square.
_SHAPES = [(2, 3, 5, 6, 6), (1, 2, 3, 4, 10), (2, 4, 1, 8, 5), (1, 1, 7, 3, 12)]

_HINT = ("Head i's key is k_i = W_UK[i] @ c with W_UK[i] = w_uk[i*D:(i+1)*D] of shape (D, d_c), so "
         "q_i · k_i = (W_UK[i]ᵀ q_i) · c: view w_uk as (H, D, d_c) and multiply each head's query row by "
         "its own slice from the right (q_i @ W_UK[i]), e.g. torch.einsum('bhtd,hdc->bhtc', q, w). "
         "No softmax scale here: that stays in the score.")


@exercise_check("absorbed query")
def check_absorbed_query(absorbed_query: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``absorbed_query(q_content (B, H, T, D), w_uk (H·D, d_c))`` must return ``(B, H, T, d_c)`` with
    ``result[b, i, t] · c == q_content[b, i, t] · (W^UK_i c)`` for every latent ``c``."""
    generator = random_generator(12)
    for batch, heads, seq, head_dim, latent_dim in _SHAPES:
        q = torch.randn(batch, heads, seq, head_dim, generator=generator)
        w_uk = torch.randn(heads * head_dim, latent_dim, generator=generator)
        what = f"absorbed query for q {tuple(q.shape)}, w_uk {tuple(w_uk.shape)}"
        try:
            actual = absorbed_query(q, w_uk)
        except (RuntimeError, ValueError, IndexError) as error:
            raise ExerciseError(f"{what}: your code raised {type(error).__name__}: {error}. {_HINT}") from None
        expect_close(actual, absorb_query(q, w_uk), what, hint=_HINT, atol=1e-4, rtol=1e-4)
    # The point of it all: scores against latents equal scores against the decompressed keys.
    latents = torch.randn(1, 9, _SHAPES[1][4], generator=generator)  # (1, N, d_c)
    q = torch.randn(1, 2, 3, 4, generator=generator)
    w_uk = torch.randn(8, _SHAPES[1][4], generator=generator)
    keys = (latents @ w_uk.T).view(1, 9, 2, 4).transpose(1, 2)  # (1, H, N, D): W^UK_i c_j
    expect_close(absorbed_query(q, w_uk) @ latents.unsqueeze(1).transpose(-1, -2), q @ keys.transpose(-1, -2),
                 "scores of the absorbed query against the latents", hint=_HINT, atol=1e-4, rtol=1e-4)
