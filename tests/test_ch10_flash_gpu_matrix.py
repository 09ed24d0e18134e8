"""The Triton FlashAttention kernels on a GPU, as wide as flash-attention's own tests (issue #18).

Head dims 32, 40, 64, 80, 96, 128; lengths from {1, 97, 128, 257, 1025, 2048} with Nq != Nk (both ways: with
Nq > Nk and causal/window the first Nq - Nk queries see no key); no mask, causal, windows, masks, masks with
causal; GQA ratios 1, 2, 4, 8; fp16 and bf16; forward and all three gradients; inputs strided in every way
(issue #18, item 2); offsets past 2^31 (item 13); and the fixed tiles the pruning rule refuses (item 12).

Tolerance, flash-attention's rule: against a float64 reference, the kernel's error may be at most twice PyTorch's
own error (SDPA in the same dtype, on the same inputs) plus a floor of two roundings of the dtype at the
reference's magnitude (flash-attention's ``2 · |(ref + 0.3 - 0.3) - ref|``).

The cross product (6 head dims × 5 masking modes × 12 shape pairs × 4 GQA ratios × 2 dtypes) is sampled, not
enumerated: every (head dim, mode) pair once, its dtype alternating so that both dtypes meet every head dim and
every mode, two shape pairs and a GQA ratio each, rotating so that every shape pair and every ratio appear
several times. One fixed tile keeps the compiles to one per variant (about 100 kernels); a few autotuned cases
run every config. A few minutes on an H100/H200. Skipped without CUDA (tests/conftest.py), collected anywhere.
"""

from __future__ import annotations

import pytest
import torch
import triton

from attention_lab.attention import torch_attention
from attention_lab.flash import triton_attention as ta
from attention_lab.flash import triton_configs
from attention_lab.flash.triton_attention import flash_attention
from attention_lab.kernels.common import device_capability
from reference import attention_fp64, random_qkv

pytestmark = pytest.mark.gpu

HEAD_DIMS = (32, 40, 64, 80, 96, 128)
LENGTHS = (1, 97, 128, 257, 1025, 2048)
# (Nq, Nk): every length against itself, and six unequal pairs, three each way
SHAPES = [(n, n) for n in LENGTHS] + [(1, 2048), (97, 1025), (128, 257), (257, 97), (1025, 128), (2048, 1025)]
MODES = ("none", "causal", "window", "mask", "mask+causal")
GQA_RATIOS = (1, 2, 4, 8)  # n_heads / n_kv_heads with 8 query heads
WINDOWS = (1, 33, 256, 1000)
DTYPES = (torch.float16, torch.bfloat16)
TILE = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}  # fits every GPU from a T4 up at D <= 128
N_HEADS = 8


def _matrix() -> list[tuple]:
    """The sampled cases: (head_dim, mode, dtype, n_queries, n_keys, gqa_ratio, window), deterministic."""
    cases = []
    for i, head_dim in enumerate(HEAD_DIMS):
        for j, mode in enumerate(MODES):
            combo = i * len(MODES) + j
            dtype = DTYPES[(i + j) % 2]
            for pick in range(2):
                n_queries, n_keys = SHAPES[(2 * combo + 5 * pick) % len(SHAPES)]
                ratio = GQA_RATIOS[(combo + pick) % len(GQA_RATIOS)]
                window = WINDOWS[(combo + pick) % len(WINDOWS)] if mode == "window" else None
                cases.append((head_dim, mode, dtype, n_queries, n_keys, ratio, window))
    return cases


MATRIX = _matrix()


def _case_id(case) -> str:
    head_dim, mode, dtype, n_queries, n_keys, ratio, window = case
    extra = f"-w{window}" if window else ""
    return f"D{head_dim}-{mode}{extra}-{str(dtype)[6:]}-{n_queries}x{n_keys}-gqa{ratio}"


def _supported(dtype: torch.dtype) -> bool:
    return dtype != torch.bfloat16 or device_capability("cuda") >= triton_configs.BF16_MIN_CAPABILITY



def _qkv(batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim, dtype, seed=0):
    """The shared random q/k/v (tests/reference.random_qkv) on the GPU, as autograd leaves."""
    return random_qkv(batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim, dtype=dtype, seed=seed,
                      requires_grad=True, device="cuda")


def _random_mask(shape: tuple, n_queries: int, n_keys: int, causal: bool, seed: int) -> torch.Tensor:
    """A bool mask of ``shape`` (…, Nq, Nk), ~30% masked, where every query that may see a key at all sees one:
    its diagonal key (causal) or the last key — so PyTorch's yardstick has no all-masked row (see :func:`_check`)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    mask = torch.rand(shape, device="cuda", generator=g) > 0.3
    rows = torch.arange(n_queries, device="cuda")
    keys = rows + n_keys - n_queries if causal else torch.full_like(rows, n_keys - 1)
    seen = keys >= 0
    mask[..., rows[seen], keys[seen]] = True
    return mask


FLOOR = 1e-5  # absolute: where the exact answer is 0 (one visible key: dS = P ∘ (dP - delta) = 0) both sides round


def _rounding_floor(reference: torch.Tensor, dtype: torch.dtype) -> float:
    """Two roundings of ``dtype`` at the reference's magnitude (flash-attention's ``2 · |(ref + 0.3 - 0.3) - ref|``),
    plus :data:`FLOOR`."""
    rounded = reference.to(dtype)
    return 2 * ((rounded + 0.3) - 0.3 - rounded).abs().max().item() + FLOOR


def _forward_backward(fn, q, k, v, grad_out, **kwargs):
    out = fn(q, k, v, **kwargs)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


def _check(q, k, v, causal=False, window=None, mask=None, tile=TILE, seed=0):
    """The kernel's out, dq, dk, dv against float64, within 2× PyTorch's error in q's dtype plus the rounding floor.

    With causal/window and Nq > Nk the first Nq - Nk queries see no key: the kernel must give them exactly zero
    (output and dq) and the reference does too. PyTorch's SDPA turns such a row into NaN (and its gradients with
    it), so its error is measured on the same problem without those rows — the rows that see keys, whose
    outputs, and whose contributions to dk and dv, are the whole answer.
    """
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    grad_out = torch.randn(q.shape, device="cuda", generator=g).to(q.dtype)
    ours = _forward_backward(flash_attention, q, k, v, grad_out, causal=causal, window=window, mask=mask, tile=tile)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    exact = _forward_backward(attention_fp64, q64, k64, v64, grad_out.double(), causal=causal, window=window, mask=mask)
    n_queries, n_keys = q.shape[2], k.shape[2]
    empty = max(0, n_queries - n_keys) if (causal or window is not None) else 0
    q_seen = q.detach()[:, :, empty:].requires_grad_()
    k_same, v_same = (x.detach().requires_grad_() for x in (k, v))
    theirs = _forward_backward(torch_attention, q_seen, k_same, v_same, grad_out[:, :, empty:], causal=causal,
                               window=window, mask=None if mask is None else mask[..., empty:, :])
    for name, mine, ref, pytorch in zip(("out", "dq", "dk", "dv"), ours, exact, theirs):
        assert mine.dtype == q.dtype and mine.shape == ref.shape, name
        assert not mine.isnan().any(), f"{name} has NaN"
        error = (mine.double() - ref).abs().max().item()
        ref_seen = ref[:, :, empty:] if name in ("out", "dq") else ref
        torch_error = (pytorch.double() - ref_seen).abs().max().item()
        floor = _rounding_floor(ref, q.dtype)
        assert error <= 2 * torch_error + floor, (f"{name}: error {error:.3e} > 2 × PyTorch's {torch_error:.3e} "
                                                  f"+ {floor:.1e}")
    if empty:
        assert ours[0][:, :, :empty].abs().max() == 0 and ours[1][:, :, :empty].abs().max() == 0


def _case_inputs(case) -> dict:
    """q, k, v (and mask, causal, window, seed) of one case: the same tensors for the compile and for the check."""
    head_dim, mode, dtype, n_queries, n_keys, ratio, window = case
    batch = 1 if max(n_queries, n_keys) >= 2048 else 2
    seed = head_dim * 1000 + n_queries + 7 * n_keys
    q, k, v = _qkv(batch, N_HEADS, N_HEADS // ratio, n_queries, n_keys, head_dim, dtype, seed)
    causal = mode in ("causal", "mask+causal")
    mask = None
    if mode.startswith("mask"):  # alternate the mask's layouts: (Nq, Nk), (B, 1, Nq, Nk), (B, H, Nq, Nk)
        shape = [(n_queries, n_keys), (batch, 1, n_queries, n_keys), (batch, N_HEADS, n_queries, n_keys)][seed % 3]
        mask = _random_mask(shape, n_queries, n_keys, causal, seed)
    return dict(q=q, k=k, v=v, mask=mask, causal=causal, window=window, seed=seed)


def _run_case(case, tile=TILE):
    if not _supported(case[2]):
        pytest.skip("bf16 needs sm_80 or newer")
    inputs = _case_inputs(case)
    _check(inputs["q"], inputs["k"], inputs["v"], causal=inputs["causal"], window=inputs["window"],
           mask=inputs["mask"], tile=tile, seed=inputs["seed"])


@pytest.fixture(scope="module", autouse=True)
def _compiled_in_parallel():
    """Every fixed-tile variant of the matrix compiled at once, in parallel threads (ta.precompile_many), before
    the first case runs: one after another they took longer than a device call. A failure here only costs time
    (each case then compiles its own kernels), so it is reported, not raised."""
    if not torch.cuda.is_available():
        return
    try:
        problems = [dict({key: value for key, value in _case_inputs(case).items() if key != "seed"}, tile=TILE)
                    for case in MATRIX if _supported(case[2])]
        ta.precompile_many(problems)
    except Exception as error:  # noqa: BLE001 — compile ahead is an optimisation; the tests themselves still run
        import warnings

        warnings.warn(f"compiling the matrix ahead failed ({type(error).__name__}: {error}); compiling per case")


@pytest.mark.parametrize("case", MATRIX, ids=[_case_id(c) for c in MATRIX])
def test_matrix_matches_float64_within_twice_pytorchs_error(case):
    _run_case(case)


AUTOTUNED = [(128, "causal", torch.float16, 1025, 1025, 1, None), (128, "mask+causal", torch.bfloat16, 2048, 1025, 8, None),
             (96, "window", torch.float16, 2048, 2048, 2, 256)]  # each compiles ~20 configs: three variants only


@pytest.mark.parametrize("case", AUTOTUNED, ids=[_case_id(c) for c in AUTOTUNED])
def test_autotuned_configs_match_float64_within_twice_pytorchs_error(case):
    """No tile: the autotuner times every config the pruning rule keeps on this GPU (incl. the mask variants)."""
    _run_case(case, tile=None)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("layout", ["BHDN-transposed", "BNHD-view", "sliced-D"])
@pytest.mark.parametrize("head_dim", [64, 80])
def test_gradients_of_strided_inputs(layout, head_dim, dtype):
    """Issue #18, item 2: inputs not contiguous along D ((B, H, D, N) transposed, every 2nd element of D) are copied
    once and the backward reads the copies; a (B, N, H, D) view is read in place. Gradients vs float64 as above."""
    if not _supported(dtype):
        pytest.skip("bf16 needs sm_80 or newer")
    g = torch.Generator(device="cuda").manual_seed(head_dim)
    batch, n_queries, n_keys, n_kv = 2, 257, 1025, 2
    if layout == "BHDN-transposed":
        make = lambda heads, n: torch.randn(batch, heads, head_dim, n, device="cuda", generator=g).to(dtype).transpose(2, 3)  # noqa: E731,E501
    elif layout == "BNHD-view":
        make = lambda heads, n: torch.randn(batch, n, heads, head_dim, device="cuda", generator=g).to(dtype).transpose(1, 2)  # noqa: E731,E501
    else:
        make = lambda heads, n: torch.randn(batch, heads, n, 2 * head_dim, device="cuda", generator=g).to(dtype)[..., ::2]  # noqa: E731,E501
    q, k, v = (x.requires_grad_() for x in (make(N_HEADS, n_queries), make(n_kv, n_keys), make(n_kv, n_keys)))
    assert (q.stride(-1) == 1) == (layout == "BNHD-view")
    _check(q, k, v, causal=True, seed=head_dim)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
def test_offsets_past_2_to_the_31_compiled(dtype):
    """Issue #18, item 13, compiled: packed q/k/v rows 2^24 elements apart (row 128 starts past 2^31) and a mask with
    rows 2^24 apart take the kernels' 64-bit variant; they must match float64 like any other input (8 + 4 GiB)."""
    if not _supported(dtype):
        pytest.skip("bf16 needs sm_80 or newer")
    row, n = 2 ** 24, 130
    storage = torch.empty(n * row, device="cuda", dtype=dtype)
    g = torch.Generator(device="cuda").manual_seed(31)
    q, k, v = (storage.as_strided((1, 1, n, 64), (n * row, row, row, 1), 64 * i) for i in range(3))
    with torch.no_grad():
        for x in (q, k, v):
            x.copy_(torch.randn(x.shape, device="cuda", generator=g))
    assert ta.needs_wide_offsets(q)
    _check(*(x.requires_grad_() for x in (q, k, v)), causal=True, seed=31)
    del storage
    mask_storage = torch.zeros(n * row, device="cuda", dtype=torch.bool)
    mask = mask_storage.as_strided((n, 33), (row, 1))
    mask.copy_(_random_mask((n, 33), n, 33, False, 32))
    assert ta.needs_wide_offsets(mask[None, None])
    _check(*_qkv(1, 2, 1, n, 33, 64, dtype, 33), mask=mask, seed=33)


def test_a_fixed_tile_that_cannot_fit_is_refused_before_launch():
    """Issue #18, item 12: a user-fixed tile the pruning rule (mask tile counted) says does not fit this GPU raises
    ValueError naming the tile, instead of failing at launch; one that fits runs."""
    capability = device_capability("cuda")
    q, k, v = _qkv(1, 2, 2, 256, 256, 128, torch.float16, 5)
    mask = torch.rand(256, 256, device="cuda") > 0.2
    big = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3}
    config = triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3)
    if triton_configs.fits("forward", config, 128, 2, capability, has_mask=True):
        pytest.skip(f"the 128×128 / 3-stage forward with a mask fits sm_{capability}")
    with pytest.raises(ValueError, match="tile"):
        flash_attention(q, k, v, mask=mask, tile=big)
    with torch.no_grad():
        flash_attention(q, k, v, mask=mask, tile=TILE)
