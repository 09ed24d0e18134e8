"""The reference attention against a float64 einsum, on odd shapes, plus masks and error messages."""

import pytest
import torch

from attention_lab import MultiHeadAttention, causal_mask, padding_mask, scaled_dot_product_attention, sliding_window_mask
from attention_lab.attention import attention_weights, torch_attention
from reference import TOLERANCES, allowed_positions, attention_fp64, random_qkv, tolerance




def _assert_matches(out, expected, dtype):
    atol, rtol = TOLERANCES[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("n", [1, 7, 33, 129])
@pytest.mark.parametrize("head_dim", [16, 40, 64])
@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_float64(n, head_dim, causal):
    q, k, v = random_qkv(2, 4, 4, n, n, head_dim, seed=n + head_dim)
    expected = attention_fp64(q, k, v, causal=causal)
    _assert_matches(scaled_dot_product_attention(q, k, v, causal=causal), expected, torch.float32)


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 4), (4, 2), (4, 1), (6, 3), (8, 2)])
@pytest.mark.parametrize("n_queries,n_keys", [(7, 7), (1, 33), (5, 12), (33, 33)])
def test_gqa_and_decode_alignment(n_heads, n_kv_heads, n_queries, n_keys):
    q, k, v = random_qkv(2, n_heads, n_kv_heads, n_queries, n_keys, 16, seed=n_heads * 10 + n_keys)
    for causal in (False, True):
        expected = attention_fp64(q, k, v, causal=causal)
        _assert_matches(scaled_dot_product_attention(q, k, v, causal=causal), expected, torch.float32)


def test_gqa_equals_repeated_kv_heads():
    q, k, v = random_qkv(1, 6, 2, 9, 9, 16)
    repeated = scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), causal=True)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, causal=True), repeated)


@pytest.mark.parametrize("window", [1, 2, 3, 8, 40])
@pytest.mark.parametrize("n_queries,n_keys", [(17, 17), (4, 17)])
def test_sliding_window_matches_float64(window, n_queries, n_keys):
    q, k, v = random_qkv(1, 2, 1, n_queries, n_keys, 16, seed=window)
    expected = attention_fp64(q, k, v, window=window)
    _assert_matches(scaled_dot_product_attention(q, k, v, window=window), expected, torch.float32)


def test_window_one_is_attending_only_to_self():
    q, k, v = random_qkv(1, 2, 2, 9, 9, 16)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, window=1), v)


def test_window_at_least_n_equals_causal():
    q, k, v = random_qkv(1, 2, 2, 13, 13, 16)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, window=13),
                               scaled_dot_product_attention(q, k, v, causal=True))


def test_mask_helpers_follow_the_design():
    for nq, nk in [(1, 1), (5, 5), (3, 8)]:
        assert torch.equal(causal_mask(nq, nk), allowed_positions(nq, nk, causal=True))
        for w in (1, 2, 3, 9):
            assert torch.equal(sliding_window_mask(nq, w, nk), allowed_positions(nq, nk, window=w))
    assert padding_mask(torch.tensor([2, 0]), 3).squeeze().tolist() == [[True, True, False], [False, False, False]]


def test_explicit_mask_and_fully_masked_rows_give_zeros():
    q, k, v = random_qkv(2, 2, 2, 5, 5, 16)
    mask = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(3)) > 0.4
    mask[:, :, 2] = False  # query 2 sees nothing
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    assert not torch.isnan(out).any()
    assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))
    _assert_matches(out, attention_fp64(q, k, v, mask=mask), torch.float32)
    torch.testing.assert_close(torch_attention(q, k, v, mask=mask), out, **tolerance("fp32_paths"))


def test_value_dim_may_differ_and_custom_scale():
    q, k, v = random_qkv(1, 4, 2, 6, 6, 24, value_dim=8)
    out = scaled_dot_product_attention(q, k, v, causal=True, scale=0.3)
    assert out.shape == (1, 4, 6, 8)
    _assert_matches(out, attention_fp64(q, k, v, causal=True, scale=0.3), torch.float32)


def test_float64_input_stays_exact_and_bf16_within_tolerance():
    q, k, v = random_qkv(1, 2, 1, 33, 33, 40, dtype=torch.float64)
    _assert_matches(scaled_dot_product_attention(q, k, v, causal=True), attention_fp64(q, k, v, causal=True), torch.float64)
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    _assert_matches(scaled_dot_product_attention(qb, kb, vb, causal=True),
                    attention_fp64(qb, kb, vb, causal=True), torch.bfloat16)


def test_weights_are_rows_of_a_softmax():
    q, k, _ = random_qkv(1, 2, 2, 6, 6, 16)
    weights = attention_weights(q, k, causal=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 6))
    assert (weights.triu(1) == 0).all()


@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (True, 3)])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_torch_backend_matches_reference(causal, window, n_kv_heads):
    q, k, v = random_qkv(2, 4, n_kv_heads, 5, 11, 16)
    torch.testing.assert_close(torch_attention(q, k, v, causal=causal, window=window),
                               scaled_dot_product_attention(q, k, v, causal=causal, window=window), **tolerance("fp32_paths"))


def test_future_tokens_do_not_change_past_outputs():
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, 2)
    x = torch.randn(1, 10, 32)
    changed = x.clone()
    changed[:, 6:] = torch.randn(1, 4, 32)
    torch.testing.assert_close(attn(x)[:, :6], attn(changed)[:, :6])


def test_multihead_kv_heads_equal_mha_reduction():
    """n_kv_heads == n_heads is MHA; GQA with copied weights across a group equals MHA with the same copies."""
    torch.manual_seed(0)
    gqa = MultiHeadAttention(32, 4, n_kv_heads=2)
    mha = MultiHeadAttention(32, 4, n_kv_heads=4)
    mha.load_state_dict({**gqa.state_dict(),
                         "k_proj.weight": gqa.k_proj.weight.view(2, 8, 32).repeat_interleave(2, 0).reshape(32, 32),
                         "v_proj.weight": gqa.v_proj.weight.view(2, 8, 32).repeat_interleave(2, 0).reshape(32, 32)})
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(gqa(x), mha(x))


@pytest.mark.parametrize("call,message", [
    (lambda: scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4)), "q must have shape"),
    (lambda: scaled_dot_product_attention(*random_qkv(1, 4, 3, 5, 5, 16)), "n_kv_heads"),
    (lambda: scaled_dot_product_attention(torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)), "head_dim=16"),
    (lambda: scaled_dot_product_attention(*random_qkv(1, 2, 2, 5, 5, 16), mask=torch.ones(5, 4, dtype=torch.bool)), "mask must have shape"),
    (lambda: scaled_dot_product_attention(*random_qkv(1, 2, 2, 5, 5, 16), mask=torch.ones(5, 5)), "bool"),
    (lambda: scaled_dot_product_attention(*random_qkv(1, 2, 2, 5, 5, 16), window=0), "window must be an integer >= 1"),
    (lambda: scaled_dot_product_attention(*random_qkv(1, 2, 2, 5, 5, 0)), "head_dim >= 1"),
    (lambda: scaled_dot_product_attention(torch.randn(1, 0, 5, 8), torch.randn(1, 0, 5, 8), torch.randn(1, 0, 5, 8)),
     "at least one head"),
    (lambda: MultiHeadAttention(30, 4), "must divide d_model"),
    (lambda: MultiHeadAttention(32, 4, n_kv_heads=3), "n_kv_heads=3 must divide n_heads=4"),
    (lambda: MultiHeadAttention(32, 4, backend="nope"), "backend must be one of"),
])
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------- issue #18: Nq > Nk, NaN, scale
@pytest.mark.parametrize("attend", [scaled_dot_product_attention, torch_attention])
@pytest.mark.parametrize("n_queries,n_keys,window", [(6, 5, None), (9, 3, None), (7, 4, 2), (4, 1, None), (3, 0, None)])
@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_causal_with_more_queries_than_keys_gives_zero_rows_first(attend, n_queries, n_keys, window, n_kv_heads):
    """DESIGN §3: query i sits at position i + Nk − Nq; the first Nq − Nk see no key and get zero rows."""
    q, k, v = random_qkv(2, 4, n_kv_heads, n_queries, n_keys, 16, seed=n_queries * 7 + n_keys)
    out = attend(q, k, v, causal=True, window=window)
    expected = (attention_fp64(q, k, v, causal=True, window=window) if n_keys else
                torch.zeros(out.shape, dtype=torch.float64))  # (the fp64 einsum needs a key)
    _assert_matches(out, expected, torch.float32)
    assert (out[:, :, :n_queries - n_keys] == 0).all()
    assert (expected[:, :, n_queries - n_keys:].abs().sum(-1) > 0).all()  # every later query sees a key


def test_masks_with_more_queries_than_keys():
    assert causal_mask(4, 2).tolist() == [[False, False], [False, False], [True, False], [True, True]]
    assert torch.equal(sliding_window_mask(4, 2, 3), allowed_positions(4, 3, window=2))
    for n_queries, n_keys in [(5, 2), (3, 0), (2, 2)]:
        assert torch.equal(causal_mask(n_queries, n_keys), allowed_positions(n_queries, n_keys, causal=True))
    weights = attention_weights(*random_qkv(1, 2, 2, 5, 3, 8)[:2], causal=True)
    assert (weights[:, :, :2] == 0).all() and torch.allclose(weights[:, :, 2:].sum(-1), torch.ones(1, 2, 3))


@pytest.mark.parametrize("attend", [scaled_dot_product_attention, torch_attention])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])  # without a mask torch_attention takes PyTorch's fused paths
def test_a_nan_query_row_stays_nan_and_a_fully_masked_row_stays_zero(attend, causal, masked):
    q, k, v = random_qkv(1, 4, 2, 6, 6, 16, seed=3)
    q[0, 1, 3, 5] = float("nan")  # one element of one query row
    mask = None
    clean = torch.ones(1, 4, 6, dtype=torch.bool)
    clean[0, 1, 3] = False
    if masked:
        mask = torch.ones(1, 4, 6, 6, dtype=torch.bool)
        mask[0, 2, 4] = False  # head 2, query 4 sees nothing
        q[0, 2, 4, 0] = float("nan")  # ... and is NaN: still a zero row (nothing is read)
        clean[0, 2, 4] = False
    out = attend(q, k, v, mask=mask, causal=causal)
    assert torch.isnan(out[0, 1, 3]).all()
    if masked:
        assert (out[0, 2, 4] == 0).all()
    assert torch.isfinite(out[clean]).all()  # nothing else is touched
    reference = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)
    torch.testing.assert_close(out, reference, equal_nan=True, **tolerance("fp32_paths"))


BAD_SCALES = [0.0, -0.5, -1, float("nan"), float("inf"), -float("inf"), True, "0.1", torch.tensor(0.5)]


@pytest.mark.parametrize("scale", BAD_SCALES, ids=repr)
@pytest.mark.parametrize("attend", [scaled_dot_product_attention, torch_attention,
                                    lambda q, k, v, **kw: attention_weights(q, k, **kw)])
@pytest.mark.parametrize("causal", [False, True])
def test_scale_must_be_a_positive_finite_number(attend, scale, causal):
    q, k, v = random_qkv(1, 2, 2, 4, 4, 8)
    with pytest.raises(ValueError, match="scale must be a finite real number > 0"):
        attend(q, k, v, causal=causal, scale=scale)


@pytest.mark.parametrize("scale", [0.25, 2, 1e-3])
def test_torch_causal_fast_path_honours_any_valid_scale(scale):
    """Nq == Nk with causal takes PyTorch's is_causal path; it must agree with the reference for every scale."""
    q, k, v = random_qkv(2, 4, 2, 7, 7, 8, seed=1)
    expected = attention_fp64(q, k, v, causal=True, scale=scale)
    _assert_matches(torch_attention(q, k, v, causal=True, scale=scale), expected, torch.float32)
    _assert_matches(scaled_dot_product_attention(q, k, v, causal=True, scale=scale), expected, torch.float32)
