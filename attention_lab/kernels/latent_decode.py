"""Triton kernel for MLA's absorbed decode step (chapter 12): all heads attend over the cached latent rows.

After absorption (:mod:`attention_lab.mla`) one decode step is: for each of the ``H`` heads, a query
``[q̃ ; q^R]`` of width ``d_c + d_h^R`` against the cached rows ``[c_j ; k^R_j]``, softmax, and the
weighted sum of the latents ``c_j`` (the first ``d_c`` entries of the same rows). Every head reads
the *same* rows, and SDPA's kernels parallelise over query rows, not over keys — with the heads
folded into the query axis a whole batch gets only a handful of programs. This kernel instead:

* **reads each cached row once for a block of heads** — a program holds ``BLOCK_H`` heads' queries as the
  rows of a ``tl.dot``, and the loaded latent tile serves as the keys' content part AND as the values;
* **splits the context** (split-K) so that batch × head blocks × partitions fill the GPU; each program
  keeps the online-softmax state of its partition and the partitions are merged by the same kernel as
  chapter 11's (:func:`attention_lab.kernels.split_k.merge_partitions`).

Online softmax per program (:func:`attention_lab.kernels.common.online_softmax_update`; scores in log2 units,
so ``exp2``):
    S     = (q̃ Cᵀ + q^R K^Rᵀ) · scale · log2(e)      C: latent tile, K^R: rotary-key tile
    m_new = max(m_i, rowmax(S));  alpha = 2^(m_i - m_new);  P = 2^(S - m_new)
    l_i   = alpha · l_i + rowsum(P);  acc = alpha · acc + P C

Under ``TRITON_INTERPRET=1`` (tests on a CPU) the kernel runs on CPU tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from attention_lab.kernels.optional_triton import next_power_of_2, require_triton, tl, triton

from attention_lab.validation import check_float_dtype, check_rank, check_real, is_integer
from attention_lab.kernels.common import LOG2_E, device_facts, dot_precision, head_offset, online_softmax_update
from attention_lab.kernels.interpreter import interpreting, refuse_interpreted_bfloat16
from attention_lab.kernels.split_k import merge_compile_job, merge_partitions, partial_buffers


@triton.jit
def _latent_decode_kernel(
    Q, ROWS, OUT, M_PART, L_PART, O_PART,
    stride_qb, stride_qh,  # q (B, H, d_c + d_R), last dim contiguous
    stride_rb, stride_rn,  # cached rows (B, N, d_c + d_R), last dim contiguous
    stride_ob, stride_oh,  # out (B, H, d_c)
    stride_pb, stride_ph, stride_pp,  # per-partition outputs O_PART (B, H, P, d_c)
    stride_mb, stride_mh,  # per-partition maxima M_PART and denominators L_PART (B, H, P), fp32
    n_heads, n_keys,
    qk_scale,  # softmax scale · log2(e)
    partition_size,  # keys per partition (a multiple of TILE_N)
    LATENT: tl.constexpr,  # d_c
    LATENT_PAD: tl.constexpr,  # d_c rounded up to a power of two >= 16
    ROPE: tl.constexpr,  # d_h^R
    ROPE_PAD: tl.constexpr,  # d_h^R rounded up to a power of two >= 16
    BLOCK_H: tl.constexpr,  # heads per program (rows of the tl.dot)
    TILE_N: tl.constexpr,  # keys per loop iteration
    SINGLE_PARTITION: tl.constexpr,  # True: write the normalised output directly, no reduction step
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs, "tf32" (ignored) for 16-bit ones
    KEYS_FIRST: tl.constexpr = tl.constexpr(False),  # scores as (keys × heads) = C q̃ᵀ: the queries are the
    # dot's second operand, which wgmma reads from shared memory (so they do not take registers)
):
    head_block = tl.program_id(0)  # fastest: the programs reading the same rows run together (L2 reuse)
    part = tl.program_id(1)
    seq = tl.program_id(2)
    start = part * partition_size
    end = tl.minimum(start + partition_size, n_keys)

    first_head = head_block * BLOCK_H
    rows = tl.arange(0, BLOCK_H)  # this program's heads, counted from its first
    heads = first_head + rows
    head_ok = heads < n_heads
    c = tl.arange(0, LATENT_PAD)
    c_ok = c < LATENT
    r = tl.arange(0, ROPE_PAD)
    r_ok = r < ROPE
    # 64-bit offset of the first head, 32-bit row offsets from it: 2-D int64 offsets cost ~60 registers here
    q_rows = Q + head_offset(seq, first_head, stride_qb, stride_qh) + rows[:, None] * stride_qh  # (BLOCK_H, 1)
    q_latent = tl.load(q_rows + c[None, :], mask=head_ok[:, None] & c_ok[None, :], other=0.0)  # (BLOCK_H, LATENT_PAD)
    q_rope = tl.load(q_rows + LATENT + r[None, :], mask=head_ok[:, None] & r_ok[None, :], other=0.0)  # (BLOCK_H, ROPE_PAD)

    m_i = tl.full((BLOCK_H,), float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros((BLOCK_H,), dtype=tl.float32)  # running softmax denominator
    acc = tl.zeros((BLOCK_H, LATENT_PAD), dtype=tl.float32)  # running numerator P C

    for tile_start in range(start, end, TILE_N):
        n = tile_start + tl.arange(0, TILE_N)
        n_ok = n < end
        row = seq.to(tl.int64) * stride_rb + n.to(tl.int64) * stride_rn  # (TILE_N,)
        if LATENT == LATENT_PAD:
            latent_mask = n_ok[:, None]  # constant along d_c: keeps the loads 16 bytes wide
        else:
            latent_mask = n_ok[:, None] & c_ok[None, :]
        latent = tl.load(ROWS + row[:, None] + c[None, :], mask=latent_mask, other=0.0)  # (TILE_N, LATENT_PAD)
        rope_key = tl.load(ROWS + row[:, None] + LATENT + r[None, :], mask=n_ok[:, None] & r_ok[None, :],
                           other=0.0)  # (TILE_N, ROPE_PAD)
        if KEYS_FIRST:  # Sᵀ = C q̃ᵀ + K^R q^Rᵀ: (TILE_N, BLOCK_H), then transposed in registers
            scores_t = tl.dot(latent, tl.trans(q_latent), input_precision=DOT_PRECISION)
            scores_t += tl.dot(rope_key, tl.trans(q_rope), input_precision=DOT_PRECISION)
            scores = tl.trans(scores_t)
        else:
            scores = tl.dot(q_latent, tl.trans(latent), input_precision=DOT_PRECISION)
            scores += tl.dot(q_rope, tl.trans(rope_key), input_precision=DOT_PRECISION)
        scores = scores * qk_scale  # S = (q̃ Cᵀ + q^R K^Rᵀ)·scale·log2 e: (BLOCK_H, TILE_N)
        scores = tl.where(n_ok[None, :], scores, float("-inf"))
        m_i, l_i, acc = online_softmax_update(m_i, l_i, acc, scores, latent, DOT_PRECISION)  # acc += P C

    out_mask = head_ok[:, None] & c_ok[None, :]
    out = acc / l_i[:, None]  # every partition holds at least one key, so l_i > 0
    if SINGLE_PARTITION:
        out_rows = OUT + head_offset(seq, first_head, stride_ob, stride_oh) + rows[:, None] * stride_oh  # (BLOCK_H, 1)
        tl.store(out_rows + c[None, :], out.to(OUT.dtype.element_ty), mask=out_mask)
    else:
        base = head_offset(seq, first_head, stride_pb, stride_ph) + rows * stride_ph + part * stride_pp  # (BLOCK_H,)
        tl.store(O_PART + base[:, None] + c[None, :], out.to(O_PART.dtype.element_ty), mask=out_mask)
        stat = head_offset(seq, first_head, stride_mb, stride_mh) + rows * stride_mh + part  # (BLOCK_H,)
        tl.store(M_PART + stat, m_i, mask=head_ok)
        tl.store(L_PART + stat, l_i, mask=head_ok)


@dataclass(frozen=True)
class LatentDecodeConfig:
    """Launch parameters: heads per program, keys per loop iteration, warps, pipelining depth, score layout."""

    block_h: int
    tile_n: int
    num_warps: int
    num_stages: int
    keys_first: bool = False  # scores computed as (keys × heads): the queries stay in shared memory


def latent_decode_config(capability: int | None) -> LatentDecodeConfig:
    """The tile for a device of compute ``capability`` (sm_90 -> 90; ``None``: the interpreter, which takes any tile).

    A latent tile is ``tile_n × d_c`` (32 × 512 bf16 = 32 KiB at DeepSeek-V2's size); the kernel also
    keeps the queries and a second layout of the tile (it is used as keys and as values) in shared
    memory: 55 KiB on sm_90 for 16 heads, 32 keys and 2 stages. A T4 (sm_75, 64 KiB) does not fit even 16 keys
    at d_c = 512 (68 KiB), so the kernel needs sm_80 or newer. 16 heads per program keep the
    ``16 × d_c`` fp32 accumulator in registers.

    Hopper (sm_90) gets 64 heads per program and 8 warps: each latent tile read from memory then serves
    4× more heads, and a 64-row ``tl.dot`` is what ``wgmma`` (Hopper's warpgroup matrix instruction) needs;
    with 16 rows Triton falls back to ``mma.sync``. Its ``64 × d_c`` fp32 accumulator is 128 registers a
    thread over 8 warps, so the queries must not take registers too: with ``keys_first`` the scores are
    computed as ``C q̃ᵀ`` (keys × heads), the queries being the operand ``wgmma`` reads from shared memory
    (ptxas: 0 bytes spilled, against 320 with the queries first). ``P C`` runs on ``wgmma`` (m64n256);
    the 32-key score product stays ``mma.sync``. Three stages (148 KiB of shared memory) measured best on an
    H200 from 4k to 32k (B=4, 128 heads: 0.312 ms at 32k against 0.379 with two stages and 0.487 with the
    16-head tile; attention_lab/results/mla_kernel_sweep.json). :mod:`attention_lab.kernels.compile_check` compiles the choice
    for sm_80, sm_89 and sm_90 and checks its shared memory (``tests/test_ch12_mla.py``)."""
    if capability is not None and capability < 80:
        raise ValueError(f"the Triton latent decode kernel needs compute capability 8.0 or newer (its tile does not fit "
                         f"the shared memory of sm_{capability}); use triton_decode=False there")
    if capability is not None and capability >= 90:
        return LatentDecodeConfig(block_h=64, tile_n=32, num_warps=8, num_stages=3, keys_first=True)
    return LatentDecodeConfig(block_h=16, tile_n=32, num_warps=4, num_stages=2)


def latent_decode(q: torch.Tensor, rows: torch.Tensor, latent_dim: int, scale: float,
                  partition_size: int | None = None, config: LatentDecodeConfig | None = None) -> torch.Tensor:
    """One decode step of absorbed MLA: ``softmax(q · rowsᵀ · scale) · rows[..., :latent_dim]`` per head.

    Args:
        q: absorbed queries ``(B, H, d_c + d_R)`` (``[W^UKᵀ q^C ; q^R]`` per head), last dim contiguous.
        rows: the cached rows ``(B, N, d_c + d_R)`` (:class:`attention_lab.mla.LatentCache`), last dim contiguous.
        latent_dim: ``d_c``; the value of row j is its first ``d_c`` entries.
        scale: the softmax scale, ``1/√(d_h + d_h^R)`` for MLA.
        partition_size: keys per split-K partition (default: enough partitions to fill the GPU once).
        config: the tile (default: :func:`latent_decode_config` of the device; another one for tuning).

    Returns:
        ``(B, H, d_c)`` in q's dtype: each head's weighted sum of latents.
    """
    check_rank("q", q, 3, "(batch, n_heads, latent_dim + rope_dim)")
    check_rank("rows", rows, 3, "(batch, n_keys, latent_dim + rope_dim)")
    require_triton("the Triton latent decode kernel")
    if q.device.type != "cuda" and not interpreting():
        raise ValueError("the Triton latent decode kernel needs a CUDA GPU (or TRITON_INTERPRET=1 set before "
                         "importing attention_lab.kernels.latent_decode); the 'absorbed' path without it works anywhere")
    batch, n_heads, width = q.shape
    if batch < 1 or n_heads < 1:
        raise ValueError(f"q must have shape (batch, n_heads, latent_dim + rope_dim) with batch >= 1 and n_heads >= 1, "
                         f"got {tuple(q.shape)}")
    check_float_dtype("q", q)
    if rows.shape[0] != batch or rows.shape[2] != width or not is_integer(latent_dim) or not 0 < latent_dim <= width:
        raise ValueError(f"rows must have shape (B={batch}, N, {width}) like q {tuple(q.shape)} with "
                         f"latent_dim an integer in [1, {width}], got rows {tuple(rows.shape)}, latent_dim={latent_dim!r}")
    if rows.dtype != q.dtype:
        raise ValueError(f"q and rows must share one dtype, got {q.dtype} and {rows.dtype}")
    refuse_interpreted_bfloat16(q.dtype, "the Triton latent decode kernel")
    scale = check_real("scale", scale, minimum=0.0, strict=True)  # no default: MLA's is 1/√(d_h + d_h^R)
    if partition_size is not None and not is_integer(partition_size):
        raise ValueError(f"partition_size must be a positive integer multiple of the kernel's tile or None, "
                         f"got {partition_size!r}")
    if rows.shape[1] == 0:  # no cached row: every head sees no key and gets zeros (DESIGN.md §3)
        return q.new_zeros(batch, n_heads, latent_dim)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    n_keys = rows.shape[1]
    facts = device_facts(q.device)
    config = latent_decode_config(facts.capability) if config is None else config
    head_blocks = math.ceil(n_heads / config.block_h)
    if partition_size is None:  # one wave: batch × head blocks × partitions ≈ SMs, partitions of >= 4 tiles
        parts = max(1, min(math.ceil(facts.n_sms / (batch * head_blocks)), math.ceil(n_keys / (4 * config.tile_n))))
        partition_size = math.ceil(math.ceil(n_keys / parts) / config.tile_n) * config.tile_n
    if partition_size < 1 or partition_size % config.tile_n:
        raise ValueError(f"partition_size must be a positive multiple of tile_n={config.tile_n}, got {partition_size}")
    n_parts = max(1, math.ceil(n_keys / partition_size))
    rope_dim = width - latent_dim
    out = torch.empty(batch, n_heads, latent_dim, device=q.device, dtype=q.dtype)  # (B, H, d_c)
    single = n_parts == 1
    partials = partial_buffers(batch, n_heads, n_parts, latent_dim, out)
    _latent_decode_kernel[(head_blocks, n_parts, batch)](
        q, rows, out, partials.m_part, partials.l_part, partials.o_part,
        q.stride(0), q.stride(1), rows.stride(0), rows.stride(1), out.stride(0), out.stride(1),
        *partials.o_strides, *partials.m_strides, n_heads, n_keys, scale * LOG2_E, partition_size,
        LATENT=latent_dim, LATENT_PAD=max(16, next_power_of_2(latent_dim)),
        ROPE=rope_dim, ROPE_PAD=max(16, next_power_of_2(rope_dim)),
        BLOCK_H=config.block_h, TILE_N=config.tile_n, SINGLE_PARTITION=single,
        DOT_PRECISION=dot_precision(q.dtype), KEYS_FIRST=config.keys_first,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if not single:
        merge_partitions(partials, n_keys, out, partition_size, n_parts)  # every sequence has n_keys rows
    return out


def compile_jobs(capability: int) -> list:
    """What CI compiles for sm_``capability`` (:mod:`attention_lab.kernels.compile_check`), in fp16.

    The latent kernel with the tile :func:`latent_decode_config` picks, at DeepSeek-V2's sizes (d_c = 512,
    d_R = 64), and the split-K merge of its 512-wide outputs; on a GPU the kernel refuses (sm_75), a skipped row.
    """
    from attention_lab.kernels.compile_check import CompileJob

    latent, rope = 512, 64
    try:
        config = latent_decode_config(capability)
    except ValueError as refused:
        return [CompileJob(family="latent", kernel="latent", fn=None, constexprs={}, types={}, num_warps=4,
                           num_stages=2, head_dim=latent, skipped=str(refused))]
    constexprs = dict(LATENT=latent, LATENT_PAD=latent, ROPE=rope, ROPE_PAD=rope, BLOCK_H=config.block_h,
                      TILE_N=config.tile_n, SINGLE_PARTITION=False, DOT_PRECISION="tf32", KEYS_FIRST=config.keys_first)
    types = {"Q": "*fp16", "ROWS": "*fp16", "OUT": "*fp16", "O_PART": "*fp16", "M_PART": "*fp32", "L_PART": "*fp32",
             "qk_scale": "fp32"}
    return [CompileJob(family="latent", kernel="latent", fn=_latent_decode_kernel, constexprs=constexprs, types=types,
                       num_warps=config.num_warps, num_stages=config.num_stages,
                       config={"BLOCK_H": config.block_h, "TILE_N": config.tile_n, "KEYS_FIRST": config.keys_first},
                       head_dim=latent,
                       aligned=("partition_size",)),
            merge_compile_job("latent", latent)]
