"""What one decoding step costs, with and without a KV cache (chapter 03's counting argument).

Generating token N+1 without a cache re-runs the model on all N tokens: every layer recomputes
3·N·d projected numbers (Q, K, V of every token) and an N×N score matrix. With a cache it projects
only the new token (its q, and 2·d new cache entries k, v) and computes N scores against the cache.
:func:`measure_generation_speed` times both paths on a real model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from attention_lab.validation import check_positive_int
from attention_lab.costs.timing import time_function
from attention_lab.generate import generate


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


def _seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Time of ``fn()``. GPU: median CUDA-event time (:func:`time_function`). CPU: the least process CPU
    time over ``repeats`` runs — other jobs on a shared machine inflate wall time, and interference only
    ever adds time, so the fastest run is the cleanest estimate."""
    if device.type == "cuda":
        return time_function(fn, warmup=0, repeats=repeats, device=device)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def measure_generation_speed(model: torch.nn.Module, new_token_counts: list[int], prompt_tokens: int = 1,
                             repeats: int = 1, seed: int = 0) -> dict[str, list]:
    """Time greedy generation of each count of new tokens, with and without the KV cache.

    Returns ``{"new_tokens": [...], "cached_seconds": [...], "uncached_seconds": [...],
    "cached_tokens_per_s": [...], "uncached_tokens_per_s": [...]}`` for a batch of one sequence on the
    model's device, over ``repeats`` runs: the median CUDA-event time on a GPU, the least process CPU time
    on the CPU (equal to wall time on an idle machine when torch uses one thread).
    """
    check_positive_int("prompt_tokens", prompt_tokens)
    check_positive_int("repeats", repeats)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(model.config.vocab_size, (1, prompt_tokens), generator=generator).to(device)  # (1, P)
    generate(model, prompt, min(8, model.config.context_length - prompt_tokens))  # warm-up (allocator, kernels)
    result: dict[str, list] = {"new_tokens": list(new_token_counts)}
    for use_cache, name in ((True, "cached"), (False, "uncached")):
        seconds = [_seconds(lambda: generate(model, prompt, n, use_cache=use_cache), repeats, device)
                   for n in new_token_counts]
        result[f"{name}_seconds"] = seconds
        result[f"{name}_tokens_per_s"] = [n / s for n, s in zip(new_token_counts, seconds)]
    return result
