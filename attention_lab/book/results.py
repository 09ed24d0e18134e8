"""The ONE loader of committed results: every chapter, test and benchmark reads (and writes) them here.

GPU benchmarks and CPU studies (``benchmarks/*.py``) write a JSON file — card, versions, shapes, every
number — and a PNG into :data:`RESULTS_DIR`, ``attention_lab/results/``. That folder is package data: it
ships inside the wheel, so a chapter opened alone on Colab (the package pip-installed, nothing beside
the notebook) reads the same numbers as a clone of the repository, with no network.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


def result_path(name: str) -> Path:
    """The path of committed result ``name`` (``"flash_benchmark"`` or ``"flash_benchmark.json"``, ``"x.png"``)."""
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"name must be a file name inside {RESULTS_DIR.name}/, got {name!r}")
    return RESULTS_DIR / (name if Path(name).suffix else f"{name}.json")


def load(name: str, directory: str | Path | None = None) -> dict | None:
    """Result ``name`` as a dict — committed (default) or from a benchmark's ``directory`` — or None when absent."""
    path = result_path(name) if directory is None else Path(directory) / result_path(name).name
    return json.loads(path.read_text()) if path.exists() else None


def save(name: str, data: dict, directory: str | Path | None = None) -> Path:
    """Write ``data`` as result ``name`` (indented JSON) into ``directory`` (default :data:`RESULTS_DIR`)."""
    path = result_path(name) if directory is None else Path(directory) / result_path(name).name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path
