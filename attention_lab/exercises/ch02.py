"""Chapter 02 — build the causal mask and the masked softmax."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.masks import causal_mask, padding_mask
from attention_lab.exercises.core import (ExerciseError, InputGuard, call, exercise_check, expect_bool_mask,
                                          expect_close, random_generator, which_mistake)

_MASK_HINT = "True means 'may attend'. Query i (row) sees keys j (columns) 0..i — the diagonal included, nothing above it."


@exercise_check("causal mask")
def check_causal_mask(make_mask: Callable[[int], torch.Tensor]) -> None:
    """``make_mask(n)`` must return the ``(n, n)`` bool mask with True where query i may see key j (j <= i)."""
    for n in (6, 17, 2, 1):  # n = 6 first: there every mistake below gives a different mask
        expected = causal_mask(n)
        actual = call(make_mask, n, what=f"causal mask for n={n}")
        ones = torch.ones(n, n, dtype=torch.bool)
        hint = None
        if isinstance(actual, torch.Tensor) and actual.shape == expected.shape:
            hint = which_mistake(actual != 0, [
                ("The diagonal is missing: query i may attend to ITSELF (key i) as well as to the keys before it.",
                 ones.tril(-1)),
                ("That is the transpose: rows are queries and columns keys, so query i sees the keys j <= i — the "
                 "LOWER triangle.", ones.triu()),
                ("Inverted: True must mean 'may attend', not 'blocked'. Query i may attend to keys j <= i.",
                 ones.triu(1)),
                ("One step into the future: query i sees keys up to i, not i + 1.", ones.tril(1)),
                ("Nothing is masked: query i must not see the keys j > i (the future).", ones),
            ])
        expect_bool_mask(actual, expected, f"causal mask for n={n}", hint=hint or _MASK_HINT)


def _reference(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked softmax, a row that may see no key at all giving all-zero weights."""
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return weights.nan_to_num(0.0)


def _cases(generator: torch.Generator):
    """(description, scores, mask): causal masks first (the chapter's case), then masks that are not causal."""
    for n in (6, 13, 1):
        yield f"a causal mask, n={n}", torch.randn(2, 3, n, n, generator=generator) * 3, causal_mask(n)
    n = 7
    scores = torch.randn(2, 3, n, n, generator=generator) * 3
    random_mask = torch.rand(n, n, generator=generator) < 0.6
    random_mask[torch.arange(n), torch.randint(0, n, (n,), generator=generator)] = True  # every row sees a key
    yield "a random (n, n) mask, not causal", scores, random_mask
    lengths = torch.tensor([3, 7])
    yield ("a padding mask (B, 1, 1, n) from lengths [3, 7] (key j valid iff j < length)",
           torch.randn(2, 3, n, n, generator=generator) * 3, padding_mask(lengths, n))
    yield ("a random mask of the scores' full shape (B, H, Nq, Nk) with Nq=4 queries and Nk=9 keys",
           torch.randn(2, 3, 4, 9, generator=generator) * 3,
           (torch.rand(2, 3, 4, 9, generator=generator) < 0.5) | torch.eye(4, 9, dtype=torch.bool))
    mask = torch.rand(5, 5, generator=generator) < 0.6
    mask[1] = False  # query 1 may see no key at all
    mask[3] = False
    mask[[0, 2, 4], [0, 2, 4]] = True
    yield "a mask whose rows 1 and 3 allow no key at all", torch.randn(2, 3, 5, 5, generator=generator) * 3, mask


def _softmax_mistakes(scores: torch.Tensor, mask: torch.Tensor) -> list[tuple[str, Callable]]:
    causal = causal_mask(scores.shape[-2], scores.shape[-1])
    neg = float("-inf")
    return [
        ("The mask argument is ignored: you applied a causal (lower-triangular) mask of your own. Use the mask "
         "you are given — padding and other masks are not causal.",
         lambda: torch.softmax(scores.masked_fill(~causal, neg), dim=-1)),
        ("Inverted mask: True means 'may attend', so the keys to hide are where the mask is False (~mask), not "
         "where it is True.", lambda: torch.softmax(scores.masked_fill(mask, neg), dim=-1)),
        ("Softmax over the wrong axis: each QUERY's weights must sum to 1 over the keys it may see — the last "
         "dim (dim=-1), not the queries (dim=-2).",
         lambda: torch.softmax(scores.masked_fill(~mask, neg), dim=-2)),
        ("Softmax over the wrong axis: it runs over the keys (the last dim), not over the heads or the batch.",
         lambda: torch.softmax(scores.masked_fill(~mask, neg), dim=1)),
        ("Masked keys filled with 0 still get weight exp(0 − max) > 0: fill them with -inf, whose exp is exactly 0.",
         lambda: torch.softmax(scores.masked_fill(~mask, 0.0), dim=-1)),
        ("The mask is not applied at all: keys where the mask is False must get weight 0.",
         lambda: torch.softmax(scores, dim=-1)),
        ("Rows must sum to 1 over the keys each query may see: zeroing weights after the softmax leaves the "
         "rows un-renormalised — set masked scores to -inf BEFORE the softmax instead.",
         lambda: torch.softmax(scores, dim=-1) * mask),
    ]


@exercise_check("masked softmax")
def check_masked_softmax(masked_softmax: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``masked_softmax(scores, mask)``: softmax over the last dim of ``scores (..., Nq, Nk)`` with the keys where
    the bool ``mask`` (True = may attend; any shape that broadcasts against the scores, e.g. ``(Nq, Nk)`` or a
    padding mask ``(B, 1, 1, Nk)``) is False given weight 0, each row renormalised over the keys it may see.
    A row that may see no key at all gets all-zero weights (NaN, what a softmax over only -inf gives, is
    accepted there too)."""
    generator = random_generator(2)
    for description, scores, mask in _cases(generator):
        what = f"masked softmax with {description}"
        expected = _reference(scores, mask)
        guard = InputGuard(scores=scores, mask=mask)
        actual = call(masked_softmax, scores, mask, what=what,
                      hint=f"scores are {tuple(scores.shape)} and the mask {tuple(mask.shape)}: the mask may be any "
                           "bool tensor that broadcasts against the scores.")
        guard.check(what)
        if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
            expect_close(actual, expected, what, hint="Return the weights, the scores' shape.")
        empty_rows = ~mask.expand_as(scores).any(-1)  # (..., Nq): queries that may see no key
        if empty_rows.any():
            rows = actual[empty_rows]  # (rows, Nk)
            if not (torch.isnan(rows).all() or torch.equal(rows, torch.zeros_like(rows))):
                raise ExerciseError(
                    f"{what}: a query that may see NO key must get weight 0 on every key (the keys are all masked), "
                    f"but yours gives weights {rows[0].tolist()}. A large negative number (-1e9) instead of -inf "
                    "turns such a row into a uniform softmax over keys it must not see; with -inf the row is NaN "
                    "(accepted) or, cleaner, set to 0.")
            actual = torch.where(empty_rows[..., None] & torch.isnan(actual), torch.zeros_like(actual), actual)
        # NaN (a row a mistake leaves with no key) compares as 0 on both sides: the diagnosis is about the pattern.
        hint = which_mistake(actual.nan_to_num(0.0), [(h, (lambda a=a: a().nan_to_num(0.0)))
                                                      for h, a in _softmax_mistakes(scores, mask)], expected)
        if hint is None:
            seen = ~empty_rows
            row_sums = actual.sum(-1)[seen]
            if not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-4):
                hint = ("Rows must sum to 1 over the keys each query may see — set masked scores to -inf BEFORE "
                        "the softmax instead of zeroing weights after it.")
            elif (actual.masked_select(~mask.expand_as(scores)) != 0).any():
                hint = "Keys where the mask is False must get weight exactly 0 (fill their scores with -inf)."
            else:
                hint = "Fill masked positions (mask == False) with -inf, then take the softmax over the last dim."
        expect_close(actual, expected, what, hint=hint)
