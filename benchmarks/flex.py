"""GPU benchmark: this chapter's Triton FlashAttention against PyTorch's FlexAttention, on every shape.

    export PYTHONPATH=$PWD; python3 benchmarks/flex.py            # D ∈ {64, 128}, N ∈ {1k … 16k}
    python3 benchmarks/flex.py --head-dims 128 --quick            # a first look

FlexAttention (``torch.nn.attention.flex_attention``) is PyTorch's attention written once in Python and
turned into a Triton kernel by ``torch.compile``: the fair yardstick for a hand-written Triton kernel.
The shapes, timing and FLOP counts are those of ``benchmarks/flash.py`` (B·N = 32k tokens, H·D = 2048,
bf16, forward and forward+backward, causal and not), and SDPA's flash and cuDNN backends are measured
again in the same run, so every ratio compares numbers taken minutes apart on one GPU. Causal
FlexAttention gets a block mask built once per N, as its documentation recommends. Writes
``attention_lab/results/flash_flex.json`` (after every shape) and ``flash_flex.png``, then prints the table
and the ratios.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import flash as fb  # benchmarks/flash.py: inputs, timing, precompilation, the other methods
from attention_lab.book.results import RESULTS_DIR, load as load_result
from attention_lab.flash import benchmark_report as br

METHODS = ("sdpa_flash", "sdpa_cudnn", "flex", "triton", "triton_teaching")
RUNS = 3  # every method measured 3 times per shape, interleaved; the median of the runs is reported


# chapter 10's teaching kernels alone, forward and backward: what the Hopper fast path (the Gluon forward and dK/dV
# kernels, flash/gluon_attention.py and flash/gluon_backward.py) adds on an H100/H200; elsewhere the same as triton
triton_teaching = fb.kernel_variant(dict(hopper_path=False), dict(hopper_path=False))


def flex_method():
    """``(q, k, v, causal) -> out`` with FlexAttention compiled once per shape; causal block masks cached per N."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    for limit in ("recompile_limit", "cache_size_limit"):  # one compiled kernel per (shape, grad mode) measured
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 256)
    compiled = torch.compile(flex_attention, dynamic=False)
    masks = {}

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx  # queries and keys of the same length: the same as SDPA's is_causal

    def run(q, k, v, is_causal):
        block_mask = None
        if is_causal:
            n = q.shape[-2]
            if n not in masks:
                masks[n] = create_block_mask(causal, None, None, n, n, device=q.device)
            block_mask = masks[n]
        return compiled(q, k, v, block_mask=block_mask)
    return run


def max_error_vs_flash(batch, heads, n, head_dim, causal, dtype, method: str = "flex") -> float:
    """Max |method − SDPA-flash| on the benchmark inputs: both compute the same attention."""
    q, k, v = fb.make_inputs(batch, heads, n, head_dim, dtype, seed=1)
    with torch.no_grad():
        return (fb.METHODS[method](q, k, v, causal).float() - fb.METHODS["sdpa_flash"](q, k, v, causal).float()
                ).abs().max().item()


def report(results: dict) -> None:
    env = results["environment"]
    print(f"\n{env['card']} | torch {env['torch']} | triton {env['triton']} | CUDA {env['cuda']} | {results['dtype']}")
    modes = list(dict.fromkeys(r["mode"] for r in results["rows"]))
    for mode in modes:
        print(f"\nTFLOP/s, {mode}:\n{br.table(results, mode)}")
    for mode in modes:
        for head_dim in sorted({r["head_dim"] for r in results["rows"]}):
            for baseline in ("flex", "sdpa_flash", "sdpa_cudnn", "triton_teaching"):
                span = br.ratio_range(results, head_dim, mode, baseline=baseline)
                if span:
                    print(f"triton / {baseline:10}, {mode:7}, D={head_dim:3}, every N: {span[0]:.2f}–{span[1]:.2f}×")
    print("max |flex − sdpa_flash| (forward): {:.3g}".format(max(e["flex_vs_flash"] for e in results["errors"])))
    if all("triton_vs_flash" in e for e in results["errors"]):
        print("max |triton − sdpa_flash| (forward): {:.3g}".format(max(e["triton_vs_flash"] for e in results["errors"])))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N in {1024, 4096} only")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[128, 64])  # the headline D first
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"])
    parser.add_argument("--name", default="flash_flex", help="results file name (NAME.json, NAME.png)")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON in --out (no GPU)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{args.name}.json"
    if args.plot_only:
        plot(load_result(args.name, out_dir), out_dir, args.name)
        return
    dtype = fb.half_dtype()
    ns = [1024, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384]
    fb.METHODS["flex"] = flex_method()
    fb.METHODS["triton_teaching"] = triton_teaching
    started = time.perf_counter()
    fb.precompile_all(args.head_dims, dtype)  # this kernel's autotune configs, in parallel processes
    print(f"precompiled in {time.perf_counter() - started:.0f} s", flush=True)

    results = {"environment": fb.environment(), "dtype": str(dtype).replace("torch.", ""), "tokens": fb.TOKENS,
               "hidden": fb.HIDDEN, "flops": "fwd 4·B·H·N²·D (÷2 causal), fwd_bwd 3.5 × fwd",
               "timing": f"triton.testing.do_bench median, L2 flushed; FlexAttention compiled before timing; "
                         f"{RUNS} interleaved runs per shape, median of the runs",
               "methods_note": "triton: the library's choice (on an H100/H200 the Gluon forward, dK/dV and dQ kernels, each where "
                               "its faster_than_teaching rule says so, else the teaching one); "
                               "triton_teaching: chapter 10's teaching kernels alone (hopper_path=False)",
               "rows": [], "errors": []}
    for head_dim in args.head_dims:
        heads = fb.HIDDEN // head_dim
        for n in ns:
            batch = fb.TOKENS // n
            for causal in (False, True):
                results["errors"].append(dict(head_dim=head_dim, n=n, causal=causal,
                                              flex_vs_flash=max_error_vs_flash(batch, heads, n, head_dim, causal,
                                                                               dtype),
                                              triton_vs_flash=max_error_vs_flash(batch, heads, n, head_dim, causal,
                                                                                 dtype, "triton")))
                results["rows"] += fb.throughput_rows(METHODS, head_dim, n, causal, dtype, modes=args.modes,
                                                      runs=RUNS)
            results["seconds"] = round(time.perf_counter() - started)
            path.write_text(json.dumps(results, indent=1))  # after every shape: a cut-off run keeps what it did
            print(f"D={head_dim} N={n} done at {results['seconds']} s", flush=True)
    plot(results, out_dir, args.name)
    report(results)


def plot(results: dict, out_dir: Path, name: str = "flash_flex") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = br.plot_tflops(results)
    axes[0][0].figure.savefig(out_dir / f"{name}.png", dpi=110)
    plt.close("all")


if __name__ == "__main__":
    main()
