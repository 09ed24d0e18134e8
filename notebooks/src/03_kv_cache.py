# %% [markdown]
# # 03 · The KV cache
#
# A language model writes one token at a time: it reads the sequence so far, predicts the next token,
# appends it and starts again. Done naively, every step re-runs the model over the *whole* sequence,
# so writing token 1,000 repeats almost all the work already done for token 999. This chapter keeps the
# keys and values of past tokens in a **KV cache**, proves that cached generation writes exactly the
# same tokens as uncached generation, measures the speed-up, and works out how much memory the cache
# takes in real models — the quantity that limits how many users a GPU can serve.

# %%
import inspect

import matplotlib.pyplot as plt
import torch

from attention_lab import MultiHeadAttention, TinyGPT, TinyGPTConfig
from attention_lab.caches.sizes import GiB, PUBLISHED_MODELS, ModelShape, format_bytes
from attention_lab.data import TokenDataset, get_tokenizer, load_corpus
from attention_lab.costs.step_work import decode_step_work, generation_multiply_adds, measure_generation_speed
from attention_lab.generate import generate
from attention_lab.caches.contiguous import KVCache, kv_cache_bytes
from attention_lab.train import train

if device.type == "cpu":
    # Tiny models gain nothing from several CPU threads, and on a shared 2-core machine (like CI) the
    # threads of parallel jobs fight each other; one thread keeps the timings below steady.
    torch.set_num_threads(1)

# %% [markdown]
# ## What one decoding step needs
#
# Take a single attention layer with model width $d$. To produce the output for the newest token $N$
# the layer needs the query of token $N$ and the keys and values of tokens $1 \ldots N$:
#
# $$o_N = \sum_{j \le N} \mathrm{softmax}_j\!\left(\frac{q_N \cdot k_j}{\sqrt{d_{head}}}\right) v_j .$$
#
# Because of the causal mask (chapter 02), $k_j$ and $v_j$ depend only on tokens $\le j$: once computed
# they **never change**. So we can compute them once and keep them.
#
# | per layer, per new token | without a cache | with a cache |
# |---|---|---|
# | projections | $Q, K, V$ of all $N$ tokens: $3Nd$ numbers | $q, k, v$ of the new token: $3d$ numbers ($2d$ of them new cache entries) |
# | scores | the whole $N \times N$ matrix | $N$ scores: one query against $N$ cached keys |
# | multiply-adds | $N \cdot 12d^2 + 2N^2 d$ | $12d^2 + 2Nd$ |
#
# ($12d^2$ per token = $4d^2$ for the Q, K, V and output projections + $8d^2$ for a $4\times$ MLP; each score
# costs $d$ and its share of the weighted sum of values another $d$.) The counts, computed by
# `attention_lab.costs.step_work` for a Llama-2-7B-sized layer ($d = 4096$):

# %%
d_llama = 4096
print(f"{'N':>6} | {'projected (no cache)':>20} {'projected (cache)':>18} | {'scores (no cache)':>17} "
      f"{'scores (cache)':>14} | multiply-adds ratio")
for n in (16, 256, 4096):
    plain, cached = decode_step_work(n, d_llama, cached=False), decode_step_work(n, d_llama, cached=True)
    print(f"{n:>6} | {plain.projected:>20,} {cached.projected:>18,} | {plain.scores:>17,} {cached.scores:>14,} | "
          f"{plain.multiply_adds / cached.multiply_adds:>8.0f}×")

# %%
lengths = [2**i for i in range(4, 15)]
fig, ax = plt.subplots(figsize=(6.5, 4))
for d, style in ((128, "-"), (4096, "--")):
    ax.loglog(lengths, [decode_step_work(n, d, cached=False).multiply_adds for n in lengths], style,
              color="tab:red", label=f"no cache, d={d}")
    ax.loglog(lengths, [decode_step_work(n, d, cached=True).multiply_adds for n in lengths], style,
              color="tab:blue", label=f"KV cache, d={d}")
ax.set_title("Work of one decoding step in one layer")
ax.set_xlabel("tokens in the sequence, N")
ax.set_ylabel("multiply-adds per step")
ax.grid(alpha=0.3, which="both")
ax.legend()
plt.show()

# %% [markdown]
# Without a cache a step's work grows like $N^2$ (and the whole generation like $N^3$); with a cache it
# grows like $N$, and for short sequences it is flat — dominated by the $12d^2$ of the new token's
# projections and MLP. The ratio in the table is exactly $N$: an uncached step pushes all $N$ rows
# through the layer, and each row costs what the single cached row costs.
#
# ## The cache in code
#
# `attention_lab.caches.contiguous.KVCache` holds one layer's keys and values in buffers allocated once for the
# longest sequence, `(batch, n_kv_heads, max_len, head_dim)`, plus a fill pointer `length`. Each call
# writes the new entries at positions `length … length+T-1` and returns everything filled so far:

# %%
print(inspect.getsource(KVCache.update))

# %% [markdown]
# `MultiHeadAttention.forward` calls `cache.update(k, v)` right after projecting the new tokens and
# attends with the returned keys. The new queries are the *last* $T$ of those keys' positions, which is
# exactly the library's causal convention for $N_q \neq N_k$ (queries aligned to the end of the keys).
# A prompt of 5 tokens fills 5 positions at once (the **prefill**), then each step adds one:

# %%
torch.manual_seed(0)
layer = MultiHeadAttention(d_model=32, n_heads=4).eval()
cache = layer.make_cache(batch_size=1, max_len=8, device="cpu", dtype=torch.float32)
x = torch.randn(1, 8, 32)  # (B, N, d_model): 8 tokens' inputs
with torch.no_grad():
    outputs = [layer(x[:, :5], cache=cache)]  # prefill: 5 queries, 5 keys
    print(f"after the prefill: length={cache.length}, buffers {tuple(cache.keys.shape)}")
    for t in range(5, 8):
        outputs.append(layer(x[:, t:t + 1], cache=cache))  # one query against t+1 keys
        print(f"after token {t}: length={cache.length}")
    full = layer(x)  # all 8 tokens in one causal pass, no cache
print("cached outputs == one full causal pass:", torch.allclose(torch.cat(outputs, dim=1), full, atol=1e-6))
try:
    with torch.no_grad():
        layer(x[:, :1], cache=cache)  # a ninth token does not fit
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# ## Exercise: the cache update
#
# Write the heart of `KVCache.update` as a function on bare buffers. The buffers are
# `(B, Hkv, max_len, D)`, `length` positions are already filled, and `k_new`, `v_new` are `(B, Hkv, T, D)`.
# Write the new entries into the buffers (in place), and return the filled part of each buffer and the
# new length. Mind the positions: 0-based, the first free slot is `length`.

# %%
def cache_append(keys_buffer, values_buffer, length, k_new, v_new):
    """Write k_new, v_new (B, Hkv, T, D) at positions length … length+T-1; return (keys, values, new_length)."""
    ### BEGIN SOLUTION
    end = length + k_new.shape[2]
    keys_buffer[:, :, length:end] = k_new
    values_buffer[:, :, length:end] = v_new
    return keys_buffer[:, :, :end], values_buffer[:, :, :end], end
    ### END SOLUTION


# %%
from attention_lab.exercises.ch03 import check_cache_append

check_cache_append(cache_append)

# %% [markdown]
# The checker compares your buffers with `KVCache` after a prefill, single tokens and a chunk, and then
# decodes through a real attention layer with your function: a write one slot late (`length + 1`) or a
# result that leaves out the new token is caught.
#
# ## Cached and uncached generation write the same text
#
# A short training run gives TinyGPT something to say (the corpus and the model are those of chapter 02,
# with fewer steps). `generate(..., use_cache=True)` prefills the prompt once and then feeds one token per
# step; `use_cache=False` re-runs the whole sequence every step.

# %%
text = load_corpus()
tokenizer = get_tokenizer(text)
config = TinyGPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=64, n_layers=2, n_heads=4)
torch.manual_seed(0)
model = TinyGPT(config).to(device)
data = TokenDataset.from_text(text, tokenizer, config.context_length)
steps = 600 if device.type == "cuda" else 200
result = train(model, data, steps=steps, batch_size=16, eval_every=100)
print(f"{steps} steps in {result.seconds:.0f} s: validation loss {result.final_val_loss:.3f} nats/token")

# %%
rows = []
for prompt_text, new_tokens in [("once there was a ", 40), ("the dog", 57), ("o", 63), ("the king is on the ", 25)]:
    prompt = torch.tensor([tokenizer.encode(prompt_text)], device=device)
    cached, cached_logits = generate(model, prompt, new_tokens, use_cache=True, return_logits=True)
    plain, plain_logits = generate(model, prompt, new_tokens, use_cache=False, return_logits=True)
    rows.append((prompt_text, new_tokens, torch.equal(cached, plain),
                 (cached_logits - plain_logits).abs().max().item()))
print(f"{'prompt':>22} {'new':>4} {'same tokens':>12} {'max |Δ logit|':>14}")
for prompt_text, new_tokens, same, gap in rows:
    print(f"{prompt_text!r:>22} {new_tokens:>4} {str(same):>12} {gap:>14.1e}")
print("\ncached generation:", repr(tokenizer.decode(cached[0].tolist())))

# %% [markdown]
# Every token is identical. The logits differ only in the last bits of float32: the cached path adds
# up the same products in a different order (one query row instead of a whole matrix). The test suite
# (`tests/test_ch03_kv_cache.py`) checks the same on odd lengths, batches and GQA models.
#
# ## Measured speed-up
#
# Tokens per second of greedy generation, one sequence, with and without the cache, against the number
# of tokens generated. The model is a TinyGPT with a longer context (speed does not depend on what the
# weights have learned, so it is untrained). On the CPU each point is the fastest of three runs, timed by
# the process's CPU time so that other jobs on a shared machine disturb it as little as possible; on a
# GPU it is the median of three runs timed by CUDA events.
# Beside the measurement: the speed-up the multiply-add count predicts.

# %%
speed_config = TinyGPTConfig(vocab_size=256, context_length=512, d_model=128, n_layers=2, n_heads=4)
torch.manual_seed(0)
speed_model = TinyGPT(speed_config).to(device).eval()
new_token_counts = [16, 32, 64, 128, 256] if device.type == "cpu" else [32, 64, 128, 256, 511]
speed = measure_generation_speed(speed_model, new_token_counts, repeats=3)
measured = [u / c for u, c in zip(speed["uncached_seconds"], speed["cached_seconds"])]
predicted = [generation_multiply_adds(1, n, speed_config.d_model, speed_config.n_layers, cached=False)
             / generation_multiply_adds(1, n, speed_config.d_model, speed_config.n_layers, cached=True)
             for n in new_token_counts]
where = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU time, 1 thread"
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
axes[0].plot(new_token_counts, speed["cached_tokens_per_s"], "o-", label="with KV cache")
axes[0].plot(new_token_counts, speed["uncached_tokens_per_s"], "s-", label="without cache")
axes[0].set_title(f"Generation speed ({where})")
axes[0].set_ylabel("tokens / s")
axes[1].plot(new_token_counts, measured, "o-", label="measured")
axes[1].plot(new_token_counts, predicted, "--", label="predicted by multiply-adds")
axes[1].set_yscale("log")
axes[1].set_title("Speed-up of the KV cache")
axes[1].set_ylabel("uncached time / cached time (×, log scale)")
for ax in axes:
    ax.set_xlabel("tokens generated (after a 1-token prompt)")
    ax.grid(alpha=0.3)
    ax.legend()
plt.tight_layout()
plt.show()
print(f"{'tokens':>6} {'cached tok/s':>13} {'uncached tok/s':>15} {'speed-up':>9} {'predicted':>10}")
for n, c, u, m, p in zip(new_token_counts, speed["cached_tokens_per_s"], speed["uncached_tokens_per_s"], measured,
                         predicted):
    print(f"{n:>6} {c:>13.0f} {u:>15.0f} {m:>8.1f}× {p:>9.1f}×")

# %% [markdown]
# The speed-up grows with the length, as the count predicts, but stays below it: a model this small
# spends much of each step in fixed per-call overhead (Python, small kernels) that the cache does not
# remove, so the cached path is slower than its multiply-adds alone suggest. On a GPU the overhead is
# kernel launches; in a large model the arithmetic dominates and the measured speed-up approaches the
# count.
#
# ## How big the cache gets
#
# Every layer stores a key and a value vector per KV head per token:
#
# $$\text{cache bytes} = 2 \cdot L \cdot n_{kv} \cdot d_{head} \cdot N \cdot B \cdot \text{bytes per number}$$
#
# (2 for K and V, $L$ layers, $n_{kv}$ key/value heads, $N$ tokens, batch $B$.) First a check against
# TinyGPT's real cache tensors, then the formula on published configurations in fp16 (2 bytes):

# %%
tiny_shape = ModelShape.from_config(model.config)
tiny_cache = model.new_cache(batch_size=4, max_len=64)
print(f"TinyGPT cache for 4 × 64 tokens: {len(tiny_cache.layers)} layers × K and V of shape "
      f"{tuple(tiny_cache.layers[0].keys.shape)} float32 = {tiny_cache.nbytes:,} bytes; "
      f"formula: {tiny_shape.cache_bytes(64, batch=4, bytes_per_element=4):,} bytes")
print()
print(f"{'model':>12} {'layers':>6} {'kv heads':>8} {'d_head':>6} | {'per token':>9} {'at 4,096':>9} {'at 32,768':>10}")
for shape in PUBLISHED_MODELS.values():
    print(f"{shape.name:>12} {shape.n_layers:>6} {shape.n_kv_heads:>8} {shape.head_dim:>6} | "
          f"{format_bytes(shape.cache_bytes(1)):>9} {format_bytes(shape.cache_bytes(4096)):>9} "
          f"{format_bytes(shape.cache_bytes(32768)):>10}")
llama2 = PUBLISHED_MODELS["Llama-2-7B"]
print(f"\nLlama-2-7B: 2 · {llama2.n_layers} · {llama2.n_kv_heads} · {llama2.head_dim} · 2 bytes = "
      f"{kv_cache_bytes(llama2.n_layers, llama2.n_kv_heads, llama2.head_dim):,} bytes = "
      f"{format_bytes(llama2.cache_bytes(1))} per token; a batch of 16 sequences of 4,096 tokens needs "
      f"{format_bytes(llama2.cache_bytes(4096, batch=16))}.")
print("sources:")
for shape in PUBLISHED_MODELS.values():
    print(f"  {shape.name}: {shape.source}")

# %%
contexts = [2**i for i in range(8, 18)]
fig, ax = plt.subplots(figsize=(7, 4.2))
for shape in PUBLISHED_MODELS.values():
    ax.loglog(contexts, [shape.cache_bytes(n) / GiB for n in contexts], marker="o", markersize=3, label=shape.name)
ax.set_title("KV-cache size of one sequence (fp16)")
ax.set_xlabel("context length (tokens)")
ax.set_ylabel("cache size (GiB)")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Two things shrink the cache. **Fewer KV heads**: Llama-3-8B has Llama-2-7B's layers and head size but
# 8 KV heads instead of 32 (grouped-query attention, chapters 05–06), so its cache is 4× smaller.
# **A window**: Mistral-7B attends only to the last 4,096 tokens, so its cache stops growing there
# (chapter 04).
#
# ## Summary
#
# The numbers measured in this chapter:

# %%
llama3 = PUBLISHED_MODELS["Llama-3-8B"]
print(f"* cached and uncached greedy generation gave identical tokens in {sum(r[2] for r in rows)} of {len(rows)} "
      f"prompts; largest logit gap {max(r[3] for r in rows):.1e}")
step_ratio = (decode_step_work(4096, d_llama, cached=False).multiply_adds
              / decode_step_work(4096, d_llama, cached=True).multiply_adds)
print(f"* one decoding step at N=4,096, d={d_llama:,}: {step_ratio:.0f}× fewer multiply-adds with the cache")
print(f"* measured speed-up of cached generation ({where}): {measured[0]:.1f}× at {new_token_counts[0]} tokens, "
      f"{measured[-1]:.1f}× at {new_token_counts[-1]} (predicted {predicted[-1]:.0f}×)")
print(f"* cache per token (fp16): Llama-2-7B {format_bytes(llama2.cache_bytes(1))} "
      f"({format_bytes(llama2.cache_bytes(4096))} at 4,096 tokens), Llama-3-8B {format_bytes(llama3.cache_bytes(1))}")
print(f"* TinyGPT's measured cache tensors match the formula: {tiny_cache.nbytes == tiny_shape.cache_bytes(64, 4, 4)}")
