"""Multi-head Latent Attention: the paper's equations in float64, absorbed == naive, cached == uncached,
cache sizes from the real tensors, errors, and the chapter-12 exercise checker."""

import math

import pytest
import torch

from attention_lab import TinyGPT, TinyGPTConfig
from attention_lab.exercises import ExerciseError
from attention_lab.exercises.ch12 import check_absorbed_query
from attention_lab.generate import generate
from attention_lab.caches.contiguous import KVCache
from attention_lab.mla import LatentCache, MLASettings, MultiHeadLatentAttention, absorb_query, expand_values, set_mode
from attention_lab.rope import apply_rope
from reference import TOLERANCES, attention_fp64, tolerance


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# (d_model, n_heads, kv_latent_dim, rope_dim, head_dim, q_latent_dim): odd sizes, with and without
# query compression, without a rotary part, and head_dim != d_model / n_heads.
CONFIGS = [
    (32, 4, 24, 4, None, None),
    (30, 3, 20, 6, 12, 14),
    (16, 1, 9, 0, None, 7),
    (40, 5, 33, 2, 6, None),
]


def make_mla(config, seed=0, dtype=torch.float64, **kwargs) -> MultiHeadLatentAttention:
    d_model, n_heads, kv_latent_dim, rope_dim, head_dim, q_latent_dim = config
    torch.manual_seed(seed)
    layer = MultiHeadLatentAttention(d_model, n_heads, kv_latent_dim, rope_dim, head_dim=head_dim,
                                     q_latent_dim=q_latent_dim, **kwargs)
    for name, param in layer.named_parameters():  # larger than default init, so that softmax is not flat
        if "norm" not in name:
            torch.nn.init.normal_(param, std=0.5 / math.sqrt(param.shape[-1]) * 2)
    return layer.to(dtype).eval()


def paper_equations_fp64(layer: MultiHeadLatentAttention, x: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V2 eqs. (9)-(19) written out head by head in float64, using only the layer's weights."""
    x = x.double()
    batch, seq, _ = x.shape
    n_heads, head_dim, rope_dim = layer.n_heads, layer.head_dim, layer.rope_dim
    positions = torch.arange(seq)

    def rms(t, norm):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()

    w = {name: p.double() for name, p in layer.named_parameters()}
    c_q = x if layer.q_down is None else rms(x @ w["q_down.weight"].T, layer.q_norm)
    c_kv = rms(x @ w["kv_down.weight"].T, layer.kv_norm)  # (B, T, d_c)
    k_rope = apply_rope(x @ w["k_rope.weight"].T, positions)  # (B, T, d_R): one shared by all heads
    heads = []
    for i in range(n_heads):
        rows = slice(i * head_dim, (i + 1) * head_dim)
        q_c = c_q @ w["q_up.weight"][rows].T  # (B, T, d_h)
        q_r = apply_rope(c_q @ w["q_rope.weight"][i * rope_dim:(i + 1) * rope_dim].T, positions)  # (B, T, d_R)
        k_c = c_kv @ w["k_up.weight"][rows].T
        v_c = c_kv @ w["v_up.weight"][rows].T
        q = torch.cat([q_c, q_r], -1)[:, None]  # (B, 1, T, d_h + d_R)
        k = torch.cat([k_c, k_rope], -1)[:, None]
        heads.append(attention_fp64(q, k, v_c[:, None], causal=True, scale=(head_dim + rope_dim) ** -0.5)[:, 0])
    return torch.cat(heads, -1) @ w["out_proj.weight"].T  # (B, T, d_model)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("seq", [1, 7, 13])
def test_both_paths_equal_the_paper_equations_in_float64(config, seq):
    layer = make_mla(config, seed=seq)
    x = torch.randn(2, seq, config[0], dtype=torch.float64)
    expected = paper_equations_fp64(layer, x)
    for mode in ("naive", "absorbed"):
        layer.mode = mode
        torch.testing.assert_close(layer(x), expected, **tolerance("fp64_paths"))


@pytest.mark.parametrize("config", CONFIGS)
def test_absorbed_equals_naive_fp32_tight(config):
    layer = make_mla(config, dtype=torch.float32)
    x = torch.randn(3, 11, config[0])
    naive = layer(x)
    layer.mode = "absorbed"
    torch.testing.assert_close(layer(x), naive, **dict(zip(("atol", "rtol"), TOLERANCES[torch.float32])))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_absorbed_and_naive_in_half_precision_stay_close_to_float64(dtype):
    layer64 = make_mla(CONFIGS[1])
    x = torch.randn(2, 9, CONFIGS[1][0], dtype=torch.float64)
    expected = layer64(x)
    half = make_mla(CONFIGS[1], dtype=dtype)
    errors = {}
    for mode in ("naive", "absorbed"):
        half.mode = mode
        out = half(x.to(dtype))
        assert out.dtype == dtype
        errors[mode] = ((out.double() - expected).norm() / expected.norm()).item()
    assert max(errors.values()) < (2e-2 if dtype == torch.bfloat16 else 4e-3), errors


@pytest.mark.parametrize("mode", ["naive", "absorbed"])
def test_chunked_prefill_with_the_cache_equals_one_pass(mode):
    layer = make_mla(CONFIGS[0], mode=mode)
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    cache = layer.make_cache(2, 16, "cpu", torch.float64)
    chunks = [layer(part, cache=cache) for part in (x[:, :5], x[:, 5:6], x[:, 6:12])]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(chunks, 1), layer(x), **tolerance("fp64_paths"))


def test_future_tokens_do_not_change_past_outputs_when_absorbed():
    layer = make_mla(CONFIGS[3], mode="absorbed")
    x = torch.randn(1, 10, 40, dtype=torch.float64)
    changed = x.clone()
    changed[:, 6:] = torch.randn(1, 4, 40, dtype=torch.float64)
    torch.testing.assert_close(layer(x)[:, :6], layer(changed)[:, :6])


def test_gradients_agree_between_the_paths():
    layer = make_mla(CONFIGS[1])
    x = torch.randn(2, 6, 30, dtype=torch.float64)
    grads = {}
    for mode in ("naive", "absorbed"):
        layer.mode = mode
        layer.zero_grad()
        layer(x).square().sum().backward()
        grads[mode] = {n: p.grad.clone() for n, p in layer.named_parameters()}
    for name, grad in grads["naive"].items():
        torch.testing.assert_close(grads["absorbed"][name], grad, **tolerance("fp64_rotations"))


def tiny_mla_gpt(**settings) -> TinyGPT:
    torch.manual_seed(0)
    config = TinyGPTConfig(vocab_size=29, context_length=40, d_model=32, n_layers=2, n_heads=4, attention="mla",
                           settings=MLASettings(**{"kv_latent_dim": 20, "rope_dim": 4, **settings}))
    return TinyGPT(config).eval()


def test_mla_settings_reach_every_layer():
    settings = MLASettings(kv_latent_dim=20, q_latent_dim=12, rope_dim=6, rope_base=500.0, mode="absorbed")
    model = TinyGPT(TinyGPTConfig(vocab_size=9, d_model=32, n_heads=4, attention="mla", settings=settings))
    for block in model.blocks:
        layer = block.attn
        assert isinstance(layer, MultiHeadLatentAttention)
        assert (layer.kv_latent_dim, layer.q_latent_dim, layer.rope_dim, layer.mode) == (20, 12, 6, "absorbed")
        assert layer.rotary.base == 500.0
    # Unset sizes follow DeepSeek-V2's ratios to d_h = 32 / 4 = 8: d_c = 4·d_h, d_h^R = d_h / 2.
    layer = TinyGPT(TinyGPTConfig(vocab_size=9, d_model=32, n_heads=4, attention="mla")).blocks[0].attn
    assert (layer.kv_latent_dim, layer.q_latent_dim, layer.rope_dim, layer.mode) == (32, None, 4, "naive")


@pytest.mark.parametrize("settings", [{}, {"q_latent_dim": 12}])
def test_cached_generation_equals_uncached_in_both_modes(settings):
    model = tiny_mla_gpt(**settings)
    for prompt_len, new in [(1, 20), (9, 25)]:
        prompt = torch.randint(0, 29, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
        set_mode(model, "naive")
        reference, reference_logits = generate(model, prompt, new, use_cache=False, return_logits=True)
        for mode in ("naive", "absorbed"):
            set_mode(model, mode)
            cached, cached_logits = generate(model, prompt, new, use_cache=True, return_logits=True)
            assert torch.equal(cached, reference), mode
            torch.testing.assert_close(cached_logits, reference_logits, **tolerance("fp32_paths"))


def test_cache_bytes_equal_the_formula():
    """Bytes of the real cache tensors: MLA L·B·N·(d_c + d_R)·bytes; MHA/GQA/MQA 2·L·B·N·n_kv·d_h·bytes."""
    model = tiny_mla_gpt(q_latent_dim=12)
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        cache = model.new_cache(batch_size=3, max_len=17)
        assert all(isinstance(layer, LatentCache) for layer in cache.layers)
        assert cache.nbytes == 2 * 3 * 17 * (20 + 4) * torch.tensor([], dtype=dtype).element_size()
        assert cache.layers[0].numbers_per_token == model.blocks[0].attn.cache_numbers_per_token == 24
    n_heads, head_dim = 128, 128  # DeepSeek-V2's attention: per token per layer, in numbers
    mla = LatentCache(1, 1, 4 * head_dim, head_dim // 2)
    assert mla.nbytes // mla.rows.element_size() == 576 == 4.5 * head_dim
    for n_kv_heads in (n_heads, 8, 1):
        kv = KVCache(1, 1, n_kv_heads, head_dim)
        assert kv.nbytes // kv.keys.element_size() == 2 * n_kv_heads * head_dim
    assert 576 / (2 * head_dim) == 2.25  # MLA caches as much as GQA with 2.25 groups


def test_absorbed_helpers_follow_their_definitions():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)  # (B, H, T, D)
    w_uk = torch.randn(15, 7, generator=g, dtype=torch.float64)  # (H·D, d_c)
    latent = torch.randn(7, generator=g, dtype=torch.float64)
    keys = (w_uk @ latent).view(3, 5)  # (H, D): W^UK_i c
    torch.testing.assert_close(absorb_query(q, w_uk) @ latent, (q * keys[None, :, None]).sum(-1))
    context = torch.randn(2, 3, 4, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(expand_values(context, w_uk), torch.einsum("bhtc,hdc->bhtd", context, w_uk.view(3, 5, 7)))


@pytest.mark.parametrize("call,message", [
    (lambda: MultiHeadLatentAttention(32, 4, 16, rope_dim=5), "rope_dim must be even"),
    (lambda: MultiHeadLatentAttention(30, 4, 16, rope_dim=4), "n_heads=4 must divide d_model=30"),
    (lambda: MultiHeadLatentAttention(32, 4, 0, rope_dim=4), "kv_latent_dim must be an integer >= 1"),
    (lambda: MultiHeadLatentAttention(32, 4, 16, rope_dim=4, q_latent_dim=0), "q_latent_dim must be"),
    (lambda: MultiHeadLatentAttention(32, 4, 16, rope_dim=4, mode="fast"), "mode must be one of"),
    (lambda: MultiHeadLatentAttention(32, 4, 16, rope_dim=4, backend="nope"), "backend must be one of"),
    (lambda: MultiHeadLatentAttention(32, 4, 16, 4)(torch.randn(1, 3, 30)), r"d_model=32"),
    (lambda: MultiHeadLatentAttention(32, 4, 16, 4)(torch.randn(3, 32)), "x must have shape"),
    (lambda: MultiHeadLatentAttention(32, 4, 16, 4)(torch.randn(1, 3, 32), positions=torch.arange(4)),
     r"positions must have shape \(T,\) = \(3,\)"),
    (lambda: MultiHeadLatentAttention(32, 4, 16, 4)(torch.randn(1, 3, 32), cache=LatentCache(1, 8, 24, 4)),
     r"latent must have shape \(batch_size=1, T=3, 24\)"),
    (lambda: MultiHeadLatentAttention(32, 4, 16, 4)(torch.randn(1, 3, 32), cache=LatentCache(1, 8, 16, 2)),
     r"rope_key must have shape"),
    (lambda: MultiHeadLatentAttention(32, 4, 16, 4)(torch.randn(2, 3, 32), cache=LatentCache(1, 8, 16, 4)),
     r"batch_size=1"),
    (lambda: MultiHeadLatentAttention(32, 4, 16, 4)(torch.randn(1, 9, 32), cache=LatentCache(1, 8, 16, 4)),
     "KV cache is full"),
    (lambda: MultiHeadLatentAttention(32, 4, 16, 4)(torch.randn(1, 3, 32), cache=KVCache(1, 8, 4, 8)),
     "cache must be a LatentCache"),
    (lambda: absorb_query(torch.randn(1, 2, 3, 4), torch.randn(9, 5)), r"w_uk must have shape \(n_heads·head_dim, latent_dim\) = \(8, d_c\)"),
    (lambda: expand_values(torch.randn(1, 2, 3, 5), torch.randn(8, 6)), r"w_uv must have shape"),
    (lambda: LatentCache(1, 4, 16, 3), "rope_dim must be even"),
    (lambda: TinyGPTConfig(vocab_size=9, attention="mla", settings={"kv_rank": 3}),
     r"unknown MLASettings setting\(s\) \['kv_rank'\]; the known ones are \['kv_latent_dim', 'q_latent_dim'"),
    (lambda: TinyGPTConfig(vocab_size=9, attention="mla", settings={"rope": True}),
     r"unknown MLASettings setting\(s\) \['rope'\]"),
    (lambda: MLASettings(rope_dim=3), "rope_dim must be even"),
    (lambda: MLASettings(mode="fast"), "mode must be one of"),
    (lambda: MLASettings(kv_latent_dim=0), "kv_latent_dim must be an integer >= 1"),
    (lambda: TinyGPT(TinyGPTConfig(vocab_size=9, n_kv_heads=2, attention="mla")), "leave n_kv_heads and window"),
])
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- the chapter-12 exercise checker -------------------------------------------------------------

def solution(q_content, w_uk):
    n_heads, head_dim = q_content.shape[1], q_content.shape[3]
    w = w_uk.view(n_heads, head_dim, -1)  # (H, D, d_c)
    return torch.einsum("bhtd,hdc->bhtc", q_content, w)


def stub(q_content, w_uk):
    raise NotImplementedError("exercise: write this part")


def untransposed(q_content, w_uk):  # W^UK_i q instead of W^UK_iᵀ q: right shape only when D == d_c
    n_heads, head_dim = q_content.shape[1], q_content.shape[3]
    return q_content @ w_uk.view(n_heads, head_dim, -1).transpose(-1, -2)


def heads_interleaved(q_content, w_uk):  # splits the H·D rows as (D, H) instead of (H, D)
    n_heads, head_dim = q_content.shape[1], q_content.shape[3]
    return torch.einsum("bhtd,hdc->bhtc", q_content, w_uk.view(head_dim, n_heads, -1).transpose(0, 1))


def with_softmax_scale(q_content, w_uk):  # the 1/√d scale belongs to the score, not to this product
    return solution(q_content, w_uk) * q_content.shape[-1] ** -0.5


def one_matrix_for_all_heads(q_content, w_uk):  # ignores the head split altogether
    batch, n_heads, seq, head_dim = q_content.shape
    return (q_content.transpose(1, 2).reshape(batch, seq, n_heads * head_dim) @ w_uk).unsqueeze(1)


def test_checker_accepts_the_solution(capsys):
    assert check_absorbed_query(solution)
    assert "absorbed query: all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [stub, untransposed, heads_interleaved, with_softmax_scale, one_matrix_for_all_heads])
def test_checker_rejects_wrong_answers(wrong):
    with pytest.raises(ExerciseError, match="absorbed query"):
        check_absorbed_query(wrong)


def test_checker_rejects_the_untransposed_version_on_a_square_weight():
    with pytest.raises(ExerciseError, match="values differ"):
        check_absorbed_query(untransposed)


# --- the Triton latent-decode kernel (runs under TRITON_INTERPRET=1 without a GPU) -----------------

def _latent_reference(q, rows, latent_dim, scale):
    """softmax(q rowsᵀ · scale) rows[..., :d_c] in float64: q (B, H, C), rows (B, N, C) -> (B, H, d_c)."""
    weights = torch.softmax(q.double() @ rows.double().transpose(1, 2) * scale, dim=-1)  # (B, H, N)
    return weights @ rows.double()[..., :latent_dim]


@pytest.mark.parametrize("n_heads,latent_dim,rope_dim,n_keys,partition", [
    (5, 24, 6, 77, 32), (4, 32, 0, 20, None), (17, 16, 8, 130, 64), (1, 48, 16, 1, None)])
def test_latent_decode_kernel_matches_float64(n_heads, latent_dim, rope_dim, n_keys, partition):
    from attention_lab.kernels.latent_decode import latent_decode

    g = torch.Generator().manual_seed(n_keys)
    q = torch.randn(2, n_heads, latent_dim + rope_dim, generator=g)
    rows = torch.randn(2, n_keys + 3, latent_dim + rope_dim, generator=g)[:, :n_keys]  # a prefix view, like a cache
    expected = _latent_reference(q, rows, latent_dim, 0.3)
    torch.testing.assert_close(latent_decode(q, rows, latent_dim, 0.3, partition_size=partition).double(), expected,
                               **tolerance(torch.float32))
    half = latent_decode(q.half(), rows.half(), latent_dim, 0.3, partition_size=partition)  # (bf16 needs a GPU)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.double(), expected, **tolerance("interpreter_kernel_16bit"))


@pytest.mark.parametrize("block_h,keys_first", [(64, True), (16, True), (64, False)])
def test_latent_decode_tiles_of_every_layout_match_float64(block_h, keys_first):
    """Hopper's tile (64 heads, scores computed keys-first so the queries stay in shared memory) and its
    variants compute the same function: fewer heads than the block, a partial last tile, 3 partitions."""
    from attention_lab.kernels.latent_decode import LatentDecodeConfig, latent_decode

    g = torch.Generator().manual_seed(block_h)
    q = torch.randn(2, 20, 40, generator=g)
    rows = torch.randn(2, 70, 40, generator=g)
    expected = _latent_reference(q, rows, 32, 0.3)
    config = LatentDecodeConfig(block_h=block_h, tile_n=32, num_warps=8, num_stages=2, keys_first=keys_first)
    for partition in (32, None):
        out = latent_decode(q, rows, 32, 0.3, partition_size=partition, config=config)
        torch.testing.assert_close(out.double(), expected, **tolerance(torch.float32))


@pytest.mark.gpu
def test_latent_decode_on_gpu_matches_float64_with_every_tile():
    """DeepSeek-V2's sizes in bf16 and fp16: the device's own tile (sm_90: 64 heads, 8 warps, keys first) and the
    16-head tile give the float64 answer, one partition or many."""
    from attention_lab.kernels.latent_decode import LatentDecodeConfig, latent_decode

    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16):
        q = torch.randn(2, 128, 576, device="cuda", generator=g).to(dtype) * 0.1
        rows = torch.randn(2, 3001, 576, device="cuda", generator=g).to(dtype)
        expected = _latent_reference(q, rows, 512, 576 ** -0.5)
        for config in (None, LatentDecodeConfig(16, 32, 4, 2)):
            for partition in (None, 256, 3008):
                out = latent_decode(q, rows, 512, 576 ** -0.5, partition_size=partition, config=config)
                torch.testing.assert_close(out.double(), expected, **tolerance(dtype))


def test_latent_decode_of_an_empty_cache_gives_zeros():
    """No cached row: every head sees no key, so zeros (DESIGN.md §3), not an error about partition_size."""
    from attention_lab.kernels.latent_decode import latent_decode

    out = latent_decode(torch.randn(2, 3, 10), torch.randn(2, 0, 10), 8, 0.3)
    assert out.shape == (2, 3, 8) and out.abs().max() == 0


def test_triton_decode_step_equals_the_absorbed_path():
    layer = make_mla(CONFIGS[1], dtype=torch.float32, mode="absorbed")
    x = torch.randn(2, 9, 30)
    cache = layer.make_cache(2, 9, "cpu", torch.float32)
    with torch.no_grad():
        expected = layer(x, cache=cache)[:, -1:]
        cache.length = 8
        layer.triton_decode = True
        torch.testing.assert_close(layer(x[:, -1:], cache=cache), expected, **tolerance(torch.float32))


@pytest.mark.parametrize("call,message", [
    (lambda k: k(torch.randn(2, 3, 10), torch.randn(1, 5, 10), 8, 0.3), r"rows must have shape \(B=2, N, 10\)"),
    (lambda k: k(torch.randn(2, 3, 10), torch.randn(2, 5, 10), 11, 0.3), "latent_dim"),
    (lambda k: k(torch.randn(2, 3, 10), torch.randn(2, 5, 10).half(), 8, 0.3), "share one dtype"),
    (lambda k: k(torch.randn(2, 3, 10), torch.randn(2, 5, 10), 8, 0.3, partition_size=5), "multiple of tile_n"),
    (lambda k: k(torch.randn(3, 10), torch.randn(2, 5, 10), 8, 0.3), "q must have shape"),
    # issue #18, item 15: B=0 or H=0 were a ZeroDivisionError; N=0 a message about a partition_size nobody passed
    (lambda k: k(torch.randn(0, 3, 10), torch.randn(0, 5, 10), 8, 0.3), r"batch >= 1 and n_heads >= 1, got \(0, 3, 10\)"),
    (lambda k: k(torch.randn(2, 0, 10), torch.randn(2, 5, 10), 8, 0.3), r"batch >= 1 and n_heads >= 1, got \(2, 0, 10\)"),
    (lambda k: k(torch.randn(2, 3, 10).int(), torch.randn(2, 5, 10).int(), 8, 0.3), "q must be a floating-point"),
    (lambda k: k(torch.randn(2, 3, 10), torch.randn(2, 5, 10), 8.0, 0.3), "latent_dim an integer"),
    (lambda k: k(torch.randn(2, 3, 10), torch.randn(2, 5, 10), 8, None), "scale must be a finite real number > 0"),
    (lambda k: k(torch.randn(2, 3, 10), torch.randn(2, 5, 10), 8, float("nan")), "scale must be"),
    (lambda k: k(torch.randn(2, 3, 10), torch.randn(2, 5, 10), 8, 0.3, partition_size=True), "partition_size"),
    # issue #18, item 7: the interpreter computes bf16 dots wrongly (~1e9): refused, fp32/fp16 suggested
    (lambda k: k(torch.randn(2, 3, 10).bfloat16(), torch.randn(2, 5, 10).bfloat16(), 8, 0.3),
     "bfloat16.*interpreter.*triton-lang/triton#11584.*float32.*float16"),
])
def test_latent_decode_errors(call, message):
    from attention_lab.kernels.latent_decode import latent_decode

    with pytest.raises(ValueError, match=message):
        call(latent_decode)


def test_latent_kernel_compiles_and_fits_every_architecture():
    """DeepSeek-V2's sizes (d_c=512, d_R=64), fp16, with each architecture's config, through the one compile
    check of every kernel family: shared memory within the limit on sm_80/89/90; sm_75 is refused, not compiled."""
    pytest.importorskip("triton")
    from attention_lab.kernels.compile_check import CAPABILITIES, check_in_subprocess

    rows = check_in_subprocess(families=("latent",), capabilities=CAPABILITIES, timeout=600)
    compiled = [r for r in rows if r["skipped"] is None]
    assert sorted({r["capability"] for r in compiled}) == [80, 89, 90]
    assert {r["kernel"] for r in compiled} == {"latent", "merge"}
    for row in compiled:
        assert 0 < row["shared"] <= row["limit"], row
    (t4,) = [r for r in rows if r["capability"] == 75]
    assert "needs compute capability 8.0 or newer" in t4["skipped"]


def test_latent_kernel_refuses_a_t4_in_one_sentence():
    from attention_lab.kernels.latent_decode import latent_decode_config

    with pytest.raises(ValueError, match="needs compute capability 8.0 or newer"):
        latent_decode_config(75)
