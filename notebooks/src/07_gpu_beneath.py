# %% [markdown]
# # 07 · The GPU beneath
#
# Chapters 01–06 counted FLOPs. From here on, the question is a different one: **how many bytes move
# between the GPU's big, slow memory and its small, fast one?** FlashAttention (chapters 08–10) does
# *more* arithmetic than standard attention and still runs several times faster, because standard
# attention is limited by memory traffic, not by arithmetic. This chapter builds the picture needed to
# see why: the parts of a GPU, the roofline model, and a byte count of attention run as separate kernels
# versus one fused kernel — checked against a real H100.

# %%
import matplotlib.pyplot as plt
import torch

from attention_lab.costs.timing import time_function
from attention_lab.costs.gpu_facts import (FULL_GH100_SMS, GPU_TABLE, LECTURE_H100_ROW, WARP_SIZE, detect_device,
                                           measure_copy_bandwidth, spec_for_name)
from attention_lab.book.results import load as load_results
from attention_lab.costs.roofline import elementwise_cost, matmul_cost, plot_roofline, softmax_cost
from attention_lab.costs.hbm_traffic import (fused_forward_bytes, plot_chain_vs_fused, plot_kernel_steps,
                                             roofline_predictions, total_bytes, unfused_attention_chain,
                                             unfused_forward_kernels)

torch.set_num_threads(1)  # this chapter's tensors are small: one CPU thread beats several contending for them

# %% [markdown]
# ## SMs, SRAM, HBM
#
# A GPU is a few dozen to a hundred-odd **streaming multiprocessors (SMs)**. Each SM runs threads in
# groups of 32 called **warps** (one instruction, 32 lanes) and owns a small, fast on-chip memory: the
# registers and a block of SRAM split between L1 cache and **shared memory**, the scratchpad a kernel
# fills with tiles. All SMs share an L2 cache and the large off-chip **HBM** (high-bandwidth memory; GDDR6
# on the T4), which holds every tensor. A kernel reads its inputs from HBM, computes, and writes its
# outputs back to HBM; the next kernel reads them again.
#
# The numbers for the cards students meet (dense tensor-core rates, no 2:4 sparsity):

# %%
print(f"{'card':14} {'sm':>6} {'SMs':>4} {'smem/SM':>8} {'L1+smem':>8} {'L2':>6} {'memory':>13} "
      f"{'TB/s':>5} {'fp16 TF/s':>9} {'bf16 TF/s':>9}")
for spec in GPU_TABLE.values():
    bf16 = f"{spec.bf16_tflops:9.0f}" if spec.bf16_tflops else f"{'none':>9}"
    print(f"{spec.name:14} {'sm_' + str(spec.compute_capability):>6} {spec.sms:4d} {spec.shared_memory_per_sm_kib:5d} KiB "
          f"{spec.l1_shared_per_sm_kib:5d} KiB {spec.l2_mib:3.0f} MiB {spec.memory_gib:5.0f} GB {spec.memory_kind:6} "
          f"{spec.bandwidth_tb_s:5.2f} {spec.fp16_tflops:9.0f} {bf16}")
print(f"\nthreads per warp: {WARP_SIZE}")
h100 = GPU_TABLE["H100 SXM"]
sram_total_mib = h100.sms * h100.shared_memory_per_sm_kib / 1024
print(f"H100 SXM: all shared memory together is {sram_total_mib:.0f} MiB; HBM is {h100.memory_gib:.0f} GB, "
      f"about {h100.memory_gib * 1024 / sram_total_mib:.0f}x larger")

# %% [markdown]
# Sources: NVIDIA's T4 datasheet (2019) and Turing tuning guide; the A100 datasheet (2021) and *NVIDIA A100
# Tensor Core GPU Architecture* whitepaper (2020); the H100 datasheet and *NVIDIA H100 Tensor Core GPU
# Architecture* whitepaper (2022), SXM5 and PCIe columns; the H200 datasheet (2024), which lists no L2
# size (the H200's is the size its CUDA driver reports). "smem/SM" is the most
# shared memory an SM can hand its blocks (one block may take 1 KiB less on A100/H100); it is carved from
# the combined L1/shared array in the next column. Datasheet tensor rates are quoted "with sparsity" — the
# table halves them to the dense rate that attention actually gets. The free Colab T4 has no bf16 at all.
#
# ## The card at hand
#
# Datasheets are leads, not measurements. A table that circulates with this lecture (from a blog post)
# gives the H100 row printed below. Two things are wrong with it, and the driver and a stopwatch show
# which: the SM count is the *full GH100 die*, which no product ships, and the bandwidth is the *PCIe*
# card's. The H100 SXM — the one in most servers — has fewer SMs enabled and much faster memory. Here is
# the check, live on a GPU, or from the committed run of `benchmarks/hbm_traffic.py` on CPU:

# %%
info = detect_device()
print(info.describe())
results = load_results("hbm_traffic")
if info.available:
    live_bandwidth = measure_copy_bandwidth(2**30 if info.memory_gib > 8 else 2**28)
    card = {"name": info.name, "sms": info.sms, "l2_mib": info.l2_mib, "warp_size": info.warp_size,
            "bandwidth": live_bandwidth, "source": "measured now"}
elif results is not None:
    device_row = results["device"]
    card = {"name": device_row["name"], "sms": device_row["sms"], "l2_mib": device_row["l2_mib"],
            "warp_size": device_row["warp_size"], "source": "committed run, "
            f"torch {results['versions']['torch']}, CUDA {results['versions']['cuda']}",
            "bandwidth": results["copy_bandwidth_bytes_s"][str(results["copy_bandwidth_used_bytes"])]}
else:
    card = None
    print("no GPU and no committed results: on a GPU this cell reads the SM count and measures the copy bandwidth")
if card is not None:
    spec = spec_for_name(card["name"])
    print(f"card: {card['name']} ({card['source']}); datasheet row: {spec.name if spec else 'not in the table'}")
    print(f"  SMs reported by the driver: {card['sms']}  (lecture's row: {LECTURE_H100_ROW['sms']}, "
          f"full GH100 die: {FULL_GH100_SMS}, H100 SXM: {GPU_TABLE['H100 SXM'].sms}, H100 PCIe: {GPU_TABLE['H100 PCIe'].sms})")
    print(f"  copy bandwidth measured (read + write): {card['bandwidth'] / 1e12:.2f} TB/s  (lecture's row: "
          f"{LECTURE_H100_ROW['bandwidth_tb_s']:.1f}, datasheet: {spec.bandwidth_tb_s if spec else float('nan'):.2f})")
    if spec is not None:
        print(f"  measured / datasheet bandwidth: {card['bandwidth'] / spec.bandwidth_bytes_s:.0%}")
    print(f"  warp size: {card['warp_size']}, L2: {card['l2_mib']:.0f} MiB")

# %% [markdown]
# The same probe works on the CPU: a large copy counts the bytes it reads plus the bytes it writes.
# This machine's DRAM, for scale:

# %%
cpu_bandwidth = measure_copy_bandwidth(2**26, device="cpu", repeats=5)
print(f"CPU copy bandwidth here: {cpu_bandwidth / 1e9:.1f} GB/s")
if card is not None:
    print(f"the GPU's HBM is about {card['bandwidth'] / cpu_bandwidth:.0f}x faster")

# %% [markdown]
# ## The roofline
#
# A kernel that performs $F$ FLOPs and moves $B$ bytes through HBM cannot finish faster than
# $\max(F / \text{peak},\; B / \text{bandwidth})$. Its **arithmetic intensity** $I = F/B$ decides which
# term wins: below the **ridge point** $\text{peak}/\text{bandwidth}$ the kernel is *memory-bound*, and a
# faster ALU would not help it. The four steps of attention for one head, $N = 1024$, $d = 64$, fp16:

# %%
n, d, element = 1024, 64, 2
steps = [matmul_cost(n, n, d, element, "S = QKᵀ"), elementwise_cost(n * n, element, 1.0, n * n, "mask"),
         softmax_cost(n, n, element, "softmax"), matmul_cost(n, d, n, element, "O = PV")]
for spec_name in ("T4", "A100 SXM 80GB", "H100 SXM"):
    print(f"ridge point {spec_name:14}: {GPU_TABLE[spec_name].ridge_point:6.0f} FLOP/byte")
print()
for step in steps:
    bound = "memory" if step.intensity < h100.ridge_point else "compute"
    print(f"{step.name:8}: {step.flops / 1e6:7.1f} MFLOP, {step.bytes_moved / 1e6:5.2f} MB, "
          f"intensity {step.intensity:6.2f} FLOP/byte -> {bound}-bound on an H100")
measured = None
if results is not None:
    measured = (f"{results['device']['name']} measured", results["matmul_flops"]["fp16"],
                results["copy_bandwidth_bytes_s"][str(results["copy_bandwidth_used_bytes"])])
ax = plot_roofline([GPU_TABLE[name] for name in ("T4", "A100 SXM 80GB", "H100 SXM")], steps, measured=measured)
plt.show()

# %% [markdown]
# Every step sits left of every ridge point. The mask and the softmax do a handful of FLOPs per byte —
# hopelessly memory-bound — and even the two matrix products are, because with $d = 64$ each element of
# the $N \times N$ score matrix gets only $2d$ FLOPs of work for the bytes spent writing or reading it.
# The cure is not faster arithmetic; it is **not writing the $N \times N$ matrix to HBM at all**.
#
# ## Counting HBM traffic
#
# Standard attention runs as separate kernels, and each one round-trips through HBM:
#
# | kernel | reads | writes |
# |---|---|---|
# | $S = QK^\top \cdot \text{scale}$ | $Q, K$: $2Nd$ | $S$: $N^2$ |
# | mask | $S$: $N^2$, mask: $N^2$ bools | $S$: $N^2$ |
# | softmax | $S$: $N^2$ | $P$: $N^2$ |
# | $O = PV$ | $P$: $N^2$, $V$: $Nd$ | $O$: $Nd$ |
#
# A fused kernel reads $Q, K, V$ once and writes $O$ once: $4Nd$ elements, whatever $N$ is. The
# traffic model `attention_lab.costs.hbm_traffic` counts it per kernel; for 4 sequences × 16 heads, $N = 4096$,
# $d = 64$, fp16:

# %%
batch_heads, n, d = 64, 4096, 64
kernels = unfused_forward_kernels(n, d, batch_heads, 2)
for kernel in kernels:
    print(f"{kernel.name:8}: reads {kernel.bytes_read / 1e9:6.3f} GB, writes {kernel.bytes_written / 1e9:6.3f} GB")
unfused, fused = total_bytes(kernels), fused_forward_bytes(n, d, batch_heads, 2)
print(f"unfused chain: {unfused / 1e9:.2f} GB;  fused kernel: {fused / 1e9:.3f} GB;  ratio {unfused / fused:.0f}x")

lengths = [256, 512, 1024, 2048, 4096, 8192, 16384]
fig, ax = plt.subplots(figsize=(6.5, 4))
ax.loglog(lengths, [total_bytes(unfused_forward_kernels(m, d, batch_heads, 2)) / 1e9 for m in lengths], "o-",
          label="unfused: 4Nd + 6N² elements + N² mask bytes")
ax.loglog(lengths, [fused_forward_bytes(m, d, batch_heads, 2) / 1e9 for m in lengths], "s-", label="fused: 4Nd elements")
ax.set_title(f"HBM traffic of one attention forward (B·H = {batch_heads}, d = {d}, fp16)")
ax.set_xlabel("sequence length N (tokens)")
ax.set_ylabel("bytes read + written (GB)")
ax.grid(alpha=0.3, which="both")
ax.legend()
plt.show()

# %% [markdown]
# ## Timed on a GPU
#
# `benchmarks/hbm_traffic.py` runs the four kernels one by one (fp16, PyTorch's own kernels) and the whole
# chain against PyTorch's fused SDPA (FlashAttention backend), next to what the model predicts from the
# bytes and the card's measured copy bandwidth. Its committed run:

# %%
if results is None:
    print("no committed results found: run `python benchmarks/hbm_traffic.py` on a GPU")
else:
    print(f"{results['device']['name']}, torch {results['versions']['torch']}, CUDA {results['versions']['cuda']}, "
          f"{results['dtype']}")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    plot_kernel_steps(results, axes[0])
    plot_chain_vs_fused(results, axes[1])
    plt.tight_layout()
    plt.show()
    for row in results["steps"]["rows"]:
        print(f"{row['kernel']:8}: {row['seconds'] * 1e3:6.3f} ms measured, {row['predicted_seconds'] * 1e3:6.3f} ms "
              f"from bytes/bandwidth -> {row['effective_bandwidth'] / 1e12:.2f} TB/s effective")
    chain_floor, fused_floor = roofline_predictions(results)
    for row, chain_s, fused_s in zip(results["chain_vs_sdpa"], chain_floor, fused_floor):
        print(f"N={row['n']:5d}: chain {row['chain_fwd_s'] * 1e3:7.3f} ms (model floor {chain_s * 1e3:7.3f}), "
              f"SDPA {row['sdpa_fwd_s'] * 1e3:6.3f} ms (floor {fused_s * 1e3:6.3f}), "
              f"speed-up {row['chain_fwd_s'] / row['sdpa_fwd_s']:4.1f}x")

# %% [markdown]
# On a GPU, the same comparison runs live on the card at hand (16 heads, $d = 64$, fp16, causal; PyTorch
# picks whichever fused SDPA backend the card supports):

# %%
if info.available:
    batch_heads_live = 16
    for n_live in (1024, 2048, 4096):
        q_live, k_live, v_live = (torch.randn(1, batch_heads_live, n_live, 64, device="cuda", dtype=torch.float16)
                                  for _ in range(3))
        blocked = torch.ones(n_live, n_live, dtype=torch.bool, device="cuda").triu(1)  # True = masked out
        chain_s = time_function(lambda: unfused_attention_chain(q_live, k_live, v_live, blocked), repeats=10)
        fused_s = time_function(lambda: torch.nn.functional.scaled_dot_product_attention(q_live, k_live, v_live,
                                                                                         is_causal=True), repeats=10)
        chain_model_s = total_bytes(unfused_forward_kernels(n_live, 64, batch_heads_live, 2)) / live_bandwidth
        print(f"N={n_live}: unfused chain {chain_s * 1e3:.3f} ms (bytes / bandwidth: {chain_model_s * 1e3:.3f} ms), "
              f"fused SDPA {fused_s * 1e3:.3f} ms, speed-up {chain_s / fused_s:.1f}x")
else:
    print("no GPU: on a GPU this cell times the unfused chain against PyTorch's fused SDPA for N = 1024, 2048, 4096 "
          "and prints the model's estimate beside each; the committed run is plotted above")

# %% [markdown]
# What the plots say:
#
# * The two matrix products run close to the model's time: they are memory-bound, moving bytes at
#   nearly the copy bandwidth. The mask and softmax kernels take longer than their byte count predicts —
#   their effective bandwidth, printed above, is well under the copy's. A likely cause: for rows this long
#   PyTorch's softmax passes over each row more than once (maximum, sum, then write), and the broadcast
#   mask is read by every head. The model counts the *fewest* bytes each kernel must move: it is a floor,
#   not a forecast.
# * The unfused chain's time grows like $N^2$ along the model's line, a constant factor above it.
#   The fused kernel moves so few bytes that its floor is set by arithmetic instead (dashed blue bends up
#   once $2N^2d$ FLOPs outweigh $4Nd$ bytes): at long sequences it is compute-bound, where a GPU is fast.
#
# ## Exercise: count one kernel's bytes
#
# Write `softmax_bytes(batch, heads, n, d, bytes_per_element)`: the bytes the **softmax kernel** of the
# unfused chain reads plus writes in HBM, for `batch × heads` attention heads over `n` tokens.

# %%
def softmax_bytes(batch, heads, n, d, bytes_per_element):
    ### BEGIN SOLUTION
    matrix = batch * heads * n * n * bytes_per_element  # one (B, H, N, N) tensor; d plays no part
    return 2 * matrix  # read the scores, write the weights
    ### END SOLUTION


# %%
from attention_lab.exercises.ch07 import check_softmax_bytes

check_softmax_bytes(softmax_bytes)

# %% [markdown]
# ## Summary
#
# Printed above, from the table, the driver and the committed H100 run:
#
# * The card that ran the benchmark reports its SM count and a measured copy bandwidth: an H100 SXM, not
#   the lecture's row, which mixes the full die's SM count with the PCIe card's bandwidth.
# * The measured bandwidth is below the datasheet's: datasheet rates are ceilings; roofline estimates
#   should use measured ones.
# * At head size 64 every step of attention, the matrix products included, sits left of the ridge point:
#   attention as separate kernels is memory-bound.
# * The unfused chain moves a multiple of the fused kernel's bytes that grows with $N$ (the $6N^2$ term);
#   timed on the H100, the fused SDPA kernel beats the chain by the factors printed above.
#
# Next: to fuse the softmax into one kernel, it must be computed without ever holding a whole row of
# scores — the online softmax of chapter 08.
