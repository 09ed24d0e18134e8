"""Reading the committed flash benchmark results: ratios against any baseline, tables of measured methods only."""

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
    """What chapter 10 says about the committed FlexAttention run: causal, ahead at every shape; not, within ~10%."""
    results = load("flash_flex")
    assert results is not None, "attention_lab/results/flash_flex.json must ship with the package"
    ratios = {}
    for row in br.rows(results, method="triton"):
        flex = br.rows(results, method="flex", head_dim=row["head_dim"], n=row["n"], causal=row["causal"],
                       mode=row["mode"])
        ratios[(row["head_dim"], row["n"], row["causal"], row["mode"])] = row["tflops"] / flex[0]["tflops"]
    assert len(ratios) == 40  # D ∈ {64, 128} × 5 N × causal or not × fwd, fwd+bwd
    assert min(r for key, r in ratios.items() if key[2]) > 1.0
    assert all(0.9 < r < 1.15 for key, r in ratios.items() if not key[2])
