"""Chapter 09: the tiled PyTorch FlashAttention equals the reference — values, gradients, gradcheck — on odd
shapes, block sizes that do not divide N, causal, window, GQA, decode alignment and explicit masks."""

import math

import pytest
import torch

from attention_lab.attention import scaled_dot_product_attention
from attention_lab.costs.timing import peak_memory
from attention_lab.exercises import ExerciseError
from attention_lab.exercises.ch09 import check_block_update
from attention_lab.flash.tiled import (FULL, PARTIAL, SKIP, block_schedule, count_non_matmul_flops, non_matmul_flops,
                                       tiled_attention, tiled_attention_forward, tiled_attention_forward_fa1)
from reference import TOLERANCES, allowed_positions, attention_fp64, random_qkv, tolerance




CASES = [  # (B, H, Hkv, Nq, Nk, D, causal, window)
    (2, 4, 4, 37, 37, 16, False, None),
    (1, 4, 2, 61, 61, 40, True, None),
    (2, 2, 1, 5, 29, 16, True, None),  # decoding: queries aligned to the end of the keys
    (1, 3, 3, 50, 50, 16, False, 7),
    (1, 4, 1, 13, 40, 8, False, 5),
    (1, 2, 2, 1, 17, 16, False, None),
]


@pytest.mark.parametrize("block_q,block_k", [(16, 16), (7, 5), (64, 64), (1, 3)])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}H{c[1]}kv{c[2]}q{c[3]}k{c[4]}c{int(c[6])}w{c[7]}")
def test_forward_matches_float64(case, block_q, block_k):
    batch, heads, kv_heads, nq, nk, d, causal, window = case
    q, k, v = random_qkv(batch, heads, kv_heads, nq, nk, d, seed=nq + block_k)
    out, lse = tiled_attention_forward(q, k, v, causal=causal, window=window, block_q=block_q, block_k=block_k)
    atol, rtol = TOLERANCES[torch.float32]
    assert out.dtype == torch.float32 and lse.shape == (batch, heads, nq)
    torch.testing.assert_close(out.double(), attention_fp64(q, k, v, causal=causal, window=window), atol=atol, rtol=rtol)
    # The LSE is log Σ_j exp(s_ij) over visible keys.
    group = heads // kv_heads
    scores = (q.double() @ k.double().repeat_interleave(group, 1).transpose(-1, -2)) * d**-0.5
    allowed = allowed_positions(nq, nk, causal, window)
    expected_lse = torch.logsumexp(scores.masked_fill(~allowed, -math.inf), dim=-1)
    torch.testing.assert_close(lse.double(), expected_lse, **tolerance("fp32_paths"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}H{c[1]}kv{c[2]}q{c[3]}k{c[4]}c{int(c[6])}w{c[7]}")
def test_gradients_match_reference_autograd(case):
    batch, heads, kv_heads, nq, nk, d, causal, window = case
    q, k, v = random_qkv(batch, heads, kv_heads, nq, nk, d, dtype=torch.float64, seed=3, requires_grad=True)
    out = tiled_attention(q, k, v, causal=causal, window=window, block_q=8, block_k=6)
    grad = torch.randn_like(out)
    tiled_grads = torch.autograd.grad(out, (q, k, v), grad)
    reference_grads = torch.autograd.grad(attention_fp64(q, k, v, causal=causal, window=window), (q, k, v), grad)
    for name, got, want in zip("qkv", tiled_grads, reference_grads):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, **tolerance("fp64_paths"), msg=f"d{name}")


@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (False, 3)])
def test_gradcheck_float64_small_shapes(causal, window):
    q, k, v = random_qkv(1, 2, 1, 6, 9 if causal or window else 7, 3, dtype=torch.float64, seed=5, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: tiled_attention(q, k, v, causal=causal, window=window, block_q=3, block_k=4), (q, k, v))


def test_explicit_mask_with_fully_masked_row_gives_zeros_and_finite_grads():
    q, k, v = random_qkv(2, 1, 1, 7, 7, 3, dtype=torch.float64, seed=6, requires_grad=True)
    mask = torch.rand(2, 1, 7, 7, generator=torch.Generator().manual_seed(1)) > 0.4
    mask[:, :, 4] = False  # query 4 sees nothing
    out = tiled_attention(q, k, v, mask=mask, block_q=4, block_k=3)
    torch.testing.assert_close(out, attention_fp64(q, k, v, mask=mask))
    assert (out[:, :, 4] == 0).all()
    _, lse = tiled_attention_forward(q, k, v, mask=mask, block_q=4, block_k=3)
    assert torch.isneginf(lse[:, :, 4]).all()
    assert torch.autograd.gradcheck(lambda q, k, v: tiled_attention(q, k, v, mask=mask, block_q=4, block_k=3), (q, k, v))


def test_half_precision_within_pytorch_own_error():
    q, k, v = random_qkv(1, 2, 2, 70, 70, 32, dtype=torch.bfloat16, seed=7)
    expected = attention_fp64(q, k, v, causal=True)
    ours = (tiled_attention(q, k, v, causal=True, block_q=16, block_k=16).double() - expected).abs().max()
    theirs = (scaled_dot_product_attention(q, k, v, causal=True).double() - expected).abs().max()
    assert ours <= 2 * theirs + 1e-3


def test_window_at_least_n_equals_causal_and_one_block_equals_reference():
    q, k, v = random_qkv(1, 2, 2, 23, 23, 8, seed=8)
    torch.testing.assert_close(tiled_attention(q, k, v, window=23, block_q=5, block_k=4),
                               tiled_attention(q, k, v, causal=True, block_q=5, block_k=4))
    torch.testing.assert_close(tiled_attention(q, k, v, block_q=100, block_k=100), scaled_dot_product_attention(q, k, v))


def test_block_schedule_skips_masked_blocks():
    causal = block_schedule(64, 64, 16, 16, causal=True)
    assert causal.tolist() == [[PARTIAL, SKIP, SKIP, SKIP], [FULL, PARTIAL, SKIP, SKIP],
                               [FULL, FULL, PARTIAL, SKIP], [FULL, FULL, FULL, PARTIAL]]
    assert (block_schedule(64, 64, 16, 16) == FULL).all()
    window = block_schedule(64, 64, 16, 16, window=16)
    assert (window == SKIP).sum() == 16 - 7 and (window == FULL).sum() == 0
    # The schedule is exact: a block is SKIP iff no pair is allowed, FULL iff every pair is.
    for nq, nk, bq, bk, w in [(37, 37, 8, 5, None), (5, 29, 2, 7, None), (50, 50, 7, 9, 6), (13, 40, 4, 3, 5)]:
        schedule = block_schedule(nq, nk, bq, bk, causal=True, window=w)
        allowed = allowed_positions(nq, nk, causal=True, window=w)
        for i in range(schedule.shape[0]):
            for j in range(schedule.shape[1]):
                tile = allowed[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
                state = SKIP if not tile.any() else FULL if tile.all() else PARTIAL
                assert schedule[i, j] == state, (nq, nk, bq, bk, w, i, j)


def test_extra_memory_is_linear_not_quadratic():
    def peaks(n):
        q, k, v = random_qkv(1, 2, 2, n, n, 16, seed=n)
        return (peak_memory(lambda: scaled_dot_product_attention(q, k, v, causal=True), "cpu"),
                peak_memory(lambda: tiled_attention(q, k, v, causal=True, block_q=32, block_k=32), "cpu"))

    (naive_small, tiled_small), (naive_big, tiled_big) = peaks(128), peaks(512)
    assert naive_big / naive_small > 10  # quadratic: 4x N -> ~16x bytes
    assert tiled_big / tiled_small < 5  # linear: 4x N -> ~4x bytes
    assert tiled_big < naive_big / 4


def test_bad_input_is_a_clear_error():
    q, k, v = random_qkv(1, 2, 2, 9, 5, 8)
    with pytest.raises(ValueError, match="block_q must be"):
        tiled_attention(q, k, v, block_q=0)
    with pytest.raises(ValueError, match="head_dim"):
        tiled_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="mask must have shape"):
        tiled_attention(q, k, v, mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="window must be"):
        tiled_attention(q[:, :, :5], k, v, window=0)


# --- the chapter 09 exercise ---------------------------------------------------------------------------

def block_update_solution(q_block, k_block, v_block, m_i, l_i, acc, scale):
    scores = (q_block @ k_block.T) * scale
    m_new = torch.maximum(m_i, scores.amax(-1))
    p = torch.exp(scores - m_new[:, None])
    alpha = torch.exp(m_i - m_new)
    return m_new, alpha * l_i + p.sum(-1), alpha[:, None] * acc + p @ v_block


def no_rescale_of_acc(q_block, k_block, v_block, m_i, l_i, acc, scale):
    m_new, l_new, _ = block_update_solution(q_block, k_block, v_block, m_i, l_i, acc, scale)
    p = torch.exp((q_block @ k_block.T) * scale - m_new[:, None])
    return m_new, l_new, acc + p @ v_block


def forgets_scale(q_block, k_block, v_block, m_i, l_i, acc, scale):
    return block_update_solution(q_block, k_block, v_block, m_i, l_i, acc, 1.0)


def inverted_alpha(q_block, k_block, v_block, m_i, l_i, acc, scale):
    scores = (q_block @ k_block.T) * scale
    m_new = torch.maximum(m_i, scores.amax(-1))
    p = torch.exp(scores - m_new[:, None])
    alpha = torch.exp(m_new - m_i).nan_to_num(0.0, posinf=0.0)
    return m_new, alpha * l_i + p.sum(-1), alpha[:, None] * acc + p @ v_block


def normalises_inside_loop(q_block, k_block, v_block, m_i, l_i, acc, scale):
    m_new, l_new, acc_new = block_update_solution(q_block, k_block, v_block, m_i, l_i, acc, scale)
    return m_new, l_new, acc_new / l_new[:, None]


def stub(*args):
    raise NotImplementedError("exercise: write this part")


def test_ch09_checker_passes_solution(capsys):
    assert check_block_update(block_update_solution)
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [no_rescale_of_acc, forgets_scale, inverted_alpha, normalises_inside_loop, stub])
def test_ch09_checker_rejects_classic_mistakes(wrong):
    with pytest.raises(ExerciseError):
        check_block_update(wrong)


# --- issue #18: Nq > Nk under causal, NaN rows, scale -----------------------------------------------------

@pytest.mark.parametrize("n_queries,n_keys,window,block", [(9, 5, None, 4), (40, 13, None, 8), (12, 7, 3, 5),
                                                           (5, 1, None, 2), (4, 0, None, 3)])
def test_more_queries_than_keys_gives_zero_rows_and_gradients_match(n_queries, n_keys, window, block):
    q, k, v = random_qkv(2, 4, 2, n_queries, n_keys, 8, seed=n_queries + n_keys, requires_grad=True)
    out = tiled_attention(q, k, v, causal=True, window=window, block_q=block, block_k=block)
    expected = (attention_fp64(q.detach(), k.detach(), v.detach(), causal=True, window=window) if n_keys else
                torch.zeros(out.shape, dtype=torch.float64))  # (the fp64 einsum needs a key)
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(out.detach().double(), expected, atol=atol, rtol=rtol)
    assert (out[:, :, :n_queries - n_keys] == 0).all()
    grad = torch.randn_like(out)
    tiled = torch.autograd.grad(out, (q, k, v), grad, allow_unused=True)
    ref_out = scaled_dot_product_attention(q, k, v, causal=True, window=window)
    reference = torch.autograd.grad(ref_out, (q, k, v), grad, allow_unused=True)
    for mine, theirs in zip(tiled, reference):
        torch.testing.assert_close(mine, torch.zeros_like(mine) if theirs is None else theirs, **tolerance("fp32_paths"))


@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (True, 3)])
def test_a_nan_query_row_stays_nan(causal, window):
    q, k, v = random_qkv(1, 4, 2, 11, 11, 8, seed=2)
    q[0, 3, 6, 2] = float("nan")
    mask = torch.ones(11, 11, dtype=torch.bool)
    mask[8] = False  # query 8 sees no key: zeros even with a NaN in it
    q[0, 1, 8, 0] = float("nan")
    out = tiled_attention(q, k, v, mask=mask, causal=causal, window=window, block_q=4, block_k=4)
    assert torch.isnan(out[0, 3, 6]).all()
    assert (out[0, :, 8] == 0).all()
    reference = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, window=window)
    torch.testing.assert_close(out, reference, equal_nan=True, **tolerance("fp32_paths"))
    _, lse = tiled_attention_forward(q, k, v, mask=mask, causal=causal, window=window, block_q=4, block_k=4)
    assert torch.isnan(lse[0, 3, 6]) and lse[0, 1, 8] == -math.inf


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf"), True, "1"], ids=repr)
def test_bad_scale_is_a_value_error(scale):
    q, k, v = random_qkv(1, 2, 2, 5, 5, 8)
    with pytest.raises(ValueError, match="scale must be a finite real number > 0"):
        tiled_attention(q, k, v, causal=True, scale=scale)


# --- FlashAttention-1's loop order (K/V blocks outside) ---------------------------------------------------------

@pytest.mark.parametrize("block_q,block_k", [(16, 16), (7, 5), (64, 64), (1, 3)])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}H{c[1]}kv{c[2]}q{c[3]}k{c[4]}c{int(c[6])}w{c[7]}")
def test_fa1_order_matches_float64_and_the_fa2_order(case, block_q, block_k):
    batch, heads, kv_heads, nq, nk, d, causal, window = case
    q, k, v = random_qkv(batch, heads, kv_heads, nq, nk, d, seed=nq + block_k)
    out, lse = tiled_attention_forward_fa1(q, k, v, causal=causal, window=window, block_q=block_q, block_k=block_k)
    atol, rtol = TOLERANCES[torch.float32]
    assert out.dtype == torch.float32 and lse.dtype == torch.float32 and lse.shape == (batch, heads, nq)
    torch.testing.assert_close(out.double(), attention_fp64(q, k, v, causal=causal, window=window), atol=atol, rtol=rtol)
    out2, lse2 = tiled_attention_forward(q, k, v, causal=causal, window=window, block_q=block_q, block_k=block_k)
    torch.testing.assert_close(out, out2, **tolerance("fp32_paths"))
    torch.testing.assert_close(lse, lse2, **tolerance("fp32_paths"))


def test_fa1_order_float64_to_rounding_with_an_explicit_mask_and_an_empty_row():
    q, k, v = random_qkv(2, 4, 2, 19, 23, 8, dtype=torch.float64, seed=11)
    mask = torch.rand(2, 1, 19, 23, generator=torch.Generator().manual_seed(2)) > 0.5
    mask[:, :, 5] = False  # query 5 sees nothing: zeros, LSE −inf
    out, lse = tiled_attention_forward_fa1(q, k, v, mask=mask, block_q=4, block_k=6)
    torch.testing.assert_close(out, attention_fp64(q, k, v, mask=mask), **tolerance("fp64_paths"))
    assert (out[:, :, 5] == 0).all() and torch.isneginf(lse[:, :, 5]).all()
    _, lse2 = tiled_attention_forward(q, k, v, mask=mask, block_q=4, block_k=6)
    torch.testing.assert_close(lse, lse2, **tolerance("fp64_paths"))


@pytest.mark.parametrize("n_queries,n_keys", [(9, 5), (4, 0)])
def test_fa1_order_more_queries_than_keys_gives_zero_rows(n_queries, n_keys):
    q, k, v = random_qkv(1, 2, 1, n_queries, n_keys, 8, seed=3)
    out, lse = tiled_attention_forward_fa1(q, k, v, causal=True, block_q=2, block_k=3)
    assert (out[:, :, :n_queries - n_keys] == 0).all() and torch.isneginf(lse[:, :, :n_queries - n_keys]).all()
    if n_keys:
        torch.testing.assert_close(out.double(), attention_fp64(q, k, v, causal=True), **tolerance(torch.float32))


def test_fa1_order_nan_stays_nan_and_half_precision_keeps_fp32_statistics():
    q, k, v = random_qkv(1, 2, 2, 11, 11, 8, seed=4)
    q[0, 1, 6, 2] = float("nan")
    out, lse = tiled_attention_forward_fa1(q, k, v, causal=True, block_q=4, block_k=4)
    assert torch.isnan(out[0, 1, 6]).all() and torch.isnan(lse[0, 1, 6])
    assert torch.isfinite(out[0, 0]).all()
    q16, k16, v16 = (t.half() * 20 for t in random_qkv(1, 2, 2, 30, 30, 16, seed=5))  # scores far past exp's fp16 limit
    out16, lse16 = tiled_attention_forward_fa1(q16, k16, v16, block_q=8, block_k=8)
    assert out16.dtype == torch.float16 and lse16.dtype == torch.float32 and torch.isfinite(out16).all()
    torch.testing.assert_close(out16.double(), attention_fp64(q16, k16, v16), **tolerance(torch.float16))


def test_the_two_orders_visit_the_same_tiles_in_transposed_order():
    q, k, v = random_qkv(1, 1, 1, 40, 40, 8, seed=6)
    for settings in ({}, {"causal": True}, {"window": 9}):
        fa1, fa2 = [], []
        tiled_attention_forward_fa1(q, k, v, block_q=8, block_k=16, trace=fa1, **settings)
        tiled_attention_forward(q, k, v, block_q=8, block_k=16, trace=fa2, **settings)
        schedule = block_schedule(40, 40, 8, 16, **settings)
        visited = sorted((i, j) for i in range(schedule.shape[0]) for j in range(schedule.shape[1]) if schedule[i, j] != SKIP)
        assert sorted(fa1) == sorted(fa2) == visited
        assert fa1 == sorted(fa1, key=lambda tile: (tile[1], tile[0]))  # key blocks outside
        assert fa2 == sorted(fa2)  # query blocks outside


@pytest.mark.parametrize("batch,heads,kv_heads,nq,nk,d,block_q,block_k", [
    (1, 1, 1, 64, 64, 16, 16, 16), (2, 4, 2, 37, 50, 8, 7, 9), (1, 3, 3, 5, 29, 40, 4, 64), (1, 2, 1, 1, 17, 16, 1, 3)])
def test_non_matmul_flops_formula_equals_the_count_on_the_running_code(batch, heads, kv_heads, nq, nk, d, block_q, block_k):
    q, k, v = random_qkv(batch, heads, kv_heads, nq, nk, d, seed=7)
    for order, forward in (("fa1", tiled_attention_forward_fa1), ("fa2", tiled_attention_forward)):
        counted = count_non_matmul_flops(lambda: forward(q, k, v, block_q=block_q, block_k=block_k))
        assert counted == non_matmul_flops(order, nq, nk, d, block_k, batch * heads), order
    assert non_matmul_flops("fa1", nq, nk, d, block_k) > non_matmul_flops("fa2", nq, nk, d, block_k)


def test_non_matmul_flops_by_hand_and_bad_arguments():
    # one row, one block of 4 keys, d = 2: fa2 5·4 + (2·2 + 5) + 2 + 2 = 33; fa1 5·4 + (4·2 + 8) + 2 = 38
    assert non_matmul_flops("fa2", 1, 4, 2, 4) == 33 and non_matmul_flops("fa1", 1, 4, 2, 4) == 38
    assert non_matmul_flops("fa2", 3, 4, 2, 4, batch_heads=5) == 15 * 33
    assert count_non_matmul_flops(lambda: torch.ones(3) @ torch.ones(3)) == 0  # matrix products are not counted
    with pytest.raises(ValueError, match="loop_order must be one of"):
        non_matmul_flops("fa3", 1, 4, 2, 4)
    with pytest.raises(ValueError, match="block_k must be"):
        non_matmul_flops("fa1", 1, 4, 2, 0)


def test_fa1_order_bad_input_is_a_clear_error():
    q, k, v = random_qkv(1, 2, 2, 9, 5, 8)
    with pytest.raises(ValueError, match="block_k must be"):
        tiled_attention_forward_fa1(q, k, v, block_k=0)
    with pytest.raises(ValueError, match="head_dim"):
        tiled_attention_forward_fa1(q, k[..., :4], v)
    with pytest.raises(ValueError, match="scale must be a finite real number > 0"):
        tiled_attention_forward_fa1(q, k, v, scale=-1.0)
