"""Triton when it is installed, and a clear stand-in when it is not: every kernel module imports from here.

Triton ships wheels for Linux only, so a lecturer's macOS or Windows laptop has none. The kernel modules
write ``from attention_lab.kernels.optional_triton import tl, triton`` instead of importing Triton
directly. With Triton installed that *is* Triton. Without it, the names a kernel module touches while it
is being imported (``@triton.jit``, ``@triton.autotune``, ``triton.Config``, ``tl.constexpr``,
``triton.cdiv``, ``triton.next_power_of_2``) are small stand-ins, so the module imports and its plain
Python parts (configs, shared-memory estimates, launch plans) still work; launching a kernel raises
:class:`TritonUnavailableError` with one sentence saying what is missing. Chapters test
:data:`TRITON_AVAILABLE` and take their PyTorch path.
"""

from __future__ import annotations

from typing import Any, Callable

try:
    import triton
    import triton.language as tl

    TRITON_AVAILABLE = True
except ImportError:  # no wheel for this platform (macOS, Windows), or not installed
    TRITON_AVAILABLE = False

MISSING_MESSAGE = ("this needs the triton package, which installs on Linux only (pip install triton); "
                   "without it the book's PyTorch paths compute the same results")


class TritonUnavailableError(RuntimeError):
    """A Triton kernel was launched on a machine without Triton."""

    def __init__(self, what: str = "a Triton kernel") -> None:
        super().__init__(f"{what}: {MISSING_MESSAGE}")


class _KernelPlaceholder:
    """What ``@triton.jit`` gives without Triton: importable, nameable, but it raises when launched."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "kernel")
        self.__doc__ = getattr(fn, "__doc__", None)

    def _refuse(self, *args: Any, **kwargs: Any):
        raise TritonUnavailableError(f"the Triton kernel {self.__name__}")

    __call__ = _refuse
    run = _refuse
    warmup = _refuse

    def __getitem__(self, grid: Any) -> Callable:
        return self._refuse


class _Config:
    """Stand-in for ``triton.Config``: the same fields, so configs can be listed and pruned without Triton."""

    def __init__(self, kwargs: dict, num_warps: int = 4, num_stages: int = 3, num_ctas: int = 1,
                 maxnreg: int | None = None, pre_hook: Callable | None = None) -> None:
        self.kwargs, self.num_warps, self.num_stages = dict(kwargs), num_warps, num_stages
        self.num_ctas, self.maxnreg, self.pre_hook = num_ctas, maxnreg, pre_hook

    def all_kwargs(self) -> dict:
        return {**self.kwargs, "num_warps": self.num_warps, "num_stages": self.num_stages, "num_ctas": self.num_ctas}

    def __repr__(self) -> str:
        return f"Config({self.kwargs}, num_warps={self.num_warps}, num_stages={self.num_stages})"


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for host code (grids, splits). ``triton.cdiv`` is a constexpr function in Triton 3.x, and each
    call from Python pays its argument unwrapping: microseconds per call, several per launch."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``) for host code, as :func:`cdiv` is to ``triton.cdiv``."""
    return 1 << max(0, int(n) - 1).bit_length()


class _TritonPlaceholder:
    """The few ``triton.*`` names used at import time by the kernel modules."""

    Config = _Config

    @staticmethod
    def jit(fn: Callable | None = None, **options: Any):
        return _KernelPlaceholder(fn) if fn is not None else _KernelPlaceholder

    @staticmethod
    def autotune(*args: Any, **kwargs: Any) -> Callable:
        return lambda kernel: kernel if isinstance(kernel, _KernelPlaceholder) else _KernelPlaceholder(kernel)

    @staticmethod
    def heuristics(*args: Any, **kwargs: Any) -> Callable:
        return lambda kernel: kernel if isinstance(kernel, _KernelPlaceholder) else _KernelPlaceholder(kernel)

    cdiv = staticmethod(cdiv)
    next_power_of_2 = staticmethod(next_power_of_2)

    def __getattr__(self, name: str):
        raise TritonUnavailableError(f"triton.{name}")


class _constexpr:
    """Stand-in for ``tl.constexpr``: an annotation, and a wrapper of a default value."""

    def __init__(self, value: Any = None) -> None:
        self.value = value


class _LanguagePlaceholder:
    """``triton.language`` without Triton: only ``constexpr`` is real; other names are inert markers."""

    constexpr = _constexpr

    def __getattr__(self, name: str):
        return f"tl.{name} (triton not installed)"


if not TRITON_AVAILABLE:
    triton = _TritonPlaceholder()
    tl = _LanguagePlaceholder()


def require_triton(what: str) -> None:
    """Raise :class:`TritonUnavailableError` naming ``what`` when Triton is not installed."""
    if not TRITON_AVAILABLE:
        raise TritonUnavailableError(what)


__all__ = ["TRITON_AVAILABLE", "TritonUnavailableError", "cdiv", "next_power_of_2", "require_triton", "tl", "triton"]
