"""Every chapter notebook matches its source, carries the badge and setup cell, and its student version is current."""


import nbformat
import pytest

from attention_lab.book.build import NOTEBOOKS, SOURCES, cell_sources, chapter_notebook, repository_url
from attention_lab.exercises.student import BEGIN, END, strip_solutions, student_path, student_version

SOURCE_FILES = sorted(SOURCES.glob("*.py"))


def test_every_source_has_a_notebook_and_back():
    assert SOURCE_FILES, "no chapter sources found"
    built = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    assert built == {p.stem for p in SOURCE_FILES}


@pytest.mark.parametrize("source", SOURCE_FILES, ids=lambda p: p.stem)
def test_notebook_matches_source_and_is_executed(source):
    committed = nbformat.read(NOTEBOOKS / f"{source.stem}.ipynb", as_version=4)
    assert cell_sources(committed) == cell_sources(chapter_notebook(source)), (
        f"{source.stem}.ipynb is stale: run `python -m attention_lab.book build {source.stem[:2]}`")
    code = [c for c in committed.cells if c.cell_type == "code" and c.source.strip()]
    assert all(c.execution_count is not None for c in code), "notebook is not fully executed"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    assert "colab.research.google.com" in committed.cells[1].source
    assert repository_url() in committed.cells[2].source and "google.colab" in committed.cells[2].source


@pytest.mark.parametrize("source", SOURCE_FILES, ids=lambda p: p.stem)
def test_student_notebook_is_current_and_has_exercises(source):
    solved = nbformat.read(NOTEBOOKS / f"{source.stem}.ipynb", as_version=4)
    student = nbformat.read(student_path(NOTEBOOKS / f"{source.stem}.ipynb"), as_version=4)
    assert cell_sources(student) == cell_sources(student_version(solved)), "student notebook is stale"
    joined = "\n".join(c.source for c in student.cells if c.cell_type == "code")
    assert BEGIN not in joined and END not in joined
    assert "raise NotImplementedError" in joined, "every chapter needs at least one exercise"
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")


def test_strip_solutions_keeps_indentation():
    source = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n\nprint(1)"
    stripped = strip_solutions(source)
    assert "return x + 1" not in stripped
    assert "    raise NotImplementedError" in stripped and stripped.endswith("print(1)")
    namespace = {}
    exec(stripped.replace("print(1)", ""), namespace)
    with pytest.raises(NotImplementedError):
        namespace["f"](0)


def test_unbalanced_markers_are_an_error():
    with pytest.raises(ValueError, match="unbalanced"):
        strip_solutions("### BEGIN SOLUTION\nx = 1\n")


def test_readme_chapter_table_is_current_and_ci_runs_the_readme_commands():
    from attention_lab.book.build import ROOT, readme_with_chapters

    readme = (ROOT / "README.md").read_text()
    assert readme == readme_with_chapters(readme), "run `python -m attention_lab.book readme`"
    commands = [line.split("#")[0].strip() for line in readme.split("```bash", 1)[1].split("```", 1)[0].splitlines()
                if line.strip()]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert len(commands) == 2 and all(command in ci for command in commands)


def _tiny_book(tmp_path, monkeypatch, code="x = 1\nprint(x)"):
    import attention_lab.book.build as book

    sources = tmp_path / "src"
    sources.mkdir()
    (sources / "99_tiny.py").write_text(f"# %% [markdown]\n# # Tiny\n#\n# First words.\n\n# %%\n{code}\n")
    monkeypatch.setattr(book, "SOURCES", sources)
    monkeypatch.setattr(book, "NOTEBOOKS", tmp_path)
    notebook = book.chapter_notebook(sources / "99_tiny.py")
    last = notebook.cells[-1]
    last.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1 (on a GPU)\n")]
    nbformat.write(notebook, tmp_path / "99_tiny.ipynb")
    return book, sources / "99_tiny.py"


def test_text_update_keeps_the_outputs(tmp_path, monkeypatch):
    book, source = _tiny_book(tmp_path, monkeypatch)
    source.write_text(source.read_text().replace("First words.", "Better words."))
    book.update_text("99")
    updated = nbformat.read(tmp_path / "99_tiny.ipynb", as_version=4)
    assert any("Better words." in c.source for c in updated.cells)
    assert updated.cells[-1].outputs[0]["text"] == "1 (on a GPU)\n"
    assert (tmp_path / "student" / "99_tiny.ipynb").exists()


def test_text_update_refuses_changed_code(tmp_path, monkeypatch):
    book, source = _tiny_book(tmp_path, monkeypatch)
    source.write_text(source.read_text().replace("x = 1", "x = 2"))
    with pytest.raises(ValueError, match="execute the chapter again"):
        book.update_text("99")
    with pytest.raises(ValueError, match="exactly one chapter"):
        book.update_text("98")


def test_build_keeps_a_chapter_executed_on_a_gpu(tmp_path, monkeypatch, capsys):
    book, _ = _tiny_book(tmp_path, monkeypatch)
    monkeypatch.setattr(book, "stamp_readme", lambda: None)
    monkeypatch.setattr(book, "this_device", lambda: "CPU")
    path = tmp_path / "99_tiny.ipynb"
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata["attention_lab"] = {"executed_on": "NVIDIA H100 80GB HBM3"}
    nbformat.write(notebook, path)
    book.build(["99"], run=False)
    assert "kept 99_tiny.ipynb: its outputs come from NVIDIA H100" in capsys.readouterr().out
    assert nbformat.read(path, as_version=4).cells[-1].outputs  # the GPU outputs are still there
    book.build(["99"], run=False, force=True)
    assert not nbformat.read(path, as_version=4).cells[-1].outputs


def test_notebooks_record_where_they_were_executed():
    """Every committed chapter names the device its outputs come from, and its setup cell's output agrees."""
    from attention_lab.book.build import executed_on

    for source in SOURCE_FILES:
        notebook = nbformat.read(NOTEBOOKS / f"{source.stem}.ipynb", as_version=4)
        where = executed_on(notebook)
        assert where, f"{source.stem} does not record where it was executed"
        setup_output = "".join(o.get("text", "") for o in notebook.cells[2].outputs)
        assert ("device: cuda" in setup_output) == (where != "CPU"), (source.stem, where)
