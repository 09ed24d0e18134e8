"""Chapter 06 — mean-pool the key/value projection heads of a multi-head checkpoint into G groups."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.uptrain import pool_kv_heads
from attention_lab.exercises.core import (ExerciseError, InputGuard, call, exercise_check, expect_close,
                                          random_generator, which_mistake)

# (n_heads, n_groups, head_dim, d_model)
_CASES = [(8, 2, 4, 12), (6, 3, 5, 7), (4, 1, 8, 16), (8, 4, 3, 10), (4, 4, 6, 9)]


_HINT = ("View the weight as (n_groups, n_heads // n_groups, head_dim, d_model) — the rows of head i are "
         "i*head_dim … (i+1)*head_dim-1, and a group is CONSECUTIVE heads — then average over the heads of each "
         "group and reshape back to (n_groups * head_dim, d_model).")


def _mistakes(weight: torch.Tensor, n_heads: int, n_groups: int) -> list[tuple[str, Callable]]:
    head_dim, d_model = weight.shape[0] // n_heads, weight.shape[1]
    size = n_heads // n_groups
    grouped = weight.reshape(n_groups, size, head_dim, d_model)
    return [
        ("That is the FIRST head of each group, not the average of the group's heads (the GQA paper compares "
         "both; mean is better).", lambda: grouped[:, 0].reshape(n_groups * head_dim, d_model)),
        (f"That is the SUM of each group's heads: divide by the {size} heads per group (a mean, not a sum).",
         lambda: grouped.sum(1).reshape(n_groups * head_dim, d_model)),
        ("A group is CONSECUTIVE heads (j·s … (j+1)·s − 1), not every n_groups-th head (j, j + G, j + 2G, …): "
         "view the rows as (n_groups, heads per group, head_dim, d_model), not (heads per group, n_groups, …).",
         lambda: weight.reshape(size, n_groups, head_dim, d_model).mean(0).reshape(n_groups * head_dim, d_model)),
        ("That averages ROWS inside each head (mixing the head_dim coordinates) instead of averaging whole heads: "
         "a head's rows stay together, and a group is CONSECUTIVE heads.",
         lambda: weight.reshape(n_groups * head_dim, size, d_model).mean(1)),
    ]


@exercise_check("mean-pooled key/value heads")
def check_mean_pool(mean_pool: Callable[[torch.Tensor, int, int], torch.Tensor]) -> None:
    """``mean_pool(weight, n_heads, n_groups)``: weight ``(n_heads · head_dim, d_model)`` of a key or value
    projection -> a new ``(n_groups · head_dim, d_model)`` tensor, group ``j`` the average of heads
    ``j·s … (j+1)·s − 1`` (``s = n_heads / n_groups`` consecutive heads); ``weight`` itself stays as it was."""
    generator = random_generator(6)
    for n_heads, n_groups, head_dim, d_model in _CASES:
        weight = torch.randn(n_heads * head_dim, d_model, generator=generator)
        expected = pool_kv_heads(weight, n_heads, n_groups, "mean")
        what = f"pooling {n_heads} heads of size {head_dim} into {n_groups} groups"
        given = weight.clone()
        guard = InputGuard(weight=given)
        actual = call(mean_pool, given, n_heads, n_groups, what=what,
                      hint=f"weight is (n_heads · head_dim, d_model) = {tuple(weight.shape)}; head_dim = "
                           "weight.shape[0] // n_heads comes from the shapes.")
        guard.check(what, "The checkpoint being converted must stay as it was.")
        if isinstance(actual, torch.Tensor) and actual.shape == (n_groups, head_dim, d_model):
            hint = "Reshape the (n_groups, head_dim, d_model) average back to (n_groups * head_dim, d_model)."
        elif isinstance(actual, torch.Tensor) and actual.shape == (d_model, n_groups * head_dim) != expected.shape:
            hint = "Transposed: an nn.Linear weight is (out_features, in_features) = (n_groups * head_dim, d_model)."
        elif (isinstance(actual, torch.Tensor) and actual.dim() == 2 and actual.shape[0] == n_heads * head_dim
              and n_groups < n_heads):
            hint = ("Still n_heads · head_dim rows: the heads are stacked along the ROWS, so pool rows (whole "
                    "heads) and keep all d_model columns.")
        else:
            hint = which_mistake(actual, _mistakes(weight, n_heads, n_groups), expected) or _HINT
        expect_close(actual, expected, what, hint=hint)
        if actual.untyped_storage().data_ptr() == given.untyped_storage().data_ptr():
            raise ExerciseError(f"{what}: the result shares its memory with the weight you were given (a view of "
                                "it, e.g. returned as it is when n_groups == n_heads): the converted model is "
                                "trained further, and every update would change the original checkpoint too. "
                                "Return a new tensor (.clone() it).")
