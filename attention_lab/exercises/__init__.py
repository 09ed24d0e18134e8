"""Exercise checkers, one module per chapter (``attention_lab.exercises.ch01`` …), and the
student-notebook builder (``python -m attention_lab.exercises build``)."""

from attention_lab.exercises.core import ExerciseError, exercise_check, expect_close

__all__ = ["ExerciseError", "exercise_check", "expect_close"]
