"""The contiguous KV cache of chapter 03 (the rolling-window cache of chapter 04 is :mod:`.rolling`).

During generation every new token's key and value are written once and read by every later
token, so a decoding step computes 2·d new numbers per layer instead of recomputing 3·N·d.

* :class:`KVCache` — pre-allocated buffers ``(B, Hkv, max_len, D)`` filled left to right; memory
  grows with the context.
"""

from __future__ import annotations

import torch

from attention_lab.validation import check_positive_int, check_rank


def check_new_entries(k: torch.Tensor, v: torch.Tensor, buffer: torch.Tensor) -> None:
    """k, v must be ``(B, Hkv, T, D)`` with the B, Hkv and D of ``buffer`` ``(B, Hkv, slots, D)``."""
    check_rank("k", k, 4, "(batch, n_kv_heads, new_tokens, head_dim)")
    check_rank("v", v, 4, "(batch, n_kv_heads, new_tokens, head_dim)")
    batch, n_kv_heads, _, head_dim = buffer.shape
    if k.shape[0] != batch:
        raise ValueError(f"k has batch size {k.shape[0]} but this cache was made for batch_size={batch}")
    expected = (batch, n_kv_heads, k.shape[2], head_dim)
    for name, t in (("k", k), ("v", v)):
        if tuple(t.shape) != expected:
            raise ValueError(f"{name} must have shape (B, Hkv, T, D) = {expected} for this cache, got {tuple(t.shape)}")


class KVCache:
    """Keys and values of one layer: buffers ``(B, Hkv, max_len, D)`` and a fill pointer ``length``."""

    def __init__(self, batch_size: int, max_len: int, n_kv_heads: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        for name, value in (("batch_size", batch_size), ("max_len", max_len),
                            ("n_kv_heads", n_kv_heads), ("head_dim", head_dim)):
            check_positive_int(name, value)
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)  # (B, Hkv, max_len, D)
        self.values = torch.zeros(shape, device=device, dtype=dtype)  # (B, Hkv, max_len, D)
        self.length = 0  # how many positions are filled

    @property
    def max_len(self) -> int:
        return self.keys.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes held by the key and value buffers (allocated, not just filled)."""
        return self.keys.numel() * self.keys.element_size() * 2

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v ``(B, Hkv, T, D)`` at positions ``length … length+T-1``; return all filled ``(B, Hkv, length, D)``."""
        check_new_entries(k, v, self.keys)
        new_tokens = k.shape[2]
        if self.length + new_tokens > self.max_len:
            raise ValueError(f"KV cache is full: holds {self.length} of max_len={self.max_len} positions, "
                             f"cannot append {new_tokens} more")
        end = self.length + new_tokens
        self.keys[:, :, self.length:end] = k
        self.values[:, :, self.length:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]  # (B, Hkv, length, D): views, no copy

    def reset(self) -> None:
        """Forget every stored position (the buffers stay allocated)."""
        self.length = 0


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, tokens: int = 1, batch: int = 1,
                   bytes_per_element: int = 2) -> int:
    """KV-cache size ``2 · layers · n_kv_heads · head_dim · tokens · batch · bytes`` (the 2 is K and V)."""
    return 2 * n_layers * n_kv_heads * head_dim * tokens * batch * bytes_per_element
