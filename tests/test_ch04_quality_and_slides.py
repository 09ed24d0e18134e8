"""Chapter 04's printed claims against their sources: the committed multi-seed study (quality_ch04.json), the
small live run's verdict against its own printed numbers, and the slides' w=3 row (attention_lab.seed_numbers)."""

import re

import nbformat
import pytest

from attention_lab import quality
from attention_lab.book.build import NOTEBOOKS
from attention_lab.book.results import load
from attention_lab.seed_numbers import (SELF_ATTENTION, WINDOW, WINDOW_ROWS, WORDS, renormalised, softmax,
                                        window_keys, window_row)

NOTEBOOK = NOTEBOOKS / "04_sliding_window.ipynb"


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


@pytest.fixture(scope="module")
def printed(notebook) -> str:
    """Everything the executed chapter printed to stdout, in order."""
    return "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


@pytest.fixture(scope="module")
def report() -> dict:
    return load("quality_ch04")


# ---------------------------------------------------------------------------------------------- the slides' row


def test_window_keys_and_row_follow_the_band():
    assert window_keys("THE", 3) == ("THE",)
    assert window_keys("CAT", 3) == ("THE", "CAT")
    assert window_keys("CHAIR", 3) == ("ON", "A", "CHAIR")
    assert window_keys("CHAIR", 1) == ("CHAIR",)
    assert window_keys("CHAIR", 10) == WORDS
    assert window_row("CAT", WINDOW) == (SELF_ATTENTION[("CAT", "THE")], SELF_ATTENTION[("CAT", "CAT")])
    assert window_row("THE", WINDOW) == (0.268,)
    assert window_row("CAT", 1) == (0.278,)  # CAT alone
    for bad in ("IS", "CHAIR"):
        with pytest.raises(ValueError, match="not quoted"):
            window_row(bad, WINDOW)
    for window in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="window must be a positive int"):
            window_keys("CAT", window)
    with pytest.raises(ValueError, match="word must be one of"):
        window_keys("DOG", 3)


def test_the_slides_window_row_is_a_second_softmax_and_the_renormalised_row_differs():
    twice, right = softmax(window_row("CAT", WINDOW)), renormalised(window_row("CAT", WINDOW))
    assert [round(x, 4) for x in twice] == [0.4616, 0.5384]
    assert [round(x, 3) for x in right] == [0.308, 0.692]
    assert tuple(int(x * 1000) / 1000 for x in twice) == WINDOW_ROWS["CAT"]  # the slides cut to three digits


def test_the_chapter_prints_the_slides_fault_and_the_corrected_row(printed):
    assert "the lecture slides (seed), as quoted in issue #17; window w=3" in printed
    assert "the slides' window row         0.461 / 0.538" in printed
    assert "softmax(weights), a second one 0.4616 / 0.5384" in printed
    assert "the slides' row exactly: True" in printed
    assert "weights / their sum (correct)  0.308 / 0.692" in printed
    assert "corrected row   CAT: THE→0.308 / CAT→0.692" in printed
    # the book's own table: dividing by the row sum is the masked softmax, a second softmax is not
    divided = float(re.search(r"divided by the row sum vs the masked softmax: max \|difference\| = (\S+)", printed)[1])
    again = float(re.search(r"a second softmax +vs the masked softmax: max \|difference\| = (\S+)", printed)[1])
    assert divided < 1e-6 < 0.01 < again


# ---------------------------------------------------------------------------------------------- the study


def test_the_chapter_prints_the_committed_study(printed, report):
    assert quality.study_header(report) in printed
    assert "over 3 seeds" in printed and len(report["seeds"]) == 3
    assert quality.study_table(report) in printed
    lines = quality.study_conclusion_lines(report)
    assert len(lines) == 6  # every window against full attention, on both objectives
    for line in lines:
        assert f" * {line}" in printed
    for variant, entry in report["window_recall"].items():
        assert entry["sentence"] in printed, variant
    for objective in report["objectives"]:
        since = quality.stable_since(report, objective)
        steps, orderings = quality.ordering_by_step(report, objective)
        assert (f"{objective}: best first at step {steps[0]:,}: {' > '.join(orderings[0])}; at the end (step "
                f"{steps[-1]:,}): {' > '.join(orderings[-1])} — unchanged from step {since:,}") in printed
        assert since < report["steps"][objective]  # the budget lies past the point where the ordering settles


def test_the_live_run_is_compared_with_the_committed_numbers_and_its_verdict_follows_them(notebook, printed, report):
    for objective in report["objectives"]:
        full, window = (quality.metric_values(report, objective, v) for v in ("full", "window 4"))
        gap = quality.mean_sd([w - f for w, f in zip(window, full)])
        assert (f"study, {report['steps'][objective]:>5,} steps, {gap.n} seeds: full {quality.mean_sd(full).format()}, "
                f"window 4 {quality.mean_sd(window).format()}; window 4 − full = {gap.format()}") in printed
    live = dict(re.findall(r"(corpus|recall) — .*?\n  live, .*?; window 4 − full = ([+-][\d.]+)\n", printed))
    assert set(live) == {"corpus", "recall"}
    says = {o: "worse" if (float(g) > 0) == (o == "corpus") else "better" for o, g in live.items()}
    agrees = says == {"corpus": "worse", "recall": "worse"}  # what the study concludes (printed above)
    assert all("window 4 is worse" in line for line in quality.study_conclusion_lines(report)
               if line.split(":")[1].strip().startswith("window 4"))
    assert (f"the single short run {'agrees with' if agrees else 'disagrees with'} the study on the ordering: "
            f"window 4 is {says['corpus']} than full on corpus and {says['recall']} than full on recall") in printed
    seconds = float(re.search(r"it took (\d+) s on (cpu|cuda)", printed)[1])
    assert 0 < seconds < 600


def test_the_live_runs_progress_bar_ends_at_100_percent(notebook):
    cell = next(c for c in notebook.cells if c.cell_type == "code" and "run_chapter_study(" in c.source)
    bar = "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stderr")
    drawn = [state for state in re.split(r"[\r\n]", bar) if "|" in state]
    assert drawn, "the live run shows no progress bar"
    assert "100%" in drawn[-1] and re.search(r"(\d+)/\1 ", drawn[-1]), drawn[-1]


# ---------------------------------------------------------------------------------------------- the prose


def _section(notebook, heading: str) -> str:
    """The markdown of the chapter from ``## heading`` to the next level-2 heading."""
    text = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    start = text.index(f"## {heading}")
    following = text.find("\n## ", start + 3)
    return text[start:following if following != -1 else None]


@pytest.mark.parametrize("heading", ["The slides' window table", "What a window costs in quality"])
def test_the_new_sections_type_no_number_into_prose(notebook, heading):
    prose = _section(notebook, heading)
    prose = re.sub(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`", " ", prose, flags=re.S)  # formulas and code are not prose
    prose = prose.replace("issue #17", "")
    assert not re.findall(r"\d", prose), re.findall(r".{30}\d.{10}", prose)
