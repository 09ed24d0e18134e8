"""Text, tokenizers and batches — all available offline.

* Corpus: :func:`synthetic_corpus` writes small stories from a tiny grammar the project owns, so
  training works with no network. On Colab, :func:`load_corpus` ("shakespeare") can download a
  public-domain text into ``data/cache/`` (never committed).
* Tokenizer: tiktoken's GPT-2 BPE when its file can be loaded (restricted to the ids the corpus
  uses, so the embedding stays small); offline, the project's own character-level tokenizer,
  announced in one line.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

CACHE_DIR = Path(__file__).resolve().parent.parent / "data" / "cache"
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"

_NOUNS = ["cat", "dog", "bird", "fox", "child", "king", "queen", "robot", "fish", "horse"]
_PLACES = ["chair", "mat", "table", "hill", "boat", "roof", "bed", "tree", "wall", "box"]
_ADJECTIVES = ["small", "big", "red", "old", "happy", "sleepy", "brave", "quiet"]
_VERBS = ["sees", "likes", "follows", "finds", "helps", "calls"]
_PREPOSITIONS = ["on", "under", "near", "behind"]


def _noun_phrase(rng: random.Random, nouns: list[str]) -> str:
    article = rng.choice(["the", "a"])
    if rng.random() < 0.4:
        return f"{article} {rng.choice(_ADJECTIVES)} {rng.choice(nouns)}"
    return f"{article} {rng.choice(nouns)}"


def _sentence(rng: random.Random, subject: str) -> str:
    kind = rng.random()
    if kind < 0.35:
        return f"{subject} is {rng.choice(_PREPOSITIONS)} {_noun_phrase(rng, _PLACES)}."
    if kind < 0.7:
        return f"{subject} {rng.choice(_VERBS)} {_noun_phrase(rng, _NOUNS)}."
    if kind < 0.85:
        return f"{subject} sat {rng.choice(_PREPOSITIONS)} {_noun_phrase(rng, _PLACES)} and slept."
    return f"{subject} was {rng.choice(_ADJECTIVES)}."


def synthetic_corpus(n_stories: int = 1500, seed: int = 0) -> str:
    """Deterministic short stories from a tiny grammar (the book's offline corpus, ~200 KB by default).

    Each story introduces a character and then refers back to it ("the cat ... the cat ..."),
    so a model must look back in the context to predict well — a job for attention.
    """
    rng = random.Random(seed)
    stories = []
    for _ in range(n_stories):
        hero = rng.choice(_NOUNS)
        lines = [f"once there was a {hero}."]
        for _ in range(rng.randint(2, 4)):
            lines.append(_sentence(rng, f"the {hero}"))
        stories.append(" ".join(lines))
    return "\n".join(stories) + "\n"


def is_offline() -> bool:
    """True when ``ATTENTION_LAB_OFFLINE=1`` or the network cannot be reached within 2 s."""
    if os.environ.get("ATTENTION_LAB_OFFLINE", "") == "1":
        return True
    try:
        socket.create_connection(("openaipublic.blob.core.windows.net", 443), timeout=2).close()
        return False
    except OSError:
        return True


def load_corpus(name: str = "synthetic") -> str:
    """Return the text of corpus ``name``: 'synthetic' (offline, default) or 'shakespeare' (downloads once)."""
    if name == "synthetic":
        return synthetic_corpus()
    if name == "shakespeare":
        path = CACHE_DIR / "tinyshakespeare.txt"
        if not path.exists():
            if is_offline():
                raise ValueError("corpus 'shakespeare' needs a network connection once; use name='synthetic' offline")
            import urllib.request

            path.parent.mkdir(parents=True, exist_ok=True)
            urllib.request.urlretrieve(SHAKESPEARE_URL, path)
        return path.read_text(encoding="utf-8")
    raise ValueError(f"name must be 'synthetic' or 'shakespeare', got {name!r}")


class CharTokenizer:
    """The project's own tokenizer: one id per distinct character of the corpus."""

    def __init__(self, text: str) -> None:
        self.symbols = sorted(set(text))
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self.name = f"character-level ({len(self.symbols)} symbols, built from the corpus)"

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def encode(self, text: str) -> list[int]:
        missing = sorted(set(text) - set(self._index))
        if missing:
            raise ValueError(f"text has characters outside the tokenizer's vocabulary: {missing[:10]}")
        return [self._index[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.symbols[i] for i in ids)


class CompactBPETokenizer:
    """tiktoken's GPT-2 BPE, with ids renumbered to just the tokens that occur in the corpus.

    GPT-2 has 50,257 tokens; a tiny model trained on a small corpus needs only the few hundred
    it will ever see, which keeps the embedding table (and the CPU) light.
    """

    def __init__(self, text: str, encoding) -> None:
        self.encoding = encoding
        self.gpt2_ids = sorted(set(encoding.encode(text)))
        self._to_compact = {g: i for i, g in enumerate(self.gpt2_ids)}
        self.name = f"tiktoken GPT-2 BPE ({len(self.gpt2_ids)} of {encoding.n_vocab} tokens occur in the corpus)"

    @property
    def vocab_size(self) -> int:
        return len(self.gpt2_ids)

    def encode(self, text: str) -> list[int]:
        ids = self.encoding.encode(text)
        missing = [self.encoding.decode([g]) for g in ids if g not in self._to_compact]
        if missing:
            raise ValueError(f"text has tokens that never occur in the corpus: {missing[:10]}")
        return [self._to_compact[g] for g in ids]

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode([self.gpt2_ids[i] for i in ids])


def get_tokenizer(text: str, kind: str = "auto", verbose: bool = True):
    """Tokenizer for ``text``: kind 'bpe' (tiktoken GPT-2), 'char' (the project's own) or 'auto'.

    'auto' uses tiktoken when its GPT-2 file loads, else falls back to characters and says so.
    """
    if kind not in ("auto", "bpe", "char"):
        raise ValueError(f"kind must be 'auto', 'bpe' or 'char', got {kind!r}")
    tokenizer = None
    if kind in ("auto", "bpe"):
        reason = "offline" if is_offline() else None
        if reason is None:
            try:
                import tiktoken

                tokenizer = CompactBPETokenizer(text, tiktoken.get_encoding("gpt2"))
            except Exception as error:  # no file and no network, or no tiktoken
                reason = f"{type(error).__name__}"
        if tokenizer is None and kind == "bpe":
            raise ValueError(f"tiktoken's GPT-2 encoding could not be loaded ({reason})")
        if tokenizer is None and verbose:
            print(f"Tokenizer: tiktoken's GPT-2 file is unavailable ({reason}); using the project's own "
                  "character-level tokenizer instead.")
    if tokenizer is None:
        tokenizer = CharTokenizer(text)
    if verbose:
        print(f"Tokenizer: {tokenizer.name}")
    return tokenizer


@dataclass
class TokenDataset:
    """Token ids split into train/validation; :meth:`batch` draws random windows for next-token prediction."""

    train_ids: torch.Tensor  # (n_train,) int64
    val_ids: torch.Tensor  # (n_val,) int64
    context_length: int

    @classmethod
    def from_text(cls, text: str, tokenizer, context_length: int, val_fraction: float = 0.1) -> "TokenDataset":
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
        n_val = int(len(ids) * val_fraction)
        if n_val <= context_length + 1 or len(ids) - n_val <= context_length + 1:
            raise ValueError(f"text too short ({len(ids)} tokens) for context_length={context_length}")
        return cls(ids[:-n_val], ids[-n_val:], context_length)

    def batch(self, split: str, batch_size: int, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: inputs ``(B, T)`` and targets ``(B, T)`` shifted one token right."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        ids = self.train_ids if split == "train" else self.val_ids
        starts = torch.randint(0, len(ids) - self.context_length - 1, (batch_size,), generator=generator)
        offsets = torch.arange(self.context_length)
        x = ids[starts[:, None] + offsets]  # (B, T)
        y = ids[starts[:, None] + offsets + 1]  # (B, T)
        return x.to(device), y.to(device)
