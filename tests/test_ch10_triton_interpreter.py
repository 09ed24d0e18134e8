"""The interpreter fix for Triton ≤3.6: loop bounds held as one-element arrays still index.

CI has a newer Triton, whose interpreter already squeezes; these tests therefore install a stand-in
for Triton 3.6's ``_patch_lang_tensor`` (``int()`` of the raw array) and check the fix on top of it.
"""

import numpy as np
import pytest

from attention_lab.kernels import interpreter as triton_interpreter

interpreter = pytest.importorskip("triton.runtime.interpreter")


class _Scope:
    """Records set_attr calls the way the interpreter's patch scope applies them."""

    def set_attr(self, obj, name, value):
        setattr(obj, name, value)


class _Handle:
    def __init__(self, data):
        self.data = data


class _Tensor:
    def __init__(self, data):
        self.handle = _Handle(data)


def _triton_36_style(tensor, scope):
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))


def test_loop_bounds_index_after_the_fix(monkeypatch):
    monkeypatch.setattr(interpreter, "_patch_lang_tensor", _triton_36_style)
    scope = _Scope()
    interpreter._patch_lang_tensor(_Tensor, scope)
    if np.lib.NumpyVersion(np.__version__) >= "2.4.0":  # the failure being fixed
        with pytest.raises(TypeError, match="0-dimensional"):
            range(_Tensor(np.array([7], dtype=np.int32)))
    assert triton_interpreter.patch_loop_bounds()
    interpreter._patch_lang_tensor(_Tensor, scope)
    assert list(range(_Tensor(np.array([2], dtype=np.int32)), _Tensor(np.array([9])), 3)) == [2, 5, 8]
    assert list(range(_Tensor(np.array(4)))) == [0, 1, 2, 3]  # 0-d arrays still work


def test_patching_twice_wraps_once(monkeypatch):
    monkeypatch.setattr(interpreter, "_patch_lang_tensor", _triton_36_style)
    assert triton_interpreter.patch_loop_bounds()
    patched = interpreter._patch_lang_tensor
    assert triton_interpreter.patch_loop_bounds()
    assert interpreter._patch_lang_tensor is patched


def test_unknown_interpreter_layout_is_left_alone(monkeypatch):
    monkeypatch.delattr(interpreter, "_patch_lang_tensor")
    assert triton_interpreter.patch_loop_bounds() is False


def test_interpreting_says_what_the_kernels_are(monkeypatch):
    """One meaning everywhere: are this process's kernels the interpreter's? Fixed when they are built."""
    import os

    import triton

    from attention_lab.flash import triton_attention

    compiled = isinstance(triton_attention._attn_fwd, triton.runtime.jit.JITFunction)
    assert triton_interpreter.interpreting() == (not compiled)
    assert triton_interpreter.interpreting() == (os.environ.get("TRITON_INTERPRET") == "1")  # as set before import
    answer = triton_interpreter.interpreting()
    monkeypatch.setenv("TRITON_INTERPRET", "0" if answer else "1")  # too late: the kernels are built
    assert triton_interpreter.interpreting() == answer
