"""The installed-wheel test on a GPU machine, as a committed report: every chapter opened alone in an empty
folder against the package installed from its wheel — the way a Colab GPU student meets the book.

On the GPU machine (its image has torch and triton; Jupyter comes from ``.whl/``, see ``device_wheels.sh``):

    python3 -m pytest -p no:nbval -o addopts="" -n 8 --junitxml=wheel.xml \\
        tests/test_book_installed_wheel_1.py tests/test_book_installed_wheel_2.py
    python3 -c "import torch, triton; print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)" > card.txt

then, anywhere:

    python3 benchmarks/installed_wheel_gpu.py wheel.xml card.txt --commit SHA   # writes results/installed_wheel_gpu.{json,md}

``card.txt`` may also be ``nvidia-smi --query-gpu=name,driver_version --format=csv`` followed by a line
``<torch> <triton>``. The JSON keeps every test's outcome, time and, for a failure, the start of its message.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from attention_lab.book.results import RESULTS_DIR  # noqa: E402

NAME = "installed_wheel_gpu"
COMMAND = ('python3 -m pytest -p no:nbval -o addopts="" -n 8 --junitxml=wheel.xml '
           'tests/test_book_installed_wheel_1.py tests/test_book_installed_wheel_2.py')


def read_junit(path: Path) -> tuple[list[dict], float]:
    """Each test case of a pytest junit file as ``{test, chapter, status, seconds, error}`` (sorted by test),
    and the suite's wall time in seconds. ``chapter`` is the parametrised chapter, or None."""
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
        rows.append({"test": f"{case.get('classname')}::{case.get('name')}",
                     "chapter": chapter.group(1) if chapter else None, "status": status,
                     "seconds": round(float(case.get("time", 0.0)), 1), "error": message})
    if not rows:
        raise ValueError(f"{path}: no test cases recorded")
    return sorted(rows, key=lambda r: r["test"]), round(sum(float(s.get("time", 0.0)) for s in suites), 1)


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


def report(junit: Path, card: Path, commit: str) -> dict:
    """The JSON this script commits: card, versions, the commit tested, the command, every test's row."""
    if not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        raise ValueError(f"commit must be a git hash, got {commit!r}")
    rows, wall = read_junit(junit)
    counts = {status: sum(r["status"] == status for r in rows) for status in ("passed", "failed", "skipped")}
    return {**read_card(card), "commit": commit, "command": COMMAND, "wall_seconds": wall, **counts, "tests": rows}


def markdown(data: dict) -> str:
    """The report as a short page: a table of tests, the counts, and any failure's message."""
    lines = [f"# Every chapter alone from the installed wheel, on {data['device']}", "",
             f"torch {data['torch']}, triton {data['triton']}, CUDA {data['cuda']}; commit {data['commit'][:7]}; "
             f"{data['wall_seconds']:.0f} s with 8 workers", "", f"`{data['command']}`", "",
             "| test | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['chapter'] or r['test'].split('::')[-1]} | {r['status']} | {r['seconds']:.1f} |" for r in data["tests"]]
    lines += ["", f"{data['passed']} passed, {data['failed']} failed, {data['skipped']} skipped"]
    lines += [f"\n**{r['test']}**: {r['error']}" for r in data["tests"] if r["error"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("junit", type=Path)
    parser.add_argument("card", type=Path)
    parser.add_argument("--commit", required=True, help="the commit whose working tree the GPU machine tested")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    data = report(args.junit, args.card, args.commit)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / f"{NAME}.md").write_text(markdown(data))
    print(f"{data['passed']} passed, {data['failed']} failed on {data['device']}: wrote {args.out / NAME}.json/.md")


if __name__ == "__main__":
    main()
