"""Chapter 09 — the per-block update inside the tiled FlashAttention loop."""

from __future__ import annotations

import math
from typing import Callable

import torch

from attention_lab.attention import scaled_dot_product_attention
from attention_lab.flash.online_softmax import online_softmax_update
from attention_lab.exercises.core import (ExerciseError, InputGuard, call, exercise_check, expect_close,
                                          random_generator, same_values)

_HINT = ("Inside the loop: S = Q_i K_jᵀ · scale; m_new = max(m_i, rowmax S); P = exp(S − m_new); "
         "alpha = exp(m_i − m_new); l_new = alpha·l_i + rowsum P; acc_new = alpha·acc + P V_j. "
         "Do not divide by l inside the loop — only once, after the last block.")


def _as_state(result, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(result, tuple) or len(result) != 3:
        raise ExerciseError(f"{what}: block_update must return a tuple (m_new, l_new, acc_new).")
    return result


def _mistakes(q, k, v, m_i, l_i, acc, scale) -> list[tuple[str, Callable]]:
    """(hint, (m, l, acc) that the mistake returns) for one block update."""
    s = (q @ k.T) * scale
    m_new = torch.maximum(m_i, s.amax(-1))
    p = torch.exp(s - m_new[:, None])
    alpha = torch.exp(m_i - m_new)
    right_l, right_acc = alpha * l_i + p.sum(-1), alpha[:, None] * acc + p @ v
    block_max = s.amax(-1)
    p_block = torch.exp(s - block_max[:, None])
    p_old = torch.exp(s - m_i[:, None])
    return [
        ("acc is not rescaled: the old acc was summed relative to the old max, so multiply it by alpha = "
         "exp(m_i − m_new) (one factor per row) before adding P V_j — as you did for l.",
         lambda: (m_new, right_l, acc + p @ v)),
        ("l is not rescaled: the old l_i was summed relative to the old max, so multiply it by alpha = "
         "exp(m_i − m_new) before adding rowsum P — as you did for acc.",
         lambda: (m_new, l_i + p.sum(-1), right_acc)),
        ("Neither l nor acc is rescaled: both old sums were computed relative to the old max — multiply both by "
         "alpha = exp(m_i − m_new) before adding this block's terms.",
         lambda: (m_new, l_i + p.sum(-1), acc + p @ v)),
        ("alpha is upside down: it is exp(m_i − m_new), a number ≤ 1 that shrinks the old sums, not "
         "exp(m_new − m_i).", lambda: (m_new, torch.exp(m_new - m_i) * l_i + p.sum(-1),
                                       torch.exp(m_new - m_i)[:, None] * acc + p @ v)),
        ("Missing the softmax scale: the scores tile is S = Q_i K_jᵀ · scale.",
         lambda: _reference(q, k, v, m_i, l_i, acc, 1.0)),
        ("The scale multiplies the scores (scale = D ** -0.5 already): dividing by it scales them the wrong way.",
         lambda: _reference(q, k, v, m_i, l_i, acc, 1.0 / scale)),
        ("Do not divide by l inside the loop: acc stays the UNnormalised sum; the division by l happens once, "
         "after the last block.", lambda: (m_new, right_l, right_acc / right_l[:, None])),
        ("The running max must include the old one: m_new = max(m_i, rowmax S), not the block's max alone.",
         lambda: (block_max, torch.exp(m_i - block_max) * l_i + p_block.sum(-1),
                  torch.exp(m_i - block_max)[:, None] * acc + p_block @ v)),
        ("P is taken relative to the NEW max: P = exp(S − m_new), not exp(S − m_i).",
         lambda: (m_new, alpha * l_i + p_old.sum(-1), alpha[:, None] * acc + p_old @ v)),
        ("P is not a softmax of the block: P = exp(S − m_new) stays unnormalised, and l collects its row sums.",
         lambda: (m_new, alpha * l_i + torch.softmax(s, -1).sum(-1), alpha[:, None] * acc + torch.softmax(s, -1) @ v)),
    ]


def _reference(q, k, v, m_i, l_i, acc, scale):
    return online_softmax_update(m_i, l_i, acc, (q @ k.T) * scale, v)


def _which(got, mistakes) -> str | None:
    for hint, answer in mistakes:
        try:
            wrong = answer()
        except Exception:  # noqa: BLE001
            continue
        if all(same_values(a, b, atol=1e-9, rtol=1e-9) for a, b in zip(got, wrong)):
            return hint
    return None


@exercise_check("tiled FlashAttention block update")
def check_block_update(block_update: Callable) -> None:
    """``block_update(q_block, k_block, v_block, m_i, l_i, acc, scale)`` with q_block ``(Br, D)``, k_block
    ``(Bc, D)``, v_block ``(Bc, Dv)``, m_i and l_i ``(Br,)``, acc ``(Br, Dv)`` must return the new
    ``(m_i, l_i, acc)`` after folding in this key block (chapter 08's update, on tiles), leaving the blocks
    q_block, k_block, v_block as they were."""
    generator = random_generator(9)
    # 1. One step from a state that already holds earlier keys, with a block whose max is larger for some rows.
    rows, keys, dim, dim_v = 5, 7, 16, 12
    q = torch.randn(rows, dim, generator=generator, dtype=torch.float64)
    k = torch.randn(keys, dim, generator=generator, dtype=torch.float64) * 2
    v = torch.randn(keys, dim_v, generator=generator, dtype=torch.float64)
    m_i = torch.randn(rows, generator=generator, dtype=torch.float64)
    m_i[::2] += 8.0  # rows 0, 2, 4: the old max stays above this block's scores; rows 1, 3: the block's is larger
    l_i = torch.rand(rows, generator=generator, dtype=torch.float64) + 0.5
    acc = torch.randn(rows, dim_v, generator=generator, dtype=torch.float64)
    scale = dim ** -0.5
    expected = _reference(q, k, v, m_i, l_i, acc, scale)
    what = "one block update"
    guard = InputGuard(q_block=q, k_block=k, v_block=v)
    got = _as_state(call(block_update, q, k, v, m_i.clone(), l_i.clone(), acc.clone(), scale, what=what,
                         hint=f"Shapes here: q_block {tuple(q.shape)}, k_block {tuple(k.shape)}, v_block "
                              f"{tuple(v.shape)}, m_i and l_i ({rows},), acc {tuple(acc.shape)}: row statistics are "
                              "over the keys (dim -1), and alpha (B_r,) scales acc's rows as alpha[:, None]."), what)
    guard.check(what)
    shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in got]
    if shapes == [(rows,), (rows, dim_v), (rows,)]:
        raise ExerciseError(f"{what}: the state comes back in the wrong order — return (m_new, l_new, acc_new).")
    hint = _which(got, _mistakes(q, k, v, m_i, l_i, acc, scale)) or _HINT
    for name, actual, want in zip(("m_new", "l_new", "acc_new"), got, expected):
        expect_close(actual, want, f"one block update: {name}", hint=hint, atol=1e-9, rtol=1e-9)
    # 2. The whole loop over key blocks (last block shorter) equals attention, for two block sizes.
    for n_queries, n_keys, block_k in ((9, 37, 8), (4, 20, 5)):
        q = torch.randn(n_queries, dim, generator=generator) * 3
        k = torch.randn(n_keys, dim, generator=generator) * 3
        v = torch.randn(n_keys, dim, generator=generator)
        guard = InputGuard(q=q, k=k, v=v)
        m_i = torch.full((n_queries,), -math.inf)
        l_i = torch.zeros(n_queries)
        acc = torch.zeros(n_queries, dim)
        for start in range(0, n_keys, block_k):
            what = f"block at key {start}"
            m_i, l_i, acc = _as_state(call(block_update, q, k[start:start + block_k], v[start:start + block_k], m_i,
                                           l_i, acc, scale, what=what), what)
            guard.check(what, "The same Q block is used for every key block.")
        expected = scaled_dot_product_attention(q[None, None], k[None, None], v[None, None])[0, 0]
        expect_close(acc / l_i[:, None], expected, f"acc / l after {math.ceil(n_keys / block_k)} blocks of {block_k} keys",
                     hint="The first block starts from m_i = −inf, l_i = 0, acc = 0: alpha = exp(−inf − m_new) "
                          "= 0 there, so keep exp (no special case that makes NaN). " + _HINT)
