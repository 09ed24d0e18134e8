"""FlashAttention in Triton: forward and backward kernels, an autograd Function, and ``flash_attention``.

Read top to bottom: index helpers, the forward kernel (its inner loop calls the online-softmax update
shared with the decode kernels, :func:`attention_lab.kernels.common.online_softmax_update`), the three
backward kernels (delta, dK/dV, dQ), then the Python wrapper. Names follow the FlashAttention papers
(Dao et al. 2022; Dao 2023): for a block of queries the kernel keeps ``m_i`` (running row max),
``l_i`` (running row sum of exponentials) and ``acc`` (running un-normalised output).

Conventions (DESIGN.md §3): tensors ``(B, H, N, D)``; keys/values may have ``Hkv`` heads and query
head ``h`` reads kv head ``h // (H // Hkv)`` (no copy); causal aligns the queries to the END of the
keys; a window of ``w`` keys includes the query itself; statistics in fp32; fully masked rows give 0.

What makes it fast, each visible below:

* ``exp2`` instead of ``exp``: scores are multiplied by ``scale · log2(e)`` once, since
  ``exp(x - m) = exp2(x·log2 e - m·log2 e)`` — the change of base is folded into the scale.
* Causal/window attention visits only the key blocks a query block can see, and applies the
  element-wise mask only to blocks that straddle the diagonal, the window's left edge or the end
  of the sequence; every other block runs the unmasked fast path.
* GQA/MQA: the kv head is ``h // group``; the dK/dV program of a kv head loops over the query
  heads of its group, so their gradients are summed without atomics and K/V are never repeated.
* The forward saves each row's log-sum-exp, so the backward recomputes the weights
  ``P = exp2(S·scale·log2 e - lse)`` block by block instead of storing the (N × N) matrix.

Without a GPU, set ``TRITON_INTERPRET=1`` before importing this module: the same kernels then run
on CPU tensors under Triton's interpreter (slow, but exact enough to test against float64).
"""

from __future__ import annotations

import contextlib

import torch
from attention_lab.kernels.optional_triton import cdiv, next_power_of_2, require_triton, tl, triton

from attention_lab.attention import check_qkv, check_scale
from attention_lab.validation import check_int_range, check_optional_bool, is_integer
from attention_lab.flash import triton_configs
from attention_lab.kernels.common import (LOG2_E, device_capability, device_facts, head_offset, online_softmax_update,
                                         online_softmax_update_raw)
from attention_lab.kernels.interpreter import interpreting, refuse_interpreted_bfloat16  # also fixes Triton ≤3.6's interpreter loop bounds

MAX_HEAD_DIM = 128


# ----------------------------------------------------------------------------------------------
# Index helpers: which blocks a program visits, and which (query, key) pairs are allowed.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _key_blocks(m0, n_queries, n_keys, window,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_MASK: tl.constexpr):
    """Keys visited by the query rows [m0, m0 + BLOCK_M), split into three runs of blocks:

    [lo, mid_lo) masked (left edge of a window), [mid_lo, mid_hi) unmasked (every pair allowed),
    [mid_hi, hi) masked (the causal diagonal and the last, partial block).
    Query i sees key j iff j <= i + (n_keys - n_queries) (causal) and j > i + offset - window.
    With more queries than keys the offset is negative: the first -offset rows see no key (an empty
    run, hi <= 0, for a block of only such rows); every quotient below has a numerator >= 0, so it
    means the same under C's truncating division (compiled) and Python's flooring one (interpreter).
    """
    offset = n_keys - n_queries  # queries are the last n_queries positions
    lo = 0
    hi = n_keys
    full_lo = 0
    full_hi = n_keys // BLOCK_N * BLOCK_N  # whole blocks only: no bounds check needed
    if CAUSAL:
        hi = tl.minimum(hi, m0 + BLOCK_M + offset)  # the last row sees keys up to m0 + BLOCK_M - 1 + offset
        full_hi = tl.minimum(full_hi, tl.maximum(m0 + offset + 1, 0) // BLOCK_N * BLOCK_N)  # the first row sees these
    if HAS_WINDOW:
        lo = tl.maximum(m0 + offset - window + 1, 0) // BLOCK_N * BLOCK_N  # first key the first row sees
        full_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M + offset - window, 0), BLOCK_N) * BLOCK_N  # last row sees these
    if HAS_MASK:
        full_hi = 0  # an explicit mask can forbid any pair: mask every block
    mid_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    mid_hi = tl.maximum(tl.minimum(full_hi, hi), mid_lo)
    return lo, mid_lo, mid_hi, hi


key_blocks = _key_blocks  # its public name: the Hopper forward (flash/hopper.py) visits the same runs of blocks


@triton.jit
def _query_blocks(n0, n_queries, n_keys, window,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_MASK: tl.constexpr):
    """Queries that see the key rows [n0, n0 + BLOCK_N), as three runs like :func:`_key_blocks`."""
    offset = n_keys - n_queries
    lo = 0
    hi = n_queries
    full_lo = 0
    full_hi = n_queries // BLOCK_M * BLOCK_M
    if CAUSAL:
        lo = tl.maximum(n0 - offset, 0) // BLOCK_M * BLOCK_M  # query i sees key n0 once i >= n0 - offset
        full_lo = tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - offset, 0), BLOCK_M) * BLOCK_M  # ...and the whole block
    if HAS_WINDOW:
        hi = tl.minimum(hi, n0 + BLOCK_N - 1 + window - offset)  # i < j + window - offset for the last key
        full_hi = tl.minimum(full_hi, tl.maximum(n0 + window - offset, 0) // BLOCK_M * BLOCK_M)  # ...first key
    full_hi = tl.where(n0 + BLOCK_N > n_keys, 0, full_hi)  # a partial key block: mask every query block
    if HAS_MASK:
        full_hi = 0  # an explicit mask can forbid any pair: mask every block
    mid_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    mid_hi = tl.maximum(tl.minimum(full_hi, hi), mid_lo)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def may_attend(q_idx, k_idx, n_queries, n_keys, window, M_ptr, stride_mm, stride_mn,
               CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_MASK: tl.constexpr,
               WIDE: tl.constexpr = tl.constexpr(False)):
    """Bool tile: may query ``q_idx`` attend to key ``k_idx``? (index tensors broadcast to the tile).

    ``WIDE``: the mask's offsets ``q_idx·stride_mm + k_idx·stride_mn`` (up to Nq·Nk) in 64 bits (:func:`row_offset`)."""
    offset = n_keys - n_queries
    ok = (q_idx < n_queries) & (k_idx < n_keys)
    if CAUSAL:
        ok = ok & (k_idx <= q_idx + offset)
    if HAS_WINDOW:
        ok = ok & (k_idx > q_idx + offset - window)
    if HAS_MASK:
        m_ptrs = M_ptr + row_offset(q_idx, stride_mm, WIDE) + row_offset(k_idx, stride_mn, WIDE)
        ok = ok & (tl.load(m_ptrs, mask=ok, other=0) != 0)
    return ok


@triton.jit
def row_offset(row, stride_row, WIDE: tl.constexpr):
    """``row · stride_row``: in 32 bits, or in 64 bits when ``WIDE``.

    Offsets inside one (batch, head) of a tensor reach ``(N - 1)·stride_n``: H·N·D in a (B, N, H, D) layout, Nq·Nk
    in a mask; past 2^31 elements, 32-bit products wrap around. The launcher passes ``WIDE`` exactly when some
    tensor's offsets get there (:func:`needs_wide_offsets`), so every other call keeps the cheaper 32-bit arithmetic
    (64-bit products in the loops cost the backward up to a few hundred bytes of register spills). The batch and
    head offsets are always 64-bit (:func:`attention_lab.kernels.common.head_offset`).
    """
    if WIDE:
        offset = tl.cast(row, tl.int64) * stride_row  # tl.cast: a loop variable is a Python int under the interpreter
    else:
        offset = row * stride_row
    return offset


@triton.jit
def row_pointers(base, first_row, stride_row, rows, offs_d, WIDE: tl.constexpr):
    """Pointers to the (rows, BLOCK_D) tile of rows ``first_row + rows`` (``rows`` = ``tl.arange(0, BLOCK)``) of a head.

    ``WIDE``: the block's start ``first_row · stride_row`` in 64 bits (one scalar product), the offsets inside the
    block in 32 (``BLOCK · stride_row`` stays far below 2^31).
    """
    if WIDE:
        ptrs = base + row_offset(first_row, stride_row, WIDE) + (rows[:, None] * stride_row + offs_d[None, :])
    else:
        ptrs = base + (first_row + rows)[:, None] * stride_row + offs_d[None, :]
    return ptrs


@triton.jit
def load_rows(ptrs, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CHECK_ROWS: tl.constexpr):
    """Load a (rows, BLOCK_D) tile; zero rows >= n_rows (if CHECK_ROWS) and padded columns >= HEAD_DIM."""
    if CHECK_ROWS:
        if BLOCK_D == HEAD_DIM:
            tile = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            tile = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        if BLOCK_D == HEAD_DIM:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return tile


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _attn_fwd_inner(m_i, l_i, acc, q, K_ptrs, V_ptrs, stride_kn, stride_vn, qk_scale,
                    offs_m, offs_n, offs_d, n_queries, n_keys, window, M_ptr, stride_mm, stride_mn,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_MASK: tl.constexpr, WIDE: tl.constexpr,
                    start, stop, MASKED: tl.constexpr, RAW_MAX: tl.constexpr = tl.constexpr(False)):
    """Stream the key/value blocks [start, stop) through the online softmax of one query block.

    The forward calls it three times, differing in the block range and ``MASKED`` (passed by keyword) —
    whether these blocks need bounds checks and the element-wise mask. ``RAW_MAX``: take the max on the raw
    scores and compute each exponent as one FMA (:func:`~attention_lab.kernels.common.online_softmax_update_raw`),
    one multiply per score fewer; the same function. Returns the new ``(m_i, l_i, acc)``.
    """
    for start_n in range(start, stop, BLOCK_N):
        cols = start_n + offs_n                                                            # key indices (BLOCK_N,)
        k = load_rows(K_ptrs + row_offset(start_n, stride_kn, WIDE), cols, n_keys, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        v = load_rows(V_ptrs + row_offset(start_n, stride_vn, WIDE), cols, n_keys, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        qk = tl.dot(q, tl.trans(k))                                                        # S_j (BLOCK_M, BLOCK_N)
        if not RAW_MAX:
            qk = qk * qk_scale                                                             # S_j·scale·log2 e
        if MASKED:
            allowed = may_attend(offs_m[:, None], cols[None, :], n_queries, n_keys, window,
                                 M_ptr, stride_mm, stride_mn, CAUSAL, HAS_WINDOW, HAS_MASK, WIDE)
            qk = tl.where(allowed, qk, float("-inf"))
        if RAW_MAX:
            m_i, l_i, acc = online_softmax_update_raw(m_i, l_i, acc, qk, v, qk_scale)  # max first, then one FMA
        else:
            m_i, l_i, acc = online_softmax_update(m_i, l_i, acc, qk, v)  # fp32 dots stay tf32 here (Triton's default)
    return m_i, l_i, acc


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, M,
              stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
              stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
              stride_mb, stride_mh, stride_mm, stride_mn,
              n_heads, n_queries, n_keys, group, window, qk_scale, q_bucket, k_bucket,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_MASK: tl.constexpr, WIDE: tl.constexpr,
              RAW_MAX: tl.constexpr = tl.constexpr(True)):
    """One program = BLOCK_M queries of one (batch, head): O = softmax(Q Kᵀ·scale) V and the rows' log2-sum-exp.

    Q, O ``(B, H, Nq, D)``; K, V ``(B, Hkv, Nk, D)``; LSE ``(B, H, Nq)`` fp32; M an optional uint8 mask.
    ``q_bucket``/``k_bucket`` (next powers of two of the lengths) are only the autotuning key.
    """
    start_m = tl.program_id(0)
    if CAUSAL:
        start_m = tl.num_programs(0) - 1 - start_m  # longest rows first: better load balance at the tail
    batch_head = tl.program_id(1)
    b = batch_head // n_heads
    h = batch_head % n_heads
    kv_h = h // group  # GQA/MQA: query head h reads kv head h // group

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q + head_offset(b, h, stride_qb, stride_qh)
    k_base = K + head_offset(b, kv_h, stride_kb, stride_kh)
    v_base = V + head_offset(b, kv_h, stride_vb, stride_vh)
    m_base = M + head_offset(b, h, stride_mb, stride_mh)
    K_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]  # (BLOCK_N, BLOCK_D)
    V_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]

    rows_m = tl.arange(0, BLOCK_M)
    q = load_rows(row_pointers(q_base, start_m * BLOCK_M, stride_qm, rows_m, offs_d, WIDE), offs_m, n_queries, offs_d,
                  HEAD_DIM, BLOCK_D, True)  # (BLOCK_M, BLOCK_D), stays in registers for the whole loop
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)                 # running sum of 2^(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)        # running un-normalised output

    lo, mid_lo, mid_hi, hi = _key_blocks(start_m * BLOCK_M, n_queries, n_keys, window,
                                         BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_MASK)
    if HAS_WINDOW:  # blocks cut by the window's left edge
        m_i, l_i, acc = _attn_fwd_inner(m_i, l_i, acc, q, K_ptrs, V_ptrs, stride_kn, stride_vn, qk_scale,
                                        offs_m, offs_n, offs_d, n_queries, n_keys, window, m_base, stride_mm, stride_mn,
                                        HEAD_DIM, BLOCK_D, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_MASK, WIDE,
                                        start=lo, stop=mid_lo, MASKED=True, RAW_MAX=RAW_MAX)
    # blocks every row sees completely: no mask, no bounds checks
    m_i, l_i, acc = _attn_fwd_inner(m_i, l_i, acc, q, K_ptrs, V_ptrs, stride_kn, stride_vn, qk_scale,
                                    offs_m, offs_n, offs_d, n_queries, n_keys, window, m_base, stride_mm, stride_mn,
                                    HEAD_DIM, BLOCK_D, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_MASK, WIDE,
                                    start=mid_lo, stop=mid_hi, MASKED=False, RAW_MAX=RAW_MAX)
    # the causal diagonal, the last partial block, or everything under an explicit mask
    m_i, l_i, acc = _attn_fwd_inner(m_i, l_i, acc, q, K_ptrs, V_ptrs, stride_kn, stride_vn, qk_scale,
                                    offs_m, offs_n, offs_d, n_queries, n_keys, window, m_base, stride_mm, stride_mn,
                                    HEAD_DIM, BLOCK_D, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_MASK, WIDE,
                                    start=mid_hi, stop=hi, MASKED=True, RAW_MAX=RAW_MAX)

    # Epilogue: O = acc / l (once, not per block); a row that saw no key (l = 0) gives 0 and lse = +inf.
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))  # log2 Σ_j 2^(s_ij) in scaled units
    o_ptrs = row_pointers(O + head_offset(b, h, stride_ob, stride_oh), start_m * BLOCK_M, stride_om, rows_m, offs_d, WIDE)
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(offs_m[:, None] < n_queries) & (offs_d[None, :] < HEAD_DIM))
    tl.store(LSE + batch_head.to(tl.int64) * n_queries + offs_m, lse, mask=offs_m < n_queries)


# ----------------------------------------------------------------------------------------------
# Backward: delta = rowsum(dO ∘ O); dK, dV per key block; dQ per query block.
#   P = exp2(S·scale·log2 e - lse)   dV = Pᵀ dO   dP = dO Vᵀ   dS = P ∘ (dP - delta)
#   dQ = scale · dS K                dK = scale · dSᵀ Q
# ----------------------------------------------------------------------------------------------


@triton.jit
def _attn_bwd_delta(O, DO, DELTA, stride_ob, stride_oh, stride_om, stride_dob, stride_doh, stride_dom,
                    n_heads, n_queries, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                    WIDE: tl.constexpr):
    """delta_i = Σ_d dO_id · O_id for BLOCK_M rows of one (batch, head); DELTA ``(B, H, Nq)`` fp32."""
    batch_head = tl.program_id(1)
    b = batch_head // n_heads
    h = batch_head % n_heads
    m0 = tl.program_id(0) * BLOCK_M
    rows_m = tl.arange(0, BLOCK_M)
    offs_m = m0 + rows_m
    offs_d = tl.arange(0, BLOCK_D)
    o = load_rows(row_pointers(O + head_offset(b, h, stride_ob, stride_oh), m0, stride_om, rows_m, offs_d, WIDE),
                  offs_m, n_queries, offs_d, HEAD_DIM, BLOCK_D, True)
    do = load_rows(row_pointers(DO + head_offset(b, h, stride_dob, stride_doh), m0, stride_dom, rows_m, offs_d, WIDE),
                   offs_m, n_queries, offs_d, HEAD_DIM, BLOCK_D, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)
    tl.store(DELTA + batch_head.to(tl.int64) * n_queries + offs_m, delta, mask=offs_m < n_queries)


@triton.jit
def _attn_bwd_kv_inner(dk, dv, k, v, Q_ptrs, DO_ptrs, DQ_ptrs, lse_ptr, delta_ptr, stride_qm, stride_dom, stride_dqm,
                       qk_scale, offs_m, offs_n, offs_d, n_queries, n_keys, window, M_ptr, stride_mm, stride_mn,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                       CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_MASK: tl.constexpr, WIDE: tl.constexpr,
                       FUSED_DQ: tl.constexpr, start, stop, MASKED: tl.constexpr):
    """Accumulate dK, dV of one key block over the query blocks [start, stop) of one query head.

    With ``FUSED_DQ`` also add each query block's share of dQ, ``dS K`` (unscaled), into the fp32 rows at
    ``DQ_ptrs``: every key block's program adds its part, so the dQ kernel and its second computation of S and
    dP are not needed (5 matrix products instead of 7), at the price of atomic adds.
    Called three times, differing only in the block range and ``MASKED`` (passed by keyword)."""
    for start_m in range(start, stop, BLOCK_M):
        rows = start_m + offs_m                                                                   # (BLOCK_M,)
        q = load_rows(Q_ptrs + row_offset(start_m, stride_qm, WIDE), rows, n_queries, offs_d, HEAD_DIM, BLOCK_D,
                      MASKED)  # (BLOCK_M, BLOCK_D)
        do = load_rows(DO_ptrs + row_offset(start_m, stride_dom, WIDE), rows, n_queries, offs_d, HEAD_DIM, BLOCK_D,
                       MASKED)  # (BLOCK_M, BLOCK_D)
        if MASKED:
            lse = tl.load(lse_ptr + rows, mask=rows < n_queries, other=float("inf"))
            delta = tl.load(delta_ptr + rows, mask=rows < n_queries, other=0.0)
        else:
            lse = tl.load(lse_ptr + rows)
            delta = tl.load(delta_ptr + rows)
        qk_t = tl.dot(k, tl.trans(q))                                # Sᵀ (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(qk_t * qk_scale - lse[None, :])                # Pᵀ, recomputed from the saved lse
        if MASKED:
            allowed = may_attend(rows[None, :], offs_n[:, None], n_queries, n_keys, window,
                                 M_ptr, stride_mm, stride_mn, CAUSAL, HAS_WINDOW, HAS_MASK, WIDE)
            p_t = tl.where(allowed, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv)                       # dV += Pᵀ dO   (BLOCK_N, BLOCK_D)
        dp_t = tl.dot(v, tl.trans(do))                               # dPᵀ = V dOᵀ   (BLOCK_N, BLOCK_M)
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)           # dSᵀ = Pᵀ ∘ (dPᵀ - delta)
        dk = tl.dot(ds_t, q, dk)                                     # dK += dSᵀ Q   (BLOCK_N, BLOCK_D)
        if FUSED_DQ:  # this key block's part of dQ for these query rows: dS K   (BLOCK_M, BLOCK_D)
            dq = tl.dot(tl.trans(ds_t), k)
            if MASKED:
                dq_ok = (rows[:, None] < n_queries) & (offs_d[None, :] < HEAD_DIM)
            else:
                dq_ok = offs_d[None, :] < HEAD_DIM
            tl.atomic_add(DQ_ptrs + row_offset(start_m, stride_dqm, WIDE), dq, mask=dq_ok, sem="relaxed")
    return dk, dv


@triton.jit
def _attn_bwd_kv(Q, K, V, DO, DK, DV, DQ_ACC, LSE, DELTA, M,
                 stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                 stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                 stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn, stride_dks, stride_dvs,
                 stride_dqb, stride_dqh, stride_dqm, stride_mb, stride_mh, stride_mm, stride_mn,
                 n_heads, n_kv_heads, n_queries, n_keys, group, heads_per_split, window, qk_scale, scale,
                 q_bucket, k_bucket,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_MASK: tl.constexpr, WIDE: tl.constexpr,
                 FUSED_DQ: tl.constexpr):
    """One program = BLOCK_N keys of one (batch, kv head) and ``heads_per_split`` of its ``group`` query heads:
    dK, dV summed over those heads.

    With ``heads_per_split == group`` (one split) a program owns its keys' whole gradient and writes DK, DV.
    With fewer, the query heads of a group are split over several programs — more programs when
    batch × kv heads is small (MQA at batch 1) — and each writes its partial sums at ``split · stride_dks``
    of fp32 buffers that the host adds up. ``FUSED_DQ``: dQ too, added into the fp32 ``DQ_ACC`` (B, H, Nq, D)
    (:func:`_attn_bwd_kv_inner`)."""
    start_n = tl.program_id(0)
    n_splits = tl.cdiv(group, heads_per_split)
    program = tl.program_id(1)  # (batch, kv head, split)
    split = program % n_splits
    batch_kv_head = program // n_splits
    b = batch_kv_head // n_kv_heads
    kv_h = batch_kv_head % n_kv_heads
    n0 = start_n * BLOCK_N
    rows_n = tl.arange(0, BLOCK_N)
    offs_n = n0 + rows_n
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    k = load_rows(row_pointers(K + head_offset(b, kv_h, stride_kb, stride_kh), n0, stride_kn, rows_n, offs_d, WIDE),
                  offs_n, n_keys, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_N, BLOCK_D)
    v = load_rows(row_pointers(V + head_offset(b, kv_h, stride_vb, stride_vh), n0, stride_vn, rows_n, offs_d, WIDE),
                  offs_n, n_keys, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_N, BLOCK_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo, mid_lo, mid_hi, hi = _query_blocks(n0, n_queries, n_keys, window, BLOCK_M, BLOCK_N,
                                           CAUSAL, HAS_WINDOW, HAS_MASK)
    g_start = split * heads_per_split
    g_stop = tl.minimum(g_start + heads_per_split, group)
    for g in range(g_start, g_stop):  # this program's query heads among those sharing the kv head
        h = kv_h * group + g
        Q_ptrs = Q + head_offset(b, h, stride_qb, stride_qh) + offs_m[:, None] * stride_qm + offs_d[None, :]
        DO_ptrs = DO + head_offset(b, h, stride_dob, stride_doh) + offs_m[:, None] * stride_dom + offs_d[None, :]
        DQ_ptrs = DQ_ACC + head_offset(b, h, stride_dqb, stride_dqh) + offs_m[:, None] * stride_dqm + offs_d[None, :]
        row_base = (b * n_heads + h).to(tl.int64) * n_queries
        lse_rows, delta_rows = LSE + row_base, DELTA + row_base  # this head's rows of lse and delta (B, H, Nq)
        m_base = M + head_offset(b, h, stride_mb, stride_mh)
        # the causal diagonal (low query blocks), then unmasked blocks, then the window's edge / last partial block
        dk, dv = _attn_bwd_kv_inner(dk, dv, k, v, Q_ptrs, DO_ptrs, DQ_ptrs, lse_rows, delta_rows, stride_qm, stride_dom,
                                    stride_dqm, qk_scale,
                                    offs_m, offs_n, offs_d, n_queries, n_keys, window, m_base, stride_mm, stride_mn,
                                    HEAD_DIM, BLOCK_D, BLOCK_M, CAUSAL, HAS_WINDOW, HAS_MASK, WIDE, FUSED_DQ,
                                    start=lo, stop=mid_lo, MASKED=True)
        dk, dv = _attn_bwd_kv_inner(dk, dv, k, v, Q_ptrs, DO_ptrs, DQ_ptrs, lse_rows, delta_rows, stride_qm, stride_dom,
                                    stride_dqm, qk_scale,
                                    offs_m, offs_n, offs_d, n_queries, n_keys, window, m_base, stride_mm, stride_mn,
                                    HEAD_DIM, BLOCK_D, BLOCK_M, CAUSAL, HAS_WINDOW, HAS_MASK, WIDE, FUSED_DQ,
                                    start=mid_lo, stop=mid_hi, MASKED=False)
        dk, dv = _attn_bwd_kv_inner(dk, dv, k, v, Q_ptrs, DO_ptrs, DQ_ptrs, lse_rows, delta_rows, stride_qm, stride_dom,
                                    stride_dqm, qk_scale,
                                    offs_m, offs_n, offs_d, n_queries, n_keys, window, m_base, stride_mm, stride_mn,
                                    HEAD_DIM, BLOCK_D, BLOCK_M, CAUSAL, HAS_WINDOW, HAS_MASK, WIDE, FUSED_DQ,
                                    start=mid_hi, stop=hi, MASKED=True)
    dk = dk * scale  # dK = scale · dSᵀ Q
    out_mask = (offs_n[:, None] < n_keys) & (offs_d[None, :] < HEAD_DIM)
    DK = DK + split.to(tl.int64) * stride_dks  # this split's partial sums (split 0 and stride 0: DK itself)
    DV = DV + split.to(tl.int64) * stride_dvs
    tl.store(row_pointers(DK + head_offset(b, kv_h, stride_dkb, stride_dkh), n0, stride_dkn, rows_n, offs_d, WIDE),
             dk.to(DK.dtype.element_ty), mask=out_mask)
    tl.store(row_pointers(DV + head_offset(b, kv_h, stride_dvb, stride_dvh), n0, stride_dvn, rows_n, offs_d, WIDE),
             dv.to(DV.dtype.element_ty), mask=out_mask)


@triton.jit
def _attn_bwd_q_inner(dq, q, do, lse, delta, K_ptrs, V_ptrs, stride_kn, stride_vn, qk_scale,
                      offs_m, offs_n, offs_d, n_queries, n_keys, window, M_ptr, stride_mm, stride_mn,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                      CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_MASK: tl.constexpr, WIDE: tl.constexpr,
                      start, stop, MASKED: tl.constexpr):
    """Accumulate dQ of one query block over the key blocks [start, stop).

    Called three times, differing only in the block range and ``MASKED`` (passed by keyword)."""
    for start_n in range(start, stop, BLOCK_N):
        cols = start_n + offs_n
        k = load_rows(K_ptrs + row_offset(start_n, stride_kn, WIDE), cols, n_keys, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        v = load_rows(V_ptrs + row_offset(start_n, stride_vn, WIDE), cols, n_keys, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        qk = tl.dot(q, tl.trans(k))                                  # S (BLOCK_M, BLOCK_N)
        p = tl.exp2(qk * qk_scale - lse[:, None])                    # P recomputed from the saved lse
        if MASKED:
            allowed = may_attend(offs_m[:, None], cols[None, :], n_queries, n_keys, window,
                                 M_ptr, stride_mm, stride_mn, CAUSAL, HAS_WINDOW, HAS_MASK, WIDE)
            p = tl.where(allowed, p, 0.0)
        dp = tl.dot(do, tl.trans(v))                                 # dP = dO Vᵀ (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])                               # dS = P ∘ (dP - delta)
        dq = tl.dot(ds.to(k.dtype), k, dq)                           # dQ += dS K (BLOCK_M, BLOCK_D)
    return dq


@triton.jit
def _attn_bwd_q(Q, K, V, DO, DQ, LSE, DELTA, M,
                stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                stride_dqb, stride_dqh, stride_dqm, stride_mb, stride_mh, stride_mm, stride_mn,
                n_heads, n_queries, n_keys, group, window, qk_scale, scale, q_bucket, k_bucket,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_MASK: tl.constexpr, WIDE: tl.constexpr):
    """One program = BLOCK_M queries of one (batch, head): dQ over the key blocks they see."""
    start_m = tl.program_id(0)
    if CAUSAL:
        start_m = tl.num_programs(0) - 1 - start_m
    batch_head = tl.program_id(1)
    b = batch_head // n_heads
    h = batch_head % n_heads
    kv_h = h // group
    m0 = start_m * BLOCK_M
    rows_m = tl.arange(0, BLOCK_M)
    offs_m = m0 + rows_m
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_rows(row_pointers(Q + head_offset(b, h, stride_qb, stride_qh), m0, stride_qm, rows_m, offs_d, WIDE),
                  offs_m, n_queries, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_M, BLOCK_D)
    do = load_rows(row_pointers(DO + head_offset(b, h, stride_dob, stride_doh), m0, stride_dom, rows_m, offs_d, WIDE),
                   offs_m, n_queries, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_M, BLOCK_D)
    row_ok = offs_m < n_queries
    lse = tl.load(LSE + batch_head.to(tl.int64) * n_queries + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + batch_head.to(tl.int64) * n_queries + offs_m, mask=row_ok, other=0.0)
    K_ptrs = K + head_offset(b, kv_h, stride_kb, stride_kh) + offs_n[:, None] * stride_kn + offs_d[None, :]
    V_ptrs = V + head_offset(b, kv_h, stride_vb, stride_vh) + offs_n[:, None] * stride_vn + offs_d[None, :]
    m_base = M + head_offset(b, h, stride_mb, stride_mh)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo, mid_lo, mid_hi, hi = _key_blocks(start_m * BLOCK_M, n_queries, n_keys, window,
                                         BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_MASK)
    if HAS_WINDOW:
        dq = _attn_bwd_q_inner(dq, q, do, lse, delta, K_ptrs, V_ptrs, stride_kn, stride_vn, qk_scale,
                               offs_m, offs_n, offs_d, n_queries, n_keys, window, m_base, stride_mm, stride_mn,
                               HEAD_DIM, BLOCK_D, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_MASK, WIDE,
                               start=lo, stop=mid_lo, MASKED=True)
    dq = _attn_bwd_q_inner(dq, q, do, lse, delta, K_ptrs, V_ptrs, stride_kn, stride_vn, qk_scale,
                           offs_m, offs_n, offs_d, n_queries, n_keys, window, m_base, stride_mm, stride_mn,
                           HEAD_DIM, BLOCK_D, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_MASK, WIDE,
                           start=mid_lo, stop=mid_hi, MASKED=False)
    dq = _attn_bwd_q_inner(dq, q, do, lse, delta, K_ptrs, V_ptrs, stride_kn, stride_vn, qk_scale,
                           offs_m, offs_n, offs_d, n_queries, n_keys, window, m_base, stride_mm, stride_mn,
                           HEAD_DIM, BLOCK_D, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_MASK, WIDE,
                           start=mid_hi, stop=hi, MASKED=True)
    dq = dq * scale  # dQ = scale · dS K
    tl.store(row_pointers(DQ + head_offset(b, h, stride_dqb, stride_dqh), m0, stride_dqm, rows_m, offs_d, WIDE),
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM))


# ----------------------------------------------------------------------------------------------
# Autotuned versions (GPU) and the fixed tile used under the interpreter (CPU).
# ----------------------------------------------------------------------------------------------

_KEY = ["q_bucket", "k_bucket", "HEAD_DIM", "CAUSAL", "HAS_WINDOW", "HAS_MASK", "WIDE"]
_attn_fwd_tuned = triton.autotune(triton_configs.FORWARD_CONFIGS, key=_KEY,
                                  prune_configs_by={"early_config_prune": triton_configs.make_pruner("forward")})(_attn_fwd)
# restore_value: each timed config adds into DQ_ACC (FUSED_DQ); the buffer is put back after each, so the real run
# that follows the tuning starts from zeros
_attn_bwd_kv_tuned = triton.autotune(triton_configs.BACKWARD_KV_CONFIGS, key=_KEY + ["FUSED_DQ"],
                                     prune_configs_by={"early_config_prune": triton_configs.make_pruner("backward_kv")},
                                     restore_value=["DQ_ACC"])(_attn_bwd_kv)
_attn_bwd_q_tuned = triton.autotune(triton_configs.BACKWARD_Q_CONFIGS, key=_KEY,
                                    prune_configs_by={"early_config_prune": triton_configs.make_pruner("backward_q")}
                                    )(_attn_bwd_q)

INTERPRETER_TILE = {"BLOCK_M": 16, "BLOCK_N": 16}  # small tiles: many block boundaries in tiny tests, fast in numpy


def _bucket(n: int) -> int:
    """Autotuning key for a length: the next power of two (>= 16), so a growing cache is not re-tuned at every step."""
    return max(16, next_power_of_2(n))


def needs_wide_offsets(*tensors: torch.Tensor | None) -> bool:
    """True when an element offset inside one (batch, head) of a ``(B, H, N, D)`` tensor — or a ``(B, H, Nq, Nk)`` mask
    view — of ``tensors`` reaches 2^31: ``(N - 1)·stride_n + (D - 1)·stride_d``, e.g. N·H·D in a (B, N, H, D) layout.

    Then the kernels run with ``WIDE`` (:func:`row_offset`: row products in 64 bits); otherwise 32-bit products
    cannot wrap around and stay, as cheap as before. ``None`` entries are skipped.
    """
    for t in tensors:
        if t is not None and sum((n - 1) * s for n, s in zip(t.shape[2:], t.stride()[2:]) if n > 0) >= 2 ** 31:
            return True
    return False


def _mask_args(mask: torch.Tensor | None, batch: int, n_heads: int, n_queries: int, n_keys: int, like: torch.Tensor):
    """The mask as a uint8 view broadcast to ``(B, H, Nq, Nk)`` (stride 0 on broadcast dims) and its 4 strides."""
    if mask is None:
        return like, (0, 0, 0, 0)
    mask4 = mask if mask.dim() == 4 else mask[None, None]  # (B|1, H|1, Nq, Nk)
    mask4 = mask4.to(like.device).expand(batch, n_heads, n_queries, n_keys).view(torch.uint8)
    return mask4, tuple(mask4.stride())


def check_dtype_supported(dtype: torch.dtype, capability: int) -> None:
    """Raise ``ValueError`` if the GPU of compute capability ``capability`` (75 = sm_75) cannot run ``dtype``."""
    if dtype == torch.bfloat16 and capability < triton_configs.BF16_MIN_CAPABILITY:
        raise ValueError(f"q has dtype bfloat16, which needs a GPU of compute capability >= 8.0; this one is "
                         f"sm_{capability} (e.g. a Colab T4): pass float16 tensors instead (q.half(), k.half(), v.half())")


def _check_device(q: torch.Tensor) -> None:
    """The kernels need a CUDA tensor, or CPU tensors under the interpreter (not bf16: it computes that wrongly);
    bf16 needs sm_80+."""
    require_triton("flash_attention")
    if interpreting():
        refuse_interpreted_bfloat16(q.dtype, "flash_attention")
        return
    if not q.is_cuda:
        raise ValueError("flash_attention runs its Triton kernels on a CUDA GPU, and q is on the CPU: set "
                         "TRITON_INTERPRET=1 before importing attention_lab.flash.triton_attention to run them under "
                         "Triton's interpreter, or use attention_lab.attention.scaled_dot_product_attention")
    check_dtype_supported(q.dtype, device_capability(q.device))


def prepare_inputs(q, k, v, mask, causal, window, scale):
    """Validate the arguments of :func:`flash_attention` (``ValueError`` naming the argument) and the device.

    Returns ``(batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim, causal, window, scale)``: ``causal``
    is True when a window is given, ``scale`` defaults to ``head_dim ** -0.5``.
    """
    batch, n_heads, n_kv_heads, n_queries, n_keys = check_qkv(q, k, v)
    head_dim = q.shape[-1]
    if v.shape[-1] != head_dim:
        raise ValueError(f"v must have head_dim={head_dim} like q (shape (B, Hkv, Nk, {head_dim})) for the Triton "
                         f"kernel, got {tuple(v.shape)}")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim (q.shape[-1]) must be between 1 and {MAX_HEAD_DIM} for the Triton kernel, "
                         f"got {head_dim}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v must be float16, bfloat16 or float32 for the Triton kernel, got {q.dtype}")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        causal = True  # a window implies causal
    # causal with n_queries > n_keys is fine: the first n_queries - n_keys queries see no key and get zero rows
    # (DESIGN.md §3); the block-range helpers take the negative offset n_keys - n_queries
    if mask is not None:
        from attention_lab.attention import build_mask

        build_mask(n_queries, n_keys, mask, batch=batch, n_heads=n_heads)  # validates dtype and shape
    scale = check_scale(scale, head_dim)
    _check_device(q)
    return batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim, causal, window, scale


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    """The kernels index the head dimension with stride 1: ``x`` itself when it has that (e.g. a (B, N, H, D)
    tensor viewed as (B, H, N, D)), else a contiguous copy (e.g. a (B, H, D, N) tensor transposed).

    Anything else (not a tensor, no dimension) is returned as it is, for the validation to name it."""
    if isinstance(x, torch.Tensor) and x.dim() > 0 and x.stride(-1) != 1:
        return x.contiguous()
    return x


_compile_only = False  # True inside precompile(): kernels are compiled (in parallel) but not launched
# The forward takes each row's max on the raw scores and computes every exponent as one FMA
# (kernels.common.online_softmax_update_raw); False: scale first, then chapter 08's update (what a replaced
# step of chapter 10's exercise receives, so online_softmax_step_replaced switches it off).
RAW_MAX_SOFTMAX = True
# The backward's dK/dV kernel also adds dQ (atomic adds into fp32; no dQ kernel): flash_attention_backward(fused_dq=).
FUSED_DQ_BACKWARD = False
# The forward on an H100/H200 takes the Hopper fast path (flash/hopper.py) when it supports the inputs and no tile is
# given; False: always this file's teaching kernel (also per call: flash_attention_forward(hopper_path=False)).
HOPPER_FORWARD = True
# ... and there, first the warp-specialised Gluon kernel (flash/gluon_attention.py) where it takes the inputs
# (D 64 or 128, fp16/bf16, no mask or window); False: the TMA fast path (flash/hopper.py) instead.
GLUON_FORWARD = True
# The backward on an H100/H200 computes dK, dV and dQ with the warp-specialised Gluon kernels (flash/gluon_backward.py)
# where they take the inputs (D 64 or 128, fp16/bf16, no mask or window, no tile given; not D=64 with <= 1k keys);
# False (or flash_attention_backward(hopper_path=False)): the teaching kernels.
GLUON_BACKWARD = True
# dK/dV programs per SM that kv_splits_for aims at, {causal: programs}: at B=1, N=4k, H=16, D=128 on an H200
# (gqa_split_probe.json, GPU time from CUDA graphs) the causal backward was fastest with ~4 per SM (MQA: 16 splits,
# 0.50 ms against 0.59 ms at ~1 per SM), the non-causal one with ~1 per SM (more only added partial sums).
KV_SPLIT_PROGRAMS_PER_SM = {False: 1, True: 4}
# Where the Gluon dQ kernel runs, it also computes delta = rowsum(dO ∘ O) in its prologue (from the dO tiles it loads
# and O tiles beside them) and runs before the dK/dV kernel, so no delta kernel is launched. Off: on an H200 it
# passed its GPU tests (tests/test_ch10_gluon_backward.py -m gpu) but moved the whole backward by x0.96-1.02
# (flash_gluon_backward_probe.json; chapter 10 prints the ratios); it stays, tested, behind this switch.
FUSED_DELTA_BACKWARD = False
TILE_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")


def check_tile(tile: dict | None, name: str = "tile") -> None:
    """A fixed tile: ``None``, or a dict of BLOCK_M and BLOCK_N (powers of two >= 16, what ``tl.dot`` takes) and
    optionally num_warps (1, 2, 4, 8 or 16) and num_stages (>= 1); anything else is a ``ValueError`` naming it."""
    if tile is None:
        return
    if not isinstance(tile, dict) or not {"BLOCK_M", "BLOCK_N"} <= set(tile) <= set(TILE_KEYS):
        raise ValueError(f"{name} must be None or a dict with BLOCK_M and BLOCK_N (and optionally num_warps, "
                         f"num_stages), got {tile!r}")
    for key in ("BLOCK_M", "BLOCK_N"):
        block = tile[key]
        if not is_integer(block) or block < 16 or block & (block - 1):
            raise ValueError(f"{name}[{key!r}] must be a power of two >= 16, got {block!r}")
    if "num_warps" in tile and tile["num_warps"] not in (1, 2, 4, 8, 16):
        raise ValueError(f"{name}['num_warps'] must be 1, 2, 4, 8 or 16, got {tile['num_warps']!r}")
    if "num_stages" in tile and (not is_integer(tile["num_stages"]) or tile["num_stages"] < 1):
        raise ValueError(f"{name}['num_stages'] must be an integer >= 1, got {tile['num_stages']!r}")


def refuse_tiles_that_cannot_fit(q: torch.Tensor, has_mask: bool, tiles: dict) -> None:
    """Before any launch: ``tiles`` maps a kernel ("forward", "backward_kv", "backward_q") to a fixed tile or None.

    Each fixed tile is checked (:func:`check_tile`) and, on a GPU, refused with a ``ValueError`` when the pruning
    rule says it cannot fit this GPU's shared memory (:func:`attention_lab.flash.triton_configs.check_tile_fits`,
    the mask tile counted): a launch would fail. The autotuner's configs are pruned by the same rule.
    """
    for kernel, tile in tiles.items():
        check_tile(tile)
        if tile is None or interpreting() or not (isinstance(q, torch.Tensor) and q.is_cuda and q.dim() == 4):
            continue
        block_d = max(16, next_power_of_2(q.shape[-1]))
        triton_configs.check_tile_fits(kernel, tile, block_d, q.element_size(), device_capability(q.device), has_mask)


def _launch(tuned, kernel, grid, args, flags, tile):
    """Launch ``kernel`` with ``tile``, or the autotuned ``tuned`` when no tile is given on a GPU."""
    if tuned is not None and tile is None and not interpreting():
        kernel, tile = tuned, {}
    tile = tile if tile is not None else INTERPRETER_TILE
    if _compile_only:
        kernel.warmup(*args, grid=(1,), **flags, **tile)
    else:
        kernel[grid](*args, **flags, **tile)


def precompile(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
               causal: bool = False, window: int | None = None, backward: bool = True, workers: int = 16) -> None:
    """Compile every autotune config for inputs shaped like q, k, v, in parallel threads, without running them.

    The first call of each new variant (head_dim, causal, window, mask, dtype) otherwise compiles its
    configs one after another while autotuning; this fills the same caches ahead of time. Uses
    Triton's asynchronous-compile mode when this Triton has it (3.5+), else compiles one by one.
    """
    precompile_many([dict(q=q, k=k, v=v, mask=mask, causal=causal, window=window)], backward, workers)


def precompile_many(problems: list[dict], backward: bool = True, workers: int = 16) -> None:
    """:func:`precompile` for many problems at once, all their kernels compiled by one pool of ``workers`` threads.

    Each problem is a dict of :func:`flash_attention`'s arguments: ``q``, ``k``, ``v`` and optionally ``mask``,
    ``causal``, ``window`` and ``tile`` (a fixed tile compiles that tile only; none, every autotune config). The
    tensors are only looked at (shapes, strides, dtypes: what Triton specialises on), never computed with; the
    forward's outputs fed to the backward are placeholders. A GPU test matrix with a hundred variants compiles
    them this way in about the time of the slowest few, instead of one after another.
    """
    global _compile_only
    from concurrent.futures import ThreadPoolExecutor

    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:
        AsyncCompileMode = None
    with ThreadPoolExecutor(workers) as pool:
        context = AsyncCompileMode(pool) if AsyncCompileMode is not None else contextlib.nullcontext()
        _compile_only = True
        try:
            with context:
                for problem in problems:
                    q, k, v = problem["q"], problem["k"], problem["v"]
                    mask, causal, window = problem.get("mask"), problem.get("causal", False), problem.get("window")
                    tile = problem.get("tile")
                    out, lse = flash_attention_forward(q, k, v, mask, causal, window, None, tile)
                    if backward:
                        flash_attention_backward(out, q, k, v, out, lse, mask, causal, window, None, tile)
        finally:
            _compile_only = False


def flash_attention_forward(q, k, v, mask, causal, window, scale, tile=None, hopper_path=None):
    """Run the forward kernel (arguments as :func:`flash_attention`, no autograd).

    Returns O ``(B, H, Nq, D)`` and the rows' log-sum-exp in the kernel's base-2 units
    ``log2 Σ_j 2^(s_ij · scale · log2 e)`` ``(B, H, Nq)`` fp32 (+inf for a row that sees no key).

    On an H100/H200 with no ``tile`` given, a Hopper fast path runs instead when it supports the inputs, returning
    the same two tensors: the warp-specialised Gluon kernel (:mod:`attention_lab.flash.gluon_attention`, D 64/128,
    :data:`GLUON_FORWARD`; where it takes the inputs but is measured slower, D=64 with at most 1k keys, the teaching
    kernel: :func:`attention_lab.flash.gluon_attention.faster_than_teaching`), else the TMA kernel
    (:mod:`attention_lab.flash.hopper`: its configs).
    ``hopper_path``: None follows :data:`HOPPER_FORWARD`; False forces this file's teaching kernel.
    """
    check_tile(tile)
    check_optional_bool("hopper_path", hopper_path)
    batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim, causal, window, scale = prepare_inputs(
        q, k, v, mask, causal, window, scale)
    refuse_tiles_that_cannot_fit(q, mask is not None, {"forward": tile})
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    if tile is None and (HOPPER_FORWARD if hopper_path is None else hopper_path):
        from attention_lab.flash import gluon_attention, hopper

        if GLUON_FORWARD and not _compile_only and gluon_attention.unsupported_reason(q, k, v, mask, window) is None:
            if gluon_attention.faster_than_teaching(head_dim, n_keys):
                # the warp-specialised Gluon kernel: the fastest measured on an H200 (flash_gluon_probe.json)
                return gluon_attention.flash_attention_forward_hopper(q, k, v, causal, scale)
        elif hopper.supports(q, k, v, mask, window):
            fast = hopper.flash_attention_forward_hopper(q, k, v, causal, scale, compile_only=_compile_only)
            if not _compile_only:
                return fast
            # precompile(): the teaching kernel's configs are compiled too (below), for hopper_path=False
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(batch, n_heads, n_queries, device=q.device, dtype=torch.float32)
    mask_tensor, mask_strides = _mask_args(mask, batch, n_heads, n_queries, n_keys, q)
    block_d = max(16, next_power_of_2(head_dim))
    args = (q, k, v, out, lse, mask_tensor, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
            *mask_strides, n_heads, n_queries, n_keys, n_heads // n_kv_heads, window or 0, scale * LOG2_E,
            _bucket(n_queries), _bucket(n_keys))
    if out.numel() == 0:
        return out, lse
    flags = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, CAUSAL=causal, HAS_WINDOW=window is not None,
                 HAS_MASK=mask is not None, WIDE=needs_wide_offsets(q, k, v, out, mask_tensor if mask is not None else None),
                 RAW_MAX=RAW_MAX_SOFTMAX)
    grid = lambda meta: (cdiv(n_queries, meta["BLOCK_M"]), batch * n_heads)  # noqa: E731
    _launch(_attn_fwd_tuned, _attn_fwd, grid, args, flags, tile)
    return out, lse


def kv_splits_for(batch: int, n_kv_heads: int, n_keys: int, group: int, device: torch.device,
                  causal: bool = False) -> int:
    """How many programs share one (batch, kv head, key block) of the dK/dV kernel, each summing over a slice
    of the ``group`` query heads (:func:`flash_attention_backward`).

    One program per key block owns all ``group`` query heads — enough programs when batch × kv heads is
    large. With few (MQA at batch 1: ``N / 128`` programs for a GPU of 132 SMs) most SMs idle while each
    program loops over every query head; then the heads are split so that the grid reaches about
    :data:`KV_SPLIT_PROGRAMS_PER_SM` programs per SM (counted with the largest key block, 128): one when not causal,
    four when causal, where the first key block is seen by every query and the last by few, so that shorter
    programs balance the SMs. Off a GPU (the interpreter) one split.
    """
    if device.type != "cuda" or group == 1:
        return 1
    programs = batch * n_kv_heads * cdiv(n_keys, 128)
    target = device_facts(device).n_sms * KV_SPLIT_PROGRAMS_PER_SM[bool(causal)]
    return max(1, min(group, round(target / programs)))


def split_query_heads(group: int, kv_splits: int) -> tuple[int, int]:
    """``(splits, heads per split)`` as the dK/dV kernels (teaching and Gluon) run ``kv_splits`` programs over one kv
    head's ``group`` query heads: each takes ``ceil(group / kv_splits)`` heads, the last what is left, so a count that
    does not divide the group shrinks to the splits that get heads (5 asked of 16 heads run as 4 of 4; 3 of 8 as
    3 + 3 + 2)."""
    heads_per_split = cdiv(group, kv_splits)
    return cdiv(group, heads_per_split), heads_per_split


def uses_gluon_backward(do, q, k, v, lse, delta, mask, causal, window, tile, fused_dq, hopper_path) -> bool:
    """Whether :func:`flash_attention_backward` takes dK, dV from the Gluon kernel for Hopper: the Hopper backward
    applies (:func:`hopper_backward_applies`), no fixed tile is given and the Gluon kernel is the faster one at this
    shape (:func:`attention_lab.flash.gluon_backward.faster_than_teaching`) — with or without a query-head split
    (``kv_splits``: the Gluon kernel splits the group's heads as the teaching one does)."""
    hopper = hopper_backward_applies(do, q, k, v, lse, delta, mask, window, fused_dq, hopper_path)
    return gluon_backward_kernels(hopper, q, k, causal, tile, None)[0]


def uses_gluon_dq(do, q, k, v, lse, delta, mask, causal, window, tile_q, fused_dq, hopper_path) -> bool:
    """Whether :func:`flash_attention_backward` takes dQ from the Gluon dQ kernel for Hopper: the Hopper backward
    applies (:func:`hopper_backward_applies`), ``tile_q``, the dQ kernel's fixed tile, is None (the dQ grid has
    one program per 128 query rows of each head, enough at any batch) and the Gluon kernel is the faster one at this
    shape (:func:`attention_lab.flash.gluon_backward.faster_than_teaching`)."""
    hopper = hopper_backward_applies(do, q, k, v, lse, delta, mask, window, fused_dq, hopper_path)
    return gluon_backward_kernels(hopper, q, k, causal, None, tile_q)[1]


def gluon_backward_kernels(hopper: bool, q, k, causal: bool, tile, tile_q) -> tuple[bool, bool]:
    """(dK/dV, dQ): whether each comes from its Gluon kernel, given ``hopper`` (:func:`hopper_backward_applies`,
    checked once per backward) and the fixed tiles (``tile`` fixes both kernels' unless ``tile_q`` is given): a fixed
    tile keeps that teaching kernel, and each Gluon kernel runs only where it is the faster one
    (:func:`attention_lab.flash.gluon_backward.faster_than_teaching`)."""
    if not hopper:
        return False, False
    from attention_lab.flash import gluon_backward

    head_dim, n_keys = q.shape[-1], k.shape[-2]
    return (tile is None and gluon_backward.faster_than_teaching("dkdv", head_dim, n_keys, causal),
            (tile_q or tile) is None and gluon_backward.faster_than_teaching("dq", head_dim, n_keys, causal))


def hopper_backward_applies(do, q, k, v, lse, delta, mask, window, fused_dq, hopper_path) -> bool:
    """What both Gluon backward kernels need, checked once per backward: the switch (``hopper_path``, else
    :data:`GLUON_BACKWARD`) is on, no mask or window, no fused dQ, and
    :func:`attention_lab.flash.gluon_backward.unsupported_reason` names no reason. Whether each kernel is also the
    faster one at the shape is :func:`attention_lab.flash.gluon_backward.faster_than_teaching`'s to say."""
    if not (GLUON_BACKWARD if hopper_path is None else hopper_path) or _compile_only:
        return False
    if mask is not None or window is not None or fused_dq:
        return False
    from attention_lab.flash import gluon_backward

    return gluon_backward.unsupported_reason(do, q, k, v, lse, delta) is None


def flash_attention_backward(do, q, k, v, out, lse, mask, causal, window, scale, tile=None, tile_q=None,
                             kv_splits=None, fused_dq=None, hopper_path=None):
    """Run the three backward kernels on ``do`` (dL/dO, like ``out``) and the forward's ``out`` and ``lse``.

    Returns dq, dk, dv shaped like q, k, v.

    ``tile`` fixes the dK/dV kernel's tile (BLOCK_N keys per program, BLOCK_M queries per step) and,
    unless ``tile_q`` is given, the dQ kernel's; ``None`` autotunes on a GPU. ``kv_splits`` splits each
    kv head's query heads over that many dK/dV programs (None: :func:`kv_splits_for`), whose fp32 partial
    sums are then added. ``fused_dq``: the dK/dV kernel adds dQ too, into an fp32 buffer (atomic adds), and the dQ
    kernel is not launched (None: :data:`FUSED_DQ_BACKWARD`).

    On an H100/H200 dK, dV and dQ come from the Gluon kernels (:mod:`attention_lab.flash.gluon_backward`) where
    :func:`uses_gluon_backward` and :func:`uses_gluon_dq` say so (the dQ kernel first; with
    :data:`FUSED_DELTA_BACKWARD` it also computes delta, and the delta kernel is not launched); ``hopper_path``: None
    follows :data:`GLUON_BACKWARD`, False forces the teaching kernels.
    """
    check_tile(tile)
    check_tile(tile_q, "tile_q")
    check_optional_bool("fused_dq", fused_dq)
    check_optional_bool("hopper_path", hopper_path)
    batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim, causal, window, scale = prepare_inputs(
        q, k, v, mask, causal, window, scale)
    refuse_tiles_that_cannot_fit(q, mask is not None, {"backward_kv": tile, "backward_q": tile_q or tile})
    # the kernels assume stride 1 along D in every tensor they read (no copy when that holds already)
    q, k, v, out, do = (_last_dim_contiguous(x) for x in (q, k, v, out, do))
    if q.numel() == 0 or k.numel() == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    block_d = max(16, next_power_of_2(head_dim))
    delta = torch.empty_like(lse)  # (B, H, Nq) fp32: rowsum(dO ∘ O), from the delta kernel or the Gluon dQ kernel
    group = n_heads // n_kv_heads
    if kv_splits is None:
        kv_splits = kv_splits_for(batch, n_kv_heads, n_keys, group, q.device, causal)
    check_int_range("kv_splits", kv_splits, 1, group + 1)
    kv_splits, heads_per_split = split_query_heads(group, kv_splits)
    fused_dq = FUSED_DQ_BACKWARD if fused_dq is None else fused_dq
    hopper = hopper_backward_applies(do, q, k, v, lse, delta, mask, window, fused_dq, hopper_path)
    gluon_kv, gluon_q = gluon_backward_kernels(hopper, q, k, causal, tile, tile_q)
    if gluon_kv or gluon_q:
        from attention_lab.flash import gluon_backward
    # delta in the Gluon dQ kernel's prologue (one launch fewer; it runs first, then dK/dV reads delta)
    fused_delta = gluon_q and FUSED_DELTA_BACKWARD and gluon_backward.tma_reason("out", out) is None
    if not fused_delta:
        delta_block = 16 if interpreting() else 64
        _launch(None, _attn_bwd_delta, (cdiv(n_queries, delta_block), batch * n_heads),
                (out, do, delta, *out.stride()[:3], *do.stride()[:3], n_heads, n_queries),
                dict(HEAD_DIM=head_dim, BLOCK_D=block_d, WIDE=needs_wide_offsets(out, do)), {"BLOCK_M": delta_block})
    if gluon_q:
        dq = gluon_backward.flash_attention_backward_q_hopper(do, q, k, v, lse, delta, causal, scale,
                                                              out=out if fused_delta else None)
    if gluon_kv:
        dk, dv = gluon_backward.flash_attention_backward_kv_hopper(do, q, k, v, lse, delta, causal, scale,
                                                                   kv_splits=kv_splits)
    if gluon_kv and gluon_q:
        return dq, dk, dv
    # the teaching kernels write into these (where a Gluon kernel ran, its own result is kept)
    if not gluon_q:
        dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    if not gluon_kv:
        dk = torch.empty_like(k, memory_format=torch.contiguous_format)
        dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    mask_tensor, mask_strides = _mask_args(mask, batch, n_heads, n_queries, n_keys, q)
    wide = needs_wide_offsets(q, k, v, out, do, dq, dk, dv, mask_tensor if mask is not None else None)
    if kv_splits > 1 and not gluon_kv:  # fp32 partial sums, one slice per split, added after the kernel
        dk_out = torch.empty((kv_splits, *k.shape), dtype=torch.float32, device=k.device)
        dv_out = torch.empty((kv_splits, *v.shape), dtype=torch.float32, device=v.device)
        wide = wide or dk_out.numel() >= 2 ** 31
    else:
        dk_out, dv_out = dk[None], dv[None]
    # fused: dQ accumulated in fp32 by the dK/dV programs (zeroed first); else the dQ kernel writes dq itself
    dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device) if fused_dq else dq
    flags = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, CAUSAL=causal, HAS_WINDOW=window is not None,
                 HAS_MASK=mask is not None, WIDE=wide)
    buckets = (_bucket(n_queries), _bucket(n_keys))
    split_strides = (dk_out.stride(0), dv_out.stride(0)) if kv_splits > 1 else (0, 0)
    kv_args = (q, k, v, do, dk_out, dv_out, dq_acc, lse, delta, mask_tensor, *q.stride()[:3], *k.stride()[:3],
               *v.stride()[:3], *do.stride()[:3], *dk_out.stride()[1:4], *dv_out.stride()[1:4], *split_strides,
               *dq_acc.stride()[:3], *mask_strides, n_heads, n_kv_heads, n_queries, n_keys, group, heads_per_split, window or 0,
               scale * LOG2_E, scale, *buckets)
    q_args = (q, k, v, do, dq, lse, delta, mask_tensor, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
              *do.stride()[:3], *dq.stride()[:3], *mask_strides,
              n_heads, n_queries, n_keys, group, window or 0, scale * LOG2_E, scale, *buckets)
    kv_grid = lambda meta: (cdiv(n_keys, meta["BLOCK_N"]), batch * n_kv_heads * kv_splits)  # noqa: E731
    q_grid = lambda meta: (cdiv(n_queries, meta["BLOCK_M"]), batch * n_heads)  # noqa: E731
    if not gluon_kv:
        _launch(_attn_bwd_kv_tuned, _attn_bwd_kv, kv_grid, kv_args, dict(flags, FUSED_DQ=fused_dq), tile)
    if fused_dq:
        torch.mul(dq_acc, scale, out=dq_acc)  # dQ = scale · dS K
        dq.copy_(dq_acc)
    elif not gluon_q:
        _launch(_attn_bwd_q_tuned, _attn_bwd_q, q_grid, q_args, flags, tile_q or tile)
    if kv_splits > 1 and not gluon_kv:
        dk.copy_(dk_out.sum(0))
        dv.copy_(dv_out.sum(0))
    return dq, dk, dv


@contextlib.contextmanager
def online_softmax_step_replaced(step):
    """Inside this context the forward kernel calls ``step`` instead of
    :func:`attention_lab.kernels.common.online_softmax_update`.

    ``step(m_i, l_i, acc, qk, v) -> (m_i, l_i, acc)`` is a ``@triton.jit`` (or plain Python) function;
    the forward's inner loop calls it with those five arguments (the update's ``DOT_PRECISION`` keeps its
    default). This is how the chapter-10 exercise plugs a student's update into the real kernel. Only
    under the interpreter: a compiled kernel has its helpers inlined at compile time.
    """
    if not interpreting():
        raise RuntimeError("replacing the online-softmax step needs Triton's interpreter (TRITON_INTERPRET=1)")
    from triton.runtime.interpreter import InterpretedFunction

    module = globals()  # _attn_fwd_inner looks the name up here, at every call under the interpreter
    saved, saved_raw = module["online_softmax_update"], module["RAW_MAX_SOFTMAX"]
    module["online_softmax_update"] = InterpretedFunction(getattr(step, "fn", step))
    module["RAW_MAX_SOFTMAX"] = False  # the step receives scaled scores, as chapter 08's update does
    try:
        yield
    finally:
        module["online_softmax_update"], module["RAW_MAX_SOFTMAX"] = saved, saved_raw


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: the forward saves (q, k, v, O, lse); the backward recomputes P block by block.

    It saves the q, k, v the kernels read: for an input not contiguous along D, the contiguous copy, so
    that the copy is made once and the backward never sees the original's strides."""

    @staticmethod
    def forward(ctx, q, k, v, mask, causal, window, scale, tile):
        if any(ctx.needs_input_grad[:3]):  # the backward uses the same tile: refuse it now if it cannot fit there
            refuse_tiles_that_cannot_fit(q, mask is not None, {"forward": tile, "backward_kv": tile, "backward_q": tile})
        q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
        out, lse = flash_attention_forward(q, k, v, mask, causal, window, scale, tile)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask, ctx.causal, ctx.window, ctx.scale, ctx.tile = mask, causal, window, scale, tile
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(grad_out, q, k, v, out, lse, ctx.mask, ctx.causal, ctx.window,
                                              ctx.scale, ctx.tile)
        return dq, dk, dv, None, None, None, None, None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    window: int | None = None,
    scale: float | None = None,
    tile: dict | None = None,
) -> torch.Tensor:
    """FlashAttention (Triton): same contract as :func:`attention_lab.attention.scaled_dot_product_attention`.

    Args:
        q: queries ``(B, H, Nq, D)``, fp16/bf16 (fp32 works; on a GPU its matrix products use tf32).
            ``D <= 128``; any ``D`` is padded to a power of two inside the kernel.
        k: keys ``(B, Hkv, Nk, D)``, ``Hkv`` dividing ``H`` (GQA/MQA without copying K/V).
        v: values ``(B, Hkv, Nk, D)``.
        mask: optional bool mask, True = may attend, ``(Nq, Nk)`` or ``(B|1, H|1, Nq|1, Nk)``.
        causal: query i sees keys j <= i + Nk - Nq (queries aligned to the END of the keys).
        window: sliding window of ``window`` keys including the query itself (implies causal).
        scale: defaults to ``D ** -0.5``.
        tile: ``{"BLOCK_M": .., "BLOCK_N": .., "num_warps": .., "num_stages": ..}`` to bypass autotuning
            (tests, the notebook's steps); the backward kernels use the same tile. On a GPU a tile whose shared
            memory (the mask tile included) cannot fit is refused with ``ValueError`` before anything runs.

    Returns:
        ``(B, H, Nq, D)`` in q's dtype; differentiable in q, k, v. Rows with no visible key give 0.
        bf16 on a GPU older than sm_80 (a T4) raises ``ValueError``: use fp16 there.
    """
    return FlashAttentionFunction.apply(q, k, v, mask, causal, window, scale, tile)


def compile_jobs(capability: int) -> list:
    """What CI compiles for sm_``capability`` (:mod:`attention_lab.kernels.compile_check`), in fp16.

    Every autotune config of the forward and the two backward kernels, at the largest head_dim the
    pruning rule keeps it for on this GPU (its worst case: shared memory grows with head_dim), causal,
    with the pruning rule's estimate to check; configs pruned at every head_dim are listed as skipped.
    Each config twice: plain causal (kernel "forward", ...), and with a window and an explicit mask
    (kernel "forward+mask+window", ...), whose mask tile needs more shared memory (a window alone was
    measured to add none), at the largest head_dim the rule keeps it for with a mask.
    And the small delta kernel at head_dim 128.
    """
    from attention_lab.kernels.compile_check import CompileJob

    kernels = {"forward": _attn_fwd, "backward_kv": _attn_bwd_kv, "backward_q": _attn_bwd_q}
    types = {"Q": "*fp16", "K": "*fp16", "V": "*fp16", "O": "*fp16", "DO": "*fp16", "DQ": "*fp16", "DK": "*fp16",
             "DV": "*fp16", "DQ_ACC": "*fp32", "LSE": "*fp32", "DELTA": "*fp32", "M": "*u8", "qk_scale": "fp32", "scale": "fp32"}
    jobs = []
    for kernel, configs in triton_configs.CONFIGS.items():
        for masked in (False, True):
            for config in configs:
                head_dim = triton_configs.largest_head_dim(kernel, config, capability, has_mask=masked)
                common = dict(family="flash", kernel=kernel + "+mask+window" * masked, fn=kernels[kernel], types=types,
                              num_warps=config.num_warps, num_stages=config.num_stages, config=dict(config.kwargs),
                              head_dim=head_dim)
                if head_dim is None:
                    jobs.append(CompileJob(constexprs={}, skipped="pruned at every head_dim", **common))
                    continue
                constexprs = dict(HEAD_DIM=head_dim, BLOCK_D=max(16, next_power_of_2(head_dim)),
                                  CAUSAL=True, HAS_WINDOW=masked, HAS_MASK=masked, WIDE=False, **config.kwargs,
                                  **({"RAW_MAX": RAW_MAX_SOFTMAX} if kernel == "forward" else {}),
                                  **({"FUSED_DQ": False} if kernel == "backward_kv" else {}))
                estimate = triton_configs.estimated_shared_memory(kernel, config, head_dim, 2, capability, masked)
                jobs.append(CompileJob(constexprs=constexprs, estimate=estimate, **common))
    jobs.append(CompileJob(family="flash", kernel="delta", fn=_attn_bwd_delta, types=types, num_warps=4, num_stages=3,
                           constexprs=dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_M=64, WIDE=False), config={"BLOCK_M": 64},
                           head_dim=128))
    return jobs


__all__ = ["flash_attention", "flash_attention_forward", "flash_attention_backward", "FlashAttentionFunction",
           "online_softmax_step_replaced", "check_dtype_supported", "precompile", "precompile_many", "prepare_inputs", "compile_jobs"]
