"""Chapter 03: the contiguous KV cache — cached == uncached (layer and model), clear errors, sizes, costs, checker."""

import pytest
import torch

from attention_lab import MultiHeadAttention, TinyGPT, TinyGPTConfig, scaled_dot_product_attention
from attention_lab.caches.sizes import GiB, KiB, MiB, PUBLISHED_MODELS, ModelShape, format_bytes
from attention_lab.costs.step_work import decode_step_work, generation_multiply_adds, measure_generation_speed
from attention_lab.exercises import ExerciseError
from attention_lab.exercises.ch03 import check_cache_append
from attention_lab.generate import generate
from attention_lab.caches.contiguous import KVCache, kv_cache_bytes
from reference import TOLERANCES, attention_fp64, tolerance


def _decode(attention: MultiHeadAttention, x: torch.Tensor, chunks: list[int], cache) -> torch.Tensor:
    """Feed x ``(B, N, d)`` through ``attention`` in consecutive chunks of the given sizes, via ``cache``."""
    outputs, start = [], 0
    for size in chunks:
        outputs.append(attention(x[:, start:start + size], cache=cache))
        start += size
    assert start == x.shape[1]
    return torch.cat(outputs, dim=1)  # (B, N, d)


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("chunks", [[1] * 7, [5, 1, 1, 1], [13, 1, 3, 1, 15], [33]])
def test_cached_layer_equals_full_causal_attention(n_heads, n_kv_heads, chunks):
    torch.manual_seed(sum(chunks) + n_kv_heads)
    attention = MultiHeadAttention(24, n_heads, n_kv_heads).eval()
    n = sum(chunks)
    x = torch.randn(2, n, 24)
    cache = attention.make_cache(2, n + 3, "cpu", torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(_decode(attention, x, chunks, cache), attention(x), **tolerance("fp32_same_layer"))
    assert cache.length == n


def test_cache_returns_exactly_the_keys_the_float64_reference_needs():
    """The queries of a chunk, with the cache's keys, match fp64 attention over the whole prefix (Nq != Nk)."""
    g = torch.Generator().manual_seed(0)
    cache = KVCache(batch_size=2, max_len=40, n_kv_heads=2, head_dim=16)
    k_all, v_all = torch.randn(2, 2, 37, 16, generator=g), torch.randn(2, 2, 37, 16, generator=g)
    q_all = torch.randn(2, 4, 37, 16, generator=g)
    start = 0
    for size in (11, 1, 1, 7, 1, 16):
        keys, values = cache.update(k_all[:, :, start:start + size], v_all[:, :, start:start + size])
        assert torch.equal(keys, k_all[:, :, :start + size]) and torch.equal(values, v_all[:, :, :start + size])
        out = scaled_dot_product_attention(q_all[:, :, start:start + size], keys, values, causal=True)
        expected = attention_fp64(q_all, k_all[:, :, :37], v_all, causal=True)[:, :, start:start + size]
        atol, rtol = TOLERANCES[torch.float32]
        torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)
        start += size


def _model(**overrides) -> TinyGPT:
    torch.manual_seed(1)
    config = dict(vocab_size=31, context_length=48, d_model=32, n_layers=3, n_heads=4)
    config.update(overrides)
    return TinyGPT(TinyGPTConfig(**config)).eval()


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_greedy_generation_with_and_without_cache_gives_identical_tokens(n_kv_heads):
    model = _model(n_kv_heads=n_kv_heads)
    for batch, prompt_len, new in [(1, 1, 30), (3, 5, 17), (2, 19, 29), (1, 47, 1)]:
        prompt = torch.randint(0, 31, (batch, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
        cached, cached_logits = generate(model, prompt, new, use_cache=True, return_logits=True)
        plain, plain_logits = generate(model, prompt, new, use_cache=False, return_logits=True)
        assert torch.equal(cached, plain)
        assert cached.shape == (batch, prompt_len + new)
        torch.testing.assert_close(cached_logits, plain_logits, **tolerance("fp32_paths"))


def test_model_cache_bytes_follow_the_formula():
    model = _model(n_kv_heads=2)
    cache = model.new_cache(batch_size=3, max_len=20)
    expected = kv_cache_bytes(n_layers=3, n_kv_heads=2, head_dim=8, tokens=20, batch=3, bytes_per_element=4)
    assert cache.nbytes == expected == ModelShape.from_config(model.config).cache_bytes(20, 3, bytes_per_element=4)
    assert all(layer.keys.shape == (3, 2, 20, 8) for layer in cache.layers)


def test_cache_errors_name_the_problem():
    cache = KVCache(batch_size=2, max_len=6, n_kv_heads=3, head_dim=8)
    cache.update(torch.zeros(2, 3, 5, 8), torch.zeros(2, 3, 5, 8))
    with pytest.raises(ValueError, match=r"KV cache is full: holds 5 of max_len=6 positions, cannot append 2 more"):
        cache.update(torch.zeros(2, 3, 2, 8), torch.zeros(2, 3, 2, 8))
    assert cache.length == 5  # a refused update leaves the cache as it was
    with pytest.raises(ValueError, match=r"k has batch size 1 but this cache was made for batch_size=2"):
        cache.update(torch.zeros(1, 3, 1, 8), torch.zeros(1, 3, 1, 8))
    with pytest.raises(ValueError, match=r"k must have shape \(B, Hkv, T, D\) = \(2, 3, 1, 8\)"):
        cache.update(torch.zeros(2, 4, 1, 8), torch.zeros(2, 4, 1, 8))
    with pytest.raises(ValueError, match=r"v must have shape \(B, Hkv, T, D\) = \(2, 3, 1, 8\)"):
        cache.update(torch.zeros(2, 3, 1, 8), torch.zeros(2, 3, 1, 7))
    with pytest.raises(ValueError, match=r"k must have shape \(batch, n_kv_heads, new_tokens, head_dim\)"):
        cache.update(torch.zeros(3, 1, 8), torch.zeros(3, 1, 8))
    with pytest.raises(ValueError, match="max_len must be an integer >= 1"):
        KVCache(batch_size=1, max_len=0, n_kv_heads=1, head_dim=8)
    cache.reset()
    assert cache.length == 0
    cache.update(torch.ones(2, 3, 6, 8), torch.ones(2, 3, 6, 8))  # full capacity after a reset


def test_published_cache_sizes():
    llama2 = PUBLISHED_MODELS["Llama-2-7B"]
    assert llama2.cache_bytes(1) == 512 * KiB
    assert llama2.cache_bytes(4096) == 2 * GiB
    assert PUBLISHED_MODELS["Llama-3-8B"].cache_bytes(1) == 128 * KiB
    assert PUBLISHED_MODELS["Llama-2-70B"].cache_bytes(1) == 320 * KiB
    mistral = PUBLISHED_MODELS["Mistral-7B"]  # a window caps the cache
    assert mistral.cache_bytes(32768) == mistral.cache_bytes(4096) == 512 * MiB
    assert PUBLISHED_MODELS["GPT-3 175B"].cache_bytes(1, batch=2, bytes_per_element=4) == 18 * MiB
    assert [format_bytes(b) for b in (512 * KiB, 2 * GiB, 1536 * MiB, 100)] == ["512 KiB", "2 GiB", "1.5 GiB", "100 B"]


def test_decode_step_work_matches_the_lecture_counts():
    n, d = 37, 40
    plain, cached = decode_step_work(n, d, cached=False), decode_step_work(n, d, cached=True)
    assert (plain.projected, plain.scores) == (3 * n * d, n * n)
    assert (cached.projected, cached.new_kv_entries, cached.scores) == (3 * d, 2 * d, n)
    assert plain.multiply_adds == n * 12 * d * d + 2 * n * n * d
    assert cached.multiply_adds == 12 * d * d + 2 * n * d
    # Generating grows the saving: the ratio rises with the number of new tokens.
    ratios = [generation_multiply_adds(4, new, d, 2, cached=False) / generation_multiply_adds(4, new, d, 2, cached=True)
              for new in (1, 8, 64)]
    assert ratios[0] == pytest.approx(1.0) and ratios[0] < ratios[1] < ratios[2]


def test_generation_speed_is_measured_for_both_paths():
    speed = measure_generation_speed(_model(), [2, 5])
    assert speed["new_tokens"] == [2, 5]
    for name in ("cached", "uncached"):
        assert all(s > 0 for s in speed[f"{name}_seconds"])
        assert speed[f"{name}_tokens_per_s"] == [n / s for n, s in zip([2, 5], speed[f"{name}_seconds"])]


# ---- exercise checker -------------------------------------------------------------------------------

def cache_append(keys_buffer, values_buffer, length, k_new, v_new):  # the notebook's solution
    end = length + k_new.shape[2]
    keys_buffer[:, :, length:end] = k_new
    values_buffer[:, :, length:end] = v_new
    return keys_buffer[:, :, :end], values_buffer[:, :, :end], end


def written_one_slot_late(keys_buffer, values_buffer, length, k_new, v_new):
    end = length + k_new.shape[2]
    keys_buffer[:, :, length + 1:end + 1] = k_new
    values_buffer[:, :, length + 1:end + 1] = v_new
    return keys_buffer[:, :, :end + 1], values_buffer[:, :, :end + 1], end + 1


def returns_only_the_old_entries(keys_buffer, values_buffer, length, k_new, v_new):
    end = length + k_new.shape[2]
    keys_buffer[:, :, length:end] = k_new
    values_buffer[:, :, length:end] = v_new
    return keys_buffer[:, :, :end - 1], values_buffer[:, :, :end - 1], end - 1


def forgets_to_advance(keys_buffer, values_buffer, length, k_new, v_new):
    end = length + k_new.shape[2]
    keys_buffer[:, :, length:end] = k_new
    values_buffer[:, :, length:end] = v_new
    return keys_buffer[:, :, :end], values_buffer[:, :, :end], length


def forgets_the_values(keys_buffer, values_buffer, length, k_new, v_new):
    end = length + k_new.shape[2]
    keys_buffer[:, :, length:end] = k_new
    return keys_buffer[:, :, :end], values_buffer[:, :, :end], end


def returns_the_whole_buffer(keys_buffer, values_buffer, length, k_new, v_new):
    end = length + k_new.shape[2]
    keys_buffer[:, :, length:end] = k_new
    values_buffer[:, :, length:end] = v_new
    return keys_buffer, values_buffer, end


def stub(keys_buffer, values_buffer, length, k_new, v_new):
    raise NotImplementedError("exercise: write this part")


def test_cache_checker_passes_the_solution(capsys):
    assert check_cache_append(cache_append)
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,message", [
    (stub, "not written yet"),
    (written_one_slot_late, "first free slot is buffer"),
    (returns_only_the_old_entries, "new_length should be"),
    (forgets_to_advance, "new_length should be"),
    (forgets_the_values, "values"),
    (returns_the_whole_buffer, "expected shape"),
])
def test_cache_checker_rejects_wrong_answers(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        check_cache_append(wrong)
