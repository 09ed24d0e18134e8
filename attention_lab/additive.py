"""Additive attention (Bahdanau, Cho & Bengio, 2015): the score that started it all.

A decoder state asks "which encoder states matter now?" by scoring each of them with a small
one-hidden-layer network, ``score(s, h_j) = vᵀ tanh(W_q s + W_k h_j)``, and averaging the
encoder states with the softmax of those scores.
"""

from __future__ import annotations

import torch

from attention_lab.validation import check_rank


def additive_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, w_query: torch.Tensor,
                       w_key: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bahdanau attention for one query per batch element.

    Args:
        query: ``(B, Dq)`` decoder state; keys: ``(B, N, Dk)`` encoder states; values: ``(B, N, Dv)``.
        w_query: ``(A, Dq)``; w_key: ``(A, Dk)``; v: ``(A,)`` — the scoring network's weights.

    Returns:
        context ``(B, Dv)`` and weights ``(B, N)`` (each row sums to 1).
    """
    check_rank("query", query, 2, "(batch, query_dim)")
    check_rank("keys", keys, 3, "(batch, n_keys, key_dim)")
    check_rank("values", values, 3, "(batch, n_keys, value_dim)")
    if keys.shape[:2] != values.shape[:2] or keys.shape[0] != query.shape[0]:
        raise ValueError(f"query (B, Dq), keys (B, N, Dk), values (B, N, Dv) must agree on B and N: "
                         f"got {tuple(query.shape)}, {tuple(keys.shape)}, {tuple(values.shape)}")
    hidden = torch.tanh((query @ w_query.T).unsqueeze(1) + keys @ w_key.T)  # (B, N, A)
    scores = hidden @ v  # (B, N)
    weights = torch.softmax(scores, dim=-1)  # (B, N)
    context = (weights.unsqueeze(1) @ values).squeeze(1)  # (B, Dv)
    return context, weights


def mean_pool(states: torch.Tensor) -> torch.Tensor:
    """The fixed-vector summary of a sequence ``(B, N, D)`` -> ``(B, D)``: the average of its states."""
    check_rank("states", states, 3, "(batch, seq, dim)")
    return states.mean(dim=1)
