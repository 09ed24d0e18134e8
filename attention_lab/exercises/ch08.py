"""Chapter 08 — one step of the online softmax with a running max (the N/D toy)."""

from __future__ import annotations

import math
import random
from typing import Callable

from attention_lab.flash.online_softmax import (TOY_VALUES, online_update_scalar, stream_with_max, toy_closed_form,
                                                toy_scores)
from attention_lab.exercises.core import ExerciseError, call, exercise_check

_HINT = ("When a larger score arrives, m grows and BOTH old sums were computed relative to the old max: multiply "
         "the old numerator N and the old denominator D by exp(m_old − m_new) (a number ≤ 1) before adding "
         "exp(s − m_new)·v and exp(s − m_new).")


_RESCALE = "exp(m_old − m_new)"


def _model(m_new, rescale, weight, order=("m", "n", "d"), scale_n=True, scale_d=True, base=math.e):
    """A step function built from pieces, to model one mistake (``rescale``/``weight`` get (m, m_new, s))."""

    def step(m, numerator, denominator, score, value):
        new = m_new(m, score)
        r = rescale(m, new, score)
        w = weight(m, new, score)
        n = (numerator * r if scale_n else numerator) + w * value
        d = (denominator * r if scale_d else denominator) + w
        parts = {"m": new, "n": n, "d": d}
        return tuple(parts[key] for key in order)

    return step


def _exp(x: float, base: float = math.e) -> float:
    return 0.0 if x == -math.inf else base ** x


_RIGHT = dict(m_new=lambda m, s: max(m, s), rescale=lambda m, new, s: _exp(m - new), weight=lambda m, new, s: _exp(s - new))

_MISTAKES: list[tuple[str, Callable]] = [
    ("The old numerator N is not rescaled: when the max grows, N was computed relative to the old max — "
     f"multiply it by {_RESCALE} (as you did D) before adding exp(s − m_new)·v.",
     _model(**_RIGHT, scale_n=False)),
    (f"The old denominator D is not rescaled: multiply it by {_RESCALE} (as you did N) before adding "
     "exp(s − m_new).", _model(**_RIGHT, scale_d=False)),
    ("Neither old sum is rescaled: when a larger score arrives, N and D were both computed relative to the old "
     f"max — multiply both by {_RESCALE} before adding the new key's terms.",
     _model(**_RIGHT, scale_n=False, scale_d=False)),
    (f"The rescale factor is upside down: it is {_RESCALE} (a number ≤ 1 that shrinks the old sums), not "
     "exp(m_new − m_old).",
     _model(_RIGHT["m_new"], lambda m, new, s: 0.0 if m == -math.inf else math.exp(new - m), _RIGHT["weight"])),
    ("The new key's weight is exp(s − m_new), relative to the running max like everything else — exp(s) "
     "alone overflows and mixes two scales.", _model(_RIGHT["m_new"], _RIGHT["rescale"], lambda m, new, s: math.exp(s))),
    ("The new key's weight is taken relative to the NEW max, exp(s − m_new), like the rescaled old sums — not "
     "relative to the old max.", _model(_RIGHT["m_new"], _RIGHT["rescale"],
                                        lambda m, new, s: 1.0 if m == -math.inf else math.exp(s - m))),
    ("The running max must be the max of ALL scores so far, m_new = max(m, s) — not the newest score.",
     _model(lambda m, s: s, lambda m, new, s: _exp(m - new), lambda m, new, s: 1.0)),
    (f"The rescale uses the new MAX: {_RESCALE}, where m_new = max(m_old, s) — exp(m_old − s) is wrong whenever "
     "the score is below the max.", _model(_RIGHT["m_new"], lambda m, new, s: _exp(m - s), _RIGHT["weight"])),
    ("Base e, not base 2: the sums are Σ exp(s_j − m) (Triton's exp2 trick needs scores multiplied by log2(e), "
     "chapter 10).", _model(_RIGHT["m_new"], lambda m, new, s: _exp(m - new, 2.0), lambda m, new, s: _exp(s - new, 2.0))),
    ("The state comes back in the wrong order: return (m_new, numerator_new, denominator_new).",
     _model(**_RIGHT, order=("m", "d", "n"))),
]

# A sequence where the max rises three times, falls once, and no sum overflows: every mistake above differs.
_PROBE = ([0.5, 2.0, -1.0, 3.5, 1.0, 3.0], [1.0, -2.0, 4.0, 0.5, 3.0, -1.5])


def _states(step: Callable, scores, values) -> list[tuple[float, float, float]]:
    state, states = (-math.inf, 0.0, 0.0), []
    for s, v in zip(scores, values):
        result = step(*state, s, v)
        if not isinstance(result, tuple) or len(result) != 3:
            raise ExerciseError("step must return a tuple (m_new, numerator_new, denominator_new).")
        state = tuple(float(x) for x in result)
        states.append(state)
    return states


def _same(a, b) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(x) and math.isnan(y))
               for x, y in zip(a, b))


def _diagnose(step: Callable) -> str:
    """The hint of the mistake the student's step makes on the probe sequence (the general hint otherwise)."""
    try:
        got = _states(step, *_PROBE)
    except Exception:  # noqa: BLE001 - the caller reports the failure itself
        return _HINT
    for hint, model in _MISTAKES:
        if all(_same(a, b) for a, b in zip(got, _states(model, *_PROBE))):
            return hint
    if got and got[0][0] == 0.0 and all(state[0] == 0.0 for state in got):
        return "The running max m never moves: m_new = max(m, s) — and every exponent is taken relative to it. " + _HINT
    return _HINT


def _run(step: Callable, scores, values) -> tuple[float, float, float]:
    m, numerator, denominator = -math.inf, 0.0, 0.0
    for s, v in zip(scores, values):
        try:
            result = call(step, m, numerator, denominator, s, v, what=f"step on score {s}",
                          hint=lambda error: "The arguments are Python floats: use math.exp and max, not torch "
                                             "functions." if isinstance(error, TypeError) else _HINT)
        except ExerciseError as error:
            if isinstance(error.__cause__, (OverflowError, ZeroDivisionError, ArithmeticError)):
                raise ExerciseError(
                    f"step raised {type(error.__cause__).__name__} on score {s}: exp of a large number overflows — "
                    "subtract the running max before exponentiating. " + _HINT) from error.__cause__
            raise
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
        raise ExerciseError(f"the toy's running max should end at 3 (the largest score), got {m}. {_diagnose(step)}")
    toy = numerator / denominator if denominator else math.nan
    if not abs(toy - toy_closed_form()) < 1e-12:
        raise ExerciseError(f"the toy gives {toy!r}, expected (2e+4e²+8e³)/(e+e²+e³) = {toy_closed_form()!r}. "
                            f"{_diagnose(step)}")
    # The state itself (not only the ratio N/D) must match, step by step, on sequences where the max changes.
    for scores, values in ([[0.5, 2.0, -1.0, 3.5], [1.0, -2.0, 4.0, 0.5]], _PROBE):
        state = (-math.inf, 0.0, 0.0)
        for expected in stream_with_max(scores, values):
            result = call(step, *state, expected.score, expected.value, what=f"step on score {expected.score}")
            if not isinstance(result, tuple) or len(result) != 3:
                raise ExerciseError("step must return a tuple (m_new, numerator_new, denominator_new).")
            state = tuple(float(x) for x in result)
            want = (expected.m, expected.numerator, expected.denominator)
            if not all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12) for a, b in zip(state, want)):
                raise ExerciseError(f"after score {expected.score}: got (m, N, D) = {state}, expected {want}. "
                                    f"{_diagnose(step)}")
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
