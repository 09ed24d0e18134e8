"""Which library modules and tests belong to which chapter: the map README's table is generated from.

A contributor adding chapter 14 writes four files — ``notebooks/src/14_topic.py`` (the chapter), its
modules in ``attention_lab/`` (listed here under ``"14"``), ``attention_lab/exercises/ch14.py`` (its
checkers) and ``tests/test_ch14_topic.py`` — and the table follows. Tests are found by name
(``tests/test_chNN_*.py``); a test of the book checks that every module of the package is listed here
once, under a chapter or under the book's own tooling.
"""

from __future__ import annotations

from pathlib import Path

# chapter prefix -> the modules it introduces (dotted names below attention_lab)
CHAPTER_MODULES: dict[str, tuple[str, ...]] = {
    "00": ("additive", "bottleneck"),
    "01": ("attention", "masks", "toy_sentence", "seed_numbers", "positions", "costs.timing"),
    "02": ("model", "data", "train", "generate", "attention_maps"),
    "03": ("caches.contiguous", "caches.sizes", "costs.step_work"),
    "04": ("caches.rolling", "receptive_field"),
    "05": ("costs.memory_bound_decode",),
    "06": ("uptrain",),
    "07": ("costs.gpu_facts", "costs.roofline", "costs.hbm_traffic"),
    "08": ("flash.online_softmax",),
    "09": ("flash.tiled",),
    "10": ("flash.triton_attention", "flash.triton_configs", "flash.triton_steps", "flash.benchmark_report",
           "flash.gluon_attention", "flash.gluon_backward", "flash.hopper",
           "kernels.common", "kernels.interpreter", "kernels.optional_triton",
           "kernels.compile_check"),
    "11": ("caches.paged", "caches.paged_cost", "caches.serving", "caches.fragmentation", "kernels.decode_attention", "kernels.split_k"),
    "12": ("mla", "mla_study", "rope", "kernels.latent_decode"),
    "13": ("side_by_side", "recall", "quality"),
}
# used by every chapter: argument checks, building the book, grading
BOOK_MODULES: tuple[str, ...] = ("validation", "progress", "book.build", "book.setup_cell", "book.plots",
                                 "book.results", "book.chapters", "exercises.core", "exercises.student",
                                 "exercises.registry", "exercises.grade")

PACKAGE = Path(__file__).resolve().parent.parent
ROOT = PACKAGE.parent


def module_path(name: str) -> str:
    """``"caches.paged"`` -> ``"attention_lab/caches/paged.py"``."""
    return "attention_lab/" + name.replace(".", "/") + ".py"


def chapter_tests(prefix: str, tests_dir: Path | None = None) -> list[str]:
    """The test files of chapter ``prefix``: ``tests/test_<prefix>_*.py`` (relative paths, sorted)."""
    folder = ROOT / "tests" if tests_dir is None else Path(tests_dir)
    return sorted(f"tests/{p.name}" for p in folder.glob(f"test_ch{prefix}_*.py"))


def parts_table(titles: dict[str, tuple[str, str]]) -> str:
    """README's table: chapter → notebook → library modules → checker → tests (markdown links).

    ``titles`` maps a chapter prefix to its (title, notebook stem), e.g. ``{"01": ("01 · Self-attention",
    "01_self_attention")}``.
    """
    rows = ["| chapter | notebook | library modules | checker | tests |", "|---|---|---|---|---|"]
    for prefix, modules in CHAPTER_MODULES.items():
        title, stem = titles[prefix]
        code = ", ".join(f"[`{m}`]({module_path(m)})" for m in modules)
        checker = f"[`exercises/ch{prefix}.py`](attention_lab/exercises/ch{prefix}.py)"
        tests = ", ".join(f"[`{Path(t).name}`]({t})" for t in chapter_tests(prefix))
        rows.append(f"| {title} | [{stem}](notebooks/{stem}.ipynb) | {code} | {checker} | {tests} |")
    return "\n".join(rows)
