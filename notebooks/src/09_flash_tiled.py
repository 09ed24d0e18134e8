# %% [markdown]
# # 09 · FlashAttention, tiled
#
# Chapter 07 showed that standard attention is slow because it writes the $N \times N$ score matrix to
# HBM and reads it back, kernel after kernel. Chapter 08 showed that the softmax can be computed while
# the keys stream past. Put the two together and you have FlashAttention (Dao et al., *FlashAttention:
# Fast and Memory-Efficient Exact Attention with IO-Awareness*, 2022; the loop order here is that of
# FlashAttention-2, Dao 2023): cut Q into blocks of $B_r$ rows and K, V into blocks of $B_c$ rows, keep one
# tile at a time in fast memory, and never materialise the $N \times N$ matrix. This chapter writes it in
# plain PyTorch — forward *and* backward — so every line can be read and tested; chapter 10 turns the
# same loop into a Triton kernel.

# %%
import math

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap

from attention_lab.attention import scaled_dot_product_attention
from attention_lab.costs.timing import peak_memory
from attention_lab.flash.tiled import FULL, PARTIAL, SKIP, block_schedule, tiled_attention, tiled_attention_forward
from attention_lab.book.results import load as load_results
from attention_lab.costs.gpu_facts import GPU_TABLE
from attention_lab.costs.hbm_traffic import (FLASH_PAPER_GPT2_MEDIUM, flash_backward_bytes, flash_forward_accesses_paper,
                                             fused_backward_bytes, fused_forward_bytes, paper_block_sizes,
                                             standard_forward_accesses_paper, tiled_forward_bytes, total_bytes,
                                             unfused_backward_kernels, unfused_forward_kernels)

torch.set_num_threads(1)  # this chapter's tensors are small: one CPU thread beats several contending for them

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
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
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
# ## The backward pass, by recomputation
#
# Standard attention's backward reads the saved $N \times N$ matrix $P$. FlashAttention saved only
# $L_i$, and rebuilds each tile of $P$ from it exactly: $P_{ij} = e^{S_{ij} - L_i}$ (the normalisation is
# already inside $L_i$). With $D_i = \operatorname{rowsum}(dO_i \circ O_i)$, for each key block (outer) and
# query block (inner):
#
# $$dV_j \mathrel{+}= P_{ij}^\top dO_i, \quad dP_{ij} = dO_i V_j^\top, \quad dS_{ij} = P_{ij} \circ (dP_{ij} - D_i),$$
# $$dQ_i \mathrel{+}= dS_{ij} K_j \cdot \text{scale}, \qquad dK_j \mathrel{+}= dS_{ij}^\top Q_i \cdot \text{scale}.$$
#
# It computes $QK^\top$ a second time — more FLOPs — to avoid reading an $N^2$ matrix: a good trade on a
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
fig, axes = plt.subplots(1, 2 if results else 1, figsize=(12 if results else 6, 4), squeeze=False)
ax = axes[0, 0]
ax.loglog(lengths, [b / 2**20 for b in naive_bytes], "o-", label="reference (materialised N × N)")
ax.loglog(lengths, [b / 2**20 for b in tiled_bytes], "s-", label="tiled, B_r = B_c = 128")
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
    axes[0, 1].set_title(f"{results['device']['name']} (H = {rows[0]['heads']}, d = {rows[0]['d']}, fp16, causal)")
    axes[0, 1].set_xlabel("sequence length N (tokens)")
    axes[0, 1].set_ylabel("peak extra memory (MiB)")
    axes[0, 1].legend()
plt.tight_layout()
plt.show()
for length, a, b in zip(lengths, naive_bytes, tiled_bytes):
    print(f"CPU N={length:5d}: reference {a / 2**20:7.1f} MiB, tiled {b / 2**20:5.1f} MiB")
print(f"doubling N from {lengths[-2]} to {lengths[-1]}: reference x{naive_bytes[-1] / naive_bytes[-2]:.1f}, "
      f"tiled x{tiled_bytes[-1] / tiled_bytes[-2]:.1f}")
if results:
    for row in results["memory_vs_n"]:
        print(f"GPU N={row['n']:5d}: reference {row['reference_bytes'] / 2**20:7.0f} MiB, tiled "
              f"{row['tiled_bytes'] / 2**20:4.0f} MiB, SDPA {row['sdpa_flash_bytes'] / 2**20:4.0f} MiB")

# %% [markdown]
# The tiled curve is what the output itself costs plus a constant: linear in $N$. On the GPU it tracks
# PyTorch's own FlashAttention kernel; the reference needs gigabytes where they need megabytes.
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
fig, ax = plt.subplots(figsize=(7, 4))
ax.loglog([m / 1024 for m in sram_bytes], [standard_gb] * len(sram_bytes), "--", label="standard: Θ(Nd + N²)")
ax.loglog([m / 1024 for m in sram_bytes], flash_gb, "o-", label="FlashAttention: Θ(N²d²/M)")
for name in ("T4", "A100 SXM 80GB", "H100 SXM"):
    kib = GPU_TABLE[name].shared_memory_per_sm_kib
    ax.axvline(kib, color="grey", lw=0.8, ls=":")
    ax.text(kib, standard_gb * 0.6, f" {name}", rotation=90, va="top", fontsize=8, color="dimgrey")
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
# and the tiled loop's count with no cache hits at all (one head's K and V, a quarter of a megabyte, are
# mostly re-read from L2 in practice). The committed H100 run timed the same shape:

# %%
standard_model = total_bytes(unfused_forward_kernels(n, d, batch_heads) + unfused_backward_kernels(n, d, batch_heads)) / 1e9
flash_floor = (fused_forward_bytes(n, d, batch_heads, 2, save_lse=True) + fused_backward_bytes(n, d, batch_heads)) / 1e9
flash_no_cache = (tiled_forward_bytes(n, d, 128, batch_heads) + flash_backward_bytes(n, d, 128, batch_heads)) / 1e9
print(f"paper ({paper['gpu']}): standard {paper['standard_hbm_gb']} GB, {paper['standard_ms']} ms -> "
      f"FlashAttention {paper['flash_hbm_gb']} GB, {paper['flash_ms']} ms "
      f"({paper['standard_hbm_gb'] / paper['flash_hbm_gb']:.1f}x fewer bytes, {paper['standard_ms'] / paper['flash_ms']:.1f}x faster)")
print(f"our count: standard {standard_model:.1f} GB; flash between {flash_floor:.2f} GB (floor) and "
      f"{flash_no_cache:.2f} GB (B_r = B_c = 128, no cache hits)")
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
# * Peak extra memory: the reference grows about 4× per doubling of $N$, the tiled version about 2× —
#   on the GPU it needs megabytes where the reference needs gigabytes, like PyTorch's FlashAttention.
# * The IO model: more SRAM means fewer passes, $\Theta(N^2d^2/M)$; our counts bracket the paper's
#   GPT-2-medium measurement, and the standard chain's count comes within the margin printed above.
#
# This PyTorch loop is slow — every tile is a handful of separate PyTorch calls. Chapter 10 writes the
# same loop as one Triton kernel, where each tile really does stay in SRAM.
