# %% [markdown]
# # 00 · Why attention
#
# This book builds attention from a single dot product up to the kernels that serve today's language
# models: causal masking, the KV cache, sliding windows, multi-query and grouped-query attention,
# the GPU memory hierarchy, online softmax, FlashAttention (in PyTorch, then a real Triton kernel),
# PagedAttention and Multi-head Latent Attention. Every chapter is a notebook; every number in it is
# computed by the small library `attention_lab` that the notebooks import, and every claim is a test.

# %%
import matplotlib.pyplot as plt
import torch

from attention_lab.book.plots import heatmap
from attention_lab.book.setup_cell import triton_version
from attention_lab.bottleneck import (attention_weights_over_positions, longest_recovered, make_codebook,
                                      recovery_accuracy)

torch.set_num_threads(1)  # small tensors: one CPU thread is as fast, and the time is the same on any machine

# %% [markdown]
# ## A short history
#
# **1. Sequence-to-sequence with a fixed vector (2014).** Sutskever, Vinyals & Le (*Sequence to Sequence
# Learning with Neural Networks*, 2014) and Cho et al. (2014) translated sentences with two recurrent
# networks: an encoder read the source sentence and squeezed it into **one fixed-size vector**; a decoder
# unrolled the translation from that vector alone. Whatever the sentence length, the decoder saw the
# same number of numbers — the *bottleneck*. Cho et al. (*On the Properties of Neural Machine Translation:
# Encoder–Decoder Approaches*, 2014) measured it: the BLEU score of their encoder–decoders fell as the
# source sentences grew longer.
#
# **2. Additive attention (2014/2015).** Bahdanau, Cho & Bengio (*Neural Machine Translation by Jointly
# Learning to Align and Translate*, ICLR 2015) let the decoder look back at **every** encoder state at
# every step, weighting them by a learned score `vᵀ tanh(W_q s + W_k h_j)` passed through a softmax.
# The weights are an *alignment*: which source words matter for the word being produced. Luong et al.
# (2015) simplified the score to a (bilinear) dot product.
#
# **3. Attention is all you need (2017).** Vaswani et al. dropped the recurrence: every position attends
# to every other position with *scaled dot-product attention* `softmax(QKᵀ/√d)V`, in parallel, with
# several heads. That is the transformer, and the rest of this book is about making its attention
# cheaper: in compute, in memory traffic, and in the size of the cache it needs to generate text.
#
# ## The bottleneck, measured
#
# The fixed vector's trouble is **capacity**, not word order: a recurrent encoder keeps the order (each word
# enters at its own step), but it has to fit a sentence of any length into the same $D$ numbers. We can see
# that without training anything (`attention_lab.bottleneck`):
#
# * Words are random unit vectors $e_w$ in $D$ dimensions, drawn from a small vocabulary.
# * **Fixed-size summary.** A recurrent encoder $h_t = R\,h_{t-1} + e_{x_t}$, with $R$ a random rotation, so
#   nothing fades and every word sits at its own angle. The decoder gets only $h_N$. To read word $i$ it
#   undoes word $i$'s rotations and picks the nearest word vector; the other $N-1$ words are still in there,
#   as noise.
# * **Attention.** The decoder keeps all $N$ states (word $i$'s vector under a key for position $i$) and reads
#   word $j$ with the softmax of its query against every key.
#
# How many words come back right, as the sentence grows:

# %%
lengths = [1, 2, 4, 8, 16, 32, 64, 128]
vocab_size, trials = 50, 200
summaries = {dim: recovery_accuracy(lengths, dim, "summary", vocab_size, trials) for dim in (16, 32, 64, 128)}
attention = recovery_accuracy(lengths, 16, "attention", vocab_size, trials)
print(f"{trials} random sentences per length, words drawn from a vocabulary of {vocab_size}")

fig, ax = plt.subplots(figsize=(11, 4.5))
for dim, accuracy in summaries.items():
    ax.semilogx(lengths, accuracy, "o-", base=2, label=f"fixed summary, D = {dim} numbers")
ax.semilogx(lengths, attention, "s--", base=2, color="black", lw=2.5, label="attention over all N states, D = 16")
ax.axhline(1 / vocab_size, color="gray", ls=":", label=f"chance (1 / {vocab_size})")
ax.set_title("Reading a sentence back: one fixed vector vs attention")
ax.set_xlabel("sentence length N (words)")
ax.set_ylabel("words recovered (fraction)")
ax.set_xticks(lengths, [str(n) for n in lengths])
ax.set_ylim(0, 1.05)
ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
ax.grid(alpha=0.3)
plt.show()

print("N:      " + " ".join(f"{n:5d}" for n in lengths))
for dim, accuracy in summaries.items():
    print(f"D={dim:3d}:  " + " ".join(f"{a:5.2f}" for a in accuracy) + "   (fixed summary)")
print("D= 16:  " + " ".join(f"{a:5.2f}" for a in attention) + "   (attention)")
for dim, accuracy in summaries.items():
    print(f"a {dim:3d}-number summary still returns at least half of the words up to N = "
          f"{longest_recovered(lengths, accuracy)}")

# %% [markdown]
# The fixed summary gets worse with every doubling of the sentence, for every size; a vector twice as large
# only postpones the fall (the printed lengths grow with $D$). Attention never loses a word, because it never
# squeezes: its memory is $N$ vectors, and it grows with the sentence. That is the trade the rest of the book
# negotiates — chapter 01 measures what reading all $N$ states costs, and chapters 03–13 make it cheaper.
#
# The decoder's weights form a table, one row per word it reads back, that we will draw in every chapter.
# For a short sentence:

# %%
n_words = 8
book = make_codebook(vocab_size, 16, n_words)
table = attention_weights_over_positions(n_words, book)  # (decoder step, encoder position)
heatmap(table, [f"read word {j}" for j in range(n_words)], [f"state {i}" for i in range(n_words)],
        title="Attention weights of the decoder (rows sum to 1)", xlabel="encoder state (key)",
        ylabel="decoder step (query)")
plt.show()
print("weight on the right state, per row:", table.diagonal().numpy().round(3))

# %% [markdown]
# ## Exercise: additive attention
#
# Write Bahdanau's attention for one decoder step. Shapes: `query (B, Dq)`, `keys (B, N, Dk)`,
# `values (B, N, Dv)`, `w_query (A, Dq)`, `w_key (A, Dk)`, `v (A,)`. Return `(context (B, Dv), weights (B, N))`.

# %%
def my_additive_attention(query, keys, values, w_query, w_key, v):
    ### BEGIN SOLUTION
    hidden = torch.tanh((query @ w_query.T).unsqueeze(1) + keys @ w_key.T)  # (B, N, A)
    weights = torch.softmax(hidden @ v, dim=-1)  # (B, N)
    context = (weights.unsqueeze(1) @ values).squeeze(1)  # (B, Dv)
    return context, weights
    ### END SOLUTION


# %%
from attention_lab.exercises.ch00 import check_additive_attention

check_additive_attention(my_additive_attention)

# %% [markdown]
# ## What the book covers
#
# | # | chapter | the cost it attacks |
# |---|---|---|
# | 01 | Self-attention | — (the baseline: O(N²d) time, O(N²) memory) |
# | 02 | Causal masking | lets one pass train every position |
# | 03 | KV cache | recomputation during generation |
# | 04 | Sliding window | cache size and compute grow with N |
# | 05 | Multi-query attention | KV-cache size and decode memory traffic |
# | 06 | Uptraining to GQA | quality lost by MQA, without retraining from scratch |
# | 07 | The GPU beneath | — (why memory traffic, not FLOPs, decides) |
# | 08 | Online softmax | the need to see a whole row before normalising |
# | 09 | FlashAttention, tiled | the N×N matrix in slow memory |
# | 10 | FlashAttention in Triton | the same, as a real GPU kernel |
# | 11 | PagedAttention | KV-cache fragmentation when serving many requests |
# | 12 | Multi-head Latent Attention | KV-cache size, by compression instead of sharing |
# | 13 | Side by side | all of them on one model |
#
# ## Your environment
#
# The setup cell above printed Python, PyTorch and Triton versions and the device. On a CPU every
# chapter still runs (GPU-only cells say what they would show, and plot results measured on a real GPU
# that are committed with the book). On Colab choose *Runtime → Change runtime type → T4 GPU*.

# %%
print(f"torch {torch.__version__}, triton {triton_version() or 'not installed'}")
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {props.name}, compute capability {props.major}.{props.minor}, {props.multi_processor_count} SMs, "
          f"{props.total_memory / 2**30:.1f} GiB")
    print("bf16 supported:", torch.cuda.is_bf16_supported())
else:
    print("No GPU: the book takes its CPU path (Triton kernels run under the interpreter on tiny shapes).")

# %% [markdown]
# ## Summary
#
# * The seq2seq bottleneck is capacity: one vector of fixed size holds less and less of a sentence as the
#   sentence grows, even when the encoder keeps the word order. Attention keeps every state and reads
#   what it needs from all of them, at a memory cost that grows with the sentence.
# * Additive attention scores each state with a small network; the transformer's scaled dot product
#   (next chapter) is the cheaper score that scaled up.
# * Measured here (printed by the cell below): how much of a sentence each reader returned at the longest
#   length, and your additive attention against the library's on random odd shapes (the check above).

# %%
print(f"at N = {lengths[-1]} words: fixed summaries return " + ", ".join(
    f"{accuracy[-1]:.0%} (D={dim})" for dim, accuracy in summaries.items()) + f"; attention returns {attention[-1]:.0%}")
