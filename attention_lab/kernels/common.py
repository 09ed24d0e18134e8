"""What every Triton kernel of the book shares: one constant, the dot precision, the facts of a device, the
online-softmax update and the head-pointer arithmetic.

* :data:`LOG2_E` — the kernels work in base 2: ``exp(x) = exp2(x · log2 e)``, so scores are multiplied by
  ``scale · LOG2_E`` once and ``exp2`` (one instruction on a GPU) is used everywhere.
* :func:`dot_precision` — what ``tl.dot`` does with fp32 inputs.
* :class:`DeviceFacts` / :func:`device_facts` — the compute capability (ONE number: sm_75 -> 75, as Triton's
  ``GPUTarget`` takes it) and the SM count the kernels choose their tiles and splits from;
  :func:`shared_memory_limit` — the shared memory one block may use on a capability.
* :func:`online_softmax_update` — chapter 08's update for a block of query rows, in the paper's names
  ``(m_i, l_i, acc)``; the FlashAttention forward, the decode kernel and the latent (MLA) kernel call it.
  :func:`online_softmax_update_raw` — the same on unscaled scores (max first, then one FMA per weight),
  which the FlashAttention forward uses on a GPU.
* :func:`head_offset` — where one (batch, head) starts in a ``(B, H, ...)`` tensor, in 64-bit arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from attention_lab.kernels.optional_triton import tl, triton

LOG2_E = 1.4426950408889634  # log2(e) = 1 / ln 2: exp(x) = exp2(x · LOG2_E)

KIB = 1024
# Bytes of shared memory one block may use (the opt-in maximum), by compute capability.
SHARED_MEMORY_PER_BLOCK = {75: 64 * KIB, 80: 163 * KIB, 86: 99 * KIB, 87: 163 * KIB, 89: 99 * KIB, 90: 227 * KIB}


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for inputs of ``dtype``: "ieee" (exact fp32 products) for fp32,
    "tf32" otherwise (Triton's default; it only changes fp32 inputs, so 16-bit ones are unaffected).

    The decode and latent kernels pass it (their fp32 path is a reference, exact); the FlashAttention kernel
    keeps Triton's default "tf32", the tensor-core speed a GPU user of fp32 expects (its docstring says so).
    """
    return "ieee" if dtype == torch.float32 else "tf32"


@dataclass(frozen=True)
class DeviceFacts:
    """What the kernels need to know about the device they launch on."""

    capability: int | None  # compute capability as one number (sm_75 -> 75, sm_90 -> 90); None: the CPU interpreter
    n_sms: int  # streaming multiprocessors (programs that run at once, roughly); the interpreter: 4


def device_capability(device: torch.device | str) -> int:
    """Compute capability of a CUDA device as one number (sm_90 -> 90)."""
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def device_facts(device: torch.device | str) -> DeviceFacts:
    """The :class:`DeviceFacts` of ``device``; a CPU device (the interpreter) gets ``capability=None`` and 4 SMs,
    a few split-K partitions, enough to exercise the merge."""
    device = torch.device(device)
    if device.type == "cuda":
        return DeviceFacts(device_capability(device), torch.cuda.get_device_properties(device).multi_processor_count)
    return DeviceFacts(None, 4)


def shared_memory_limit(capability: int) -> int:
    """Bytes of shared memory one block may use on compute capability ``capability`` (75 = sm_75).

    =========  ===========  ===========
    capability  example      bytes
    =========  ===========  ===========
    7.5        T4 (Colab)   64 KiB
    8.0        A100         163 KiB
    8.6/8.9    A10, L4      99 KiB
    9.0        H100, H200   227 KiB
    =========  ===========  ===========
    """
    known = sorted(SHARED_MEMORY_PER_BLOCK)
    below = [c for c in known if c <= capability]
    return SHARED_MEMORY_PER_BLOCK[below[-1] if below else known[0]]


@triton.jit
def online_softmax_update(m_i, l_i, acc, scores, values, DOT_PRECISION: tl.constexpr = tl.constexpr("tf32")):
    """Fold one tile of keys into the running softmax of a block of query rows (chapter 08, in base 2).

    Args:
        m_i: ``(ROWS,)`` fp32 running max of the scores (-inf for a row that has seen no key yet).
        l_i: ``(ROWS,)`` fp32 running sum of ``2^(s - m_i)``.
        acc: ``(ROWS, WIDTH)`` fp32 running un-normalised output ``Σ_j 2^(s_j - m_i) v_j``.
        scores: ``(ROWS, TILE)`` fp32, already times ``scale · log2 e``; -inf where a pair is masked.
        values: ``(TILE, WIDTH)`` value tile (its dtype sets the precision of ``P V``).
        DOT_PRECISION: ``tl.dot``'s input precision for fp32 values (:func:`dot_precision`); by default "tf32",
            Triton's own default. (The default is written as a ``tl.constexpr``: Triton 3.6 passes a plain
            string default into a compiled helper unwrapped, and fails.)

    Returns:
        The new ``(m_i, l_i, acc)``; the caller divides ``acc`` by ``l_i`` once, after the last tile.
    """
    m_new = tl.maximum(m_i, tl.max(scores, 1))                # m_new = max(m_i, rowmax(S))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)      # a row that has seen no key yet: avoid -inf - -inf
    alpha = tl.exp2(m_i - m_ref)                              # alpha = 2^(m_i - m_new): rescales the old state
    p = tl.exp2(scores - m_ref[:, None])                      # P = 2^(S - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)                          # l_new = alpha·l_i + rowsum(P)
    acc = tl.dot(p.to(values.dtype), values, acc * alpha[:, None],
                 input_precision=DOT_PRECISION)               # acc_new = alpha·acc + P V
    return m_new, l_i, acc


@triton.jit
def online_softmax_update_raw(m_i, l_i, acc, raw_scores, values, qk_scale):
    """:func:`online_softmax_update` on raw scores ``q·k``: the max is taken before scaling, and each weight's
    exponent ``s·qk_scale − m`` is one fused multiply-add instead of a multiply and then a subtraction.

    Because ``qk_scale = scale · log2 e > 0``, ``max(s)·qk_scale = max(s·qk_scale)``: ``m_i`` keeps the same
    meaning (log2 units) and the result is the same function; only the rounding differs (one rounding in the
    FMA instead of two). Masked scores are -inf: ``-inf · qk_scale − m = -inf`` and ``2^-inf = 0``, and a row
    that has seen no key yet keeps the same guard as before.
    """
    m_new = tl.maximum(m_i, tl.max(raw_scores, 1) * qk_scale)     # m_new = max(m_i, rowmax(S)·scale·log2 e)
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)          # a row that has seen no key yet: avoid -inf - -inf
    alpha = tl.exp2(m_i - m_ref)                                  # rescales the old state
    p = tl.exp2(raw_scores * qk_scale - m_ref[:, None])           # P = 2^(S·scale·log2 e - m_new): one FMA
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(values.dtype), values, acc * alpha[:, None])  # acc_new = alpha·acc + P V
    return m_new, l_i, acc


@triton.jit
def head_offset(batch, head, stride_batch, stride_head):
    """Element offset of (``batch``, ``head``) in a ``(B, H, ...)`` tensor: ``batch·stride_batch + head·stride_head``.

    In 64 bits: at B·H·N·D beyond 2^31 elements (a long context, a large batch) 32-bit offsets wrap around.
    ``head`` may be a vector of heads (a block of rows), giving a vector of offsets.
    """
    return batch.to(tl.int64) * stride_batch + head.to(tl.int64) * stride_head
