"""Timing and peak-memory helpers used by chapters and benchmarks (CPU and CUDA)."""

from __future__ import annotations

import math
import statistics
import time
import weakref
from typing import Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from attention_lab.progress import tqdm


def run_times(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device | str | None,
              cpu_clock: Callable[[], float]) -> list[float]:
    """Seconds of each of ``repeats`` runs of ``fn()`` after ``warmup`` runs: CUDA events on a GPU, ``cpu_clock``
    (``time.perf_counter`` for wall time, ``time.process_time`` for CPU time) on the CPU."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = cpu_clock()
            fn()
            times.append(cpu_clock() - t0)
    return times


def time_function(fn: Callable[[], object], warmup: int = 2, repeats: int = 5, device: torch.device | str | None = None) -> float:
    """Median wall time of ``fn()`` in seconds (CUDA events on a GPU, perf_counter on the CPU)."""
    return statistics.median(run_times(fn, warmup, repeats, device, time.perf_counter))


class _PeakTracker(TorchDispatchMode):
    """Counts the bytes of every tensor storage created inside the mode, and their peak while alive."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for tensor in torch.utils._pytree.tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in self._seen or key in inputs or storage.nbytes() == 0:
                continue  # a view (or in-place result) of a storage that already existed
            self._seen.add(key)
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._release, key, storage.nbytes())
        return out


def peak_memory(fn: Callable[[], object], device: torch.device | str | None = None) -> int:
    """Peak bytes of tensors allocated while ``fn()`` runs, beyond what existed before.

    CUDA: the allocator's ``max_memory_allocated``. CPU: every tensor storage created inside ``fn``
    is counted until it is freed (a dispatch mode; exact for PyTorch tensors).
    """
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    tracker = _PeakTracker()
    with tracker:
        result = fn()
    del result
    return tracker.peak


def least_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
               device: torch.device | str | None = None) -> float:
    """The fastest of ``repeats`` runs of ``fn()``, in seconds, after ``warmup`` runs.

    Interference (other jobs on a shared machine, a cache flushed by someone else) only ever adds time, so
    the minimum is the cleanest estimate of what ``fn`` itself costs. CPU: process CPU time (equal to wall
    time when torch uses one thread, as the chapters that time set); CUDA: CUDA events.
    """
    return min(run_times(fn, warmup, repeats, device, time.process_time))


def growth_exponent(sizes: list[float], values: list[float]) -> float:
    """The exponent ``a`` of the least-squares fit ``value ≈ c · size^a`` (the slope of the log-log line):
    2 for a cost that quadruples when the size doubles."""
    if len(sizes) != len(values) or len(sizes) < 2:
        raise ValueError(f"sizes and values must be two lists of the same length >= 2, got {len(sizes)} and {len(values)}")
    if min(sizes) <= 0 or min(values) <= 0:
        raise ValueError("sizes and values must be positive to fit a power law")
    x = torch.tensor(sizes, dtype=torch.float64).log()
    y = torch.tensor(values, dtype=torch.float64).log()
    x_mean, y_mean = x.mean(), y.mean()
    return (((x - x_mean) * (y - y_mean)).sum() / ((x - x_mean) ** 2).sum()).item()


def attention_cost_curve(attention: Callable, lengths: list[int], head_dim: int = 64, n_heads: int = 4,
                         device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                         causal: bool = False, repeats: int = 5) -> dict[str, list[float]]:
    """Measure ``attention(q, k, v, causal=...)`` at each sequence length: least seconds and peak extra bytes.

    Returns ``{"n": lengths, "seconds": [...], "peak_bytes": [...]}`` for q, k, v ``(1, n_heads, n, head_dim)``;
    each time is the fastest of ``repeats`` runs (:func:`least_time`). Choose lengths whose time is well above
    the fixed cost of a call (on a CPU, N of a few hundred and up), or the curve shows that overhead instead.
    """
    seconds, peaks = [], []
    for n in lengths:
        q, k, v = (torch.randn(1, n_heads, n, head_dim, device=device, dtype=dtype) for _ in range(3))
        seconds.append(least_time(lambda: attention(q, k, v, causal=causal), repeats=repeats, device=device))
        peaks.append(peak_memory(lambda: attention(q, k, v, causal=causal), device=device))
    return {"n": list(lengths), "seconds": seconds, "peak_bytes": peaks}


def least_times(make_fn: Callable[[object, object], Callable[[], object]], keys: Sequence, sizes: Sequence,
                rounds: int = 3, repeats: int = 5, warmup: int = 1, device: torch.device | str | None = None,
                progress: bool = True, desc: str = "timing") -> dict[object, list[float]]:
    """The least seconds of ``make_fn(key, size)()`` for every key and size: ``{key: [seconds per size]}``.

    Each (key, size) is timed ``repeats`` times (after ``warmup`` runs, :func:`least_time`) in each of
    ``rounds`` rounds, and keeps its fastest run. Within a round the keys take turns at every size, so a
    disturbance (another job on a shared machine) lands on all keys alike instead of on one key's whole
    series — a median of a few runs taken one key after the other can rank two equal functions wrongly.
    ``make_fn`` is called once per (key, size) and round, outside the timed region. One kept progress bar
    counts the (round, size, key) measurements and ends at 100 %.
    """
    for name, value in (("rounds", rounds), ("repeats", repeats)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    keys, sizes = list(keys), list(sizes)
    if not keys or not sizes:
        raise ValueError(f"keys and sizes must be non-empty, got {len(keys)} keys and {len(sizes)} sizes")
    best = {key: [math.inf] * len(sizes) for key in keys}
    bar = tqdm(total=rounds * len(sizes) * len(keys), desc=desc, unit="point", leave=True, disable=not progress)
    for _ in range(rounds):
        for i, size in enumerate(sizes):
            for key in keys:
                seconds = least_time(make_fn(key, size), repeats=repeats, warmup=warmup, device=device)
                best[key][i] = min(best[key][i], seconds)
                bar.update(1)
    bar.close()
    return best


def fixed_and_per_unit(sizes: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """The least-squares line ``seconds ≈ fixed + per_unit · size``: what a call costs whatever its size
    (the intercept) and what each unit of size adds (the slope). Returns ``(fixed, per_unit)`` in seconds.

    Fit it over sizes where the cost really grows with the size; below them the fixed part dominates and
    the line says little about the slope."""
    if len(sizes) != len(seconds) or len(sizes) < 2:
        raise ValueError(f"sizes and seconds must be two lists of the same length >= 2, got {len(sizes)} and {len(seconds)}")
    if len(set(sizes)) < 2:
        raise ValueError(f"sizes must hold at least two different values to fit a line, got {list(sizes)}")
    x = torch.tensor(list(sizes), dtype=torch.float64)
    y = torch.tensor(list(seconds), dtype=torch.float64)
    slope = (((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()).item()
    return (y.mean() - slope * x.mean()).item(), slope


def faster_from(sizes: Sequence[float], baseline: Sequence[float], candidate: Sequence[float],
                below: float = 0.9) -> float | None:
    """The smallest size from which ``candidate`` takes less than ``below`` × ``baseline``'s time, at that size
    and at every larger one (``sizes`` ascending); None if it is not so at the largest size.

    ``below`` under 1 keeps two equal costs, which differ only by timing noise, from being called faster
    (0.9: faster by more than 10 %). It may exceed 1 (a candidate that starts slower and must only overtake
    its own starting ratio) and it may be 0 or less: no positive time is below that, so the answer is None —
    what a threshold swallowed by the noise should say."""
    if not len(sizes) == len(baseline) == len(candidate) or not sizes:
        raise ValueError(f"sizes, baseline and candidate must be non-empty lists of one length, got "
                         f"{len(sizes)}, {len(baseline)} and {len(candidate)}")
    if list(sizes) != sorted(sizes):
        raise ValueError(f"sizes must be ascending, got {list(sizes)}")
    times = [*baseline, *candidate]
    if not all(math.isfinite(t) and t > 0 for t in times):
        raise ValueError(f"baseline and candidate must be positive finite times, got {list(baseline)} and {list(candidate)}")
    if not math.isfinite(below):
        raise ValueError(f"below must be a finite number, got {below}")
    since = None
    for size, slow, fast in zip(reversed(sizes), reversed(baseline), reversed(candidate)):
        if fast >= below * slow:
            break
        since = size
    return since


class _OperationCounter(TorchDispatchMode):
    """Counts the tensor operations that reach the dispatcher's last stop (aten ops, composites broken down)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_operations(fn: Callable[[], object]) -> int:
    """How many tensor operations ``fn()`` runs, counted as PyTorch executes them (``aten`` operations,
    after autograd and composite operations such as ``linear`` or ``layer_norm`` are broken down): each one
    pays a fixed cost — Python, dispatch, an allocation, on a GPU a kernel launch — whatever its size."""
    counter = _OperationCounter()
    with counter:
        fn()
    return counter.count
