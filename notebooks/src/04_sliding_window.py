# %% [markdown]
# # 04 · Sliding-window attention
#
# Full causal attention lets token $N$ look at all $N$ tokens before it: $N^2/2$ scores for a sequence
# and a KV cache that grows without end (chapter 03). **Sliding-window attention** lets each token see
# only the last $w$ tokens — itself included. Each layer then costs $O(N w)$ and the cache needs only
# $w$ slots, however long the text. Longformer (Beltagy et al., 2020) combined such windows with a few
# global tokens; Mistral 7B (Jiang et al., 2023) uses a window of 4,096 tokens in every layer and a
# rolling-buffer cache. Information from further back still arrives, one window per layer.
#
# This chapter builds the band mask, checks the lecture slides' window table against it, builds the
# rolling-buffer cache (and proves it gives exactly the full-attention result), measures the receptive
# field of stacked layers and the memory, and then asks what a window costs in quality — on the story corpus
# and on an associative-recall task, over several seeds.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from attention_lab import MultiHeadAttention, TinyGPT, TinyGPTConfig, attention_weights, quality, sliding_window_mask
from attention_lab import seed_numbers as slides
from attention_lab.book.plots import heatmap
from attention_lab.book.results import load
from attention_lab.caches.rolling import RollingKVCache
from attention_lab.caches.sizes import GiB, PUBLISHED_MODELS, format_bytes
from attention_lab.generate import generate
from attention_lab.receptive_field import input_influence, receptive_field
from attention_lab.toy_sentence import SENTENCE, word_embeddings

if device.type == "cpu":
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and steadier on a shared CPU

# %% [markdown]
# ## The band mask
#
# With a window of $w$ keys *including the query itself*, query $i$ may attend to key $j$ when
#
# $$i - w < j \le i .$$
#
# The mask is the causal triangle with everything older than $w-1$ steps cut off: a band along the
# diagonal. The table for our running sentence with $w = 3$:

# %%
window = 3
band = sliding_window_mask(6, window)  # (6, 6) bool, True = may attend
x = word_embeddings().view(1, 1, 6, -1)  # (B=1, H=1, N=6, d=8), Q = K = V = X as in chapters 01-02
weights = attention_weights(x, x, window=window)[0, 0]  # (6, 6)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
heatmap(band.int(), SENTENCE, SENTENCE, title=f"Band mask, w={window} (1 = may attend)", fmt="{:.0f}",
        ax=axes[0], cmap="Greys")
heatmap(weights, SENTENCE, SENTENCE, title=f"Sliding-window attention weights, w={window}", ax=axes[1])
plt.tight_layout()
plt.show()
for i, word in enumerate(SENTENCE):
    seen = [SENTENCE[j] for j in range(6) if band[i, j]]
    print(f"{word:>5} sees {len(seen)} key(s): {' '.join(seen)}")

# %% [markdown]
# Each row still sums to 1: the softmax renormalises over the keys inside the window, exactly as the
# causal softmax did over the past. Rows 0 and 1 see fewer than $w$ keys only because the sentence starts
# there.
#
# **Cost.** A causal layer computes $N(N+1)/2$ useful scores; a window computes at most $w$ per query.
# For Mistral's $w = 4096$ at $N = 32{,}768$:

# %%
def band_scores(n: int, w: int) -> int:
    """Allowed (query, key) pairs of a window-w causal band over n tokens: sum over i of min(i + 1, w)."""
    w = min(w, n)
    return w * (w + 1) // 2 + (n - w) * w


assert band_scores(11, 3) == sliding_window_mask(11, 3).sum().item()  # the formula counts the mask's True cells
n, w = 32768, PUBLISHED_MODELS["Mistral-7B"].window
causal_scores = n * (n + 1) // 2
print(f"N={n:,}, w={w:,}: causal {causal_scores:,} scores, window {band_scores(n, w):,} "
      f"({causal_scores / band_scores(n, w):.1f}× fewer)")

# %% [markdown]
# ## The slides' window table: a softmax taken twice
#
# The lecture slides (seed), as quoted in issue #17, draw the same sentence with the same window. For the CAT
# row the issue quotes what went into it — the slides' own unmasked weights of the keys CAT's window holds (THE
# and CAT) — and what came out. `attention_lab.seed_numbers` holds exactly those numbers and nothing else; we
# load them as data and recompute the row two ways: by taking a softmax of the weights again, and by dividing
# the kept weights by their sum.

# %%
print(f"source: {slides.SOURCE}; window w={slides.WINDOW}")
for word, printed in slides.WINDOW_ROWS.items():
    keys = slides.window_keys(word, slides.WINDOW)  # the words this row's window holds, oldest first
    kept = slides.window_row(word, slides.WINDOW)  # the slides' unmasked weights of those keys
    twice = slides.softmax(kept)  # a second softmax over weights that already are a softmax
    right = slides.renormalised(kept)  # the kept weights divided by their sum
    truncated = tuple(math.floor(x * 1000) / 1000 for x in twice)
    print(f"row {word}: keys {' '.join(keys)}, the slides' unmasked weights {kept} (sum {sum(kept):.3f})")
    print(f"  the slides' window row         {' / '.join(f'{x:.3f}' for x in printed)}")
    print(f"  softmax(weights), a second one {' / '.join(f'{x:.4f}' for x in twice)}  -> cut to three digits "
          f"{' / '.join(f'{x:.3f}' for x in truncated)}: the slides' row exactly: {truncated == printed}")
    print(f"  weights / their sum (correct)  {' / '.join(f'{x:.3f}' for x in right)}  (sums to {sum(right):.3f})")
for word in slides.WORDS:
    try:
        row = slides.renormalised(slides.window_row(word, slides.WINDOW))
        print(f"corrected row {word:>5}: " + " / ".join(f"{k}→{x:.3f}" for k, x in
                                                  zip(slides.window_keys(word, slides.WINDOW), row)))
    except ValueError as missing:
        print(f"corrected row {word:>5}: not computable — {missing}")

# %% [markdown]
# The slides' row is reproduced digit for digit by the second softmax (cut, not rounded), so that is how it was
# made — and it is wrong. A window is a mask, and a masked softmax over the keys $j$ in the window $W_i$ is
#
# $$a_{ij} = \frac{e^{s_{ij}}}{\sum_{k \in W_i} e^{s_{ik}}} = \frac{p_{ij}}{\sum_{k \in W_i} p_{ik}},
# \qquad p_{ij} = \frac{e^{s_{ij}}}{\sum_{k} e^{s_{ik}}} :$$
#
# the numerators $e^{s_{ij}}$ do not depend on which other keys are present, so starting from the unmasked
# weights $p$ the right step is to divide the kept ones by their sum. A second softmax computes
# $e^{p_{ij}} / \sum_{k \in W_i} e^{p_{ik}}$ instead — exponentials of probabilities, $p \in [0, 1]$, which
# differ little, so the row is pushed towards uniform: the slides' CAT row is nearly an even split where the
# correct one gives CAT clearly more weight than THE. Rows whose weights the issue does not quote stay unknown
# (printed). The same check on the book's own table — the unmasked weights of the sentence's embeddings, each
# window's keys kept, against the masked softmax of the band-mask section:

# %%
unmasked = attention_weights(x, x)[0, 0]  # (6, 6) softmax over all six keys, no mask
kept_weights = unmasked * band  # the window's keys keep their unmasked weight, the others 0
divided = kept_weights / kept_weights.sum(-1, keepdim=True)
softmaxed_again = torch.softmax(unmasked.masked_fill(~band, float("-inf")), dim=-1)
print(f"divided by the row sum vs the masked softmax: max |difference| = {(divided - weights).abs().max():.1e}")
print(f"a second softmax       vs the masked softmax: max |difference| = {(softmaxed_again - weights).abs().max():.3f}")

# %% [markdown]
# ## Exercise: the band mask
#
# Build the `(n, n)` boolean mask, `True` where query $i$ may see key $j$. The classic slip is an
# off-by-one that lets each query see $w+1$ keys.

# %%
def band_mask(n, window):
    """(n, n) bool: True where i - window < j <= i."""
    ### BEGIN SOLUTION
    query = torch.arange(n).unsqueeze(1)  # (n, 1)
    key = torch.arange(n).unsqueeze(0)  # (1, n)
    return (key <= query) & (key > query - window)
    ### END SOLUTION


# %%
from attention_lab.exercises.ch04 import check_band_mask

check_band_mask(band_mask)

# %% [markdown]
# Two limits pin the definition down. $w = 1$: each token sees only itself, so attention returns its own
# value vector. $w \ge N$: the band covers the whole triangle — plain causal attention.

# %%
torch.manual_seed(0)
q, k, v = torch.randn(3, 1, 4, 11, 16).unbind(0)  # each (B=1, H=4, N=11, D=16)
print("w=1 returns each token's own value:", torch.allclose(attention_weights(q, k, window=1) @ v, v))
print("w=11 (= N) equals causal attention:",
      torch.equal(attention_weights(q, k, window=11), attention_weights(q, k, causal=True)))

# %% [markdown]
# ## A rolling-buffer cache
#
# Decoding with a window, the newest token needs only the keys and values of the last $w$ positions.
# So the cache keeps $w$ slots and writes position $p$ into slot $p \bmod w$, overwriting the position
# $p - w$ that has just left every future window. Here is `RollingKVCache` with $w = 4$, one token at a
# time (each cell is the position a slot holds; −1 = empty):

# %%
rolling = RollingKVCache(batch_size=1, window=4, n_kv_heads=1, head_dim=1)
print("after token p | slots 0 1 2 3 hold positions | the next query reads (oldest first)")
for p in range(10):
    token = torch.full((1, 1, 1, 1), float(p))  # (B, Hkv, 1, D): the key/value is just its position
    rolling.update(token, token)
    kept = min(rolling.length, rolling.window - 1)
    reads = rolling.slot_of(torch.arange(rolling.length - kept, rolling.length))
    print(f"{p:>13} | {str(rolling.slot_positions().tolist()):>27} | slots {reads.tolist()} + itself")

# %% [markdown]
# The slots are out of order once the buffer wraps (after token 5 they hold positions 4, 5, 2, 3). The
# attention itself does not care about order — a softmax over a set of keys is the same in any order —
# but our `scaled_dot_product_attention` applies the window by *position*, so `RollingKVCache.update`
# hands back the keys re-ordered oldest first: the $w-1$ positions before the new tokens, then the new
# tokens themselves. (Production kernels read the slots in place and mask by stored position instead.)
#
# ## Exercise: the rolling read order
#
# The cache has seen `length` tokens; the next token (position `length`) needs the
# `min(length, window - 1)` positions just before it. Return their slots, oldest first.

# %%
def read_order(length, window):
    """Slots (int64) of positions length-kept … length-1, kept = min(length, window-1), oldest first."""
    ### BEGIN SOLUTION
    kept = min(length, window - 1)
    return torch.arange(length - kept, length) % window
    ### END SOLUTION


# %%
from attention_lab.exercises.ch04 import check_read_order

check_read_order(read_order)

# %% [markdown]
# ## The rolling cache gives exactly the full-attention result
#
# A layer with a small window: run a sequence through it in one pass with the band mask, and again
# through the rolling cache — a prefill longer than the window followed by single tokens, wrapping around
# the cache's slots several times (the sizes are printed).

# %%
torch.manual_seed(0)
layer = MultiHeadAttention(d_model=32, n_heads=4, n_kv_heads=2, window=4).eval()
x = torch.randn(2, 23, 32)  # (B, N, d_model)
cache = layer.make_cache(batch_size=2, max_len=23, device="cpu", dtype=torch.float32)
print(f"cache: {type(cache).__name__} with {cache.slots} slots, buffers {tuple(cache.keys.shape)}")
with torch.no_grad():
    full = layer(x)  # (2, 23, 32): band mask over the whole sequence
    pieces = [layer(x[:, :9], cache=cache)] + [layer(x[:, t:t + 1], cache=cache) for t in range(9, 23)]
rolled = torch.cat(pieces, dim=1)
print(f"window {layer.window}: a prefill of {pieces[0].shape[1]} tokens, then {len(pieces) - 1} single tokens")
print(f"max |rolling − full| = {(rolled - full).abs().max().item():.1e} over {cache.length} tokens; "
      f"slots now hold positions {cache.slot_positions().tolist()}")

# %% [markdown]
# The same holds for a whole model: a windowed TinyGPT (untrained: the equality does not depend on the
# weights) generates with the rolling cache and without any cache, from a prompt longer than its window, and we
# compare the tokens and every step's logits (`tests/test_ch04_sliding_window.py` checks odd lengths, several
# windows, $w = 1$ and $w \ge N$).

# %%
torch.manual_seed(0)
gen_model = TinyGPT(TinyGPTConfig(vocab_size=32, context_length=40, d_model=32, n_layers=2, n_heads=4,
                                  window=4)).eval()
prompt = torch.randint(32, (1, 9))  # (B=1, 9 tokens): longer than the window
with_cache, cached_logits = generate(gen_model, prompt, 30, use_cache=True, return_logits=True)
without_cache, uncached_logits = generate(gen_model, prompt, 30, use_cache=False, return_logits=True)
print(f"window {gen_model.config.window}, {with_cache.shape[1]} tokens: identical tokens with and without the "
      f"rolling cache: {torch.equal(with_cache, without_cache)}; "
      f"max |logit difference| {(cached_logits - uncached_logits).abs().max():.1e}")

# %% [markdown]
# ## The receptive field grows by $w - 1$ per layer
#
# One layer mixes positions $p-w+1 \ldots p$ into position $p$. The next layer mixes those mixtures, so
# after $L$ layers the last position depends on the last $L(w-1)+1$ input positions. We measure it: the
# gradient of the last position's hidden state, after each layer, with respect to every input position of
# an (untrained) 6-layer TinyGPT with $w = 4$ — exactly zero where no path exists.

# %%
n_layers, rf_window, n_tokens = 6, 4, 40
torch.manual_seed(0)
rf_model = TinyGPT(TinyGPTConfig(vocab_size=32, context_length=n_tokens, d_model=32, n_layers=n_layers,
                                 n_heads=4, window=rf_window))
influence = input_influence(rf_model, n_tokens)  # (layers, N): gradient norm per input position
measured_field = (influence > 0).sum(dim=1).tolist()
predicted_field = [receptive_field(layer + 1, rf_window, n_tokens) for layer in range(n_layers)]
fig, axes = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
shown = np.log10(influence.numpy() + 1e-12)
image = axes[0].imshow(np.where(influence.numpy() > 0, shown, np.nan), aspect="auto", cmap="viridis")
axes[0].set_yticks(range(n_layers), labels=[str(layer + 1) for layer in range(n_layers)])
axes[0].set_title(f"Influence of each input on the last position (w={rf_window}); blank = exactly 0")
axes[0].set_xlabel("input position")
axes[0].set_ylabel("after layer")
plt.colorbar(image, ax=axes[0], label="log10 ‖∂h_last / ∂x_j‖")
axes[1].plot(range(1, n_layers + 1), measured_field, "o", markersize=8, label="measured (non-zero gradients)")
axes[1].plot(range(1, n_layers + 1), predicted_field, "-", label="L·(w−1) + 1")
axes[1].set_title("Receptive field")
axes[1].set_xlabel("layers L")
axes[1].set_ylabel("input positions that matter (tokens)")
axes[1].grid(alpha=0.3)
axes[1].legend()
plt.tight_layout()
plt.show()
print("measured :", measured_field)
print("predicted:", predicted_field)
mistral = PUBLISHED_MODELS["Mistral-7B"]
print(f"Mistral-7B: {mistral.n_layers} layers × window {mistral.window:,} -> a theoretical reach of "
      f"{receptive_field(mistral.n_layers, mistral.window):,} tokens")

# %% [markdown]
# ## Memory: flat at $w$
#
# The full cache needs a slot for every token; the rolling cache never more than $w$. Measured on
# TinyGPT's actual cache tensors after a prefill of $N$ tokens, and from the chapter-03 formula for
# Mistral 7B with and without its window:

# %%
mem_window = 16
sizes = [16, 32, 64, 128, 256, 512]
measured_bytes = {}
for name, w in (("full attention", None), (f"window w={mem_window}", mem_window)):
    torch.manual_seed(0)
    mem_model = TinyGPT(TinyGPTConfig(vocab_size=32, context_length=max(sizes), d_model=64, n_layers=2,
                                      n_heads=4, window=w)).eval()
    measured_bytes[name] = []
    for size in sizes:
        mem_cache = mem_model.new_cache(batch_size=1, max_len=size)
        with torch.no_grad():
            mem_model(torch.zeros(1, size, dtype=torch.long), cache=mem_cache)  # prefill N tokens
        measured_bytes[name].append(mem_cache.nbytes)
contexts = [2**i for i in range(10, 18)]
full_mistral = [PUBLISHED_MODELS["Llama-3-8B"].cache_bytes(c) / GiB for c in contexts]  # same shape, no window
windowed_mistral = [mistral.cache_bytes(c) / GiB for c in contexts]
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for name, values in measured_bytes.items():
    axes[0].plot(sizes, [b / 1024 for b in values], "o-", label=name)
axes[0].set_title("TinyGPT KV cache after N tokens (fp32, measured)")
axes[0].set_xlabel("tokens in the sequence, N")
axes[0].set_ylabel("cache size (KiB)")
shape = PUBLISHED_MODELS["Llama-3-8B"]
axes[1].plot(contexts, full_mistral, "o-", label=f"{shape.n_layers} layers, {shape.n_kv_heads} KV heads, full attention")
axes[1].plot(contexts, windowed_mistral, "s-", label=f"same with window {mistral.window:,} (Mistral 7B)")
axes[1].set_xscale("log", base=2)
axes[1].set_title("KV cache of one sequence (fp16, formula)")
axes[1].set_xlabel("context length (tokens)")
axes[1].set_ylabel("cache size (GiB)")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend()
plt.tight_layout()
plt.show()
for name, values in measured_bytes.items():
    print(f"{name:>16}: " + ", ".join(f"N={s}: {format_bytes(b)}" for s, b in zip(sizes, values)))
print(f"Mistral 7B at {contexts[-1]:,} tokens: {format_bytes(mistral.cache_bytes(contexts[-1]))} with the window, "
      f"{format_bytes(PUBLISHED_MODELS['Llama-3-8B'].cache_bytes(contexts[-1]))} without")

# %% [markdown]
# (Llama-3-8B has exactly Mistral 7B's cache shape — 32 layers, 8 KV heads of 128 — so it stands in for
# "Mistral without a window".)
#
# ## What a window costs in quality
#
# A window throws information away; the question is how much that costs, and where. One short training run
# cannot say: early in training a window *helps* — it tells an untrained model where to look — and the
# ordering turns around later (the learning curves below show where). So the answer comes from a study run
# offline with the code this chapter uses live (`python benchmarks/quality_studies.py ch04`; the study itself
# is `attention_lab.quality.STUDIES["ch04"]`) and committed as JSON: the chapter's TinyGPT trained from
# several seeds with full attention and with windows of several sizes, on two tasks:
#
# * **corpus** — next-token prediction on the story corpus, scored by validation cross-entropy (nats per
#   token, lower is better);
# * **associative recall** (`attention_lab.recall`) — facts "$k = v$", one token each, and later questions
#   "what was $k$?"; the answer is scored by the distance $d$ from the fact to its question. A model that
#   cannot see the fact can only guess: chance is one over the number of values (printed).
#
# A window adds and removes no weight, so every variant has the same parameters (printed). Each number is a
# mean ± sd over the seeds, and every conclusion is printed from those numbers: a difference counts only when
# it is at least `quality.RESOLVED_RATIO` times the seed-to-seed spread (printed with it).

# %%
report = load("quality_ch04")
recall_chance = report["objectives"]["recall"]["task"]["chance"]
print(quality.study_header(report))
print(f"a difference counts at {quality.RESOLVED_RATIO:g}× the seed-to-seed spread or more; "
      f"recall chance = {recall_chance:.4f}")
print()
print(quality.study_table(report))
print()
print("Conclusions, every window against full attention:")
for line in quality.study_conclusion_lines(report):
    print(" *", line)

# %% [markdown]
# ### Is the budget long enough?
#
# A comparison means something only at a budget where the ordering no longer changes. `quality.stable_since`
# finds the first recorded step from which the ordering of the variants' means over seeds stays as it ends
# (the dotted line); the bands are ± one sd over the seeds.

# %%
fig, axes = plt.subplots(1, 2, figsize=(14, 5.8))
names = {"corpus": "Corpus: validation loss", "recall": "Associative recall: held-out accuracy"}
for ax, objective in zip(axes, report["objectives"]):
    quality.plot_learning_curves(report, objective, ax=ax)
    since = quality.stable_since(report, objective)
    ax.axvline(since, color="gray", ls=":", lw=2, label="ordering stable from here on")
    ax.get_legend().remove()
    ax.set_title(f"{names[objective]}, mean ± sd over {len(report['seeds'])} seeds\n"
                 f"(dotted: the ordering is stable from step {since:,})", fontsize=13)
    ax.tick_params(labelsize=11)
    ax.xaxis.label.set_fontsize(12)
    ax.yaxis.label.set_fontsize(12)
    steps, orderings = quality.ordering_by_step(report, objective)
    print(f"{objective}: best first at step {steps[0]:,}: {' > '.join(orderings[0])}; at the end (step "
          f"{steps[-1]:,}): {' > '.join(orderings[-1])} — unchanged from step {since:,}")
axes[0].set_yscale("log")
axes[0].yaxis.set_major_formatter(plt.FormatStrFormatter("%.1f"))
axes[0].yaxis.set_minor_formatter(plt.FormatStrFormatter("%.1f"))
handles, labels = axes[0].get_legend_handles_labels()
fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=12)
plt.tight_layout(rect=(0, 0.08, 1, 1))
plt.show()

# %% [markdown]
# Early on the windows lead on the corpus: a single run stopped there would conclude that a window helps, and
# it would be measuring undertraining, not the window. From the printed step on the order stays put, and the
# study's budget lies well past it, on both tasks.
#
# ### Recall against distance: the receptive field is a wall
#
# The recall accuracy of each variant at every distance, with each window's receptive-field edge as a dashed
# line in its colour, and the accuracy in zones of distance for each window ($L$ layers of window $w$):
# **one hop** ($d \le w-1$: the question's own attention sees the fact), **relayed** ($w \le d \le L(w-1)$:
# the fact can reach the question only through an earlier layer) and **out of reach** ($d > L(w-1)$).

# %%
fig, ax = plt.subplots(figsize=(13, 5.5))
quality.plot_recall_by_distance(report, ax=ax)
ax.set_title(f"Associative recall by distance, mean ± sd over {len(report['seeds'])} seeds "
             "(dashed: each window's receptive-field edge)", fontsize=13)
ax.legend(fontsize=11, loc="upper left", bbox_to_anchor=(1.01, 1))
ax.tick_params(labelsize=11)
ax.xaxis.label.set_fontsize(12)
ax.yaxis.label.set_fontsize(12)
plt.tight_layout()
plt.show()
for variant, summary in report["window_recall"].items():
    print(summary["sentence"])

# %% [markdown]
# **Why recall collapses beyond the receptive field.** After $L$ layers of window $w$ the question's hidden
# state is a function of the last $L(w-1)+1$ input tokens only — the gradient measured earlier is *exactly*
# zero further back. A fact outside that span cannot change the model's answer in any way, so the best the
# model can do is guess: accuracy falls to chance, whatever the training budget. Within one hop the last layer's
# attention at the question can read the fact token directly, which is the lookup full attention does at every
# distance. In between, the fact has to be carried: the first layer must copy it into a token that the question
# can see in the second layer — but that first-layer token does not know yet which key will be asked for, and
# its one vector has to carry every fact in its own window at once. So relayed recall is partial, and it falls
# towards chance at the edge. (The smallest window stays below perfect even within one hop at this budget;
# this study does not tell why.)
#
# **Why the corpus loss moves much less.** The stories come from a small template grammar ("once there was a
# fox. the fox sat on a mat. …"): the next character is mostly decided by the few characters just before it —
# the rest of the current word, the template's next word. What lies further back — which hero this story is
# about, the one word a sentence cannot guess from its own start — matters for a small share of the characters
# only. So the loss, averaged over every character, shifts a little, while recall, which asks for nothing but
# the long-range lookup, collapses. Relative to full attention:

# %%
summary = report["summary"]
base = report["baseline"]
for variant in quality.variant_names(report, "corpus"):
    if variant == base:
        continue
    loss, loss_base = summary["corpus"][variant]["val_loss"]["mean"], summary["corpus"][base]["val_loss"]["mean"]
    acc, acc_base = summary["recall"][variant]["accuracy"]["mean"], summary["recall"][base]["accuracy"]["mean"]
    print(f"{variant:>9}: corpus loss {loss / loss_base - 1:+6.1%} against {base};  recall keeps "
          f"{(acc - recall_chance) / (acc_base - recall_chance):6.1%} of {base}'s accuracy above chance")

# %% [markdown]
# ### A small live run with the same code
#
# The same function that produced the study, `quality.run_chapter_study`, at a budget small enough to run
# here: one seed, full attention against the smallest window, the study's (character) tokenizer, each task
# trained past the step from which the study's ordering of this pair is stable (printed), and its time.
# A live run is not the study stopped early: the learning rate warms up and then decays to zero over each
# run's own budget (`attention_lab.train.train`), so a short run ends annealed, at numbers of its own. What it
# can share with the study is the ordering — and with one seed there is no spread to measure it against.

# %%
live_variants = ["full", "window 4"]
live_steps = {"corpus": 600, "recall": 800}
for objective, n in live_steps.items():
    since = quality.stable_since(report, objective, variants=live_variants)
    print(f"{objective}: in the study {' vs '.join(live_variants)} keep their order from step {since:,}; "
          f"the live run trains {n:,} steps (past it: {n >= since})")
live = quality.run_chapter_study("ch04", seeds=[0], variants=live_variants, steps=live_steps, tokenizer="char",
                                 device=device)
print(f"live run: {' and '.join(live_variants)}, seed {live['seeds'][0]}, tokenizer "
      f"{live['objectives']['corpus']['tokenizer']} (the same as the study's: "
      f"{live['objectives']['corpus']['tokenizer'] == report['objectives']['corpus']['tokenizer']}); it took "
      f"{live['seconds']:.0f} s on {live['environment']['device']} with {live['environment']['threads']} thread(s)")


# %% [markdown]
# The live numbers beside the study's, and the verdict printed from them:

# %%
full_name, window_name = live_variants
agrees, live_says = {}, {}
for objective in live_steps:
    metric = report["objectives"][objective]["metric"]
    live_full, live_window = (quality.metric_values(live, objective, v)[0] for v in live_variants)
    study_full, study_window = (quality.metric_values(report, objective, v) for v in live_variants)
    study_gap = quality.mean_sd([w - f for w, f in zip(study_window, study_full)])
    live_gap = live_window - live_full
    agrees[objective] = (live_gap > 0) == (study_gap.mean > 0)
    live_says[objective] = "better" if (live_gap > 0) == (metric == "accuracy") else "worse"
    print(f"{objective} — {quality.METRIC_NAMES[metric]}:")
    print(f"  live,  {live_steps[objective]:>5,} steps, seed {live['seeds'][0]}:     {full_name} {live_full:.3f}, "
          f"{window_name} {live_window:.3f}; {window_name} − {full_name} = {live_gap:+.3f}")
    print(f"  study, {report['steps'][objective]:>5,} steps, {study_gap.n} seeds: {full_name} "
          f"{quality.mean_sd(study_full).format()}, {window_name} {quality.mean_sd(study_window).format()}; "
          f"{window_name} − {full_name} = {study_gap.format()}")
    print(f"  same sign: {agrees[objective]}; the live difference is {live_gap / study_gap.mean:.0%} of the study's")
verdict = "agrees with" if all(agrees.values()) else "disagrees with"
print(f"the single short run {verdict} the study on the ordering: {window_name} is "
      + " and ".join(f"{live_says[o]} than {full_name} on {o}" for o in live_steps))

# %% [markdown]
# ## Summary

# %%
print(f"* band mask, w=3 on six words: each word sees {[int(s) for s in band.sum(-1)]} keys (itself included)")
print(f"* scores at N=32,768 with w=4,096: {causal_scores / band_scores(32768, 4096):.1f}× fewer than causal")
print(f"* rolling cache ({cache.slots} slots, prefill {pieces[0].shape[1]} then {len(pieces) - 1} single tokens) "
      f"vs full band attention: "
      f"max difference {(rolled - full).abs().max().item():.1e}")
print(f"* receptive field after 1…{n_layers} layers with w={rf_window}: measured {measured_field}, "
      f"L·(w−1)+1 = {predicted_field}")
print(f"* TinyGPT cache at N={sizes[-1]}: {format_bytes(measured_bytes['full attention'][-1])} full vs "
      f"{format_bytes(measured_bytes[f'window w={mem_window}'][-1])} with w={mem_window}")
print(f"* the slides' w={slides.WINDOW} CAT row {slides.WINDOW_ROWS['CAT']} is softmax(softmax): "
      f"{tuple(round(x, 4) for x in slides.softmax(slides.window_row('CAT', slides.WINDOW)))}; renormalised it is "
      f"{tuple(round(x, 3) for x in slides.renormalised(slides.window_row('CAT', slides.WINDOW)))}")
print(f"* the study, over {len(report['seeds'])} seeds (budget {report['steps']}):")
for line in quality.study_conclusion_lines(report):
    print("    -", line)
for variant, entry in report["window_recall"].items():
    print("    -", entry["sentence"])
print(f"* live run (seed {live['seeds'][0]}, steps {live['steps']}, {live['seconds']:.0f} s): {verdict} the study")
