"""The Hopper fast path of the FlashAttention forward (attention_lab/flash/hopper.py), issue #19.

On the CPU, under Triton's interpreter (which emulates the host-side TMA descriptors, zero fill included): the
fast-path kernel equals float64 attention on odd shapes — Nq != Nk, lengths that are not a multiple of the block,
head dims 40/80/96 padded to a power of two, GQA/MQA, causal and not, a (B, N, H, D) tensor viewed as (B, H, N, D)
— one program per tile and persistent, and its log-sum-exp is the teaching kernel's; the persistent grid visits
every tile exactly once, longest rows first; the dispatch decision (each refusal named) and the dispatch itself,
with a pretended sm_90, gradients included. It compiles for sm_90 within shared memory and without a spilled
register (``ptxas -v``). On an H100/H200 (``-m gpu``): fast path vs teaching kernel vs float64, and gradients
through ``flash_attention`` with the fast forward.
"""

from __future__ import annotations

import pytest
import torch

from attention_lab.flash import hopper
from attention_lab.flash import triton_attention as ta
from attention_lab.kernels.interpreter import interpreting
from attention_lab.kernels.optional_triton import TRITON_AVAILABLE, tl, triton
from reference import attention_fp64, tolerance

pytestmark = pytest.mark.usefixtures("one_thread")
needs_interpreter = pytest.mark.skipif(not interpreting(), reason="runs the kernel under TRITON_INTERPRET=1")


def make_qkv(b=1, h=4, hkv=2, nq=37, nk=53, d=40, dtype=torch.float32, layout="bhnd", device="cpu", seed=0):
    """q ``(b, h, nq, d)``, k, v ``(b, hkv, nk, d)``; layout "bnhd": each made (B, N, H, D) and viewed as
    (B, H, N, D) (strides (N·H·D, D, H·D, 1): no copy)."""
    g = torch.Generator().manual_seed(seed)

    def make(heads, n):
        if layout == "bnhd":
            return torch.randn(b, n, heads, d, generator=g).to(device=device, dtype=dtype).transpose(1, 2)
        return torch.randn(b, heads, n, d, generator=g).to(device=device, dtype=dtype)
    return make(h, nq), make(hkv, nk), make(hkv, nk)


CASES = {  # name -> (make_qkv arguments, causal)
    "gqa-causal-nq<nk-d40": (dict(b=1, h=4, hkv=2, nq=37, nk=53, d=40), True),
    "mqa-causal-nq>nk-d80": (dict(b=2, h=2, hkv=1, nq=50, nk=20, d=80), True),  # the first 30 rows see no key
    "mha-full-nq<nk-d96": (dict(b=1, h=2, hkv=2, nq=21, nk=45, d=96), False),
    "gqa-full-nq>nk-d64": (dict(b=2, h=4, hkv=1, nq=40, nk=23, d=64), False),
    "bnhd-view-causal-d40": (dict(b=2, h=3, hkv=3, nq=29, nk=29, d=40, layout="bnhd"), True),
    "bnhd-view-full-gqa-d64": (dict(b=1, h=4, hkv=2, nq=18, nk=35, d=64, layout="bnhd"), False),
}


# ------------------------------------------------------------------ the kernel under the interpreter


@needs_interpreter
@pytest.mark.parametrize("persistent", [False, True], ids=["per-tile", "persistent"])
@pytest.mark.parametrize("name", list(CASES))
def test_fast_path_equals_float64_and_the_teaching_lse(name, persistent):
    shape, causal = CASES[name]
    q, k, v = make_qkv(**shape)
    assert not q.is_contiguous() or shape.get("layout") != "bnhd"  # the view really is strided
    out, lse = hopper.flash_attention_forward_hopper(q, k, v, causal, q.shape[-1] ** -0.5, persistent=persistent,
                                                     heads_per_group=3)  # groups of 3 heads: the last one ragged
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == q.shape[:3] and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), attention_fp64(q, k, v, causal=causal), **tolerance("interpreter_fp32"))
    _, teaching_lse = ta.flash_attention_forward(q, k, v, None, causal, None, None, hopper_path=False)
    assert torch.equal(torch.isinf(lse), torch.isinf(teaching_lse))  # +inf exactly where a row sees no key
    if shape["nq"] > shape["nk"] and causal:
        assert torch.isinf(lse[..., : shape["nq"] - shape["nk"]]).all()
        assert torch.all(out[..., : shape["nq"] - shape["nk"], :] == 0)  # ... and those rows are zeros
    finite = torch.isfinite(teaching_lse)
    torch.testing.assert_close(lse[finite], teaching_lse[finite], **tolerance("fp32_kernel_paths"))


@needs_interpreter
@pytest.mark.parametrize("causal", [False, True])
def test_fast_path_in_fp16_is_as_close_to_float64_as_the_teaching_kernel(causal):
    q, k, v = make_qkv(b=1, h=4, hkv=2, nq=45, nk=61, d=80, dtype=torch.float16, layout="bnhd", seed=3)
    want = attention_fp64(q, k, v, causal=causal)
    out, lse = hopper.flash_attention_forward_hopper(q, k, v, causal, q.shape[-1] ** -0.5)
    teaching, teaching_lse = ta.flash_attention_forward(q, k, v, None, causal, None, None, hopper_path=False)
    assert out.dtype == torch.float16
    error = (out.double() - want).abs().max().item()
    teaching_error = (teaching.double() - want).abs().max().item()
    assert error <= 2 * teaching_error + 1e-3, (error, teaching_error)
    torch.testing.assert_close(out.double(), want, **tolerance("kernel_fp16"))
    torch.testing.assert_close(lse, teaching_lse, **tolerance("fp32_kernel_paths"))


@triton.jit
def _record_tiles(SEEN, n_query_blocks, n_batch_heads, heads_per_group, CAUSAL: tl.constexpr):
    """For each tile of the persistent grid: which (query block, batch·head) it is, in visiting order."""
    tile = tl.program_id(0)
    start_m, batch_head = hopper.persistent_tile(tile, n_query_blocks, n_batch_heads, heads_per_group, CAUSAL)
    tl.store(SEEN + 2 * tile, start_m)
    tl.store(SEEN + 2 * tile + 1, batch_head)


@needs_interpreter
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads_per_group", [1, 3, 7, 100])
def test_persistent_grid_visits_every_tile_once_longest_first(causal, heads_per_group):
    n_query_blocks, n_batch_heads = 5, 7
    n_tiles = n_query_blocks * n_batch_heads
    seen = torch.full((n_tiles, 2), -1, dtype=torch.int32)
    _record_tiles[(n_tiles,)](seen, n_query_blocks, n_batch_heads, heads_per_group, CAUSAL=causal)
    visited = [tuple(t) for t in seen.tolist()]
    assert sorted(visited) == [(m, bh) for m in range(n_query_blocks) for bh in range(n_batch_heads)]
    group_of = [bh // heads_per_group for _, bh in visited]
    assert group_of == sorted(group_of)  # a few heads at a time, one group after the other
    for group in set(group_of):
        blocks = [m for (m, _), g in zip(visited, group_of) if g == group]
        assert blocks == sorted(blocks, reverse=causal)  # causal: the longest rows (last query blocks) first


# ------------------------------------------------------------------ the dispatch decision (no GPU needed)


def test_supports_valid_inputs_on_sm90_including_strided_views_and_padded_head_dims():
    for shape in (dict(d=128, dtype=torch.bfloat16), dict(d=40, dtype=torch.float16, layout="bnhd"),
                  dict(d=8, dtype=torch.float16, nq=5, nk=1), dict(d=96, dtype=torch.bfloat16, hkv=1)):
        q, k, v = make_qkv(**shape)
        assert hopper.unsupported_reason(q, k, v, capability=90) is None, shape
        assert hopper.supports(q, k, v, capability=90)


def test_every_refusal_names_its_reason():
    q, k, v = make_qkv(d=64, dtype=torch.float16)
    reason = hopper.unsupported_reason

    def misaligned_start(x):  # the same values 8 bytes into a fresh buffer: its address is not 16-byte aligned
        flat = torch.empty(x.numel() + 4, dtype=x.dtype)[4:]
        return flat.view(x.shape).copy_(x)

    if TRITON_AVAILABLE:
        assert "needs a CUDA GPU" in reason(q, k, v)  # a CPU tensor, no capability given
        assert not hopper.supports(q, k, v)
    assert "sm_75" in reason(q, k, v, capability=75)  # a T4
    assert "sm_80" in reason(q, k, v, capability=80)  # an A100
    assert "sm_89" in reason(q, k, v, capability=89)  # an L4
    assert "sm_100" in reason(q, k, v, capability=100)  # Blackwell: not verified
    assert "mask" in reason(q, k, v, torch.ones(37, 53, dtype=torch.bool), capability=90)
    assert "window" in reason(q, k, v, window=16, capability=90)
    assert "fp16 or bf16" in reason(*make_qkv(d=64, dtype=torch.float32), capability=90)
    assert "multiple of 8" in reason(*make_qkv(d=36, dtype=torch.float16), capability=90)
    assert "at most 128" in reason(*make_qkv(d=136, dtype=torch.float16), capability=90)
    wide = torch.randn(1, 4, 37, 128).half()
    assert "stride 1 along head_dim" in reason(wide[..., ::2], k, v, capability=90)
    padded = torch.randn(1, 4, 37, 68).half()[..., :64]  # rows of 136 bytes: not a multiple of 16
    assert "16-byte aligned" in reason(padded, k, v, capability=90)
    assert "16-byte aligned" in reason(q, misaligned_start(k), v, capability=90)
    assert "empty" in reason(q, k[:, :, :0], v[:, :, :0], capability=90)
    for refused in (75, 80, 100):
        assert not hopper.supports(q, k, v, capability=refused)


@pytest.fixture
def pretend_sm90(monkeypatch):
    """CPU tensors under the interpreter look like an H100's to the fast path; count its launches."""
    calls = []
    real = hopper.flash_attention_forward_hopper

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(hopper, "device_capability_of", lambda q: 90)
    monkeypatch.setattr(hopper, "flash_attention_forward_hopper", counted)
    return calls


@needs_interpreter
def test_flash_attention_forward_takes_the_fast_path_when_supported(pretend_sm90, monkeypatch):
    q, k, v = make_qkv(b=1, h=4, hkv=2, nq=37, nk=53, d=40, dtype=torch.float16, seed=5)
    out, lse = ta.flash_attention_forward(q, k, v, None, True, None, None)
    assert len(pretend_sm90) == 1  # chosen by itself
    teaching, teaching_lse = ta.flash_attention_forward(q, k, v, None, True, None, None, hopper_path=False)
    assert len(pretend_sm90) == 1  # forced off per call
    torch.testing.assert_close(out, teaching, **tolerance("kernel_fp16"))
    torch.testing.assert_close(lse, teaching_lse, **tolerance("fp32_kernel_paths"))
    ta.flash_attention_forward(q, k, v, None, True, None, None, tile={"BLOCK_M": 16, "BLOCK_N": 32})
    ta.flash_attention_forward(q, k, v, torch.ones(37, 53, dtype=torch.bool), True, None, None)  # a mask
    ta.flash_attention_forward(q, k, v, None, True, 8, None)  # a window
    ta.flash_attention_forward(q.float(), k.float(), v.float(), None, True, None, None)  # fp32
    assert len(pretend_sm90) == 1  # an explicit tile, a mask, a window, fp32: the teaching kernel
    monkeypatch.setattr(ta, "HOPPER_FORWARD", False)
    ta.flash_attention_forward(q, k, v, None, True, None, None)
    assert len(pretend_sm90) == 1  # the module switch
    monkeypatch.setattr(hopper, "device_capability_of", lambda q: 80)
    monkeypatch.setattr(ta, "HOPPER_FORWARD", True)
    ta.flash_attention_forward(q, k, v, None, True, None, None)
    assert len(pretend_sm90) == 1  # an A100: the teaching kernel


@needs_interpreter
@pytest.mark.parametrize("causal", [False, True])
def test_gradients_through_flash_attention_with_the_fast_forward(pretend_sm90, causal):
    """The backward kernels take the fast forward's O and lse as they are: gradients equal float64 autograd."""
    q, k, v = (t.requires_grad_() for t in make_qkv(b=1, h=4, hkv=2, nq=33, nk=47, d=40, dtype=torch.float16,
                                                    layout="bnhd", seed=7))
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(8)).half()
    out = ta.flash_attention(q, k, v, causal=causal)
    assert len(pretend_sm90) == 1
    ours = (out, *torch.autograd.grad(out, (q, k, v), grad_out))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want_out = attention_fp64(q64, k64, v64, causal=causal)
    want = (want_out, *torch.autograd.grad(want_out, (q64, k64, v64), grad_out.double()))
    for name, mine, exact in zip(("out", "dq", "dk", "dv"), ours, want):
        assert mine.dtype == torch.float16, name
        torch.testing.assert_close(mine.double(), exact, **tolerance("interpreter_kernel_16bit"), msg=name)


@needs_interpreter
def test_bad_arguments_of_the_fast_forward_are_named():
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match="persistent"):
        hopper.flash_attention_forward_hopper(q, k, v, False, 0.1, persistent="yes")
    with pytest.raises(ValueError, match="heads_per_group"):
        hopper.flash_attention_forward_hopper(q, k, v, False, 0.1, persistent=True, heads_per_group=0)
    with pytest.raises(ValueError, match="BLOCK_M"):
        hopper.flash_attention_forward_hopper(q, k, v, False, 0.1, tile={"BLOCK_M": 24, "BLOCK_N": 16})


# ------------------------------------------------------------------ compiles for sm_90 (CPU)


def test_shared_memory_rule_prunes_what_sm90_cannot_hold():
    big = triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3)
    assert hopper.fits(big, 128, 2, persistent=False)  # 32 + 3·64 + 1 = 225 KiB of 227
    assert not hopper.fits(big, 128, 2, persistent=True)  # + the output's 32 KiB staging tile
    assert hopper.fits(big, 64, 2, persistent=True)  # half the rows' bytes at head_dim 64
    kept = hopper.prune_configs(hopper.HOPPER_CONFIGS, {"q_desc": hopper.descriptor(torch.empty(1, 1, 16, 128).half(),
                                                                                  16, 128)},
                                BLOCK_D=128, PERSISTENT=True)
    assert 0 < len(kept) < len(hopper.HOPPER_CONFIGS)


@pytest.mark.skipif(not TRITON_AVAILABLE, reason="needs triton")
def test_compiles_for_sm90_within_shared_memory_and_without_spills():
    from attention_lab.kernels import compile_check

    rows = compile_check.check_in_subprocess(families=("hopper",), capabilities=(90,), spills=True)
    assert len(rows) == 2 * len(hopper.HOPPER_CONFIGS)  # every config, one program per tile and persistent
    compiled = [r for r in rows if r["skipped"] is None]
    assert [r["config"] for r in rows if r["skipped"]] == [{"BLOCK_M": 128, "BLOCK_N": 128}]  # 3 stages, persistent
    for row in compiled:
        assert row["fits"] and row["shared"] <= row["limit"], row
        assert row["estimate"] - 1024 <= row["shared"] <= row["estimate"], row  # the rule is an upper bound, tight
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row
        assert row["registers"] <= 255, row
    for capability in (75, 80, 89):  # never chosen off Hopper: nothing to compile there
        assert compile_check.compile_jobs("hopper", capability) == []


# ------------------------------------------------------------------ on an H100/H200


def _on_hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


GPU_CASES = [  # (make_qkv arguments, causal)
    (dict(b=2, h=4, hkv=4, nq=1000, nk=1000, d=128), False),
    (dict(b=2, h=4, hkv=4, nq=1000, nk=1000, d=128), True),
    (dict(b=1, h=8, hkv=2, nq=300, nk=777, d=128, dtype=torch.float16), True),
    (dict(b=1, h=8, hkv=1, nq=777, nk=300, d=64), True),  # the first 477 rows see no key
    (dict(b=2, h=4, hkv=4, nq=513, nk=513, d=64, layout="bnhd", dtype=torch.float16), False),
    (dict(b=1, h=4, hkv=2, nq=401, nk=1201, d=80, layout="bnhd"), True),
    (dict(b=2, h=4, hkv=1, nq=257, nk=97, d=40, dtype=torch.float16), False),
    (dict(b=1, h=16, hkv=16, nq=4096, nk=4096, d=128), True),
]


@pytest.mark.gpu
@pytest.mark.skipif(not _on_hopper(), reason="needs an sm_90 GPU (H100/H200)")
@pytest.mark.parametrize("persistent", [False, True], ids=["per-tile", "persistent"])
@pytest.mark.parametrize("tile", [None, hopper.TEACHING_TILE, {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4,
                                                               "num_stages": 3}], ids=["autotuned", "128x64", "64x64"])
@pytest.mark.parametrize("case", range(len(GPU_CASES)))
def test_on_hopper_fast_path_equals_float64_as_closely_as_the_teaching_kernel(case, tile, persistent):
    shape, causal = GPU_CASES[case]
    shape = dict(dict(dtype=torch.bfloat16), **shape)
    q, k, v = make_qkv(device="cuda", **shape)
    assert hopper.supports(q, k, v)
    out, lse = hopper.flash_attention_forward_hopper(q, k, v, causal, q.shape[-1] ** -0.5, tile=tile,
                                                     persistent=persistent)
    teaching, teaching_lse = ta.flash_attention_forward(q, k, v, None, causal, None, None, hopper_path=False)
    want = attention_fp64(q, k, v, causal=causal)
    error = (out.double() - want).abs().max().item()
    teaching_error = (teaching.double() - want).abs().max().item()
    assert out.dtype == q.dtype and not out.isnan().any()
    assert error <= 2 * teaching_error + 1e-3, (error, teaching_error)
    assert torch.equal(torch.isinf(lse), torch.isinf(teaching_lse))
    finite = torch.isfinite(teaching_lse)
    torch.testing.assert_close(lse[finite], teaching_lse[finite], atol=2e-3, rtol=0)
    if (~finite).any():
        assert torch.all(out[~finite] == 0)


@pytest.mark.gpu
@pytest.mark.skipif(not _on_hopper(), reason="needs an sm_90 GPU (H100/H200)")
@pytest.mark.parametrize("case", [0, 3, 5, 6])
def test_on_hopper_gradients_through_flash_attention_with_the_fast_forward(case, monkeypatch):
    from attention_lab.attention import scaled_dot_product_attention, torch_attention

    shape, causal = GPU_CASES[case]
    shape = dict(dict(dtype=torch.bfloat16), **shape)
    calls = []
    real = hopper.flash_attention_forward_hopper
    monkeypatch.setattr(hopper, "flash_attention_forward_hopper",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    # the Gluon forward off: at D=64/128 it would be chosen first (tests/test_ch10_gluon_hopper.py covers it), and
    # this test is of the TMA kernel under autograd at every head dim
    monkeypatch.setattr(ta, "GLUON_FORWARD", False)
    q, k, v = (t.requires_grad_() for t in make_qkv(device="cuda", **shape))
    grad_out = torch.randn(q.shape, device="cuda", dtype=q.dtype)
    out = ta.flash_attention(q, k, v, causal=causal)
    assert calls == [1]  # chosen by itself on sm_90
    ours = (out, *torch.autograd.grad(out, (q, k, v), grad_out))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    exact_out = scaled_dot_product_attention(q32, k32, v32, causal=causal)
    exact = (exact_out, *torch.autograd.grad(exact_out, (q32, k32, v32), grad_out.float()))
    q16, k16, v16 = (t.detach().requires_grad_() for t in (q, k, v))
    torch_out = torch_attention(q16, k16, v16, causal=causal)
    theirs = (torch_out, *torch.autograd.grad(torch_out, (q16, k16, v16), grad_out))
    for name, mine, ref, same_dtype in zip(("out", "dq", "dk", "dv"), ours, exact, theirs):
        assert mine.dtype == q.dtype and not mine.isnan().any(), name
        error = (mine.float() - ref).abs().max().item()
        torch_error = (same_dtype.float() - ref).abs().max().item()
        assert error <= 2 * torch_error + 2e-3, f"{name}: error {error:.2e} vs PyTorch's {torch_error:.2e}"


# ------------------------------------------------------------------ the benchmark script (CPU smoke test)


def _load_benchmark():
    from reference import load_benchmark

    return load_benchmark("hopper_steps")


def _fake_results(bench) -> dict:
    rows = []
    for head_dim, n, causal in bench.shapes(quick=False):
        for i, method in enumerate(bench.LABELS):
            rows.append(dict(head_dim=head_dim, n=n, causal=causal, mode="fwd", method=method, tflops=100.0 + 10 * i,
                             ms=1.0, spread=0.01 * i))
    return {"environment": {"card": "NVIDIA H200", "torch": "2.x", "triton": "3.6", "cuda": "12"},
            "dtype": "bfloat16", "tokens": bench.TOKENS, "hidden": bench.HIDDEN, "runs": bench.RUNS, "rows": rows}


def test_benchmark_shapes_table_ratios_and_figure(tmp_path):
    bench = _load_benchmark()
    full, quick = bench.shapes(quick=False), bench.shapes(quick=True)
    assert {(d, n) for d, n, _ in full} == {(d, n) for d in (64, 128) for n in (1024, 4096, 16384)}
    assert {c for _, _, c in full} == {False, True} and set(quick) < set(full)
    results = _fake_results(bench)
    text = bench.table_text(results)
    assert len(text.splitlines()) == 1 + len(full)
    lines = bench.ratio_lines(results)
    tma = next(line for line in lines if line.strip().startswith("(a) TMA") and "D=128 causal" in line)
    assert f"N=16k {110 / 100:.2f}×" in tma  # hopper_tma_fixed (110) over triton (100)
    assert len(lines) == 8 * 4  # eight comparisons, four panels
    bench.plot(results, tmp_path / "flash_hopper.png")
    assert (tmp_path / "flash_hopper.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without a GPU gets")
def test_benchmark_without_a_gpu_says_so(tmp_path):
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        _load_benchmark().main(["--out", str(tmp_path)])
