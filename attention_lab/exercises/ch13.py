"""Chapter 13 — predict a variant's KV-cache bytes per token from its config."""

from __future__ import annotations

import math
from typing import Callable

import torch

from attention_lab.model import TinyGPT, TinyGPTConfig
from attention_lab.exercises.core import ExerciseError, call, exercise_check

# MHA, GQA, MQA and windows (shorter than, equal to and longer than the context), with several layer counts,
# head sizes and context lengths, so that no constant and no dropped factor passes.
_CONFIGS = [
    TinyGPTConfig(vocab_size=11, context_length=24, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2),
    TinyGPTConfig(vocab_size=11, context_length=24, d_model=48, n_layers=3, n_heads=6),
    TinyGPTConfig(vocab_size=11, context_length=24, d_model=48, n_layers=1, n_heads=6, n_kv_heads=1),
    TinyGPTConfig(vocab_size=11, context_length=24, d_model=48, n_layers=2, n_heads=6, n_kv_heads=3, window=5),
    TinyGPTConfig(vocab_size=11, context_length=24, d_model=48, n_layers=2, n_heads=6, window=40),
    TinyGPTConfig(vocab_size=11, context_length=17, d_model=40, n_layers=3, n_heads=4, n_kv_heads=2, window=17),
    TinyGPTConfig(vocab_size=11, context_length=32, d_model=64, n_layers=2, n_heads=8, n_kv_heads=1, window=9),
]
# bytes per element, each with the dtype whose real cache tensors the expected value is measured on.
_DTYPES = [(4, torch.float32), (2, torch.bfloat16), (1, torch.float8_e4m3fn), (8, torch.float64)]


def _per_token(config: TinyGPTConfig, element: float, *, kv_factor: float = 2, heads: int | None = None,
               positions: int | None = None, width: int | None = None, layers: int | None = None) -> float:
    """The right formula with one part replaced: what a mistake computes."""
    n_kv = config.n_kv_heads or config.n_heads
    kept = config.context_length if config.window is None else min(config.window, config.context_length)
    width = (n_kv if heads is None else heads) * config.head_dim if width is None else width
    layers = config.n_layers if layers is None else layers
    return kv_factor * layers * width * (kept if positions is None else positions) * element / config.context_length


def _window(config: TinyGPTConfig, change: Callable[[int, int], int]) -> int | None:
    return None if config.window is None else change(config.window, config.context_length)


_WINDOW_HINT = "a window keeps only min(window, context) positions, however long the context"
_MISTAKES: list[tuple[str, Callable[[TinyGPTConfig, int], float]]] = [
    ("The cache holds K AND V: two tensors per layer (× 2).", lambda c, b: _per_token(c, b, kv_factor=1)),
    ("Only the n_kv_heads key/value heads are cached (None means n_heads, MHA): not the n_heads query heads — "
     "nor d_model = n_heads · head_dim numbers per position.", lambda c, b: _per_token(c, b, heads=c.n_heads)),
    (f"The window is ignored: {_WINDOW_HINT}; divide the bytes of those positions by the context length.",
     lambda c, b: _per_token(c, b, positions=c.context_length)),
    (f"Off by one: {_WINDOW_HINT} — window counts the query's own position already.",
     lambda c, b: _per_token(c, b, positions=_window(c, lambda w, n: min(w + 1, n)))),
    (f"Off by one: {_WINDOW_HINT}.", lambda c, b: _per_token(c, b, positions=_window(c, lambda w, n: min(w - 1, n)))),
    (f"A window longer than the context still cannot keep more positions than there are: {_WINDOW_HINT}.",
     lambda c, b: _per_token(c, b, positions=_window(c, lambda w, n: w))),
    (f"min, not max: {_WINDOW_HINT}.", lambda c, b: _per_token(c, b, positions=_window(c, lambda w, n: max(w, n)))),
    ("Every layer has its own cache: multiply by n_layers.", lambda c, b: _per_token(c, b, layers=1)),
    *[(f"bytes_per_element is an argument (4 for fp32, 2 for bf16/fp16, 1 for fp8): use it instead of a fixed "
       f"{fixed}.", lambda c, b, fixed=fixed: _per_token(c, fixed)) for fixed in (1, 2, 4, 8)],
    ("That is the whole cache: divide by config.context_length for the bytes PER TOKEN.",
     lambda c, b: _per_token(c, b) * c.context_length),
    ("That is in bits: bytes_per_element already counts bytes.", lambda c, b: _per_token(c, b) * 8),
]

_HINT = ("Remember K and V (×2), that only n_kv_heads heads are cached (None means n_heads), and that "
         f"{_WINDOW_HINT}.")


@exercise_check("KV-cache bytes per token")
def check_cache_bytes_per_token(fn: Callable[[TinyGPTConfig, int], float]) -> None:
    """``fn(config, bytes_per_element)`` = bytes of a full-context cache divided by ``context_length``,
    compared with the real cache tensors of a TinyGPT in fp32, bf16, fp8 and fp64 (4, 2, 1 and 8 bytes per
    element), for MHA, GQA and MQA configs with and without a window."""
    cases, answers, wrong = [], [], []
    for config in _CONFIGS:
        model = TinyGPT(config)
        for element, dtype in _DTYPES:
            expected = model.to(dtype).new_cache(1, config.context_length).nbytes / config.context_length
            what = (f"KV-cache bytes per token for n_layers={config.n_layers}, n_heads={config.n_heads}, "
                    f"n_kv_heads={config.n_kv_heads}, head_dim={config.head_dim}, window={config.window}, "
                    f"context={config.context_length}, {element} bytes per element")
            got = call(fn, config, element, what=what,
                       hint="n_kv_heads is None for multi-head attention (it means n_heads), window is None "
                            "without a window.")
            if isinstance(got, bool) or not isinstance(got, (int, float)):
                raise ExerciseError(f"{what}: return a number of bytes (an int or a float), got "
                                    f"{type(got).__name__} {got!r}.")
            cases.append((config, element))
            answers.append(got)
            if not math.isclose(got, expected, rel_tol=1e-6):
                wrong.append((what, expected, got))
    if not wrong:
        return
    hint = next((h for h, mistake in _MISTAKES
                 if all(math.isclose(a, mistake(*case), rel_tol=1e-6) for a, case in zip(answers, cases))), _HINT)
    what, expected, got = wrong[0]
    raise ExerciseError(f"{what}: expected {expected:g}, got {got!r}. {hint}")
