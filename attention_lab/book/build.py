"""Build the chapters: percent-format sources in ``notebooks/src/`` -> executed ``notebooks/*.ipynb``.

A source is a Python file whose cells start with ``# %%`` (code) or ``# %% [markdown]`` (markdown,
each line prefixed by ``# ``). The build stamps every chapter with a Colab badge and the setup cell
(from ``[project.urls] Repository`` in pyproject.toml: a fork changes that one line), executes it
top to bottom in a fresh kernel, and regenerates the student version (solutions removed).

    python -m attention_lab.book build            # every chapter
    python -m attention_lab.book build 01 02      # chapters whose file name starts with 01, 02
    python -m attention_lab.book build 10 --no-execute
    python -m attention_lab.book text 10          # take the prose from the source, keep the outputs

``text`` is for chapters whose committed outputs come from a GPU: it rewrites the markdown cells from
the source and keeps every code cell's outputs, and refuses when any code cell changed (then the
chapter has to be executed again, on the GPU: ``benchmarks/run_all_notebooks.py --write-dir``).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]  # the repository checkout
NOTEBOOKS = ROOT / "notebooks"
SOURCES = NOTEBOOKS / "src"


def repository_url() -> str:
    """The repository's address from pyproject.toml (``[project.urls] Repository``)."""
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^Repository\s*=\s*"(https://github\.com/[^"]+)"', text, re.MULTILINE)
    if match is None:
        raise ValueError("pyproject.toml needs [project.urls] Repository = \"https://github.com/OWNER/NAME\"")
    return match.group(1).rstrip("/")


def badge_cell(notebook_path: str) -> nbformat.NotebookNode:
    slug = repository_url().removeprefix("https://github.com/")
    url = f"https://colab.research.google.com/github/{slug}/blob/main/{notebook_path}"
    return nbformat.v4.new_markdown_cell(
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})")


def setup_cell() -> nbformat.NotebookNode:
    url = repository_url()
    return nbformat.v4.new_code_cell(
        "# Setup: on Colab, install attention_lab from its repository (Colab's own torch is kept);\n"
        "# anywhere else this cell only seeds, picks the device and prints versions.\n"
        "import sys\n"
        "if \"google.colab\" in sys.modules:\n"
        "    import subprocess\n"
        f"    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"attention_lab @ git+{url}\"], check=True)\n"
        "\n"
        "from attention_lab.book.setup_cell import setup\n"
        "device = setup(seed=0)")


def parse_source(text: str) -> list[nbformat.NotebookNode]:
    """Split a percent-format source into notebook cells (markdown lines lose their ``# `` prefix)."""
    cells = []
    for chunk in re.split(r"^# %%", text, flags=re.MULTILINE)[1:]:
        header, _, body = chunk.partition("\n")
        body = body.strip("\n")
        if "[markdown]" in header:
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines()]
            cells.append(nbformat.v4.new_markdown_cell("\n".join(lines)))
        else:
            cells.append(nbformat.v4.new_code_cell(body))
    return cells


def chapter_notebook(source: Path) -> nbformat.NotebookNode:
    """The unexecuted notebook for a source file: title cell, badge, setup cell, then the source's cells."""
    cells = parse_source(source.read_text(encoding="utf-8"))
    if not cells or cells[0].cell_type != "markdown":
        raise ValueError(f"{source.name} must start with a markdown title cell")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [cells[0], badge_cell(f"notebooks/{source.stem}.ipynb"), setup_cell(), *cells[1:]]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def cell_sources(notebook: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """(cell type, source) pairs: what must agree between a source file and its committed notebook."""
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


def this_device() -> str:
    """The GPU's name, or "CPU": where a notebook executed here gets its outputs."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def executed_on(notebook: nbformat.NotebookNode) -> str | None:
    """Where the notebook's outputs were computed ("CPU", a GPU's name), or None when it does not say."""
    return notebook.metadata.get("attention_lab", {}).get("executed_on")


def execute(notebook: nbformat.NotebookNode, timeout: int = 1200) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel started in notebooks/ (raises on the first error); records the device."""
    from nbclient import NotebookClient

    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = coalesce_streams(cell.outputs)
    notebook.metadata["attention_lab"] = {"executed_on": this_device()}
    return notebook


_OVERWRITTEN = re.compile(r"[^\n]*\r(?!\n)")  # a line's text up to a carriage return that rewrites it


def coalesce_streams(outputs: list) -> list:
    """Merge *consecutive* stream outputs of one name (stdout, stderr) and keep, of every line a progress bar
    rewrote with carriage returns, only its last state — what a reader saw when the cell finished (a bar at
    100 %), not hundreds of updates. Outputs keep their order: a print after a plot stays after it."""
    merged: list = []
    for output in outputs:
        if output.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream" \
                and merged[-1].get("name") == output.get("name"):
            merged[-1]["text"] += output["text"]
        else:
            merged.append(output)
    for output in merged:
        if output.get("output_type") == "stream":
            output["text"] = _OVERWRITTEN.sub("", output["text"].replace("\r\n", "\n"))
    return merged


def chapter_title(source: Path) -> str:
    """The chapter's title: its first markdown line without the leading '# '."""
    first = parse_source(source.read_text(encoding="utf-8"))[0].source.splitlines()[0]
    return first.lstrip("# ").strip()


def chapter_table() -> str:
    """README's chapter table: one row per source, with links to the notebook, its student version and Colab."""
    slug = repository_url().removeprefix("https://github.com/")
    rows = ["| chapter | notebook | student version | Colab |", "|---|---|---|---|"]
    for source in sorted(SOURCES.glob("*.py")):
        name = f"notebooks/{source.stem}.ipynb"
        colab = f"https://colab.research.google.com/github/{slug}/blob/main/{name}"
        rows.append(f"| {chapter_title(source)} | [{source.stem}]({name}) | "
                    f"[student](notebooks/student/{source.stem}.ipynb) | "
                    f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab}) |")
    return "\n".join(rows)


def _replace_between(readme: str, marker: str, table: str) -> str:
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in readme or end not in readme:
        raise ValueError(f"README.md needs the markers {start} and {end}")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{table}\n{end}{tail}"


def parts_of_the_book() -> str:
    """README's chapter → notebook → library modules → checker → tests table (:mod:`attention_lab.book.chapters`)."""
    from attention_lab.book.chapters import parts_table

    titles = {s.stem[:2]: (chapter_title(s), s.stem) for s in sorted(SOURCES.glob("*.py"))}
    return parts_table(titles)


def readme_with_chapters(readme: str) -> str:
    """``readme`` with the chapter table (:func:`chapter_table`) and the parts table (:func:`parts_of_the_book`)
    written between their markers."""
    return _replace_between(_replace_between(readme, "chapters", chapter_table()), "parts", parts_of_the_book())


def stamp_readme() -> None:
    path = ROOT / "README.md"
    path.write_text(readme_with_chapters(path.read_text(encoding="utf-8")), encoding="utf-8")


def build(prefixes: list[str], run: bool = True, force: bool = False) -> None:
    """Convert, execute and write the chosen chapters (all when ``prefixes`` is empty), then the README table.

    A chapter whose committed outputs come from a GPU is kept, not rebuilt, on a machine without one
    (the CPU would replace real measurements), unless ``force``.
    """
    from attention_lab.exercises.student import write_student_notebook

    sources = sorted(SOURCES.glob("*.py"))
    chosen = [s for s in sources if not prefixes or any(s.stem.startswith(p) for p in prefixes)]
    if not chosen:
        raise ValueError(f"no source in {SOURCES} matches {prefixes}")
    for source in chosen:
        started = time.perf_counter()
        target = NOTEBOOKS / f"{source.stem}.ipynb"
        committed = executed_on(nbformat.read(target, as_version=4)) if target.exists() else None
        if not force and committed not in (None, "CPU") and this_device() == "CPU":
            print(f"kept {target.name}: its outputs come from {committed}. Execute it on a GPU "
                  f"(benchmarks/run_all_notebooks.py --write-dir), change only its prose with "
                  f"`python -m attention_lab.book text {source.stem[:2]}`, or pass --force")
            continue
        notebook = chapter_notebook(source)
        if run:
            execute(notebook)
        nbformat.write(notebook, target)
        write_student_notebook(target)
        print(f"built {target.parent.name}/{target.name} ({'executed' if run else 'not executed'}) "
              f"in {time.perf_counter() - started:.0f} s")
    stamp_readme()


def update_text(prefix: str) -> Path:
    """Rewrite one chapter's markdown from its source, keeping the committed outputs of its code cells."""
    from attention_lab.exercises.student import write_student_notebook

    sources = [s for s in sorted(SOURCES.glob("*.py")) if s.stem.startswith(prefix)]
    if len(sources) != 1:
        raise ValueError(f"{prefix!r} must name exactly one chapter, matched {[s.stem for s in sources]}")
    target = NOTEBOOKS / f"{sources[0].stem}.ipynb"
    committed = nbformat.read(target, as_version=4)
    fresh = chapter_notebook(sources[0])
    old_code = [c for c in committed.cells if c.cell_type == "code"]
    new_code = [c for c in fresh.cells if c.cell_type == "code"]
    if [c.source for c in old_code] != [c.source for c in new_code]:
        raise ValueError(f"the code cells of {sources[0].name} differ from {target.name}: execute the chapter "
                         f"again (`python -m attention_lab.book build {prefix}`, or on the GPU)")
    for new, old in zip(new_code, old_code):
        new.outputs, new.execution_count = old.outputs, old.execution_count
    fresh.metadata = committed.metadata
    nbformat.write(fresh, target)
    write_student_notebook(target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m attention_lab.book", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser = sub.add_parser("build", help="convert, execute and write chapters (and their student versions)")
    build_parser.add_argument("chapters", nargs="*", help="file-name prefixes, e.g. 01 02 (default: all)")
    build_parser.add_argument("--no-execute", action="store_true", help="write without running")
    build_parser.add_argument("--force", action="store_true", help="rebuild chapters executed on a GPU here too")
    sub.add_parser("readme", help="refresh only README.md's chapter table")
    text_parser = sub.add_parser("text", help="take one chapter's prose from its source, keeping its outputs")
    text_parser.add_argument("chapter", help="file-name prefix, e.g. 10")
    args = parser.parse_args(argv)
    if args.command == "readme":
        stamp_readme()
    elif args.command == "text":
        print(f"updated the text of {update_text(args.chapter).relative_to(ROOT)}")
    else:
        build(args.chapters, run=not args.no_execute, force=args.force)


if __name__ == "__main__":
    main(sys.argv[1:])
