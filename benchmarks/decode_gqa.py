"""Grouped decode on a GPU: one decoding step for n_kv_heads in {32, 8, 4, 1} (MHA, GQA-8, GQA-4, MQA).

B=32, H=32, D=128, a contiguous cache of 1k, 4k, 16k and 32k tokens, bf16 (fp16 on a T4). Compared:

* the project's grouped Triton decode kernel (:func:`attention_lab.kernels.decode_attention.contiguous_decode`):
  one program per KV head serves its whole query group, so each K/V byte is read once; split-K partitions
  merged in the same launch (``triton_grouped``) and, to compare, by a second kernel (``triton_merge_kernel``);
* PyTorch SDPA with ``enable_gqa=True`` (its own choice of backend);
* the library's reference grouped attention (fp32 math, 4k only: it upcasts the whole cache).

Correctness against a float32 reference is checked before timing. Each time is the median of
CUDA-graph replays, with inputs rotated so that L2 never serves a repeat, measured in 3 interleaved runs
(the median of the runs is reported, every run and the spread recorded); bandwidth is the KV bytes
(``2·B·Hkv·N·D·bytes``) over the time, also as a ratio of the copy bandwidth measured in the same run.

    PYTHONPATH=. python benchmarks/decode_gqa.py [--out DIR] [--sweep]
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

from attention_lab.attention import scaled_dot_product_attention  # noqa: E402
from attention_lab.book.results import RESULTS_DIR  # noqa: E402
from attention_lab.kernels.decode_attention import contiguous_decode  # noqa: E402

BATCH, HEADS, HEAD_DIM = 32, 32, 128
KV_HEADS = [32, 8, 4, 1]
CONTEXTS = [1024, 4096, 16384, 32768]
SWEEP_MAX_BYTES = 4.5e9  # --sweep times the shapes up to this much KV (the others take long and sit at one choice)


def make_inputs(n_kv_heads: int, context: int, dtype: torch.dtype, copies: int, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    sets = []
    for _ in range(copies):
        q = torch.randn(BATCH, HEADS, 1, HEAD_DIM, device="cuda", dtype=dtype, generator=g)
        k = torch.randn(BATCH, n_kv_heads, context, HEAD_DIM, device="cuda", dtype=dtype, generator=g)
        v = torch.randn(BATCH, n_kv_heads, context, HEAD_DIM, device="cuda", dtype=dtype, generator=g)
        sets.append((q, k, v))
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--sweep", action="store_true", help="also time a few tile/partition choices (tuning)")
    args = parser.parse_args()
    env, dtype, copy_bytes_s = start_decode_benchmark("decode_gqa.py")
    rows, sweeps = [], {}
    for context in CONTEXTS:
        for n_kv_heads in KV_HEADS:
            torch.cuda.empty_cache()
            kv_bytes = 2 * BATCH * n_kv_heads * context * HEAD_DIM * torch.finfo(dtype).bits // 8
            copies = copies_for(kv_bytes)
            sets = make_inputs(n_kv_heads, context, dtype, copies, seed=context + n_kv_heads)
            gqa = n_kv_heads != HEADS
            q, k, v = sets[0]
            few = slice(0, 4)
            ref32 = scaled_dot_product_attention(q[few].float(), k[few].float(), v[few].float())
            errors = {"triton_vs_fp32": relative_error(contiguous_decode(q, k, v)[few], ref32),
                      "triton_merge_kernel_vs_fp32": relative_error(
                          contiguous_decode(q, k, v, fused_merge=False)[few], ref32),
                      "sdpa_vs_fp32": relative_error(
                          F.scaled_dot_product_attention(q[few], k[few], v[few], enable_gqa=gqa), ref32)}
            times = time_runs({
                "triton_grouped": [lambda s=s: contiguous_decode(*s) for s in sets],
                "triton_merge_kernel": [lambda s=s: contiguous_decode(*s, fused_merge=False) for s in sets],
                "sdpa_enable_gqa": [lambda s=s: F.scaled_dot_product_attention(*s, enable_gqa=gqa) for s in sets],
            }, replays=15 if kv_bytes < 4.5e9 else 8)
            if context <= 4096:
                times["reference_grouped_fp32"] = time_eager(lambda: scaled_dot_product_attention(q, k, v), repeats=3)
            row = {"n_kv_heads": n_kv_heads, "group": HEADS // n_kv_heads, "context": context, "batch": BATCH,
                   "heads": HEADS, "head_dim": HEAD_DIM, "dtype": str(dtype).removeprefix("torch."),
                   "kv_bytes": kv_bytes, "rotated_input_sets": copies,
                   "correct": max(errors["triton_vs_fp32"], errors["triton_merge_kernel_vs_fp32"]) < 1e-2,
                   "errors": errors,
                   "kernel_plan": kernel_plan(BATCH, n_kv_heads, HEADS, HEAD_DIM, context, dtype),
                   **timing_fields(times, kv_bytes, copy_bytes_s),
                   }
            row["triton_vs_sdpa_speed"] = row["ms"]["sdpa_enable_gqa"] / row["ms"]["triton_grouped"]
            rows.append(row)
            print(f"N={context:5d} Hkv={n_kv_heads:2d}: triton {row['ms']['triton_grouped']:.4f} ms "
                  f"({row['of_copy']['triton_grouped']:.0%} of copy), SDPA {row['ms']['sdpa_enable_gqa']:.4f} ms "
                  f"({row['of_copy']['sdpa_enable_gqa']:.0%}), {errors}", flush=True)
            if args.sweep and kv_bytes <= SWEEP_MAX_BYTES:
                def make_calls(config, partition, fused):
                    return [lambda s=s: contiguous_decode(*s, config=config, partition_size=partition, fused_merge=fused)
                            for s in sets]

                rows_sweep = sweep(make_calls, context, kv_bytes)
                sweeps[f"hkv{n_kv_heads}_n{context}"] = rows_sweep
                print("  sweep best:", best_of(rows_sweep), flush=True)
            del sets, q, k, v
    payload = layout({"benchmark": "decode_gqa", "environment": env, "copy_tb_s": copy_bytes_s / 1e12}, rows)
    if sweeps:
        payload["sweep"] = sweeps
    save_json(args.out / "decode_gqa.json", payload)
    plot(payload, args.out / "decode_gqa.png")
    print_table(payload)


def layout(payload: dict, shapes: list[dict]) -> dict:
    """The result file: ``shapes`` (one entry per context × n_kv_heads, every implementation inside) and a
    flat ``rows`` list (one entry per implementation × shape: impl, context, n_kv_heads, ms, tb_s,
    fraction_of_copy) that chapter 05's plot reads, plus ``device`` and ``versions`` summaries."""
    env = payload["environment"]
    flat = [{"impl": impl, "context": s["context"], "n_kv_heads": s["n_kv_heads"], "ms": s["ms"][impl],
             "tb_s": s["tb_s"][impl], "fraction_of_copy": s["of_copy"][impl]}
            for s in shapes for impl in s["ms"]]
    return {**payload, "device": {"name": env["card"], "capability": env["capability"], "sms": env["sms"]},
            "versions": {k: env[k] for k in ("torch", "triton", "cuda", "python")}, "shapes": shapes, "rows": flat}


def print_table(payload: dict) -> None:
    print(f"\ncopy bandwidth {payload['copy_tb_s']:.2f} TB/s on {payload['environment']['card']}")
    print(f"{'N':>6} {'Hkv':>4} | {'triton ms':>9} {'spread':>6} {'TB/s':>5} {'%copy':>6} | {'2-kernel ms':>11} | "
          f"{'SDPA ms':>8} {'spread':>6} {'TB/s':>5} {'%copy':>6} | {'SDPA/triton':>11} ok")
    for r in payload["shapes"]:
        print(f"{r['context']:>6} {r['n_kv_heads']:>4} | {r['ms']['triton_grouped']:9.4f} {r['spread']['triton_grouped']:6.1%} "
              f"{r['tb_s']['triton_grouped']:5.2f} {r['of_copy']['triton_grouped']:6.1%} | "
              f"{r['ms']['triton_merge_kernel']:11.4f} | {r['ms']['sdpa_enable_gqa']:8.4f} {r['spread']['sdpa_enable_gqa']:6.1%} "
              f"{r['tb_s']['sdpa_enable_gqa']:5.2f} {r['of_copy']['sdpa_enable_gqa']:6.1%} | "
              f"{r['triton_vs_sdpa_speed']:11.2f} {r['correct']}")


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    contexts = sorted({r["context"] for r in payload["shapes"]})
    fig, axes = plt.subplots(1, len(contexts), figsize=(4 * len(contexts), 4), sharey=True)
    copy = payload["copy_tb_s"]
    for ax, context in zip(axes, contexts):
        rows = [r for r in payload["shapes"] if r["context"] == context]
        x = np.arange(len(rows))
        for i, (impl, label) in enumerate((("triton_grouped", "grouped Triton kernel (fused merge)"),
                                           ("triton_merge_kernel", "same, merge in a second kernel"),
                                           ("sdpa_enable_gqa", "SDPA (enable_gqa=True)"))):
            if impl not in rows[0]["ms"]:
                continue
            tb = [r["tb_s"][impl] for r in rows]
            runs = [[r["kv_bytes"] / (t * 1e-3) / 1e12 for t in r.get("runs_ms", {}).get(impl, [r["ms"][impl]])]
                    for r in rows]  # the spread of the repeated runs, as error bars
            err = np.array([[t - min(rs) for t, rs in zip(tb, runs)], [max(rs) - t for t, rs in zip(tb, runs)]])
            ax.bar(x + (i - 1) * 0.27, tb, 0.27, yerr=err, capsize=2, label=label)
        ax.axhline(copy, color="black", linestyle="--", linewidth=1, label=f"copy ({copy:.2f} TB/s)")
        ax.set_xticks(x, [f"{r['n_kv_heads']}\n(G={r['group']})" for r in rows])
        ax.set_xlabel("n_kv_heads (query heads per KV head)")
        ax.set_title(f"context {context // 1024}k")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("effective KV-read bandwidth (TB/s)")
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="lower center", ncol=3)
    env = payload["environment"]
    fig.suptitle(f"Decode step, B=32, H=32, D=128, {payload['shapes'][0]['dtype']}: "
                 f"{env['card']}, torch {env['torch']}, triton {env['triton']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
