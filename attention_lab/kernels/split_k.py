"""Split-K for decode kernels: per-partition scratch buffers and the kernel that merges the partitions.

One decode step has too few query rows to fill a GPU (MQA at batch 32 makes 32 programs for 132 SMs),
so the decode kernels (:mod:`.decode_attention`, :mod:`.latent_decode`) cut the context into
partitions. Program ``p`` runs the online softmax over its partition only and stores its normalised
output ``o_p = acc_p / l_p`` with the partition's max ``m_p`` and sum ``l_p`` (the buffers of
:func:`partial_buffers`); :func:`merge_partitions` then combines them per (sequence, head):

    m = max_p m_p,   w_p = 2^(m_p - m) · l_p,   out = Σ_p w_p o_p / Σ_p w_p.

A partition past the end of a shorter sequence writes nothing; the merge counts only the partitions
``cdiv(length, partition_size)`` a sequence really used, and an empty sequence gets zeros.

The merge can run in a second kernel (:func:`merge_kernel`), or inside the partition kernel itself
(:func:`merge_rows`, :func:`arrive`): each program, after storing its partial result, takes a ticket
from an atomic counter of its (sequence, head block); the program that draws the last ticket knows
every other partition has been stored, merges them and sets the counter back to zero. One launch
instead of two, and the partial results are read back while they are still in L2. The counters live in
:func:`arrival_counters`, one zeroed buffer per device and stream that every launch leaves zeroed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from attention_lab.kernels.optional_triton import next_power_of_2, tl, triton

from attention_lab.kernels.common import head_offset

MERGE_CHUNK = 16  # partitions merged per loop iteration of the merge kernel
FUSED_MERGE_CHUNK: tl.constexpr = tl.constexpr(4)  # partitions whose outputs the fused merge loads at once
_COUNTERS: dict = {}  # (device, stream) -> int32 arrival counters, all zero between launches


class PartialBuffers(NamedTuple):
    """Split-K scratch: what each partition leaves for the merge."""

    o_part: torch.Tensor  # (B, H, P, width) normalised partition outputs, in the output's dtype
    m_part: torch.Tensor  # (B, H, P) fp32 partition maxima (log2 units)
    l_part: torch.Tensor  # (B, H, P) fp32 partition sums of 2^(s - m_p)
    o_strides: tuple[int, int, int]  # o_part's strides over (B, H, P)
    m_strides: tuple[int, int]  # m_part's and l_part's strides over (B, H); P is contiguous


def partial_buffers(batch: int, n_heads: int, n_parts: int, width: int, out: torch.Tensor) -> PartialBuffers:
    """Scratch for ``n_parts`` partitions of a ``(B, H, width)`` output ``out``.

    With one partition nothing is allocated: the kernel writes ``out`` directly, and the buffers are
    placeholders (``out`` itself, zero strides) that it never touches.
    """
    if n_parts == 1:
        return PartialBuffers(out, out, out, (0, 0, 0), (0, 0))  # unused
    o_part = torch.empty(batch, n_heads, n_parts, width, device=out.device, dtype=out.dtype)
    m_part = torch.empty(batch, n_heads, n_parts, device=out.device, dtype=torch.float32)
    l_part = torch.empty(batch, n_heads, n_parts, device=out.device, dtype=torch.float32)
    return PartialBuffers(o_part, m_part, l_part, o_part.stride()[:3], m_part.stride()[:2])


def arrival_counters(n: int, device: torch.device) -> torch.Tensor:
    """``n`` int32 counters, zero, for the fused merge on ``device``: one per (sequence, head block).

    Every launch that uses them leaves them zero again (the merging program resets its counter), so
    one buffer per device and stream is kept and reused — no memset per call, and a CUDA graph can
    capture the call. It only grows. Two launches that run at the same time on one stream cannot
    happen; on two streams they get two buffers.
    """
    device = torch.device(device)
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream)
    counters = _COUNTERS.get(key)
    if counters is None or counters.numel() < n:
        counters = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
        _COUNTERS[key] = counters
    return counters


@triton.jit
def arrive(COUNTER, n_parts):
    """Count this program's partition as stored; True for the program that arrives last (it then merges).

    Call it after the partial results are stored. The barrier makes every thread's stores come before
    the ticket; the atomic's acquire-release semantics (GPU scope) publish them to, and show the other
    programs' to, the last one. The last one resets the counter for the next launch.
    """
    tl.debug_barrier()  # all of this program's stores are issued before its ticket
    ticket = tl.atomic_add(COUNTER, 1, sem="acq_rel", scope="gpu")
    last = ticket == n_parts - 1
    if last:
        tl.atomic_xchg(COUNTER, 0, sem="relaxed", scope="gpu")  # zero again: the next launch starts from 0
    return last


@triton.jit
def merge_rows(M_PART, L_PART, O_PART, stat, o_rows, n_parts, row_ok, cols, col_ok, stride_pp,
               ROWS: tl.constexpr, COLS: tl.constexpr, PARTS_PAD: tl.constexpr):
    """Merge the ``n_parts`` partition results of a block of rows (heads): ``(ROWS, COLS)`` fp32.

    ``ROWS``/``COLS``: the block's (padded) rows and columns; ``PARTS_PAD``: a power of two >= ``n_parts``.
    ``stat`` ``(ROWS,)``: offsets of each row's partition-0 maximum/sum in M_PART/L_PART (partitions
    contiguous); ``o_rows`` ``(ROWS,)``: offsets of each row's partition-0 output in O_PART, partitions
    ``stride_pp`` apart. m = max_p m_p, w_p = 2^(m_p - m) · l_p, out = Σ_p w_p o_p / Σ_p w_p; rows whose
    partitions saw nothing give zeros. Loads bypass L1 (``.cg``): the partials were written by other SMs.
    """
    parts = tl.arange(0, PARTS_PAD)
    p_ok = row_ok[:, None] & (parts[None, :] < n_parts)
    m_all = tl.load(M_PART + stat[:, None] + parts[None, :], mask=p_ok, other=float("-inf"),
                    cache_modifier=".cg")  # (ROWS, PARTS_PAD)
    l_all = tl.load(L_PART + stat[:, None] + parts[None, :], mask=p_ok, other=0.0, cache_modifier=".cg")
    m = tl.max(m_all, 1)  # m = max_p m_p
    m = tl.where(m == float("-inf"), 0.0, m)  # a row with no partition: weights 0, not NaN
    w_all = tl.exp2(m_all - m[:, None]) * l_all  # w_p = 2^(m_p - m) · l_p
    l_total = tl.sum(w_all, 1)
    acc = tl.zeros((ROWS, COLS), dtype=tl.float32)
    for first in range(0, n_parts, FUSED_MERGE_CHUNK):
        for j in tl.static_range(FUSED_MERGE_CHUNK):  # unrolled: the chunk's loads are in flight together
            p = first + j
            w = tl.sum(tl.where(parts[None, :] == p, w_all, 0.0), 1)  # column p of w_all (0 past n_parts): (ROWS,)
            load_ok = row_ok & (tl.full((ROWS,), p, tl.int32) < n_parts)  # (ROWS,)
            o = tl.load(O_PART + o_rows[:, None] + p * stride_pp + cols[None, :],
                        mask=load_ok[:, None] & col_ok[None, :], other=0.0,
                        cache_modifier=".cg").to(tl.float32)  # (ROWS, COLS)
            acc += w[:, None] * o
    return acc / tl.where(l_total > 0, l_total, 1.0)[:, None]


@triton.jit
def merge_kernel(
    M_PART, L_PART, O_PART, CONTEXT_LENS, OUT,
    stride_pb, stride_ph, stride_pp,  # O_PART (B, H, P, D)
    stride_mb, stride_mh,  # M_PART, L_PART (B, H, P)
    stride_ob, stride_oh,  # OUT (B, H, D)
    partition_size,
    n_keys,  # every sequence's length when not HAS_LENS
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    PARTS_PAD: tl.constexpr,  # number of partitions rounded up to a power of two
    CHUNK: tl.constexpr,  # partitions merged per iteration
    HAS_LENS: tl.constexpr,  # lengths from CONTEXT_LENS (else every sequence has n_keys tokens)
):
    """Merge one head's partition results: m = max_p m_p, w_p = 2^(m_p - m) · l_p, out = Σ w_p o_p / Σ w_p."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    if HAS_LENS:
        length = tl.load(CONTEXT_LENS + seq)
    else:
        length = n_keys
    n_parts = tl.cdiv(length, partition_size)  # partitions this sequence really used
    stat = head_offset(seq, head, stride_mb, stride_mh)
    all_parts = tl.arange(0, PARTS_PAD)
    m_all = tl.load(M_PART + stat + all_parts, mask=all_parts < n_parts, other=float("-inf"))
    m = tl.max(m_all, 0)  # m = max_p m_p
    m = tl.where(m == float("-inf"), 0.0, m)  # empty sequence: keep the weights at 0, not NaN

    d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = d < HEAD_DIM
    o_base = O_PART + head_offset(seq, head, stride_pb, stride_ph)
    acc = tl.zeros((HEAD_DIM_PAD,), dtype=tl.float32)
    l_sum = tl.zeros((CHUNK,), dtype=tl.float32)
    for first in range(0, n_parts, CHUNK):
        parts = first + tl.arange(0, CHUNK)
        p_ok = parts < n_parts
        m_p = tl.load(M_PART + stat + parts, mask=p_ok, other=float("-inf"))
        l_p = tl.load(L_PART + stat + parts, mask=p_ok, other=0.0)
        o_p = tl.load(o_base + parts[:, None] * stride_pp + d[None, :],
                      mask=p_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)  # (CHUNK, HEAD_DIM_PAD)
        w = tl.exp2(m_p - m) * l_p  # w_p = 2^(m_p - m) · l_p: partition p's share of the softmax mass
        l_sum += w
        acc += tl.sum(w[:, None] * o_p, 0)
    l_total = tl.sum(l_sum, 0)
    out = acc / tl.where(l_total > 0, l_total, 1.0)  # an empty sequence gives zeros
    tl.store(OUT + head_offset(seq, head, stride_ob, stride_oh) + d, out.to(OUT.dtype.element_ty), mask=d_ok)


def merge_partitions(partials: PartialBuffers, context_lens: torch.Tensor | int, out: torch.Tensor,
                     partition_size: int, n_parts: int) -> None:
    """Launch :func:`merge_kernel`: write into ``out`` ``(B, H, width)`` the merge of ``partials``.

    ``context_lens`` ``(B,)`` int32 tells each sequence's length, hence how many partitions it used;
    an int is every sequence's length (no tensor to fill).
    """
    batch, n_heads, width = out.shape
    has_lens = isinstance(context_lens, torch.Tensor)
    merge_kernel[(batch, n_heads)](
        partials.m_part, partials.l_part, partials.o_part, context_lens if has_lens else out, out,
        *partials.o_strides, *partials.m_strides, out.stride(0), out.stride(1), partition_size,
        0 if has_lens else context_lens,
        HEAD_DIM=width, HEAD_DIM_PAD=max(16, next_power_of_2(width)),
        PARTS_PAD=next_power_of_2(n_parts), CHUNK=MERGE_CHUNK, HAS_LENS=has_lens, num_warps=4,
    )


def merge_compile_job(family: str, width: int, n_parts: int = 128):
    """The merge kernel at ``width`` values per row and ``n_parts`` partitions, for :mod:`.compile_check`."""
    from attention_lab.kernels.compile_check import CompileJob

    constexprs = dict(HEAD_DIM=width, HEAD_DIM_PAD=max(16, next_power_of_2(width)),
                      PARTS_PAD=next_power_of_2(n_parts), CHUNK=MERGE_CHUNK, HAS_LENS=True)
    return CompileJob(family=family, kernel="merge", fn=merge_kernel, constexprs=constexprs,
                      types={"M_PART": "*fp32", "L_PART": "*fp32", "O_PART": "*fp16", "CONTEXT_LENS": "*i32",
                             "OUT": "*fp16"},
                      num_warps=4, num_stages=3, config={"PARTS_PAD": constexprs["PARTS_PAD"], "CHUNK": MERGE_CHUNK},
                      head_dim=width, aligned=("partition_size",))
