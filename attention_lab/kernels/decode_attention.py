"""Triton decode attention (chapter 11): one query token per sequence against a paged or contiguous KV cache.

Decoding is memory-bound: each step reads every cached key and value once and does ~2 FLOPs per
byte. The kernel therefore aims at one thing, reading the cache once at full bandwidth:

* **GQA-aware.** One program handles one KV head and *all* ``G = H / Hkv`` query heads that share
  it, so a loaded key/value tile serves the whole group (MQA: all H heads) instead of being read G
  times. The group's queries form the rows of a small matrix, padded to 16 for ``tl.dot``.
* **Split-K.** Batch × KV heads alone may not fill the GPU (MQA at B=32 gives 32 programs for
  132 SMs), so the context is cut into partitions, each program computes an online-softmax partial
  result over one partition, and the partials are merged (:mod:`attention_lab.kernels.split_k`) — by
  default in the same launch: the program of a (sequence, KV head) that stores its partial last, as an
  atomic counter tells, merges them all (``FUSED_MERGE``); a second merge kernel is the alternative.
  :func:`choose_partition_size` picks the split, :func:`decode_config` the tile, both from sweeps
  on an H100 and an H200.
* **Paged or contiguous.** With ``PAGED`` each token's row is found through the block table
  (``block = table[n // PAGE_SIZE]``, ``row = n % PAGE_SIZE``); without it the cache is an ordinary
  ``(B, Hkv, N, D)`` tensor. Everything else is shared.

Online softmax per program (the FlashAttention recurrence, :func:`attention_lab.kernels.common.online_softmax_update`;
scores in log2 units so ``exp2`` is used):
    m_new = max(m_i, rowmax(S))         S = q Kᵀ · scale · log2(e)
    alpha = 2^(m_i - m_new)             rescales what was accumulated so far
    P     = 2^(S - m_new)
    l_i   = alpha · l_i + rowsum(P)
    acc   = alpha · acc + P V
Each partition p stores its normalised output o_p = acc_p / l_p with m_p and l_p; merging them:
    m = max_p m_p,   w_p = 2^(m_p - m) · l_p,   out = Σ_p w_p o_p / Σ_p w_p.

Under ``TRITON_INTERPRET=1`` (set by the tests and the notebook when there is no GPU) the same
kernels run on CPU tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from attention_lab.kernels.optional_triton import next_power_of_2, require_triton, tl, triton

from attention_lab.attention import check_scale
from attention_lab.validation import check_float_dtype, check_int_dtype, check_rank, is_integer
from attention_lab.caches.paged import check_paged_inputs
from attention_lab.kernels.common import LOG2_E, device_facts, dot_precision, head_offset, online_softmax_update
from attention_lab.kernels.interpreter import interpreting, refuse_interpreted_bfloat16
from attention_lab.kernels.split_k import (arrival_counters, arrive, merge_compile_job, merge_partitions, merge_rows,
                                           partial_buffers)


@triton.jit
def _decode_partition_kernel(
    Q, K, V, BLOCK_TABLES, CONTEXT_LENS,  # inputs
    OUT, M_PART, L_PART, O_PART,  # outputs: final (one partition) or per-partition results
    COUNTERS,  # (B · Hkv,) int32 arrival counters of the fused merge, zero between launches
    stride_qb, stride_qh,  # q (B, H, D)
    stride_kb, stride_kt, stride_kh,  # K: paged (blocks, PAGE_SIZE, Hkv, D) or contiguous (B, N, Hkv, D) strides
    stride_vb, stride_vt, stride_vh,  # V: same meaning as K
    stride_tb,  # block table row
    stride_ob, stride_oh,  # out (B, H, D)
    stride_pb, stride_ph, stride_pp,  # per-partition outputs O_PART (B, H, P, D), in the output dtype
    stride_mb, stride_mh,  # per-partition maxima M_PART and denominators L_PART (B, H, P), fp32, last dim contiguous
    qk_scale,  # softmax scale · log2(e)
    partition_size,  # tokens per partition (a multiple of TILE_N)
    n_keys,  # every sequence's length when not HAS_LENS
    GROUP: tl.constexpr,  # query heads per KV head (H / Hkv)
    GROUP_PAD: tl.constexpr,  # GROUP rounded up to a power of two >= 16 (rows of the tl.dot)
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,  # HEAD_DIM rounded up to a power of two
    PAGE_SIZE: tl.constexpr,  # tokens per KV block (paged only)
    TILE_N: tl.constexpr,  # keys per loop iteration
    PAGED: tl.constexpr,
    SINGLE_PARTITION: tl.constexpr,  # True: write the normalised output directly, no reduction step
    FUSED_MERGE: tl.constexpr,  # split-K: the last program of a (sequence, KV head) merges (else a merge kernel)
    PARTS_PAD: tl.constexpr,  # number of partitions rounded up to a power of two (the fused merge)
    HAS_LENS: tl.constexpr,  # lengths from CONTEXT_LENS (else every sequence has n_keys tokens)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (exact fp32 products), "tf32" (ignored) for 16-bit
    PREFETCH_BLOCKS: tl.constexpr,  # paged: load each tile's block numbers one tile ahead
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    if HAS_LENS:
        length = tl.load(CONTEXT_LENS + seq)
    else:
        length = n_keys
    start = part * partition_size

    first_head = kv_head * GROUP
    rows = tl.arange(0, GROUP_PAD)  # query heads of this group, padded, counted from its first
    row_ok = rows < GROUP
    d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = d < HEAD_DIM
    out_rows = OUT + head_offset(seq, first_head, stride_ob, stride_oh) + rows[:, None] * stride_oh  # (GROUP_PAD, 1)
    out_mask = row_ok[:, None] & d_ok[None, :]
    if start >= length:  # this partition is past the end of a shorter sequence: nothing to do
        if start == 0:  # an empty sequence: its output is zeros (no other program writes it)
            tl.store(out_rows + d[None, :], tl.zeros((GROUP_PAD, HEAD_DIM_PAD), dtype=OUT.dtype.element_ty),
                     mask=out_mask)
        return
    end = tl.minimum(start + partition_size, length)
    # 64-bit offset of the first head, 32-bit row offsets from it (2-D int64 offsets cost registers)
    q_rows = Q + head_offset(seq, first_head, stride_qb, stride_qh) + rows[:, None] * stride_qh  # (GROUP_PAD, 1)
    q = tl.load(q_rows + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (GROUP_PAD, HEAD_DIM_PAD)

    m_i = tl.full((GROUP_PAD,), float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros((GROUP_PAD,), dtype=tl.float32)  # running softmax denominator
    acc = tl.zeros((GROUP_PAD, HEAD_DIM_PAD), dtype=tl.float32)  # running numerator P V
    # 64-bit scalar products: in a contiguous (B, Hkv, N, D) cache kv_head · stride_kh reaches Hkv·N·D, past 2^31
    k_head = K + kv_head.to(tl.int64) * stride_kh
    v_head = V + kv_head.to(tl.int64) * stride_vh
    table_row = BLOCK_TABLES + seq.to(tl.int64) * stride_tb  # this sequence's block table (paged only)

    if PAGED and PREFETCH_BLOCKS:  # the first tile's block numbers: each later tile's are loaded one tile ahead
        n_first = start + tl.arange(0, TILE_N)
        next_block = tl.load(table_row + n_first // PAGE_SIZE, mask=n_first < end, other=0)
    for tile_start in range(start, end, TILE_N):
        n = tile_start + tl.arange(0, TILE_N)  # token positions of this tile
        n_ok = n < end
        if PAGED:
            if PREFETCH_BLOCKS:
                # The K/V addresses wait on the block numbers: load the next tile's now, so that the table
                # lookup of tile i+1 is in flight while tile i is read, instead of before each tile's reads.
                block = next_block.to(tl.int64)
                n_next = n + TILE_N
                next_block = tl.load(table_row + n_next // PAGE_SIZE, mask=n_next < end, other=0)
            else:
                block = tl.load(table_row + n // PAGE_SIZE, mask=n_ok, other=0).to(tl.int64)
            k_rows = block * stride_kb + (n % PAGE_SIZE) * stride_kt  # (TILE_N,)
            v_rows = block * stride_vb + (n % PAGE_SIZE) * stride_vt
        else:
            k_rows = seq.to(tl.int64) * stride_kb + n.to(tl.int64) * stride_kt
            v_rows = seq.to(tl.int64) * stride_vb + n.to(tl.int64) * stride_vt
        if HEAD_DIM == HEAD_DIM_PAD:
            kv_mask = n_ok[:, None]  # a mask constant along D keeps the loads 16 bytes wide
        else:
            kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_head + k_rows[:, None] + d[None, :], mask=kv_mask, other=0.0)  # (TILE_N, D)
        v = tl.load(v_head + v_rows[:, None] + d[None, :], mask=kv_mask, other=0.0)  # (TILE_N, D)

        # S = q Kᵀ · scale · log2 e: (GROUP_PAD, TILE_N)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        scores = tl.where(n_ok[None, :], scores, float("-inf"))
        m_i, l_i, acc = online_softmax_update(m_i, l_i, acc, scores, v, DOT_PRECISION)  # acc += P V

    out = acc / l_i[:, None]  # o = acc / l_i: the partition saw at least one key, so l_i > 0
    if SINGLE_PARTITION:
        tl.store(out_rows + d[None, :], out.to(OUT.dtype.element_ty), mask=out_mask)
    else:  # normalised, so it is safe in 16 bits: half the bytes of an fp32 acc to write and read back
        o_first = head_offset(seq, first_head, stride_pb, stride_ph) + rows * stride_ph  # partition 0 (GROUP_PAD,)
        stat_first = head_offset(seq, first_head, stride_mb, stride_mh) + rows * stride_mh  # (GROUP_PAD,)
        tl.store(O_PART + o_first[:, None] + part * stride_pp + d[None, :], out.to(O_PART.dtype.element_ty),
                 mask=out_mask)
        tl.store(M_PART + stat_first + part, m_i, mask=row_ok)
        tl.store(L_PART + stat_first + part, l_i, mask=row_ok)
        if FUSED_MERGE:  # the last of this (sequence, KV head)'s partitions to arrive merges them all
            n_used = tl.cdiv(length, partition_size)  # partitions this sequence really used
            if arrive(COUNTERS + seq * tl.num_programs(1) + kv_head, n_used):
                merged = merge_rows(M_PART, L_PART, O_PART, stat_first, o_first, n_used, row_ok, d, d_ok, stride_pp,
                                    GROUP_PAD, HEAD_DIM_PAD, PARTS_PAD)
                tl.store(out_rows + d[None, :], merged.to(OUT.dtype.element_ty), mask=out_mask)


# ---------------------------------------------------------------------- configuration
# Paged: load each tile's block numbers one tile ahead? None chooses (:func:`prefetch_block_ids`); True/False force it.
PREFETCH_BLOCK_IDS: bool | None = None


def prefetch_block_ids(programs: int, n_sms: int) -> bool:
    """Whether the paged kernel should load the next tile's block numbers while it reads the current tile.

    The K/V addresses of a tile wait on its block numbers, a dependent load. With several programs per SM the
    other programs hide that wait; with at most one (MQA: B · partitions programs) nothing does. Measured on an
    H200 (B=32, H=32, D=128, bf16, blocks of 16; ``attention_lab/results/paged_decode.json``): loading ahead made MQA
    at 4k 21 % faster (0.0357 -> 0.0282 ms, 128 programs on 132 SMs) and every shape with more programs than SMs
    5-12 % slower (the extra loop-carried tile of block numbers), so it is used only up to one program per SM.
    """
    if PREFETCH_BLOCK_IDS is not None:
        return PREFETCH_BLOCK_IDS
    return programs <= n_sms


@dataclass(frozen=True)
class DecodeConfig:
    """Launch parameters: keys per loop iteration, warps per program, software-pipelining depth."""

    tile_n: int
    num_warps: int
    num_stages: int


def decode_config(head_dim: int, element_size: int, capability: int | None) -> DecodeConfig:
    """The tile for a device of compute ``capability`` (sm_90 -> 90; None: the interpreter).

    K and V tiles of ``tile_n × head_dim`` are kept ``num_stages`` deep in shared memory, so Ampere/Ada get
    64 keys and 3 stages, and Hopper (227 KiB) 128 keys, which an H100 sweep found best or within 2% of the
    best for bf16 at D=128 (attention_lab/results/decode_sweep.json). On a T4 (sm_75) Triton runs ``tl.dot``
    on the FMA units and pipelines nothing: 16 keys per step, one stage, 8 warps (16 in fp32), so that no
    value spills from registers at any head_dim up to 128 and query group up to 64 (``ptxas -v``,
    ``tests/test_ch10_t4_spills.py``). Every choice is compiled and its shared memory checked
    per architecture by :mod:`attention_lab.kernels.compile_check` (``tests/test_ch11_decode_compile.py``)."""
    if capability is None:
        return DecodeConfig(tile_n=32, num_warps=4, num_stages=2)
    if capability < 80:  # a T4: FMA products, no pipelining, no spills
        return DecodeConfig(tile_n=16, num_warps=8 if element_size <= 2 else 16, num_stages=1)
    if head_dim * element_size > 256:  # D > 128 in 16-bit (or fp32 at D=128): a smaller tile
        return DecodeConfig(tile_n=32, num_warps=4, num_stages=3)
    if capability >= 90:
        return DecodeConfig(tile_n=128, num_warps=4, num_stages=3)
    return DecodeConfig(tile_n=64, num_warps=4, num_stages=3)


MAX_PARTITION = 4096  # the longest partition measured; at 32k context it was the best or within 1%


def choose_partition_size(max_len: int, programs: int, group: int, tile_n: int, n_sms: int,
                          max_extra_traffic: float | None = None, fused_merge: bool = False) -> int:
    """Tokens per split-K partition: as long as possible, as long as there is work for every SM.

    ``programs`` = B · Hkv before splitting. Splitting costs: every partition writes one output
    per query head that the reduction reads back (``G · P / N`` of the KV bytes for P partitions of
    N tokens and a group of G query heads) plus a second kernel. An H100 sweep (B=32, H=32, D=128:
    attention_lab/results/decode_sweep.json) found the fastest split to be the fewest partitions
    giving about one program per SM, each at most :data:`MAX_PARTITION` tokens; many short
    partitions (16 programs per SM) were 2–10% slower. The extra traffic is capped at
    ``max_extra_traffic`` (default 1/16), and a partition is never shorter than 4 tiles.

    With ``fused_merge`` (the merge in the same launch, :mod:`attention_lab.kernels.split_k`) the partial
    results are read back from L2 moments after they are written and no second kernel is launched, so
    short contexts may be cut finer: extra traffic up to 1/4 and partitions of 2 tiles. On an H200
    (attention_lab/results/decode_gqa.json, its sweep) MQA at B=32 and 1k context went from 13.7 µs
    (2 partitions of 512) to 12.0 µs (4 of 256), SDPA 12.3 µs; every other shape there keeps its split.
    """
    if max_len <= 0:
        return tile_n
    if max_extra_traffic is None:
        max_extra_traffic = 1 / 4 if fused_merge else 1 / 16
    min_tiles = 2 if fused_merge else 4
    parts = max(math.ceil(0.9 * n_sms / max(programs, 1)), math.ceil(max_len / MAX_PARTITION))
    parts = max(1, min(parts, int(max_extra_traffic * max_len / group)))
    size = max(math.ceil(max_len / parts), min_tiles * tile_n)
    return math.ceil(size / tile_n) * tile_n  # a whole number of tiles


def launch_plan(batch: int, n_kv_heads: int, n_heads: int, head_dim: int, max_len: int, dtype: torch.dtype,
                device: torch.device | str, fused_merge: bool = True) -> tuple[DecodeConfig, int, int]:
    """The tile config, partition size and number of partitions the kernels use for this problem on ``device``."""
    facts = device_facts(device)
    config = decode_config(head_dim, torch.finfo(dtype).bits // 8, facts.capability)
    partition = choose_partition_size(max_len, batch * n_kv_heads, n_heads // n_kv_heads, config.tile_n, facts.n_sms,
                                      fused_merge=fused_merge)
    return config, partition, max(1, math.ceil(max_len / partition))


# ---------------------------------------------------------------------- launch
def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_strides: tuple[int, int, int],
            v_strides: tuple[int, int, int], block_tables: torch.Tensor | None, context_lens: torch.Tensor,
            n_kv_heads: int, page_size: int, max_len: int, scale: float | None,
            partition_size: int | None, config: DecodeConfig | None, fused_merge: bool = True) -> torch.Tensor:
    require_triton("the Triton decode kernel")
    if q.device.type != "cuda" and not interpreting():
        raise ValueError("the Triton decode kernel needs a CUDA GPU (or TRITON_INTERPRET=1 set before importing "
                         "attention_lab.kernels.decode_attention, to run it on the CPU); paged_attention_reference works anywhere")
    refuse_interpreted_bfloat16(q.dtype, "the Triton decode kernel")
    batch, n_heads, _, head_dim = q.shape
    group = n_heads // n_kv_heads
    planned_config, planned_partition, _ = launch_plan(batch, n_kv_heads, n_heads, head_dim, max_len, q.dtype, q.device,
                                                       fused_merge)
    if config is None:
        config = planned_config
        partition_size = planned_partition if partition_size is None else partition_size
    elif partition_size is None:
        partition_size = choose_partition_size(max_len, batch * n_kv_heads, group, config.tile_n,
                                               device_facts(q.device).n_sms, fused_merge=fused_merge)
    if not is_integer(partition_size) or partition_size < 1 or partition_size % config.tile_n != 0:
        raise ValueError(f"partition_size must be a positive multiple of tile_n={config.tile_n}, got {partition_size}")
    n_parts = max(1, math.ceil(max_len / partition_size))
    n_sms = device_facts(q.device).n_sms
    scale = check_scale(scale, head_dim)

    q3 = q.reshape(batch, n_heads, head_dim)  # (B, H, D)
    if q3.stride(-1) != 1:
        q3 = q3.contiguous()
    out = torch.empty_like(q3)  # (B, H, D); an empty sequence's program 0 writes its zeros
    single = n_parts == 1
    fused = fused_merge and not single
    has_lens = context_lens is not None
    partials = partial_buffers(batch, n_heads, n_parts, head_dim, out)
    counters = arrival_counters(batch * n_kv_heads, q.device) if fused else out  # unused unless fused
    lens = context_lens if has_lens else out  # unused without lengths
    tables = block_tables if block_tables is not None else lens  # unused when not paged
    _decode_partition_kernel[(batch, n_kv_heads, n_parts)](
        q3, k, v, tables, lens,
        out, partials.m_part, partials.l_part, partials.o_part, counters,
        q3.stride(0), q3.stride(1),
        *k_strides, *v_strides,
        tables.stride(0),
        out.stride(0), out.stride(1),
        *partials.o_strides, *partials.m_strides,
        scale * LOG2_E, partition_size, max_len,
        GROUP=group, GROUP_PAD=max(16, next_power_of_2(group)), HEAD_DIM=head_dim,
        HEAD_DIM_PAD=max(16, next_power_of_2(head_dim)), PAGE_SIZE=page_size, TILE_N=config.tile_n,
        PAGED=block_tables is not None, SINGLE_PARTITION=single, FUSED_MERGE=fused,
        PARTS_PAD=next_power_of_2(n_parts), HAS_LENS=has_lens, DOT_PRECISION=dot_precision(q.dtype),
        PREFETCH_BLOCKS=block_tables is not None and prefetch_block_ids(batch * n_kv_heads * n_parts, n_sms),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if not single and not fused:
        merge_partitions(partials, context_lens if has_lens else max_len, out, partition_size, n_parts)
    return out.view(batch, n_heads, 1, head_dim)  # (B, H, 1, D)


def paged_decode(q: torch.Tensor, key_blocks: torch.Tensor, value_blocks: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor, scale: float | None = None, partition_size: int | None = None,
                 config: DecodeConfig | None = None, max_len: int | None = None, *,
                 fused_merge: bool = True) -> torch.Tensor:
    """Decode attention through block tables (same contract as :func:`attention_lab.caches.paged.paged_attention_reference`).

    Args:
        q: ``(B, H, 1, D)`` fp16/bf16, or fp32 (exact fp32 dot products, slower).
        key_blocks, value_blocks: ``(num_blocks, block_size, Hkv, D)``, the last dim contiguous.
        block_tables: ``(B, max_blocks)`` int32. context_lens: ``(B,)`` int32, may differ per sequence.
        partition_size: split-K partition in tokens (default: chosen to fill the GPU).
        max_len: ``context_lens.max()`` (or more, up to ``max_blocks · block_size``) if already known: saves
            the device-to-host syncs (of this and of the range checks of ``context_lens`` and the block
            tables), so the call can be captured in a CUDA graph. It sizes the partitions, so one smaller
            than a length would silently cut that sequence short (one partition) or merge partitions never
            written (split-K): it is checked against ``context_lens`` wherever that costs no sync, i.e.
            whenever ``context_lens`` is on the CPU. The one case it cannot be checked is the CUDA-graph
            path itself, ``context_lens`` on the GPU with ``max_len`` given: there the caller vouches for
            ``max_len >= context_lens.max()`` and for the values of ``context_lens`` and ``block_tables``.
        fused_merge: with split-K, merge the partitions in the same launch (the last program of a
            (sequence, KV head) merges; the default) or, with False, in a second kernel (kept to compare).

    Returns:
        ``(B, H, 1, D)`` in q's dtype; a sequence of length 0 gets zeros.
    """
    on_gpu = context_lens.is_cuda if isinstance(context_lens, torch.Tensor) else False
    check_paged_inputs(q, key_blocks, value_blocks, block_tables, context_lens,
                       check_values=max_len is None or not on_gpu)  # reading back CPU tensors costs no sync
    if max_len is not None:
        capacity = block_tables.shape[1] * key_blocks.shape[1]
        if not is_integer(max_len) or not 0 <= max_len <= capacity:
            raise ValueError(f"max_len must be an integer in [0, max_blocks · block_size = {capacity}] (at least "
                             f"context_lens.max()), got {max_len!r}")
        if not on_gpu and max_len < int(context_lens.max()):  # free on the CPU; the CUDA-graph path cannot check
            raise ValueError(f"max_len must be at least context_lens.max() = {int(context_lens.max())} (the longest "
                             f"sequence), got {max_len}")
    for name, t in (("key_blocks", key_blocks), ("value_blocks", value_blocks)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in head_dim (stride 1), got strides {t.stride()}")
    block_tables = block_tables.to(torch.int32).contiguous()
    context_lens = context_lens.to(torch.int32).contiguous()
    max_len = int(context_lens.max()) if max_len is None else int(max_len)
    return _launch(q, key_blocks, value_blocks, key_blocks.stride()[:3], value_blocks.stride()[:3], block_tables,
                   context_lens, key_blocks.shape[2], key_blocks.shape[1], max_len, scale, partition_size, config,
                   fused_merge)


def contiguous_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, context_lens: torch.Tensor | None = None,
                      scale: float | None = None, partition_size: int | None = None,
                      config: DecodeConfig | None = None, *, fused_merge: bool = True) -> torch.Tensor:
    """Grouped decode attention on an ordinary cache: q ``(B, H, 1, D)``, k and v ``(B, Hkv, N, D)``.

    ``context_lens`` ``(B,)`` (default: all N) lets sequences use fewer of the N cached positions.
    The same kernel as :func:`paged_decode` with the block-table lookup switched off; each KV head
    is read once for its whole query group; ``fused_merge`` as in :func:`paged_decode`. Returns ``(B, H, 1, D)``.
    """
    check_rank("q", q, 4, "(batch, n_heads, 1, head_dim)")
    check_rank("k", k, 4, "(batch, n_kv_heads, n_keys, head_dim)")
    batch, n_heads, n_queries, head_dim = q.shape
    if n_queries != 1:
        raise ValueError(f"q must hold one query token per sequence, shape (B, H, 1, D), got {tuple(q.shape)}")
    if batch < 1 or n_heads < 1 or head_dim < 1 or k.shape[1] < 1:
        raise ValueError(f"q (B, H, 1, D) and k (B, Hkv, N, D) need B, H, Hkv, D >= 1, got q {tuple(q.shape)} and "
                         f"k {tuple(k.shape)}")
    check_float_dtype("q", q)
    if tuple(v.shape) != tuple(k.shape) or k.shape[0] != batch or k.shape[-1] != head_dim:
        raise ValueError(f"k and v must both have shape (B={batch}, Hkv, N, D={head_dim}), got "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    if n_heads % k.shape[1] != 0:
        raise ValueError(f"n_kv_heads={k.shape[1]} (k.shape[1]) must divide n_heads={n_heads}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        k, v = k.contiguous(), v.contiguous()
    n_keys = k.shape[2]
    if context_lens is None:
        max_len = n_keys  # every sequence holds all N: no lengths tensor to fill (and no launch to fill it)
    else:
        check_rank("context_lens", context_lens, 1, "(batch,)")
        check_int_dtype("context_lens", context_lens)  # 2.5 or True is not a length
        if context_lens.shape[0] != batch or int(context_lens.max()) > n_keys or int(context_lens.min()) < 0:
            raise ValueError(f"context_lens must have shape ({batch},) with values in [0, {n_keys}], "
                             f"got {context_lens.tolist()}")
        context_lens = context_lens.to(device=q.device, dtype=torch.int32).contiguous()
        max_len = int(context_lens.max())
    # (B, Hkv, N, D) strides in the kernel's order: per sequence, per token, per head.
    k_strides = (k.stride(0), k.stride(2), k.stride(1))
    v_strides = (v.stride(0), v.stride(2), v.stride(1))
    return _launch(q, k, v, k_strides, v_strides, None, context_lens, k.shape[1], 1, max_len, scale,
                   partition_size, config, fused_merge)


# ---------------------------------------------------------------------- compile check
def compile_jobs(capability: int) -> list:
    """What CI compiles for sm_``capability`` (:mod:`attention_lab.kernels.compile_check`), in fp16.

    The paged and the contiguous kernel with the tile :func:`decode_config` picks there, at head_dim 128
    and a query group of 32 (MQA with 32 heads): the largest tiles they meet; and the split-K merge.
    """
    from attention_lab.kernels.compile_check import CompileJob

    head_dim, group = 128, 32
    config = decode_config(head_dim, 2, capability)
    types = {"Q": "*fp16", "K": "*fp16", "V": "*fp16", "OUT": "*fp16", "O_PART": "*fp16", "BLOCK_TABLES": "*i32",
             "CONTEXT_LENS": "*i32", "M_PART": "*fp32", "L_PART": "*fp32", "COUNTERS": "*i32", "qk_scale": "fp32"}
    jobs = []
    for paged in (True, False):  # split-K with the fused merge of up to 64 partitions: the largest variant
        constexprs = dict(GROUP=group, GROUP_PAD=group, HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim, PAGE_SIZE=16,
                          TILE_N=config.tile_n, PAGED=paged, SINGLE_PARTITION=False, FUSED_MERGE=True, PARTS_PAD=64,
                          HAS_LENS=paged, DOT_PRECISION="tf32", PREFETCH_BLOCKS=paged)
        jobs.append(CompileJob(family="decode", kernel="paged" if paged else "contiguous", fn=_decode_partition_kernel,
                               constexprs=constexprs, types=types, num_warps=config.num_warps,
                               num_stages=config.num_stages, config={"TILE_N": config.tile_n},
                               head_dim=head_dim, aligned=("partition_size",)))
    jobs.append(merge_compile_job("decode", head_dim))
    return jobs
