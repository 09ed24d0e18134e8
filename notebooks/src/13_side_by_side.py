# %% [markdown]
# # 13 · Side by side
#
# Each chapter of the book asked one question. This last one puts the answers side by side: MHA, GQA-4 and
# GQA-2 (that many key/value heads), MQA, MLA and a sliding window — on **quality** (corpus loss and associative recall, over
# seeds, at one parameter count, RoPE for all), on **cache bytes per token**, and on **decode time**, measured
# where the cache is what a step reads and where it is not.
#
# Every number in this chapter's text is printed by a cell above it.

# %%
import matplotlib.pyplot as plt
import torch

from attention_lab import quality
from attention_lab.book.results import load as load_results
from attention_lab.costs.gpu_facts import GPU_TABLE, measure_matmul_flops
from attention_lab.side_by_side import (DECODE_SHAPE, DECODE_VARIANTS, decode_breakdown, decode_timing_table,
                                        gpu_decode_lines, measure_read_bandwidth, plot_cost_map, plot_decode_timing,
                                        plot_quality_and_cache, results_from_dicts, results_table, seed_values,
                                        single_run_lines, study_cache_bytes_per_token, time_decode_steps)

torch.set_num_threads(1)  # the chapter trains and times: one thread, as a 2-core Colab or CI machine gives

# %% [markdown]
# ## Quality, over seeds
#
# A quality comparison needs more than one training run: two runs of the same model with different seeds
# differ, and a difference between variants means something only when it is larger than that spread. The
# study below (`benchmarks/quality_studies.py`, run on a GPU; its JSON ships with the package) trains every
# variant on two tasks with several seeds each:
#
# * the **corpus** — next-character loss on the book's story corpus;
# * **associative recall** — key–value pairs placed in the context and one key asked for later (chapter 04
#   and 05 built it): accuracy as a function of the distance between the pair and its question.
#
# All variants use rotary positions (MLA its decoupled RoPE, chapter 12), and the MLP width of each is set so
# that every model has the same number of parameters as MHA (the table prints the width and the gap).

# %%
report = load_results("quality_ch13")
print(quality.study_header(report))
print()
print(quality.study_table(report))
print()
for line in quality.study_conclusion_lines(report):
    print(line)
print(f"\na difference counts when it is at least {quality.RESOLVED_RATIO:g}× the seed-to-seed spread")

# %% [markdown]
# The conclusions count a difference as real only past the bar printed last. Is the
# budget long enough for the ordering to settle? The learning curves, and the last step at which the
# ordering of the mean curves changed:

# %%
quality.plot_study(report)
plt.show()
separated = ["MHA", "window 8"]
for objective in ("corpus", "recall"):
    print(f"{objective}: ordering of all {len(report['variants'][objective])} variants unchanged from step "
          f"{quality.stable_since(report, objective):,} of {report['steps'][objective]:,}; "
          f"{' vs '.join(separated)} from step {quality.stable_since(report, objective, variants=separated):,}")
print(report["window_recall"]["window 8"]["sentence"])

# %% [markdown]
# The ordering of *all* variants keeps changing late in training because most of them are tied within the
# seeds' spread (a tie has no stable order); the pairs that really differ separate early and stay apart.
# The window's recall is cut where its receptive field ends (dashed line): facts further back than the
# window reach through both layers are recalled at chance.
#
# Now each variant's quality beside what it stores per token, from the real cache tensors of the study's
# models:

# %%
cache_bytes = study_cache_bytes_per_token(report)
plot_quality_and_cache(report, cache_bytes)
plt.show()
print(f"cache bytes per token (all layers, fp32) at context {report['model']['context_length']}:")
for name, value in cache_bytes.items():
    print(f"  {name:<10} {value:>7,.0f}   MHA / this = {cache_bytes['MHA'] / value:.1f}×")

# %% [markdown]
# Every seed is a dot in the figure. A mean ± sd hides how the seeds are spread, so here they are one by one:

# %%
for objective in ("corpus", "recall"):
    print(f"{objective}, final {report['objectives'][objective]['metric']} per seed {report['seeds']}:")
    for name, values in seed_values(report, objective).items():
        print(f"  {name:<10} " + "  ".join(f"{v:.3f}" for v in values))
recall = seed_values(report, "recall")
widest = max(recall, key=lambda n: max(recall[n]) - min(recall[n]))
reached = report["summary"]["recall"][widest]["steps_to_90"]
print(f"\nwidest recall spread: {widest}, from {min(recall[widest]):.3f} to {max(recall[widest]):.3f} over "
      f"{len(report['seeds'])} seeds; {reached['reached']} of {reached['of']} seeds reached 90 %")
resolved = [c for c in report["conclusions"] if c["resolved"]]
print(f"differences of at least {quality.RESOLVED_RATIO:g}× the seed spread:", "; ".join(f"{c['what']}: {c['a']} − {c['b']}" for c in resolved))

# %% [markdown]
# What the numbers say, read off the printed lines:
#
# * Only the **window** differs from MHA beyond the spread, on both tasks: a corpus loss higher by many times
#   the spread, and recall capped by its receptive field — its seeds agree closely, so this is the window, not luck.
# * **GQA-4, GQA-2 and MQA** match MHA within the spread on both tasks at this size and budget, while storing
#   a fraction of its cache (the ratios above). Their steps to 90 % recall differ from
#   MHA's by less than the bar: at most a hint.
# * **MLA** matches MHA on the corpus, but its recall is *bimodal over seeds*: one seed learns the task, the
#   others stall part-way within this budget (the per-seed values above). Its mean is far below MHA's and its
#   spread is as large as the gap, so the study calls it a hint, not a result: MLA's latent learns recall
#   late or not at all at this budget, and more seeds or steps would be needed to say how often.
#
# ### The single run this chapter used to show
#
# The committed GPU run below (`benchmarks/side_by_side.py`, `attention_lab/results/side_by_side.json`) trained
# each variant once, with unmatched parameters, and also trained MHA a second time on the Triton kernel of
# chapter 10 — the same model, the same initialisation, the same data order. Set against the seeded study:

# %%
old = load_results("side_by_side")
for line in single_run_lines(old, report):
    print(line)

# %% [markdown]
# Two runs of one model differ by that first gap: in that single run (its table is printed further down), a
# gap of that size says nothing. Its MQA advantage is larger, but it compared models of different sizes; at matched parameters
# over seeds it is gone. Single runs of undertrained models rank noise and size, not attention.
#
# ### A small live run, same code
#
# The study is too long to run here. The same function runs it on this machine, for one seed, two variants
# and a sliver of the budget — enough to see the code work end to end, not to rank anything: at this budget
# the models are still at the very start of the learning curves above.

# %%
live_steps = {"corpus": 60, "recall": 60}
live = quality.run_chapter_study("ch13", seeds=[0], variants=["MHA", "window 8"], steps=live_steps)
print(quality.study_header(live))
print(quality.study_table(live))
shares = ", ".join(f"{o} {n / report['steps'][o]:.0%}" for o, n in live_steps.items())
print(f"live budget: {shares} of the study's steps, 1 seed of {len(report['seeds'])}; {live['seconds']:.0f} s here")

# %% [markdown]
# ## Exercise: predict the cache
#
# Write `cache_bytes_per_token(config, bytes_per_element)`: the bytes a full-context KV cache of this
# TinyGPT holds, divided by `config.context_length`. (Multi-head-attention variants only: MHA, GQA, MQA,
# with or without a window.) The checker compares your formula with real cache tensors in several dtypes.

# %%
def cache_bytes_per_token(config, bytes_per_element):
    ### BEGIN SOLUTION
    n_kv_heads = config.n_kv_heads or config.n_heads
    positions = config.context_length if config.window is None else min(config.window, config.context_length)
    total = 2 * config.n_layers * n_kv_heads * config.head_dim * positions * bytes_per_element
    return total / config.context_length
    ### END SOLUTION


# %%
from attention_lab.exercises.ch13 import check_cache_bytes_per_token

check_cache_bytes_per_token(cache_bytes_per_token)

# %% [markdown]
# ## Decode speed, where the cache is what a step reads
#
# A smaller cache decodes faster only when reading the cache is a large part of a step. To see when, we time
# one decoding step of **one attention layer at a real model's size** — Llama-3-8B's attention — with
# a cache already holding the context, on this CPU with one thread (the fastest of a few repeats). Each
# variant is the book's own module: MHA, GQA with Llama-3-8B's kv heads, MQA, MLA with DeepSeek-V2's latent
# and rotary widths through its **absorbed** path (chapter 12) and, for contrast, its naive path, and a
# Mistral-sized window. The cache is filled with random numbers (a step's cost does not depend on them).

# %%
print("layer:", DECODE_SHAPE, "| fp32, batch 1")
for name, variant in DECODE_VARIANTS.items():
    print(f"  {name:<13} {variant}")
read_bw = measure_read_bandwidth()
flop_rate = measure_matmul_flops(1024, torch.float32, "cpu", repeats=3)
print(f"this CPU, one thread: reads {read_bw / 1e9:.1f} GB/s (a sum over 256 MiB), multiplies "
      f"{flop_rate / 1e9:.1f} GFLOP/s (fp32 matmul): ridge {flop_rate / read_bw:.1f} FLOP per byte")

# %%
contexts = [16, 256, 1024, 4096, 16384, 32768]
timings = time_decode_steps(list(DECODE_VARIANTS), contexts)
print(decode_timing_table(timings))
breakdown = decode_breakdown(timings)
print()
for entry in breakdown.values():
    print(entry.sentence())
print(f"\nweights read per second at {min(contexts):,} positions (the fixed part of a step):")
for name, entry in breakdown.items():
    print(f"  {name:<13} {entry.weight_bytes / entry.short_seconds / 1e9:5.1f} GB/s")
plot_decode_timing(timings, read_bw, "One decode step of one attention layer (d_model 4096, 32 heads), CPU, 1 thread")
plt.show()

# %% [markdown]
# Reading the table and the sentences under it:
#
# * **At short context the step is its fixed costs.** With a few positions cached, every variant spends its
#   time on the projections of the new token — reading the layer's weights (the MiB column) — and on per-call
#   overhead. The variants' times there follow their weights, not their caches: each (naive MLA aside, which
#   already decompresses) reads its weights at a rate of the same order — the last lines above — a good part
#   of what this CPU reads at all.
# * **At long context MHA's step is its cache.** The time it adds grows in proportion to the cache bytes it
#   adds — its line on the right runs parallel to the dashed line of reading at a fixed rate — and becomes
#   most of the step.
#   The window is MHA until its window is full, then flat: it never reads more than its window.
# * **Sharing and compressing read less, but each number they read is used by many heads.** MQA's and
#   MLA's FLOPs per cache byte (printed) are many times this core's ridge, so on one CPU thread their growth
#   is bounded by arithmetic, not by bytes: they move far fewer GB of cache per extra second than MHA
#   (GQA-8's arithmetic per byte is near the ridge). They are still faster than MHA at long context, by less than
#   their cache ratio (the lines below).
# * **MLA must decode absorbed.** The naive path decompresses every cached latent into full keys and values at
#   every step; the ratio below is what absorbing saves.

# %%
common = max(t.context for t in timings if t.variant == "MLA naive")
at = {t.variant: t for t in timings if t.context == common}
print(f"MLA at {common:,} positions: naive {at['MLA naive'].seconds * 1e3:.1f} ms, absorbed "
      f"{at['MLA absorbed'].seconds * 1e3:.1f} ms per step: absorbed is "
      f"{at['MLA naive'].seconds / at['MLA absorbed'].seconds:.0f}× faster")
longest = max(contexts)
final = {t.variant: t for t in timings if t.context == longest}
for name in ("GQA-8", "MQA", "MLA absorbed", "window 4096"):
    print(f"at {longest:,} positions {name} is {final['MHA'].seconds / final[name].seconds:.1f}× faster than MHA, "
          f"reading {final['MHA'].cache_bytes / final[name].cache_bytes:.0f}× less cache")
h100 = GPU_TABLE["H100 SXM"]
in_16_bit = {n: b.flops_per_byte * 4 / 2 for n, b in breakdown.items() if n != "MLA naive"}  # half the bytes
print(f"on an {h100.name} the ridge is {h100.ridge_point:.0f} FLOP per byte (16-bit tensor cores); in 16-bit the "
      f"steps above do {min(in_16_bit.values()):.1f}–{max(in_16_bit.values()):.1f} FLOP per cache byte (naive MLA "
      f"aside): all {'memory-bound' if max(in_16_bit.values()) < h100.ridge_point else 'NOT memory-bound'} there, "
      f"so bytes decide")

# %% [markdown]
# On a GPU the arithmetic is so cheap that every one of these variants (naive MLA aside) is bound by bytes,
# and the cache ratio turns into a speed ratio at long context — as long as the context is long and the
# batch large enough for the cache to outweigh the weights.
#
# ### What the committed GPU table measured
#
# The single GPU run also timed decoding: whole TinyGPTs generating over their short context. Its table,
# and what reading each model's whole cache costs at that card's memory bandwidth:

# %%
print(f"{old['device']} | torch {old['torch']} | triton {old['triton']} | {old['steps']} steps, batch "
      f"{old['batch_size']}, decode batch {old['speed_batch']} | config {old['config']}")
print(results_table(results_from_dicts(old["results"])))
gpu = GPU_TABLE["H100 SXM"]
print(f"\nat the {gpu.name}'s {gpu.bandwidth_tb_s} TB/s, end of context, decode batch {old['speed_batch']}:")
for line in gpu_decode_lines(old, gpu.bandwidth_bytes_s):
    print(" ", line)

# %% [markdown]
# Reading the whole cache is under a percent of each of those steps: that column timed everything but the
# cache read (a small model's layers, kernel launches, Python), so its decode speeds say nothing about the
# caches (and its MLA decoded through the naive path). The CPU measurement above, at a real layer's size and long context, is
# the one that shows what the cache costs. Its validation losses are the single run discussed above.
#
# ## A map of the book
#
# Every idea in this book attacks one of attention's costs. Quadratic **compute** is what the KV cache
# (no recomputation) and windows (fewer keys) reduce; **memory traffic** is what FlashAttention (never
# writing the N×N matrix) and MQA/GQA/MLA (fewer bytes of cache read per decoded token) reduce; the
# **KV-cache size** falls with sharing heads, compressing them or keeping a window; and PagedAttention
# removes the **fragmentation** that wastes cache memory when many requests are served at once.

# %%
plot_cost_map()
plt.show()

# %% [markdown]
# ## Summary
#
# * **Quality** (the seeded study, parameters matched, RoPE for all): GQA and MQA are indistinguishable from
#   MHA on corpus loss and recall at this size; the window is worse on both, and its recall stops at its
#   receptive field; MLA matches on the corpus but learns recall on only some seeds within the budget. The
#   old single run's differences were within its own run-to-run noise or did not survive matched sizes and
#   seeds.
# * **Cache**: sharing heads divides the cache by the group size, MLA stores one latent and one rotary key
#   per token, a window a fixed number of positions (the ratios printed above, and your formula if the
#   checker passed).
# * **Decode time**: at short context a step is its projections and overhead, whatever the cache; at long
#   context MHA's step is its cache, growing with the bytes it reads; the smaller caches win there, by their
#   cache ratio where bytes bound the step (a GPU, by its roofline) and by less where arithmetic does (one CPU
#   thread). MLA
#   is fast only through its absorbed path.
