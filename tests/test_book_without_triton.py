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
