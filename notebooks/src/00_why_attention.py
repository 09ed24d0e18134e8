# %% [markdown]
# # 00 · Why attention
#
# This book builds attention from a single dot product up to the kernels that serve today's language
# models: causal masking, the KV cache, sliding windows, multi-query and grouped-query attention,
# the GPU memory hierarchy, online softmax, FlashAttention (in PyTorch, then a real Triton kernel),
# PagedAttention and Multi-head Latent Attention. Every chapter is a notebook; every number in it is
# computed by the small library `attention_lab` that the notebooks import, and every claim is a test.

# %%
import torch
import matplotlib.pyplot as plt

from attention_lab.additive import mean_pool
from attention_lab.attention import attention_weights
from attention_lab.book.setup_cell import triton_version
from attention_lab.book.plots import heatmap

# %% [markdown]
# ## A short history
#
# **1. Sequence-to-sequence with a fixed vector (2014).** Sutskever, Vinyals & Le (*Sequence to Sequence
# Learning with Neural Networks*, 2014) and Cho et al. (2014) translated sentences with two recurrent
# networks: an encoder read the source sentence and squeezed it into **one fixed-size vector**; a decoder
# unrolled the translation from that vector alone. Whatever the sentence length, the decoder saw the
# same number of numbers — the *bottleneck*. Cho et al. reported translation quality falling sharply
# as sentences grew longer.
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
# ## The bottleneck in one picture
#
# Summarise a sequence by one vector — here the average of its word vectors, the simplest fixed-size
# summary — and word order is gone: "dog bites man" and "man bites dog" become the same vector.
# Attention keeps every state, so a query can find *which* word sits where.

# %%
torch.manual_seed(0)
vocab = {"dog": 0, "bites": 1, "man": 2}
word_vectors = torch.randn(3, 8)
position_vectors = torch.randn(3, 8)  # what each position adds (chapter 01 explains why models need it)


def encode(words: list[str]) -> torch.Tensor:
    """Encoder states (1, N, 8): word vector + position vector."""
    ids = torch.tensor([vocab[w] for w in words])
    return (word_vectors[ids] + position_vectors).unsqueeze(0)


a, b = encode(["dog", "bites", "man"]), encode(["man", "bites", "dog"])
print("fixed-vector summaries equal:", torch.allclose(mean_pool(a), mean_pool(b)))

# A query asking "which word is at position 0 (the subject)?" attends over the states instead,
# scoring each state by a dot product (Luong's simplification of the additive score below).
query = position_vectors[0].view(1, 1, 1, 8)  # (B=1, H=1, Nq=1, D)
for name, states in [("dog bites man", a), ("man bites dog", b)]:
    weights = attention_weights(query, states.unsqueeze(1), scale=1.0)[0, 0, 0]  # (N,)
    context = weights @ states[0]  # (8,)
    subject = min(vocab, key=lambda w: torch.dist(context - position_vectors[0], word_vectors[vocab[w]]))
    print(f"{name!r}: attention weights {weights.numpy().round(3)} -> the subject is {subject!r}")

# %% [markdown]
# The summary cannot tell the two sentences apart; attention can, because the answer is computed
# from the states themselves. The weights form a table — one row per query — that we will draw in
# every chapter. Here is the table of a decoder asking, at each of three steps, for one of the three
# positions:

# %%
queries = position_vectors.view(1, 1, 3, 8)  # step t looks for position t
table = attention_weights(queries, a.unsqueeze(1), scale=1.0)[0, 0]  # (3 steps, 3 positions)
heatmap(table, ["step 1", "step 2", "step 3"], ["dog", "bites", "man"],
        title="Dot-product attention weights for 'dog bites man' (rows sum to 1)", xlabel="encoder position (key)",
        ylabel="decoder step (query)")
plt.show()

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
# * A fixed-vector summary of a sequence loses information (here, word order) that attention keeps,
#   because attention computes its answer from every state on demand.
# * Additive attention scores each state with a small network; the transformer's scaled dot product
#   (next chapter) is the cheaper score that scaled up.
# * Measured here: the two summaries were identical, while attention over the states found a different
#   subject in each sentence; your additive attention matched the library's on random odd shapes.
