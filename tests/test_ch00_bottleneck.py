"""Chapter 00's bottleneck experiment: a fixed-size summary loses words as sentences grow; attention does not."""

import pytest
import torch

from attention_lab.bottleneck import (attention_weights_over_positions, longest_recovered, make_codebook,
                                      nearest_words, read_summary, read_with_attention, recovery_accuracy,
                                      summary_vector)

LENGTHS = [1, 2, 4, 8, 16, 32, 64]


def test_the_recurrence_is_a_rotation_and_the_summary_its_sum():
    book = make_codebook(vocab_size=20, dim=8, max_len=5, seed=3)
    torch.testing.assert_close(book.recurrence @ book.recurrence.T, torch.eye(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(book.word_vectors.norm(dim=1), torch.ones(20))
    words = torch.tensor([[3, 1, 4, 1, 5]])
    expected = sum(torch.linalg.matrix_power(book.recurrence, 4 - i) @ book.word_vectors[w]
                   for i, w in enumerate(words[0].tolist()))  # h_N = Σ_i R^(N-1-i) e_{x_i}
    torch.testing.assert_close(summary_vector(words, book)[0], expected, atol=1e-5, rtol=1e-5)


def test_reading_a_one_word_summary_is_exact_and_undoes_the_rotations():
    book = make_codebook(vocab_size=20, dim=8, max_len=5)
    words = torch.tensor([[7], [2]])
    torch.testing.assert_close(read_summary(summary_vector(words, book), 1, book)[:, 0], book.word_vectors[words[:, 0]])
    two = torch.tensor([[7, 2]])
    estimates = read_summary(summary_vector(two, book), 2, book)  # (1, 2, D); h_2 = R e_7 + e_2
    # word 0: R^-1 h_2 = e_7 + R^T e_2; word 1: h_2 itself = e_2 + R e_7 (the other word is the noise)
    torch.testing.assert_close(estimates[0, 0], book.word_vectors[7] + book.recurrence.T @ book.word_vectors[2],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(estimates[0, 1], book.word_vectors[2] + book.recurrence @ book.word_vectors[7],
                               atol=1e-5, rtol=1e-5)


def test_the_summary_keeps_word_order():
    """Not a bag of words: a sentence and its reverse give different summaries, and both read back right."""
    book = make_codebook(vocab_size=50, dim=128, max_len=4)
    sentence = torch.tensor([[1, 2, 3, 4]])
    reverse = sentence.flip(1)
    assert not torch.allclose(summary_vector(sentence, book), summary_vector(reverse, book), atol=1e-3)
    for words in (sentence, reverse):
        assert torch.equal(nearest_words(read_summary(summary_vector(words, book), 4, book), book), words)


def test_recovery_falls_with_length_and_a_bigger_vector_only_postpones_it():
    small = recovery_accuracy(LENGTHS, 16, "summary", trials=100)
    large = recovery_accuracy(LENGTHS, 64, "summary", trials=100)
    assert small[0] == 1.0 and large[0] == 1.0
    assert small[-1] < 0.2 and large[-1] < 0.3  # both fall towards chance (1/50)
    assert all(b >= a - 0.05 for a, b in zip(small, large))
    assert all(later <= earlier + 0.05 for earlier, later in zip(small, small[1:]))
    assert longest_recovered(LENGTHS, large) > longest_recovered(LENGTHS, small)


def test_attention_reads_every_word_at_every_length():
    assert min(recovery_accuracy(LENGTHS + [128], 16, "attention", trials=50)) > 0.99
    book = make_codebook(vocab_size=50, dim=16, max_len=8)
    weights = attention_weights_over_positions(8, book)
    torch.testing.assert_close(weights.sum(-1), torch.ones(8))
    assert (weights.diagonal() > 0.99).all()
    words = torch.randint(50, (3, 8), generator=torch.Generator().manual_seed(0))
    assert read_with_attention(words, book).shape == (3, 8, 16)


def test_longest_recovered():
    assert longest_recovered([1, 2, 4], [1.0, 0.6, 0.4]) == 2
    assert longest_recovered([1, 2, 4], [0.3, 0.6, 0.9]) is None
    assert longest_recovered([1, 2], [1.0, 1.0]) == 2


@pytest.mark.parametrize("call, message", [
    (lambda: recovery_accuracy([1, 2], 8, "mean"), "reader must be one of"),
    (lambda: recovery_accuracy([0, 2], 8, "summary"), "each length"),
    (lambda: make_codebook(0, 8, 4), "vocab_size"),
    (lambda: summary_vector(torch.zeros(1, 9, dtype=torch.long), make_codebook(5, 4, 8)), "max_len=8"),
    (lambda: summary_vector(torch.zeros(1, 3), make_codebook(5, 4, 8)), "words"),
])
def test_bad_arguments_are_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
