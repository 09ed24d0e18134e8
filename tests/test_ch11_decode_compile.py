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
    """On a T4 tl.dot runs on FMA units and nothing is pipelined: 16 keys per step, one stage, 8 warps in fp16
    (16 in fp32), so no value spills from registers (tests/test_ch10_t4_spills.py checks that with ptxas -v)."""
    from attention_lab.kernels.decode_attention import DecodeConfig, decode_config

    t4 = [r for r in compiled if r["capability"] == 75 and r["kernel"] != "merge"]
    assert t4 and all(r["config"]["TILE_N"] == 16 and r["num_warps"] == 8 and r["num_stages"] == 1 for r in t4)
    assert max(r["shared"] for r in t4) <= 64 * 1024
    for head_dim in (16, 64, 80, 128):
        assert decode_config(head_dim, 2, 75) == DecodeConfig(tile_n=16, num_warps=8, num_stages=1)
        assert decode_config(head_dim, 4, 75) == DecodeConfig(tile_n=16, num_warps=16, num_stages=1)
    assert decode_config(128, 2, None) == DecodeConfig(tile_n=32, num_warps=4, num_stages=2)  # the interpreter's


def test_spill_check_reads_registers_and_spills_from_ptxas():
    """The room for a T4 spill check: a full compile and ``ptxas -v`` give registers and spilled bytes per kernel."""
    rows = check_in_subprocess(families=("decode",), capabilities=(90,), spills=True, timeout=600)
    merge = next(r for r in rows if r["kernel"] == "merge")
    assert 0 < merge["registers"] <= 255 and merge["spill_stores"] == merge["spill_loads"] == 0
    assert all(r["shared"] <= r["limit"] for r in rows)  # the full compile's own shared memory
