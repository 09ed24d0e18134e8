# %% [markdown]
# # 02 · Causal masking
#
# A language model predicts the next token from the ones before it. If position 3 could attend to
# position 4 while learning to predict token 4, it would simply copy the answer. A **causal mask**
# forbids every query from seeing keys to its right: query $i$ may attend to keys $j \le i$.
# In this book's code a mask is boolean with `True` = *may attend*; the scores of forbidden pairs
# become $-\infty$ before the softmax, so their weights are exactly $e^{-\infty} = 0$.

# %%
import matplotlib.pyplot as plt
import torch

from attention_lab import TinyGPT, TinyGPTConfig, attention_weights, causal_mask
from attention_lab.attention_maps import (attention_maps, hero_attention_by_story, hero_of, hero_recall,
                                          sentence_subjects, uniform_share)
from attention_lab.book.plots import heatmap, loss_curve
from attention_lab.data import TokenDataset, get_tokenizer, load_corpus
from attention_lab.generate import generate
from attention_lab.seed_numbers import CAUSAL_ROW_SUMS, SOURCE, renormalised, unmasked_row
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
# A common shortcut — and, below, the lecture slides' own table — takes the unmasked attention table of
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
# ### The slides' causal table has this fault
#
# The lecture slides this book was made from print a causal table for the same sentence. Their tables are
# not available here; the numbers below are the ones the book's issue #17 quotes from them (loaded from
# `attention_lab.seed_numbers`; nothing else of the slides' table is known, and nothing is filled in). The
# quoted row sums give the fault away: a row of a causal softmax sums to 1, and these do not. The slides'
# causal rows are their *unmasked* weights (chapter 01 showed the quoted ones) with the future blanked —
# exactly the shortcut above. Renormalising each row by its sum gives the table they should show:

# %%
print(f"source: {SOURCE}")
rows = {word: unmasked_row(word) for word in CAUSAL_ROW_SUMS}  # the slides' unmasked weights of the visible keys
for word, row in rows.items():
    print(f"{word:>3} row: the slides' causal row sums to {CAUSAL_ROW_SUMS[word]:.3f}; their unmasked weights of the "
          f"keys it may see, {list(row)}, sum to {sum(row):.3f}")
    print(f"{'':>3}      renormalised: {[round(w, 3) for w in renormalised(row)]}, sum {sum(renormalised(row)):.3f}")
words = list(rows)
slides_rows = torch.full((len(words), len(words)), float("nan"))  # rows THE and CAT, keys THE and CAT
corrected = torch.full((len(words), len(words)), float("nan"))
for i, row in enumerate(rows.values()):
    slides_rows[i, : len(row)] = torch.tensor(row)
    corrected[i, : len(row)] = torch.tensor(renormalised(row))
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
heatmap(slides_rows, words, words, ax=axes[0], cmap="Oranges", title="Slides' causal rows (sums < 1)")
heatmap(corrected, words, words, ax=axes[1], title="Renormalised: the correct masked softmax")
plt.tight_layout()
plt.show()

# %% [markdown]
# Only the rows whose every weight is quoted can be corrected; the other rows of the slides' table would
# be fixed the same way, each divided by its own sum.
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
# A short run on the corpus (a CPU is enough). Each step predicts every next token of a batch of random
# windows of the corpus (the cell prints how many steps, windows and tokens).

# %%
data = TokenDataset.from_text(text, tokenizer, config.context_length)
steps, batch_size = 800, 32
print(f"{steps} steps of {batch_size} windows of {config.context_length} {tokenizer.units}")
result = train(model, data, steps=steps, batch_size=batch_size, lr=3e-3, eval_every=100)
loss_curve(result, title=f"TinyGPT on the story corpus ({steps} steps)")
plt.show()
print(f"validation loss: {result.val_loss[0]:.3f} -> {result.final_val_loss:.3f} nats/token "
      f"(uniform guessing: {torch.log(torch.tensor(float(tokenizer.vocab_size))):.3f}); {result.seconds:.0f} s")

# %% [markdown]
# ## A trained head's attention map
#
# Chapter 01's heads had random projections and spread their weight almost evenly. A trained head has
# learned what to look for. The corpus was built to need one kind of look: a story opens with "once there
# was a fox." and then keeps naming its hero ("the fox is on a mat. the fox …"). Right after "the", nothing
# nearby says which animal comes next — only the story's earlier mentions do. So wherever a story names its
# hero again, the model must fetch the name from earlier in the context (`attention_lab.attention_maps`):
#
# * **recall positions**: the token just before each later mention of the hero, where the model predicts
#   the name's first token;
# * for each head of each layer, the **share of attention** those positions put on the tokens of the hero's
#   name before them, averaged over held-out stories, against the share a head attending evenly to
#   everything before it would get;
# * and, for each head, how often the model still names the hero when that head is **removed** (its output
#   set to zero): what the look-back actually rests on.

# %%
stories = text.strip().split("\n")
held_out = stories[-100:]  # the end of the corpus: inside the validation tenth that training never saw
heroes = sorted(set(map(hero_of, stories)))
accuracy, n_recalls = hero_recall(model, held_out, tokenizer)
by_story = hero_attention_by_story(model, held_out, tokenizer)  # [(mention, (recalls, layers, heads))]
share = torch.cat([shares for _, shares in by_story]).mean(0)  # (layers, heads)
baseline = uniform_share(held_out, tokenizer, config.context_length)
without = torch.tensor([[hero_recall(model, held_out, tokenizer, without=(i, h))[0] for h in range(config.n_heads)]
                        for i in range(config.n_layers)])  # accuracy with one head removed
print(f"{len(held_out)} held-out stories, {n_recalls} places where a story names its hero again")
print(f"the model predicts the hero's name there {accuracy:.0%} of the time "
      f"(guessing among the {len(heroes)} heroes: {1 / len(heroes):.0%})")
layer_names, head_names = [f"layer {i}" for i in range(config.n_layers)], [f"head {h}" for h in range(config.n_heads)]
fig, axes = plt.subplots(1, 2, figsize=(14, 4))
heatmap(share, layer_names, head_names, ax=axes[0], xlabel="head", ylabel="layer",
        title=f"Attention on the hero's name from recall positions\n(even spread: {baseline:.2f})")
heatmap(accuracy - without, layer_names, head_names, ax=axes[1], xlabel="head removed", ylabel="layer", cmap="Reds",
        title=f"Drop in hero recall when that head is removed\n(all heads: {accuracy:.0%} named correctly)",
        fmt="{:.0%}")
plt.tight_layout()
plt.show()
layer, head = divmod(int(share.argmax()), config.n_heads)
needed = divmod(int(without.argmin()), config.n_heads)
print(f"the head that looks back: layer {layer}, head {head}, with {share[layer, head]:.2f} of its attention on "
      f"the hero's name ({share[layer, head] / baseline:.1f}× the {baseline:.2f} of an even spread); without it the "
      f"hero is named {without[layer, head]:.0%} of the time")
print(f"the head the recall needs most: layer {needed[0]}, head {needed[1]} — without it {without[needed]:.0%}; "
      f"its own attention on the name: {share[needed]:.2f}")

# %% [markdown]
# A head can matter without looking at the name itself: a first-layer head can prepare what a second-layer
# head searches with — the right-hand table shows it whenever its largest drop is not under the head that
# looks back on the left.
# Here is the look-back head's whole map on a typical held-out story (the one whose recall rows give this
# head the share closest to its average), and those rows drawn out, the hero's name shaded:

# %%
mention, shares = min((item for item in by_story if len(item[0].recalls) >= 2),
                      key=lambda item: abs(item[1][:, layer, head].mean() - share[layer, head]))
end = min(mention.recalls[-1] + 2, len(mention.ids))  # up to the name the last recall predicts
head_map = attention_maps(model, torch.tensor([mention.ids[:end]], device=device))[layer][0, head].cpu()  # (T, T)
labels = [tokenizer.decode([i]).replace(" ", "␣") for i in mention.ids[:end]]
fig, (ax_map, ax_rows) = plt.subplots(1, 2, figsize=(18, 8), gridspec_kw={"width_ratios": [1, 1.2]})
image = ax_map.imshow(head_map, cmap="Blues", vmin=0, vmax=1)
ax_map.set_xticks(range(end), labels, fontsize=8)
ax_map.set_yticks(range(end), labels, fontsize=8)
for t in mention.recalls:
    ax_map.get_yticklabels()[t].set_color("red")
ax_map.set_title(f"Layer {layer}, head {head} on a held-out story (red: recall rows)")
ax_map.set_xlabel(f"key ({tokenizer.unit})")
ax_map.set_ylabel(f"query ({tokenizer.unit})")
plt.colorbar(image, ax=ax_map, fraction=0.046, pad=0.04, label="attention weight")
for t in mention.names_before(mention.recalls[-1]):  # the name tokens the recall rows can look back to
    ax_rows.axvspan(t - 0.5, t + 0.5, color="orange", alpha=0.3)
for t in mention.recalls:
    ax_rows.plot(range(t + 1), head_map[t, : t + 1], "o-", label=f"query at {t} ({labels[t]}), next: {mention.hero}")
ax_rows.set_xticks(range(end), labels, fontsize=9)
ax_rows.set_title(f"The recall rows; shaded: the hero's name ('{mention.hero}')")
ax_rows.set_xlabel(f"key ({tokenizer.unit})")
ax_rows.set_ylabel("attention weight")
ax_rows.legend(loc="upper left")
plt.tight_layout()
plt.show()
print(repr(tokenizer.decode(mention.ids[:end])))
for t, row_share in zip(mention.recalls, shares[:, layer, head]):
    print(f"query at {t}: {row_share:.2f} of its weight on the hero's name")

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
    out = generate(model, prompt, config.context_length - prompt.shape[1], generator=generator, **kwargs)
    print(f"{name:>15}: {tokenizer.decode(out[0].tolist())!r}")

# %% [markdown]
# Does a generated story keep its hero? Start one for each hero of the corpus and let greedy decoding write
# on; then count the sentences whose subject is the hero — the look-back above, at work.

# %%
kept, sentences = 0, 0
for hero in heroes:
    opening = torch.tensor([tokenizer.encode(f"once there was a {hero}. the")], device=device)
    story_text = tokenizer.decode(generate(model, opening, config.context_length - opening.shape[1])[0].tolist())
    subjects = sentence_subjects(story_text)
    kept, sentences = kept + sum(s == hero for s in subjects), sentences + len(subjects)
    print(f"{hero:>6}: {story_text!r}")
print(f"{kept} of {sentences} generated sentences are about the story's hero ({kept / sentences:.0%})")

# %% [markdown]
# ## Summary
#
# * The causal mask sets scores above the diagonal to $-\infty$; the softmax then gives them weight 0 and
#   renormalises each row over the past. Blanking the unmasked table instead leaves rows that don't sum
#   to 1 (measured above); renormalising those rows recovers the masked softmax.
# * Because position $t$ sees only positions $\le t$, one pass computes every prefix's prediction — we
#   checked that it equals separate passes over each prefix — so training uses all positions at once.
# * The slides' causal rows sum to less than 1: they are unmasked weights with the future blanked. Their
#   renormalised rows are printed above.
# * A small TinyGPT trained briefly writes the corpus's sentence patterns, and one of its heads has learned
#   to look back to the story's hero wherever the story names it again; greedy generation keeps the hero.
# * Measured here:

# %%
print(f"validation loss {result.val_loss[0]:.3f} -> {result.final_val_loss:.3f} nats/token in {steps} steps "
      f"({result.seconds:.0f} s); hero named correctly at {accuracy:.0%} of {n_recalls} recall positions; "
      f"layer {layer} head {head} puts {share[layer, head]:.2f} of its attention there on the hero's name "
      f"(even spread: {baseline:.2f}), and without it the hero is named {without[layer, head]:.0%} of the time; "
      f"{kept}/{sentences} generated sentences keep the hero")
