"""How big the KV cache gets: published model shapes and the formula ``2 · L · n_kv · d_head · N · B · bytes``.

The shapes below are facts from the models' papers (cited in each entry); the bytes come from
:func:`attention_lab.caches.contiguous.kv_cache_bytes`, the same formula the caches' ``nbytes`` obey.
"""

from __future__ import annotations

from dataclasses import dataclass

from attention_lab.validation import check_positive_int
from attention_lab.caches.contiguous import kv_cache_bytes

KiB, MiB, GiB = 2**10, 2**20, 2**30


@dataclass(frozen=True)
class ModelShape:
    """The numbers that set a decoder's KV-cache size."""

    name: str
    n_layers: int  # transformer blocks, each with its own cache
    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads (= n_heads for MHA, fewer for GQA/MQA)
    head_dim: int  # size of one head's key (and value) vector
    window: int | None = None  # sliding window: the cache never holds more than this many tokens
    source: str = ""  # where the numbers come from

    def cached_tokens(self, tokens: int) -> int:
        """How many tokens' keys/values are held for a context of ``tokens`` (capped by the window)."""
        check_positive_int("tokens", tokens, minimum=0)
        return tokens if self.window is None else min(tokens, self.window)

    def cache_bytes(self, tokens: int = 1, batch: int = 1, bytes_per_element: int = 2) -> int:
        """KV-cache bytes for ``batch`` sequences of ``tokens`` tokens (fp16/bf16 by default)."""
        return kv_cache_bytes(self.n_layers, self.n_kv_heads, self.head_dim, self.cached_tokens(tokens),
                              batch, bytes_per_element)

    @classmethod
    def from_config(cls, config, name: str = "TinyGPT") -> "ModelShape":
        """The shape of a :class:`~attention_lab.model.TinyGPTConfig` (n_kv_heads=None means MHA)."""
        n_kv_heads = config.n_heads if config.n_kv_heads is None else config.n_kv_heads
        return cls(name, config.n_layers, config.n_heads, n_kv_heads, config.head_dim, config.window,
                   "this book's model")


# Published configurations. KV bytes per token in fp16 follow from these alone.
PUBLISHED_MODELS: dict[str, ModelShape] = {m.name: m for m in [
    ModelShape("GPT-2 small", 12, 12, 12, 64,
               source="Radford et al. 2019, 'Language Models are Unsupervised Multitask Learners' "
                      "(124M: 12 layers, d=768)"),
    ModelShape("Llama-2-7B", 32, 32, 32, 128,
               source="Touvron et al. 2023, 'Llama 2', Table 1 and model card (32 layers, d=4096, 32 heads)"),
    ModelShape("Llama-2-70B", 80, 64, 8, 128,
               source="Touvron et al. 2023, 'Llama 2' (70B uses GQA with 8 KV heads; 80 layers, d=8192)"),
    ModelShape("Llama-3-8B", 32, 32, 8, 128,
               source="Llama Team 2024, 'The Llama 3 Herd of Models', Table 3 (32 layers, 32 heads, 8 KV heads)"),
    ModelShape("Mistral-7B", 32, 32, 8, 128, window=4096,
               source="Jiang et al. 2023, 'Mistral 7B', Table 1 (32 layers, 8 KV heads, window 4096)"),
    ModelShape("GPT-3 175B", 96, 96, 96, 128,
               source="Brown et al. 2020, 'Language Models are Few-Shot Learners', Table 2.1 (96 layers, d_head=128)"),
]}


def format_bytes(n_bytes: float) -> str:
    """Human-readable binary units: ``524288 -> '512 KiB'``, ``2**31 -> '2 GiB'``."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n_bytes >= size:
            value = n_bytes / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.3g} {unit}"
    return f"{n_bytes:.0f} B"
