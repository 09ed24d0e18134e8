"""Rotary position embedding (RoPE, Su et al. 2021, arXiv 2104.09864): position enters by rotating q and k.

The ``head_dim`` features are taken in pairs ``(x[2i], x[2i+1])``; pair ``i`` of a vector at position
``p`` is rotated by the angle ``p · θ_i`` with ``θ_i = base^(-2i / head_dim)``. A rotation keeps
lengths, and ``R_p`` then ``R_s`` is ``R_{p+s}``, so the score between a query at position ``i`` and a
key at position ``j`` is

    (R_i q) · (R_j k) = q · (R_iᵀ R_j k) = q · (R_{j-i} k)

— it depends on the positions only through ``j − i`` (tested). MLA (chapter 12) needs this module
twice: once to show why a rotation between ``W_UK`` and the query blocks weight absorption, once for
its decoupled rotary key.
"""

from __future__ import annotations

import torch
from torch import nn

from attention_lab.validation import check_float_dtype, check_positive_int, check_real


def check_rope_dim(name: str, dim: int) -> int:
    """Return ``dim`` if it is an even integer >= 0 (RoPE rotates pairs of features); else ``ValueError``."""
    check_positive_int(name, dim, minimum=0)
    if dim % 2:
        raise ValueError(f"{name} must be even (RoPE rotates pairs of features), got {dim}")
    return dim


def check_rope_base(name: str, base: float) -> float:
    """Return ``base`` as a float if it is a finite real number > 1; else ``ValueError``.

    ``θ_i = base^(-2i / dim)`` must fall from 1 towards 0 as the pair index ``i`` grows; a base ≤ 0 gives
    NaN angles, a base in ``(0, 1]`` angles that grow (or stay) instead.
    """
    return check_real(name, base, minimum=1.0, strict=True)


def rope_angles(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Rotation angles ``p · θ_i`` for ``positions`` ``(T,)``: a float64 tensor ``(T, dim // 2)``.

    Computed in float64 so that the angle of position 32k is exact to ~1e-12 rad before it is cast.
    """
    check_rope_dim("dim", dim)
    check_rope_base("base", base)
    if not isinstance(positions, torch.Tensor) or positions.dim() != 1:
        raise ValueError(f"positions must be a 1-D tensor of shape (T,), got {getattr(positions, 'shape', positions)!r}")
    if positions.dtype == torch.bool or positions.is_complex():
        raise ValueError(f"positions must hold integer (or real) positions, got dtype {positions.dtype}")
    pair = torch.arange(dim // 2, device=positions.device, dtype=torch.float64)  # (dim/2,)
    theta = base ** (-2.0 * pair / dim)  # (dim/2,): θ_i = base^(-2i/dim), from 1 down to ~1/base
    return positions.to(torch.float64)[:, None] * theta[None, :]  # (T, dim/2)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate every feature pair of ``x`` ``(..., T, D)`` (D even) by its position's angles.

    ``positions`` ``(T,)`` are absolute positions of the T rows. Returns a tensor of ``x``'s shape and
    dtype; the rotation is computed in fp32 (fp64 for fp64 input).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor of shape (..., T, D), got {getattr(x, 'shape', type(x).__name__)}")
    check_float_dtype("x", x)
    seq, dim = x.shape[-2], x.shape[-1]
    check_rope_dim("x.shape[-1] (head_dim)", dim)
    if not isinstance(positions, torch.Tensor) or tuple(positions.shape) != (seq,):
        raise ValueError(f"positions must have shape (T,) = ({seq},) to match x {tuple(x.shape)}, "
                         f"got {tuple(getattr(positions, 'shape', ()))}")
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    angles = rope_angles(positions, dim, base)  # (T, D/2)
    cos, sin = angles.cos().to(compute_dtype), angles.sin().to(compute_dtype)  # (T, D/2) each
    pairs = x.to(compute_dtype).unflatten(-1, (dim // 2, 2))  # (..., T, D/2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]  # (..., T, D/2) each
    # A 2-D rotation of each pair: [even', odd'] = [[cos, -sin], [sin, cos]] @ [even, odd]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)  # (..., T, D/2, 2)
    return rotated.flatten(-2).to(x.dtype)  # (..., T, D)


def rotation_matrix(position: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The ``(dim, dim)`` float64 block-diagonal matrix ``R_p``: ``apply_rope(x, p) == x @ R_pᵀ`` for a row ``x``."""
    angles = rope_angles(torch.tensor([position]), dim, base)[0]  # (dim/2,)
    even = torch.arange(0, dim, 2)  # row/column of each pair's first feature
    matrix = torch.zeros(dim, dim, dtype=torch.float64)
    matrix[even, even], matrix[even, even + 1] = angles.cos(), -angles.sin()  # [[cos, -sin],
    matrix[even + 1, even], matrix[even + 1, even + 1] = angles.sin(), angles.cos()  #  [sin,  cos]] per pair
    return matrix  # (dim, dim)


class RotaryEmbedding(nn.Module):
    """RoPE as a layer with no weights: ``forward(x (..., T, D), positions (T,)) -> (..., T, D)``."""

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.dim = check_rope_dim("dim", dim)
        self.base = check_rope_base("base", base)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (..., T, dim={self.dim}), got {tuple(getattr(x, 'shape', ()))}")
        return apply_rope(x, positions, self.base)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base:g}"
