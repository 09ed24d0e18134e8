"""Paged decode on a GPU: the Triton paged kernel vs contiguous SDPA decode vs the gather reference.

One decoding step (one query token per sequence) over a KV cache of ``context`` tokens,
B=32, H=32, n_kv_heads 32, 8 and 1, D=128, context 1k, 4k and 32k, bf16 (fp16 on cards without bf16),
KV blocks of 16 tokens scattered at random over the pool. For each shape:

1. correctness first: the paged kernel against a float32 reference (and against SDPA) on the same
   tokens, with equal and with random per-sequence lengths;
2. time per step (CUDA graphs, inputs rotated so that L2 cannot serve repeats; 3 interleaved runs, the
   median reported and every run recorded), the effective
   KV-read bandwidth ``2·B·Hkv·N·D·bytes / time`` and its ratio to the copy bandwidth measured in
   the same run;
3. where the paged kernel's last percent goes, on the same tokens: the pool with each sequence's blocks in
   order (``paged_triton_blocks_in_order``), stored head-major (``paged_triton_head_major``), the contiguous
   kernel on a ``(B, N, Hkv, D)`` cache (``contiguous_triton_bnhd``) and, for one kv head, a pool of 64-token
   blocks (``paged_triton_block64``); chapter 11 reads them (``attention_lab.caches.paged_cost``).

    PYTHONPATH=. python benchmarks/paged_decode.py [--out DIR] [--sweep]

Writes ``paged_decode.json`` and ``paged_decode.png`` into DIR (default attention_lab/results) and
prints a table. ``--sweep`` also times a few tile/warp/stage/partition choices (how the defaults were tuned).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_common import (best_of, copies_for, kernel_plan, relative_error, save_json,  # noqa: E402
                           start_decode_benchmark, sweep, time_eager, time_runs, timing_fields)

from attention_lab.attention import scaled_dot_product_attention, torch_attention  # noqa: E402
from attention_lab.book.results import RESULTS_DIR  # noqa: E402
from attention_lab.kernels import decode_attention  # noqa: E402
from attention_lab.kernels.decode_attention import DecodeConfig, contiguous_decode, paged_decode  # noqa: E402
from attention_lab.caches.paged import gather_kv, paged_attention_reference  # noqa: E402

BATCH, HEADS, HEAD_DIM, BLOCK_SIZE = 32, 32, 128, 16
SHAPES = [(32, 1024), (8, 1024), (1, 1024), (32, 4096), (8, 4096), (1, 4096), (32, 32768), (8, 32768),
          (1, 32768)]  # (n_kv_heads, context)
TARGET_OF_COPY, TARGET_OF_SDPA = 0.95, 1.0  # DESIGN §5: >= 95% of copy, at least SDPA's speed
PAGED_SWEEP_CONFIGS = [DecodeConfig(128, 4, 3), DecodeConfig(64, 4, 3), DecodeConfig(64, 4, 4)]


def with_prefetch(prefetch: bool | None, call, *args, **kwargs):
    """``call`` with the paged kernel's block numbers loaded one tile ahead (True), just before each tile's reads
    (False, the old loop) or as the library chooses (None)."""
    decode_attention.PREFETCH_BLOCK_IDS = prefetch
    try:
        return call(*args, **kwargs)
    finally:
        decode_attention.PREFETCH_BLOCK_IDS = None


def make_inputs(n_kv_heads: int, context: int, dtype: torch.dtype, seed: int, block_size: int = BLOCK_SIZE):
    """q (B, H, 1, D); a pool (num_blocks, block_size, Hkv, D) whose blocks are handed out in random order."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    blocks_per_seq = context // block_size
    num_blocks = BATCH * blocks_per_seq
    shape = (num_blocks, block_size, n_kv_heads, HEAD_DIM)
    key_blocks = torch.randn(shape, device="cuda", dtype=dtype, generator=g)
    value_blocks = torch.randn(shape, device="cuda", dtype=dtype, generator=g)
    tables = torch.randperm(num_blocks, device="cuda", generator=g).view(BATCH, blocks_per_seq).to(torch.int32)
    lens = torch.full((BATCH,), context, device="cuda", dtype=torch.int32)
    q = torch.randn(BATCH, HEADS, 1, HEAD_DIM, device="cuda", dtype=dtype, generator=g)
    return q, key_blocks, value_blocks, tables, lens


def dims_1_2_swapped_in_memory(t: torch.Tensor) -> torch.Tensor:
    """The same values and shape as ``t`` (4-D), stored with dims 1 and 2 swapped: a pool ``(num_blocks, block_size,
    Hkv, D)`` becomes head-major (each kv head's ``block_size`` rows of a block one contiguous run instead of rows
    ``Hkv · D`` apart), a cache ``(B, Hkv, N, D)`` becomes token-major ``(B, N, Hkv, D)`` memory. The kernels read
    through strides, so only the addresses change."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def check(q, key_blocks, value_blocks, tables, lens, k, v) -> dict:
    """Relative errors of the paged kernel: vs float32 (4 sequences), vs SDPA (all), with random lengths."""
    errors = {}
    out = paged_decode(q, key_blocks, value_blocks, tables, lens)
    few = slice(0, 4)
    ref32 = scaled_dot_product_attention(q[few].float(), k[few].float(), v[few].float())
    errors["paged_vs_fp32"] = relative_error(out[few], ref32)
    errors["sdpa_vs_fp32"] = relative_error(F.scaled_dot_product_attention(
        q[few], k[few], v[few], enable_gqa=k.shape[1] != q.shape[1]), ref32)
    errors["paged_vs_sdpa"] = relative_error(out, F.scaled_dot_product_attention(
        q, k, v, enable_gqa=k.shape[1] != q.shape[1]))
    errors["contiguous_kernel_vs_fp32"] = relative_error(contiguous_decode(q[few], k[few], v[few]), ref32)
    g = torch.Generator(device="cuda").manual_seed(1)
    context = k.shape[2]
    random_lens = torch.randint(1, context + 1, (q.shape[0],), device="cuda", generator=g, dtype=torch.int32)
    random_lens[0], random_lens[1] = 1, context
    out = paged_decode(q, key_blocks, value_blocks, tables, random_lens)
    worst = 0.0
    for b in range(4):
        n = int(random_lens[b])
        ref = scaled_dot_product_attention(q[b:b + 1].float(), k[b:b + 1, :, :n].float(), v[b:b + 1, :, :n].float())
        worst = max(worst, relative_error(out[b:b + 1], ref))
    errors["paged_random_lengths_vs_fp32"] = worst
    errors["head_major_vs_token_major"] = relative_error(
        paged_decode(q, *map(dims_1_2_swapped_in_memory, (key_blocks, value_blocks)), tables, lens),
        paged_decode(q, key_blocks, value_blocks, tables, lens))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--sweep-paged", action="store_true",
                        help="a narrower sweep: 128- and 64-key tiles with and without the block numbers loaded ahead "
                             "(and short partitions at Hkv=1), fused merge")
    args = parser.parse_args()
    env, dtype, copy_bytes_s = start_decode_benchmark("paged_decode.py")
    rows, sweeps = [], {}
    for n_kv_heads, context in SHAPES:
        torch.cuda.empty_cache()
        q, key_blocks, value_blocks, tables, lens = make_inputs(n_kv_heads, context, dtype, seed=context + n_kv_heads)
        k, v, _ = gather_kv(key_blocks, value_blocks, tables, lens)
        k, v = k.contiguous(), v.contiguous()  # the contiguous cache (B, Hkv, N, D) holding the same tokens
        kv_bytes = 2 * k.numel() * k.element_size()
        errors = check(q, key_blocks, value_blocks, tables, lens, k, v)
        ok = (errors["paged_vs_fp32"] < 1e-2 and errors["paged_random_lengths_vs_fp32"] < 1e-2
              and errors["head_major_vs_token_major"] == 0.0)  # the same sums in the same order
        gqa = n_kv_heads != HEADS
        copies = copies_for(kv_bytes)
        if copies > 1:  # a small cache fits L2: rotate among several pools (the same tokens, other storage)
            extra = [make_inputs(n_kv_heads, context, dtype, seed=context + n_kv_heads + i) for i in range(1, copies)]
            paged_sets = [(q, key_blocks, value_blocks, tables, lens)] + extra
            contiguous_sets = [(q, k, v)] + [(e[0], *[t.contiguous() for t in gather_kv(e[1], e[2], e[3], e[4])[:2]])
                                             for e in extra]
        else:
            paged_sets, contiguous_sets = [(q, key_blocks, value_blocks, tables, lens)], [(q, k, v)]
        head_major_sets = [(s[0], *map(dims_1_2_swapped_in_memory, s[1:3]), *s[3:]) for s in paged_sets]
        # where the paged kernel's few percent go: the same pool with each sequence's blocks in order (no scatter),
        # and the contiguous kernel reading a (B, N, Hkv, D) cache (the paged pool's token-major order, unpaged)
        in_order_sets = [(s[0], s[1], s[2], torch.arange(s[3].numel(), device="cuda", dtype=torch.int32).view_as(s[3]),
                          s[4]) for s in paged_sets]
        bnhd_sets = [(s[0], *map(dims_1_2_swapped_in_memory, s[1:3])) for s in contiguous_sets]
        calls = {
            "paged_triton": [lambda s=s: paged_decode(*s, max_len=context) for s in paged_sets],
            "paged_triton_lookup_per_tile": [lambda s=s: with_prefetch(False, paged_decode, *s, max_len=context)
                                             for s in paged_sets],
            "paged_triton_lookup_ahead": [lambda s=s: with_prefetch(True, paged_decode, *s, max_len=context)
                                          for s in paged_sets],
            "contiguous_triton": [lambda s=s: contiguous_decode(*s) for s in contiguous_sets],
            "sdpa_contiguous": [lambda s=s: F.scaled_dot_product_attention(*s, enable_gqa=gqa) for s in contiguous_sets],
            "paged_triton_head_major": [lambda s=s: paged_decode(*s, max_len=context) for s in head_major_sets],
            "paged_triton_blocks_in_order": [lambda s=s: paged_decode(*s, max_len=context) for s in in_order_sets],
            "contiguous_triton_bnhd": [lambda s=s: contiguous_decode(*s) for s in bnhd_sets],
        }
        if n_kv_heads == 1:  # MQA: one kv head's block is 16 rows of 256 B; larger blocks mean fewer lookups
            big = [make_inputs(n_kv_heads, context, dtype, seed=context + i, block_size=64) for i in range(copies)]
            calls["paged_triton_block64"] = [lambda s=s: paged_decode(*s, max_len=context) for s in big]
            bq, bk, bv, bt, bl = big[0]
            errors["block64_vs_fp32"] = relative_error(paged_decode(*big[0]), paged_attention_reference(
                bq.float(), bk.float(), bv.float(), bt, bl, attend=torch_attention))
            ok = ok and errors["block64_vs_fp32"] < 1e-2
        times = time_runs(calls, replays=15 if kv_bytes < 4.5e9 else 8)
        del head_major_sets, in_order_sets, bnhd_sets
        times["gather_reference"] = time_eager(lambda: paged_attention_reference(q, key_blocks, value_blocks, tables, lens,
                                                                                 attend=torch_attention))
        row = {"n_kv_heads": n_kv_heads, "context": context, "batch": BATCH, "heads": HEADS, "head_dim": HEAD_DIM,
               "block_size": BLOCK_SIZE, "dtype": str(dtype).removeprefix("torch."), "kv_bytes": kv_bytes,
               "correct": ok, "errors": errors, "kernel_plan": kernel_plan(BATCH, n_kv_heads, HEADS, HEAD_DIM, context, dtype),
               "rotated_input_sets": copies, **timing_fields(times, kv_bytes, copy_bytes_s)}
        row["paged_vs_sdpa_speed"] = row["ms"]["sdpa_contiguous"] / row["ms"]["paged_triton"]
        rows.append(row)
        print(f"Hkv={n_kv_heads:2d} N={context:5d}: paged {row['ms']['paged_triton']:.3f} ms "
              f"{row['tb_s']['paged_triton']:.2f} TB/s ({row['of_copy']['paged_triton']:.0%} of copy), "
              f"SDPA {row['ms']['sdpa_contiguous']:.3f} ms, lookup per tile (before) "
              f"{row['ms']['paged_triton_lookup_per_tile']:.3f} ms, ahead {row['ms']['paged_triton_lookup_ahead']:.3f} ms, "
              f"correct={ok} {errors}", flush=True)
        if args.sweep or args.sweep_paged:
            rows_sweep = []
            for prefetch in (True, False):
                def make_calls(config, partition, fused, prefetch=prefetch):
                    return [lambda s=s: with_prefetch(prefetch, paged_decode, *s, max_len=context, config=config,
                                                      partition_size=partition, fused_merge=fused) for s in paged_sets]

                if args.sweep:
                    found = sweep(make_calls, context, kv_bytes)
                else:
                    found = sweep(make_calls, context, kv_bytes, configs=PAGED_SWEEP_CONFIGS,
                                  partitions=(None, 256, 512) if n_kv_heads == 1 else (None,), merges=(True,))
                rows_sweep += [dict(r, prefetch=prefetch) for r in found]
            sweeps[f"hkv{n_kv_heads}_n{context}"] = rows_sweep
            print("  sweep best:", best_of(rows_sweep), "| library choice:",
                  [r for r in rows_sweep if r["partition"] is None and "ms" in r][:3], flush=True)
        del q, key_blocks, value_blocks, tables, lens, k, v, paged_sets, contiguous_sets
    payload = {"benchmark": "paged_decode", "environment": env, "copy_tb_s": copy_bytes_s / 1e12,
               "targets": {"of_copy": TARGET_OF_COPY, "speed_vs_sdpa": TARGET_OF_SDPA}, "rows": rows}
    if sweeps:
        payload["sweep"] = sweeps
    save_json(args.out / "paged_decode.json", payload)
    plot(payload, args.out / "paged_decode.png")
    print_table(payload)


def print_table(payload: dict) -> None:
    copy = payload["copy_tb_s"]
    print(f"\ncopy bandwidth {copy:.2f} TB/s on {payload['environment']['card']}")
    print(f"{'Hkv':>4} {'N':>6} | {'paged ms':>8} {'spread':>6} {'TB/s':>5} {'%copy':>6} | {'contig ms':>9} {'SDPA ms':>8} "
          f"{'SDPA TB/s':>9} | {'gather ms':>9} | {'SDPA/paged':>10} ok")
    for r in payload["rows"]:
        print(f"{r['n_kv_heads']:>4} {r['context']:>6} | {r['ms']['paged_triton']:8.4f} {r['spread']['paged_triton']:6.1%} "
              f"{r['tb_s']['paged_triton']:5.2f} "
              f"{r['of_copy']['paged_triton']:6.1%} | {r['ms']['contiguous_triton']:9.4f} {r['ms']['sdpa_contiguous']:8.4f} "
              f"{r['tb_s']['sdpa_contiguous']:9.2f} | {r['ms']['gather_reference']:9.3f} | "
              f"{r['paged_vs_sdpa_speed']:10.2f} {r['correct']}")


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = payload["rows"]
    names = [("paged_triton", "paged Triton kernel"), ("contiguous_triton", "same kernel, contiguous cache"),
             ("sdpa_contiguous", "PyTorch SDPA, contiguous cache"), ("gather_reference", "gather + SDPA (reference)")]
    x = np.arange(len(rows))
    width = 0.2
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for i, (key, label) in enumerate(names):
        ax.bar(x + (i - 1.5) * width, [r["tb_s"][key] for r in rows], width, label=label)
    copy = payload["copy_tb_s"]
    ax.axhline(copy, color="black", linestyle="--", linewidth=1, label=f"copy bandwidth ({copy:.2f} TB/s)")
    ax.axhline(TARGET_OF_COPY * copy, color="grey", linestyle=":", linewidth=1,
               label=f"{TARGET_OF_COPY:.0%} of copy (target)")
    ax.set_xticks(x, [f"Hkv={r['n_kv_heads']}\nN={r['context'] // 1024}k" for r in rows])
    ax.set_ylabel("effective KV-read bandwidth (TB/s)")
    env = payload["environment"]
    ax.set_title(f"Decode step, B=32, H=32, D=128, {rows[0]['dtype']}, blocks of {rows[0]['block_size']}\n"
                 f"{env['card']}, torch {env['torch']}, triton {env['triton']}")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
