"""The lecture slides' numbers (as quoted in issue #17): what is known, what follows from it, nothing invented."""

import math

import pytest

from attention_lab import seed_numbers
from attention_lab.seed_numbers import (CAUSAL_ROW_SUMS, SELF_ATTENTION, WINDOW_ROWS, WORDS, renormalised, softmax,
                                        slides_self_attention_table, unmasked_row)
from attention_lab.toy_sentence import SENTENCE


def test_only_the_quoted_cells_are_known():
    table = slides_self_attention_table()
    assert len(table) == 6 and all(len(row) == 6 for row in table)
    known = {(WORDS[i], WORDS[j]): w for i, row in enumerate(table) for j, w in enumerate(row) if w is not None}
    assert known == SELF_ATTENTION == {("THE", "THE"): 0.268, ("CAT", "THE"): 0.124, ("CAT", "CAT"): 0.278}
    assert list(WORDS) == SENTENCE
    assert "issue #17" in seed_numbers.SOURCE


def test_the_causal_row_sums_are_the_unmasked_weights_kept_unrenormalised():
    for word, quoted_sum in CAUSAL_ROW_SUMS.items():
        assert math.isclose(sum(unmasked_row(word)), quoted_sum, abs_tol=1e-9)
        assert quoted_sum < 1  # a causal softmax row would sum to 1: the slides' rows were not renormalised
    assert renormalised(unmasked_row("THE")) == (1.0,)
    assert [round(w, 3) for w in renormalised(unmasked_row("CAT"))] == [0.308, 0.692]


def test_the_window_table_is_a_second_softmax():
    """The w=3 table's CAT row is softmax([0.124, 0.278]) = [0.4616, 0.5384], printed 0.461 / 0.538."""
    twice = softmax(unmasked_row("CAT"))
    assert [round(w, 4) for w in twice] == [0.4616, 0.5384]
    assert all(abs(a - b) < 1e-3 for a, b in zip(twice, WINDOW_ROWS["CAT"]))
    assert all(abs(a - b) > 0.1 for a, b in zip(renormalised(unmasked_row("CAT")), WINDOW_ROWS["CAT"]))


def test_rows_that_are_not_quoted_whole_are_refused():
    with pytest.raises(ValueError, match="not quoted"):
        unmasked_row("IS")
    with pytest.raises(ValueError, match="word must be one of"):
        unmasked_row("DOG")
    with pytest.raises(ValueError, match="positive weight"):
        renormalised(())
    with pytest.raises(ValueError, match="must not be empty"):
        softmax(())
