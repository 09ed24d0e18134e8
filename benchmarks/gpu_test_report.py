"""A test run on a GPU machine, as a committed report: which tests ran there, on which card and versions, at which
commit, and how each one ended. Two suites are reported this way:

* ``gpu_tests`` — every test marked ``gpu`` (the kernels against float64 on the matrix of head dims, lengths, masks,
  dtypes and strides that ``tests/test_ch10_flash_gpu_matrix.py`` spells out, the Hopper paths, decode, MLA);
* ``installed_wheel_gpu`` — every chapter opened alone in an empty folder against the package installed from its
  wheel: the way a Colab GPU student meets the book.

On the GPU machine (its image has torch, triton, pytest and pytest-xdist; the installed-wheel test also needs the
Jupyter wheels from ``.whl/``, see ``device_wheels.sh``), run the suite's command (``SUITES[suite].command``):

    python3 -m pytest -p no:nbval -o addopts="" -n 8 --junitxml=gpu_tests.xml -m gpu
    python3 -m pytest -p no:nbval -o addopts="" -n 8 --junitxml=wheel.xml \\
        tests/test_book_installed_wheel_1.py tests/test_book_installed_wheel_2.py

and write the card file:

    nvidia-smi --query-gpu=name,driver_version --format=csv > card.txt
    python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" >> card.txt

then, anywhere:

    python3 benchmarks/gpu_test_report.py gpu_tests gpu_tests.xml card.txt --commit SHA   # results/gpu_tests.{json,md}

``card.txt`` may also be one line ``<card> <torch> <triton>``. The JSON keeps every test's outcome, time and, for a
failure, the start of its message; the page has one row per chapter (installed wheel) or per test file (GPU tests).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from attention_lab.book.results import RESULTS_DIR  # noqa: E402


@dataclass(frozen=True)
class Suite:
    """One kind of test run: the command that runs it on the GPU machine and the title of its page."""

    command: str
    title: str
    rows_per: str  # "chapter": a row per parametrised chapter; "file": a row per test file


SUITES = {
    "gpu_tests": Suite('python3 -m pytest -p no:nbval -o addopts="" -n 8 --junitxml=gpu_tests.xml -m gpu',
                       "Every GPU test (`pytest -m gpu`)", "file"),
    "installed_wheel_gpu": Suite('python3 -m pytest -p no:nbval -o addopts="" -n 8 --junitxml=wheel.xml '
                                 'tests/test_book_installed_wheel_1.py tests/test_book_installed_wheel_2.py',
                                 "Every chapter alone from the installed wheel", "chapter"),
}


def read_junit(path: Path) -> tuple[list[dict], float]:
    """Each test case of a pytest junit file as ``{test, file, chapter, status, seconds, error}`` (sorted by test),
    and the suite's wall time in seconds. ``test`` is ``<classname>::<name>`` as junit writes it, ``file`` the test
    file it came from (``tests/test_x.py``) and ``chapter`` the parametrised chapter, or None."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if not suites:
        raise ValueError(f"{path}: no <testsuite> in this file; is it pytest's --junitxml output?")
    rows = []
    for case in (c for suite in suites for c in suite.iter("testcase")):
        problem = next((case.find(tag) for tag in ("failure", "error") if case.find(tag) is not None), None)
        skipped = case.find("skipped") is not None
        status = "failed" if problem is not None else "skipped" if skipped else "passed"
        message = "" if problem is None else (problem.get("message") or problem.text or "").strip()[:500]
        chapter = re.search(r"\[(.+)\]$", case.get("name", ""))
        classname = case.get("classname", "")
        rows.append({"test": f"{classname}::{case.get('name')}", "file": source_file(classname),
                     "chapter": chapter.group(1) if chapter else None, "status": status,
                     "seconds": round(float(case.get("time", 0.0)), 1), "error": message})
    if not rows:
        raise ValueError(f"{path}: no test cases recorded")
    return sorted(rows, key=lambda r: r["test"]), round(sum(float(s.get("time", 0.0)) for s in suites), 1)


def source_file(classname: str) -> str:
    """The test file a junit ``classname`` names: ``tests.test_x`` or ``tests.test_x.TestCase`` → ``tests/test_x.py``."""
    parts = classname.split(".")
    module = [p for p in parts if not p[:1].isupper()]  # a test class's name (CamelCase) is not a path
    return "/".join(module) + ".py"


def read_card(path: Path) -> dict:
    """``{device, torch, triton, cuda}`` from the card file the GPU run writes (see the module docstring).
    CUDA comes from torch's local version tag (``2.11.0+cu130`` → ``13.0``)."""
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("name,")]  # nvidia-smi's csv header
    if len(lines) == 2 and len(lines[1].split()) == 2:  # nvidia-smi's "card, driver", then "torch triton"
        device, (torch_version, triton_version) = lines[0].split(",")[0].strip(), lines[1].split()
    elif len(lines) == 1 and len(lines[0].rsplit(" ", 2)) == 3:
        device, torch_version, triton_version = lines[0].rsplit(" ", 2)
    else:
        device, torch_version, triton_version = "", "", ""
    if not device or not all(re.match(r"\d+\.\d+", v) for v in (torch_version, triton_version)):
        raise ValueError(f"{path}: expected a card line and '<torch> <triton>' versions, got {lines}")
    tag = re.search(r"\+cu(\d+)(\d)$", torch_version)
    if tag is None:
        raise ValueError(f"{path}: torch {torch_version} is not a CUDA build; this report is for a GPU machine")
    return {"device": device, "torch": torch_version, "triton": triton_version, "cuda": f"{tag[1]}.{tag[2]}"}


def suite_of(name: str) -> Suite:
    """The suite called ``name``; a ValueError naming the known ones otherwise."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    return SUITES[name]


def report(suite: str, junit: Path, card: Path, commit: str) -> dict:
    """The JSON this script commits: suite, card, versions, the commit tested, the command, every test's row."""
    command = suite_of(suite).command
    if not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        raise ValueError(f"commit must be a git hash, got {commit!r}")
    rows, wall = read_junit(junit)
    counts = {status: sum(r["status"] == status for r in rows) for status in ("passed", "failed", "skipped")}
    return {"suite": suite, **read_card(card), "commit": commit, "command": command, "wall_seconds": wall,
            **counts, "tests": rows}


def markdown(data: dict) -> str:
    """The report as a short page: a table (per chapter or per test file), the counts, and any failure's message."""
    suite = suite_of(data["suite"])
    lines = [f"# {suite.title}, on {data['device']}", "",
             f"torch {data['torch']}, triton {data['triton']}, CUDA {data['cuda']}; commit {data['commit'][:7]}; "
             f"{data['wall_seconds']:.0f} s with 8 workers", "", f"`{data['command']}`", ""]
    if suite.rows_per == "chapter":
        lines += ["| test | status | seconds |", "|---|---|---|"]
        lines += [f"| {r['chapter'] or r['test'].split('::')[-1]} | {r['status']} | {r['seconds']:.1f} |"
                  for r in data["tests"]]
    else:
        lines += ["| test file | passed | failed | skipped | seconds (its tests, summed) |", "|---|---|---|---|---|"]
        for file in sorted({r["file"] for r in data["tests"]}):
            rows = [r for r in data["tests"] if r["file"] == file]
            status = Counter(r["status"] for r in rows)
            lines.append(f"| {file} | {status['passed']} | {status['failed']} | {status['skipped']} | "
                         f"{sum(r['seconds'] for r in rows):.1f} |")
    lines += ["", f"{data['passed']} passed, {data['failed']} failed, {data['skipped']} skipped"]
    lines += [f"\n**{r['test']}**: {r['error']}" for r in data["tests"] if r["error"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("junit", type=Path)
    parser.add_argument("card", type=Path)
    parser.add_argument("--commit", required=True, help="the commit whose working tree the GPU machine tested")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    data = report(args.suite, args.junit, args.card, args.commit)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.suite}.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / f"{args.suite}.md").write_text(markdown(data))
    print(f"{data['passed']} passed, {data['failed']} failed on {data['device']}: "
          f"wrote {args.out / args.suite}.json/.md")


if __name__ == "__main__":
    main()
