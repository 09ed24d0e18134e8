"""GPU benchmark: GQA/MQA training attention (fewer key/value heads than query heads), forward and backward.

    export PYTHONPATH=$PWD; python3 benchmarks/gqa_training.py        # on a CUDA GPU

The other flash benchmarks give q, k and v the same head count; training a GQA/MQA model does not. Here
H = 16 query heads of D = 128 (H·D = 2048, as in benchmarks/flash.py) share Hkv ∈ {16, 4, 1} key/value
heads (MHA, GQA-4, MQA), causal, bf16, at B·N = 32k tokens (B=8, N=4k) and at a batch of one (B=1, N=4k),
where the dK/dV kernel has the fewest programs (it owns the keys of one kv head: B·Hkv·N/BLOCK_N programs,
32 for MQA at B=1 on 132 SMs). Compared, in one process on the same inputs:

* ``triton`` — :func:`attention_lab.flash.triton_attention.flash_attention` (k, v with Hkv heads, no copy): on an
  H100/H200 the Gluon forward and the Gluon dK/dV and dQ kernels (the dK/dV one with ``kv_splits_for``'s query-head
  split where few programs would leave SMs idle);
* ``triton_teaching_bwd`` — the same with the teaching backward kernels (``hopper_path=False``): what the Gluon ones
  buy;
* ``triton_unsplit`` — the same with the dK/dV kernel's query-head split off (``kv_splits=1``): what the split buys;
* ``triton_fused_dq`` — the same with dQ added by the dK/dV programs (atomics into fp32, no dQ kernel);
* ``sdpa_gqa`` — ``F.scaled_dot_product_attention(..., enable_gqa=True)``, PyTorch's own choice of backend;
* ``sdpa_flash_gqa`` / ``sdpa_cudnn_gqa`` — the same forced to its FlashAttention-2 / cuDNN backend (a
  backend that refuses GQA is recorded as missing);
* ``flex`` — FlexAttention (``torch.compile(flex_attention)``, ``enable_gqa=True``, a causal block mask).

Each time is the median of ``triton.testing.do_bench`` (L2 flushed), measured in 3 interleaved runs (median
of the runs reported, every run recorded); every step is also replayed from a CUDA graph (``graph_ms``, the kernels'
time without the host's — at batch 1 the host's launches take longer than the GPU's work; chapter 10 reads both;
``--no-graphs`` skips it). The graph's step takes the gradients with ``torch.autograd.grad``, so nothing is added
into ``.grad`` inside it (the eager steps set ``.grad`` to None instead). TFLOP/s count 4·B·H·N²·D/2 for the causal forward and 3.5× that for forward+backward.
Writes ``attention_lab/results/gqa_training.json`` and ``gqa_training.png``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from attention_lab.book.results import RESULTS_DIR  # noqa: E402
from attention_lab.flash import benchmark_report as br  # noqa: E402
from attention_lab.flash import triton_attention as ta  # noqa: E402
from decode_common import environment, half_dtype, save_json  # noqa: E402
from flash import kernel_variant  # noqa: E402  (benchmarks/flash.py)

HEADS, HEAD_DIM = 16, 128
KV_HEADS = [16, 4, 1]
SHAPES = [(8, 4096), (1, 4096)]  # (batch, n)
RUNS = 3


def sdpa(backend=None):
    def run(q, k, v):
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return run


def flex_method():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 256)
    compiled = torch.compile(flex_attention, dynamic=False)
    masks = {}

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    def run(q, k, v):
        n = q.shape[-2]
        if n not in masks:
            masks[n] = create_block_mask(causal, None, None, n, n, device=q.device)
        return compiled(q, k, v, block_mask=masks[n], enable_gqa=True)
    return run


def backward_variant(**options):
    """``flash_attention`` (causal) whose backward runs with ``options`` (``kv_splits=1``, ``fused_dq=True``,
    ``hopper_path=False``)."""
    variant = kernel_variant(backward_options=options)
    return lambda q, k, v: variant(q, k, v, True)


METHODS = {
    "triton": lambda q, k, v: ta.flash_attention(q, k, v, causal=True),
    "triton_teaching_bwd": backward_variant(hopper_path=False),
    "triton_unsplit": backward_variant(kv_splits=1),
    "triton_fused_dq": backward_variant(fused_dq=True),
    "sdpa_gqa": sdpa(),
    "sdpa_flash_gqa": sdpa(SDPBackend.FLASH_ATTENTION),
    "sdpa_cudnn_gqa": sdpa(SDPBackend.CUDNN_ATTENTION),
}


def inputs(batch, n, n_kv_heads, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(batch, HEADS, n, HEAD_DIM, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(batch, n_kv_heads, n, HEAD_DIM, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(batch, n_kv_heads, n, HEAD_DIM, device="cuda", dtype=dtype, generator=g)
    return [t.requires_grad_(True) for t in (q, k, v)]


def step_fn(method, q, k, v, grad_out, mode, accumulate: bool = True):
    """One step of ``method``: the forward (no grad) or forward+backward. ``accumulate=False`` takes the gradients
    with ``torch.autograd.grad`` instead of ``.backward``: nothing is added into ``.grad`` (the eager timing sets
    ``.grad`` to None between steps instead; inside a CUDA graph it would add three additions to every method)."""
    fn = METHODS[method]
    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn(q, k, v)
    elif accumulate:
        def step():
            fn(q, k, v).backward(grad_out)
    else:
        def step():
            torch.autograd.grad(fn(q, k, v), (q, k, v), grad_out)
    return step


def errors_vs_sdpa(batch, n, n_kv_heads, dtype) -> dict:
    """Max |method − SDPA's own choice| of out, dq, dk, dv on one shape (every method in ``dtype``)."""
    q, k, v = inputs(batch, n, n_kv_heads, dtype, seed=1)
    grad_out = torch.randn_like(q)
    results = {}
    for method in METHODS:
        try:
            out = METHODS[method](q, k, v)
            grads = torch.autograd.grad(out, (q, k, v), grad_out)
            results[method] = [out.float()] + [g.float() for g in grads]
        except RuntimeError:
            continue
    ref = results["sdpa_gqa"]
    return {method: {name: (a - b).abs().max().item() for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref)}
            for method, got in results.items() if method != "sdpa_gqa"}


def graph_times(q, k, v, grad_out, mode: str, failed: set) -> dict[str, float]:
    """Milliseconds per step of every method replayed from a CUDA graph (median of 3 ``do_bench_cudagraph`` runs):
    the GPU's time alone. At batch 1 a step takes less GPU time than the host needs to launch it (see
    benchmarks/launch_overhead.py), so eager timing measures the host; this separates the two. A method that cannot
    be captured is left out (recorded as missing), not fatal."""
    from triton.testing import do_bench_cudagraph

    times = {}
    for method in METHODS:
        if method in failed:
            continue
        step = step_fn(method, q, k, v, grad_out, mode, accumulate=False)
        try:
            step()  # warm up outside the capture (autotuning, compiles, the gradient buffers)
            torch.cuda.synchronize()
            times[method] = statistics.median(do_bench_cudagraph(step, rep=50, return_mode="median") for _ in range(3))
        except Exception as error:  # noqa: BLE001 — a backend that cannot be captured
            print(f"  {method} {mode}: no CUDA graph ({type(error).__name__}: {str(error)[:100]})")
    for x in (q, k, v):
        x.grad = None
    return times


def main(argv=None) -> None:
    from triton.testing import do_bench

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--no-graphs", dest="graphs", action="store_false",
                        help="skip the CUDA-graph replay of every method (the kernels' own speed, no host work)")
    parser.add_argument("--batches", type=int, nargs="+", help="only these batch sizes (e.g. 1)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        sys.exit("gqa_training.py needs a CUDA GPU; the committed results are in attention_lab/results/")
    if not args.no_flex:
        METHODS["flex"] = flex_method()
    dtype = half_dtype()
    started = time.perf_counter()
    import flash as fb  # benchmarks/flash.py: compile every autotune config in parallel processes first

    fb.precompile_all([HEAD_DIM], dtype)
    print(f"precompiled in {time.perf_counter() - started:.0f} s", flush=True)
    results = {"benchmark": "gqa_training", "environment": environment(), "dtype": str(dtype).replace("torch.", ""),
               "heads": HEADS, "head_dim": HEAD_DIM, "causal": True,
               "flops": "fwd 4·B·H·N²·D ÷ 2 (causal), fwd_bwd 3.5 × fwd",
               "timing": f"triton.testing.do_bench median, L2 flushed; {RUNS} interleaved runs, median of runs",
               "rows": [], "errors": []}
    for batch, n in SHAPES:
        if args.batches and batch not in args.batches:
            continue
        for n_kv_heads in KV_HEADS:
            results["errors"].append(dict(batch=batch, n=n, n_kv_heads=n_kv_heads,
                                          max_abs_vs_sdpa=errors_vs_sdpa(batch, n, n_kv_heads, dtype)))
            q, k, v = inputs(batch, n, n_kv_heads, dtype)
            grad_out = torch.randn_like(q)
            for mode in ("fwd", "fwd_bwd"):
                runs = {m: [] for m in METHODS}
                failed = set()
                for _ in range(RUNS):
                    for method in METHODS:
                        if method in failed:
                            continue
                        try:
                            runs[method].append(do_bench(step_fn(method, q, k, v, grad_out, mode), warmup=25, rep=100,
                                                         grad_to_none=[q, k, v], return_mode="median") / 1e3)
                        except RuntimeError as error:  # a backend that refuses GQA (or this shape)
                            failed.add(method)
                            print(f"  {method} B={batch} N={n} Hkv={n_kv_heads} {mode}: {str(error)[:100]}")
                graph_ms = graph_times(q, k, v, grad_out, mode, failed) if args.graphs else {}
                flops = br.attention_flops(batch, HEADS, n, HEAD_DIM, True, mode)
                for method in METHODS:
                    times = None if method in failed else runs[method]
                    ms = statistics.median(times) * 1e3 if times else None
                    row = dict(batch=batch, n=n, n_kv_heads=n_kv_heads, group=HEADS // n_kv_heads, mode=mode,
                               method=method, ms=ms, runs_ms=[t * 1e3 for t in times] if times else None,
                               spread=(max(times) - min(times)) / statistics.median(times) if times else None,
                               tflops=flops / (ms * 1e-3) / 1e12 if ms else None)
                    if graph_ms.get(method):
                        row["graph_ms"] = graph_ms[method]
                        row["graph_tflops"] = flops / (graph_ms[method] * 1e-3) / 1e12
                    results["rows"].append(row)
                torch.cuda.empty_cache()
            print(f"B={batch} N={n} Hkv={n_kv_heads} done at {time.perf_counter() - started:.0f} s", flush=True)
            save_json(out_dir / "gqa_training.json", results)
            del q, k, v, grad_out
    results["seconds"] = round(time.perf_counter() - started)
    save_json(out_dir / "gqa_training.json", results)
    plot(results, out_dir / "gqa_training.png")
    report(results)


def report(results: dict) -> None:
    env = results["environment"]
    print(f"\n{env['card']} | torch {env['torch']} | triton {env['triton']} | CUDA {env['cuda']} | {results['dtype']}")
    methods = list(dict.fromkeys(r["method"] for r in results["rows"]))
    for mode in ("fwd", "fwd_bwd"):
        print(f"\nTFLOP/s, {mode}, causal, H={results['heads']}, D={results['head_dim']} (spread of runs in %)")
        print(f"{'B':>3} {'N':>6} {'Hkv':>4} | " + " | ".join(f"{m:>16}" for m in methods))
        keys = list(dict.fromkeys((r["batch"], r["n"], r["n_kv_heads"]) for r in results["rows"]))
        for key in keys:
            cells = []
            for m in methods:
                r = next(r for r in results["rows"] if (r["batch"], r["n"], r["n_kv_heads"]) == key
                         and r["mode"] == mode and r["method"] == m)
                cells.append(f"{r['tflops']:9.0f} ±{r['spread']:4.1%}" if r["tflops"] else f"{'—':>16}")
            print(f"{key[0]:>3} {key[1]:>6} {key[2]:>4} | " + " | ".join(cells))
    for mode in ("fwd", "fwd_bwd"):
        for base in ("sdpa_gqa", "flex", "sdpa_cudnn_gqa"):
            ratios = []
            for r in results["rows"]:
                if r["mode"] == mode and r["method"] == "triton" and r["ms"]:
                    b = next((x for x in results["rows"] if x["method"] == base and x["mode"] == mode
                              and (x["batch"], x["n"], x["n_kv_heads"]) == (r["batch"], r["n"], r["n_kv_heads"])), None)
                    if b and b["ms"]:
                        ratios.append(b["ms"] / r["ms"])
            if ratios:
                print(f"triton speed / {base:15} {mode:7}: {min(ratios):.2f}–{max(ratios):.2f}×")


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(dict.fromkeys(r["method"] for r in results["rows"]))
    keys = list(dict.fromkeys((r["batch"], r["n"], r["n_kv_heads"]) for r in results["rows"]))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), sharey=False)
    width = 0.8 / len(methods)
    for ax, mode in zip(axes, ("fwd", "fwd_bwd")):
        x = np.arange(len(keys))
        for i, m in enumerate(methods):
            rows = [next(r for r in results["rows"] if (r["batch"], r["n"], r["n_kv_heads"]) == key
                         and r["mode"] == mode and r["method"] == m) for key in keys]
            values = [r["tflops"] or 0.0 for r in rows]
            flops = [r["tflops"] * r["ms"] if r["tflops"] else 0.0 for r in rows]  # TFLOP/s · ms = const per shape
            low = [v - f / max(r["runs_ms"]) if r["tflops"] else 0.0 for v, f, r in zip(values, flops, rows)]
            high = [f / min(r["runs_ms"]) - v if r["tflops"] else 0.0 for v, f, r in zip(values, flops, rows)]
            at = x + (i - (len(methods) - 1) / 2) * width
            ax.bar(at, values, width, yerr=[low, high], capsize=2, label=m)
            graph = [r.get("graph_tflops") for r in rows]
            if any(graph):  # the same step replayed from a CUDA graph: the GPU's time alone
                ax.scatter([a for a, g in zip(at, graph) if g], [g for g in graph if g], marker="D", s=14,
                           color="black", zorder=3, label="from a CUDA graph" if i == 0 else None)
        ax.set_xticks(x, [f"B={b}\nHkv={h}" for b, _, h in keys])
        ax.set_title(f"{'forward' if mode == 'fwd' else 'forward + backward'}, causal, N={keys[0][1]}, "
                     f"H={results['heads']}, D={results['head_dim']} (bars: eager)")
        ax.set_ylabel("TFLOP/s")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    env = results["environment"]
    fig.suptitle(f"GQA/MQA training attention: {env['card']}, torch {env['torch']}, triton {env['triton']}, "
                 f"{results['dtype']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
