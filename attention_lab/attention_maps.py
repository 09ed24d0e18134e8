"""What a trained TinyGPT attends to: every head's attention map, and the head that looks back to the hero.

The book's corpus (:func:`attention_lab.data.synthetic_corpus`) is built so that a model must look back: a
story opens with "once there was a <hero>." and then keeps naming the hero ("the fox is on a mat. the fox
…"). Nothing near "the " says which animal follows; only the first sentence does. A model that predicts the
hero's name after "the " has to fetch it from there, and some head has to do the fetching.

* :func:`attention_maps` — every layer's causal attention weights ``(B, H, T, T)``, computed from the
  model's own modules during its own forward pass (a hook reads each layer's input).
* :func:`hero_mentions` — where a story's hero is introduced and where the model must recall it, as token
  positions for whatever tokenizer (characters or BPE tokens: positions come from the decoded text).
* :func:`hero_attention` — for each (layer, head), the share of attention that the recall positions put
  on the hero's introduction: the head with the largest share is the one that looks back.
* :func:`hero_recall` — how often the model predicts the hero's (first) token where the story names it
  again; :func:`uniform_share` — the share a head attending evenly to every earlier token would give.
* :func:`hero_of`, :func:`sentence_subjects` — a story's hero, and who each of its sentences is about (to
  check that generated stories keep their hero).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from attention_lab.attention import MultiHeadAttention, attention_weights

INTRODUCTION = re.compile(r"^once there was a (\w+)\.")  # the corpus's first sentence; group 1 is the hero
_SUBJECT = re.compile(r"\. the (\w+)")  # a later sentence's subject: "… . the <noun> …"


def hero_of(story: str) -> str:
    """The hero of a story of the corpus: the noun of its opening "once there was a <hero>."."""
    match = INTRODUCTION.match(story)
    if match is None:
        raise ValueError(f"story must open with 'once there was a <hero>.', got {story[:40]!r}")
    return match.group(1)


def sentence_subjects(story: str) -> list[str]:
    """The noun each sentence after the first is about ("the fox is on a mat. the dog …" -> ["fox", "dog"]): in
    the corpus every such sentence is about the hero, so a story that keeps its hero repeats one noun."""
    return _SUBJECT.findall(story)


@torch.no_grad()
def attention_maps(model, idx: torch.Tensor) -> list[torch.Tensor]:
    """The attention weights of every layer of ``model`` (a TinyGPT with ``attention='mha'``) on token ids
    ``idx (B, T)``: a list of ``n_layers`` tensors ``(B, n_heads, T, T)`` (float32; row i = query i).

    Each layer's weights are recomputed from that layer's input during the model's own forward pass (the
    queries and keys of :meth:`MultiHeadAttention.project_qkv`, RoPE applied when the layer has it, the
    layer's causal mask and window), so they are exactly the weights the model used.
    """
    layers = [block.attn for block in model.blocks]
    if not all(isinstance(layer, MultiHeadAttention) for layer in layers):
        raise ValueError("attention_maps needs a TinyGPT whose layers are MultiHeadAttention (attention='mha'), "
                         f"got {type(layers[0]).__name__}")
    maps: list[torch.Tensor] = []

    def record(layer: MultiHeadAttention, args: tuple, kwargs: dict) -> None:
        x = args[0]  # (B, T, d_model): the layer's input, ln1 of the residual stream
        positions = kwargs.get("positions")
        q, k, _ = layer.project_qkv(x)  # (B, H, T, D), (B, Hkv, T, D)
        if layer.rotary is not None:
            q, k = layer.rotary(q, positions), layer.rotary(k, positions)
        maps.append(attention_weights(q, k, causal=layer.causal, window=layer.window))  # (B, H, T, T)

    hooks = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    was_training = model.training
    try:
        model.eval()
        model(idx)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return maps


@dataclass(frozen=True)
class HeroMentions:
    """Where a story's hero is introduced and where it is named again, as token positions."""

    hero: str  # the hero's name, e.g. "fox"
    ids: list[int]  # the story's token ids (cut to max_tokens)
    introduction: list[int]  # positions of the tokens spelling the hero's name in "once there was a <hero>."
    names: list[int]  # positions of every token spelling the hero's name: the introduction and each later mention
    recalls: list[int]  # positions t whose next token (t + 1) begins a later "the <hero>": t must recall the hero

    def names_before(self, position: int) -> list[int]:
        """The name tokens a query at ``position`` may look back to (before it: the name it predicts is next)."""
        return [t for t in self.names if t < position]

    @property
    def targets(self) -> list[int]:
        """The token the model should predict at each recall position: the first token of the hero's name."""
        return [self.ids[t + 1] for t in self.recalls]


def _token_spans(ids: list[int], tokenizer) -> list[tuple[int, int]]:
    """The character span ``[start, end)`` of each token in the decoded text (from the decoded prefixes,
    which is right for characters and for BPE tokens alike)."""
    ends = [len(tokenizer.decode(ids[:t + 1])) for t in range(len(ids))]
    return list(zip([0] + ends[:-1], ends))


def hero_mentions(story: str, tokenizer, max_tokens: int | None = None) -> HeroMentions:
    """Find the hero of one ``story`` (a line of the corpus) and the token positions that introduce and recall it.

    ``max_tokens`` cuts the story to the model's context length. A story that does not open with "once there
    was a <hero>." is a ``ValueError``.
    """
    hero = hero_of(story)
    match = INTRODUCTION.match(story)
    ids = tokenizer.encode(story)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    spans = _token_spans(ids, tokenizer)
    name_start, name_end = match.span(1)

    def covering(start: int, end: int) -> list[int]:  # the tokens overlapping the characters [start, end)
        return [t for t, (s, e) in enumerate(spans) if s < end and e > start]

    introduction = covering(name_start, name_end)
    names, recalls = list(introduction), []
    for later in re.finditer(rf"\bthe ({hero})\b", story):
        name = covering(*later.span(1))
        if name and name[0] >= 1:  # the token holding the name's first character, and the one before it
            recalls.append(name[0] - 1)
        names += [t for t in name if t not in names]
    return HeroMentions(hero, ids, introduction, sorted(names), recalls)


def _stories_with_recalls(stories: list[str], tokenizer, max_tokens: int) -> list[HeroMentions]:
    found = [hero_mentions(story, tokenizer, max_tokens) for story in stories]
    found = [m for m in found if m.recalls and m.introduction]
    if not found:
        raise ValueError("no story names its hero again within max_tokens tokens")
    return found


def hero_attention_by_story(model, stories: list[str], tokenizer) -> list[tuple[HeroMentions, torch.Tensor]]:
    """For each story that names its hero again within the context: its :class:`HeroMentions` and a tensor
    ``(recalls, n_layers, n_heads)``, the attention weight each recall position puts on the tokens of the hero's
    name before it (its introduction and any earlier mention) in every head."""
    device = next(model.parameters()).device
    found = []
    for mention in _stories_with_recalls(stories, tokenizer, model.config.context_length):
        maps = attention_maps(model, torch.tensor([mention.ids], device=device))  # L × (1, H, T, T)
        stacked = torch.stack([m[0] for m in maps]).cpu()  # (L, H, T, T)
        shares = torch.stack([stacked[:, :, t, mention.names_before(t)].sum(-1) for t in mention.recalls])
        found.append((mention, shares))  # (recalls, L, H)
    return found


def hero_attention(model, stories: list[str], tokenizer) -> torch.Tensor:
    """``(n_layers, n_heads)``: the attention weight that the recall positions put on the tokens of the hero's
    name before them, averaged over every recall of every story (1.0 = such a query attends to nothing else)."""
    return torch.cat([shares for _, shares in hero_attention_by_story(model, stories, tokenizer)]).mean(0)


@torch.no_grad()
def hero_recall(model, stories: list[str], tokenizer, without: tuple[int, int] | None = None) -> tuple[float, int]:
    """``(accuracy, n)``: how often the model's most likely next token at a recall position is the first token
    of the hero's name, over the ``n`` recall positions of ``stories``.

    ``without=(layer, head)`` measures it with that head removed: its output (its ``head_dim`` columns of the
    input of the layer's output projection) set to zero — what the model can still do without it.
    """
    device = next(model.parameters()).device
    hook = None
    if without is not None:
        layer, head = without
        attention = model.blocks[layer].attn
        if not isinstance(attention, MultiHeadAttention) or not 0 <= head < attention.n_heads:
            raise ValueError(f"without must name a (layer, head) of the model's MultiHeadAttention, got {without}")
        columns = slice(head * attention.head_dim, (head + 1) * attention.head_dim)

        def silence(module, args):
            merged = args[0].clone()  # (B, T, H·D): the heads side by side
            merged[..., columns] = 0.0
            return (merged,)

        hook = attention.out_proj.register_forward_pre_hook(silence)
    hits, count = 0, 0
    was_training = model.training
    model.eval()
    try:
        for mention in _stories_with_recalls(stories, tokenizer, model.config.context_length):
            logits, _ = model(torch.tensor([mention.ids], device=device))  # (1, T, vocab)
            predicted = logits[0, mention.recalls].argmax(-1).tolist()
            hits += sum(p == t for p, t in zip(predicted, mention.targets))
            count += len(mention.recalls)
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
    return hits / count, count


def uniform_share(stories: list[str], tokenizer, max_tokens: int) -> float:
    """The share of :func:`hero_attention` that a head spreading its weight evenly over every token up to the
    query would get: the baseline a head that looks back to the hero has to beat."""
    shares = [len(m.names_before(t)) / (t + 1) for m in _stories_with_recalls(stories, tokenizer, max_tokens)
              for t in m.recalls]
    return sum(shares) / len(shares)
