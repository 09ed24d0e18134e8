"""Chapter 01's checker: passes the solution, fails the stub and plausible wrong answers."""

import pytest
import torch

from attention_lab.exercises import ExerciseError
from attention_lab.exercises.ch01 import check_attention

def stub(*args, **kwargs):
    raise NotImplementedError("exercise: write this part")



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
