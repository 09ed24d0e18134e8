"""Chapter 12's committed results as the chapter reads them (attention_lab.mla_study): the latent-rank study
quality_ch12.json and the decode benchmark; the figures drawn from them; what the executed notebook prints
and what its prose claims, checked against the JSON; the exercise's stub in the student notebook."""

import re
from pathlib import Path

import matplotlib
import nbformat
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from attention_lab import quality  # noqa: E402
from attention_lab.book.results import load  # noqa: E402
from attention_lab.costs.gpu_facts import spec_for_name  # noqa: E402
from attention_lab.exercises.core import ExerciseError  # noqa: E402
from attention_lab.exercises.ch12 import check_absorbed_query  # noqa: E402
from attention_lab.mla_study import (KERNEL_TARGET, LEARNED, cache_numbers_per_token,  # noqa: E402
                                     kernel_fraction_of_copy, latent_rank_findings, latent_rank_summary, latent_ranks,
                                     plot_latent_rank_cost, plot_mla_decode, plot_recall_curves_by_seed)
from reference import load_benchmark  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "12_mla.ipynb"
STUDENT = ROOT / "notebooks" / "student" / "12_mla.ipynb"


@pytest.fixture(scope="module")
def report():
    return load("quality_ch12")


@pytest.fixture(scope="module")
def bench():
    return load("mla_decode")


@pytest.fixture(scope="module")
def sweep():
    return load("mla_kernel_sweep")


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def stdout_of(notebook) -> str:
    return "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# --- the study, summarised ------------------------------------------------------------------------------

def test_latent_ranks_are_the_mla_variants_largest_first(report):
    ranks = latent_ranks(report)
    assert list(ranks.values()) == sorted(ranks.values(), reverse=True)
    assert set(ranks) == {v for v in report["variants"]["corpus"] if v.startswith("MLA")}
    assert all(ranks[v] == int(v.split("=")[1]) for v in ranks)


def test_latent_rank_summary_is_the_committed_summary_and_the_runs(report):
    summary = latent_rank_summary(report)
    assert set(summary) == set(report["objectives"])
    for objective, entry in summary.items():
        metric = report["objectives"][objective]["metric"]
        assert [r["variant"] for r in entry["ranks"]] == list(latent_ranks(report, objective))
        assert [r["variant"] for r in entry["references"]] == ["MHA", "GQA-2", "MQA"]
        for row in entry["ranks"] + entry["references"]:
            committed = report["summary"][objective][row["variant"]][metric]
            assert row["mean"] == pytest.approx(committed["mean"], abs=1e-12)
            assert row["sd"] == pytest.approx(committed["sd"], abs=1e-12)
            runs = {r["seed"]: r["final"][metric] for r in report["runs"]
                    if r["objective"] == objective and r["variant"] == row["variant"]}
            assert row["values"] == [runs[s] for s in report["seeds"]]


def test_plotted_rank_cost_is_the_summary(report):
    summary = latent_rank_summary(report)
    axes = plot_latent_rank_cost(report)
    for ax, objective in zip(axes, ("corpus", "recall")):
        entry = summary[objective]
        container = ax.containers[0]
        line = container.lines[0]
        assert list(line.get_xdata()) == [r["d_c"] for r in entry["ranks"]]
        assert list(line.get_ydata()) == pytest.approx([r["mean"] for r in entry["ranks"]])
        bars = container.lines[2][0].get_segments()  # one vertical segment per rank: mean ± sd
        assert [s[1][1] - s[0][1] for s in bars] == pytest.approx([2 * r["sd"] for r in entry["ranks"]])
        dots = [tuple(p) for c in ax.collections if c.get_offsets().shape[0] == len(report["seeds"])
                for p in c.get_offsets()]
        expected = [(r["d_c"], v) for r in entry["ranks"] for v in r["values"]]
        assert sorted(dots) == pytest.approx(sorted(expected))
        horizontal = {round(l.get_ydata()[0], 12) for l in ax.get_lines() if len(set(l.get_ydata())) == 1}
        assert {round(r["mean"], 12) for r in entry["references"]} <= horizontal
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
        assert "(" in ax.get_ylabel()  # the unit


def test_recall_curves_by_seed_draw_every_seed(report):
    ax = plot_recall_curves_by_seed(report, ["MHA", "MLA d_c=2"])
    lines = [l for l in ax.get_lines() if l.get_label() != "chance"]
    assert len(lines) == 2 * len(report["seeds"])
    run = next(r for r in report["runs"] if r["objective"] == "recall" and r["variant"] == "MLA d_c=2"
               and r["seed"] == report["seeds"][1])
    drawn = next(l for l in lines if l.get_label() == f"MLA d_c=2, seed {report['seeds'][1]}")
    assert list(drawn.get_ydata()) == run["curve"]["val_accuracy"]


def test_findings_are_the_studys_numbers(report):
    lines = latent_rank_findings(report)
    corpus = lines[0]
    conclusions = {c["a"]: c for c in report["conclusions"] if c["objective"] == "corpus"}
    resolved = [v for v in latent_ranks(report) if conclusions[v]["resolved"]]
    hinted = [v for v in latent_ranks(report) if conclusions[v]["hint"]]
    assert resolved and f"beyond twice the spread at {', '.join(resolved)}" in corpus
    assert not hinted or f"a hint (one to two spreads) at {', '.join(hinted)}" in corpus
    recall = lines[1:]
    assert len(recall) == len(latent_ranks(report, "recall"))
    for line, row in zip(recall, latent_rank_summary(report)["recall"]["ranks"]):
        learned = sum(v >= LEARNED for v in row["values"])
        assert line.startswith(f"recall at d_c={row['d_c']}: {learned} of {len(row['values'])} seeds learned")
        for value in row["values"]:
            assert f"{value:.3f}" in line


def test_cache_numbers_are_the_cache_formulas(report):
    numbers = cache_numbers_per_token(report)
    for variant, n in numbers.items():
        config = report["variants"]["corpus"][variant]["config"]
        head_dim = config["d_model"] // config["n_heads"]
        if config["attention"] == "mla":
            assert n == config["settings"]["kv_latent_dim"] + config["settings"]["rope_dim"]
        else:
            assert n == 2 * (config["n_kv_heads"] or config["n_heads"]) * head_dim


# --- what the chapter's prose says about the study, checked against the JSON ------------------------------

def test_prose_claims_about_the_study_hold(report):
    ranks = latent_ranks(report)
    by_size = list(ranks)  # largest rank first
    conclusions = {c["a"]: c for c in report["conclusions"] if c["objective"] == "corpus"}
    # corpus: sharing and the larger latents within the spread; only the smallest ranks stand out
    for variant in ["GQA-2", "MQA"] + by_size[:3]:
        assert not conclusions[variant]["resolved"] and not conclusions[variant]["hint"], variant
    standing_out = [v for v in by_size if conclusions[v]["resolved"] or conclusions[v]["hint"]]
    assert standing_out and set(standing_out) <= set(by_size[-2:])
    assert conclusions[by_size[-1]]["resolved"]
    # recall: MHA, GQA, MQA and the largest latent learn on every seed ...
    for variant in ["MHA", "GQA-2", "MQA", by_size[0]]:
        assert min(quality.metric_values(report, "recall", variant)) >= LEARNED, variant
    # ... at smaller ranks the seeds split, and the count that made it does not fall steadily with the rank
    values = {v: quality.metric_values(report, "recall", v) for v in by_size}
    split = [v for v in by_size if min(values[v]) < LEARNED <= max(values[v])]
    assert split and all(min(values[v]) < 0.5 for v in split)
    learned = [sum(x >= LEARNED for x in values[v]) for v in by_size]
    assert any(later > earlier for earlier, later in zip(learned, learned[1:]))
    # caches: the largest latent caches what GQA-2 does, the smallest less than MQA
    cache = cache_numbers_per_token(report)
    assert cache[by_size[0]] == cache["GQA-2"] and cache[by_size[-1]] < cache["MQA"]
    # budget: the clearly different variants ordered early, the rest swapping until late
    resolved = [c["a"] for c in report["conclusions"] if c["objective"] == "corpus" and c["resolved"]]
    for objective, steps in report["steps"].items():
        assert quality.stable_since(report, objective) > steps / 2
        assert quality.stable_since(report, objective, variants=[report["baseline"]] + resolved) <= steps / 4


def test_prose_claims_about_decode_hold(bench, sweep):
    contexts = sorted({r["context"] for r in bench["rows"]})
    mla = ("naive", "absorbed", "absorbed_triton")
    for context in contexts:
        rows = {r["path"]: r for r in bench["rows"] if r["context"] == context}
        assert min(mla, key=lambda p: rows[p]["graph_ms"]) == "absorbed_triton", context
    sdpa = [r["achieved_GBps"] for r in bench["rows"] if r["path"] == "absorbed"]
    assert sdpa == sorted(sdpa, reverse=True)  # the SDPA-core absorbed path's bandwidth falls with context
    assert bench["speedup_absorbed_over_naive"][str(contexts[-1])]["graph"] > 2  # "several times over"
    longest = max(r["context"] for r in sweep["kernel_rows"])
    best = max((r for r in sweep["kernel_rows"] if r["context"] == longest), key=lambda r: r["of_copy"])
    spec = spec_for_name(sweep["environment"]["card"])
    flops_per_byte = best["tflops"] * 1e12 * best["ms"] * 1e-3 / best["cache_bytes"]
    assert best["of_copy"] < KERNEL_TARGET and flops_per_byte > spec.ridge_point
    assert KERNEL_TARGET * sweep["kernel_copy_tb_s"] * flops_per_byte > 0.5 * spec.fp16_tflops  # "a large share"


# --- the decode figure, drawn from the JSON ------------------------------------------------------------

def test_decode_figure_plots_the_committed_rows(bench, sweep):
    fig = plot_mla_decode(bench, sweep)
    ax_time, ax_speed, ax_kernel = fig.axes
    for path in ("naive", "absorbed", "absorbed_triton", "mha_sdpa"):
        rows = [r for r in bench["rows"] if r["path"] == path]
        line = next(l for l in ax_time.get_lines() if l.get_label().startswith(
            {"naive": "MLA naive", "absorbed": "MLA absorbed, SDPA", "absorbed_triton": "MLA absorbed, Triton",
             "mha_sdpa": "MHA"}[path]))
        assert list(line.get_xdata()) == [r["context"] for r in rows]
        assert list(line.get_ydata()) == pytest.approx([r["graph_ms"] for r in rows])
    speed = {l.get_label(): list(l.get_ydata()) for l in ax_speed.get_lines()}
    contexts = sorted(int(c) for c in bench["speedup_absorbed_over_naive"])
    assert speed["SDPA core, GPU time (CUDA graph)"] == pytest.approx(
        [bench["speedup_absorbed_over_naive"][str(c)]["graph"] for c in contexts])
    tiles = kernel_fraction_of_copy(sweep)
    assert set(tiles) == {r["config"] for r in sweep["kernel_rows"]}
    drawn = [list(c.lines[0].get_ydata()) for c in ax_kernel.containers]
    assert drawn == [pytest.approx(t["of_copy"]) for t in tiles.values()]
    assert all(lo <= m <= hi for t in tiles.values() for lo, m, hi in zip(t["low"], t["of_copy"], t["high"]))
    for ax in fig.axes:
        assert ax.get_title() and "(" in ax.get_xlabel() and ax.get_ylabel()
    assert bench["environment"]["card"] in ax_time.get_title() and sweep["environment"]["card"] in ax_kernel.get_title()


def test_decode_figure_without_a_kernel_sweep_has_two_panels(bench):
    """A decode file without kernel rows and no sweep: two panels; one that carries its own kernel rows: three."""
    without_kernel = {key: value for key, value in bench.items() if key != "kernel_rows"}
    assert len(plot_mla_decode(without_kernel).axes) == 2
    assert len(plot_mla_decode({**without_kernel, "kernel_rows": bench["kernel_rows"],
                                "kernel_copy_tb_s": bench["kernel_copy_tb_s"]}).axes) == 3


def test_the_benchmark_saves_the_librarys_figure(tmp_path, bench):
    module = load_benchmark("mla_decode", "mla_decode_bench")
    module.plot(bench, tmp_path / "mla_decode.png")
    assert (tmp_path / "mla_decode.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the executed notebook --------------------------------------------------------------------------------

def test_notebook_prints_the_committed_study(notebook, report):
    out = stdout_of(notebook)
    assert quality.study_header(report) in out
    assert quality.study_table(report) in out
    for line in quality.study_conclusion_lines(report) + latent_rank_findings(report):
        assert line in out, line


def test_notebook_live_run_used_the_study_code_and_printed_its_table(notebook):
    out = stdout_of(notebook)
    live = [line for line in out.splitlines()
            if line.startswith("Compressing against sharing") and "over 1 seeds" in line]
    assert len(live) == 1 and "[0]" in live[0]
    assert "live run:" in out


def test_every_training_cell_ends_its_progress_bar_at_100_percent(notebook):
    training = [c for c in notebook.cells if c.cell_type == "code"
                and ("run_chapter_study(" in c.source or "tqdm(total=" in c.source)]
    assert len(training) == 3
    for cell in training:
        bars = "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stderr")
        finals = [segment.strip() for line in bars.split("\n") if line.strip()
                  for segment in [line.split("\r")[-1]] if "|" in segment]
        assert finals, cell.source[:80]
        assert all("100%" in f for f in finals), finals


def test_prose_has_no_typed_percentages_or_speedups(notebook):
    prose = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    assert not re.findall(r"\d+(?:\.\d+)?\s?%", prose)
    assert not re.findall(r"\d+(?:\.\d+)?\s?×", prose)
    assert "when the committed results include them" not in prose


def test_the_student_stub_is_reported_as_not_written_without_the_solution():
    student = nbformat.read(STUDENT, as_version=4)
    cell = next(c for c in student.cells if c.cell_type == "code" and "def absorbed_query" in c.source)
    assert "raise NotImplementedError" in cell.source and "einsum" not in cell.source
    namespace = {}
    exec(compile("import torch\n" + cell.source, "student", "exec"), namespace)
    with pytest.raises(ExerciseError, match="not written yet") as failure:
        check_absorbed_query(namespace["absorbed_query"])
    assert "einsum" not in str(failure.value) and "bhtd" not in str(failure.value)
