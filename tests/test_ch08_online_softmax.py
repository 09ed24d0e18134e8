"""Chapter 08: the N/D toy to 1e-12, online softmax vs softmax on hard rows, and the exercise checker."""

import math

import pytest
import torch

from attention_lab.exercises import ExerciseError
from attention_lab.exercises.ch08 import check_online_step
from attention_lab.flash.online_softmax import (TOY_VALUES, online_attention, online_softmax, online_softmax_update,
                                                softmax_without_max, stream_plain, stream_with_max,
                                                toy_closed_form, toy_scores)
from reference import tolerance


def test_toy_closed_form_value():
    e = math.e
    assert toy_closed_form() == pytest.approx(6.4809, abs=1e-4)
    assert abs(toy_closed_form() - (2 * e + 4 * e**2 + 8 * e**3) / (e + e**2 + e**3)) < 1e-15


def test_toy_streamed_equals_closed_form_to_1e12():
    plain, with_max = stream_plain(toy_scores(), TOY_VALUES), stream_with_max(toy_scores(), TOY_VALUES)
    assert abs(plain[-1].output - toy_closed_form()) < 1e-12
    assert abs(with_max[-1].output - toy_closed_form()) < 1e-12


def test_toy_intermediates():
    e = math.e
    plain = stream_plain(toy_scores(), TOY_VALUES)
    assert [s.numerator for s in plain] == pytest.approx([2 * e, 2 * e + 4 * e**2, 2 * e + 4 * e**2 + 8 * e**3])
    assert [s.denominator for s in plain] == pytest.approx([e, e + e**2, e + e**2 + e**3])
    steps = stream_with_max(toy_scores(), TOY_VALUES)
    assert [s.m for s in steps] == [1.0, 2.0, 3.0]
    assert [s.rescale for s in steps] == pytest.approx([0.0, math.exp(-1), math.exp(-1)])  # first: empty state
    # With the max, N and D are the plain sums divided by e^m.
    for s, p in zip(steps, plain):
        assert s.numerator == pytest.approx(p.numerator / math.exp(s.m))
        assert s.denominator == pytest.approx(p.denominator / math.exp(s.m))
    assert [s.output for s in steps] == pytest.approx([2.0, (2 * e + 4 * e**2) / (e + e**2), toy_closed_form()])


def test_overflow_without_max_and_fine_with_it():
    scores, values = [1000.0, 1001.0, 1002.0], [2.0, 4.0, 8.0]
    assert math.isnan(stream_plain(scores, values)[-1].output)  # inf / inf
    assert stream_with_max(scores, values)[-1].output == pytest.approx(toy_closed_form(), abs=1e-12)  # shift-invariant
    x = torch.tensor([[1000.0, 1001.0, 1002.0]])
    assert torch.isnan(softmax_without_max(x)).all()
    torch.testing.assert_close(online_softmax(x), torch.softmax(x, -1))


def _hard_rows(generator):
    x = torch.randn(6, 53, generator=generator, dtype=torch.float64) * 4
    x[0, :7] = -math.inf  # a masked prefix: the first blocks see only −inf
    x[1, ::3] = -math.inf  # scattered masked keys
    x[2] += 1000.0  # huge logits
    x[3, 40] = 3000.0  # one dominant logit late in the row
    x[4] = -math.inf  # a fully masked row
    x[5, 5] = -1000.0
    return x


@pytest.mark.parametrize("block_size", [1, 2, 7, 16, 53, 100])
def test_online_softmax_matches_softmax_on_hard_rows(block_size):
    x = _hard_rows(torch.Generator().manual_seed(block_size))
    expected = torch.softmax(x, -1).nan_to_num(0.0)  # the fully masked row: zeros by our convention
    torch.testing.assert_close(online_softmax(x, block_size), expected, **tolerance("fp64_same_order"))


@pytest.mark.parametrize("block_size", [1, 3, 8, 53])
def test_online_attention_matches_softmax_times_values(block_size):
    g = torch.Generator().manual_seed(1)
    x = _hard_rows(g)
    values = torch.randn(53, 5, generator=g, dtype=torch.float64)
    expected = torch.softmax(x, -1).nan_to_num(0.0) @ values
    torch.testing.assert_close(online_attention(x, values, block_size), expected, **tolerance("fp64_paths"))


def test_online_softmax_float32_random_rows():
    x = torch.randn(4, 3, 100, generator=torch.Generator().manual_seed(2)) * 30
    torch.testing.assert_close(online_softmax(x, 16), torch.softmax(x, -1), **tolerance("fp32_same_layer"))


def test_update_keeps_empty_rows_clean_and_broadcasts():
    m = torch.full((2, 3), -math.inf)
    l, acc = torch.zeros(2, 3), torch.zeros(2, 3, 4)
    scores = torch.full((2, 3, 5), -math.inf)
    m, l, acc = online_softmax_update(m, l, acc, scores, torch.randn(2, 1, 5, 4))
    assert torch.isinf(m).all() and (l == 0).all() and (acc == 0).all()


def test_online_attention_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"scores must be \(R, Nk\)"):
        online_attention(torch.zeros(3, 4), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="block_size"):
        online_attention(torch.zeros(3, 4), torch.zeros(4, 2), block_size=0)


# --- the chapter 08 exercise ---------------------------------------------------------------------------

def step_solution(m, numerator, denominator, score, value):
    m_new = max(m, score)
    rescale = math.exp(m - m_new)
    weight = math.exp(score - m_new)
    return m_new, numerator * rescale + weight * value, denominator * rescale + weight


def step_forgets_old_numerator(m, numerator, denominator, score, value):
    m_new = max(m, score)
    rescale, weight = math.exp(m - m_new), math.exp(score - m_new)
    return m_new, numerator + weight * value, denominator * rescale + weight


def step_forgets_denominator(m, numerator, denominator, score, value):
    m_new = max(m, score)
    rescale, weight = math.exp(m - m_new), math.exp(score - m_new)
    return m_new, numerator * rescale + weight * value, denominator + weight


def step_inverted_rescale(m, numerator, denominator, score, value):
    m_new = max(m, score)
    rescale = math.exp(m_new - m) if m != -math.inf else 0.0
    weight = math.exp(score - m_new)
    return m_new, numerator * rescale + weight * value, denominator * rescale + weight


def step_without_max(m, numerator, denominator, score, value):
    return 0.0, numerator + math.exp(score) * value, denominator + math.exp(score)


def step_weight_not_shifted(m, numerator, denominator, score, value):
    m_new = max(m, score)
    rescale = math.exp(m - m_new)
    return m_new, numerator * rescale + math.exp(score) * value, denominator * rescale + math.exp(score)


def stub(*args):
    raise NotImplementedError("exercise: write this part")


def test_ch08_checker_passes_solution(capsys):
    assert check_online_step(step_solution)
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [step_forgets_old_numerator, step_forgets_denominator, step_inverted_rescale,
                                   step_without_max, step_weight_not_shifted, stub])
def test_ch08_checker_rejects_classic_mistakes(wrong):
    with pytest.raises(ExerciseError):
        check_online_step(wrong)


def test_ch08_message_names_the_rescale():
    with pytest.raises(ExerciseError, match="old numerator"):
        check_online_step(step_forgets_old_numerator)


# --- what chapter 08 says about fp16: the overflow limits, fp32 statistics, and the kernel lines it displays ----

def test_fp16_overflow_points_and_the_max_trick():
    limit16 = math.log(torch.finfo(torch.float16).max)
    assert 11 < limit16 < 11.1
    row = torch.tensor([[12.0, 3.0, 0.0]], dtype=torch.float16)  # just past fp16's limit, far below fp32's
    assert torch.isnan(softmax_without_max(row)).any()
    assert torch.isfinite(softmax_without_max(row.float())).all()
    assert torch.isnan(softmax_without_max(torch.tensor([[89.0, 0.0]]))).any()  # past fp32's limit
    torch.testing.assert_close(online_softmax(torch.tensor([[89.0, 3.0, 0.0]], dtype=torch.float16)).float(),
                               torch.softmax(torch.tensor([[89.0, 3.0, 0.0]], dtype=torch.float64), -1).float(),
                               **tolerance(torch.float16))
    running = torch.zeros((), dtype=torch.float16)
    for _ in range(3000):
        running = running + 1
    assert running.item() == 2048  # an fp16 running sum of ones stops at 2^11


def test_the_kernel_lines_chapter_08_displays_exist():
    import inspect
    import re

    from attention_lab.flash import triton_attention
    from attention_lab.kernels import common

    state = [line for line in inspect.getsource(triton_attention).splitlines()
             if re.match(r"\s+(m_i|l_i|acc) = tl\.zeros\(", line)]
    assert len(state) >= 3 and all("tl.float32" in line for line in state)
    assert any("p.to(values.dtype)" in line for line in inspect.getsource(common).splitlines())
