"""The chapters as Colab meets them: the package installed from its wheel, each notebook alone in an empty folder.

Colab opens one ``.ipynb`` from GitHub with nothing beside it and pip-installs the package. This test builds
the wheel, installs it into a fresh folder (not the checkout), copies each chapter into an empty folder and
executes it there offline, in a kernel whose ``PYTHONPATH`` puts the installed copy first and whose
environment has neither ``OMP_NUM_THREADS`` nor ``TRITON_INTERPRET`` set (a chapter must set what it needs
itself). A chapter fails on any error output, when it imports attention_lab from anywhere but the wheel,
or when it shows fewer figures than its committed notebook.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

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
NotebookClient(notebook, timeout=900, kernel_name="python3", allow_errors=True,
               resources={"metadata": {"path": sys.argv[2]}}).execute()
nbformat.write(notebook, path)
"""


def figure_count(notebook: nbformat.NotebookNode) -> int:
    """Figures a notebook shows: image outputs of its code cells."""
    return sum(1 for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
               if "image/png" in output.get("data", {}))


def errors_of(notebook: nbformat.NotebookNode) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for cell in notebook.cells if cell.cell_type == "code"
            for o in cell.get("outputs", []) if o.get("output_type") == "error"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package built as a wheel and installed (no dependencies: they are this environment's) into a folder."""
    base = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(base / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((base / "dist").glob("attention_lab-*.whl"))
    target = base / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # pip wheel's scratch copy
    return target


def test_wheel_ships_the_committed_results(installed):
    """Everything a chapter reads at run time is package data: the committed results travel with the wheel."""
    shipped = {p.name for p in (installed / "attention_lab" / "results").iterdir()}
    committed = {p.name for p in (ROOT / "attention_lab" / "results").iterdir()}
    assert committed and shipped == committed


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_runs_alone_from_the_installed_wheel(chapter, installed, tmp_path):
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
