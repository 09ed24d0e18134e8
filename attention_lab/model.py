"""TinyGPT: a small decoder-only transformer whose attention is chosen by its config.

Later chapters plug in here: ``n_kv_heads`` (MQA/GQA), ``window`` (sliding window),
``backend`` ('reference', 'torch', 'flash'), ``attention`` (the variant: 'mha' or 'mla') and
``settings`` (that variant's own settings: :class:`MHASettings` or :class:`~attention_lab.mla.MLASettings`).

    TinyGPTConfig(vocab_size=65)                                    # multi-head attention, 4 heads
    TinyGPTConfig(vocab_size=65, n_kv_heads=1)                      # multi-query attention
    TinyGPTConfig(vocab_size=65, settings=MHASettings(rope=True))   # RoPE on queries and keys
    TinyGPTConfig(vocab_size=65, attention="mla", settings=MLASettings(kv_latent_dim=48, rope_dim=16))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from attention_lab.attention import MultiHeadAttention
from attention_lab.mla import MLASettings, build_mla
from attention_lab.rope import check_rope_base
from attention_lab.validation import (check_divides, check_int_dtype, check_positive_int, check_rank,
                                     check_values_in_range)


@dataclass(frozen=True)
class MHASettings:
    """Settings of ``attention='mha'`` (:class:`~attention_lab.attention.MultiHeadAttention`) beside
    ``n_kv_heads`` and ``window``, which every config has."""

    rope: bool = False  # rotate queries and keys by their positions (attention_lab.rope; chapter 12's baseline)
    rope_base: float = 10000.0  # RoPE's base: pair i turns by position · base^(-2i / head_dim)

    def __post_init__(self) -> None:
        if not isinstance(self.rope, bool):
            raise ValueError(f"rope must be True or False, got {self.rope!r}")
        check_rope_base("rope_base", self.rope_base)


@dataclass(frozen=True)
class TinyGPTConfig:
    vocab_size: int  # number of token ids
    context_length: int = 64  # longest sequence the model sees (learned position table size)
    d_model: int = 64  # width of the residual stream
    n_layers: int = 2  # transformer blocks
    n_heads: int = 4  # query heads
    n_kv_heads: int | None = None  # key/value heads: None = n_heads (MHA), 1 = MQA, else GQA
    window: int | None = None  # sliding-window size (keys incl. self); None = full causal attention
    backend: str = "reference"  # attention function: 'reference', 'torch', 'flash'
    attention: str = "mha"  # attention variant: a key of ATTENTION_VARIANTS ('mha', 'mla')
    dropout: float = 0.0  # dropout on attention output and MLP
    settings: MHASettings | MLASettings | None = None  # the variant's own settings; None = its defaults
    #   (a dict is accepted too: each key is checked, and the config keeps the typed settings)
    mlp_hidden: int | None = None  # MLP width; None = 4·d_model (set it to match parameter budgets)

    def __post_init__(self) -> None:
        check_positive_int("vocab_size", self.vocab_size)
        check_positive_int("context_length", self.context_length)
        check_positive_int("d_model", self.d_model)
        check_positive_int("n_layers", self.n_layers)
        check_positive_int("n_heads", self.n_heads)
        check_divides("n_heads", self.n_heads, "d_model", self.d_model)
        if self.n_kv_heads is not None:
            check_positive_int("n_kv_heads", self.n_kv_heads)
            check_divides("n_kv_heads", self.n_kv_heads, "n_heads", self.n_heads)
        if self.window is not None:
            check_positive_int("window", self.window)
        if self.mlp_hidden is not None:
            check_positive_int("mlp_hidden", self.mlp_hidden)
        if self.attention not in ATTENTION_VARIANTS:
            raise ValueError(f"attention must be one of {sorted(ATTENTION_VARIANTS)}, got {self.attention!r}")
        settings_type = ATTENTION_VARIANTS[self.attention].settings
        if isinstance(self.settings, Mapping):  # a plain dict is checked key by key, then kept typed
            object.__setattr__(self, "settings", settings_from_dict(settings_type, self.settings))
        if self.settings is not None and not isinstance(self.settings, settings_type):
            raise ValueError(f"settings for attention={self.attention!r} must be {settings_type.__name__}(...), "
                             f"got {self.settings!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def attention_settings(self) -> MHASettings | MLASettings:
        """``settings``, or the variant's defaults when it is ``None``."""
        return ATTENTION_VARIANTS[self.attention].settings() if self.settings is None else self.settings


def settings_from_dict(settings_type: type, values: Mapping[str, object]):
    """``settings_type(**values)`` (e.g. :class:`MHASettings`), refusing a key it does not have with a
    ``ValueError`` that names the key and the known ones (a typo such as ``"rop"`` is an error, never ignored)."""
    known = [field.name for field in fields(settings_type)]
    unknown = [key for key in values if key not in known]
    if unknown:
        raise ValueError(f"unknown {settings_type.__name__} setting(s) {unknown}; the known ones are {known}")
    return settings_type(**values)


def build_mha(config: TinyGPTConfig) -> MultiHeadAttention:
    """One layer of ``attention='mha'``: MHA, GQA or MQA by ``n_kv_heads``, optionally windowed, optionally RoPE."""
    settings = config.attention_settings
    return MultiHeadAttention(config.d_model, config.n_heads, config.n_kv_heads, window=config.window,
                              backend=config.backend, rope=settings.rope, rope_base=settings.rope_base)


class AttentionVariant(NamedTuple):
    settings: type  # its settings dataclass (TinyGPTConfig.settings)
    build: Callable[[TinyGPTConfig], nn.Module]  # config -> one layer's attention module, with
    #   forward(x, positions, cache) and make_cache(batch_size, max_len, device, dtype)


ATTENTION_VARIANTS: dict[str, AttentionVariant] = {
    "mha": AttentionVariant(MHASettings, build_mha),  # attention_lab.attention, chapters 01-06
    "mla": AttentionVariant(MLASettings, build_mla),  # attention_lab.mla, chapter 12
}


def build_attention(config: TinyGPTConfig) -> nn.Module:
    """Instantiate the attention module named by ``config.attention``."""
    return ATTENTION_VARIANTS[config.attention].build(config)


class MLP(nn.Module):
    """Position-wise feed-forward: d_model -> mlp_hidden (default 4·d_model) -> d_model with GELU."""

    def __init__(self, config: TinyGPTConfig) -> None:
        super().__init__()
        hidden = 4 * config.d_model if config.mlp_hidden is None else config.mlp_hidden
        self.up = nn.Linear(config.d_model, hidden)
        self.down = nn.Linear(hidden, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))  # (B, T, d_model)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: TinyGPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = build_attention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache=None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln1(x), positions=positions, cache=cache))  # (B, T, d_model)
        return x + self.mlp(self.ln2(x))  # (B, T, d_model)


class ModelCache:
    """One cache per layer, created by each layer's attention module; ``length`` = tokens stored."""

    def __init__(self, layers: list) -> None:
        self.layers = layers

    @property
    def length(self) -> int:
        return self.layers[0].length

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)


def check_token_ids(name: str, ids: torch.Tensor, vocab_size: int) -> None:
    """Raise ``ValueError`` unless ``ids`` is an integer ``(batch, seq)`` tensor, ``seq >= 1``, of ids in
    ``[0, vocab_size)`` (reads the extremes back from the device: one sync)."""
    check_rank(name, ids, 2, "(batch, seq)")
    check_int_dtype(name, ids)
    if ids.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one token per sequence, got shape {tuple(ids.shape)}")
    check_values_in_range(f"{name} (token ids)", ids, 0, vocab_size)


class TinyGPT(nn.Module):
    """Token + learned position embeddings, ``n_layers`` blocks, final LayerNorm, tied output head."""

    def __init__(self, config: TinyGPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.context_length, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_final = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # weight tying
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, max_len: int | None = None) -> ModelCache:
        """Empty per-layer caches for ``batch_size`` sequences of up to ``max_len`` tokens."""
        max_len = self.config.context_length if max_len is None else max_len
        param = self.token_embedding.weight
        return ModelCache([block.attn.make_cache(batch_size, max_len, param.device, param.dtype)
                           for block in self.blocks])

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: ModelCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx ``(B, T)`` token ids -> logits ``(B, T, vocab)`` and the mean cross-entropy if ``targets`` ``(B, T)``.

        ``idx`` and ``targets`` are integer tensors of ids in ``[0, vocab_size)``, ``T >= 1``; anything else is
        a ``ValueError`` naming the argument.

        With a ``cache`` the T tokens continue the ones already cached (positions start at
        ``cache.length``), and their keys/values are appended to it.
        """
        check_token_ids("idx", idx, self.config.vocab_size)
        if cache is not None and (not isinstance(cache, ModelCache) or len(cache.layers) != len(self.blocks)):
            raise ValueError(f"cache must be a ModelCache of {len(self.blocks)} layers from new_cache(), "
                             f"got {type(cache).__name__}")
        if targets is not None:
            if not isinstance(targets, torch.Tensor) or targets.shape != idx.shape:
                raise ValueError(f"targets must have shape (batch, seq) = {tuple(idx.shape)}, "
                                 f"got {tuple(getattr(targets, 'shape', ())) or type(targets).__name__}")
            check_token_ids("targets", targets, self.config.vocab_size)
        batch, seq = idx.shape
        start = 0 if cache is None else cache.length
        if start + seq > self.config.context_length:
            raise ValueError(f"sequence of {start + seq} tokens exceeds context_length={self.config.context_length}")
        positions = torch.arange(start, start + seq, device=idx.device)  # (T,)
        x = self.token_embedding(idx) + self.position_embedding(positions)  # (B, T, d_model)
        for i, block in enumerate(self.blocks):
            x = block(x, positions, cache=None if cache is None else cache.layers[i])
        logits = self.lm_head(self.ln_final(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss
