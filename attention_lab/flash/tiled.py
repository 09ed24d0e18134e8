"""FlashAttention in plain PyTorch: tiled forward and backward, never holding the N × N matrix.

Forward (FlashAttention-2 loop order, :func:`tiled_attention_forward`): for each block of ``Br`` queries,
stream over blocks of ``Bc`` keys keeping the running max ``m_i``, running sum ``l_i`` and unnormalised
output ``acc`` (the online softmax of chapter 08), then write ``O_i = acc / l_i`` and the log-sum-exp
``L_i = m_i + log l_i``. FlashAttention-1's loop order (:func:`tiled_attention_forward_fa1`, Algorithm 1 of
Dao et al. 2022) is the other way round: key/value blocks outside, query blocks inside, with O, ℓ and m
read from and written back to HBM for every tile and O renormalised each time.
:func:`non_matmul_flops` counts the two orders' work outside the matrix products and
:func:`count_non_matmul_flops` counts it on the running code.

Backward by recomputation: for each key block, for each query block, rebuild
``P_ij = exp(S_ij − L_i)`` from the saved LSE and accumulate

    dV_j += P_ijᵀ dO_i
    dP_ij = dO_i V_jᵀ
    dS_ij = P_ij ∘ (dP_ij − D_i),   D_i = rowsum(dO_i ∘ O_i)
    dQ_i += dS_ij K_j · scale
    dK_j += dS_ijᵀ Q_i · scale

Causal attention and sliding windows skip key blocks that are masked for every query of the block
(:func:`block_schedule`), and apply the mask only inside blocks that straddle its edge. Extra memory is
O(N): the LSE and one ``Br × Bc`` tile at a time, never ``N × N``.

Same contract as :func:`attention_lab.attention.scaled_dot_product_attention` (layout ``(B, H, N, D)``,
GQA/MQA kv heads, bool masks True = may attend, causal aligned to the end of the keys, fp32 statistics,
fully masked rows give zeros, among them the first ``Nq − Nk`` queries of causal attention with ``Nq > Nk``;
a NaN stays NaN). It is the slow, readable twin of the Triton kernel of chapter 10.
"""

from __future__ import annotations

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attention_lab.validation import check_positive_int
from attention_lab.attention import build_mask, check_qkv, check_scale, split_heads_of_mask
from attention_lab.flash.online_softmax import online_softmax_update

SKIP, FULL, PARTIAL = 0, 1, 2  # block_schedule codes: no pair allowed / every pair allowed / mask needed inside


def block_schedule(n_queries: int, n_keys: int, block_q: int, block_k: int, causal: bool = False,
                   window: int | None = None) -> torch.Tensor:
    """Which ``(query block, key block)`` tiles a causal / sliding-window kernel must visit.

    Returns an int8 tensor ``(⌈Nq/Br⌉, ⌈Nk/Bc⌉)`` of :data:`SKIP` (every query–key pair masked: the kernel
    never loads this K/V block), :data:`FULL` (no pair masked: no mask needed) and :data:`PARTIAL` (the
    block straddles the mask's edge: apply it inside). Query i sits at position ``i + Nk − Nq``; it sees
    keys ``j ≤ position`` (causal) and ``j > position − window`` (window, which implies causal).
    """
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        check_positive_int(name, value)
    offset = n_keys - n_queries
    n_query_blocks, n_key_blocks = math.ceil(n_queries / block_q), math.ceil(n_keys / block_k)
    schedule = torch.full((n_query_blocks, n_key_blocks), FULL, dtype=torch.int8)
    if not causal and window is None:
        return schedule
    for i in range(n_query_blocks):
        first_pos = i * block_q + offset  # position of the block's first query
        last_pos = min((i + 1) * block_q, n_queries) - 1 + offset
        for j in range(n_key_blocks):
            first_key, last_key = j * block_k, min((j + 1) * block_k, n_keys) - 1
            if first_key > last_pos or (window is not None and last_key <= first_pos - window):
                schedule[i, j] = SKIP  # entirely in the future, or entirely left of every window
            elif last_key > first_pos or (window is not None and first_key <= last_pos - window):
                schedule[i, j] = PARTIAL  # the diagonal (or the window's far edge) cuts through the block
    return schedule


def _block_allowed(rows: slice, cols: slice, offset: int, causal: bool, window: int | None,
                   mask5: torch.Tensor | None, device: torch.device, partial: bool) -> torch.Tensor | None:
    """Bool ``(…, Br, Bc)`` of allowed pairs in one tile, or None when every pair is allowed.

    The causal/window rule is the one of :func:`attention_lab.masks.sliding_window_mask`, evaluated for
    this tile's positions only (never building the N × N mask).
    """
    allowed = None
    if partial:
        query_pos = torch.arange(rows.start, rows.stop, device=device)[:, None] + offset  # (Br, 1)
        key_pos = torch.arange(cols.start, cols.stop, device=device)[None, :]  # (1, Bc)
        allowed = key_pos <= query_pos  # (Br, Bc); partial tiles only exist for causal / window
        if window is not None:
            allowed = allowed & (key_pos > query_pos - window)
    if mask5 is not None:
        tile = mask5[..., rows, cols]  # broadcastable to (B, Hkv, G, Br, Bc)
        allowed = tile if allowed is None else (allowed & tile)
    return allowed


def _prepare(q, k, v, mask, causal, window, scale, block_q, block_k):
    """Validate arguments like the reference does; return sizes, scale, compute dtype and the 5-D mask."""
    batch, n_heads, n_kv_heads, n_queries, n_keys = check_qkv(q, k, v)
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)
    build_mask(n_queries, n_keys, mask, False, window, batch, n_heads)  # validates mask and window only
    group = n_heads // n_kv_heads
    if mask is not None and mask.dim() == 4:  # a padding mask (…, 1, Nk): the same row for every query (a view)
        mask = mask.expand(*mask.shape[:2], n_queries, n_keys)
    mask5 = None if mask is None else split_heads_of_mask(mask.to(q.device), n_kv_heads, group)
    scale = check_scale(scale, q.shape[-1])
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32  # softmax stats in fp32 at least
    return batch, n_heads, n_kv_heads, group, n_queries, n_keys, scale, compute_dtype, mask5


def tiled_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                            causal: bool = False, window: int | None = None, scale: float | None = None,
                            block_q: int = 64, block_k: int = 64,
                            trace: list[tuple[int, int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiled forward pass (no autograd) in FlashAttention-2's loop order: query blocks outside (each one an
    independent program on a GPU), key/value blocks inside. Returns ``(out, lse)``.

    Args:
        q ``(B, H, Nq, D)``, k ``(B, Hkv, Nk, D)``, v ``(B, Hkv, Nk, Dv)``; mask, causal, window, scale as
        in :func:`attention_lab.attention.scaled_dot_product_attention`; ``block_q`` (Br) and ``block_k``
        (Bc) are the tile sizes and need not divide the sequence lengths. ``trace``: a list to which each
        visited tile's ``(query block i, key block j)`` is appended, in visiting order.

    Returns:
        out ``(B, H, Nq, Dv)`` in q's dtype; lse ``(B, H, Nq)`` fp32 (fp64 for fp64 input), the log-sum-exp
        ``m_i + log l_i`` of each query's scaled scores, −inf for a query with no visible key.
    """
    (batch, n_heads, n_kv_heads, group, n_queries, n_keys, scale, compute_dtype,
     mask5) = _prepare(q, k, v, mask, causal, window, scale, block_q, block_k)
    offset = n_keys - n_queries
    schedule = block_schedule(n_queries, n_keys, block_q, block_k, causal, window)
    q5 = q.reshape(batch, n_kv_heads, group, n_queries, q.shape[-1])  # (B, Hkv, G, Nq, D): a query group shares K/V
    out = torch.empty(batch, n_kv_heads, group, n_queries, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, n_kv_heads, group, n_queries, dtype=compute_dtype, device=q.device)
    for i, row_start in enumerate(range(0, n_queries, block_q)):
        rows = slice(row_start, min(row_start + block_q, n_queries))
        q_i = q5[..., rows, :].to(compute_dtype)  # (B, Hkv, G, Br, D)
        m_i = torch.full(q_i.shape[:-1], -math.inf, dtype=compute_dtype, device=q.device)  # (B, Hkv, G, Br)
        l_i = torch.zeros_like(m_i)  # (B, Hkv, G, Br)
        acc = torch.zeros(*q_i.shape[:-1], v.shape[-1], dtype=compute_dtype, device=q.device)  # (B, Hkv, G, Br, Dv)
        for j, col_start in enumerate(range(0, n_keys, block_k)):
            if schedule[i, j] == SKIP:
                continue  # every pair masked: this K/V block is never loaded
            if trace is not None:
                trace.append((i, j))
            cols = slice(col_start, min(col_start + block_k, n_keys))
            k_j = k[:, :, None, cols].to(compute_dtype)  # (B, Hkv, 1, Bc, D): shared by the group
            v_j = v[:, :, None, cols].to(compute_dtype)  # (B, Hkv, 1, Bc, Dv)
            scores = (q_i @ k_j.transpose(-1, -2)) * scale  # S_ij = Q_i K_jᵀ · scale   (B, Hkv, G, Br, Bc)
            allowed = _block_allowed(rows, cols, offset, causal, window, mask5, q.device, schedule[i, j] == PARTIAL)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, -math.inf)
            m_i, l_i, acc = online_softmax_update(m_i, l_i, acc, scores, v_j)  # chapter 08's update
        unseen = l_i == 0  # True for a query with no visible key (l_i is NaN, not 0, for a NaN score: it stays NaN)
        out[..., rows, :] = torch.where(unseen[..., None], 0.0, acc / l_i[..., None]).to(q.dtype)  # O_i = acc / l_i
        lse[..., rows] = torch.where(unseen, -math.inf, m_i + torch.log(l_i))  # L_i = m_i + log l_i
    return out.reshape(batch, n_heads, n_queries, v.shape[-1]), lse.reshape(batch, n_heads, n_queries)


def tiled_attention_forward_fa1(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                                causal: bool = False, window: int | None = None, scale: float | None = None,
                                block_q: int = 64, block_k: int = 64,
                                trace: list[tuple[int, int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiled forward in FlashAttention-1's loop order (Dao et al. 2022, Algorithm 1). Returns ``(out, lse)``.

    Key/value blocks are the OUTER loop (each ``K_j, V_j`` loaded once), query blocks the inner one. The state
    of every query — the output ``O`` (kept normalised), ``ℓ`` and ``m`` — lives in HBM between tiles: each tile
    reads ``Q_i, O_i, ℓ_i, m_i`` and writes ``O_i, ℓ_i, m_i`` back. Per tile (Algorithm 1, lines 9–12)::

        m̃ = rowmax(S_ij),  P̃ = exp(S_ij − m̃),  ℓ̃ = rowsum(P̃)
        m_new = max(m_i, m̃),  ℓ_new = e^(m_i − m_new) ℓ_i + e^(m̃ − m_new) ℓ̃
        O_i ← diag(ℓ_new)⁻¹ (diag(ℓ_i) e^(m_i − m_new) O_i + e^(m̃ − m_new) P̃ V_j)

    Same arguments, contract and results as :func:`tiled_attention_forward` (``lse = m + log ℓ``, −inf for a
    query with no visible key); ``trace`` records the tiles in this order's visiting order.
    """
    (batch, n_heads, n_kv_heads, group, n_queries, n_keys, scale, compute_dtype,
     mask5) = _prepare(q, k, v, mask, causal, window, scale, block_q, block_k)
    offset = n_keys - n_queries
    schedule = block_schedule(n_queries, n_keys, block_q, block_k, causal, window)
    q5 = q.reshape(batch, n_kv_heads, group, n_queries, q.shape[-1])  # (B, Hkv, G, Nq, D)
    # Algorithm 1, line 2: O = 0, ℓ = 0, m = −inf in HBM, for every query
    out = torch.zeros(batch, n_kv_heads, group, n_queries, v.shape[-1], dtype=compute_dtype, device=q.device)
    l_all = torch.zeros(batch, n_kv_heads, group, n_queries, dtype=compute_dtype, device=q.device)  # (B, Hkv, G, Nq)
    m_all = torch.full_like(l_all, -math.inf)  # (B, Hkv, G, Nq)
    for j, col_start in enumerate(range(0, n_keys, block_k)):  # OUTER: key/value blocks
        cols = slice(col_start, min(col_start + block_k, n_keys))
        k_j = k[:, :, None, cols].to(compute_dtype)  # load K_j  (B, Hkv, 1, Bc, D)
        v_j = v[:, :, None, cols].to(compute_dtype)  # load V_j  (B, Hkv, 1, Bc, Dv)
        for i, row_start in enumerate(range(0, n_queries, block_q)):  # INNER: every query block, again
            if schedule[i, j] == SKIP:
                continue
            if trace is not None:
                trace.append((i, j))
            rows = slice(row_start, min(row_start + block_q, n_queries))
            q_i = q5[..., rows, :].to(compute_dtype)  # load Q_i                             (B, Hkv, G, Br, D)
            o_i, l_i, m_i = out[..., rows, :], l_all[..., rows], m_all[..., rows]  # load O_i, ℓ_i, m_i
            scores = (q_i @ k_j.transpose(-1, -2)) * scale  # S_ij = τ Q_i K_jᵀ              (B, Hkv, G, Br, Bc)
            allowed = _block_allowed(rows, cols, offset, causal, window, mask5, q.device, schedule[i, j] == PARTIAL)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, -math.inf)
            m_tile = scores.amax(dim=-1)  # m̃ = rowmax(S_ij)                                    (B, Hkv, G, Br)
            m_tile_ref = torch.where(torch.isinf(m_tile), torch.zeros_like(m_tile), m_tile)  # a row masked in this tile
            p_tile = torch.exp(scores - m_tile_ref[..., None])  # P̃ = exp(S_ij − m̃)           (B, Hkv, G, Br, Bc)
            l_tile = p_tile.sum(dim=-1)  # ℓ̃ = rowsum(P̃)                                         (B, Hkv, G, Br)
            m_new = torch.maximum(m_i, m_tile)  # m_new = max(m_i, m̃)                           (B, Hkv, G, Br)
            m_ref = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # no key so far: subtract 0
            old = torch.exp(m_i - m_ref)  # e^(m_i − m_new): 0 for a row that had seen no key
            new = torch.exp(m_tile - m_ref)  # e^(m̃ − m_new): 0 for a row masked in this tile
            old_weight = old * l_i  # diag(ℓ_i) e^(m_i − m_new)
            l_new = old_weight + new * l_tile  # ℓ_new = e^(m_i − m_new) ℓ_i + e^(m̃ − m_new) ℓ̃
            numerator = old_weight[..., None] * o_i + new[..., None] * (p_tile @ v_j)  # (B, Hkv, G, Br, Dv)
            out[..., rows, :] = torch.where(l_new[..., None] == 0, 0.0, numerator / l_new[..., None])  # write O_i
            l_all[..., rows], m_all[..., rows] = l_new, m_new  # write ℓ_i, m_i
    lse = torch.where(l_all == 0, -math.inf, m_all + torch.log(l_all))  # (B, Hkv, G, Nq)
    return (out.to(q.dtype).reshape(batch, n_heads, n_queries, v.shape[-1]),
            lse.reshape(batch, n_heads, n_queries))


LOOP_ORDERS = ("fa1", "fa2")  # FlashAttention-1 (K/V blocks outside) and -2 (Q blocks outside)


def non_matmul_flops(loop_order: str, n_queries: int, n_keys: int, head_dim: int, block_k: int,
                     batch_heads: int = 1) -> int:
    """FLOPs outside the two matrix products of a forward without a mask, read off the update equations of
    :func:`tiled_attention_forward` ("fa2") and :func:`tiled_attention_forward_fa1` ("fa1"); one FLOP per
    element an add, multiply, divide, exp, log, max or compare produces (a reduction: per element it reads).

    Per query row and key block of ``Bc`` keys (``T = ⌈Nk / Bc⌉`` blocks, ``Σ Bc = Nk``), both orders spend
    ``5·Bc`` on the tile (scale, rowmax, subtract, exp, rowsum). Then
      * fa2: ``m_new`` 1, ``alpha`` 2, ``l`` 2, ``acc ← alpha·acc + PV`` 2d — and once at the end ``acc / l`` d
        and the LSE 2: ``5·Nk + T·(2d + 5) + d + 2``;
      * fa1: ``m_new`` 1, ``ℓ_new`` 7 (two exps of two differences, two products, a sum), ``O_i`` 4d (two
        scalings, a sum, the division by ``ℓ_new``) — and the LSE 2 at the end: ``5·Nk + T·(4d + 8) + 2``.
    :func:`count_non_matmul_flops` counts the same on the running code.
    """
    if loop_order not in LOOP_ORDERS:
        raise ValueError(f"loop_order must be one of {LOOP_ORDERS}, got {loop_order!r}")
    for name, value in (("n_queries", n_queries), ("n_keys", n_keys), ("head_dim", head_dim),
                        ("block_k", block_k), ("batch_heads", batch_heads)):
        check_positive_int(name, value)
    blocks = math.ceil(n_keys / block_k)
    if loop_order == "fa2":
        per_row = 5 * n_keys + blocks * (2 * head_dim + 5) + head_dim + 2
    else:
        per_row = 5 * n_keys + blocks * (4 * head_dim + 8) + 2
    return batch_heads * n_queries * per_row


_POINTWISE_FLOPS = frozenset({"add", "sub", "mul", "div", "exp", "log", "maximum"})  # one per output element
_REDUCTION_FLOPS = frozenset({"amax", "sum"})  # one per input element


class _NonMatmulCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in _POINTWISE_FLOPS:
            self.flops += out.numel()
        elif name in _REDUCTION_FLOPS:
            self.flops += args[0].numel()
        return out


def count_non_matmul_flops(fn) -> int:
    """Run ``fn()`` and count the FLOPs of its arithmetic outside matrix products, op by op as torch executes
    them: adds, subtracts, multiplies, divides, exps, logs and maxima (one per output element), max and sum
    reductions (one per input element). Matrix products, copies, casts, masks and the ``−inf`` guards
    (``where``, ``isinf``) are not counted."""
    with _NonMatmulCounter() as counter:
        fn()
    return counter.flops


def tiled_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                             lse: torch.Tensor, grad_out: torch.Tensor, mask: torch.Tensor | None = None,
                             causal: bool = False, window: int | None = None, scale: float | None = None,
                             block_q: int = 64, block_k: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward pass by recomputation: ``(dq, dk, dv)`` from the saved ``out`` and ``lse``.

    Shapes: q, out, grad_out ``(B, H, Nq, ·)``; k, v ``(B, Hkv, Nk, ·)``; lse ``(B, H, Nq)``. Returns
    gradients shaped and typed like q, k, v (dk, dv summed over each kv head's query group).
    """
    (batch, n_heads, n_kv_heads, group, n_queries, n_keys, scale, compute_dtype,
     mask5) = _prepare(q, k, v, mask, causal, window, scale, block_q, block_k)
    offset = n_keys - n_queries
    schedule = block_schedule(n_queries, n_keys, block_q, block_k, causal, window)
    head_dim, value_dim = q.shape[-1], v.shape[-1]
    q5 = q.reshape(batch, n_kv_heads, group, n_queries, head_dim)  # (B, Hkv, G, Nq, D)
    do5 = grad_out.reshape(batch, n_kv_heads, group, n_queries, value_dim)  # (B, Hkv, G, Nq, Dv)
    o5 = out.reshape(batch, n_kv_heads, group, n_queries, value_dim)  # (B, Hkv, G, Nq, Dv)
    lse5 = lse.reshape(batch, n_kv_heads, group, n_queries).to(compute_dtype)  # (B, Hkv, G, Nq)
    lse5 = torch.where(torch.isinf(lse5), torch.zeros_like(lse5), lse5)  # rows with no key: every score is −inf -> P = 0
    delta = (do5.to(compute_dtype) * o5.to(compute_dtype)).sum(-1)  # D_i = rowsum(dO_i ∘ O_i)      (B, Hkv, G, Nq)
    dq = torch.zeros(batch, n_kv_heads, group, n_queries, head_dim, dtype=compute_dtype, device=q.device)
    dk = torch.empty(batch, n_kv_heads, n_keys, head_dim, dtype=k.dtype, device=q.device)
    dv = torch.empty(batch, n_kv_heads, n_keys, value_dim, dtype=v.dtype, device=q.device)
    for j, col_start in enumerate(range(0, n_keys, block_k)):
        cols = slice(col_start, min(col_start + block_k, n_keys))
        k_j = k[:, :, None, cols].to(compute_dtype)  # (B, Hkv, 1, Bc, D)
        v_j = v[:, :, None, cols].to(compute_dtype)  # (B, Hkv, 1, Bc, Dv)
        dk_j = torch.zeros(batch, n_kv_heads, cols.stop - cols.start, head_dim, dtype=compute_dtype, device=q.device)
        dv_j = torch.zeros(batch, n_kv_heads, cols.stop - cols.start, value_dim, dtype=compute_dtype, device=q.device)
        for i, row_start in enumerate(range(0, n_queries, block_q)):
            if schedule[i, j] == SKIP:
                continue
            rows = slice(row_start, min(row_start + block_q, n_queries))
            q_i = q5[..., rows, :].to(compute_dtype)  # (B, Hkv, G, Br, D)
            do_i = do5[..., rows, :].to(compute_dtype)  # (B, Hkv, G, Br, Dv)
            scores = (q_i @ k_j.transpose(-1, -2)) * scale  # S_ij                        (B, Hkv, G, Br, Bc)
            allowed = _block_allowed(rows, cols, offset, causal, window, mask5, q.device, schedule[i, j] == PARTIAL)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, -math.inf)
            p = torch.exp(scores - lse5[..., rows, None])  # P_ij = exp(S_ij − L_i), recomputed  (B, Hkv, G, Br, Bc)
            dv_j += (p.transpose(-1, -2) @ do_i).sum(2)  # dV_j += P_ijᵀ dO_i, summed over the group  (B, Hkv, Bc, Dv)
            dp = do_i @ v_j.transpose(-1, -2)  # dP_ij = dO_i V_jᵀ                          (B, Hkv, G, Br, Bc)
            ds = p * (dp - delta[..., rows, None])  # dS_ij = P_ij ∘ (dP_ij − D_i)             (B, Hkv, G, Br, Bc)
            dq[..., rows, :] += (ds @ k_j) * scale  # dQ_i += dS_ij K_j · scale               (B, Hkv, G, Br, D)
            dk_j += (ds.transpose(-1, -2) @ q_i).sum(2) * scale  # dK_j += dS_ijᵀ Q_i · scale   (B, Hkv, Bc, D)
        dk[:, :, cols] = dk_j.to(k.dtype)
        dv[:, :, cols] = dv_j.to(v.dtype)
    return dq.reshape(batch, n_heads, n_queries, head_dim).to(q.dtype), dk, dv


class TiledAttentionFunction(torch.autograd.Function):
    """autograd wrapper: the forward saves q, k, v, O and the LSE (O(N) extra), the backward recomputes P."""

    @staticmethod
    def forward(ctx, q, k, v, mask, causal, window, scale, block_q, block_k):
        out, lse = tiled_attention_forward(q, k, v, mask, causal, window, scale, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.settings = (mask, causal, window, scale, block_q, block_k)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = tiled_attention_backward(q, k, v, out, lse, grad_out.contiguous(), *ctx.settings)
        return dq, dk, dv, None, None, None, None, None, None


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                    causal: bool = False, window: int | None = None, scale: float | None = None,
                    block_q: int = 64, block_k: int = 64) -> torch.Tensor:
    """Tiled FlashAttention in PyTorch, differentiable (backward by recomputation from the LSE).

    Args:
        q: ``(B, H, Nq, D)``; k: ``(B, Hkv, Nk, D)``; v: ``(B, Hkv, Nk, Dv)``; ``Hkv`` divides ``H``.
        mask: optional bool, True = may attend, ``(Nq, Nk)`` or ``(B|1, H|1, Nq|1, Nk)``.
        causal: query i sees keys j ≤ i + Nk − Nq; window: ``window`` keys including itself (implies causal).
        scale: defaults to ``D ** -0.5``. block_q, block_k: tile sizes Br, Bc (any positive ints).

    Returns:
        ``(B, H, Nq, Dv)`` in q's dtype, equal to the reference attention up to rounding.
    """
    return TiledAttentionFunction.apply(q, k, v, mask, causal, window, scale, block_q, block_k)
