"""Reading the committed flash benchmark results: ratios against any baseline, tables of measured methods only."""

from attention_lab.flash import benchmark_results as br


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
