"""Reading the committed flash benchmark results: ratios against any baseline, tables of measured methods only."""

import copy

import pytest

from attention_lab.book.results import load
from attention_lab.flash import benchmark_report as br


def _results(methods, tflops):
    rows = [dict(head_dim=128, n=n, causal=causal, mode="fwd", method=m, tflops=tflops[m] * (2 if n == 4096 else 1))
            for n in (1024, 4096) for causal in (False, True) for m in methods]
    rows.append(dict(head_dim=128, n=8192, causal=False, mode="fwd", method="triton", tflops=None))  # failed run
    return {"rows": rows}


def test_ratio_range_against_flex_and_flash():
    results = _results(("sdpa_flash", "flex", "triton"), {"sdpa_flash": 300, "flex": 400, "triton": 420})
    assert br.ratio_range(results, 128, "fwd", baseline="flex") == (420 / 400, 420 / 400)
    assert br.ratio_range(results, 128, "fwd") == (1.4, 1.4)
    assert br.ratio_range(results, 128, "fwd", baseline="sdpa_cudnn") is None  # not measured: no ratio
    assert br.ratio_range(results, 64, "fwd") is None


def test_table_lists_only_the_measured_methods():
    text = br.table(_results(("sdpa_flash", "triton"), {"sdpa_flash": 300, "triton": 450}), "fwd")
    header = text.splitlines()[0].split()
    assert header[3:] == ["sdpa_flash", "triton", "triton/flash"]
    assert "1.50×" in text and "flex" not in text


def test_flops_count():
    assert br.attention_flops(2, 3, 5, 7, causal=False) == 4 * 2 * 3 * 5 * 5 * 7
    assert br.attention_flops(2, 3, 5, 7, causal=True, mode="fwd_bwd") == 4 * 2 * 3 * 5 * 5 * 7 * 0.5 * 3.5


def test_chapter_10_reading_of_the_flex_run():
    """What chapter 10 says about the committed FlexAttention run (library ahead of Flex at every shape, forward
    level with cuDNN at D=128 N >= 4k, forward+backward within 10 % of cuDNN there and behind it everywhere) holds in
    the file, and each statement fails on a run where it is false."""

    results = load("flash_flex")
    assert results is not None, "attention_lab/results/flash_flex.json must ship with the package"
    assert len(br.rows(results, method="triton")) == 40  # D ∈ {64, 128} × 5 N × causal or not × fwd, fwd+bwd
    assert len(br.rows(results, method="triton_teaching")) == 40
    lines, claims = br.flex_reading(results)
    assert len(lines) == 4 and all(claims.values()), claims
    # D=64 with 1k keys: the row counted is the teaching kernels' where the library runs only those (the forward;
    # forward+backward causal), else the library's own (not causal its backward takes the Gluon dK/dV kernel)
    for d, n, c in {(r["head_dim"], r["n"], r["causal"]) for r in results["rows"]}:
        short = (d, n) == (64, 1024)
        assert br.library_choice(results, d, n, c, "fwd")["method"] == ("triton_teaching" if short else "triton")
        method = "triton_teaching" if short and c else "triton"
        assert br.library_choice(results, d, n, c, "fwd_bwd")["method"] == method
    slower = copy.deepcopy(results)
    for row in br.rows(slower, method="triton", head_dim=128, n=4096, causal=True):
        row["tflops"] *= 0.5
    _, broken = br.flex_reading(slower)
    assert not broken["the library's forward is at least FlexAttention's speed at every shape"]
    assert not broken["the library's forward is at least 0.95x cuDNN at D=128, N >= 4k"]
    assert not broken["the library's forward+backward is ahead of FlexAttention at every shape"]
    assert not broken["the Hopper path's forward+backward is faster than the teaching kernels' at every shape"]
    assert not broken["the library's forward+backward is at least 0.9x cuDNN at D=128, N >= 4k"]
    faster = copy.deepcopy(results)
    br.rows(faster, method="triton", head_dim=128, n=4096, causal=True, mode="fwd_bwd")[0]["tflops"] *= 2
    assert not br.flex_reading(faster)[1]["the library's forward+backward is behind cuDNN at every shape"]


def test_chapter_10_reading_of_the_gqa_training_run():
    """What chapter 10 says about GQA/MQA training (gqa_training.json, with CUDA-graph times): within 10 % of cuDNN
    and ahead of Flex on the GPU at every batch and kv-head count, no cliff at batch 1 on the GPU, the head split
    paying there, and the eager batch-1 step being the host's — each true in the file and false on a run where it
    is not."""

    results = load("gqa_training")
    assert results is not None and results["environment"]["capability"] == "9.0"
    lines, claims = br.gqa_training_reading(results)
    assert len(lines) == 6 and all(claims.values()), claims
    mqa = br.rows(results, batch=1, n_kv_heads=1, mode="fwd_bwd", method="triton")[0]
    assert f"library {mqa['graph_ms']:.2f} ms from a CUDA graph, {mqa['ms']:.2f} ms eager" in lines[-1]

    def broken(**where):
        changed = copy.deepcopy(results)
        for row in br.rows(changed, mode="fwd_bwd", method="triton", **where):
            row["graph_ms"] *= 1.5
            row["graph_tflops"] /= 1.5
        return [claim for claim, holds in br.gqa_training_reading(changed)[1].items() if not holds]

    assert {"from a CUDA graph the library's forward+backward is at least 0.9x cuDNN at every batch and kv-head count",
            "on the GPU batch 1 keeps at least 80 % of batch 8's TFLOP/s at every kv-head count (no cliff)"} <= set(
        broken(batch=1, n_kv_heads=4))
    assert "from a CUDA graph the library's forward+backward is at least 0.9x cuDNN at every batch and kv-head " \
           "count" in broken(batch=8, n_kv_heads=16)
    without_graphs = copy.deepcopy(results)
    for row in without_graphs["rows"]:
        row.pop("graph_ms", None)
    with pytest.raises(ValueError, match="without CUDA-graph times .* run benchmarks/gqa_training.py without "
                                         "--no-graphs"):
        br.gqa_training_reading(without_graphs)
    no_host = copy.deepcopy(results)
    for row in br.rows(no_host, batch=1, mode="fwd_bwd", method="triton"):
        row["ms"] = row["graph_ms"]
    assert not br.gqa_training_reading(no_host)[1]["at batch 1 an eager step takes at least 1.5x its GPU time (the " \
                                                   "host's launches)"]
    unsplit = copy.deepcopy(results)
    br.rows(unsplit, batch=1, n_kv_heads=1, mode="fwd_bwd", method="triton_unsplit")[0]["graph_ms"] = 0.5
    assert not br.gqa_training_reading(unsplit)[1]["at batch 1 the split of the query heads makes GQA/MQA's backward " \
                                                  "faster"]


def test_chapter_10s_lines_about_the_gluon_backward_probe():
    probe = load("flash_gluon_backward_probe")
    lines = br.gluon_backward_lines(probe)
    assert len(lines) == len(probe["timing"]) == 4
    for line, row in zip(lines, probe["timing"]):
        for speedup in ("kv_speedup", "q_speedup", "backward_speedup"):
            assert f"(×{row[speedup]:.2f})" in line
            assert row[speedup] > 1.1, (speedup, row)  # what the chapter says: each kernel, and the backward, gains
        q_tile = "gluon_q_{BLOCK_N}x{NUM_STAGES}".format(**row["default_q_tile"])
        assert row["q_speedup"] == row["teaching_q"]["ms"] / row[q_tile]["ms"]
        # the default tile is the fastest measured, or within 3 % of it
        tiles = [row[m]["ms"] for m in row if m.startswith("gluon_q_")]
        assert row[q_tile]["ms"] <= 1.03 * min(tiles), row
    assert all(check["ok"] for check in probe["checks"])


def test_the_d64_rule_of_the_backward_is_what_the_probe_measured():
    """At D=64 each Gluon kernel, with the tile the library gives it (kv_tile_for, q_tile_for), against the teaching
    kernel at every shape the probe timed: the library's rule (gluon_backward.faster_than_teaching, used by
    uses_gluon_backward and uses_gluon_dq) sends each kernel at each shape to the faster one. An altered copy with
    the teaching dK/dV kernel faster at 1k keys not causal breaks the agreement there, and only there."""
    from attention_lab.flash import gluon_backward as gb

    probe = load("flash_gluon_backward_probe_d64")
    assert all(check["ok"] for check in probe["checks"])
    assert {(r["N"], r["causal"]) for r in probe["timing"]} >= {(n, c) for n in (1024, 4096) for c in (False, True)}

    def disagreements(probe):
        wrong = []
        for row in probe["timing"]:
            assert row["D"] == 64
            kv_tile = "gluon_kv_{BLOCK_M}x{NUM_STAGES}".format(**gb.kv_tile_for(64, row["causal"], False))
            q_tile = "gluon_q_{BLOCK_N}x{NUM_STAGES}".format(**gb.q_tile_for(64))
            for kernel, gluon, teaching in (("dkdv", kv_tile if kv_tile in row else "gluon_kv", "teaching_kv"),
                                            ("dq", q_tile, "teaching_q")):
                faster = row[gluon]["ms"] < row[teaching]["ms"]
                if gb.faster_than_teaching(kernel, 64, row["N"], row["causal"]) != faster:
                    wrong.append((kernel, row["N"], row["causal"]))
        return wrong

    assert disagreements(probe) == []
    slower = copy.deepcopy(probe)
    for row in slower["timing"]:
        if (row["N"], row["causal"]) == (1024, False):
            row["teaching_kv"]["ms"] = 0.5 * min(v["ms"] for m, v in row.items() if m.startswith("gluon_kv_"))
    assert disagreements(slower) == [("dkdv", 1024, False)]


def test_the_fused_delta_switch_follows_what_the_probe_measured():
    """Chapter 10 says delta in the dQ kernel's prologue moved the backward by under 5 % either way and was slower
    somewhere, so the switch is off; the numbers it prints come from the file, and altered copies flip the claims."""
    from attention_lab.flash import triton_attention as ta

    probe = load("flash_gluon_backward_probe")
    line, claims = br.fused_delta_reading(probe)
    assert all(claims.values()), claims
    assert ta.FUSED_DELTA_BACKWARD is False  # what the chapter states, because of the claim above
    for row in probe["timing"]:
        assert f"×{row['fused_delta_speedup']:.2f}" in line
        assert row["fused_delta_speedup"] == row["gluon_backward"]["ms"] / row["gluon_fused_delta_backward"]["ms"]
    faster = copy.deepcopy(probe)
    for row in faster["timing"]:
        row["fused_delta_speedup"] = 1.08
    assert not any(br.fused_delta_reading(faster)[1].values())
    with pytest.raises(ValueError, match="no fused-delta timing"):
        br.fused_delta_reading(load("flash_gluon_backward_probe_d64"))
