"""Chapter 04: band masks, the rolling-buffer cache == full attention with the band mask, receptive field, checkers."""

import pytest
import torch

from attention_lab import MultiHeadAttention, TinyGPT, TinyGPTConfig, scaled_dot_product_attention, sliding_window_mask
from attention_lab.exercises import ExerciseError
from attention_lab.exercises.ch04 import check_band_mask, check_read_order
from attention_lab.generate import generate
from attention_lab.caches.contiguous import KVCache, kv_cache_bytes
from attention_lab.caches.rolling import RollingKVCache
from attention_lab.receptive_field import input_influence, receptive_field
from reference import TOLERANCES, allowed_positions, attention_fp64, tolerance


def _decode(attention, x, chunks, cache):
    """Feed x ``(B, N, d)`` through ``attention`` in consecutive chunks, via ``cache``; ``(B, N, d)``."""
    outputs, start = [], 0
    for size in chunks:
        outputs.append(attention(x[:, start:start + size], cache=cache))
        start += size
    return torch.cat(outputs, dim=1)


def test_lecture_table_window_3():
    """Six tokens, window 3: each query sees itself and the two keys before it."""
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [0, 1, 1, 1, 0, 0],
                             [0, 0, 1, 1, 1, 0],
                             [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(sliding_window_mask(6, 3), expected)


@pytest.mark.parametrize("window", [1, 3, 7, 40])
@pytest.mark.parametrize("chunks", [[1] * 11, [9, 1, 1, 1, 1, 1, 1, 1, 1], [2, 1, 17, 1, 1, 3, 1], [29]])
def test_rolling_cache_equals_full_band_attention(window, chunks):
    """Prefill shorter and longer than the window, then token by token across several wrap-arounds."""
    torch.manual_seed(window * 100 + len(chunks))
    attention = MultiHeadAttention(24, 4, 2, window=window).eval()
    n = sum(chunks)
    x = torch.randn(2, n, 24)
    cache = attention.make_cache(2, n, "cpu", torch.float32)
    assert isinstance(cache, RollingKVCache) and cache.slots == min(window, n)
    with torch.no_grad():
        torch.testing.assert_close(_decode(attention, x, chunks, cache), attention(x), **tolerance("fp32_same_layer"))
    assert cache.length == n


def test_rolling_cache_keys_match_the_float64_band_reference():
    g = torch.Generator().manual_seed(0)
    window, n = 5, 24
    q = torch.randn(1, 4, n, 16, generator=g)
    k, v = torch.randn(1, 2, n, 16, generator=g), torch.randn(1, 2, n, 16, generator=g)
    expected = attention_fp64(q, k, v, window=window)  # (1, 4, n, 16)
    cache = RollingKVCache(1, window, 2, 16)
    start = 0
    for size in (7, 1, 1, 1, 1, 1, 6, 1, 1, 3, 1):
        keys, values = cache.update(k[:, :, start:start + size], v[:, :, start:start + size])
        kept = min(start, window - 1)
        assert torch.equal(keys, k[:, :, start - kept:start + size])  # position order, oldest first
        out = scaled_dot_product_attention(q[:, :, start:start + size], keys, values, window=window)
        atol, rtol = TOLERANCES[torch.float32]
        torch.testing.assert_close(out.double(), expected[:, :, start:start + size], atol=atol, rtol=rtol)
        start += size
    assert start == n


def test_slot_is_position_mod_window():
    cache = RollingKVCache(1, 4, 1, 1)
    for position in range(11):
        value = torch.full((1, 1, 1, 1), float(position))
        cache.update(value, value)
        slot = position % 4
        assert cache.keys[0, 0, slot, 0].item() == position
    assert cache.slot_positions().tolist() == [8, 9, 10, 7]
    assert cache.slot_of(torch.tensor([0, 5, 10])).tolist() == [0, 1, 2]


def test_window_one_attends_only_to_itself():
    torch.manual_seed(0)
    attention = MultiHeadAttention(16, 2, window=1).eval()
    x = torch.randn(1, 9, 16)
    _, _, v = attention.project_qkv(x)  # (1, 2, 9, 8)
    only_self = attention.out_proj(v.transpose(1, 2).reshape(1, 9, 16))
    cache = attention.make_cache(1, 9, "cpu", torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(attention(x), only_self)
        torch.testing.assert_close(_decode(attention, x, [4] + [1] * 5, cache), only_self)
    assert cache.nbytes == kv_cache_bytes(1, 2, 8, tokens=1, bytes_per_element=4)


def test_window_at_least_n_equals_causal_and_the_contiguous_cache():
    torch.manual_seed(0)
    windowed = MultiHeadAttention(16, 4, 2, window=13).eval()
    causal = MultiHeadAttention(16, 4, 2).eval()
    causal.load_state_dict(windowed.state_dict())
    x = torch.randn(2, 13, 16)
    with torch.no_grad():
        torch.testing.assert_close(windowed(x), causal(x))
        rolling = _decode(windowed, x, [6, 1, 1, 5], windowed.make_cache(2, 13, "cpu", torch.float32))
        contiguous = _decode(causal, x, [6, 1, 1, 5], KVCache(2, 13, 2, 4))
    torch.testing.assert_close(rolling, contiguous)


@pytest.mark.parametrize("window,n_kv_heads", [(1, None), (4, 2)])
def test_windowed_generation_with_rolling_cache_equals_uncached(window, n_kv_heads):
    torch.manual_seed(0)
    model = TinyGPT(TinyGPTConfig(vocab_size=23, context_length=37, d_model=32, n_layers=2, n_heads=4,
                                  n_kv_heads=n_kv_heads, window=window)).eval()
    for prompt_len, new in [(1, 19), (13, 24)]:  # a prompt longer than the window, then many wrap-arounds
        prompt = torch.randint(0, 23, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
        cached, cached_logits = generate(model, prompt, new, use_cache=True, return_logits=True)
        plain, plain_logits = generate(model, prompt, new, use_cache=False, return_logits=True)
        assert torch.equal(cached, plain)
        torch.testing.assert_close(cached_logits, plain_logits, **tolerance("fp32_paths"))
    cache = model.new_cache(2, 37)
    assert cache.nbytes == kv_cache_bytes(2, n_kv_heads or 4, 8, tokens=window, batch=2, bytes_per_element=4)


def test_rolling_cache_errors_are_clear():
    cache = RollingKVCache(2, window=3, n_kv_heads=2, head_dim=4, max_len=5)
    cache.update(torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="rolling KV cache is full: has seen 4 of max_len=5 positions, cannot append"):
        cache.update(torch.zeros(2, 2, 2, 4), torch.zeros(2, 2, 2, 4))
    with pytest.raises(ValueError, match="k has batch size 3 but this cache was made for batch_size=2"):
        cache.update(torch.zeros(3, 2, 1, 4), torch.zeros(3, 2, 1, 4))
    with pytest.raises(ValueError, match=r"v must have shape \(B, Hkv, T, D\) = \(2, 2, 1, 4\)"):
        cache.update(torch.zeros(2, 2, 1, 4), torch.zeros(2, 1, 1, 4))
    with pytest.raises(ValueError, match="window must be an integer >= 1"):
        RollingKVCache(1, window=0, n_kv_heads=1, head_dim=4)
    unbounded = RollingKVCache(1, window=2, n_kv_heads=1, head_dim=1)  # no max_len: grows forever, memory does not
    for _ in range(3):
        unbounded.update(torch.zeros(1, 1, 50, 1), torch.zeros(1, 1, 50, 1))
    assert unbounded.length == 150 and unbounded.nbytes == 2 * 2 * 4


@pytest.mark.parametrize("window", [1, 2, 3, 5])
def test_receptive_field_grows_by_window_minus_one_per_layer(window):
    torch.manual_seed(0)
    model = TinyGPT(TinyGPTConfig(vocab_size=11, context_length=24, d_model=16, n_layers=4, n_heads=2, window=window))
    influence = input_influence(model, 24)  # (4, 24)
    for layer in range(4):
        reached = (influence[layer] > 0).nonzero().flatten()
        field = receptive_field(layer + 1, window, 24)
        assert reached.tolist() == list(range(24 - field, 24))
    assert receptive_field(3, 4096) == 12286  # Mistral-7B's window over 3 layers


def test_reference_mask_helper_agrees_with_band_mask_for_decoding():
    for n_queries, n_keys, window in [(1, 9, 3), (4, 9, 2), (9, 9, 1)]:
        assert torch.equal(sliding_window_mask(n_queries, window, n_keys),
                           allowed_positions(n_queries, n_keys, window=window))


# ---- exercise checkers ------------------------------------------------------------------------------

def band_mask(n, window):  # the notebook's solution
    query = torch.arange(n).unsqueeze(1)  # (n, 1)
    key = torch.arange(n).unsqueeze(0)  # (1, n)
    return (key <= query) & (key > query - window)


def band_one_key_too_many(n, window):
    query, key = torch.arange(n).unsqueeze(1), torch.arange(n).unsqueeze(0)
    return (key <= query) & (key >= query - window)


def band_one_key_too_few(n, window):
    query, key = torch.arange(n).unsqueeze(1), torch.arange(n).unsqueeze(0)
    return (key <= query) & (key > query - window + 1)


def band_not_causal(n, window):
    query, key = torch.arange(n).unsqueeze(1), torch.arange(n).unsqueeze(0)
    return (key - query).abs() < window


def band_as_ints(n, window):
    return band_mask(n, window).int()


def read_order(length, window):  # the notebook's solution
    kept = min(length, window - 1)
    return torch.arange(length - kept, length) % window


def read_one_too_many(length, window):
    kept = min(length, window)
    return torch.arange(length - kept, length) % window


def read_in_slot_order(length, window):
    return read_order(length, window).sort().values


def read_positions_not_slots(length, window):
    kept = min(length, window - 1)
    return torch.arange(length - kept, length)


def stub(*args):
    raise NotImplementedError("exercise: write this part")


def test_band_checker_passes_the_solution(capsys):
    assert check_band_mask(band_mask)
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,message", [
    (stub, "not written yet"),
    (band_one_key_too_many, "one too many"),
    (band_one_key_too_few, "wrong entries"),
    (band_not_causal, "FUTURE"),
    (band_as_ints, "wrong entries"),
])
def test_band_checker_rejects_wrong_answers(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        check_band_mask(wrong)


def test_read_order_checker_passes_the_solution():
    assert check_read_order(read_order)


@pytest.mark.parametrize("wrong,message", [
    (stub, "not written yet"),
    (read_one_too_many, "one too many"),
    (read_in_slot_order, "wrong order"),
    (read_positions_not_slots, "differ from the reference"),
])
def test_read_order_checker_rejects_wrong_answers(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        check_read_order(wrong)
