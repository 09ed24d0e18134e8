"""Chapter 06 — mean-pool the key/value projection heads of a multi-head checkpoint into G groups."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.uptrain import pool_kv_heads
from attention_lab.exercises.core import ExerciseError, exercise_check, expect_close, random_generator

# (n_heads, n_groups, head_dim, d_model)
_CASES = [(8, 2, 4, 12), (6, 3, 5, 7), (4, 1, 8, 16), (8, 4, 3, 10), (4, 4, 6, 9)]


@exercise_check("mean-pooled key/value heads")
def check_mean_pool(mean_pool: Callable[[torch.Tensor, int, int], torch.Tensor]) -> None:
    """``mean_pool(weight, n_heads, n_groups)``: weight ``(n_heads · head_dim, d_model)`` of a key or value
    projection -> ``(n_groups · head_dim, d_model)``, group ``j`` the average of heads
    ``j·s … (j+1)·s − 1`` (``s = n_heads / n_groups`` consecutive heads)."""
    generator = random_generator(6)
    for n_heads, n_groups, head_dim, d_model in _CASES:
        weight = torch.randn(n_heads * head_dim, d_model, generator=generator)
        expected = pool_kv_heads(weight, n_heads, n_groups, "mean")
        actual = mean_pool(weight.clone(), n_heads, n_groups)
        first = pool_kv_heads(weight, n_heads, n_groups, "first")
        if (n_heads > n_groups and isinstance(actual, torch.Tensor) and actual.shape == first.shape
                and torch.allclose(actual.double(), first.double())):
            raise ExerciseError("mean-pooled key/value heads: that is the FIRST head of each group, not the "
                                "average of the group's heads (the GQA paper compares both; mean is better).")
        expect_close(actual, expected, f"pooling {n_heads} heads of size {head_dim} into {n_groups} groups",
                     hint="View the weight as (n_groups, n_heads // n_groups, head_dim, d_model) — the rows of "
                          "head i are i*head_dim … (i+1)*head_dim-1, and a group is CONSECUTIVE heads — then "
                          "average over dim 1 and reshape back to (n_groups * head_dim, d_model).")
