"""The Triton decode kernels (paged and contiguous) against the float64 reference.

On the CPU they run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 when
there is no GPU); the ``gpu`` tests run the compiled kernels in fp16/bf16 on a real GPU.
"""

import pytest
import torch

from attention_lab.kernels import decode_attention
from attention_lab.kernels.decode_attention import (MAX_PARTITION, DecodeConfig, choose_partition_size, contiguous_decode,
                                                    paged_decode)
from attention_lab.caches.paged import gather_kv, paged_attention_reference
from attention_lab.kernels.common import device_facts
from attention_lab.kernels.interpreter import interpreting
from reference import TOLERANCES, attention_fp64, tolerance


def random_pool(lengths, n_heads, n_kv_heads, head_dim, block_size, dtype=torch.float32, device="cpu", seed=0,
                spare_blocks=3):
    """q (B, H, 1, D) and a pool whose blocks are handed to the sequences in a random order."""
    g = torch.Generator().manual_seed(seed)
    per_seq = [-(-n // block_size) for n in lengths]
    width = max(per_seq + [1])
    num_blocks = sum(per_seq) + spare_blocks
    order = torch.randperm(num_blocks, generator=g)
    tables = torch.zeros(len(lengths), width, dtype=torch.int32)
    used = 0
    for b, count in enumerate(per_seq):
        tables[b, :count] = order[used:used + count].to(torch.int32)
        used += count
    shape = (num_blocks, block_size, n_kv_heads, head_dim)
    key_blocks = torch.randn(shape, generator=g).to(dtype)
    value_blocks = torch.randn(shape, generator=g).to(dtype)
    q = torch.randn(len(lengths), n_heads, 1, head_dim, generator=g).to(dtype)
    lens = torch.tensor(lengths, dtype=torch.int32)
    return [t.to(device) for t in (q, key_blocks, value_blocks, tables, lens)]


def expected_fp64(q, key_blocks, value_blocks, tables, lens):
    k, v, valid = gather_kv(key_blocks, value_blocks, tables, lens)  # (B, Hkv, N_max, D)
    return attention_fp64(q, k, v, mask=valid[:, None, None, :])  # (B, H, 1, D) float64


@pytest.mark.parametrize("n_heads,n_kv_heads,head_dim,block_size,partition,lengths", [
    (6, 6, 16, 1, None, [5, 1, 9]),            # MHA, one token per block
    (6, 2, 40, 8, 32, [0, 1, 8, 77]),          # GQA, head_dim not a power of two, empty sequence, 3 partitions
    (8, 1, 64, 16, 32, [33, 64, 100]),         # MQA: one KV load serves all 8 query heads
    (4, 2, 16, 5, None, [23, 4]),              # a block size that is not a power of two
])
@pytest.mark.parametrize("prefetch", [True, False], ids=["block_ids_one_tile_ahead", "block_ids_per_tile"])
def test_paged_decode_matches_float64(n_heads, n_kv_heads, head_dim, block_size, partition, lengths, prefetch,
                                      monkeypatch):
    monkeypatch.setattr(decode_attention, "PREFETCH_BLOCK_IDS", prefetch)  # forced both ways
    inputs = random_pool(lengths, n_heads, n_kv_heads, head_dim, block_size, seed=sum(lengths))
    out = paged_decode(*inputs, partition_size=partition)
    atol, rtol = TOLERANCES[torch.float32]
    assert out.shape == inputs[0].shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected_fp64(*inputs), atol=atol, rtol=rtol)
    if 0 in lengths:
        assert torch.all(out[lengths.index(0)] == 0)  # nothing to attend to: zeros, not NaN


def test_paged_decode_equals_reference_and_contiguous_kernel():
    """Paged == gathering into a contiguous cache == the contiguous kernel on the same tokens."""
    lengths = [70, 31, 96]
    q, key_blocks, value_blocks, tables, lens = random_pool(lengths, 4, 2, 32, 16, seed=3)
    paged = paged_decode(q, key_blocks, value_blocks, tables, lens, partition_size=32)
    reference = paged_attention_reference(q, key_blocks, value_blocks, tables, lens)
    k, v, _ = gather_kv(key_blocks, value_blocks, tables, lens)
    contiguous = contiguous_decode(q, k.contiguous(), v.contiguous(), context_lens=lens, partition_size=32)
    torch.testing.assert_close(paged, reference, **tolerance(torch.float32))
    torch.testing.assert_close(paged, contiguous, **tolerance("fp32_kernel_paths"))


def test_paged_decode_reads_a_head_major_pool_through_its_strides():
    """A pool stored head-major (each kv head's rows of a block contiguous, ``benchmarks/paged_decode.py``'s
    ``paged_triton_head_major``) viewed as ``(num_blocks, block_size, Hkv, D)``: the kernel reads it through its
    strides, so the same sums run in the same order and the output is bit-identical to the token-major pool's."""
    q, key_blocks, value_blocks, tables, lens = random_pool([37, 80, 5], 6, 3, 24, 8, seed=11)
    head_major = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (key_blocks, value_blocks)]
    assert head_major[0].stride() == (3 * 8 * 24, 24, 8 * 24, 1) and not head_major[0].is_contiguous()
    out = paged_decode(q, *head_major, tables, lens, partition_size=32)
    assert torch.equal(out, paged_decode(q, key_blocks, value_blocks, tables, lens, partition_size=32))
    torch.testing.assert_close(out.double(), expected_fp64(q, key_blocks, value_blocks, tables, lens),
                               atol=TOLERANCES[torch.float32][0], rtol=TOLERANCES[torch.float32][1])


def test_contiguous_decode_matches_float64_with_and_without_lengths():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 8, 1, 16, generator=g)
    k, v = torch.randn(2, 2, 45, 16, generator=g), torch.randn(2, 2, 45, 16, generator=g)
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(contiguous_decode(q, k, v).double(), attention_fp64(q, k, v), atol=atol, rtol=rtol)
    lens = torch.tensor([45, 12])
    expected = torch.cat([attention_fp64(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n]) for b, n in enumerate([45, 12])])
    torch.testing.assert_close(contiguous_decode(q, k, v, context_lens=lens, partition_size=32).double(), expected,
                               atol=atol, rtol=rtol)


def test_decode_errors_name_the_argument(monkeypatch):
    q, key_blocks, value_blocks, tables, lens = random_pool([5, 9], 4, 2, 16, 4)
    with pytest.raises(ValueError, match=r"one query token per sequence, shape \(B, H, 1, D\)"):
        paged_decode(q.expand(2, 4, 2, 16), key_blocks, value_blocks, tables, lens)
    with pytest.raises(ValueError, match="must divide n_heads"):
        paged_decode(q[:, :3], key_blocks, value_blocks, tables, lens)
    with pytest.raises(ValueError, match="share one dtype"):
        paged_decode(q.double(), key_blocks, value_blocks, tables, lens)
    with pytest.raises(ValueError, match="context_lens must lie in"):
        paged_decode(q, key_blocks, value_blocks, tables, torch.tensor([5, 99], dtype=torch.int32))
    with pytest.raises(ValueError, match="multiple of tile_n"):
        paged_decode(q, key_blocks, value_blocks, tables, lens, partition_size=20, config=DecodeConfig(16, 4, 2))
    with pytest.raises(ValueError, match=r"k and v must both have shape"):
        contiguous_decode(q, torch.randn(2, 2, 9, 16), torch.randn(2, 2, 8, 16))
    k9 = torch.randn(2, 2, 9, 16)
    for bad, match in (((q[:0], k9[:0], k9[:0]), "need B, H, Hkv, D >= 1"), ((q[:, :0], k9[:, :0], k9[:, :0]), "need B, H"),
                       ((q.int(), k9.int(), k9.int()), "q must be a floating-point"),
                       ((q, k9, k9, torch.tensor([2.5, 3.0])), "context_lens must be an integer tensor"),
                       ((q, k9, k9, torch.tensor([True, True])), "context_lens must be an integer tensor")):
        with pytest.raises(ValueError, match=match):
            contiguous_decode(*bad)
    for scale in (-1.0, 0, float("nan"), "0.5"):  # the shared attention.check_scale
        with pytest.raises(ValueError, match="scale must be"):
            contiguous_decode(q, k9, k9, scale=scale)
        with pytest.raises(ValueError, match="scale must be"):
            paged_decode(q, key_blocks, value_blocks, tables, lens, scale=scale)
    with pytest.raises(ValueError, match="partition_size must be"):
        paged_decode(q, key_blocks, value_blocks, tables, lens, partition_size=64.0)
    if interpreting():  # issue #18, item 7: interpreted bf16 dots are off by ~1e9 (triton-lang/triton#11584): refused
        bf16 = "bfloat16.*interpreter.*triton-lang/triton#11584.*float32.*float16"
        with pytest.raises(ValueError, match=bf16):
            paged_decode(q.bfloat16(), key_blocks.bfloat16(), value_blocks.bfloat16(), tables, lens)
        with pytest.raises(ValueError, match=bf16):
            contiguous_decode(q.bfloat16(), torch.randn(2, 2, 9, 16).bfloat16(), torch.randn(2, 2, 9, 16).bfloat16())
    from attention_lab.kernels import decode_attention

    monkeypatch.setattr(decode_attention, "interpreting", lambda: False)  # kernels compiled for a GPU, CPU tensors
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        paged_decode(q, key_blocks, value_blocks, tables, lens)


@pytest.mark.skipif(not interpreting(), reason="CPU interpreter test")
def test_kv_head_offsets_past_2_to_the_31():
    """Issue #18, item 13: a contiguous-layout cache whose kv heads are 2^30 + 2^20 elements apart (Hkv·N·D past 2^31):
    ``kv_head·stride_kh`` passes 2^31 for kv head 2. The view starts 2^31 elements into an untouched storage (address
    space only), so a wrapped 32-bit offset reads zeros there instead of crashing: a wrong answer before the fix."""
    head_stride, start, n_keys, head_dim = 2 ** 30 + 2 ** 20, 2 ** 31, 40, 16
    try:
        storage = torch.empty(start + 2 * head_stride + 2 * n_keys * head_dim, dtype=torch.float16)  # 8 GiB, a few pages used
    except (RuntimeError, MemoryError):
        pytest.skip("needs 8 GiB of address space")
    g = torch.Generator().manual_seed(15)
    k = storage.as_strided((1, 3, n_keys, head_dim), (3 * head_stride, head_stride, head_dim, 1), start)
    v = storage.as_strided((1, 3, n_keys, head_dim), (3 * head_stride, head_stride, head_dim, 1), start + n_keys * head_dim)
    k.copy_(torch.randn(k.shape, generator=g))
    v.copy_(torch.randn(v.shape, generator=g))
    q = torch.randn(1, 6, 1, head_dim, generator=g).half()  # GQA-2
    expected = attention_fp64(q, k.clone(), v.clone())
    torch.testing.assert_close(contiguous_decode(q, k, v).double(), expected, **tolerance("interpreter_kernel_16bit"))
    torch.testing.assert_close(contiguous_decode(q, k, v, partition_size=32).double(), expected, **tolerance("interpreter_kernel_16bit"))


def test_max_len_is_checked_against_context_lens_where_that_costs_no_sync():
    """Issue #18, item 14: max_len sizes the partitions, so one below a length cut that sequence short (one partition)
    or merged partitions never written (split-K), silently. With context_lens on the CPU the check is free."""
    q, key_blocks, value_blocks, tables, lens = random_pool([5, 77], 4, 2, 16, 8)  # capacity 10 blocks · 8 = 80
    expected = expected_fp64(q, key_blocks, value_blocks, tables, lens)
    for max_len, partition in ((77, None), (80, 32)):  # the longest, or more (within the tables): the same answer
        out = paged_decode(q, key_blocks, value_blocks, tables, lens, max_len=max_len, partition_size=partition)
        torch.testing.assert_close(out.double(), expected, **tolerance("interpreter_fp32"))
    for max_len, partition in ((76, None), (40, 32), (0, None)):  # one partition / split-K / nothing
        with pytest.raises(ValueError, match=r"max_len must be at least context_lens.max\(\) = 77"):
            paged_decode(q, key_blocks, value_blocks, tables, lens, max_len=max_len, partition_size=partition)
    for max_len in (81, -1, 77.0, True, "77"):
        with pytest.raises(ValueError, match=r"max_len must be an integer in \[0, max_blocks · block_size = 80\]"):
            paged_decode(q, key_blocks, value_blocks, tables, lens, max_len=max_len)
    with pytest.raises(ValueError, match="context_lens must lie in"):  # max_len given: the values are still checked
        paged_decode(q, key_blocks, value_blocks, tables, torch.tensor([5, 99], dtype=torch.int32), max_len=80)


def test_block_numbers_are_loaded_ahead_only_where_no_other_program_hides_the_lookup(monkeypatch):
    from attention_lab.kernels.decode_attention import prefetch_block_ids

    monkeypatch.setattr(decode_attention, "PREFETCH_BLOCK_IDS", None)
    assert prefetch_block_ids(programs=128, n_sms=132)  # MQA, B=32, 4 partitions: one program per SM
    assert prefetch_block_ids(programs=132, n_sms=132)
    assert not prefetch_block_ids(programs=133, n_sms=132)
    assert not prefetch_block_ids(programs=1024, n_sms=132)  # MHA: other programs hide the table lookup
    for forced in (True, False):
        monkeypatch.setattr(decode_attention, "PREFETCH_BLOCK_IDS", forced)
        assert prefetch_block_ids(programs=1, n_sms=132) is forced
        assert prefetch_block_ids(programs=10_000, n_sms=132) is forced


def test_partition_size_gives_each_sm_work_with_few_long_partitions():
    sms = 132
    # MHA at B=32 already gives 1024 programs: one partition of the whole 4k context.
    assert choose_partition_size(4096, 32 * 32, 1, 128, sms) == 4096
    # MQA at B=32 gives 32 programs: 4 partitions of 1024 make ~one program per SM.
    assert choose_partition_size(4096, 32, 32, 128, sms) == 1024
    # Long contexts are cut into partitions of at most MAX_PARTITION tokens.
    assert choose_partition_size(32768, 32 * 8, 4, 128, sms) == MAX_PARTITION
    # A batch of one with MQA: the extra traffic G·P/N of the partition outputs stays under 1/16.
    size = choose_partition_size(4096, 1, 32, 64, sms)
    assert 32 * -(-4096 // size) / 4096 <= 1 / 16
    assert choose_partition_size(10, 1, 1, 64, sms) == 256  # never below 4 tiles
    # With the merge fused into the partition kernel, short contexts are cut finer (2 tiles, traffic up to 1/4):
    # MQA at B=32 and 1k context gets 4 partitions of 256 (measured on an H200: 12.0 µs against 13.7 with 2 of 512).
    assert choose_partition_size(1024, 32, 32, 128, sms, fused_merge=True) == 256
    assert choose_partition_size(1024, 32, 32, 128, sms) == 512
    assert choose_partition_size(4096, 32, 32, 128, sms, fused_merge=True) == 1024  # unchanged where 4 tiles suffice
    assert choose_partition_size(10, 1, 1, 64, sms, fused_merge=True) == 128


# ---------------------------------------------------------------------- on a real GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_heads,n_kv_heads,head_dim,block_size", [(32, 32, 128, 16), (32, 8, 128, 16),
                                                                     (32, 1, 64, 32), (12, 4, 80, 8)])
def test_paged_decode_on_gpu(dtype, n_heads, n_kv_heads, head_dim, block_size):
    if dtype == torch.bfloat16 and device_facts("cuda").capability < 80:
        pytest.skip("bf16 needs sm_80 or newer")
    lengths = [1, 17, 1000, 4097, 0, 2500]
    inputs = random_pool(lengths, n_heads, n_kv_heads, head_dim, block_size, dtype=dtype, device="cuda", seed=11)
    expected = expected_fp64(*inputs)
    for partition in (None, 256, 33 * 128):  # auto, many partitions, one partition (a multiple of every tile_n)
        out = paged_decode(*inputs, partition_size=partition)
        atol, rtol = TOLERANCES[dtype]
        torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)
    q, k_blocks, v_blocks, tables, lens = inputs
    k, v, _ = gather_kv(k_blocks, v_blocks, tables, lens)
    contiguous = contiguous_decode(q, k.contiguous(), v.contiguous(), context_lens=lens)
    torch.testing.assert_close(contiguous.double(), expected, **tolerance(dtype))


@pytest.mark.gpu
def test_contiguous_decode_matches_sdpa_on_gpu():
    g = torch.Generator(device="cuda").manual_seed(0)
    for n_kv_heads in (32, 8, 4, 1):
        q = torch.randn(4, 32, 1, 128, device="cuda", dtype=torch.float16, generator=g)
        k = torch.randn(4, n_kv_heads, 3001, 128, device="cuda", dtype=torch.float16, generator=g)
        v = torch.randn(4, n_kv_heads, 3001, 128, device="cuda", dtype=torch.float16, generator=g)
        expected = attention_fp64(q, k, v)
        torch.testing.assert_close(contiguous_decode(q, k, v).double(), expected, **tolerance(torch.float16))


@pytest.mark.gpu
def test_fused_merge_equals_the_merge_kernel_and_replays_in_a_cuda_graph():
    """The fused split-K merge (last program of a (sequence, KV head) merges, found with an atomic counter) gives
    the merge kernel's answer, with uneven lengths, many partitions and an empty sequence; its counters are zero
    after every launch, so a CUDA graph replays it correctly again and again on new inputs."""
    from attention_lab.kernels.split_k import _COUNTERS

    for n_kv_heads in (8, 1):
        inputs = random_pool([1, 700, 0, 4097, 2500, 33], 32, n_kv_heads, 128, 16, dtype=torch.float16, device="cuda",
                             seed=n_kv_heads)
        expected = expected_fp64(*inputs)
        for partition in (128, 512, None):
            fused = paged_decode(*inputs, partition_size=partition)
            separate = paged_decode(*inputs, partition_size=partition, fused_merge=False)
            torch.testing.assert_close(fused.double(), expected, **tolerance(torch.float16))
            torch.testing.assert_close(fused, separate, atol=1e-3, rtol=1e-3)
            assert torch.all(fused[2] == 0)
    assert all(int(c.abs().max()) == 0 for c in _COUNTERS.values())
    g = torch.Generator(device="cuda").manual_seed(3)
    q = torch.randn(8, 32, 1, 128, device="cuda", dtype=torch.float16, generator=g)
    k = torch.randn(8, 1, 3000, 128, device="cuda", dtype=torch.float16, generator=g)
    v = torch.randn_like(k)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        contiguous_decode(q, k, v, partition_size=256)  # compile and allocate the counters outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = contiguous_decode(q, k, v, partition_size=256)
    for _ in range(3):
        q.copy_(torch.randn(q.shape, device="cuda", dtype=q.dtype, generator=g))
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out.double(), attention_fp64(q, k, v), **tolerance(torch.float16))
