"""Execute every chapter top to bottom on this machine and report time per notebook and any failure.

    python benchmarks/run_all_notebooks.py                      # report only
    python benchmarks/run_all_notebooks.py --write-dir OUT      # also keep the executed notebooks
    python benchmarks/run_all_notebooks.py --only 10 13         # a subset, by file-name prefix

Writes ``benchmarks/results/notebooks_<device>.json`` and ``.md`` (or under --results-dir).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import nbformat
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from attention_lab.book import SOURCES, chapter_notebook, execute  # noqa: E402
from attention_lab.env import triton_version  # noqa: E402


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or 'unknown'})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=[], help="file-name prefixes")
    parser.add_argument("--write-dir", type=Path, help="where to write the executed notebooks")
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
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
            status, error = "failed", "".join(traceback.format_exception_only(type(exc), exc))[-2000:]
        seconds = time.perf_counter() - started
        rows.append({"notebook": source.stem, "status": status, "seconds": round(seconds, 1), "error": error})
        print(f"{source.stem:<28} {status:<7} {seconds:7.1f} s", flush=True)
        if args.write_dir is not None:
            args.write_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, args.write_dir / f"{source.stem}.ipynb")
        failed = write_report(rows, args.results_dir)  # after every notebook, so a cut-off run still reports
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def write_report(rows: list[dict], results_dir: Path) -> list[dict]:
    """Write notebooks_<cpu|gpu>.json and .md for the rows so far; return the failed rows."""
    kind = "gpu" if torch.cuda.is_available() else "cpu"
    report = {"device": device_name(), "torch": torch.__version__, "triton": triton_version(),
              "cuda": torch.version.cuda, "python": platform.python_version(), "notebooks": rows}
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"notebooks_{kind}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Every notebook, executed on {report['device']}", "",
             f"torch {report['torch']}, triton {report['triton']}, CUDA {report['cuda']}, Python {report['python']}", "",
             "| notebook | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['notebook']} | {r['status']} | {r['seconds']} |" for r in rows]
    failed = [r for r in rows if r["status"] != "passed"]
    lines += ["", f"{len(rows) - len(failed)} passed, {len(failed)} failed"]
    lines += [f"\n**{r['notebook']}**: `{r['error'].strip()}`" for r in failed]
    (results_dir / f"notebooks_{kind}.md").write_text("\n".join(lines) + "\n")
    return failed


if __name__ == "__main__":
    sys.exit(main())
