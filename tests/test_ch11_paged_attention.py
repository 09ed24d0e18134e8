"""The paged KV cache: allocator invariants, copy-on-write, errors, reference paged attention, continuous
batching with TinyGPT (== generating each request alone), the fragmentation simulator, chapter 11 checkers."""

import random

import pytest
import torch

from attention_lab import TinyGPT, TinyGPTConfig
from attention_lab.exercises.ch11 import check_blocks_needed, check_physical_slot
from attention_lab.exercises.core import ExerciseError
from attention_lab.caches.fragmentation import TraceRequest, compare_allocators, make_trace, simulate
from attention_lab.generate import generate
from attention_lab.caches.paged import (BlockAllocator, OutOfBlocksError, PagedKVCache, blocks_needed,
                                        paged_attention_reference, slot_of)
from attention_lab.caches.serving import Request, ServingEngine, generate_paged
from reference import TOLERANCES, attention_fp64, tolerance


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _kv(n, n_kv_heads=2, head_dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_kv_heads, head_dim, generator=g), torch.randn(n, n_kv_heads, head_dim, generator=g)


# ---------------------------------------------------------------------- allocator and block tables
def test_allocator_ref_counts_and_errors():
    allocator = BlockAllocator(3)
    a, b = allocator.allocate(), allocator.allocate()
    allocator.share(a)
    assert allocator.ref_counts[a] == 2 and allocator.num_free == 1
    allocator.release(a)
    assert allocator.num_used == 2  # still one user
    allocator.release(a)
    assert allocator.num_used == 1 and allocator.ref_counts[a] == 0
    with pytest.raises(ValueError, match=f"block {a} is not in use"):
        allocator.release(a)
    allocator.allocate(), allocator.allocate()
    with pytest.raises(OutOfBlocksError, match="out of KV blocks: all 3 blocks"):
        allocator.allocate()
    allocator.check_invariants()
    assert b in range(3)


@pytest.mark.parametrize("block_size", [0, -4, 2.5, True, "16"])
def test_bad_block_size(block_size):
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        PagedKVCache(1, 8, block_size, 2, 8)


def test_writing_to_a_freed_sequence_is_an_error():
    cache = PagedKVCache(1, 8, 4, 2, 8)
    seq = cache.add_sequence()
    cache.append(seq, 5)
    cache.free(seq)
    for action in (lambda: cache.append(seq, 1), lambda: cache.fork(seq), lambda: cache.gather(0, seq),
                   lambda: cache.free(seq)):
        with pytest.raises(ValueError, match=f"sequence {seq} was freed"):
            action()
    with pytest.raises(ValueError, match="unknown sequence id 99"):
        cache.append(99, 1)


def test_out_of_blocks_changes_nothing():
    cache = PagedKVCache(1, 3, 4, 2, 8)
    a, b = cache.add_sequence(), cache.add_sequence()
    cache.append(a, 8)  # 2 blocks
    cache.append(b, 3)  # 1 block, partly filled
    with pytest.raises(OutOfBlocksError, match="sequence 1 needs 1 more block"):
        cache.append(b, 2)
    assert cache.lengths[b] == 3 and len(cache.block_tables[b]) == 1
    cache.check_invariants()


def test_slots_follow_the_block_table():
    cache = PagedKVCache(1, 16, 4, 2, 8)
    a, b = cache.add_sequence(), cache.add_sequence()
    slots_a = torch.cat([cache.append(a, 3), cache.append(a, 1)])
    cache.append(b, 6)  # interleaved: a's blocks are not next to each other
    slots_a = torch.cat([slots_a, cache.append(a, 7)])
    table = cache.block_tables[a]
    assert slots_a.tolist() == [slot_of(table, p, 4) for p in range(11)]
    assert table != sorted(table) or table[1] != table[0] + 1  # really scattered
    with pytest.raises(ValueError, match="position must lie in"):
        slot_of(table, 12, 4)


def test_gather_returns_exactly_what_was_written():
    cache = PagedKVCache(2, 32, 4, 2, 8)
    seqs = [cache.add_sequence() for _ in range(3)]
    written = {s: ([], []) for s in seqs}
    rng = random.Random(0)
    for step in range(12):
        s = rng.choice(seqs)
        n = rng.randint(1, 5)
        slots = cache.append(s, n)
        k, v = _kv(n, seed=step)
        cache.write(1, slots, k, v)
        written[s][0].append(k)
        written[s][1].append(v)
    for s in seqs:
        if written[s][0]:
            k, v = cache.gather(1, s)  # (Hkv, length, D)
            torch.testing.assert_close(k, torch.cat(written[s][0]).transpose(0, 1), **tolerance("exact"))
            torch.testing.assert_close(v, torch.cat(written[s][1]).transpose(0, 1), **tolerance("exact"))


def test_fork_shares_blocks_and_copies_only_the_written_block():
    cache = PagedKVCache(1, 16, 4, 2, 8)
    parent = cache.add_sequence()
    k, v = _kv(10)
    cache.write(0, cache.append(parent, 10), k, v)  # blocks: 4 + 4 + 2 tokens
    child = cache.fork(parent)
    assert cache.block_tables[child] == cache.block_tables[parent]
    assert cache.allocator.num_used == 3 and cache.tokens_stored() == 10
    k_new, v_new = _kv(1, seed=1)
    cache.write(0, cache.append(child, 1), k_new, v_new)
    assert cache.copies == 1  # only the partly filled last block was copied
    assert cache.block_tables[child][:2] == cache.block_tables[parent][:2]
    assert cache.block_tables[child][2] != cache.block_tables[parent][2]
    parent_k, _ = cache.gather(0, parent)
    child_k, _ = cache.gather(0, child)
    torch.testing.assert_close(parent_k, k.transpose(0, 1), **tolerance("exact"))  # the parent is untouched
    torch.testing.assert_close(child_k, torch.cat([k, k_new]).transpose(0, 1), **tolerance("exact"))
    cache.append(parent, 1)  # the parent's last block is no longer shared: written in place
    assert cache.copies == 1
    cache.check_invariants()


def test_random_operations_keep_invariants_and_leak_nothing():
    rng = random.Random(1)
    cache = PagedKVCache(1, 24, 3, 1, 4)
    live = []
    for _ in range(400):
        op = rng.random()
        try:
            if op < 0.2 or not live:
                live.append(cache.add_sequence())
            elif op < 0.6:
                cache.append(rng.choice(live), rng.randint(1, 4))
            elif op < 0.8:
                live.append(cache.fork(rng.choice(live)))
            else:
                seq = live.pop(rng.randrange(len(live)))
                cache.free(seq)
        except OutOfBlocksError:
            pass
        cache.check_invariants()
        used = {b for s in live for b in cache.block_tables[s]}
        assert len(used) == cache.allocator.num_used  # nothing used that no table holds
    for seq in live:
        cache.free(seq)
    assert cache.allocator.num_used == 0 and all(c == 0 for c in cache.allocator.ref_counts)


# ---------------------------------------------------------------------- reference paged attention
def test_reference_paged_attention_matches_float64_with_variable_lengths():
    cache = PagedKVCache(1, 40, 5, 2, 16)
    lengths = [0, 1, 5, 23, 11]
    seqs = [cache.add_sequence() for _ in lengths]
    for i, (s, n) in enumerate(zip(seqs, lengths)):
        if n:
            k, v = _kv(n, 2, 16, seed=i)
            cache.write(0, cache.append(s, n), k, v)
    tables, lens = cache.batch_tables(seqs)
    q = torch.randn(len(seqs), 6, 1, 16, generator=torch.Generator().manual_seed(9))
    out = paged_attention_reference(q, cache.keys[0], cache.values[0], tables, lens)
    for b, s in enumerate(seqs):
        if lengths[b] == 0:
            assert torch.all(out[b] == 0)
            continue
        k, v = cache.gather(0, s)
        expected = attention_fp64(q[b:b + 1], k[None], v[None])
        atol, rtol = TOLERANCES[torch.float32]
        torch.testing.assert_close(out[b:b + 1].double(), expected, atol=atol, rtol=rtol)


def test_reference_paged_attention_errors():
    cache = PagedKVCache(1, 8, 4, 2, 16)
    seq = cache.add_sequence()
    cache.append(seq, 5)
    tables, lens = cache.batch_tables([seq])
    q = torch.randn(1, 4, 1, 16)
    with pytest.raises(ValueError, match="one query token per sequence"):
        paged_attention_reference(torch.randn(1, 4, 2, 16), cache.keys[0], cache.values[0], tables, lens)
    with pytest.raises(ValueError, match=r"key_blocks must have shape \(num_blocks, block_size, n_kv_heads, head_dim\)"):
        paged_attention_reference(q, cache.keys, cache.values, tables, lens)
    with pytest.raises(ValueError, match="must have head_dim=8"):
        paged_attention_reference(torch.randn(1, 4, 1, 8), cache.keys[0], cache.values[0], tables, lens)
    with pytest.raises(ValueError, match="block_tables .* need B=2"):
        paged_attention_reference(torch.randn(2, 4, 1, 16), cache.keys[0], cache.values[0], tables, lens)


# ---------------------------------------------------------------------- serving TinyGPT
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = TinyGPTConfig(vocab_size=40, context_length=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    return TinyGPT(config).eval()


def _requests(n, seed, with_samples=True):
    g = torch.Generator().manual_seed(seed)
    requests = []
    for i in range(n):
        prompt = torch.randint(0, 40, (int(torch.randint(1, 18, (1,), generator=g)),), generator=g).tolist()
        requests.append(Request(prompt, int(torch.randint(1, 25, (1,), generator=g)),
                                temperature=0.0 if i % 2 else 0.9, top_k=None if i % 3 else 10, seed=10 * i,
                                arrival_step=int(torch.randint(0, 8, (1,), generator=g))))
    if with_samples:
        requests.append(Request([3, 1, 4, 1, 5, 9], 12, n_samples=3, temperature=1.0, seed=77, arrival_step=2))
    return requests


def _alone(model, request, sample):
    generator = torch.Generator().manual_seed(request.seed + sample) if request.temperature > 0 else None
    return generate(model, torch.tensor([request.prompt]), request.max_new_tokens, request.temperature,
                    request.top_k, generator=generator)[0].tolist()


@pytest.mark.parametrize("num_blocks", [64, 16])  # 16 blocks of 4: the pool runs out, requests are preempted
def test_continuous_batching_equals_generating_each_request_alone(model, num_blocks):
    requests = _requests(6, seed=num_blocks)
    engine = ServingEngine(model, num_blocks=num_blocks, block_size=4)
    result = engine.run(requests)
    for i, request in enumerate(requests):
        for sample in range(request.n_samples):
            assert result.outputs[i][sample] == _alone(model, request, sample), (i, sample)
    assert max(s.running for s in result.stats) > 1  # really batched
    preempted = result.stats[-1].preemptions
    assert (preempted > 0) == (num_blocks == 16)
    assert engine.cache.allocator.num_used == 0  # every block came back
    engine.cache.check_invariants()


def test_parallel_sampling_shares_the_prompt_blocks(model):
    request = Request(list(range(1, 23)), 6, n_samples=4, temperature=1.0, seed=5)
    shared = ServingEngine(model, num_blocks=64, block_size=4).run([request])
    separate = ServingEngine(model, num_blocks=64, block_size=4, share_prompt=False).run([request])
    assert shared.outputs == separate.outputs  # same tokens either way
    first = shared.stats[0]  # after the prefill: one copy of the 22-token prompt
    assert first.blocks_used == blocks_needed(22, 4) and separate.stats[0].blocks_used == 4 * blocks_needed(22, 4)
    assert shared.copies == 3  # the shared, partly filled last block is copied by 3 of the 4 samples
    assert shared.peak_blocks < separate.peak_blocks


def test_engine_matches_the_simulator_step_by_step(model):
    """The simulator follows the engine's rules: same running count, allocation and stored tokens each step."""
    requests = [Request(r.prompt, r.max_new_tokens, arrival_step=r.arrival_step)
                for r in _requests(8, seed=3, with_samples=False)]
    result = ServingEngine(model, num_blocks=12, block_size=4).run(requests)
    trace = [TraceRequest(len(r.prompt), r.max_new_tokens, r.arrival_step) for r in requests]
    sim = simulate(trace, capacity_tokens=12 * 4, block_size=4)
    engine_rows = [(s.running, s.blocks_used * 4, s.tokens_stored) for s in result.stats]
    assert engine_rows == list(zip(sim.running.tolist(), sim.allocated.tolist(), sim.stored.tolist()))
    assert sim.preemptions == result.stats[-1].preemptions > 0


def test_triton_decode_in_the_engine(model):
    requests = [Request([5, 6, 7], 4), Request(list(range(9)), 3, arrival_step=1)]
    outputs = generate_paged(model, [r.prompt for r in requests], [4, 3], num_blocks=16, block_size=4,
                             decode="triton")
    assert outputs == [_alone(model, r, 0) for r in requests]


def test_engine_errors(model):
    with pytest.raises(ValueError, match="exceeds context_length=64"):
        ServingEngine(model, 64, 4).run([Request([i % 40 for i in range(60)], 10)])
    with pytest.raises(ValueError, match="may need 8 blocks but the pool has only 4"):
        ServingEngine(model, 4, 4).run([Request(list(range(20)), 12)])
    with pytest.raises(ValueError, match="decode must be"):
        ServingEngine(model, 4, 4, decode="fast")
    windowed = TinyGPT(TinyGPTConfig(vocab_size=40, context_length=32, d_model=32, n_heads=4, window=4))
    with pytest.raises(ValueError, match="full causal MultiHeadAttention"):
        ServingEngine(windowed, 8, 4)
    mla = TinyGPT(TinyGPTConfig(vocab_size=40, context_length=32, d_model=32, n_heads=4, attention="mla"))
    with pytest.raises(ValueError, match="no paged kernel for MLA"):
        ServingEngine(mla, 8, 4, decode="triton")
    mixed = TinyGPT(TinyGPTConfig(vocab_size=40, context_length=32, d_model=32, n_heads=4, attention="mla"))
    mixed.blocks[1].attn = model.blocks[1].attn
    with pytest.raises(ValueError, match="all MLA or all MultiHeadAttention"):
        ServingEngine(mixed, 8, 4)


@pytest.fixture(scope="module", params=["naive", "absorbed"])
def mla_model(request):
    """An MLA TinyGPT (decoupled RoPE) in each inference mode; generate() uses the mode, the engine always
    attends over the latent rows (the absorbed path) — both must give the same tokens."""
    from attention_lab.mla import MLASettings, set_mode

    torch.manual_seed(1)
    config = TinyGPTConfig(vocab_size=40, context_length=64, d_model=32, n_layers=2, n_heads=4, attention="mla",
                           settings=MLASettings(kv_latent_dim=12, rope_dim=4))
    return set_mode(TinyGPT(config).eval(), request.param)


@pytest.mark.parametrize("num_blocks", [64, 16])  # 16 blocks of 4: preemption and re-prefill of latent rows
def test_mla_served_equals_mla_generated(mla_model, num_blocks):
    """Issue #18: served == generated for MLA too — greedy and sampled, forked samples sharing the prompt's
    latent rows (copy-on-write), preemption; the pool stores one row of d_c + d_R numbers per token and
    layer, keys only."""
    requests = _requests(6, seed=num_blocks)
    engine = ServingEngine(mla_model, num_blocks=num_blocks, block_size=4)
    attn = mla_model.blocks[0].attn
    assert tuple(engine.cache.keys.shape[-2:]) == (1, attn.kv_latent_dim + attn.rope_dim)
    assert engine.cache.values.numel() == 0 and engine.decode == "reference"
    result = engine.run(requests)
    for i, request in enumerate(requests):
        for sample in range(request.n_samples):
            assert result.outputs[i][sample] == _alone(mla_model, request, sample), (i, sample)
    assert (result.stats[-1].preemptions > 0) == (num_blocks == 16) and result.copies > 0
    assert engine.cache.allocator.num_used == 0
    engine.cache.check_invariants()


def test_mla_pool_block_is_the_latent_row_not_per_head_keys_and_values(mla_model):
    engine = ServingEngine(mla_model, num_blocks=8, block_size=4)
    attn = mla_model.blocks[0].attn
    element = engine.cache.keys.element_size()
    assert engine.cache.block_bytes == len(mla_model.blocks) * 4 * (attn.kv_latent_dim + attn.rope_dim) * element


@pytest.mark.gpu
def test_engine_with_triton_kernel_on_gpu(model):
    gpu_model = TinyGPT(model.config).cuda().eval()
    gpu_model.load_state_dict(model.state_dict())
    requests = [Request(r.prompt, r.max_new_tokens, arrival_step=r.arrival_step)  # greedy: exact tokens
                for r in _requests(6, seed=4, with_samples=False)]
    result = ServingEngine(gpu_model, num_blocks=20, block_size=4, decode="triton").run(requests)
    for i, request in enumerate(requests):
        alone = generate(gpu_model, torch.tensor([request.prompt], device="cuda"), request.max_new_tokens)
        assert result.outputs[i][0] == alone[0].tolist()


# ---------------------------------------------------------------------- fragmentation simulator
def test_simulator_contiguous_is_one_block_of_max_len_and_paged_wastes_less():
    trace = make_trace(60, max_len=256, mean_prompt=30, mean_output=60, seed=2)
    results = compare_allocators(trace, capacity_tokens=8 * 256, max_len=256, block_sizes=(1, 16, 128))
    contiguous, paged1, paged16 = results["contiguous"], results["paged 1"], results["paged 16"]
    assert contiguous.running.max() <= 8 and contiguous.preemptions == 0  # 8 max-length slots
    assert paged1.utilisation == 1.0  # one-token blocks hold no empty slot
    assert contiguous.utilisation < paged16.utilisation < paged1.utilisation
    assert paged16.mean_running > 2 * contiguous.mean_running
    assert paged16.steps < contiguous.steps  # more requests at once: the trace finishes sooner
    total = contiguous.stored + contiguous.reserved + contiguous.never_used
    assert (total == contiguous.allocated).all()
    assert sum(r.output_len for r in trace) == contiguous.generated_tokens == paged16.generated_tokens


def test_simulator_errors():
    with pytest.raises(ValueError, match="cannot fit 2 blocks of 16"):
        simulate([TraceRequest(30, 10)], capacity_tokens=32, block_size=16)
    with pytest.raises(ValueError, match="holds no block"):
        simulate([TraceRequest(3, 1)], capacity_tokens=8, block_size=16)


# ---------------------------------------------------------------------- chapter 11 exercise checkers
def _solution_slot(table, position, block_size):
    return table[position // block_size] * block_size + position % block_size


def test_physical_slot_checker():
    assert check_physical_slot(_solution_slot)
    with pytest.raises(ExerciseError, match="not written yet"):
        check_physical_slot(lambda t, p, b: (_ for _ in ()).throw(NotImplementedError()))
    with pytest.raises(ExerciseError, match="Off by one block"):
        check_physical_slot(lambda t, p, b: t[p // b + 1] * b + p % b if p // b + 1 < len(t) else t[-1] * b + p % b)
    with pytest.raises(ExerciseError, match="Off by one block"):
        check_physical_slot(lambda t, p, b: t[p // b + 1] * b + p % b)  # the plain off-by-one: caught before IndexError
    with pytest.raises(ExerciseError, match="indexed past the end"):
        check_physical_slot(lambda t, p, b: t[len(t) + p] * b)
    with pytest.raises(ExerciseError, match="logical position"):
        check_physical_slot(lambda t, p, b: p)
    with pytest.raises(ExerciseError, match="expected"):
        check_physical_slot(lambda t, p, b: t[p // b] + p % b)  # forgot to scale the block by its size


def test_blocks_needed_checker():
    assert check_blocks_needed(lambda n, b: -(-n // b))
    with pytest.raises(ExerciseError, match="not written yet"):
        check_blocks_needed(lambda n, b: (_ for _ in ()).throw(NotImplementedError()))
    with pytest.raises(ExerciseError, match="round UP"):
        check_blocks_needed(lambda n, b: n // b)
    with pytest.raises(ExerciseError, match="round UP"):
        check_blocks_needed(lambda n, b: n // b + 1)


# ---------------------------------------------------------------------- issue #18: items 3, 4, 9
def _engine_vs_simulator(model, trace, num_blocks, block_size, max_batch=None):
    """The engine's per-step (running, allocated slots, stored tokens), preemptions and tokens generated,
    and the simulator's, for one trace (one sample per request, greedy)."""
    requests = [Request([1] * r.prompt_len, r.output_len, arrival_step=r.arrival_step) for r in trace]
    engine = ServingEngine(model, num_blocks, block_size, max_batch=max_batch)
    result = engine.run(requests)
    assert engine.cache.allocator.num_used == 0
    generated = sum(len(out[0]) - len(r.prompt) for out, r in zip(result.outputs, requests))
    engine_side = ([(s.running, s.blocks_used * block_size, s.tokens_stored) for s in result.stats],
                   result.stats[-1].preemptions, generated)
    sim = simulate(trace, num_blocks * block_size, block_size, max_batch=max_batch)
    sim_side = (list(zip(sim.running.tolist(), sim.allocated.tolist(), sim.stored.tolist())), sim.preemptions,
                sim.generated_tokens)
    return engine_side, sim_side


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return TinyGPT(TinyGPTConfig(vocab_size=16, context_length=32, d_model=8, n_layers=1, n_heads=2)).eval()


@pytest.mark.parametrize("trace,num_blocks,block_size", [
    ([TraceRequest(3, 1, 2), TraceRequest(1, 2, 1)], 4, 1),  # hung: finished at admission, then preempted
    ([TraceRequest(2, 3, 3), TraceRequest(8, 4, 2), TraceRequest(1, 1, 3)], 11, 1),  # generated 10 tokens of 8
    ([TraceRequest(1, 5, 1), TraceRequest(7, 7, 3), TraceRequest(7, 1, 3), TraceRequest(6, 3, 2),
      TraceRequest(6, 1, 3)], 14, 1),  # generated 18 tokens of 17
])
def test_simulator_follows_the_engine_on_the_traces_it_got_wrong(small_model, trace, num_blocks, block_size):
    engine_side, sim_side = _engine_vs_simulator(small_model, trace, num_blocks, block_size)
    assert sim_side == engine_side
    assert sim_side[2] == sum(r.output_len for r in trace)


@pytest.mark.parametrize("seed", range(3))
def test_simulator_equals_the_engine_on_random_traces(small_model, seed):
    """Property: random traces (arrivals, lengths, tight pools, block sizes, max_batch) give the same per-step
    running / allocated / stored counts, preemptions and token total in the simulator and the engine."""
    rng = random.Random(seed)
    for _ in range(25):
        block_size = rng.choice([1, 2, 3, 4])
        trace = [TraceRequest(rng.randint(1, 8), rng.randint(1, 8), rng.randint(0, 3)) for _ in range(rng.randint(2, 7))]
        need = max(blocks_needed(r.prompt_len + r.output_len - 1, block_size) for r in trace)
        num_blocks = rng.randint(need, need + 2)
        max_batch = rng.choice([None, None, 2, 3])
        engine_side, sim_side = _engine_vs_simulator(small_model, trace, num_blocks, block_size, max_batch)
        assert sim_side == engine_side, (trace, num_blocks, block_size, max_batch)


def test_simulator_refuses_lengths_that_never_end():
    for bad in (TraceRequest(3, 0), TraceRequest(3, -2), TraceRequest(0, 3)):
        with pytest.raises(ValueError, match="request 0: (output|prompt)_len must be an integer >= 1"):
            simulate([bad], capacity_tokens=16, block_size=4)
    with pytest.raises(ValueError, match="max_batch must be an integer >= 1"):
        simulate([TraceRequest(3, 2)], capacity_tokens=16, block_size=4, max_batch=0)


def test_generate_paged_refuses_a_budget_list_of_another_length(model):
    with pytest.raises(ValueError, match=r"one per prompt \(2\), got a list of 1"):
        generate_paged(model, [[1, 2], [3]], [2], num_blocks=8, block_size=4)
    assert len(generate_paged(model, [[1, 2], [3]], [2, 1], num_blocks=8, block_size=4)) == 2


@pytest.mark.parametrize("entry", [-1, 4, 10**6])
def test_block_table_entries_are_range_checked(entry):
    """Issue #18 item 3: -1 silently read the last block, 4 (in a 4-block pool) a wrong block, 10**6 crashed."""
    cache = PagedKVCache(1, 4, 2, 1, 8)
    seq = cache.add_sequence()
    cache.write(0, cache.append(seq, 3), *_kv(3, 1, 8))
    tables, lens = cache.batch_tables([seq])
    q = torch.randn(1, 2, 1, 8)
    bad = tables.clone()
    bad[0, 1] = entry
    with pytest.raises(ValueError, match=r"block_tables entries must be block ids in \[0, num_blocks=4\).*\[0, 1\] = "):
        paged_attention_reference(q, cache.keys[0], cache.values[0], bad, lens)
    padded = torch.cat([tables, torch.full((1, 2), entry, dtype=tables.dtype)], dim=1)  # padding is never read
    torch.testing.assert_close(paged_attention_reference(q, cache.keys[0], cache.values[0], padded, lens),
                               paged_attention_reference(q, cache.keys[0], cache.values[0], tables, lens))
    with pytest.raises(ValueError, match="block_tables must be an integer tensor"):
        paged_attention_reference(q, cache.keys[0], cache.values[0], tables.bool(), lens)
    with pytest.raises(ValueError, match="context_lens must be an integer tensor"):
        paged_attention_reference(q, cache.keys[0], cache.values[0], tables, lens.float())


def test_chapter_11s_reading_of_what_paging_costs_the_kernel():
    """The statements chapter 11 prints about the committed paged_decode.json hold, each one fails on an altered
    copy of the results, and a file from an older benchmark (no diagnostic columns) is refused by name."""
    import copy

    from attention_lab.book.results import load
    from attention_lab.caches.paged_cost import misses_target, paged_cost_reading

    bench = load("paged_decode")
    lines, claims = paged_cost_reading(bench)
    assert len(lines) == len(bench["rows"]) and all(claims.values()), claims
    first = bench["rows"][0]["ms"]
    assert f"{first['paged_triton'] / first['paged_triton_blocks_in_order']:.3f}" in lines[0]

    def altered(column, factor, where=lambda r: True):
        changed = copy.deepcopy(bench)
        for r in changed["rows"]:
            if where(r):
                r["ms"][column] *= factor
        return paged_cost_reading(changed)[1]

    assert not altered("paged_triton_blocks_in_order", 0.9)["handing the blocks out in order saves at most 3 %"]
    assert not altered("paged_triton_head_major", 0.9)["storing the pool head-major saves at most 3 %"]
    assert not altered("contiguous_triton_bnhd", 1.1)[
        "the token-major order costs the contiguous kernel less than the paged kernel trails it, at every shape"]
    assert not altered("contiguous_triton", 1.5)[
        "the paged kernel is slower than the same kernel on a contiguous cache at every shape"]
    long_miss = copy.deepcopy(bench)
    longest = max(long_miss["rows"], key=lambda r: r["context"])
    longest["of_copy"]["paged_triton"] = 0.5
    assert misses_target(longest)
    assert not paged_cost_reading(long_miss)[1]["every shape that misses a target has at most 4k tokens of context"]
    old = copy.deepcopy(bench)
    for r in old["rows"]:
        del r["ms"]["paged_triton_head_major"]
    with pytest.raises(ValueError, match="paged_triton_head_major"):
        paged_cost_reading(old)
