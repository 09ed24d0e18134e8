# %% [markdown]
# # 07 · The GPU beneath
#
# Chapters 01–06 counted FLOPs. From here on, the question is a different one: **how many bytes move
# between the GPU's big, slow memory and its small, fast one?** FlashAttention (chapters 08–10) does
# *more* arithmetic than standard attention and still runs several times faster, because standard
# attention is limited by memory traffic, not by arithmetic. This chapter builds the picture needed to
# see why: the parts of a GPU, the roofline model, and a byte count of attention run as separate kernels
# versus one fused kernel — checked against a real Hopper GPU.

# %%
import os
import statistics

import matplotlib.pyplot as plt
import torch

from attention_lab.costs.timing import time_function
from attention_lab.costs.gpu_facts import (A100_BOOST_CLOCK_GHZ, A100_TENSOR_FMA_PER_CLOCK_PER_SM, BLOG_CLAIMS,
                                           FLASH_PAPER_FIGURE_1, FLASH_PAPER_MEMORY_HIERARCHY, FULL_GH100_SMS,
                                           GPU_TABLE, LECTURE_H100_ROW, SHARED_MEMORY_BYTES_PER_CLOCK_PER_SM,
                                           SM_LIMITS, WARP_SIZE, detect_device, launch_geometry,
                                           measure_copy_bandwidth, resident_blocks, shared_memory_bandwidth,
                                           spec_for_name)
from attention_lab.book.results import load as load_results
from attention_lab.costs.roofline import elementwise_cost, matmul_cost, plot_roofline, softmax_cost
from attention_lab.costs.hbm_traffic import (fused_forward_bytes, fused_softmax_kernels, plot_chain_vs_fused,
                                             plot_kernel_steps, roofline_predictions, total_bytes,
                                             unfused_attention_chain, unfused_forward_kernels)

torch.set_num_threads(1)  # this chapter's tensors are small: one CPU thread beats several contending for them
plt.rcParams.update({"font.size": 12})  # figures stay readable when projected

# %% [markdown]
# ## SMs, SRAM, HBM
#
# A GPU is a few dozen to a hundred-odd **streaming multiprocessors (SMs)**. A **kernel** is one function
# that the GPU runs on a *grid* of threads; the grid is cut into **thread blocks**, each block runs on one SM,
# and an SM executes a block's threads in groups called **warps** (one instruction for every lane of the
# warp; the size is printed below). Each SM owns a small, fast on-chip memory: the registers and a block of
# SRAM split between L1 cache and **shared memory**, the scratchpad a kernel fills with tiles. All SMs share
# an L2 cache and the large off-chip **HBM** (high-bandwidth memory; GDDR6 on the T4), which holds every
# tensor. A kernel reads its inputs from HBM, computes, and writes its outputs back to HBM; the next kernel
# reads them again.
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
# ## Three sentences of the blog, corrected
#
# The blog post this lecture's GPU slides come from describes the hierarchy in three short sentences, each
# of them wrong. They are printed below, each with what is true instead.
#
# **Warps.** A warp is the group of threads an SM issues one instruction to. Its size is a constant of
# every NVIDIA GPU so far, given in the CUDA C++ Programming Guide ("SIMT Architecture": "the multiprocessor
# creates, manages, schedules, and executes threads in groups of 32 parallel threads called warps") and
# reported by the driver as `warpSize`:

# %%
print(f"blog: \"{BLOG_CLAIMS['warp']}\"")
print(f"attention_lab.costs.gpu_facts.WARP_SIZE = {WARP_SIZE} threads per warp (CUDA C++ Programming Guide, "
      "'SIMT Architecture')")
info = detect_device()
results = load_results("hbm_traffic")
if info.available:
    print(f"the driver of this {info.name} reports warpSize = {info.warp_size}")
elif results is not None:
    print(f"the driver of the {results['device']['name']} of the committed run reported warpSize = "
          f"{results['device']['warp_size']}")
print(f"a block of 128 threads is {128 // WARP_SIZE} warps; an SM of an H100 holds at most "
      f"{SM_LIMITS[90].max_threads_per_sm // WARP_SIZE} resident warps")

# %% [markdown]
# **SMs and blocks.** "1 SM – 1 thread block" is wrong too: an SM keeps *several* blocks resident at once
# and switches between their warps every cycle, which is how it hides the latency of HBM. How many depends on
# what one block asks for — threads, registers, shared memory — against what one SM has; the smallest of
# those four limits wins (`resident_blocks`, a simplified form of CUDA's occupancy calculator, with the
# per-SM limits of the CUDA C++ Programming Guide's "Technical Specifications per Compute Capability").
# Three launches on the cards of the table: an elementwise kernel (one element per thread), a
# FlashAttention-style block whose shared memory holds a $128 \times 64$ query tile and two pipeline stages
# of $64 \times 64$ key and value tiles (fp16), and one block of the most threads allowed:

# %%
print(f"blog: \"{BLOG_CLAIMS['sm']}\"\n")
tile_bytes = (128 * 64 + 2 * 2 * 64 * 64) * 2  # Q tile + 2 stages × (K tile + V tile), fp16
launches = {"elementwise, 256 threads, 16 regs, no smem": (256, 16, 0),
            f"flash-style, 128 threads, 128 regs, {tile_bytes // 1024} KiB smem": (128, 128, tile_bytes),
            "one fat block, 1024 threads, 64 regs": (1024, 64, 0)}
cards = ("T4", "A100 SXM 80GB", "H100 SXM")
print(f"{'blocks resident on one SM (what limits it)':46}" + "".join(f"{name:>24}" for name in cards))
for label, launch in launches.items():
    cells = []
    for name in cards:
        residency = resident_blocks(GPU_TABLE[name].compute_capability, *launch)
        cells.append(f"{residency.blocks:3d} ({residency.binding})")
    print(f"{label:46}" + "".join(f"{cell:>24}" for cell in cells))
a100 = GPU_TABLE["A100 SXM 80GB"]
elementwise = resident_blocks(a100.compute_capability, *launches["elementwise, 256 threads, 16 regs, no smem"])
print(f"\nA100, elementwise launch: each resource alone would allow {elementwise.limits} blocks per SM -> "
      f"{elementwise.blocks} blocks = {elementwise.threads} threads at once, on each of {a100.sms} SMs")
if info.available:
    props = torch.cuda.get_device_properties(0)
    limits = SM_LIMITS.get(info.compute_capability)
    for what, attribute, table_value in (
            ("threads per SM", "max_threads_per_multi_processor", limits and limits.max_threads_per_sm),
            ("registers per SM", "regs_per_multiprocessor", limits and limits.registers_per_sm),
            ("shared memory per SM (bytes)", "shared_memory_per_multiprocessor",
             limits and limits.shared_memory_per_sm_kib * 1024)):
        print(f"this {info.name}: {what} reported by the driver {getattr(props, attribute, 'not reported')}, "
              f"in the table {table_value if limits else 'no row for sm_' + str(info.compute_capability)}")

# %% [markdown]
# A block runs alone on an SM only where it uses up one of the SM's resources by itself — the fat block, or
# the flash-style block in the T4's smaller shared memory; everywhere else blocks share the SM. A block is
# also never split across SMs, and a grid usually has many more blocks than the card has slots for them: the
# rest wait and start as blocks finish, in "waves".
#
# **Kernels and threads.** "threads (a.k.a. kernel)" mixes up the function with the workers that run it. A
# kernel is *one* function; a launch runs it on a grid of many threads (each finds its own element from its
# block and thread index). The mask kernel of the unfused chain counted further down, over 64 heads of
# $4096 \times 4096$ scores, one element per thread:

# %%
print(f"blog: \"{BLOG_CLAIMS['kernel']}\"\n")
mask_launch = launch_geometry(64 * 4096 * 4096, threads_per_block=256)
slots = a100.sms * elementwise.blocks
print(f"one kernel (the mask), launched once: {mask_launch.elements:,} elements -> grid of {mask_launch.blocks:,} "
      f"blocks × {mask_launch.threads_per_block} threads = {mask_launch.threads:,} threads, all running the same "
      f"function")
print(f"A100: {a100.sms} SMs × {elementwise.blocks} resident blocks = {slots:,} blocks at a time -> "
      f"{mask_launch.waves(a100.sms, elementwise.blocks):.0f} waves of blocks")

# %% [markdown]
# **SRAM and HBM bandwidth.** The blog's memory pyramid quotes an on-chip SRAM bandwidth for the A100 without
# a source. It is the FlashAttention paper's Figure 1 (left), printed here whole, SRAM beside HBM and host
# DRAM. Where the SRAM number comes from: shared memory has 32 banks of 4 bytes, each delivering one word
# per clock, on every SM — multiplied out with the A100's SM count and boost clock (the same clock gives the
# datasheet's fp16 tensor rate, as a check):

# %%
print(f"source: {FLASH_PAPER_FIGURE_1}")
for level in FLASH_PAPER_MEMORY_HIERARCHY:
    print(f"  {level.name:9}: {level.bandwidth_bytes_s / 1e12:7.4f} TB/s, {level.capacity_bytes / 1e9:7.2f} GB  "
          f"({level.where})")
sram_level, hbm_level, dram_level = FLASH_PAPER_MEMORY_HIERARCHY
sram_a100 = shared_memory_bandwidth(a100.sms, A100_BOOST_CLOCK_GHZ)
print(f"\nA100 shared memory: {a100.sms} SMs × {SHARED_MEMORY_BYTES_PER_CLOCK_PER_SM} bytes/clock × "
      f"{A100_BOOST_CLOCK_GHZ} GHz = {sram_a100 / 1e12:.1f} TB/s (the paper: {sram_level.bandwidth_bytes_s / 1e12:.0f})")
print(f"  check of the clock: {a100.sms} SMs × {A100_TENSOR_FMA_PER_CLOCK_PER_SM} fp16 FMA/clock × 2 FLOP × "
      f"{A100_BOOST_CLOCK_GHZ} GHz = {a100.sms * A100_TENSOR_FMA_PER_CLOCK_PER_SM * 2 * A100_BOOST_CLOCK_GHZ / 1e3:.0f} "
      f"TFLOP/s, the table's {a100.fp16_tflops:.0f}")
print(f"A100 L1/shared arrays together: {a100.sms} × {a100.l1_shared_per_sm_kib} KiB = "
      f"{a100.sms * a100.l1_shared_per_sm_kib / 1024:.1f} MiB = {a100.sms * a100.l1_shared_per_sm_kib * 1024 / 1e6:.1f} MB "
      f"(the paper: {sram_level.capacity_bytes / 1e6:.0f} MB)")
print(f"SRAM / HBM bandwidth: {sram_level.bandwidth_bytes_s / hbm_level.bandwidth_bytes_s:.0f}x in the paper "
      f"(A100 40 GB, {hbm_level.bandwidth_bytes_s / 1e12:.1f} TB/s); {sram_a100 / a100.bandwidth_bytes_s:.1f}x "
      f"against the A100 80 GB's {a100.bandwidth_tb_s} TB/s")
print(f"HBM / SRAM capacity: {hbm_level.capacity_bytes / sram_level.capacity_bytes:.0f}x")

fig, ax = plt.subplots(figsize=(9, 3.8))
bars = [("SRAM, A100 (paper)", sram_level.bandwidth_bytes_s, sram_level.capacity_bytes),
        ("SRAM, A100 (banks × SMs × clock)", sram_a100, a100.sms * a100.l1_shared_per_sm_kib * 1024),
        ("HBM, A100 40 GB (paper)", hbm_level.bandwidth_bytes_s, hbm_level.capacity_bytes),
        ("HBM, A100 80 GB (datasheet)", a100.bandwidth_bytes_s, a100.memory_gib * 1e9),
        ("CPU DRAM (paper)", dram_level.bandwidth_bytes_s, dram_level.capacity_bytes)]
ax.barh(range(len(bars)), [b[1] / 1e12 for b in bars], color=["C2", "C2", "C0", "C0", "C7"])
def size_label(n_bytes):
    return f"{n_bytes / 1e6:.3g} MB" if n_bytes < 1e9 else f"{n_bytes / 1e9:.3g} GB" if n_bytes < 1e12 else f"{n_bytes / 1e12:.3g} TB"


for row, (_, bandwidth, capacity) in enumerate(bars):
    ax.text(bandwidth / 1e12 * 1.1, row, f"{bandwidth / 1e12:.3g} TB/s, {size_label(capacity)}", va="center")
ax.set_yticks(range(len(bars)), [b[0] for b in bars])
ax.invert_yaxis()
ax.set_xscale("log")
ax.set_xlim(right=300)
ax.set_xlabel("bandwidth (TB/s, log scale); size beside each bar")
ax.set_title("The memory hierarchy of FlashAttention's Figure 1, with its sources")
ax.grid(alpha=0.3, axis="x", which="both")
plt.tight_layout()
plt.show()

# %% [markdown]
# The pyramid's point stands: on-chip memory is faster than HBM and smaller than it by the two factors
# printed above. A kernel that keeps its working tile in SRAM and touches HBM once per input is the goal of
# chapters 08–10.
#
# ## The card at hand
#
# Datasheets are leads, not measurements. A table that circulates with this lecture (from the same blog post)
# gives the H100 row printed below. Two things are wrong with it, and the driver and a stopwatch show
# which: the SM count is the *full GH100 die*, which no product ships, and the bandwidth is the *PCIe*
# card's. The H100 SXM — the one in most servers — has fewer SMs enabled and much faster memory. Here is
# the check, live on a GPU, or from the committed run of `benchmarks/hbm_traffic.py` on CPU:

# %%
print(info.describe())
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
# The same probe works on the CPU: a large copy counts the bytes it reads plus the bytes it writes. Here it
# measures *this* machine, *now* — five times with the one thread this chapter uses, then with every core:

# %%
cores = os.cpu_count() or 1
one_thread = [measure_copy_bandwidth(2**26, device="cpu", repeats=3) for _ in range(5)]
torch.set_num_threads(cores)
all_cores = [measure_copy_bandwidth(2**26, device="cpu", repeats=3) for _ in range(3)]
torch.set_num_threads(1)
cpu_bandwidth = statistics.median(one_thread)
print(f"this machine, {cores} cores, 64 MiB copied: one thread {cpu_bandwidth / 1e9:.1f} GB/s (five measurements "
      f"{min(one_thread) / 1e9:.1f}–{max(one_thread) / 1e9:.1f}), {cores} threads {statistics.median(all_cores) / 1e9:.1f} GB/s")
print(f"the paper's Figure 1 gives CPU DRAM {dram_level.bandwidth_bytes_s / 1e9:.1f} GB/s")
if card is not None:
    print(f"GPU copy ({card['name']}, {card['source']}) / this CPU's copy: "
          f"{card['bandwidth'] / max(one_thread):.0f}x–{card['bandwidth'] / min(one_thread):.0f}x with one thread, "
          f"{card['bandwidth'] / statistics.median(all_cores):.0f}x with {cores}")

# %% [markdown]
# That ratio is a measurement of two particular machines, not a constant of hardware, and it moves from run to
# run: the GPU number is a copy on one card (taken once, on whatever card the run used), the CPU number is
# taken now on whatever runs this notebook. A CPU copy depends on how many cores copy (one core alone cannot
# keep every memory channel busy, but where the other cores are busy with other work more threads can even be
# slower — the two figures above are this run's), on what else shares the memory bus (CI runners and
# Colab machines are shared), on whether 64 MiB fits in the machine's caches, on clock boost and on how many
# memory channels the machine has — a server with many cores copying at once reaches many times what one
# core does. What stays true on any machine is the order of things: on-chip SRAM, then HBM, then
# host DRAM, each a large step slower.

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
# A fused kernel reads $Q, K, V$ once and writes $O$ once: $4Nd$ elements, whatever $N$ is.
#
# The lecture slides draw a "fused kernel" too — but theirs still writes the weights $A'' =
# \operatorname{softmax}(\operatorname{mask}(QK^\top))$, an $N \times N$ matrix, to HBM, and the product with $V$
# reads it back. That fuses the scale, the mask and the softmax into the first matrix product (saving the
# middle round trips), but it is not FlashAttention: the $N^2$ term is still there. Even the most generous
# reading — one kernel that also multiplies by $V$ and writes $A''$ only as a by-product — keeps one $N^2$
# write. The traffic model `attention_lab.costs.hbm_traffic` counts all three, kernel by kernel; for 4
# sequences × 16 heads, $N = 4096$, $d = 64$, fp16:

# %%
batch_heads, n, d = 64, 4096, 64
variants = {"unfused chain (4 kernels)": unfused_forward_kernels(n, d, batch_heads, 2),
            "the slides' \"fused\" kernel (writes A″)": fused_softmax_kernels(n, d, batch_heads, 2),
            "  … with ·V in the same kernel": fused_softmax_kernels(n, d, batch_heads, 2, pv_in_same_kernel=True)}
fused = fused_forward_bytes(n, d, batch_heads, 2)
for label, kernels in variants.items():
    print(f"{label}:")
    for kernel in kernels:
        print(f"    {kernel.name:32}: reads {kernel.bytes_read / 1e9:6.3f} GB, writes {kernel.bytes_written / 1e9:6.3f} GB")
    print(f"    total {total_bytes(kernels) / 1e9:.2f} GB = {total_bytes(kernels) / fused:.0f}x the fused kernel's")
print(f"FlashAttention's fused kernel (reads Q, K, V, writes O): {fused / 1e9:.3f} GB")
unfused = total_bytes(variants["unfused chain (4 kernels)"])

lengths = [256, 512, 1024, 2048, 4096, 8192, 16384]
fig, ax = plt.subplots(figsize=(8, 5))
ax.loglog(lengths, [total_bytes(unfused_forward_kernels(m, d, batch_heads, 2)) / 1e9 for m in lengths], "o-",
          label="unfused chain: 4Nd + 6N² elements + N² mask bytes")
ax.loglog(lengths, [total_bytes(fused_softmax_kernels(m, d, batch_heads, 2)) / 1e9 for m in lengths], "^-",
          label="slides' \"fused\" kernel, writes A″: 4Nd + 2N²")
ax.loglog(lengths, [total_bytes(fused_softmax_kernels(m, d, batch_heads, 2, True)) / 1e9 for m in lengths], "v--",
          label="… with ·V inside: 4Nd + N²")
ax.loglog(lengths, [fused_forward_bytes(m, d, batch_heads, 2) / 1e9 for m in lengths], "s-",
          label="FlashAttention, fused: 4Nd")
ax.set_title(f"HBM traffic of one attention forward (B·H = {batch_heads}, d = {d}, fp16)")
ax.set_xlabel("sequence length N (tokens)")
ax.set_ylabel("bytes read + written (GB)")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=10)
plt.tight_layout()
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
    fig, axes = plt.subplots(1, 2, figsize=(15, 5))
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
# Printed above, from the table, the driver, the committed GPU run and this machine:
#
# * The blog's three sentences, corrected: a warp is `WARP_SIZE` threads (the CUDA guide's and the driver's
#   number); an SM keeps as many blocks resident as its threads, registers and shared memory allow — several
#   in most cells of the table, one only where a single block uses up a resource; a kernel is one function that a
#   grid of threads runs, in waves of blocks.
# * The blog's SRAM bandwidth is the FlashAttention paper's Figure 1, and it follows from 32 four-byte banks
#   per SM × the A100's SMs × its clock; HBM is slower by the printed factor, host DRAM slower still.
# * A GPU-to-CPU bandwidth ratio describes two machines at two moments: this run's spread, and the gap
#   between one thread and every core, are printed above.
# * The card that ran the benchmark reports its SM count and a measured copy bandwidth, and neither is the
#   lecture's row, which mixes the full die's SM count with the PCIe card's bandwidth.
# * The measured bandwidth is below the datasheet's: datasheet rates are ceilings; roofline estimates
#   should use measured ones.
# * At head size 64 every step of attention, the matrix products included, sits left of the ridge point:
#   attention as separate kernels is memory-bound.
# * The unfused chain moves a multiple of the fused kernel's bytes that grows with $N$ (the $6N^2$ term);
#   the slides' "fused" kernel, which still writes $A''$ to HBM, only shrinks the $N^2$ term (to $2N^2$, or
#   $N^2$ with $\cdot V$ inside) — FlashAttention removes it. Timed on that card, the fused SDPA kernel beats
#   the chain by the factors printed above.
#
# Next: to fuse the softmax into one kernel, it must be computed without ever holding a whole row of
# scores — the online softmax of chapter 08.
