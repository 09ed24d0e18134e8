"""TinyGPT, training and generation: shapes, learning, cached == uncached, sampling rules, errors."""

import math

import pytest
import torch

from attention_lab import TinyGPT, TinyGPTConfig
from attention_lab.data import CharTokenizer, TokenDataset, synthetic_corpus
from attention_lab.generate import generate, sample_next
from attention_lab.mla import MLASettings
from attention_lab.model import MHASettings
from attention_lab.rope import RotaryEmbedding
from attention_lab.train import evaluate, train
from reference import tolerance


def tiny(**overrides) -> TinyGPT:
    torch.manual_seed(0)
    config = dict(vocab_size=29, context_length=40, d_model=32, n_layers=2, n_heads=4)
    config.update(overrides)
    return TinyGPT(TinyGPTConfig(**config)).eval()


def test_forward_shapes_and_loss():
    model = tiny()
    idx = torch.randint(0, 29, (3, 11))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 11, 29)
    assert loss.ndim == 0 and 2.5 < loss.item() < 4.5  # ~ln(29) at init


@pytest.mark.parametrize("n_kv_heads,window,backend", [(None, None, "reference"), (2, None, "reference"),
                                                       (1, None, "torch"), (None, 5, "reference"), (2, 5, "torch")])
def test_cached_generation_equals_uncached(n_kv_heads, window, backend):
    model = tiny(n_kv_heads=n_kv_heads, window=window, backend=backend)
    for prompt_len, new in [(1, 20), (7, 13), (23, 17)]:
        prompt = torch.randint(0, 29, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
        cached, cached_logits = generate(model, prompt, new, use_cache=True, return_logits=True)
        plain, plain_logits = generate(model, prompt, new, use_cache=False, return_logits=True)
        assert torch.equal(cached, plain)
        torch.testing.assert_close(cached_logits, plain_logits, **tolerance("fp32_paths"))


def test_backends_agree_inside_the_model():
    a, b = tiny(backend="reference"), tiny(backend="torch")
    idx = torch.randint(0, 29, (2, 17))
    torch.testing.assert_close(a(idx)[0], b(idx)[0], **tolerance("fp32_paths"))


def test_changing_a_future_token_leaves_past_logits_unchanged():
    model = tiny()
    idx = torch.randint(0, 29, (1, 12))
    changed = idx.clone()
    changed[0, 8] = (changed[0, 8] + 1) % 29
    torch.testing.assert_close(model(idx)[0][:, :8], model(changed)[0][:, :8])


def test_training_lowers_validation_loss():
    text = synthetic_corpus(200, seed=1)
    tokenizer = CharTokenizer(text)
    data = TokenDataset.from_text(text, tokenizer, context_length=32)
    model = tiny(vocab_size=tokenizer.vocab_size, context_length=32)
    before = evaluate(model, data)
    result = train(model, data, steps=60, eval_every=30, progress=False)
    assert result.steps == [30, 60] and len(result.val_loss) == 2
    assert result.final_val_loss < before - 0.8


def test_sampling_rules():
    logits = torch.tensor([[0.0, 5.0, 1.0, -2.0]])
    assert sample_next(logits, temperature=0).item() == 1
    g = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, temperature=5.0, top_k=2, generator=g).item() for _ in range(200)}
    assert picks == {1, 2}  # only the two largest logits can be drawn
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        sample_next(logits, temperature=1.0, top_k=0)


def test_generation_errors_are_clear():
    model = tiny()
    with pytest.raises(ValueError, match="context_length=40"):
        generate(model, torch.zeros(1, 30, dtype=torch.long), 20)
    with pytest.raises(ValueError, match="idx must have shape"):
        generate(model, torch.zeros(30, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="exceeds context_length"):
        model(torch.zeros(1, 41, dtype=torch.long))


def test_cache_errors_are_clear():
    model = tiny()
    cache = model.new_cache(batch_size=1, max_len=5)
    model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="KV cache is full"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    cache = model.new_cache(batch_size=2, max_len=8)
    with pytest.raises(ValueError, match="batch_size=2"):
        model(torch.zeros(3, 2, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("kwargs,message", [
    (dict(d_model=30), "must divide d_model"),
    (dict(n_kv_heads=3), "n_kv_heads=3 must divide n_heads=4"),
    (dict(window=0), "window must be an integer >= 1"),
    (dict(attention="nope"), "attention must be one of"),
    (dict(settings={"rop": True}), r"unknown MHASettings setting\(s\) \['rop'\]; the known ones are \['rope', 'rope_base'\]"),
    (dict(settings=MLASettings()), r"settings for attention='mha' must be MHASettings\(...\), got MLASettings"),
    (dict(attention="mla", settings=MHASettings(rope=True)), r"settings for attention='mla' must be MLASettings"),
    (dict(settings={"rope": "yes"}), "rope must be True or False"),
    (dict(settings={"rope_base": 0.0}), "rope_base must be a finite real number > 1"),
])
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_settings_reach_every_attention_layer():
    assert all(block.attn.rotary is None for block in tiny().blocks)  # default: no RoPE
    for settings in (MHASettings(rope=True, rope_base=500.0), {"rope": True, "rope_base": 500.0}):
        model = tiny(n_kv_heads=2, settings=settings)
        assert model.config.settings == MHASettings(rope=True, rope_base=500.0)  # a dict is kept typed
        for block in model.blocks:
            assert isinstance(block.attn.rotary, RotaryEmbedding) and block.attn.rotary.base == 500.0
    assert all(block.attn.rotary is None for block in tiny(settings=MHASettings(rope=False)).blocks)


# ---------------------------------------------------------------------- issue #18, item 15
@pytest.mark.parametrize("call,message", [
    (lambda m: generate(m, torch.zeros(1, 0, dtype=torch.long), 2), "idx must hold at least one token"),
    (lambda m: generate(m, torch.tensor([[3, 29]]), 2), r"idx \(token ids\) must hold values in \[0, 29\), got \[29\]"),
    (lambda m: generate(m, torch.tensor([[-1, 3]]), 2), r"idx \(token ids\) must hold values in \[0, 29\), got \[-1\]"),
    (lambda m: generate(m, torch.tensor([[1.0]]), 2), "idx must be an integer tensor"),
    (lambda m: generate(m, torch.tensor([[1]]), 2, temperature=float("nan")), "temperature must be a finite real"),
    (lambda m: generate(m, torch.tensor([[1]]), 2, temperature="hot"), "temperature must be a finite real"),
    (lambda m: generate(m, torch.tensor([[1]]), 2, top_k=-3), "top_k must be an integer >= 1"),
    (lambda m: m(torch.tensor([[1, 2]]), torch.tensor([[1, 29]])), r"targets \(token ids\) must hold values"),
    (lambda m: m(torch.tensor([[1, 2]]), torch.tensor([[1.0, 2.0]])), "targets must be an integer tensor"),
])
def test_bad_generation_arguments_are_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny())


def test_sampling_edge_cases():
    with pytest.raises(ValueError, match="at least one finite entry per row"):
        sample_next(torch.full((1, 4), float("-inf")), temperature=1.0)
    logits = torch.tensor([[0.5, 3.0, 3.0, -1.0, float("-inf")]])
    g = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, temperature=1e-45, generator=g).item() for _ in range(50)}
    assert picks == {1, 2}  # a vanishing temperature samples among the largest logits, never NaN
    negative = torch.tensor([[-5.0, -2.0, -9.0]])  # every logit / 1e-45 overflows to -inf
    assert sample_next(negative, temperature=1e-45, generator=g).item() == 1


def test_training_arguments_are_checked_and_warmup_zero_works():
    text = synthetic_corpus(40, seed=2)
    tokenizer = CharTokenizer(text)
    data = TokenDataset.from_text(text, tokenizer, context_length=16)
    model = tiny(vocab_size=tokenizer.vocab_size, context_length=16)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        train(model, data, steps=2, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="batches must be an integer >= 1"):
        evaluate(model, data, batches=0)
    result = train(model, data, steps=2, batch_size=4, warmup=0, eval_every=2, progress=False)
    assert result.steps == [2] and all(math.isfinite(x) for x in result.train_loss + result.val_loss)
