"""The sequence-to-sequence bottleneck, measured: a fixed-size summary against attention over every state.

Cho et al. (2014, *On the Properties of Neural Machine Translation: Encoder–Decoder Approaches*) found the
translations of an encoder–decoder getting worse as the sentences got longer: the encoder squeezes the
whole sentence into one vector of fixed size, and a longer sentence has more to squeeze. This module shows
that capacity limit with nothing learned, so it is exact and takes a second:

* A sentence is ``N`` words drawn from a vocabulary of ``V`` random unit vectors ``e_w`` in ``D`` dimensions.
* The **fixed-size summary** is the last state of a recurrent encoder, ``h_t = R h_{t-1} + e_{x_t}``, with
  ``R`` a random rotation (orthogonal): nothing fades and word order is kept (word ``i`` is rotated
  ``N-1-i`` times). To read word ``i`` back the decoder undoes those rotations, ``R^{-(N-1-i)} h_N =
  e_{x_i} + (the other N-1 words, still rotated)``, and picks the nearest word vector. The other words are
  noise, and there are more of them the longer the sentence: recovery falls with ``N`` for every ``D``, and
  a ``D`` twice as large only postpones the fall.
* **Attention** keeps every state: word ``i``'s vector ``e_{x_i}`` as a value under a position key ``p_i``
  (a random unit vector). Reading word ``j``, the decoder's query is ``p_j``; the softmax of the sharpened
  scores ``s · p_j·p_i`` picks state ``j`` out of all ``N``, whatever ``N`` is. Its memory grows with the
  sentence (``N·D`` numbers instead of ``D``): that is what the fixed vector lacks.

Row-vector convention: a batch of sentences is ``(T, N)`` word ids, their states ``(T, N, D)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attention_lab.validation import check_int_dtype, check_positive_int, check_rank

READERS = ("summary", "attention")  # how the decoder reads the sentence back (see recovery_accuracy)


@dataclass(frozen=True)
class Codebook:
    """The random vectors of one experiment."""

    word_vectors: torch.Tensor  # (V, D) unit vectors e_w, one per word of the vocabulary
    recurrence: torch.Tensor  # (D, D) the encoder's rotation R (orthogonal: R⁻¹ = Rᵀ)
    position_keys: torch.Tensor  # (max_len, D) unit vectors p_i, attention's key for position i

    @property
    def dim(self) -> int:
        return self.word_vectors.shape[1]


def _unit_rows(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=-1, keepdim=True)


def make_codebook(vocab_size: int, dim: int, max_len: int, seed: int = 0) -> Codebook:
    """Random word vectors ``(V, D)``, a random rotation ``(D, D)`` and position keys ``(max_len, D)`` (float32)."""
    check_positive_int("vocab_size", vocab_size)
    check_positive_int("dim", dim)
    check_positive_int("max_len", max_len)
    generator = torch.Generator().manual_seed(seed)
    words = _unit_rows(torch.randn(vocab_size, dim, generator=generator))  # (V, D)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))  # (D, D), orthogonal
    keys = _unit_rows(torch.randn(max_len, dim, generator=generator))  # (max_len, D)
    return Codebook(words, rotation, keys)


def _check_words(words: torch.Tensor, book: Codebook) -> None:
    check_rank("words", words, 2, "(sentences, length)")
    check_int_dtype("words", words)
    if words.shape[1] < 1 or words.shape[1] > book.position_keys.shape[0]:
        raise ValueError(f"words must hold 1 to max_len={book.position_keys.shape[0]} words per sentence, "
                         f"got shape {tuple(words.shape)}")


def summary_vector(words: torch.Tensor, book: Codebook) -> torch.Tensor:
    """The encoder's last state ``(T, D)`` for sentences ``words (T, N)``: ``h_t = R h_{t-1} + e_{x_t}``, ``h_0 = 0``."""
    _check_words(words, book)
    inputs = book.word_vectors[words]  # (T, N, D)
    state = torch.zeros(words.shape[0], book.dim)  # (T, D)
    for t in range(words.shape[1]):
        state = state @ book.recurrence.T + inputs[:, t]  # h_t = R h_{t-1} + e_t, as rows: (T, D)
    return state


def read_summary(summary: torch.Tensor, length: int, book: Codebook) -> torch.Tensor:
    """Each word's estimate ``(T, N, D)`` from the summaries ``(T, D)``: position ``i`` gets ``R^{-(N-1-i)} h_N``."""
    check_rank("summary", summary, 2, "(sentences, dim)")
    check_positive_int("length", length)
    estimates = [summary]  # position N-1: the last word was not rotated
    for _ in range(length - 1):
        estimates.append(estimates[-1] @ book.recurrence)  # one rotation undone: R⁻¹ u = Rᵀ u, as rows u @ R
    return torch.stack(estimates[::-1], dim=1)  # (T, N, D), position 0 first


def attention_weights_over_positions(length: int, book: Codebook, sharpness: float | None = None) -> torch.Tensor:
    """The decoder's weights ``(N, N)``: row ``j`` (reading word ``j``) is ``softmax(s · p_j · p_i)`` over the
    ``N`` states; ``s`` (``sharpness``) defaults to ``4·√D``."""
    check_positive_int("length", length)
    sharpness = 4 * book.dim ** 0.5 if sharpness is None else sharpness
    keys = book.position_keys[:length]  # (N, D)
    return torch.softmax(sharpness * keys @ keys.T, dim=-1)  # (N queries, N keys)


def read_with_attention(words: torch.Tensor, book: Codebook, sharpness: float | None = None) -> torch.Tensor:
    """Each word's estimate ``(T, N, D)``: the attention-weighted average of every state (the word vectors)."""
    _check_words(words, book)
    weights = attention_weights_over_positions(words.shape[1], book, sharpness)  # (N, N)
    return weights @ book.word_vectors[words]  # (N, N) @ (T, N, D) -> (T, N, D)


def nearest_words(estimates: torch.Tensor, book: Codebook) -> torch.Tensor:
    """The word ids ``(T, N)`` whose vectors have the largest dot product with each estimate ``(T, N, D)``."""
    return (estimates @ book.word_vectors.T).argmax(dim=-1)  # (T, N, V) -> (T, N)


def recovery_accuracy(lengths: list[int], dim: int, reader: str, vocab_size: int = 50, trials: int = 200,
                      seed: int = 0) -> list[float]:
    """For each sentence length, the fraction of words read back correctly (``trials`` random sentences).

    ``reader`` is ``"summary"`` (the decoder sees only the encoder's last state, ``dim`` numbers) or
    ``"attention"`` (it attends over all the states). Chance is ``1 / vocab_size``.
    """
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    for n in lengths:
        check_positive_int("each length", n)
    check_positive_int("trials", trials)
    book = make_codebook(vocab_size, dim, max(lengths), seed)
    generator = torch.Generator().manual_seed(seed + 1)
    accuracy = []
    for n in lengths:
        words = torch.randint(vocab_size, (trials, n), generator=generator)  # (T, N)
        if reader == "summary":
            estimates = read_summary(summary_vector(words, book), n, book)  # (T, N, D)
        else:
            estimates = read_with_attention(words, book)  # (T, N, D)
        accuracy.append((nearest_words(estimates, book) == words).float().mean().item())
    return accuracy


def longest_recovered(lengths: list[int], accuracy: list[float], level: float = 0.5) -> int | None:
    """The longest of ``lengths`` up to which every accuracy is at least ``level`` (None if even the first is not)."""
    longest = None
    for n, a in zip(lengths, accuracy):
        if a < level:
            break
        longest = n
    return longest
