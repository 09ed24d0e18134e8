# %% [markdown]
# # 11 · PagedAttention
#
# Chapter 03 gave every sequence a contiguous KV cache of `max_len` slots. That is fine for one user and
# wasteful for a server: most requests stop long before `max_len`, and the slots they never use are
# reserved anyway. This chapter borrows the operating system's answer to the same problem — **paging**.
# The cache is cut into fixed-size **blocks**, a sequence gets a block only when it needs one, and a
# per-sequence **block table** records where its blocks physically are. On top of that sit a free-list
# allocator with reference counts, **copy-on-write** sharing of a prompt between parallel samples,
# **continuous batching** of TinyGPT requests, and a Triton **paged decode kernel** that reads the scattered
# blocks at full memory bandwidth.
#
# The idea and the name come from vLLM (Kwon et al., *Efficient Memory Management for Large Language Model
# Serving with PagedAttention*, SOSP 2023).
#
# **What the kernel cells need:** the `triton` package, which installs on Linux only (`pip install triton`;
# Colab has it). Without it (macOS, Windows) every cell still runs: the paged reference attention stands in
# for the kernel, and the GPU measurements are the committed results.

# %%
import json
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

if not torch.cuda.is_available():
    # No GPU: run the Triton kernels in Triton's interpreter on the CPU (slow, exact). The flag must be set
    # before the module that defines the kernels is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)  # tiny matrices: one thread is faster, and steadier on a shared CPU

from attention_lab import TinyGPT, TinyGPTConfig, scaled_dot_product_attention
from attention_lab.book.results import load as load_results
from attention_lab.costs.gpu_facts import detect_device, spec_for_name
from attention_lab.data import TokenDataset, get_tokenizer, load_corpus
from attention_lab.kernels.decode_attention import paged_decode
from attention_lab.kernels.optional_triton import TRITON_AVAILABLE
from attention_lab.exercises.ch11 import check_blocks_needed, check_physical_slot
from attention_lab.caches.fragmentation import TraceRequest, compare_allocators, make_trace, simulate
from attention_lab.generate import generate
from attention_lab.caches.contiguous import kv_cache_bytes
from attention_lab.caches.paged import PagedKVCache, blocks_needed, gather_kv, paged_attention_reference, slot_of
from attention_lab.caches.paged_cost import misses_target, paged_cost_reading
from attention_lab.caches.serving import Request, ServingEngine
from attention_lab.train import train

# %% [markdown]
# ## Why: the KV cache is most of a server's memory, and most of it is wasted
#
# Two published pictures frame the problem. Serving a 13-billion-parameter model on a 40 GB A100, the
# weights take about two thirds of the memory and the KV cache most of the rest (the blog post this course
# follows, after Fig. 1 of the vLLM paper). And in the serving systems vLLM measured, only a fifth to two
# fifths of the KV memory held actual token states; with paging, almost all of it did (vLLM paper, Fig. 2).
# The cell prints the cited figures and checks the first against the model's own shape: OPT-13B has 40 layers,
# 40 heads of 128 dimensions (Zhang et al. 2022, *OPT*), and fp16 weights take 2 bytes per parameter.

# %%
PUBLISHED = {  # what: (figure, source)
    "13B model on a 40 GB A100, share of memory for weights": ("~65%", "blog; vLLM paper Fig. 1"),
    "13B model on a 40 GB A100, share of memory for the KV cache": ("~30%", "blog; vLLM paper Fig. 1"),
    "KV memory holding token states, existing systems": ("20.4% – 38.2%", "vLLM paper Fig. 2"),
    "KV memory holding token states, vLLM (paging)": ("96.3%", "vLLM paper Fig. 2"),
}
for what, (figure, source) in PUBLISHED.items():
    print(f"{what:<62} {figure:>14}  ({source})")

gpu_bytes = 40e9
weight_bytes = 13e9 * 2  # fp16
kv_per_token = kv_cache_bytes(n_layers=40, n_kv_heads=40, head_dim=128)  # OPT-13B, fp16
kv_budget = 0.30 * gpu_bytes
print(f"\nweights: {weight_bytes / 1e9:.0f} GB = {weight_bytes / gpu_bytes:.0%} of {gpu_bytes / 1e9:.0f} GB")
print(f"KV cache per token: {kv_per_token / 1024:.0f} KiB  ->  30% of the card holds "
      f"{kv_budget / kv_per_token:,.0f} tokens, i.e. {kv_budget / kv_per_token / 2048:.1f} requests of 2048 tokens")

# %% [markdown]
# So a whole 40 GB card holds the caches of only a handful of maximum-length requests. How many requests a
# server can batch — and so its throughput — is decided by how well it uses that KV memory. A contiguous
# cache that reserves `max_len` slots per request loses memory three ways:
#
# * **reserved slots**: slots set aside for tokens the request has not produced *yet* (they will be used,
#   but nobody else can use them meanwhile);
# * **internal fragmentation**: slots past the request's final length, never used at all (the request
#   stopped at 300 tokens of its 2048);
# * **external fragmentation**: free memory in gaps too small for a new request's contiguous reservation.
#
# Paging removes the first and third and shrinks the second to at most one partly filled block per sequence.

# %% [markdown]
# ## A request trace, simulated
#
# `attention_lab.caches.fragmentation` simulates a server with a fixed KV budget. Requests have random prompt and
# output lengths (exponential, capped so that prompt + output ≤ `max_len`) and all arrive at once; each step
# every running request stores one more token. *Contiguous* reserves `max_len` slots per request — which is
# exactly paging with a single block of `max_len` slots, so one simulator serves both. *Paged* gives a
# request `ceil(length / block_size)` blocks and, when no block is free, **preempts** the newest request (its
# blocks are freed; it is recomputed later from its prompt and the tokens it already produced).
#
# We measure while the queue is non-empty (the server is full): the share of the budget holding tokens,
# the share of *allocated* slots holding tokens, and the number of requests in memory at once.

# %%
MAX_LEN = 2048
BUDGET = 16 * MAX_LEN  # room for 16 maximum-length requests
trace = make_trace(200, max_len=MAX_LEN, mean_prompt=160, mean_output=340, seed=0)
prompt_lens = np.array([r.prompt_len for r in trace])
output_lens = np.array([r.output_len for r in trace])
print(f"{len(trace)} requests: prompt {prompt_lens.mean():.0f} tokens on average (max {prompt_lens.max()}), "
      f"output {output_lens.mean():.0f} (max {output_lens.max()}); budget {BUDGET:,} token slots")

results = compare_allocators(trace, BUDGET, MAX_LEN, block_sizes=(1, 8, 16, 32, 128))
print(f"\n{'allocator':<12} {'budget holding tokens':>22} {'allocated slots used':>21} "
      f"{'requests at once':>17} {'steps':>6} {'preemptions':>11}")
for name, r in results.items():
    print(f"{name:<12} {r.budget_used:>22.1%} {r.utilisation:>21.1%} {r.mean_running:>17.1f} {r.steps:>6} "
          f"{r.preemptions:>11}")

# %%
names = list(results)
saturated = {n: r.saturated for n, r in results.items()}
parts = {  # slots per saturated step, averaged, as a share of the budget
    "token states": [results[n].stored[saturated[n]].mean() / BUDGET for n in names],
    "reserved for later tokens": [results[n].reserved[saturated[n]].mean() / BUDGET for n in names],
    "never used (internal fragmentation)": [results[n].never_used[saturated[n]].mean() / BUDGET for n in names],
}
parts["free"] = [1 - sum(p[i] for p in parts.values()) for i in range(len(names))]

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
bottom = np.zeros(len(names))
for (label, values), color in zip(parts.items(), ["tab:green", "tab:orange", "tab:red", "lightgrey"]):
    ax1.bar(names, values, bottom=bottom, label=label, color=color)
    bottom += values
ax1.set_title("Where the KV budget goes (server full)")
ax1.set_ylabel("share of the KV budget")
ax1.set_xlabel("allocator")
ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.4), ncol=2, frameon=False)
ax2.bar(names, [results[n].mean_running for n in names], color="tab:blue")
ax2.set_title(f"Requests in memory at once, budget = {BUDGET // MAX_LEN} × max_len")
ax2.set_ylabel("requests (mean over full-server steps)")
ax2.set_xlabel("allocator")
for ax in (ax1, ax2):
    ax.tick_params(axis="x", rotation=30)
    ax.grid(axis="y", alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# The contiguous allocator's bar is mostly orange and red: slots reserved for tokens still to come and
# slots no token will ever fill. Its share of the budget holding tokens lands inside the range vLLM measured
# for existing systems, and paging's near vLLM's, both printed above. Because paging wastes almost nothing, several times
# more requests fit in the same memory, and the trace finishes in far fewer steps. The block size is a
# trade-off: one-token blocks waste nothing but make the kernel chase a pointer per token; large blocks
# bring back internal fragmentation in every sequence's last block. vLLM uses 16 tokens by default.

# %% [markdown]
# ## The pieces: a block pool, a free list, block tables
#
# `PagedKVCache` holds, per layer, one pool of keys and one of values, each
# `[num_blocks, block_size, n_kv_heads, head_dim]`. A `BlockAllocator` keeps the free block ids on a stack
# and a reference count per block. Each sequence has a block table: logical block `i` of the sequence lives
# in physical block `table[i]`. Token `p` of a sequence is therefore found at
#
# $$\text{slot}(p) = \text{table}\!\left[\left\lfloor p / b \right\rfloor\right]\cdot b + (p \bmod b)$$
#
# in the flattened pool, with $b$ the block size. Three sequences growing in turns end up with their blocks
# interleaved in the pool — which is fine, because nothing ever assumes they are adjacent.

# %%
cache = PagedKVCache(n_layers=1, num_blocks=12, block_size=4, n_kv_heads=1, head_dim=8)
a, b, c = cache.add_sequence(), cache.add_sequence(), cache.add_sequence()
for seq, n in [(a, 3), (b, 5), (a, 4), (c, 2), (b, 3), (a, 2), (c, 6)]:
    cache.append(seq, n)
for seq in (a, b, c):
    print(f"sequence {seq}: {cache.lengths[seq]:2d} tokens, block table {cache.block_tables[seq]}")
print(f"token 7 of sequence {a} lives in pool row {slot_of(cache.block_tables[a], 7, cache.block_size)}; "
      f"{cache.allocator.num_free} of {cache.allocator.num_blocks} blocks free, "
      f"{cache.utilisation():.0%} of allocated slots filled")


def show_pool(cache, title, ax=None):
    """Colour each slot of the pool by the sequence that holds it."""
    owners = cache.pool_map().numpy()  # (num_blocks, block_size): seq id, -1 empty slot, -2 free block
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 4))
    shown = np.ma.masked_less(owners, 0).astype(float)
    ax.imshow(np.where(owners == -1, 0.5, np.nan), cmap="Greys", vmin=0, vmax=1, aspect="auto")
    ax.imshow(shown, cmap="tab10", vmin=0, vmax=9, aspect="auto")
    for (i, j), owner in np.ndenumerate(owners):
        ax.text(j, i, "" if owner == -2 else ("·" if owner == -1 else str(owner)), ha="center", va="center", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel("slot in block")
    ax.set_ylabel("physical block")
    return ax


show_pool(cache, "Pool: sequence id per slot\n(grey: allocated, empty; white: free)")
plt.show()

# %% [markdown]
# ## Exercise: address translation
#
# Write `physical_slot(block_table, position, block_size)`, the pool row that holds token `position` of a
# sequence, and `count_blocks(n_tokens, block_size)`, how many blocks `n_tokens` tokens occupy. Careful with
# the first: logical blocks are numbered from 0.

# %%
def physical_slot(block_table, position, block_size):
    """The row of the flattened pool holding token ``position`` of the sequence with ``block_table``."""
    ### BEGIN SOLUTION
    physical_block = block_table[position // block_size]
    return physical_block * block_size + position % block_size
    ### END SOLUTION


def count_blocks(n_tokens, block_size):
    """Blocks needed for ``n_tokens`` tokens (a partly filled block counts)."""
    ### BEGIN SOLUTION
    return (n_tokens + block_size - 1) // block_size
    ### END SOLUTION


# %%
check_physical_slot(physical_slot)
check_blocks_needed(count_blocks);

# %% [markdown]
# ## Paged attention is ordinary attention
#
# Decoding needs one query per sequence against all of that sequence's keys and values. The reference
# `paged_attention_reference` gathers each sequence's blocks through its table into a contiguous tensor and
# calls the book's reference attention; sequences of different lengths in one batch are padded and masked.
# The Triton kernel `paged_decode` computes the same thing without the gather (below, under Triton's
# interpreter when there is no GPU). Both are compared with attention on contiguous copies of the same tokens.

# %%
g = torch.Generator().manual_seed(0)
lengths = [37, 5, 64]
n_heads, n_kv_heads, head_dim = 4, 2, 16
pool = PagedKVCache(1, num_blocks=40, block_size=8, n_kv_heads=n_kv_heads, head_dim=head_dim)
seqs = [pool.add_sequence() for _ in lengths]
for step in range(max(lengths)):  # the sequences grow in turns, so their blocks interleave
    for seq, n in zip(seqs, lengths):
        if step < n:
            pool.write(0, pool.append(seq, 1), torch.randn(1, n_kv_heads, head_dim, generator=g),
                       torch.randn(1, n_kv_heads, head_dim, generator=g))
q = torch.randn(len(seqs), n_heads, 1, head_dim, generator=g)  # (B, H, 1, D): one new token per sequence
tables, lens = pool.batch_tables(seqs)

contiguous = torch.cat([scaled_dot_product_attention(q[i:i + 1], *(t[None] for t in pool.gather(0, s)))
                        for i, s in enumerate(seqs)])  # each sequence alone, contiguous cache
reference = paged_attention_reference(q, pool.keys[0], pool.values[0], tables, lens)
# On a GPU the kernel runs on copies of the same tensors there and picks its own split-K partition (a
# multiple of its key tile); on the CPU, small partitions of 32 tokens show split-K under the interpreter.
on = "cuda" if torch.cuda.is_available() else "cpu"
print(f"block tables (B, max_blocks):\n{tables}")
print(f"paged reference vs contiguous: max |difference| = {(reference - contiguous).abs().max():.1e}")
if TRITON_AVAILABLE:
    kernel = paged_decode(q.to(on), pool.keys[0].to(on), pool.values[0].to(on), tables.to(on), lens.to(on),
                          partition_size=None if on == "cuda" else 32).cpu()
    print(f"Triton paged kernel vs contiguous: max |difference| = {(kernel - contiguous).abs().max():.1e} "
          f"({'GPU' if torch.cuda.is_available() else 'Triton interpreter on the CPU'})")
else:
    print("No triton here: the paged kernel needs it (Linux); the reference above computes the same attention.")

# %% [markdown]
# ### Inside the decode kernel
#
# Decoding does little arithmetic per byte of cache it reads. Per cached token, each query head does
# $2D$ FLOPs for $q\cdot k$ and $2D$ for the weighted $v$, while each KV head's $k$ and $v$ take $2D$ values
# to read, $b$ bytes each: $4HD$ FLOPs per $2H_{kv}Db$ bytes, or $\frac{2H}{H_{kv}\,b}$ FLOPs per byte — 1 for
# MHA in bf16, and $H/H_{kv}$ times that for GQA (printed below for the benchmark's shapes). An H100 does hundreds of bf16 FLOPs in the time it reads a byte, so
# decode's speed is the speed of reading the cache. `attention_lab/kernels/decode_attention.py` is built
# around that:
#
# * **One program per (sequence, KV head, partition).** The program loads the queries of *all* the query
#   heads that share its KV head (the GQA group, chapter 05) as the rows of one small matrix, so every key and
#   value tile it loads serves the whole group: the cache is read once, whatever the group size.
# * **Through the block table.** For key position $n$ the program loads `table[n // block_size]` and reads row
#   `n % block_size` of that block; the loads of the next tiles are issued while the current one is used.
#   With the lookup switched off the same kernel reads an ordinary `(B, Hkv, N, D)` cache.
# * **Online softmax** over the tiles (chapter 08): running maximum $m_i$, denominator $\ell_i$ and
#   numerator `acc`, rescaled by $2^{m_{old} - m_{new}}$ whenever the maximum grows.
# * **Split-K.** Batch × KV heads may be too few programs to keep every SM of the GPU busy (with MQA there is
#   one program per sequence), so long contexts are cut into partitions. Each writes its normalised output $o_p$ with $m_p$ and $\ell_p$,
#   and a second kernel merges them: $m = \max_p m_p$, $w_p = 2^{m_p - m}\,\ell_p$,
#   $o = \sum_p w_p o_p / \sum_p w_p$ — the same algebra as merging two tiles.

# %%
decode_shapes = load_results("paged_decode")["rows"]  # the benchmark's shapes (committed GPU run)
for shape in {(r["heads"], r["n_kv_heads"], r["head_dim"], r["dtype"]): r for r in decode_shapes}.values():
    element = torch.finfo(getattr(torch, shape["dtype"])).bits // 8
    flops = 4 * shape["heads"] * shape["head_dim"]  # per cached token: q·k and p·v for every query head
    read = 2 * shape["n_kv_heads"] * shape["head_dim"] * element  # its k and v, every kv head
    kind = "MHA" if shape["heads"] == shape["n_kv_heads"] else f"GQA ({shape['heads'] // shape['n_kv_heads']} per kv head)"
    print(f"H={shape['heads']}, Hkv={shape['n_kv_heads']}, D={shape['head_dim']}, {shape['dtype']} ({kind}): "
          f"{flops} FLOPs / {read} bytes = {flops / read:.0f} FLOP per byte of cache")

# %% [markdown]
# ## Continuous batching with TinyGPT
#
# `ServingEngine` serves requests with TinyGPT on a `PagedKVCache`. Each step it (1) admits waiting requests
# while their prompts' blocks are free and *prefills* them — the prompt runs through TinyGPT once, its keys and
# values go into fresh blocks; (2) decodes one token for every running sequence in **one batched forward
# pass**, each sequence attending to its own context through its block table (the kernel above on a GPU);
# (3) frees the blocks of sequences that are done. Requests join and leave at every step, so nobody waits for
# the slowest member of a batch. We train a small TinyGPT for a few seconds so the text is not pure noise —
# what matters here is the memory and that every output is exactly what generating the request alone gives
# (sampled outputs too: request `i` samples with its own generator, seeded with `i`, in both runs).

# %%
text = load_corpus()
tokenizer = get_tokenizer(text, kind="char")
data = TokenDataset.from_text(text, tokenizer, context_length=32)
config = TinyGPTConfig(vocab_size=tokenizer.vocab_size, context_length=128, d_model=48, n_layers=2, n_heads=4,
                       n_kv_heads=2)
model = TinyGPT(config)
history = train(model, data, steps=100, batch_size=16, eval_every=100)
print(f"TinyGPT, {model.num_parameters():,} parameters, validation loss {history.final_val_loss:.2f} "
      f"after {history.steps[-1]} steps ({history.seconds:.1f} s)")

rng = np.random.default_rng(0)
stories = text.split("\n")
requests = []
for i in range(16):
    story = stories[i]
    prompt = tokenizer.encode(story[:int(rng.integers(4, 40))])
    requests.append(Request(prompt, max_new_tokens=int(rng.integers(5, 60)), temperature=0.8, top_k=5, seed=i,
                            arrival_step=int(rng.integers(0, 30))))
engine = ServingEngine(model, num_blocks=36, block_size=8)  # 288 token slots
served = engine.run(requests)
alone = [generate(model, torch.tensor([r.prompt]), r.max_new_tokens, r.temperature, r.top_k,
                  generator=torch.Generator().manual_seed(r.seed))[0].tolist() for r in requests]
same = sum(served.outputs[i][0] == alone[i] for i in range(len(requests)))
print(f"{same} of {len(requests)} requests: batched paged output == generating the request alone with the "
      f"contiguous cache; {len(served.stats)} steps, {served.stats[-1].preemptions} preemptions, "
      f"every block back in the pool: {engine.cache.allocator.num_used == 0}")
for r, out in list(zip(requests, served.outputs))[:3]:
    print(f"  {tokenizer.decode(r.prompt)!r} -> {tokenizer.decode(out[0][len(r.prompt):])!r}")

# %%
steps = [s.step for s in served.stats]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8))
ax1.plot(steps, [s.running for s in served.stats], label="sequences in the batch")
ax1.plot(steps, [s.waiting for s in served.stats], label="requests waiting (incl. not yet arrived)")
ax1.set_title("Continuous batching: requests join and leave every step")
ax1.set_xlabel("step")
ax1.set_ylabel("requests")
ax1.legend()
ax2.plot(steps, [s.blocks_used for s in served.stats], label="blocks allocated")
ax2.plot(steps, [s.tokens_stored / engine.cache.block_size for s in served.stats], label="tokens stored ÷ block size")
ax2.axhline(engine.cache.allocator.num_blocks, color="black", linestyle="--", linewidth=1, label="pool size")
ax2.set_title("The real allocator, driving TinyGPT")
ax2.set_xlabel("step")
ax2.set_ylabel("blocks of 8 tokens")
ax2.legend(fontsize=8)
for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# ### The simulator predicts the real allocator
#
# The simulator follows the engine's rules, so the same trace and the same pool give the same memory, step
# by step — which lets us ask the simulator what *contiguous* allocation or other block sizes would have done
# for these TinyGPT requests, with the same budget of token slots.

# %%
tiny_trace = [TraceRequest(len(r.prompt), r.max_new_tokens, r.arrival_step) for r in requests]
budget = engine.cache.allocator.num_blocks * engine.cache.block_size
predicted = simulate(tiny_trace, budget, engine.cache.block_size)
measured_rows = [(s.running, s.blocks_used * engine.cache.block_size, s.tokens_stored) for s in served.stats]
predicted_rows = list(zip(predicted.running.tolist(), predicted.allocated.tolist(), predicted.stored.tolist()))
print(f"simulator == engine at every one of {len(measured_rows)} steps: {measured_rows == predicted_rows}")
measured_use = np.array([s.tokens_stored for s in served.stats]).sum() / np.array(
    [s.blocks_used * s.block_size for s in served.stats]).sum()
print(f"measured: {measured_use:.1%} of allocated slots held tokens")
tiny_results = compare_allocators(tiny_trace, budget, config.context_length, block_sizes=(1, 8, 16, 32))
print(f"{'allocator':<12} {'allocated slots used':>21} {'requests at once':>17} {'steps':>6}")
for name, r in tiny_results.items():
    print(f"{name:<12} {r.utilisation:>21.1%} {r.mean_running:>17.1f} {r.steps:>6}")

# %% [markdown]
# ## Copy-on-write: parallel sampling shares the prompt
#
# Asking for $k$ samples of one prompt needs the prompt's keys and values only once. The engine prefills the
# prompt once and **forks** the sequence $k - 1$ times: a fork copies the block table and increments each
# block's reference count — no data moves. When a sample first writes into the shared, partly filled last
# block, that one block is copied (copy-on-write); full prompt blocks stay shared for good.

# %%
prompt = tokenizer.encode(stories[20][:45])
parallel = Request(prompt, max_new_tokens=30, n_samples=4, temperature=1.0, top_k=5, seed=1)
shared = ServingEngine(model, num_blocks=64, block_size=8).run([parallel])
separate = ServingEngine(model, num_blocks=64, block_size=8, share_prompt=False).run([parallel])
print(f"prompt of {len(prompt)} tokens = {blocks_needed(len(prompt), 8)} blocks of 8; 4 samples of 30 tokens")
print(f"peak blocks: {shared.peak_blocks} sharing the prompt vs {separate.peak_blocks} without "
      f"({1 - shared.peak_blocks / separate.peak_blocks:.0%} less); blocks copied on write: {shared.copies}; "
      f"same samples either way: {shared.outputs == separate.outputs}")
for sample in shared.outputs[0]:
    print("  ", repr(tokenizer.decode(sample)))

fig, ax = plt.subplots(figsize=(6.5, 3.5))
ax.plot([s.step for s in separate.stats], [s.blocks_used for s in separate.stats], label="each sample has its own prompt")
ax.plot([s.step for s in shared.stats], [s.blocks_used for s in shared.stats], label="prompt shared, copy-on-write")
ax.set_title("Parallel sampling, 4 samples of one prompt")
ax.set_xlabel("step")
ax.set_ylabel("blocks of 8 tokens in use")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# ## On a GPU: the paged kernel against contiguous SDPA
#
# `benchmarks/paged_decode.py` times one decoding step at the sizes that matter on an H100 or H200 — batch 32,
# 32 query heads, 32, 8 or 1 KV heads, head dimension 128, contexts of 1k, 4k and 32k tokens, bf16, blocks of 16
# tokens handed out in random order — for the paged kernel, the same kernel on a contiguous cache, PyTorch's
# SDPA on a contiguous cache, and the gather reference. It checks correctness first, then reports the
# effective bandwidth (cache bytes read per second) against the copy bandwidth measured in the same run. The
# targets (DESIGN §5): at least 85% of copy bandwidth, and within 15% of contiguous SDPA. The committed
# results are shown below (a GPU run of the script regenerates them).

# %%
bench = load_results("paged_decode")  # committed GPU results: package data, shipped in the wheel
env = bench["environment"]
print(f"{env['card']} | torch {env['torch']} | triton {env['triton']} | CUDA {env['cuda']} | "
      f"copy bandwidth {bench['copy_tb_s']:.2f} TB/s")
print(f"{'Hkv':>4} {'context':>8} | {'paged ms':>8} {'TB/s':>5} {'of copy':>8} | {'SDPA ms':>8} "
      f"{'paged speed vs SDPA':>20} | {'gather ref ms':>13} | kernel tile / partition")
for row in bench["rows"]:
    plan = row["kernel_plan"]
    print(f"{row['n_kv_heads']:>4} {row['context']:>8} | {row['ms']['paged_triton']:8.3f} "
          f"{row['tb_s']['paged_triton']:5.2f} {row['of_copy']['paged_triton']:8.0%} | "
          f"{row['ms']['sdpa_contiguous']:8.3f} {row['paged_vs_sdpa_speed']:20.2f} | "
          f"{row['ms']['gather_reference']:13.3f} | {plan['tile_n']} keys, {plan['partitions']} × {plan['partition_size']}")
print(f"every shape meets both targets: {not any(misses_target(r) for r in bench['rows'])}")
for r in bench["rows"]:
    if misses_target(r):  # under 85 % of copy, or more than 15 % slower than contiguous SDPA
        print(f"  missed: Hkv={r['n_kv_heads']} at {r['context']:,} tokens reads {r['kv_bytes'] / 2**20:,.0f} MiB "
              f"in {r['ms']['paged_triton'] * 1e3:.0f} µs")
above = [r["of_copy"][key] for r in bench["rows"] for key in ("paged_triton", "contiguous_triton", "sdpa_contiguous")
         if r["of_copy"][key] > 1]
card = spec_for_name(env["card"])
print(f"{len(above)} of {3 * len(bench['rows'])} kernel timings read faster than 'copy bandwidth': "
      f"{min(above):.1%}–{max(above):.1%} of it" if above else "no timing exceeds the copy bandwidth")
print(f"caches read: {min(r['kv_bytes'] for r in bench['rows']) / 2**20:,.0f}–"
      f"{max(r['kv_bytes'] for r in bench['rows']) / 2**20:,.0f} MiB, vs an L2 of "
      f"{card.l2_mib if card else '?'} MiB on this card")
fig, ax = plt.subplots(figsize=(8, 4))
x = np.arange(len(bench["rows"]))
for i, (key, label) in enumerate([("paged_triton", "paged Triton kernel"), ("sdpa_contiguous", "SDPA, contiguous"),
                                  ("gather_reference", "gather + SDPA")]):
    ax.bar(x + (i - 1) * 0.27, [r["tb_s"][key] for r in bench["rows"]], 0.27, label=label)
ax.axhline(bench["copy_tb_s"], color="black", linestyle="--", linewidth=1, label="copy bandwidth")
ax.set_xticks(x, [f"Hkv={r['n_kv_heads']}, N={r['context'] // 1024}k" for r in bench["rows"]])
ax.set_ylabel("effective KV-read bandwidth (TB/s)")
ax.set_title(f"One decoding step, B=32, H=32, D=128, bf16 ({env['card']})")
ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
fig.tight_layout()
ax.grid(axis="y", alpha=0.3)
plt.show()

if torch.cuda.is_available():  # a quick live check on this GPU
    dtype = torch.bfloat16 if detect_device().compute_capability >= 80 else torch.float16
    gpu_pool = PagedKVCache(1, 64 * 32, 16, 8, 128, device="cuda", dtype=dtype)
    gpu_seqs = [gpu_pool.add_sequence() for _ in range(32)]
    for s in gpu_seqs:
        gpu_pool.append(s, 1000)
    gpu_pool.keys.normal_()
    gpu_pool.values.normal_()
    q_gpu = torch.randn(32, 32, 1, 128, device="cuda", dtype=dtype)
    t_gpu, l_gpu = gpu_pool.batch_tables(gpu_seqs)
    k_gpu, v_gpu, _ = gather_kv(gpu_pool.keys[0], gpu_pool.values[0], t_gpu, l_gpu)
    out = paged_decode(q_gpu, gpu_pool.keys[0], gpu_pool.values[0], t_gpu, l_gpu)
    ref = torch.nn.functional.scaled_dot_product_attention(q_gpu, k_gpu, v_gpu, enable_gqa=True)
    print(f"on this {torch.cuda.get_device_name(0)}: paged kernel vs SDPA, max |difference| "
          f"{(out.float() - ref.float()).abs().max():.1e}")

# %% [markdown]
# **More than 100 % of copy bandwidth?** The printed shares above 1 are not a measuring error. The copy
# bandwidth is that of `dst.copy_(src)` over 2 GiB, counting the bytes read *plus* the bytes written; a
# copy keeps switching the memory between reading and writing, and each switch costs bus cycles, while a
# decode kernel only reads. A pure read stream therefore gets slightly more bytes through than a copy
# does. The L2 cache is no part of it: a cache read larger than the L2 (sizes printed above) cannot be found
# there by a repeated call, and for the smaller ones (one KV head at short context) the benchmark rotates
# several input sets whose sum is larger than the L2 (`rotated_input_sets` in the JSON). The copy is a
# yardstick for "as fast as memory goes", not a hard ceiling for reads.
#
# With 32 or 8 KV heads the paged kernel reads the scattered blocks at about the copy bandwidth of the card
# and stays close to SDPA on a contiguous cache: the indirection through the block table costs almost nothing,
# because a block of 16 tokens × 128 dimensions is already a long, contiguous read. Where a shape misses a
# target (printed above) it is a short context, mostly with one KV head: the whole step takes tens of
# microseconds, so what a step costs whatever its size — the launch, the block-table lookups, the split-K
# merge of the partitions — is no longer small beside the read. The gather reference is several times slower:
# it copies the whole cache before attending to it. `benchmarks/decode_gqa.py` uses the same kernel on a
# contiguous cache for chapter 05's comparison across GQA ratios.
#
# **Where do the last few percent go?** The same run timed the same tokens four more ways: the pool with each
# sequence's blocks in order (no scatter), the pool stored head-major (each KV head's 16 rows of a block one
# contiguous run instead of rows `Hkv · D` apart), and the same kernel without a block table on a
# `(B, Hkv, N, D)` and on a `(B, N, Hkv, D)` cache. If scattered blocks cost bandwidth (memory pages, address
# translation), the in-order pool would be faster; if the token-major rows did, the head-major pool would be.
# Each ratio is the first time over the second (1.02: 2 % slower).

# %%
paged_cost_lines, paged_cost_claims = paged_cost_reading(bench)  # attention_lab/caches/paged_cost.py
print("\n".join(paged_cost_lines))
for claim, holds in paged_cost_claims.items():
    print(f"{'yes' if holds else 'NO '}: {claim}")

# %% [markdown]
# Neither is the cause: blocks in order or a head-major pool change the time by a few percent at most. The
# token-major order costs the contiguous kernel a little, but less than the paged kernel trails that kernel at
# every shape, and storing the pool head-major does not win it back for the paged kernel. What is left is the
# indirection itself: before each tile's reads the kernel loads that tile's block numbers and builds every row's
# address from them, which the contiguous kernel never does. It weighs most where a step is shortest (one KV head), and it is why the
# paged kernel trails SDPA's contiguous decode by a few percent even where both read at copy speed.

# %% [markdown]
# ## Summary
#
# The cell below prints what this chapter measured. The step counts are the simulator's, where a prefill shares
# the step that admits it — also the re-prefill of a preempted request, which recomputes its prompt and every
# token it had produced; the second count charges each admission and re-prefill a step of its own, a bound
# in paging's disfavour.

# %%
contiguous_sim, paged16 = results["contiguous"], results["paged 16"]
print(f"Trace of {len(trace)} requests, KV budget of {BUDGET // MAX_LEN} max-length requests:")
print(f"  contiguous max-length: {contiguous_sim.budget_used:.1%} of the budget holds tokens, "
      f"{contiguous_sim.mean_running:.1f} requests at once, {contiguous_sim.steps} steps")
print(f"  paged, blocks of 16:   {paged16.budget_used:.1%} of the budget holds tokens, "
      f"{paged16.mean_running:.1f} requests at once, {paged16.steps} steps, {paged16.preemptions} preemptions")
# The simulator merges a prefill into the step that admits it, and a preempted request's re-prefill (its prompt
# plus every token it had produced) is such a prefill: free in the step count. Counted as a step of its own, as
# vLLM's scheduler runs prefills, every admission costs one more step: at most len(trace) + preemptions for paged
# (each preemption re-admits at most once), none extra given to contiguous (it never preempts).
paged_upper = paged16.steps + len(trace) + paged16.preemptions
print(f"  steps through the trace: {contiguous_sim.steps / paged16.steps:.1f}× fewer with paging when prefills "
      f"and re-prefills ride along for free; at least {contiguous_sim.steps / paged_upper:.1f}× fewer counting each "
      f"admission and re-prefill as one extra step ({contiguous_sim.steps} vs at most {paged_upper})")
print(f"  (vLLM paper, Fig. 2: {PUBLISHED['KV memory holding token states, existing systems'][0]} in existing "
      f"systems vs {PUBLISHED['KV memory holding token states, vLLM (paging)'][0]} with paging)")
print(f"TinyGPT served {len(requests)} requests with continuous batching: {same}/{len(requests)} identical to "
      f"generating alone; simulator matched the real allocator at every step: {measured_rows == predicted_rows}")
print(f"Parallel sampling (4 samples): {shared.peak_blocks} vs {separate.peak_blocks} peak blocks with / without "
      f"sharing, {shared.copies} blocks copied on write")
worst = min(bench["rows"], key=lambda r: r["of_copy"]["paged_triton"])
slowest = min(bench["rows"], key=lambda r: r["paged_vs_sdpa_speed"])
print(f"Paged decode on {bench['environment']['card']}: at least {worst['of_copy']['paged_triton']:.0%} of copy "
      f"bandwidth and at least {slowest['paged_vs_sdpa_speed']:.2f}× the speed of contiguous SDPA on every shape")
