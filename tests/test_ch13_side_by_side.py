"""Chapter 13: variant configs, the comparison's cache numbers, the results round trip, and the exercise checker."""

import pytest
import torch

from attention_lab.side_by_side import VARIANTS, compare_variants, results_from_dicts, results_to_dicts, variant_config
from attention_lab.data import CharTokenizer, TokenDataset, synthetic_corpus
from attention_lab.exercises import ExerciseError
from attention_lab.exercises.ch13 import check_cache_bytes_per_token
from attention_lab.mla import MLASettings
from attention_lab.model import MHASettings, TinyGPTConfig

BASE = TinyGPTConfig(vocab_size=27, context_length=16, d_model=32, n_layers=2, n_heads=8)


def test_variant_configs():
    assert variant_config(BASE, "MQA").n_kv_heads == 1
    assert variant_config(BASE, "sliding window").window == 4
    assert variant_config(BASE, "MHA + Triton flash").backend == "flash"
    assert variant_config(BASE, "MLA").attention == "mla"
    with pytest.raises(ValueError, match="name must be one of"):
        variant_config(BASE, "nope")


def test_variant_configs_keep_or_replace_the_base_settings():
    roped = TinyGPTConfig(vocab_size=27, context_length=16, d_model=32, n_heads=8, settings=MHASettings(rope=True))
    assert variant_config(roped, "MQA").settings == MHASettings(rope=True)  # the MHA family keeps RoPE
    assert variant_config(roped, "MLA").settings == MLASettings()  # MLA has its own (decoupled) RoPE


def test_comparison_cache_bytes_follow_the_formulas():
    text = synthetic_corpus(60)
    tokenizer = CharTokenizer(text)
    base = TinyGPTConfig(vocab_size=tokenizer.vocab_size, context_length=16, d_model=32, n_layers=2, n_heads=8)
    data = TokenDataset.from_text(text, tokenizer, 16)
    names = ["MHA", "GQA-2", "MQA", "sliding window"]
    results = {r.name: r for r in compare_variants(base, names, data, steps=2, speed_batch=2, progress=False)}
    mha = 2 * 2 * 8 * 4 * 4  # K and V, layers, heads, head_dim, fp32 bytes
    assert results["MHA"].cache_bytes_per_token == mha
    assert results["GQA-2"].cache_bytes_per_token == mha / 4
    assert results["MQA"].cache_bytes_per_token == mha / 8
    assert results["sliding window"].cache_bytes_per_token == mha * 4 / 16  # 4 slots over a 16-token context
    assert all(r.decode_tokens_per_s > 0 and r.prefill_tokens_per_s > 0 for r in results.values())
    rows = results_to_dicts(list(results.values()))
    assert results_from_dicts(rows) == list(results.values())


def _solution(config, bytes_per_element):
    n_kv = config.n_kv_heads or config.n_heads
    positions = config.context_length if config.window is None else min(config.window, config.context_length)
    return 2 * config.n_layers * n_kv * config.head_dim * positions * bytes_per_element / config.context_length


def _no_factor_two(config, b):
    return _solution(config, b) / 2


def _query_heads(config, b):
    return 2 * config.n_layers * config.n_heads * config.head_dim * b


def _ignores_window(config, b):
    return 2 * config.n_layers * (config.n_kv_heads or config.n_heads) * config.head_dim * b


def _stub(config, b):
    raise NotImplementedError


def test_checker_passes_solution():
    assert check_cache_bytes_per_token(_solution)


@pytest.mark.parametrize("wrong", [_stub, _no_factor_two, _query_heads, _ignores_window])
def test_checker_rejects(wrong):
    with pytest.raises(ExerciseError):
        check_cache_bytes_per_token(wrong)


def _fixed(value):
    return lambda config, b: _solution(config, value)


def _window_without_min(config, b):
    kept = config.context_length if config.window is None else config.window
    return 2 * config.n_layers * (config.n_kv_heads or config.n_heads) * config.head_dim * kept * b / config.context_length


def _window_off_by_one(config, b):
    kept = config.context_length if config.window is None else min(config.window - 1, config.context_length)
    return 2 * config.n_layers * (config.n_kv_heads or config.n_heads) * config.head_dim * kept * b / config.context_length


def _one_layer(config, b):
    return _solution(config, b) / config.n_layers


def _whole_cache(config, b):
    return _solution(config, b) * config.context_length


@pytest.mark.parametrize("wrong", [_fixed(4), _fixed(2), _fixed(1), _window_without_min, _window_off_by_one,
                                   _one_layer, _whole_cache])
def test_checker_rejects_the_family_of_plausible_formulas(wrong):
    with pytest.raises(ExerciseError):
        check_cache_bytes_per_token(wrong)


def test_checker_names_a_hard_coded_element_size():
    with pytest.raises(ExerciseError, match="bytes_per_element is an argument"):
        check_cache_bytes_per_token(_fixed(4))
