"""The Gluon forward for Hopper (attention_lab/flash/gluon_attention.py), issue #19.

On the CPU: which inputs it takes (every refusal names its reason), and that both kernels (single-partition
pipelined, and warp-specialised: the default) compile for sm_90 with Triton's own compiler — shared memory within
the limit, not one byte spilled (``ptxas -v``). On an H100/H200
(``-m gpu``): its output equals float64 attention as closely as the teaching kernel's, its log-sum-exp is the
teaching kernel's (so chapter 10's backward takes it), on odd shapes, GQA, causal with Nq != Nk and strided views.
"""

import pytest
import torch

from attention_lab.flash import gluon_attention as ga
from reference import attention_fp64

needs_gluon = pytest.mark.skipif(not ga.GLUON_AVAILABLE, reason="needs Triton with Gluon")


def qkv(b=1, h=4, hkv=2, nq=33, nk=47, d=128, dtype=torch.bfloat16, layout="bhnd", device="cpu", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)

    def make(heads, n):
        if layout == "bnhd":  # a (B, N, H, D) tensor viewed as (B, H, N, D): strides (N·H·D, D, H·D, 1)
            return torch.randn(b, n, heads, d, generator=g, device=device).to(dtype).transpose(1, 2)
        return torch.randn(b, heads, n, d, generator=g, device=device).to(dtype)
    return make(h, nq), make(hkv, nk), make(hkv, nk)


def test_it_takes_what_it_was_written_for_and_names_every_refusal():
    q, k, v = qkv()
    assert ga.input_reason(q, k, v, None, None) is None
    assert ga.input_reason(*qkv(layout="bnhd"), None, None) is None  # strided views: TMA reads them as they are
    assert ga.input_reason(*qkv(d=64, dtype=torch.float16), None, None) is None
    assert "mask or window" in ga.input_reason(q, k, v, torch.ones(33, 47, dtype=torch.bool), None)
    assert "mask or window" in ga.input_reason(q, k, v, None, 8)
    assert "fp16 or bf16" in ga.input_reason(*qkv(dtype=torch.float32), None, None)
    assert "head_dim in (64, 128)" in ga.input_reason(*qkv(d=96), None, None)
    q_odd = torch.randn(1, 4, 33, 256).to(torch.bfloat16)[..., ::2]  # stride 2 along head_dim
    assert "contiguous in head_dim" in ga.input_reason(q_odd, k, v, None, None)
    assert ga.unsupported_reason(q, k, v, None, None) in ("needs CUDA tensors", "needs Triton >= 3.5 with Gluon")


@needs_gluon
def test_compiles_for_sm90_within_shared_memory_and_without_spills():
    from attention_lab.kernels import compile_check

    rows = compile_check.check_in_subprocess(families=("gluon",), capabilities=(90,), spills=True)
    assert len(rows) == 4 * len(ga.HEAD_DIMS)  # each head dim, causal and not, warp-specialised and not
    for row in rows:
        assert row["fits"] and row["shared"] <= row["limit"], row
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row
        assert row["registers"] <= 255, row
    assert compile_check.compile_jobs("gluon", 80) == []  # never chosen off Hopper: nothing to compile there


def _on_hopper():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0) and ga.GLUON_AVAILABLE


@pytest.mark.gpu
@pytest.mark.skipif(not _on_hopper(), reason="needs an sm_90 GPU and Gluon")
@pytest.mark.parametrize("case", [
    dict(b=2, h=4, hkv=4, nq=1000, nk=1000, d=128, causal=False),
    dict(b=2, h=4, hkv=4, nq=1000, nk=1000, d=128, causal=True),
    dict(b=1, h=8, hkv=2, nq=300, nk=777, d=128, causal=True, dtype=torch.float16),
    dict(b=1, h=8, hkv=1, nq=777, nk=300, d=64, causal=True),  # the first 477 rows see no key
    dict(b=2, h=4, hkv=4, nq=513, nk=513, d=64, causal=False, layout="bnhd", dtype=torch.float16),
    dict(b=1, h=2, hkv=2, nq=64, nk=64, d=128, causal=True, layout="bnhd"),
])
@pytest.mark.parametrize("tile", [None, {"BLOCK_N": 128, "NUM_STAGES": 2}, {"BLOCK_N": 64, "NUM_STAGES": 4},
                                  {"BLOCK_N": 64, "NUM_STAGES": 3, "WARP_SPECIALIZE": True}])
def test_equals_float64_and_the_teaching_kernels_lse(case, tile):
    from attention_lab.flash import triton_attention as ta

    case = dict(case)
    causal = case.pop("causal")
    q, k, v = qkv(device="cuda", **case)
    out, lse = ga.flash_attention_forward_hopper(q, k, v, causal, q.shape[-1] ** -0.5, tile)
    want = attention_fp64(q, k, v, causal=causal)
    teaching, teaching_lse = ta.flash_attention_forward(q, k, v, None, causal, None, None, tile={"BLOCK_M": 64,
                                                                                                "BLOCK_N": 64})
    error = (out.double() - want).abs().max().item()
    teaching_error = (teaching.double() - want).abs().max().item()
    assert error <= 2 * teaching_error + 1e-3, (error, teaching_error)
    assert torch.equal(torch.isinf(lse), torch.isinf(teaching_lse))  # rows that see no key: +inf in both
    finite = torch.isfinite(teaching_lse)
    torch.testing.assert_close(lse[finite], teaching_lse[finite], atol=2e-3, rtol=0)
    if (~finite).any():
        assert torch.all(out[~finite] == 0)  # ... and give zeros


@needs_gluon
def test_flash_attention_chooses_it_first_on_hopper_and_the_switch_turns_it_off(monkeypatch):
    """Where it takes the inputs (here: pretended) and is the faster, flash_attention_forward runs the Gluon kernel and
    nothing else (at D=64 with at most 1k keys, measured slower, the teaching kernel);
    GLUON_FORWARD=False falls back to the next path; an explicit tile or hopper_path=False to the teaching kernel."""
    from attention_lab.flash import hopper
    from attention_lab.flash import triton_attention as ta

    calls = []

    def fake_gluon(q, k, v, causal, scale, tile=None):
        calls.append("gluon")
        return torch.zeros_like(q), torch.zeros(q.shape[:3])

    monkeypatch.setattr(ga, "unsupported_reason", lambda *args: None)
    monkeypatch.setattr(ga, "flash_attention_forward_hopper", fake_gluon)
    monkeypatch.setattr(hopper, "supports", lambda *args: False)  # the TMA path declines: the teaching kernel next
    q, k, v = qkv(dtype=torch.float32, d=64)
    out, _ = ta.flash_attention_forward(q, k, v, None, True, None, None)
    assert calls == [] and not torch.all(out == 0)  # D=64, 47 keys: measured slower than the teaching kernel
    assert not ga.faster_than_teaching(64, 1024) and ga.faster_than_teaching(64, 1025)
    assert ga.faster_than_teaching(128, 16)
    monkeypatch.setattr(ga, "faster_than_teaching", lambda head_dim, n_keys: True)
    out, lse = ta.flash_attention_forward(q, k, v, None, True, None, None)
    assert calls == ["gluon"] and torch.all(out == 0)
    ta.flash_attention_forward(q, k, v, None, True, None, None, tile={"BLOCK_M": 16, "BLOCK_N": 16})
    ta.flash_attention_forward(q, k, v, None, True, None, None, hopper_path=False)
    monkeypatch.setattr(ta, "GLUON_FORWARD", False)
    out, _ = ta.flash_attention_forward(q, k, v, None, True, None, None)
    assert calls == ["gluon"]  # an explicit tile, hopper_path=False and the switch: never the Gluon kernel
    torch.testing.assert_close(out.double(), attention_fp64(q, k, v, causal=True), atol=1e-4, rtol=1e-4)


def test_chapter_10s_claims_about_the_committed_step_run_hold():
    """Chapter 10, section 6, prints these statements about attention_lab/results/flash_hopper.json and its prose
    relies on them: each must hold in the committed file (and each can fail: a ratio below its bound flips it)."""
    import copy

    from attention_lab.book.results import load
    from attention_lab.flash import benchmark_report as br

    results = load("flash_hopper")
    claims = br.hopper_claims(results)
    assert len(claims) == 6 and all(claims.values()), claims

    def scaled(factor: float) -> dict:
        changed = copy.deepcopy(results)
        for row in changed["rows"]:
            if row["method"] == "gluon_ws" and row["tflops"]:
                row["tflops"] *= factor
        return br.hopper_claims(changed)

    slower = scaled(0.8)  # a fast path 20 % slower: behind cuDNN, behind (a+c) and behind Flex
    assert not slower["(e) is at least 0.95x cuDNN at D=128, N >= 4k"]
    assert not slower["(e) warp-specialised is the fastest of this book's kernels at every N >= 4k"]
    assert not slower["(e) is at least FlexAttention's speed wherever the library takes it"]
    faster = scaled(1.2)  # 20 % faster: then it would beat the teaching kernel at D=64 with 1k keys too
    assert not faster["at D=64 with 1k keys (e) is slower than the teaching kernel, which the library runs there"]
    without_short = copy.deepcopy(results)
    without_short["rows"] = [row for row in results["rows"] if not (row["head_dim"] == 64 and row["n"] <= 1024)]
    assert not br.hopper_claims(without_short)[
        "at D=64 with 1k keys (e) is slower than the teaching kernel, which the library runs there"]
