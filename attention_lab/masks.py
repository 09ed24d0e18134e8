"""Boolean attention masks. Convention everywhere: ``True`` means the query MAY attend to that key.

Masks are ``(Nq, Nk)`` and broadcast over batch and heads. When ``Nq != Nk`` the queries are
the LAST ``Nq`` positions of the ``Nk`` keys (decoding with a cache): query ``i`` sits at
absolute position ``i + Nk - Nq``. With ``Nq > Nk`` the first ``Nq - Nk`` queries sit before every key
and see none (an all-False row; attention gives them zeros), as flash-attention's and PyTorch's
``causal_lower_right`` do.
"""

from __future__ import annotations

import torch

from attention_lab.validation import check_positive_int


def _positions(n_queries: int, n_keys: int, device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute positions of queries ``(Nq, 1)`` and keys ``(1, Nk)``, queries aligned to the end
    (a query's position is negative when ``Nq > Nk`` puts it before the first key)."""
    check_positive_int("n_queries", n_queries, minimum=0)
    check_positive_int("n_keys", n_keys, minimum=0)
    query_pos = torch.arange(n_queries, device=device).unsqueeze(1) + (n_keys - n_queries)  # (Nq, 1)
    key_pos = torch.arange(n_keys, device=device).unsqueeze(0)  # (1, Nk)
    return query_pos, key_pos


def causal_mask(n_queries: int, n_keys: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Lower-triangular mask ``(Nq, Nk)``: query at position p sees keys at positions ≤ p.

    >>> causal_mask(3).int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    """
    n_keys = n_queries if n_keys is None else n_keys
    query_pos, key_pos = _positions(n_queries, n_keys, device)
    return key_pos <= query_pos  # (Nq, Nk)


def sliding_window_mask(
    n_queries: int, window: int, n_keys: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Band mask ``(Nq, Nk)``: query at position p sees keys j with ``p - window < j <= p``.

    ``window`` counts keys INCLUDING the query itself, so ``window=1`` attends only to itself and
    ``window >= Nk`` equals :func:`causal_mask`.
    """
    check_positive_int("window", window)
    n_keys = n_queries if n_keys is None else n_keys
    query_pos, key_pos = _positions(n_queries, n_keys, device)
    return (key_pos <= query_pos) & (key_pos > query_pos - window)  # (Nq, Nk)


def padding_mask(lengths: torch.Tensor, n_keys: int) -> torch.Tensor:
    """Key-padding mask ``(B, 1, 1, Nk)`` from per-sequence lengths ``(B,)``: key j valid iff j < length."""
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1:
        raise ValueError(f"lengths must be a 1-D tensor of shape (B,), got {getattr(lengths, 'shape', lengths)!r}")
    if (lengths < 0).any() or (lengths > n_keys).any():
        raise ValueError(f"lengths must lie in [0, n_keys={n_keys}], got {lengths.tolist()}")
    keys = torch.arange(n_keys, device=lengths.device)
    return (keys.unsqueeze(0) < lengths.unsqueeze(1))[:, None, None, :]  # (B, 1, 1, Nk)
