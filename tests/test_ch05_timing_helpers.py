"""Chapter 05's timing helpers (attention_lab.costs.timing): interleaved least times, the fixed + per-unit
line, the size from which one cost is below another by more than the noise, and the operation count."""

import time

import pytest
import torch

from attention_lab.costs.timing import count_operations, faster_from, fixed_and_per_unit, least_times


def test_least_times_interleaves_the_keys_and_keeps_each_fastest_run():
    calls = []
    durations = {("a", 1): [0.003, 0.001, 0.002], ("b", 1): [0.002, 0.004, 0.003],
                 ("a", 2): [0.006, 0.005, 0.007], ("b", 2): [0.004, 0.002, 0.009]}

    def make(key, size):
        calls.append((key, size))
        seconds = durations[key, size][calls.count((key, size)) - 1]  # this round's duration

        def fn():  # burns `seconds` of CPU time (least_time measures process time on the CPU)
            end = time.process_time() + seconds
            while time.process_time() < end:
                pass
        return fn

    best = least_times(make, ["a", "b"], [1, 2], rounds=3, repeats=1, warmup=0, device="cpu", progress=False)
    # round after round, size after size, the keys take turns
    assert calls == [("a", 1), ("b", 1), ("a", 2), ("b", 2)] * 3
    for key in "ab":
        for i, size in enumerate([1, 2]):
            fastest = min(durations[key, size])
            assert fastest <= best[key][i] < fastest + 0.0015, (key, size, best[key][i])


def test_least_times_refuses_bad_arguments():
    with pytest.raises(ValueError, match="rounds must be a positive int"):
        least_times(lambda k, s: (lambda: None), ["a"], [1], rounds=0, progress=False)
    with pytest.raises(ValueError, match="keys and sizes must be non-empty"):
        least_times(lambda k, s: (lambda: None), [], [1], progress=False)


def test_fixed_and_per_unit_recovers_a_line_and_fits_noise_by_least_squares():
    sizes = [16, 64, 256, 1024]
    fixed, per_unit = fixed_and_per_unit(sizes, [0.5e-3 + 2e-6 * n for n in sizes])
    assert fixed == pytest.approx(0.5e-3) and per_unit == pytest.approx(2e-6)
    fixed, per_unit = fixed_and_per_unit([0, 1, 2, 3], [1.0, 2.0, 2.0, 3.0])  # least squares: y = 1.1 + 0.6 x
    assert (fixed, per_unit) == (pytest.approx(1.1), pytest.approx(0.6))
    with pytest.raises(ValueError, match="two different values"):
        fixed_and_per_unit([8, 8], [1.0, 2.0])
    with pytest.raises(ValueError, match="same length"):
        fixed_and_per_unit([1, 2], [1.0])


def test_faster_from_needs_the_margin_at_that_size_and_every_larger_one():
    sizes = [1, 16, 64, 256, 1024]
    slow = [1.0, 1.0, 1.2, 2.0, 5.0]
    assert faster_from(sizes, slow, [1.0, 0.95, 1.0, 1.2, 2.0], margin=0.1) == 64  # 0.95 at 16 is within 10 %
    assert faster_from(sizes, slow, [1.0, 0.95, 1.0, 1.2, 2.0], margin=0.0) == 16
    assert faster_from(sizes, slow, [0.5, 2.0, 0.5, 0.5, 0.5]) == 64  # a slower point in between resets it
    assert faster_from(sizes, slow, [0.5, 0.5, 0.5, 0.5, 4.9]) is None  # not faster by the margin at the largest
    assert faster_from(sizes, slow, slow) is None
    with pytest.raises(ValueError, match="ascending"):
        faster_from([2, 1], [1.0, 1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="margin"):
        faster_from([1], [1.0], [0.5], margin=1.0)


def test_count_operations_counts_what_pytorch_runs():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert count_operations(lambda: a + b) == 1
    assert count_operations(lambda: (a + b) * 2) == 2
    assert count_operations(lambda: None) == 0
    layer = torch.nn.Linear(4, 5)
    x = torch.randn(2, 4)
    with torch.no_grad():
        counted = count_operations(lambda: layer(x))
        assert counted >= 1  # a linear layer: at least the matrix product (PyTorch may add views around it)
        assert count_operations(lambda: [layer(x) for _ in range(3)]) == 3 * counted
