"""Triton's CPU interpreter (``TRITON_INTERPRET=1``): whether the kernels run under it, and one fix for older Triton.

Every kernel module (``flash.triton_attention``, ``kernels.decode_attention``, ``kernels.latent_decode``)
imports this module first, and asks :func:`interpreting` — the one meaning used everywhere: *are this
process's Triton kernels the interpreter's?* Triton decides that once per kernel, when ``@triton.jit``
builds it (it reads ``TRITON_INTERPRET`` then), so the variable must be set before the kernel modules are
imported; setting or clearing it later changes neither the kernels nor the answer.

Triton up to 3.6 — the version on Colab and on the lent GPU — turns a scalar inside an
interpreted kernel into ``int()`` of a one-element array when it is used as a loop bound
(``for start in range(lo, hi, BLOCK)``); NumPy 2.4 and later refuse that ("only 0-dimensional arrays
can be converted to Python scalars"). Triton 3.9 squeezes the array first. :func:`patch_loop_bounds`
installs the same squeeze in an older interpreter; it changes nothing for compiled kernels.

The interpreter's ``tl.dot`` multiplies bfloat16 operands as their raw 16-bit patterns (it keeps bf16 as
``uint16`` and converts only 8-bit floats before ``np.matmul``: triton-lang/triton#11584), so an
interpreted bf16 kernel returns values off by ~1e9. :func:`refuse_interpreted_bfloat16` is the one check
every kernel entry point makes before launching.
"""

from __future__ import annotations

import numpy as np
import torch

from attention_lab.kernels.optional_triton import TRITON_AVAILABLE, triton


@triton.jit
def _probe():
    """A kernel built when this module is imported, like every kernel module's (they import this one first)."""
    pass


def interpreting() -> bool:
    """True when this process's Triton kernels run under the CPU interpreter.

    That is, ``TRITON_INTERPRET=1`` was in the environment when the kernel modules were imported; then
    the kernels take CPU tensors. False: they are compiled for a CUDA GPU.
    """
    return TRITON_AVAILABLE and not isinstance(_probe, triton.runtime.jit.JITFunction)


def refuse_interpreted_bfloat16(dtype: torch.dtype, what: str, argument: str = "q") -> None:
    """Raise ``ValueError`` when ``what`` (a kernel entry point) would run bfloat16 under the interpreter.

    The interpreter's ``tl.dot`` is wrong for bf16 (triton-lang/triton#11584): the answers are off by ~1e9,
    not rounded. Compiled kernels on a GPU are unaffected, so this refuses nothing there.
    """
    if dtype == torch.bfloat16 and interpreting():
        raise ValueError(f"{argument} has dtype bfloat16, which {what} cannot run under Triton's CPU interpreter "
                         f"(TRITON_INTERPRET=1): the interpreter's tl.dot multiplies bf16 bit patterns and returns "
                         f"values off by ~1e9 (triton-lang/triton#11584); pass float32 (exact, and the fastest "
                         f"there) or float16 tensors instead, or run on a CUDA GPU")


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
