"""Chapter 06's committed uptraining study (issue #16): what the chapter prints is the JSON's, and what its
prose says about the study holds in the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attention_lab.book import results
from attention_lab.quality import compare, study_header, uptraining_table, uptraining_values

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "06_uptraining_gqa.ipynb"


@pytest.fixture(scope="module")
def study() -> dict:
    report = results.load("quality_ch06")
    assert report is not None and not report["smoke"] and report["seeds"] == [0, 1, 2]
    return report


def _printed() -> str:
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    text = [o.get("text", "") for c in notebook["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    return "".join("".join(t) if isinstance(t, list) else t for t in text)


def test_the_chapter_prints_the_committed_study(study):
    printed = _printed()
    assert study_header(study) in printed
    assert uptraining_table(study) in printed
    shown = [c["sentence"] for c in study["conclusions"] if c["topic"] == "uptrained vs scratch"]
    assert shown and all(sentence in printed for sentence in shown)


def test_the_checkpoint_is_trained_until_its_curve_flattens(study):
    """'a well-trained checkpoint': over the last fifth of its steps each seed's loss fell by under 1 %."""
    for curve in study["base_curves"]:
        last, earlier = curve["val_loss"][-1], curve["val_loss"][-len(curve["val_loss"]) // 5]
        assert 0 <= earlier - last < 0.01 * last


def test_what_the_prose_says_holds_in_the_numbers(study):
    """The chapter's reading: conversion costs a lot at α = 0; uptraining wins most of it back; random init
    recovers slowest; at this scale the from-scratch MQA matches MHA and the uptrained one never beats it."""
    heads, alphas = study["config"]["n_heads"], study["alphas"]
    for n_groups in study["groups"]:
        mean = {a: uptraining_values(study, "uptrained", n_groups, "mean", a) for a in alphas}
        scratch = {a: uptraining_values(study, "scratch", n_groups, None, a) for a in alphas}
        mha = {a: uptraining_values(study, "mha", heads, None, a) for a in alphas}
        average = lambda values: sum(values) / len(values)  # noqa: E731
        assert average(mean[0.0]) > 2 * average(mha[0.0])  # far worse right after conversion
        assert average(mean[max(alphas)]) < 1.1 * average(scratch[max(alphas)])  # most of it won back
        for a in alphas:
            assert average(mean[a]) > average(scratch[a])  # never better than from scratch at equal steps
            if a > 0:
                random = uptraining_values(study, "random", n_groups, "random", a) or \
                    uptraining_values(study, "uptrained", n_groups, "random", a)
                assert average(random) >= max(average(mean[a]), average(uptraining_values(
                    study, "uptrained", n_groups, "first", a)))
        assert not compare("scratch", scratch[0.0], "MHA", mha[0.0]).resolved  # MQA from scratch matches MHA
