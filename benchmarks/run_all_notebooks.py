"""Execute every chapter top to bottom on this machine and report time per notebook and any failure.

    python benchmarks/run_all_notebooks.py                      # report only
    python benchmarks/run_all_notebooks.py --write-dir OUT      # also keep the executed notebooks
    python benchmarks/run_all_notebooks.py --only 10 13         # a subset, by file-name prefix
    python benchmarks/run_all_notebooks.py --only 00 --append   # add to the report of an earlier run

A GPU call is limited in time, so the whole book may be run in two parts on the same machine:
``--append`` keeps the earlier report's rows for the chapters not run now (same device model and
versions only) and says in the report that it was assembled from several runs.

Writes ``attention_lab/results/notebooks_<device>.json`` and ``.md`` (or under --results-dir).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
import traceback
from pathlib import Path

import nbformat
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from attention_lab.book.build import SOURCES, chapter_notebook, execute  # noqa: E402
from attention_lab.book.results import RESULTS_DIR  # noqa: E402
from attention_lab.book.setup_cell import triton_version  # noqa: E402


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or 'unknown'})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=[], help="file-name prefixes")
    parser.add_argument("--write-dir", type=Path, help="where to write the executed notebooks")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--append", action="store_true", help="keep the earlier report's other chapters")
    args = parser.parse_args()
    earlier = earlier_report(args.results_dir) if args.append else None
    earlier_rows, runs = (earlier["notebooks"], earlier.get("runs", 1) + 1) if earlier else ([], 1)
    rows, failed = [], []
    sources = sorted(SOURCES.glob("*.py"))
    if args.only:  # in the order given
        sources = [s for prefix in args.only for s in sources if s.stem.startswith(prefix)]
    for source in sources:
        notebook = chapter_notebook(source)
        started = time.perf_counter()
        try:
            execute(notebook)
            status, error = "passed", ""
        except Exception as exc:  # report and go on with the next chapter
            text = "".join(traceback.format_exception_only(type(exc), exc))
            status, error = "failed", re.sub(r"\x1b\[[0-9;]*m", "", text)[-2000:]  # without terminal colours
        seconds = time.perf_counter() - started
        rows.append({"notebook": source.stem, "status": status, "seconds": round(seconds, 1), "error": error})
        print(f"{source.stem:<28} {status:<7} {seconds:7.1f} s", flush=True)
        if error:
            print(error[-1500:], flush=True)
        if args.write_dir is not None:
            args.write_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, args.write_dir / f"{source.stem}.ipynb")
        failed = write_report(merge(earlier_rows, rows), args.results_dir, runs)  # after every notebook, so a
        # cut-off run still reports
    now_failed = sum(r["status"] != "passed" for r in rows)
    print(f"this run: {len(rows) - now_failed} passed, {now_failed} failed; the report: {len(failed)} failed")
    return 1 if failed else 0


def report_path(results_dir: Path) -> Path:
    return results_dir / f"notebooks_{'gpu' if torch.cuda.is_available() else 'cpu'}.json"


def environment() -> dict:
    return {"device": device_name(), "torch": torch.__version__, "triton": triton_version(),
            "cuda": torch.version.cuda, "python": platform.python_version()}


def earlier_report(results_dir: Path) -> dict | None:
    """The report on disk, if there is one and it was written on this device with these versions."""
    path = report_path(results_dir)
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    if any(report.get(key) != value for key, value in environment().items()):
        raise SystemExit(f"--append: {path} comes from another device or other versions; run without --append")
    return report


def merge(earlier: list[dict], rows: list[dict]) -> list[dict]:
    """Earlier rows for the chapters not run now, then this run's rows; in chapter order."""
    now = {r["notebook"] for r in rows}
    return sorted([r for r in earlier if r["notebook"] not in now] + rows, key=lambda r: r["notebook"])


def write_report(rows: list[dict], results_dir: Path, runs: int = 1) -> list[dict]:
    """Write notebooks_<cpu|gpu>.json and .md for the rows so far; return the failed rows."""
    report = {**environment(), "runs": runs, "notebooks": rows}
    results_dir.mkdir(parents=True, exist_ok=True)
    path = report_path(results_dir)
    path.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Every notebook, executed on {report['device']}", "",
             f"torch {report['torch']}, triton {report['triton']}, CUDA {report['cuda']}, Python {report['python']}", ""]
    if runs > 1:
        lines += ["Assembled from more than one run of `benchmarks/run_all_notebooks.py` (`--append`), on the same "
                  "device model with the same versions: one call to the lent GPU is limited in time.", ""]
    lines += ["| notebook | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['notebook']} | {r['status']} | {r['seconds']} |" for r in rows]
    failed = [r for r in rows if r["status"] != "passed"]
    lines += ["", f"{len(rows) - len(failed)} passed, {len(failed)} failed"]
    lines += [f"\n**{r['notebook']}**: `{r['error'].strip()}`" for r in failed]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return failed


if __name__ == "__main__":
    sys.exit(main())
