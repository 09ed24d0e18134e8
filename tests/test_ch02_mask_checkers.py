"""Chapter 02's checkers (causal mask, masked softmax): pass the solution, fail the stub and plausible wrong answers."""

import pytest
import torch

from attention_lab.exercises import ExerciseError
from attention_lab.exercises.ch02 import check_causal_mask, check_masked_softmax

def stub(*args, **kwargs):
    raise NotImplementedError("exercise: write this part")



def mask_solution(n):
    return torch.tril(torch.ones(n, n, dtype=torch.bool))


def mask_without_diagonal(n):
    return torch.tril(torch.ones(n, n, dtype=torch.bool), diagonal=-1)


def mask_upper(n):
    return torch.triu(torch.ones(n, n, dtype=torch.bool))


def mask_as_floats(n):
    return torch.tril(torch.ones(n, n))


def masked_softmax_solution(scores, mask):
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def masked_softmax_zero_after(scores, mask):
    """The lecture's table: masked weights zeroed after the softmax, rows NOT renormalised."""
    return torch.softmax(scores, dim=-1) * mask


def masked_softmax_inverted(scores, mask):
    return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)


def masked_softmax_zero_scores(scores, mask):
    return torch.softmax(scores.masked_fill(~mask, 0.0), dim=-1)


def test_mask_checker_passes_solution():
    assert check_causal_mask(mask_solution)


@pytest.mark.parametrize("wrong", [stub, mask_without_diagonal, mask_upper, mask_as_floats])
def test_mask_checker_rejects(wrong):
    with pytest.raises(ExerciseError):
        check_causal_mask(wrong)


def test_masked_softmax_checker_passes_solution():
    assert check_masked_softmax(masked_softmax_solution)


@pytest.mark.parametrize("wrong", [stub, masked_softmax_zero_after, masked_softmax_inverted, masked_softmax_zero_scores])
def test_masked_softmax_checker_rejects(wrong):
    with pytest.raises(ExerciseError):
        check_masked_softmax(wrong)


def test_renormalisation_hint_for_the_lecture_table():
    with pytest.raises(ExerciseError, match="sum to 1"):
        check_masked_softmax(masked_softmax_zero_after)
