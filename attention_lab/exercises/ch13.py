"""Chapter 13 — predict a variant's KV-cache bytes per token from its config."""

from __future__ import annotations

from typing import Callable

from attention_lab.model import TinyGPT, TinyGPTConfig
from attention_lab.exercises.core import ExerciseError, exercise_check

_CONFIGS = [
    TinyGPTConfig(vocab_size=11, context_length=24, d_model=48, n_layers=3, n_heads=6),
    TinyGPTConfig(vocab_size=11, context_length=24, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2),
    TinyGPTConfig(vocab_size=11, context_length=24, d_model=48, n_layers=1, n_heads=6, n_kv_heads=1),
    TinyGPTConfig(vocab_size=11, context_length=24, d_model=48, n_layers=2, n_heads=6, n_kv_heads=3, window=5),
    TinyGPTConfig(vocab_size=11, context_length=24, d_model=48, n_layers=2, n_heads=6, window=40),
]


@exercise_check("KV-cache bytes per token")
def check_cache_bytes_per_token(fn: Callable[[TinyGPTConfig, int], float]) -> None:
    """``fn(config, bytes_per_element)`` = bytes of a full-context cache divided by ``context_length``,
    compared with the real cache tensors of a TinyGPT (fp32: 4 bytes per element)."""
    for config in _CONFIGS:
        model = TinyGPT(config)
        expected = model.new_cache(1, config.context_length).nbytes / config.context_length
        got = fn(config, 4)
        if not isinstance(got, (int, float)) or abs(got - expected) > 1e-6 * expected:
            raise ExerciseError(
                f"KV-cache bytes per token for n_layers={config.n_layers}, n_heads={config.n_heads}, "
                f"n_kv_heads={config.n_kv_heads}, head_dim={config.head_dim}, window={config.window}, "
                f"context={config.context_length}: expected {expected:g}, got {got!r}. Remember K and V (×2), "
                "that only n_kv_heads heads are cached (None means n_heads), and that a window keeps only "
                "min(window, context) positions however long the context.")
