"""Chapter 01's cost curve: the fastest of several runs, and the exponent of a power-law fit."""

from types import SimpleNamespace

import pytest

from attention_lab import scaled_dot_product_attention
from attention_lab.costs import timing
from attention_lab.costs.timing import attention_cost_curve, growth_exponent, least_time


def test_growth_exponent_of_exact_power_laws():
    sizes = [128, 256, 512, 1024]
    assert growth_exponent(sizes, [3e-6 * n ** 2 for n in sizes]) == pytest.approx(2.0)
    assert growth_exponent(sizes, [5.0 * n for n in sizes]) == pytest.approx(1.0)
    assert growth_exponent([1, 2], [7.0, 7.0]) == pytest.approx(0.0)


def test_least_time_is_the_fastest_run(monkeypatch):
    # a fake CPU clock that only `work` advances, so the machine's load cannot move the answer
    clock = {"now": 0.0}
    monkeypatch.setattr(timing, "time", SimpleNamespace(process_time=lambda: clock["now"],
                                                        perf_counter=lambda: clock["now"]))
    durations = iter([0.0, 0.05, 0.01, 0.05, 0.03])  # the warm-up, then four runs of which one is quick

    def work():
        clock["now"] += next(durations)

    assert least_time(work, repeats=4, warmup=1, device="cpu") == pytest.approx(0.01, abs=1e-12)


def test_cost_curve_reports_quadratic_memory():
    cost = attention_cost_curve(scaled_dot_product_attention, [64, 128], head_dim=16, n_heads=2, repeats=2)
    assert cost["n"] == [64, 128] and all(s > 0 for s in cost["seconds"])
    assert growth_exponent(cost["n"], cost["peak_bytes"]) == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize("sizes, values, message", [([1], [1.0], "length >= 2"), ([1, 2], [1.0], "same length"),
                                                    ([0, 2], [1.0, 2.0], "positive")])
def test_growth_exponent_refuses_what_it_cannot_fit(sizes, values, message):
    with pytest.raises(ValueError, match=message):
        growth_exponent(sizes, values)
