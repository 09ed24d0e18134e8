# %% [markdown]
# # 12 · Multi-head Latent Attention
#
# Chapters 05–06 shrank the KV cache by **sharing**: MQA gives all query heads one key/value head, GQA
# one per group. DeepSeek-V2 (DeepSeek-AI 2024, *DeepSeek-V2: A Strong, Economical, and Efficient
# Mixture-of-Experts Language Model*, arXiv 2405.04434, §2.1) shrinks it by **compressing**: every head
# keeps its own keys and values, but they are all computed from one small *latent* vector per token, and
# only that latent is cached. The paper calls it **Multi-head Latent Attention (MLA)**.
#
# This chapter:
# 1. the low-rank idea, seen in a trained model's key/value projections;
# 2. MLA's equations and the library's module (`attention_lab.mla`);
# 3. **weight absorption**: attending over the cached latents directly, with identical outputs;
# 4. why ordinary RoPE would break the absorption, and the **decoupled** rotary key that fixes it;
# 5. cache per token for MHA, GQA, MQA and MLA — from real cache tensors — at DeepSeek-V2's sizes, and the
#    paper's headline cache reduction checked against its baseline;
# 6. TinyGPT with MHA, GQA, MQA and MLA at several latent ranks, trained at one parameter budget over several
#    seeds (committed study) beside a small live run: corpus loss and associative recall against the rank;
# 7. generation from the latent cache, and the decode speed of both paths on a GPU (committed benchmark).

# %%
import copy
import dataclasses

import matplotlib.pyplot as plt
import torch
from attention_lab.progress import tqdm

from attention_lab import MHASettings, MultiHeadAttention, TinyGPT, TinyGPTConfig, quality
from attention_lab.book.results import load as load_results
from attention_lab.costs.gpu_facts import detect_device, spec_for_name
from attention_lab.caches.sizes import ModelShape, format_bytes
from attention_lab.data import TokenDataset, get_tokenizer, load_corpus
from attention_lab.generate import generate
from attention_lab.mla import DEEPSEEK_V2, MultiHeadLatentAttention, set_mode
from attention_lab.mla_study import (KERNEL_TARGET, LEARNED, cache_numbers_per_token, latent_rank_findings,
                                     latent_rank_summary, plot_latent_rank_cost, plot_mla_decode,
                                     plot_recall_curves_by_seed)
from attention_lab.rope import apply_rope, rotation_matrix

if device.type == "cpu":
    # Tiny models gain nothing from a second CPU thread, and on a shared 2-core machine (like CI) the
    # threads of parallel jobs fight each other.
    torch.set_num_threads(1)

# %% [markdown]
# ## 1 · The low-rank idea
#
# Per token and per layer a cache holds, with $n_h$ query heads of size $d_h$:
#
# | attention | cached per token per layer | how |
# |---|---|---|
# | MHA | $2\,n_h d_h$ | a key and a value per head |
# | GQA | $2\,n_g d_h$ | a key and a value per group of heads |
# | MQA | $2\,d_h$ | one key and one value for all heads |
# | MLA | $d_c + d_h^R$ | one latent $c^{KV}$ and one small rotary key (§4) |
#
# Why could a small latent suffice? A token's keys and values are all linear in the same input $h_t$:
# $[k_t; v_t] = [W^K; W^V]\,h_t$. If the stacked matrix $[W^K; W^V]$ (shape $2n_hd_h \times d$) is close to
# rank $r$, then all $2n_hd_h$ cached numbers are close to a linear function of just $r$ numbers — cache
# those and rebuild the rest. MLA makes this explicit and *learns* the factorisation
# $[W^K; W^V] \approx [W^{UK}; W^{UV}]\,W^{DKV}$ with inner width $d_c$.
#
# We train this chapter's MHA baseline (with RoPE, as all models here) on the offline corpus and look at the
# singular values of its stacked key/value projections, before and after training.

# %%
text = load_corpus("synthetic")
tokenizer = get_tokenizer(text, kind="char")  # the same tokenizer offline and on Colab: comparable numbers
data = TokenDataset.from_text(text, tokenizer, context_length=64)
base = TinyGPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=64, n_layers=2, n_heads=4,
                     settings=MHASettings(rope=True))
STEPS, BATCH = 100, 16  # a short run, cheap on a CPU

corpus = quality.CorpusObjective(data, batch_size=BATCH, eval_every=STEPS)  # the studies' training loop

torch.manual_seed(0)
mha = TinyGPT(base).to(device)
mha_at_init = copy.deepcopy(mha)
with tqdm(total=STEPS, desc="MHA baseline", unit="step") as bar:  # a kept bar, advanced once per step
    mha_curve = corpus.train(mha, STEPS, seed=0, bar=bar)
print(f"MHA baseline: {mha.num_parameters():,} parameters, validation loss {mha_curve['val_loss'][-1]:.3f} "
      f"after {STEPS} steps ({mha_curve['seconds']:.1f} s)")


# %%
def stacked_kv(model: TinyGPT, layer: int) -> torch.Tensor:
    """[W^K; W^V] of one layer: (2·n_kv_heads·d_h, d_model)."""
    attn = model.blocks[layer].attn
    return torch.cat([attn.k_proj.weight, attn.v_proj.weight]).detach().cpu().double()


ENERGY = 0.9  # the share of the squared Frobenius norm counted below


def energy_rank(singular_values: torch.Tensor, fraction: float = ENERGY) -> int:
    """Fewest directions holding `fraction` of the squared Frobenius norm."""
    energy = singular_values.pow(2).cumsum(0) / singular_values.pow(2).sum()
    return int((energy < fraction).sum()) + 1


fig, ax = plt.subplots(figsize=(6.5, 3.8))
for layer in range(base.n_layers):
    for model, name, style in ((mha_at_init, "at init", ":"), (mha, "trained", "-")):
        s = torch.linalg.svdvals(stacked_kv(model, layer))
        ax.plot(range(1, len(s) + 1), s / s[0], style, label=f"layer {layer}, {name}")
        print(f"layer {layer} {name:8}: [W^K; W^V] is {tuple(stacked_kv(model, layer).shape)}, "
              f"{ENERGY:.0%} of its energy in {energy_rank(s)} of {len(s)} directions")
ax.set_yscale("log")
ax.set_title("Singular values of the stacked key/value projections")
ax.set_xlabel("index (largest first)")
ax.set_ylabel("singular value / largest (log scale)")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Two things to read off. First, the stacked matrix has $2n_hd_h$ rows but only $d$ columns, so its rank
# can never exceed $d$: in this model the MHA cache stores twice as many numbers per token as the
# layer input itself has — redundancy by construction. Second, training bends the spectrum: the
# random initial matrix spreads its energy over nearly all directions, the trained one concentrates it in
# fewer (the printed counts). The small directions are what a latent of width $d_c < d$ gives up. MLA
# does not truncate a trained matrix after the fact, though; it trains the factors from the start.
#
# ## 2 · MLA, equation by equation
#
# For the input $h_t \in \mathbb{R}^d$ of token $t$ (paper §2.1.2–2.1.3; head $i$ of $n_h$):
#
# $$c^{KV}_t = W^{DKV} h_t \in \mathbb{R}^{d_c}, \qquad k^C_{t,i} = W^{UK}_i c^{KV}_t, \qquad v^C_{t,i} = W^{UV}_i c^{KV}_t$$
# $$c^{Q}_t = W^{DQ} h_t \in \mathbb{R}^{d_c'}, \qquad q^C_{t,i} = W^{UQ}_i c^{Q}_t$$
# $$q^R_{t,i} = \mathrm{RoPE}(W^{QR}_i c^Q_t) \in \mathbb{R}^{d_h^R}, \qquad k^R_t = \mathrm{RoPE}(W^{KR} h_t) \in \mathbb{R}^{d_h^R} \text{ (one for all heads)}$$
# $$q_{t,i} = [q^C_{t,i}; q^R_{t,i}], \quad k_{j,i} = [k^C_{j,i}; k^R_j], \quad
#   o_{t,i} = \sum_{j \le t} \mathrm{softmax}_j\!\left(\frac{q_{t,i}^\top k_{j,i}}{\sqrt{d_h + d_h^R}}\right) v^C_{j,i}, \quad
#   u_t = W^O [o_{t,1}; \ldots; o_{t,n_h}]$$
#
# Only $c^{KV}_t$ and $k^R_t$ are cached: $d_c + d_h^R$ numbers per token per layer. The query compression
# ($c^Q$, optional) saves activation memory in training, not cache. As in the paper (§3.1.2), an RMSNorm
# follows each latent. The library's names: `kv_down` $=W^{DKV}$, `k_up` $=W^{UK}$, `v_up` $=W^{UV}$,
# `k_rope` $=W^{KR}$, `q_down` $=W^{DQ}$, `q_up` $=W^{UQ}$, `q_rope` $=W^{QR}$, `out_proj` $=W^O$.

# %%
layer = MultiHeadLatentAttention(d_model=64, n_heads=4, kv_latent_dim=24, rope_dim=8, q_latent_dim=32)
print(layer)
x = torch.randn(2, 10, 64)  # (batch, seq, d_model)
positions = torch.arange(10)
latent, rope_key = layer.compress(x, positions)
q_content, q_rot = layer.project_queries(x, positions)
print(f"cached: c^KV {tuple(latent.shape)} + k^R {tuple(rope_key.shape)} -> "
      f"{layer.cache_numbers_per_token} numbers per token per layer")
print(f"queries: q^C {tuple(q_content.shape)}, q^R {tuple(q_rot.shape)}; output {tuple(layer(x).shape)}")

# %% [markdown]
# ## 3 · Weight absorption: attend over the latents
#
# The straightforward ("naive") decode step decompresses **every** cached latent into $n_h$ keys and
# values — $2 n_h d_h d_c$ multiply-adds and $2 n_h d_h$ new numbers per cached token, every step.
# But a dot product lets the up-projection move to the other side:
#
# $$q^{C\top}_{t,i}\, k^C_{j,i} = q^{C\top}_{t,i}\, W^{UK}_i c^{KV}_j = \big(W^{UK\top}_i q^C_{t,i}\big)^{\top} c^{KV}_j ,
# \qquad \sum_j w_{ij}\, v^C_{j,i} = W^{UV}_i \Big(\sum_j w_{ij}\, c^{KV}_j\Big).$$
#
# So: turn each head's query into the latent space once ($\tilde q_{t,i} = W^{UK\top}_i q^C_{t,i}$, width $d_c$),
# score it against the cached latents themselves, take the weighted sum of latents, and apply $W^{UV}_i$
# (which could be merged into $W^O$) at the end. Every head now reads the same cached row
# $[c^{KV}_j; k^R_j]$ as its key and its first $d_c$ entries as its value: the attention is **MQA with one
# key/value head of width $d_c + d_h^R$**, and the cache is read once per step, never expanded. The library
# switches paths with `layer.mode`; both must give the same output.

# %%
torch.manual_seed(1)
x = torch.randn(3, 17, 64, dtype=torch.float64)
for dtype in (torch.float64, torch.float32):
    layer = layer.to(dtype)
    layer.mode = "naive"
    naive = layer(x.to(dtype))
    layer.mode = "absorbed"
    absorbed = layer(x.to(dtype))
    print(f"{str(dtype):14}: max |absorbed − naive| = {(absorbed - naive).abs().max().item():.1e} "
          f"(outputs of size ~{naive.abs().mean().item():.2f})")
layer = layer.float()

# %% [markdown]
# ## 4 · Why plain RoPE breaks the absorption — and the decoupled key
#
# RoPE (chapter code: `attention_lab.rope`) rotates a query at position $t$ by $R_t$ and a key at position $j$
# by $R_j$; since $R_t^\top R_j = R_{j-t}$ the score sees only the offset. Put RoPE on the *content* key of
# MLA, $k^C_{j,i} = R_j W^{UK}_i c^{KV}_j$, and the score becomes
#
# $$\big(R_t W^{UQ}_i c^Q_t\big)^{\top} R_j W^{UK}_i c^{KV}_j = c^{Q\top}_t\; \underbrace{W^{UQ\top}_i R_{j-t} W^{UK}_i}_{\text{depends on } j - t}\; c^{KV}_j .$$
#
# The rotation sits *between* $W^{UK}$ and the query, and it is a different matrix for every offset, so
# there is no single matrix to fold into the query. Nor can we rotate the cached latent instead: $R_j$ acts
# on the $d_h$-dimensional key, not on $c^{KV}_j$. Every step would have to rebuild every key to rotate it —
# exactly the naive path. Below, the matrix one would want to precompute, $M_{j-t} = W^{UQ\top}_i R_{j-t} W^{UK}_i$,
# measured against $M_0$ for keys further and further back, and the error of scores computed with one fixed matrix.

# %%
torch.manual_seed(2)
d_h, d_c, d_cq, n_pos = 16, 24, 32, 64
w_uq = torch.randn(d_h, d_cq, dtype=torch.float64) / d_cq**0.5  # W^UQ_i: query latent -> head i's query
w_uk = torch.randn(d_h, d_c, dtype=torch.float64) / d_c**0.5  # W^UK_i: KV latent -> head i's key
m0 = w_uq.T @ w_uk  # the matrix absorption would precompute
# A key `distance` positions before the query: R_t^T R_j = R_{j-t} = R_{-distance}.
drift = [((w_uq.T @ rotation_matrix(-distance, d_h) @ w_uk) - m0).norm() / m0.norm() for distance in range(n_pos)]

c_q, c_kv = torch.randn(d_cq, dtype=torch.float64), torch.randn(n_pos, d_c, dtype=torch.float64)
t = n_pos - 1  # the newest query attends to all n_pos keys
true_scores = apply_rope((w_uq @ c_q)[None], torch.tensor([t])) @ apply_rope(c_kv @ w_uk.T, torch.arange(n_pos)).T
fixed_matrix_scores = c_q @ m0 @ c_kv.T
error = ((fixed_matrix_scores - true_scores).norm() / true_scores.norm()).item()
print(f"scores from one precomputed matrix vs the true RoPE scores: relative error {error:.2f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(range(n_pos), drift, label=r"RoPE on the content key: $W^{UQ\top} R_{j-t} W^{UK}$")
ax.plot(range(n_pos), [0.0] * n_pos, "--", label=r"decoupled (content part unrotated): $W^{UQ\top} W^{UK}$")
ax.set_title("The matrix absorption needs, per offset")
ax.set_xlabel(r"distance $t - j$ from the query back to the key (positions)")
ax.set_ylabel(r"$\|M_{j-t} - M_0\| / \|M_0\|$")
ax.set_ylim(-0.05, 1.7)
ax.grid(alpha=0.3)
ax.legend(fontsize=8, loc="upper center")
plt.show()

# %% [markdown]
# MLA's fix (§2.1.3) is to keep the content parts **unrotated** — so the one matrix $W^{UQ\top}_iW^{UK}_i$
# holds for every offset and absorbs — and to carry position in a separate, small slice: per-head rotary
# queries $q^R_{t,i}$ and **one** rotary key $k^R_j$ shared by all heads, concatenated to the content parts.
# The rotary key never passes through $W^{UK}$, so it is cached already rotated ($d_h^R$ more numbers per
# token) and scored directly. Section 3's check, which passed to rounding error, used exactly this layout.
#
# ## Exercise: the absorbed query
#
# Write `absorbed_query(q_content, w_uk)`: `q_content` holds the content queries `(B, H, T, D)`; `w_uk` is
# `k_up.weight`, shape `(H·D, d_c)`, whose rows `i·D … i·D+D−1` form $W^{UK}_i$ `(D, d_c)` (head $i$'s key is
# $W^{UK}_i c$). Return $\tilde q$ of shape `(B, H, T, d_c)` with $\tilde q_{b,i,t} \cdot c = q^C_{b,i,t} \cdot (W^{UK}_i c)$
# for every latent $c$. Mind which side the matrix goes on.

# %%
def absorbed_query(q_content: torch.Tensor, w_uk: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    n_heads, head_dim = q_content.shape[1], q_content.shape[3]
    w = w_uk.view(n_heads, head_dim, w_uk.shape[1])  # (H, D, d_c): W^UK_i
    return torch.einsum("bhtd,hdc->bhtc", q_content, w)  # row vector q_i @ W^UK_i = (W^UK_iᵀ q_i)ᵀ
    ### END SOLUTION


# %%
from attention_lab.exercises.ch12 import check_absorbed_query

check_absorbed_query(absorbed_query)

# %% [markdown]
# ## 5 · Cache per token per layer, from the real cache tensors
#
# Each attention module makes its own cache (`make_cache`), so the sizes below are read off real
# tensors: one token, one sequence, bf16. To skip allocating billions of weights, the modules are built on
# PyTorch's `meta` device (shapes without storage); their caches are ordinary CPU tensors. First
# DeepSeek-V2's attention sizes (paper §3.1.2), then its cache against MHA, GQA and MQA with the same heads.

# %%
ds = DEEPSEEK_V2
print("DeepSeek-V2 attention:", ", ".join(f"{k}={v}" for k, v in ds.items()))
print(f"d_c = {ds['kv_latent_dim'] // ds['head_dim']}·d_h, d_h^R = d_h/{ds['head_dim'] // ds['rope_dim']}")

with torch.device("meta"):
    layers = {
        "MHA": MultiHeadAttention(ds["d_model"], ds["n_heads"], head_dim=ds["head_dim"]),
        "GQA, 8 groups": MultiHeadAttention(ds["d_model"], ds["n_heads"], n_kv_heads=8, head_dim=ds["head_dim"]),
        "MQA": MultiHeadAttention(ds["d_model"], ds["n_heads"], n_kv_heads=1, head_dim=ds["head_dim"]),
        "MLA": MultiHeadLatentAttention(ds["d_model"], ds["n_heads"], ds["kv_latent_dim"], ds["rope_dim"],
                                        head_dim=ds["head_dim"], q_latent_dim=ds["q_latent_dim"]),
    }
formulas = {"MHA": "2·n_h·d_h", "GQA, 8 groups": "2·n_g·d_h", "MQA": "2·d_h", "MLA": "d_c + d_h^R"}
per_token = {}
print(f"\n{'attention':14} {'formula':12} {'numbers/token/layer':>20} {'bf16 bytes':>11} {'× ' + str(ds['n_layers']) + ' layers':>12}")
for name, module in layers.items():
    cache = module.make_cache(1, 1, "cpu", torch.bfloat16)
    per_token[name] = cache.nbytes // 2  # bf16: 2 bytes a number
    print(f"{name:14} {formulas[name]:12} {per_token[name]:>20,} {cache.nbytes:>11,} "
          f"{format_bytes(cache.nbytes * ds['n_layers']):>12}")
groups = per_token["MLA"] / (2 * ds["head_dim"])
print(f"\nMLA caches {per_token['MLA']} = {per_token['MLA'] / ds['head_dim']}·d_h numbers: as much as GQA with "
      f"{groups:.2f} groups, {per_token['MHA'] / per_token['MLA']:.1f}× less than MHA with the same {ds['n_heads']} heads")

# %% [markdown]
# **The paper's headline number.** The abstract says that compared with DeepSeek 67B, DeepSeek-V2 "reduces the
# KV cache by" a percentage, printed below as `PAPER_CLAIM`. The baseline is DeepSeek LLM 67B (DeepSeek-AI
# 2024, arXiv 2401.02954, Table 2; its shape is printed below: GQA, fewer key/value heads than query heads),
# whose cache is bf16. The comparison is of deployed models: §3.2.3 (inference efficiency) says DeepSeek-V2's
# KV cache is quantised to a few bits per element on average (`CACHE_BITS` below, the paper's figure). Per
# token, over all layers:

# %%
PAPER_CLAIM = 0.933  # arXiv 2405.04434, abstract: "reduces the KV cache by 93.3%" against DeepSeek 67B
CACHE_BITS = 6  # §3.2.3: the deployed KV cache is quantised "into 6 bits on average"
deepseek_67b = ModelShape("DeepSeek LLM 67B", n_layers=95, n_heads=64, n_kv_heads=8, head_dim=128,
                          source="DeepSeek-AI 2024, arXiv 2401.02954, Table 2")
print(f"{deepseek_67b.name}: {deepseek_67b.n_layers} layers, {deepseek_67b.n_heads} query heads, "
      f"{deepseek_67b.n_kv_heads} key/value heads of {deepseek_67b.head_dim} ({deepseek_67b.source})")
baseline_bytes = deepseek_67b.cache_bytes(tokens=1, bytes_per_element=2)  # bf16
v2_numbers = ds["n_layers"] * per_token["MLA"]
v2_bf16_bytes = v2_numbers * 2
v2_quantised_bytes = v2_numbers * CACHE_BITS / 8
saving_bf16, saving_quantised = 1 - v2_bf16_bytes / baseline_bytes, 1 - v2_quantised_bytes / baseline_bytes
print(f"DeepSeek 67B (GQA-{deepseek_67b.n_kv_heads}, bf16):     {baseline_bytes:>9,.0f} bytes/token ({format_bytes(baseline_bytes)})")
print(f"DeepSeek-V2 (MLA, bf16):        {v2_bf16_bytes:>9,.0f} bytes/token -> {saving_bf16:.1%} less")
print(f"DeepSeek-V2 (MLA, {CACHE_BITS}-bit cache): {v2_quantised_bytes:>9,.0f} bytes/token -> {saving_quantised:.1%} less "
      f"(the paper: {PAPER_CLAIM:.1%}; equal to the digit: {round(saving_quantised, 3) == PAPER_CLAIM})")
print(f"layers: DeepSeek-V2 {ds['n_layers']}, DeepSeek 67B {deepseek_67b.n_layers}")
print(f"architecture alone (same {ds['n_layers']} layers and heads, MHA -> MLA): {1 - per_token['MLA'] / per_token['MHA']:.1%} less")

# %% [markdown]
# So the paper's number is reproduced — but only as the product of three things: MLA's compression, fewer
# layers (both counts printed), and the quantised cache. With both caches in bf16 the saving against DeepSeek
# 67B is the second line; against an MHA model of DeepSeek-V2's own shape, the architecture alone saves the
# last line.
#
# ## 6 · TinyGPT with MHA, GQA, MQA and MLA at one parameter budget
#
# Does compressing cost quality, and how small may the latent get? A single short run cannot say: a second
# seed of the same model can move its numbers as much as a change of variant does. So the comparison is a study
# (`attention_lab.quality`, study `"ch12"`), run by `benchmarks/quality_studies.py` on a GPU and committed as
# `attention_lab/results/quality_ch12.json`:
#
# * **variants:** MHA (the baseline), GQA with 2 groups, MQA, and MLA at a range of latent ranks $d_c$ — the
#   largest caches as much as GQA-2, the smallest far less than MQA. Every variant uses RoPE (MLA its
#   decoupled rotary key, here of the full head width, as this tiny model needs position badly);
# * **one parameter count:** each variant's MLP is widened or narrowed until its parameters match the
#   baseline's (`quality.match_parameters`; the table prints both counts and the MLP width);
# * **two tasks:** next-token loss on the corpus, and **associative recall** (chapter 13's task,
#   `attention_lab.recall`): key–value pairs placed in the context and asked for later, scored by accuracy —
#   a lookup that needs the keys and values themselves, which is exactly what the latent compresses;
# * **several seeds** (initial weights and batch order): every number is a mean ± sd over them, and a
#   difference counts only when it is at least twice the seed-to-seed spread (between one and two spreads
#   it is printed as a hint).

# %%
report = load_results("quality_ch12")  # committed multi-seed study: package data, shipped in the wheel
print(quality.study_header(report))
mla_settings = report["variants"]["corpus"]["MLA d_c=48"]["config"]["settings"]
print(f"parameters matched through the MLP width: {report['parameters_matched']}; RoPE for every variant "
      f"(MLA: decoupled rotary key of d_h^R = {mla_settings['rope_dim']}, head size d_h = "
      f"{report['model']['d_model'] // report['model']['n_heads']})\n")
print(quality.study_table(report))
cache_per_token = cache_numbers_per_token(report)
print("\ncache per token per layer (numbers, from each variant's own cache): "
      + ", ".join(f"{variant} {numbers}" for variant, numbers in cache_per_token.items()))
print("\nEvery variant against the baseline, seed by seed:")
for line in quality.study_conclusion_lines(report):
    print("•", line)

# %% [markdown]
# What the latent rank costs, in one figure: the final numbers of every MLA rank (mean ± sd as error bars,
# each seed as a dot) against the variants without a latent as horizontal lines. Below it, the same
# reading as sentences, seed by seed.

# %%
axes = plot_latent_rank_cost(report)
plt.tight_layout()
plt.show()
for line in latent_rank_findings(report):
    print("•", line)

# %% [markdown]
# Two different pictures. **Corpus loss** grows as the latent shrinks, but slowly: sharing (GQA, MQA) and
# the larger latents are within the seeds' spread of MHA, and only the smallest ranks stand out (which, and
# by how much, is printed above). **Recall** is not a smooth function of the rank at all. MHA, GQA, MQA and
# the largest latent learn the lookup on every seed; at several of the smaller ranks the seeds *split*: some
# reach near-perfect recall, others stay far below within the same budget — and the count of seeds that made
# it does not even fall steadily with the rank. A mean ± sd of such a split describes no seed (its error bar
# spans the gap between them); the dots and the per-seed lines are the honest summary. Learning the lookup
# is a jump; with a narrow latent, whether and when a seed makes it varies from seed to seed, as the
# per-seed learning curves (right) show. Is the budget long
# enough? The ordering of the clearly different variants is fixed early; the variants within the spread of
# each other keep swapping places until the end, which is what "no difference at this budget" means.

# %%
fig, (ax_corpus, ax_recall, ax_seeds) = plt.subplots(1, 3, figsize=(18, 4.3))
shown = ["MHA", "GQA-2", "MQA", "MLA d_c=48", "MLA d_c=8", "MLA d_c=2"]
quality.plot_learning_curves(report, "corpus", variants=shown, ax=ax_corpus)
ax_corpus.set_ylim(top=min(ax_corpus.get_ylim()[1], 1.0))  # the first eval's loss would squash the rest
quality.plot_learning_curves(report, "recall", variants=shown, ax=ax_recall)
split = [r["variant"] for r in latent_rank_summary(report)["recall"]["ranks"]  # ranks whose seeds split
         if min(r["values"]) < LEARNED <= max(r["values"])]
ax_recall.set_ylim(-0.05, 1.05)  # accuracy lives in [0, 1]; a band of mean ± sd may not
plot_recall_curves_by_seed(report, ["MHA"] + split[-2:], ax=ax_seeds)
plt.tight_layout()
plt.show()
resolved = [c["a"] for c in report["conclusions"] if c["objective"] == "corpus" and c["resolved"]]
for objective in report["objectives"]:
    print(f"{objective}: ordering of all variants (by mean over seeds) unchanged since step "
          f"{quality.stable_since(report, objective):,} of {report['steps'][objective]:,}; of "
          f"{', '.join([report['baseline']] + resolved)} since step "
          f"{quality.stable_since(report, objective, variants=[report['baseline']] + resolved):,}")

# %% [markdown]
# **The same code, live.** The study takes GPU time to run; here is a small piece of it on this machine, with
# the very function the benchmark script calls: one seed, the baseline against one small latent, a budget
# a fraction of the study's (both printed). With one seed there is no spread and so no conclusion — the
# point is to see the code path, and how far from the study's numbers a run this short still is.

# %%
LIVE_STEPS = {"corpus": 150, "recall": 300}  # the study's budgets are in report["steps"]
live = quality.run_chapter_study("ch12", seeds=[0], variants=["MHA", "MLA d_c=4"], steps=LIVE_STEPS, tokenizer="char")
print(quality.study_header(live))
print(quality.study_table(live))
print(f"live run: {live['seconds']:.0f} s on this machine")
for objective, settings in live["objectives"].items():
    for variant in live["variants"][objective]:
        here = quality.metric_values(live, objective, variant)[0]
        committed = quality.metric_values(report, objective, variant)[report["seeds"].index(0)]
        print(f"{objective:6} {variant:11} {settings['metric']}: live seed 0 after {live['steps'][objective]:,} steps "
              f"{here:.3f}; committed seed 0 after {report['steps'][objective]:,} steps {committed:.3f}")

# ## 7 · Generation from the latent cache
#
# The KV-cache machinery of chapter 03 works unchanged: `TinyGPT.new_cache` asks each layer for its cache,
# and an MLA layer returns a `LatentCache`. Cached generation must write exactly the tokens of uncached
# generation — in both inference paths. A model for it: the study's largest latent, its parameters matched
# to the MHA baseline of section 1 through the MLP width, trained as briefly as that baseline.

# %%
mla_config = dataclasses.replace(base, attention="mla", settings=quality.STUDIES["ch12"].variants["MLA d_c=48"]["settings"])
matched = quality.match_parameters(base, mla_config)
print(matched.describe("MLA (d_c=48)"))
torch.manual_seed(0)
mla_model = TinyGPT(matched.config).to(device)
with tqdm(total=STEPS, desc="MLA d_c=48", unit="step") as bar:
    mla_curve = corpus.train(mla_model, STEPS, seed=0, bar=bar)
print(f"validation loss {mla_curve['val_loss'][-1]:.3f} after {STEPS} steps (the MHA baseline: {mha_curve['val_loss'][-1]:.3f})")
prompt = torch.tensor([tokenizer.encode("once there was a ")], device=device)
set_mode(mla_model, "naive")
reference = generate(mla_model, prompt, max_new_tokens=40, use_cache=False)
same_tokens = {}
for mode in ("naive", "absorbed"):
    set_mode(mla_model, mode)
    cached = generate(mla_model, prompt, max_new_tokens=40, use_cache=True)
    same_tokens[mode] = torch.equal(cached, reference)
    print(f"{mode:8} path, cached == uncached tokens: {same_tokens[mode]}")
print("sample:", repr(tokenizer.decode(reference[0].tolist())))

# %% [markdown]
# ### Decode speed on a GPU
#
# On a CPU both paths are too fast at this size to say anything. `benchmarks/mla_decode.py` times one layer
# with DeepSeek-V2's attention sizes in bf16, one new token per step over a range of cached contexts (batch,
# sizes and contexts printed below): the naive path (decompress the whole cache every step) against the
# absorbed path (attend over the latent rows), with PyTorch's SDPA as the attention core and with the
# project's Triton latent kernel. Its committed results, from the card named in them:

# %%
bench = load_results("mla_decode")  # committed GPU results: package data, shipped in the wheel
sweep = load_results("mla_kernel_sweep")  # the latent kernel alone, every tile tried
env = bench["environment"]
print(f"{env['card']} | torch {env['torch']} | triton {env['triton']} | CUDA {env['cuda']} | batch {bench['batch']}, "
      f"{bench['dtype']} | sizes: " + ", ".join(f"{k}={v}" for k, v in bench["sizes"].items()))
print(f"{'context':>8} {'path':>16} {'ms / step':>10} {'MB moved':>9} {'GB/s':>6}")
for row in bench["rows"]:
    print(f"{row['context']:>8} {row['path']:>16} {row['graph_ms']:>10.3f} {row['bytes'] / 1e6:>9,.0f} "
          f"{row['achieved_GBps']:>6,.0f}")
for context, speedup in bench["speedup_absorbed_over_naive"].items():
    print(f"absorbed over naive at {int(context):>6,} tokens: " + ", ".join(
        f"{key.replace('_', ' ')} {value:.1f}×" for key, value in speedup.items()))
mla_paths = ("naive", "absorbed", "absorbed_triton")
fastest = {c: min((r for r in bench["rows"] if r["context"] == c and r["path"] in mla_paths), key=lambda r: r["graph_ms"])["path"]
           for c in sorted({r["context"] for r in bench["rows"]})}
print("fastest MLA path per context: " + ", ".join(f"{c:,}: {p}" for c, p in fastest.items()))
fig = plot_mla_decode(bench, sweep)
plt.show()

# %% [markdown]
# ("graph": GPU time of the step replayed as a CUDA graph; "eager": Python launching each kernel; `mha_sdpa`
# is only the attention core of plain MHA with the same heads, for scale.) Absorption pays several times
# over at long context: the naive path moves gigabytes per step rebuilding keys and values, the absorbed
# one a few hundred megabytes — at short context mostly the layer's own weights. With SDPA as its core, the
# absorbed path's bandwidth falls as the context grows and its time grows linearly with context: with all
# heads folded into the query axis, a small batch has very few query rows for SDPA's kernels to spread over.
# `attention_lab.kernels.latent_decode` is a Triton kernel for exactly this shape: split-K over the context,
# a block of heads per program sharing each loaded latent tile as keys *and* values (the tiles timed are in
# the right panel's legend), partial results merged by chapter 11's reduction kernel. Its rows in the table
# (`absorbed_triton`) make it the fastest MLA path (printed per context). Yet the kernel alone, in the right
# panel, reads the cache at a small fraction of the copy bandwidth — short of the project's aim — and the
# cell below says why memory is not the only limit: at this many heads the kernel does more arithmetic per
# cached byte than the card's ridge point, so its tensor cores would have to run at a large share of their
# peak to reach the aim.

# %%
longest = max(r["context"] for r in sweep["kernel_rows"])
best = max((r for r in sweep["kernel_rows"] if r["context"] == longest), key=lambda r: r["of_copy"])
spec = spec_for_name(sweep["environment"]["card"])
flops_per_byte = best["tflops"] * 1e12 * best["ms"] * 1e-3 / best["cache_bytes"]
needed_tflops = KERNEL_TARGET * sweep["kernel_copy_tb_s"] * flops_per_byte
print(f"{sweep['environment']['card']}, latent kernel alone at {longest:,} tokens, best tile {best['config']!r}: "
      f"{best['ms']:.3f} ms, {best['tb_s']:.2f} TB/s = {best['of_copy']:.0%} of the measured copy bandwidth "
      f"({sweep['kernel_copy_tb_s']:.2f} TB/s), {best['tflops']:.0f} TFLOP/s")
print(f"arithmetic per cached byte: {flops_per_byte:.0f} FLOP/byte; the card's ridge point "
      f"{spec.ridge_point:.0f} FLOP/byte ({spec.fp16_tflops:.0f} TFLOP/s dense bf16 / {spec.bandwidth_tb_s} TB/s, datasheet)")
print(f"the aim of {KERNEL_TARGET:.0%} of copy at this intensity needs {needed_tflops:.0f} TFLOP/s "
      f"= {needed_tflops / spec.fp16_tflops:.0%} of the tensor-core peak; the kernel reaches "
      f"{best['tflops'] / spec.fp16_tflops:.0%} of it")

# %%
if torch.cuda.is_available():
    # A live check on this GPU (fp16, so it also runs on a T4): one decode step at 4k context, both paths.
    from attention_lab.costs.timing import time_function

    gpu_layer = MultiHeadLatentAttention(ds["d_model"], ds["n_heads"], ds["kv_latent_dim"], ds["rope_dim"],
                                         head_dim=ds["head_dim"], q_latent_dim=ds["q_latent_dim"], backend="torch")
    gpu_layer = gpu_layer.to(device=device, dtype=torch.float16).eval()
    gpu_cache = gpu_layer.make_cache(1, 4096, device, torch.float16)
    gpu_cache.rows.normal_()
    step_input = torch.randn(1, 1, ds["d_model"], device=device, dtype=torch.float16)

    def decode_step():
        gpu_cache.length = 4095
        with torch.no_grad():
            return gpu_layer(step_input, cache=gpu_cache)

    paths = [("naive", False), ("absorbed", False)]
    if detect_device().compute_capability >= 80:  # the Triton kernel's tile does not fit a T4's shared memory
        paths.append(("absorbed", True))
    for mode, triton_decode in paths:
        gpu_layer.mode, gpu_layer.triton_decode = mode, triton_decode
        print(f"{mode + (' + Triton kernel' if triton_decode else ''):24}: "
              f"{time_function(decode_step, warmup=3, repeats=20) * 1e3:.2f} ms per step ({torch.cuda.get_device_name(0)})")
else:
    print("No GPU here: on one, this cell times a decode step of each path at 4k context (DeepSeek-V2 sizes, fp16).")

# %% [markdown]
# ## Summary

# %%
print(f"• Trained MHA: {ENERGY:.0%} of the stacked [W^K; W^V] energy in {energy_rank(torch.linalg.svdvals(stacked_kv(mha, 0)))} "
      f"of {base.d_model} directions (layer 0), against {energy_rank(torch.linalg.svdvals(stacked_kv(mha_at_init, 0)))} at init.")
print(f"• Naive and absorbed MLA agree to {(absorbed - naive).abs().max().item():.0e} in fp32 (decoupled RoPE); "
      f"cached == uncached tokens: naive {same_tokens['naive']}, absorbed {same_tokens['absorbed']}.")
print(f"• One precomputed matrix with RoPE on the content key instead: scores off by {error:.0%}.")
print(f"• DeepSeek-V2 sizes: MLA caches {per_token['MLA']} numbers per token per layer = GQA with {groups:.2f} groups; "
      f"vs DeepSeek 67B: {saving_bf16:.1%} less in bf16, {saving_quantised:.1%} with the {CACHE_BITS}-bit cache "
      f"(the paper: {PAPER_CLAIM:.1%}).")
print(f"• Study over {len(report['seeds'])} seeds, parameters matched ({report['summary']['corpus']['MHA']['parameters']:,}):")
for line in latent_rank_findings(report):
    print("    " + line)
print(f"• Live run (seed 0, {', '.join(f'{o} {n:,} steps' for o, n in live['steps'].items())}): {live['seconds']:.0f} s here.")
longest = str(max(int(c) for c in bench["speedup_absorbed_over_naive"]))
print(f"• {env['card']}: absorbed decode {bench['speedup_absorbed_over_naive'][longest]['graph']:.1f}× faster than "
      f"naive at {int(longest):,} tokens of context (SDPA core), "
      f"{bench['speedup_absorbed_over_naive'][longest]['triton_graph']:.1f}× with the Triton latent kernel; "
      f"the kernel alone at {best['of_copy']:.0%} of copy bandwidth on the {sweep['environment']['card']}.")
