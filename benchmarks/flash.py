"""GPU benchmark: this chapter's Triton FlashAttention against PyTorch SDPA (flash, cuDNN) and naive attention.

    export PYTHONPATH=$PWD; python3 benchmarks/flash.py            # full sweep (~5 min on an H100)
    python3 benchmarks/flash.py --quick                           # N ∈ {1k, 4k}, for a first look

Shapes (DESIGN.md §5): head_dim D ∈ {64, 128}, N ∈ {1k … 16k} with B·N = 32k tokens and H·D = 2048,
causal and not, forward and forward+backward, bf16 (fp16 on a GPU without bf16). Every method runs in
the same process on the same inputs; times are medians of ``triton.testing.do_bench`` (L2 flushed
between runs). Writes ``attention_lab/results/flash_benchmark.json`` (card, versions, shapes, every
number), ``flash_tflops.png``, ``flash_memory.png`` and ``flash_steps.png``, and prints tables last.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from attention_lab.attention import scaled_dot_product_attention  # noqa: E402
from attention_lab.costs.timing import peak_memory  # noqa: E402
from attention_lab.book.results import RESULTS_DIR, load as load_result, save as save_result  # noqa: E402
from attention_lab.flash import benchmark_report as br  # noqa: E402
from attention_lab.flash import triton_attention as ta  # noqa: E402
from attention_lab.flash.triton_steps import STEPS, step_forward  # noqa: E402
from decode_common import environment, half_dtype  # noqa: E402

TOKENS, HIDDEN = 32768, 2048


def sdpa(backend):
    def run(q, k, v, causal):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return run


def kernel_variant(forward_options: dict | None = None, backward_options: dict | None = None):
    """``(q, k, v, causal) -> out``: ``flash_attention`` whose forward and backward run with these options of
    ``flash_attention_forward`` / ``flash_attention_backward`` (``hopper_path=False``, ``kv_splits=1``, ...)."""
    forward_options, backward_options = forward_options or {}, backward_options or {}

    class Variant(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, causal):
            out, lse = ta.flash_attention_forward(q, k, v, None, causal, None, None, **forward_options)
            ctx.save_for_backward(q, k, v, out, lse)
            ctx.causal = causal
            return out

        @staticmethod
        def backward(ctx, grad_out):
            q, k, v, out, lse = ctx.saved_tensors
            dq, dk, dv = ta.flash_attention_backward(grad_out, q, k, v, out, lse, None, ctx.causal, None, None,
                                                     **backward_options)
            return dq, dk, dv, None

    return Variant.apply


METHODS = {
    "naive": lambda q, k, v, causal: scaled_dot_product_attention(q, k, v, causal=causal),
    "sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION),
    "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
    "triton": lambda q, k, v, causal: ta.flash_attention(q, k, v, causal=causal),
}


def make_inputs(batch, heads, n, head_dim, dtype, grad=False, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(batch, heads, n, head_dim, device="cuda", dtype=dtype, generator=g).requires_grad_(grad)
            for _ in range(3)]


def median_seconds(fn, grad_to_none=None) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=30, rep=150, grad_to_none=grad_to_none, return_mode="median") / 1e3


def measure(method, batch, heads, n, head_dim, causal, dtype, mode):
    """Seconds per call of ``method`` (None when it fails or runs out of memory)."""
    fn = METHODS[method]
    try:
        if mode == "fwd":
            q, k, v = make_inputs(batch, heads, n, head_dim, dtype)
            with torch.no_grad():
                return median_seconds(lambda: fn(q, k, v, causal))
        q, k, v = make_inputs(batch, heads, n, head_dim, dtype, grad=True)
        grad_out = torch.randn_like(q)

        def step():
            fn(q, k, v, causal).backward(grad_out)
        return median_seconds(step, grad_to_none=[q, k, v])
    except (torch.OutOfMemoryError, RuntimeError) as error:
        print(f"  {method} D={head_dim} N={n} causal={causal} {mode}: {type(error).__name__}: {str(error)[:120]}")
        return None
    finally:
        torch.cuda.empty_cache()


def throughput_rows(methods, head_dim: int, n: int, causal: bool, dtype, modes=("fwd", "fwd_bwd"),
                    runs: int = 1) -> list[dict]:
    """One row per mode (forward, forward+backward) and method at one shape: ms and TFLOP/s (None if it failed).

    With ``runs`` > 1 every method is measured that many times, interleaved (A, B, ..., A, B, ...): the row
    gives the median of the runs, ``runs_ms`` every run and ``spread`` (max - min) / median."""
    import statistics

    batch, heads = TOKENS // n, HIDDEN // head_dim
    rows = []
    for mode in modes:
        times = {method: [] for method in methods}
        for _ in range(runs):
            for method in methods:
                if times[method] is not None:
                    seconds = measure(method, batch, heads, n, head_dim, causal, dtype, mode)
                    times[method] = None if seconds is None else times[method] + [seconds]
        flops = br.attention_flops(batch, heads, n, head_dim, causal, mode)
        for method in methods:
            seconds = statistics.median(times[method]) if times[method] else None
            row = dict(head_dim=head_dim, n=n, batch=batch, heads=heads, causal=causal, mode=mode,
                       method=method, ms=seconds and seconds * 1e3, tflops=seconds and flops / seconds / 1e12)
            if runs > 1:
                row["runs_ms"] = [t * 1e3 for t in times[method]] if times[method] else None
                row["spread"] = (max(times[method]) - min(times[method])) / seconds if times[method] else None
            rows.append(row)
    return rows


def extra_memory(method, batch, heads, n, head_dim, causal, dtype, mode):
    """Peak bytes allocated beyond the inputs during one call (fwd) or one forward+backward."""
    fn = METHODS[method]
    try:
        q, k, v = make_inputs(batch, heads, n, head_dim, dtype, grad=mode == "fwd_bwd")
        if mode == "fwd":
            with torch.no_grad():
                fn(q, k, v, causal)  # compile / tune outside the measurement
                return peak_memory(lambda: fn(q, k, v, causal))
        grad_out = torch.randn_like(q)
        fn(q, k, v, causal).backward(grad_out)
        q.grad = k.grad = v.grad = None
        return peak_memory(lambda: fn(q, k, v, causal).backward(grad_out))
    except (torch.OutOfMemoryError, RuntimeError):
        return None
    finally:
        torch.cuda.empty_cache()


def max_error(batch, heads, n, head_dim, causal, dtype) -> dict:
    """Max |ours − SDPA-flash| of the output and of dq, on the benchmark inputs (both in ``dtype``)."""
    q, k, v = make_inputs(batch, heads, n, head_dim, dtype, grad=True, seed=1)
    grad_out = torch.randn_like(q)
    result = {}
    outputs = {}
    for method in ("triton", "sdpa_flash"):
        out = METHODS[method](q, k, v, causal)
        (dq,) = torch.autograd.grad(out, (q,), grad_out)
        outputs[method] = (out.float(), dq.float())
    result["out"] = (outputs["triton"][0] - outputs["sdpa_flash"][0]).abs().max().item()
    result["dq"] = (outputs["triton"][1] - outputs["sdpa_flash"][1]).abs().max().item()
    return result


def _compile_task(task) -> str:
    """Worker process: compile one autotune config (by index) of every kernel for one variant, or the step kernels."""
    head_dim, causal, index, dtype_name = task
    dtype = getattr(torch, dtype_name)
    q, k, v = make_inputs(1, HIDDEN // head_dim, 1024, head_dim, dtype)
    if index == "steps":
        for step in ("two_pass", "online", "skip"):
            step_forward(step, q, k, v, causal=causal)
        return f"steps causal={causal}"
    for tuner in (ta._attn_fwd_tuned, ta._attn_bwd_kv_tuned, ta._attn_bwd_q_tuned):
        tuner.configs = [tuner.configs[min(index, len(tuner.configs) - 1)]]
    try:
        ta.precompile(q, k, v, causal=causal, workers=1)
    except ValueError as error:  # the one config does not fit this GPU
        return f"D={head_dim} causal={causal} #{index}: {error}"
    return f"D={head_dim} causal={causal} #{index}"


def precompile_all(head_dims, dtype, processes: int = 16) -> None:
    """Compile every config of every benchmarked variant in parallel processes; they share Triton's disk cache."""
    import multiprocessing

    n_configs = max(len(t.configs) for t in (ta._attn_fwd_tuned, ta._attn_bwd_kv_tuned, ta._attn_bwd_q_tuned))
    dtype_name = str(dtype).replace("torch.", "")
    tasks = [(d, c, "steps", dtype_name) for d in (128,) for c in (False, True)]
    tasks += [(d, c, i, dtype_name) for i in range(n_configs) for d in head_dims for c in (False, True)]
    with multiprocessing.get_context("spawn").Pool(min(processes, len(tasks))) as pool:
        for done in pool.imap_unordered(_compile_task, tasks):
            if ":" in done:
                print("  ", done)


def autotune_choices() -> dict:
    """The config the autotuner kept for each key (lengths bucket, head_dim, flags, dtypes)."""
    chosen = {}
    for name, tuner in (("forward", ta._attn_fwd_tuned), ("backward_kv", ta._attn_bwd_kv_tuned),
                        ("backward_q", ta._attn_bwd_q_tuned)):
        chosen[name] = {str(key): str(config) for key, config in getattr(tuner, "cache", {}).items()}
    return chosen


def save(results: dict, out_dir: Path) -> None:
    save_result("flash_benchmark", results, out_dir)


def plot(results: dict, out_dir: Path) -> None:
    """flash_tflops.png, flash_memory.png and flash_steps.png from the results."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = br.plot_tflops(results)
    axes[0][0].figure.savefig(out_dir / "flash_tflops.png", dpi=110)
    ax = br.plot_memory(results)
    ax.figure.tight_layout()
    ax.figure.savefig(out_dir / "flash_memory.png", dpi=110)
    if results["steps"]:
        axes = br.plot_steps(results)
        axes[0].figure.tight_layout()
        axes[0].figure.savefig(out_dir / "flash_steps.png", dpi=110)
    plt.close("all")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N in {1024, 4096} only")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument("--no-steps", action="store_true")
    parser.add_argument("--precompile-only", action="store_true", help="fill Triton's cache and stop")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNGs from the JSON in --out (no GPU)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        plot(load_result("flash_benchmark", out_dir), out_dir)
        return
    dtype = half_dtype()
    ns = [1024, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384]
    head_dims = [64, 128]
    started = time.perf_counter()

    # 1. compile every autotune config of every variant in parallel (otherwise one by one while tuning)
    precompile_all(head_dims, dtype)
    print(f"precompiled in {time.perf_counter() - started:.0f} s", flush=True)
    if args.precompile_only:
        return

    results = {"environment": environment(), "dtype": str(dtype).replace("torch.", ""), "tokens": TOKENS,
               "hidden": HIDDEN, "flops": "fwd 4·B·H·N²·D (÷2 causal), fwd_bwd 3.5 × fwd",
               "timing": "triton.testing.do_bench median, L2 flushed", "rows": [], "memory": [],
               "memory_head_dim": 128, "steps": [], "steps_head_dim": 128, "errors": []}
    # 2. throughput of every method on every shape
    for head_dim in head_dims:
        heads = HIDDEN // head_dim
        for n in ns:
            batch = TOKENS // n
            for causal in (False, True):
                results["errors"].append(dict(head_dim=head_dim, n=n, causal=causal,
                                              **max_error(batch, heads, n, head_dim, causal, dtype)))
                results["rows"] += throughput_rows(METHODS, head_dim, n, causal, dtype)
            print(f"D={head_dim} N={n} done at {time.perf_counter() - started:.0f} s", flush=True)
            save(results, out_dir)

    # 3. memory: one forward at every N, forward+backward at the largest (D=128, not causal)
    head_dim = results["memory_head_dim"]
    for n in ns:
        for method in METHODS:
            for mode in ("fwd", "fwd_bwd") if n == ns[-1] else ("fwd",):
                extra = extra_memory(method, TOKENS // n, HIDDEN // head_dim, n, head_dim, False, dtype, mode)
                results["memory"].append(dict(head_dim=head_dim, n=n, batch=TOKENS // n, heads=HIDDEN // head_dim,
                                              method=method, mode=mode, extra_bytes=extra))
    save(results, out_dir)
    print(f"memory done at {time.perf_counter() - started:.0f} s", flush=True)

    # 4. the chapter's steps (forward only)
    if not args.no_steps:
        head_dim = results["steps_head_dim"]
        for n in ns:
            batch, heads = TOKENS // n, HIDDEN // head_dim
            q, k, v = make_inputs(batch, heads, n, head_dim, dtype)
            for causal in (False, True):
                reference = step_forward("tuned", q, k, v, causal=causal)
                for step in STEPS:
                    with torch.no_grad():
                        error = (step_forward(step, q, k, v, causal=causal).float() - reference.float()).abs().max()
                        seconds = median_seconds(lambda: step_forward(step, q, k, v, causal=causal))
                    flops = br.attention_flops(batch, heads, n, head_dim, causal)
                    results["steps"].append(dict(n=n, causal=causal, step=step, ms=seconds * 1e3,
                                                 tflops=flops / seconds / 1e12, max_error=error.item()))
        print(f"steps done at {time.perf_counter() - started:.0f} s", flush=True)
        save(results, out_dir)

    results["autotune"] = autotune_choices()
    results["seconds"] = round(time.perf_counter() - started)
    save(results, out_dir)

    plot(results, out_dir)
    env = results["environment"]
    print(f"\n{env['card']} | torch {env['torch']} | triton {env['triton']} | CUDA {env['cuda']} | {results['dtype']}")
    for mode in ("fwd", "fwd_bwd"):
        print(f"\nTFLOP/s, {mode}:\n{br.table(results, mode)}")
    for mode in ("fwd", "fwd_bwd"):
        for head_dim in head_dims:
            span = br.ratio_range(results, head_dim, mode, min_n=4096)
            if span:
                print(f"triton / sdpa_flash, {mode}, D={head_dim}, N>=4k: {span[0]:.2f}–{span[1]:.2f}×")
    big = [m for m in results["memory"] if m["n"] == ns[-1]]
    print("extra memory at N={}: ".format(ns[-1]) + ", ".join(
        f"{m['method']} {m['mode']} {m['extra_bytes'] / 2**20:.0f} MiB" if m["extra_bytes"] is not None
        else f"{m['method']} {m['mode']} —" for m in big))
    print("max |triton − sdpa_flash|: out {:.3g}, dq {:.3g}".format(max(e["out"] for e in results["errors"]),
                                                                 max(e["dq"] for e in results["errors"])))
    if results["steps"]:
        for step in STEPS:
            values = [f"{r['tflops']:.0f}" for r in results["steps"] if r["step"] == step and r["causal"]]
            print(f"step {step:>8} (causal, D=128) TFLOP/s over N: {' '.join(values)}")
    print(f"total {results['seconds']} s")


if __name__ == "__main__":
    main()
