"""The Triton FlashAttention kernels under Triton's interpreter (CPU): forward and gradients vs float64.

Without a GPU, tests/conftest.py sets TRITON_INTERPRET=1 before the kernels are imported, so the very
kernels that run on a GPU execute here in numpy — slow, so the shapes are tiny but odd (block edges,
GQA groups, Nq != Nk, diagonals, windows). The GPU versions of these checks are tests/test_ch10_flash_gpu.py.
"""

import pytest
import torch
import triton
import triton.language as tl

from attention_lab.attention import get_backend
from attention_lab.exercises.ch10 import check_online_softmax_step
from attention_lab.exercises.core import ExerciseError
from attention_lab.flash import triton_attention as ta
from attention_lab.flash.tiled import FULL, PARTIAL, SKIP, block_schedule
from attention_lab.flash.triton_attention import check_dtype_supported, flash_attention
from attention_lab.kernels.common import LOG2_E, online_softmax_update
from attention_lab.kernels.interpreter import interpreting
from reference import TOLERANCES, attention_fp64, tolerance, random_qkv

interpreter_only = pytest.mark.skipif(not interpreting(), reason="CPU interpreter tests (GPU: test_ch10_flash_gpu.py)")
TILE_16 = {"BLOCK_M": 16, "BLOCK_N": 16}




def _reference_with_grads(q, k, v, grad_out, **kwargs):
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    out = attention_fp64(q64, k64, v64, **kwargs)
    return (out, *torch.autograd.grad(out, (q64, k64, v64), grad_out.double()))


# (batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim, causal, window, tile): every case runs forward and backward
CASES = {
    "N=17 D=16": (1, 2, 2, 17, 17, 16, False, None, None),
    "N=130 D=64 causal GQA-2, BM>BN": (1, 4, 2, 130, 130, 64, True, None, {"BLOCK_M": 32, "BLOCK_N": 16}),
    "N=1 D=80 MQA": (2, 3, 1, 1, 1, 80, False, None, None),
    "Nq=17 Nk=130 D=80 causal MQA": (1, 2, 1, 17, 130, 80, True, None, None),
    "N=130 D=16 window=7, BM<BN": (1, 2, 2, 130, 130, 16, False, 7, {"BLOCK_M": 16, "BLOCK_N": 32}),
    "Nq=33 Nk=70 D=64 window=20 GQA-3": (1, 3, 1, 33, 70, 64, True, 20, None),
    "Nq=40 > Nk=17 D=16": (1, 2, 1, 40, 17, 16, False, None, None),
    # causal with more queries than keys: the first Nq - Nk rows see no key (zeros), forward and backward
    "Nq=40 > Nk=17 D=16 causal GQA-2": (1, 2, 1, 40, 17, 16, True, None, None),
    "Nq=33 > Nk=5 D=24 causal, BM<BN": (2, 1, 1, 33, 5, 24, True, None, {"BLOCK_M": 16, "BLOCK_N": 32}),
    "Nq=50 > Nk=19 D=16 window=7, BM>BN": (1, 2, 2, 50, 19, 16, True, 7, {"BLOCK_M": 32, "BLOCK_N": 16}),
    "Nq=19 > Nk=1 D=16 causal MQA": (1, 3, 1, 19, 1, 16, True, None, None),
}


@interpreter_only
@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_gradients_match_float64(case):
    batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim, causal, window, tile = CASES[case]
    q, k, v = random_qkv(batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim, seed=n_queries + head_dim, requires_grad=True)
    out = flash_attention(q, k, v, causal=causal, window=window, tile=tile)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    expected = _reference_with_grads(q, k, v, grad_out, causal=causal, window=window)
    atol, rtol = TOLERANCES[torch.float32]
    for name, actual, wanted in zip(("out", "dq", "dk", "dv"), (out, *grads), expected):
        assert actual.shape == wanted.shape, name
        torch.testing.assert_close(actual.double(), wanted, atol=5 * atol, rtol=5 * rtol, msg=name)
    if causal and n_queries > n_keys:  # rows that see no key: exactly zero, and so is their gradient
        assert out[:, :, :n_queries - n_keys].abs().max() == 0 and grads[0][:, :, :n_queries - n_keys].abs().max() == 0


@interpreter_only
def test_float16_forward_and_gradients():
    q, k, v = random_qkv(1, 2, 1, 33, 33, 16, dtype=torch.float16, seed=3, requires_grad=True)
    out = flash_attention(q, k, v, causal=True, tile=TILE_16)
    assert out.dtype == torch.float16
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    expected = _reference_with_grads(q, k, v, grad_out, causal=True)
    for actual, wanted in zip((out, *grads), expected):
        assert actual.dtype == torch.float16
        torch.testing.assert_close(actual.double(), wanted, **tolerance("interpreter_kernel_16bit"))


@interpreter_only
def test_explicit_mask_and_fully_masked_rows_give_zeros():
    q, k, v = random_qkv(2, 2, 1, 19, 23, 16, seed=5, requires_grad=True)
    g = torch.Generator().manual_seed(6)
    mask = torch.rand(2, 1, 19, 23, generator=g) > 0.4  # (B, 1, Nq, Nk), broadcast over heads
    mask[0, 0, 3] = False  # query 3 of batch 0 sees nothing
    mask[1, 0, 18] = False
    out = flash_attention(q, k, v, mask=mask, tile=TILE_16)
    assert not out.isnan().any()
    assert out[0, :, 3].abs().max() == 0 and out[1, :, 18].abs().max() == 0
    grad_out = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad_out)
    assert dq[0, :, 3].abs().max() == 0
    expected = _reference_with_grads(q, k, v, grad_out, mask=mask)
    for actual, wanted in zip((out, dq, dk, dv), expected):
        torch.testing.assert_close(actual.double(), wanted, **tolerance("interpreter_fp32"))


@interpreter_only
def test_matches_tiled_pytorch_flash_and_strided_inputs():
    """A (B, N, H, D) tensor viewed as (B, H, N, D) needs no copy; the result equals chapter 09's tiled version."""
    from attention_lab.flash.tiled import tiled_attention

    g = torch.Generator().manual_seed(7)
    q = torch.randn(1, 29, 2, 16, generator=g).transpose(1, 2)  # (B, H, N, D), strided
    k = torch.randn(1, 29, 1, 16, generator=g).transpose(1, 2)
    v = torch.randn(1, 29, 1, 16, generator=g).transpose(1, 2)
    out = flash_attention(q, k, v, causal=True, tile=TILE_16)
    torch.testing.assert_close(out, tiled_attention(q, k, v, causal=True), **tolerance("fp32_paths"))
    torch.testing.assert_close(out, flash_attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=True,
                                                    tile=TILE_16), **tolerance("exact"))


@interpreter_only
@pytest.mark.parametrize("causal", [False, True])
def test_gradients_of_inputs_not_contiguous_in_head_dim(causal):
    """(B, H, D, N) tensors transposed to (B, H, N, D): stride N along D. The forward copies them; the backward
    must read those copies, not the originals with their strides (issue #18, item 2: dq, dk, dv were off by 3-6)."""
    g = torch.Generator().manual_seed(21)
    q, k, v = (torch.randn(1, heads, 16, 19, generator=g).transpose(2, 3) for heads in (2, 1, 1))  # GQA-2, D=16, N=19
    q, k, v = (x.requires_grad_() for x in (q, k, v))  # non-contiguous leaves: the gradients arrive for them
    assert q.stride(-1) != 1
    out = flash_attention(q, k, v, causal=causal, tile=TILE_16)
    grad_out = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    expected = _reference_with_grads(q, k, v, grad_out, causal=causal)
    for name, actual, wanted in zip(("out", "dq", "dk", "dv"), (out, *grads), expected):
        torch.testing.assert_close(actual.double(), wanted, **tolerance("interpreter_fp32"), msg=name)
    # the public backward, called directly with the strided tensors, agrees too
    with torch.no_grad():
        out, lse = ta.flash_attention_forward(q, k, v, None, causal, None, None, tile=TILE_16)
        direct = ta.flash_attention_backward(grad_out.transpose(2, 3).contiguous().transpose(2, 3), q, k, v, out, lse,
                                             None, causal, None, None, tile=TILE_16)
    for name, actual, wanted in zip(("dq", "dk", "dv"), direct, expected[1:]):
        torch.testing.assert_close(actual.double(), wanted, **tolerance("interpreter_fp32"), msg=name)


def huge_storage(n_elements: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised 1-D tensor of ``n_elements`` (GiBs): address space only, since the pages are never touched
    except the few a test writes (and untouched pages read as zeros). Skips where the OS refuses that much."""
    try:
        return torch.empty(n_elements, dtype=dtype)
    except (RuntimeError, MemoryError):
        pytest.skip(f"needs {n_elements * torch.finfo(dtype).bits // 8 / 2**30:.1f} GiB of address space")


# Offsets past 2^31 without allocating them: a view whose row stride makes row i start i·2^24 elements in, so rows
# 128 and 129 start past 2^31. It begins 2^31 elements into its storage, so a 32-bit offset that wraps around
# (to -2^31) still reads this storage, only the wrong place (zeros): a wrong answer, not a crash.
ROW_STRIDE, VIEW_START, LONG_ROWS = 2 ** 24, 2 ** 31, 130


@interpreter_only
def test_row_offsets_past_2_to_the_31_in_a_packed_layout():
    """Issue #18, item 13: q, k, v as views of one packed (B, N, 3, H, D)-like storage with 3·H·D = 2^24: the row
    products ``offs_m·stride_qm`` and ``start_n·stride_kn`` pass 2^31 at row 128 (in int32 they wrapped: errors ~0.2)."""
    storage = huge_storage(VIEW_START + LONG_ROWS * ROW_STRIDE, torch.float16)  # 8.3 GiB of address space
    g = torch.Generator().manual_seed(13)
    data = torch.randn(3, LONG_ROWS, 16, generator=g).half()
    q, k, v = (storage.as_strided((1, 1, LONG_ROWS, 16), (LONG_ROWS * ROW_STRIDE, ROW_STRIDE, ROW_STRIDE, 1),
                                  VIEW_START + 16 * i) for i in range(3))
    with torch.no_grad():
        for view, values in zip((q, k, v), data):
            view[0, 0].copy_(values)
    assert ta.needs_wide_offsets(q) and not ta.needs_wide_offsets(q[:, :, :128])  # the kernels' WIDE variant runs
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = flash_attention(q, k, v, causal=True)
    grad_out = torch.randn(out.shape, generator=g).half()
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    expected = _reference_with_grads(q, k, v, grad_out, causal=True)
    for name, actual, wanted in zip(("out", "dq", "dk", "dv"), (out, *grads), expected):
        torch.testing.assert_close(actual.double(), wanted, **tolerance("interpreter_kernel_16bit"), msg=name)


def test_only_offsets_past_2_to_the_31_take_the_64_bit_variant():
    """needs_wide_offsets: a row offset inside one (batch, head), (N - 1)·stride_n + (D - 1), reaching 2^31 (meta
    tensors: shapes and strides, no memory). Batch and head offsets are 64-bit anyway, so B·H·N·D past 2^31 is not."""
    meta = dict(device="meta", dtype=torch.float16)
    assert not ta.needs_wide_offsets(torch.empty(64, 32, 32768, 128, **meta))  # 2^33 elements, 2^22 per head
    assert not ta.needs_wide_offsets(torch.empty(1, 32768, 32, 128, **meta).transpose(1, 2))  # (B, N, H, D): 2^27
    assert not ta.needs_wide_offsets(torch.empty(1, 2 ** 19, 32, 128, **meta).transpose(1, 2))  # (N - 1)·H·D + D < 2^31
    assert ta.needs_wide_offsets(torch.empty(1, 2 ** 19 + 1, 32, 128, **meta).transpose(1, 2))  # 2^19·H·D = 2^31
    assert not ta.needs_wide_offsets(torch.empty(1, 1, 2 ** 16, 2 ** 15, device="meta", dtype=torch.uint8))  # 2^31 - 1
    assert ta.needs_wide_offsets(torch.empty(1, 1, 2 ** 16 + 1, 2 ** 15, device="meta", dtype=torch.uint8))
    assert not ta.needs_wide_offsets(None, torch.empty(1, 1, 5, 16, **meta))


@interpreter_only
def test_mask_offsets_past_2_to_the_31():
    """Issue #18, item 13: a mask whose rows are 2^24 apart (the row stride of a mask over 16M keys): the product
    ``q_idx·stride_mm`` passes 2^31 at query 128 (in int32 it wrapped, and those rows read as fully masked)."""
    storage = huge_storage(VIEW_START + LONG_ROWS * ROW_STRIDE, torch.bool)  # 4.1 GiB of address space
    g = torch.Generator().manual_seed(14)
    mask = storage.as_strided((LONG_ROWS, 17), (ROW_STRIDE, 1), VIEW_START)
    mask.copy_(torch.rand(LONG_ROWS, 17, generator=g) > 0.3)
    assert ta.needs_wide_offsets(mask[None, None])
    q, k, v = random_qkv(1, 2, 1, LONG_ROWS, 17, 16, seed=14, requires_grad=True)
    out = flash_attention(q, k, v, mask=mask)
    grad_out = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    expected = _reference_with_grads(q, k, v, grad_out, mask=mask.clone())
    for name, actual, wanted in zip(("out", "dq", "dk", "dv"), (out, *grads), expected):
        torch.testing.assert_close(actual.double(), wanted, **tolerance("interpreter_fp32"), msg=name)


@interpreter_only
def test_window_as_long_as_the_keys_equals_causal():
    q, k, v = random_qkv(1, 1, 1, 21, 21, 16, seed=8, requires_grad=True)
    with torch.no_grad():
        causal = flash_attention(q, k, v, causal=True, tile=TILE_16)
        windowed = flash_attention(q, k, v, window=21, tile=TILE_16)
    torch.testing.assert_close(windowed, causal, **tolerance("fp32_kernel_paths"))


@interpreter_only
@pytest.mark.parametrize("n_queries, n_keys, block_m, block_n, window",
                         [(130, 130, 32, 16, None), (17, 130, 16, 32, None), (130, 130, 16, 32, 20), (33, 70, 32, 16, 9),
                          (70, 33, 16, 32, None), (90, 21, 32, 16, None), (70, 33, 16, 16, 9), (53, 3, 16, 32, 2)])
def test_kernel_visits_exactly_the_blocks_of_the_tiled_schedule(n_queries, n_keys, block_m, block_n, window):
    """Causal/window skipping: the forward visits every block chapter 09's schedule needs and no other,
    and runs the unmasked fast path only on blocks where every pair is allowed (the dK/dV kernel likewise)."""
    schedule = block_schedule(n_queries, n_keys, block_m, block_n, causal=True, window=window)
    flags = (True, window is not None, False)
    for i in range(schedule.shape[0]):
        lo, mid_lo, mid_hi, hi = (int(x) for x in ta._key_blocks(i * block_m, n_queries, n_keys, window or 0,
                                                                  block_m, block_n, *flags))
        visited = set(range(lo // block_n, triton.cdiv(hi, block_n)))
        unmasked = set(range(mid_lo // block_n, mid_hi // block_n))
        assert visited == {j for j in range(schedule.shape[1]) if schedule[i, j] != SKIP}, f"query block {i}"
        assert all(schedule[i, j] == FULL for j in unmasked), f"query block {i} skips a needed mask"
        assert all(schedule[i, j] != PARTIAL or j not in unmasked for j in visited)
    for j in range(schedule.shape[1]):
        lo, mid_lo, mid_hi, hi = (int(x) for x in ta._query_blocks(j * block_n, n_queries, n_keys, window or 0,
                                                                    block_m, block_n, *flags))
        visited = set(range(lo // block_m, triton.cdiv(hi, block_m)))
        unmasked = set(range(mid_lo // block_m, mid_hi // block_m))
        assert visited == {i for i in range(schedule.shape[0]) if schedule[i, j] != SKIP}, f"key block {j}"
        assert all(schedule[i, j] == FULL for i in unmasked), f"key block {j} skips a needed mask"


@triton.jit
def _fold_two_tiles(S, V, M, L, ACC, ROWS: tl.constexpr, TILE: tl.constexpr, WIDTH: tl.constexpr):
    """Run the shared update over two (ROWS, TILE) score tiles and their (TILE, WIDTH) values; store the state."""
    r = tl.arange(0, ROWS)
    t = tl.arange(0, TILE)
    w = tl.arange(0, WIDTH)
    m_i = tl.full((ROWS,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((ROWS,), dtype=tl.float32)
    acc = tl.zeros((ROWS, WIDTH), dtype=tl.float32)
    for j in tl.static_range(2):
        scores = tl.load(S + j * ROWS * TILE + r[:, None] * TILE + t[None, :])
        values = tl.load(V + j * TILE * WIDTH + t[:, None] * WIDTH + w[None, :])
        m_i, l_i, acc = online_softmax_update(m_i, l_i, acc, scores, values, "ieee")
    tl.store(M + r, m_i)
    tl.store(L + r, l_i)
    tl.store(ACC + r[:, None] * WIDTH + w[None, :], acc)


@interpreter_only
def test_the_shared_triton_update_is_chapter_08s_update_in_base_2():
    """kernels.common.online_softmax_update (flash, decode, latent) == flash.online_softmax.online_softmax_update,
    same state order (m_i, l_i, acc); rows that saw no key yet (all -inf) stay at m=-inf, l=0, acc=0."""
    from attention_lab.flash.online_softmax import online_softmax_update as torch_update

    g = torch.Generator().manual_seed(12)
    scores = torch.randn(2, 16, 16, generator=g) * 3  # (tile, rows, keys), natural units
    scores[0, 0] = float("-inf")  # row 0 sees its first key in the second tile
    scores[:, 1] = float("-inf")  # row 1 never sees a key
    values = torch.randn(2, 16, 16, generator=g)
    m, l, acc = torch.empty(16), torch.empty(16), torch.empty(16, 16)
    _fold_two_tiles[(1,)](scores * LOG2_E, values, m, l, acc, ROWS=16, TILE=16, WIDTH=16)
    m_ref, l_ref, acc_ref = torch.full((16,), float("-inf")), torch.zeros(16), torch.zeros(16, 16)
    for j in range(2):
        m_ref, l_ref, acc_ref = torch_update(m_ref, l_ref, acc_ref, scores[j], values[j])
    torch.testing.assert_close(m, m_ref * LOG2_E)  # the kernels keep the max in log2 units
    torch.testing.assert_close(l, l_ref)
    torch.testing.assert_close(acc, acc_ref)
    assert m[1] == float("-inf") and l[1] == 0 and acc[1].abs().max() == 0


@interpreter_only
def test_flash_backend_in_multi_head_attention():
    from attention_lab.attention import MultiHeadAttention

    torch.manual_seed(0)
    reference = MultiHeadAttention(32, n_heads=4, n_kv_heads=2)
    flash = MultiHeadAttention(32, n_heads=4, n_kv_heads=2, backend="flash")
    flash.load_state_dict(reference.state_dict())
    x = torch.randn(2, 11, 32)
    torch.testing.assert_close(flash(x), reference(x), **tolerance("fp32_paths"))
    assert get_backend("flash") is not None


@pytest.mark.parametrize("make_args, match", [
    (lambda q, k, v: (q, k[..., :8], v), "k must have head_dim"),
    (lambda q, k, v: (q, k, v[..., :8]), "v must have head_dim"),
    (lambda q, k, v: (q.expand(1, 2, 5, 16)[..., :0], k[..., :0], v[..., :0]), "head_dim|shape"),
    (lambda q, k, v: (q[0], k, v), "q must have shape"),
    (lambda q, k, v: (q.int(), k.int(), v.int()), "floating-point"),
    (lambda q, k, v: (q[:, :1].expand(1, 3, 5, 16), k, v), "n_kv_heads"),
])
def test_bad_input_gives_value_error(make_args, match):
    q, k, v = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match=match):
        flash_attention(*make_args(q, k, v))


def test_bad_options_give_value_error():
    q = torch.randn(1, 1, 5, 16)
    for scale in (0, -1.0, float("nan"), float("inf"), "0.5", True):  # the shared attention.check_scale
        with pytest.raises(ValueError, match="scale"):
            flash_attention(q, q, q, scale=scale)
    for tile, match in (({"BLOCK_M": 20, "BLOCK_N": 16}, r"tile\['BLOCK_M'\] must be a power of two >= 16"),
                        ({"BLOCK_M": 16}, "BLOCK_M and BLOCK_N"), ({"BLOCK_M": 16, "BLOCK_N": 16, "warps": 4}, "tile must be"),
                        ({"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 3}, "num_warps"), ([16, 16], "tile must be"),
                        ({"BLOCK_M": 16, "BLOCK_N": 16, "num_stages": 0}, "num_stages")):
        with pytest.raises(ValueError, match=match):
            flash_attention(q, q, q, tile=tile)
    with pytest.raises(ValueError, match="window"):
        flash_attention(q, q, q, window=0)
    with pytest.raises(ValueError, match="mask"):
        flash_attention(q, q, q, mask=torch.ones(5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="head_dim"):
        big = torch.randn(1, 1, 5, 160)
        flash_attention(big, big, big)


@interpreter_only
def test_bf16_under_the_interpreter_is_refused_with_a_clear_message():
    """The interpreter's tl.dot multiplies bf16 bit patterns (triton-lang/triton#11584): outputs ~8e8, so refused."""
    q = torch.randn(1, 1, 16, 16).bfloat16()
    with pytest.raises(ValueError, match="bfloat16.*interpreter.*triton-lang/triton#11584.*float32.*float16"):
        flash_attention(q, q, q)


def test_bf16_on_a_t4_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="bfloat16.*sm_75.*float16"):
        check_dtype_supported(torch.bfloat16, 75)
    check_dtype_supported(torch.float16, 75)
    check_dtype_supported(torch.bfloat16, 80)


# --- the chapter-10 exercise checker: passes the solution, fails the stub and plausible mistakes ---

@triton.jit
def _solution(m_i, l_i, acc, qk, v):
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _stub(m_i, l_i, acc, qk, v):
    raise NotImplementedError


@triton.jit
def _acc_not_rescaled(m_i, l_i, acc, qk, v):
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _exp_instead_of_exp2(m_i, l_i, acc, qk, v):
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _sum_not_rescaled(m_i, l_i, acc, qk, v):
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _state_in_the_old_order(acc, m_i, l_i, qk, v):  # the (acc, m_i, l_i) order this library used before
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def _no_max_subtracted(m_i, l_i, acc, qk, v):  # right for small scores, inf/inf = NaN for large ones
    p = tl.exp2(qk)
    l_i = l_i + tl.sum(p, 1)
    acc = acc + tl.dot(p.to(v.dtype), v)
    return m_i, l_i, acc


@triton.jit
def _block_max_only(m_i, l_i, acc, qk, v):  # exact algebra, but alpha = exp2(m_i - m_block) can overflow
    m_new = tl.max(qk, 1)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _old_max_subtracted(m_i, l_i, acc, qk, v):  # subtracts the maximum before this block (-inf at the start)
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_i[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


def test_exercise_checker_passes_the_solution():
    assert check_online_softmax_step(_solution)


@pytest.mark.parametrize("wrong", [_stub, _acc_not_rescaled, _exp_instead_of_exp2, _sum_not_rescaled,
                                   _state_in_the_old_order, _no_max_subtracted, _block_max_only, _old_max_subtracted])
def test_exercise_checker_rejects_the_stub_and_wrong_steps(wrong):
    with pytest.raises(ExerciseError):
        check_online_softmax_step(wrong)


def test_a_step_without_the_maximum_is_told_why_it_fails_on_large_scores():
    """Issue #17: no max subtraction passed on small inputs; at input scale 10 it returns NaN, and the
    message says that the running maximum is what keeps exp2 finite."""
    with pytest.raises(ExerciseError, match=r"inputs × 10.*(NaN|differ).*running maximum"):
        check_online_softmax_step(_no_max_subtracted)


@interpreter_only
@pytest.mark.parametrize("shape", [(1, 8, 1, 21, 37, 16, True, None, None), (2, 6, 2, 19, 19, 24, False, 5, None),
                                   (1, 4, 1, 17, 23, 16, False, None, "mask")])
def test_dkdv_split_over_query_heads_equals_float64(shape):
    """Issue #19: at small batch the dK/dV kernel can split each kv head's query heads over several programs,
    whose fp32 partial sums are added; every split count (uneven ones too: 3 splits of 8 heads) gives the
    float64 gradients, causal, windowed and masked — with dQ from its own kernel and with dQ added by the
    dK/dV programs themselves (fused_dq)."""
    batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim, causal, window, masked = shape
    q, k, v = random_qkv(batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim, seed=3)
    mask = None
    if masked:
        mask = torch.rand(batch, 1, n_queries, n_keys, generator=torch.Generator().manual_seed(4)) > 0.3
        mask[..., 0] = True  # every query sees a key
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    out64 = attention_fp64(q64, k64, v64, mask=mask, causal=causal, window=window)
    grad = torch.randn_like(out64)
    out64.backward(grad)
    tile = {"BLOCK_M": 16, "BLOCK_N": 16}
    out, lse = ta.flash_attention_forward(q, k, v, mask, causal, window, None, tile=tile)
    for splits in range(1, n_heads // n_kv_heads + 1):
        for fused_dq in (False, True):  # dQ from its own kernel, or added by the dK/dV programs (atomics)
            dq, dk, dv = ta.flash_attention_backward(grad.float(), q, k, v, out, lse, mask, causal, window, None,
                                                     tile=tile, kv_splits=splits, fused_dq=fused_dq)
            for name, got, want in (("dq", dq, q64.grad), ("dk", dk, k64.grad), ("dv", dv, v64.grad)):
                assert got.dtype == torch.float32 and got.shape == want.shape
                torch.testing.assert_close(got.double(), want, **tolerance(torch.float32),
                                           msg=f"{name}, {splits} splits, fused_dq={fused_dq}")
    with pytest.raises(ValueError, match="kv_splits must be an integer in"):
        ta.flash_attention_backward(grad.float(), q, k, v, out, lse, mask, causal, window, None, tile=tile,
                                    kv_splits=n_heads // n_kv_heads + 1)
    with pytest.raises(ValueError, match="fused_dq must be True, False or None"):
        ta.flash_attention_backward(grad.float(), q, k, v, out, lse, mask, causal, window, None, tile=tile,
                                    fused_dq="yes")


def test_kv_splits_fill_a_gpu_only_when_batch_times_kv_heads_is_small(monkeypatch):
    from attention_lab.kernels.common import DeviceFacts

    monkeypatch.setattr(ta, "device_facts", lambda device: DeviceFacts(capability=90, n_sms=132))
    gpu = torch.device("cuda")
    assert ta.kv_splits_for(1, 1, 4096, 16, gpu) == 4  # MQA at batch 1: 32 key blocks of 128 -> about 132 programs
    assert ta.kv_splits_for(1, 1, 4096, 16, gpu, causal=True) == 16  # causal: about 4 per SM (gqa_split_probe.json)
    assert ta.kv_splits_for(1, 4, 4096, 4, gpu) == 1  # 128 programs: about one per SM already
    assert ta.kv_splits_for(1, 4, 4096, 4, gpu, causal=True) == 4
    assert ta.kv_splits_for(8, 1, 4096, 16, gpu, causal=True) == 2  # 256 programs, 528 aimed at
    assert ta.kv_splits_for(8, 4, 4096, 4, gpu) == ta.kv_splits_for(8, 4, 4096, 4, gpu, causal=True) == 1  # 1,024
    assert ta.kv_splits_for(1, 16, 4096, 1, gpu) == 1  # MHA: one query head per kv head, nothing to split
    assert ta.kv_splits_for(1, 1, 4096, 16, torch.device("cpu")) == 1  # the interpreter: one split
