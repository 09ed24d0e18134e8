"""A Hopper-only (sm_90) fast path for the FlashAttention forward, beside chapter 10's teaching kernel.

The teaching kernel (:mod:`attention_lab.flash.triton_attention`) loads its tiles through pointers — a grid of
addresses per tile, with a bounds mask — and is plain Triton that runs on a T4. On an H100/H200 three things
are cheaper, and this file adds them one at a time, each a switch a benchmark can flip
(``benchmarks/hopper_steps.py``):

(a) **TMA loads and stores.** Hopper's Tensor Memory Accelerator copies a whole tile between global and shared
    memory from one descriptor (base, shape, strides, block): no per-element addresses in registers, no masks —
    rows past ``N`` and columns past ``D`` read as zero and are not written. The descriptors are 4-D over the
    tensors' real ``(B, H, N, D)`` strides with blocks ``[1, 1, BLOCK, BLOCK_D]``, so a partial last block, a head
    dim padded to a power of two (D = 40, 80, 96) and a ``(B, N, H, D)`` tensor viewed as ``(B, H, N, D)`` all
    work without a copy. Built on the host (``triton.tools.tensor_descriptor.TensorDescriptor``, Triton 3.6 and
    later), so no device-side allocator is needed.
(b) **A persistent grid** (``persistent=True``): one program per SM, each looping over (query block, batch·head)
    tiles, instead of one program per tile. Tiles are visited a few heads at a time (as many as keep their K and V
    in half the L2 cache) and, within those, longest rows first when causal, so the programs finish together.
(c) **Its own autotune configs** (:data:`HOPPER_CONFIGS`): large tiles with 8 warps (two warpgroups) and 2–3
    pipeline stages, every one checked to fit the 227 KiB of shared memory and to spill no register (``ptxas``),
    with Triton 3.6 and 3.9 (:mod:`attention_lab.kernels.compile_check`, family ``hopper``).

The mathematics is the teaching kernel's, shared rather than copied: the key blocks a query block visits come in
the same masked/unmasked runs (:func:`attention_lab.flash.triton_attention.key_blocks`, the same
:func:`~attention_lab.flash.triton_attention.may_attend`), and each block goes through the same online-softmax
step on raw scores (:func:`attention_lab.kernels.common.online_softmax_update_raw`: max first, one FMA per weight).
So it returns what :func:`~attention_lab.flash.triton_attention.flash_attention_forward` returns — O
``(B, H, Nq, D)`` in q's dtype and the rows' base-2 log-sum-exp ``(B, H, Nq)`` fp32 (+inf for a row that sees no
key) — and chapter 10's backward kernels take it unchanged.

What it supports (:func:`unsupported_reason` names the first thing that rules it out): a CUDA GPU of compute
capability 9.0 exactly, fp16/bf16, no explicit mask, no window, head_dim a multiple of 8 up to 128, 16-byte aligned
strides; causal (queries aligned to the END of the keys, Nq != Nk allowed) or not; GQA/MQA (query head ``h`` reads
kv head ``h // group``). :func:`~attention_lab.flash.triton_attention.flash_attention_forward` chooses it by
itself when no ``tile`` is given (switch: ``triton_attention.HOPPER_FORWARD`` or ``hopper_path=False``).
Under ``TRITON_INTERPRET=1`` the same kernel runs on CPU tensors (Triton's interpreter emulates the descriptors,
zero fill included), which is how the tests check it without a GPU.
"""

from __future__ import annotations

import torch

from attention_lab.flash import triton_configs
from attention_lab.flash.triton_attention import key_blocks, may_attend
from attention_lab.kernels.common import (KIB, device_capability, device_facts, online_softmax_update_raw,
                                         shared_memory_limit)
from attention_lab.kernels.interpreter import interpreting
from attention_lab.kernels.optional_triton import TRITON_AVAILABLE, cdiv, next_power_of_2, tl, triton

try:  # the host-side TMA descriptor: Triton 3.6 (the lent GPU, Colab) and 3.9 (CI)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # no Triton, or one older than the descriptors
    TensorDescriptor = None

HOPPER_CAPABILITY = 90  # sm_90: H100, H200 (Blackwell, sm_100, is not verified: refused)
MAX_HEAD_DIM = 128
HEAD_DIM_MULTIPLE = 8  # 16 bytes of fp16/bf16: TMA needs every stride (a row is D elements) 16-byte aligned
TMA_ALIGNMENT = 16  # bytes: base address and every stride but the last
INTERPRETER_TILE = {"BLOCK_M": 16, "BLOCK_N": 16}  # small tiles: many block boundaries in tiny CPU tests
L2_SHARE = 0.5  # the persistent grid visits as many heads at once as keep their K and V in this share of L2


# ----------------------------------------------------------------------------------------------
# Which inputs the fast path takes
# ----------------------------------------------------------------------------------------------


def device_capability_of(q: torch.Tensor) -> int | None:
    """Compute capability of q's GPU (sm_90 -> 90); None for a CPU tensor (or the interpreter)."""
    if interpreting() or not q.is_cuda:
        return None
    return device_capability(q.device)


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                       window: int | None = None, capability: int | None = None) -> str | None:
    """Why the fast path cannot run these inputs, in one sentence; None when it can.

    Args:
        q: ``(B, H, Nq, D)``; k, v: ``(B, Hkv, Nk, D)`` — as validated by
            :func:`attention_lab.flash.triton_attention.prepare_inputs`.
        mask, window: as :func:`~attention_lab.flash.triton_attention.flash_attention`; either rules it out.
        capability: the GPU's compute capability (90 = sm_90); None reads it from q's device
            (:func:`device_capability_of`). Passing it lets the rule be checked without a GPU.
    """
    if not TRITON_AVAILABLE or TensorDescriptor is None:
        return "needs Triton with host-side TMA descriptors (triton.tools.tensor_descriptor, Triton >= 3.6)"
    if capability is None:
        capability = device_capability_of(q)
    if capability is None:
        return "needs a CUDA GPU (q is on the CPU, or Triton's interpreter runs the kernels)"
    if capability != HOPPER_CAPABILITY:
        return f"written for Hopper (sm_90: H100, H200); this GPU is sm_{capability}"
    if mask is not None:
        return "no explicit mask (the teaching kernel handles masks)"
    if window is not None:
        return "no sliding window (the teaching kernel handles windows)"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"fp16 or bf16 only, q has dtype {q.dtype}"
    head_dim = q.shape[-1]
    if head_dim % HEAD_DIM_MULTIPLE or head_dim > MAX_HEAD_DIM:
        return f"head_dim must be a multiple of {HEAD_DIM_MULTIPLE} and at most {MAX_HEAD_DIM}, got {head_dim}"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.numel() == 0:
            return f"{name} is empty (shape {tuple(t.shape)})"
        if t.stride(-1) != 1:
            return f"{name} must have stride 1 along head_dim (TMA), got strides {t.stride()}"
        if t.data_ptr() % TMA_ALIGNMENT or any(s * t.element_size() % TMA_ALIGNMENT for s in t.stride()[:-1]):
            return (f"{name} must start at a 16-byte aligned address with 16-byte aligned strides (TMA), got "
                    f"strides {t.stride()} of {t.element_size()}-byte elements")
    return None


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
             window: int | None = None, capability: int | None = None) -> bool:
    """True when the fast path runs these inputs (:func:`unsupported_reason` is None)."""
    return unsupported_reason(q, k, v, mask, window, capability) is None


# ----------------------------------------------------------------------------------------------
# The kernel: helpers, inner loop, one tile, then the program (one tile, or persistent)
# ----------------------------------------------------------------------------------------------


@triton.jit
def load_tile(desc, b, head, first_row, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """The (ROWS, BLOCK_D) tile of rows ``first_row ...`` of (``b``, ``head``), one TMA copy through the 4-D
    descriptor ``desc``; rows past N and columns past D come back as zeros."""
    return desc.load([b, head, first_row, 0]).reshape(ROWS, BLOCK_D)


@triton.jit
def _attn_fwd_tma_inner(m_i, l_i, acc, q, k_desc, v_desc, b, kv_h, qk_scale, offs_m, offs_n, n_queries, n_keys,
                        LSE, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                        start, stop, MASKED: tl.constexpr):
    """Stream the key/value blocks [start, stop) through the online softmax of one query block.

    The teaching kernel's inner loop with TMA copies in place of pointer loads: ``MASKED`` blocks (the causal
    diagonal, the last partial block) apply :func:`may_attend`; the others need no check at all, since TMA
    zero-fills what lies past the tensor. ``LSE`` only fills :func:`may_attend`'s unused mask pointer.
    """
    for start_n in range(start, stop, BLOCK_N):
        k = load_tile(k_desc, b, kv_h, start_n, BLOCK_N, BLOCK_D)                  # K_j (BLOCK_N, BLOCK_D)
        v = load_tile(v_desc, b, kv_h, start_n, BLOCK_N, BLOCK_D)                  # V_j (BLOCK_N, BLOCK_D)
        qk = tl.dot(q, tl.trans(k))                                                # raw S_j (BLOCK_M, BLOCK_N)
        if MASKED:
            allowed = may_attend(offs_m[:, None], (start_n + offs_n)[None, :], n_queries, n_keys, 0, LSE, 0, 0,
                                 CAUSAL, False, False)
            qk = tl.where(allowed, qk, float("-inf"))
        m_i, l_i, acc = online_softmax_update_raw(m_i, l_i, acc, qk, v, qk_scale)  # max first, then one FMA
    return m_i, l_i, acc


@triton.jit
def _attn_fwd_tile(q_desc, k_desc, v_desc, o_desc, LSE, start_m, batch_head, n_heads, n_queries, n_keys, group,
                   qk_scale, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr):
    """Queries [start_m·BLOCK_M, +BLOCK_M) of one (batch, head): O = softmax(Q Kᵀ·scale) V and the rows' lse."""
    b = batch_head // n_heads
    h = batch_head % n_heads
    kv_h = h // group  # GQA/MQA: query head h reads kv head h // group
    m0 = start_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    q = load_tile(q_desc, b, h, m0, BLOCK_M, BLOCK_D)          # (BLOCK_M, BLOCK_D), stays on chip for the loop
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)                 # running sum of 2^(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)        # running un-normalised output
    # no window and no mask: lo = mid_lo, then unmasked blocks, then the causal diagonal / the partial last block
    lo, mid_lo, mid_hi, hi = key_blocks(m0, n_queries, n_keys, 0, BLOCK_M, BLOCK_N, CAUSAL, False, False)
    m_i, l_i, acc = _attn_fwd_tma_inner(m_i, l_i, acc, q, k_desc, v_desc, b, kv_h, qk_scale, offs_m, offs_n,
                                        n_queries, n_keys, LSE, BLOCK_N, BLOCK_D, CAUSAL,
                                        start=mid_lo, stop=mid_hi, MASKED=False)
    m_i, l_i, acc = _attn_fwd_tma_inner(m_i, l_i, acc, q, k_desc, v_desc, b, kv_h, qk_scale, offs_m, offs_n,
                                        n_queries, n_keys, LSE, BLOCK_N, BLOCK_D, CAUSAL,
                                        start=mid_hi, stop=hi, MASKED=True)
    # Epilogue, as the teaching kernel's: O = acc / l; a row that saw no key (l = 0) gives 0 and lse = +inf
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    o_desc.store([b, h, m0, 0], out.to(q.dtype).reshape(1, 1, BLOCK_M, BLOCK_D))  # rows/columns past the end: dropped
    tl.store(LSE + batch_head.to(tl.int64) * n_queries + offs_m, lse, mask=offs_m < n_queries)


@triton.jit
def persistent_tile(tile, n_query_blocks, n_batch_heads, heads_per_group, CAUSAL: tl.constexpr):
    """(query block, batch·head) of the persistent grid's ``tile``-th tile.

    Tiles come in groups of ``heads_per_group`` consecutive (batch, head) pairs — few enough that their K and V
    stay in L2 while the group is worked on. Within a group the heads vary fastest and the query blocks go from
    the last (causal: the longest rows, which see the most keys) to the first, so the tiles handed out together
    cost about the same and the programs, each taking every ``num_programs``-th tile, finish together.
    """
    tiles_per_group = heads_per_group * n_query_blocks
    group_index = tile // tiles_per_group
    first_head = group_index * heads_per_group
    heads_here = tl.minimum(heads_per_group, n_batch_heads - first_head)  # the last group may be smaller
    within = tile - group_index * tiles_per_group
    rank = within // heads_here  # 0: the first block visited in this group
    batch_head = first_head + within % heads_here
    if CAUSAL:
        start_m = n_query_blocks - 1 - rank  # longest rows first
    else:
        start_m = rank
    return start_m, batch_head


@triton.jit(do_not_specialize=["heads_per_group"])  # one compiled kernel whatever the L2 grouping gives
def _attn_fwd_hopper(q_desc, k_desc, v_desc, o_desc, LSE,
                     n_heads, n_batch_heads, n_queries, n_keys, group, heads_per_group, qk_scale, q_bucket, k_bucket,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     CAUSAL: tl.constexpr, PERSISTENT: tl.constexpr):
    """The forward through 4-D TMA descriptors: q_desc, o_desc over ``(B, H, Nq, D)`` with blocks
    ``[1, 1, BLOCK_M, BLOCK_D]``, k_desc, v_desc over ``(B, Hkv, Nk, D)`` with ``[1, 1, BLOCK_N, BLOCK_D]``;
    LSE ``(B, H, Nq)`` fp32.

    ``PERSISTENT``: a grid of about one program per SM, each looping over the tiles :func:`persistent_tile` hands
    it. Otherwise one program per tile: grid ``(query blocks, B·H)``, the last query block first when causal.
    ``HEAD_DIM`` (unpadded), ``q_bucket``, ``k_bucket`` are only the autotuning key.
    """
    if PERSISTENT:
        n_query_blocks = tl.cdiv(n_queries, BLOCK_M)
        n_tiles = n_query_blocks * n_batch_heads
        for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
            start_m, batch_head = persistent_tile(tile, n_query_blocks, n_batch_heads, heads_per_group, CAUSAL)
            _attn_fwd_tile(q_desc, k_desc, v_desc, o_desc, LSE, start_m, batch_head, n_heads, n_queries, n_keys,
                           group, qk_scale, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL)
    else:
        start_m = tl.program_id(0)
        if CAUSAL:
            start_m = tl.num_programs(0) - 1 - start_m  # longest rows first: better load balance at the tail
        _attn_fwd_tile(q_desc, k_desc, v_desc, o_desc, LSE, start_m, tl.program_id(1), n_heads, n_queries, n_keys,
                       group, qk_scale, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL)


# ----------------------------------------------------------------------------------------------
# Hopper's autotune configs, and the launcher
# ----------------------------------------------------------------------------------------------


def set_descriptor_blocks(args: dict) -> None:
    """Autotuner pre-hook: a TMA descriptor's block is part of the kernel's type, so before each config runs, give
    the four descriptors in ``args`` (the launch's arguments by name) that config's blocks."""
    block_d = args["BLOCK_D"]
    for name, rows in (("q_desc", args["BLOCK_M"]), ("o_desc", args["BLOCK_M"]),
                       ("k_desc", args["BLOCK_N"]), ("v_desc", args["BLOCK_N"])):
        args[name].block_shape = [1, 1, rows, block_d]


def _hopper_config(block_m: int, block_n: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages,
                         pre_hook=set_descriptor_blocks)


def _tile_config(tile: dict) -> triton.Config:
    """A fixed ``tile`` dict as a config (Triton's defaults: 4 warps, 3 stages)."""
    return _hopper_config(tile["BLOCK_M"], tile["BLOCK_N"], tile.get("num_warps", 4), tile.get("num_stages", 3))


# sm_90 only. 8 warps = two warpgroups of 64 query rows each (wgmma's unit); 2–3 stages of K/V in flight.
# Shared memory at head_dim 128, fp16/bf16 (estimated_shared_memory): Q + stages·(K + V) + 1 = 32 + 3·64 + 1 =
# 225 KiB for 128×128 / 3 stages (of 227; the persistent loop's extra 32 KiB output tile does not fit, so it is
# pruned there), 32 + 3·32 + 1 = 129 KiB for 128×64 / 3 stages. Every config compiles without a spilled register
# with Triton 3.6 and 3.9 (tests/test_ch10_hopper.py, compile_check family "hopper").
HOPPER_CONFIGS = [
    _hopper_config(128, 128, 8, 2),
    _hopper_config(128, 128, 8, 3),
    _hopper_config(128, 64, 8, 2),
    _hopper_config(128, 64, 8, 3),
    _hopper_config(64, 64, 4, 3),  # the smallest: short sequences, more programs
]
# The teaching kernel's usual choice on an H100 (benchmarks/flash.py): the fixed tile that separates what TMA
# buys (step a) from what Hopper's own configs buy (step c).
TEACHING_TILE = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}


def estimated_shared_memory(config: triton.Config, block_d: int, element_bytes: int, persistent: bool) -> int:
    """Bytes of shared memory a config allocates on sm_90: the teaching forward's rows (Q, and ``num_stages``
    copies of K and V: :func:`attention_lab.flash.triton_configs.estimated_shared_memory`), 1 KiB of TMA barriers,
    and when ``persistent`` one more (BLOCK_M, BLOCK_D) tile — the output's staging tile for its TMA store, which
    a single tile per program places in the freed K/V buffers and the persistent loop cannot. Checked with
    Triton 3.6 and 3.9 (:mod:`attention_lab.kernels.compile_check`): at head_dim 128 every config allocates
    exactly this, or 1 KiB less."""
    rows = triton_configs.estimated_shared_memory("forward", config, block_d, element_bytes, HOPPER_CAPABILITY)
    staging = config.kwargs["BLOCK_M"] * block_d * element_bytes if persistent else 0
    return rows + staging + KIB


def fits(config: triton.Config, block_d: int, element_bytes: int, persistent: bool) -> bool:
    """True when ``config`` fits the 227 KiB one block may use on sm_90 (:func:`estimated_shared_memory`)."""
    return estimated_shared_memory(config, block_d, element_bytes, persistent) <= shared_memory_limit(HOPPER_CAPABILITY)


def prune_configs(configs: list, named_args: dict, **kwargs) -> list:
    """Autotuner hook: the configs that fit sm_90's shared memory at this padded head dim, element size and grid
    (:func:`fits`); e.g. 128×128 with 3 stages at head_dim 128 fits one tile per program, not the persistent loop."""
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    persistent = bool(kwargs.get("PERSISTENT", named_args.get("PERSISTENT")))
    element_bytes = named_args["q_desc"].base.element_size()
    kept = [c for c in configs if fits(c, block_d, element_bytes, persistent)]
    if not kept:
        raise ValueError(f"no Hopper forward config fits sm_90 at head_dim {block_d} ({element_bytes}-byte elements)")
    return kept


_KEY = ["q_bucket", "k_bucket", "HEAD_DIM", "CAUSAL", "PERSISTENT"]
_attn_fwd_hopper_tuned = triton.autotune(HOPPER_CONFIGS, key=_KEY,
                                         prune_configs_by={"early_config_prune": prune_configs})(_attn_fwd_hopper)

# the default of flash_attention_forward_hopper(persistent=None); the benchmark times both. Off: on an H200 the
# persistent grid was 10-14 % slower than one program per tile (attention_lab/results/flash_hopper.json)
PERSISTENT = False


def _length_bucket(n: int) -> int:
    """Autotuning key for a length: the next power of two (>= 16), as the teaching kernel's."""
    return max(16, next_power_of_2(n))


def descriptor(t: torch.Tensor, rows: int, block_d: int) -> "TensorDescriptor":
    """A 4-D TMA descriptor over ``t`` ``(B, H, N, D)`` with its own strides, blocks of ``rows`` × ``block_d``
    (``block_d`` >= D: the columns past D read as zeros and are not written)."""
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, rows, block_d])


def heads_at_once(n_keys: int, head_dim: int, element_bytes: int, group: int, device: torch.device) -> int:
    """How many (batch, head) pairs the persistent grid works on together: as many query heads as keep their
    K and V (``2·Nk·D`` elements per kv head, shared by ``group`` query heads) in :data:`L2_SHARE` of the L2 cache.
    At least one; 4 off a GPU (the interpreter), so tests see several groups."""
    if device.type != "cuda":
        return 4
    l2_bytes = torch.cuda.get_device_properties(device).L2_cache_size
    per_query_head = max(1, 2 * n_keys * head_dim * element_bytes // group)
    return max(1, int(L2_SHARE * l2_bytes) // per_query_head)


def flash_attention_forward_hopper(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
                                   tile: dict | None = None, persistent: bool | None = None,
                                   heads_per_group: int | None = None,
                                   compile_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast-path forward: O ``(B, H, Nq, D)`` in q's dtype and the rows' base-2 log-sum-exp ``(B, H, Nq)`` fp32.

    The caller has validated the inputs (:func:`attention_lab.flash.triton_attention.prepare_inputs`) and, on a
    GPU, checked :func:`supports`; q ``(B, H, Nq, D)``, k, v ``(B, Hkv, Nk, D)`` with stride 1 along D.

    Args:
        causal: query i sees keys j <= i + Nk - Nq.
        scale: the softmax scale (the kernel works in base 2: ``scale · log2 e``).
        tile: ``{"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"}`` fixes the tile; None autotunes over
            :data:`HOPPER_CONFIGS` on a GPU (:data:`INTERPRETER_TILE` under the interpreter).
        persistent: one program per SM looping over the tiles (step b); None: :data:`PERSISTENT`.
        heads_per_group: (batch, head) pairs the persistent grid visits together; None: :func:`heads_at_once`.
        compile_only: compile every config (or ``tile``) for these inputs without running anything
            (:func:`attention_lab.flash.triton_attention.precompile`); the returned tensors are then empty.
    """
    from attention_lab.flash.triton_attention import check_tile
    from attention_lab.kernels.common import LOG2_E

    check_tile(tile)
    persistent = PERSISTENT if persistent is None else persistent
    if not isinstance(persistent, bool):
        raise ValueError(f"persistent must be True, False or None, got {persistent!r}")
    batch, n_heads, n_queries, head_dim = q.shape
    n_kv_heads, n_keys = k.shape[1], k.shape[2]
    group = n_heads // n_kv_heads
    block_d = max(16, next_power_of_2(head_dim))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # (B, H, Nq, D), contiguous
    lse = torch.empty(batch, n_heads, n_queries, device=q.device, dtype=torch.float32)
    if out.numel() == 0 or k.numel() == 0:
        return out, lse
    if heads_per_group is None:
        heads_per_group = heads_at_once(n_keys, head_dim, q.element_size(), group, q.device)
    if not isinstance(heads_per_group, int) or heads_per_group < 1:
        raise ValueError(f"heads_per_group must be an integer >= 1, got {heads_per_group!r}")
    if tile is None and interpreting():
        tile = INTERPRETER_TILE
    elif tile is not None and not interpreting() and not fits(_tile_config(tile), block_d, q.element_size(), persistent):
        needed = estimated_shared_memory(_tile_config(tile), block_d, q.element_size(), persistent) // KIB
        raise ValueError(f"tile {tile} needs about {needed} KiB of shared memory at head_dim {block_d}"
                         f"{' in the persistent grid' * persistent}, more than sm_90's "
                         f"{shared_memory_limit(HOPPER_CAPABILITY) // KIB} KiB: pass a smaller tile or tile=None")
    first = tile or HOPPER_CONFIGS[0].kwargs  # the autotuner's pre-hook resets the blocks per config
    descriptors = (descriptor(q, first["BLOCK_M"], block_d), descriptor(k, first["BLOCK_N"], block_d),
                   descriptor(v, first["BLOCK_N"], block_d), descriptor(out, first["BLOCK_M"], block_d))
    n_batch_heads = batch * n_heads
    args = (*descriptors, lse, n_heads, n_batch_heads, n_queries, n_keys, group, heads_per_group, scale * LOG2_E,
            _length_bucket(n_queries), _length_bucket(n_keys))
    flags = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, CAUSAL=bool(causal), PERSISTENT=persistent)
    n_programs = device_facts(q.device).n_sms

    def grid(meta):
        query_blocks = cdiv(n_queries, meta["BLOCK_M"])
        if persistent:
            return (min(n_programs, query_blocks * n_batch_heads),)
        return (query_blocks, n_batch_heads)

    if compile_only:
        _compile_configs(args, flags, tile)
        return out, lse
    if tile is None:
        _attn_fwd_hopper_tuned[grid](*args, **flags)
    else:
        blocks = {"BLOCK_M": tile["BLOCK_M"], "BLOCK_N": tile["BLOCK_N"]}
        options = {key: tile[key] for key in ("num_warps", "num_stages") if key in tile}
        _attn_fwd_hopper[grid](*args, **flags, **blocks, **options)
    return out, lse


def _compile_configs(args: tuple, flags: dict, tile: dict | None) -> None:
    """Compile (``warmup``) each config that the autotuner would time for these arguments, or ``tile``."""
    named = dict(zip(_attn_fwd_hopper.arg_names, args))
    if tile is not None:
        configs = [_tile_config(tile)]
    else:
        configs = prune_configs(_attn_fwd_hopper_tuned.configs, named, **flags)
    for config in configs:
        set_descriptor_blocks({**named, **flags, **config.kwargs})
        _attn_fwd_hopper.warmup(*args, grid=(1,), **flags, **config.all_kwargs())


def compile_jobs(capability: int) -> list:
    """What CI compiles (:mod:`attention_lab.kernels.compile_check`): on sm_90 every config of
    :data:`HOPPER_CONFIGS` at head_dim 128 (its largest tiles, so the most shared memory and registers), causal,
    one program per tile and persistent, in bf16, with :func:`estimated_shared_memory` to check (a config
    :func:`fits` rules out is listed as skipped); on other architectures nothing (it is never chosen there).
    The descriptors' types are read from descriptors built over small CPU tensors."""
    from attention_lab.kernels.compile_check import CompileJob

    if capability != HOPPER_CAPABILITY or not TRITON_AVAILABLE or TensorDescriptor is None:
        return []
    from triton.runtime.jit import mangle_type

    head_dim = block_d = MAX_HEAD_DIM
    jobs = []
    for config in HOPPER_CONFIGS:
        rows = torch.empty(1, 1, 128, head_dim, dtype=torch.bfloat16)
        query_type = mangle_type(descriptor(rows, config.kwargs["BLOCK_M"], block_d))
        key_type = mangle_type(descriptor(rows, config.kwargs["BLOCK_N"], block_d))
        types = {"q_desc": query_type, "o_desc": query_type, "k_desc": key_type, "v_desc": key_type,
                 "LSE": "*fp32", "qk_scale": "fp32"}
        for persistent in (False, True):
            common = dict(family="hopper", kernel="forward" + "+persistent" * persistent, fn=_attn_fwd_hopper,
                          types=types, num_warps=config.num_warps, num_stages=config.num_stages,
                          config=dict(config.kwargs), head_dim=head_dim,
                          estimate=estimated_shared_memory(config, block_d, 2, persistent))
            if not fits(config, block_d, 2, persistent):
                jobs.append(CompileJob(constexprs={}, skipped="pruned: does not fit at head_dim 128", **common))
                continue
            constexprs = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, CAUSAL=True, PERSISTENT=persistent, **config.kwargs)
            jobs.append(CompileJob(constexprs=constexprs, **common))
    return jobs


__all__ = ["unsupported_reason", "supports", "flash_attention_forward_hopper", "HOPPER_CONFIGS", "PERSISTENT",
           "compile_jobs", "device_capability_of", "heads_at_once"]
