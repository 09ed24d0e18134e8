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
# tensors), why decoding is memory-bound (counted), how much faster MQA and GQA decode (measured), and what
# MQA costs in quality (trained).

# %%
import dataclasses
import json

import matplotlib.pyplot as plt
import numpy as np
import torch

from attention_lab import MultiHeadAttention, TinyGPT, TinyGPTConfig
from attention_lab.book.results import load as load_results
from attention_lab.caches.sizes import PUBLISHED_MODELS, format_bytes
from attention_lab.data import TokenDataset, get_tokenizer, load_corpus
from attention_lab.costs.memory_bound_decode import (decode_attention_cost, decode_speed_sweep, incremental_ratio,
                                                     plot_decode_benchmark, shazeer_ratio, time_decode_step)
from attention_lab.generate import generate
from attention_lab.costs.gpu_facts import GPU_TABLE, measure_copy_bandwidth
from attention_lab.caches.contiguous import kv_cache_bytes
from attention_lab.book.plots import loss_curve
from attention_lab.train import train

torch.set_num_threads(1)  # small models gain little from more threads, and timings stay steadier on a shared CPU

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
# ## Measured: decode speed at growing context
#
# Now real decoding steps. `decode_speed_sweep` builds TinyGPTs that differ only in `n_kv_heads`. It fills
# each model's cache with random keys and values (a step takes the same time whatever the numbers are,
# and a 4096-token prompt would cost far more than the steps we want to time). Then it times one step at
# each context length $n$: a batch of new tokens through the model, attending to $n$ cached tokens
# (`bench.time_function`). The variants take turns, five rounds over, and each point keeps its best
# round, which is the one least disturbed by whatever else the machine is doing.
#
# We use `backend="torch"` (PyTorch's fused attention, `enable_gqa=True`), which reads each shared
# key/value head once for its whole group. The reference attention is written for clarity: it lets
# `torch.matmul` broadcast the shared head, and on the CPU that builds a copy per query head, which would hide
# the very effect we want to see. The shapes are CPU-sized; on a GPU the cell uses larger ones.

# %%
on_gpu = device.type == "cuda"
speed_config = TinyGPTConfig(vocab_size=32, d_model=1024 if on_gpu else 256, n_layers=2, n_heads=8 if not on_gpu else 16,
                             backend="torch")
batch = 32 if on_gpu else 8  # on a GPU the cache must be large (GBs) before it outweighs per-step launch overheads
contexts = [1024, 4096, 16384] if on_gpu else [256, 1024, 2048, 4096]
kv_choices = [speed_config.n_heads, 2, 1]
speeds = decode_speed_sweep(speed_config, kv_choices, contexts, batch, device=device,
                            dtype=torch.float16 if on_gpu else torch.float32)
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for n_kv_heads in kv_choices:
    name = "MHA" if n_kv_heads == speed_config.n_heads else ("MQA" if n_kv_heads == 1 else f"GQA-{n_kv_heads}")
    axes[0].plot(contexts, speeds[n_kv_heads], "o-", label=f"{name} ({n_kv_heads} kv heads)")
    axes[1].plot(contexts, np.array(speeds[n_kv_heads]) / np.array(speeds[speed_config.n_heads]), "o-", label=name)
axes[0].set(xscale="log", yscale="log", xlabel="tokens in the cache", ylabel="tokens / s",
            title=f"Decode speed, batch {batch}, d_model {speed_config.d_model}, {speed_config.n_heads} heads ({device.type})")
axes[1].set(xscale="log", xlabel="tokens in the cache", ylabel="speed-up over MHA (×)", title="Sharing K/V heads pays off as the cache grows")
for ax in axes:
    ax.set_xticks(contexts, labels=[str(n) for n in contexts])
    ax.minorticks_off()
    ax.grid(alpha=0.3, which="both")
    ax.legend()
plt.tight_layout()
plt.show()
for n_kv_heads in kv_choices:
    print(f"{n_kv_heads} kv heads: " + ", ".join(f"{n}: {s:,.0f} tok/s" for n, s in zip(contexts, speeds[n_kv_heads])))

# %% [markdown]
# How close is that to the memory bound? The cache bytes one step reads, divided by this machine's copy
# bandwidth (measured now, bytes read + written), is a lower bound on the step's time:

# %%
bandwidth = measure_copy_bandwidth(n_bytes=2**28 if on_gpu else 2**26, device=device, repeats=5)
element = 2 if on_gpu else 4
longest = contexts[-1]
print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s")
for n_kv_heads in kv_choices:
    kv_read = kv_cache_bytes(speed_config.n_layers, n_kv_heads, speed_config.head_dim, longest, batch, element)
    measured = batch / speeds[n_kv_heads][-1]
    print(f"{n_kv_heads} kv heads at {longest} tokens: reads {kv_read / 2**20:6.1f} MiB of cache -> at least "
          f"{kv_read / bandwidth * 1e3:6.2f} ms; measured {measured * 1e3:6.2f} ms per step")
ratio_bytes = speed_config.n_heads
print(f"MQA reads {ratio_bytes}× fewer cache bytes; measured speed-up at {longest} tokens: "
      f"{speeds[1][-1] / speeds[speed_config.n_heads][-1]:.1f}×")

# %% [markdown]
# The speed-up should grow with the context, because the cache becomes a larger share of each step's work.
# On this CPU it stays below the $h$-fold saving in bytes. The step also runs the projections and the MLP,
# which cost the same for every variant. And a CPU's ridge point is low (a few FLOPs per byte in fp32),
# so once the bytes shrink, arithmetic and per-head overheads start to count. On a GPU, where MHA decoding
# is firmly memory-bound, sharing heads pays off more fully (see the benchmark below).
#
# ## The quality cost
#
# MQA has fewer parameters and one set of keys for every head, so it can express less. We train an MHA
# and an MQA TinyGPT for the same short budget (same seed, same batches) and compare validation losses.
# It is one seed of a tiny model, so a small difference either way is within noise.

# %%
text = load_corpus()
tokenizer = get_tokenizer(text, kind="char")  # small vocabulary: the tiny models train fast on a CPU
data = TokenDataset.from_text(text, tokenizer, context_length=64)
quality_config = TinyGPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=64, n_layers=2,
                               n_heads=8, backend="torch")
steps = 600 if on_gpu else 200
models, results = {}, {}
for name, n_kv_heads in [("MHA", 8), ("MQA", 1)]:
    torch.manual_seed(0)
    models[name] = TinyGPT(dataclasses.replace(quality_config, n_kv_heads=n_kv_heads)).to(device)
    results[name] = train(models[name], data, steps=steps, batch_size=16, eval_every=50, progress=False)
ax = None
for name, result in results.items():
    ax = loss_curve(result, title=f"MHA vs MQA TinyGPT, {steps} steps", ax=ax, label=name)
plt.show()
for name, result in results.items():
    print(f"{name}: {models[name].num_parameters():,} parameters, validation loss {result.final_val_loss:.3f} "
          f"nats/token, trained in {result.seconds:.0f} s")
gap = results["MQA"].final_val_loss - results["MHA"].final_val_loss
print(f"MQA - MHA validation loss: {gap:+.3f} nats/token ({'MQA worse' if gap > 0 else 'MQA not worse'} on this run)")

# %% [markdown]
# One seed of a tiny model can't settle a small gap either way. At scale the gap is measurable: the GQA
# paper reports T5-XXL (about 11 billion parameters) losing a little average quality when converted to MQA,
# and names training instability as another risk of MQA. Chapter 06 shows how to get most of MQA's speed
# for less of that loss.
#
# At the short context these models were trained on, the cache is tiny and sharing heads buys nothing. A
# step with 63 cached tokens (timed like above) is set by fixed per-step costs (Python, the projections, the
# MLP, the attention call's own overhead), not by the cache; compare the two times below. Both models also
# generate with the KV cache through the same `generate`.

# %%
prompt = torch.tensor([tokenizer.encode("once there was a ")], device=device)
for name, model in models.items():
    seconds = min(time_decode_step(model, batch_size=1, context=63, repeats=10) for _ in range(3))
    sample = tokenizer.decode(generate(model, prompt, 40, temperature=0.8, top_k=5,
                                       generator=torch.Generator(device=device).manual_seed(0))[0].tolist())
    print(f"{name}: {seconds * 1e3:.2f} ms per decoding step with 63 cached tokens; sample: {sample!r}")

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
# ## Exercise: one decoding step of grouped-query attention
#
# Write the attention of one decoding step: the newest token's queries `q` `(B, H, 1, D)` against a cache
# `k`, `v` `(B, Hkv, N, D)` with `Hkv` dividing `H`. Don't copy the cache with `repeat_interleave`. Instead
# reshape the queries so that each group of `H // Hkv` consecutive query heads sits next to its shared key
# head, and let one matrix product serve the whole group. Scale by $D^{-1/2}$ and take the softmax over the keys.

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
#   checked that on the real cache tensors: 8×, 4× and 2× for 1, 2 and 4 kv heads with 8 query heads.
# * A decoding step does about $2h/(g\,e)$ FLOPs per byte of cache. For fp16 MHA that is 1, far below every GPU's
#   ridge point, so its time is set by the bytes. Shazeer's ratio, Θ(n/d + 1/b) for MHA and
#   Θ(1/d + n/(dh) + 1/b) for MQA, says why batching cannot rescue MHA at long contexts: the cache term
#   grows with the batch.
# * Measured on this machine: tokens/s of MHA, GQA-2 and MQA decoding at growing context (plot above). The
#   speed-up over MHA at the longest context and the cache-read lower bound of each step are printed beside it.
# * On a GPU, the committed H100 benchmark (when present) shows what fraction of the copy bandwidth each
#   implementation reaches for each number of kv heads, and how much faster one kv head makes the step.
# * Quality: after the same short training, the validation losses of the MHA and MQA TinyGPTs and their gap
#   are printed above. The GQA paper measured a small loss for MQA at T5-XXL scale.
