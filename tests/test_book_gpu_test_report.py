"""The GPU test reports (benchmarks/gpu_test_report.py): read from pytest's junit file and the card file; the
committed installed-wheel report covers every chapter and the committed GPU-test report every GPU test file of this
tree, all passed, on a GPU, at a commit of this history."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from installed_wheel import CHAPTERS
from reference import load_benchmark

gtr = load_benchmark("gpu_test_report")
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
    data = gtr.report("installed_wheel_gpu", junit, card, "88ef30f")
    assert (data["passed"], data["failed"], data["skipped"], data["wall_seconds"]) == (2, 1, 1, 12.5)
    assert (data["device"], data["torch"], data["triton"], data["cuda"]) == ("NVIDIA T4", "2.11.0+cu126", "3.6.0", "12.6")
    by_chapter = {r["chapter"]: r for r in data["tests"]}
    assert by_chapter["05_multi_query"]["status"] == "failed" and "ValueError" in by_chapter["05_multi_query"]["error"]
    assert by_chapter["12_mla"]["status"] == "skipped" and by_chapter["01_self_attention"]["seconds"] == 3.2
    assert by_chapter[None]["test"].endswith("::test_wheel_ships_the_committed_results")
    assert by_chapter[None]["file"] == "tests/test_book_installed_wheel_1.py"
    page = gtr.markdown(data)
    assert "| 05_multi_query | failed | 4.0 |" in page and "2 passed, 1 failed, 1 skipped" in page
    assert "failed from the wheel: ValueError" in page


def test_card_file_in_both_layouts_and_refusals(tmp_path):
    junit, card = _files(tmp_path, "NVIDIA H200 2.11.0+cu130 3.6.0\n")
    assert gtr.read_card(card) == {"device": "NVIDIA H200", "torch": "2.11.0+cu130", "triton": "3.6.0", "cuda": "13.0"}
    card.write_text("NVIDIA H200 2.13.0+cpu 3.9.0\n")
    with pytest.raises(ValueError, match="not a CUDA build"):
        gtr.read_card(card)
    card.write_text("something else entirely\n")
    with pytest.raises(ValueError, match="expected a card line"):
        gtr.read_card(card)
    with pytest.raises(ValueError, match="git hash"):
        gtr.report("installed_wheel_gpu", junit, tmp_path / "card.txt", "HEAD")
    (tmp_path / "empty.xml").write_text("<testsuites/>")
    with pytest.raises(ValueError, match="no <testsuite>"):
        gtr.read_junit(tmp_path / "empty.xml")


def test_main_writes_the_json_and_the_page(tmp_path):
    junit, card = _files(tmp_path, "NVIDIA H200 2.11.0+cu130 3.6.0\n")
    gtr.main(["installed_wheel_gpu", str(junit), str(card), "--commit", "abc1234", "--out", str(tmp_path / "out")])
    data = json.loads((tmp_path / "out" / "installed_wheel_gpu.json").read_text())
    assert data["commit"] == "abc1234" and len(data["tests"]) == 4
    assert (tmp_path / "out" / "installed_wheel_gpu.md").read_text() == gtr.markdown(data)


def test_gpu_tests_page_has_a_row_per_test_file_and_unknown_suites_are_refused(tmp_path):
    junit, card = _files(tmp_path, "NVIDIA H100 80GB HBM3 2.11.0+cu130 3.6.0\n")
    data = gtr.report("gpu_tests", junit, card, "0cf78d7")
    assert data["suite"] == "gpu_tests" and "-m gpu" in data["command"]
    page = gtr.markdown(data)
    assert "| tests/test_book_installed_wheel_1.py | 2 | 0 | 0 | 4.2 |" in page  # 3.2 s + 1.0 s
    assert "| tests/test_book_installed_wheel_2.py | 0 | 1 | 1 | 4.0 |" in page
    assert "05_multi_query" not in page.split("2 passed")[0]  # rows per file, not per chapter
    with pytest.raises(ValueError, match="unknown suite 'wheels'; known: gpu_tests, installed_wheel_gpu"):
        gtr.report("wheels", junit, card, "0cf78d7")


def test_a_test_class_is_not_part_of_the_file_name():
    assert gtr.source_file("tests.test_ch10_hopper") == "tests/test_ch10_hopper.py"
    assert gtr.source_file("tests.test_ch10_hopper.TestOnHopper") == "tests/test_ch10_hopper.py"


def _committed(name: str) -> dict:
    """A committed report, after checking that its page is the one markdown() writes and its commit is ours."""
    data = json.loads((ROOT / "attention_lab" / "results" / f"{name}.json").read_text())
    assert data["suite"] == name and "+cu" in data["torch"] and data["device"].startswith("NVIDIA")
    assert (ROOT / "attention_lab" / "results" / f"{name}.md").read_text() == gtr.markdown(data)
    assert all(r["status"] == "passed" for r in data["tests"]), [r for r in data["tests"] if r["status"] != "passed"]
    if (ROOT / ".git").exists():  # the commit tested is one of this history's
        known = subprocess.run(["git", "merge-base", "--is-ancestor", data["commit"], "HEAD"], cwd=ROOT)
        assert known.returncode == 0, f"commit {data['commit']} is not an ancestor of HEAD"
    return data


def test_the_committed_gpu_test_report_ran_every_gpu_test_file_of_this_tree():
    data = _committed("gpu_tests")
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:nbval", "-p", "no:xdist",
         "-p", "no:cacheprovider", "-o", "addopts=", "tests"], cwd=ROOT, capture_output=True, text=True)
    files = {line.split("::")[0] for line in collected.stdout.splitlines() if "::" in line}
    assert files, collected.stdout[-2000:] + collected.stderr[-2000:]
    reported = {r["file"] for r in data["tests"]}
    assert files == reported, f"GPU test files not in the report: {sorted(files - reported)}; " \
                              f"in the report, gone from the tree: {sorted(reported - files)}"


def test_the_committed_report_ran_every_chapter_on_a_gpu_and_all_passed():
    data = _committed("installed_wheel_gpu")
    assert sorted(r["chapter"] for r in data["tests"] if r["chapter"]) == CHAPTERS
