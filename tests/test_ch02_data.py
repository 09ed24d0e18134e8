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


def test_every_window_of_a_split_can_be_drawn_the_last_included():
    """Issue #18, item 6: randint's bound is exclusive, so the window ending at the split's last token was never drawn.
    Ten tokens and T=4: starts 0..5, six windows, each drawn; with exactly T + 1 tokens the one window is drawn."""
    ids = torch.arange(10)
    data = TokenDataset(ids, ids[:5], context_length=4)
    x, y = data.batch("train", 400, torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == set(range(6))
    assert y.max() == 9  # the split's last token is a target
    x, y = data.batch("val", 3, torch.Generator().manual_seed(0))  # 5 tokens, T=4: one window
    assert x.tolist() == [[0, 1, 2, 3]] * 3 and y.tolist() == [[1, 2, 3, 4]] * 3


@pytest.mark.parametrize("context_length", [0, -3, 2.5, True, "4", None])
def test_dataset_refuses_a_context_length_that_is_not_a_positive_integer(context_length):
    ids = torch.arange(50)
    with pytest.raises(ValueError, match="context_length must be an integer >= 1"):
        TokenDataset(ids, ids, context_length=context_length)
    text = synthetic_corpus(30)
    with pytest.raises(ValueError, match="context_length must be an integer >= 1"):
        TokenDataset.from_text(text, CharTokenizer(text), context_length=context_length)


def test_dataset_and_batch_refuse_bad_arguments():
    ids = torch.arange(10)
    with pytest.raises(ValueError, match="val_ids must hold at least context_length \\+ 1 = 5 tokens"):
        TokenDataset(ids, ids[:4], context_length=4)
    with pytest.raises(ValueError, match="train_ids must be a 1-D integer tensor"):
        TokenDataset(ids.float(), ids, context_length=4)
    with pytest.raises(ValueError, match="train_ids must be a 1-D integer tensor"):
        TokenDataset(ids.tolist(), ids, context_length=4)
    data = TokenDataset(ids, ids, context_length=4)
    for batch_size in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            data.batch("train", batch_size)


@pytest.mark.parametrize("ids, match", [([99], r"ids must lie in \[0, 3\).*\[99\]"), ([-1], r"ids must lie in .*\[-1\]"),
                                        ([1.5], "integer token ids"), ([True], "integer token ids"),
                                        (["1"], "integer token ids"), (7, "list of integer token ids"),
                                        (torch.tensor([0.0]), "integer token ids")])
def test_char_tokenizer_decode_refuses_what_is_not_a_token_id(ids, match):
    tokenizer = CharTokenizer("abc")
    with pytest.raises(ValueError, match=match):
        tokenizer.decode(ids)
    assert tokenizer.decode(torch.tensor([2, 0])) == tokenizer.decode([2, 0]) == "ca"


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
