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
# This chapter converts a multi-head TinyGPT with three methods, uptrains each for a sweep of α, compares
# it with the same model trained from scratch for the same total steps — over three seeds — and measures
# quality against decoding speed, in a table shaped like the paper's.

# %%
import dataclasses

import matplotlib.pyplot as plt
import torch

from attention_lab import TinyGPT, TinyGPTConfig
from attention_lab.data import TokenDataset, get_tokenizer, load_corpus
from attention_lab.costs.memory_bound_decode import decode_speed_sweep
from attention_lab.caches.contiguous import kv_cache_bytes
from attention_lab.train import evaluate, train
from attention_lab.book.results import load as load_results
from attention_lab.quality import (mean_sd, plot_uptraining, run_chapter_study, study_header, uptraining_table,
                                   uptraining_values)
from attention_lab.uptrain import GQA_PAPER_TABLE1, convert_to_gqa, format_table

torch.set_num_threads(1)  # small models gain little from more threads, and timings stay steadier on a shared CPU

# %% [markdown]
# ## The multi-head checkpoint
#
# To see the conversion at work we train one small multi-head TinyGPT here (8 heads of size 8, 2 layers, a
# short run) and convert copies of it. Like chapter 05 it uses the character-level tokenizer and PyTorch's
# fused attention (`backend="torch"`), so the whole chapter runs on a CPU. The experiment proper — a
# well-trained checkpoint, three seeds — comes from the committed study further down.

# %%
text = load_corpus()
tokenizer = get_tokenizer(text, kind="char")
data = TokenDataset.from_text(text, tokenizer, context_length=64)
config = TinyGPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=64, n_layers=2, n_heads=8,
                       backend="torch")
base_steps = 200
torch.manual_seed(0)
mha = TinyGPT(config).to(device)
base_result = train(mha, data, steps=base_steps, batch_size=16, eval_every=50)
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
# ## Uptraining, as the paper does it
#
# Every converted model then trains for $\alpha \cdot$ (the checkpoint's steps) more steps. The paper uses
# α = 0.05 of T5's long pre-training. A fair experiment needs three things that one short run cannot give:
#
# * **a well-trained checkpoint** — converting an undertrained model measures undertraining, not the
#   conversion; the study's checkpoint trains until its learning curve has flattened (printed below);
# * **baselines at equal cost**: the MHA checkpoint trained the same extra steps ("MHA + α"), and the
#   converted shape trained **from scratch for the same total steps** — the model uptraining is
#   meant to replace;
# * **an α sweep and seeds**: α from 0 (the converted model before any training) up to half the
#   checkpoint's steps, and every number a mean ± sd over the study's seeds, each seed its own checkpoint
#   (the header below prints which).
#
# That is too long to run live on a laptop (`python benchmarks/quality_studies.py ch06`; it writes the
# committed JSON that this chapter loads). Every number below is read from it.

# %%
study = load_results("quality_ch06")  # committed results: package data, shipped in the wheel
print(study_header(study))
curves = study["base_curves"]
last, earlier = [c["val_loss"][-1] for c in curves], [c["val_loss"][-len(c["val_loss"]) // 5] for c in curves]
print(f"MHA checkpoint after {study['base_steps']:,} steps: validation loss "
      + ", ".join(f"{v:.3f}" for v in last) + f" (seeds {study['seeds']}); over its last fifth of training it fell by "
      + ", ".join(f"{a - b:.3f}" for a, b in zip(earlier, last)) + " nats/token: the curve has flattened")
fig, ax = plt.subplots(figsize=(7, 3.5))
for curve in curves:
    ax.plot(curve["steps"], curve["val_loss"], label=f"seed {curve['seed']}")
ax.set(xlabel="training step", ylabel="validation loss (nats / token)",
       title=f"The MHA checkpoints of the study ({len(curves)} seeds)")
ax.grid(alpha=0.3)
ax.legend()
plt.tight_layout()
plt.show()

# %%
print(uptraining_table(study))
fig, axes = plt.subplots(1, len(study["groups"]), figsize=(6.5 * len(study["groups"]), 4.5), sharey=True,
                         squeeze=False)
for ax, n_groups in zip(axes[0], study["groups"]):
    plot_uptraining(study, n_groups, ax=ax)
    ax.set_yscale("log")  # right after conversion the loss is far above the rest
plt.tight_layout()
plt.show()

# %% [markdown]
# What the study concludes, each sentence printed from the numbers with the seeds' spread as the yardstick
# (a difference counts at twice the spread; between one and two spreads it is only a hint):

# %%
paper_alpha, largest = 0.05, max(study["alphas"])
for topic, alphas in (("uptrained vs scratch", study["alphas"]), ("conversion method", (0.0, largest)),
                      ("against MHA", (paper_alpha, largest))):
    print(f"— {topic}:")
    for c in study["conclusions"]:
        if c["topic"] == topic and c["alpha"] in alphas:
            print("  ", c["sentence"])

# %% [markdown]
# How to read it. Right after conversion (α = 0) every converted model is far worse than the checkpoint it
# came from: pooling eight heads' keys and values into one changes what every query head attends to, and
# the rest of the network was trained for the old heads. Uptraining wins most of that back within the first
# few hundred steps, and random initialisation — which throws away what the checkpoint's key/value
# projections had learned — recovers slowest, as the paper found. But the comparison the paper's argument
# rests on is the last column pair: an MQA model trained **from scratch** for the same total steps. At this
# scale it is as good as MHA (chapter 05: one shared key/value head gives up nothing measurable here), so
# there is nothing for uptraining to save, and the conclusions above say by how much the converted model
# still trails it at each α. Uptraining pays when training the new shape from scratch is the expensive
# part — T5-XXL's pre-training against α = 0.05 of it — and when sharing heads does cost quality at full
# training; neither holds for a two-layer model that converges in minutes. The study is the control the
# single short run of earlier editions lacked: a converted model compared at equal cost, over seeds.
#
# ## The same recipe live, small
#
# The cell below runs the study's own code (`attention_lab.quality.run_chapter_study`) at a budget a laptop
# manages in well under a minute: one seed, a short checkpoint, MQA only, α of 0 and 0.25. It is there to
# show the pieces working, not to decide anything: one seed has no spread to compare a difference with.

# %%
live = run_chapter_study("ch06", seeds=[0], steps={"corpus": 200}, uptraining={"groups": (1,), "alphas": (0.0, 0.25)},
                         tokenizer="char")
print(study_header(live))
print(uptraining_table(live))

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
# In the shape of the paper's Table 1: time per decoding step against quality, here the study's validation
# loss in nats/token (mean ± sd over its seeds; lower is better — the paper's quality is an average task
# score, higher is better), at the paper's α = 0.05. "After conversion" is α = 0: the converted checkpoint
# before any uptraining.

# %%
def loss(kind, n_groups, method, alpha):
    """Mean ± sd over the study's seeds of one cell's validation loss."""
    return mean_sd(uptraining_values(study, kind, n_groups, method, alpha))


heads = study["config"]["n_heads"]
extra = study["uptrain_steps"][str(paper_alpha)]
table = [["MHA (checkpoint)", heads, "—", f"{ms_per_step[heads]:.2f}", "—", loss("mha", heads, None, 0.0).format()],
         [f"MHA + {extra} steps", heads, "—", f"{ms_per_step[heads]:.2f}", "—",
          loss("mha", heads, None, paper_alpha).format()]]
for n_groups in study["groups"]:
    name = "MQA" if n_groups == 1 else f"GQA-{n_groups}"
    table.append([f"{name} from scratch, {study['base_steps'] + extra} steps", n_groups, "—",
                  f"{ms_per_step[n_groups]:.2f}", "—", loss("scratch", n_groups, None, paper_alpha).format()])
    for method in study["methods"]:
        table.append([f"{name} uptrained", n_groups, method, f"{ms_per_step[n_groups]:.2f}",
                      loss("uptrained", n_groups, method, 0.0).format(),
                      loss("uptrained", n_groups, method, paper_alpha).format()])
print(format_table(["model", "kv heads", "conversion", "ms / step", "loss after conversion",
                    f"final loss (α = {paper_alpha})"], table))
times = [ms_per_step[g] for g in (1, 2, 4, 8)]
print(f"decoding step slower with every extra kv head (1, 2, 4, 8): {all(a < b for a, b in zip(times, times[1:]))}")

# %% [markdown]
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
mha_more = loss("mha", heads, None, paper_alpha).mean
for n_groups in study["groups"]:
    name = "MQA" if n_groups == 1 else f"GQA-{n_groups}"
    print(f"ours (TinyGPT, {heads} heads, study means): {name} {ms_per_step[heads] / ms_per_step[n_groups]:.1f}× faster "
          f"than MHA per decoding step; uptrained (mean, α = {paper_alpha}) loss "
          f"{loss('uptrained', n_groups, 'mean', paper_alpha).mean - mha_more:+.3f} nats/token vs MHA + {extra} steps")

# %% [markdown]
# The paper's pattern: MQA-XXL is the fastest but loses quality, and GQA-8-XXL is almost as fast and keeps
# almost all of MHA-XXL's score. It is also faster *and* better than the smaller MHA-Large: converting a big
# model beats training a small one. The sizes differ from ours, for reasons worth naming:
#
# * **Scale.** T5-XXL has about 11 billion parameters and 64 heads of size 64. The paper names the memory
#   bandwidth of loading weights and all keys and values at every step as the decoding bottleneck. Our
#   8-head twin is only partly memory-bound (chapter 05), so its speed-ups are smaller.
# * **What conversion can lose.** With heads of 8 numbers and a corpus whose next character is mostly
#   decided by short, repeated patterns, one shared key/value head carries almost everything eight did:
#   the study's conclusions above say how much of a gap is left after conversion and after uptraining.
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
# * The committed study (several seeds, a checkpoint trained until its curve flattened, an α sweep)
#   compares every conversion with the same shape trained from scratch for the same total steps and with
#   MHA trained on; its printed conclusions say which differences are larger than the seeds' spread. At
#   this scale uptraining recovers from the conversion but does not beat training the shared-head model
#   from scratch, because here that model loses nothing against MHA — the paper's gain is a saving of
#   pre-training cost at a scale where both differ.
# * Decoding speed rises as G falls, because the cache read per step shrinks h/G-fold (ms per step in the
#   table). GQA sits between MHA and MQA, which is the trade-off of the paper's Table 1, printed above
#   beside our own numbers.
