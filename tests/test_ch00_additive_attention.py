"""Chapter 00: additive attention (Bahdanau) and its checker."""

import pytest
import torch

from attention_lab.additive import additive_attention, mean_pool
from attention_lab.exercises import ExerciseError
from attention_lab.exercises.ch00 import check_additive_attention

def stub(*args, **kwargs):
    raise NotImplementedError("exercise: write this part")



def additive_solution(query, keys, values, w_query, w_key, v):
    hidden = torch.tanh((query @ w_query.T).unsqueeze(1) + keys @ w_key.T)
    weights = torch.softmax(hidden @ v, dim=-1)
    return (weights.unsqueeze(1) @ values).squeeze(1), weights


def additive_without_tanh(query, keys, values, w_query, w_key, v):
    hidden = (query @ w_query.T).unsqueeze(1) + keys @ w_key.T
    weights = torch.softmax(hidden @ v, dim=-1)
    return (weights.unsqueeze(1) @ values).squeeze(1), weights


def additive_unnormalised(query, keys, values, w_query, w_key, v):
    weights = torch.exp(torch.tanh((query @ w_query.T).unsqueeze(1) + keys @ w_key.T) @ v)
    return (weights.unsqueeze(1) @ values).squeeze(1), weights


def additive_returns_only_context(query, keys, values, w_query, w_key, v):
    return additive_solution(query, keys, values, w_query, w_key, v)[0]


def test_additive_checker_passes_solution():
    assert check_additive_attention(additive_solution)


@pytest.mark.parametrize("wrong", [stub, additive_without_tanh, additive_unnormalised, additive_returns_only_context])
def test_additive_checker_rejects(wrong):
    with pytest.raises(ExerciseError):
        check_additive_attention(wrong)


def test_additive_attention_matches_a_loop_and_mean_pool_forgets_order():
    g = torch.Generator().manual_seed(0)
    query, keys, values = torch.randn(2, 3, generator=g), torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 6, generator=g)
    w_query, w_key, v = torch.randn(7, 3, generator=g), torch.randn(7, 4, generator=g), torch.randn(7, generator=g)
    context, weights = additive_attention(query, keys, values, w_query, w_key, v)
    for b in range(2):
        scores = torch.stack([v @ torch.tanh(w_query @ query[b] + w_key @ keys[b, j]) for j in range(5)])
        expected = torch.softmax(scores, 0)
        torch.testing.assert_close(weights[b], expected)
        torch.testing.assert_close(context[b], expected @ values[b])
    states = torch.randn(1, 4, 3, generator=g)
    torch.testing.assert_close(mean_pool(states), mean_pool(states.flip(1)))
    with pytest.raises(ValueError, match="must agree on B and N"):
        additive_attention(query, keys, values[:, :4], w_query, w_key, v)
