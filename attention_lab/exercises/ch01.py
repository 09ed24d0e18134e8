"""Chapter 01 — write scaled dot-product attention."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.attention import scaled_dot_product_attention
from attention_lab.exercises.core import (InputGuard, call, exercise_check, expect_close, random_generator,
                                          which_mistake)

# (B, H, Nq, Nk, D): odd sizes so that a transposed or mis-broadcast answer cannot pass by accident. The first
# case has Nq != Nk != D (every mistake is told apart there); then one token, a long row, and a wide head.
_SHAPES = [(2, 3, 5, 9, 16), (1, 1, 1, 1, 16), (2, 3, 7, 7, 16), (1, 2, 33, 33, 40), (3, 1, 5, 5, 64),
           (2, 2, 3, 9, 16)]

_HINT = ("Check the 1/√D scale (D = q.shape[-1]), that softmax runs over the KEYS (last dim), "
         "and that you multiply the weights by v.")


def _mistakes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> list[tuple[str, Callable]]:
    """(hint, answer): what each plausible mistake returns on (q, k, v)."""
    d = q.shape[-1]
    raw = q @ k.transpose(-2, -1)  # (B, H, Nq, Nk)
    return [
        ("Missing the 1/√D scale: divide the scores q kᵀ by √D (D = q.shape[-1]) before the softmax.",
         lambda: torch.softmax(raw, dim=-1) @ v),
        ("Scaled by 1/D instead of 1/√D: divide the scores by D ** 0.5.", lambda: torch.softmax(raw / d, dim=-1) @ v),
        ("The scale is 1/√D: you multiplied the scores by √D instead of dividing.",
         lambda: torch.softmax(raw * d ** 0.5, dim=-1) @ v),
        ("The scale uses the head dimension D = q.shape[-1], not the number of keys N.",
         lambda: torch.softmax(raw / k.shape[-2] ** 0.5, dim=-1) @ v),
        ("The scale uses the head dimension D = q.shape[-1], not the number of queries.",
         lambda: torch.softmax(raw / q.shape[-2] ** 0.5, dim=-1) @ v),
        ("Softmax over the wrong axis: it runs over the KEYS (dim=-1), so that each QUERY's weights sum to 1; "
         "dim=-2 normalises over the queries.", lambda: torch.softmax(raw / d ** 0.5, dim=-2) @ v),
        ("Softmax over the wrong axis: it runs over the keys (dim=-1), not over the heads or the batch.",
         lambda: torch.softmax(raw / d ** 0.5, dim=1) @ v),
        ("Softmax over the wrong axis: it runs over the keys (dim=-1), not over the heads or the batch.",
         lambda: torch.softmax(raw / d ** 0.5, dim=0) @ v),
        ("Scale the SCORES before the softmax: dividing after it (or dividing the output) is not the same.",
         lambda: torch.softmax(raw, dim=-1) @ v / d ** 0.5),
        ("No softmax: the weights must be softmax(q kᵀ / √D) over the keys, not the raw scores.",
         lambda: (raw / d ** 0.5) @ v),
        ("That is attention with k as the values: the weights multiply v.",
         lambda: torch.softmax(raw / d ** 0.5, dim=-1) @ k),
    ]


@exercise_check("scaled dot-product attention")
def check_attention(attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``attention(q, k, v)`` with q ``(B, H, Nq, D)``, k and v ``(B, H, Nk, D)`` must equal ``softmax(q kᵀ / √D) v``."""
    generator = random_generator(1)
    for batch, heads, n_queries, n_keys, d in _SHAPES:
        q = torch.randn(batch, heads, n_queries, d, generator=generator)
        k, v = (torch.randn(batch, heads, n_keys, d, generator=generator) for _ in range(2))
        expected = scaled_dot_product_attention(q, k, v)
        what = f"attention with q {tuple(q.shape)} and k, v {tuple(k.shape)}"
        guard = InputGuard(q=q, k=k, v=v)
        actual = call(attention, q, k, v, what=what,
                      hint="The scores are q times k with k's last two dims swapped: shape (B, H, Nq, Nk); "
                           "keys may outnumber queries.")
        guard.check(what)
        if isinstance(actual, torch.Tensor) and actual.shape == (batch, heads, n_queries, n_keys) and n_keys != d:
            hint = ("That is the (B, H, Nq, Nk) table of weights: attention returns those weights times v, "
                    "(B, H, Nq, D).")
        else:
            hint = which_mistake(actual, _mistakes(q, k, v)) or _HINT
        expect_close(actual, expected, what, hint=hint)
