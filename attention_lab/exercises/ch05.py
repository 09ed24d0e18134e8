"""Chapter 05 — one decoding step of grouped-query attention, without repeating the key/value heads."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.attention import scaled_dot_product_attention
from attention_lab.exercises.core import exercise_check, expect_close, random_generator

# (batch, n_heads, n_kv_heads, n_keys, head_dim): MQA, GQA and MHA, odd lengths. Groups of 2 and 3
# heads with several kv heads tell "query head i reads kv head i // group" from "i % n_kv_heads".
_SHAPES = [(2, 4, 1, 9, 16), (1, 6, 2, 17, 8), (3, 6, 3, 5, 16), (1, 8, 4, 33, 12), (2, 3, 3, 7, 8)]


@exercise_check("grouped-query decode step")
def check_grouped_decode(grouped_decode: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``grouped_decode(q, k, v)``: q ``(B, H, 1, D)`` (the newest token), k and v ``(B, Hkv, N, D)`` (the
    cache, ``Hkv`` divides ``H``) -> ``(B, H, 1, D)``, where query head ``i`` attends to kv head
    ``i // (H // Hkv)`` with scale ``D ** -0.5``."""
    generator = random_generator(5)
    for batch, n_heads, n_kv_heads, n_keys, head_dim in _SHAPES:
        q = torch.randn(batch, n_heads, 1, head_dim, generator=generator)
        k = torch.randn(batch, n_kv_heads, n_keys, head_dim, generator=generator)
        v = torch.randn(batch, n_kv_heads, n_keys, head_dim, generator=generator)
        expected = scaled_dot_product_attention(q, k, v)  # (B, H, 1, D)
        expect_close(grouped_decode(q, k, v), expected,
                     f"decode step with H={n_heads} query heads and Hkv={n_kv_heads} kv heads",
                     hint="Reshape q to (B, Hkv, H // Hkv, D): consecutive query heads form one group and "
                          "share one kv head (head i -> kv head i // group). Scale the scores by D ** -0.5 and "
                          "take the softmax over the N keys.")
