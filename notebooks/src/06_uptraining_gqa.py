# %% [markdown]
# # 06 · Uptraining to grouped-query attention
#
# Chapter 05 showed that sharing key/value heads shrinks the KV cache and speeds up decoding, at some cost in
# quality. It left two problems, which Ainslie et al. (2023, *GQA: Training Generalized Multi-Query
# Transformer Models from Multi-Head Checkpoints*, arXiv 2305.13245) address:
#
# 1. **Training a second model just for fast inference is expensive.** Instead, *uptrain*: take the
#    multi-head checkpoint you already have, convert its key/value projections, and continue pre-training
#    for a small fraction α of the original steps (α = 0.05 in the paper).
# 2. **One key/value head may be too few.** *Grouped-query attention* (GQA-G) splits the $h$ query heads into
#    $G$ groups, each with its own key/value head. $G = 1$ is MQA (Shazeer 2019, arXiv 1911.02150), $G = h$
#    is MHA, and in between the cache is $h/G$ times smaller than MHA's.
#
# This chapter converts a trained multi-head TinyGPT with three methods and several $G$, uptrains each one,
# and measures quality against decoding speed, in a table shaped like the paper's.

# %%
import dataclasses

import matplotlib.pyplot as plt
import torch

from attention_lab import TinyGPT, TinyGPTConfig
from attention_lab.data import TokenDataset, get_tokenizer, load_corpus
from attention_lab.costs.memory_bound_decode import decode_speed_sweep
from attention_lab.caches.contiguous import kv_cache_bytes
from attention_lab.train import evaluate, train
from attention_lab.uptrain import (GQA_PAPER_TABLE1, convert_to_gqa, format_table, uptrain, uptrain_steps,
                                   uptraining_study)

torch.set_num_threads(1)  # small models gain little from more threads, and timings stay steadier on a shared CPU

# %% [markdown]
# ## The multi-head checkpoint
#
# We train one multi-head TinyGPT once (8 heads of size 8, 2 layers) and convert copies of it throughout
# the chapter. Like chapter 05 it uses the character-level tokenizer and PyTorch's fused attention
# (`backend="torch"`), so the whole chapter runs on a CPU.

# %%
text = load_corpus()
tokenizer = get_tokenizer(text, kind="char")
data = TokenDataset.from_text(text, tokenizer, context_length=64)
config = TinyGPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=64, n_layers=2, n_heads=8,
                       backend="torch")
base_steps = 200
torch.manual_seed(0)
mha = TinyGPT(config).to(device)
base_result = train(mha, data, steps=base_steps, batch_size=16, eval_every=50, progress=False)
mha_loss = evaluate(mha, data)
print(f"MHA TinyGPT: {mha.num_parameters():,} parameters, {base_steps} steps in {base_result.seconds:.0f} s, "
      f"validation loss {mha_loss:.3f} nats/token")

# %% [markdown]
# ## Converting the checkpoint
#
# A key projection $W^K$ of shape $(h \cdot d_k, d)$ stacks the $h$ heads' projections $W^K_1 \ldots W^K_h$
# (rows $i d_k \ldots (i+1) d_k - 1$ belong to head $i$). The attention pairs query head $i$ with key/value
# head $\lfloor i / (h/G) \rfloor$, so group $j$ is the $s = h/G$ **consecutive** heads
# $S_j = \{j s, \ldots, (j+1)s - 1\}$. The paper's conversion replaces them by their mean,
#
# $$W^K_j \leftarrow \frac{1}{s} \sum_{i \in S_j} W^K_i, \qquad W^V_j \leftarrow \frac{1}{s} \sum_{i \in S_j} W^V_i,$$
#
# and keeps the query and output projections. It compares two alternatives: keep the group's *first* head,
# or start the key/value heads from a *random* initialisation. Because a projection is linear, the pooled
# head's key for a token is exactly the mean of the original heads' keys. With $G = h$ every group is one
# head, and the converted model is the original one.

# %%
probe = torch.randint(0, tokenizer.vocab_size, (2, 40), device=device)  # token ids
x = torch.randn(2, 40, config.d_model, device=device)  # any input of an attention layer
for n_groups in (8, 4, 2, 1):
    converted = convert_to_gqa(mha, n_groups, "mean")
    k_proj = converted.blocks[0].attn.k_proj.weight
    same = torch.equal(converted(probe)[0], mha(probe)[0])
    _, keys, _ = mha.blocks[0].attn.project_qkv(x)  # (2, 8, 40, 8)
    _, pooled_keys, _ = converted.blocks[0].attn.project_qkv(x)  # (2, G, 40, 8)
    mean_of_keys = keys.view(2, n_groups, 8 // n_groups, 40, 8).mean(2)
    print(f"G={n_groups}: W_k {tuple(mha.blocks[0].attn.k_proj.weight.shape)} -> {tuple(k_proj.shape)}; "
          f"pooled keys == mean of the group's keys: {torch.allclose(pooled_keys, mean_of_keys, atol=1e-6)}; "
          f"logits identical to MHA: {same}")

# %% [markdown]
# ## Exercise: mean-pool the key/value heads
#
# Write the conversion of one projection weight `(n_heads * head_dim, d_model)` into
# `(n_groups * head_dim, d_model)`, each group the mean of its consecutive heads. The checker rejects
# pooling across the wrong axis (interleaved heads $j, j+G, j+2G, \ldots$ form a group only if the attention
# pairs heads that way, and it doesn't), and rejects taking the first head of each group.

# %%
def mean_pool(weight, n_heads, n_groups):
    """(n_heads * head_dim, d_model) -> (n_groups * head_dim, d_model): mean of each group's consecutive heads."""
    ### BEGIN SOLUTION
    head_dim, d_model = weight.shape[0] // n_heads, weight.shape[1]
    heads = weight.view(n_groups, n_heads // n_groups, head_dim, d_model)  # (G, heads per group, head_dim, d_model)
    return heads.mean(dim=1).reshape(n_groups * head_dim, d_model)
    ### END SOLUTION


# %%
from attention_lab.exercises.ch06 import check_mean_pool

check_mean_pool(mean_pool)

# %% [markdown]
# ## Uptraining
#
# Every converted model then trains for $\alpha \cdot$ `base_steps` more steps. The paper's α = 0.05 is 5% of
# T5's long pre-training run, tens of thousands of optimizer steps. Five percent of our 200-step run
# would be 10 steps, too few for anything to re-learn, so we use α = 0.25 (50 steps). For fair baselines we
# also train
#
# * the MHA checkpoint for the same extra steps ("MHA + α", so every row has seen as much data),
# * an MQA model **from scratch** for the full `base_steps` — the model uptraining is meant to replace.

# %%
alpha = 0.25
extra_steps = uptrain_steps(base_steps, alpha)
mha_more = convert_to_gqa(mha, 8)  # an exact copy (G = h)
mha_more_loss = uptrain(mha_more, data, base_steps, alpha, lr=3e-3).final_val_loss
torch.manual_seed(0)
mqa_scratch = TinyGPT(dataclasses.replace(config, n_kv_heads=1)).to(device)
mqa_scratch_loss = train(mqa_scratch, data, steps=base_steps, batch_size=16, eval_every=base_steps,
                         progress=False).final_val_loss
groups = [1, 2, 4]
rows = uptraining_study(mha, data, base_steps, groups, alpha=alpha, lr=3e-3)
print(f"uptraining: α = {alpha} is {extra_steps} steps per model (α = 0.05 would be {uptrain_steps(base_steps, 0.05)}); "
      f"{sum(r.seconds for r in rows):.0f} s for {len(rows)} models")

# %% [markdown]
# ## Speed
#
# The time per generated token depends only on the shapes, not on the weights, so we time decoding steps of
# freshly built models with 8, 4, 2 and 1 key/value heads at a long context, as in chapter 05. We time two
# shapes. One is the TinyGPT's own, with heads of only 8 numbers. The other is a wider twin with the same
# 8 query heads and G key/value heads but larger heads (chapter 05's shape on a CPU; larger still on a
# GPU, where the cache must reach gigabytes before it outweighs the fixed cost of launching a step's
# kernels). In the twin, reading the cache is a larger share of each step. The table uses the twin.

# %%
on_gpu = device.type == "cuda"
speed_batch, speed_context = (32, 16384) if on_gpu else (8, 4096)
speed_config = dataclasses.replace(config, d_model=1024 if on_gpu else 256)
speed_dtype = torch.float16 if on_gpu else torch.float32
twin = decode_speed_sweep(speed_config, [8, 4, 2, 1], [speed_context], speed_batch, device=device, dtype=speed_dtype)
own = decode_speed_sweep(config, [8, 4, 2, 1], [speed_context], speed_batch, device=device, dtype=speed_dtype)
ms_per_step = {g: speed_batch / s[0] * 1e3 for g, s in twin.items()}
print(f"batch {speed_batch}, {speed_context} cached tokens, {speed_dtype}; twin: d_model {speed_config.d_model}, "
      f"heads of {speed_config.head_dim}")
for g, ms in ms_per_step.items():
    own_cache = kv_cache_bytes(config.n_layers, g, config.head_dim, tokens=1, batch=1, bytes_per_element=4)
    print(f"{g} kv heads: {ms:6.2f} ms per step (twin) | {speed_batch / own[g][0] * 1e3:6.2f} ms "
          f"(own shape, heads of {config.head_dim}; fp32 cache {own_cache} bytes per token)")

# %% [markdown]
# ## The table
#
# In the shape of the paper's Table 1: time per decoding step against quality, here validation loss in
# nats/token (lower is better; the paper's quality is an average task score, higher is better). The
# "after conversion" column is the loss of the converted checkpoint before any uptraining.

# %%
table = [["MHA (checkpoint)", 8, "—", f"{ms_per_step[8]:.2f}", "—", f"{mha_loss:.3f}"],
         [f"MHA + {extra_steps} steps", 8, "—", f"{ms_per_step[8]:.2f}", "—", f"{mha_more_loss:.3f}"],
         ["MQA from scratch", 1, "—", f"{ms_per_step[1]:.2f}", "—", f"{mqa_scratch_loss:.3f}"]]
for row in rows:
    name = "MQA" if row.n_groups == 1 else f"GQA-{row.n_groups}"
    table.append([f"{name} uptrained", row.n_groups, row.method, f"{ms_per_step[row.n_groups]:.2f}",
                  f"{row.loss_converted:.3f}", f"{row.loss_uptrained:.3f}"])
print(format_table(["model", "kv heads", "conversion", "ms / step", "loss after conversion",
                    f"final loss (uptrained: α={alpha})"], table))

# %% [markdown]
# ## Quality and speed against G

# %%
fig, ax = plt.subplots(figsize=(8, 5.5))
for method, style in [("mean", "o-"), ("first", "s-"), ("random", "^-")]:
    chosen = [r for r in rows if r.method == method]
    line, = ax.plot([r.n_groups for r in chosen], [r.loss_uptrained for r in chosen], style, label=f"{method}, uptrained")
    ax.plot([r.n_groups for r in chosen], [r.loss_converted for r in chosen], style.replace("-", ":"),
            color=line.get_color(), alpha=0.6, label=f"{method}, right after conversion")
ax.axhline(mha_loss, color="k", lw=1, label="MHA checkpoint")
ax.axhline(mha_more_loss, color="k", ls=":", lw=1, label=f"MHA + {extra_steps} steps")
ax.axhline(mqa_scratch_loss, color="grey", ls="--", lw=1, label="MQA from scratch")
ax.set(xscale="log", xticks=groups + [8], xticklabels=[str(g) for g in groups + [8]], xlabel="key/value heads G",
       ylabel="validation loss (nats / token)", title="Uptraining TinyGPT to GQA-G: quality and speed")
speed_ax = ax.twinx()
speed_ax.plot(list(ms_per_step), list(ms_per_step.values()), "d--", color="tab:red", label="ms per decoding step")
speed_ax.set_ylabel(f"ms per decoding step (wider twin, {speed_context} tokens)", color="tab:red")
handles = ax.get_legend_handles_labels()[0] + speed_ax.get_legend_handles_labels()[0]
ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4)
ax.minorticks_off()
ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# What the measurements say, each line computed from the numbers above:

# %%
by = {(r.method, r.n_groups): r for r in rows}
methods = ("mean", "first", "random")
for g in groups:
    before = min(methods, key=lambda m: by[m, g].loss_converted)
    after = min(methods, key=lambda m: by[m, g].loss_uptrained)
    random_worst = all(by["random", g].loss_converted >= by[m, g].loss_converted
                       and by["random", g].loss_uptrained >= by[m, g].loss_uptrained for m in methods)
    print(f"G={g}: lowest loss right after conversion: {before:6} after uptraining: {after:6} "
          f"random worst both times: {random_worst}")
for method in methods:
    losses = [by[method, g].loss_uptrained for g in groups]
    print(f"{method:6}: loss after uptraining falls as G grows {groups}: {all(a > b for a, b in zip(losses, losses[1:]))}")
times = [ms_per_step[g] for g in (1, 2, 4, 8)]
print(f"decoding step slower with every extra kv head (1, 2, 4, 8): {all(a < b for a, b in zip(times, times[1:]))}")
print(f"mean-pooled GQA-4 after uptraining: {by['mean', 4].loss_uptrained - mha_more_loss:+.3f} nats/token vs MHA + "
      f"{extra_steps} steps, decoding {ms_per_step[8] / ms_per_step[4]:.1f}× as fast as MHA")
print(f"mean-pooled MQA after uptraining: {by['mean', 1].loss_uptrained - mqa_scratch_loss:+.3f} nats/token vs MQA "
      f"from scratch, after {extra_steps} instead of {base_steps} steps, decoding {ms_per_step[8] / ms_per_step[1]:.1f}× "
      "as fast as MHA")

# %% [markdown]
# What to look for. Along G, the paper's picture is that more key/value heads keep more of the checkpoint:
# lower loss right after conversion, lower loss after uptraining, and a slower decoding step. Across methods,
# random initialisation throws away what the checkpoint learned in its key/value projections and should
# start furthest behind. Mean and first head are closer. At this tiny scale (8 heads, a few hundred steps,
# one seed) the order between them can flip from one G to the next, and the lines above say what happened in
# this run. The paper found mean-pooling best at T5 scale.
#
# ## The paper's numbers, next to ours
#
# Table 1 of Ainslie et al. (2023): T5 encoder-decoder models, inference time per sample and average score
# over summarisation, translation and question answering. MQA-XXL and GQA-8-XXL are MHA-XXL uptrained with
# α = 0.05. T5-XXL has 64 query heads, so GQA-8 shares each key/value head among 8 query heads.

# %%
paper = {name: (seconds, score) for name, seconds, score in GQA_PAPER_TABLE1}
print(format_table(["model", "T_infer (s / sample)", "average score"],
                   [[name, f"{s:.2f}", f"{q:.1f}"] for name, (s, q) in paper.items()]))
mha_s, mha_q = paper["MHA-XXL"]
for name in ("MQA-XXL", "GQA-8-XXL", "MHA-Large"):
    s, q = paper[name]
    print(f"{name:10} vs MHA-XXL: {mha_s / s:.1f}× faster, {q - mha_q:+.1f} points")
print(f"ours (TinyGPT, 8 heads): MQA {ms_per_step[8] / ms_per_step[1]:.1f}× and GQA-2 "
      f"{ms_per_step[8] / ms_per_step[2]:.1f}× faster than MHA per decoding step; uptrained (mean) loss "
      f"{by['mean', 1].loss_uptrained - mha_more_loss:+.3f} and {by['mean', 2].loss_uptrained - mha_more_loss:+.3f} "
      f"nats/token vs MHA + {extra_steps} steps")

# %% [markdown]
# The paper's pattern: MQA-XXL is the fastest but loses quality, and GQA-8-XXL is almost as fast and keeps
# almost all of MHA-XXL's score. It is also faster *and* better than the smaller MHA-Large: converting a big
# model beats training a small one. The checks printed earlier say whether our TinyGPT shows the same two
# trends in this run: a speed-up that grows as G falls and a quality cost that shrinks as G grows. The sizes
# differ, for reasons worth naming:
#
# * **Scale.** T5-XXL has about 11 billion parameters and 64 heads of size 64. The paper names the memory
#   bandwidth of loading weights and all keys and values at every step as the decoding bottleneck. Our
#   8-head twin is only partly memory-bound (chapter 05), so its speed-ups are smaller.
# * **Training budget.** α = 0.05 of T5's pre-training is a long run in absolute steps. Our α = 0.25 is a few
#   dozen steps (printed above), so our converted models recover only part of the way: compare their final
#   losses with the MHA rows of the table.
# * **Quality measure.** Average downstream scores vs validation cross-entropy of a character-level model
#   on a synthetic corpus: only the directions are comparable, not the magnitudes.
#
# So this is a small-scale illustration of the method, not a reproduction of the paper's T5-XXL results.
#
# ## Summary
#
# * `attention_lab.uptrain.convert_to_gqa` turns a multi-head checkpoint into GQA-G by pooling each group's
#   consecutive key/value heads (mean, first, or random init). With G = h it reproduces the model exactly; we
#   checked that the logits are identical and that the pooled keys are the mean of each group's keys.
# * Uptraining for a fraction α of the original steps recovers much of the loss the conversion causes. The
#   table gives, for each method and G, the loss right after conversion and after uptraining, next to the
#   MHA checkpoint, MHA trained for the same extra steps, and MQA trained from scratch.
# * Decoding speed rises as G falls, because the cache read per step shrinks h/G-fold (ms per step in the
#   table and plot). Quality falls as G falls. GQA sits between the two, which is the trade-off of the paper's
#   Table 1, printed above beside our own numbers.
