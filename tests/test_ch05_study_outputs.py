"""Chapter 05's executed notebook says what the committed study (attention_lab/results/quality_ch05.json)
says, its live run and its timing sweep end with full progress bars, and its printed timing claims follow
from its printed timings (issue #16)."""

import ast
import re
from pathlib import Path

import nbformat
import pytest

from attention_lab import quality
from attention_lab.book.results import load
from attention_lab.costs.timing import faster_from

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "05_multi_query.ipynb"


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


@pytest.fixture(scope="module")
def report():
    return load("quality_ch05")


def _cell(notebook, marker: str):
    (cell,) = [c for c in notebook.cells if c.cell_type == "code" and marker in c.source]
    return cell


def _stream(cell, name: str) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == name)


def _last_bar(cell) -> str:
    """The progress bar as it was left: the last carriage-return segment of the cell's stderr."""
    return re.split(r"[\r\n]+", _stream(cell, "stderr").strip())[-1]


def test_the_committed_study_is_printed_as_the_json_says(notebook, report):
    out = _stream(_cell(notebook, "quality.study_table(report)"), "stdout")
    assert quality.study_header(report) in out
    assert quality.study_table(report) in out
    lines = quality.study_conclusion_lines(report)
    assert lines and all(line in out for line in lines)
    assert "over 3 seeds" in out and len(report["seeds"]) >= 3


def test_the_learning_curves_cell_prints_the_stable_budget_and_steps_to_the_threshold(notebook, report):
    out = _stream(_cell(notebook, "quality.stable_since(report, objective)"), "stdout")
    for objective in report["objectives"]:
        assert (f"{objective}: the ranking of the mean learning curves stops changing at step "
                f"{quality.stable_since(report, objective):,} of {report['steps'][objective]:,}") in out
    for variant in quality.variant_names(report, "recall"):
        assert f"{variant:6} {quality.metric_values(report, 'recall', variant, 'steps_to_90')}" in out


def test_the_prose_reading_of_the_study_holds_for_the_json(report):
    """The chapter says: no variant differs from MHA beyond the spread in final loss or recall; MQA learns the
    lookup no slower than MHA; the steps-to-threshold differences are at most hints."""
    finals = [c for c in report["conclusions"] if c["metric"] in ("val_loss", "accuracy")]
    assert finals and not any(c["resolved"] or c["hint"] for c in finals)
    mqa = next(c for c in report["conclusions"] if (c["metric"], c["a"]) == ("steps_to_90", "MQA"))
    assert mqa["difference"]["mean"] <= 0 or not (mqa["resolved"] or mqa["hint"])
    interval = report["objectives"]["recall"]["eval_every"]
    for variant in quality.variant_names(report, "recall"):  # read off a curve evaluated every `interval` steps
        assert all(s % interval == 0 for s in quality.metric_values(report, "recall", variant, "steps_to_90"))


def test_the_live_run_ends_its_bar_at_100_percent_and_prints_its_table(notebook):
    cell = _cell(notebook, "quality.run_chapter_study(")
    steps = ast.literal_eval(re.search(r"live_steps = (\{[^}]*\})", notebook_source(notebook)).group(1))
    total = 2 * sum(steps.values())  # MHA and MQA, one seed
    assert "100%" in _last_bar(cell) and f"{total}/{total}" in _last_bar(cell)
    out = _stream(cell, "stdout")
    assert "over 1 seeds [0]" in out and "run on" in out
    for objective in steps:
        assert f"{objective} (" in out


def notebook_source(notebook) -> str:
    return "\n".join(c.source for c in notebook.cells if c.cell_type == "code")


def test_the_live_comparison_is_computed_from_the_json_and_the_live_table(notebook, report):
    table = _stream(_cell(notebook, "quality.run_chapter_study("), "stdout")
    out = _stream(_cell(notebook, "def curve_at("), "stdout")
    steps = ast.literal_eval(re.search(r"live_steps = (\{[^}]*\})", notebook_source(notebook)).group(1))
    for objective, step in steps.items():
        metric = report["objectives"][objective]["metric"]
        final = next(c for c in report["conclusions"] if (c["objective"], c["metric"], c["a"]) == (objective, metric, "MQA"))
        assert f"the study at its full budget: {final['sentence']}" in out
        per_seed = {v: [r["curve"]["val_accuracy" if objective == "recall" else "val_loss"][r["curve"]["steps"].index(step)]
                        for r in sorted(report["runs"], key=lambda r: r["seed"])
                        if (r["objective"], r["variant"]) == (objective, v)] for v in ("MQA", "MHA")}
        gaps = ", ".join(f"{a - b:+.3f}" for a, b in zip(per_seed["MQA"], per_seed["MHA"]))
        early = quality.compare("MQA", per_seed["MQA"], "MHA", per_seed["MHA"], unit="nats" if metric == "val_loss" else "",
                                higher_is_better=metric == "accuracy", what=f"{quality.METRIC_NAMES[metric]} at step {step}")
        assert f"the study's seeds at step {step} (learning rate not yet decayed): {gaps}; {early.sentence}" in out
        # the live gap printed is the difference of the live table's two numbers (each printed to 3 decimals)
        section = table[table.index(f"{objective} ("):]
        mha, mqa = (float(re.search(rf"\n  {v} .*?\)  (-?\d+\.\d+) ±", section).group(1)) for v in ("MHA", "MQA"))
        gap = float(re.search(rf"{objective}, one live seed after {step} steps: MQA − MHA = ([+-]\d+\.\d+)", out).group(1))
        assert gap == pytest.approx(mqa - mha, abs=1.5e-3)
        if not final["resolved"]:
            assert "one short seed cannot decide" in out.split(f"{objective}, one live seed")[1].split("\n  -> ")[1]


def _timing_table(notebook):
    out = _stream(_cell(notebook, "seconds = least_times("), "stdout")
    header, *rows = [line for line in out.splitlines() if line.strip()]
    names = ["MHA", "MHA again", "GQA-2", "MQA"]
    assert header.split()[1:5] == ["MHA", "MHA", "again", "GQA-2"]
    table = {name: [] for name in names}
    contexts = []
    for row in rows:
        numbers = re.findall(r"(\d+\.\d+) ms", row)
        contexts.append(int(row.split()[0]))
        for name, value in zip(names, numbers):
            table[name].append(float(value))
    return contexts, table


def test_the_timing_sweep_ends_its_bar_at_100_percent(notebook):
    bar = _last_bar(_cell(notebook, "seconds = least_times("))
    assert bar.startswith("decode steps") and "100%" in bar


def test_the_printed_timing_claims_follow_from_the_printed_timings(notebook):
    contexts, ms = _timing_table(notebook)
    assert contexts == sorted(contexts) and contexts[0] == 1 and len(contexts) >= 5
    out = _stream(_cell(notebook, "noise = max("), "stdout")
    noise = max(abs(a / b - 1) for a, b in zip(ms["MHA"], ms["MHA again"]))
    printed_noise = float(re.search(r"differs by up to (\d+)%", out).group(1)) / 100
    assert printed_noise == pytest.approx(noise, abs=0.01)
    one_token = ms["MQA"][0] / ms["MHA"][0]  # MQA's advantage from its smaller weights alone
    since = faster_from(contexts, ms["MHA"], ms["MQA"], below=one_token * (1 - noise))
    claim = re.search(r"falls below its one-token value \((\d\.\d+)\) by more than the noise \(\d+%\) "
                      r"(from (\d+) cached tokens on|at no context)", out)
    assert claim, out
    assert float(claim.group(1)) == pytest.approx(one_token, abs=0.006)
    assert (None if claim.group(3) is None else int(claim.group(3))) == since
    fixed = float(re.search(r"fixed cost, one cached token: (\d+\.\d+) ms", out).group(1))
    assert fixed == ms["MHA"][0]
    # at the longest context the cache dominates: MHA's step is several times its fixed cost, and MQA is faster
    assert ms["MHA"][-1] > 4 * fixed and ms["MQA"][-1] < ms["MHA"][-1]
