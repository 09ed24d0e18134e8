"""The chapter → modules → checker → tests map behind README's table covers the whole package, once."""

import pkgutil

import attention_lab
from attention_lab.book.build import SOURCES
from attention_lab.book.chapters import BOOK_MODULES, CHAPTER_MODULES, ROOT, chapter_tests, module_path


def package_modules() -> set[str]:
    """Every module of attention_lab, dotted below it, without package __init__/__main__ and the per-chapter checkers."""
    names = set()
    for info in pkgutil.walk_packages(attention_lab.__path__, "attention_lab."):
        name = info.name.removeprefix("attention_lab.")
        if info.ispkg or name.endswith("__main__") or name.startswith("exercises.ch"):
            continue  # packages, entry points, and each chapter's checker (its own column of the table)
        names.add(name)
    return names


def test_every_module_is_in_exactly_one_place():
    listed = [m for modules in CHAPTER_MODULES.values() for m in modules] + list(BOOK_MODULES)
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert set(listed) == package_modules()
    assert all((ROOT / module_path(m)).is_file() for m in listed)


def test_every_chapter_has_a_source_a_checker_and_tests():
    prefixes = sorted(s.stem[:2] for s in SOURCES.glob("*.py"))
    assert sorted(CHAPTER_MODULES) == prefixes
    for prefix in prefixes:
        assert (ROOT / "attention_lab" / "exercises" / f"ch{prefix}.py").is_file()
        assert chapter_tests(prefix), f"chapter {prefix} has no tests/test_ch{prefix}_*.py"


def test_every_test_file_names_its_chapter_or_the_book():
    names = sorted(p.name for p in (ROOT / "tests").glob("test_*.py"))
    strays = [n for n in names if not (n.startswith("test_book_") or n.startswith("test_all_chapters_")
                                       or (n.startswith("test_ch") and n[7:9].isdigit() and n[7:9] in CHAPTER_MODULES))]
    assert not strays, f"test files named by neither chapter nor book: {strays}"


def test_a_built_chapter_keeps_each_progress_bar_as_its_last_state_and_outputs_in_order():
    """tqdm's text bar writes hundreds of carriage-return updates; the build keeps what a reader saw at the end
    (the bar at 100 %), merges only consecutive streams of one name, and never moves a print past a plot."""
    from attention_lab.book.build import coalesce_streams

    outputs = [{"output_type": "stream", "name": "stdout", "text": "before\n"},
               *({"output_type": "stream", "name": "stderr", "text": f"\rtraining: {p:3d}%| {p}/100"} for p in range(101)),
               {"output_type": "stream", "name": "stderr", "text": "\n"},
               {"output_type": "display_data", "data": {"text/plain": "<Figure>"}},
               {"output_type": "stream", "name": "stdout", "text": "after\r\n"}]
    kept = coalesce_streams(outputs)
    assert [o["output_type"] for o in kept] == ["stream", "stream", "display_data", "stream"]
    assert kept[1]["text"] == "training: 100%| 100/100\n" and kept[3]["text"] == "after\n"


def test_the_progress_bar_import_is_silent_without_ipywidgets():
    """Where ipywidgets is missing (the build, CI) tqdm.auto warns once at import; the book's bar import
    silences exactly that warning, so no chapter's committed output starts with it."""
    import subprocess
    import sys

    program = """
import sys, types, warnings
sys.modules["ipywidgets"] = None  # not installed
sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")  # as inside a Jupyter kernel
ipython = types.ModuleType("IPython")
ipython.get_ipython = lambda: type("ZMQInteractiveShell", (), {})()
sys.modules["IPython"] = ipython
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    exec(sys.argv[1])
print(sum("IProgress" in str(w.message) for w in caught))
"""
    for source, expected in (("from tqdm.auto import tqdm", "1"),  # the warning this test is about
                             ("from attention_lab.progress import tqdm; import attention_lab.train, attention_lab.quality", "0")):
        done = subprocess.run([sys.executable, "-c", program, source], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.split() == [expected], (source, done.stdout, done.stderr[-2000:])
