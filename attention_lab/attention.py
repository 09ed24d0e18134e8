"""Reference scaled dot-product attention and the one multi-head attention class (MHA, GQA, MQA).

Every faster implementation in this book (tiled, Triton, paged, absorbed MLA) is tested against
:func:`scaled_dot_product_attention`, which is itself tested against a float64 einsum.

Layout: ``(batch, heads, seq, head_dim)``. Keys/values may have fewer heads than queries
(``n_kv_heads`` divides ``n_heads``); query head ``h`` uses kv head ``h // (n_heads // n_kv_heads)``.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from attention_lab.validation import (check_divides, check_dtype_matches, check_float_dtype, check_positive_int,
                                     check_rank, check_real)
from attention_lab.masks import causal_mask, sliding_window_mask


def check_scale(scale: float | None, head_dim: int) -> float:
    """The softmax scale every attention path uses: ``head_dim ** -0.5`` when ``scale`` is None, else ``scale``
    itself, which must be a positive finite real number (a bool, a string, NaN, ±inf, 0 or a negative
    number is a ``ValueError``). Shared by every path, so each refuses the same values with the same message.
    """
    if scale is None:
        return head_dim ** -0.5
    return check_real("scale", scale, minimum=0.0, strict=True)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Check the inputs of an attention call; return ``(B, H, Hkv, Nq, Nk)``.

    q ``(B, H, Nq, D)``, k ``(B, Hkv, Nk, D)``, v ``(B, Hkv, Nk, Dv)``, one float dtype, ``Hkv`` dividing ``H``.
    Every attention path (reference, torch, tiled, Triton) calls this first, so a bad input gets the same
    ``ValueError`` naming the argument and the expected shape everywhere.
    """
    check_rank("q", q, 4, "(batch, n_heads, n_queries, head_dim)")
    check_rank("k", k, 4, "(batch, n_kv_heads, n_keys, head_dim)")
    check_rank("v", v, 4, "(batch, n_kv_heads, n_keys, value_dim)")
    check_float_dtype("q", q)
    batch, n_heads, n_queries, head_dim = q.shape
    if head_dim < 1 or n_heads < 1 or k.shape[1] < 1:
        raise ValueError(f"q (B, H, Nq, D) and k (B, Hkv, Nk, D) need at least one head and head_dim >= 1, got "
                         f"q {tuple(q.shape)} and k {tuple(k.shape)}")
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ValueError(f"q, k and v must share the batch size: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[-1] != head_dim:
        raise ValueError(f"k must have head_dim={head_dim} like q (shape (B, Hkv, Nk, {head_dim})), got {tuple(k.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must have shape (B, Hkv, Nk, Dv) = {tuple(k.shape[:3])} + (Dv,), got {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    n_kv_heads = k.shape[1]
    check_divides("n_kv_heads (k.shape[1])", n_kv_heads, "n_heads (q.shape[1])", n_heads)
    return batch, n_heads, n_kv_heads, n_queries, k.shape[2]


def build_mask(
    n_queries: int,
    n_keys: int,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    window: int | None = None,
    batch: int = 1,
    n_heads: int = 1,
    device: torch.device | str | None = None,
) -> torch.Tensor | None:
    """Combine an explicit bool ``mask`` with causal/window structure into one bool mask.

    ``mask`` may be ``(Nq, Nk)`` or ``(B | 1, H | 1, Nq | 1, Nk)`` — the last with one query row is a padding
    mask over the keys, the same for every query (``valid[:, None, None, :]``). A ``window`` implies causal
    (query at position p sees keys p-window < j <= p). Returns ``None`` when nothing is masked,
    else a bool tensor broadcastable to ``(B, H, Nq, Nk)``.
    """
    if window is not None:
        check_positive_int("window", window)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = may attend), got {getattr(mask, 'dtype', type(mask))}")
        expected = (f"(Nq, Nk) = ({n_queries}, {n_keys}) or (B|1, H|1, Nq|1, Nk) = "
                    f"({batch}|1, {n_heads}|1, {n_queries}|1, {n_keys})")
        if mask.dim() == 2:
            ok = tuple(mask.shape) == (n_queries, n_keys)
        elif mask.dim() == 4:
            ok = (mask.shape[0] in (1, batch) and mask.shape[1] in (1, n_heads)
                  and mask.shape[2] in (1, n_queries) and mask.shape[3] == n_keys)
        else:
            ok = False
        if not ok:
            raise ValueError(f"mask must have shape {expected}, got {tuple(mask.shape)}")
    structure = None
    if window is not None:
        structure = sliding_window_mask(n_queries, window, n_keys, device=device)
    elif causal:
        structure = causal_mask(n_queries, n_keys, device=device)
    if structure is None:
        return mask
    return structure if mask is None else (mask & structure)


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    window: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ · scale) with masking: the ``(B, H, Nq, Nk)`` attention weights, in fp32 (fp64 for fp64 input).

    Rows whose keys are all masked get weight 0 everywhere (not NaN): with ``causal`` and ``Nq > Nk`` the
    first ``Nq − Nk`` queries see no key. A NaN in a query row, or in a key it may see, gives a NaN row.
    """
    v_stub = k[..., :0]  # validation only: (B, Hkv, Nk, 0)
    batch, n_heads, n_kv_heads, n_queries, n_keys = check_qkv(q, k, v_stub)
    scale = check_scale(scale, q.shape[-1])
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32  # softmax stats in fp32 at least
    group = n_heads // n_kv_heads
    # Fold each kv head's group of query heads into its query rows: one (G·Nq × D) @ (D × Nk) product per
    # kv head, so the shared keys are read where they are and never copied per query head.
    q_rows = q.to(compute_dtype).reshape(batch, n_kv_heads, group * n_queries, q.shape[-1])  # (B, Hkv, G*Nq, D)
    scores = (q_rows @ k.to(compute_dtype).transpose(-1, -2)) * scale  # (B, Hkv, G*Nq, Nk)
    scores = scores.view(batch, n_kv_heads, group, n_queries, n_keys)  # (B, Hkv, G, Nq, Nk)
    allowed = build_mask(n_queries, n_keys, mask, causal, window, batch, n_heads, device=q.device)
    if allowed is not None:
        allowed5 = split_heads_of_mask(allowed, n_kv_heads, group)  # broadcastable to (B, Hkv, G, Nq, Nk)
        scores = scores.masked_fill(~allowed5, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if allowed is not None:
        weights = weights.masked_fill(~allowed5, 0.0)  # fully masked rows: NaN -> 0
    return weights.reshape(batch, n_heads, n_queries, n_keys)  # (B, H, Nq, Nk)


def split_heads_of_mask(mask: torch.Tensor, n_kv_heads: int, group: int) -> torch.Tensor:
    """Reshape a ``(Nq, Nk)`` or ``(B|1, H|1, Nq|1, Nk)`` mask to broadcast against ``(B, Hkv, G, Nq, Nk)``.

    Query head ``h`` is kv head ``h // G``'s member ``h % G`` (``G = group = H // Hkv``), so splitting the
    mask's head axis into ``(Hkv, G)`` keeps each query head's mask beside its rows of the scores.
    """
    if mask.dim() == 2:
        return mask  # (Nq, Nk) broadcasts on its own
    b, h = mask.shape[:2]
    if h == 1:
        return mask.unsqueeze(2)  # (B|1, 1, 1, Nq, Nk)
    return mask.reshape(b, n_kv_heads, group, *mask.shape[2:])  # (B|1, Hkv, G, Nq, Nk)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    window: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The reference attention: ``softmax(q kᵀ · scale + mask) v``.

    Args:
        q: queries ``(B, H, Nq, D)``, any float dtype.
        k: keys ``(B, Hkv, Nk, D)``; ``Hkv`` divides ``H`` (GQA/MQA share each kv head among
            ``H // Hkv`` query heads without copying it).
        v: values ``(B, Hkv, Nk, Dv)``.
        mask: optional bool mask, ``True`` = may attend, ``(Nq, Nk)`` or ``(B|1, H|1, Nq|1, Nk)`` (one query row: a padding mask).
        causal: query i sees keys j <= i + Nk - Nq (queries aligned to the END of the keys).
        window: sliding window of ``window`` keys including the query itself (implies causal).
        scale: defaults to ``D ** -0.5``.

    Returns:
        ``(B, H, Nq, Dv)`` in q's dtype. Softmax statistics are computed in fp32 (fp64 for fp64
        input); a query whose keys are all masked returns zeros (with ``causal`` and ``Nq > Nk``, the first
        ``Nq − Nk`` queries), and a NaN in a query row or in a key/value it sees stays NaN.
    """
    check_qkv(q, k, v)
    weights = attention_weights(q, k, mask, causal, window, scale)  # (B, H, Nq, Nk), fp32/fp64
    batch, n_heads, n_queries, n_keys = weights.shape
    n_kv_heads = k.shape[1]
    group = n_heads // n_kv_heads
    weights_rows = weights.reshape(batch, n_kv_heads, group * n_queries, n_keys)  # (B, Hkv, G*Nq, Nk)
    context = weights_rows @ v.to(weights.dtype)  # (B, Hkv, G*Nq, Dv): shared values, not copied
    return context.reshape(batch, n_heads, n_queries, v.shape[-1]).to(q.dtype)  # (B, H, Nq, Dv)


def torch_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    window: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Same contract as :func:`scaled_dot_product_attention`, computed by PyTorch's fused SDPA.

    PyTorch's ``is_causal`` aligns queries to the START of the keys, so for ``Nq != Nk`` (decoding)
    or a window this passes an explicit bool mask built by :func:`build_mask` instead. PyTorch's CPU kernel
    turns a query row holding NaN into zeros; such rows are set back to NaN, as the reference gives.
    """
    batch, n_heads, n_kv_heads, n_queries, n_keys = check_qkv(q, k, v)
    scale = check_scale(scale, q.shape[-1])
    use_is_causal = causal and window is None and mask is None and n_queries == n_keys
    allowed = None if use_is_causal else build_mask(n_queries, n_keys, mask, causal, window, batch, n_heads, q.device)
    if n_kv_heads != n_heads:
        try:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=use_is_causal,
                                                 scale=scale, enable_gqa=True)
        except TypeError:  # torch < 2.5 has no enable_gqa: repeat the kv heads
            group = n_heads // n_kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=use_is_causal, scale=scale)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=use_is_causal, scale=scale)
    out = out.masked_fill(torch.isnan(q).any(dim=-1, keepdim=True), float("nan"))  # a NaN query stays NaN
    if allowed is not None:
        out = out.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)  # all-masked rows: zeros, not NaN
    return out


def check_kv_cache(cache) -> None:
    """Raise ``ValueError`` unless ``cache`` is None or a per-layer key/value cache: an object with
    ``length`` and ``update(k, v)`` (:class:`~attention_lab.caches.contiguous.KVCache`, the rolling cache, a
    paged sequence's view). MLA's :class:`~attention_lab.mla.LatentCache` and a whole-model
    :class:`~attention_lab.model.ModelCache` are refused by name."""
    if cache is None:
        return
    from attention_lab.mla import LatentCache  # imported here: attention_lab.mla imports this module

    if isinstance(cache, LatentCache) or not (hasattr(cache, "update") and hasattr(cache, "length")):
        raise ValueError("cache must be this layer's key/value cache (a KVCache or RollingKVCache from "
                         f"make_cache()), got {type(cache).__name__}")


class AttentionFunction(Protocol):
    """Signature every attention backend follows (see :func:`scaled_dot_product_attention`)."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = ...,
                 causal: bool = ..., window: int | None = ..., scale: float | None = ...) -> torch.Tensor: ...


BACKENDS = ("reference", "torch", "flash")  # the names get_backend knows


def get_backend(name: str) -> AttentionFunction:
    """Return the attention function called ``name``: 'reference', 'torch' or 'flash' (the Triton kernel)."""
    if name == "reference":
        return scaled_dot_product_attention
    if name == "torch":
        return torch_attention
    if name == "flash":
        from attention_lab.flash import flash_attention  # imported on first use: it brings in the Triton kernel

        return flash_attention
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention with ``n_kv_heads`` key/value heads: MHA, GQA and MQA in one class.

    ``n_kv_heads = n_heads`` is MHA, ``1`` is MQA (one K/V head shared by all query heads),
    anything dividing ``n_heads`` is GQA. K/V are never repeated in memory: the backend maps
    query head ``h`` to kv head ``h // (n_heads // n_kv_heads)``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        window: int | None = None,
        causal: bool = True,
        bias: bool = False,
        backend: str = "reference",
        rope: bool = False,
        rope_base: float = 10000.0,
    ) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("n_heads", n_heads)
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        check_positive_int("n_kv_heads", n_kv_heads)
        check_divides("n_kv_heads", n_kv_heads, "n_heads", n_heads)
        if head_dim is None:
            check_divides("n_heads", n_heads, "d_model", d_model)
            head_dim = d_model // n_heads
        check_positive_int("head_dim", head_dim)
        if window is not None:
            check_positive_int("window", window)
        get_backend(backend)  # fail early on a bad name
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.window, self.causal, self.backend = window, causal, backend
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)
        self.rotary = None  # rope=True: rotate q and k by their positions (attention_lab.rope, chapter 12)
        if rope:
            from attention_lab.rope import RotaryEmbedding

            self.rotary = RotaryEmbedding(head_dim, rope_base)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``(B, T, d_model)`` -> q ``(B, H, T, D)``, k and v ``(B, Hkv, T, D)``."""
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        return q, k, v

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None, cache=None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x ``(B, T, d_model)`` -> ``(B, T, d_model)``.

        ``positions`` ``(T,)`` are the absolute positions of the T tokens (used by position-aware
        variants; plain MHA ignores them). ``cache`` (e.g. :class:`attention_lab.caches.contiguous.KVCache`)
        stores this call's keys/values and returns every key/value the queries may see; the
        queries are aligned to the end of those keys.
        """
        check_rank("x", x, 3, "(batch, seq, d_model)")
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (batch, seq, d_model={self.d_model}), got {tuple(x.shape)}")
        check_dtype_matches("x", x, self.q_proj.weight.dtype, "this MultiHeadAttention")
        check_kv_cache(cache)
        batch, seq, _ = x.shape
        q, k, v = self.project_qkv(x)
        if self.rotary is not None:
            if positions is None:
                start = 0 if cache is None else cache.length
                positions = torch.arange(start, start + seq, device=x.device)  # (T,)
            q, k = self.rotary(q, positions), self.rotary(k, positions)  # keys are cached already rotated
        if cache is not None:
            k, v = cache.update(k, v)  # (B, Hkv, Nk, D): everything the new queries may attend to
        attend = get_backend(self.backend)
        context = attend(q, k, v, mask=mask, causal=self.causal, window=self.window)  # (B, H, T, D)
        context = context.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim)  # (B, T, H*D)
        return self.out_proj(context)  # (B, T, d_model)

    def make_cache(self, batch_size: int, max_len: int, device: torch.device | str, dtype: torch.dtype):
        """A fresh KV cache for this layer (see :mod:`attention_lab.caches.contiguous`): contiguous, or a rolling
        buffer of ``min(window, max_len)`` slots when this layer has a sliding ``window``."""
        from attention_lab.caches.contiguous import KVCache
        from attention_lab.caches.rolling import RollingKVCache

        if self.window is not None:
            return RollingKVCache(batch_size, self.window, self.n_kv_heads, self.head_dim, max_len=max_len,
                                  device=device, dtype=dtype)
        return KVCache(batch_size, max_len, self.n_kv_heads, self.head_dim, device=device, dtype=dtype)
