"""The grading command: it executes students' notebooks and runs the package's own checkers on their functions.

Chapter 08 (the fastest notebook: a few seconds) is built from its source, solved and as the student gets it,
then edited the ways students edit: a plausible wrong answer, the check cell deleted, the check cell muted.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from attention_lab.book.build import SOURCES, chapter_notebook  # noqa: E402
from attention_lab.exercises import grade  # noqa: E402
from attention_lab.exercises.__main__ import main  # noqa: E402
from attention_lab.exercises.registry import EXERCISES, Exercise, exercises_for  # noqa: E402
from attention_lab.exercises.student import student_version  # noqa: E402

CHAPTER = "08"
NAME = "08_online_softmax.ipynb"
CHECK_CALL = "check_online_step(step)"
# The classic mistake: a new maximum arrives, and the old sums are not rescaled by exp(m_old - m_new).
WRONG_STEP = '''def step(m, numerator, denominator, score, value):
    m_new = max(m, score)
    weight = math.exp(score - m_new)
    return m_new, numerator + weight * value, denominator + weight'''


def exercise_cell(notebook) -> int:
    return next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and c.source.startswith("def step("))


def check_cell(notebook) -> int:
    return next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and CHECK_CALL in c.source)


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory) -> dict[str, Path]:
    """Five copies of chapter 08, each in its own folder (as students hand them in), by kind."""
    root = tmp_path_factory.mktemp("submissions")
    solved = chapter_notebook(SOURCES / "08_online_softmax.py")
    stubbed = student_version(solved)
    wrong = nbformat.from_dict(solved)
    wrong.cells[exercise_cell(wrong)].source = WRONG_STEP
    wrong_deleted = nbformat.from_dict(wrong)
    del wrong_deleted.cells[check_cell(wrong_deleted)]
    stub_muted = nbformat.from_dict(stubbed)  # the check cell edited so that it can never fail
    stub_muted.cells[check_cell(stub_muted)].source = ("from attention_lab.exercises.ch08 import check_online_step\n"
                                                       "try:\n    check_online_step(step)\nexcept Exception:\n    pass")
    paths = {}
    for kind, notebook in [("solved", solved), ("stubbed", stubbed), ("wrong", wrong),
                           ("check_deleted", wrong_deleted), ("check_muted", stub_muted)]:
        (root / kind).mkdir()
        paths[kind] = root / kind / NAME
        nbformat.write(notebook, paths[kind])
    return paths


@pytest.fixture(scope="module")
def graded(notebooks, tmp_path_factory):
    """One run of the real command line over all five notebooks."""
    out = tmp_path_factory.mktemp("grades") / "nested" / "grades.json"
    order = ["solved", "stubbed", "wrong", "check_deleted", "check_muted"]
    done = subprocess.run([sys.executable, "-m", "attention_lab.exercises", "grade",
                           *[str(notebooks[k]) for k in order], "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    records = json.loads(out.read_text(encoding="utf-8"))
    return done, dict(zip(order, records)), records


def test_one_record_per_exercise_with_the_promised_fields(graded, notebooks):
    done, by_kind, records = graded
    assert len(records) == 5
    for kind, record in by_kind.items():
        assert set(record) == {"notebook", "chapter", "exercise", "passed", "points", "max_points", "message"}
        assert record["notebook"] == str(notebooks[kind])
        assert record["chapter"] == CHAPTER and record["exercise"] == "online softmax step"
        assert record["max_points"] == 1


def test_the_solved_notebook_passes(graded):
    record = graded[1]["solved"]
    assert record["passed"] is True and record["points"] == 1 and record["message"] == "all checks passed"


def test_the_stub_fails_as_not_written(graded):
    record = graded[1]["stubbed"]
    assert record["passed"] is False and record["points"] == 0
    assert "not written yet" in record["message"]


def test_a_wrong_answer_fails_with_the_checkers_hint(graded):
    record = graded[1]["wrong"]
    assert record["passed"] is False and record["points"] == 0
    assert "exp(m_old − m_new)" in record["message"]  # the checker's own hint for this mistake


def test_deleting_or_muting_the_check_cell_changes_nothing(graded):
    done, by_kind, _ = graded
    assert by_kind["check_deleted"]["passed"] is False
    assert by_kind["check_deleted"]["message"] == by_kind["wrong"]["message"]
    assert by_kind["check_muted"]["passed"] is False
    assert by_kind["check_muted"]["message"] == by_kind["stubbed"]["message"]
    # nbval would have passed both: with the check gone or muted, no cell of them raises.
    ran = re.findall(r"grading (\S+) .*\n  ran in \d+ s; (\d+) of \d+ code cells raised an error", done.stderr)
    errors = {Path(path).parent.name: int(n) for path, n in ran}
    assert errors["check_deleted"] == 0 and errors["check_muted"] == 0 and errors["stubbed"] == 1


def test_the_table_is_plain_and_the_exit_status_says_something_failed(graded):
    done, _, _ = graded
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["notebook", "chapter", "exercise", "result", "points", "message"]
    assert sum(" PASS " in line for line in lines) == 1 and sum(" FAIL " in line for line in lines) == 4
    assert lines[-1] == "total: 1/5 points; 1 of 5 exercises passed"
    assert "\x1b" not in done.stdout + done.stderr


def test_all_passing_exits_zero(notebooks, capsys):
    assert main(["grade", str(notebooks["solved"])]) == 0
    assert "total: 1/1 points" in capsys.readouterr().out


# --- without a kernel ------------------------------------------------------------------------------------------

def online_step(m, numerator, denominator, score, value):
    import math

    m_new = max(m, score)
    rescale, weight = math.exp(m - m_new), math.exp(score - m_new)
    return m_new, numerator * rescale + weight * value, denominator * rescale + weight


def test_run_exercise_reports_instead_of_raising(capsys):
    exercise = exercises_for("08")[0]
    assert grade.run_exercise(exercise, {"step": online_step}) == {
        "exercise": "online softmax step", "passed": True, "message": "all checks passed"}
    missing = grade.run_exercise(exercise, {})
    assert not missing["passed"] and "no function `step` in the notebook" in missing["message"]
    assert "is a int, not a function" in grade.run_exercise(exercise, {"step": 3})["message"]
    crashing = grade.run_exercise(exercise, {"step": lambda *args: [][1]})
    assert not crashing["passed"] and crashing["message"].startswith("the check stopped with IndexError")
    results = grade.check_in_kernel("08", {"step": online_step})
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == grade.MARKER + json.dumps(results)
    assert grade.plain("\x1b[0;31mValueError\x1b[0m: x") == "ValueError: x"


def test_the_chapter_comes_from_the_name_or_the_colab_link(notebooks):
    assert grade.chapter_of(Path("alice/04_sliding_window.ipynb")) == "04"
    assert grade.chapter_of(Path("bob_11_paged (1).ipynb")) == "11"
    linked = nbformat.read(notebooks["solved"], as_version=4)
    assert grade.chapter_of(Path("homework.ipynb"), linked) == "08"
    with pytest.raises(ValueError, match="cannot tell which chapter"):
        grade.chapter_of(Path("homework.ipynb"), nbformat.v4.new_notebook())


def test_bad_input_is_exit_status_2(tmp_path, capsys):
    assert main(["grade", str(tmp_path / "missing.ipynb")]) == 2
    assert "does not exist" in capsys.readouterr().err
    unnamed = tmp_path / "homework.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), unnamed)
    assert main(["grade", str(unnamed)]) == 2
    assert "pass --chapter 04" in capsys.readouterr().err
    assert main(["grade", str(unnamed), "--chapter", "99"]) == 2
    assert "chapter must be one of 00, 01" in capsys.readouterr().err
    broken = tmp_path / "08_broken.ipynb"
    broken.write_text("{not json", encoding="utf-8")
    assert main(["grade", str(broken)]) == 2
    assert "is not a readable notebook" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["grade"])  # argparse: at least one notebook


def test_build_still_writes_student_notebooks(tmp_path, monkeypatch, capsys):
    import attention_lab.book.build as book_build

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION")]
    nbformat.write(notebook, tmp_path / "99_demo.ipynb")
    monkeypatch.setattr(book_build, "NOTEBOOKS", tmp_path)
    assert main(["build"]) == 0
    assert "/student/99_demo.ipynb" in capsys.readouterr().out
    assert "raise NotImplementedError" in nbformat.read(tmp_path / "student" / "99_demo.ipynb", 4).cells[0].source


# --- the registry stays in step with the chapters -------------------------------------------------------------

def check_calls(source: Path) -> list[tuple[str, str]]:
    """(checker, argument) for every ``check_xxx(name)`` call of a chapter source, in order."""
    calls = []
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("check_")
                and len(node.args) == 1 and isinstance(node.args[0], ast.Name)):
            calls.append((node.lineno, node.func.id, node.args[0].id))
    return [(checker, argument) for _, checker, argument in sorted(calls)]


def test_registry_matches_every_check_cell_of_the_chapters():
    sources = {path.name[:2]: path for path in sorted(SOURCES.glob("[0-9][0-9]_*.py"))}
    assert sorted(sources) == sorted(EXERCISES)
    for chapter, source in sources.items():
        registered = [(e.checker.__name__, e.function) for e in EXERCISES[chapter]]
        assert registered == check_calls(source), f"chapter {chapter}: registry and check cells differ"
        for exercise in EXERCISES[chapter]:
            assert exercise.chapter == chapter
            assert exercise.checker.__module__ == f"attention_lab.exercises.ch{chapter}"
            defined = re.search(rf"^(def {exercise.function}\(|{exercise.function} = )", source.read_text(), re.M)
            assert defined, f"chapter {chapter} defines no {exercise.function}"


def test_exercise_refuses_bad_entries():
    checker = EXERCISES["08"][0].checker
    with pytest.raises(ValueError, match="chapter must be two digits"):
        Exercise("8", "x", "step", checker)
    with pytest.raises(ValueError, match="function must be a Python name"):
        Exercise("08", "x", "not a name", checker)
    with pytest.raises(ValueError, match="checker must be a checker function"):
        Exercise("08", "x", "step", "attention_lab.exercises.ch08:check_online_step")
    with pytest.raises(ValueError, match="points must be a positive int"):
        Exercise("08", "x", "step", checker, points=0)
