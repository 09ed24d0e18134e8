# %% [markdown]
# # 09 · FlashAttention, tiled
#
# Chapter 07 showed that standard attention is slow because it writes the $N \times N$ score matrix to
# HBM and reads it back, kernel after kernel. Chapter 08 showed that the softmax can be computed while
# the keys stream past. Put the two together and you have FlashAttention (Dao et al., *FlashAttention:
# Fast and Memory-Efficient Exact Attention with IO-Awareness*, 2022; the loop order here is that of
# FlashAttention-2, Dao 2023; the first paper's order, which the lecture's blog describes, is compared with it
# below): cut Q into blocks of $B_r$ rows and K, V into blocks of $B_c$ rows, keep one
# tile at a time in fast memory, and never materialise the $N \times N$ matrix. This chapter writes it in
# plain PyTorch — forward *and* backward — so every line can be read and tested; chapter 10 turns the
# same loop into a Triton kernel.

# %%
import math

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap
from torch.utils.flop_counter import FlopCounterMode

from attention_lab.attention import scaled_dot_product_attention
from attention_lab.costs.timing import peak_memory
from attention_lab.flash.tiled import (FULL, PARTIAL, SKIP, block_schedule, count_non_matmul_flops, non_matmul_flops,
                                       tiled_attention, tiled_attention_forward, tiled_attention_forward_fa1)
from attention_lab.book.results import load as load_results
from attention_lab.costs.gpu_facts import (A100_BOOST_CLOCK_GHZ, A100_FP32_LANES_PER_SM, GPU_TABLE)
from attention_lab.costs.hbm_traffic import (FLASH_PAPER_GPT2_MEDIUM, fa1_forward_bytes, flash_backward_bytes,
                                             flash_forward_accesses_paper, fused_backward_bytes, fused_forward_bytes,
                                             paper_block_sizes, standard_forward_accesses_paper, tiled_forward_bytes,
                                             total_bytes, unfused_backward_kernels, unfused_forward_kernels)

torch.set_num_threads(1)  # this chapter's tensors are small: one CPU thread beats several contending for them
plt.rcParams.update({"font.size": 12})  # figures stay readable when projected

# %% [markdown]
# ## The forward pass
#
# For each query block $Q_i$ ($B_r \times d$), start from $m_i = -\infty$, $\ell_i = 0$, $\text{acc} = 0$ and
# loop over the key/value blocks $K_j, V_j$ ($B_c \times d$):
#
# $$S_{ij} = Q_i K_j^\top \cdot \text{scale} \qquad (B_r \times B_c,\ \text{in SRAM})$$
# $$m_i^{new} = \max(m_i, \operatorname{rowmax} S_{ij}), \qquad P_{ij} = e^{S_{ij} - m_i^{new}}, \qquad \alpha = e^{m_i - m_i^{new}}$$
# $$\ell_i \leftarrow \alpha\,\ell_i + \operatorname{rowsum} P_{ij}, \qquad \text{acc} \leftarrow \alpha\,\text{acc} + P_{ij} V_j$$
#
# — chapter 08's update with $N \to \text{acc}$ and $D \to \ell_i$. After the last block:
# $O_i = \text{acc} / \ell_i$, and the **log-sum-exp** $L_i = m_i + \log \ell_i$ is saved for the backward
# pass. HBM sees Q, K, V read and O, L written; $S_{ij}$ and $P_{ij}$ live and die in SRAM.
#
# ### Which tiles are visited
#
# With a causal mask, a tile whose keys all lie in the future of all its queries contributes nothing:
# the kernel skips it without loading $K_j, V_j$. Tiles that straddle the diagonal need the mask applied
# inside; the rest need no mask at all. A sliding window also skips the tiles left of every window.

# %%
n, block = 256, 32
layouts = {"no mask": block_schedule(n, n, block, block),
           "causal": block_schedule(n, n, block, block, causal=True),
           "window 64": block_schedule(n, n, block, block, window=64)}
colours = ListedColormap(["white", "tab:blue", "tab:orange"])  # SKIP, FULL, PARTIAL
fig, axes = plt.subplots(1, 3, figsize=(15, 5))
for ax, (name, schedule) in zip(axes, layouts.items()):
    ax.imshow(schedule.numpy(), cmap=colours, vmin=0, vmax=2)
    visited = (schedule != SKIP).float().mean().item()
    ax.set_title(f"{name}: {visited:.0%} of tiles visited")
    ax.set_xlabel(f"key block j (B_c = {block})")
    ax.set_ylabel(f"query block i (B_r = {block})")
fig.suptitle(f"Tiles of an N = {n} attention (white: skipped, blue: no mask needed, orange: masked inside)")
plt.tight_layout()
plt.show()
for name, schedule in layouts.items():
    counts = {label: int((schedule == code).sum()) for label, code in (("skipped", SKIP), ("full", FULL), ("masked", PARTIAL))}
    print(f"{name:10}: {counts}")

# %% [markdown]
# ### Equal to the reference
#
# `attention_lab.flash.tiled.tiled_attention` has the reference's contract: `(B, H, N, D)`, grouped
# kv heads, causal aligned to the end of the keys, windows, explicit masks, fp32 statistics. Block sizes
# need not divide $N$ — here $N = 203$ with $B_r = 64$, $B_c = 48$, and 8 query heads sharing 2 kv heads:

# %%
generator = torch.Generator().manual_seed(0)
q = torch.randn(2, 8, 203, 64, generator=generator)
k = torch.randn(2, 2, 203, 64, generator=generator)
v = torch.randn(2, 2, 203, 64, generator=generator)
for settings in ({}, {"causal": True}, {"window": 50}):
    reference = scaled_dot_product_attention(q.double(), k.double(), v.double(), **settings)
    tiled = tiled_attention(q, k, v, block_q=64, block_k=48, **settings)
    print(f"{str(settings) or 'no mask':18}: max |tiled − reference (fp64)| = {(tiled.double() - reference).abs().max():.1e}")
out, lse = tiled_attention_forward(q, k, v, causal=True, block_q=64, block_k=48)
print("saved for the backward: O", tuple(out.shape), out.dtype, "and LSE", tuple(lse.shape), lse.dtype)

# %% [markdown]
# ## Two loop orders: FlashAttention-1 and FlashAttention-2
#
# The loop above runs **query blocks outside, key/value blocks inside**: that is FlashAttention-2's order
# (Dao, 2023). The first FlashAttention paper (Dao et al., 2022, Algorithm 1) — and the blog this lecture's
# slides follow — runs it the other way round: **key/value blocks outside, query blocks inside**. Each
# $K_j, V_j$ is loaded once; then every query block in turn reads its $Q_i$ *and its running state* $O_i$,
# $\ell_i$, $m_i$ from HBM, updates it, and writes it back:
#
# $$\tilde m_{ij} = \operatorname{rowmax} S_{ij}, \quad \tilde P_{ij} = e^{S_{ij} - \tilde m_{ij}}, \quad
#   \tilde\ell_{ij} = \operatorname{rowsum} \tilde P_{ij}, \quad m_i^{new} = \max(m_i, \tilde m_{ij}), \quad
#   \ell_i^{new} = e^{m_i - m_i^{new}} \ell_i + e^{\tilde m_{ij} - m_i^{new}} \tilde\ell_{ij}$$
# $$O_i \leftarrow \operatorname{diag}(\ell_i^{new})^{-1}\left(\operatorname{diag}(\ell_i)\, e^{m_i - m_i^{new}} O_i
#   + e^{\tilde m_{ij} - m_i^{new}} \tilde P_{ij} V_j\right)$$
#
# Since the state of a query block is put away between two visits, $O_i$ is kept *normalised* (divided by
# $\ell$) after every tile. `tiled_attention_forward_fa1` is that algorithm, line for line; both orders
# give the reference's output and log-sum-exp, and each can record the tiles in the order it visits them:

# %%
fa1_trace, fa2_trace = [], []
out_fa1, lse_fa1 = tiled_attention_forward_fa1(q, k, v, block_q=64, block_k=48, trace=fa1_trace)
out_fa2, lse_fa2 = tiled_attention_forward(q, k, v, block_q=64, block_k=48, trace=fa2_trace)
reference = scaled_dot_product_attention(q.double(), k.double(), v.double())
for name, out_order, lse_order in (("FA-1 order", out_fa1, lse_fa1), ("FA-2 order", out_fa2, lse_fa2)):
    print(f"{name}: max |O − reference (fp64)| = {(out_order.double() - reference).abs().max():.1e}, "
          f"max |LSE(FA-1) − LSE(this)| = {(lse_fa1 - lse_order).abs().max():.1e}")
for settings in ({"causal": True}, {"window": 50}):
    reference_masked = scaled_dot_product_attention(q.double(), k.double(), v.double(), **settings)
    error = (tiled_attention_forward_fa1(q, k, v, block_q=64, block_k=48, **settings)[0].double() - reference_masked).abs().max()
    print(f"FA-1 order, {settings}: max |O − reference (fp64)| = {error:.1e}")
print(f"same tiles visited: {sorted(fa1_trace) == sorted(fa2_trace)}; first five, FA-1: {fa1_trace[:5]}, "
      f"FA-2: {fa2_trace[:5]}")

small_n, small_block = 128, 32
orders = {"FlashAttention-1: K/V blocks outside": tiled_attention_forward_fa1,
          "FlashAttention-2: Q blocks outside": tiled_attention_forward}
fig, axes = plt.subplots(1, 2, figsize=(13, 6))
for ax, (title, forward) in zip(axes, orders.items()):
    trace = []
    forward(*(torch.randn(1, 1, small_n, 16, generator=generator) for _ in range(3)), block_q=small_block,
            block_k=small_block, trace=trace)
    tiles = small_n // small_block
    one_program_per_query_block = forward is tiled_attention_forward
    program = torch.zeros(tiles, tiles)  # which GPU program (thread block) visits each tile
    steps_done: dict[int, int] = {}  # program -> tiles it has visited so far
    for i, j in trace:
        owner = i if one_program_per_query_block else 0
        steps_done[owner] = steps_done.get(owner, 0) + 1
        program[i, j] = owner
        ax.text(j, i, f"step {steps_done[owner]}", ha="center", va="center", fontsize=14)
    ax.imshow(program.numpy(), cmap="Pastel1", vmin=0, vmax=8)
    programs = len(steps_done)
    ax.set_title(f"{title}:\n{programs} program{'s' if programs > 1 else ''} of {max(steps_done.values())} "
                 "sequential steps each")
    ax.set_xticks(range(tiles))
    ax.set_yticks(range(tiles))
    ax.set_xlabel(f"key/value block j (B_c = {small_block} keys)")
    ax.set_ylabel(f"query block i (B_r = {small_block} queries)")
fig.suptitle(f"How each loop order visits the tiles of one head (N = {small_n}); colour: the program that does it")
plt.tight_layout()
plt.show()

# %% [markdown]
# Same tiles, same arithmetic on each, same result — so why did FlashAttention-2 turn the loops around?
#
# **Parallelism over the sequence.** Each query row's update is sequential along the keys, while different
# query rows never interact. In FA-1's order the sequential loop is the *outer* one and every step of it touches
# every query block, so one GPU program (thread block) runs the whole double loop for a (batch, head) pair:
# FlashAttention-1 launches $B \cdot H$ programs. In FA-2's order the outer loop is the independent one: one
# program per (batch, head, query block), $B \cdot H \cdot \lceil N / B_r \rceil$ programs, each doing one row
# of tiles. With long sequences the batch is small, and $B \cdot H$ programs leave most SMs idle:

# %%
h100 = GPU_TABLE["H100 SXM"]
block_rows = 128
print(f"{h100.name}: {h100.sms} SMs; B_r = B_c = {block_rows}")
for batch, heads, length in ((1, 16, 8192), (8, 16, 2048), (32, 16, 512)):
    fa1_programs = batch * heads  # FA-1: one program per (batch, head)
    fa2_programs = batch * heads * math.ceil(length / block_rows)  # FA-2: one per (batch, head, query block)
    tiles = math.ceil(length / block_rows) ** 2
    print(f"B={batch:2d}, H={heads}, N={length:5d}: FA-1 {fa1_programs:5d} programs of {tiles:4d} tiles each "
          f"({min(fa1_programs, h100.sms) / h100.sms:4.0%} of the SMs busy); FA-2 {fa2_programs:5d} programs of "
          f"{math.ceil(length / block_rows):3d} tiles ({fa2_programs / h100.sms:5.1f} per SM)")

# %% [markdown]
# **No rewrite of $O$ per key block.** FA-1's state goes back to HBM after every tile: each of the
# $\lceil N/B_c \rceil$ passes reads $Q$ and $O$ and writes $O$ again, plus $\ell$ and $m$. FA-2 keeps a query
# block's $m_i, \ell_i$ and accumulator in registers for its whole row of tiles and writes $O_i$ once; what it
# re-reads is $K$ and $V$, once per query block. The HBM traffic model counts both (no cache hits, fp16,
# $B \cdot H = 16$, $d = 64$):

# %%
head_dim, batch_heads_model = 64, 16
lengths_model = [1024, 2048, 4096, 8192, 16384]
fa1_gb = [fa1_forward_bytes(m, head_dim, block_rows, batch_heads_model) / 1e9 for m in lengths_model]
fa2_gb = [tiled_forward_bytes(m, head_dim, block_rows, batch_heads_model) / 1e9 for m in lengths_model]
for length, one, two in zip(lengths_model, fa1_gb, fa2_gb):
    print(f"N={length:5d}: FA-1 order {one:6.2f} GB, FA-2 order {two:6.2f} GB  (FA-1 / FA-2 = {one / two:.2f})")
fig, ax = plt.subplots(figsize=(8, 4.5))
ax.loglog(lengths_model, fa1_gb, "o-", label="FA-1 order: K, V once; Q, O, ℓ, m every pass")
ax.loglog(lengths_model, fa2_gb, "s-", label="FA-2 order: Q, O once; K, V every pass")
ax.loglog(lengths_model, [fused_forward_bytes(m, head_dim, batch_heads_model) / 1e9 for m in lengths_model], "k--",
          label="floor: each tensor once")
ax.set_title(f"Forward HBM traffic by loop order (B_r = B_c = {block_rows}, d = {head_dim}, fp16, no cache hits)")
ax.set_xlabel("sequence length N (tokens)")
ax.set_ylabel("HBM reads + writes (GB)")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# **Fewer FLOPs outside the matrix products.** FA-1 divides its $O_i$ by $\ell_i^{new}$ and rescales both terms
# of the update on every tile; FA-2 rescales the unnormalised accumulator once per tile and divides once at
# the end. The two matrix products per tile are the same in both. `count_non_matmul_flops` watches every
# torch operation the two implementations run (matrix products excluded) and `non_matmul_flops` gives the
# count read off the update equations:

# %%
count_shape = (1, 1, 1024, head_dim)
q_count, k_count, v_count = (torch.randn(*count_shape, generator=generator) for _ in range(3))
print(f"N = {count_shape[2]}, d = {head_dim}, B_r = B_c = 64, one head:")
counted = {}
for name, order, forward in (("FA-1", "fa1", tiled_attention_forward_fa1), ("FA-2", "fa2", tiled_attention_forward)):
    run = lambda: forward(q_count, k_count, v_count, block_q=64, block_k=64)
    counted[name] = count_non_matmul_flops(run)
    with FlopCounterMode(display=False) as matmuls:
        run()
    print(f"  {name} order: matrix products {matmuls.get_total_flops() / 1e6:6.1f} MFLOP; everything else "
          f"{counted[name] / 1e6:5.2f} MFLOP counted on the running code, "
          f"{non_matmul_flops(order, count_shape[2], count_shape[2], head_dim, 64) / 1e6:5.2f} from the equations")
fp32_a100 = GPU_TABLE["A100 SXM 80GB"].sms * A100_FP32_LANES_PER_SM * 2 * A100_BOOST_CLOCK_GHZ * 1e9
tensor_a100 = GPU_TABLE["A100 SXM 80GB"].peak_flops
print(f"FA-1 does {counted['FA-1'] / counted['FA-2'] - 1:.0%} more non-matmul FLOPs; on an A100 they run on the "
      f"FP32 units at {fp32_a100 / 1e12:.1f} TFLOP/s against {tensor_a100 / 1e12:.0f} for the tensor cores: "
      f"each costs {tensor_a100 / fp32_a100:.0f}x a matmul FLOP")

# %% [markdown]
# FlashAttention-2's own account (Dao, 2023, §3) names the same three changes: fewer non-matmul FLOPs,
# parallelism over the sequence length, and a better split of each block's work among its warps. The forward
# here, chapter 10's Triton kernel and PyTorch's SDPA all use FA-2's order.

# %% [markdown]
# ## The backward pass, by recomputation
#
# Standard attention's backward reads the saved $N \times N$ matrix $P$. FlashAttention saved only
# $L_i$, and rebuilds each tile of $P$ from it exactly: $P_{ij} = e^{S_{ij} - L_i}$ (the normalisation is
# already inside $L_i$). What remains is to get the gradient through the softmax without a whole row of $P$.
#
# ### Deriving $D_i = \operatorname{rowsum}(dO_i \circ O_i)$
#
# The forward, row by row: $S = \tau QK^\top$, $P_{i\cdot} = \operatorname{softmax}(S_{i\cdot})$, $O = PV$. Given
# $dO = \partial \mathcal{L} / \partial O$:
#
# 1. **Through $O = PV$:** $O_{ic} = \sum_k P_{ik} V_{kc}$, so $dP_{ik} = \sum_c dO_{ic} V_{kc}$, i.e.
#    $dP = dO\, V^\top$.
# 2. **Through the softmax:** $P_{ik} = e^{S_{ik}} / \sum_l e^{S_{il}}$ has
#    $\partial P_{ik} / \partial S_{ij} = P_{ik}(\delta_{kj} - P_{ij})$, so
#    $$dS_{ij} = \sum_k dP_{ik}\, P_{ik}(\delta_{kj} - P_{ij}) = P_{ij}\, dP_{ij} - P_{ij} \sum_k P_{ik}\, dP_{ik},
#    \qquad dS = P \circ \big(dP - \operatorname{rowsum}(P \circ dP)\big).$$
#    As written, the row sum needs every $P_{ik}$ of row $i$ — all $N$ of them — before any $dS_{ij}$ of that row.
# 3. **Substitute step 1 into the row sum** and swap the two sums:
#    $$\sum_k P_{ik}\, dP_{ik} = \sum_k P_{ik} \sum_c dO_{ic} V_{kc} = \sum_c dO_{ic} \sum_k P_{ik} V_{kc}
#    = \sum_c dO_{ic}\, O_{ic} \;=:\; D_i,$$
#    using $P V = O$ in the last step.
# 4. **So** $dS_{ij} = P_{ij}(dP_{ij} - D_i)$ with $D_i = \operatorname{rowsum}(dO_i \circ O_i)$: $D$ needs only $O$
#    and $dO$ ($N \times d$, both in HBM already), is computed once before the loop, $O(N)$ numbers, and every
#    tile's $dS_{ij}$ then needs only its own tile of $P$.
#
# Each step, checked in float64 against autograd (one head, 37 queries, $d = 16$):

# %%
check = torch.Generator().manual_seed(4)
q_d, k_d, v_d, grad_o = (torch.randn(37, 16, generator=check, dtype=torch.float64) for _ in range(4))
scores_d = (q_d @ k_d.T * 16**-0.5).requires_grad_()  # S = τ Q Kᵀ  (N, N)
weights_d = torch.softmax(scores_d, dim=-1)  # P  (N, N)
weights_d.retain_grad()
out_d = weights_d @ v_d  # O = P V  (N, d)
out_d.backward(grad_o)
dp = grad_o @ v_d.T  # step 1: dP = dO Vᵀ
row_sum_p_dp = (weights_d * dp).sum(-1)  # step 2's row sum, from all of P's row
delta = (grad_o * out_d).sum(-1)  # step 3: D = rowsum(dO ∘ O), from O and dO only
ds = weights_d * (dp - delta[:, None])  # step 4: dS = P ∘ (dP − D)
print(f"step 1: max |dO Vᵀ − autograd's dP|              = {(dp - weights_d.grad).abs().max():.1e}")
print(f"step 3: max |rowsum(P ∘ dP) − rowsum(dO ∘ O)|     = {(row_sum_p_dp - delta).abs().max():.1e}")
print(f"step 4: max |P ∘ (dP − D) − autograd's dS|        = {(ds - scores_d.grad).abs().max():.1e}")
print(f"D has {delta.numel()} numbers; rowsum(P ∘ dP) reads {weights_d.numel()} entries of P")

# %% [markdown]
# ### The loop
#
# With $D$ in hand, for each key block (outer) and query block (inner):
#
# $$dV_j \mathrel{+}= P_{ij}^\top dO_i, \quad dP_{ij} = dO_i V_j^\top, \quad dS_{ij} = P_{ij} \circ (dP_{ij} - D_i),$$
# $$dQ_i \mathrel{+}= dS_{ij} K_j \cdot \text{scale}, \qquad dK_j \mathrel{+}= dS_{ij}^\top Q_i \cdot \text{scale}.$$
#
# (Here the *key* blocks are outside — in the backward, FA-2 parallelises over key blocks, because $dK_j$
# and $dV_j$ then stay in one program while $dQ_i$ collects contributions from all of them — FA-2 adds those
# atomically, chapter 10's kernel computes $dQ$ in a second pass.) It computes
# $QK^\top$ a second time — more FLOPs — to avoid reading an $N^2$ matrix: a good trade on a
# memory-bound machine. `tiled_attention` wraps forward and backward in a `torch.autograd.Function`;
# its gradients against autograd through the reference, and `torch.autograd.gradcheck` (finite
# differences, float64) on small shapes with blocks that do not divide $N$:

# %%
q64, k64, v64 = (t[:1, :4, :45].double().requires_grad_() for t in (q, k, v))
grad_out = torch.randn(1, 4, 45, 64, generator=generator, dtype=torch.float64)
for settings in ({}, {"causal": True}, {"window": 10}):
    tiled_grads = torch.autograd.grad(tiled_attention(q64, k64, v64, block_q=16, block_k=12, **settings), (q64, k64, v64), grad_out)
    reference_grads = torch.autograd.grad(scaled_dot_product_attention(q64, k64, v64, **settings), (q64, k64, v64), grad_out)
    errors = [(a - b).abs().max().item() for a, b in zip(tiled_grads, reference_grads)]
    print(f"{str(settings) or 'no mask':18}: max error dQ {errors[0]:.1e}, dK {errors[1]:.1e}, dV {errors[2]:.1e}")
small = [torch.randn(1, 1, 7, 3, generator=generator, dtype=torch.float64, requires_grad=True) for _ in range(3)]
for settings in ({}, {"causal": True}, {"window": 3}):
    passed = torch.autograd.gradcheck(lambda q, k, v: tiled_attention(q, k, v, block_q=3, block_k=2, **settings), small)
    print(f"gradcheck {str(settings) or 'no mask':18}: {passed}")

# %% [markdown]
# ## Extra memory: O(N) instead of O(N²)
#
# The reference holds $N \times N$ scores and weights per head; the tiled version holds one
# $B_r \times B_c$ tile, the running statistics and the output. Peak extra memory, measured on this
# machine (2 heads, $d = 64$, causal, fp32; `peak_memory` counts every tensor allocated inside the call),
# and from the committed GPU run (8 heads, fp16):

# %%
lengths = [256, 512, 1024, 2048]
naive_bytes, tiled_bytes = [], []
for length in lengths:
    qn, kn, vn = (torch.randn(1, 2, length, 64, generator=generator) for _ in range(3))
    naive_bytes.append(peak_memory(lambda: scaled_dot_product_attention(qn, kn, vn, causal=True), "cpu"))
    tiled_bytes.append(peak_memory(lambda: tiled_attention(qn, kn, vn, causal=True, block_q=128, block_k=128), "cpu"))
results = load_results("hbm_traffic")
fig, axes = plt.subplots(1, 2 if results else 1, figsize=(14 if results else 7, 5), squeeze=False)
ax = axes[0, 0]
ax.loglog(lengths, [b / 2**20 for b in naive_bytes], "o-", label="reference (materialised N × N)")
ax.loglog(lengths, [b / 2**20 for b in tiled_bytes], "s-", label="tiled, B_r = B_c = 128")
ax.set_xscale("log", base=2)
ax.set_xticks(lengths, [str(length) for length in lengths])
ax.set_title("Peak extra memory on this CPU (H = 2, d = 64, fp32)")
ax.set_xlabel("sequence length N (tokens)")
ax.set_ylabel("peak extra memory (MiB)")
ax.legend()
if results:
    rows = results["memory_vs_n"]
    gpu_n = [row["n"] for row in rows]
    for key, label, marker in (("reference_bytes", "reference", "o-"), ("tiled_bytes", "tiled (this chapter)", "s-"),
                               ("sdpa_flash_bytes", "SDPA flash", "^-")):
        axes[0, 1].loglog(gpu_n, [row[key] / 2**20 if row[key] else float("nan") for row in rows], marker, label=label)
    axes[0, 1].set_xscale("log", base=2)
    axes[0, 1].set_xticks(gpu_n, [str(length) for length in gpu_n])
    axes[0, 1].set_title(f"{results['device']['name']} (H = {rows[0]['heads']}, d = {rows[0]['d']}, fp16, causal)")
    axes[0, 1].set_xlabel("sequence length N (tokens)")
    axes[0, 1].set_ylabel("peak extra memory (MiB)")
    axes[0, 1].legend()
plt.tight_layout()
plt.show()
for length, a, b in zip(lengths, naive_bytes, tiled_bytes):
    print(f"CPU N={length:5d}: reference {a / 2**20:7.1f} MiB, tiled {b / 2**20:5.1f} MiB")
naive_growth = [b / a for a, b in zip(naive_bytes, naive_bytes[1:])]
tiled_growth = [b / a for a, b in zip(tiled_bytes, tiled_bytes[1:])]
print(f"growth per doubling of N ({lengths[0]} → {lengths[-1]}): reference {', '.join(f'x{g:.1f}' for g in naive_growth)} "
      f"(N² alone would give x{2 ** 2}); tiled {', '.join(f'x{g:.1f}' for g in tiled_growth)} (N alone: x{2 ** 1})")
if results:
    for row in results["memory_vs_n"]:
        print(f"GPU N={row['n']:5d}: reference {row['reference_bytes'] / 2**20:7.0f} MiB, tiled "
              f"{row['tiled_bytes'] / 2**20:4.0f} MiB, SDPA {row['sdpa_flash_bytes'] / 2**20:4.0f} MiB")

# %% [markdown]
# The tiled curve is what the output itself costs plus a constant: linear in $N$, so its growth per doubling,
# printed above, stays below the doubling itself while the constant still counts, and the reference's
# approaches the square's. On the GPU it tracks PyTorch's own FlashAttention kernel; the reference needs
# gigabytes where they need megabytes.
#
# ## HBM traffic as a function of SRAM size
#
# The FlashAttention paper (Theorem 2) counts HBM accesses: standard attention needs $\Theta(Nd + N^2)$,
# FlashAttention $\Theta(N^2 d^2 / M)$ for an SRAM of $M$ elements ($d \le M \le Nd$). The reason: with
# $M$ elements of SRAM, a key block holds $B_c = \lceil M / 4d \rceil$ rows, and the loop passes over the
# queries and outputs once per key block — $N / B_c \approx 4Nd/M$ times. More SRAM, bigger blocks, fewer
# passes — and with a very small SRAM, so many passes that they cost more than the $N^2$ matrix itself.
# For the paper's GPT-2-medium attention (forward), with the shared memory per SM of the cards from
# chapter 07 marked:

# %%
paper = FLASH_PAPER_GPT2_MEDIUM
batch_heads, n, d = paper["batch"] * paper["heads"], paper["n"], paper["d"]
sram_bytes = [2**k for k in range(11, 21)]  # 2 KiB .. 1 MiB
element = 2  # fp16
standard_gb = standard_forward_accesses_paper(n, d) * element * batch_heads / 1e9
flash_gb = [flash_forward_accesses_paper(n, d, m // element) * element * batch_heads / 1e9 for m in sram_bytes]
fig, ax = plt.subplots(figsize=(9, 5))
ax.loglog([m / 1024 for m in sram_bytes], [standard_gb] * len(sram_bytes), "--", label="standard: Θ(Nd + N²)")
ax.loglog([m / 1024 for m in sram_bytes], flash_gb, "o-", label="FlashAttention: Θ(N²d²/M)")
for name in ("T4", "A100 SXM 80GB", "H100 SXM"):
    kib = GPU_TABLE[name].shared_memory_per_sm_kib
    ax.axvline(kib, color="grey", lw=0.8, ls=":")
    ax.text(kib, standard_gb * 0.6, f" {name}", rotation=90, va="top", fontsize=11, color="dimgrey")
ax.set_title(f"Forward HBM traffic, GPT-2 medium (B·H = {batch_heads}, N = {n}, d = {d}, fp16)")
ax.set_xlabel("SRAM size M (KiB)")
ax.set_ylabel("HBM reads + writes (GB)")
ax.grid(alpha=0.3, which="both")
ax.legend()
plt.show()
for name in ("T4", "A100 SXM 80GB", "H100 SXM"):
    sram_elements = GPU_TABLE[name].shared_memory_per_sm_kib * 1024 // element
    block_r, block_c = paper_block_sizes(sram_elements, d)
    traffic = flash_forward_accesses_paper(n, d, sram_elements) * element * batch_heads / 1e9
    print(f"{name:14}: M = {sram_elements} elements -> B_r = {block_r}, B_c = {block_c}, forward traffic {traffic:.2f} GB "
          f"(standard {standard_gb:.2f} GB)")
crossover = next(m for m, gb in zip(sram_bytes, flash_gb) if gb < standard_gb)
print(f"FlashAttention moves fewer bytes than standard attention from M = {crossover // 1024} KiB of SRAM on; "
      f"from M = 4Nd elements ({4 * n * d * element // 1024} KiB) all of K and V fit and one pass suffices")

# %% [markdown]
# ### Against the paper's measurement
#
# The paper measured this workload, forward and backward, on an A100 (Figure 2, left). Our kernel-by-kernel
# count of the standard chain (chapter 07's model plus the backward's six kernels) lands near its HBM figure;
# for FlashAttention, two counts bracket the measurement: the floor (every tensor read or written once)
# and the tiled loop's count with no cache hits at all (one head's K and V, whose size is printed below, are
# mostly re-read from the much larger L2 in practice). The committed GPU run timed the same shape:

# %%
standard_model = total_bytes(unfused_forward_kernels(n, d, batch_heads) + unfused_backward_kernels(n, d, batch_heads)) / 1e9
flash_floor = (fused_forward_bytes(n, d, batch_heads, 2, save_lse=True) + fused_backward_bytes(n, d, batch_heads)) / 1e9
flash_no_cache = (tiled_forward_bytes(n, d, 128, batch_heads) + flash_backward_bytes(n, d, 128, batch_heads)) / 1e9
print(f"paper ({paper['gpu']}): standard {paper['standard_hbm_gb']} GB, {paper['standard_ms']} ms -> "
      f"FlashAttention {paper['flash_hbm_gb']} GB, {paper['flash_ms']} ms "
      f"({paper['standard_hbm_gb'] / paper['flash_hbm_gb']:.1f}x fewer bytes, {paper['standard_ms'] / paper['flash_ms']:.1f}x faster)")
print(f"our count: standard {standard_model:.1f} GB; flash between {flash_floor:.2f} GB (floor) and "
      f"{flash_no_cache:.2f} GB (B_r = B_c = 128, no cache hits)")
print(f"one head's K and V: {2 * n * d * element / 2**20:.2f} MiB; the A100's L2: {GPU_TABLE['A100 SXM 80GB'].l2_mib:.0f} MiB")
if results:
    gpt2 = results["gpt2_medium"]
    print(f"measured on {results['device']['name']}: unfused chain {gpt2['chain_fwd_bwd_s'] * 1e3:.1f} ms, SDPA flash "
          f"{gpt2['sdpa_fwd_bwd_s'] * 1e3:.1f} ms forward + backward ({gpt2['chain_fwd_bwd_s'] / gpt2['sdpa_fwd_bwd_s']:.1f}x)")

# %% [markdown]
# ## Exercise: the update inside the loop
#
# Write `block_update(q_block, k_block, v_block, m_i, l_i, acc, scale)` for one query block `(B_r, d)` and
# one key/value block `(B_c, d)`: compute the scores tile and fold it into the running `m_i`, `l_i`
# (both `(B_r,)`) and `acc` (`(B_r, d)`). Return the new `(m_i, l_i, acc)`. The checker runs your update
# over the key blocks of a longer sequence and compares `acc / l_i` with attention.

# %%
def block_update(q_block, k_block, v_block, m_i, l_i, acc, scale):
    ### BEGIN SOLUTION
    scores = (q_block @ k_block.T) * scale  # S_ij: (B_r, B_c)
    m_new = torch.maximum(m_i, scores.amax(dim=-1))  # (B_r,)
    p = torch.exp(scores - m_new[:, None])  # P_ij: (B_r, B_c)
    alpha = torch.exp(m_i - m_new)  # rescales the old l_i and acc
    return m_new, alpha * l_i + p.sum(dim=-1), alpha[:, None] * acc + p @ v_block
    ### END SOLUTION


# %%
from attention_lab.exercises.ch09 import check_block_update

check_block_update(block_update)

# %% [markdown]
# ## Summary
#
# Measured above:
#
# * The tiled forward equals the reference to float32 rounding for full, causal and windowed attention
#   with block sizes that do not divide $N$; its gradients match autograd through the reference to float64
#   rounding, and `gradcheck` passes.
# * Causal attention visits about half the tiles, a window only a band; the schedule skips the rest
#   without loading them.
# * Peak extra memory: per doubling of $N$ the reference grows by the factors printed above, close to the
#   square's, the tiled version by less than the doubling (linear plus a constant) — on the GPU it needs
#   megabytes where the reference needs gigabytes, like PyTorch's FlashAttention.
# * FlashAttention-1's loop order (K/V outside) and FlashAttention-2's (Q outside) visit the same tiles and give
#   the same output; FA-2's launches a program per query block instead of per head, writes $O$ once instead
#   of once per key block (the traffic model's counts above), and does fewer non-matmul FLOPs (counted on
#   the running code).
# * The backward's $D_i = \operatorname{rowsum}(dO_i \circ O_i)$ is $\operatorname{rowsum}(P \circ dP)$ rewritten with
#   $PV = O$: derived step by step and checked to float64 rounding.
# * The IO model: more SRAM means fewer passes, $\Theta(N^2d^2/M)$; our counts bracket the paper's
#   GPT-2-medium measurement, and the standard chain's count comes within the margin printed above.
#
# This PyTorch loop is slow — every tile is a handful of separate PyTorch calls. Chapter 10 writes the
# same loop as one Triton kernel, where each tile really does stay in SRAM.
