"""Grade students' notebooks: execute each one, then run the package's own checkers on the student's functions.

    python -m attention_lab.exercises grade alice/04_sliding_window.ipynb bob/04_sliding_window.ipynb --json grades.json

For each notebook the grader

1. works out its chapter (``--chapter``, else the file name's ``NN_`` prefix, else the Colab link inside it);
2. executes it top to bottom in a fresh kernel of this Python, in the notebook's own folder, letting a
   failing cell fail without stopping the rest (a cell running past ``--timeout`` is interrupted);
3. in that same kernel, calls each of the chapter's checkers (:data:`~attention_lab.exercises.registry.EXERCISES`)
   on the function the exercise asks for, by its name — so a check cell that was deleted or edited changes
   nothing;
4. prints a table (notebook, chapter, exercise, PASS/FAIL, points, the checker's message; plain text,
   no colour codes) and, with ``--json OUT``, writes the same records as a JSON list of
   ``{notebook, chapter, exercise, passed, points, max_points, message}`` (``points`` are those earned).

The exit status is 0 when every exercise passed, 1 when any failed, 2 for bad arguments.

The checkers run inside the student's kernel (they need the student's functions and whatever those use),
so a notebook written to patch ``attention_lab`` itself could fool them: the grader is made for honest
mistakes and deleted check cells, not for a determined adversary — read such a notebook.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from attention_lab.exercises.core import ExerciseError
from attention_lab.exercises.registry import EXERCISES, Exercise, exercises_for

MARKER = "ATTENTION_LAB_GRADE_RESULTS "  # the line the grading cell prints its results on
DEFAULT_CELL_TIMEOUT_S = 600
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_FILE_CHAPTER = re.compile(r"(?<!\d)(\d{2})_[A-Za-z]")
_LINK_CHAPTER = re.compile(r"notebooks/(?:student/)?(\d{2})_\w+\.ipynb")


@dataclass
class GradeRecord:
    """One exercise of one notebook: what the table prints and the JSON holds."""

    notebook: str
    chapter: str
    exercise: str
    passed: bool
    points: int  # earned: the exercise's points when passed, else 0
    max_points: int
    message: str


def plain(text: str) -> str:
    """``text`` without ANSI colour codes (tracebacks from IPython carry them)."""
    return _ANSI.sub("", text)


# --- inside the student's kernel -------------------------------------------------------------------------------

def run_exercise(exercise: Exercise, namespace: dict) -> dict:
    """Call ``exercise.checker`` on ``namespace[exercise.function]``: ``{"exercise", "passed", "message"}``.

    Never raises for a wrong answer: a missing function, a failed check or an error inside the student's
    code all become a failing record whose message says which.
    """
    record = {"exercise": exercise.name, "passed": False, "message": ""}
    function = namespace.get(exercise.function)
    if function is None:
        record["message"] = (f"no function `{exercise.function}` in the notebook: its cell was deleted, renamed "
                             "or failed before defining it")
        return record
    if not callable(function):
        record["message"] = f"`{exercise.function}` is a {type(function).__name__}, not a function"
        return record
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
            exercise.checker(function)
    except ExerciseError as error:
        record["message"] = str(error)
    except (Exception, SystemExit) as error:  # the student's code (or its use of the library) raised
        record["message"] = f"the check stopped with {type(error).__name__}: {error}"
    else:
        lines = [line.strip() for line in printed.getvalue().splitlines() if line.strip()]
        record["passed"] = True
        record["message"] = lines[-1].lstrip("✓ ").split(": ", 1)[-1] if lines else "all checks passed"
    record["message"] = plain(record["message"]).strip()
    return record


def check_in_kernel(chapter: str, namespace: dict) -> list[dict]:
    """Run every exercise of ``chapter`` on the functions in ``namespace`` and print them on one marked line.

    This is what the grader executes after the notebook, in the same kernel: ``check_in_kernel("04", globals())``.
    """
    results = [run_exercise(exercise, namespace) for exercise in exercises_for(chapter)]
    print(MARKER + json.dumps(results))
    return results


# --- in the grader's process -----------------------------------------------------------------------------------

def chapter_of(path: Path, notebook=None) -> str:
    """The chapter a notebook belongs to: its file name's ``NN_`` prefix, else the Colab link in its cells."""
    for match in _FILE_CHAPTER.finditer(path.name):
        if match.group(1) in EXERCISES:
            return match.group(1)
    for cell in (notebook.cells if notebook is not None else []):
        match = _LINK_CHAPTER.search(cell.get("source", ""))
        if match and match.group(1) in EXERCISES:
            return match.group(1)
    raise ValueError(f"cannot tell which chapter {path} is: name it like 04_sliding_window.ipynb or pass "
                     "--chapter 04")


def _kernel_manager():
    """A kernel manager for a Python kernel of THIS interpreter (where attention_lab is installed), like
    nbval's --current-env, whatever kernel the notebook's metadata names."""
    import ipykernel.kernelspec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    name = "attention-lab-grader"

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            if kernel_name == name:
                return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES,
                                              **ipykernel.kernelspec.get_kernel_dict())
            return super().get_kernel_spec(kernel_name)

    return AsyncKernelManager(kernel_name=name, kernel_spec_manager=ThisPython())


def _failed(path: Path, chapter: str, message: str) -> list[GradeRecord]:
    return [GradeRecord(str(path), chapter, e.name, False, 0, e.points, message) for e in exercises_for(chapter)]


def _error_of(cell) -> str | None:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return plain(f"{output.get('ename', 'Error')}: {output.get('evalue', '')}").strip()
    return None


def grade_notebook(path: str | Path, chapter: str | None = None, timeout: int = DEFAULT_CELL_TIMEOUT_S,
                   log=sys.stderr) -> list[GradeRecord]:
    """Execute the notebook at ``path`` and check its exercises; one :class:`GradeRecord` per exercise."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"notebook {path} does not exist")
    if not (isinstance(timeout, int) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    try:
        notebook = nbformat.read(path, as_version=4)
    except Exception as error:
        raise ValueError(f"{path} is not a readable notebook ({type(error).__name__}: {error})") from None
    chapter = chapter if chapter is not None else chapter_of(path, notebook)
    exercises = exercises_for(chapter)
    n_cells = sum(cell.cell_type == "code" for cell in notebook.cells)
    notebook.cells.append(nbformat.v4.new_code_cell(
        "from attention_lab.exercises.grade import check_in_kernel as __attention_lab_check_in_kernel\n"
        f"__attention_lab_check_in_kernel({chapter!r}, globals())"))
    print(f"grading {path} (chapter {chapter}, {len(exercises)} exercise(s)): executing {n_cells} code cells ...",
          file=log, flush=True)
    start = time.monotonic()
    client = NotebookClient(notebook, km=_kernel_manager(), timeout=timeout, allow_errors=True,
                            interrupt_on_timeout=True, resources={"metadata": {"path": str(path.resolve().parent)}})
    try:
        client.execute(stderr=subprocess.DEVNULL)  # the kernel process's own stderr: transport warnings, not the student's
    except DeadKernelError as error:
        return _failed(path, chapter, f"the notebook's kernel died before the checks ran ({plain(str(error))[:200]})")
    *student_cells, grading_cell = notebook.cells
    errors = sum(_error_of(cell) is not None for cell in student_cells if cell.cell_type == "code")
    print(f"  ran in {time.monotonic() - start:.0f} s; {errors} of {n_cells} code cells raised an error",
          file=log, flush=True)
    text = "".join(o.get("text", "") for o in grading_cell.get("outputs", []) if o.get("output_type") == "stream")
    lines = [line for line in text.splitlines() if line.startswith(MARKER)]
    if not lines:
        problem = _error_of(grading_cell) or "no results were printed"
        return _failed(path, chapter, f"the grader could not run the checks in the notebook's kernel ({problem})")
    results = json.loads(lines[-1][len(MARKER):])
    return [GradeRecord(str(path), chapter, exercise.name, bool(result["passed"]),
                        exercise.points if result["passed"] else 0, exercise.points, result["message"])
            for exercise, result in zip(exercises, results)]


def format_table(records: list[GradeRecord]) -> str:
    """The records as a plain-text table, with a total line."""
    header = ("notebook", "chapter", "exercise", "result", "points", "message")
    rows = [(r.notebook, r.chapter, r.exercise, "PASS" if r.passed else "FAIL", f"{r.points}/{r.max_points}",
             " ".join(r.message.split())) for r in records]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1]
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths) + "  " + "-" * len(header[-1]))
    earned, possible = sum(r.points for r in records), sum(r.max_points for r in records)
    passed = sum(r.passed for r in records)
    lines.append(f"\ntotal: {earned}/{possible} points; {passed} of {len(records)} exercises passed")
    return "\n".join(line.rstrip() for line in lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``grade`` subcommand's options."""
    parser.add_argument("notebooks", nargs="+", type=Path, metavar="NB.ipynb", help="students' notebooks")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the records to OUT as a JSON list")
    parser.add_argument("--chapter", metavar="NN", help="the chapter of every notebook given (default: from "
                                                        "each file name, else its Colab link)")
    parser.add_argument("--timeout", type=int, default=DEFAULT_CELL_TIMEOUT_S, metavar="SECONDS",
                        help=f"interrupt a cell running longer than this (default {DEFAULT_CELL_TIMEOUT_S})")


def run(args: argparse.Namespace) -> int:
    """Grade ``args.notebooks``; print the table; write ``args.json``. Exit status: 0 all passed, 1 not, 2 bad input."""
    try:
        import nbclient  # noqa: F401
        import nbformat  # noqa: F401
        import ipykernel  # noqa: F401
    except ImportError as error:
        print(f"grading needs {error.name}: pip install \"attention_lab[grade]\"", file=sys.stderr)
        return 2
    try:
        if args.chapter is not None:
            exercises_for(args.chapter)
        for path in args.notebooks:
            if not path.is_file():
                raise ValueError(f"notebook {path} does not exist")
        records = [record for path in args.notebooks
                   for record in grade_notebook(path, chapter=args.chapter, timeout=args.timeout)]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(records))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in records], indent=1, ensure_ascii=False) + "\n",
                             encoding="utf-8")
    return 0 if all(r.passed for r in records) else 1
