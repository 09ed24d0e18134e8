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
# sentence, explains the $\sqrt{d}$, shows that attention by itself ignores word order (and how positions
# fix that), builds multi-head attention step by step, masks padding, drops weights at random in
# training, and measures what it all costs.

# %%
import matplotlib.pyplot as plt
import torch

from attention_lab import MultiHeadAttention, attention_weights, padding_mask, scaled_dot_product_attention
from attention_lab.book.plots import heatmap
from attention_lab.costs.timing import attention_cost_curve, growth_exponent
from attention_lab.positions import order_sensitivity, sinusoidal_positions
from attention_lab.seed_numbers import SELF_ATTENTION, SOURCE, WORDS, slides_self_attention_table
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
# projections let a model ask other questions ("where is my verb?") — that is what training finds
# (chapter 02 shows a trained head). The output for each word is the weighted average of the value vectors:

# %%
context = scaled_dot_product_attention(q, k, v)  # (1, 1, 6, 8)
manual = weights @ x  # the same thing, spelled out
print("context shape:", tuple(context.shape), "| equals weights @ V:", torch.allclose(context[0, 0], manual, atol=1e-6))

# %% [markdown]
# ### The lecture slides' table beside the book's
#
# This book was made from lecture slides that draw the same sentence's 6×6 table. The slides themselves are
# not reproduced here: the only numbers of theirs we have are the cells quoted in the book's issue #17,
# kept in `attention_lab.seed_numbers` and loaded below — every other cell of their table is unknown and
# left blank, not guessed. The slides computed their table from their own embeddings, which we do not have,
# so their cells need not equal ours; both tables must only be softmax rows (positive, each row summing to 1).

# %%
assert list(WORDS) == SENTENCE  # the slides' sentence is the running example
slides = torch.tensor([[float("nan") if w is None else w for w in row] for row in slides_self_attention_table()])
fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
heatmap(slides, SENTENCE, SENTENCE, ax=axes[0], cmap="Oranges", fmt="{:.3f}",
        title=f"The slides' table: the {len(SELF_ATTENTION)} quoted cells (others unknown)")
heatmap(weights, SENTENCE, SENTENCE, ax=axes[1], fmt="{:.3f}", title="The book's table (computed above)")
plt.tight_layout()
plt.show()
print(f"source of the slides' numbers: {SOURCE}")
for (query_word, key_word), slide_weight in SELF_ATTENTION.items():
    i, j = SENTENCE.index(query_word), SENTENCE.index(key_word)
    print(f"{query_word:>3} → {key_word:<3}: slides {slide_weight:.3f} | book {weights[i, j]:.3f}")

# %% [markdown]
# Chapter 02 comes back to the slides: their *causal* table has a fault that these quoted numbers reveal.
#
# ## Why divide by √d?
#
# If the entries of q and k are independent with unit variance, $q\cdot k$ is a sum of $d$ terms and
# its variance is $d$. Large scores push the softmax towards a one-hot vector: the largest weight goes to
# 1, the others to 0, and the gradient through the softmax vanishes. Dividing by $\sqrt{d}$ keeps the
# variance at 1 for every head size. Measured on random vectors:

# %%
head_dims, n_keys, trials = [4, 16, 64, 256, 1024], 16, 200
unscaled = softmax_peak(head_dims, scaled=False, n_keys=n_keys, trials=trials)
scaled = softmax_peak(head_dims, scaled=True, n_keys=n_keys, trials=trials)
print(f"{trials} random queries, each against {n_keys} random keys")
fig, ax = plt.subplots(figsize=(7, 4))
ax.semilogx(head_dims, unscaled, "o-", label="softmax(q·k)")
ax.semilogx(head_dims, scaled, "s-", label="softmax(q·k / √d)")
ax.axhline(1 / n_keys, color="gray", ls=":", label=f"uniform (1/{n_keys})")
ax.set_title("Softmax saturation without the √d scale")
ax.set_xlabel("head dimension d")
ax.set_ylabel(f"mean largest weight (of {n_keys} keys)")
ax.legend()
plt.show()
for d, u, s in zip(head_dims, unscaled, scaled):
    print(f"d={d:5d}: largest weight {u:.2f} unscaled vs {s:.2f} scaled")

# %% [markdown]
# ## Exercise: scaled dot-product attention
#
# Write `attention(q, k, v)` for tensors of shape `(B, H, N, d)` (keys may be more numerous than
# queries). No masks yet — padding masks come below, causal masks in chapter 02.

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
# ## Attention ignores word order
#
# Each output is a weighted sum over *all* keys, and a sum does not care in which order its terms come.
# So shuffle the words, and every word's output stays exactly what it was — only its place in the list
# moves with it. Attention is **permutation equivariant**: to it, "THE CAT IS ON A CHAIR" and "CHAIR A ON
# IS CAT THE" are the same bag of words.

# %%
def self_attention(tokens):
    """tokens (N, D) -> each token's output (N, D), with Q = K = V = tokens."""
    states = tokens.view(1, 1, tokens.shape[0], -1)  # (B=1, H=1, N, D)
    return scaled_dot_product_attention(states, states, states)[0, 0]  # (N, D)


order = torch.arange(len(SENTENCE)).flip(0)  # reversed
print("reordered sentence:", " ".join(SENTENCE[i] for i in order))
outputs, reordered_outputs = self_attention(x), self_attention(x[order])
print("outputs of the reordered sentence == the original outputs, reordered:",
      torch.allclose(reordered_outputs, outputs[order], atol=1e-6))
generator = torch.Generator().manual_seed(0)
random_orders = [torch.randperm(len(SENTENCE), generator=generator) for _ in range(100)]
worst = max(order_sensitivity(x, o) for o in random_orders)
print(f"over {len(random_orders)} random orders, the largest change of any word's output: {worst:.1e} (rounding)")

# %% [markdown]
# ## Positions
#
# A model that must tell "dog bites man" from "man bites dog" therefore adds to each token's embedding a
# vector that depends only on **where** it sits. The transformer's original choice (Vaswani et al., §3.5)
# is a fixed table of sines and cosines, one frequency per pair of columns:
#
# $$PE_{p,\,2i} = \sin\!\big(p / 10000^{2i/d}\big), \qquad PE_{p,\,2i+1} = \cos\!\big(p / 10000^{2i/d}\big)$$
#
# The first pair turns fast, the last barely at all, so every position gets its own vector. Other choices
# follow the same idea: TinyGPT (chapter 02) *learns* its table (`position_embedding`), and chapter 12's
# RoPE rotates q and k by their positions instead of adding anything (`attention_lab.positions`,
# `attention_lab.rope`).

# %%
table = sinusoidal_positions(64, 32)  # (positions, d_model)
fig, ax = plt.subplots(figsize=(10, 4.5))
image = ax.imshow(table.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
ax.set_title("Sinusoidal position vectors: one column per position")
ax.set_xlabel("position p (token index)")
ax.set_ylabel("dimension (pairs 2i, 2i+1: sin, cos)")
plt.colorbar(image, ax=ax, label="value")
plt.show()

positions = sinusoidal_positions(len(SENTENCE), x.shape[-1])  # (6, 8): added to whatever word comes first, second…
gap = max(order_sensitivity(x, o, positions) for o in random_orders)
with_positions = self_attention(x + positions), self_attention(x[order] + positions)
cat = SENTENCE.index("CAT")
cat_moved = (order == cat).nonzero().item()  # where CAT sits in the reversed sentence
print(f"with positions added, the largest change of a word's output over the same orders: {gap:.2f}")
print(f"CAT's output, normal vs reversed sentence: differs by {(with_positions[0][cat] - with_positions[1][cat_moved]).abs().max():.2f} "
      f"with positions, by {(outputs[cat] - reordered_outputs[cat_moved]).abs().max():.1e} without")

# %% [markdown]
# ## Exercise: sinusoidal positions
#
# Write `positional_encoding(n_positions, d_model)`: the float32 table `(n_positions, d_model)` of the formula
# above, positions counted from 0, `d_model` even.

# %%
def positional_encoding(n_positions, d_model):
    ### BEGIN SOLUTION
    position = torch.arange(n_positions, dtype=torch.float32).unsqueeze(1)  # (N, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float32)  # (d/2,): the even column indices
    angles = position / 10000 ** (two_i / d_model)  # (N, d/2)
    encoding = torch.zeros(n_positions, d_model)
    encoding[:, 0::2] = torch.sin(angles)  # even columns
    encoding[:, 1::2] = torch.cos(angles)  # odd columns
    return encoding
    ### END SOLUTION


# %%
from attention_lab.exercises.ch01 import check_sinusoidal_positions

check_sinusoidal_positions(positional_encoding)

# %% [markdown]
# ## Multi-head attention, step by step
#
# One softmax can only average one way. Multi-head attention runs $h$ attentions side by side, each on its
# own $d_{head} = d_{model}/h$ columns of the projected queries, keys and values, then concatenates the
# heads and mixes them with an output projection. The library's `MultiHeadAttention` does exactly this (and,
# with `n_kv_heads < n_heads`, the multi-query and grouped-query variants of chapters 05–06). Here is its
# forward pass one step at a time, on the running sentence, checked against the module at the end:

# %%
torch.manual_seed(0)
d_model, n_heads = x.shape[-1], 2
head_dim = d_model // n_heads
mha = MultiHeadAttention(d_model, n_heads, causal=False)
tokens = x.unsqueeze(0)  # (B=1, N=6, d_model=8)
batch, n, _ = tokens.shape

# 1. Three projections. nn.Linear keeps its weight as (out, in), so q = tokens @ W_qᵀ.
q_all = mha.q_proj(tokens)  # (B, N, d_model) -> (B, N, H·d_head)
k_all = mha.k_proj(tokens)  # (B, N, H·d_head)
v_all = mha.v_proj(tokens)  # (B, N, H·d_head)

# 2. Split the heads: each token's columns are H blocks of d_head; move the head axis before the tokens.
def split_heads(t):
    return t.view(batch, n, n_heads, head_dim).transpose(1, 2)  # (B, N, H·d_head) -> (B, N, H, d_head) -> (B, H, N, d_head)


q_heads, k_heads, v_heads = split_heads(q_all), split_heads(k_all), split_heads(v_all)

# 3. Attention in every head at once: softmax(q kᵀ / √d_head) v, batched over B and H.
per_head = scaled_dot_product_attention(q_heads, k_heads, v_heads)  # (B, H, N, d_head)

# 4. Merge: tokens back in front of the heads, then the heads side by side again.
merged = per_head.transpose(1, 2).reshape(batch, n, n_heads * head_dim)  # (B, H, N, d_head) -> (B, N, H, d_head) -> (B, N, H·d_head)

# 5. The output projection mixes what the heads found.
out = mha.out_proj(merged)  # (B, N, d_model)

for name, t in [("tokens", tokens), ("q_all", q_all), ("q_heads", q_heads), ("per_head", per_head),
                ("merged", merged), ("out", out)]:
    print(f"{name:>8}: {tuple(t.shape)}")
print("step by step == MultiHeadAttention(tokens):", torch.allclose(out, mha(tokens), atol=1e-6))

# %% [markdown]
# Why `view(B, N, H, d_head)` **then** `transpose`, and not `view(B, H, N, d_head)` directly? Both give the
# same shape, but `view` only reinterprets memory, in which each token's row comes whole. Number the entries
# of a tiny projection and see what "head 0" gets:

# %%
numbered = torch.arange(n * d_model).view(1, n, d_model)  # entry = token · d_model + column
right = numbered.view(1, n, n_heads, head_dim).transpose(1, 2)  # (1, H, N, d_head)
wrong = numbered.view(1, n_heads, n, head_dim)  # same shape, wrong entries
print("head 0, token 1 — right:", right[0, 0, 1].tolist(), f"(token 1's columns 0-{head_dim - 1})")
print("head 0, token 1 — view alone:", wrong[0, 0, 1].tolist(), f"(token 0's columns {head_dim}-{2 * head_dim - 1}: head 1's part of another token)")

# %% [markdown]
# Each head has its own table of weights. With random (untrained) projections the two heads below already
# differ; chapter 02 shows what a *trained* head looks at.

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 5))
for h, ax in enumerate(axes):
    heatmap(attention_weights(q_heads, k_heads)[0, h].detach(), SENTENCE, SENTENCE, ax=ax,
            title=f"head {h} (random, untrained projections)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Exercise: multi-head attention
#
# Write the forward pass of `MultiHeadAttention` (no mask, no bias) from its four weight matrices:
# `x` is `(B, N, d_model)`; `w_q`, `w_k`, `w_v`, `w_o` are `(d_model, d_model)` `nn.Linear` weights, `(out,
# in)`; `n_heads` divides `d_model`. Return `(B, N, d_model)`. The checker loads the same weights into the
# library's `MultiHeadAttention` and compares on odd shapes.

# %%
def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads):
    ### BEGIN SOLUTION
    batch, n, d_model = x.shape
    head_dim = d_model // n_heads
    q = (x @ w_q.T).view(batch, n, n_heads, head_dim).transpose(1, 2)  # (B, H, N, head_dim)
    k = (x @ w_k.T).view(batch, n, n_heads, head_dim).transpose(1, 2)  # (B, H, N, head_dim)
    v = (x @ w_v.T).view(batch, n, n_heads, head_dim).transpose(1, 2)  # (B, H, N, head_dim)
    scores = q @ k.transpose(-2, -1) / head_dim ** 0.5  # (B, H, N, N)
    context = torch.softmax(scores, dim=-1) @ v  # (B, H, N, head_dim)
    merged = context.transpose(1, 2).reshape(batch, n, d_model)  # (B, N, H·head_dim)
    return merged @ w_o.T  # (B, N, d_model)
    ### END SOLUTION


# %%
from attention_lab.exercises.ch01 import check_multi_head_attention

check_multi_head_attention(multi_head_attention)

# %% [markdown]
# ## Padding masks
#
# A batch holds sentences of different lengths; the short ones are padded to the longest with filler
# tokens. No real token may attend to the filler, so each sequence gets a **key-padding mask**: key $j$ of
# sequence $b$ is real when $j < \text{length}_b$. `padding_mask(lengths, N)` builds it as a bool
# `(B, 1, 1, N)` tensor (`True` = may attend), which broadcasts over heads and queries. Applied before the
# softmax — scores of padding keys set to $-\infty$ — it is d2l's *masked softmax* around valid lengths:
# each row is renormalised over the real keys only.

# %%
short = ["A", "CAT"]
n_max = len(SENTENCE)
batch_tokens = torch.zeros(2, n_max, x.shape[-1])  # (B=2, N=6, D): sentence 1 padded with zero vectors
batch_tokens[0] = x
batch_tokens[1, : len(short)] = word_embeddings(short)
lengths = torch.tensor([n_max, len(short)])
mask = padding_mask(lengths, n_max)  # (2, 1, 1, 6): one row of real keys per sequence
states = batch_tokens.unsqueeze(1)  # (B, H=1, N, D)
unmasked = attention_weights(states, states)[1, 0]  # sentence 1's table, padding included
masked = attention_weights(states, states, mask=mask)[1, 0]  # (B, 1, 1, Nk) broadcasts over the queries
labels = short + ["<pad>"] * (n_max - len(short))
fig, axes = plt.subplots(1, 2, figsize=(13, 5))
heatmap(unmasked, labels, labels, ax=axes[0], title="'A CAT' padded, no mask: weight leaks to <pad>")
heatmap(masked, labels, labels, ax=axes[1], title="With the padding mask: <pad> keys get 0")
plt.tight_layout()
plt.show()
print("mask", tuple(mask.shape), "for lengths", lengths.tolist(), "\n", mask[:, 0, 0].int())
print(f"weight the real queries put on <pad>: {unmasked[: len(short), len(short):].sum(-1).numpy().round(3)} "
      f"without the mask, {masked[: len(short), len(short):].sum(-1).numpy().round(3)} with it")
print("rows still sum to 1:", masked.sum(-1).numpy().round(6))

# %% [markdown]
# The padded *queries* (the `<pad>` rows) still get outputs; they are simply never used — the loss and the
# next layers ignore them, so only the keys need masking.
#
# ## Exercise: the masked softmax over valid lengths
#
# Write `valid_length_softmax(scores, lengths)`: `scores` is `(B, H, Nq, Nk)`, `lengths` an int64 `(B,)`;
# key `j` of sequence `b` is padding when `j >= lengths[b]` and gets weight 0, each row renormalised over
# the real keys. A sequence of length 0 (all padding) gets all-zero weights.

# %%
def valid_length_softmax(scores, lengths):
    ### BEGIN SOLUTION
    real = torch.arange(scores.shape[-1]) < lengths[:, None]  # (B, Nk): key j is real when j < length
    real = real[:, None, None, :]  # (B, 1, 1, Nk): broadcasts over heads and queries
    weights = torch.softmax(scores.masked_fill(~real, float("-inf")), dim=-1)
    return weights.nan_to_num(0.0)  # a sequence with no real key: zeros, not NaN
    ### END SOLUTION


# %%
from attention_lab.exercises.ch01 import check_valid_length_softmax

check_valid_length_softmax(valid_length_softmax)

# %% [markdown]
# ## Attention dropout
#
# In training, many transformers (the original one, GPT-2, BERT) also apply **dropout to the attention
# weights**: each weight is zeroed with probability $p$ and the survivors are divided by $1-p$, so every
# weight keeps its expected value while no single key can be relied on. A row then no longer sums to 1 —
# only on average. At evaluation (`model.eval()`) dropout is the identity and the weights are exactly the
# softmax. (PyTorch's `F.scaled_dot_product_attention` takes it as `dropout_p`; the library's
# `MultiHeadAttention` uses none, and TinyGPT's `dropout` acts on the sublayer outputs.)

# %%
dropout = torch.nn.Dropout(p=0.25)
dropout.train()
torch.manual_seed(0)
one_draw = dropout(weights)
draws = torch.stack([dropout(weights) for _ in range(4000)])  # (draws, 6, 6)
dropout.eval()
heatmap(one_draw, SENTENCE, SENTENCE, title=f"One training draw of dropout(p={dropout.p}) on the attention table")
plt.show()
print(f"p = {dropout.p}: weights kept in this draw {(one_draw > 0).float().mean():.2f}, survivors scaled by "
      f"1/(1-p) = {1 / (1 - dropout.p):.3f}")
print("row sums in this draw:", one_draw.sum(-1).numpy().round(3))
print(f"mean over {len(draws)} draws vs the weights: largest difference {(draws.mean(0) - weights).abs().max():.3f}")
print("in eval mode dropout returns the weights unchanged:", torch.equal(dropout(weights), weights))

# %% [markdown]
# ## What does it cost?
#
# For $N$ tokens and head size $d$, $QK^\top$ is $N \times d$ by $d \times N$: $N^2 d$ multiply-adds,
# and so is multiplying the weights by $V$. Time grows like $O(N^2 d)$. Memory: the inputs and output
# take $O(Nd)$, but the score and weight matrices take $O(N^2)$ — and for long sequences that term wins.
# Measured on this machine with the reference implementation, on one CPU thread, each time the fastest of
# several runs (interference only ever adds time), at lengths where the $N^2$ work dwarfs the fixed cost
# of a call; the exponent comes from a least-squares fit of $\log t$ against $\log N$:

# %%
lengths, n_heads_timed, head_dim_timed = [256, 512, 1024, 2048], 4, 64
cost = attention_cost_curve(scaled_dot_product_attention, lengths, head_dim=head_dim_timed, n_heads=n_heads_timed,
                            device=device, repeats=7)
time_exponent = growth_exponent(cost["n"], cost["seconds"])
memory_exponent = growth_exponent(cost["n"], cost["peak_bytes"])
fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 4.5))
ax_t.loglog(cost["n"], [s * 1e3 for s in cost["seconds"]], "o-", base=2, label="measured (fastest run)")
ax_t.loglog(cost["n"], [cost["seconds"][0] * 1e3 * (n / lengths[0]) ** 2 for n in lengths], ":", base=2,
            label="∝ N² (from the first point)")
ax_t.set_title(f"Attention time vs sequence length (fit: ∝ N^{time_exponent:.2f})")
ax_t.set_xlabel("sequence length N (tokens)")
ax_t.set_ylabel("time (ms)")
ax_t.legend()
ax_m.loglog(cost["n"], [b / 2**20 for b in cost["peak_bytes"]], "o-", base=2, label="measured peak")
ax_m.loglog(cost["n"], [2 * n_heads_timed * n * n * 4 / 2**20 for n in lengths], ":", base=2,
            label=f"2 · H · N² · 4 bytes (H = {n_heads_timed})")
ax_m.set_title(f"Extra memory vs sequence length (fit: ∝ N^{memory_exponent:.2f})")
ax_m.set_xlabel("sequence length N (tokens)")
ax_m.set_ylabel("peak extra memory (MiB)")
ax_m.legend()
plt.tight_layout()
plt.show()
print(f"{n_heads_timed} heads, d = {head_dim_timed}, {torch.get_default_dtype()}, {torch.get_num_threads()} thread(s)")
for n, s, b in zip(cost["n"], cost["seconds"], cost["peak_bytes"]):
    print(f"N={n:5d}: {s * 1e3:8.2f} ms, peak {b / 2**20:8.2f} MiB")
print(f"fitted growth: time ∝ N^{time_exponent:.2f}, memory ∝ N^{memory_exponent:.2f} (quadratic: N^2)")

# %% [markdown]
# The peak memory sits on the $2 \cdot H \cdot N^2$ line: the score matrix and the weight matrix, both
# $N \times N$ per head, alive at the same moment. Chapters 08–10 remove that term entirely. The time
# follows $N^2$ too; on a CPU it can grow a little faster once the $N \times N$ matrices no longer fit in
# the processor's caches.
#
# ## Summary
#
# * Attention is `softmax(QKᵀ/√d)V`: each row of the weight table is one query's distribution over the keys.
#   The slides' quoted cells were loaded beside the book's table.
# * Without $1/\sqrt{d}$ the softmax saturates as $d$ grows (the largest weight approaches 1); with it the
#   spread is the same for every head size.
# * Attention alone ignores word order (reordering the words only reorders the outputs); adding position
#   vectors makes the order matter.
# * Multi-head attention = project, split into heads (`view` then `transpose`), attend per head, merge
#   (`transpose` then `reshape`), project again. Padding masks keep real tokens from attending to filler;
#   attention dropout zeroes weights at random in training only.
# * What doubling $N$ did on this machine, measured above:

# %%
for (n0, n1), (t0, t1), (b0, b1) in zip(zip(lengths, lengths[1:]), zip(cost["seconds"], cost["seconds"][1:]),
                                        zip(cost["peak_bytes"], cost["peak_bytes"][1:])):
    print(f"N {n0:4d} -> {n1:4d}: time x{t1 / t0:.1f}, memory x{b1 / b0:.2f}")
print(f"over the whole range: time ∝ N^{time_exponent:.2f}, memory ∝ N^{memory_exponent:.2f}")
