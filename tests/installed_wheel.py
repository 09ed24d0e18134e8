"""The chapters as Colab meets them, shared by the two halves of the installed-wheel test
(``test_book_installed_wheel_1.py`` and ``_2.py``).

Colab opens one ``.ipynb`` from GitHub with nothing beside it and pip-installs the package. The tests build the
wheel, install it into a fresh folder (not the checkout), copy each chapter into an empty folder and execute it
there offline, in a kernel whose ``PYTHONPATH`` puts the installed copy first and whose environment has neither
``OMP_NUM_THREADS`` nor ``TRITON_INTERPRET`` set (a chapter must set what it needs itself). A chapter fails on
any error output, when it imports attention_lab from anywhere but the wheel, or when it shows fewer figures
than its committed notebook.

Why two files: CI runs ``pytest -n 2 --dist loadfile``, which keeps every test of one file on one worker, and
executing every chapter takes minutes. :data:`HALVES` splits the chapters into two halves of about equal run
time (as the committed notebooks recorded it), one per file, so the two workers share them. The wheel is
built and installed once per test run (:func:`install_wheel`: a file lock between the workers), not once per file.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import torch
from filelock import FileLock

from attention_lab.book.build import NOTEBOOKS, ROOT, SOURCES, executed_on

CHAPTERS = sorted(p.stem for p in SOURCES.glob("*.py"))
RUNNER = r"""
import json, sys
import nbformat
from nbclient import NotebookClient
path = sys.argv[1]
notebook = nbformat.read(path, as_version=4)
probe = nbformat.v4.new_code_cell("import attention_lab, torch; print('ATTENTION_LAB_FROM', attention_lab.__file__)")
notebook.cells.append(probe)
# IPC sockets in the chapter's own empty folder, not TCP ports: two test workers starting kernels at the same moment
# could pick the same free port (ZMQError: Address already in use, seen once in CI)
from jupyter_client.manager import KernelManager
manager = KernelManager(kernel_name="python3", transport="ipc", ip="kernel")  # relative: short socket paths
NotebookClient(notebook, km=manager, timeout=900, kernel_name="python3", allow_errors=True,
               resources={"metadata": {"path": sys.argv[2]}}).execute()
nbformat.write(notebook, path)
"""
UNTIMED_SECONDS = 30.0  # a committed notebook without recorded cell timings counts as this long


def figure_count(notebook: nbformat.NotebookNode) -> int:
    """Figures a notebook shows: image outputs of its code cells."""
    return sum(1 for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
               if "image/png" in output.get("data", {}))


def errors_of(notebook: nbformat.NotebookNode) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for cell in notebook.cells if cell.cell_type == "code"
            for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def recorded_seconds(chapter: str) -> float:
    """How long the committed notebook's code cells took when it was built: the sum over its cells of the
    execution times nbclient records in the cell metadata (:data:`UNTIMED_SECONDS` when none are recorded)."""
    def moment(stamp: str) -> datetime.datetime:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    notebook = nbformat.read(NOTEBOOKS / f"{chapter}.ipynb", as_version=4)
    spans = [cell.metadata.get("execution", {}) for cell in notebook.cells if cell.cell_type == "code"]
    seconds = [(moment(s["shell.execute_reply"]) - moment(s["iopub.execute_input"])).total_seconds()
               for s in spans if "iopub.execute_input" in s and "shell.execute_reply" in s]
    return sum(seconds) if seconds else UNTIMED_SECONDS


def split_in_halves(seconds: dict[str, float]) -> tuple[list[str], list[str]]:
    """The chapters in two halves of about equal total time: longest first, each to the half with less so far
    (ties: by name, then to the first half). Each half is returned in chapter order."""
    halves: tuple[list[str], list[str]] = ([], [])
    totals = [0.0, 0.0]
    for chapter in sorted(seconds, key=lambda c: (-seconds[c], c)):
        shorter = 0 if totals[0] <= totals[1] else 1
        halves[shorter].append(chapter)
        totals[shorter] += seconds[chapter]
    return sorted(halves[0]), sorted(halves[1])


HALVES = split_in_halves({chapter: recorded_seconds(chapter) for chapter in CHAPTERS})


def install_wheel(tmp_path_factory) -> Path:
    """The package built as a wheel and installed (no dependencies: they are this environment's) into a folder;
    returns that folder.

    Built once per test run: under pytest-xdist the workers share their parent temporary folder, and a file
    lock there lets the first worker build while the other waits and then reuses its install (a second build
    at the same time would also collide in pip's scratch folder ``ROOT/build``)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this run's folder, shared by its workers (each has its own below it)
    base, done = root / "installed_wheel", root / "installed_wheel.done"
    with FileLock(str(root / "installed_wheel.lock")):
        if not done.exists():
            shutil.rmtree(base, ignore_errors=True)  # what a failed attempt left
            build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                                    "-w", str(base / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600)
            shutil.rmtree(ROOT / "build", ignore_errors=True)  # pip wheel's scratch copy
            assert build.returncode == 0, build.stderr[-2000:]
            wheel = next((base / "dist").glob("attention_lab-*.whl"))
            install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                                      str(base / "site"), str(wheel)], capture_output=True, text=True, timeout=600)
            assert install.returncode == 0, install.stderr[-2000:]
            done.touch()
    return base / "site"


def check_wheel_ships_the_committed_results(installed: Path) -> None:
    """Everything a chapter reads at run time is package data: the committed results travel with the wheel."""
    shipped = {p.name for p in (installed / "attention_lab" / "results").iterdir()}
    committed = {p.name for p in (ROOT / "attention_lab" / "results").iterdir()}
    assert committed and shipped == committed


def check_chapter_runs_alone(chapter: str, installed: Path, tmp_path: Path) -> None:
    """Execute ``chapter`` alone in an empty folder, offline, against the installed wheel; fail on any error
    output, on attention_lab imported from elsewhere, or on fewer figures than the committed notebook shows."""
    folder = tmp_path / "empty"
    folder.mkdir()
    notebook_path = folder / f"{chapter}.ipynb"
    shutil.copy(NOTEBOOKS / f"{chapter}.ipynb", notebook_path)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "TRITON_INTERPRET", "PYTHONPATH")}
    env.update(PYTHONPATH=str(installed), ATTENTION_LAB_OFFLINE="1", MPLBACKEND="module://matplotlib_inline.backend_inline")
    done = subprocess.run([sys.executable, "-c", RUNNER, str(notebook_path), str(folder)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    ran = nbformat.read(notebook_path, as_version=4)
    assert not errors_of(ran), f"{chapter} failed from the wheel: {errors_of(ran)}"
    probe = "".join(o.get("text", "") for o in ran.cells[-1].outputs)
    assert f"ATTENTION_LAB_FROM {installed}" in probe, probe
    committed = nbformat.read(NOTEBOOKS / f"{chapter}.ipynb", as_version=4)
    on_gpu_here = torch.cuda.is_available()
    if executed_on(committed) in (None, "CPU") or on_gpu_here:
        assert figure_count(ran) >= figure_count(committed), (
            f"{chapter}: {figure_count(ran)} figures from the wheel, {figure_count(committed)} committed")
    else:  # committed on a GPU, run here on a CPU: the CPU path must still show the committed results' figures
        assert figure_count(ran) >= 1, f"{chapter} shows no figure from the wheel"
