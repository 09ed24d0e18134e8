"""Chapter 03 — write the KV-cache update that one decoding step needs."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.attention import MultiHeadAttention
from attention_lab.caches.contiguous import KVCache
from attention_lab.exercises.core import ExerciseError, exercise_check, expect_close, random_generator

_POSITION_HINT = ("The T new entries belong at positions length, length+1, …, length+T-1 (0-based): the first "
                  "free slot is buffer[:, :, length], not length+1. Return buffer[:, :, :length+T] and length+T.")


class _StudentCache:
    """Wraps the student's ``cache_append`` in the ``update(k, v)`` interface MultiHeadAttention calls."""

    def __init__(self, cache_append: Callable, batch: int, n_kv_heads: int, max_len: int, head_dim: int) -> None:
        self.cache_append = cache_append
        self.keys = torch.zeros(batch, n_kv_heads, max_len, head_dim)  # (B, Hkv, max_len, D)
        self.values = torch.zeros(batch, n_kv_heads, max_len, head_dim)  # (B, Hkv, max_len, D)
        self.length = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.cache_append(self.keys, self.values, self.length, k, v)
        if not isinstance(result, tuple) or len(result) != 3:
            raise ExerciseError("cache_append must return a tuple (keys, values, new_length).")
        keys, values, self.length = result
        return keys, values


@exercise_check("KV-cache append")
def check_cache_append(cache_append: Callable) -> None:
    """``cache_append(keys_buffer, values_buffer, length, k_new, v_new)`` with buffers ``(B, Hkv, max_len, D)``
    and new entries ``(B, Hkv, T, D)`` must write them at positions ``length … length+T-1`` (in place) and
    return ``(keys, values, new_length)``: the filled part ``(B, Hkv, length+T, D)`` of each buffer and ``length+T``."""
    generator = random_generator(3)
    batch, n_kv_heads, max_len, head_dim = 2, 3, 11, 8
    student = _StudentCache(cache_append, batch, n_kv_heads, max_len, head_dim)
    reference = KVCache(batch, max_len, n_kv_heads, head_dim)
    for step, new_tokens in enumerate([4, 1, 1, 2, 1]):  # a prefill of 4, then single tokens and a chunk
        k = torch.randn(batch, n_kv_heads, new_tokens, head_dim, generator=generator)
        v = torch.randn(batch, n_kv_heads, new_tokens, head_dim, generator=generator)
        start = reference.length
        expected_keys, expected_values = reference.update(k, v)
        keys, values = student.update(k, v)
        what = f"step {step} (length {start}, {new_tokens} new)"
        if student.length != reference.length:
            raise ExerciseError(f"{what}: new_length should be {reference.length}, got {student.length!r}. "
                                f"{_POSITION_HINT}")
        expect_close(keys, expected_keys, f"{what}: returned keys", hint=_POSITION_HINT, atol=0, rtol=0)
        expect_close(values, expected_values, f"{what}: returned values", hint=_POSITION_HINT, atol=0, rtol=0)
        expect_close(student.keys, reference.keys, f"{what}: the keys buffer after the write",
                     hint="Write into the buffer in place (buffer[:, :, a:b] = k_new). " + _POSITION_HINT,
                     atol=0, rtol=0)
        expect_close(student.values, reference.values, f"{what}: the values buffer after the write",
                     hint="Write v_new into the values buffer too. " + _POSITION_HINT, atol=0, rtol=0)

    # One decoding step end to end: prefill 5 tokens, then decode 4 one at a time == full causal attention.
    torch.manual_seed(0)
    attention = MultiHeadAttention(d_model=24, n_heads=4, n_kv_heads=2).eval()
    x = torch.randn(1, 9, 24, generator=generator)  # (B, N, d_model)
    cache = _StudentCache(cache_append, 1, 2, 9, 6)
    with torch.no_grad():
        outputs = [attention(x[:, :5], cache=cache)] + [attention(x[:, t:t + 1], cache=cache) for t in range(5, 9)]
        expect_close(torch.cat(outputs, dim=1), attention(x), "decoding 4 tokens after a 5-token prompt",
                     hint="Each new query must see every cached key AND its own. " + _POSITION_HINT)
