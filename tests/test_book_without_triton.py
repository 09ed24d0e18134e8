"""A lecturer's macOS or Windows laptop has no triton wheel: every module imports without it, and a kernel
launch there says in one sentence what is missing (never a raw ImportError or stack trace from deep inside)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Runs in a fresh Python in which `import triton` fails as it does where no wheel exists.
BLOCK_TRITON = textwrap.dedent("""
    import importlib.abc, sys
    class NoTriton(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ModuleNotFoundError("No module named 'triton'")
            return None
    sys.meta_path.insert(0, NoTriton())
""")


def run_without_triton(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TRITON + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)


def test_every_module_imports_without_triton():
    done = run_without_triton("""
        import importlib, pkgutil
        import attention_lab
        names = [m.name for m in pkgutil.walk_packages(attention_lab.__path__, "attention_lab.")]
        for name in names:
            if name.endswith("__main__"):
                continue
            importlib.import_module(name)
        from attention_lab.kernels.optional_triton import TRITON_AVAILABLE
        assert not TRITON_AVAILABLE
        assert "triton" not in sys.modules
        print("imported", len(names))
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 40


def test_kernels_say_what_they_need_without_triton():
    done = run_without_triton("""
        import torch
        from attention_lab.kernels.optional_triton import TritonUnavailableError
        from attention_lab.flash.triton_attention import flash_attention
        from attention_lab.kernels.decode_attention import contiguous_decode
        from attention_lab.flash import triton_configs
        q = torch.randn(1, 2, 4, 16)
        for call in (lambda: flash_attention(q, q, q), lambda: contiguous_decode(q[:, :, :1], q, q)):
            try:
                call()
            except TritonUnavailableError as error:
                print("refused:", error)
            else:
                raise AssertionError("a kernel ran without triton")
        print("configs listed:", len(triton_configs.configs_for("forward", 64, 2, 80)))
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("refused:") == 2 and "pip install triton" in done.stdout
    assert "configs listed:" in done.stdout


def test_kernel_chapters_run_without_triton(tmp_path):
    """Chapters 10 and 11, executed top to bottom in a kernel whose Python cannot import triton: no error output.

    The kernel is started with PYTHONPATH pointing to a folder whose sitecustomize.py installs the blocking finder,
    so the notebook's own cells meet exactly what a macOS or Windows laptop gives them."""
    import os

    import nbformat

    from attention_lab.book.build import NOTEBOOKS

    (tmp_path / "sitecustomize.py").write_text(BLOCK_TRITON)
    runner = textwrap.dedent("""
        import sys
        import nbformat
        from nbclient import NotebookClient
        notebook = nbformat.read(sys.argv[1], as_version=4)
        NotebookClient(notebook, timeout=600, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": sys.argv[2]}}).execute()
        nbformat.write(notebook, sys.argv[1])
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",)}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(ATTENTION_LAB_OFFLINE="1", MPLBACKEND="module://matplotlib_inline.backend_inline", CUDA_VISIBLE_DEVICES="")
    for prefix in ("10_", "11_"):
        committed = next(NOTEBOOKS.glob(f"{prefix}*.ipynb"))
        path = tmp_path / committed.name
        notebook = nbformat.read(committed, as_version=4)
        probe = "import sys; print('TRITON_LOADED', 'triton' in sys.modules)"
        notebook.cells.append(nbformat.v4.new_code_cell(probe))
        nbformat.write(notebook, path)
        done = subprocess.run([sys.executable, "-c", runner, str(path), str(NOTEBOOKS)], env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        ran = nbformat.read(path, as_version=4)
        errors = [f"{o.get('ename')}: {o.get('evalue')}" for cell in ran.cells if cell.cell_type == "code"
                  for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{committed.stem} without triton: {errors}"
        assert "TRITON_LOADED False" in "".join(o.get("text", "") for o in ran.cells[-1].outputs)


def test_the_host_helpers_are_triton_s_integer_functions_without_their_cost():
    """cdiv and next_power_of_2 (host code: grids, splits, padded sizes) give what triton.cdiv and
    triton.next_power_of_2 give, with or without Triton installed: the triton ones are constexpr functions in
    Triton 3.x, microseconds per call from Python."""
    from attention_lab.kernels.optional_triton import TRITON_AVAILABLE, _TritonPlaceholder, cdiv, next_power_of_2

    for a in range(0, 300):
        for b in (1, 2, 3, 16, 64, 128):
            assert cdiv(a, b) == -(-a // b) == _TritonPlaceholder.cdiv(a, b)
            assert cdiv(a, b) * b >= a > (cdiv(a, b) - 1) * b or a == 0
    for n in range(1, 5000):
        p = next_power_of_2(n)
        assert p >= n and p & (p - 1) == 0 and p // 2 < n and _TritonPlaceholder.next_power_of_2(n) == p
    if TRITON_AVAILABLE:
        import triton

        assert all(next_power_of_2(n) == triton.next_power_of_2(n) for n in range(1, 70000))
        assert all(cdiv(a, b) == triton.cdiv(a, b) for a in range(0, 500) for b in range(1, 130))
