"""The installed-wheel test's GPU report (benchmarks/installed_wheel_gpu.py): read from pytest's junit file and
the card file, and the committed report covers every chapter, passed, on a GPU, at a commit of this history."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from installed_wheel import CHAPTERS
from reference import load_benchmark

iw = load_benchmark("installed_wheel_gpu")
ROOT = Path(__file__).resolve().parents[1]

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">
<testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="12.5">
<testcase classname="tests.test_book_installed_wheel_1" name="test_chapter_runs_alone_from_the_installed_wheel[01_self_attention]" time="3.21"/>
<testcase classname="tests.test_book_installed_wheel_2" name="test_chapter_runs_alone_from_the_installed_wheel[05_multi_query]" time="4.0">
<failure message="AssertionError: 05_multi_query failed from the wheel: ValueError">traceback here</failure></testcase>
<testcase classname="tests.test_book_installed_wheel_1" name="test_wheel_ships_the_committed_results" time="1.0"/>
<testcase classname="tests.test_book_installed_wheel_2" name="test_chapter_runs_alone_from_the_installed_wheel[12_mla]" time="0.0">
<skipped message="no GPU"/></testcase>
</testsuite></testsuites>"""


def _files(tmp_path: Path, card: str) -> tuple[Path, Path]:
    (tmp_path / "w.xml").write_text(JUNIT)
    (tmp_path / "card.txt").write_text(card)
    return tmp_path / "w.xml", tmp_path / "card.txt"


def test_report_keeps_each_outcome_and_a_failure_message(tmp_path):
    junit, card = _files(tmp_path, "name, driver_version\nNVIDIA T4, 550.1\n2.11.0+cu126 3.6.0\n")
    data = iw.report(junit, card, "88ef30f")
    assert (data["passed"], data["failed"], data["skipped"], data["wall_seconds"]) == (2, 1, 1, 12.5)
    assert (data["device"], data["torch"], data["triton"], data["cuda"]) == ("NVIDIA T4", "2.11.0+cu126", "3.6.0", "12.6")
    by_chapter = {r["chapter"]: r for r in data["tests"]}
    assert by_chapter["05_multi_query"]["status"] == "failed" and "ValueError" in by_chapter["05_multi_query"]["error"]
    assert by_chapter["12_mla"]["status"] == "skipped" and by_chapter["01_self_attention"]["seconds"] == 3.2
    assert by_chapter[None]["test"].endswith("::test_wheel_ships_the_committed_results")
    page = iw.markdown(data)
    assert "| 05_multi_query | failed | 4.0 |" in page and "2 passed, 1 failed, 1 skipped" in page
    assert "failed from the wheel: ValueError" in page


def test_card_file_in_both_layouts_and_refusals(tmp_path):
    junit, card = _files(tmp_path, "NVIDIA H200 2.11.0+cu130 3.6.0\n")
    assert iw.read_card(card) == {"device": "NVIDIA H200", "torch": "2.11.0+cu130", "triton": "3.6.0", "cuda": "13.0"}
    card.write_text("NVIDIA H200 2.13.0+cpu 3.9.0\n")
    with pytest.raises(ValueError, match="not a CUDA build"):
        iw.read_card(card)
    card.write_text("something else entirely\n")
    with pytest.raises(ValueError, match="expected a card line"):
        iw.read_card(card)
    with pytest.raises(ValueError, match="git hash"):
        iw.report(junit, tmp_path / "card.txt", "HEAD")
    (tmp_path / "empty.xml").write_text("<testsuites/>")
    with pytest.raises(ValueError, match="no <testsuite>"):
        iw.read_junit(tmp_path / "empty.xml")


def test_main_writes_the_json_and_the_page(tmp_path):
    junit, card = _files(tmp_path, "NVIDIA H200 2.11.0+cu130 3.6.0\n")
    iw.main([str(junit), str(card), "--commit", "abc1234", "--out", str(tmp_path / "out")])
    data = json.loads((tmp_path / "out" / "installed_wheel_gpu.json").read_text())
    assert data["commit"] == "abc1234" and len(data["tests"]) == 4
    assert (tmp_path / "out" / "installed_wheel_gpu.md").read_text() == iw.markdown(data)


def test_the_committed_report_ran_every_chapter_on_a_gpu_and_all_passed():
    data = json.loads((ROOT / "attention_lab" / "results" / "installed_wheel_gpu.json").read_text())
    assert sorted(r["chapter"] for r in data["tests"] if r["chapter"]) == CHAPTERS
    assert all(r["status"] == "passed" for r in data["tests"]), [r for r in data["tests"] if r["status"] != "passed"]
    assert "+cu" in data["torch"] and data["device"].startswith("NVIDIA")
    assert (ROOT / "attention_lab" / "results" / "installed_wheel_gpu.md").read_text() == iw.markdown(data)
    if (ROOT / ".git").exists():  # the commit tested is one of this history's
        known = subprocess.run(["git", "merge-base", "--is-ancestor", data["commit"], "HEAD"], cwd=ROOT)
        assert known.returncode == 0, f"commit {data['commit']} is not an ancestor of HEAD"
