"""FlashAttention's backward for Hopper (sm_90) in Gluon: a dK/dV kernel and a dQ kernel, warp-specialised like the
forward in :mod:`attention_lab.flash.gluon_attention`. :func:`attention_lab.flash.triton_attention.flash_attention_backward`
takes them on an H100/H200 where they apply (``uses_gluon_backward``, ``uses_gluon_dq``); on an H200 they equal
float64 autograd as closely as the teaching kernels and are faster than them at D=128
(``attention_lab/results/flash_gluon_backward_probe.json``).

The dK/dV kernel. One program owns 128 keys of one (batch, kv head) and keeps their gradients in registers while it walks over every
query block that sees them, in every query head of the kv head's group (GQA: the sums over the group happen here) —
or, where too few programs would leave SMs idle (``kv_splits``: MQA at batch 1), in a slice of the group's heads, its
dK, dV then fp32 partial sums that the host adds:

    producer warp          K, V (128 rows, two halves of 64) once; then Q and dO tiles of BLOCK_M query rows (64; 128
                           at D=64 not causal: kv_tile_for) into a ring
    consumer warpgroup w   keys n0 + 64·w ... +64, for each (query head, query block):
        Sᵀ  = K Qᵀ                          (wgmma, both operands in shared memory)
        dPᵀ = V dOᵀ                         (issued right after Sᵀ: it does not need Pᵀ)
        Pᵀ  = 2^(Sᵀ·qk_scale − lse)          (the forward's base-2 log-sum-exp; causal diagonal masked)
        dV += Pᵀ dO                         (Pᵀ from registers)
        dSᵀ = Pᵀ ∘ (dPᵀ − delta)             (delta = rowsum(dO ∘ O))
        dK += dSᵀ Q                         (dSᵀ from registers); then the Q/dO slot is released to the producer
    epilogue               dK · scale and dV through shared memory (K's and V's own tiles) and TMA stores.

Same block-range logic as the teaching dK/dV kernel (``_query_blocks`` in triton_attention.py): causal queries are
aligned to the end of the keys, and a key block is seen by the query blocks from its diagonal on; those that cross
the diagonal are masked, the rest not. Keys beyond ``n_keys`` (the last, partial block) need no mask: TMA reads them
as zeros and their gradient rows are never stored. Query rows beyond ``n_queries`` read Q = dO = 0, lse = +inf and
delta = 0, so they add nothing.

The dQ kernel has the forward's shape: one program owns 128 query rows of one (batch, head); a producer warp streams
K and V blocks through a ring, and each of two consumer warpgroups keeps dQ of its 64 rows in registers, issuing
S = Q Kⱼᵀ and dP = dO Vⱼᵀ together so that P's exponentials run while dP is on the tensor cores.
"""

from __future__ import annotations

import torch

from attention_lab.flash.gluon_attention import GLUON_AVAILABLE, HEAD_DIMS, WS_CONSUMER_REGISTERS, WS_MAX_REGISTERS, \
    WS_PRODUCER_REGISTERS
from attention_lab.flash.gluon_attention import faster_than_teaching as gluon_faster_than_teaching
from attention_lab.flash.triton_attention import split_query_heads
from attention_lab.kernels.common import LOG2_E, device_capability
from attention_lab.kernels.optional_triton import cdiv
from attention_lab.validation import check_int_range

if GLUON_AVAILABLE:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma, \
        warpgroup_mma_wait

    from attention_lab.flash.gluon_attention import _descriptor, _query_tile, tma_load, tma_store

BLOCK_N = 128  # keys per program: two consumer warpgroups of 64
HALF_N = BLOCK_N // 2
BLOCK_M = 64  # query rows per step (one Q tile and one dO tile of the ring)
NUM_STAGES = 2  # ring slots of (Q, dO): D=128 bf16: K, V 64 KiB + 2 × (Q + dO) 64 KiB = 128 KiB
Q_HALF_M = 64  # the dQ kernel: query rows per consumer warpgroup (a program owns 2 × 64 rows)


def unsupported_reason(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lse: torch.Tensor,
                       delta: torch.Tensor) -> str | None:
    """Why :func:`flash_attention_backward_kv_hopper` cannot run these inputs (None: it can)."""
    if not GLUON_AVAILABLE:
        return "needs Triton >= 3.5 with Gluon"
    if not (isinstance(q, torch.Tensor) and q.is_cuda):
        return "needs CUDA tensors"
    if device_capability(q.device) != 90:
        return f"written for Hopper (sm_90), this is sm_{device_capability(q.device)}"
    return input_reason(do, q, k, v, lse, delta)


def refuse_unsupported(kernel: str, do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       lse: torch.Tensor, delta: torch.Tensor, causal: bool, scale: float) -> None:
    """The ``ValueError`` both launchers raise before anything is built: where :func:`unsupported_reason` names a
    reason (naming ``kernel``, "dK/dV" or "dQ"), or for a ``causal`` that is not a bool or a ``scale`` not a float."""
    reason = unsupported_reason(do, q, k, v, lse, delta)
    if reason is not None:
        raise ValueError(f"the Gluon {kernel} kernel cannot run these inputs: {reason}")
    if not isinstance(causal, bool) or not isinstance(scale, float):
        raise ValueError(f"causal must be a bool and scale a float, got {causal!r}, {scale!r}")


def input_reason(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lse: torch.Tensor,
                 delta: torch.Tensor) -> str | None:
    """The part of :func:`unsupported_reason` that depends on the inputs only, not on the device."""
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or do.shape != q.shape:
        return (f"q, do (B, H, Nq, D) and k, v (B, Hkv, Nk, D) expected, got q {tuple(q.shape)}, do "
                f"{tuple(do.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    batch, n_heads, n_queries, head_dim = q.shape
    if k.shape[0] != batch or k.shape[-1] != head_dim or n_heads % k.shape[1]:
        return f"k, v must be (B, Hkv, Nk, D) with H % Hkv == 0, got q {tuple(q.shape)}, k {tuple(k.shape)}"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"fp16 or bf16 only, got {q.dtype}"
    if any(t.dtype != q.dtype for t in (k, v, do)):
        return f"q, k, v, do must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}, {do.dtype}"
    if head_dim not in HEAD_DIMS:
        return f"head_dim in {HEAD_DIMS} only, got {head_dim}"
    for name, t in (("lse", lse), ("delta", delta)):
        if t.shape != (batch, n_heads, n_queries) or t.dtype != torch.float32 or not t.is_contiguous():
            return f"{name} must be contiguous fp32 (B, H, Nq) = {(batch, n_heads, n_queries)}, got {t.dtype} " \
                   f"{tuple(t.shape)} strides {t.stride()}"
    for name, t in (("do", do), ("q", q), ("k", k), ("v", v)):
        reason = tma_reason(name, t)
        if reason is not None:
            return reason
    return None


def tma_reason(name: str, t: torch.Tensor) -> str | None:
    """Why a TMA descriptor cannot cover ``t`` (None: it can): stride 1 along head_dim, the others and the address
    16-byte aligned."""
    if t.stride(-1) != 1 or any(s * t.element_size() % 16 for s in t.stride()[:-1]) or t.data_ptr() % 16:
        return f"{name} must be contiguous in head_dim with 16-byte aligned strides (TMA), got {t.stride()}"
    return None


if GLUON_AVAILABLE:

    @gluon.jit
    def _consume_kv(WHICH: gl.constexpr, descs, bufs, bars, scalars, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr,
                    HALF_N: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr, SPLIT: gl.constexpr):
        """A consumer warpgroup: keys ``[n0 + WHICH·HALF_N, +HALF_N)``, their dK and dV (HALF_N, HEAD_DIM) fp32 in
        registers over every step, then stored (dK scaled) through K's and V's shared tiles — or, with ``SPLIT`` (the
        program sums over a slice of the group's query heads only), as fp32 partial sums straight from registers."""
        q_desc, do_desc, k_desc, v_desc, dk_desc, dv_desc = descs
        q_ring, do_ring, k_bufs, v_bufs = bufs
        kv_bar, ready, empty = bars
        LSE, DELTA, b, kv_h, n0, n_heads, h_lo, h_hi, n_queries, n_keys, lo, mid_lo, qk_scale, scale, DK_PART, \
            DV_PART, part_row0 = scalars
        offset = n_keys - n_queries  # queries are the last n_queries positions
        # wgmma layouts: Sᵀ, dPᵀ are (HALF_N keys, BLOCK_M queries); dK, dV are (HALF_N, HEAD_DIM); one warpgroup
        st_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                            instr_shape=[16, BLOCK_M, 16])
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                             instr_shape=[16, HEAD_DIM, 16])
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
        col_layout: gl.constexpr = gl.SliceLayout(0, st_layout)  # one value per query column of Sᵀ
        dtype: gl.constexpr = q_desc.dtype

        k_tile = k_bufs.index(WHICH).reshape([HALF_N, HEAD_DIM])
        v_tile = v_bufs.index(WHICH).reshape([HALF_N, HEAD_DIM])
        keys = n0 + WHICH * HALF_N + gl.arange(0, HALF_N, layout=gl.SliceLayout(1, st_layout))  # (HALF_N,)
        cols = gl.arange(0, BLOCK_M, layout=col_layout)  # (BLOCK_M,)
        dk = gl.zeros([HALF_N, HEAD_DIM], gl.float32, layout=acc_layout)
        dv = gl.zeros([HALF_N, HEAD_DIM], gl.float32, layout=acc_layout)
        st_zero = gl.zeros([HALF_N, BLOCK_M], gl.float32, layout=st_layout)

        mbarrier.wait(kv_bar, 0)
        t = 0  # steps so far: ring slot t % NUM_STAGES, its use t // NUM_STAGES
        for h in range(h_lo, h_hi):  # the query heads sharing this kv head (this program's slice of them)
            for m in range(lo, n_queries, BLOCK_M):  # the query blocks that see these keys
                slot = t % NUM_STAGES
                # this step's rows of lse and delta (B, H, Nq), in Sᵀ's column layout: one base pointer, the
                # columns' offsets and bound are the same every step (no per-step vectors of rows or pointers)
                row_base = (b * n_heads + h).to(gl.int64) * n_queries + m
                in_range = cols < n_queries - m
                lse = gl.load(LSE + row_base + cols, mask=in_range, other=float("inf"))
                delta = gl.load(DELTA + row_base + cols, mask=in_range, other=0.0)
                mbarrier.wait(ready.index(slot), (t // NUM_STAGES) & 1)
                q_tile = q_ring.index(slot).reshape([BLOCK_M, HEAD_DIM])
                do_tile = do_ring.index(slot).reshape([BLOCK_M, HEAD_DIM])
                # Sᵀ = K Qᵀ, then Pᵀ; dPᵀ = V dOᵀ is issued only after Pᵀ is computed: with both products in flight
                # (32 registers each) beside dK, dV (128) and the rows' lse, delta (16 each), the registers spill
                s_t = warpgroup_mma(k_tile, q_tile.permute((1, 0)), st_zero, use_acc=False, is_async=True)
                s_t = warpgroup_mma_wait(0, deps=[s_t])
                p_t = gl.exp2(s_t * qk_scale - lse[None, :])  # Pᵀ, recomputed from the saved lse  (HALF_N, BLOCK_M)
                if CAUSAL:
                    if m < mid_lo:  # a query block that crosses this key block's diagonal
                        # key j is seen by query m + c iff j <= m + c + offset, i.e. j − m − offset <= c
                        p_t = gl.where((keys - (m + offset))[:, None] <= cols[None, :], p_t, 0.0)
                dp_t = warpgroup_mma(v_tile, do_tile.permute((1, 0)), st_zero, use_acc=False, is_async=True)
                dp_t = warpgroup_mma_wait(0, deps=[dp_t])
                ds_t = p_t * (dp_t - delta[None, :])  # dSᵀ = Pᵀ ∘ (dPᵀ − delta)  (HALF_N, BLOCK_M)
                p_op = gl.convert_layout(p_t.to(dtype), a_layout)
                ds_op = gl.convert_layout(ds_t.to(dtype), a_layout)
                dv = warpgroup_mma(p_op, do_tile, dv, is_async=True)  # dV += Pᵀ dO  (HALF_N, HEAD_DIM)
                dk = warpgroup_mma(ds_op, q_tile, dk, is_async=True)  # dK += dSᵀ Q  (HALF_N, HEAD_DIM)
                dv, dk, p_op, ds_op = warpgroup_mma_wait(0, deps=[dv, dk, p_op, ds_op])
                mbarrier.arrive(empty.index(slot), count=1)  # this warpgroup has read Q and dO of this slot
                t += 1

        first = n0 + WHICH * HALF_N
        if SPLIT:  # fp32 partial sums (splits, B, Hkv, Nk, D), added on the host: row part_row0 + key, HEAD_DIM wide
            key_rows = first + gl.arange(0, HALF_N, layout=gl.SliceLayout(1, acc_layout))
            dims = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, acc_layout))
            offsets = key_rows[:, None] * HEAD_DIM + dims[None, :]  # within one (split, batch, kv head): < 2^31
            keep = (key_rows[:, None] < n_keys) & (dims[None, :] < HEAD_DIM)
            gl.store(DK_PART + part_row0 * HEAD_DIM + offsets, dk * scale, mask=keep)
            gl.store(DV_PART + part_row0 * HEAD_DIM + offsets, dv, mask=keep)
        else:
            # epilogue: this warpgroup's K and V tiles are no longer read (its products are waited for): they stage
            # dK, dV
            k_tile.store((dk * scale).to(dtype))  # dK = scale · dSᵀ Q
            v_tile.store(dv.to(dtype))
            fence_async_shared()
            tma_store(dk_desc, [b, kv_h, first, 0], k_bufs.index(WHICH))  # rows beyond n_keys are clipped by TMA
            tma_store(dv_desc, [b, kv_h, first, 0], v_bufs.index(WHICH))
            tma.store_wait(0)

    @gluon.jit
    def _first_kv_consumer(descs, bufs, bars, scalars, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr,
                           HALF_N: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr, SPLIT: gl.constexpr):
        _consume_kv(0, descs, bufs, bars, scalars, HEAD_DIM, BLOCK_M, HALF_N, NUM_STAGES, CAUSAL, SPLIT)

    @gluon.jit
    def _second_kv_consumer(descs, bufs, bars, scalars, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr,
                            HALF_N: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr, SPLIT: gl.constexpr):
        _consume_kv(1, descs, bufs, bars, scalars, HEAD_DIM, BLOCK_M, HALF_N, NUM_STAGES, CAUSAL, SPLIT)

    @gluon.jit
    def _produce_q_do(descs, bufs, bars, scalars, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr,
                      HALF_N: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr, SPLIT: gl.constexpr):
        """The producer warp: K's and V's two halves once, then each step's Q and dO tiles into the ring, a slot as
        soon as both consumers have released it (an ``empty`` barrier starts completed: the first round does not
        wait)."""
        q_desc, do_desc, k_desc, v_desc, dk_desc, dv_desc = descs
        q_ring, do_ring, k_bufs, v_bufs = bufs
        kv_bar, ready, empty = bars
        LSE, DELTA, b, kv_h, n0, n_heads, h_lo, h_hi, n_queries, n_keys, lo, mid_lo, qk_scale, scale, DK_PART, \
            DV_PART, part_row0 = scalars
        mbarrier.expect(kv_bar, 2 * k_desc.block_type.nbytes + 2 * v_desc.block_type.nbytes)
        for half in gl.static_range(2):
            tma_load(k_desc, [b, kv_h, n0 + half * HALF_N, 0], kv_bar, k_bufs.index(half))
            tma_load(v_desc, [b, kv_h, n0 + half * HALF_N, 0], kv_bar, v_bufs.index(half))
        t = 0
        for h in range(h_lo, h_hi):  # the same steps as the consumers, in the same order
            for m in range(lo, n_queries, BLOCK_M):
                slot = t % NUM_STAGES
                mbarrier.wait(empty.index(slot), ((t // NUM_STAGES) & 1) ^ 1)
                mbarrier.expect(ready.index(slot), q_desc.block_type.nbytes + do_desc.block_type.nbytes)
                tma_load(q_desc, [b, h, m, 0], ready.index(slot), q_ring.index(slot))
                tma_load(do_desc, [b, h, m, 0], ready.index(slot), do_ring.index(slot))
                t += 1

    @gluon.jit
    def _attn_bwd_kv_hopper_ws(q_desc, do_desc, k_desc, v_desc, dk_desc, dv_desc, LSE, DELTA, DK_PART, DV_PART,
                               n_heads, n_kv_heads, n_queries, n_keys, qk_scale, scale, n_splits, heads_per_split,
                               HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr,
                               SPLIT: gl.constexpr, CONSUMER_REGISTERS: gl.constexpr,
                               PRODUCER_REGISTERS: gl.constexpr, num_warps: gl.constexpr):
        """One program = 2·HALF_N keys of one (batch, kv head) and, of its group's query heads, the
        ``heads_per_split`` of its split (grid axis 1: (batch, kv head) × ``n_splits``; ``SPLIT`` when ``n_splits``
        > 1: dK, dV go to the fp32 partial sums DK_PART, DV_PART ``(n_splits, B, Hkv, Nk, D)``, else through dk_desc,
        dv_desc). Descriptors are 4-D over (B, H, N, D): Q, dO with blocks of BLOCK_M rows, K, V, dK, dV of HALF_N."""
        BLOCK_M: gl.constexpr = q_desc.block_type.shape[2]
        HALF_N: gl.constexpr = k_desc.block_type.shape[2]
        n0 = gl.program_id(0) * (2 * HALF_N)
        batch_kv_head = gl.program_id(1) // n_splits
        split = gl.program_id(1) % n_splits
        b = batch_kv_head // n_kv_heads
        kv_h = batch_kv_head % n_kv_heads
        group = n_heads // n_kv_heads
        h_lo = kv_h * group + split * heads_per_split
        h_hi = gl.minimum(h_lo + heads_per_split, kv_h * group + group)
        part_row0 = (split * (gl.num_programs(1) // n_splits) + batch_kv_head).to(gl.int64) * n_keys
        # the query blocks that see keys [n0, n0 + 2·HALF_N): [lo, mid_lo) cross the diagonal (masked), [mid_lo,
        # n_queries) see every key (as _query_blocks in triton_attention.py; every numerator >= 0)
        lo = 0
        mid_lo = 0
        if CAUSAL:
            offset = n_keys - n_queries
            lo = gl.maximum(n0 - offset, 0) // BLOCK_M * BLOCK_M  # query i sees key n0 once i >= n0 - offset
            mid_lo = gl.minimum(gl.cdiv(gl.maximum(n0 + 2 * HALF_N - 1 - offset, 0), BLOCK_M) * BLOCK_M, n_queries)
            mid_lo = gl.maximum(mid_lo, lo)

        dtype: gl.constexpr = q_desc.dtype
        q_ring = gl.allocate_shared_memory(dtype, [NUM_STAGES] + q_desc.block_type.shape, q_desc.layout)
        do_ring = gl.allocate_shared_memory(dtype, [NUM_STAGES] + do_desc.block_type.shape, do_desc.layout)
        k_bufs = gl.allocate_shared_memory(dtype, [2] + k_desc.block_type.shape, k_desc.layout)
        v_bufs = gl.allocate_shared_memory(dtype, [2] + v_desc.block_type.shape, v_desc.layout)
        kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(kv_bar, count=1)
        for i in gl.static_range(NUM_STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=2)  # released by both consumers

        descs = (q_desc, do_desc, k_desc, v_desc, dk_desc, dv_desc)
        bufs = (q_ring, do_ring, k_bufs, v_bufs)
        bars = (kv_bar, ready, empty)
        scalars = (LSE, DELTA, b, kv_h, n0, n_heads, h_lo, h_hi, n_queries, n_keys, lo, mid_lo, qk_scale, scale,
                   DK_PART, DV_PART, part_row0)
        # the argument tuples are written out: a tuple held in a variable would turn its constexprs into values
        gl.warp_specialize([
            (_first_kv_consumer, (descs, bufs, bars, scalars, HEAD_DIM, BLOCK_M, HALF_N, NUM_STAGES, CAUSAL, SPLIT)),
            (_second_kv_consumer, (descs, bufs, bars, scalars, HEAD_DIM, BLOCK_M, HALF_N, NUM_STAGES, CAUSAL, SPLIT)),
            (_produce_q_do, (descs, bufs, bars, scalars, HEAD_DIM, BLOCK_M, HALF_N, NUM_STAGES, CAUSAL, SPLIT)),
        ], [4, 1], [CONSUMER_REGISTERS, PRODUCER_REGISTERS])
        mbarrier.invalidate(kv_bar)
        for i in gl.static_range(NUM_STAGES):
            mbarrier.invalidate(ready.index(i))
            mbarrier.invalidate(empty.index(i))


    # ---------------------------------------------------------------------------------------------------------------
    # dQ: one program = 2·HALF_M query rows of one (batch, head), walking over the key blocks they see
    # ---------------------------------------------------------------------------------------------------------------

    @gluon.jit
    def _consume_q(WHICH: gl.constexpr, descs, bufs, bars, scalars, HEAD_DIM: gl.constexpr, HALF_M: gl.constexpr,
                   BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr, FUSED_DELTA: gl.constexpr):
        """A consumer warpgroup of the dQ kernel: query rows ``[m0 + WHICH·HALF_M, +HALF_M)``, their dQ (HALF_M,
        HEAD_DIM) fp32 in registers over every key block, then stored (scaled) through the rows' own Q tile."""
        q_desc, do_desc, k_desc, v_desc, dq_desc, o_desc = descs
        q_bufs, do_bufs, k_ring, v_ring, o_bufs = bufs
        qdo_bar, k_ready, v_ready, kv_empty = bars
        LSE, DELTA, b, h, kv_h, m0, n_queries, n_keys, n_blocks, first_masked, qk_scale, scale, batch_head = scalars
        offset = n_keys - n_queries  # queries are the last n_queries positions
        # wgmma layouts: S, dP are (HALF_M, BLOCK_N); dQ is (HALF_M, HEAD_DIM); one warpgroup
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                             instr_shape=[16, HEAD_DIM, 16])
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
        row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)  # one value per query row of S
        dtype: gl.constexpr = q_desc.dtype

        first_row = m0 + WHICH * HALF_M
        q_tile = q_bufs.index(WHICH).reshape([HALF_M, HEAD_DIM])
        do_tile = do_bufs.index(WHICH).reshape([HALF_M, HEAD_DIM])
        rows = first_row + gl.arange(0, HALF_M, layout=row_layout)  # (HALF_M,)
        cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))  # (BLOCK_N,)
        in_range = rows < n_queries  # rows beyond n_queries: lse = +inf, delta = 0, so P = dS = 0
        lse = gl.load(LSE + batch_head.to(gl.int64) * n_queries + rows, mask=in_range, other=float("inf"))
        if FUSED_DELTA:  # delta = rowsum(dO ∘ O) from the rows' own tiles, stored for the dK/dV kernel after this one
            mbarrier.wait(qdo_bar, 0)
            TPW_D: gl.constexpr = HEAD_DIM // 8  # threads along D, 8 elements each
            rows_layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 // TPW_D, TPW_D], [4, 1], [1, 0])
            o_rows = o_bufs.index(WHICH).reshape([HALF_M, HEAD_DIM]).load(rows_layout)
            do_rows = do_tile.load(rows_layout)
            delta = gl.convert_layout(gl.sum(o_rows.to(gl.float32) * do_rows.to(gl.float32), axis=1), row_layout)
            gl.store(DELTA + batch_head.to(gl.int64) * n_queries + rows, delta, mask=in_range)
        else:
            delta = gl.load(DELTA + batch_head.to(gl.int64) * n_queries + rows, mask=in_range, other=0.0)
            mbarrier.wait(qdo_bar, 0)
        dq = gl.zeros([HALF_M, HEAD_DIM], gl.float32, layout=acc_layout)
        s_zero = gl.zeros([HALF_M, BLOCK_N], gl.float32, layout=s_layout)

        for j in range(n_blocks):
            slot = j % NUM_STAGES
            phase = (j // NUM_STAGES) & 1
            k_tile = k_ring.index(slot).reshape([BLOCK_N, HEAD_DIM])
            v_tile = v_ring.index(slot).reshape([BLOCK_N, HEAD_DIM])
            # S = Q K_jᵀ and dP = dO V_jᵀ both issued (neither needs the other); wait for S only, so that P's
            # exponentials run while dP is still on the tensor cores
            mbarrier.wait(k_ready.index(slot), phase)
            s = warpgroup_mma(q_tile, k_tile.permute((1, 0)), s_zero, use_acc=False, is_async=True)
            mbarrier.wait(v_ready.index(slot), phase)
            dp = warpgroup_mma(do_tile, v_tile.permute((1, 0)), s_zero, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(1, deps=[s])
            p = gl.exp2(s * qk_scale - lse[:, None])  # P recomputed from the saved lse  (HALF_M, BLOCK_N)
            if j >= first_masked:  # the causal diagonal or the last, partial key block
                keys = j * BLOCK_N + cols
                ok = keys[None, :] < n_keys
                if CAUSAL:
                    ok = ok & (keys[None, :] <= rows[:, None] + offset)
                p = gl.where(ok, p, 0.0)
            dp = warpgroup_mma_wait(0, deps=[dp])
            ds = p * (dp - delta[:, None])  # dS = P ∘ (dP − delta)  (HALF_M, BLOCK_N)
            ds_op = gl.convert_layout(ds.to(dtype), a_layout)
            dq = warpgroup_mma(ds_op, k_tile, dq, is_async=True)  # dQ += dS K_j  (HALF_M, HEAD_DIM)
            dq, ds_op = warpgroup_mma_wait(0, deps=[dq, ds_op])
            mbarrier.arrive(kv_empty.index(slot), count=1)  # this warpgroup has read K_j and V_j

        # epilogue: this warpgroup's Q rows are no longer read (its products are waited for): they stage dQ
        q_tile.store((dq * scale).to(dtype))  # dQ = scale · dS K
        fence_async_shared()
        tma_store(dq_desc, [b, h, first_row, 0], q_bufs.index(WHICH))  # rows beyond n_queries are clipped by TMA
        tma.store_wait(0)

    @gluon.jit
    def _first_q_consumer(descs, bufs, bars, scalars, HEAD_DIM: gl.constexpr, HALF_M: gl.constexpr,
                          BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr,
                          FUSED_DELTA: gl.constexpr):
        _consume_q(0, descs, bufs, bars, scalars, HEAD_DIM, HALF_M, BLOCK_N, NUM_STAGES, CAUSAL, FUSED_DELTA)

    @gluon.jit
    def _second_q_consumer(descs, bufs, bars, scalars, HEAD_DIM: gl.constexpr, HALF_M: gl.constexpr,
                           BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr,
                           FUSED_DELTA: gl.constexpr):
        _consume_q(1, descs, bufs, bars, scalars, HEAD_DIM, HALF_M, BLOCK_N, NUM_STAGES, CAUSAL, FUSED_DELTA)

    @gluon.jit
    def _produce_k_v(descs, bufs, bars, scalars, HEAD_DIM: gl.constexpr, HALF_M: gl.constexpr,
                     BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr,
                     FUSED_DELTA: gl.constexpr):
        """The dQ kernel's producer warp: Q's and dO's two halves once (and O's, with ``FUSED_DELTA``), then every K
        and V block into the rings, a slot as soon as both consumers have released it (``kv_empty`` starts
        completed: the first round does not wait)."""
        q_desc, do_desc, k_desc, v_desc, dq_desc, o_desc = descs
        q_bufs, do_bufs, k_ring, v_ring, o_bufs = bufs
        qdo_bar, k_ready, v_ready, kv_empty = bars
        LSE, DELTA, b, h, kv_h, m0, n_queries, n_keys, n_blocks, first_masked, qk_scale, scale, batch_head = scalars
        mbarrier.expect(qdo_bar, 2 * q_desc.block_type.nbytes + 2 * do_desc.block_type.nbytes
                        + FUSED_DELTA * 2 * o_desc.block_type.nbytes)
        for half in gl.static_range(2):
            tma_load(q_desc, [b, h, m0 + half * HALF_M, 0], qdo_bar, q_bufs.index(half))
            tma_load(do_desc, [b, h, m0 + half * HALF_M, 0], qdo_bar, do_bufs.index(half))
            if FUSED_DELTA:
                tma_load(o_desc, [b, h, m0 + half * HALF_M, 0], qdo_bar, o_bufs.index(half))
        for j in range(n_blocks):
            slot = j % NUM_STAGES
            mbarrier.wait(kv_empty.index(slot), ((j // NUM_STAGES) & 1) ^ 1)
            mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)
            tma_load(k_desc, [b, kv_h, j * BLOCK_N, 0], k_ready.index(slot), k_ring.index(slot))
            mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
            tma_load(v_desc, [b, kv_h, j * BLOCK_N, 0], v_ready.index(slot), v_ring.index(slot))

    @gluon.jit
    def _attn_bwd_q_hopper_ws(q_desc, do_desc, k_desc, v_desc, dq_desc, o_desc, LSE, DELTA,
                              n_heads, group, n_queries, n_keys, qk_scale, scale,
                              HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
                              CAUSAL: gl.constexpr, FUSED_DELTA: gl.constexpr, CONSUMER_REGISTERS: gl.constexpr,
                              PRODUCER_REGISTERS: gl.constexpr, num_warps: gl.constexpr):
        """One program = 2·HALF_M queries of one (batch, head), the key blocks they see as the forward's
        (``_query_tile``: causal programs longest first). Descriptors are 4-D over (B, H, N, D): Q, dO, dQ (and O,
        read with ``FUSED_DELTA``, which computes DELTA here instead of reading it) with blocks of HALF_M rows, K, V
        of BLOCK_N."""
        HALF_M: gl.constexpr = q_desc.block_type.shape[2]
        batch_head, b, h, kv_h, m0, n_blocks, first_masked = _query_tile(n_heads, group, n_queries, n_keys, 2 * HALF_M,
                                                                         BLOCK_N, CAUSAL)
        dtype: gl.constexpr = q_desc.dtype
        q_bufs = gl.allocate_shared_memory(dtype, [2] + q_desc.block_type.shape, q_desc.layout)
        do_bufs = gl.allocate_shared_memory(dtype, [2] + do_desc.block_type.shape, do_desc.layout)
        k_ring = gl.allocate_shared_memory(dtype, [NUM_STAGES] + k_desc.block_type.shape, k_desc.layout)
        v_ring = gl.allocate_shared_memory(dtype, [NUM_STAGES] + v_desc.block_type.shape, v_desc.layout)
        if FUSED_DELTA:  # O's two halves (2 × 16 KiB at D=128)
            o_bufs = gl.allocate_shared_memory(dtype, [2] + o_desc.block_type.shape, o_desc.layout)
        else:
            o_bufs = q_bufs  # not read
        qdo_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        kv_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(qdo_bar, count=1)
        for i in gl.static_range(NUM_STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(kv_empty.index(i), count=2)  # released by both consumers

        descs = (q_desc, do_desc, k_desc, v_desc, dq_desc, o_desc)
        bufs = (q_bufs, do_bufs, k_ring, v_ring, o_bufs)
        bars = (qdo_bar, k_ready, v_ready, kv_empty)
        scalars = (LSE, DELTA, b, h, kv_h, m0, n_queries, n_keys, n_blocks, first_masked, qk_scale, scale, batch_head)
        # the argument tuples are written out: a tuple held in a variable would turn its constexprs into values
        gl.warp_specialize([
            (_first_q_consumer, (descs, bufs, bars, scalars, HEAD_DIM, HALF_M, BLOCK_N, NUM_STAGES, CAUSAL,
                                 FUSED_DELTA)),
            (_second_q_consumer, (descs, bufs, bars, scalars, HEAD_DIM, HALF_M, BLOCK_N, NUM_STAGES, CAUSAL,
                                  FUSED_DELTA)),
            (_produce_k_v, (descs, bufs, bars, scalars, HEAD_DIM, HALF_M, BLOCK_N, NUM_STAGES, CAUSAL, FUSED_DELTA)),
        ], [4, 1], [CONSUMER_REGISTERS, PRODUCER_REGISTERS])
        mbarrier.invalidate(qdo_bar)
        for i in gl.static_range(NUM_STAGES):
            mbarrier.invalidate(k_ready.index(i))
            mbarrier.invalidate(v_ready.index(i))
            mbarrier.invalidate(kv_empty.index(i))


def flash_attention_backward_kv_hopper(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                       lse: torch.Tensor, delta: torch.Tensor, causal: bool, scale: float,
                                       tile: dict | None = None, kv_splits: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """dK, dV ``(B, Hkv, Nk, D)`` in k's dtype, contiguous, summed over each kv head's group of query heads.

    do, q ``(B, H, Nq, D)``; k, v ``(B, Hkv, Nk, D)`` (any strides TMA takes: a (B, N, H, D) view is fine);
    lse ``(B, H, Nq)`` fp32, the forward's base-2 log-sum-exp (``P = 2^(S·scale·log2 e − lse)``, +inf for a row
    that sees no key); delta ``(B, H, Nq)`` fp32, ``rowsum(dO ∘ O)``. ``causal``: queries aligned to the end of
    the keys. ``tile``: ``{"BLOCK_M": .., "NUM_STAGES": ..}``, query rows per step and (Q, dO) ring slots (default
    :func:`kv_tile_for`). ``kv_splits``: the group's query heads are split over that many programs per
    key block (``triton_attention.kv_splits_for``: when B·Hkv·Nk/128 programs would leave SMs idle), each writing fp32
    partial sums ``(kv_splits, B, Hkv, Nk, D)`` that are then added (one reduction per tensor). Raises ValueError
    where :func:`unsupported_reason` names a reason, or for a ``kv_splits`` outside 1 … group.
    """
    refuse_unsupported("dK/dV", do, q, k, v, lse, delta, causal, scale)
    group = q.shape[1] // k.shape[1]
    check_int_range("kv_splits", kv_splits, 1, group + 1)
    batch, n_heads, n_queries, head_dim = q.shape
    n_kv_heads, n_keys = k.shape[1], k.shape[2]
    if (n_keys + BLOCK_N) * head_dim >= 2 ** 31:  # the partial sums' 32-bit row offsets (never at real lengths)
        kv_splits = 1
    kv_splits, heads_per_split = split_query_heads(group, kv_splits)
    tile = dict(kv_tile_for(head_dim, causal, kv_splits > 1), **(tile or {}))
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)  # (B, Hkv, Nk, D)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)  # (B, Hkv, Nk, D)
    if dk.numel() == 0:
        return dk, dv
    if n_queries == 0:
        return dk.zero_(), dv.zero_()
    if kv_splits > 1:
        dk_part = torch.empty((kv_splits, *k.shape), dtype=torch.float32, device=k.device)
        dv_part = torch.empty((kv_splits, *v.shape), dtype=torch.float32, device=v.device)
    else:
        dk_part = dv_part = lse  # not read: the program stores through dk_desc, dv_desc
    grid = (cdiv(n_keys, BLOCK_N), batch * n_kv_heads * kv_splits)
    _attn_bwd_kv_hopper_ws[grid](
        _descriptor(q, tile["BLOCK_M"]), _descriptor(do, tile["BLOCK_M"]), _descriptor(k, HALF_N),
        _descriptor(v, HALF_N), _descriptor(dk, HALF_N), _descriptor(dv, HALF_N), lse, delta, dk_part, dv_part,
        n_heads, n_kv_heads, n_queries, n_keys, scale * LOG2_E, scale, kv_splits, heads_per_split,
        HEAD_DIM=head_dim, NUM_STAGES=tile["NUM_STAGES"], CAUSAL=causal, SPLIT=kv_splits > 1,
        CONSUMER_REGISTERS=WS_CONSUMER_REGISTERS, PRODUCER_REGISTERS=WS_PRODUCER_REGISTERS, num_warps=4,
        maxnreg=WS_MAX_REGISTERS)
    if kv_splits > 1:
        dk.copy_(dk_part.sum(0))  # fp32 sums, rounded once to k's dtype (sum(out=dk) would round each part first)
        dv.copy_(dv_part.sum(0))
    return dk, dv


def faster_than_teaching(kernel: str, head_dim: int, n_keys: int, causal: bool) -> bool:
    """Whether the Gluon ``kernel`` (``"dkdv"`` or ``"dq"``) beats the teaching one at this shape on an H200: as the
    forward (:func:`attention_lab.flash.gluon_attention.faster_than_teaching`: not at D=64 with at most 1k keys),
    except that the dK/dV kernel with 128 query rows per step (:func:`kv_tile_for`) wins there too when not causal
    (1.208 against 1.297 ms at N=1k, ``flash_gluon_backward_probe_d64.json``). Causal at D=64 with 1k keys the
    teaching kernels were 11-13 % faster (dK/dV 0.785 against 0.887 ms, dQ 0.512 against 0.589)."""
    if gluon_faster_than_teaching(head_dim, n_keys):
        return True
    return kernel == "dkdv" and not causal


def kv_tile_for(head_dim: int, causal: bool, split: bool) -> dict:
    """The dK/dV kernel's query rows per step ``BLOCK_M`` and (Q, dO) ring slots ``NUM_STAGES``: 64 rows in 2 slots,
    except at D=64 not causal and not split, where 128 rows halve the steps, the barriers and the lse/delta loads per
    query row. There the products are half as long as at D=128 and the per-step overhead weighs twice as much; on an
    H200 (``flash_gluon_backward_probe_d64.json``, B·N = 32k, H=32) 128 rows took 1.208 ms against 1.393 at N=1k and
    4.100 against 4.502 at 4k, and beat the teaching kernel (1.297, 4.869). It is the one Gluon kernel that spills:
    ptxas keeps Sᵀ, dPᵀ (64 fp32 registers each), dK, dV (32 each) and the 128 rows' lse, delta live together and
    stores 52 B per thread to local memory under Triton 3.6 (28 B under 3.9) — measured faster with them. Causal it
    spills 3-4× more and was no faster (0.908 against 0.887 ms at 1k), so causal and split programs keep 64 rows."""
    wide = head_dim == 64 and not causal and not split
    return {"BLOCK_M": 128 if wide else BLOCK_M, "NUM_STAGES": NUM_STAGES}


def q_tile_for(head_dim: int) -> dict:
    """The dQ kernel's key block and ring depth: ``BLOCK_N`` keys per step, ``NUM_STAGES`` (K, V) slots. At D=128
    two (64, 64) fp32 products in flight beside dQ (64 × 128 fp32) fit the consumers' 240 registers; 128 keys would
    not. Shared memory: Q, dO 2 × 32 KiB + 2 × (K + V) 64 KiB = 128 KiB at D=128, 96 KiB at D=64. On an H200
    (``flash_gluon_backward_probe.json``) 64×2 is the fastest D=128 tile or within 1 % of it; at D=64
    (``..._d64.json``) 128 keys in 3 slots timed 0–6 % faster at 4k keys, but has not been checked for correctness on
    a GPU yet, so 128×2 (checked) stays."""
    return {"BLOCK_N": 64 if head_dim > 64 else 128, "NUM_STAGES": 2}


def flash_attention_backward_q_hopper(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                      lse: torch.Tensor, delta: torch.Tensor, causal: bool, scale: float,
                                      tile: dict | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """dQ ``(B, H, Nq, D)`` in q's dtype, contiguous: ``scale · dS K`` with ``dS = P ∘ (dO Vᵀ − delta)``.

    Same inputs as :func:`flash_attention_backward_kv_hopper`. ``tile``: ``{"BLOCK_N": .., "NUM_STAGES": ..}``
    (default :func:`q_tile_for`). ``out``: the forward's O ``(B, H, Nq, D)``; given, each program computes delta =
    rowsum(dO ∘ O) of its rows from tiles it loads anyway (dO) or beside them (O) and writes it into ``delta``
    (whatever ``delta`` held is not read), so that no separate delta kernel runs before it — the dK/dV kernel, which
    needs delta too, then runs after it. Raises ValueError where :func:`unsupported_reason` names a reason, or for
    an ``out`` not shaped like q or not TMA-readable.
    """
    refuse_unsupported("dQ", do, q, k, v, lse, delta, causal, scale)
    if out is not None:
        if not (isinstance(out, torch.Tensor) and out.shape == q.shape and out.dtype == q.dtype
                and out.device == q.device):
            reason = (f"out must be shaped like q {tuple(q.shape)} with q's dtype {q.dtype}, got "
                      f"{getattr(out, 'dtype', type(out).__name__)} {tuple(getattr(out, 'shape', ()))}")
        else:
            reason = tma_reason("out", out)
        if reason is not None:
            raise ValueError(f"the Gluon dQ kernel cannot run these inputs: {reason}")
    batch, n_heads, n_queries, head_dim = q.shape
    n_kv_heads, n_keys = k.shape[1], k.shape[2]
    tile = dict(q_tile_for(head_dim), **(tile or {}))
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # (B, H, Nq, D)
    if dq.numel() == 0:
        return dq
    if n_keys == 0:
        if out is not None:
            delta.copy_((do.float() * out.float()).sum(-1))
        return dq.zero_()
    grid = (cdiv(n_queries, 2 * Q_HALF_M), batch * n_heads)
    q_rows = _descriptor(q, Q_HALF_M)
    _attn_bwd_q_hopper_ws[grid](
        q_rows, _descriptor(do, Q_HALF_M), _descriptor(k, tile["BLOCK_N"]), _descriptor(v, tile["BLOCK_N"]),
        _descriptor(dq, Q_HALF_M), q_rows if out is None else _descriptor(out, Q_HALF_M), lse, delta,
        n_heads, n_heads // n_kv_heads, n_queries, n_keys, scale * LOG2_E, scale,
        HEAD_DIM=head_dim, BLOCK_N=tile["BLOCK_N"], NUM_STAGES=tile["NUM_STAGES"], CAUSAL=causal,
        FUSED_DELTA=out is not None, CONSUMER_REGISTERS=WS_CONSUMER_REGISTERS, PRODUCER_REGISTERS=WS_PRODUCER_REGISTERS,
        num_warps=4, maxnreg=WS_MAX_REGISTERS)
    return dq


def compile_jobs(capability: int) -> list:
    """What CI compiles (:mod:`attention_lab.kernels.compile_check`): on sm_90, at each head dim, causal and not, in
    bf16, the warp-specialised dK/dV kernel with :data:`NUM_STAGES` ring slots; on other architectures nothing. The
    TMA descriptors' types are read from descriptors built over small CPU tensors."""
    from attention_lab.kernels.compile_check import CompileJob

    if capability != 90 or not GLUON_AVAILABLE:
        return []
    from triton.runtime.jit import mangle_type

    jobs = []
    for head_dim in HEAD_DIMS:
        rows = torch.empty(1, 1, BLOCK_N, head_dim, dtype=torch.bfloat16)
        kv_type = mangle_type(_descriptor(rows, HALF_N))
        for causal, split in ((False, False), (True, False), (True, True)):
            kv_tile = kv_tile_for(head_dim, causal, split)
            q_type = mangle_type(_descriptor(rows, kv_tile["BLOCK_M"]))
            types = {"q_desc": q_type, "do_desc": q_type, "k_desc": kv_type, "v_desc": kv_type, "dk_desc": kv_type,
                     "dv_desc": kv_type, "LSE": "*fp32", "DELTA": "*fp32", "DK_PART": "*fp32", "DV_PART": "*fp32",
                     "qk_scale": "fp32", "scale": "fp32"}
            constexprs = dict(HEAD_DIM=head_dim, NUM_STAGES=kv_tile["NUM_STAGES"], CAUSAL=causal, SPLIT=split,
                              CONSUMER_REGISTERS=WS_CONSUMER_REGISTERS, PRODUCER_REGISTERS=WS_PRODUCER_REGISTERS,
                              num_warps=4)
            jobs.append(CompileJob(family="gluon_backward", kernel="dkdv_ws" + "+causal" * causal + "+split" * split,
                                   fn=_attn_bwd_kv_hopper_ws, constexprs=constexprs, types=types, num_warps=4,
                                   num_stages=1, config=dict(BLOCK_N=BLOCK_N, **kv_tile),
                                   head_dim=head_dim, maxnreg=WS_MAX_REGISTERS))
            if split:
                continue
            tile = q_tile_for(head_dim)
            q_rows_type = mangle_type(_descriptor(rows, Q_HALF_M))
            k_type = mangle_type(_descriptor(rows, tile["BLOCK_N"]))
            q_types = {"q_desc": q_rows_type, "do_desc": q_rows_type, "dq_desc": q_rows_type, "o_desc": q_rows_type,
                       "k_desc": k_type, "v_desc": k_type, "LSE": "*fp32", "DELTA": "*fp32", "qk_scale": "fp32",
                       "scale": "fp32"}
            for fused_delta in (False, True) if causal else (False,):
                q_constexprs = dict(HEAD_DIM=head_dim, BLOCK_N=tile["BLOCK_N"], NUM_STAGES=tile["NUM_STAGES"],
                                    CAUSAL=causal, FUSED_DELTA=fused_delta, CONSUMER_REGISTERS=WS_CONSUMER_REGISTERS,
                                    PRODUCER_REGISTERS=WS_PRODUCER_REGISTERS, num_warps=4)
                jobs.append(CompileJob(family="gluon_backward",
                                       kernel="dq_ws" + "+causal" * causal + "+delta" * fused_delta,
                                       fn=_attn_bwd_q_hopper_ws, constexprs=q_constexprs, types=q_types, num_warps=4,
                                       num_stages=1, config=dict(BLOCK_M=2 * Q_HALF_M, **tile), head_dim=head_dim,
                                       maxnreg=WS_MAX_REGISTERS))
    return jobs
