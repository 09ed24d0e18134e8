"""Issue #18, as a hostile user: every public entry point answers bad input with a ValueError naming the
argument (table-driven), and property tests over random inputs and random request traces check the
invariants — no block leaked, the engine/pool/cache unchanged after an error, served == generated for
every servable variant (MHA, GQA, MQA, with and without RoPE), the simulator == the engine."""

import math
import random

import numpy as np
import pytest
import torch

from attention_lab import MHASettings, TinyGPT, TinyGPTConfig
from attention_lab.attention import (MultiHeadAttention, attention_weights, check_scale,
                                     scaled_dot_product_attention, torch_attention)
from attention_lab.caches.contiguous import KVCache
from attention_lab.caches.fragmentation import TraceRequest, compare_allocators, make_trace, simulate
from attention_lab.caches.paged import PagedKVCache, blocks_needed, paged_attention_reference
from attention_lab.caches.serving import Request, ServingEngine, generate_paged
from attention_lab.flash.tiled import tiled_attention
from attention_lab.generate import generate, sample_next
from attention_lab.masks import causal_mask, sliding_window_mask
from attention_lab.mla import LatentCache, MLASettings, MultiHeadLatentAttention
from attention_lab.rope import RotaryEmbedding, apply_rope, rope_angles
from attention_lab.train import evaluate, train
from reference import TOLERANCES, attention_fp64, tolerance

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

VOCAB = 24


def _gpt(seed=0, **overrides) -> TinyGPT:
    torch.manual_seed(seed)
    config = dict(vocab_size=VOCAB, context_length=40, d_model=16, n_layers=2, n_heads=4)
    config.update(overrides)
    return TinyGPT(TinyGPTConfig(**config)).eval()


MODEL = _gpt()
MHA = MultiHeadAttention(16, 4, 2)
MLA = MultiHeadLatentAttention(16, 4, kv_latent_dim=8, rope_dim=4)


def _qkv(nq=4, nk=4, d=8, h=2, hkv=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, h, nq, d, generator=g), torch.randn(1, hkv, nk, d, generator=g),
            torch.randn(1, hkv, nk, d, generator=g))


def _pool(lengths=(5, 3), num_blocks=6, block_size=2, hkv=2, d=8, h=4):
    """A paged layer: q (B, H, 1, D), pools (num_blocks, block_size, Hkv, D), tables (B, max_blocks), lens (B,)."""
    cache = PagedKVCache(1, num_blocks, block_size, hkv, d)
    g = torch.Generator().manual_seed(1)
    seqs = [cache.add_sequence() for _ in lengths]
    for s, n in zip(seqs, lengths):
        slots = cache.append(s, n)
        cache.write(0, slots, torch.randn(n, hkv, d, generator=g), torch.randn(n, hkv, d, generator=g))
    tables, lens = cache.batch_tables(seqs)
    q = torch.randn(len(lengths), h, 1, d, generator=g)
    return q, cache.keys[0], cache.values[0], tables, lens


class _Data:
    """A stand-in for TokenDataset (owned elsewhere): batch(split, batch_size, generator, device)."""

    def batch(self, split, batch_size, generator=None, device="cpu"):
        x = torch.randint(0, VOCAB, (batch_size, 8), generator=generator)
        return x.to(device), x.roll(-1, 1).to(device)


def _paged_cache():
    cache = PagedKVCache(2, 4, 2, 1, 4)
    seq = cache.add_sequence()
    return cache, seq, cache.append(seq, 2)


def _with(tensor, index, value):
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


q, k, v = _qkv()
pq, pk, pv, pt, pl = _pool()
kv1 = torch.ones(2, 1, 4)
one = torch.tensor([[1, 2]])

# (case id, call, regex the ValueError must match: the argument's name and what was expected)
BAD_CALLS = [
    # ---- attention (items 11, 15)
    ("sdpa scale str", lambda: scaled_dot_product_attention(q, k, v, scale="0.1"), "scale must be a finite real number > 0"),
    ("sdpa scale nan", lambda: scaled_dot_product_attention(q, k, v, scale=math.nan), "scale must be"),
    ("torch scale 0 causal", lambda: torch_attention(q, k, v, causal=True, scale=0.0), "scale must be"),
    ("torch scale -inf", lambda: torch_attention(q, k, v, scale=-math.inf), "scale must be"),
    ("tiled scale bool", lambda: tiled_attention(q, k, v, scale=True), "scale must be"),
    ("weights scale neg", lambda: attention_weights(q, k, scale=-2.0), "scale must be"),
    ("check_scale inf", lambda: check_scale(math.inf, 8), "scale must be"),
    ("sdpa head_dim 0", lambda: scaled_dot_product_attention(*_qkv(d=0)), "head_dim >= 1"),
    ("tiled head_dim 0", lambda: tiled_attention(*_qkv(d=0)), "head_dim >= 1"),
    ("torch head_dim 0", lambda: torch_attention(*_qkv(d=0)), "head_dim >= 1"),
    ("sdpa int q", lambda: scaled_dot_product_attention(q.long(), k.long(), v.long()), "q must be a floating-point"),
    ("mask n_queries negative", lambda: causal_mask(-1, 3), "n_queries must be an integer >= 0"),
    ("window float", lambda: sliding_window_mask(4, 2.0), "window must be an integer >= 1"),
    ("MHA int x", lambda: MHA(torch.ones(1, 3, 16, dtype=torch.long)), "x must be a floating-point tensor"),
    ("MHA fp64 x", lambda: MHA(torch.ones(1, 3, 16, dtype=torch.float64)), "x must have the dtype of"),
    ("MHA latent cache", lambda: MHA(torch.ones(1, 1, 16), cache=LatentCache(1, 4, 8, 4)), "cache must be this layer's"),
    ("MHA head_dim 0", lambda: MultiHeadAttention(16, 4, head_dim=0), "head_dim must be an integer >= 1"),
    # ---- MLA (item 15)
    ("MLA int x", lambda: MLA(torch.ones(1, 3, 16, dtype=torch.long)), "x must be a floating-point tensor"),
    ("MLA fp64 x", lambda: MLA(torch.ones(1, 3, 16, dtype=torch.float64)), "x must have the dtype of"),
    ("MLA kv cache", lambda: MLA(torch.ones(1, 1, 16), cache=KVCache(1, 4, 2, 4)), "cache must be a LatentCache"),
    ("MLA head_dim 0", lambda: MultiHeadLatentAttention(16, 4, 8, 4, head_dim=0), "head_dim must be an integer >= 1"),
    ("MLASettings base 0", lambda: MLASettings(rope_base=0.0), "rope_base must be a finite real number > 1"),
    # ---- RoPE (item 15)
    ("apply_rope int x", lambda: apply_rope(torch.ones(3, 4, dtype=torch.long), torch.arange(3)), "x must be a floating-point"),
    ("apply_rope base 0", lambda: apply_rope(torch.ones(3, 4), torch.arange(3), base=0), "base must be a finite real number > 1"),
    ("apply_rope base -1", lambda: apply_rope(torch.ones(3, 4), torch.arange(3), base=-1.0), "base must be"),
    ("apply_rope base nan", lambda: apply_rope(torch.ones(3, 4), torch.arange(3), base=math.nan), "base must be"),
    ("apply_rope bool positions", lambda: apply_rope(torch.ones(3, 4), torch.ones(3, dtype=torch.bool)), "positions must hold"),
    ("rope_angles base str", lambda: rope_angles(torch.arange(3), 4, base="10000"), "base must be"),
    ("RotaryEmbedding base 0.5", lambda: RotaryEmbedding(4, base=0.5), "base must be"),
    ("MHASettings base -1", lambda: MHASettings(rope=True, rope_base=-1.0), "rope_base must be"),
    # ---- TinyGPT and generation (item 15)
    ("generate empty prompt", lambda: generate(MODEL, torch.zeros(1, 0, dtype=torch.long), 2), "at least one token"),
    ("generate id >= vocab", lambda: generate(MODEL, torch.tensor([[VOCAB]]), 2), r"idx \(token ids\) must hold values in \[0, 24\)"),
    ("generate id negative", lambda: generate(MODEL, torch.tensor([[-1]]), 2), r"idx \(token ids\) must hold values"),
    ("generate float ids", lambda: generate(MODEL, torch.tensor([[1.0]]), 2), "idx must be an integer tensor"),
    ("generate bool ids", lambda: generate(MODEL, torch.tensor([[True]]), 2), "idx must be an integer tensor"),
    ("generate temperature nan", lambda: generate(MODEL, one, 2, temperature=math.nan), "temperature must be a finite real number >= 0"),
    ("generate temperature str", lambda: generate(MODEL, one, 2, temperature="0.5"), "temperature must be"),
    ("generate temperature -1", lambda: generate(MODEL, one, 2, temperature=-1.0), "temperature must be"),
    ("generate temperature inf", lambda: generate(MODEL, one, 2, temperature=math.inf), "temperature must be"),
    ("generate top_k -3 greedy", lambda: generate(MODEL, one, 2, top_k=-3), "top_k must be an integer >= 1"),
    ("generate top_k 2.5", lambda: generate(MODEL, one, 2, temperature=1.0, top_k=2.5), "top_k must be"),
    ("generate max_new float", lambda: generate(MODEL, one, 2.0), "max_new_tokens must be an integer >= 0"),
    ("generate generator", lambda: generate(MODEL, one, 2, generator=0), "generator must be a torch.Generator"),
    ("sample_next all -inf", lambda: sample_next(torch.full((1, 5), -math.inf), 1.0), "at least one finite entry per row"),
    ("sample_next all -inf greedy", lambda: sample_next(torch.full((2, 5), -math.inf), 0.0), "at least one finite entry"),
    ("sample_next nan", lambda: sample_next(torch.tensor([[0.0, math.nan]]), 1.0), "logits must not hold NaN"),
    ("sample_next int logits", lambda: sample_next(torch.tensor([[1, 2]]), 1.0), "logits must be a floating-point"),
    ("forward targets >= vocab", lambda: MODEL(one, torch.tensor([[1, VOCAB]])), r"targets \(token ids\) must hold values"),
    ("forward targets -100", lambda: MODEL(one, torch.tensor([[1, -100]])), r"targets \(token ids\) must hold values"),
    ("forward targets float", lambda: MODEL(one, one.float()), "targets must be an integer tensor"),
    ("forward targets shape", lambda: MODEL(one, torch.tensor([1, 2])), r"targets must have shape \(batch, seq\)"),
    ("forward layer cache", lambda: MODEL(one, cache=KVCache(1, 4, 4, 4)), "cache must be a ModelCache of 2 layers"),
    ("config base 0", lambda: TinyGPTConfig(vocab_size=5, settings={"rope_base": 0.0}), "rope_base must be"),
    # ---- training (item 15)
    ("train warmup -1", lambda: train(MODEL, _Data(), 1, warmup=-1, progress=False), "warmup must be an integer >= 0"),
    ("train batch_size 0", lambda: train(MODEL, _Data(), 1, batch_size=0, progress=False), "batch_size must be an integer >= 1"),
    ("train lr 0", lambda: train(MODEL, _Data(), 1, lr=0.0, progress=False), "lr must be a finite real number > 0"),
    ("train lr nan", lambda: train(MODEL, _Data(), 1, lr=math.nan, progress=False), "lr must be"),
    ("evaluate batches 0", lambda: evaluate(MODEL, _Data(), batches=0), "batches must be an integer >= 1"),
    ("evaluate batch_size 0", lambda: evaluate(MODEL, _Data(), batch_size=0), "batch_size must be"),
    # ---- paged cache and paged attention (items 3, 15)
    ("write layer 5", lambda: (lambda c, s, sl: c.write(5, sl, kv1, kv1))(*_paged_cache()), r"layer must be an integer in \[0, 2\)"),
    ("write layer -1", lambda: (lambda c, s, sl: c.write(-1, sl, kv1, kv1))(*_paged_cache()), "layer must be"),
    ("write slot 100", lambda: (lambda c, s, sl: c.write(0, torch.tensor([100, 1]), kv1, kv1))(*_paged_cache()),
     r"slots \(pool rows\) must hold values in \[0, 8\)"),
    ("write slot -1", lambda: (lambda c, s, sl: c.write(0, torch.tensor([-1, 1]), kv1, kv1))(*_paged_cache()), "slots"),
    ("write float slots", lambda: (lambda c, s, sl: c.write(0, sl.float(), kv1, kv1))(*_paged_cache()), "slots must be an integer"),
    ("write int k", lambda: (lambda c, s, sl: c.write(0, sl, kv1.long(), kv1))(*_paged_cache()), "k must be a floating-point"),
    ("gather layer 2", lambda: (lambda c, s, sl: c.gather(2, s))(*_paged_cache()), "layer must be"),
    ("paged table -1", lambda: paged_attention_reference(pq, pk, pv, _with(pt, (0, 1), -1), pl), "block_tables entries must be block ids"),
    ("paged table = num_blocks", lambda: paged_attention_reference(pq, pk, pv, _with(pt, (1, 0), 6), pl), r"num_blocks=6"),
    ("paged table 10**6", lambda: paged_attention_reference(pq, pk, pv, _with(pt, (0, 0), 10**6), pl), "block_tables entries"),
    ("paged bool tables", lambda: paged_attention_reference(pq, pk, pv, pt.bool(), pl), "block_tables must be an integer tensor"),
    ("paged float lens", lambda: paged_attention_reference(pq, pk, pv, pt, pl.float()), "context_lens must be an integer tensor"),
    ("paged bool lens", lambda: paged_attention_reference(pq, pk, pv, pt, pl.bool()), "context_lens must be an integer tensor"),
    ("paged lens too long", lambda: paged_attention_reference(pq, pk, pv, pt, pl + 10), "context_lens must lie in"),
    ("paged batch 0", lambda: paged_attention_reference(pq[:0], pk, pv, pt[:0], pl[:0]), "B, H, D >= 1"),
    ("paged int q", lambda: paged_attention_reference(pq.long(), pk.long(), pv.long(), pt, pl), "q must be a floating-point"),
    ("paged scale 0", lambda: paged_attention_reference(pq, pk, pv, pt, pl, scale=0.0), "scale must be"),
    # ---- serving (items 4, 8)
    ("generate_paged lengths", lambda: generate_paged(MODEL, [[1, 2], [3]], [2], 8, 4), "one per prompt"),
    ("generate_paged prompts", lambda: generate_paged(MODEL, [1, 2], 2, 8, 4), "prompts must be a list of token-id lists"),
    ("engine temperature -1", lambda: ServingEngine(MODEL, 6, 4).run([Request([1, 2, 3], 3, temperature=-1.0)]),
     "request 0: temperature must be"),
    ("engine top_k -3", lambda: ServingEngine(MODEL, 6, 4).run([Request([1], 2), Request([1], 2, top_k=-3)]),
     "request 1: top_k must be"),
    ("engine prompt id", lambda: ServingEngine(MODEL, 6, 4).run([Request([1, VOCAB], 2)]), r"prompt must hold integer token ids in \[0, vocab_size=24\)"),
    ("engine prompt float", lambda: ServingEngine(MODEL, 6, 4).run([Request([1, 2.0], 2)]), "prompt must hold integer token ids"),
    ("engine prompt empty", lambda: ServingEngine(MODEL, 6, 4).run([Request([], 2)]), "prompt must be a non-empty list"),
    ("engine seed", lambda: ServingEngine(MODEL, 6, 4).run([Request([1], 2, seed=-1)]), "request 0: seed must be"),
    ("engine arrival", lambda: ServingEngine(MODEL, 6, 4).run([Request([1], 2, arrival_step=-1)]), "arrival_step must be"),
    ("engine not a request", lambda: ServingEngine(MODEL, 6, 4).run([([1], 2)]), "request 0 must be a Request"),
    ("engine max_batch 0", lambda: ServingEngine(MODEL, 6, 4, max_batch=0), "max_batch must be an integer >= 1"),
    ("engine share_prompt", lambda: ServingEngine(MODEL, 6, 4, share_prompt="yes"), "share_prompt must be True or False"),
    ("engine MLA on the Triton path", lambda: ServingEngine(_gpt(attention="mla"), 6, 4, decode="triton"), "no paged kernel for MLA"),
    # ---- the fragmentation simulator (item 9)
    ("simulate output 0", lambda: simulate([TraceRequest(3, 0)], 16, 4), "request 0: output_len must be an integer >= 1"),
    ("simulate output -1", lambda: simulate([TraceRequest(3, -1)], 16, 4), "output_len must be"),
    ("simulate prompt 0", lambda: simulate([TraceRequest(0, 2)], 16, 4), "prompt_len must be"),
    ("simulate max_batch 0", lambda: simulate([TraceRequest(3, 2)], 16, 4, max_batch=0), "max_batch must be an integer >= 1"),
    ("simulate arrival -1", lambda: simulate([TraceRequest(3, 2, -1)], 16, 4), "arrival_step must be"),
    ("simulate capacity float", lambda: simulate([TraceRequest(3, 2)], 16.0, 4), "capacity_tokens must be"),
    ("make_trace rate 0", lambda: make_trace(3, arrival_rate=0), "arrival_rate must be a finite real number > 0"),
    ("make_trace mean 0", lambda: make_trace(3, mean_output=0.0), "mean_output must be"),
    ("compare block 0", lambda: compare_allocators([TraceRequest(3, 2)], 64, 16, block_sizes=(0,)), "block_sizes entry"),
]


@pytest.mark.parametrize("call,message", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_a_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------- random invalid arguments
NOT_POSITIVE_INTS = [0, -1, -7, 2.5, 3.0, True, "3", None, math.nan, np.float64(2.0)]
NOT_POSITIVE_REALS = [0, 0.0, -1e-9, -3, math.nan, math.inf, -math.inf, True, "1.0", torch.tensor(1.0)]

# (name of the argument, call taking the bad value, which values are bad)
ARGUMENTS = [
    ("scale", lambda x: scaled_dot_product_attention(q, k, v, scale=x), NOT_POSITIVE_REALS),
    ("scale", lambda x: torch_attention(q, k, v, causal=True, scale=x), NOT_POSITIVE_REALS),
    ("scale", lambda x: tiled_attention(q, k, v, causal=True, scale=x), NOT_POSITIVE_REALS),
    ("window", lambda x: scaled_dot_product_attention(q, k, v, window=x), NOT_POSITIVE_INTS[:-3] + [np.float64(2.0)]),
    ("block_q", lambda x: tiled_attention(q, k, v, block_q=x), NOT_POSITIVE_INTS),
    ("top_k", lambda x: sample_next(torch.zeros(1, 4), 1.0, top_k=x), [v for v in NOT_POSITIVE_INTS if v is not None]),
    ("temperature", lambda x: sample_next(torch.zeros(1, 4), x), [-1, -1e-30, math.nan, math.inf, "1", None, True]),
    ("max_new_tokens", lambda x: generate(MODEL, one, x), [-1, 2.5, True, "2", None, math.nan]),
    ("base", lambda x: apply_rope(torch.ones(2, 4), torch.arange(2), base=x), NOT_POSITIVE_REALS + [1.0, 0.5, None]),
    ("max_new_tokens", lambda x: ServingEngine(MODEL, 6, 4).run([Request([1], x)]), NOT_POSITIVE_INTS),
    ("n_samples", lambda x: ServingEngine(MODEL, 6, 4).run([Request([1], 2, n_samples=x)]), NOT_POSITIVE_INTS),
    ("temperature", lambda x: ServingEngine(MODEL, 6, 4).run([Request([1], 2, temperature=x)]),
     [-1, math.nan, math.inf, "1", None, True]),
    ("num_blocks", lambda x: ServingEngine(MODEL, x, 4), NOT_POSITIVE_INTS),
    ("block_size", lambda x: ServingEngine(MODEL, 6, x), NOT_POSITIVE_INTS),
    ("block_size", lambda x: simulate([TraceRequest(1, 1)], 64, x), NOT_POSITIVE_INTS),
    ("output_len", lambda x: simulate([TraceRequest(1, x)], 64, 4), NOT_POSITIVE_INTS),
    ("max_batch", lambda x: simulate([TraceRequest(1, 1)], 64, 4, max_batch=x), [v for v in NOT_POSITIVE_INTS if v is not None]),
    ("arrival_rate", lambda x: make_trace(2, arrival_rate=x), NOT_POSITIVE_REALS),
    ("warmup", lambda x: train(MODEL, _Data(), 1, warmup=x, progress=False), [-1, 2.5, True, "2", None]),
    ("batches", lambda x: evaluate(MODEL, _Data(), batches=x), NOT_POSITIVE_INTS),
]


@pytest.mark.parametrize("seed", range(4))
def test_random_invalid_arguments_are_value_errors_naming_them(seed):
    """Draw (argument, bad value) pairs at random from the table: each one is a ValueError naming the argument."""
    rng = random.Random(seed)
    for _ in range(25):
        name, call, bad_values = rng.choice(ARGUMENTS)
        value = rng.choice(bad_values)
        with pytest.raises(ValueError, match=name):
            call(value)


# ---------------------------------------------------------------------- random attention inputs
@pytest.mark.parametrize("seed", range(6))
def test_every_attention_path_agrees_with_float64_on_random_shapes(seed):
    """Random B, H, Hkv, Nq, Nk (Nq > Nk included), causal/window/mask, scale: reference == torch == tiled == fp64,
    and under causal the first Nq − Nk queries get zero rows."""
    rng = random.Random(seed)
    for _ in range(6):
        hkv = rng.choice([1, 2, 3])
        h = hkv * rng.choice([1, 2])
        nq, nk, d = rng.randint(1, 13), rng.randint(1, 13), rng.choice([1, 4, 8])
        causal = rng.random() < 0.6
        window = rng.choice([None, None, rng.randint(1, 6)])
        scale = rng.choice([None, rng.uniform(0.05, 2.0)])
        g = torch.Generator().manual_seed(rng.randrange(10**6))
        qq = torch.randn(2, h, nq, d, generator=g)
        kk, vv = torch.randn(2, hkv, nk, d, generator=g), torch.randn(2, hkv, nk, d, generator=g)
        mask = torch.rand(2, 1, nq, nk, generator=g) < 0.8 if rng.random() < 0.3 else None
        expected = attention_fp64(qq, kk, vv, mask=mask, causal=causal, window=window, scale=scale)
        atol, rtol = TOLERANCES[torch.float32]
        for attend in (scaled_dot_product_attention, torch_attention,
                       lambda *a, **kw: tiled_attention(*a, **kw, block_q=rng.randint(1, 5), block_k=rng.randint(1, 5))):
            out = attend(qq, kk, vv, mask=mask, causal=causal, window=window, scale=scale)
            torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)
            if (causal or window is not None) and nq > nk:
                assert (out[:, :, :nq - nk] == 0).all()


@pytest.mark.parametrize("seed", range(4))
def test_random_paged_tables_in_range_are_read_and_out_of_range_are_refused(seed):
    """Random pools and tables: padding past a sequence's blocks may hold anything (it is never read); an
    entry a sequence reads that is outside [0, num_blocks) is a ValueError, never a wrong answer."""
    rng = random.Random(seed)
    for _ in range(8):
        block_size, hkv, d = rng.randint(1, 4), rng.choice([1, 2]), rng.choice([4, 8])
        lengths = [rng.randint(0, 9) for _ in range(rng.randint(1, 4))]
        per_seq = [blocks_needed(n, block_size) for n in lengths]
        num_blocks = sum(per_seq) + rng.randint(0, 3) or 1
        width = max(per_seq) + rng.randint(0, 2) or 1
        order = rng.sample(range(num_blocks), sum(per_seq))
        tables = torch.tensor([[rng.choice([-1, 10**6, num_blocks, 0]) for _ in range(width)] for _ in lengths])
        start = 0
        for b, n in enumerate(per_seq):
            tables[b, :n] = torch.tensor(order[start:start + n], dtype=torch.long)
            start += n
        g = torch.Generator().manual_seed(seed)
        keys = torch.randn(num_blocks, block_size, hkv, d, generator=g)
        values = torch.randn(num_blocks, block_size, hkv, d, generator=g)
        qq = torch.randn(len(lengths), 2 * hkv, 1, d, generator=g)
        lens = torch.tensor(lengths, dtype=rng.choice([torch.int32, torch.int64]))
        out = paged_attention_reference(qq, keys, values, tables.to(rng.choice([torch.int32, torch.int64])), lens)
        for b, n in enumerate(lengths):
            if n == 0:
                assert (out[b] == 0).all()
                continue
            rows = tables[b, :per_seq[b]]
            kk = keys[rows].flatten(0, 1)[:n].transpose(0, 1)[None]  # (1, Hkv, n, D)
            vv = values[rows].flatten(0, 1)[:n].transpose(0, 1)[None]
            torch.testing.assert_close(out[b:b + 1].double(), attention_fp64(qq[b:b + 1], kk, vv), **tolerance(torch.float32))
        reading = [b for b, n in enumerate(per_seq) if n]
        if reading:
            b = rng.choice(reading)
            bad = tables.clone()
            bad[b, rng.randrange(per_seq[b])] = rng.choice([-1, -num_blocks, num_blocks, 10**6])
            with pytest.raises(ValueError, match="block_tables entries must be block ids"):
                paged_attention_reference(qq, keys, values, bad, lens)


# ---------------------------------------------------------------------- serving: state, leaks, equality
def _alone(model, request, sample):
    generator = torch.Generator().manual_seed(request.seed + sample) if request.temperature > 0 else None
    return generate(model, torch.tensor([request.prompt]), request.max_new_tokens, request.temperature,
                    request.top_k, generator=generator)[0].tolist()


def _random_requests(rng, n, vocab=VOCAB, longest=30):
    requests = []
    for i in range(n):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 12))]
        temperature = rng.choice([0.0, 0.0, 0.7, 1.3])
        requests.append(Request(prompt, rng.randint(1, longest - len(prompt)), n_samples=rng.choice([1, 1, 1, 2, 3]),
                                temperature=temperature, top_k=rng.choice([None, None, 3]), seed=rng.randrange(1000),
                                arrival_step=rng.randint(0, 6)))
    return requests


def _state(engine):
    """Everything an error must leave alone: the pool's bookkeeping, every live block's contents, the model mode."""
    cache = engine.cache
    live = sorted({b for table in cache.block_tables.values() for b in table})
    return cache.checkpoint(), cache.keys[:, live].clone(), cache.values[:, live].clone(), engine.model.training


def _same_state(a, b):
    return a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) and a[3] == b[3]


VARIANTS = [  # every model the engine serves: (n_kv_heads, rope)
    (None, False), (2, False), (1, False), (None, True), (2, True), (1, True),
]


@pytest.mark.parametrize("n_kv_heads,rope", VARIANTS, ids=lambda x: repr(x))
def test_served_equals_generated_for_every_variant(n_kv_heads, rope):
    """MHA / GQA / MQA, with and without RoPE, random requests (samples, temperatures, top-k, arrivals) in a pool
    small enough to preempt: every sample equals generating it alone; every block comes back."""
    model = _gpt(seed=3, n_kv_heads=n_kv_heads, settings=MHASettings(rope=rope))
    rng = random.Random(VARIANTS.index((n_kv_heads, rope)))
    requests = _random_requests(rng, 6, longest=model.config.context_length)
    worst = max(r.n_samples * blocks_needed(len(r.prompt) + r.max_new_tokens - 1, 4) for r in requests)
    engine = ServingEngine(model, num_blocks=worst + 2, block_size=4)
    result = engine.run(requests)
    for i, request in enumerate(requests):
        for sample in range(request.n_samples):
            assert result.outputs[i][sample] == _alone(model, request, sample), (i, sample)
    assert result.stats[-1].preemptions > 0  # the pool really ran out
    assert engine.cache.allocator.num_used == 0 and not engine.cache.block_tables
    engine.cache.check_invariants()


def test_rope_models_were_served_wrong_before():
    """Issue #18 item 1: a 2-layer GQA TinyGPT with rope=True; its decode step must rotate q and k."""
    model = _gpt(seed=0, n_kv_heads=2, settings=MHASettings(rope=True))
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8, 9]]
    served = generate_paged(model, prompts, [12, 20], num_blocks=16, block_size=4)
    assert served == [generate(model, torch.tensor([p]), n)[0].tolist() for p, n in zip(prompts, [12, 20])]


def test_a_bad_request_leaves_the_engine_exactly_as_it_was():
    """Issue #18 item 8: Request([1, 2, 3], 3, temperature=-1.0) once kept a block for good."""
    engine = ServingEngine(MODEL, num_blocks=6, block_size=4)
    before = _state(engine)
    for bad in (Request([1, 2, 3], 3, temperature=-1.0), Request([1, 2, 3], 3, top_k=0),
                Request([1, 2, VOCAB], 3), Request([1, -2, 3], 3)):
        with pytest.raises(ValueError):
            engine.run([Request([4, 5], 2), bad])
        assert _same_state(_state(engine), before)
    good = Request(list(range(1, 15)), 9)  # needs 6 blocks: all of the pool
    assert engine.run([good]).outputs == [[_alone(MODEL, good, 0)]]
    assert engine.cache.allocator.num_used == 0


def test_an_error_while_serving_gives_every_block_back(monkeypatch):
    """A failure after blocks were taken (here: the decode step, on its 3rd call) rolls the pool back."""
    engine = ServingEngine(MODEL, num_blocks=12, block_size=2)
    warm = engine.run([Request([1, 2, 3], 4)])  # the pool has been used: its free list is no longer in order
    assert warm.stats
    before = _state(engine)
    calls = {"n": 0}
    original = engine._attend

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("the kernel failed")
        return original(*args)

    monkeypatch.setattr(engine, "_attend", failing)
    with pytest.raises(RuntimeError, match="the kernel failed"):
        engine.run([Request([1, 2, 3, 4, 5], 6, n_samples=2, temperature=1.0), Request([6, 7], 5, arrival_step=1)])
    assert _same_state(_state(engine), before)
    engine.cache.check_invariants()


def test_triton_decode_is_refused_when_the_kernel_cannot_run(monkeypatch):
    """decode='triton' on a CPU without the interpreter: refused when the engine is made, nothing allocated."""
    from attention_lab.kernels import interpreter

    monkeypatch.setattr(interpreter, "interpreting", lambda: False)
    with pytest.raises(ValueError, match="decode='triton' needs the model on a CUDA GPU"):
        ServingEngine(MODEL, 6, 4, decode="triton")
    from attention_lab.kernels import optional_triton

    monkeypatch.setattr(optional_triton, "TRITON_AVAILABLE", False)  # no triton wheel (macOS, Windows)
    with pytest.raises(ValueError, match="decode='triton' needs the triton package"):
        ServingEngine(MODEL, 6, 4, decode="triton")


@pytest.mark.parametrize("seed", range(5))
def test_random_traces_with_bad_requests_never_leak_or_change_state(seed):
    """Random valid traces, each followed by a random bad request in a random place: the bad run changes nothing,
    the valid run equals generating alone and leaves no block held."""
    rng = random.Random(seed)
    model = _gpt(seed=seed, n_kv_heads=rng.choice([None, 2, 1]), settings=MHASettings(rope=rng.random() < 0.5))
    bad_requests = [Request([1], 2, temperature=-0.5), Request([1], 2, temperature=math.nan), Request([1], 2, top_k=-3),
                    Request([VOCAB + 3], 2), Request([1, 2], 0), Request([1], 2, n_samples=0), Request([1], 99),
                    Request([1], 2, arrival_step=-2), Request([0.5], 2), Request([1], 2, seed=2 ** 70)]
    block_size = rng.choice([1, 2, 4])
    requests = _random_requests(rng, rng.randint(1, 5), longest=model.config.context_length)
    worst = max(r.n_samples * blocks_needed(len(r.prompt) + r.max_new_tokens - 1, block_size) for r in requests)
    engine = ServingEngine(model, num_blocks=worst + rng.randint(0, 4), block_size=block_size,
                           max_batch=rng.choice([None, max(r.n_samples for r in requests) + 1]))
    for _ in range(2):
        before = _state(engine)
        mixed = list(requests)
        mixed.insert(rng.randint(0, len(mixed)), rng.choice(bad_requests))
        with pytest.raises(ValueError):
            engine.run(mixed)
        assert _same_state(_state(engine), before)
        result = engine.run(requests)
        for i, request in enumerate(requests):
            assert result.outputs[i] == [_alone(model, request, s) for s in range(request.n_samples)]
        assert engine.cache.allocator.num_used == 0
        engine.cache.check_invariants()


def test_rope_served_with_the_triton_decode_kernel_equals_generated():
    """The Triton paged kernel (the interpreter on a CPU) reads the keys the RoPE decode step rotated."""
    pytest.importorskip("triton")
    model = _gpt(seed=5, n_kv_heads=2, settings=MHASettings(rope=True))
    requests = [Request([5, 6, 7], 6), Request(list(range(9)), 5, arrival_step=1), Request([3, 1, 4], 7, temperature=0.9, seed=4)]
    result = ServingEngine(model, num_blocks=16, block_size=4, decode="triton").run(requests)
    assert [out[0] for out in result.outputs] == [_alone(model, r, 0) for r in requests]
