"""Shared test helpers: random q/k/v, the float64 ground truth every attention implementation is compared with,
and the ONE table of tolerances (per dtype, and for the few named comparisons that need their own)."""

from __future__ import annotations

import math

import torch

# Tolerances defined once per dtype (atol, rtol) for comparing against the float64 reference.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


# Named tolerances (atol, rtol) for comparisons that are not "this dtype against float64".
NAMED_TOLERANCES = {
    "interpreter_fp32": (1e-4, 1e-4),  # Triton's CPU interpreter: fp32 dots in another summation order
    "kernel_fp16": (3e-3, 3e-3),  # a compiled 16-bit kernel against the float64 reference
    "kernel_bf16": (2e-2, 2e-2),
    "exact": (0.0, 0.0),  # same arithmetic in the same order: bit-identical
    "fp32_paths": (1e-5, 1e-5),  # two fp32 implementations of the same maths (e.g. cached vs uncached logits)
    "fp32_same_layer": (1e-6, 1e-5),  # one fp32 layer computed two ways (a cache vs the whole sequence)
    "fp64_paths": (1e-10, 1e-10),  # two float64 implementations of the same maths
    "fp64_same_order": (1e-12, 1e-12),  # float64, the same sums in nearly the same order
    "fp64_rotations": (1e-9, 1e-9),  # float64 through sin/cos of large angles (RoPE)
    "fp16_rotations": (2e-2, 2e-2),  # RoPE applied in fp16 against fp32
    "fp32_kernel_paths": (1e-6, 1e-6),  # two fp32 kernel paths over the same tiles (e.g. split-K vs one partition)
    "interpreter_kernel_16bit": (1e-2, 1e-2),  # an interpreted or compiled 16-bit kernel against fp32 / float64
}


def tolerance(key) -> dict:
    """``{"atol": .., "rtol": ..}`` for a dtype (torch.float32, ...) or a name of :data:`NAMED_TOLERANCES`,
    ready for ``torch.testing.assert_close(actual, expected, **tolerance(key))``."""
    atol, rtol = TOLERANCES[key] if isinstance(key, torch.dtype) else NAMED_TOLERANCES[key]
    return {"atol": atol, "rtol": rtol}


def random_qkv(batch: int, n_heads: int, n_kv_heads: int, n_queries: int, n_keys: int, head_dim: int,
               dtype: torch.dtype = torch.float32, seed: int = 0, value_dim: int | None = None,
               requires_grad: bool = False, device: torch.device | str = "cpu", scale: float = 1.0):
    """Seeded standard-normal queries, keys and values (times ``scale``), in the book's layout.

    Returns q ``(batch, n_heads, n_queries, head_dim)``, k ``(batch, n_kv_heads, n_keys, head_dim)`` and
    v ``(batch, n_kv_heads, n_keys, value_dim or head_dim)``, drawn in that order from one generator (so a
    seed fixes all three) in float32, then cast to ``dtype`` and moved to ``device``.
    """
    generator = torch.Generator().manual_seed(seed)
    shapes = ((batch, n_heads, n_queries, head_dim), (batch, n_kv_heads, n_keys, head_dim),
              (batch, n_kv_heads, n_keys, value_dim or head_dim))
    tensors = [(torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=dtype) for shape in shapes]
    return tuple(t.requires_grad_(requires_grad) for t in tensors)


def allowed_positions(n_queries: int, n_keys: int, causal: bool = False, window: int | None = None) -> torch.Tensor:
    """(Nq, Nk) bool, written loop-by-loop from DESIGN.md §3 (queries aligned to the end of the keys)."""
    allowed = torch.ones(n_queries, n_keys, dtype=torch.bool)
    for i in range(n_queries):
        position = i + n_keys - n_queries
        for j in range(n_keys):
            if (causal or window is not None) and j > position:
                allowed[i, j] = False
            if window is not None and j <= position - window:
                allowed[i, j] = False
    return allowed


def attention_fp64(q, k, v, mask=None, causal=False, window=None, scale=None) -> torch.Tensor:
    """Plain float64 einsum attention with repeated kv heads; fully masked rows give zeros.

    q ``(B, H, Nq, D)``, k ``(B, Hkv, Nk, D)``, v ``(B, Hkv, Nk, Dv)`` -> ``(B, H, Nq, Dv)`` float64.
    """
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    allowed = allowed_positions(q.shape[2], k.shape[2], causal, window).to(q.device)
    if mask is not None:
        allowed = allowed & mask
    allowed = allowed.expand_as(scores)
    scores = scores.masked_fill(~allowed, float("-inf"))
    row_max = scores.amax(-1, keepdim=True).nan_to_num(neginf=0.0)
    weights = torch.exp(scores - row_max) * allowed
    denom = weights.sum(-1, keepdim=True)
    weights = torch.where(denom > 0, weights / denom.clamp_min(1e-300), torch.zeros_like(weights))
    return torch.einsum("bhqk,bhkd->bhqd", weights, v)


def load_benchmark(name: str, module_name: str | None = None):
    """The script ``benchmarks/<name>.py`` imported as a module (the scripts are not a package), its folder on the
    path for their own imports; registered in ``sys.modules`` first, which dataclasses need while a class is built."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(module_name or name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
