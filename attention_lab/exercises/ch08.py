"""Chapter 08 — one step of the online softmax with a running max (the N/D toy)."""

from __future__ import annotations

import math
import random
from typing import Callable

from attention_lab.flash.online_softmax import (TOY_VALUES, online_update_scalar, stream_with_max, toy_closed_form,
                                                toy_scores)
from attention_lab.exercises.core import ExerciseError, exercise_check

_HINT = ("When a larger score arrives, m grows and BOTH old sums were computed relative to the old max: multiply "
         "the old numerator N and the old denominator D by exp(m_old − m_new) (a number ≤ 1) before adding "
         "exp(s − m_new)·v and exp(s − m_new).")


def _run(step: Callable, scores, values) -> tuple[float, float, float]:
    m, numerator, denominator = -math.inf, 0.0, 0.0
    for s, v in zip(scores, values):
        try:
            result = step(m, numerator, denominator, s, v)
        except (OverflowError, ZeroDivisionError, ArithmeticError) as error:
            raise ExerciseError(f"step raised {type(error).__name__} on score {s}: exp of a large number overflows — "
                                "subtract the running max before exponentiating. " + _HINT) from None
        if not isinstance(result, tuple) or len(result) != 3:
            raise ExerciseError("step must return a tuple (m_new, numerator_new, denominator_new).")
        m, numerator, denominator = (float(x) for x in result)
    return m, numerator, denominator


@exercise_check("online softmax step")
def check_online_step(step: Callable[[float, float, float, float, float], tuple[float, float, float]]) -> None:
    """``step(m, numerator, denominator, score, value)`` -> ``(m_new, numerator_new, denominator_new)``: fold
    one key into the running max m, numerator N = Σ exp(s_j − m)·v_j and denominator D = Σ exp(s_j − m).
    The state before the first key is (−inf, 0, 0)."""
    m, numerator, denominator = _run(step, toy_scores(), TOY_VALUES)
    if m != 3.0:
        raise ExerciseError(f"the toy's running max should end at 3 (the largest score), got {m}.")
    toy = numerator / denominator if denominator else math.nan
    if not abs(toy - toy_closed_form()) < 1e-12:
        raise ExerciseError(f"the toy gives {toy!r}, expected (2e+4e²+8e³)/(e+e²+e³) = {toy_closed_form()!r}. {_HINT}")
    # The state itself (not only the ratio N/D) must match, step by step, on a sequence where the max changes.
    expected_steps = stream_with_max([0.5, 2.0, -1.0, 3.5], [1.0, -2.0, 4.0, 0.5])
    state = (-math.inf, 0.0, 0.0)
    for expected in expected_steps:
        state = tuple(float(x) for x in step(*state, expected.score, expected.value))
        want = (expected.m, expected.numerator, expected.denominator)
        if not all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12) for a, b in zip(state, want)):
            raise ExerciseError(f"after score {expected.score}: got (m, N, D) = {state}, expected {want}. {_HINT}")
    # Random rows with a huge logit: the max trick must keep everything finite.
    rng = random.Random(8)
    for trial in range(5):
        scores = [rng.uniform(-5, 5) for _ in range(11)]
        scores[rng.randrange(11)] = 1000.0 + trial
        values = [rng.uniform(-3, 3) for _ in range(11)]
        m, numerator, denominator = _run(step, scores, values)
        state = (-math.inf, 0.0, 0.0)
        for s, v in zip(scores, values):
            state = online_update_scalar(*state, s, v)[:3]
        if not (math.isfinite(numerator) and math.isfinite(denominator)):
            raise ExerciseError(f"with a logit of {1000 + trial} the sums became {numerator}, {denominator}. {_HINT}")
        if not math.isclose(numerator / denominator, state[1] / state[2], rel_tol=1e-9, abs_tol=1e-12):
            raise ExerciseError(f"random row {trial}: got {numerator / denominator}, expected {state[1] / state[2]}. {_HINT}")
