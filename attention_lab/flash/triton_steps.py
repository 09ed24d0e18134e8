"""The forward kernel of chapter 10 built up in steps, each a complete kernel a student can time.

1. ``two_pass``: a first forward that works — pass 1 finds each row's maximum score, pass 2
   sums the exponentials and accumulates P·V with that fixed maximum (safe softmax, no rescaling).
   K is read and Q·Kᵀ computed twice.
2. ``online``: one pass, the online softmax in registers (:func:`attention_lab.kernels.common.online_softmax_update`);
   causal attention still visits every key block and masks each one element by element.
3. ``skip``: the library kernel with one fixed tile — causal blocks above the diagonal are never
   visited and only the diagonal blocks are masked.
4. ``tuned``: the library kernel with its tile chosen by ``@triton.autotune`` for this GPU.

Steps 1 and 2 reuse the library's helpers (:func:`~attention_lab.flash.triton_attention.load_rows`,
:func:`~attention_lab.flash.triton_attention.may_attend`, the online-softmax update); they exist to be
measured, and support the forward only (no window, mask or backward).
"""

from __future__ import annotations

import torch
from attention_lab.kernels.optional_triton import cdiv, next_power_of_2, tl, triton

from attention_lab.flash.triton_attention import flash_attention, load_rows, may_attend, prepare_inputs
from attention_lab.kernels.common import LOG2_E, device_capability, head_offset, online_softmax_update
from attention_lab.kernels.interpreter import interpreting

STEPS = ("two_pass", "online", "skip", "tuned")
STEP_TILE = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}  # steps 1-3 share one tile (sm_80+)
# A T4 (sm_75): tl.dot on FMA units, nothing pipelined (one stage); small enough that no step spills registers
# at any head_dim, fp16 or fp32, with Triton 3.6 (Colab's) and 3.9 (ptxas -v: tests/test_ch10_t4_spills.py)
SMALL_TILE = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
INTERPRETER_TILE = {"BLOCK_M": 16, "BLOCK_N": 16}


@triton.jit
def _fwd_two_pass(Q, K, V, O, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                  n_heads, n_queries, n_keys, group, qk_scale,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  CAUSAL: tl.constexpr):
    """Step 1: BLOCK_M queries of one (batch, head); two passes over all keys."""
    batch_head = tl.program_id(1)
    b = batch_head // n_heads
    h = batch_head % n_heads
    kv_h = h // group
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_rows(Q + head_offset(b, h, stride_qb, stride_qh) + offs_m[:, None] * stride_qm
                  + offs_d[None, :], offs_m, n_queries, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_M, BLOCK_D)
    K_ptrs = K + head_offset(b, kv_h, stride_kb, stride_kh) + offs_n[:, None] * stride_kn + offs_d[None, :]
    V_ptrs = V + head_offset(b, kv_h, stride_vb, stride_vh) + offs_n[:, None] * stride_vn + offs_d[None, :]

    # pass 1: m_i = max_j s_ij over every key
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    for start_n in range(0, n_keys, BLOCK_N):
        cols = start_n + offs_n
        k = load_rows(K_ptrs + start_n * stride_kn, cols, n_keys, offs_d, HEAD_DIM, BLOCK_D, True)
        qk = tl.dot(q, tl.trans(k)) * qk_scale                                  # (BLOCK_M, BLOCK_N), log2 units
        qk = tl.where(may_attend(offs_m[:, None], cols[None, :], n_queries, n_keys, 0, Q, 0, 0,
                                 CAUSAL, False, False), qk, float("-inf"))
        m_i = tl.maximum(m_i, tl.max(qk, 1))
    # pass 2: l_i = Σ_j 2^(s_ij - m_i) and acc = Σ_j 2^(s_ij - m_i) v_j — m_i is final, nothing to rescale
    m_i = tl.where(m_i == float("-inf"), 0.0, m_i)  # rows past the end see no key
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, n_keys, BLOCK_N):
        cols = start_n + offs_n
        k = load_rows(K_ptrs + start_n * stride_kn, cols, n_keys, offs_d, HEAD_DIM, BLOCK_D, True)
        v = load_rows(V_ptrs + start_n * stride_vn, cols, n_keys, offs_d, HEAD_DIM, BLOCK_D, True)
        qk = tl.dot(q, tl.trans(k)) * qk_scale
        qk = tl.where(may_attend(offs_m[:, None], cols[None, :], n_queries, n_keys, 0, Q, 0, 0,
                                 CAUSAL, False, False), qk, float("-inf"))
        p = tl.exp2(qk - m_i[:, None])
        l_i += tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(O + head_offset(b, h, stride_ob, stride_oh) + offs_m[:, None] * stride_om
             + offs_d[None, :], out.to(O.dtype.element_ty), mask=(offs_m[:, None] < n_queries) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _fwd_online_every_block(Q, K, V, O, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                            stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                            n_heads, n_queries, n_keys, group, qk_scale,
                            HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Step 2: one pass with the online softmax; every key block is visited and masked."""
    batch_head = tl.program_id(1)
    b = batch_head // n_heads
    h = batch_head % n_heads
    kv_h = h // group
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_rows(Q + head_offset(b, h, stride_qb, stride_qh) + offs_m[:, None] * stride_qm
                  + offs_d[None, :], offs_m, n_queries, offs_d, HEAD_DIM, BLOCK_D, True)
    K_ptrs = K + head_offset(b, kv_h, stride_kb, stride_kh) + offs_n[:, None] * stride_kn + offs_d[None, :]
    V_ptrs = V + head_offset(b, kv_h, stride_vb, stride_vh) + offs_n[:, None] * stride_vn + offs_d[None, :]
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, n_keys, BLOCK_N):
        cols = start_n + offs_n
        k = load_rows(K_ptrs + start_n * stride_kn, cols, n_keys, offs_d, HEAD_DIM, BLOCK_D, True)
        v = load_rows(V_ptrs + start_n * stride_vn, cols, n_keys, offs_d, HEAD_DIM, BLOCK_D, True)
        qk = tl.dot(q, tl.trans(k)) * qk_scale
        qk = tl.where(may_attend(offs_m[:, None], cols[None, :], n_queries, n_keys, 0, Q, 0, 0,
                                 CAUSAL, False, False), qk, float("-inf"))
        m_i, l_i, acc = online_softmax_update(m_i, l_i, acc, qk, v)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(O + head_offset(b, h, stride_ob, stride_oh) + offs_m[:, None] * stride_om
             + offs_d[None, :], out.to(O.dtype.element_ty), mask=(offs_m[:, None] < n_queries) & (offs_d[None, :] < HEAD_DIM))


def step_tile(capability: int | None) -> dict:
    """The tile steps 1-3 use on compute ``capability``: :data:`STEP_TILE` on sm_80+, :data:`SMALL_TILE` on a T4,
    tiny under the interpreter (``None``)."""
    if capability is None:
        return dict(INTERPRETER_TILE)
    return dict(STEP_TILE if capability >= 80 else SMALL_TILE)


def default_tile(device: torch.device) -> dict:
    """:func:`step_tile` for ``device`` (the interpreter's tile when the kernels are interpreted)."""
    return step_tile(None if interpreting() else device_capability(device))


def step_forward(step: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                 tile: dict | None = None) -> torch.Tensor:
    """Attention output ``(B, H, Nq, D)`` of q ``(B, H, Nq, D)``, k, v ``(B, Hkv, Nk, D)`` by step ``step``."""
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}, got {step!r}")
    tile = default_tile(q.device) if tile is None else tile
    if step == "tuned":
        return flash_attention(q, k, v, causal=causal)
    if step == "skip":
        return flash_attention(q, k, v, causal=causal, tile=tile)
    batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim, causal, _, scale = prepare_inputs(q, k, v, None, causal, None, None)
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    kernel = _fwd_two_pass if step == "two_pass" else _fwd_online_every_block
    grid = (cdiv(n_queries, tile["BLOCK_M"]), batch * n_heads)
    kernel[grid](q, k, v, out, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
                 n_heads, n_queries, n_keys, n_heads // n_kv_heads, scale * LOG2_E,
                 HEAD_DIM=head_dim, BLOCK_D=max(16, next_power_of_2(head_dim)), CAUSAL=causal, **tile)
    return out


def compile_jobs(capability: int) -> list:
    """What CI compiles for sm_``capability`` (:mod:`attention_lab.kernels.compile_check`), in fp16: the two step
    kernels with :func:`step_tile`, causal, at head_dim 128 (their worst case)."""
    from attention_lab.kernels.compile_check import CompileJob

    tile = step_tile(capability)
    types = {"Q": "*fp16", "K": "*fp16", "V": "*fp16", "O": "*fp16", "qk_scale": "fp32"}
    return [CompileJob(family="flash_steps", kernel=name, fn=fn, types=types, num_warps=tile["num_warps"],
                       num_stages=tile["num_stages"], head_dim=128,
                       config={"BLOCK_M": tile["BLOCK_M"], "BLOCK_N": tile["BLOCK_N"]},
                       constexprs=dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_M=tile["BLOCK_M"], BLOCK_N=tile["BLOCK_N"],
                                       CAUSAL=True))
            for name, fn in (("two_pass", _fwd_two_pass), ("online", _fwd_online_every_block))]
