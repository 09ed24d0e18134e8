"""The rolling-window KV cache of chapter 04: sliding-window attention needs only ``window`` slots.

Position ``p`` is stored in slot ``p mod window`` and overwrites the key that just left the window, so
memory stays flat however long the sequence grows (the contiguous cache of chapter 03 grows with it).
"""

from __future__ import annotations

import torch

from attention_lab.caches.contiguous import check_new_entries
from attention_lab.validation import check_positive_int


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
        check_new_entries(k, v, self.keys)
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
