"""The book's multi-seed quality studies (issue #16): one sub-command per chapter, each writing
``attention_lab/results/quality_<chapter>.json`` (seeds, steps, machine, versions, every number).

    python benchmarks/quality_studies.py ch05                 # full budget, one CPU thread
    python benchmarks/quality_studies.py ch13 --device cuda   # the same study on a GPU
    python benchmarks/quality_studies.py all                  # ch04, ch05, ch06, ch12, ch13 in turn
    python benchmarks/quality_studies.py ch05 --smoke --out /tmp/q   # seconds: checks the code path only
    python benchmarks/quality_studies.py ch06 --jobs 3        # one process (one thread each) per seed, merged
    python benchmarks/quality_studies.py ch05 --estimate      # time a few steps, print the full run's time
    python benchmarks/quality_studies.py ch05 --merge q/0 q/1 q/2   # seeds run apart (--seeds S --out q/S), one file

The studies themselves (variants, budgets, seeds) live in :data:`attention_lab.quality.STUDIES`, so a
chapter can run the same code at a small budget live. A smoke run writes ``quality_<chapter>_smoke.json``
and never overwrites the committed results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from attention_lab.book import results  # noqa: E402
from attention_lab.quality import STUDIES, estimate_seconds, merge_reports, results_name, run_chapter_study  # noqa: E402


def git_commit() -> str | None:
    """The repository's commit (None outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_clean(folder: Path = Path(__file__).resolve().parent) -> bool | None:
    """Whether the tracked files in ``folder``'s checkout are exactly its HEAD's (None outside a git checkout). A copied working
    tree — a lent GPU machine's — can carry an older ``.git`` than its files: then this is False, and the
    commit recorded is not the code that ran."""
    try:
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                 cwd=folder, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return not changed.strip()


def print_report(report: dict) -> None:
    """The summary table and the conclusions of a finished study."""
    print(f"\n{report['study']}: {report['title']} — seeds {report['seeds']}, {report['seconds']:.0f} s "
          f"on {report['environment']['device']} ({report['environment']['threads']} thread(s))")
    for objective, by_variant in report.get("summary", {}).items() if isinstance(report.get("summary"), dict) else []:
        print(f"  {objective}:")
        for variant, entry in by_variant.items():
            numbers = "  ".join(f"{metric} {value['mean']:.3f} ± {value['sd']:.3f}" for metric, value in entry.items()
                                if isinstance(value, dict) and metric in ("val_loss", "accuracy"))
            print(f"    {variant:<14} {entry['parameters']:>9,} parameters  {numbers}")
    if isinstance(report.get("summary"), list):  # the uptraining study
        for cell in report["summary"]:
            print(f"    {cell['kind']:<10} G={cell['n_groups']:<2} {str(cell['method']):<7} α={cell['alpha']:<5} "
                  f"{cell['total_steps']:>6} steps  val_loss {cell['val_loss']['mean']:.3f} ± {cell['val_loss']['sd']:.3f}")
    for conclusion in report["conclusions"]:
        print("  •", conclusion["sentence"])


def run_in_processes(name: str, args: argparse.Namespace) -> dict:
    """Study ``name`` with its seeds split over ``args.jobs`` processes of this script (each with
    ``args.threads`` threads), merged by :func:`attention_lab.quality.merge_reports`."""
    seeds = args.seeds or list(STUDIES[name].seeds)
    groups = [seeds[i::args.jobs] for i in range(min(args.jobs, len(seeds)))]
    with tempfile.TemporaryDirectory() as folder:
        children = []
        for i, group in enumerate(groups):
            command = [sys.executable, __file__, name, "--seeds", *map(str, group), "--out", f"{folder}/{i}",
                       "--device", args.device, "--threads", str(args.threads), "--tokenizer", args.tokenizer,
                       "--no-progress", *(["--smoke"] if args.smoke else [])]
            children.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
        print(f"{name}: seeds {groups} in {len(groups)} processes ...", flush=True)
        if any(child.wait() != 0 for child in children):
            raise SystemExit(f"{name}: a worker process failed (its error is printed above)")
        parts = [json.loads((Path(folder) / str(i) / results_name(name, args.smoke)).read_text())
                 for i in range(len(groups))]
    return merge_reports(parts)


def command_line(argv: list[str] | None) -> str:
    """How this run was started, as recorded in its report."""
    return " ".join(["python", "benchmarks/quality_studies.py", *(argv if argv is not None else sys.argv[1:])])


def merge_folders(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--merge``: one study's reports from several folders (each a run on its own seeds, e.g. one GPU process per
    seed) merged into one file by :func:`attention_lab.quality.merge_reports`. Reports of different code (their
    ``git_commit``) or machines are refused; ``wall_seconds`` is the longest part's, ``merged_from`` their commands."""
    if args.study == "all":
        raise SystemExit("--merge takes one study, not 'all'")
    name = results_name(args.study, args.smoke)
    parts = []
    for folder in args.merge:
        if not (Path(folder) / name).is_file():
            raise SystemExit(f"--merge: no {name} in {folder}")
        parts.append(results.load(name, folder))
    for key in ("git_commit", "git_clean", "device", "gpu", "torch"):
        found = {part["environment"].get(key) for part in parts}
        if len(found) > 1:
            raise SystemExit(f"--merge: the parts differ in {key} ({sorted(map(str, found))}): run them on one machine "
                             "at one commit")
    report = merge_reports(parts)
    report["wall_seconds"] = max(part.get("wall_seconds", 0.0) for part in parts)
    report["merged_from"] = [part.get("command") for part in parts]
    report["command"] = command_line(argv)
    path = results.save(name, report, args.out)
    print_report(report)
    print(f"  wrote {path} (merged from {len(parts)} folders)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=[*STUDIES, "all"])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1, as the chapters)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model and 3 steps per run: checks the code path")
    parser.add_argument("--estimate", action="store_true", help="time a few steps and print the full run's duration")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the study's seeds (default 0 1 2)")
    parser.add_argument("--jobs", type=int, default=1, help="processes to spread the seeds over (default 1)")
    parser.add_argument("--tokenizer", default="auto", choices=["auto", "bpe", "char"])
    parser.add_argument("--out", help="folder for the JSON (default: attention_lab/results/)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--groups", type=int, nargs="+", help="ch06: the G values to convert to (default 1 2)")
    parser.add_argument("--part", choices=["uptrained", "scratch"],
                        help="ch06: run one part of each seed (merge the parts with attention_lab.quality.merge_reports)")
    parser.add_argument("--merge", nargs="+", metavar="FOLDER",
                        help="merge this study's results from these folders (runs on disjoint seeds); no run")
    args = parser.parse_args(argv)
    if args.merge:
        return merge_folders(args, argv)

    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda was asked for, but no CUDA GPU is visible; run on the CPU (the default) instead.")
        return 2
    names = list(STUDIES) if args.study == "all" else [args.study]
    for name in names:
        if args.estimate:
            found = estimate_seconds(name, args.device, tokenizer=args.tokenizer)
            print(f"{name}: about {found['total_seconds'] / 60:.1f} min for {found['seeds']} seeds on "
                  f"{args.device} with {torch.get_num_threads()} thread(s)")
            continue
        started = time.perf_counter()
        if args.jobs > 1:
            report = run_in_processes(name, args)
        else:
            uptraining = {key: value for key, value in (("groups", args.groups and tuple(args.groups)),
                                                         ("parts", args.part and (args.part,))) if value}
            report = run_chapter_study(name, smoke=args.smoke, device=args.device, seeds=args.seeds,
                                       tokenizer=args.tokenizer, progress=not args.no_progress,
                                       uptraining=uptraining or None)
        report["wall_seconds"] = time.perf_counter() - started
        report["environment"]["git_commit"], report["environment"]["git_clean"] = git_commit(), git_clean()
        report["command"] = command_line(argv)
        path = results.save(results_name(name, args.smoke), report, args.out)
        print_report(report)
        print(f"  wrote {path} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
