"""Student notebooks: every ``### BEGIN SOLUTION`` … ``### END SOLUTION`` region becomes
``raise NotImplementedError``, and all outputs are cleared.

    python -m attention_lab.exercises build     # regenerate notebooks/student/ from notebooks/*.ipynb
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_REGION = re.compile(r"^([ \t]*)### BEGIN SOLUTION[^\n]*\n.*?^[ \t]*### END SOLUTION[^\n]*$", re.MULTILINE | re.DOTALL)


def strip_solutions(source: str) -> str:
    """Replace each solution region by a ``raise NotImplementedError`` at the marker's indentation."""
    if source.count(BEGIN) != source.count(END):
        raise ValueError(f"unbalanced solution markers in cell:\n{source[:200]}")
    return _REGION.sub(lambda m: f"{m.group(1)}# YOUR CODE HERE\n{m.group(1)}raise NotImplementedError(\"exercise: write this part\")",
                       source)


def student_version(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` with solutions removed and every output cleared."""
    student = nbformat.from_dict(notebook)
    for cell in student.cells:
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
            cell.outputs = []
            cell.execution_count = None
    return student


def student_path(notebook_path: Path) -> Path:
    return notebook_path.parent / "student" / notebook_path.name


def write_student_notebook(notebook_path: Path) -> Path:
    """Write ``notebooks/student/<name>.ipynb`` for the solved notebook at ``notebook_path``."""
    target = student_path(notebook_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(student_version(nbformat.read(notebook_path, as_version=4)), target)
    return target


def build_all(notebooks_dir: Path) -> list[Path]:
    return [write_student_notebook(path) for path in sorted(notebooks_dir.glob("*.ipynb"))]
