"""Chapter 13: the one-layer decode step the chapter times (it computes what the modules compute, reads the
positions it claims), its byte and FLOP counts, the timing table and breakdown, and the study figures' inputs."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from attention_lab.book.results import load
from attention_lab.side_by_side import (DecodeTiming, DecodeVariant, attention_flops, build_decode_layer,
                                        cache_bytes_read, decode_breakdown, decode_step, decode_timing_table,
                                        filled_cache, gpu_decode_lines, measure_read_bandwidth, plot_cost_map,
                                        plot_decode_timing, plot_quality_and_cache, seed_values, single_run_lines,
                                        study_cache_bytes_per_token, time_decode_steps, weight_bytes)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(d_model=32, n_heads=4, head_dim=8, dtype=torch.float64)


def _prefilled(layer, x):
    """The layer's own cache after a real prefill of all but the last token of ``x``."""
    cache = layer.make_cache(1, x.shape[1], "cpu", torch.float64)
    layer(x[:, :-1], cache=cache)
    return cache


@pytest.mark.parametrize("variant", [DecodeVariant(), DecodeVariant(n_kv_heads=2), DecodeVariant(n_kv_heads=1),
                                     DecodeVariant(window=5), DecodeVariant(n_kv_heads=2, window=3),
                                     DecodeVariant(window=40), DecodeVariant(latent_dim=12, rope_dim=4),
                                     DecodeVariant(latent_dim=12, rope_dim=4, mode="naive")])
def test_a_decode_step_on_a_prefilled_cache_is_the_full_forward_last_row(variant):
    layer = build_decode_layer(variant, **SMALL)
    x = torch.randn(1, 13, 32, dtype=torch.float64)
    expected = layer(x)[:, -1:]  # no cache: the whole sequence at once, causal (and windowed)
    cache = _prefilled(layer, x)
    with torch.no_grad():
        first = decode_step(layer, cache, x[:, -1:], 13)
        again = decode_step(layer, cache, x[:, -1:], 13)  # the timing loop repeats the same step
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(again, first)


def test_the_window_step_in_slot_order_equals_the_rolling_cache_in_position_order():
    layer = build_decode_layer(DecodeVariant(window=4), **SMALL)
    x = torch.randn(1, 1, 32, dtype=torch.float64)
    for context in (2, 4, 9, 10):
        ours = filled_cache(layer, 9, seed=3)
        books = filled_cache(layer, 9, seed=3)
        books.length = context - 1  # the book's RollingKVCache.update gathers the window in position order
        expected = layer(x, cache=books)
        torch.testing.assert_close(decode_step(layer, ours, x, context), expected)


def test_absorbed_mla_step_equals_the_naive_one_on_the_same_cache():
    absorbed = build_decode_layer(DecodeVariant(latent_dim=16, rope_dim=4), **SMALL, seed=1)
    naive = build_decode_layer(DecodeVariant(latent_dim=16, rope_dim=4, mode="naive"), **SMALL, seed=1)
    assert absorbed.mode == "absorbed" and naive.mode == "naive"
    x = torch.randn(1, 1, 32, dtype=torch.float64)
    for context in (1, 7, 30):
        got = decode_step(absorbed, filled_cache(absorbed, 30, seed=5), x, context)
        torch.testing.assert_close(got, decode_step(naive, filled_cache(naive, 30, seed=5), x, context))


@pytest.mark.parametrize("variant", [DecodeVariant(n_kv_heads=2), DecodeVariant(latent_dim=12, rope_dim=4)])
def test_a_step_reads_exactly_the_first_context_positions(variant):
    layer = build_decode_layer(variant, **SMALL)
    x = torch.randn(1, 1, 32, dtype=torch.float64)
    cache = filled_cache(layer, 20, seed=0)
    buffers = [cache.rows] if hasattr(cache, "rows") else [cache.keys, cache.values]
    before = decode_step(layer, cache, x, 10)
    for buffer in buffers:  # (..., positions, width): positions from the context on must not matter
        buffer[..., 10:, :] = 1e3
    torch.testing.assert_close(decode_step(layer, cache, x, 10), before)
    for buffer in buffers:  # the first position must
        buffer[..., 0, :] = 5.0
    assert not torch.allclose(decode_step(layer, cache, x, 10), before)


def test_a_step_refuses_a_context_its_cache_cannot_hold():
    layer = build_decode_layer(DecodeVariant(n_kv_heads=2), **SMALL)
    with pytest.raises(ValueError, match="does not fit"):
        decode_step(layer, filled_cache(layer, 8), torch.randn(1, 1, 32, dtype=torch.float64), 9)
    windowed = build_decode_layer(DecodeVariant(window=6), **SMALL)
    with pytest.raises(ValueError, match="slots"):
        decode_step(windowed, filled_cache(windowed, 4), torch.randn(1, 1, 32, dtype=torch.float64), 9)


def test_cache_bytes_read_are_the_bytes_of_the_positions_the_step_sees():
    for variant, numbers in ((DecodeVariant(), 2 * 4 * 8), (DecodeVariant(n_kv_heads=1), 2 * 1 * 8),
                             (DecodeVariant(latent_dim=12, rope_dim=4), 12 + 4)):
        layer = build_decode_layer(variant, **SMALL)
        assert cache_bytes_read(layer, 10) == 10 * numbers * 8  # float64
    windowed = build_decode_layer(DecodeVariant(window=6, n_kv_heads=2), **SMALL)
    cache = filled_cache(windowed, 50)
    assert cache.slots == 6 and cache.nbytes == cache_bytes_read(windowed, 50) == cache_bytes_read(windowed, 6)
    assert cache_bytes_read(windowed, 4) == 4 * 2 * 2 * 8 * 8
    mla = build_decode_layer(DecodeVariant(latent_dim=12, rope_dim=4), **SMALL)
    assert filled_cache(mla, 10).nbytes == cache_bytes_read(mla, 10)


def test_flops_and_weights_of_a_step():
    mha, mqa = (build_decode_layer(DecodeVariant(n_kv_heads=k), **SMALL) for k in (None, 1))
    assert attention_flops(mha, 10) == attention_flops(mqa, 10) == 10 * 4 * 4 * 8  # the scores do not shrink
    assert cache_bytes_read(mha, 10) == 4 * cache_bytes_read(mqa, 10)  # ... the cache does
    absorbed = build_decode_layer(DecodeVariant(latent_dim=12, rope_dim=4), **SMALL)
    naive = build_decode_layer(DecodeVariant(latent_dim=12, rope_dim=4, mode="naive"), **SMALL)
    assert attention_flops(absorbed, 10) == 10 * 2 * 4 * (2 * 12 + 4)
    assert attention_flops(naive, 10) == 10 * (4 * 12 * 4 * 8 + 2 * 4 * (2 * 8 + 4))
    assert weight_bytes(mha) == 4 * 32 * 32 * 8 and weight_bytes(mqa) == (2 * 32 * 32 + 2 * 32 * 8) * 8


def test_time_decode_steps_times_each_variant_at_its_contexts():
    variants = {"MHA": DecodeVariant(), "naive": DecodeVariant(latent_dim=8, rope_dim=4, mode="naive", max_context=8)}
    rows = time_decode_steps(["MHA", "naive"], [4, 8, 32], repeats=1, variants=variants, progress=False,
                             d_model=32, n_heads=4, head_dim=8)
    assert [(r.variant, r.context) for r in rows] == [("MHA", 4), ("MHA", 8), ("MHA", 32), ("naive", 4), ("naive", 8)]
    assert all(r.seconds > 0 for r in rows)
    assert rows[2].cache_bytes == 32 * 2 * 4 * 8 * 4 and rows[2].weight_bytes == 4 * 32 * 32 * 4
    with pytest.raises(ValueError, match="names must be keys"):
        time_decode_steps(["Mamba"], [4], variants=variants, progress=False)


def _rows():
    return [DecodeTiming("A", 16, 0.010, 1_000, 5_000, 10), DecodeTiming("A", 1024, 0.030, 2_001_000, 5_000, 20_000),
            DecodeTiming("B", 16, 0.008, 100, 4_000, 10)]


def test_decode_breakdown_splits_fixed_from_growth():
    found = decode_breakdown(_rows())
    a = found["A"]
    assert a.short_context == 16 and a.long_context == 1024
    assert a.growth_seconds == pytest.approx(0.020) and a.cache_share == pytest.approx(2 / 3)
    assert a.growth_bytes_per_second == pytest.approx(2_000_000 / 0.020)
    assert a.flops_per_byte == pytest.approx(20_000 / 2_001_000)
    assert "67% of the step" in a.sentence() and "0.1 GB of cache per extra second" in a.sentence()
    assert found["B"].growth_seconds == 0 and found["B"].growth_bytes_per_second == float("inf")


def test_the_timing_table_and_plot_show_every_row():
    table = decode_timing_table(_rows())
    assert "30.0 (   1.9)" in table and "—" in table.splitlines()[-1]
    fig = plot_decode_timing(_rows(), read_bytes_per_second=1e9)
    left, right = fig.axes
    assert len(left.lines) == 2 and [l.get_label() for l in right.lines] == ["A", "reading at 1.0 GB/s (measured)"]
    assert measure_read_bandwidth(2**20, repeats=1) > 1e8  # any machine reads more than 100 MB/s


def test_study_cache_bytes_are_the_formulas_of_the_book():
    report = load("quality_ch13")
    found = study_cache_bytes_per_token(report)
    layers, heads, head_dim, context = 2, 8, 8, 64
    mha = 2 * layers * heads * head_dim * 4
    assert found["MHA"] == mha and found["GQA-4"] == mha / 2 and found["GQA-2"] == mha / 4 and found["MQA"] == mha / 8
    assert found["window 8"] == mha * 8 / context
    assert found["MLA"] == layers * (4 * head_dim + head_dim // 2) * 4  # d_c = 4·d_h, d_h^R = d_h / 2


def test_seed_values_and_the_quality_figure_show_every_seed():
    report = load("quality_ch13")
    values = seed_values(report, "recall")
    run = next(r for r in report["runs"] if (r["objective"], r["variant"], r["seed"]) == ("recall", "MLA", 2))
    assert values["MLA"][2] == run["final"]["accuracy"] and len(values["MLA"]) == 3
    fig = plot_quality_and_cache(report, study_cache_bytes_per_token(report))
    recall = fig.axes[1]
    from matplotlib.collections import PathCollection

    dots = sorted(y for c in recall.collections if isinstance(c, PathCollection) for _, y in c.get_offsets())
    assert sorted(v for vs in values.values() for v in vs) == pytest.approx(dots)
    assert [p.get_height() for p in fig.axes[2].patches] == list(study_cache_bytes_per_token(report).values())


def test_single_run_lines_are_the_committed_numbers():
    old, study = load("side_by_side"), load("quality_ch13")
    by = {r["name"]: r for r in old["results"]}
    lines = single_run_lines(old, study)
    assert f"{by['MHA + Triton flash']['val_loss'] - by['MHA']['val_loss']:+.3f} nats" in lines[0]
    assert f"{by['MQA']['val_loss'] - by['MHA']['val_loss']:+.3f} nats" in lines[1] and "not matched" in lines[1]
    assert lines[2].endswith("within the spread")
    resolved = {**study, "conclusions": [{**c, "resolved": True} for c in study["conclusions"]]}
    assert single_run_lines(old, resolved)[2].endswith("resolved")


def test_gpu_decode_lines_compare_the_step_with_the_cache_read():
    old = {"speed_batch": 2, "config": {"context_length": 100},
           "results": [{"name": "X", "decode_tokens_per_s": 1000.0, "cache_bytes_per_token": 1000.0}]}
    (line,) = gpu_decode_lines(old, bandwidth_bytes_per_s=1e9)
    # step 2 / 1000 s = 2 ms; cache 1000 · 100 · 2 = 200 kB, read in 0.2 ms = 10 % of the step
    assert "step  2.00 ms" in line and "0.200 ms = 10.0% of the step" in line


def test_the_cost_map_labels_every_cell_it_fills():
    from attention_lab.side_by_side import IDEAS

    fig = plot_cost_map()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert labels.count("main target") == sum(row.count(2) for row in IDEAS.values())
    assert labels.count("helps") == sum(row.count(1) for row in IDEAS.values())
    assert all(t.get_rotation() == 0 for t in ax.get_xticklabels())  # horizontal, wrapped: no overlap
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
