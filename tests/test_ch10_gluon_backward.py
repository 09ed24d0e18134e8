"""The Gluon dK/dV and dQ kernels for Hopper (attention_lab/flash/gluon_backward.py), which flash_attention_backward
takes on an H100/H200 where they apply (``uses_gluon_backward``, ``uses_gluon_dq``).

On the CPU: which inputs they take (every refusal names its reason), that they compile for sm_90 with Triton's own
compiler — shared memory within the limit, registers and spills as ptxas reports them — and which kernel
flash_attention_backward launches under every switch. On an H100/H200 (``-m gpu``): their dK, dV, dQ equal float64
autograd's as closely as the teaching backward's, on odd shapes (Nq != Nk causal, lengths not a multiple of 128,
GQA 1/2/8, D 64/128, fp16/bf16, a (B, N, H, D) view).
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
    with pytest.raises(ValueError, match="dK/dV kernel cannot run these inputs"):
        gb.flash_attention_backward_kv_hopper(do, q, k, v, lse, delta, True, 0.1)
    with pytest.raises(ValueError, match="dQ kernel cannot run these inputs"):
        gb.flash_attention_backward_q_hopper(do, q, k, v, lse, delta, True, 0.1)


def test_the_launchers_refuse_bad_arguments_before_anything_is_built(monkeypatch):
    """kv_splits is a count of programs sharing one kv head's group: 1 … group, an int; causal a bool, scale a float;
    anything else is named before any buffer is made or kernel launched (the inputs themselves pretended supported,
    so that the launch itself, which needs a GPU, is never reached)."""
    monkeypatch.setattr(gb, "unsupported_reason", lambda *args: None)
    do, q, k, v, lse, delta = problem(h=4, hkv=2)  # group 2
    for bad in (0, 3, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"kv_splits must be an integer in \[1, 3\)"):
            gb.flash_attention_backward_kv_hopper(do, q, k, v, lse, delta, True, 0.1, kv_splits=bad)
    for causal, scale in ((1, 0.1), (True, 1), (None, 0.1)):
        for launcher in (gb.flash_attention_backward_kv_hopper, gb.flash_attention_backward_q_hopper):
            with pytest.raises(ValueError, match="causal must be a bool and scale a float"):
                launcher(do, q, k, v, lse, delta, causal, scale)


def test_the_split_rule_picks_what_the_probe_measured_fastest(monkeypatch):
    """kv_splits_for against the committed H200 probe (gqa_split_probe.json, B=1 N=4k H=16 D=128, GPU time from CUDA
    graphs): for GQA-4 and MQA, causal and not, the split the rule picks (as the kernels round it) is within 3 % of
    the fastest backward measured, and splitting at all beats one program per key block."""
    from attention_lab.book import results
    from attention_lab.flash import triton_attention as ta
    from attention_lab.kernels.common import DeviceFacts

    probe = results.load("gqa_split_probe")
    monkeypatch.setattr(ta, "device_facts", lambda device: DeviceFacts(capability=90, n_sms=probe["environment"]["sms"]))
    cases = {(r["n_kv_heads"], r["causal"]) for r in probe["rows"]}
    assert cases == {(4, True), (4, False), (1, True), (1, False)}
    for n_kv_heads, causal in cases:
        rows = {r["kv_splits"]: r["backward_ms"] for r in probe["rows"]
                if (r["n_kv_heads"], r["causal"]) == (n_kv_heads, causal)}
        group = probe["heads"] // n_kv_heads
        chosen, _ = ta.split_query_heads(group, ta.kv_splits_for(probe["batch"], n_kv_heads, probe["n"], group,
                                                                  torch.device("cuda"), causal))
        assert rows[chosen] <= 1.03 * min(rows.values()), (n_kv_heads, causal, chosen, rows)
        if n_kv_heads == 1:
            assert rows[chosen] < 0.5 * rows[1], (causal, rows)  # MQA: 32 programs on 132 SMs without a split


@needs_gluon
def test_compiles_for_sm90_within_shared_memory_and_without_spills():
    """Both kernels at each head dim, causal and not. Not one byte spilled, except the dK/dV kernel at D=128 under
    Triton 3.6 (the lent GPU's and Colab's): there ptxas spills 12 / 100 B of loop-invariant scalars (stored in the
    prologue, reloaded at the loop head; notes_flash.md), and Triton 3.9 spills nothing; and the dK/dV kernel's
    128-row tile at D=64 not causal (gluon_backward.kv_tile_for: 52 B under 3.6, 28 B under 3.9, kept because it
    measured faster with them)."""
    import triton

    from attention_lab.kernels import compile_check

    rows = compile_check.check_in_subprocess(families=("gluon_backward",), capabilities=(90,), spills=True)
    assert sorted(row["kernel"] for row in rows) == sorted(
        [kernel + causal for kernel in ("dkdv_ws", "dq_ws") for causal in ("", "+causal")] * len(gb.HEAD_DIMS)
        + ["dkdv_ws+causal+split", "dq_ws+causal+delta"] * len(gb.HEAD_DIMS))
    old_triton = tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 7)
    for row in rows:
        assert row["fits"] and row["shared"] <= row["limit"], row
        assert row["registers"] <= 255, row
        spill_allowed = 128 if old_triton and row["kernel"].startswith("dkdv") and row["head_dim"] == 128 else 0
        if row["kernel"] == "dkdv_ws" and row["head_dim"] == 64:
            assert row["config"]["BLOCK_M"] == 128, row
            spill_allowed = 64
        assert row["spill_stores"] <= spill_allowed and row["spill_loads"] <= 1.5 * spill_allowed, row
    assert compile_check.compile_jobs("gluon_backward", 80) == []  # written for Hopper only


def test_flash_attention_backward_takes_them_where_they_apply_and_every_switch_turns_them_off(monkeypatch):
    """Where they take the inputs (here: pretended), flash_attention_backward gets dK, dV and dQ from the Gluon
    kernels; a tile, a mask, a window, fused dQ, hopper_path=False and GLUON_BACKWARD=False each keep both teaching
    kernels, and so does D=64 with few keys (except the dK/dV kernel, not causal); a query-head split of the dK/dV kernel is passed to the Gluon one, a
    fixed dQ tile keeps the teaching dQ kernel only (and the Gluon dK, dV are kept, not overwritten by the teaching
    path's split sums)."""
    from attention_lab.flash import triton_attention as ta

    calls, splits = [], []

    def fake_kv(do, q, k, v, lse, delta, causal, scale, kv_splits=1):
        calls.append(("kv", causal, scale))
        splits.append(kv_splits)
        return torch.full_like(k, 7.0), torch.full_like(v, 7.0)

    def fake_q(do, q, k, v, lse, delta, causal, scale, out=None):
        calls.append(("q", causal, scale))
        return torch.full_like(q, 5.0)

    monkeypatch.setattr(gb, "unsupported_reason", lambda *args: None)
    monkeypatch.setattr(gb, "flash_attention_backward_kv_hopper", fake_kv)
    monkeypatch.setattr(gb, "flash_attention_backward_q_hopper", fake_q)
    do, q, k, v, _, _ = problem(b=1, h=4, hkv=2, nq=20, nk=24, d=16, dtype=torch.float32)
    out, lse = ta.flash_attention_forward(q, k, v, None, True, None, None)
    dq, dk, dv = ta.flash_attention_backward(do, q, k, v, out, lse, None, True, None, None)
    assert calls == [("q", True, 0.25), ("kv", True, 0.25)]
    assert torch.all(dk == 7) and torch.all(dv == 7) and torch.all(dq == 5)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    attention_fp64(q64, k64, v64, causal=True).backward(do.double())

    mask = torch.ones(20, 24, dtype=torch.bool)
    tile = {"BLOCK_M": 16, "BLOCK_N": 16}
    for options, gluon_kv, gluon_q in (
            (dict(tile=tile), False, False), (dict(hopper_path=False), False, False),
            (dict(fused_dq=True), False, False), (dict(mask=mask), False, False), (dict(window=5), False, False),
            (dict(kv_splits=2), True, True), (dict(tile_q=tile), True, False),
            (dict(kv_splits=2, tile_q=tile), True, False)):
        calls.clear()
        options = dict(dict(mask=None, window=None), **options)
        dq, dk, _ = ta.flash_attention_backward(do, q, k, v, out, lse, options.pop("mask"), True,
                                                options.pop("window"), None, **options)
        assert calls == [("q", True, 0.25)] * gluon_q + [("kv", True, 0.25)] * gluon_kv, options
        assert torch.all(dk == 7) == gluon_kv and torch.all(dq == 5) == gluon_q, options
    assert splits == [1, 2, 1, 2]  # the split asked for reaches the Gluon dK/dV kernel
    do64, q64_, k64_, v64_, _, _ = problem(b=1, h=2, hkv=2, nq=20, nk=24, d=64, dtype=torch.float32)
    for causal, want in ((True, []), (False, [("kv", False, 0.125)])):
        calls.clear()
        out64, lse64 = ta.flash_attention_forward(q64_, k64_, v64_, None, causal, None, None)
        ta.flash_attention_backward(do64, q64_, k64_, v64_, out64, lse64, None, causal, None, None)
        # D=64 with few keys: the teaching kernels measured faster, except the Gluon dK/dV kernel not causal
        # (gluon_backward.faster_than_teaching)
        assert calls == want, causal
    calls.clear()
    monkeypatch.setattr(ta, "GLUON_BACKWARD", False)
    dq, dk, _ = ta.flash_attention_backward(do, q, k, v, out, lse, None, True, None, None)
    torch.testing.assert_close(dk.double(), k64.grad, atol=1e-4, rtol=1e-4)  # the teaching kernels' gradients
    torch.testing.assert_close(dq.double(), q64.grad, atol=1e-4, rtol=1e-4)
    assert calls == []
    for bad in ("yes", 1, 0.0):  # a switch is True, False or None: anything else is named, before any launch
        with pytest.raises(ValueError, match="hopper_path must be True, False or None"):
            ta.flash_attention_backward(do, q, k, v, out, lse, None, True, None, None, hopper_path=bad)
        with pytest.raises(ValueError, match="hopper_path must be True, False or None"):
            ta.flash_attention_forward(q, k, v, None, True, None, None, hopper_path=bad)
    assert calls == []


def test_with_fused_delta_the_dq_kernel_computes_delta_and_runs_before_dk_dv(monkeypatch):
    """FUSED_DELTA_BACKWARD: where the Gluon dQ kernel runs it is given the forward's O, runs first, and the dK/dV
    kernel then reads the delta it wrote — no delta kernel is launched; switched off, or where the teaching dQ kernel
    runs (a fixed dQ tile), the delta kernel is launched first as before. (The kernels pretended, as above.)"""
    from attention_lab.flash import triton_attention as ta

    seen, launched = [], []

    def fake_q(do, q, k, v, lse, delta, causal, scale, out=None):
        seen.append(("q", out))
        if out is not None:
            delta.copy_((do * out).sum(-1))  # what the kernel's prologue computes
        return torch.full_like(q, 5.0)

    def fake_kv(do, q, k, v, lse, delta, causal, scale, kv_splits=1):
        seen.append(("kv", delta.clone()))
        return torch.full_like(k, 7.0), torch.full_like(v, 7.0)

    real_launch = ta._launch

    def recording_launch(tuned, kernel, *args):
        launched.append(kernel)
        return real_launch(tuned, kernel, *args)

    monkeypatch.setattr(gb, "unsupported_reason", lambda *args: None)
    monkeypatch.setattr(gb, "flash_attention_backward_kv_hopper", fake_kv)
    monkeypatch.setattr(gb, "flash_attention_backward_q_hopper", fake_q)
    monkeypatch.setattr(ta, "_launch", recording_launch)
    do, q, k, v, _, _ = problem(b=1, h=4, hkv=2, nq=20, nk=24, d=16, dtype=torch.float32)
    out, lse = ta.flash_attention_forward(q, k, v, None, True, None, None)
    want_delta = (do * out).sum(-1)
    for fused in (True, False):
        monkeypatch.setattr(ta, "FUSED_DELTA_BACKWARD", fused)
        seen.clear(), launched.clear()
        ta.flash_attention_backward(do, q, k, v, out, lse, None, True, None, None)
        assert [name for name, _ in seen] == ["q", "kv"]
        assert (seen[0][1] is out) == fused and (ta._attn_bwd_delta in launched) == (not fused)
        torch.testing.assert_close(seen[1][1], want_delta, atol=1e-5, rtol=1e-5)  # dK/dV reads the finished delta
    seen.clear(), launched.clear()
    monkeypatch.setattr(ta, "FUSED_DELTA_BACKWARD", True)
    ta.flash_attention_backward(do, q, k, v, out, lse, None, True, None, None, tile_q={"BLOCK_M": 16, "BLOCK_N": 16})
    assert [name for name, _ in seen] == ["kv"] and launched[0] is ta._attn_bwd_delta  # the teaching dQ: delta first
    torch.testing.assert_close(seen[0][1], want_delta, atol=1e-5, rtol=1e-5)


def test_the_dq_launcher_refuses_an_out_unlike_q(monkeypatch):
    monkeypatch.setattr(gb, "unsupported_reason", lambda *args: None)
    do, q, k, v, lse, delta = problem(h=4, hkv=2)
    for bad in (q[:, :, :-1], q.half(), torch.randn(1, 4, 33, 256).to(torch.bfloat16)[..., ::2], "O"):
        with pytest.raises(ValueError, match="dQ kernel cannot run these inputs: out must"):
            gb.flash_attention_backward_q_hopper(do, q, k, v, lse, delta, True, 0.1, out=bad)


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
def test_dk_dv_dq_equal_float64_autograd_as_closely_as_the_teaching_backward(case):
    from attention_lab.flash import triton_attention as ta

    case = dict(case)
    causal = case.pop("causal")
    do, q, k, v, _, _ = problem(device="cuda", **case)
    scale = q.shape[-1] ** -0.5
    out, lse = ta.flash_attention_forward(q, k, v, None, causal, None, scale)
    delta = (do.float() * out.float()).sum(-1)  # (B, H, Nq): rowsum(dO ∘ O)
    dk, dv = gb.flash_attention_backward_kv_hopper(do, q, k, v, lse, delta, causal, scale)
    dq = gb.flash_attention_backward_q_hopper(do, q, k, v, lse, delta, causal, scale)
    dq_teaching, dk_teaching, dv_teaching = ta.flash_attention_backward(do, q, k, v, out, lse, None, causal, None,
                                                                        scale, hopper_path=False)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    attention_fp64(q64, k64, v64, causal=causal, scale=scale).backward(do.double())
    assert dk.shape == k.shape and dv.shape == v.shape and dq.shape == q.shape and dq.dtype == q.dtype
    results = [("dk", dk, dk_teaching, k64.grad), ("dv", dv, dv_teaching, v64.grad), ("dq", dq, dq_teaching, q64.grad)]
    fused_delta = torch.full_like(delta, float("nan"))  # the dQ kernel computes delta itself from O (FUSED_DELTA)
    dq_fused = gb.flash_attention_backward_q_hopper(do, q, k, v, lse, fused_delta, causal, scale, out=out)
    torch.testing.assert_close(fused_delta, delta, atol=1e-3, rtol=1e-3)
    results.append(("dq, delta fused", dq_fused, dq_teaching, q64.grad))
    group = q.shape[1] // k.shape[1]
    for splits in sorted({2, 3, group} - {1} if group > 1 else set()):  # the query-head split: fp32 partial sums
        if splits <= group:
            dk_split, dv_split = gb.flash_attention_backward_kv_hopper(do, q, k, v, lse, delta, causal, scale,
                                                                       kv_splits=splits)
            results += [(f"dk/{splits}", dk_split, dk_teaching, k64.grad), (f"dv/{splits}", dv_split, dv_teaching,
                                                                             v64.grad)]
    for name, got, teaching, want in results:
        assert got.shape == want.shape and got.dtype == q.dtype, name
        error = (got.double() - want).abs().max().item()
        teaching_error = (teaching.double() - want).abs().max().item()
        assert error <= 2 * teaching_error + 1e-3, (name, error, teaching_error)


@pytest.mark.gpu
@pytest.mark.skipif(not _on_hopper(), reason="needs an sm_90 GPU and Gluon")
@pytest.mark.parametrize("fused_delta", [False, True])
def test_the_library_backward_on_hopper_is_the_gluon_kernels_and_equals_float64(fused_delta, monkeypatch):
    """Through flash_attention (autograd), on a shape where both Gluon kernels apply, and on MQA at batch 1 (where
    kv_splits_for splits the group's query heads over several Gluon dK/dV programs), D=128 causal; and at D=64 with
    1k keys not causal, where the Gluon dK/dV kernel (128 query rows per step) runs beside the teaching dQ kernel."""
    from attention_lab.flash import triton_attention as ta

    monkeypatch.setattr(ta, "FUSED_DELTA_BACKWARD", fused_delta)  # delta from its own kernel, or the dQ kernel's
    for case, causal, gluon_dq in ((dict(b=2, h=4, hkv=2, nq=333, nk=333, d=128), True, True),
                                   (dict(b=1, h=16, hkv=1, nq=1000, nk=1000, d=128), True, True),
                                   (dict(b=2, h=8, hkv=2, nq=1000, nk=1000, d=64), False, False)):
        do, q, k, v, lse, delta = problem(device="cuda", **case)
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        ta.flash_attention(q, k, v, causal=causal).backward(do)
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        attention_fp64(q64, k64, v64, causal=causal).backward(do.double())
        assert ta.uses_gluon_dq(do, q, k, v, lse, delta, None, causal, None, None, False, None) == gluon_dq
        assert ta.uses_gluon_backward(do, q, k, v, lse, delta, None, causal, None, None, False, None)
        for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
            assert (got.double() - want).abs().max().item() < 0.05 * want.abs().max().item() + 1e-2
