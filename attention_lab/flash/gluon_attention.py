"""FlashAttention forward for Hopper (sm_90) in Gluon: TMA loads into a ring of shared-memory stages and
asynchronous warpgroup matrix products, with the softmax of one key block overlapped with the P·V product of
the block before it (FlashAttention-3's "intra-warpgroup pipelining", Shah et al. 2024, §3.2).

Why a second kernel: chapter 10's kernel is plain Triton and runs on a T4. On Hopper, Triton compiles its
``tl.dot`` to asynchronous ``wgmma`` instructions, but the compiler decides when to wait for them: each key
block's exponentials wait for its ``S = Q Kᵀ``, and the next block's ``Q Kᵀ`` waits for them. Gluon
(``triton.experimental.gluon``, Triton >= 3.5) is Triton one level down: the layouts, the shared memory, the
TMA copies with their barriers and the waits on each ``wgmma`` are written in the kernel. This kernel uses that
to keep the tensor cores busy while the exponentials of the previous block are computed:

    S_j = Q K_jᵀ            issued, not waited for
    O  += P_{j-1} V_{j-1}    issued, not waited for
    wait for S_j (P·V may still run)
    m_j, P_j, α_j = softmax step of S_j   (on the CUDA cores, while P·V runs on the tensor cores)
    wait for P·V;  O *= α_j  (the rescale that needs the finished product)

Same contract as :func:`attention_lab.flash.triton_attention.flash_attention_forward` for what it supports
(:func:`unsupported_reason`): q ``(B, H, Nq, D)``, k, v ``(B, Hkv, Nk, D)``, fp16/bf16, D ∈ {64, 128}, causal
(queries aligned to the end of the keys) or not, no mask, no window; returns O and the rows' base-2 log-sum-exp,
so the backward kernels of chapter 10 take it as it is. Tensors are addressed through 4-D TMA descriptors over
their real strides, so partial last blocks are zero-filled by the hardware and a (B, N, H, D) view needs no copy.

Without Triton >= 3.5 (Gluon) or without a Hopper GPU, :data:`GLUON_AVAILABLE` is False or
:func:`unsupported_reason` names the reason, and the teaching kernel runs.
"""

from __future__ import annotations

import functools

import torch

from attention_lab.kernels.common import LOG2_E, device_capability
from attention_lab.kernels.optional_triton import TRITON_AVAILABLE, cdiv

try:  # Gluon and its Hopper pieces: Triton >= 3.5 (3.6 on the lent GPU and Colab, 3.9 in CI)
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                  warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    GLUON_AVAILABLE = TRITON_AVAILABLE
    # the TMA copies were renamed after Triton 3.6 (async_copy_global_to_shared -> async_load, ... -> async_store)
    tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
    cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier  # every warp of the CTA meets (3.6 / newer name)
except ImportError:  # no Triton, or one without Gluon
    GLUON_AVAILABLE = False

HEAD_DIMS = (64, 128)  # the head dims the kernel is written and tested for
BLOCK_M = 128  # query rows per program: two warpgroups of 64 rows (8 warps)
NUM_WARPS = 8
# warp-specialised variant: 4 + 4 + 1 warps (12 counted, by warpgroup); registers per thread for the second consumer
# and the producer (the first consumer gets what is left of WS_MAX_REGISTERS · 12 warps · 32 threads)
WS_MAX_REGISTERS = 168
WS_CONSUMER_REGISTERS = 240
WS_PRODUCER_REGISTERS = 24


SHORT_KEYS_D64 = 1024  # at D=64 up to this many keys the teaching kernel is the faster one (see below)


def faster_than_teaching(head_dim: int, n_keys: int) -> bool:
    """Whether the warp-specialised kernel beats the teaching kernel at this shape, as measured on an H200 (torch
    2.11, triton 3.6, bf16, B·N = 32k, H·D = 2048): everywhere except D=64 with at most :data:`SHORT_KEYS_D64` keys,
    where each program walks only 8 key blocks and the pipeline's fill and drain are not paid back (N=1k: teaching
    387 vs 371 TFLOP/s full, 288 vs 259 causal; N=2k: 405 vs 427, 334 vs 342 — flash_gluon_probe_d64.json). The
    backward follows the same rule (:func:`attention_lab.flash.triton_attention.uses_gluon_dq`): at D=64 with 1k keys
    the Gluon dK/dV and dQ kernels were the slower ones too (``flash_gluon_backward_probe_d64.json``)."""
    return not (head_dim == 64 and n_keys <= SHORT_KEYS_D64)


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, window) -> str | None:
    """Why the Gluon kernel cannot run these inputs (None: it can). Checked before every launch."""
    if not GLUON_AVAILABLE:
        return "needs Triton >= 3.5 with Gluon"
    if not (isinstance(q, torch.Tensor) and q.is_cuda):
        return "needs CUDA tensors"
    if device_capability(q.device) != 90:
        return f"written for Hopper (sm_90), this is sm_{device_capability(q.device)}"
    return input_reason(q, k, v, mask, window)


def input_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, window) -> str | None:
    """The part of :func:`unsupported_reason` that depends on the inputs only, not on the device."""
    if mask is not None or window is not None:
        return "no explicit mask or window (the teaching kernel handles those)"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"fp16 or bf16 only, got {q.dtype}"
    if q.shape[-1] not in HEAD_DIMS:
        return f"head_dim in {HEAD_DIMS} only, got {q.shape[-1]}"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1 or any(s * t.element_size() % 16 for s in t.stride()[:-1]) or t.data_ptr() % 16:
            return f"{name} must be contiguous in head_dim with 16-byte aligned strides (TMA), got {t.stride()}"
    return None


if GLUON_AVAILABLE:

    @gluon.jit
    def _softmax_step(s, m_i, l_i, qk_scale, row, col, n_keys, offset, NEEDS_MASK, CAUSAL: gl.constexpr):
        """One online-softmax step on raw scores ``s`` (BLOCK_M, BLOCK_N): the new max (log2 units), the weights
        ``P = 2^(s·qk_scale − m)`` (one FMA each), the rescale ``α`` of what came before and the new row sums."""
        if NEEDS_MASK:  # the causal diagonal or the last, partial key block
            ok = col[None, :] < n_keys
            if CAUSAL:
                ok = ok & (col[None, :] <= row[:, None] + offset)
            s = gl.where(ok, s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
        m_use = gl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet: keep 2^(-inf) = 0
        p = gl.exp2(s * qk_scale - m_use[:, None])
        alpha = gl.exp2(m_i - m_use)
        l_i = l_i * alpha + gl.sum(p, axis=1)
        return p, alpha, m_new, l_i

    @gluon.jit
    def _load_kv(desc, bars, ring, j, b, kv_h, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr):
        """Start the TMA copy of key/value block ``j`` into ring slot ``j % NUM_STAGES``; its barrier flips when
        the bytes have landed."""
        slot = j % NUM_STAGES
        bar = bars.index(slot)
        mbarrier.expect(bar, desc.block_type.nbytes)
        tma_load(desc, [b, kv_h, j * BLOCK_N, 0], bar, ring.index(slot))

    @gluon.jit
    def _query_tile(n_heads, group, n_queries, n_keys, ROWS: gl.constexpr, BLOCK_N: gl.constexpr,
                    CAUSAL: gl.constexpr):
        """This program's rows and the key blocks they see: ``(batch·head, batch, head, kv head, first row, number of
        key blocks, first block that needs a mask)``. Causal rows are taken longest first (better load balance at the
        tail); a query block sees keys up to its last row's diagonal (queries aligned to the end of the keys)."""
        start_m = gl.program_id(0)
        if CAUSAL:
            start_m = gl.num_programs(0) - 1 - start_m
        batch_head = gl.program_id(1)
        h = batch_head % n_heads
        m0 = start_m * ROWS
        offset = n_keys - n_queries  # queries are the last n_queries positions
        hi = n_keys
        if CAUSAL:
            hi = gl.minimum(hi, m0 + ROWS + offset)
        first_masked = n_keys // BLOCK_N  # from this block on some pair is masked: the partial last block...
        if CAUSAL:  # ... or the diagonal
            first_masked = gl.minimum(first_masked, gl.maximum(m0 + offset + 1, 0) // BLOCK_N)
        return batch_head, batch_head // n_heads, h, h // group, m0, gl.cdiv(gl.maximum(hi, 0), BLOCK_N), first_masked

    @gluon.jit
    def _attn_fwd_hopper(q_desc, k_desc, v_desc, o_desc, LSE,
                         n_heads, group, n_queries, n_keys, qk_scale,
                         HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                         NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr, num_warps: gl.constexpr):
        """One program = BLOCK_M queries of one (batch, head). Descriptors are 4-D over (B, H, N, D)."""
        batch_head, b, h, kv_h, m0, n_blocks, first_masked = _query_tile(n_heads, group, n_queries, n_keys, BLOCK_M,
                                                                         BLOCK_N, CAUSAL)
        offset = n_keys - n_queries  # queries are the last n_queries positions

        # wgmma layouts: S is (BLOCK_M, BLOCK_N), O is (BLOCK_M, HEAD_DIM); 8 warps = 2 warpgroups along M
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        dtype: gl.constexpr = q_desc.dtype

        # shared memory: Q (also the output's staging tile), rings of K and V blocks, one barrier per slot
        q_smem = gl.allocate_shared_memory(dtype, q_desc.block_type.shape, q_desc.layout)
        k_ring = gl.allocate_shared_memory(dtype, [NUM_STAGES] + k_desc.block_type.shape, k_desc.layout)
        v_ring = gl.allocate_shared_memory(dtype, [NUM_STAGES] + v_desc.block_type.shape, v_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_bars = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        v_bars = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        for i in gl.static_range(NUM_STAGES):
            mbarrier.init(k_bars.index(i), count=1)
            mbarrier.init(v_bars.index(i), count=1)

        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        tma_load(q_desc, [b, h, m0, 0], q_bar, q_smem)
        for first in gl.static_range(NUM_STAGES):  # fill the ring
            if first < n_blocks:
                _load_kv(k_desc, k_bars, k_ring, first, b, kv_h, BLOCK_N, NUM_STAGES)
                _load_kv(v_desc, v_bars, v_ring, first, b, kv_h, BLOCK_N, NUM_STAGES)

        q_tile = q_smem.reshape([BLOCK_M, HEAD_DIM])
        row = m0 + gl.arange(0, BLOCK_M, layout=row_s)
        cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=row_s)
        l_i = gl.zeros([BLOCK_M], gl.float32, layout=row_s)
        acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, layout=o_layout)
        s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)

        mbarrier.wait(q_bar, 0)  # always: Q's copy must have landed before its tile is reused for the output
        if n_blocks > 0:
            # block 0: S_0, its softmax step; nothing to overlap yet
            mbarrier.wait(k_bars.index(0), 0)
            s = warpgroup_mma(q_tile, k_ring.index(0).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), s_zero,
                              use_acc=False, is_async=True)
            s = warpgroup_mma_wait(0, deps=[s])
            cta_barrier()  # both warpgroups have read K_0
            if NUM_STAGES < n_blocks:
                _load_kv(k_desc, k_bars, k_ring, NUM_STAGES, b, kv_h, BLOCK_N, NUM_STAGES)
            p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, row, cols, n_keys, offset,
                                               0 >= first_masked, CAUSAL)
            for j in range(1, n_blocks):
                slot = j % NUM_STAGES
                phase = (j // NUM_STAGES) & 1
                prev = (j - 1) % NUM_STAGES
                prev_phase = ((j - 1) // NUM_STAGES) & 1
                # issue S_j = Q K_jᵀ, then O += P_{j-1} V_{j-1}; wait only for S_j
                mbarrier.wait(k_bars.index(slot), phase)
                s = warpgroup_mma(q_tile, k_ring.index(slot).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), s_zero,
                                  use_acc=False, is_async=True)
                mbarrier.wait(v_bars.index(prev), prev_phase)
                p_op = gl.convert_layout(p.to(dtype), p_layout)
                acc = warpgroup_mma(p_op, v_ring.index(prev).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
                s = warpgroup_mma_wait(1, deps=[s])
                # the softmax step of block j runs while P_{j-1} V_{j-1} is on the tensor cores
                p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, row, cols + j * BLOCK_N, n_keys, offset,
                                                   j >= first_masked, CAUSAL)
                acc, p_op = warpgroup_mma_wait(0, deps=[acc, p_op])
                # K_j and V_{j-1} have been read — by this warpgroup: a wait covers only its own products, and
                # both warpgroups read every K and V tile, so all warps meet before their slots are refilled
                cta_barrier()
                if j + NUM_STAGES < n_blocks:
                    _load_kv(k_desc, k_bars, k_ring, j + NUM_STAGES, b, kv_h, BLOCK_N, NUM_STAGES)
                if j - 1 + NUM_STAGES < n_blocks:
                    _load_kv(v_desc, v_bars, v_ring, j - 1 + NUM_STAGES, b, kv_h, BLOCK_N, NUM_STAGES)
                acc = acc * gl.convert_layout(alpha, row_o)[:, None]
            # the last block's P V
            last = (n_blocks - 1) % NUM_STAGES
            mbarrier.wait(v_bars.index(last), ((n_blocks - 1) // NUM_STAGES) & 1)
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            acc = warpgroup_mma(p_op, v_ring.index(last).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
            acc, p_op = warpgroup_mma_wait(0, deps=[acc, p_op])

        mbarrier.invalidate(q_bar)
        for i in gl.static_range(NUM_STAGES):
            mbarrier.invalidate(k_bars.index(i))
            mbarrier.invalidate(v_bars.index(i))

        # epilogue: O = acc / l (0 for a row that saw no key, lse = +inf there), through shared memory and TMA
        l_o = gl.convert_layout(l_i, row_o)
        empty = l_o == 0.0
        out = acc / gl.where(empty, 1.0, l_o)[:, None]
        q_tile.store(out.to(dtype))  # Q is no longer needed: its tile stages the output
        fence_async_shared()
        cta_barrier()  # every warp's rows are in shared memory before one thread starts the copy
        tma_store(o_desc, [b, h, m0, 0], q_smem)
        m_o = gl.convert_layout(m_i, row_o)
        lse = gl.where(empty, float("inf"), m_o + gl.log2(gl.where(empty, 1.0, l_o)))
        rows_o = m0 + gl.arange(0, BLOCK_M, layout=row_o)
        gl.store(LSE + batch_head.to(gl.int64) * n_queries + rows_o, lse, mask=rows_o < n_queries)
        tma.store_wait(0)


if GLUON_AVAILABLE:

    @gluon.jit
    def _consume(WHICH: gl.constexpr, descs, bufs, bars, scalars, HEAD_DIM: gl.constexpr, HALF_M: gl.constexpr,
                 BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr):
        """A consumer warpgroup of the warp-specialised kernel: query rows ``[m0 + WHICH·HALF_M, +HALF_M)``.

        The same pipelined loop as :func:`_attn_fwd_hopper`, but the two warpgroups no longer meet at a
        CTA barrier: each tells the producer warp through the ``*_empty`` barriers when it has read a K or V
        slot (the producer refills a slot once both have), so one can compute its exponentials while the
        other's products run on the tensor cores."""
        q_desc, k_desc, v_desc, o_desc = descs
        q_bufs, k_ring, v_ring = bufs
        q_bar, k_ready, k_empty, v_ready, v_empty = bars
        LSE, b, h, kv_h, m0, n_queries, n_keys, n_blocks, first_masked, qk_scale, batch_head = scalars
        offset = n_keys - n_queries
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        dtype: gl.constexpr = q_desc.dtype
        first_row = m0 + WHICH * HALF_M
        q_tile = q_bufs.index(WHICH).reshape([HALF_M, HEAD_DIM])
        row = first_row + gl.arange(0, HALF_M, layout=row_s)
        cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        m_i = gl.full([HALF_M], float("-inf"), gl.float32, layout=row_s)
        l_i = gl.zeros([HALF_M], gl.float32, layout=row_s)
        acc = gl.zeros([HALF_M, HEAD_DIM], gl.float32, layout=o_layout)
        s_zero = gl.zeros([HALF_M, BLOCK_N], gl.float32, layout=s_layout)

        mbarrier.wait(q_bar, 0)
        if n_blocks > 0:
            mbarrier.wait(k_ready.index(0), 0)
            s = warpgroup_mma(q_tile, k_ring.index(0).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), s_zero,
                              use_acc=False, is_async=True)
            s = warpgroup_mma_wait(0, deps=[s])
            mbarrier.arrive(k_empty.index(0), count=1)
            p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, row, cols, n_keys, offset,
                                               0 >= first_masked, CAUSAL)
            for j in range(1, n_blocks):
                slot = j % NUM_STAGES
                prev = (j - 1) % NUM_STAGES
                mbarrier.wait(k_ready.index(slot), (j // NUM_STAGES) & 1)
                s = warpgroup_mma(q_tile, k_ring.index(slot).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), s_zero,
                                  use_acc=False, is_async=True)
                mbarrier.wait(v_ready.index(prev), ((j - 1) // NUM_STAGES) & 1)
                p_op = gl.convert_layout(p.to(dtype), p_layout)
                acc = warpgroup_mma(p_op, v_ring.index(prev).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
                s = warpgroup_mma_wait(1, deps=[s])
                mbarrier.arrive(k_empty.index(slot), count=1)  # this warpgroup is done with K_j
                p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, row, cols + j * BLOCK_N, n_keys, offset,
                                                   j >= first_masked, CAUSAL)
                acc, p_op = warpgroup_mma_wait(0, deps=[acc, p_op])
                mbarrier.arrive(v_empty.index(prev), count=1)  # ... and with V_{j-1}
                acc = acc * gl.convert_layout(alpha, row_o)[:, None]
            last = (n_blocks - 1) % NUM_STAGES
            mbarrier.wait(v_ready.index(last), ((n_blocks - 1) // NUM_STAGES) & 1)
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            acc = warpgroup_mma(p_op, v_ring.index(last).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
            acc, p_op = warpgroup_mma_wait(0, deps=[acc, p_op])
            mbarrier.arrive(v_empty.index(last), count=1)

        l_o = gl.convert_layout(l_i, row_o)
        empty = l_o == 0.0
        out = acc / gl.where(empty, 1.0, l_o)[:, None]
        q_tile.store(out.to(dtype))  # this warpgroup's Q rows are no longer read: they stage its output rows
        fence_async_shared()
        tma_store(o_desc, [b, h, first_row, 0], q_bufs.index(WHICH))
        m_o = gl.convert_layout(m_i, row_o)
        lse = gl.where(empty, float("inf"), m_o + gl.log2(gl.where(empty, 1.0, l_o)))
        rows_o = first_row + gl.arange(0, HALF_M, layout=row_o)
        gl.store(LSE + batch_head.to(gl.int64) * n_queries + rows_o, lse, mask=rows_o < n_queries)
        tma.store_wait(0)

    @gluon.jit
    def _first_consumer(descs, bufs, bars, scalars, HEAD_DIM: gl.constexpr, HALF_M: gl.constexpr,
                        BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr):
        _consume(0, descs, bufs, bars, scalars, HEAD_DIM, HALF_M, BLOCK_N, NUM_STAGES, CAUSAL)

    @gluon.jit
    def _second_consumer(descs, bufs, bars, scalars, HEAD_DIM: gl.constexpr, HALF_M: gl.constexpr,
                         BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr):
        _consume(1, descs, bufs, bars, scalars, HEAD_DIM, HALF_M, BLOCK_N, NUM_STAGES, CAUSAL)

    @gluon.jit
    def _produce(descs, bufs, bars, scalars, HEAD_DIM: gl.constexpr, HALF_M: gl.constexpr,
                 BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr):
        """The producer warp: Q's two halves, then every K and V block into the rings, each slot as soon as both
        consumers have released it (an ``*_empty`` barrier starts completed, so the first round does not wait)."""
        q_desc, k_desc, v_desc, o_desc = descs
        q_bufs, k_ring, v_ring = bufs
        q_bar, k_ready, k_empty, v_ready, v_empty = bars
        LSE, b, h, kv_h, m0, n_queries, n_keys, n_blocks, first_masked, qk_scale, batch_head = scalars
        mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
        tma_load(q_desc, [b, h, m0, 0], q_bar, q_bufs.index(0))
        tma_load(q_desc, [b, h, m0 + HALF_M, 0], q_bar, q_bufs.index(1))
        for j in range(n_blocks):
            slot = j % NUM_STAGES
            phase = (j // NUM_STAGES) & 1
            mbarrier.wait(k_empty.index(slot), phase ^ 1)
            mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)
            tma_load(k_desc, [b, kv_h, j * BLOCK_N, 0], k_ready.index(slot), k_ring.index(slot))
            mbarrier.wait(v_empty.index(slot), phase ^ 1)
            mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
            tma_load(v_desc, [b, kv_h, j * BLOCK_N, 0], v_ready.index(slot), v_ring.index(slot))

    @gluon.jit
    def _attn_fwd_hopper_ws(q_desc, k_desc, v_desc, o_desc, LSE,
                            n_heads, group, n_queries, n_keys, qk_scale,
                            HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
                            CAUSAL: gl.constexpr, CONSUMER_REGISTERS: gl.constexpr, PRODUCER_REGISTERS: gl.constexpr,
                            num_warps: gl.constexpr):
        """Warp-specialised: one producer warp (TMA) and two consumer warpgroups of HALF_M query rows each.
        Q/O descriptors have blocks of HALF_M rows, K/V of BLOCK_N; one program = 2·HALF_M queries of one head."""
        HALF_M: gl.constexpr = q_desc.block_type.shape[2]
        batch_head, b, h, kv_h, m0, n_blocks, first_masked = _query_tile(n_heads, group, n_queries, n_keys, 2 * HALF_M,
                                                                         BLOCK_N, CAUSAL)

        dtype: gl.constexpr = q_desc.dtype
        q_bufs = gl.allocate_shared_memory(dtype, [2] + q_desc.block_type.shape, q_desc.layout)
        k_ring = gl.allocate_shared_memory(dtype, [NUM_STAGES] + k_desc.block_type.shape, k_desc.layout)
        v_ring = gl.allocate_shared_memory(dtype, [NUM_STAGES] + v_desc.block_type.shape, v_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        v_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        for i in gl.static_range(NUM_STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(k_empty.index(i), count=2)  # released by both consumers
            mbarrier.init(v_empty.index(i), count=2)

        descs = (q_desc, k_desc, v_desc, o_desc)
        bufs = (q_bufs, k_ring, v_ring)
        bars = (q_bar, k_ready, k_empty, v_ready, v_empty)
        scalars = (LSE, b, h, kv_h, m0, n_queries, n_keys, n_blocks, first_masked, qk_scale, batch_head)
        # the argument tuples are written out: a tuple held in a variable would turn its constexprs into values
        gl.warp_specialize([
            (_first_consumer, (descs, bufs, bars, scalars, HEAD_DIM, HALF_M, BLOCK_N, NUM_STAGES, CAUSAL)),
            (_second_consumer, (descs, bufs, bars, scalars, HEAD_DIM, HALF_M, BLOCK_N, NUM_STAGES, CAUSAL)),
            (_produce, (descs, bufs, bars, scalars, HEAD_DIM, HALF_M, BLOCK_N, NUM_STAGES, CAUSAL)),
        ], [4, 1], [CONSUMER_REGISTERS, PRODUCER_REGISTERS])
        mbarrier.invalidate(q_bar)
        for i in gl.static_range(NUM_STAGES):
            mbarrier.invalidate(k_ready.index(i))
            mbarrier.invalidate(v_ready.index(i))
            mbarrier.invalidate(k_empty.index(i))
            mbarrier.invalidate(v_empty.index(i))


@functools.lru_cache(maxsize=None)
def _shared_layout(block_rows: int, head_dim: int, half: torch.dtype) -> "gl.NVMMASharedLayout":
    """The swizzled shared-memory layout of a (1, 1, block_rows, head_dim) tile: a handful of distinct ones, each
    built once (building it at every launch was a measurable part of a small call's host time)."""
    gl_dtype = gl.float16 if half == torch.float16 else gl.bfloat16
    return gl.NVMMASharedLayout.get_default_for([1, 1, block_rows, head_dim], gl_dtype)


def _descriptor(t: torch.Tensor, block_rows: int) -> "TensorDescriptor":
    """A 4-D TMA descriptor over ``t`` (B, H, N, D) with its own strides, blocks of ``block_rows`` × D."""
    block = [1, 1, block_rows, t.shape[-1]]
    return TensorDescriptor(t, list(t.shape), list(t.stride()), block, _shared_layout(block_rows, t.shape[-1], t.dtype))


def default_tile(head_dim: int) -> dict:
    """The warp-specialised kernel with 128-key blocks in a ring of 2 stages (Q 32 KiB + 2 × (K + V) = 160 KiB
    at D=128): the fastest or within 2 % of it at every shape of the H200 probe
    (``attention_lab/results/flash_gluon_probe.json``: D 64/128, N 1k/4k/16k, causal or not)."""
    return {"BLOCK_N": 128, "NUM_STAGES": 2, "WARP_SPECIALIZE": True}


def flash_attention_forward_hopper(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                                   scale: float, tile: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """O ``(B, H, Nq, D)`` and the rows' base-2 log-sum-exp ``(B, H, Nq)`` fp32, as the teaching kernel's forward.

    The caller has validated the inputs (:func:`attention_lab.flash.triton_attention.prepare_inputs`) and checked
    :func:`unsupported_reason`. ``tile``: ``{"BLOCK_N": .., "NUM_STAGES": .., "WARP_SPECIALIZE": ..}`` (default
    :func:`default_tile`; ``WARP_SPECIALIZE`` runs :func:`_attn_fwd_hopper_ws`).
    """
    batch, n_heads, n_queries, head_dim = q.shape
    n_kv_heads, n_keys = k.shape[1], k.shape[2]
    tile = dict(default_tile(head_dim), **(tile or {}))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # (B, H, Nq, D), contiguous
    lse = torch.empty(batch, n_heads, n_queries, device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    grid = (cdiv(n_queries, BLOCK_M), batch * n_heads)
    kv = (_descriptor(k, tile["BLOCK_N"]), _descriptor(v, tile["BLOCK_N"]))
    scalars = (n_heads, n_heads // n_kv_heads, n_queries, n_keys, scale * LOG2_E)
    if tile.get("WARP_SPECIALIZE", False):  # a producer warp and two consumer warpgroups of BLOCK_M / 2 rows
        half = BLOCK_M // 2
        _attn_fwd_hopper_ws[grid](_descriptor(q, half), *kv, _descriptor(out, half), lse, *scalars,
                                  HEAD_DIM=head_dim, BLOCK_N=tile["BLOCK_N"], NUM_STAGES=tile["NUM_STAGES"],
                                  CAUSAL=causal, CONSUMER_REGISTERS=tile.get("CONSUMER_REGISTERS", WS_CONSUMER_REGISTERS),
                                  PRODUCER_REGISTERS=WS_PRODUCER_REGISTERS, num_warps=4,
                                  maxnreg=tile.get("MAX_REGISTERS", WS_MAX_REGISTERS))
    else:
        _attn_fwd_hopper[grid](_descriptor(q, BLOCK_M), *kv, _descriptor(out, BLOCK_M), lse, *scalars,
                               HEAD_DIM=head_dim, BLOCK_M=BLOCK_M, BLOCK_N=tile["BLOCK_N"],
                               NUM_STAGES=tile["NUM_STAGES"], CAUSAL=causal, num_warps=NUM_WARPS)
    return out, lse


def compile_jobs(capability: int) -> list:
    """What CI compiles (:mod:`attention_lab.kernels.compile_check`): on sm_90, at each head dim, causal and not, in
    bf16, the warp-specialised kernel with the tile :func:`default_tile` gives it ("ws") and the single-partition
    pipelined kernel ("pipelined", 128-key blocks, 2 stages), the step before it; on other architectures nothing (it
    is never chosen there). The TMA descriptors' types are read from descriptors built over small CPU tensors."""
    from attention_lab.kernels.compile_check import CompileJob

    if capability != 90 or not GLUON_AVAILABLE:
        return []
    from triton.runtime.jit import mangle_type

    jobs = []
    for head_dim in HEAD_DIMS:
        rows = torch.empty(1, 1, BLOCK_M, head_dim, dtype=torch.bfloat16)
        for causal in (False, True):
            for ws in (True, False):
                tile = default_tile(head_dim) if ws else {"BLOCK_N": 128, "NUM_STAGES": 2}
                q_rows = BLOCK_M // 2 if ws else BLOCK_M
                types = {"q_desc": mangle_type(_descriptor(rows, q_rows)), "o_desc": mangle_type(_descriptor(rows, q_rows)),
                         "k_desc": mangle_type(_descriptor(rows, tile["BLOCK_N"])),
                         "v_desc": mangle_type(_descriptor(rows, tile["BLOCK_N"])), "LSE": "*fp32", "qk_scale": "fp32"}
                constexprs = dict(HEAD_DIM=head_dim, BLOCK_N=tile["BLOCK_N"], NUM_STAGES=tile["NUM_STAGES"],
                                  CAUSAL=causal)
                if ws:
                    constexprs.update(CONSUMER_REGISTERS=WS_CONSUMER_REGISTERS, PRODUCER_REGISTERS=WS_PRODUCER_REGISTERS,
                                      num_warps=4)
                else:
                    constexprs.update(BLOCK_M=BLOCK_M, num_warps=NUM_WARPS)
                jobs.append(CompileJob(family="gluon", kernel=("ws" if ws else "pipelined") + "+causal" * causal,
                                       fn=_attn_fwd_hopper_ws if ws else _attn_fwd_hopper, constexprs=constexprs,
                                       types=types, num_warps=4 if ws else NUM_WARPS, num_stages=1,
                                       config=dict(BLOCK_M=BLOCK_M, BLOCK_N=tile["BLOCK_N"],
                                                   NUM_STAGES=tile["NUM_STAGES"]),
                                       head_dim=head_dim, maxnreg=WS_MAX_REGISTERS if ws else None))
    return jobs
