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
#    paper's 93.3% claim checked against its baseline;
# 6. TinyGPT with MHA, GQA, MQA and MLA trained at one parameter budget: validation loss against cache size;
# 7. generation from the latent cache, and the decode speed of both paths on an H100.

# %%
import copy
import dataclasses
import json

import matplotlib.pyplot as plt
import torch

from attention_lab import MHASettings, MultiHeadAttention, TinyGPT, TinyGPTConfig
from attention_lab.book.results import load as load_results, result_path
from attention_lab.costs.gpu_facts import detect_device
from attention_lab.caches.sizes import ModelShape, format_bytes
from attention_lab.data import TokenDataset, get_tokenizer, load_corpus
from attention_lab.generate import generate
from attention_lab.mla import DEEPSEEK_V2, MLASettings, MultiHeadLatentAttention, set_mode
from attention_lab.rope import apply_rope, rotation_matrix
from attention_lab.train import train

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

torch.manual_seed(0)
mha = TinyGPT(base).to(device)
mha_at_init = copy.deepcopy(mha)
mha_result = train(mha, data, steps=STEPS, batch_size=BATCH, eval_every=STEPS, seed=0, progress=False)
print(f"MHA baseline: {mha.num_parameters():,} parameters, validation loss {mha_result.final_val_loss:.3f} "
      f"after {STEPS} steps ({mha_result.seconds:.1f} s)")


# %%
def stacked_kv(model: TinyGPT, layer: int) -> torch.Tensor:
    """[W^K; W^V] of one layer: (2·n_kv_heads·d_h, d_model)."""
    attn = model.blocks[layer].attn
    return torch.cat([attn.k_proj.weight, attn.v_proj.weight]).detach().cpu().double()


def energy_rank(singular_values: torch.Tensor, fraction: float = 0.9) -> int:
    """Fewest directions holding `fraction` of the squared Frobenius norm."""
    energy = singular_values.pow(2).cumsum(0) / singular_values.pow(2).sum()
    return int((energy < fraction).sum()) + 1


fig, ax = plt.subplots(figsize=(6.5, 3.8))
for layer in range(base.n_layers):
    for model, name, style in ((mha_at_init, "at init", ":"), (mha, "trained", "-")):
        s = torch.linalg.svdvals(stacked_kv(model, layer))
        ax.plot(range(1, len(s) + 1), s / s[0], style, label=f"layer {layer}, {name}")
        print(f"layer {layer} {name:8}: [W^K; W^V] is {tuple(stacked_kv(model, layer).shape)}, "
              f"90% of its energy in {energy_rank(s)} of {len(s)} directions")
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
print(f"\n{'attention':14} {'formula':12} {'numbers/token/layer':>20} {'bf16 bytes':>11} {'× 60 layers':>12}")
for name, module in layers.items():
    cache = module.make_cache(1, 1, "cpu", torch.bfloat16)
    per_token[name] = cache.nbytes // 2  # bf16: 2 bytes a number
    print(f"{name:14} {formulas[name]:12} {per_token[name]:>20,} {cache.nbytes:>11,} "
          f"{format_bytes(cache.nbytes * ds['n_layers']):>12}")
groups = per_token["MLA"] / (2 * ds["head_dim"])
print(f"\nMLA caches {per_token['MLA']} = {per_token['MLA'] / ds['head_dim']}·d_h numbers: as much as GQA with "
      f"{groups:.2f} groups, {per_token['MHA'] / per_token['MLA']:.1f}× less than MHA with the same {ds['n_heads']} heads")

# %% [markdown]
# **The 93.3% claim.** The paper's abstract says that compared with DeepSeek 67B, DeepSeek-V2 "reduces the
# KV cache by 93.3%". The baseline is DeepSeek LLM 67B (DeepSeek-AI 2024, arXiv 2401.02954, Table 2:
# 95 layers, 64 query heads, GQA with 8 key/value heads of size 128), whose cache is bf16. The comparison is
# of deployed models: §3.2.3 (inference efficiency) says DeepSeek-V2's KV cache is quantised "into 6 bits on
# average" per element. Per token, over all layers:

# %%
deepseek_67b = ModelShape("DeepSeek LLM 67B", n_layers=95, n_heads=64, n_kv_heads=8, head_dim=128,
                          source="DeepSeek-AI 2024, arXiv 2401.02954, Table 2")
baseline_bytes = deepseek_67b.cache_bytes(tokens=1, bytes_per_element=2)  # bf16
v2_numbers = ds["n_layers"] * per_token["MLA"]
v2_bf16_bytes = v2_numbers * 2
v2_6bit_bytes = v2_numbers * 6 / 8
print(f"DeepSeek 67B (GQA-8, bf16):     {baseline_bytes:>9,.0f} bytes/token ({format_bytes(baseline_bytes)})")
print(f"DeepSeek-V2 (MLA, bf16):        {v2_bf16_bytes:>9,.0f} bytes/token -> {1 - v2_bf16_bytes / baseline_bytes:.1%} less")
print(f"DeepSeek-V2 (MLA, 6-bit cache): {v2_6bit_bytes:>9,.0f} bytes/token -> {1 - v2_6bit_bytes / baseline_bytes:.1%} less")
print(f"architecture alone (same 60 layers and heads, MHA -> MLA): {1 - per_token['MLA'] / per_token['MHA']:.1%} less")

# %% [markdown]
# So the 93.3% is reproduced exactly — but only as the product of three things: MLA's compression, fewer
# layers (60 vs 95), and the 6-bit cache quantisation. With both caches in bf16 the saving against DeepSeek
# 67B is the second line; against an MHA model of DeepSeek-V2's own shape, the architecture alone saves the
# last line.
#
# ## 6 · TinyGPT with MHA, GQA, MQA and MLA at one parameter budget
#
# Same data, same number of steps; every model has the MHA baseline's parameter count. The variants differ
# in attention parameters, so each one's MLP is widened or narrowed to land on the budget
# (`TinyGPTConfig.mlp_hidden`). MLA gets $d_c = 48$, so that its cache equals GQA's with 2 groups: a
# direct comparison of compressing against sharing at equal cache. At this tiny size position matters a
# lot, and we give MLA's rotary slice the full head width ($d_h^R = d_h = 16$; DeepSeek-V2 uses $d_h/2$ —
# try `rope_dim=8`, or `kv_latent_dim=16` for MQA's cache size). Runs this short are noisy, so the MHA
# baseline is trained a second time from another seed (initialisation and batch order): the difference
# between its two runs is the yardstick for any difference between variants.

# %%
target = mha.num_parameters()


def at_budget(config: TinyGPTConfig) -> TinyGPTConfig:
    """Resize the MLP so the model has (nearly) the MHA baseline's parameter count."""
    per_hidden_unit = config.n_layers * (2 * config.d_model + 1)  # a row of `up`, its bias, a column of `down`
    spare = target - TinyGPT(config).num_parameters()
    return dataclasses.replace(config, mlp_hidden=4 * config.d_model + round(spare / per_hidden_unit))


configs = {
    "MHA": base,
    "GQA (2 groups)": dataclasses.replace(base, n_kv_heads=2),
    "MQA": dataclasses.replace(base, n_kv_heads=1),
    "MLA (d_c=48)": dataclasses.replace(base, attention="mla", settings=MLASettings(kv_latent_dim=48, rope_dim=16)),
}
models, results = {("MHA", 0): mha}, {("MHA", 0): mha_result}
for name, seed in [(name, 0) for name in configs] + [("MHA", 1)]:
    if (name, seed) not in models:
        config = at_budget(configs[name])  # before seeding: it builds a throwaway model
        torch.manual_seed(seed)
        models[name, seed] = TinyGPT(config).to(device)
        results[name, seed] = train(models[name, seed], data, steps=STEPS, batch_size=BATCH, eval_every=STEPS,
                                    seed=seed, progress=False)

val_loss = {name: results[name, 0].final_val_loss for name in configs}
cache_numbers = {}
print(f"{'attention':15} {'parameters':>10} {'MLP width':>9} {'cache numbers/token/layer':>26} {'val loss':>9}")
for name in configs:
    model = models[name, 0]
    cache = model.new_cache(batch_size=1, max_len=1)
    cache_numbers[name] = cache.nbytes // (4 * model.config.n_layers)  # fp32 cache, per layer
    print(f"{name:15} {model.num_parameters():>10,} {model.blocks[0].mlp.up.out_features:>9} "
          f"{cache_numbers[name]:>26} {val_loss[name]:>9.3f}")
yardstick = abs(results["MHA", 1].final_val_loss - results["MHA", 0].final_val_loss)
print(f"MHA from seed 1: {results['MHA', 1].final_val_loss:.3f} — seed-to-seed difference {yardstick:.3f}; "
      f"range of the variants: {max(val_loss.values()) - min(val_loss.values()):.3f}")
for compressed, shared in (("MLA (d_c=48)", "GQA (2 groups)"), ("MLA (d_c=48)", "MQA")):
    gap = val_loss[compressed] - val_loss[shared]
    print(f"{compressed} − {shared} (caches {cache_numbers[compressed]} vs {cache_numbers[shared]}): {gap:+.3f} "
          f"= {abs(gap) / max(yardstick, 1e-9):.1f}× the seed-to-seed difference")

# %%
fig, ax = plt.subplots(figsize=(6.5, 4))
for name in configs:
    ax.scatter(cache_numbers[name], val_loss[name], s=50)
    ax.annotate(name, (cache_numbers[name], val_loss[name]), textcoords="offset points", xytext=(7, 4), fontsize=8)
ax.scatter(cache_numbers["MHA"], results["MHA", 1].final_val_loss, s=50, facecolors="none", edgecolors="tab:blue",
           label="MHA, second seed (noise yardstick)")
ax.set_xscale("log", base=2)
ax.set_title(f"Quality against cache size (TinyGPT, {target:,} parameters, {STEPS} steps)")
ax.set_xlabel("KV cache per token per layer (numbers, log scale)")
ax.set_ylabel("validation cross-entropy (nats / token)")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Read the plot against the printed yardstick. One seed-to-seed difference (two runs of one model) is a
# thin yardstick: gaps of a few times it are suggestive, not settled, and the ranking can change with the
# number of steps. What a run this small can show is the shape of the trade: how much validation loss each
# way of shrinking the cache gives up at one parameter budget, and whether compressing (MLA) or sharing
# (GQA) does better at the *same* cache size. The paper's claim that MLA matches or beats MHA while caching
# far less (§2.1, appendix D) is made for models of billions of parameters trained on trillions of tokens;
# a CPU notebook cannot test that.
#
# ## 7 · Generation from the latent cache
#
# The KV-cache machinery of chapter 03 works unchanged: `TinyGPT.new_cache` asks each layer for its cache,
# and an MLA layer returns a `LatentCache`. Cached generation must write exactly the tokens of uncached
# generation — in both inference paths.

# %%
mla_model = models["MLA (d_c=48)", 0]
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
# with DeepSeek-V2's attention sizes, bf16, batch 4, one new token per step over 1k–32k cached tokens: the
# naive path (decompress the whole cache every step) against the absorbed path (attend over the latent
# rows). Its committed results, from the card named in them:

# %%
bench = load_results("mla_decode")  # committed GPU results: package data, shipped in the wheel
env = bench["environment"]
print(f"{env['card']} | torch {env['torch']} | triton {env['triton']} | CUDA {env['cuda']} | batch {bench['batch']}, bf16")
print(f"{'context':>8} {'path':>16} {'ms / step':>10} {'MB moved':>9} {'GB/s':>6}")
for row in bench["rows"]:
    print(f"{row['context']:>8} {row['path']:>16} {row['graph_ms']:>10.3f} {row['bytes'] / 1e6:>9,.0f} "
          f"{row['achieved_GBps']:>6,.0f}")
for context, speedup in bench["speedup_absorbed_over_naive"].items():
    print(f"absorbed over naive at {int(context):>6,} tokens: " + ", ".join(
        f"{key.replace('_', ' ')} {value:.1f}×" for key, value in speedup.items()))
image = plt.imread(result_path("mla_decode.png"))
fig, ax = plt.subplots(figsize=(11, 4))
ax.imshow(image)
ax.axis("off")
plt.show()

# %% [markdown]
# ("graph": GPU time of the step replayed as a CUDA graph; "eager": Python launching each kernel; `mha_sdpa`
# is only the attention core of plain MHA with the same 128 heads, for scale.) Absorption pays several times
# over at long context: the naive path moves gigabytes per step rebuilding keys and values, the absorbed
# one a few hundred megabytes — at short context mostly the layer's own weights. But look at the absorbed
# path's bandwidth: it falls far below what the card can copy as the context grows, and its time grows
# linearly with context — the signature of too few thread blocks, each streaming the whole cache. SDPA's
# kernels spread work over query rows; with the 128 heads folded into the query axis, a batch of 4 has very
# few rows to spread. `attention_lab.kernels.latent_decode` is a Triton kernel for exactly this shape: split-K over the
# context, 16 heads per program sharing each loaded latent tile as keys *and* values, partial results merged
# by chapter 11's reduction kernel. It is tested against float64 under the Triton interpreter and compiled
# for sm_80/89/90 by the tests; `benchmarks/mla_decode.py` times it as `absorbed_triton` on a GPU, and its
# rows appear in the table above when the committed results include them.

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
best = min(val_loss, key=val_loss.get)
print(f"• Trained MHA: 90% of the stacked [W^K; W^V] energy in {energy_rank(torch.linalg.svdvals(stacked_kv(mha, 0)))} "
      f"of {base.d_model} directions (layer 0), against {energy_rank(torch.linalg.svdvals(stacked_kv(mha_at_init, 0)))} at init.")
print(f"• Naive and absorbed MLA agree to {(absorbed - naive).abs().max().item():.0e} in fp32 (decoupled RoPE); "
      f"cached == uncached tokens: naive {same_tokens['naive']}, absorbed {same_tokens['absorbed']}.")
print(f"• One precomputed matrix with RoPE on the content key instead: scores off by {error:.0%}.")
print(f"• DeepSeek-V2 sizes: MLA caches {per_token['MLA']} numbers per token per layer = GQA with {groups:.2f} groups; "
      f"vs DeepSeek 67B: {1 - v2_bf16_bytes / baseline_bytes:.1%} less in bf16, {1 - v2_6bit_bytes / baseline_bytes:.1%} "
      f"with the 6-bit cache (the paper's 93.3%).")
print(f"• TinyGPT at {target:,} parameters, {STEPS} steps (validation loss @ cached numbers per token per layer): "
      + ", ".join(f"{name} {val_loss[name]:.3f} @ {cache_numbers[name]}" for name in configs)
      + f"; lowest: {best}; the same MHA from another seed differs by {yardstick:.3f}.")
longest = str(max(int(c) for c in bench["speedup_absorbed_over_naive"]))
print(f"• {env['card']}: absorbed decode {bench['speedup_absorbed_over_naive'][longest]['graph']:.1f}× faster than "
      f"naive at {int(longest):,} tokens of context.")
