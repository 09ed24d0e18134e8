# %% [markdown]
# # 05 · Multi-query attention
#
# Chapter 03 made generation cheap in arithmetic: each step feeds one new token and reads the keys and
# values of all earlier tokens from the KV cache. But *reading* is the problem. For every generated
# token, every layer streams its whole cache from memory and does only a couple of FLOPs with each number
# it reads. Processors compute far faster than they read memory, so decoding waits on memory.
#
# Shazeer (2019, *Fast Transformer Decoding: One Write-Head is All You Need*, arXiv 1911.02150) proposed
# **multi-query attention (MQA)**: keep $h$ query heads, but give all of them **one** shared key head and
# **one** shared value head. The cache shrinks $h$-fold and so do the bytes each step reads.
# **Grouped-query attention (GQA**, Ainslie et al. 2023, arXiv 2305.13245; chapter 06) sits in between,
# with $g$ key/value heads each shared by a group of $h/g$ query heads.
#
# This chapter: the idea in the library's one attention class, the cache it saves (measured on real cache
# tensors), why decoding is memory-bound (counted), how much faster MQA and GQA decode (measured, and when), and
# what MQA costs in quality (a committed study over seeds, beside a small live run).

# %%
import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import torch

from attention_lab import MultiHeadAttention, TinyGPT, TinyGPTConfig, quality
from attention_lab.book.results import load as load_results
from attention_lab.caches.contiguous import kv_cache_bytes
from attention_lab.caches.sizes import PUBLISHED_MODELS, format_bytes
from attention_lab.costs.gpu_facts import GPU_TABLE
from attention_lab.costs.memory_bound_decode import (decode_attention_cost, filled_cache, incremental_ratio,
                                                     plot_decode_benchmark, shazeer_ratio)
from attention_lab.costs.timing import count_operations, faster_from, fixed_and_per_unit, least_time, least_times

torch.set_num_threads(1)  # one thread, set here: the timings below are of one core, whatever the machine has

# %% [markdown]
# ## One key/value head for all query heads
#
# Multi-head attention gives head $i$ its own projections: $q_i = xW^Q_i$, $k_i = xW^K_i$, $v_i = xW^V_i$,
# and $\text{head}_i = \text{softmax}(q_i K_i^\top/\sqrt{d_k})\,V_i$. Multi-query attention keeps the $h$
# query projections and replaces the key and value projections by one each:
#
# $$\text{head}_i = \text{softmax}\!\left(\frac{q_i K^\top}{\sqrt{d_k}}\right) V, \qquad K = XW^K,\; V = XW^V \text{ shared by all } i.$$
#
# With $g$ key/value heads (GQA), query head $i$ uses key/value head $\lfloor i/(h/g)\rfloor$:
# consecutive query heads form a group. In the library this is one argument of the one attention class,
# `MultiHeadAttention(d_model, n_heads, n_kv_heads)`: `n_kv_heads = n_heads` is MHA, `1` is MQA. The layer
# projects and caches only the $g$ key/value heads, and the attention function pairs query head $i$ with kv
# head $\lfloor i/(h/g)\rfloor$. Whether it then reads each shared head once or copies it per query head
# is up to the kernel; the measurements below show that this matters.

# %%
x = torch.randn(2, 10, 64)  # (batch, seq, d_model)
for n_kv_heads, name in [(8, "MHA"), (2, "GQA-2"), (1, "MQA")]:
    layer = MultiHeadAttention(d_model=64, n_heads=8, n_kv_heads=n_kv_heads)
    q, k, v = layer.project_qkv(x)
    params = sum(p.numel() for p in layer.parameters())
    print(f"{name:6} W_k {tuple(layer.k_proj.weight.shape)!s:9}  q {tuple(q.shape)}  k, v {tuple(k.shape)}  "
          f"output {tuple(layer(x).shape)}  {params:,} parameters")

# %% [markdown]
# ## The cache shrinks by the number of query heads per key/value head
#
# The cache stores $K$ and $V$ of every layer: $2 \cdot L \cdot g \cdot d_k \cdot N \cdot B$ numbers. MQA
# divides it by $h$. We build the caches of a TinyGPT with 8 heads and 1, 2, 4 or 8 key/value heads and add
# up the bytes of the real key and value tensors.

# %%
base_config = TinyGPTConfig(vocab_size=32, context_length=1024, d_model=256, n_layers=2, n_heads=8)
print("kv heads  key tensor per layer      cache bytes (real tensors)  smaller than MHA by")
mha_bytes = None
for n_kv_heads in (8, 4, 2, 1):
    cache = TinyGPT(dataclasses.replace(base_config, n_kv_heads=n_kv_heads)).new_cache(batch_size=8, max_len=1024)
    tensor_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert tensor_bytes == kv_cache_bytes(2, n_kv_heads, 32, 1024, 8, bytes_per_element=4)  # the chapter-03 formula
    mha_bytes = mha_bytes or tensor_bytes
    print(f"{n_kv_heads:8}  {tuple(cache.layers[0].keys.shape)!s:24}  {format_bytes(tensor_bytes):>26}  "
          f"{mha_bytes / tensor_bytes:.0f}×")

# %% [markdown]
# The same formula on published shapes (fp16, per token of context): Llama-2-7B uses MHA;
# Llama-2-70B and Llama-3-8B use GQA with 8 key/value heads. The MQA column is what one shared head would
# cost with the same layers and head size.

# %%
for name in ("Llama-2-7B", "Llama-2-70B", "Llama-3-8B"):
    shape = PUBLISHED_MODELS[name]
    as_mqa = dataclasses.replace(shape, n_kv_heads=1)
    print(f"{name:12} {shape.n_heads} query / {shape.n_kv_heads} kv heads: {format_bytes(shape.cache_bytes()):>9} "
          f"per token; as MQA {format_bytes(as_mqa.cache_bytes()):>8}; 4k tokens × batch 32: "
          f"{format_bytes(shape.cache_bytes(4096, 32))} vs {format_bytes(as_mqa.cache_bytes(4096, 32))}")

# %% [markdown]
# ## Why decoding is memory-bound
#
# One decoding step of one layer, for $b$ sequences with $n$ cached tokens, $h$ query heads and $g$
# key/value heads of size $k$, numbers of $e$ bytes:
#
# * arithmetic: $h$ query heads each take $n$ dot products with the keys and an $n$-term weighted sum of the
#   values: $4\,b\,h\,n\,k$ FLOPs;
# * memory: every cached key and value is read once: $2\,b\,g\,n\,k\,e$ bytes.
#
# So the attention does $\dfrac{2h}{g\,e}$ FLOPs per byte it reads — independent of $n$ and $b$. For fp16
# MHA that is **1 FLOP per byte**. A GPU's *ridge point* (peak FLOP/s over bandwidth, chapter 07) is in the
# hundreds: below it a kernel is limited by memory, and its time is its bytes over the bandwidth. Counted
# for a Llama-2-7B-sized layer ($h = 32$, $k = 128$) at batch 32 and 4096 tokens of context:

# %%
print("ridge points (dense fp16 peak / bandwidth): " +
      ", ".join(f"{s.name} {s.ridge_point:.0f}" for s in GPU_TABLE.values()) + " FLOP/byte")
h100 = GPU_TABLE["H100 SXM"]
for n_kv_heads, name in [(32, "MHA"), (8, "GQA-8"), (1, "MQA")]:
    cost = decode_attention_cost(batch=32, context=4096, n_heads=32, n_kv_heads=n_kv_heads, head_dim=128)
    print(f"{name:6} {cost.flops / 1e9:5.1f} GFLOP, reads {cost.bytes_read / 2**20:6.0f} MiB: "
          f"{cost.intensity:5.2f} FLOP/byte -> on an H100 SXM at least "
          f"{cost.time_bound(h100.peak_flops, h100.bandwidth_bytes_s) * 1e6:6.1f} µs per layer")

# %% [markdown]
# Same FLOPs, $h/g$ times fewer bytes, and since every variant sits far left of the ridge point the time
# bound drops by the same factor.
#
# ### Shazeer's argument
#
# Shazeer counts a whole generation of $n$ tokens, one layer with model width $d$ (and $n \le d$). The
# arithmetic is $\Theta(b\,n\,d^2)$ (the projections dominate). The memory traffic is the weights, read once
# per step ($n\,d^2$), the cache ($b\,n^2 d$ for MHA, $b\,n^2 d/h$ for MQA) and the activations ($b\,n\,d$).
# The ratio memory / arithmetic is
#
# $$\text{MHA: } \Theta\!\left(\frac{n}{d} + \frac{1}{b}\right) \qquad\qquad
#   \text{MQA: } \Theta\!\left(\frac{1}{d} + \frac{n}{d\,h} + \frac{1}{b}\right).$$
#
# The $1/b$ term is the weights, and a bigger batch shrinks it. The $n/d$ term is the cache: it belongs to
# each sequence, so batching cannot shrink it. For MHA it stays the floor however large the batch; MQA
# divides it by $h$. `incremental_ratio` adds up the exact counts step by step (numbers, not bytes), and
# `shazeer_ratio` is the Θ expression without its constants, for a layer of width $d = 4096$ with
# $h = 32$ heads (Llama-2-7B's shape):

# %%
d, h = 4096, 32
lengths = [16, 64, 256, 1024, 4096]
batches = [1, 4, 16, 64, 256, 1024]
variants = [(32, "MHA"), (8, "GQA-8"), (1, "MQA")]
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for n_kv_heads, name in variants:
    line, = axes[0].plot(lengths, [incremental_ratio(n, d, h, n_kv_heads, 64) for n in lengths], "o-", label=f"{name} exact")
    axes[0].plot(lengths, [shazeer_ratio(n, d, h, n_kv_heads, 64) for n in lengths], "--", color=line.get_color(),
                 label=f"{name} Θ (no constants)")
    axes[1].plot(batches, [incremental_ratio(2048, d, h, n_kv_heads, b) for b in batches], "o-", label=f"{name} exact")
axes[1].axhline(1 / (2 * h100.ridge_point), color="k", ls=":", label="H100 balance (fp16)")
axes[0].set(xscale="log", yscale="log", xlabel="tokens generated n", ylabel="memory accesses per FLOP",
            title="Generating n tokens (batch b = 64, d = 4096)")
axes[1].set(xscale="log", yscale="log", xlabel="batch size b", ylabel="memory accesses per FLOP",
            title="Batching helps MQA, not MHA (n = 2048, d = 4096)")
for ax in axes:
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
for n_kv_heads, name in variants:
    print(f"{name:6} at b = 1024, n = 2048: {incremental_ratio(2048, d, h, n_kv_heads, 1024):.4f} numbers read per FLOP")
print(f"balance of an H100 SXM in fp16: {1 / (2 * h100.ridge_point):.4f} numbers (2 bytes each) per FLOP")

# %% [markdown]
# Left: the exact counts follow the Θ expressions up to a constant factor. Right: at 2048 tokens a larger
# batch helps MHA only until the cache dominates. Then its curve flattens, because its cache traffic grows
# with the batch too. GQA-8 and MQA keep falling toward the machine balance (dotted; below it the processor,
# not memory, sets the pace). The printed numbers show where each ends at batch 1024.
#
# %% [markdown]
# ## Measured: decode speed at growing context
#
# Now real decoding steps. We build TinyGPTs that differ only in `n_kv_heads` and fill each model's cache
# with random keys and values (a step takes the same time whatever the numbers are, and a prompt of
# thousands of tokens would cost far more than the steps we want to time). Then we time one step at each
# context length $n$: a batch of new tokens through the whole model, attending to $n$ cached tokens.
#
# Timing on a shared machine needs care, or it measures the machine instead of the code:
#
# * **one thread** (set at the top of the chapter), so that the time is one core's work;
# * **the minimum of repeats** (`least_time`): other work on the machine only ever *adds* time, so the
#   fastest run is the cleanest estimate of what the step itself costs. `least_times` also lets the variants
#   take turns, round after round, so that a disturbance hits them all alike;
# * **sizes above the overhead**: contexts from a single token, where any step's cost is its fixed part, up to
#   contexts where reading the cache dominates the step;
# * **a control**: MHA is timed a second time under another name, "MHA again". It is the same code on the same
#   cache, so whatever separates the two is noise, and it is the yardstick for calling one variant faster.
#
# We use `backend="torch"` (PyTorch's fused attention, `enable_gqa=True`), which reads each shared key/value
# head once for its whole group. The reference attention is written for clarity: it lets `torch.matmul`
# broadcast the shared head, and on the CPU that builds a copy per query head, which would hide the very effect
# we want to see. The shapes are CPU-sized; on a GPU the cell uses larger ones.

# %%
on_gpu = device.type == "cuda"
speed_config = TinyGPTConfig(vocab_size=32, d_model=1024 if on_gpu else 256, n_layers=2, n_heads=16 if on_gpu else 8,
                             backend="torch")
batch = 32 if on_gpu else 8  # on a GPU the cache must be large (GBs) before it outweighs per-step launch overheads
contexts = [1, 64, 1024, 4096, 16384] if on_gpu else [1, 16, 64, 256, 1024, 4096, 8192]
variants = {"MHA": speed_config.n_heads, "MHA again": speed_config.n_heads, "GQA-2": 2, "MQA": 1}  # name -> kv heads
models, caches = {}, {}
for n_kv_heads in sorted(set(variants.values()), reverse=True):
    torch.manual_seed(0)
    config = dataclasses.replace(speed_config, n_kv_heads=n_kv_heads, context_length=contexts[-1] + 1)
    models[n_kv_heads] = TinyGPT(config).to(device=device, dtype=torch.float16 if on_gpu else torch.float32).eval()
    caches[n_kv_heads] = filled_cache(models[n_kv_heads], batch, contexts[-1] + 1)
token = torch.zeros(batch, 1, dtype=torch.long, device=device)  # one new token per sequence


def decode_step(name, context, cache=None):
    """One decoding step of variant `name` with `context` tokens cached (the fill pointer rewound each time)."""
    model, cache = models[variants[name]], caches[variants[name]] if cache is None else cache

    def step():
        for layer in cache.layers:
            layer.length = context  # the step appends the new token at position `context`
        with torch.no_grad():
            model(token, cache=cache)
    return step


seconds = least_times(decode_step, list(variants), contexts, rounds=5, repeats=10, warmup=2, device=device,
                      desc="decode steps")
ms = {name: np.array(seconds[name]) * 1e3 for name in variants}
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for name, n_kv_heads in variants.items():
    style = dict(marker="o", ls="--", color="gray") if name == "MHA again" else dict(marker="o")
    axes[0].plot(contexts, ms[name], label=f"{name} ({n_kv_heads} kv heads)", **style)
    axes[1].plot(contexts, ms["MHA"] / ms[name], label=name, **style)
axes[0].axhline(ms["MHA"][0], color="k", ls=":", lw=1, label="MHA with one cached token (fixed cost)")
axes[0].set(xscale="log", yscale="log", xlabel="tokens in the cache", ylabel="ms per decoding step (least of repeats)",
            title=f"One decoding step, batch {batch}, d_model {speed_config.d_model}, {speed_config.n_heads} heads ({device.type})")
axes[1].set(xscale="log", xlabel="tokens in the cache", ylabel="MHA's step time ÷ the variant's (×)",
            title="Sharing K/V heads pays once the cache dominates the step")
low, high = min(v.min() for v in ms.values()), max(v.max() for v in ms.values())
ticks = [t * 10.0**e for e in range(-2, 3) for t in (1, 2, 5) if low / 1.5 <= t * 10.0**e <= high * 1.5]
axes[0].set_yticks(ticks, labels=[f"{t:g}" for t in ticks])
for ax in axes:
    ax.set_xticks(contexts, labels=[f"{n // 1024}k" if n >= 1024 else str(n) for n in contexts])
    ax.minorticks_off()
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
print("context   " + "".join(f"{name:>12}" for name in variants) + "   MHA ÷ MQA   MHA ÷ MHA again")
for i, n in enumerate(contexts):
    print(f"{n:7}   " + "".join(f"{ms[name][i]:9.3f} ms" for name in variants) +
          f"   {ms['MHA'][i] / ms['MQA'][i]:8.2f}×   {ms['MHA'][i] / ms['MHA again'][i]:8.2f}×")

# %% [markdown]
# ### What a step costs when the cache is short
#
# With one cached token there is almost no cache to read, yet a step takes the time printed in the first
# row. That is the step's **fixed cost**: the matrix products of the projections, the MLP and the output
# layer (the same weights are read whatever the context), and the price of *calling* every small tensor
# operation from Python (dispatch, an output allocation, on a GPU a kernel launch). We measure both parts:
# the model's linear layers applied alone to one token per sequence, and the number of tensor operations one
# step runs. Two things could make MQA's one-token step faster than MHA's, with almost no cache to read: its
# key and value projections are smaller, and MHA's cache, even nearly empty, is spread over as many slabs as it
# has kv heads, each touched by every step. We time the three side by side: MHA, the same MHA with a cache
# sized for just two tokens, and MQA. The printed breakdown shows how much each explains, beside the noise.

# %%
noise = max(abs(ms["MHA"] / ms["MHA again"] - 1))  # how far two timings of the same step disagree, at any context
operations = count_operations(decode_step("MHA", 1))
mha = models[speed_config.n_heads]
linear_ms = {}
for name in ("MHA", "MQA"):
    linears = [m for m in models[variants[name]].modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(batch, 1, m.in_features, device=device, dtype=m.weight.dtype) for m in linears]
    with torch.no_grad():
        linear_ms[name] = least_time(lambda: [m(x) for m, x in zip(linears, inputs)], repeats=20, device=device) * 1e3
fixed_ms = ms["MHA"][0]
print(f"timing noise: the same MHA step timed twice differs by up to {noise:.0%} (the control)")
print(f"fixed cost, one cached token: {fixed_ms:.3f} ms per MHA step; its {len(linears)} linear layers alone take "
      f"{linear_ms['MHA']:.3f} ms ({linear_ms['MHA'] / fixed_ms:.0%}); the step runs {operations} tensor operations, and "
      f"the other {fixed_ms - linear_ms['MHA']:.3f} ms are about {(fixed_ms - linear_ms['MHA']) / operations * 1e3:.1f} µs "
      "per operation")
small_cache = filled_cache(mha, batch, 2)  # room for the one cached token and the new one
one = least_times(lambda name, _: decode_step("MHA", 1, small_cache) if name == "small" else decode_step(name, 1),
                  ["MHA", "small", "MQA"], [1], rounds=5, repeats=20, warmup=2, device=device, progress=False)
one = {name: times[0] * 1e3 for name, times in one.items()}
projections, layout = linear_ms["MHA"] - linear_ms["MQA"], one["MHA"] - one["small"]
print(f"one cached token, timed in turn: MHA {one['MHA']:.3f} ms, the same MHA with a two-token cache "
      f"{one['small']:.3f} ms, MQA {one['MQA']:.3f} ms (MHA ÷ MQA = {one['MHA'] / one['MQA']:.2f}×)")
print(f"MHA − MQA = {one['MHA'] - one['MQA']:.3f} ms: larger key/value projections {projections:.3f} ms (the linear "
      f"layers alone: {linear_ms['MHA']:.3f} vs {linear_ms['MQA']:.3f} ms), a cache spread over "
      f"{speed_config.n_heads}× as many kv-head slabs {layout:.3f} ms, the rest {one['MHA'] - one['MQA'] - projections - layout:+.3f} ms "
      f"(noise: up to {noise * one['MHA']:.3f} ms)")
print("share of MHA's step that grows with the context (the step minus its fixed cost): " +
      ", ".join(f"{n}: {1 - fixed_ms / ms['MHA'][i]:.0%}" for i, n in enumerate(contexts) if i > 0))
# The cache pays where MQA gains more than its one-token advantage and the noise explain. On a busy machine the
# one-token ratio can exceed 1 (the bar MQA must get under then lies above 1) and the noise can reach 100 %: then no
# context can be called faster, and we say so.
one_token = ms["MQA"][0] / ms["MHA"][0]
since = faster_from(contexts, ms["MHA"], ms["MQA"], below=one_token * (1 - noise))
print(f"MQA ÷ MHA falls below its one-token value ({one_token:.2f}) by more than the noise ({noise:.0%}) " +
      (f"from {since} cached tokens on, at every longer context measured: from there its smaller cache pays"
       if since is not None else "at no context measured: its smaller cache does not pay here" if noise < 1 else
       "at no context measured: the timings are too noisy to tell (rerun on an idle machine)"))

# %% [markdown]
# So at short context a decoding step is mostly its fixed cost (a share near zero, or below it, is noise: a
# step timed a little faster than the one-token step). There the variants differ by what their weights and
# the noise explain; sharing key/value heads cannot speed up the part of a step that is not the cache. (An
# earlier version of this chapter timed the trained models at a short context with the median of a few runs,
# one model after the other, and printed MQA slower than MHA: that was the machine, not MQA.) As the context
# grows, the cache's share of the step grows until it dominates, and from the printed context on MQA's
# smaller cache pays.
#
# How close is the long end to what the machine can do? We measure this core's copy bandwidth (bytes read +
# written) and the rate of a large matrix product, both as the least of repeats. The slope of each line over
# the long contexts (`fixed_and_per_unit`) is what each cached token adds to a step; at the longest context it
# gives the time of the part that grows with the context, to set against the cache's bytes and FLOPs.

# %%
source = torch.ones(2**26 // 4, device=device)  # 64 MiB, far more than the CPU's caches (and a GPU's L2) hold
target = torch.empty_like(source)
bandwidth = 2 * source.numel() * 4 / least_time(lambda: target.copy_(source), repeats=10, device=device)  # read + written
size = 4096 if on_gpu else 512
left, right = (torch.randn(size, size, device=device, dtype=torch.float16 if on_gpu else torch.float32) for _ in range(2))
flop_rate = 2 * size**3 / least_time(lambda: left @ right, repeats=10, device=device)
element = 2 if on_gpu else 4
longest, long = contexts[-1], [i for i, n in enumerate(contexts) if n >= contexts[-1] // 8]
print(f"this {device.type}: copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + written), a {size}² matrix product "
      f"{flop_rate / 1e9:.0f} GFLOP/s: ridge point {flop_rate / bandwidth:.1f} FLOP/byte")
slopes = {}
for name in ("MHA", "GQA-2", "MQA"):
    n_kv_heads = variants[name]
    kv_read = kv_cache_bytes(speed_config.n_layers, n_kv_heads, speed_config.head_dim, longest, batch, element)
    flops = speed_config.n_layers * decode_attention_cost(batch, longest, speed_config.n_heads, n_kv_heads,
                                                          speed_config.head_dim, element).flops
    slopes[name] = fixed_and_per_unit([contexts[i] for i in long], [seconds[name][i] for i in long])[1]
    attention_s = slopes[name] * longest  # the part of the step that grows with the context
    of_bandwidth, of_flops = kv_read / attention_s / bandwidth, flops / attention_s / flop_rate
    print(f"{name:6} at {longest} tokens: {kv_read / 2**20:6.1f} MiB of cache, {flops / 1e6:4.0f} MFLOP "
          f"({flops / kv_read:.1f} FLOP/byte) in the {attention_s * 1e3:6.2f} ms the context adds to a step: "
          f"{of_bandwidth:4.0%} of the copy bandwidth, {of_flops:4.0%} of the matrix-product rate -> nearer the "
          f"{'bandwidth: memory' if of_bandwidth > of_flops else 'arithmetic rate: arithmetic'} sets its pace")
print(f"MQA reads {speed_config.n_heads}× fewer cache bytes than MHA for the same FLOPs; each cached token costs MHA "
      f"{slopes['MHA'] / slopes['MQA']:.1f}× what it costs MQA")

# %% [markdown]
# The cost per cached token falls less than the bytes do. MHA's attention does a fraction of a FLOP per byte
# and streams its cache at the largest share of the copy bandwidth of the three. MQA reads a cache many times
# smaller, but every query head still does its own dot products with every key: the FLOPs are the same for all
# variants. One query per head makes each of them a matrix-*vector* product, which on a CPU core runs far below
# the rate of the large matrix product printed above. So MQA's attention is held back by arithmetic and by
# the kernel's work per head, not by its bytes, and on a CPU its gain stays below the byte ratio. On a GPU,
# whose ridge point is in the hundreds of FLOPs per byte, the attention of every variant stays memory-bound,
# and sharing heads pays off more fully (the benchmark below).

# %% [markdown]
# ## On a GPU
#
# `benchmarks/decode_gqa.py` times one decoding step on a GPU (B = 32, H = 32, D = 128, caches of 4k and 32k
# tokens, 16-bit) for 32, 8, 4 and 1 key/value heads. It compares the project's Triton grouped decode kernel
# (chapter 11), which loads each key/value tile once for its whole query group, with PyTorch's SDPA
# (`enable_gqa=True`). Speed is given as effective bandwidth: cache bytes read per second, as a fraction of
# the card's copy bandwidth measured in the same run. The committed results are plotted below. The
# library's reference attention in fp32 is left out of the plot; its fraction is printed instead.

# %%
bench = load_results("decode_gqa")  # committed GPU results: package data, shipped in the wheel
rows = bench.get("rows", [])
print(f"decode_gqa.json: {bench.get('device', {}).get('name')}, versions {bench.get('versions')}")
try:
    plot_decode_benchmark({**bench, "rows": [r for r in rows if not str(r.get("impl")).startswith("reference")]})
    plt.show()
    for r in sorted(rows, key=lambda r: (r["context"], r["n_kv_heads"], r["impl"])):
        print(f"{r['context']:>6} tokens, {r['n_kv_heads']:>2} kv heads, {r['impl']:<23} {r['ms']:7.3f} ms "
              f"= {r['fraction_of_copy']:.2f} of copy bandwidth")
    ms = {(r["impl"], r["context"], r["n_kv_heads"]): r["ms"] for r in rows}
    for impl, context, _ in sorted(k for k in ms if k[2] == 1):
        mha_heads = max(g for i, c, g in ms if (i, c) == (impl, context))
        print(f"{impl} at {context} tokens: a step with {mha_heads} kv heads takes "
              f"{ms[impl, context, mha_heads] / ms[impl, context, 1]:.1f}× as long as with 1 ({mha_heads}× the cache)")
except (ValueError, KeyError) as error:  # a results file in another layout: show it as it is
    print(f"cannot plot ({error!r}); rows:", *rows, sep="\n")

# %% [markdown]
# Each line is one implementation at one context length. A point near 1 reads the cache as fast as the card
# can copy memory: the step is as fast as its bytes allow, and fewer kv heads then mean proportionally less
# time. A point well below 1 leaves bandwidth unused. Compare the two implementations at 1 kv head (MQA),
# where the whole cache is smallest and a kernel must spread one head's keys over the whole GPU. The
# reference attention (fp32, written for clarity) lets `torch.matmul` broadcast the shared head, which
# materialises a copy per query head, so it gains nothing from sharing: its step-time ratio is printed too.

# %% [markdown]
# ## The quality cost: a study over seeds
#
# MQA gives every query head the same keys and values, so it can express less than MHA. How much less, for
# the book's TinyGPT? One training run cannot say: two runs of the *same* model from different seeds already
# differ, and a short run measures how fast a model starts, not what it can finally do. So the question is
# answered by a study, run once with a full budget and committed (`attention_lab/results/quality_ch05.json`,
# written by `benchmarks/quality_studies.py`):
#
# * MHA, GQA-4, GQA-2 and MQA, with their **parameter counts matched** through the MLP width: sharing K/V
#   heads removes weights from the key and value projections, and the MLP gets them back, so a difference
#   cannot come from a smaller model;
# * two objectives: the corpus (validation loss) and **associative recall** (`attention_lab.recall`: key–value
#   pairs placed in the context and queried later, accuracy by the distance between a pair and its question),
#   a task made to need exactly what attention does — look something up;
# * **several seeds** each, summarised as mean ± sd, and every conclusion printed from the numbers, with the
#   seed-to-seed spread as the yardstick (`quality.compare`: a difference counts only at a multiple of the
#   spread, `quality.RESOLVED_RATIO`, printed below; larger than the spread but short of that, it is a hint).

# %%
report = load_results("quality_ch05")
print(quality.study_header(report))
print()
print(quality.study_table(report))
print()
print(*quality.study_conclusion_lines(report), sep="\n")
print(f"(a difference counts at {quality.RESOLVED_RATIO:g}× the seed-to-seed spread; above the spread but short of that, it is a hint)")

# %%
quality.plot_study(report)
plt.show()
for objective in report["objectives"]:
    print(f"{objective}: the ranking of the mean learning curves stops changing at step "
          f"{quality.stable_since(report, objective):,} of {report['steps'][objective]:,}")
recall_settings = report["objectives"]["recall"]
print(f"steps to 90 % recall, per seed {report['seeds']} (read off a curve evaluated every "
      f"{recall_settings['eval_every']} steps):")
for variant in quality.variant_names(report, "recall"):
    print(f"  {variant:6} {quality.metric_values(report, 'recall', variant, 'steps_to_90')}")

# %% [markdown]
# **What the study finds at this size: nothing to tell the variants apart.** Read the conclusions above: in
# final validation loss and in final recall accuracy, every variant lies within the seed-to-seed spread of
# MHA, and the recall curves by distance lie on top of each other. The variants finish on the same numbers.
#
# The only lines that say more are about the steps each variant needs to reach the table's recall threshold:
# how fast the lookup is learned, not how well. Take them as hints at most. The step is read off a curve
# evaluated at coarse intervals (printed above), so the seeds' values differ by a few intervals, and a spread
# of a few intervals' worth of luck is all the yardstick there is. And the ordering is not the one sharing
# would predict: MQA, which shares the most, learns the lookup no slower than MHA, while a
# grouped variant in between may come out slower. Nor does a ranking of the mean curves mean much when the
# variants are tied. The printed step from which it stops changing is late in the budget, because tied curves
# keep trading places until they flatten.
#
# Why no difference here, when the GQA paper measures one? The model is tiny: each head has only
# `d_model / n_heads` numbers, so MHA's many K/V heads are many *small* heads, not more capacity. The recall
# task asks for one of a small set of keys and copies one of a small set of values. That fits in what a single
# shared key head and value head can carry, and the query heads, which MQA keeps, still look in different
# places. The parameters MQA saves in its projections go back to the MLP. The GQA paper's quality gap appears
# at scale (T5-XXL, the largest T5, on long inputs: summarisation and question answering), where heads are
# wide and the tasks need more than a single shared head can hold; it also names training instability as a
# risk of MQA. Chapter 06 shows how to get most of MQA's speed for less of that risk.

# %%
head_dim = report["model"]["d_model"] // report["model"]["n_heads"]
task = recall_settings["task"]
print(f"the study's TinyGPT: d_model {report['model']['d_model']}, {report['model']['n_heads']} heads of "
      f"{head_dim} numbers each, {report['model']['n_layers']} layers; the recall task: {task['n_facts']} facts among "
      f"{task['n_keys']} keys and {task['n_values']} values in {task['seq_len']} tokens (chance {task['chance']:.3f})")

# %% [markdown]
# ### A small live run beside it
#
# The same code, `quality.run_chapter_study`, runs here on this machine with one seed, MHA and MQA only, and a
# budget a CPU can afford in a chapter. Its numbers sit next to the committed ones; the point is to see
# what one short seed can and cannot say.

# %%
live_steps = {"corpus": 300, "recall": 400}
live = quality.run_chapter_study("ch05", seeds=[0], variants=["MHA", "MQA"], steps=live_steps, device=device)
print(quality.study_header(live))
print()
print(quality.study_table(live))


# %%
def curve_at(study, objective, variant, step):
    """Each seed's held-out number on `objective` at training step `step` (its learning curve's point there)."""
    metric = "val_accuracy" if objective == "recall" else "val_loss"
    runs = sorted((r for r in study["runs"] if (r["objective"], r["variant"]) == (objective, variant)), key=lambda r: r["seed"])
    return [r["curve"][metric][r["curve"]["steps"].index(step)] for r in runs]


for objective, step in live_steps.items():
    metric = report["objectives"][objective]["metric"]
    unit = "nats" if metric == "val_loss" else ""
    live_gap = quality.metric_values(live, objective, "MQA")[0] - quality.metric_values(live, objective, "MHA")[0]
    final = next(c for c in report["conclusions"] if (c["objective"], c["metric"], c["a"]) == (objective, metric, "MQA"))
    mqa, mha = curve_at(report, objective, "MQA", step), curve_at(report, objective, "MHA", step)
    early = quality.compare("MQA", mqa, "MHA", mha, unit=unit, higher_is_better=metric == "accuracy",
                            what=f"{quality.METRIC_NAMES[metric]} at step {step}")
    print(f"{objective}, one live seed after {step} steps: MQA − MHA = {live_gap:+.3f} {unit}".rstrip())
    print(f"  the study at its full budget: {final['sentence']}")
    print(f"  the study's seeds at step {step} (learning rate not yet decayed): "
          + ", ".join(f"{a - b:+.3f}" for a, b in zip(mqa, mha)) + f"; {early.sentence}")
    against_final = (f"{abs(live_gap) / final['spread']:.0f}× the full study's seed-to-seed spread" if final["spread"]
                     else "beyond the full study's spread, which is zero: its seeds agree exactly")
    verdict = ("a gap the full study does not confirm: one short seed cannot decide" if not final["resolved"]
               else "the full study does resolve a difference, but one short seed alone could not have known it")
    print(f"  -> the live gap is {against_final}, and {abs(live_gap) / early.spread:.1f}× the spread of the study's "
          f"seeds at step {step}: {verdict}")

# %% [markdown]
# The live run's table prints the same kind of numbers as the study's, from the same code, but read the
# comparison under it. A short run of one seed gives a gap, and nothing to measure it against. Measured
# against the full study's spread it looks enormous; yet the study's own seeds, at the same step, give gaps of
# both signs (printed), and at the full budget the gap is gone. Early in training the variants differ in how
# fast they start, and that differs from seed to seed. (The live run does not repeat the study's seed 0
# exactly: it ran on another device, and its learning rate decays to zero over its own short budget.)
# Deciding whether MQA costs quality takes the seeds and the budget of the committed study, not a live run.

# %% [markdown]
# ## Exercise: one decoding step of grouped-query attention
#
# Write the attention of one decoding step: the newest token's queries `q` `(B, H, 1, D)` against a cache
# `k`, `v` `(B, Hkv, N, D)` with `Hkv` dividing `H`; query head $i$ reads kv head $\lfloor i/(H/H_{kv})\rfloor$.
# Scale by $D^{-1/2}$ and take the softmax over the keys.
#
# **Forbidden: copying a shared key/value head once per query head.** Whether it is written as
# `repeat_interleave`, `repeat`, `expand(...)` followed by `reshape` or `.contiguous()`, `torch.cat` or
# `torch.stack` of copies, indexing `k` with a per-head index, or a `torch.matmul` that broadcasts the kv
# head over the group (which copies behind the scenes), the result is a `(B, H, N, D)` tensor: exactly the
# MHA cache that MQA and GQA exist to avoid, built again at every step. It takes $H/H_{kv}$ times the memory of
# the cache and is read $H/H_{kv}$ times over, which gives back the memory and the bandwidth that sharing the
# heads saved. Instead, reshape the *queries* so that each group of `H // Hkv` consecutive query heads sits
# next to its shared key head, and let one matrix product serve the whole group.
#
# The checker enforces this by measuring memory, not by reading your code: it watches every tensor your
# function creates and fails if any holds more numbers than the cache `k` itself, which no honest
# intermediate does on its shapes.

# %%
def grouped_decode(q, k, v):
    """q (B, H, 1, D), k and v (B, Hkv, N, D) -> (B, H, 1, D); query head i reads kv head i // (H // Hkv)."""
    ### BEGIN SOLUTION
    batch, n_heads, _, head_dim = q.shape
    n_kv_heads = k.shape[1]
    q_groups = q.reshape(batch, n_kv_heads, n_heads // n_kv_heads, head_dim)  # (B, Hkv, H/Hkv, D)
    scores = q_groups @ k.transpose(-1, -2) * head_dim**-0.5  # (B, Hkv, H/Hkv, N)
    weights = torch.softmax(scores, dim=-1)
    return (weights @ v).reshape(batch, n_heads, 1, head_dim)  # (B, Hkv, H/Hkv, D) -> (B, H, 1, D)
    ### END SOLUTION


# %%
from attention_lab.exercises.ch05 import check_grouped_decode

check_grouped_decode(grouped_decode)

# %% [markdown]
# ## Summary
#
# * MQA is `n_kv_heads=1` of the same attention class: $h$ query heads share one key head and one value head;
#   GQA shares each of $g$ key/value heads among $h/g$ query heads. The cache is $h/g$ times smaller. We
#   checked that on the real cache tensors for every kv-head count.
# * A decoding step does about $2h/(g\,e)$ FLOPs per byte of cache. For fp16 MHA that is 1, far below every GPU's
#   ridge point, so its time is set by the bytes. Shazeer's ratio, Θ(n/d + 1/b) for MHA and
#   Θ(1/d + n/(dh) + 1/b) for MQA, says why batching cannot rescue MHA at long contexts: the cache term
#   grows with the batch.
# * Measured on this machine (one thread, the least of repeats, a control pair for the noise): at short
#   context a step is its fixed cost — the linear layers and the price of each tensor operation — and the
#   variants differ only by their weights and the noise; from the printed context on, the smaller cache
#   pays. MHA reads its cache at the largest share of the copy bandwidth of the three; MQA's attention, with
#   the same FLOPs and fewer bytes, is held back by arithmetic on a CPU core, so its gain stays below the
#   byte ratio. On a GPU the committed benchmark shows the fraction of the copy bandwidth each
#   implementation reaches for each number of kv heads.
# * Quality: the committed study (MHA, GQA-4, GQA-2, MQA; parameters matched through the MLP width; corpus
#   loss and associative recall; several seeds) finds no difference beyond the seed-to-seed spread at this
#   model size. Only the steps needed to learn the lookup differ a little, as hints. A short live run of one
#   seed shows why a single run cannot decide it. The GQA paper's quality gap appears at scale.
