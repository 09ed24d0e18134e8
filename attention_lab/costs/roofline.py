"""The roofline model: a kernel's time is bounded by its FLOPs over the compute peak and by its bytes over
the memory bandwidth; arithmetic intensity (FLOP per byte moved) says which bound bites.

    attainable FLOP/s = min(peak FLOP/s, intensity × bandwidth)

A kernel whose intensity sits left of the ridge point ``peak / bandwidth`` is memory-bound: a faster
ALU would not help it, moving fewer bytes would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attention_lab.validation import check_positive_int


@dataclass(frozen=True)
class KernelCost:
    """FLOPs and device-memory bytes of one kernel launch (reads + writes)."""

    name: str
    flops: float
    bytes_read: float
    bytes_written: float

    @property
    def bytes_moved(self) -> float:
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte moved."""
        return arithmetic_intensity(self.flops, self.bytes_moved)

    def time_bound(self, peak_flops: float, bandwidth: float) -> float:
        """Roofline lower bound on the run time in seconds: max(FLOPs / peak, bytes / bandwidth)."""
        return max(self.flops / peak_flops, self.bytes_moved / bandwidth)


def arithmetic_intensity(flops: float, bytes_moved: float) -> float:
    """FLOP per byte; raises ``ValueError`` when no byte moves."""
    if bytes_moved <= 0:
        raise ValueError(f"bytes_moved must be positive, got {bytes_moved}")
    return flops / bytes_moved


def attainable_flops(intensity, peak_flops: float, bandwidth: float):
    """The roof: ``min(peak, intensity × bandwidth)`` in FLOP/s (works on floats and numpy arrays)."""
    return np.minimum(peak_flops, np.asarray(intensity, dtype=float) * bandwidth)


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    """Intensity (FLOP/byte) where the memory roof meets the compute roof."""
    return peak_flops / bandwidth


def matmul_cost(m: int, n: int, k: int, bytes_per_element: int = 2, name: str = "matmul",
                batch: int = 1) -> KernelCost:
    """``(m, k) @ (k, n)`` for ``batch`` independent products: 2mnk FLOPs, reads A and B once, writes C once."""
    for label, value in (("m", m), ("n", n), ("k", k), ("batch", batch), ("bytes_per_element", bytes_per_element)):
        check_positive_int(label, value)
    return KernelCost(name, 2.0 * batch * m * n * k, float(batch * (m * k + k * n) * bytes_per_element),
                      float(batch * m * n * bytes_per_element))


def softmax_cost(rows: int, cols: int, bytes_per_element: int = 2, name: str = "softmax") -> KernelCost:
    """Row softmax of a ``(rows, cols)`` matrix: about 5 FLOPs per element (max, subtract, exp, sum, divide),
    one read and one write of the matrix."""
    check_positive_int("rows", rows)
    check_positive_int("cols", cols)
    elements = rows * cols
    return KernelCost(name, 5.0 * elements, float(elements * bytes_per_element), float(elements * bytes_per_element))


def elementwise_cost(elements: int, bytes_per_element: int = 2, flops_per_element: float = 1.0,
                     extra_bytes_read: float = 0.0, name: str = "elementwise") -> KernelCost:
    """A map such as scale or mask: ``flops_per_element`` per element, read once, written once
    (plus ``extra_bytes_read``, e.g. a bool mask)."""
    check_positive_int("elements", elements)
    return KernelCost(name, flops_per_element * elements, elements * bytes_per_element + extra_bytes_read,
                      float(elements * bytes_per_element))


def plot_roofline(specs, kernels=(), ax=None, intensity_range=(0.05, 2000.0), measured=None):
    """Log-log roofline of each :class:`~attention_lab.costs.gpu_facts.GPUSpec` in ``specs`` with ``kernels``
    (:class:`KernelCost`) marked at their intensity. ``measured``: optional ``(label, peak_flops, bandwidth)``
    drawn dashed (a card's measured ceilings)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.5))
    x = np.logspace(np.log10(intensity_range[0]), np.log10(intensity_range[1]), 200)
    for spec in specs:
        line, = ax.plot(x, attainable_flops(x, spec.peak_flops, spec.bandwidth_bytes_s) / 1e12, label=spec.name)
        ax.axvline(spec.ridge_point, color=line.get_color(), lw=0.6, ls=":")
    if measured is not None:
        label, peak, bandwidth = measured
        ax.plot(x, attainable_flops(x, peak, bandwidth) / 1e12, "k--", lw=1, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    top = max(spec.peak_flops for spec in specs) / 1e12
    bottom = top / 1e5
    ax.set_ylim(bottom, top * 3)
    names_at: dict[float, list[str]] = {}  # kernels with the same intensity share one line and label
    for kernel in kernels:
        names_at.setdefault(round(kernel.intensity, 6), []).append(kernel.name)
    for intensity, names in names_at.items():
        ax.axvline(intensity, color="grey", lw=0.8, alpha=0.6)
        ax.text(intensity, bottom * 1.5, " " + ", ".join(names), rotation=90, va="bottom", ha="right",
                fontsize=10, color="dimgrey")
    ax.set_xlabel("arithmetic intensity (FLOP / byte of device memory)")
    ax.set_ylabel("attainable (TFLOP/s)")
    ax.set_title("Roofline: dense 16-bit tensor peak vs memory bandwidth (dotted: ridge points)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=10, loc="upper left")
    return ax
