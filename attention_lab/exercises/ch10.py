"""Chapter 10 — the inner-loop update of the Triton FlashAttention forward kernel.

The student writes ``step(m_i, l_i, acc, qk, v) -> (m_i, l_i, acc)`` in Triton: one key block of
the online softmax, the state in the paper's order (chapters 08–09). The checker plugs it into the
library's real forward kernel (in place of :func:`attention_lab.kernels.common.online_softmax_update`,
which the kernel's inner loop calls) and runs that kernel under Triton's interpreter on CPU tensors, comparing
with the reference attention on odd shapes. In a process whose kernels are compiled for a GPU
(``TRITON_INTERPRET`` unset), the check runs in a fresh Python with the interpreter switched on.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import tempfile
import textwrap
from typing import Callable

import torch

from attention_lab.attention import scaled_dot_product_attention
from attention_lab.exercises.core import ExerciseError, exercise_check, expect_close, random_generator

# (batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim, causal, input scale): odd lengths cross block
# edges; at input scale 10 the scores reach hundreds in log2 units, so exp2 overflows fp32 (past 2^128) unless
# the running maximum is subtracted first — chapter 08's point, which a step without it must fail
_CASES = [(1, 2, 2, 21, 21, 16, False, 2.0), (1, 2, 1, 9, 37, 16, True, 2.0), (1, 2, 1, 17, 45, 16, True, 10.0)]
_TILE = {"BLOCK_M": 16, "BLOCK_N": 16}
_HINT = ("m_new = max(m_i, rowmax(qk)); alpha = exp2(m_i - m_new) rescales BOTH l_i and acc; "
         "p = exp2(qk - m_new) (the scores are already in log2 units: exp2, not exp); "
         "l_i = alpha·l_i + rowsum(p); acc = alpha·acc + p @ v; return (m_new, l_i, acc).")


_LARGE_HINT = ("These scores are large (inputs × 10): exp2 of a raw score overflows fp32 to inf, and inf/inf is "
               "NaN. Subtract the running maximum m_new = max(m_i, rowmax(qk)) — the maximum over every block so "
               "far, not this block's alone — before exp2, and rescale the old state by exp2(m_i - m_new) <= 1.")


def run_forward_with_step(step: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          causal: bool) -> torch.Tensor:
    """The library's Triton forward, interpreted on CPU tensors ``(B, H, N, D)``, with ``step`` as its update."""
    from attention_lab.flash import triton_attention

    with triton_attention.online_softmax_step_replaced(step):
        out, _ = triton_attention.flash_attention_forward(q, k, v, None, causal, None, None, tile=_TILE)
    return out


def check_step_interpreted(step: Callable) -> None:
    """Check ``step`` in this process, which runs Triton's interpreter (``TRITON_INTERPRET=1``): the library's
    forward with ``step`` as its update must equal the reference attention on odd shapes, causal and not."""
    generator = random_generator(10)
    for batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim, causal, scale in _CASES:
        q = torch.randn(batch, n_heads, n_queries, head_dim, generator=generator) * scale
        k = torch.randn(batch, n_kv_heads, n_keys, head_dim, generator=generator) * scale
        v = torch.randn(batch, n_kv_heads, n_keys, head_dim, generator=generator)
        try:
            out = run_forward_with_step(step, q, k, v, causal)
        except Exception as error:  # Triton's interpreter wraps errors raised inside the kernel
            if isinstance(error, NotImplementedError) or "NotImplementedError" in repr(error):
                raise NotImplementedError("the step") from None
            raise ExerciseError(f"online-softmax step: the kernel failed with your step: {error!r}. "
                                f"Return a tuple (m_i, l_i, acc) with the shapes of the docstring.") from None
        expected = scaled_dot_product_attention(q.double(), k.double(), v.double(), causal=causal).float()
        large = scale > 2.0
        what = f"attention with your step (Nq={n_queries}, Nk={n_keys}, causal={causal}, inputs × {scale:g})"
        hint = (_LARGE_HINT + " " + _HINT) if large else _HINT
        expect_close(out, expected, what, hint=hint, atol=1e-4, rtol=1e-4)


def _check_in_subprocess(step: Callable) -> None:
    """Compiled (GPU) process: write the step's source to a file and check it in an interpreted Python."""
    raw = getattr(step, "fn", step)
    try:
        source = textwrap.dedent(inspect.getsource(raw))
    except (OSError, TypeError):
        raise ExerciseError("online-softmax step: cannot read your function's source; define it in a cell "
                            "with `def` (and @triton.jit)") from None
    header = "import torch\nimport triton\nimport triton.language as tl\n\n"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "student_step.py")
        with open(path, "w") as file:
            file.write(header + source)
        program = ("import importlib.util, sys\n"
                   "from attention_lab.exercises import ch10\n"
                   f"spec = importlib.util.spec_from_file_location('student_step', {path!r})\n"
                   "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
                   f"ch10.check_step_interpreted(getattr(module, {raw.__name__!r}))\n")
        # The interpreted check runs exactly as on a machine without a GPU: no CUDA device visible.
        env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
        done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode == 0:
        return
    last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    if last.startswith("NotImplementedError"):
        raise NotImplementedError("the step")
    if "ExerciseError:" in last:
        raise ExerciseError(last.split("ExerciseError:", 1)[1].strip())
    raise ExerciseError(f"online-softmax step: checking it under the interpreter failed: {last}")


@exercise_check("online-softmax step of the Triton forward kernel")
def check_online_softmax_step(step: Callable) -> None:
    """``step(m_i, l_i, acc, qk, v)``: fold one key block into the running state of BLOCK_M query rows.

    ``m_i`` and ``l_i`` ``(BLOCK_M,)`` and ``acc`` ``(BLOCK_M, D)`` fp32; ``qk`` ``(BLOCK_M, BLOCK_N)``
    are scores already multiplied by ``scale · log2(e)`` (masked entries -inf), ``v`` ``(BLOCK_N, D)``.
    Must return the new ``(m_i, l_i, acc)``; the kernel divides ``acc`` by ``l_i`` at the end.
    """
    from attention_lab.kernels.interpreter import interpreting

    if interpreting():
        check_step_interpreted(step)
    else:
        _check_in_subprocess(step)
