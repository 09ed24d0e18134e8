"""Every exercise of the book: its chapter, its name, the function the student writes, its checker and points.

The grading command (:mod:`attention_lab.exercises.grade`) reads this table to run each checker on the
student's function itself, so a check cell that is deleted or edited in a notebook changes nothing.
A test keeps it in step with the check cells of ``notebooks/src/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from attention_lab.exercises import ch00, ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10, ch11, ch12, ch13


@dataclass(frozen=True)
class Exercise:
    """One exercise: ``checker(<the notebook's function called `function`>)`` passes or raises ExerciseError."""

    chapter: str  # two digits, as in the notebook's file name: "04"
    name: str  # what the grader's table shows
    function: str  # the name the notebook gives the student's function
    checker: Callable[[Callable], bool]  # from attention_lab.exercises.chNN
    points: int = 1

    def __post_init__(self) -> None:
        if not (len(self.chapter) == 2 and self.chapter.isdigit()):
            raise ValueError(f"chapter must be two digits such as '04', got {self.chapter!r}")
        if not self.function.isidentifier():
            raise ValueError(f"function must be a Python name, got {self.function!r}")
        if not callable(self.checker):
            raise ValueError(f"checker must be a checker function, got {self.checker!r}")
        if not (isinstance(self.points, int) and self.points > 0):
            raise ValueError(f"points must be a positive int, got {self.points!r}")


def _chapter(chapter: str, *exercises: tuple[str, str, Callable]) -> list[Exercise]:
    return [Exercise(chapter, name, function, checker) for name, function, checker in exercises]


EXERCISES: dict[str, list[Exercise]] = {
    "00": _chapter("00", ("additive attention", "my_additive_attention", ch00.check_additive_attention)),
    "01": _chapter("01", ("scaled dot-product attention", "attention", ch01.check_attention),
                   ("sinusoidal positions", "positional_encoding", ch01.check_sinusoidal_positions),
                   ("multi-head attention, step by step", "multi_head_attention", ch01.check_multi_head_attention),
                   ("masked softmax over valid lengths", "valid_length_softmax", ch01.check_valid_length_softmax)),
    "02": _chapter("02", ("causal mask", "make_causal_mask", ch02.check_causal_mask),
                   ("masked softmax", "masked_softmax", ch02.check_masked_softmax)),
    "03": _chapter("03", ("KV-cache append", "cache_append", ch03.check_cache_append)),
    "04": _chapter("04", ("sliding-window (band) mask", "band_mask", ch04.check_band_mask),
                   ("rolling-buffer read order", "read_order", ch04.check_read_order)),
    "05": _chapter("05", ("grouped-query decode step", "grouped_decode", ch05.check_grouped_decode)),
    "06": _chapter("06", ("mean-pooled key/value heads", "mean_pool", ch06.check_mean_pool)),
    "07": _chapter("07", ("bytes of the softmax kernel", "softmax_bytes", ch07.check_softmax_bytes)),
    "08": _chapter("08", ("online softmax step", "step", ch08.check_online_step)),
    "09": _chapter("09", ("tiled FlashAttention block update", "block_update", ch09.check_block_update)),
    "10": _chapter("10", ("online-softmax step of the Triton kernel", "online_softmax_step",
                          ch10.check_online_softmax_step)),
    "11": _chapter("11", ("logical -> physical slot", "physical_slot", ch11.check_physical_slot),
                   ("blocks needed", "count_blocks", ch11.check_blocks_needed)),
    "12": _chapter("12", ("absorbed query", "absorbed_query", ch12.check_absorbed_query)),
    "13": _chapter("13", ("KV-cache bytes per token", "cache_bytes_per_token", ch13.check_cache_bytes_per_token)),
}


def exercises_for(chapter: str) -> list[Exercise]:
    """The exercises of ``chapter`` ("04"), in the order the notebook has them; ValueError for an unknown one."""
    if chapter not in EXERCISES:
        raise ValueError(f"chapter must be one of {', '.join(EXERCISES)}, got {chapter!r}")
    return EXERCISES[chapter]
