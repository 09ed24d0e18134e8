# %% [markdown]
# # 02 · Causal masking
#
# A language model predicts the next token from the ones before it. If position 3 could attend to
# position 4 while learning to predict token 4, it would simply copy the answer. A **causal mask**
# forbids every query from seeing keys to its right: query $i$ may attend to keys $j \le i$.
# In code (DESIGN convention) a mask is boolean with `True` = *may attend*; the scores of forbidden
# pairs become $-\infty$ before the softmax, so their weights are exactly $e^{-\infty} = 0$.

# %%
import matplotlib.pyplot as plt
import torch

from attention_lab import TinyGPT, TinyGPTConfig, attention_weights, causal_mask
from attention_lab.data import TokenDataset, get_tokenizer, load_corpus
from attention_lab.generate import generate
from attention_lab.book.plots import heatmap, loss_curve
from attention_lab.toy_sentence import SENTENCE, word_embeddings
from attention_lab.train import train

torch.set_num_threads(1)  # small tensors: one CPU thread is as fast, and the time is the same on any machine

# %% [markdown]
# ## The mask and the −∞ triangle

# %%
mask = causal_mask(6)  # (6, 6) bool, True on and below the diagonal
x = word_embeddings().view(1, 1, 6, -1)  # the running example from chapter 01, Q = K = V = X
scores = (x @ x.transpose(-1, -2))[0, 0] / x.shape[-1] ** 0.5  # (6, 6)
masked_scores = scores.masked_fill(~mask, float("-inf"))
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
heatmap(mask.int(), SENTENCE, SENTENCE, title="Causal mask (1 = may attend)", fmt="{:.0f}", ax=axes[0], cmap="Greys")
heatmap(masked_scores, SENTENCE, SENTENCE, title="Scores QKᵀ/√d with the upper triangle at −∞", ax=axes[1])
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Masking is not just zeroing
#
# A common shortcut — and the table on many lecture slides — takes the unmasked attention table of
# chapter 01 and blanks the upper triangle. Those rows no longer sum to 1: CAT would still "spend" weight
# on IS, ON, A, CHAIR, and that weight simply vanishes. The real masked softmax renormalises each row
# over the keys it may see. Both tables, computed:

# %%
unmasked = attention_weights(x, x)[0, 0]  # chapter 01's table
zeroed = unmasked * mask  # the shortcut: keep the unmasked weights, blank the future
masked = attention_weights(x, x, causal=True)[0, 0]  # softmax over the allowed keys only
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
heatmap(zeroed, SENTENCE, SENTENCE, title="Unmasked weights, future blanked (rows don't sum to 1)", ax=axes[0])
heatmap(masked, SENTENCE, SENTENCE, title="Real masked softmax (rows renormalised)", ax=axes[1])
plt.tight_layout()
plt.show()
print("row sums, blanked:", zeroed.sum(-1).numpy().round(3))
print("row sums, masked: ", masked.sum(-1).numpy().round(3))
print("renormalising the blanked rows gives the masked softmax:",
      torch.allclose(zeroed / zeroed.sum(-1, keepdim=True), masked, atol=1e-6))

# %% [markdown]
# The last line is worth a moment: because $e^{s_{ij}}$ does not depend on which other keys are present,
# the masked softmax is the blanked table divided by its row sums. THE (row 0) sees only itself, so its
# single weight is 1.
#
# ## Exercise: the mask and the masked softmax

# %%
def make_causal_mask(n):
    """(n, n) bool mask, True where query i may attend to key j."""
    ### BEGIN SOLUTION
    return torch.tril(torch.ones(n, n, dtype=torch.bool))
    ### END SOLUTION


def masked_softmax(scores, mask):
    """softmax over the last dim of scores (..., n, n), giving weight 0 where mask is False."""
    ### BEGIN SOLUTION
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    ### END SOLUTION


# %%
from attention_lab.exercises.ch02 import check_causal_mask, check_masked_softmax

check_causal_mask(make_causal_mask)
check_masked_softmax(masked_softmax)

# %% [markdown]
# ## Why the mask lets one pass train every position
#
# With the mask, the output at position $t$ depends only on tokens $0 \ldots t$. So one forward pass over
# a sequence of $N$ tokens yields $N$ predictions — "after THE comes ?", "after THE CAT comes ?", … —
# each exactly what the model would compute if it saw only that prefix. Training uses all $N$ losses at
# once, in parallel. We check that claim on a TinyGPT: the logits at every position of one full pass
# equal the logits of separate passes over each prefix.

# %%
text = load_corpus()  # offline: the book's generated stories (see attention_lab/data.py)
tokenizer = get_tokenizer(text)
print(text[:180])
config = TinyGPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=64, n_layers=2, n_heads=4)
torch.manual_seed(0)
model = TinyGPT(config).to(device)
print(f"TinyGPT: {model.num_parameters():,} parameters")

ids = torch.tensor([tokenizer.encode("once there was a cat.")], device=device)
with torch.no_grad():
    full_logits, _ = model(ids)  # one pass, (1, N, vocab)
    prefix_logits = torch.cat([model(ids[:, : t + 1])[0][:, -1:] for t in range(ids.shape[1])], dim=1)
print(f"{ids.shape[1]} prefixes: one masked pass equals {ids.shape[1]} separate passes:",
      torch.allclose(full_logits, prefix_logits, atol=1e-5))

# %% [markdown]
# ## Training TinyGPT
#
# A short run on the corpus (a few hundred steps; a CPU is enough). Each step predicts every next token of
# 32 random windows of 64 tokens.

# %%
data = TokenDataset.from_text(text, tokenizer, config.context_length)
steps = 800 if device.type == "cuda" else 400
result = train(model, data, steps=steps, batch_size=32, lr=3e-3, eval_every=50)
loss_curve(result, title=f"TinyGPT on the story corpus ({steps} steps)")
plt.show()
print(f"validation loss: {result.val_loss[0]:.3f} -> {result.final_val_loss:.3f} nats/token "
      f"(uniform guessing: {torch.log(torch.tensor(float(tokenizer.vocab_size))):.3f}); {result.seconds:.0f} s")

# %% [markdown]
# ## Generation
#
# Generation runs the model, takes the logits of the last position, picks a token and appends it:
# **greedy** picks the most likely token; **temperature** $T$ divides the logits by $T$ before sampling
# (low = safe, high = adventurous); **top-k** samples only among the $k$ most likely tokens.

# %%
prompt = torch.tensor([tokenizer.encode("once there was a ")], device=device)
generator = torch.Generator(device=device).manual_seed(0)
for name, kwargs in [("greedy", dict(temperature=0.0)), ("T=0.8, top-k=5", dict(temperature=0.8, top_k=5)),
                     ("T=1.5", dict(temperature=1.5))]:
    out = generate(model, prompt, 45, generator=generator, **kwargs)
    print(f"{name:>15}: {tokenizer.decode(out[0].tolist())!r}")

# %% [markdown]
# ## Summary
#
# * The causal mask sets scores above the diagonal to $-\infty$; the softmax then gives them weight 0 and
#   renormalises each row over the past. Blanking the unmasked table instead leaves rows that don't sum
#   to 1 (measured above); renormalising those rows recovers the masked softmax.
# * Because position $t$ sees only positions $\le t$, one pass computes every prefix's prediction — we
#   checked that it equals separate passes over each prefix — so training uses all positions at once.
# * A 2-layer TinyGPT trained for a few hundred steps already writes the corpus's sentence patterns; its
#   validation loss is printed above, against the loss of uniform guessing.
