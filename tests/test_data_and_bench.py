"""Corpus, tokenizers, batches and the memory/timing helpers."""

import pytest
import torch

from attention_lab.costs.timing import peak_memory, time_function
from attention_lab.data import CharTokenizer, TokenDataset, get_tokenizer, load_corpus, synthetic_corpus


def test_synthetic_corpus_is_deterministic_and_offline():
    assert synthetic_corpus(50, seed=3) == synthetic_corpus(50, seed=3)
    assert synthetic_corpus(50, seed=3) != synthetic_corpus(50, seed=4)
    text = load_corpus()
    assert len(text) > 100_000 and text.startswith("once there was a")


def test_offline_tokenizer_is_announced_and_round_trips(capsys):
    text = synthetic_corpus(30)
    tokenizer = get_tokenizer(text)  # tests run with ATTENTION_LAB_OFFLINE=1
    out = capsys.readouterr().out
    assert "unavailable (offline)" in out and "character-level" in out
    assert isinstance(tokenizer, CharTokenizer)
    assert tokenizer.decode(tokenizer.encode(text[:200])) == text[:200]
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        tokenizer.encode("Z!")
    with pytest.raises(ValueError, match="tiktoken"):
        get_tokenizer(text, kind="bpe", verbose=False)


def test_batches_are_shifted_windows():
    text = synthetic_corpus(100)
    tokenizer = CharTokenizer(text)
    data = TokenDataset.from_text(text, tokenizer, context_length=16)
    x, y = data.batch("train", 4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ValueError, match="split"):
        data.batch("test", 4)


def test_peak_memory_counts_the_score_matrix():
    q = torch.randn(1, 1, 256, 16)
    n2 = 256 * 256 * 4  # bytes of one fp32 N x N matrix
    peak = peak_memory(lambda: torch.softmax(q @ q.transpose(-1, -2), dim=-1) @ q, device="cpu")
    assert 2 * n2 <= peak < 3 * n2  # scores and weights alive together, plus the small output
    assert peak_memory(lambda: q + 1, device="cpu") == q.numel() * 4


def test_time_function_returns_positive_seconds():
    assert 0 < time_function(lambda: torch.randn(64, 64) @ torch.randn(64, 64), warmup=1, repeats=3, device="cpu") < 1


def test_peak_memory_ignores_views_of_existing_tensors():
    cache = torch.randn(1, 4, 4096, 64)
    assert peak_memory(lambda: cache[:, :, :100].transpose(-1, -2), device="cpu") == 0


def test_grouped_reference_attention_does_not_copy_the_shared_kv_heads():
    from attention_lab import scaled_dot_product_attention

    q = torch.randn(1, 8, 1, 64)  # one decoding query per head
    k, v = torch.randn(1, 1, 4096, 64), torch.randn(1, 1, 4096, 64)  # MQA: one kv head, 1 MiB each
    peak = peak_memory(lambda: scaled_dot_product_attention(q, k, v), device="cpu")
    assert peak < k.numel() * 4  # scores and weights are 8 x 4096 floats; a per-head copy of k alone is 8 MiB
