"""Chapter 05: MQA is n_kv_heads=1 of the one attention class; its cache is h times smaller; the decode
cost model (FLOPs, bytes, Shazeer's ratio); the decode timing helper; the grouped-decode checker."""

import pytest
import torch

from attention_lab import MultiHeadAttention, TinyGPT, TinyGPTConfig
from attention_lab.costs.memory_bound_decode import (decode_attention_cost, decode_layer_cost, decode_speed_sweep,
                                                     incremental_ratio, shazeer_ratio, time_decode_step)
from attention_lab.exercises import ExerciseError
from attention_lab.exercises.ch05 import check_grouped_decode
from attention_lab.caches.contiguous import kv_cache_bytes
from reference import attention_fp64, tolerance


def _layer(n_kv_heads, d_model=48, n_heads=6, seed=0):
    torch.manual_seed(seed)
    return MultiHeadAttention(d_model, n_heads, n_kv_heads).eval()


@pytest.mark.parametrize("n_kv_heads", [1, 2, 3])
def test_grouped_layer_equals_mha_with_repeated_kv_heads(n_kv_heads):
    """A layer with g kv heads is exactly an MHA layer whose kv projection heads are copies, one per query head."""
    grouped, mha = _layer(n_kv_heads), _layer(6, seed=1)
    group = 6 // n_kv_heads
    with torch.no_grad():
        mha.q_proj.weight.copy_(grouped.q_proj.weight)
        mha.out_proj.weight.copy_(grouped.out_proj.weight)
        for name in ("k_proj", "v_proj"):
            heads = getattr(grouped, name).weight.view(n_kv_heads, 8, 48)  # (g, head_dim, d_model)
            getattr(mha, name).weight.copy_(heads.repeat_interleave(group, dim=0).reshape(48, 48))
    x = torch.randn(2, 13, 48)
    torch.testing.assert_close(grouped(x), mha(x), **tolerance("fp32_same_layer"))


def test_mqa_layer_matches_float64_reference():
    layer = _layer(1)
    x = torch.randn(2, 11, 48, dtype=torch.float64)
    layer = layer.double()
    q, k, v = layer.project_qkv(x)  # q (2, 6, 11, 8), k and v (2, 1, 11, 8)
    assert k.shape == (2, 1, 11, 8)
    context = attention_fp64(q, k, v, causal=True).transpose(1, 2).reshape(2, 11, 48)
    torch.testing.assert_close(layer(x), layer.out_proj(context))


@pytest.mark.parametrize("n_kv_heads", [8, 4, 2, 1])
def test_cache_shrinks_by_the_number_of_heads_per_kv_head(n_kv_heads):
    config = TinyGPTConfig(vocab_size=11, context_length=50, d_model=64, n_layers=3, n_heads=8, n_kv_heads=n_kv_heads)
    cache = TinyGPT(config).new_cache(batch_size=2, max_len=50)
    tensor_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert cache.layers[0].keys.shape == (2, n_kv_heads, 50, 8)
    assert tensor_bytes == cache.nbytes == kv_cache_bytes(3, n_kv_heads, 8, 50, 2, bytes_per_element=4)
    mha_bytes = kv_cache_bytes(3, 8, 8, 50, 2, bytes_per_element=4)
    assert mha_bytes == tensor_bytes * (8 // n_kv_heads)


def test_decode_attention_cost_counts():
    cost = decode_attention_cost(batch=3, context=100, n_heads=8, n_kv_heads=2, head_dim=16, bytes_per_element=2)
    assert cost.flops == 4 * 3 * 8 * 100 * 16
    assert cost.bytes_read == (2 * 3 * 2 * 100 * 16 + 3 * 8 * 16) * 2
    assert cost.bytes_written == 3 * 8 * 16 * 2
    # The attention's intensity is about 2h/(g·e) FLOP/byte whatever the context: 1 for fp16 MHA, h for fp16 MQA.
    for n_kv_heads in (8, 2, 1):
        long = decode_attention_cost(4, 100_000, 8, n_kv_heads, 64)
        assert long.intensity == pytest.approx(8 / n_kv_heads, rel=1e-3)


def test_decode_layer_cost_adds_the_weights_once_per_step():
    layer = decode_layer_cost(batch=2, context=10, d_model=32, n_heads=4, n_kv_heads=1, bytes_per_element=1)
    attention = decode_attention_cost(2, 10, 4, 1, 8, bytes_per_element=1)
    weights = 32 * 8 * (2 * 4 + 2 * 1)
    assert layer.flops == attention.flops + 2 * 2 * weights
    assert layer.bytes_read == attention.bytes_read + weights + 2 * 32
    assert layer.bytes_written == attention.bytes_written + 2 * 2 * 8 + 2 * 32


def test_shazeer_ratio_terms():
    assert shazeer_ratio(512, 1024, 16, 16, 8) == pytest.approx(512 / 1024 + 1 / 1024 + 1 / 8)  # MHA: n/d + 1/b
    assert shazeer_ratio(512, 1024, 16, 1, 8) == pytest.approx(1 / 1024 + 512 / (1024 * 16) + 1 / 8)  # MQA
    with pytest.raises(ValueError, match="n_kv_heads=3 must divide n_heads=16"):
        shazeer_ratio(512, 1024, 16, 3, 8)


def test_incremental_ratio_follows_shazeer_within_a_constant():
    """For n <= d (Shazeer's regime) the exact count follows the Θ expression up to a bounded constant;
    MHA's ratio climbs with n much faster than MQA's."""
    d, h, b = 512, 8, 64
    for n_kv_heads in (8, 1):
        ratios = [incremental_ratio(n, d, h, n_kv_heads, b) / shazeer_ratio(n, d, h, n_kv_heads, b) for n in (8, 64, 512)]
        assert all(0.05 < r < 1.0 for r in ratios), ratios
    mha = [incremental_ratio(n, d, h, 8, b) for n in (8, 512)]
    mqa = [incremental_ratio(n, d, h, 1, b) for n in (8, 512)]
    assert mha[1] / mha[0] > 3 * (mqa[1] / mqa[0])


def test_time_decode_step_and_sweep():
    config = TinyGPTConfig(vocab_size=13, context_length=40, d_model=32, n_layers=1, n_heads=4, backend="torch")
    model = TinyGPT(config)
    assert time_decode_step(model, batch_size=2, context=39, warmup=1, repeats=2) > 0
    assert time_decode_step(model, batch_size=2, context=39, warmup=1, repeats=2) > 0  # the cache is rewound
    with pytest.raises(ValueError, match="exceeds the model's context_length=40"):
        time_decode_step(model, batch_size=2, context=40)
    with pytest.raises(ValueError, match="cache must hold batch_size=2 sequences of at least context"):
        time_decode_step(model, batch_size=2, context=20, cache=model.new_cache(2, 10))
    speeds = decode_speed_sweep(config, kv_heads=[4, 1], contexts=[8, 30], batch_size=2, rounds=2, repeats=1)
    assert sorted(speeds) == [1, 4] and all(len(v) == 2 and min(v) > 0 for v in speeds.values())


# --- the chapter's exercise ------------------------------------------------------------------------------

def _solution(q, k, v):
    batch, n_heads, _, head_dim = q.shape
    n_kv_heads = k.shape[1]
    q_groups = q.reshape(batch, n_kv_heads, n_heads // n_kv_heads, head_dim)  # (B, Hkv, G, D)
    weights = torch.softmax(q_groups @ k.transpose(-1, -2) * head_dim**-0.5, dim=-1)  # (B, Hkv, G, N)
    return (weights @ v).reshape(batch, n_heads, 1, head_dim)  # (B, H, 1, D)


def _stub(q, k, v):
    raise NotImplementedError("exercise: write this part")


def _interleaved_heads(q, k, v):  # query head i -> kv head i % Hkv (k.repeat instead of repeat_interleave)
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v


def _unscaled(q, k, v):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v


def _softmax_over_heads(q, k, v):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=1) @ v


def test_grouped_decode_checker_passes_the_solution(capsys):
    assert check_grouped_decode(_solution)
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,message", [(_stub, "not written yet"), (_interleaved_heads, "i // group"),
                                           (_unscaled, "D \\*\\* -0.5"), (_softmax_over_heads, "softmax")])
def test_grouped_decode_checker_rejects_wrong_answers(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        check_grouped_decode(wrong)


def test_plot_decode_benchmark_reads_the_results_layout():
    import matplotlib

    matplotlib.use("Agg")
    from attention_lab.costs.memory_bound_decode import plot_decode_benchmark

    rows = [{"impl": impl, "context": 4096, "n_kv_heads": g, "fraction_of_copy": 0.5 + 0.1 * g / 32}
            for impl in ("grouped", "sdpa") for g in (32, 8, 1)]
    ax = plot_decode_benchmark({"device": {"name": "H100"}, "rows": rows})
    assert len(ax.get_lines()) == 2
    with pytest.raises(ValueError, match="fraction of copy bandwidth"):
        plot_decode_benchmark({"rows": [{"impl": "x", "context": 1, "n_kv_heads": 1}]})
    with pytest.raises(ValueError, match="non-empty 'rows'"):
        plot_decode_benchmark({"device": "H100"})
