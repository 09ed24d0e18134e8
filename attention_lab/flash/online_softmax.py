"""Online softmax: attention over keys that arrive one at a time (or a block at a time), in one pass.

The lecture's toy: one query q = 1, keys K = [1, 2, 3], values V = [2, 4, 8]. The scores are q·k = 1, 2, 3
(no scaling in the toy), so

    output = (2e¹ + 4e² + 8e³) / (e¹ + e² + e³) = 6.4809…

Streaming keeps a running numerator N = Σ exp(s_j) v_j and denominator D = Σ exp(s_j); the output is
N / D once every key has been seen. With a running maximum m the exponentials never overflow: when a
larger score arrives, the old N and D are rescaled by exp(m_old − m_new) — both of them.

The same update on rows of scores and blocks of keys is the heart of FlashAttention (Milakov &
Gimelshein, 2018, "Online normalizer calculation for softmax"; Dao et al., 2022). The paper's names:
m_i (running max), l_i (running sum of exponentials = D), acc (running unnormalised output = N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TOY_QUERY = 1.0
TOY_KEYS = (1.0, 2.0, 3.0)
TOY_VALUES = (2.0, 4.0, 8.0)


def toy_closed_form() -> float:
    """(2e + 4e² + 8e³) / (e + e² + e³), in float64."""
    e = math.e
    return (2 * e + 4 * e**2 + 8 * e**3) / (e + e**2 + e**3)


@dataclass(frozen=True)
class StreamStep:
    """The state after seeing one more key: scores/values so far are summarised by (m, N, D)."""

    key_index: int
    score: float
    value: float
    m: float  # running max of the scores seen (0.0 in the plain version, which has no max)
    numerator: float  # N = Σ exp(s_j − m) v_j
    denominator: float  # D = Σ exp(s_j − m)
    rescale: float  # exp(m_old − m_new) applied to the old N and D at this step (1.0 when m did not change)

    @property
    def output(self) -> float:
        """N / D: attention over the keys seen so far."""
        return self.numerator / self.denominator


def stream_plain(scores, values) -> list[StreamStep]:
    """Process keys one at a time keeping N = Σ exp(s_j) v_j and D = Σ exp(s_j) — no max, so exp may overflow."""
    numerator, denominator, steps = 0.0, 0.0, []
    for j, (s, v) in enumerate(zip(scores, values)):
        try:
            weight = math.exp(s)
        except OverflowError:
            weight = math.inf  # what fp32/fp64 hardware gives: exp(1000) = inf
        numerator += weight * v  # N ← N + exp(s_j) v_j
        denominator += weight  # D ← D + exp(s_j)
        steps.append(StreamStep(j, s, v, 0.0, numerator, denominator, 1.0))
    return steps


def online_update_scalar(m: float, numerator: float, denominator: float, score: float,
                         value: float) -> tuple[float, float, float, float]:
    """One streaming step with a running max. Returns (m_new, N_new, D_new, rescale).

        m_new = max(m, s)
        N_new = N · exp(m − m_new) + exp(s − m_new) · v
        D_new = D · exp(m − m_new) + exp(s − m_new)
    """
    m_new = max(m, score)
    rescale = math.exp(m - m_new) if m != -math.inf else 0.0  # exp(m_old − m_new); the empty state has N = D = 0
    weight = math.exp(score - m_new)
    return m_new, numerator * rescale + weight * value, denominator * rescale + weight, rescale


def stream_with_max(scores, values) -> list[StreamStep]:
    """Process keys one at a time with a running max m, rescaling the old N and D by exp(m_old − m_new)."""
    m, numerator, denominator, steps = -math.inf, 0.0, 0.0, []
    for j, (s, v) in enumerate(zip(scores, values)):
        m, numerator, denominator, rescale = online_update_scalar(m, numerator, denominator, s, v)
        steps.append(StreamStep(j, s, v, m, numerator, denominator, rescale))
    return steps


def toy_scores(query: float = TOY_QUERY, keys=TOY_KEYS) -> list[float]:
    """Scores q·k_j of the toy (no 1/√d: d = 1 and the lecture leaves it out)."""
    return [query * key for key in keys]


def online_softmax_update(m_i: torch.Tensor, l_i: torch.Tensor, acc: torch.Tensor, scores: torch.Tensor,
                          values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold one block of keys into the running state of R rows (the update inside every flash kernel).

    Any leading dims ``...`` (batch, heads) broadcast; the tiled forward of chapter 09 calls this too.

    Args:
        m_i: running max ``(..., R)``, −inf before any key.
        l_i: running sum of exponentials ``(..., R)`` (the denominator D).
        acc: running unnormalised output ``(..., R, Dv)`` (the numerator N).
        scores: this block's scores ``(..., R, Bc)``; −inf marks a masked key.
        values: this block's values ``(..., Bc, Dv)`` (broadcastable against ``scores @ values``).

    Returns:
        ``(m_new, l_new, acc_new)`` with the shapes of ``(m_i, l_i, acc)``. A row whose keys are all
        −inf so far keeps m = −inf, l = 0, acc = 0 (no NaN).
    """
    m_new = torch.maximum(m_i, scores.amax(dim=-1))  # m_new = max(m_i, rowmax(S))                (..., R)
    m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # all −inf so far: subtract 0
    p = torch.exp(scores - m_safe[..., None])  # P = exp(S − m_new)                               (..., R, Bc)
    alpha = torch.exp(m_i - m_safe)  # alpha = exp(m_i − m_new): rescales the OLD l_i and acc     (..., R)
    l_new = alpha * l_i + p.sum(dim=-1)  # l_new = alpha · l_i + rowsum(P)                        (..., R)
    acc_new = alpha[..., None] * acc + p @ values  # acc_new = alpha · acc + P V                 (..., R, Dv)
    return m_new, l_new, acc_new


def online_attention(scores: torch.Tensor, values: torch.Tensor, block_size: int = 1) -> torch.Tensor:
    """softmax(scores) @ values computed in one pass over key blocks of ``block_size``.

    scores ``(R, Nk)`` (−inf = masked), values ``(Nk, Dv)`` -> ``(R, Dv)``; rows with every key masked give 0.
    """
    if scores.dim() != 2 or values.dim() != 2 or values.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be (R, Nk) and values (Nk, Dv); got {tuple(scores.shape)} and {tuple(values.shape)}")
    if block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size}")
    rows, n_keys = scores.shape
    m_i = torch.full((rows,), -math.inf, dtype=scores.dtype)
    l_i = torch.zeros(rows, dtype=scores.dtype)
    acc = torch.zeros(rows, values.shape[1], dtype=scores.dtype)
    for start in range(0, n_keys, block_size):
        block = slice(start, start + block_size)
        m_i, l_i, acc = online_softmax_update(m_i, l_i, acc, scores[:, block], values[block].to(scores.dtype))
    return torch.where(l_i[:, None] > 0, acc / l_i.clamp_min(torch.finfo(l_i.dtype).tiny)[:, None], torch.zeros_like(acc))


def online_softmax(x: torch.Tensor, block_size: int = 1) -> torch.Tensor:
    """softmax over the last dim of ``x`` ``(..., Nk)`` with the normaliser (m, l) computed online over
    blocks, then one pass to write exp(x − m) / l. Rows of all −inf give zeros."""
    flat = x.reshape(-1, x.shape[-1])  # (R, Nk)
    rows, n_keys = flat.shape
    m_i = torch.full((rows,), -math.inf, dtype=x.dtype)
    l_i = torch.zeros(rows, dtype=x.dtype)
    empty_values = torch.zeros(n_keys, 0, dtype=x.dtype)  # (Nk, 0): we only need m and l here
    acc = torch.zeros(rows, 0, dtype=x.dtype)
    for start in range(0, n_keys, block_size):
        block = slice(start, start + block_size)
        m_i, l_i, acc = online_softmax_update(m_i, l_i, acc, flat[:, block], empty_values[block])
    m_safe = torch.where(torch.isinf(m_i), torch.zeros_like(m_i), m_i)
    weights = torch.exp(flat - m_safe[:, None]) / l_i.clamp_min(torch.finfo(x.dtype).tiny)[:, None]
    return weights.reshape(x.shape)


def softmax_without_max(x: torch.Tensor) -> torch.Tensor:
    """exp(x) / Σ exp(x) with no max subtracted: overflows to inf/inf = NaN once a logit passes ~88 (fp32)
    or ~709 (fp64). Shown only to motivate the max trick."""
    weights = torch.exp(x)
    return weights / weights.sum(dim=-1, keepdim=True)
