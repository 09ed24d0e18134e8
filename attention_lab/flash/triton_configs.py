"""Block sizes for the Triton FlashAttention kernels, and which of them a given GPU gets.

Each kernel has a short list of candidate tiles (``triton.Config``); ``@triton.autotune`` times the
candidates that survive the pruning hook of :func:`make_pruner` on the first call for each shape and
keeps the fastest. The lists hold two kinds of candidates:

* **sm_80 and newer** (A100, L4, H100: :data:`TENSOR_CORE_CONFIGS`). There ``tl.dot`` runs on the tensor
  cores and the loop is software-pipelined. Pruning is by shared memory, the resource that decides
  whether a tile runs at all: a program keeps its own tile (the queries, or the keys and values it owns)
  in shared memory plus ``num_stages`` copies of the tiles it streams through the loop. If that does not
  fit the GPU's per-block limit (:func:`attention_lab.kernels.common.shared_memory_limit`: 163 KiB on an
  A100, 99 on an L4, 227 on an H100) the launch fails, so such a config is dropped *before* autotuning —
  never silently at run time.
* **sm_75, a T4** (:data:`T4_CONFIGS`, one tile per head dimension). On sm_75 Triton (3.2 and
  later) runs ``tl.dot`` on the FMA units — no tensor cores — and does not pipeline at all (``num_stages``
  changes nothing, so every T4 tile has one stage). The T4 is where the kernel is correct and readable,
  not fast. Its tiles are small, with enough warps that ``ptxas`` keeps every value in registers: none
  spills to local memory at any head dimension, in fp16 or fp32 (checked in CI with the ``ptxas -v``
  shipped in the triton wheel, ``tests/test_ch10_t4_spills.py``), and all fit the T4's 64 KiB.

The same rule without a GPU is :func:`configs_for`. The shared-memory estimate is checked against what
the compiler really allocates, for every kernel, config and architecture, by
:mod:`attention_lab.kernels.compile_check` (run in CI on the CPU).
"""

from __future__ import annotations

from attention_lab.kernels.optional_triton import triton

from attention_lab.kernels.common import KIB, device_capability, shared_memory_limit

BF16_MIN_CAPABILITY = 80  # bf16 arrives with Ampere (sm_80); a T4 (sm_75) has fp16 only
TENSOR_CORE_MIN_CAPABILITY = 80  # below it (sm_7x), Triton 3.2+ lowers tl.dot to FMA and does not pipeline


def _config(block_m: int, block_n: int, warps: int, stages: int, maxnreg: int | None = None) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages,
                         maxnreg=maxnreg)


# sm_80 and newer. Each list is short on purpose: every config is compiled for every variant (head_dim,
# causal, window, mask, dtype) and timed once per shape bucket. On the H100 run of benchmarks/flash.py the
# autotuner chose 128×64 (8 warps, 3 stages) for most forward shapes; configs it never chose there stay only
# where another GPU needs them (the 2-stage ones for Ampere/Ada, the smallest where shared memory is short).
TENSOR_CORE_CONFIGS = {
    # Forward: a program owns BLOCK_M queries and streams BLOCK_N keys/values per step.
    "forward": [
        _config(128, 128, 8, 3),  # Hopper: big tiles, deep pipeline
        _config(128, 64, 8, 3),
        _config(128, 64, 4, 3),
        _config(128, 64, 4, 2),   # Ampere/Ada (A100, L4)
        _config(64, 64, 4, 3),
        _config(64, 64, 4, 2),
        _config(64, 32, 4, 2),    # the smallest
    ],
    # dK/dV: a program owns BLOCK_N keys/values and streams BLOCK_M queries (with dO, lse, delta) per step.
    "backward_kv": [
        _config(64, 128, 8, 3),
        _config(32, 128, 4, 3),
        _config(32, 128, 4, 4),
        _config(64, 64, 4, 3),
        _config(32, 64, 4, 3),
        _config(32, 64, 4, 2),
        _config(32, 32, 4, 2),    # the smallest
    ],
    # dQ: a program owns BLOCK_M queries (with dO) and streams BLOCK_N keys/values per step.
    "backward_q": [
        _config(128, 64, 8, 3),
        _config(128, 32, 4, 3),
        _config(64, 64, 4, 3),
        _config(64, 32, 4, 3),
        _config(64, 32, 4, 2),
        _config(32, 32, 4, 2),    # the smallest
    ],
}

# sm_75 (a T4): tl.dot on the FMA units, nothing pipelined — so one stage — and tiles small enough that no value
# spills from registers to local memory. The FMA product keeps, in each thread, its rows of both operands in
# registers, at most 255 per thread: the tile shrinks as head_dim grows, and 8 warps share it. Every T4 tile
# also lets ptxas use all 255 registers (``maxnreg``): without that bound ptxas may spill a few bytes to fit
# more programs per SM (seen with fp32 tiles). Chosen with ``ptxas -v`` over every variant of each kernel
# (causal or not, window, mask, 64-bit offsets, head dims that are not powers of two) with Triton 3.6 (Colab's)
# and 3.9; CI checks that none spills (tests/test_ch10_t4_spills.py; ``python tests/test_ch10_t4_spills.py``
# prints the registers of each).
T4_MAXNREG = 255


def _t4(block_m: int, block_n: int, warps: int) -> triton.Config:
    return _config(block_m, block_n, warps, 1, T4_MAXNREG)


T4_CONFIGS = {  # kernel -> padded head_dim -> the one tile a T4 gets, in fp16 and in fp32
    "forward": {16: _t4(32, 32, 8), 32: _t4(32, 32, 8), 64: _t4(32, 16, 8), 128: _t4(16, 16, 8)},
    "backward_kv": {16: _t4(32, 32, 8), 32: _t4(32, 32, 8), 64: _t4(16, 16, 8), 128: _t4(16, 16, 8)},
    "backward_q": {16: _t4(32, 32, 8), 32: _t4(32, 32, 8), 64: _t4(16, 16, 8), 128: _t4(16, 16, 8)},
}


def _key(config: triton.Config) -> tuple:
    """What makes two configs the same launch: the tile, warps, stages and register bound."""
    return tuple(sorted(config.kwargs.items())), config.num_warps, config.num_stages, config.maxnreg


def _union(*lists: list[triton.Config]) -> list[triton.Config]:
    seen, out = set(), []
    for config in (c for configs in lists for c in configs):
        if _key(config) not in seen:
            seen.add(_key(config))
            out.append(config)
    return out


def _t4_list(kernel: str) -> list[triton.Config]:
    return _union(list(T4_CONFIGS[kernel].values()))


# What each autotuner is given: every GPU's candidates; the pruning hook keeps those of the GPU it runs on.
FORWARD_CONFIGS = _union(TENSOR_CORE_CONFIGS["forward"], _t4_list("forward"))
BACKWARD_KV_CONFIGS = _union(TENSOR_CORE_CONFIGS["backward_kv"], _t4_list("backward_kv"))
BACKWARD_Q_CONFIGS = _union(TENSOR_CORE_CONFIGS["backward_q"], _t4_list("backward_q"))
CONFIGS = {"forward": FORWARD_CONFIGS, "backward_kv": BACKWARD_KV_CONFIGS, "backward_q": BACKWARD_Q_CONFIGS}


def estimated_shared_memory(kernel: str, config: triton.Config, block_d: int, element_bytes: int,
                            capability: int = 90, has_mask: bool = False) -> int:
    """Bytes of shared memory a config of ``kernel`` needs on sm_``capability`` (an upper bound).

    ``block_d`` is the head dimension padded to a power of two; a "row" below is one row of a
    ``(·, block_d)`` tile, ``block_d · element_bytes`` bytes.

    * sm_80 and newer copy tiles into shared memory asynchronously (cp.async, TMA) and keep
      ``num_stages`` copies of every tile the loop streams, plus the program's own tiles:
      forward ``BLOCK_M + stages·2·BLOCK_N`` rows (Q; K and V), dQ ``2·BLOCK_M + stages·2·BLOCK_N``
      (Q, dO; K, V), dK/dV ``2·BLOCK_N + stages·2·BLOCK_M`` rows (K, V; Q, dO) and the fp32 lse
      and delta of each streamed row. Exact on sm_90, a little above what sm_80/sm_89 allocate.
    * sm_75 has no asynchronous copies: loads go through registers, and shared memory holds
      operands being re-laid out for the FMA units' products — each tile about twice (forward
      ``2·BLOCK_M + 2·BLOCK_N`` rows, dQ ``4·BLOCK_M + 2·BLOCK_N``, dK/dV ``2·BLOCK_M + 4·BLOCK_N``)
      plus two ``(BLOCK_M, BLOCK_N)`` score tiles; a loose bound, tight at head_dim 128.
    * ``has_mask`` (an explicit mask, ``HAS_MASK``): on sm_80 and newer the (BLOCK_M, BLOCK_N) mask tile adds
      up to 4 bytes per pair to the forward (measured: 64 KiB at 128×128 on sm_80/sm_89, 32 KiB on sm_90, where
      the 128×128 / 3-stage forward at head_dim 128 then needs 256 KiB of the H100's 227) and 1 byte per
      pair to the backward kernels; nothing measurable on sm_75. A window adds nothing.

    Calibrated with :mod:`attention_lab.kernels.compile_check` (Triton 3.9); CI compiles every kept
    config and checks the real allocation fits, so a wrong estimate fails a test instead of a launch.
    """
    block_m, block_n, stages = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_stages
    row = block_d * element_bytes
    if kernel not in CONFIGS:
        raise ValueError(f"kernel must be one of {sorted(CONFIGS)}, got {kernel!r}")
    if capability >= 80:
        rows = {"forward": block_m + stages * 2 * block_n,
                "backward_q": 2 * block_m + stages * 2 * block_n,
                "backward_kv": 2 * block_n + stages * 2 * block_m}[kernel]
        stats = stages * block_m * 8 + KIB if kernel == "backward_kv" else 0  # lse + delta (fp32), alignment
        mask = (4 if kernel == "forward" else 1) * block_m * block_n if has_mask else 0  # the mask tile
        return rows * row + stats + mask
    rows = {"forward": 2 * block_m + 2 * block_n,
            "backward_q": 4 * block_m + 2 * block_n,
            "backward_kv": 2 * block_m + 4 * block_n}[kernel]
    return rows * row + 2 * block_m * block_n * element_bytes


def fits(kernel: str, config: triton.Config, block_d: int, element_bytes: int, capability: int,
         has_mask: bool = False) -> bool:
    """True when ``config`` of ``kernel`` fits the shared memory of compute capability ``capability``."""
    needed = estimated_shared_memory(kernel, config, block_d, element_bytes, capability, has_mask)
    return needed <= shared_memory_limit(capability)


def candidates(kernel: str, block_d: int, element_bytes: int, capability: int) -> list[triton.Config]:
    """The configs of ``kernel`` meant for sm_``capability``, before the shared-memory check.

    sm_80 and newer: every one of :data:`TENSOR_CORE_CONFIGS`. Below (a T4, sm_75): the one tile of
    :data:`T4_CONFIGS` for this padded ``block_d``, whatever the element size (none for other sizes).
    """
    if kernel not in CONFIGS:
        raise ValueError(f"kernel must be one of {sorted(CONFIGS)}, got {kernel!r}")
    if capability >= TENSOR_CORE_MIN_CAPABILITY:
        return list(TENSOR_CORE_CONFIGS[kernel])
    tile = T4_CONFIGS[kernel].get(block_d)
    return [] if tile is None else [tile]


def configs_for(kernel: str, block_d: int, element_bytes: int, capability: int,
                has_mask: bool = False) -> list[triton.Config]:
    """The configs of ``kernel`` that the device gets: the pruning rule, usable without a GPU.

    :func:`candidates` for the device, less those whose shared memory does not fit it.
    """
    kept = [c for c in candidates(kernel, block_d, element_bytes, capability)
            if fits(kernel, c, block_d, element_bytes, capability, has_mask)]
    if not kept:
        raise ValueError(f"no {kernel} tile fits sm_{capability} at head_dim {block_d}{' with a mask' * has_mask} "
                         f"({shared_memory_limit(capability) // KIB} KiB of shared memory)")
    return kept


def largest_head_dim(kernel: str, config: triton.Config, capability: int, has_mask: bool = False) -> int | None:
    """The largest padded head_dim (128, 64, 32, 16) at which the pruning rule keeps ``config`` in 16 bits, or None.

    Shared memory grows with head_dim, so that is the config's worst case on this GPU (what CI compiles).
    None also for a config meant for other GPUs (a T4 tile on sm_80+, an sm_80+ tile on a T4).
    """
    for block_d in (128, 64, 32, 16):
        if any(_key(c) == _key(config) for c in candidates(kernel, block_d, 2, capability)) and \
                fits(kernel, config, block_d, 2, capability, has_mask):
            return block_d
    return None


def check_tile_fits(kernel: str, tile: dict, block_d: int, element_bytes: int, capability: int,
                    has_mask: bool = False) -> None:
    """Refuse, before any launch, a user-fixed ``tile`` (``flash_attention(tile=...)``) that the pruning rule says
    cannot fit sm_``capability``: a ``ValueError`` naming the tile, the bytes it needs and what fits instead."""
    config = triton.Config({"BLOCK_M": tile["BLOCK_M"], "BLOCK_N": tile["BLOCK_N"]},
                           num_warps=tile.get("num_warps", 4), num_stages=tile.get("num_stages", 3))
    needed = estimated_shared_memory(kernel, config, block_d, element_bytes, capability, has_mask)
    limit = shared_memory_limit(capability)
    if needed > limit:
        kept = [dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
                for c in candidates(kernel, block_d, element_bytes, capability)
                if fits(kernel, c, block_d, element_bytes, capability, has_mask)]
        raise ValueError(f"tile {tile} needs about {needed // KIB} KiB of shared memory for the {kernel} kernel at "
                         f"head_dim {block_d}{' with a mask' * has_mask}, more than the {limit // KIB} KiB of "
                         f"sm_{capability}: pass a smaller tile (fewer BLOCK_M/BLOCK_N rows or num_stages), e.g. "
                         f"{kept[-1] if kept else None}, or tile=None to autotune")


def make_pruner(kernel: str):
    """An ``early_config_prune`` hook for ``@triton.autotune``: keep the configs of ``kernel`` that the GPU gets.

    Those of :func:`configs_for`: on sm_80 and newer the tensor-core configs that fit its shared memory; on a
    T4 exactly its one tile for this head dimension.
    """

    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        tensor = named_args["Q"]
        capability = device_capability(tensor.device)
        block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
        has_mask = bool(kwargs.get("HAS_MASK", named_args.get("HAS_MASK", False)))  # the mask tile costs shared memory
        meant = {_key(c) for c in candidates(kernel, block_d, tensor.element_size(), capability)}
        kept = [c for c in configs
                if _key(c) in meant and fits(kernel, c, block_d, tensor.element_size(), capability, has_mask)]
        if not kept:
            raise ValueError(f"no {kernel} tile fits sm_{capability} at head_dim {block_d} with "
                             f"{tensor.dtype}{' and a mask' * has_mask} ({shared_memory_limit(capability) // KIB} KiB "
                             f"of shared memory)")
        return kept

    return prune
