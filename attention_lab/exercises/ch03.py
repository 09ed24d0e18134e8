"""Chapter 03 — write the KV-cache update that one decoding step needs."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.attention import MultiHeadAttention
from attention_lab.caches.contiguous import KVCache
from attention_lab.exercises.core import (ExerciseError, InputGuard, call, exercise_check, expect_close, expect_int,
                                          random_generator, same_values)

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
        what = f"cache_append(length={self.length}, {k.shape[2]} new)"
        guard = InputGuard(k_new=k, v_new=v)
        result = call(self.cache_append, self.keys, self.values, self.length, k, v, what=what,
                      hint="The buffers are (B, Hkv, max_len, D): positions are dim 2, and k_new, v_new "
                           "(B, Hkv, T, D) bring T = k_new.shape[2] of them. " + _POSITION_HINT)
        guard.check(what, "Only the two buffers are written.")
        if not isinstance(result, tuple) or len(result) != 3:
            raise ExerciseError("cache_append must return a tuple (keys, values, new_length).")
        keys, values, length = result
        self.length = expect_int(length, f"{what}: new_length", "The new length is a number of positions.")
        return keys, values


def _step_hint(student: _StudentCache, reference: KVCache, keys, values, start: int, k, v) -> str | None:
    """The mistake a wrong step shows, judged from the returned tensors and the buffers."""
    new_tokens, end = k.shape[2], reference.length
    filled_k, filled_v = reference.keys[:, :, :end], reference.values[:, :, :end]
    if same_values(keys, filled_v) and same_values(values, filled_k):
        return "keys and values are swapped: return (keys, values, new_length) in that order."
    if (isinstance(keys, torch.Tensor) and keys.dim() == 4 and keys.shape[2] == new_tokens and start > 0
            and same_values(keys, k)):
        return ("You returned only the new entries: the new queries attend to EVERY cached position, so return "
                "the whole filled part of each buffer, positions 0 … length+T-1.")
    late = torch.zeros_like(reference.keys)
    late[:, :, :start] = reference.keys[:, :, :start]
    if end + 1 <= late.shape[2]:
        late[:, :, start + 1:end + 1] = k
        if same_values(student.keys, late):
            return "Written one slot late. " + _POSITION_HINT
    if same_values(student.values[:, :, start:end], k) and not same_values(v, k):
        return "The values buffer receives v_new, not k_new."
    return None


@exercise_check("KV-cache append")
def check_cache_append(cache_append: Callable) -> None:
    """``cache_append(keys_buffer, values_buffer, length, k_new, v_new)`` with buffers ``(B, Hkv, max_len, D)``
    and new entries ``(B, Hkv, T, D)`` must write them at positions ``length … length+T-1`` (in place) and
    return ``(keys, values, new_length)``: the filled part ``(B, Hkv, length+T, D)`` of each buffer and ``length+T``."""
    generator = random_generator(3)
    batch, n_kv_heads, max_len, head_dim = 2, 3, 11, 8  # T below is never 3 or 8: a T from the wrong dim shows
    student = _StudentCache(cache_append, batch, n_kv_heads, max_len, head_dim)
    reference = KVCache(batch, max_len, n_kv_heads, head_dim)
    for step, new_tokens in enumerate([4, 1, 1, 2, 1]):  # a prefill of 4, then single tokens and a chunk
        k = torch.randn(batch, n_kv_heads, new_tokens, head_dim, generator=generator)
        v = torch.randn(batch, n_kv_heads, new_tokens, head_dim, generator=generator)
        start = reference.length
        expected_keys, expected_values = reference.update(k, v)
        keys, values = student.update(k, v)
        what = f"step {step} (length {start}, {new_tokens} new)"
        hint = _step_hint(student, reference, keys, values, start, k, v)
        if student.length != reference.length:
            advanced = student.length - start
            if advanced in (batch, n_kv_heads, head_dim) and advanced != new_tokens:
                detail = (f"You advanced by {advanced}, a size from the wrong dimension: k_new is (B, Hkv, T, D), "
                          f"so T = k_new.shape[2] = {new_tokens}. ")
            elif advanced == 1 and new_tokens > 1:
                detail = f"You advanced by 1, but this step brings T = {new_tokens} new tokens (k_new.shape[2]). "
            elif advanced == 0:
                detail = "The length did not move: return length + T. "
            else:
                detail = ""
            raise ExerciseError(f"{what}: new_length should be {reference.length}, got {student.length!r}. "
                                f"{detail}{hint or _POSITION_HINT}")
        expect_close(keys, expected_keys, f"{what}: returned keys", hint=hint or _POSITION_HINT, atol=0, rtol=0)
        expect_close(values, expected_values, f"{what}: returned values", hint=hint or _POSITION_HINT, atol=0, rtol=0)
        expect_close(student.keys, reference.keys, f"{what}: the keys buffer after the write",
                     hint=hint or "Write into the buffer in place (buffer[:, :, a:b] = k_new). " + _POSITION_HINT,
                     atol=0, rtol=0)
        expect_close(student.values, reference.values, f"{what}: the values buffer after the write",
                     hint=hint or "Write v_new into the values buffer too. " + _POSITION_HINT, atol=0, rtol=0)

    # One decoding step end to end: prefill 5 tokens, then decode 4 one at a time == full causal attention.
    torch.manual_seed(0)
    attention = MultiHeadAttention(d_model=24, n_heads=4, n_kv_heads=2).eval()
    x = torch.randn(1, 9, 24, generator=generator)  # (B, N, d_model)
    cache = _StudentCache(cache_append, 1, 2, 9, 6)
    with torch.no_grad():
        outputs = [attention(x[:, :5], cache=cache)] + [attention(x[:, t:t + 1], cache=cache) for t in range(5, 9)]
        expect_close(torch.cat(outputs, dim=1), attention(x), "decoding 4 tokens after a 5-token prompt",
                     hint="Each new query must see every cached key AND its own. " + _POSITION_HINT)
