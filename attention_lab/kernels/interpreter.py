"""Triton's CPU interpreter (``TRITON_INTERPRET=1``): whether it is on, and one fix for older Triton.

The kernel modules (``flash.triton_attention``, ``decode_kernel``, ``mla_kernel``) import this module
first. Triton up to 3.6 — the version on Colab and on the lent GPU — turns a scalar inside an
interpreted kernel into ``int()`` of a one-element array when it is used as a loop bound
(``for start in range(lo, hi, BLOCK)``); NumPy 2.4 and later refuse that ("only 0-dimensional arrays
can be converted to Python scalars"). Triton 3.9 squeezes the array first. :func:`patch_loop_bounds`
installs the same squeeze in an older interpreter; it changes nothing for compiled kernels.
"""

from __future__ import annotations

import os

import numpy as np


def interpreting() -> bool:
    """True when Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1`` in the environment)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def patch_loop_bounds() -> bool:
    """Make the interpreter's ``tensor.__index__`` accept one-element arrays, as Triton 3.9's does.

    Returns True when the interpreter is patched (now or before), False when there is nothing to patch
    (no interpreter module in this Triton, or one whose layout this fix does not know).
    """
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None:
        return False
    if getattr(original, "squeezes_scalars", False):
        return True

    def patch_lang_tensor(tensor, scope) -> None:  # called at every interpreted launch
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).squeeze()))

    patch_lang_tensor.squeezes_scalars = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True


if interpreting():
    patch_loop_bounds()
