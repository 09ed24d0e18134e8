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
# This chapter builds the band mask, the rolling-buffer cache (and proves it gives exactly the
# full-attention result), measures the receptive field of stacked layers, the memory, and what a window
# costs in quality on TinyGPT.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from attention_lab import MultiHeadAttention, TinyGPT, TinyGPTConfig, attention_weights, sliding_window_mask
from attention_lab.caches.sizes import GiB, PUBLISHED_MODELS, format_bytes
from attention_lab.data import TokenDataset, get_tokenizer, load_corpus
from attention_lab.generate import generate
from attention_lab.caches.rolling import RollingKVCache
from attention_lab.book.plots import heatmap
from attention_lab.receptive_field import input_influence, receptive_field
from attention_lab.toy_sentence import SENTENCE, word_embeddings
from attention_lab.train import train

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
# A layer with $w = 4$: run 23 tokens through it in one pass with the band mask, and again through the
# rolling cache — a prefill of 9 tokens (longer than the window) followed by 14 single tokens, wrapping
# around the 4 slots several times.

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
print(f"max |rolling − full| = {(rolled - full).abs().max().item():.1e} over {cache.length} tokens; "
      f"slots now hold positions {cache.slot_positions().tolist()}")

# %% [markdown]
# The same holds for a whole model: below, a windowed TinyGPT generates identical tokens with the
# rolling cache and without any cache (and `tests/test_ch04_sliding_window.py` checks odd lengths, several
# windows, $w = 1$ and $w \ge N$).
#
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
axes[1].plot(contexts, full_mistral, "o-", label="32 layers, 8 KV heads, full attention")
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
# The same TinyGPT trained for the same number of steps on the story corpus, once with full causal
# attention and once with a window of 8 positions (characters or BPE tokens, whichever tokenizer loaded:
# printed below), whose two layers reach back `receptive_field(2, 8)` positions. The stories refer back to their hero ("once there was a fox. … the fox sat
# on a mat"), often further back than that.

# %%
text = load_corpus()
tokenizer = get_tokenizer(text)
data = TokenDataset.from_text(text, tokenizer, context_length=64)
steps = 1500 if device.type == "cuda" else 200
print(f"tokenizer: {tokenizer.name}; reach of the window-8 model: {receptive_field(2, 8)} {tokenizer.units}; "
      f"context: {data.context_length} {tokenizer.units}")
trained, results = {}, {}
for name, w in (("full", None), ("window 8", 8)):
    torch.manual_seed(0)
    config = TinyGPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=64, n_layers=2, n_heads=4,
                           window=w)
    trained[name] = TinyGPT(config).to(device)
    results[name] = train(trained[name], data, steps=steps, batch_size=16, eval_every=50)
    print(f"{name:>9}: validation loss {results[name].final_val_loss:.3f} nats/token after {steps} steps "
          f"({results[name].seconds:.0f} s)")


# %%
@torch.no_grad()
def loss_by_position(model, batches: int = 8, batch_size: int = 32) -> torch.Tensor:
    """Mean validation cross-entropy at each position 0 … T-1 of the context, ``(T,)``."""
    generator = torch.Generator().manual_seed(1234)
    total = torch.zeros(data.context_length)
    for _ in range(batches):
        inputs, targets = data.batch("val", batch_size, generator, device)
        logits, _ = model(inputs)  # (B, T, vocab)
        loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
        total += loss.mean(0).cpu()
    return total / batches


reach = receptive_field(2, 8)
by_position = {name: loss_by_position(model) for name, model in trained.items()}  # name -> (T,)
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for name, result in results.items():
    axes[0].plot(result.steps, result.val_loss, "o-", label=name)
    axes[1].plot(by_position[name], label=name)
axes[0].set_title(f"Validation loss, equal steps ({steps})")
axes[0].set_xlabel("training step")
axes[1].set_title("Validation loss by position in the context")
axes[1].set_xlabel(f"position of the predicted token ({tokenizer.units})")
axes[1].axvline(reach, color="gray", linestyle=":", label="reach of the window model")
for ax in axes:
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
plt.tight_layout()
plt.show()
print(f"{'model':>9} | {'positions < ' + str(reach):>15} {'positions >= ' + str(reach):>16} (mean nats/token)")
for name, losses in by_position.items():
    print(f"{name:>9} | {losses[:reach].mean():>15.3f} {losses[reach:].mean():>16.3f}")
gap = results["full"].final_val_loss - results["window 8"].final_val_loss
print(f"at {steps} equal steps the window-8 model is {'better' if gap > 0 else 'worse'} by {abs(gap):.3f} nats/token")

# %%
windowed = trained["window 8"]
prompt = torch.tensor([tokenizer.encode("once there was a cat. the ")], device=device)
with_cache = generate(windowed, prompt, 37, use_cache=True)
without_cache = generate(windowed, prompt, 37, use_cache=False)
print("rolling cache and no cache give identical tokens:", torch.equal(with_cache, without_cache))
print("window 8:", repr(tokenizer.decode(with_cache[0].tolist())))
print("full:    ", repr(tokenizer.decode(generate(trained["full"], prompt, 37)[0].tolist())))

# %% [markdown]
# In the run above the window does not cost quality — it gains, at every position (printed above). After
# so few steps the full model has not yet learned *where* to look: its loss even grows with the position
# in the context (right plot) — the more keys it can see, the more its still unfocused attention spreads
# over irrelevant ones. The window model is told where to look — the last 8 positions, which decide most
# of the next one — and learns faster.
# That is the locality prior a window brings. It is not the whole story: with more training a full model
# can use the hero's name from the start of a story, beyond the window model's reach, and a window model
# needs more layers (or a larger $w$) to reach that far — the receptive field above. On a GPU this cell
# trains several times longer; compare the two curves there.
#
# ## Summary

# %%
print(f"* band mask, w=3 on six words: each word sees {[int(s) for s in band.sum(-1)]} keys (itself included)")
print(f"* scores at N=32,768 with w=4,096: {causal_scores / band_scores(32768, 4096):.1f}× fewer than causal")
print(f"* rolling cache (4 slots, prefill 9 then 14 single tokens) vs full band attention: "
      f"max difference {(rolled - full).abs().max().item():.1e}")
print(f"* receptive field after 1…{n_layers} layers with w={rf_window}: measured {measured_field}, "
      f"L·(w−1)+1 = {predicted_field}")
print(f"* TinyGPT cache at N={sizes[-1]}: {format_bytes(measured_bytes['full attention'][-1])} full vs "
      f"{format_bytes(measured_bytes[f'window w={mem_window}'][-1])} with w={mem_window}")
print(f"* validation loss after {steps} steps: full {results['full'].final_val_loss:.3f}, "
      f"window 8 {results['window 8'].final_val_loss:.3f} nats/token")
