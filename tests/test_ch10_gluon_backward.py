"""The Gluon dK/dV kernel for Hopper (attention_lab/flash/gluon_backward.py), which flash_attention_backward takes on
an H100/H200 where it applies (``uses_gluon_backward``).

On the CPU: which inputs it takes (every refusal names its reason), and that it compiles for sm_90 with Triton's own
compiler — shared memory within the limit, not one byte spilled (``ptxas -v``). On an H100/H200 (``-m gpu``): its
dK, dV equal float64 autograd's as closely as the teaching backward's, on odd shapes (Nq != Nk causal, lengths not
a multiple of 128, GQA 1/2/8, D 64/128, fp16/bf16, a (B, N, H, D) view).
"""

import pytest
import torch

from attention_lab.flash import gluon_backward as gb
from reference import attention_fp64

needs_gluon = pytest.mark.skipif(not gb.GLUON_AVAILABLE, reason="needs Triton with Gluon")


def problem(b=1, h=4, hkv=2, nq=33, nk=47, d=128, dtype=torch.bfloat16, layout="bhnd", device="cpu", seed=0):
    """do, q ``(B, H, Nq, D)``, k, v ``(B, Hkv, Nk, D)`` and lse, delta ``(B, H, Nq)`` fp32 (placeholders)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def make(heads, n):
        if layout == "bnhd":  # a (B, N, H, D) tensor viewed as (B, H, N, D): strides (N·H·D, D, H·D, 1)
            return torch.randn(b, n, heads, d, generator=g, device=device).to(dtype).transpose(1, 2)
        return torch.randn(b, heads, n, d, generator=g, device=device).to(dtype)
    rows = torch.zeros(b, h, nq, device=device)
    return make(h, nq), make(h, nq), make(hkv, nk), make(hkv, nk), rows, rows.clone()


def test_it_takes_what_it_was_written_for_and_names_every_refusal():
    do, q, k, v, lse, delta = problem()
    assert gb.input_reason(do, q, k, v, lse, delta) is None
    assert gb.input_reason(*problem(layout="bnhd")) is None  # strided views: TMA reads them as they are
    assert gb.input_reason(*problem(d=64, dtype=torch.float16, hkv=1)) is None
    assert "fp16 or bf16" in gb.input_reason(*problem(dtype=torch.float32))
    assert "head_dim in (64, 128)" in gb.input_reason(*problem(d=96))
    assert "share one dtype" in gb.input_reason(do.half(), q, k, v, lse, delta)
    assert "H % Hkv" in gb.input_reason(*problem(h=4, hkv=3))
    assert "(B, H, Nq, D)" in gb.input_reason(do[:, :, :5], q, k, v, lse, delta)
    assert "lse must be contiguous fp32" in gb.input_reason(do, q, k, v, lse.double(), delta)
    assert "delta must be contiguous fp32" in gb.input_reason(do, q, k, v, lse, delta[..., :-1])
    q_odd = torch.randn(1, 4, 33, 256).to(torch.bfloat16)[..., ::2]  # stride 2 along head_dim
    assert "contiguous in head_dim" in gb.input_reason(do, q_odd, k, v, lse, delta)
    assert gb.unsupported_reason(do, q, k, v, lse, delta) in ("needs CUDA tensors", "needs Triton >= 3.5 with Gluon")
    with pytest.raises(ValueError, match="cannot run these inputs"):
        gb.flash_attention_backward_kv_hopper(do, q, k, v, lse, delta, True, 0.1)


@needs_gluon
def test_compiles_for_sm90_within_shared_memory_and_without_spills():
    from attention_lab.kernels import compile_check

    rows = compile_check.check_in_subprocess(families=("gluon_backward",), capabilities=(90,), spills=True)
    assert len(rows) == 2 * len(gb.HEAD_DIMS)  # each head dim, causal and not
    for row in rows:
        assert row["fits"] and row["shared"] <= row["limit"], row
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row
        assert row["registers"] <= 255, row
    assert compile_check.compile_jobs("gluon_backward", 80) == []  # written for Hopper only


def test_flash_attention_backward_takes_it_where_it_applies_and_every_switch_turns_it_off(monkeypatch):
    """Where it takes the inputs (here: pretended), flash_attention_backward gets dK, dV from the Gluon kernel and
    dQ from the teaching dQ kernel; a tile, a mask, a window, fused dQ, a query-head split, hopper_path=False and
    GLUON_BACKWARD=False each keep the teaching dK/dV kernel."""
    from attention_lab.flash import triton_attention as ta

    calls = []

    def fake_kernel(do, q, k, v, lse, delta, causal, scale):
        calls.append((causal, scale))
        return torch.full_like(k, 7.0), torch.full_like(v, 7.0)

    monkeypatch.setattr(gb, "unsupported_reason", lambda *args: None)
    monkeypatch.setattr(gb, "flash_attention_backward_kv_hopper", fake_kernel)
    do, q, k, v, _, _ = problem(b=1, h=4, hkv=2, nq=20, nk=24, d=16, dtype=torch.float32)
    out, lse = ta.flash_attention_forward(q, k, v, None, True, None, None)
    dq, dk, dv = ta.flash_attention_backward(do, q, k, v, out, lse, None, True, None, None)
    assert calls == [(True, 0.25)] and torch.all(dk == 7) and torch.all(dv == 7)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    attention_fp64(q64, k64, v64, causal=True).backward(do.double())
    torch.testing.assert_close(dq.double(), q64.grad, atol=1e-4, rtol=1e-4)  # dQ still the teaching kernel's

    mask = torch.ones(20, 24, dtype=torch.bool)
    for options in (dict(tile={"BLOCK_M": 16, "BLOCK_N": 16}), dict(hopper_path=False), dict(fused_dq=True),
                    dict(kv_splits=2), dict(mask=mask), dict(window=5)):
        options = dict(dict(mask=None, window=None), **options)
        _, dk, _ = ta.flash_attention_backward(do, q, k, v, out, lse, options.pop("mask"), True,
                                               options.pop("window"), None, **options)
        assert not torch.all(dk == 7), options
    monkeypatch.setattr(ta, "GLUON_BACKWARD", False)
    _, dk, _ = ta.flash_attention_backward(do, q, k, v, out, lse, None, True, None, None)
    torch.testing.assert_close(dk.double(), k64.grad, atol=1e-4, rtol=1e-4)
    assert len(calls) == 1
    for bad in ("yes", 1, 0.0):  # a switch is True, False or None: anything else is named, before any launch
        with pytest.raises(ValueError, match="hopper_path must be True, False or None"):
            ta.flash_attention_backward(do, q, k, v, out, lse, None, True, None, None, hopper_path=bad)
        with pytest.raises(ValueError, match="hopper_path must be True, False or None"):
            ta.flash_attention_forward(q, k, v, None, True, None, None, hopper_path=bad)
    assert len(calls) == 1


def _on_hopper():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0) and gb.GLUON_AVAILABLE


GPU_CASES = [
    dict(b=2, h=4, hkv=4, nq=1000, nk=1000, d=128, causal=False),
    dict(b=2, h=4, hkv=4, nq=1000, nk=1000, d=128, causal=True),
    dict(b=1, h=8, hkv=4, nq=300, nk=777, d=128, causal=True, dtype=torch.float16),  # GQA 2, Nq < Nk
    dict(b=1, h=8, hkv=1, nq=777, nk=300, d=64, causal=True),  # GQA 8; the first 477 rows see no key
    dict(b=2, h=4, hkv=4, nq=513, nk=513, d=64, causal=False, layout="bnhd", dtype=torch.float16),
    dict(b=1, h=2, hkv=2, nq=64, nk=64, d=128, causal=True, layout="bnhd"),
    dict(b=1, h=16, hkv=2, nq=200, nk=1100, d=64, causal=False),  # GQA 8, many query heads per program
]


@pytest.mark.gpu
@pytest.mark.skipif(not _on_hopper(), reason="needs an sm_90 GPU and Gluon")
@pytest.mark.parametrize("case", GPU_CASES)
def test_dk_dv_equal_float64_autograd_as_closely_as_the_teaching_backward(case):
    from attention_lab.flash import triton_attention as ta

    case = dict(case)
    causal = case.pop("causal")
    do, q, k, v, _, _ = problem(device="cuda", **case)
    scale = q.shape[-1] ** -0.5
    out, lse = ta.flash_attention_forward(q, k, v, None, causal, None, scale)
    delta = (do.float() * out.float()).sum(-1)  # (B, H, Nq): rowsum(dO ∘ O)
    dk, dv = gb.flash_attention_backward_kv_hopper(do, q, k, v, lse, delta, causal, scale)
    _, dk_teaching, dv_teaching = ta.flash_attention_backward(do, q, k, v, out, lse, None, causal, None, scale,
                                                               hopper_path=False)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    attention_fp64(q64, k64, v64, causal=causal, scale=scale).backward(do.double())
    assert dk.shape == k.shape and dv.shape == v.shape and dk.dtype == k.dtype
    for name, got, teaching, want in (("dk", dk, dk_teaching, k64.grad), ("dv", dv, dv_teaching, v64.grad)):
        error = (got.double() - want).abs().max().item()
        teaching_error = (teaching.double() - want).abs().max().item()
        assert error <= 2 * teaching_error + 1e-3, (name, error, teaching_error)
