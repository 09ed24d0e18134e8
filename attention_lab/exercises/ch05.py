"""Chapter 05 — one decoding step of grouped-query attention, without repeating the key/value heads.

Besides the values, the checker verifies the "without repeating" part. It runs the student's function once
more under a :class:`~torch.utils._python_dispatch.TorchDispatchMode` that sees every tensor operation
PyTorch executes (after autograd and composite operations such as ``repeat_interleave`` or ``matmul``
have been broken down into the ``aten`` operations that really run). For each operation it looks at the
tensors it creates, skipping views (outputs that share the storage of an input, such as ``expand``,
``view`` or ``transpose``, which copy nothing). On the chosen shapes every honest intermediate — the
grouped queries, the ``(B, Hkv, G, N)`` scores and weights, the output — holds fewer numbers than the
cache ``k`` itself, so an allocation larger than ``k`` or ``v`` can only be the shared heads
materialised once per query head (``repeat_interleave``, ``repeat``, ``expand(...).reshape`` or
``.contiguous()``, ``torch.cat``/``stack`` of copies, indexing with a head index, a ``matmul`` that
broadcasts the kv head over the group, or a product that broadcasts it before summing). The check
measures memory, not spelling: how the copy was written does not matter.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from attention_lab.attention import scaled_dot_product_attention
from attention_lab.exercises.core import (ExerciseError, InputGuard, call, exercise_check, expect_close,
                                          random_generator, same_values, which_mistake)

# (batch, n_heads, n_kv_heads, n_keys, head_dim): MQA, GQA and MHA, odd lengths. Groups of 2 and 3
# heads with several kv heads tell "query head i reads kv head i // group" from "i % n_kv_heads".
_SHAPES = [(1, 6, 2, 17, 8), (2, 4, 1, 9, 16), (3, 6, 3, 5, 16), (1, 8, 4, 33, 12), (2, 3, 3, 7, 8)]
# Shapes for the copy check: group G < head_dim and G < N, so no honest intermediate outgrows the cache.
_COPY_SHAPES = [(2, 8, 2, 33, 16), (1, 6, 1, 17, 8)]

_HINT = ("Reshape q to (B, Hkv, H // Hkv, D): consecutive query heads form one group and share one kv head "
         "(head i -> kv head i // group). Scale the scores by D ** -0.5 and take the softmax over the N keys.")


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_of_head: torch.Tensor, scale: float,
            dim: int = -1) -> torch.Tensor:
    """Reference with an explicit head -> kv-head map (copies freely: it only models mistakes)."""
    keys, values = k[:, kv_of_head], v[:, kv_of_head]  # (B, H, N, D)
    return torch.softmax(q @ keys.transpose(-1, -2) * scale, dim=dim) @ values


def _grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dim: int) -> torch.Tensor:
    """The grouped layout (B, Hkv, G, N) with the softmax over ``dim`` (models a softmax on the wrong axis)."""
    batch, n_heads, _, head_dim = q.shape
    q_groups = q.reshape(batch, k.shape[1], n_heads // k.shape[1], head_dim)
    weights = torch.softmax(q_groups @ k.transpose(-1, -2) * scale, dim=dim)
    return (weights @ v).reshape(batch, n_heads, 1, head_dim)


def _mistakes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> list[tuple[str, Callable]]:
    n_heads, n_kv_heads, head_dim = q.shape[1], k.shape[1], q.shape[-1]
    group = n_heads // n_kv_heads
    heads = torch.arange(n_heads)
    right, scale = heads // group, head_dim ** -0.5
    interleaved = ("Query head i reads kv head i // group (group = H // Hkv consecutive query heads share one kv "
                   "head), not i % Hkv: reshaping q to (B, H // Hkv, Hkv, D) — or repeat instead of "
                   "repeat_interleave — interleaves the groups.")
    return [
        (interleaved, lambda: _attend(q, k, v, heads % n_kv_heads, scale)),
        ("Missing the scale: multiply the scores by D ** -0.5 (D = head_dim) before the softmax.",
         lambda: _attend(q, k, v, right, 1.0)),
        ("The scale is D ** -0.5 (one over the square root of head_dim), not 1 / D.",
         lambda: _attend(q, k, v, right, 1.0 / head_dim)),
        ("The scale is D ** -0.5 with D = head_dim, not the number of keys N.",
         lambda: _attend(q, k, v, right, k.shape[2] ** -0.5)),
        ("The softmax runs over the N keys (the last dim), not over the heads of a group or the kv heads.",
         lambda: _attend(q, k, v, right, scale, dim=1)),
        ("The softmax runs over the N keys (the last dim), not over the H // Hkv query heads of a group.",
         lambda: _grouped(q, k, v, scale, dim=-2)),
        ("The softmax runs over the N keys (the last dim), not over the kv heads.",
         lambda: _grouped(q, k, v, scale, dim=1)),
        ("The softmax runs over the N keys (the last dim): over dim -2, the single query, every weight is 1.",
         lambda: _attend(q, k, v, right, scale, dim=-2)),
    ]


def _head_permutation(actual: torch.Tensor, expected: torch.Tensor) -> list[int] | None:
    """If each head of ``actual`` equals some head of ``expected`` (but not in order), that assignment."""
    if actual.shape != expected.shape:
        return None
    found = []
    for i in range(actual.shape[1]):
        match = [j for j in range(expected.shape[1]) if same_values(actual[:, i], expected[:, j])]
        if not match:
            return None
        found.append(match[0])
    return None if found == list(range(actual.shape[1])) else found


class _LargestAllocation(TorchDispatchMode):
    """Records the largest tensor an operation creates (views, which share an input's storage, excluded)."""

    def __init__(self, shared: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.shared = {tensor.untyped_storage().data_ptr(): name for name, tensor in shared.items()}
        self.largest: tuple[int, str, tuple, str | None] = (0, "", (), None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        input_storages = {t.untyped_storage().data_ptr() for t in inputs}
        source = next((self.shared[p] for p in input_storages if p in self.shared), None)
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.untyped_storage().data_ptr() in input_storages:
                continue  # a view or an in-place result: no new memory
            elements = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
            if elements > self.largest[0]:
                self.largest = (elements, str(func.overloadpacket.__name__), tuple(tensor.shape), source)
        return out


def _check_no_copies(grouped_decode: Callable, generator: torch.Generator) -> None:
    for batch, n_heads, n_kv_heads, n_keys, head_dim in _COPY_SHAPES:
        q = torch.randn(batch, n_heads, 1, head_dim, generator=generator)
        k = torch.randn(batch, n_kv_heads, n_keys, head_dim, generator=generator)
        v = torch.randn(batch, n_kv_heads, n_keys, head_dim, generator=generator)
        watch = _LargestAllocation({"k": k, "v": v})
        with watch:
            grouped_decode(q, k, v)
        elements, op, shape, source = watch.largest
        if elements > max(k.numel(), v.numel()):
            group = n_heads // n_kv_heads
            origin = f" from {source}" if source else ""
            raise ExerciseError(
                f"decode step with H={n_heads} query heads and Hkv={n_kv_heads} kv heads: your function built a "
                f"{shape} tensor{origin} (aten.{op}) — {elements} numbers, more than the whole cache k {tuple(k.shape)} "
                f"holds ({k.numel()}). That is the shared key/value heads copied for each of the {group} query heads "
                "of a group (repeat_interleave, repeat, expand(...).reshape or .contiguous(), torch.cat/stack of "
                "copies, indexing with a head index, torch.matmul broadcasting one kv head over the group, or an "
                "elementwise product broadcast over the group before a sum all build such a tensor). The point of "
                "GQA is that a group reads ONE copy: reshape the QUERIES to (B, Hkv, H // Hkv, D) so that one "
                "matrix product with the kv head serves its whole group.")


@exercise_check("grouped-query decode step")
def check_grouped_decode(grouped_decode: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``grouped_decode(q, k, v)``: q ``(B, H, 1, D)`` (the newest token), k and v ``(B, Hkv, N, D)`` (the
    cache, ``Hkv`` divides ``H``) -> ``(B, H, 1, D)``, where query head ``i`` attends to kv head
    ``i // (H // Hkv)`` with scale ``D ** -0.5`` — without copying the kv heads (see the module's docstring)."""
    generator = random_generator(5)
    for batch, n_heads, n_kv_heads, n_keys, head_dim in _SHAPES:
        q = torch.randn(batch, n_heads, 1, head_dim, generator=generator)
        k = torch.randn(batch, n_kv_heads, n_keys, head_dim, generator=generator)
        v = torch.randn(batch, n_kv_heads, n_keys, head_dim, generator=generator)
        expected = scaled_dot_product_attention(q, k, v)  # (B, H, 1, D)
        what = f"decode step with H={n_heads} query heads and Hkv={n_kv_heads} kv heads"
        guard = InputGuard(q=q, k=k, v=v)
        actual = call(grouped_decode, q, k, v, what=what,
                      hint=f"q is {tuple(q.shape)} and k, v {tuple(k.shape)}: sizes come from the inputs' shapes.")
        guard.check(what)
        if isinstance(actual, torch.Tensor) and actual.shape == (batch, n_heads, head_dim):
            hint = "Keep the query dim of length 1: the output is (B, H, 1, D), like q."
        else:
            hint = which_mistake(actual, _mistakes(q, k, v), expected)
            permutation = _head_permutation(actual, expected) if isinstance(actual, torch.Tensor) else None
            if hint is None and permutation is not None:
                hint = (f"Every output head is right but in the wrong place (your heads 0, 1, … hold the reference's "
                        f"heads {permutation}): "
                        "reshape the (B, Hkv, H // Hkv, 1, D) result back so that query head i = kv head i // group, "
                        "member i % group — no transpose between the two head dims.")
        expect_close(actual, expected, what, hint=hint or _HINT)
    _check_no_copies(grouped_decode, generator)
