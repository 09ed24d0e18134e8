"""KV caches for decoding: the contiguous cache (chapter 03) and the rolling-window cache (chapter 04).

During generation every new token's key and value are written once and read by every later
token, so a decoding step computes 2·d new numbers per layer instead of recomputing 3·N·d.

* :class:`KVCache` — pre-allocated buffers ``(B, Hkv, max_len, D)`` filled left to right; memory
  grows with the context.
* :class:`RollingKVCache` — for sliding-window attention: only ``window`` slots, position ``p`` is
  stored in slot ``p mod window`` and overwrites the key that just left the window; memory is flat.
"""

from __future__ import annotations

import torch

from ._checks import check_positive_int, check_rank


def _check_new_entries(k: torch.Tensor, v: torch.Tensor, buffer: torch.Tensor) -> None:
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
        _check_new_entries(k, v, self.keys)
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


class RollingKVCache:
    """Sliding-window KV cache of one layer: ``slots`` positions, position ``p`` lives in slot ``p mod slots``.

    With a window of ``w`` keys (the query included), a new query at position ``p`` needs only the
    keys of positions ``p-w+1 … p``, so ``w`` slots suffice however long the sequence grows.
    ``slots = min(window, max_len)``; ``max_len=None`` means the sequence may grow without bound.
    """

    def __init__(self, batch_size: int, window: int, n_kv_heads: int, head_dim: int, max_len: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        for name, value in (("batch_size", batch_size), ("window", window),
                            ("n_kv_heads", n_kv_heads), ("head_dim", head_dim)):
            check_positive_int(name, value)
        if max_len is not None:
            check_positive_int("max_len", max_len)
        self.window, self.max_len = window, max_len
        slots = window if max_len is None else min(window, max_len)
        shape = (batch_size, n_kv_heads, slots, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)  # (B, Hkv, slots, D), slot order
        self.values = torch.zeros(shape, device=device, dtype=dtype)  # (B, Hkv, slots, D), slot order
        self.length = 0  # tokens seen so far = absolute position of the next token

    @property
    def slots(self) -> int:
        return self.keys.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes held by the key and value buffers: fixed by ``slots``, not by the sequence length."""
        return self.keys.numel() * self.keys.element_size() * 2

    def slot_of(self, positions: torch.Tensor) -> torch.Tensor:
        """The slot holding each absolute position: ``positions mod slots`` (same shape as ``positions``)."""
        return positions % self.slots

    def slot_positions(self) -> torch.Tensor:
        """``(slots,)`` absolute position stored in each slot, ``-1`` where nothing is stored yet."""
        stored = torch.arange(max(0, self.length - self.slots), self.length)  # the newest `slots` positions
        positions = torch.full((self.slots,), -1, dtype=torch.long)
        positions[self.slot_of(stored)] = stored
        return positions

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add k, v ``(B, Hkv, T, D)`` for positions ``length … length+T-1``.

        Returns the keys and values those T queries may see, in position order: the last
        ``min(length, window-1)`` cached ones followed by the T new ones, ``(B, Hkv, kept + T, D)``.
        Attention with ``window`` (queries aligned to the end of these keys) then equals full
        attention with the band mask. Only the newest ``min(T, slots)`` new entries are stored.
        """
        _check_new_entries(k, v, self.keys)
        new_tokens = k.shape[2]
        if self.max_len is not None and self.length + new_tokens > self.max_len:
            raise ValueError(f"rolling KV cache is full: has seen {self.length} of max_len={self.max_len} positions, "
                             f"cannot append {new_tokens} more")
        device = self.keys.device
        start = self.length  # absolute position of the first new token
        # Read before writing: the first new queries still need keys that the new entries will overwrite.
        kept = min(start, self.window - 1)
        old_slots = self.slot_of(torch.arange(start - kept, start, device=device))  # (kept,)
        k, v = k.to(self.keys.dtype), v.to(self.values.dtype)  # stored (and returned) in the cache's dtype
        keys = torch.cat([self.keys[:, :, old_slots], k], dim=2)  # (B, Hkv, kept + T, D), position order
        values = torch.cat([self.values[:, :, old_slots], v], dim=2)  # (B, Hkv, kept + T, D)
        stored = min(new_tokens, self.slots)  # older new tokens would be overwritten at once
        new_slots = self.slot_of(torch.arange(start + new_tokens - stored, start + new_tokens, device=device))
        self.keys[:, :, new_slots] = k[:, :, new_tokens - stored:]  # slot = position mod slots
        self.values[:, :, new_slots] = v[:, :, new_tokens - stored:]
        self.length = start + new_tokens
        return keys, values

    def reset(self) -> None:
        """Forget every stored position (the buffers stay allocated)."""
        self.length = 0


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, tokens: int = 1, batch: int = 1,
                   bytes_per_element: int = 2) -> int:
    """KV-cache size ``2 · layers · n_kv_heads · head_dim · tokens · batch · bytes`` (the 2 is K and V)."""
    return 2 * n_layers * n_kv_heads * head_dim * tokens * batch * bytes_per_element
