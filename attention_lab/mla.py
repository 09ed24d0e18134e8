"""Multi-head Latent Attention (MLA), from DeepSeek-V2 (arXiv 2405.04434, §2.1).

GQA and MQA shrink the KV cache by *sharing* key/value heads; MLA shrinks it by *compressing*: each
token's keys and values for all heads are up-projections of one small latent vector, and only that
latent (plus one small rotary key) is cached. The paper's names, and ours:

    c^KV_t = W^DKV h_t                      (d_c)          kv_down, then RMSNorm     -> cached
    k^C_t  = W^UK c^KV_t                    (n_h·d_h)      k_up
    v^C_t  = W^UV c^KV_t                    (n_h·d_h)      v_up
    k^R_t  = RoPE(W^KR h_t)                 (d_h^R)        k_rope, one for ALL heads -> cached
    c^Q_t  = W^DQ h_t                       (d_c')         q_down, then RMSNorm (optional)
    q^C_t  = W^UQ c^Q_t                     (n_h·d_h)      q_up
    q^R_t  = RoPE(W^QR c^Q_t)               (n_h·d_h^R)    q_rope
    q_t,i = [q^C_t,i ; q^R_t,i],   k_t,i = [k^C_t,i ; k^R_t]
    o_t,i = Σ_j softmax_j(q_t,i · k_j,i / √(d_h + d_h^R)) v^C_j,i,     u_t = W^O [o_t,1; …; o_t,n_h]

The cache holds ``d_c + d_h^R`` numbers per token per layer. Two inference paths give the same output:

* **naive** — every step decompresses all cached latents into per-head keys and values (``k_up``,
  ``v_up`` over the whole context), then runs ordinary multi-head attention;
* **absorbed** — ``q^C_i · (W^UK_i c_j) = (W^UK_iᵀ q^C_i) · c_j``: fold ``W^UK`` into the query, attend
  over the latents directly, and apply ``W^UV`` after the weighted sum (``Σ_j w_j W^UV_i c_j =
  W^UV_i Σ_j w_j c_j``; ``W^UV`` could be merged into ``W^O``). All heads then read the same cache
  rows ``[c_j ; k^R_j]``: it is multi-query attention with one key of width ``d_c + d_h^R`` whose
  value is the latent part of the same row. The rotary parts need no absorbing — they never pass
  through ``W^UK`` — which is why MLA keeps RoPE on a separate ("decoupled") slice.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from attention_lab.validation import check_dtype_matches, check_positive_int, check_rank
from attention_lab.attention import get_backend
from attention_lab.masks import causal_mask
from attention_lab.rope import RotaryEmbedding, check_rope_base, check_rope_dim

if TYPE_CHECKING:  # for the type hint only: attention_lab.model imports this module
    from attention_lab.model import TinyGPTConfig

MODES = ("naive", "absorbed")

# DeepSeek-V2's attention (arXiv 2405.04434, §3.1.2): 60 layers, d = 5120, n_h = 128 heads of d_h = 128,
# d_c = 4·d_h = 512, d_c' = 1536, d_h^R = d_h / 2 = 64.
DEEPSEEK_V2 = dict(n_layers=60, d_model=5120, n_heads=128, head_dim=128, kv_latent_dim=512, q_latent_dim=1536,
                   rope_dim=64)


def absorb_query(q_content: torch.Tensor, w_uk: torch.Tensor) -> torch.Tensor:
    """Fold the key up-projection into the query: ``W^UK_iᵀ q^C_i`` for every head i.

    Args:
        q_content: content queries ``(B, H, T, D)``.
        w_uk: ``k_up.weight`` ``(H·D, d_c)`` — rows ``i·D … i·D+D-1`` are ``W^UK_i`` ``(D, d_c)``,
            which maps a latent ``c`` to head i's key ``W^UK_i c``.

    Returns:
        ``(B, H, T, d_c)``: for any latent ``c``, ``absorbed[b, i, t] · c == q_content[b, i, t] · (W^UK_i c)``.
    """
    n_heads, head_dim = _check_up_weight("w_uk", w_uk, q_content, "q_content")
    w = w_uk.view(n_heads, head_dim, w_uk.shape[1])  # (H, D, d_c): W^UK_i
    return torch.einsum("bhtd,hdc->bhtc", q_content, w)  # (B, H, T, d_c): row vector q · W^UK_i


def expand_values(latent_context: torch.Tensor, w_uv: torch.Tensor) -> torch.Tensor:
    """Apply the value up-projection after attention: ``W^UV_i (Σ_j w_ij c_j)`` for every head i.

    ``latent_context`` ``(B, H, T, d_c)``, ``w_uv`` = ``v_up.weight`` ``(H·D, d_c)`` -> ``(B, H, T, D)``.
    """
    check_rank("latent_context", latent_context, 4, "(batch, n_heads, seq, latent_dim)")
    n_heads, latent_dim = latent_context.shape[1], latent_context.shape[3]
    if w_uv.dim() != 2 or w_uv.shape[1] != latent_dim or w_uv.shape[0] % n_heads:
        raise ValueError(f"w_uv must have shape (n_heads·head_dim, latent_dim) = ({n_heads}·D, {latent_dim}), "
                         f"got {tuple(w_uv.shape)}")
    w = w_uv.view(n_heads, w_uv.shape[0] // n_heads, latent_dim)  # (H, D, d_c): W^UV_i
    return torch.einsum("bhtc,hdc->bhtd", latent_context, w)  # (B, H, T, D)


def _check_up_weight(name: str, weight: torch.Tensor, q: torch.Tensor, q_name: str) -> tuple[int, int]:
    check_rank(q_name, q, 4, "(batch, n_heads, seq, head_dim)")
    n_heads, head_dim = q.shape[1], q.shape[3]
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != n_heads * head_dim:
        raise ValueError(f"{name} must have shape (n_heads·head_dim, latent_dim) = ({n_heads * head_dim}, d_c) "
                         f"to match {q_name} {tuple(q.shape)}, got {tuple(getattr(weight, 'shape', ()))}")
    return n_heads, head_dim


class LatentCache:
    """MLA's cache for one layer: one buffer ``(B, max_len, d_c + d_h^R)``, row ``[c^KV_t ; k^R_t]`` per token.

    Keeping both parts in one row lets the absorbed path read each cached number once: the whole
    row is the key, its first ``d_c`` entries (a view, no copy) the value.
    """

    def __init__(self, batch_size: int, max_len: int, latent_dim: int, rope_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        for name, value in (("batch_size", batch_size), ("max_len", max_len), ("latent_dim", latent_dim)):
            check_positive_int(name, value)
        check_rope_dim("rope_dim", rope_dim)
        self.latent_dim, self.rope_dim = latent_dim, rope_dim
        self.rows = torch.zeros(batch_size, max_len, latent_dim + rope_dim, device=device, dtype=dtype)  # (B, max_len, d_c + d_R)
        self.length = 0  # how many positions are filled

    @property
    def batch_size(self) -> int:
        return self.rows.shape[0]

    @property
    def max_len(self) -> int:
        return self.rows.shape[1]

    @property
    def numbers_per_token(self) -> int:
        """Cached numbers per token (per sequence, this layer): ``d_c + d_h^R``."""
        return self.rows.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer (allocated, not just filled)."""
        return self.rows.numel() * self.rows.element_size()

    def update(self, latent: torch.Tensor, rope_key: torch.Tensor) -> torch.Tensor:
        """Append ``latent`` ``(B, T, d_c)`` and ``rope_key`` ``(B, T, d_h^R)``; return all filled rows ``(B, length, d_c + d_h^R)``."""
        check_rank("latent", latent, 3, "(batch, new_tokens, latent_dim)")
        check_rank("rope_key", rope_key, 3, "(batch, new_tokens, rope_dim)")
        batch, new_tokens = self.batch_size, latent.shape[1]
        for name, tensor, width in (("latent", latent, self.latent_dim), ("rope_key", rope_key, self.rope_dim)):
            if tuple(tensor.shape) != (batch, new_tokens, width):
                raise ValueError(f"{name} must have shape (batch_size={batch}, T={new_tokens}, {width}) for this cache, "
                                 f"got {tuple(tensor.shape)}")
        if self.length + new_tokens > self.max_len:
            raise ValueError(f"KV cache is full: holds {self.length} of max_len={self.max_len} positions, "
                             f"cannot append {new_tokens} more")
        end = self.length + new_tokens
        self.rows[:, self.length:end, :self.latent_dim] = latent
        self.rows[:, self.length:end, self.latent_dim:] = rope_key
        self.length = end
        return self.rows[:, :end]  # (B, length, d_c + d_R)

    def reset(self) -> None:
        """Forget every stored position (the buffer stays allocated)."""
        self.length = 0


class MultiHeadLatentAttention(nn.Module):
    """Causal MLA self-attention (DeepSeek-V2): joint KV compression, optional query compression, decoupled RoPE.

    Args:
        d_model: width of the residual stream (the paper's ``d``).
        n_heads: attention heads ``n_h``.
        kv_latent_dim: ``d_c``, width of the cached KV latent.
        rope_dim: ``d_h^R``, width of the rotary query part per head and of the one shared rotary key
            (even; 0 = no rotary part).
        head_dim: ``d_h`` of the content queries, keys and values (default ``d_model // n_heads``).
        q_latent_dim: ``d_c'``, width of the query latent; ``None`` projects queries from ``h`` directly.
        rope_base: RoPE's base (10000, as in the paper's pre-training).
        mode: ``'naive'`` (decompress the cache every step) or ``'absorbed'`` (attend over the latents).
        backend: attention function for the core, e.g. ``'reference'`` or ``'torch'``.
        triton_decode: in the absorbed path, run one-token steps with the Triton latent-decode kernel
            (:mod:`attention_lab.kernels.latent_decode`; needs a CUDA GPU or ``TRITON_INTERPRET=1``).
    """

    def __init__(self, d_model: int, n_heads: int, kv_latent_dim: int, rope_dim: int, head_dim: int | None = None,
                 q_latent_dim: int | None = None, rope_base: float = 10000.0, mode: str = "naive",
                 causal: bool = True, backend: str = "reference", triton_decode: bool = False) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("n_heads", n_heads)
        check_positive_int("kv_latent_dim", kv_latent_dim)
        check_rope_dim("rope_dim", rope_dim)
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"n_heads={n_heads} must divide d_model={d_model} (or pass head_dim)")
            head_dim = d_model // n_heads
        check_positive_int("head_dim", head_dim)
        if q_latent_dim is not None:
            check_positive_int("q_latent_dim", q_latent_dim)
        get_backend(backend)  # fail early on a bad name
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, head_dim
        self.kv_latent_dim, self.rope_dim, self.q_latent_dim = kv_latent_dim, rope_dim, q_latent_dim
        self.causal, self.backend, self.triton_decode = causal, backend, triton_decode
        self.mode = _check_mode(mode)
        self.scale = (head_dim + rope_dim) ** -0.5  # 1/√(d_h + d_h^R): the score adds both parts
        inner = n_heads * head_dim
        # Queries: h -> c^Q (d_c') -> content and rotary parts per head.
        query_source = d_model if q_latent_dim is None else q_latent_dim
        self.q_down = None if q_latent_dim is None else nn.Linear(d_model, q_latent_dim, bias=False)  # W^DQ
        self.q_norm = None if q_latent_dim is None else nn.RMSNorm(q_latent_dim, eps=1e-6)
        self.q_up = nn.Linear(query_source, inner, bias=False)  # W^UQ (W^Q without query compression)
        # Keys and values: h -> c^KV (d_c, cached) -> per-head keys and values; h -> one rotary key (cached).
        self.kv_down = nn.Linear(d_model, kv_latent_dim, bias=False)  # W^DKV
        self.kv_norm = nn.RMSNorm(kv_latent_dim, eps=1e-6)  # DeepSeek-V2 §3.1.2: RMSNorm after each latent
        self.k_up = nn.Linear(kv_latent_dim, inner, bias=False)  # W^UK
        self.v_up = nn.Linear(kv_latent_dim, inner, bias=False)  # W^UV
        with warnings.catch_warnings():  # rope_dim=0 gives empty rotary projections; torch warns on their init
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.q_rope = nn.Linear(query_source, n_heads * rope_dim, bias=False)  # W^QR
            self.k_rope = nn.Linear(d_model, rope_dim, bias=False)  # W^KR
        self.out_proj = nn.Linear(inner, d_model, bias=False)  # W^O
        self.rotary = RotaryEmbedding(rope_dim, rope_base)

    @property
    def cache_numbers_per_token(self) -> int:
        """Numbers this layer caches per token: ``d_c + d_h^R``."""
        return self.kv_latent_dim + self.rope_dim

    def project_queries(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``(B, T, d_model)`` -> content queries ``(B, H, T, d_h)`` and rotated rotary queries ``(B, H, T, d_h^R)``."""
        batch, seq, _ = x.shape
        c_q = x if self.q_down is None else self.q_norm(self.q_down(x))  # (B, T, d_c') or (B, T, d_model)
        q_content = self.q_up(c_q).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d_h)
        q_rot = self.q_rope(c_q).view(batch, seq, self.n_heads, self.rope_dim).transpose(1, 2)  # (B, H, T, d_h^R)
        return q_content, self.rotary(q_rot, positions)

    def compress(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``(B, T, d_model)`` -> what is cached: latents ``c^KV`` ``(B, T, d_c)`` and rotated shared keys ``k^R`` ``(B, T, d_h^R)``."""
        latent = self.kv_norm(self.kv_down(x))  # (B, T, d_c)
        rope_key = self.rotary(self.k_rope(x), positions)  # (B, T, d_h^R): position baked in before caching
        return latent, rope_key

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None, cache: LatentCache | None = None) -> torch.Tensor:
        """x ``(B, T, d_model)`` -> ``(B, T, d_model)``.

        ``positions`` ``(T,)`` are the tokens' absolute positions (default: continuing the cache, or
        ``0 … T-1``). With a ``cache`` (:meth:`make_cache`) this call's latents are appended and the
        queries attend to every cached token, aligned to the end.
        """
        check_rank("x", x, 3, "(batch, seq, d_model)")
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (batch, seq, d_model={self.d_model}), got {tuple(x.shape)}")
        check_dtype_matches("x", x, self.kv_down.weight.dtype, "this MultiHeadLatentAttention")
        if cache is not None and not isinstance(cache, LatentCache):
            raise ValueError(f"cache must be a LatentCache from make_cache(), got {type(cache).__name__}")
        batch, seq, _ = x.shape
        if positions is None:
            start = 0 if cache is None else cache.length
            positions = torch.arange(start, start + seq, device=x.device)  # (T,)
        if not isinstance(positions, torch.Tensor) or tuple(positions.shape) != (seq,):
            raise ValueError(f"positions must have shape (T,) = ({seq},), got {tuple(getattr(positions, 'shape', ()))}")
        q_content, q_rot = self.project_queries(x, positions)  # (B, H, T, d_h), (B, H, T, d_h^R)
        latent, rope_key = self.compress(x, positions)  # (B, T, d_c), (B, T, d_h^R)
        if cache is None:
            rows = torch.cat([latent, rope_key], dim=-1)  # (B, T, d_c + d_h^R)
        else:
            rows = cache.update(latent, rope_key)  # (B, N, d_c + d_h^R): every token the queries may see
        attend = self._attend_absorbed if _check_mode(self.mode) == "absorbed" else self._attend_naive
        context = attend(q_content, q_rot, rows)  # (B, H, T, d_h)
        context = context.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim)  # (B, T, H·d_h)
        return self.out_proj(context)  # (B, T, d_model)

    def _attend_naive(self, q_content: torch.Tensor, q_rot: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Decompress every cached row into per-head keys/values, then multi-head attention -> ``(B, H, T, d_h)``."""
        batch, n_keys, _ = rows.shape
        n_heads, head_dim, seq = self.n_heads, self.head_dim, q_content.shape[2]
        latent, rope_key = rows[..., :self.kv_latent_dim], rows[..., self.kv_latent_dim:]  # (B, N, d_c), (B, N, d_h^R)
        k_content = self.k_up(latent).view(batch, n_keys, n_heads, head_dim).transpose(1, 2)  # (B, H, N, d_h)
        values = self.v_up(latent).view(batch, n_keys, n_heads, head_dim).transpose(1, 2)  # (B, H, N, d_h)
        shared = rope_key.unsqueeze(1).expand(batch, n_heads, n_keys, self.rope_dim)  # (B, H, N, d_h^R), a view
        keys = torch.cat([k_content, shared], dim=-1)  # (B, H, N, d_h + d_h^R)
        queries = torch.cat([q_content, q_rot], dim=-1)  # (B, H, T, d_h + d_h^R)
        causal = self.causal and seq > 1  # one query aligned to the end of the keys sees them all
        return get_backend(self.backend)(queries, keys, values, causal=causal, scale=self.scale)  # (B, H, T, d_h)

    def _attend_absorbed(self, q_content: torch.Tensor, q_rot: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Attend over the cached rows themselves (MQA with one wide kv head) -> ``(B, H, T, d_h)``."""
        batch, n_keys, width = rows.shape
        n_heads, seq = self.n_heads, q_content.shape[2]
        q_latent = absorb_query(q_content, self.k_up.weight)  # (B, H, T, d_c): W^UK_iᵀ q^C_i
        queries = torch.cat([q_latent, q_rot], dim=-1)  # (B, H, T, d_c + d_h^R)
        if self.triton_decode and seq == 1:  # one new token: the split-K kernel reads each row once per head block
            from attention_lab.kernels.latent_decode import latent_decode

            latent_context = latent_decode(queries.view(batch, n_heads, width), rows, self.kv_latent_dim, self.scale)
            return expand_values(latent_context.unsqueeze(2), self.v_up.weight)  # (B, H, 1, d_h)
        # Every head reads the same rows, so fold the heads into the query axis: one GEMM over the cache.
        queries = queries.reshape(batch, 1, n_heads * seq, width)  # (B, 1, H·T, d_c + d_h^R): row i·T + t
        keys = rows.unsqueeze(1)  # (B, 1, N, d_c + d_h^R)
        values = rows[..., :self.kv_latent_dim].unsqueeze(1)  # (B, 1, N, d_c): latent part of the same rows
        mask = None
        if self.causal and seq > 1:
            mask = causal_mask(seq, n_keys, device=rows.device).repeat(n_heads, 1)  # (H·T, N): each head's causal rows
        latent_context = get_backend(self.backend)(queries, keys, values, mask=mask, scale=self.scale)  # (B, 1, H·T, d_c)
        latent_context = latent_context.view(batch, n_heads, seq, self.kv_latent_dim)  # (B, H, T, d_c)
        return expand_values(latent_context, self.v_up.weight)  # (B, H, T, d_h): W^UV_i Σ_j w_ij c_j

    def make_cache(self, batch_size: int, max_len: int, device: torch.device | str, dtype: torch.dtype) -> LatentCache:
        """A fresh latent cache for this layer: ``batch_size · max_len · (d_c + d_h^R)`` numbers."""
        return LatentCache(batch_size, max_len, self.kv_latent_dim, self.rope_dim, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        q = "none" if self.q_latent_dim is None else self.q_latent_dim
        return (f"n_heads={self.n_heads}, head_dim={self.head_dim}, kv_latent_dim={self.kv_latent_dim}, "
                f"q_latent_dim={q}, rope_dim={self.rope_dim}, mode={self.mode!r}")


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every MLA layer inside ``model`` to ``'naive'`` or ``'absorbed'`` inference; returns ``model``."""
    _check_mode(mode)
    for module in model.modules():
        if isinstance(module, MultiHeadLatentAttention):
            module.mode = mode
    return model


@dataclass(frozen=True)
class MLASettings:
    """Settings of ``attention='mla'`` in a :class:`~attention_lab.model.TinyGPTConfig` (``settings=MLASettings(...)``).

    ``None`` sizes follow DeepSeek-V2's ratios to the head width ``d_h = d_model // n_heads``:
    ``d_c = 4·d_h`` and ``d_h^R = d_h / 2`` (at least 2).
    """

    kv_latent_dim: int | None = None  # d_c, the cached KV latent; None = 4·d_h
    q_latent_dim: int | None = None  # d_c', the query latent; None = queries straight from h (no compression)
    rope_dim: int | None = None  # d_h^R, the decoupled rotary part (even, 0 = none); None = 2·max(1, d_h // 4)
    rope_base: float = 10000.0  # RoPE's base for the rotary part
    mode: str = "naive"  # inference path: 'naive' (decompress the cache) or 'absorbed' (attend over latents)

    def __post_init__(self) -> None:
        for name in ("kv_latent_dim", "q_latent_dim"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        if self.rope_dim is not None:
            check_rope_dim("rope_dim", self.rope_dim)
        check_rope_base("rope_base", self.rope_base)
        _check_mode(self.mode)


def build_mla(config: TinyGPTConfig) -> MultiHeadLatentAttention:
    """One layer of TinyGPT's ``attention='mla'``, sized by ``config.settings`` (an :class:`MLASettings`)."""
    if config.n_kv_heads is not None or config.window is not None:
        raise ValueError("attention='mla' compresses keys/values instead of sharing them: leave n_kv_heads and "
                         f"window as None (got n_kv_heads={config.n_kv_heads}, window={config.window})")
    settings = config.attention_settings
    head_dim = config.d_model // config.n_heads
    return MultiHeadLatentAttention(
        config.d_model, config.n_heads,
        kv_latent_dim=4 * head_dim if settings.kv_latent_dim is None else settings.kv_latent_dim,
        rope_dim=2 * max(1, head_dim // 4) if settings.rope_dim is None else settings.rope_dim,
        q_latent_dim=settings.q_latent_dim,
        rope_base=settings.rope_base,
        mode=settings.mode,
        backend=config.backend,
    )
