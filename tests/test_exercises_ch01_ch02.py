"""Chapter 01-02 checkers: pass the solution, fail the stub, fail plausible wrong answers."""

import pytest
import torch

from attention_lab.exercises import ExerciseError
from attention_lab.exercises.ch01 import check_attention
from attention_lab.exercises.ch02 import check_causal_mask, check_masked_softmax


def stub(*args, **kwargs):
    raise NotImplementedError("exercise: write this part")


# --- chapter 01: scaled dot-product attention -------------------------------------------------------

def attention_solution(q, k, v):
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    return torch.softmax(scores, dim=-1) @ v


def attention_without_scale(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v


def attention_softmax_over_queries(q, k, v):
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    return torch.softmax(scores, dim=-2) @ v


def attention_scaled_by_d_not_sqrt(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], dim=-1) @ v


def attention_returns_weights(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)


def test_attention_checker_passes_solution(capsys):
    assert check_attention(attention_solution)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [stub, attention_without_scale, attention_softmax_over_queries,
                                   attention_scaled_by_d_not_sqrt, attention_returns_weights])
def test_attention_checker_rejects(wrong):
    with pytest.raises(ExerciseError):
        check_attention(wrong)


def test_stub_message_says_not_written():
    with pytest.raises(ExerciseError, match="not written yet"):
        check_attention(stub)


# --- chapter 02: causal mask and masked softmax -------------------------------------------------------

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
