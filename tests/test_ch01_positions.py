"""Chapter 01's positions: the sinusoidal table, and attention's indifference to order until positions are added."""

import math

import pytest
import torch

from attention_lab.positions import order_sensitivity, sinusoidal_positions
from attention_lab.toy_sentence import word_embeddings


@pytest.mark.parametrize("n, d", [(1, 2), (7, 8), (50, 16), (13, 30)])
def test_sinusoidal_table_follows_the_formula_entry_by_entry(n, d):
    table = sinusoidal_positions(n, d, dtype=torch.float64)
    for p in range(n):
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-12)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-12)
    assert sinusoidal_positions(n, d).dtype == torch.float32


def test_every_position_gets_its_own_vector():
    table = sinusoidal_positions(64, 32)
    distances = torch.cdist(table, table) + torch.eye(64) * 10
    assert distances.min() > 0.1


def test_attention_ignores_order_until_positions_are_added():
    x = word_embeddings()
    generator = torch.Generator().manual_seed(0)
    orders = [torch.randperm(6, generator=generator) for _ in range(20)]
    assert max(order_sensitivity(x, o) for o in orders) < 1e-5
    positions = sinusoidal_positions(6, 8)
    assert max(order_sensitivity(x, o, positions) for o in orders) > 0.1
    assert order_sensitivity(x, torch.arange(6), positions) < 1e-6  # the identity changes nothing


@pytest.mark.parametrize("call, message", [
    (lambda: sinusoidal_positions(4, 7), "even"),
    (lambda: sinusoidal_positions(0, 8), "n_positions"),
    (lambda: sinusoidal_positions(4, 8, base=1.0), "base"),
    (lambda: order_sensitivity(word_embeddings(), torch.tensor([0, 0, 1, 2, 3, 4])), "permutation"),
    (lambda: order_sensitivity(word_embeddings(), torch.arange(6), torch.zeros(5, 8)), "positions must have"),
])
def test_bad_arguments_are_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
