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


# --- chapter 00: additive attention -----------------------------------------------------------------

from attention_lab.additive import additive_attention, mean_pool  # noqa: E402
from attention_lab.exercises.ch00 import check_additive_attention  # noqa: E402


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
