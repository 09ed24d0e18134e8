# %% [markdown]
# # 01 · Self-attention
#
# Every token of a sentence asks a question (its **query**), every token offers a label (its **key**)
# and a content (its **value**). Attention compares each query with every key, turns the scores into
# weights with a softmax, and returns the weighted average of the values:
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d}}\right) V$$
#
# (Vaswani et al., *Attention Is All You Need*, 2017). This chapter computes it by hand on a six-word
# sentence, explains the $\sqrt{d}$, splits it into heads, and measures what it costs.

# %%
import matplotlib.pyplot as plt
import torch

from attention_lab import MultiHeadAttention, attention_weights, scaled_dot_product_attention
from attention_lab.costs.timing import attention_cost_curve
from attention_lab.book.plots import heatmap
from attention_lab.toy_sentence import FEATURES, SENTENCE, softmax_peak, word_embeddings

torch.set_num_threads(1)  # small tensors: one CPU thread is as fast, and the time is the same on any machine

# %% [markdown]
# ## Embeddings
#
# A model first turns each token into a vector. To keep the numbers readable, our running example
# "THE CAT IS ON A CHAIR" uses hand-named features (plus a little noise) instead of learned ones:

# %%
x = word_embeddings()  # (N=6, F=8)
print("embeddings:", tuple(x.shape), "— one row per word, one column per feature")
heatmap(x, SENTENCE, FEATURES, title="Word embeddings of the running example", xlabel="feature",
        ylabel="word", cmap="Greens")
plt.show()

# %% [markdown]
# ## Q, K, V and the 6×6 attention table
#
# In a trained model Q, K and V come from three learned linear maps, $Q = XW_Q$, $K = XW_K$,
# $V = XW_V$. With $W_Q = W_K = W_V = I$ the scores are plain similarities between words, which makes
# the table easy to read: each row is one query word, each column one key word, and each row sums to 1.

# %%
q = k = v = x.view(1, 1, 6, -1)  # (B=1, H=1, N=6, d=8)
weights = attention_weights(q, k)[0, 0]  # (6, 6)
heatmap(weights, SENTENCE, SENTENCE, title="Self-attention weights, softmax(QKᵀ/√d), for THE CAT IS ON A CHAIR")
plt.show()
for i, word in enumerate(SENTENCE):
    others = weights[i].clone()
    others[i] = -1
    print(f"{word:>5} attends most to itself ({weights[i, i]:.2f}), then to {SENTENCE[others.argmax()]} ({others.max():.2f})")
print("row sums:", weights.sum(-1).numpy().round(6))

# %% [markdown]
# Articles look at articles, nouns at nouns: similar embeddings give large dot products. Learned
# projections let a model ask other questions ("where is my verb?") — that is what training finds.
# The output for each word is the weighted average of the value vectors:

# %%
context = scaled_dot_product_attention(q, k, v)  # (1, 1, 6, 8)
manual = weights @ x  # the same thing, spelled out
print("context shape:", tuple(context.shape), "| equals weights @ V:", torch.allclose(context[0, 0], manual, atol=1e-6))

# %% [markdown]
# ## Why divide by √d?
#
# If the entries of q and k are independent with unit variance, $q\cdot k$ is a sum of $d$ terms and
# its variance is $d$. Large scores push the softmax towards a one-hot vector: the largest weight goes to
# 1, the others to 0, and the gradient through the softmax vanishes. Dividing by $\sqrt{d}$ keeps the
# variance at 1 for every head size. Measured on random vectors (16 keys, 200 trials):

# %%
head_dims = [4, 16, 64, 256, 1024]
unscaled, scaled = softmax_peak(head_dims, scaled=False), softmax_peak(head_dims, scaled=True)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogx(head_dims, unscaled, "o-", label="softmax(q·k)")
ax.semilogx(head_dims, scaled, "s-", label="softmax(q·k / √d)")
ax.axhline(1 / 16, color="gray", ls=":", label="uniform (1/16)")
ax.set_title("Softmax saturation without the √d scale")
ax.set_xlabel("head dimension d")
ax.set_ylabel("mean largest weight (of 16 keys)")
ax.legend()
plt.show()
for d, u, s in zip(head_dims, unscaled, scaled):
    print(f"d={d:5d}: largest weight {u:.2f} unscaled vs {s:.2f} scaled")

# %% [markdown]
# ## Multi-head attention
#
# One softmax can only average one way. Multi-head attention runs $h$ attentions side by side on
# $d_{model}/h$-dimensional slices, each with its own projections, then concatenates the results and
# mixes them with an output projection. The library's `MultiHeadAttention` does exactly that (and, with
# `n_kv_heads < n_heads`, the multi-query and grouped-query variants of chapters 05–06). Shapes:

# %%
torch.manual_seed(0)
mha = MultiHeadAttention(d_model=8, n_heads=2, causal=False)
qh, kh, vh = mha.project_qkv(x.unsqueeze(0))  # x: (B=1, N=6, d_model=8)
print("x   ", (1, 6, 8), "-> q", tuple(qh.shape), "k", tuple(kh.shape), "v", tuple(vh.shape), "(B, heads, N, head_dim)")
print("out ", tuple(mha(x.unsqueeze(0)).shape), "(B, N, d_model)")
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for h, ax in enumerate(axes):
    heatmap(attention_weights(qh, kh)[0, h].detach(), SENTENCE, SENTENCE, ax=ax,
            title=f"head {h} (random, untrained projections)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Exercise: scaled dot-product attention
#
# Write `attention(q, k, v)` for tensors of shape `(B, H, N, d)` (keys may be more numerous than
# queries). No masks yet — that is chapter 02.

# %%
def attention(q, k, v):
    ### BEGIN SOLUTION
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5  # (B, H, Nq, Nk)
    weights = torch.softmax(scores, dim=-1)  # each query's weights over the keys
    return weights @ v  # (B, H, Nq, d)
    ### END SOLUTION


# %%
from attention_lab.exercises.ch01 import check_attention

check_attention(attention)

# %% [markdown]
# ## What does it cost?
#
# For $N$ tokens and head size $d$, $QK^\top$ is $N \times d$ by $d \times N$: $N^2 d$ multiply-adds,
# and so is multiplying the weights by $V$. Time grows like $O(N^2 d)$. Memory: the inputs and output
# take $O(Nd)$, but the score and weight matrices take $O(N^2)$ — and for long sequences that term wins.
# Measured on this machine with the reference implementation (4 heads, d = 64, fp32):

# %%
lengths = [128, 256, 512, 1024, 2048]
cost = attention_cost_curve(scaled_dot_product_attention, lengths, head_dim=64, n_heads=4, device=device)
fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 3.8))
ax_t.loglog(cost["n"], [s * 1e3 for s in cost["seconds"]], "o-", label="measured")
ax_t.loglog(cost["n"], [cost["seconds"][-1] * 1e3 * (n / lengths[-1]) ** 2 for n in lengths], ":", label="∝ N²")
ax_t.set_title("Attention time vs sequence length")
ax_t.set_xlabel("sequence length N (tokens)")
ax_t.set_ylabel("time (ms)")
ax_t.legend()
ax_m.loglog(cost["n"], [b / 2**20 for b in cost["peak_bytes"]], "o-", label="measured peak")
ax_m.loglog(cost["n"], [2 * 4 * n * n * 4 / 2**20 for n in lengths], ":", label="2 · H · N² · 4 bytes")
ax_m.set_title("Extra memory vs sequence length")
ax_m.set_xlabel("sequence length N (tokens)")
ax_m.set_ylabel("peak extra memory (MiB)")
ax_m.legend()
plt.tight_layout()
plt.show()
for n, s, b in zip(cost["n"], cost["seconds"], cost["peak_bytes"]):
    print(f"N={n:5d}: {s * 1e3:8.2f} ms, peak {b / 2**20:8.2f} MiB")
time_ratio = cost["seconds"][-1] / cost["seconds"][-2]
memory_ratio = cost["peak_bytes"][-1] / cost["peak_bytes"][-2]
print(f"doubling N from {lengths[-2]} to {lengths[-1]}: time x{time_ratio:.1f}, memory x{memory_ratio:.1f} (quadratic: x4)")

# %% [markdown]
# The peak memory sits on the $2 \cdot H \cdot N^2$ line: the score matrix and the weight matrix, both
# $N \times N$ per head, alive at the same moment. Chapters 08–10 remove that term entirely.
#
# ## Summary
#
# * Attention is `softmax(QKᵀ/√d)V`: each row of the weight table is one query's distribution over the keys.
# * Without $1/\sqrt{d}$ the softmax saturates as $d$ grows (measured above: the largest weight approaches 1);
#   with it the spread is the same for every head size.
# * Multi-head attention runs several such tables in parallel on slices of the model width.
# * Measured: doubling $N$ multiplied the extra memory by about four and the time by at least four — the
#   $N^2$ terms. (On a CPU the time can grow faster still once the $N \times N$ matrices no longer fit in
#   the processor's caches.) The memory followed the two $N \times N$ matrices exactly.
