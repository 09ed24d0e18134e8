"""Chapter 01 — write scaled dot-product attention."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.attention import scaled_dot_product_attention
from attention_lab.exercises.core import exercise_check, expect_close, random_generator

# (B, H, N, D): odd sizes so that a transposed or mis-broadcast answer cannot pass by accident.
_SHAPES = [(1, 1, 1, 16), (2, 3, 7, 16), (1, 2, 33, 40), (3, 1, 5, 64)]


@exercise_check("scaled dot-product attention")
def check_attention(attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``attention(q, k, v)`` with q, k, v ``(B, H, N, D)`` must equal ``softmax(q kᵀ / √D) v``."""
    generator = random_generator(1)
    for shape in _SHAPES:
        q, k, v = (torch.randn(shape, generator=generator) for _ in range(3))
        expected = scaled_dot_product_attention(q, k, v)
        expect_close(attention(q, k, v), expected, f"attention on shape {shape}",
                     hint="Check the 1/√D scale (D = q.shape[-1]), that softmax runs over the KEYS (last dim), "
                          "and that you multiply the weights by v.")
    # Keys and queries may differ in number: N_q = 3 queries over N_k = 9 keys.
    q = torch.randn(2, 2, 3, 16, generator=generator)
    k, v = torch.randn(2, 2, 9, 16, generator=generator), torch.randn(2, 2, 9, 16, generator=generator)
    expect_close(attention(q, k, v), scaled_dot_product_attention(q, k, v), "attention with 3 queries and 9 keys",
                 hint="Scores are q @ k.transpose(-2, -1): shape (B, H, N_q, N_k).")
