# %% [markdown]
# # 10 · FlashAttention in Triton
#
# Chapter 09 wrote FlashAttention in plain PyTorch: correct, O(N) memory, and slow — every tile is a
# separate PyTorch call. This chapter writes the same loop as a **GPU kernel** in
# [Triton](https://triton-lang.org) (Tillet et al., *Triton: an intermediate language and compiler for
# tiled neural network computations*, 2019), forward and backward, and measures it against PyTorch's own
# fused attention. The algorithm is FlashAttention-2's (Dao, 2023): one program per block of queries,
# the online softmax in registers, the output normalised once at the end.
#
# Plan: (1) PyTorch's `scaled_dot_product_attention` and how to choose its backend; (2) the kernel built
# up in four steps, each timed on a Hopper GPU; (3) the backward pass; (4) speed and memory against SDPA.
#
# **Without a GPU** the very same kernels run under Triton's *interpreter* (`TRITON_INTERPRET=1`, set
# before the kernels are imported): numpy executes each program of the grid in turn — slow, but exact,
# which is how this chapter's tests check the kernels on a CPU. The speed plots then show the committed
# results of `benchmarks/flash.py` on a Hopper GPU (the card and versions are printed with them).
#
# **What the kernel cells need:** the `triton` package, which installs on Linux only (`pip install triton`;
# Colab has it). On macOS or Windows, without it, every cell still runs: the kernel cells compare the
# reference attention with chapter 09's tiled PyTorch forward instead, the plots show the committed GPU
# results, and the kernels' source is still displayed and walked through.
#
# *The outputs on this page were computed on a CPU, under Triton's interpreter; the speed and memory
# figures are the committed GPU results. Executed on a GPU again
# (`python benchmarks/run_all_notebooks.py --only 10 --write-dir OUT`), the live GPU cells fill in.*

# %%
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before the kernels are imported

import ast
import inspect

import matplotlib.pyplot as plt
import torch.nn.functional as F
from IPython.display import Code, display
from torch.nn.attention import SDPBackend, sdpa_kernel

from attention_lab.attention import MultiHeadAttention, scaled_dot_product_attention
from attention_lab.exercises.ch10 import check_online_softmax_step
from attention_lab.flash import triton_configs
from attention_lab.book.results import load as load_results
from attention_lab.costs.gpu_facts import GPU_TABLE, detect_device
from attention_lab.costs.timing import time_function
from attention_lab.flash import benchmark_report
from attention_lab.flash import triton_attention as ta
from attention_lab.flash.tiled import FULL, PARTIAL, SKIP, block_schedule, tiled_attention
from attention_lab.flash.triton_attention import flash_attention
from attention_lab.flash.triton_steps import STEP_TILE, step_forward
from attention_lab.kernels import common
from attention_lab.kernels.optional_triton import TRITON_AVAILABLE, tl, triton  # Triton, or stand-ins without it

ON_GPU = torch.cuda.is_available()
KERNELS = TRITON_AVAILABLE  # compiled on a GPU, interpreted on a CPU; without triton the PyTorch path
torch.set_num_threads(1)  # the interpreter's tiles are tiny: one CPU thread is fastest
results = load_results("flash_benchmark")  # the committed GPU run of benchmarks/flash.py (package data)
env = results["environment"]


def time_ms(fn):
    """Median milliseconds of fn() (CUDA events): works with or without triton."""
    return time_function(fn, warmup=3, repeats=10) * 1e3


def show_source(module, name, start_at=None):
    """Display function ``name`` of ``module`` exactly as its file has it (decorator included);
    ``start_at``: show only from the first line containing that text."""
    text = inspect.getsource(module)
    node = next(n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef) and n.name == name)
    lines = text.splitlines()[min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1:node.end_lineno]
    if start_at is not None and any(start_at in line for line in lines):
        lines = lines[next(i for i, line in enumerate(lines) if start_at in line):]
    display(Code("\n".join(lines), language="python"))


print("kernels:", ("compiled for this GPU" if ON_GPU else "Triton interpreter on the CPU (TRITON_INTERPRET=1)")
      if KERNELS else "triton is not installed: the PyTorch path (reference and tiled attention), committed results")
print(f"committed benchmark: {env['card']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
      f"{results['dtype']}, B·N = {results['tokens']} tokens, H·D = {results['hidden']}")

# %% [markdown]
# ## 1. PyTorch's own: `scaled_dot_product_attention` and its backends
#
# `torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=...)` is one function with several
# implementations behind it: **FlashAttention-2** (`SDPBackend.FLASH_ATTENTION`), **memory-efficient**
# attention (xFormers' kernel, `EFFICIENT_ATTENTION`), NVIDIA's **cuDNN** fused attention
# (`CUDNN_ATTENTION`) and the plain **math** path (`MATH`, materialises the N × N matrix; the only one
# on a CPU). PyTorch picks one by dtype, shape, mask and GPU. To choose yourself, use the context
# manager `torch.nn.attention.sdpa_kernel` — the older `torch.backends.cuda.sdp_kernel` is deprecated.
# A backend that cannot serve the call raises an error instead of silently falling back.
#
# The tensor layout is the same as this book's, `(B, H, N, D)`. One convention differs: with more keys than
# queries, PyTorch's `is_causal` aligns the queries to the *start* of the keys (query $i$ sees keys
# $j \le i$), while this book aligns them to the *end* (query $i$ sees $j \le i + N_k - N_q$, as in decoding
# with a cache; PyTorch's `causal_lower_right` bias does the same). With $N_q = N_k$ the two agree.

# %%
generator = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, 2, 37, 16, generator=generator) for _ in range(3))
with sdpa_kernel(SDPBackend.MATH):
    out_math = F.scaled_dot_product_attention(q, k, v, is_causal=True)
print("MATH backend vs the reference:", (out_math - scaled_dot_product_attention(q, k, v, causal=True)).abs().max().item())

if ON_GPU:
    qg, kg, vg = (torch.randn(8, 16, 4096, 128, device="cuda", dtype=torch.float16) for _ in range(3))
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        try:
            with sdpa_kernel(backend):
                ms = time_ms(lambda: F.scaled_dot_product_attention(qg, kg, vg, is_causal=True))
            flops = benchmark_report.attention_flops(8, 16, 4096, 128, causal=True)
            print(f"{backend.name:20} {ms:7.2f} ms  {flops / ms / 1e9:5.0f} TFLOP/s")
        except RuntimeError as error:
            print(f"{backend.name:20} not available here: {str(error).splitlines()[0][:80]}")
    del qg, kg, vg
else:
    print("No GPU: on one, this cell times each backend on (8, 16, 4096, 128) fp16. The committed run:")
for causal in (False, True):
    found = {r["method"]: r["tflops"] for r in benchmark_report.rows(results, head_dim=128, n=4096, causal=causal,
                                                                     mode="fwd")}
    print(f"  {env['card']}, D=128, N=4096, causal={causal}: SDPA flash {found['sdpa_flash']:.0f}, "
          f"cuDNN {found['sdpa_cudnn']:.0f}, naive {found['naive']:.0f} TFLOP/s (forward)")

# %% [markdown]
# ## 2. Triton in one paragraph
#
# A Triton kernel is a Python function decorated with `@triton.jit` that describes what **one program**
# does; it is launched on a grid of programs (`kernel[grid](...)`), and each reads its coordinates with
# `tl.program_id`. A program works on whole **blocks**: `tl.arange(0, BLOCK)` makes a vector of offsets,
# `tl.load(pointers, mask=...)` reads a tile from GPU memory (masked where it runs past the end),
# `tl.dot` multiplies two tiles, `tl.max`/`tl.sum` reduce along an axis. Block sizes are `tl.constexpr`:
# the compiler specialises the kernel for them and lays the tiles out in registers and shared memory.
# What `tl.dot` becomes depends on the GPU: on an A100, L4 or H100 (sm_80 and later) it is a tensor-core
# instruction (`mma`, and `wgmma` on an H100), and the compiler software-pipelines the loop (`num_stages`
# copies of the streamed tiles in flight). On a **T4 (sm_75)** Triton 3.2 and later run `tl.dot` on the
# ordinary FMA units, not the tensor cores (triton-lang/triton PR #5066 deprecated the older MMAv1
# tensor-core path), and do not pipeline at all: `num_stages` changes nothing there. Threads, shared
# memory and synchronisation — the hard parts of CUDA — are the compiler's job either way.
#
# Our forward kernel, `attention_lab/flash/triton_attention.py: _attn_fwd`, gives each program
# `BLOCK_M` queries of one (batch, head) and loops over the keys `BLOCK_N` at a time. Query head `h`
# reads kv head `h // group` (GQA/MQA without copying K and V); a head dimension that is not a power of
# two is padded inside the kernel with masked loads. Below, the kernel is built in four steps, each a
# complete kernel; all four are checked here against the reference and were timed on the committed run's GPU.

# %%
device = torch.device("cuda" if ON_GPU else "cpu")
dtype = torch.float16 if ON_GPU else torch.float32  # the interpreter is fastest (and exact) in fp32
shape = (2, 8, 1000, 64) if ON_GPU else (1, 2, 45, 16)  # (B, H, N, D): odd N crosses block edges
q, k, v = (torch.randn(*shape, device=device, generator=torch.Generator(device).manual_seed(i)).to(dtype)
           for i in range(3))
k, v = k[:, :2], v[:, :2]  # 2 kv heads: on the GPU 8 query heads share them (GQA), on the CPU MHA
for causal in (False, True):
    expected = scaled_dot_product_attention(q.float(), k.float(), v.float(), causal=causal)
    if KERNELS:
        errors = {step: (step_forward(step, q, k, v, causal=causal).float() - expected).abs().max().item()
                  for step in ("two_pass", "online", "skip", "tuned")}
        print(f"causal={causal}: max |step − reference| " + ", ".join(f"{s} {e:.1e}" for s, e in errors.items()))
    else:  # no triton: chapter 09's tiled PyTorch forward, the same algorithm
        tiled = tiled_attention(q.float(), k.float(), v.float(), causal=causal)
        print(f"causal={causal}: no triton, so no kernel steps; tiled PyTorch vs reference "
              f"{(tiled - expected).abs().max().item():.1e}")

# %% [markdown]
# ### Step 1 — a first forward that works: two passes
#
# The safest softmax subtracts each row's maximum before exponentiating. A kernel that has only the
# tile of scores in front of it does not know the maximum yet, so the first version reads K twice:
# **pass 1** computes $m_i = \max_j s_{ij}$ over all key blocks; **pass 2** recomputes the scores and
# accumulates $\ell_i = \sum_j e^{s_{ij} - m_i}$ and $\text{acc} = \sum_j e^{s_{ij}-m_i} v_j$, with no rescaling
# because $m_i$ is final. It works (the cell above checks it), but computes $QK^\top$ twice. For causal
# attention it visits every key block and masks the future ones element by element.
#
# ### Step 2 — the online softmax, in registers
#
# Chapter 08's online softmax merges the two passes: keep a running max $m_i$, sum $\ell_i$ and output
# $\text{acc}$, and rescale the old ones whenever the max grows. In the kernel all three live in
# registers for the whole loop. One more trick: the GPU's special-function unit computes $2^x$
# natively, so the kernel multiplies the scores once by $\text{scale}\cdot\log_2 e$ and uses `exp2`
# everywhere — $e^{s - m} = 2^{(s-m)\log_2 e}$, the change of base folded into the scale. For a block of
# scores $S_j$ (already in these log2 units):
#
# $$m^{new} = \max(m_i, \operatorname{rowmax} S_j),\quad \alpha = 2^{m_i - m^{new}},\quad P_j = 2^{S_j - m^{new}},$$
# $$\ell_i \leftarrow \alpha\,\ell_i + \operatorname{rowsum} P_j,\qquad \text{acc} \leftarrow \alpha\,\text{acc} + P_j V_j .$$
#
# The output is divided by $\ell_i$ once, after the loop, and the kernel stores the row's log-sum-exp
# $m_i + \log_2 \ell_i$ for the backward pass.
#
# **Exercise.** Write this update as a Triton function `online_softmax_step(m_i, l_i, acc, qk, v)` that
# returns the new `(m_i, l_i, acc)` — the state in the order of chapters 08 and 09. `m_i` and `l_i` are
# `(BLOCK_M,)`, `acc` is `(BLOCK_M, D)`, all fp32; `qk` is the `(BLOCK_M, BLOCK_N)` tile of scaled scores
# (masked entries are $-\infty$), `v` the `(BLOCK_N, D)` value tile. Use `tl.maximum`, `tl.max(x, 1)`,
# `tl.exp2`, `tl.sum(x, 1)`, `tl.dot(a, b)` and broadcasting with `x[:, None]`; cast `p` to `v.dtype` before
# the `tl.dot`. The checker plugs your function into the library's real kernel in place of its own update
# and runs it under the interpreter on odd shapes, causal and not, and once with inputs ten times larger —
# scores of hundreds in log2 units, where an update that skips the running maximum overflows to NaN
# (chapter 08's point; the message says so).

# %%
@triton.jit
def online_softmax_step(m_i, l_i, acc, qk, v):
    ### BEGIN SOLUTION
    m_new = tl.maximum(m_i, tl.max(qk, 1))                  # m_new = max(m_i, rowmax(S_j))
    alpha = tl.exp2(m_i - m_new)                            # rescales the old state
    p = tl.exp2(qk - m_new[:, None])                        # P_j = 2^(S_j - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)                        # l = alpha·l + rowsum(P_j)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)   # acc = alpha·acc + P_j V_j
    return m_new, l_i, acc
    ### END SOLUTION


# %%
if TRITON_AVAILABLE:  # the checker runs your step inside the real kernel, under Triton's interpreter
    check_online_softmax_step(online_softmax_step);
else:
    print("No triton here: the check runs the kernel, so it runs where triton installs (Linux, Colab).")

# %% [markdown]
# The library's version (`online_softmax_update` in `attention_lab/kernels/common.py`, which the decode
# kernels of chapters 11 and 12 call too) adds one guard: a row that has not seen any key yet
# (all masked so far: $m = -\infty$) subtracts 0 instead of $-\infty$, so $-\infty - (-\infty)$ never
# makes a NaN — that is how rows whose every key is masked come out as zeros.
#
# ### Step 3 — skip what the mask hides, mask only the edges
#
# With a causal mask the key blocks right of the diagonal contribute nothing: the loop of a query block
# stops at the diagonal, and a sliding window also starts the loop at the window's left edge. Of the
# blocks visited, only those the diagonal (or the window's edge, or the end of the sequence) cuts
# through need the element-wise mask; the kernel runs the loop in three stretches — masked left edge,
# unmasked interior, masked right edge — so the interior blocks, nearly all of them at large N, take a
# fast path with no mask and no bounds checks. The stretches are computed by `_key_blocks` in the
# kernel (`_query_blocks` for the backward's dK/dV program) and tested to visit exactly the tiles that
# chapter 09's `block_schedule` marks as needed:

# %%
n_demo, block_m, block_n = 1024, STEP_TILE["BLOCK_M"], STEP_TILE["BLOCK_N"]
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, (name, window) in zip(axes, (("causal", None), ("window 300", 300))):
    schedule = block_schedule(n_demo, n_demo, block_m, block_n, causal=True, window=window)
    ax.imshow(schedule.numpy(), cmap="Blues", vmin=0, vmax=2, aspect="auto")
    counts = {label: int((schedule == code).sum()) for label, code in (("skipped", SKIP), ("unmasked", FULL),
                                                                        ("masked", PARTIAL))}
    ax.set_title(f"{name}: " + ", ".join(f"{c} {label}" for label, c in counts.items()), fontsize=9)
    ax.set_xlabel(f"key block (BLOCK_N = {block_n})")
    ax.set_ylabel(f"query block (BLOCK_M = {block_m})")
    print(f"{name}: visits {(schedule != SKIP).float().mean().item():.0%} of the tiles, masks "
          f"{(schedule == PARTIAL).float().mean().item():.0%}")
fig.suptitle(f"Tiles of an N = {n_demo} attention (white: never loaded, light: unmasked fast path, dark: masked)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Step 4 — tuning the tile for the GPU
#
# The best tile depends on the GPU and the head dimension: bigger tiles reuse each loaded block for
# more work but need more registers and **shared memory**, the on-chip memory that holds the pipelined
# tiles — `num_stages` copies of every streamed K and V tile. A launch that asks for more shared memory
# than the GPU has fails, so `triton_configs` lists a few candidate tiles per kernel and a documented
# pruning rule drops those that cannot fit *before* `@triton.autotune` times the rest on the first call
# (each new sequence-length bucket, head dimension and mask kind is tuned once). An H100 (sm_90) has the
# most shared memory. A Colab T4 (sm_75) is different in kind, not only smaller (64 KiB, no bf16): its
# `tl.dot` runs on the FMA units, where each thread holds its rows of both operands in registers (at most
# 255), and nothing is pipelined. So a T4 gets exactly one tile per head dimension, with one stage (more
# would be the same compiled code, timed twice), chosen so that no value spills from registers to local
# memory at any head dimension, fp16 or fp32 — CI compiles every one for sm_75 and reads `ptxas -v`
# (`tests/test_ch10_t4_spills.py`):

# %%
for capability, gpu in ((75, "T4"), (80, "A100"), (89, "L4"), (90, "H100")):
    kept = triton_configs.configs_for("forward", 128, 2, capability)
    tiles = ", ".join(f"{c.kwargs['BLOCK_M']}×{c.kwargs['BLOCK_N']}/{c.num_warps}w/{c.num_stages}st" for c in kept)
    meant = triton_configs.candidates("forward", 128, 2, capability)
    print(f"sm_{capability} {gpu:5} {triton_configs.shared_memory_limit(capability) // 1024:3} KiB: forward tiles at "
          f"D=128 kept {len(kept)}/{len(meant)}: {tiles}")
print("T4 tile per head dim (forward):", ", ".join(
    f"D={d}: {c.kwargs['BLOCK_M']}×{c.kwargs['BLOCK_N']}/{c.num_warps}w" for d, c in triton_configs.T4_CONFIGS["forward"].items()))
try:
    ta.check_dtype_supported(torch.bfloat16, 75)
except ValueError as error:
    print("bf16 on a T4:", error)
chosen = results["autotune"]["forward"]
print(f"\n{env['card']}: the autotuner kept these forward tiles over {len(chosen)} shapes:")
for config in sorted(set(chosen.values())):
    print(f"  {list(chosen.values()).count(config):2}×  {config.split(', num_ctas')[0]}")

# %% [markdown]
# The estimate behind the rule was calibrated, and is checked in CI, by *compiling* every kernel and
# config for sm_75, sm_80, sm_89 and sm_90 on a CPU — Triton compiles for any target without a GPU —
# and reading the shared memory the compiler allocates (`python -m attention_lab.kernels.compile_check`;
# `tests/test_ch10_compile_check.py`). A tile that does not fit still compiles; only that check catches it.
#
# ### On a T4: correct and readable, not fast
#
# Said plainly: on a free Colab T4 this chapter's kernel runs its matrix products on the FMA units, one
# multiply-add per lane per cycle, while PyTorch's SDPA backends there (the memory-efficient kernel, and
# the math path's cuBLAS matrix products) run on the T4's fp16 tensor cores. That is a hardware gap, not a
# coding one: the cell below computes the two peaks from the T4's datasheet. So on a T4 expect SDPA to be
# several times faster than this kernel; what the T4 is for is running the kernel *correctly*, reading it
# and changing it. The speed story (section 4) is told on an H100, where both sides use tensor cores. On a
# T4 the live cell at the end of section 4 prints the comparison measured there.

# %%
t4 = GPU_TABLE["T4"]
T4_BOOST_GHZ, FP32_LANES_PER_SM = 1.59, 64  # T4 datasheet: 1590 MHz boost; Turing SM: 64 FP32 lanes
fma_tflops = t4.sms * FP32_LANES_PER_SM * 2 * T4_BOOST_GHZ / 1e3  # 2 FLOPs per fused multiply-add
print(f"T4: {t4.sms} SMs × {FP32_LANES_PER_SM} FP32 lanes × 2 FLOP × {T4_BOOST_GHZ} GHz = {fma_tflops:.1f} TFLOP/s "
      f"on FMA units, vs {t4.fp16_tflops:.0f} TFLOP/s fp16 on tensor cores ({t4.fp16_tflops / fma_tflops:.0f}× more)")
if ON_GPU and detect_device().compute_capability == 75:
    print("This GPU is a T4: section 4's last cell times SDPA's backends and this kernel here.")

# %% [markdown]
# ### What each step bought
#
# Measured on the H100 in `benchmarks/flash.py` (bf16, D = 128, B·N = 32k tokens), against PyTorch's
# FlashAttention-2 backend in the same run:

# %%
benchmark_report.plot_steps(results)
plt.tight_layout()
plt.show()
for causal in (False, True):
    print(f"causal={causal}, forward TFLOP/s at N = " + ", ".join(str(r["n"]) for r in results["steps"]
                                                               if r["step"] == "tuned" and r["causal"] == causal))
    speed = {}
    for step, label in benchmark_report.STEPS.items():
        found = [r["tflops"] for r in results["steps"] if r["step"] == step and r["causal"] == causal]
        speed[step] = found[-1]
        print(f"  {label:48} {' '.join(f'{t:.0f}' for t in found)}")
    print(f"  at the largest N: step 2 / step 1 = {speed['online'] / speed['two_pass']:.2f}×, "
          f"step 3 / step 2 = {speed['skip'] / speed['online']:.2f}×, step 4 / step 3 = {speed['tuned'] / speed['skip']:.2f}×")

# %% [markdown]
# Reading the ratios: the online softmax (step 2) removes step 1's second pass over K. For causal
# attention step 2 still computes the hidden upper triangle and throws it away; skipping those blocks
# (step 3) is the largest single gain, close to the factor of two the triangle predicts. Without a
# mask step 3 gains less: only the masking of interior blocks goes. Autotuning (step 4) adds little
# on this GPU, where the hand-picked tile of steps 1–3 (`STEP_TILE`) is already among the best; its
# value is on *other* GPUs — a T4 cannot run that tile at all.

# %% [markdown]
# ## The real kernel, on the page
#
# The four steps were written to be timed; the kernel the library uses is step 4, and here it is as
# `attention_lab/flash/triton_attention.py` has it — each cell below displays the library's own source
# (read with `inspect`, so it cannot drift from what runs), followed by what to look at. It reads top to
# bottom like the file: the index helpers, the inner loop, the kernel, its epilogue.
#
# **The kernel.** One program handles `BLOCK_M` queries of one (batch, head):

# %%
show_source(ta, "_attn_fwd")

# %% [markdown]
# Walking through it:
#
# * `tl.program_id(0)` is the query block, `tl.program_id(1)` the (batch, head) pair; with a causal mask the
#   block order is reversed, so the programs with the longest rows (the bottom of the triangle) start
#   first and the short ones fill the tail.
# * `kv_h = h // group` is all GQA/MQA costs: query head `h` simply points at kv head `h // group`; K and V
#   are never repeated.
# * `head_offset` moves each base pointer to its (batch, head); `K_ptrs`/`V_ptrs` are a `(BLOCK_N, BLOCK_D)`
#   grid of pointers to the first key block — the loop only adds `start_n · stride_kn` to them.
# * `q` is loaded once and stays in registers for the whole loop; `m_i`, `l_i`, `acc` start at −∞, 0, 0.
# * `_key_blocks` returns four numbers, and the kernel calls the inner loop three times on the three
#   stretches they delimit — passing `MASKED=True/False` by keyword, so the one difference between the
#   calls is visible: only the edge stretches pay for bounds checks and the element-wise mask.
# * The epilogue (below) normalises once and stores the output and the log-sum-exp.
#
# **Which key blocks.** `_key_blocks` turns the causal diagonal and the window into block ranges (the
# tile picture of step 3 is exactly what it computes; chapter 09's `block_schedule` is the test oracle):

# %%
show_source(ta, "_key_blocks")

# %% [markdown]
# The causal rule "query $i$ sees key $j \le i + N_k - N_q$" gives `hi`, one past the last key the block's
# *last* row sees, and `full_hi`, the end of the keys its *first* row sees entirely — whole blocks only.
# Everything in `[mid_lo, mid_hi)` is seen by every row of the block: no mask. The window gives the left
# edge the same way. An explicit mask can forbid any pair, so then every block is masked. Each quotient
# has a non-negative numerator, so it means the same compiled (C's truncating division) and interpreted
# (Python's flooring one).
#
# **Pointers and masked loads.** Three small helpers do every memory access of the forward and backward:

# %%
for helper in ("row_pointers", "load_rows", "may_attend"):
    show_source(ta, helper)

# %% [markdown]
# * `row_pointers` builds the `(rows, BLOCK_D)` pointer tile `base + row·stride + column` (the offset of the
#   block's first row in 64 bits only when a tensor is large enough to need it — the `WIDE` flag).
# * `load_rows` is `tl.load` with a mask: rows past the end of the sequence (`CHECK_ROWS`) and padded columns
#   (a head dimension that is not a power of two is padded to `BLOCK_D`) read as 0. Both conditions are
#   `constexpr`, so the unmasked fast path compiles to a plain load with no comparisons at all.
# * `may_attend` is the mask as a boolean tile: in bounds, causal, window, and optionally a user's mask
#   read from memory. The inner loop turns `False` into $-\infty$ before the softmax.
#
# **The inner loop and the online-softmax update.** One stretch of key blocks, then the update that
# the decode kernels of chapters 11 and 12 call too (`attention_lab/kernels/common.py`):

# %%
show_source(ta, "_attn_fwd_inner")
show_source(common, "online_softmax_update")

# %% [markdown]
# Per key block: load `k` and `v` (masked only if `MASKED`), one `tl.dot` for the scores, already times
# $\text{scale}\cdot\log_2 e$ (`qk_scale`), the mask as $-\infty$, then the update — line for line the
# equations of step 2 and the exercise: $m^{new}$, $\alpha = 2^{m_i - m^{new}}$, $P = 2^{S - m^{new}}$,
# $\ell \leftarrow \alpha\ell + \operatorname{rowsum} P$, $\text{acc} \leftarrow \alpha\,\text{acc} + PV$. Two
# details: `m_ref` replaces $m^{new} = -\infty$ (a row that has seen no key yet) by 0, so no
# $-\infty - (-\infty)$ = NaN appears; and `tl.dot(p, values, acc·alpha)` folds the rescaling into the
# accumulator argument of the matrix product.
#
# **The epilogue.** After the last block, the tail of `_attn_fwd`:

# %%
show_source(ta, "_attn_fwd", start_at="Epilogue")

# %% [markdown]
# $O = \text{acc}/\ell$, once per row and not once per block. The stored log-sum-exp is
# $L_i = m_i + \log_2 \ell_i$, in the same log2 units as the scores: the backward recomputes any tile of
# weights as $P = 2^{S\cdot\text{scale}\log_2 e - L}$ from it, with no max and no sum. A row that saw no
# key ($\ell = 0$) stores a zero output and $L = +\infty$, so its recomputed weights are $2^{-\infty} = 0$.
# Both stores are masked to the rows that exist.

# %% [markdown]
# ## 3. The backward pass
#
# The forward saved only O and each row's log-sum-exp $L_i$; the backward recomputes every tile of
# $P$ from them instead of storing the $N\times N$ matrix (chapter 09). With $\delta_i = \sum_d dO_{id} O_{id}$:
#
# $$P = 2^{S\cdot \text{scale} \log_2 e - L},\quad dV = P^\top dO,\quad dP = dO\, V^\top,\quad dS = P\circ(dP - \delta),$$
# $$dQ = \text{scale}\cdot dS\, K,\qquad dK = \text{scale}\cdot dS^\top Q .$$
#
# Three kernels: `_attn_bwd_delta` computes $\delta$; `_attn_bwd_kv` gives each program a block of keys
# and loops over the query blocks that see them, accumulating $dK, dV$ in registers — for GQA the
# program of a kv head loops over *all* query heads of its group, so their gradients are summed without
# atomics and without repeating K and V; `_attn_bwd_q` gives each program a block of queries and loops
# over their keys for $dQ$. Both skip hidden blocks and mask only edge blocks, like the forward. The
# price of two independent kernels: $QK^\top$ and $dO\,V^\top$ are computed in both, seven matrix
# products where five would do; the gain: no atomic adds and no fp32 $dQ$ accumulator in memory.
# `FlashAttentionFunction` wraps it all as a `torch.autograd.Function`, so `flash_attention` is
# differentiable:

# %%
shape = (2, 8, 999, 64) if ON_GPU else (1, 2, 37, 16)
g = torch.Generator(device).manual_seed(1)
q = torch.randn(*shape, device=device, generator=g).to(dtype).requires_grad_()
k = torch.randn(shape[0], shape[1] // 2, shape[2], shape[3], device=device, generator=g).to(dtype).requires_grad_()
v = torch.randn(shape[0], shape[1] // 2, shape[2], shape[3], device=device, generator=g).to(dtype).requires_grad_()
grad_out = torch.randn(shape, device=device, generator=g).to(dtype)
attention_under_test = flash_attention if KERNELS else tiled_attention  # no triton: chapter 09's tiled backward
for kwargs in ({"causal": True}, {"window": 9}):
    grads = torch.autograd.grad(attention_under_test(q, k, v, **kwargs), (q, k, v), grad_out)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    expected = torch.autograd.grad(scaled_dot_product_attention(q32, k32, v32, **kwargs), (q32, k32, v32),
                                   grad_out.float())
    print(f"{attention_under_test.__name__} {kwargs}: max |grad − reference| " + ", ".join(
        f"d{name} {(a.float() - b).abs().max().item():.1e}" for name, a, b in zip("qkv", grads, expected)))

# %% [markdown]
# **The backward kernels, on the page.** First $\delta_i = \sum_d dO_{id}\,O_{id}$, one program per block of rows:

# %%
show_source(ta, "_attn_bwd_delta")

# %% [markdown]
# A row-wise dot product in fp32 — it is $\operatorname{rowsum}(dP\circ P)$ of chapter 09 computed from
# $O$ and $dO$ alone, since $\sum_j P_{ij}\,dP_{ij} = \sum_j P_{ij}\,(dO_i\cdot v_j) = dO_i \cdot O_i$.
#
# **dK and dV.** One program per block of keys; its inner loop over the query blocks that see them:

# %%
show_source(ta, "_attn_bwd_kv")
show_source(ta, "_attn_bwd_kv_inner")

# %% [markdown]
# * The program loads its `k` and `v` block once and keeps `dk`, `dv` in fp32 registers.
# * `for g in range(group)`: for GQA the program of kv head `kv_h` visits every query head that reads it and
#   sums their contributions — no atomics, no repeated K and V.
# * `_query_blocks` is `_key_blocks` seen from a key block: the causal diagonal is now at the *low* query
#   blocks, so the masked stretch comes first.
# * The inner loop works with transposed tiles (`qk_t` is $S^\top$), so each product has the key block's
#   rows as its rows: `dv += Pᵀ dO`, `dp_t = V dOᵀ`, `ds_t = Pᵀ ∘ (dPᵀ − δ)`, `dk += dSᵀ Q`; the third
#   argument of `tl.dot` is the accumulator. The weights come from the saved `lse`: `exp2(qk_t·qk_scale − lse)`.
# * `dk` is multiplied by the scale once, at the end, then both are stored.
#
# **dQ.** One program per block of queries, like the forward, looping over key blocks:

# %%
show_source(ta, "_attn_bwd_q_inner")

# %% [markdown]
# The same recomputation row-wise: $P = 2^{S\cdot\text{scale}\log_2 e - L}$, $dP = dO\,V^\top$,
# $dS = P\circ(dP - \delta)$, `dq += dS K`. Its kernel `_attn_bwd_q` is `_attn_fwd`'s skeleton (same
# `_key_blocks`, same three stretches) with `q`, `dO`, `lse` and `δ` of its rows loaded once; `dq` is
# scaled and stored once at the end — written by exactly one program, hence no fp32 accumulator in memory.

# %% [markdown]
# ## 4. Speed and memory against PyTorch
#
# The benchmark's shapes follow the FlashAttention papers: B·N fixed at 32k tokens and H·D = 2048, so
# every point does the same amount of work per token; throughput counts $4BHN^2D$ floating-point
# operations per forward (halved when causal) and 3.5 times that for forward + backward. *Naive* is
# the reference attention, which materialises the $N\times N$ scores in fp32.

# %%
benchmark_report.plot_tflops(results)
plt.show()
for mode in ("fwd", "fwd_bwd"):
    for head_dim in (64, 128):
        span = benchmark_report.ratio_range(results, head_dim, mode, min_n=4096)
        cudnn = benchmark_report.ratio_range(results, head_dim, mode, min_n=4096, baseline="sdpa_cudnn")
        print(f"{'forward' if mode == 'fwd' else 'fwd+bwd'} D={head_dim:3}, N ≥ 4k: Triton / SDPA-flash "
              f"{span[0]:.2f}–{span[1]:.2f}×, Triton / cuDNN {cudnn[0]:.2f}–{cudnn[1]:.2f}×")

# %% [markdown]
# **Against FlexAttention.** PyTorch's `flex_attention` takes the score modification and the mask as
# Python functions and has `torch.compile` generate a FlashAttention kernel in Triton for them (Dong et
# al., *Flex Attention: A Programming Model for Generating Optimized Attention Kernels*, 2024): the fair yardstick for a hand-written Triton kernel. `benchmarks/flex.py`
# times it on the same shapes, with SDPA's backends and this kernel measured again in the same run
# (causal Flex gets its block mask built once per N):

# %%
flex = load_results("flash_flex")  # benchmarks/flex.py on a GPU
benchmark_report.plot_tflops(flex)
plt.show()
print(f"{flex['environment']['card']}, torch {flex['environment']['torch']}, triton {flex['environment']['triton']}:")
flex_lines, flex_claims = benchmark_report.flex_reading(flex)
print("\n".join(flex_lines))
for claim, holds in flex_claims.items():
    print(f"{claim}: {holds}")

# %% [markdown]
# Reading the comparison. On an H100 or H200 `flash_attention` is not only the kernel above: it takes the fast
# path of section 6 (a Gluon forward, and Gluon kernels for dK, dV and dQ), and the run measured that choice
# ("library") and the teaching kernels alone side by side. The teaching kernels alone are close to
# FlexAttention: both are FlashAttention-2-shaped Triton code, and the lines above put the teaching kernels
# ahead on most shapes and a few percent behind on some. Flex skips hidden blocks too and leaves full blocks
# unmasked (its block mask records which are full); the teaching kernel runs the longest query rows first,
# which balances the causal triangle's uneven work, and its autotuner picks a tile per shape where Flex,
# compiled with default options as here, takes one from a heuristic (`torch.compile(...,
# mode="max-autotune")` would search). The fast path is what puts the library ahead of Flex at every shape
# and level with cuDNN's forward at D=128 (the statements printed last, tested against the file). At D=64
# with 1k keys the teaching kernel is the faster forward, so the library runs it there (and the run timed that
# choice). Forward + backward comes within 10 % of cuDNN's at D=128 with 4k keys or more and stays behind it
# everywhere (section 6 says why).
#
# **Memory.** The forward's memory beyond its inputs is the output and one fp32 number per row, the
# same as SDPA's flash and cuDNN backends (their lines lie on top of each other: the table beside the
# plot gives the numbers); the naive path grows with N (here B·N is fixed, so the output has the same
# size at every N while the score matrix grows N-fold). Forward + backward is where they part: the
# cell prints this kernel's and SDPA-flash's extra memory at the largest N and their ratio.

# %%
benchmark_report.plot_memory(results)
plt.show()
largest = max(m["n"] for m in results["memory"])
extra = {(m["method"], m["mode"]): m["extra_bytes"] for m in results["memory"] if m["n"] == largest}
for (method, mode), size in extra.items():
    print(f"N={largest}, {mode:7} {benchmark_report.METHODS[method]:32} "
          f"{'out of memory' if size is None else f'{size / 2**20:7,.0f} MiB'}")
for mode in ("fwd", "fwd_bwd"):
    ours, sdpa = extra[("triton", mode)], extra[("sdpa_flash", mode)]
    print(f"{mode}: this kernel {ours / 2**20:,.0f} MiB vs SDPA-flash {sdpa / 2**20:,.0f} MiB ({ours / sdpa:.2f}×)")
memory_shape = next(m for m in results["memory"] if m["n"] == largest)
dq_accumulator = memory_shape["batch"] * memory_shape["heads"] * largest * results["memory_head_dim"] * 4
print(f"an fp32 dQ accumulator of this shape (B·H·N·D·4 bytes): {dq_accumulator / 2**20:,.0f} MiB")

# %% [markdown]
# So "the same memory as SDPA-flash" holds for the forward only. For training this kernel needs less: its
# dQ kernel keeps dQ in registers and writes it once, while PyTorch's FlashAttention-2 backward
# accumulates dQ with atomic adds in an fp32 buffer of the size printed last — part of the difference.

# %% [markdown]
# On a GPU, one more measurement, live: every SDPA backend this GPU offers and this kernel, on one shape
# (the sweep above takes minutes). On a T4 this is the honest comparison of the T4 section: SDPA's
# kernels there use the tensor cores, this kernel the FMA units.

# %%
if ON_GPU and KERNELS:
    capability = detect_device().compute_capability
    live_shape = (8, 16, 4096, 128) if capability >= 80 else (4, 16, 2048, 64)  # a T4 has 15 GB and no bf16
    live_dtype = torch.bfloat16 if capability >= 80 else torch.float16
    qg, kg, vg = (torch.randn(*live_shape, device="cuda", dtype=live_dtype) for _ in range(3))
    flops = benchmark_report.attention_flops(*live_shape, causal=True)
    timings = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        try:
            with sdpa_kernel(backend):
                timings[f"SDPA {backend.name}"] = time_ms(lambda: F.scaled_dot_product_attention(qg, kg, vg,
                                                                                                 is_causal=True))
        except RuntimeError as error:  # a backend this GPU or shape does not support, or out of memory
            print(f"SDPA {backend.name:20} not available here: {str(error).splitlines()[0][:70]}")
    timings["this kernel"] = time_ms(lambda: flash_attention(qg, kg, vg, causal=True))
    print(f"{torch.cuda.get_device_name()} (sm_{capability}), {live_shape} {live_dtype}, causal, forward:")
    for name, ms in timings.items():
        print(f"  {name:28} {ms:8.2f} ms {flops / ms / 1e9:7.1f} TFLOP/s   this kernel is "
              f"{ms / timings['this kernel']:.2f}× its speed")
    if capability < 80:
        print("sm_75: this kernel's tl.dot runs on FMA units; SDPA's efficient and math paths use the tensor cores.")
    del qg, kg, vg
else:
    print("No GPU (or no triton): on one, this cell times every SDPA backend and this kernel on one causal shape.")

# %% [markdown]
# ## 5. In the model
#
# The kernel has the reference attention's contract, so TinyGPT and `MultiHeadAttention` use it by name
# (`backend="flash"`): same weights, same outputs.

# %%
torch.manual_seed(0)
reference_layer = MultiHeadAttention(32, n_heads=4, n_kv_heads=2).to(device)
x = torch.randn(2, 13, 32, device=device)
if KERNELS:
    flash_layer = MultiHeadAttention(32, n_heads=4, n_kv_heads=2, backend="flash").to(device)
    flash_layer.load_state_dict(reference_layer.state_dict())
    print("flash layer vs reference layer:", (flash_layer(x) - reference_layer(x)).abs().max().item())
else:
    print("No triton: backend='flash' needs the kernel; the reference layer gives", tuple(reference_layer(x).shape))

# %% [markdown]
# ## 6. On an H100 or H200: the fast path
#
# The kernel above is written to be read, and to run on a T4. On Hopper (sm_90) it leaves speed behind: its
# loads are pointer loads the compiler pipelines, and the exponentials of a key block wait for that block's
# $QK^T$ product while the tensor cores wait for the exponentials. So `flash_attention` takes a second forward
# on an H100 or H200, and only there: `attention_lab/flash/gluon_attention.py`, for head dims 64 and 128 in
# fp16/bf16 without a mask or window. Everything else — other inputs, and every other GPU, Colab's T4
# included — runs the kernel above. The fast path returns the same output and the same log-sum-exp, so the
# backward kernels of section 3 take it as it is. It was built in steps, each timed against the one before
# on the same inputs in one run (`benchmarks/hopper_steps.py`):
#
# * (a) **TMA.** The copy engine moves whole tiles between HBM and shared memory, each tensor described once by
#   a descriptor (`TensorDescriptor`), instead of every thread computing its own addresses. (c) Hopper's own
#   tile configurations; (b) a persistent grid, one program per SM looping over the tiles. These are plain
#   Triton: `attention_lab/flash/hopper.py`, the path for head dims the fast path does not take.
# * (d) **Gluon** (`triton.experimental.gluon`) is Triton one level down: the kernel itself writes the layouts,
#   the shared memory, the barriers and the waits for each asynchronous matrix product. Its loop issues
#   $S_j = QK_j^T$, then $O \mathrel{+}= P_{j-1}V_{j-1}$, waits only for $S_j$, and computes block $j$'s softmax
#   while the tensor cores run $P_{j-1}V_{j-1}$. This is FlashAttention-3's intra-warpgroup pipelining (Shah et
#   al., *FlashAttention-3*, 2024).
# * (e) **Warp specialisation.** One producer warp issues every TMA copy. Two consumer warpgroups of 64 query
#   rows each tell it, through barriers in shared memory, when they are done with a K or V slot. Without the
#   barrier that (d) needs before refilling a slot, the two warpgroups drift apart, and one's exponentials run
#   while the other's matrix products do. This is the library's default on sm_90.

# %%
hopper_steps = load_results("flash_hopper")  # benchmarks/hopper_steps.py on a GPU (package data)
hopper_env = hopper_steps["environment"]
print(f"{hopper_env['card']}, torch {hopper_env['torch']}, triton {hopper_env['triton']}, {hopper_steps['dtype']},",
      f"B·N = {hopper_steps['tokens']} tokens, H·D = {hopper_steps['hidden']}, median of {hopper_steps['runs']} runs")
print(benchmark_report.hopper_table(hopper_steps), "\n")
print("\n".join(benchmark_report.hopper_step_ratios(hopper_steps)))
benchmark_report.plot_hopper_steps(hopper_steps)
plt.show()
claims = benchmark_report.hopper_claims(hopper_steps)
for claim, holds in claims.items():
    print(f"{claim}: {holds}")

# %% [markdown]
# Reading the table and the lines under it. TMA and Hopper's tiles each buy a few percent; the persistent grid
# loses here, so it is off. Pipelining alone, (d), buys little over the teaching kernel: a wait covers only
# the warpgroup that issued the product, and both warpgroups read every K and V tile, so each refill of a slot
# needs a barrier of the whole block. That barrier keeps the two warpgroups in step: their exponentials run at
# the same moment, and the tensor cores wait for both. Warp specialisation, (e), removes that barrier and is the
# step that counts, bringing the forward to within a few percent of cuDNN (the tests check the claims printed
# last against the same file). Not at every shape: at D=64 with 1k keys a program walks only 8 key blocks, the
# pipeline's fill and drain are not paid back, and the teaching kernel is the faster one, so the library runs the
# teaching kernel there. The consumer's loop, as the library has it:

# %%
from attention_lab.flash import gluon_attention  # noqa: E402  (the fast path's module; its source reads without a GPU)

show_source(gluon_attention, "_consume", start_at="for j in range(1, n_blocks)")

# %% [markdown]
# **The backward on Hopper.** The same recipe computes the gradients, in two kernels
# (`attention_lab/flash/gluon_backward.py`). *dK, dV:* one program owns 128 keys of one kv head; a producer warp
# loads K and V once, then streams tiles of Q and dO through a ring; two consumer warpgroups of 64 keys each keep
# their dK and dV in registers and recompute $P^T = 2^{S^T \cdot \text{scale} - L}$ from the forward's
# log-sum-exp, as in section 3. *dQ:* the forward's shape, one program per 128 query rows; the producer streams K and
# V blocks, and each consumer warpgroup keeps dQ of its 64 rows, issuing $S = QK_j^T$ and $dP = dO\,V_j^T$ together
# so that P's exponentials run while $dP$ is still on the tensor cores. The library takes both wherever the inputs
# suit them; where one program per key block would leave SMs idle (MQA at batch 1: 32 programs for 132 SMs), the
# dK/dV kernel splits a kv head's query heads over several programs, each adding its slice into fp32 partial sums
# that one reduction adds up, as the teaching kernel does. At D=64 with 1k keys the dQ kernel stays the teaching
# one, as the forward does, and so does dK/dV when causal: there they measured faster (the D=64 lines below). Not
# causal at D=64, the dK/dV kernel takes 128 query rows per step instead of 64 (half the steps, barriers and row
# loads; it spills a few registers and is faster anyway) and runs at every length. Measured on the same GPU
# (`benchmarks/gluon_backward_probe.py`, teaching launches replayed beside them):

# %%
gluon_backward_probe = load_results("flash_gluon_backward_probe")  # package data, from an H200
print(f"{gluon_backward_probe['device']}, torch {gluon_backward_probe['torch']}, triton {gluon_backward_probe['triton']}, "
      f"bf16: teaching → Gluon")
print("\n".join(benchmark_report.gluon_backward_lines(gluon_backward_probe)))
print("\n".join(benchmark_report.gluon_backward_lines(load_results("flash_gluon_backward_probe_d64"))))
print(benchmark_report.fused_delta_reading(gluon_backward_probe)[0])

# %% [markdown]
# At D=128 each kernel gains over its teaching twin, and the whole backward with them (the last ratio of each line;
# the tests check all three against the file). At D=64 the products are half as long and the gain is small at 4k
# keys, a loss at 1k — hence the rule above (also tested against the file, kernel by kernel, with each kernel's
# own tile). What is left of cuDNN's lead in forward + backward (section 4's lines)
# is mostly structure: FlashAttention-3 computes the backward in one kernel with five matrix products, these two
# kernels have seven, because the dQ kernel recomputes $S$ and $dP$ — the price of writing dQ once, without atomic
# adds into an fp32 buffer.
#
# The last line tried one launch fewer: the dQ kernel loads $dO$'s rows anyway, so with $O$'s rows beside them it
# can compute $\delta = \text{rowsum}(dO \circ O)$ itself, and the separate delta kernel goes. It changed the whole
# backward by a few percent either way and was slower at one shape, so the library keeps the delta kernel
# (`triton_attention.FUSED_DELTA_BACKWARD = False`; the fused variant stays, tested, behind the switch).
#
# **Training with fewer kv heads.** The benchmarks above give q, k and v the same head count; a GQA or MQA model
# does not. `benchmarks/gqa_training.py` times the attention of a training step with 16 query heads over 16, 4 or 1
# kv heads (causal, D=128, N=4k) at batch 8 and at batch 1, against SDPA with `enable_gqa` and FlexAttention, timed
# two ways: eagerly, as a Python loop runs it, and replayed from a CUDA graph, which removes the host's work and
# leaves the GPU's. How many programs share a kv head's query heads at batch 1 was measured too
# (`benchmarks/kv_split_probe.py`): about one per SM when not causal, about four per SM when causal, where the first
# key block is seen by every query and the last by few, so shorter programs even out the SMs.

# %%
gqa_training = load_results("gqa_training")  # benchmarks/gqa_training.py on an H200, package data
print(f"{gqa_training['environment']['card']}, torch {gqa_training['environment']['torch']}, triton "
      f"{gqa_training['environment']['triton']}: causal forward+backward, H={gqa_training['heads']}, "
      f"D={gqa_training['head_dim']}, N=4k")
gqa_lines, gqa_claims = benchmark_report.gqa_training_reading(gqa_training)
print("\n".join(gqa_lines))
for claim, holds in gqa_claims.items():
    print(f"{claim}: {holds}")

# %% [markdown]
# On the GPU the kernels hold their place at every group size and at batch 1 (the graph columns). The eager batch-1
# step is another matter: its GPU work is well under a millisecond, and the Python that launches the kernels — the
# autograd function, the checks, four Triton launches (forward, delta, dK/dV, dQ) with their TMA descriptors —
# takes longer than that, so the GPU waits on the host; SDPA's launches are C++. A training loop at such small batches is what CUDA graphs (or
# `torch.compile(mode="reduce-overhead")`) are for.

# %% [markdown]
# ## Summary
#
# * PyTorch's SDPA chooses among FlashAttention-2, memory-efficient, cuDNN and math backends;
#   `torch.nn.attention.sdpa_kernel` pins one.
# * A Triton FlashAttention kernel in four steps: two passes → online softmax in registers with `exp2`
#   → causal/window block skipping with masks only on edge blocks → tiles autotuned per GPU after
#   pruning by shared memory. Each step's forward speed on the H100 is in the step plot above.
# * The backward recomputes P from the saved log-sum-exp in a dK/dV kernel (GQA gradients summed in
#   the kv head's program) and a dQ kernel; both match the float64-checked reference.
# * The measured ratios to PyTorch's flash and cuDNN backends and to FlexAttention, and the memory at
#   the largest N, are printed by the cells of section 4: faster than SDPA-flash forward and backward,
#   with the same forward memory and less for forward + backward (no fp32 dQ buffer); slower than cuDNN, whose
#   Hopper kernel overlaps the softmax of one tile with the matrix products of the next using warp-specialised
#   warpgroups and the TMA copy engine (the FlashAttention-3 recipe, Shah et al., 2024).
# * On an H100/H200, `flash_attention`'s forward is that recipe written in Gluon (section 6): TMA copies, a
#   producer warp and two consumer warpgroups. It reaches cuDNN's forward speed, with the output and
#   log-sum-exp of the kernel above. dK, dV and dQ come from two Gluon kernels of the same shape; forward +
#   backward stays behind cuDNN's (seven matrix products where FlashAttention-3 has five).
# * The same code runs on a Colab T4 in fp16 (small tiles of its own, none spilling a register) — correct and
#   readable there, not fast: Triton runs its `tl.dot` on the T4's FMA units while SDPA uses its tensor
#   cores — and, without a GPU, under Triton's interpreter, which is how this chapter's exercise and tests
#   run. Without triton at all (macOS, Windows) the chapter takes its PyTorch path and still shows the
#   kernels' source.
