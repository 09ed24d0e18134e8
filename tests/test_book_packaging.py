"""Packaging: Jupyter is an extra, not a runtime dependency; the LICENSE and data/README.md are there and true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from attention_lab import data

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower().replace("_", "-") for r in requirements}


def test_jupyter_is_an_extra_not_a_runtime_dependency():
    meta = project()
    runtime = names(meta["dependencies"])
    assert not runtime & {"jupyter", "jupyterlab", "notebook", "nbformat", "nbclient", "ipykernel", "nbval"}
    extras = {name: names(reqs) for name, reqs in meta["optional-dependencies"].items()}
    assert "jupyter" in extras["notebook"]
    # nbval needs ipykernel, jupyter_client and nbformat to execute notebooks; the build and grading use nbclient.
    assert {"pytest", "nbval", "nbformat", "nbclient", "ipykernel", "jupyter-client"} <= extras["dev"]
    assert {"nbformat", "nbclient", "ipykernel", "jupyter-client"} <= extras["grade"]


def test_library_and_exercise_modules_import_without_jupyter():
    """A chapter (or a checker) must not pull in the notebook stack: Colab has its own, pip users may not."""
    program = ("import sys\n"
               "import attention_lab, attention_lab.data, attention_lab.exercises, attention_lab.exercises.registry\n"
               "import attention_lab.exercises.ch04, attention_lab.book.results\n"
               "loaded = sorted(m for m in ('nbformat', 'nbclient', 'jupyter_client', 'ipykernel') if m in sys.modules)\n"
               "print(','.join(loaded))\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_license_is_mit():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the attention_lab authors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\"" in text
    assert project()["license"] == {"text": "MIT"}


def test_data_readme_names_every_source_its_cache_and_licence():
    text = (ROOT / "data" / "README.md").read_text(encoding="utf-8")
    for needed in ["synthetic_corpus", data.SHAKESPEARE_URL, "public domain", "cache_dir()", "ATTENTION_LAB_CACHE_DIR",
                   "~/.cache/attention_lab", "TIKTOKEN_CACHE_DIR", "data-gym-cache", "Modified MIT License",
                   "attention_lab/results/", "attention_lab.book.results", "ATTENTION_LAB_OFFLINE"]:
        assert needed in text, f"data/README.md does not mention {needed!r}"
    assert "data/cache/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
