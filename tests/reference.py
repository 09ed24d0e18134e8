"""The float64 ground truth every attention implementation is compared with, and tolerances per dtype."""

from __future__ import annotations

import math

import torch

# Tolerances defined once per dtype (atol, rtol) for comparing against the float64 reference.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def allowed_positions(n_queries: int, n_keys: int, causal: bool = False, window: int | None = None) -> torch.Tensor:
    """(Nq, Nk) bool, written loop-by-loop from DESIGN.md §3 (queries aligned to the end of the keys)."""
    allowed = torch.ones(n_queries, n_keys, dtype=torch.bool)
    for i in range(n_queries):
        position = i + n_keys - n_queries
        for j in range(n_keys):
            if (causal or window is not None) and j > position:
                allowed[i, j] = False
            if window is not None and j <= position - window:
                allowed[i, j] = False
    return allowed


def attention_fp64(q, k, v, mask=None, causal=False, window=None, scale=None) -> torch.Tensor:
    """Plain float64 einsum attention with repeated kv heads; fully masked rows give zeros.

    q ``(B, H, Nq, D)``, k ``(B, Hkv, Nk, D)``, v ``(B, Hkv, Nk, Dv)`` -> ``(B, H, Nq, Dv)`` float64.
    """
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    allowed = allowed_positions(q.shape[2], k.shape[2], causal, window).to(q.device)
    if mask is not None:
        allowed = allowed & mask
    allowed = allowed.expand_as(scores)
    scores = scores.masked_fill(~allowed, float("-inf"))
    row_max = scores.amax(-1, keepdim=True).nan_to_num(neginf=0.0)
    weights = torch.exp(scores - row_max) * allowed
    denom = weights.sum(-1, keepdim=True)
    weights = torch.where(denom > 0, weights / denom.clamp_min(1e-300), torch.zeros_like(weights))
    return torch.einsum("bhqk,bhkd->bhqd", weights, v)
