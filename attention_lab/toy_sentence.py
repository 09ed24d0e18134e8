"""The book's running example: "THE CAT IS ON A CHAIR" as small, readable embeddings.

Each word gets a vector of hand-named features (is it an article? an animal? furniture? …)
plus a little seeded noise, so that similar words have similar vectors and the attention
tables of chapters 01-02 have a story to tell.
"""

from __future__ import annotations

import torch

SENTENCE = ["THE", "CAT", "IS", "ON", "A", "CHAIR"]
FEATURES = ["article", "noun", "animal", "furniture", "verb", "preposition", "place-word", "subject"]
_WORD_FEATURES = {
    "THE": {"article": 1.0},
    "A": {"article": 1.0},
    "CAT": {"noun": 1.0, "animal": 1.0, "subject": 1.0},
    "CHAIR": {"noun": 1.0, "furniture": 1.0, "place-word": 1.0},
    "IS": {"verb": 1.0, "subject": 0.5},
    "ON": {"preposition": 1.0, "place-word": 1.0},
}


def word_embeddings(words: list[str] | None = None, noise: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Embeddings ``(N, len(FEATURES))`` for ``words`` (default: the running sentence)."""
    words = SENTENCE if words is None else words
    unknown = [w for w in words if w not in _WORD_FEATURES]
    if unknown:
        raise ValueError(f"words must come from {sorted(_WORD_FEATURES)}, got {unknown}")
    generator = torch.Generator().manual_seed(seed)
    rows = [[_WORD_FEATURES[w].get(f, 0.0) for f in FEATURES] for w in words]
    return torch.tensor(rows) + noise * torch.randn(len(words), len(FEATURES), generator=generator)  # (N, F)


def softmax_peak(head_dims: list[int], scaled: bool, n_keys: int = 16, trials: int = 200, seed: int = 0) -> list[float]:
    """Average largest softmax weight of random unit-variance q·k scores, for each head_dim.

    Without the 1/√d scale the scores' variance grows like d, the softmax saturates (the peak
    weight tends to 1) and its gradients vanish; with it the spread stays fixed.
    """
    generator = torch.Generator().manual_seed(seed)
    peaks = []
    for d in head_dims:
        q = torch.randn(trials, 1, d, generator=generator)
        k = torch.randn(trials, n_keys, d, generator=generator)
        scores = (q @ k.transpose(-1, -2)).squeeze(1)  # (trials, n_keys)
        if scaled:
            scores = scores / d ** 0.5
        peaks.append(torch.softmax(scores, dim=-1).amax(dim=-1).mean().item())
    return peaks
