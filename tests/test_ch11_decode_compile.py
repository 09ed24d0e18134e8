"""Compile the decode kernels for sm_75, sm_80, sm_89 and sm_90 on the CPU and check their shared memory fits.

The one compile check of every kernel family (:mod:`attention_lab.kernels.compile_check`), for the
``decode`` family: the paged and the contiguous kernel with the configuration :func:`decode_config`
picks on each architecture, at head_dim 128 and a query group of 32 (MQA with 32 heads), the largest
tiles they meet, and the split-K merge. The compiles run in a fresh Python without ``TRITON_INTERPRET``
(the kernels must be real ``JITFunction`` objects), stopped after the shared-memory allocation pass.
"""

import pytest

from attention_lab.kernels.compile_check import CAPABILITIES, check_in_subprocess


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    pytest.importorskip("triton")
    return check_in_subprocess(families=("decode",), capabilities=CAPABILITIES, timeout=600)


def test_every_architecture_compiles_and_fits(compiled):
    assert {r["capability"] for r in compiled} == set(CAPABILITIES)
    assert {r["kernel"] for r in compiled} == {"paged", "contiguous", "merge"}
    for row in compiled:
        assert row["family"] == "decode" and row["skipped"] is None
        assert 0 < row["shared"] <= row["limit"] and row["fits"], row


def test_t4_gets_the_small_tile(compiled):
    t4 = [r for r in compiled if r["capability"] == 75 and r["kernel"] != "merge"]
    assert all(r["config"]["TILE_N"] == 32 and r["num_stages"] == 2 for r in t4)
    assert max(r["shared"] for r in t4) <= 64 * 1024


def test_spill_check_reads_registers_and_spills_from_ptxas():
    """The room for a T4 spill check: a full compile and ``ptxas -v`` give registers and spilled bytes per kernel."""
    rows = check_in_subprocess(families=("decode",), capabilities=(90,), spills=True, timeout=600)
    merge = next(r for r in rows if r["kernel"] == "merge")
    assert 0 < merge["registers"] <= 255 and merge["spill_stores"] == merge["spill_loads"] == 0
    assert all(r["shared"] <= r["limit"] for r in rows)  # the full compile's own shared memory
