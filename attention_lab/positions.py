"""Positions: attention by itself ignores word order, so a model adds where each token sits (chapter 01).

Attention is *permutation equivariant*: shuffle the tokens and every output is shuffled the same way, each
token's output unchanged — softmax(q kᵀ) v sums over the keys, and a sum does not care about order. A model
that must tell "dog bites man" from "man bites dog" therefore adds a position vector to each token's
embedding before the first layer:

* **sinusoidal** (Vaswani et al., 2017, §3.5): ``PE[p, 2i] = sin(p / base^(2i/d))``,
  ``PE[p, 2i+1] = cos(p / base^(2i/d))``, ``base = 10000`` — fixed, one frequency per pair of columns;
* **learned**: a table of ``context_length`` trainable vectors (what TinyGPT uses, ``position_embedding``);
* or a rotation of q and k by their positions (RoPE, :mod:`attention_lab.rope`, chapter 12).
"""

from __future__ import annotations

import torch

from attention_lab.attention import scaled_dot_product_attention
from attention_lab.validation import check_positive_int, check_rank, check_real


def sinusoidal_positions(n_positions: int, d_model: int, base: float = 10000.0,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The sinusoidal position table ``(n_positions, d_model)`` for positions ``0 … n_positions-1``.

    Column pair ``(2i, 2i+1)`` holds ``sin`` and ``cos`` of ``p / base^(2i/d_model)``: the first pair turns once
    every 2π positions, the last almost never, so every position gets a different vector. ``d_model`` must be
    even; ``base`` a real number > 1.
    """
    check_positive_int("n_positions", n_positions)
    check_positive_int("d_model", d_model)
    if d_model % 2:
        raise ValueError(f"d_model must be even (sin and cos come in pairs), got {d_model}")
    base = check_real("base", base, minimum=1.0, strict=True)
    positions = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)  # (N, 1)
    pair = torch.arange(0, d_model, 2, dtype=torch.float64)  # (d/2,): 2i
    angles = positions / base ** (pair / d_model)  # (N, d/2): p / base^(2i/d)
    table = torch.empty(n_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)  # even columns 2i
    table[:, 1::2] = torch.cos(angles)  # odd columns 2i+1
    return table.to(dtype)


def order_sensitivity(x: torch.Tensor, order: torch.Tensor, positions: torch.Tensor | None = None) -> float:
    """How much each token's self-attention output changes when the tokens are reordered.

    ``x (N, D)`` embeddings, ``order (N,)`` a permutation, ``positions (N, D)`` added by position (the first
    row to whatever token comes first) or None. Returns ``max |out(x)[order] − out(x[order])|`` with ``out`` =
    self-attention with q = k = v: 0 (up to rounding) without positions, for every permutation.
    """
    check_rank("x", x, 2, "(seq, dim)")
    n = x.shape[0]
    if not isinstance(order, torch.Tensor) or sorted(order.tolist()) != list(range(n)):
        raise ValueError(f"order must be a permutation of 0..{n - 1}, got {order!r}")
    if positions is not None and positions.shape != x.shape:
        raise ValueError(f"positions must have x's shape {tuple(x.shape)}, got {tuple(positions.shape)}")
    add = (lambda t: t) if positions is None else (lambda t: t + positions)

    def out(tokens: torch.Tensor) -> torch.Tensor:
        states = add(tokens).view(1, 1, n, -1)  # (B=1, H=1, N, D)
        return scaled_dot_product_attention(states, states, states)[0, 0]  # (N, D)

    return (out(x)[order] - out(x[order])).abs().max().item()
