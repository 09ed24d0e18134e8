"""What one decoding step costs, with and without a KV cache (chapter 03's counting argument).

Generating token N+1 without a cache re-runs the model on all N tokens: every layer recomputes
3·N·d projected numbers (Q, K, V of every token) and an N×N score matrix. With a cache it projects
only the new token (its q, and 2·d new cache entries k, v) and computes N scores against the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._checks import check_positive_int


@dataclass(frozen=True)
class StepWork:
    """Work of ONE transformer block for one generated token (d = d_model = n_heads · head_dim)."""

    projected: int  # numbers produced by the Q, K, V projections
    new_kv_entries: int  # key/value numbers produced (all of them recomputed without a cache)
    scores: int  # query·key dot products
    multiply_adds: int  # QKV + output projections, MLP, scores and weighted sum of values


def decode_step_work(n_tokens: int, d_model: int, cached: bool, mlp_ratio: int = 4) -> StepWork:
    """Work of one block when the sequence holds ``n_tokens`` tokens (the new one included).

    Without a cache all N rows go through the block: 3·N·d projected numbers and N² scores (the
    causal mask hides half of them, but a plain matmul computes them all). With a cache only the
    new row does: 3·d projected numbers (2·d of them new cache entries) and N scores.
    Multiply-adds per row: 4·d² for the Q, K, V and output projections, 2·mlp_ratio·d² for the MLP,
    plus d for every score and d for every score's share of the weighted sum of values.
    """
    check_positive_int("n_tokens", n_tokens)
    check_positive_int("d_model", d_model)
    rows = 1 if cached else n_tokens  # rows that go through the block this step
    scores = rows * n_tokens  # N (cached) or N² (uncached)
    multiply_adds = rows * (4 + 2 * mlp_ratio) * d_model**2 + 2 * scores * d_model
    return StepWork(projected=3 * rows * d_model, new_kv_entries=2 * rows * d_model, scores=scores,
                    multiply_adds=multiply_adds)


def generation_multiply_adds(prompt_tokens: int, new_tokens: int, d_model: int, n_layers: int, cached: bool,
                             mlp_ratio: int = 4) -> int:
    """Multiply-adds in the blocks to generate ``new_tokens`` after a ``prompt_tokens`` prompt.

    Cached: one prefill over the prompt (each of its rows scores itself against the rows before it,
    counted as a full P×P matmul) then one row per step. Uncached: every step re-runs the whole
    sequence.
    """
    check_positive_int("prompt_tokens", prompt_tokens)
    check_positive_int("new_tokens", new_tokens, minimum=0)
    total = 0
    if cached:
        total += decode_step_work(prompt_tokens, d_model, cached=False, mlp_ratio=mlp_ratio).multiply_adds
        steps = range(prompt_tokens + 1, prompt_tokens + new_tokens)  # the last sampled token is never fed back
        total += sum(decode_step_work(n, d_model, cached=True, mlp_ratio=mlp_ratio).multiply_adds for n in steps)
    else:
        steps = range(prompt_tokens, prompt_tokens + new_tokens)
        total += sum(decode_step_work(n, d_model, cached=False, mlp_ratio=mlp_ratio).multiply_adds for n in steps)
    return n_layers * total
