"""README.md's GPU results section is built from the committed JSON files (benchmarks/readme_results.py)."""

from pathlib import Path

import pytest

from reference import load_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "readme_results.py"


rr = load_benchmark("readme_results")


def test_readme_results_section_is_current():
    readme = rr.README.read_text(encoding="utf-8")
    assert rr.section_of(readme) == rr.results_section(), (
        "README.md's GPU results differ from attention_lab/results/*.json: run `python benchmarks/readme_results.py`")


def test_range_and_speedup_formatting():
    assert rr.fmt_range(1.411, 1.4228, unit="×") == "1.41–1.42×"
    assert rr.fmt_range(1.001, 1.004, unit="×") == "1.00×"  # both ends print the same: one value
    assert rr.fmt_range(97.2, 101.8, "{:.0f}", " %") == "97–102 %"
    assert [rr.fmt_times(x) for x in (1.757, 5.74, 20.19, 23.98)] == ["1.8×", "5.7×", "20×", "24×"]
    assert rr.tokens(4096) == "4k" and rr.tokens(512) == "512"
    assert rr.proportion(136314880, 136315904) == "equal to" and rr.proportion(516, 1028) == "half of"


def test_missing_result_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="flash_flex.json"):
        rr.load_result("flash_flex.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="flash_benchmark.json"):
        rr.results_section(tmp_path)


def test_environment_from_each_layout():
    versions = {"torch": "2.11", "triton": "3.6", "cuda": "13.0"}
    layouts = [{"environment": {"card": "NVIDIA H200", **versions}},
               {"device": {"name": "NVIDIA H200"}, "versions": versions},
               {"device": "NVIDIA H200", **versions}]
    assert {rr.environment(layout) for layout in layouts} == {rr.Environment("NVIDIA H200", "2.11", "3.6", "13.0")}
    with pytest.raises(KeyError, match="x.json"):
        rr.environment({"torch": "2.11"}, "x.json")
    assert rr.short_card("NVIDIA H100 80GB HBM3") == "H100" and rr.article("H100") == "an"


def test_one_card_or_several_in_the_opening():
    h100 = rr.Environment("NVIDIA H100 80GB HBM3", "2.11", "3.6", "13.0")
    h200 = rr.Environment("NVIDIA H200", "2.11", "3.6", "13.0")
    assert rr.opening([h100, h100]).startswith("All measured on one **NVIDIA H100 80GB HBM3**")
    both = rr.opening([h100, h200, h100])
    assert "**NVIDIA H100 80GB HBM3** and **NVIDIA H200**" in both and both.count("torch 2.11") == 1


def _gqa(ms_sdpa_mqa: float) -> dict:
    rows, shapes = [], []
    for heads in (8, 1):
        sdpa = ms_sdpa_mqa if heads == 1 else 2.0
        rows += [{"impl": "triton_grouped", "context": 4096, "n_kv_heads": heads, "ms": 1.0},
                 {"impl": "sdpa_enable_gqa", "context": 4096, "n_kv_heads": heads, "ms": sdpa}]
        shapes.append({"context": 4096, "n_kv_heads": heads, "kv_bytes": 67108864 * heads,
                       "kernel_plan": {"partitions": 4}})
    return {"rows": rows, "shapes": shapes}


def test_gqa_shortfall_is_stated_only_when_there_is_one():
    env = rr.Environment("NVIDIA H100 80GB HBM3", "2.11", "3.6", "13.0")
    assert rr.gqa_ratios(_gqa(0.5)) == {4096: {8: 2.0, 1: 0.5}}
    short = " ".join(rr.gqa_paragraph(_gqa(0.5), env, True).split())
    assert "2.00 / **0.50×** at 4k context for 8 / 1 kv heads" in short
    assert "aim at 4k (MQA: the split-K merge's fixed cost dominates a 67 MB cache)" in short
    assert "Short of" not in rr.gqa_paragraph(_gqa(1.5), env, True)


def test_notebooks_paragraph_counts_and_names_what_did_not_pass():
    env = rr.Environment("NVIDIA H100 80GB HBM3", "2.11", "3.6", "13.0")
    report = {"runs": 1, "notebooks": [{"notebook": "00_a", "status": "passed"},
                                       {"notebook": "01_b", "status": "failed"}]}
    text = " ".join(rr.notebooks_paragraph(report, env, True, chapters=["00_a", "01_b", "02_c"]).split())
    assert "1 of 3 chapters executed top to bottom and passed on one NVIDIA H100 80GB HBM3" in text
    assert "failed: 01_b; not in the report: 02_c" in text and "more than one run" not in text
    assert "more than one run" in rr.notebooks_paragraph({**report, "runs": 2}, env, True, chapters=["00_a", "01_b"])


def test_wheel_paragraph_counts_chapters_not_packaging_checks_and_names_what_did_not_pass():
    env = rr.Environment("NVIDIA H200", "2.11", "3.6", "13.0")
    report = {"commit": "88ef30f0000", "tests": [
        {"test": "t::ships", "chapter": None, "status": "passed"},
        {"test": "t::halves", "chapter": None, "status": "failed"},
        {"test": "t::c[00_a]", "chapter": "00_a", "status": "passed"},
        {"test": "t::c[01_b]", "chapter": "01_b", "status": "failed"}]}
    text = " ".join(rr.wheel_paragraph(report, env, True, chapters=["00_a", "01_b", "02_c"]).split())
    assert "1 of 3 chapters opened alone" in text and "on one NVIDIA H200 (commit 88ef30f)" in text
    assert "(failed: 01_b; not run: 02_c; 1 of 2 packaging checks passed)" in text


def test_gpu_tests_paragraph_counts_files_and_names_what_failed():
    env = rr.Environment("NVIDIA H100 80GB HBM3", "2.11", "3.6", "13.0")
    report = {"commit": "0cf78d70000", "command": "pytest -m gpu", "passed": 2, "failed": 1, "skipped": 1, "tests": [
        {"test": "tests.test_a::x", "file": "tests/test_a.py", "status": "passed"},
        {"test": "tests.test_a::y", "file": "tests/test_a.py", "status": "failed"},
        {"test": "tests.test_b::z", "file": "tests/test_b.py", "status": "passed"},
        {"test": "tests.test_b::w", "file": "tests/test_b.py", "status": "skipped"}]}
    text = " ".join(rr.gpu_tests_paragraph(report, env, True).split())
    assert "`pytest -m gpu`" in text and "2 of 4 passed on one NVIDIA H100 80GB HBM3 (commit 0cf78d7), in 2 test files" in text
    assert "(1 failed: tests.test_a::y; 1 skipped)" in text
    clean = {**report, "passed": 4, "failed": 0, "skipped": 0, "tests": [{**r, "status": "passed"} for r in report["tests"]]}
    assert "4 of 4 passed" in rr.gpu_tests_paragraph(clean, env, True) and "failed" not in rr.gpu_tests_paragraph(clean, env, True)


def _hopper(slow_short_d64: float) -> dict:
    """A step run with gluon_ws at 100 TFLOP/s everywhere but D=64 with 1k keys (``slow_short_d64``), each
    baseline at 50."""
    rows = []
    for head_dim, n in ((64, 1024), (64, 4096), (128, 1024)):
        ws = slow_short_d64 if (head_dim, n) == (64, 1024) else 100.0
        rows += [{"head_dim": head_dim, "n": n, "causal": False, "method": "gluon_ws", "tflops": ws}]
        rows += [{"head_dim": head_dim, "n": n, "causal": False, "method": m, "tflops": 50.0}
                 for m in ("sdpa_cudnn", "flex", "triton")]
    return {"rows": rows}


def test_hopper_paragraph_counts_only_the_shapes_the_library_takes_the_fast_path():
    env = rr.Environment("NVIDIA H200", "2.11", "3.6", "13.0")
    text = " ".join(rr.hopper_paragraph(_hopper(10.0), env, True).split())
    assert "not at D = 64 with 1k keys, where the teaching kernel measured faster" in text
    assert "100 TFLOP/s, **2.00× SDPA's cuDNN backend**, 2.00× FlexAttention and 2.00× the teaching kernel" in text
    assert text == " ".join(rr.hopper_paragraph(_hopper(1000.0), env, True).split())  # that shape is not counted
    without = {"rows": [r for r in _hopper(10.0)["rows"] if (r["head_dim"], r["n"]) != (64, 1024)]}
    assert "not at" not in rr.hopper_paragraph(without, env, True)
