"""Chapter 09 — the per-block update inside the tiled FlashAttention loop."""

from __future__ import annotations

import math
from typing import Callable

import torch

from attention_lab.attention import scaled_dot_product_attention
from attention_lab.flash.online_softmax import online_softmax_update
from attention_lab.exercises.core import ExerciseError, exercise_check, expect_close, random_generator

_HINT = ("Inside the loop: S = Q_i K_jᵀ · scale; m_new = max(m_i, rowmax S); P = exp(S − m_new); "
         "alpha = exp(m_i − m_new); l_new = alpha·l_i + rowsum P; acc_new = alpha·acc + P V_j. "
         "Do not divide by l inside the loop — only once, after the last block.")


def _as_state(result, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(result, tuple) or len(result) != 3:
        raise ExerciseError(f"{what}: block_update must return a tuple (m_new, l_new, acc_new).")
    return result


@exercise_check("tiled FlashAttention block update")
def check_block_update(block_update: Callable) -> None:
    """``block_update(q_block, k_block, v_block, m_i, l_i, acc, scale)`` with q_block ``(Br, D)``, k_block
    ``(Bc, D)``, v_block ``(Bc, Dv)``, m_i and l_i ``(Br,)``, acc ``(Br, Dv)`` must return the new
    ``(m_i, l_i, acc)`` after folding in this key block (chapter 08's update, on tiles)."""
    generator = random_generator(9)
    # 1. One step from a state that already holds earlier keys, with a block whose max is larger for some rows.
    rows, keys, dim = 5, 7, 16
    q = torch.randn(rows, dim, generator=generator, dtype=torch.float64)
    k = torch.randn(keys, dim, generator=generator, dtype=torch.float64) * 2
    v = torch.randn(keys, dim, generator=generator, dtype=torch.float64)
    m_i = torch.randn(rows, generator=generator, dtype=torch.float64)
    l_i = torch.rand(rows, generator=generator, dtype=torch.float64) + 0.5
    acc = torch.randn(rows, dim, generator=generator, dtype=torch.float64)
    scale = dim ** -0.5
    expected = online_softmax_update(m_i, l_i, acc, (q @ k.T) * scale, v)
    got = _as_state(block_update(q, k, v, m_i.clone(), l_i.clone(), acc.clone(), scale), "one step")
    for name, actual, want in zip(("m_new", "l_new", "acc_new"), got, expected):
        expect_close(actual, want, f"one block update: {name}", hint=_HINT, atol=1e-9, rtol=1e-9)
    # 2. The whole loop over key blocks (last block shorter) equals attention, for two block sizes.
    for n_queries, n_keys, block_k in ((9, 37, 8), (4, 20, 5)):
        q = torch.randn(n_queries, dim, generator=generator) * 3
        k = torch.randn(n_keys, dim, generator=generator) * 3
        v = torch.randn(n_keys, dim, generator=generator)
        m_i = torch.full((n_queries,), -math.inf)
        l_i = torch.zeros(n_queries)
        acc = torch.zeros(n_queries, dim)
        for start in range(0, n_keys, block_k):
            m_i, l_i, acc = _as_state(block_update(q, k[start:start + block_k], v[start:start + block_k], m_i, l_i,
                                                   acc, scale), f"block at key {start}")
        expected = scaled_dot_product_attention(q[None, None], k[None, None], v[None, None])[0, 0]
        expect_close(acc / l_i[:, None], expected, f"acc / l after {math.ceil(n_keys / block_k)} blocks of {block_k} keys",
                     hint=_HINT)
