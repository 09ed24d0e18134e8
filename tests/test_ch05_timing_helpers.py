"""Chapter 05's timing helpers (attention_lab.costs.timing): interleaved least times, the fixed + per-unit
line, the size from which one cost is below another by more than the noise, and the operation count."""

from types import SimpleNamespace

import pytest
import torch

from attention_lab.costs import timing
from attention_lab.costs.timing import count_operations, faster_from, fixed_and_per_unit, least_times


def test_least_times_interleaves_the_keys_and_keeps_each_fastest_run(monkeypatch):
    # A fake CPU clock that only the timed functions advance: the test reads least_times' bookkeeping (who runs
    # when, which run is kept), not this machine's scheduler. A real busy-wait here failed on a loaded 2-core CI
    # machine, where the process's other threads ran while the loop was descheduled and added to its CPU time.
    clock = {"now": 0.0}
    monkeypatch.setattr(timing, "time", SimpleNamespace(process_time=lambda: clock["now"],
                                                        perf_counter=lambda: clock["now"]))
    calls = []
    durations = {("a", 1): [0.003, 0.001, 0.002], ("b", 1): [0.002, 0.004, 0.003],
                 ("a", 2): [0.006, 0.005, 0.007], ("b", 2): [0.004, 0.002, 0.009]}

    def make(key, size):
        calls.append((key, size))
        seconds = durations[key, size][calls.count((key, size)) - 1]  # this round's duration

        def fn():  # costs exactly `seconds` of (fake) CPU time
            clock["now"] += seconds
        return fn

    best = least_times(make, ["a", "b"], [1, 2], rounds=3, repeats=1, warmup=0, device="cpu", progress=False)
    # round after round, size after size, the keys take turns
    assert calls == [("a", 1), ("b", 1), ("a", 2), ("b", 2)] * 3
    assert best == {key: [pytest.approx(min(durations[key, size]), abs=1e-12) for size in (1, 2)] for key in "ab"}
    # a warm-up run is not timed, and each of `repeats` runs is: the least is still each round's duration
    calls.clear()
    best = least_times(make, ["a", "b"], [1, 2], rounds=3, repeats=2, warmup=1, device="cpu", progress=False)
    assert best == {key: [pytest.approx(min(durations[key, size]), abs=1e-12) for size in (1, 2)] for key in "ab"}


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
    assert faster_from(sizes, slow, [1.0, 0.95, 1.0, 1.2, 2.0], below=0.9) == 64  # 0.95 at 16 is within 10 %
    assert faster_from(sizes, slow, [1.0, 0.95, 1.0, 1.2, 2.0], below=1.0) == 16
    assert faster_from(sizes, slow, [0.5, 2.0, 0.5, 0.5, 0.5]) == 64  # a slower point in between resets it
    assert faster_from(sizes, slow, [0.5, 0.5, 0.5, 0.5, 4.9]) is None  # not faster by the margin at the largest
    assert faster_from(sizes, slow, slow) is None
    with pytest.raises(ValueError, match="ascending"):
        faster_from([2, 1], [1.0, 1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="finite number"):
        faster_from([1], [1.0], [0.5], below=float("nan"))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive finite times"):
            faster_from([1, 2], [1.0, bad], [0.5, 0.5])


def test_faster_from_takes_any_threshold_noisy_timings_produce():
    """Chapter 05's threshold is one_token × (1 − noise): on a busy GPU one_token can exceed 1 and the noise can
    reach 100 %. Both are measurements, not mistakes: the answer is a size or None, never an error."""
    sizes = [1, 16, 64]
    mha = [1.0, 1.5, 4.0]
    mqa = [1.2, 1.6, 2.0]  # slower at one token (1.2×), then overtaken
    assert faster_from(sizes, mha, mqa, below=1.2 * (1 - 0.05)) == 16
    assert faster_from(sizes, mha, mqa, below=1.2 * (1 - 0.5)) == 64
    assert faster_from(sizes, mha, mqa, below=1.2 * (1 - 1.0)) is None  # noise of 100 %: nothing can be called
    assert faster_from(sizes, mha, mqa, below=1.2 * (1 - 1.7)) is None
    g = torch.Generator().manual_seed(0)
    for _ in range(200):  # random noisy timings: a size from the list or None, and the size really is faster
        base = (torch.rand(6, generator=g, dtype=torch.float64) * 5 + 0.01).tolist()
        cand = (torch.rand(6, generator=g, dtype=torch.float64) * 5 + 0.01).tolist()
        below = (torch.rand(1, generator=g, dtype=torch.float64).item() - 0.3) * 3
        since = faster_from(list(range(6)), base, cand, below=below)
        assert since is None or all(c < below * b for c, b in zip(cand[since:], base[since:]))
        assert since is None or since == 0 or cand[since - 1] >= below * base[since - 1]


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
