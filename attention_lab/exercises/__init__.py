"""Exercise checkers, one module per chapter (``attention_lab.exercises.ch01`` …), the list of every
exercise (:mod:`.registry`), the student-notebook builder (``python -m attention_lab.exercises build``)
and the grading command (``python -m attention_lab.exercises grade NB.ipynb ... --json OUT``, :mod:`.grade`)."""

from attention_lab.exercises.core import ExerciseError, exercise_check, expect_close

__all__ = ["ExerciseError", "exercise_check", "expect_close"]
