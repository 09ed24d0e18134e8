"""GPU benchmark: what each step of the Hopper fast path (attention_lab/flash/hopper.py) buys, forward only.

    export PYTHONPATH=$PWD; python3 benchmarks/hopper_steps.py          # D ∈ {64, 128}, N ∈ {1k, 4k, 16k}
    python3 benchmarks/hopper_steps.py --quick                          # D = 128, N ∈ {1k, 4k}: a first look
    python3 benchmarks/hopper_steps.py --plot-only                      # redraw the PNG from the JSON (no GPU)

Shapes as benchmarks/flash.py (B·N = 32k tokens, H·D = 2048, bf16, causal and not). Measured side by side in
ONE process on the same inputs, 3 interleaved runs (A, B, ..., A, B, ...) of ``triton.testing.do_bench``
medians (L2 flushed); the median of the runs is reported and every run recorded:

* ``triton`` — chapter 10's teaching kernel, autotuned (pointer loads; ``hopper_path=False``);
* ``hopper_tma_fixed`` — step (a): the fast path's TMA loads/stores, one program per tile, with the tile the
  teaching kernel's autotuner usually picks on Hopper (128×64, 8 warps, 3 stages): what TMA alone buys;
* ``hopper_tma`` — step (c) on top: autotuned over Hopper's own configs (``hopper.HOPPER_CONFIGS``);
* ``hopper_persistent`` — step (b) on top: one program per SM looping over the tiles;
* ``gluon_pipelined`` — step (d), attention_lab/flash/gluon_attention.py: async wgmma with the softmax of a block
  computed while the previous block's P·V runs, one partition (two warpgroups meeting at a barrier per block);
* ``gluon_ws`` — step (e): warp-specialised (a TMA producer warp, two consumer warpgroups): the library's default;
* ``sdpa_cudnn``, ``sdpa_flash`` — PyTorch SDPA forced to its cuDNN / FlashAttention-2 backend;
* ``flex`` — FlexAttention (``torch.compile``; causal with a block mask built once per N).

Before timing, every method's output is compared with SDPA's flash backend on the same inputs (a method off
by more than :data:`MAX_ERROR` is recorded and not timed). All kernel configs are compiled first, in parallel
processes sharing Triton's disk cache. Writes ``attention_lab/results/flash_hopper.json`` (after every shape:
a cut-off run keeps what it did) and ``flash_hopper.png``; prints a table and each step's ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from attention_lab.book.results import RESULTS_DIR, load as load_result, save as save_result  # noqa: E402
from attention_lab.flash import benchmark_report as br  # noqa: E402

TOKENS, HIDDEN = 32768, 2048
RUNS = 3
MAX_ERROR = 3e-2  # max |method − SDPA-flash| of a bf16 forward on N(0, 1) inputs (measured ~4e-3–1.6e-2)
NAME = "flash_hopper"
LABELS = br.HOPPER_STEPS  # method -> label (attention_lab.flash.benchmark_report)


def shapes(quick: bool) -> list[tuple[int, int, bool]]:
    """(head_dim, N, causal) of every measured shape; the batch is TOKENS // N, the heads HIDDEN // head_dim."""
    head_dims, ns = ((128,), (1024, 4096)) if quick else ((128, 64), (4096, 16384, 1024))  # the headline shapes first
    return [(d, n, causal) for d in head_dims for n in ns for causal in (False, True)]


def make_inputs(batch: int, heads: int, n: int, head_dim: int, dtype: torch.dtype, seed: int = 0) -> list:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(batch, heads, n, head_dim, device="cuda", dtype=dtype, generator=g) for _ in range(3)]


def methods(with_flex: bool = True) -> dict:
    """Name -> ``(q, k, v, causal) -> out`` for every measured method (see the module docstring)."""
    import flash as fb  # benchmarks/flash.py: SDPA's backends as (q, k, v, causal) -> out
    from flex import flex_method  # benchmarks/flex.py: FlexAttention compiled per shape, causal block masks cached

    from attention_lab.flash import gluon_attention, hopper
    from attention_lab.flash import triton_attention as ta

    def teaching(q, k, v, causal):
        return ta.flash_attention_forward(q, k, v, None, causal, None, None, hopper_path=False)[0]

    def fast(tile, persistent):
        def run(q, k, v, causal):
            return hopper.flash_attention_forward_hopper(q, k, v, causal, q.shape[-1] ** -0.5, tile=tile,
                                                         persistent=persistent)[0]
        return run

    def gluon(tile):
        def run(q, k, v, causal):
            return gluon_attention.flash_attention_forward_hopper(q, k, v, causal, q.shape[-1] ** -0.5, tile)[0]
        return run

    table = {"triton": teaching, "hopper_tma_fixed": fast(hopper.TEACHING_TILE, False),
             "hopper_tma": fast(None, False), "hopper_persistent": fast(None, True),
             "gluon_pipelined": gluon({"BLOCK_N": 128, "NUM_STAGES": 2, "WARP_SPECIALIZE": False}),
             "gluon_ws": gluon(None),
             "sdpa_cudnn": fb.METHODS["sdpa_cudnn"], "sdpa_flash": fb.METHODS["sdpa_flash"]}
    if with_flex:
        table["flex"] = flex_method()
    return table


# ---------------------------------------------------------------------- compile everything first, in parallel


def _compile_task(task: tuple) -> str:
    """Worker process: compile one config of one kernel variant (Triton's disk cache keeps it for the main run)."""
    import triton

    from attention_lab.flash import hopper
    from attention_lab.flash import triton_attention as ta

    kind, head_dim, causal, index, dtype_name = task
    dtype = getattr(torch, dtype_name)
    n = 1024  # every benchmarked N is a multiple of 16, as 1024: the same specialisation, the same compiled kernel
    q, k, v = make_inputs(TOKENS // n, HIDDEN // head_dim, n, head_dim, dtype)
    try:
        if kind == "teaching":
            if index >= len(ta._attn_fwd_tuned.configs):
                return ""
            ta.HOPPER_FORWARD = False
            ta._attn_fwd_tuned.configs = [ta._attn_fwd_tuned.configs[index]]
            ta.precompile(q, k, v, causal=causal, backward=False, workers=1)
        else:
            persistent = kind == "persistent"
            config = hopper.HOPPER_CONFIGS[index] if index is not None else None
            if config is not None and not hopper.fits(config, max(16, triton.next_power_of_2(head_dim)),
                                                      q.element_size(), persistent):
                return ""  # pruned by the autotuner too (hopper.prune_configs)
            tile = hopper.TEACHING_TILE if config is None else dict(config.kwargs, num_warps=config.num_warps,
                                                                     num_stages=config.num_stages)
            hopper.flash_attention_forward_hopper(q, k, v, causal, head_dim ** -0.5, tile=tile, persistent=persistent,
                                                  compile_only=True)
    except ValueError as error:  # this config does not fit this GPU: the autotuner prunes it too
        return f"{task}: {error}"
    return ""


def precompile_all(head_dims, dtype, processes: int = 16) -> None:
    """Every config of every measured Triton variant (teaching forward, fast path per tile and persistent, the
    fixed tile), compiled in parallel spawned processes."""
    import multiprocessing

    from attention_lab.flash import hopper, triton_configs

    name = str(dtype).replace("torch.", "")
    tasks = []
    for d in head_dims:
        for causal in (False, True):
            tasks += [("teaching", d, causal, i, name)  # the tensor-core configs (the others are a T4's)
                      for i in range(len(triton_configs.TENSOR_CORE_CONFIGS["forward"]))]
            tasks += [(kind, d, causal, i, name) for kind in ("per_tile", "persistent")
                      for i in range(len(hopper.HOPPER_CONFIGS))]
            tasks.append(("per_tile", d, causal, None, name))
    with multiprocessing.get_context("spawn").Pool(min(processes, len(tasks))) as pool:
        for message in pool.imap_unordered(_compile_task, tasks):
            if message:
                print("  ", message[:200])


# ---------------------------------------------------------------------- measure


def max_errors(table: dict, q, k, v, causal: bool) -> dict:
    """Max |method − SDPA-flash| of every method's output (None when it raised)."""
    with torch.no_grad():
        reference = table["sdpa_flash"](q, k, v, causal).float()
        errors = {}
        for name, fn in table.items():
            try:
                errors[name] = (fn(q, k, v, causal).float() - reference).abs().max().item()
            except (RuntimeError, ValueError) as error:
                print(f"  {name}: {type(error).__name__}: {str(error)[:160]}")
                errors[name] = None
    return errors


def time_shape(table: dict, head_dim: int, n: int, causal: bool, dtype, runs: int = RUNS) -> tuple[list, dict]:
    """Correctness first, then ``runs`` interleaved do_bench medians of every correct method at one shape."""
    from triton.testing import do_bench

    batch, heads = TOKENS // n, HIDDEN // head_dim
    q, k, v = make_inputs(batch, heads, n, head_dim, dtype)
    errors = max_errors(table, q, k, v, causal)
    timed = [m for m in table if errors[m] is not None and errors[m] <= MAX_ERROR]
    for m in table:
        if m not in timed:
            print(f"  {m} not timed: max error vs SDPA-flash {errors[m]}")
    times = {m: [] for m in timed}
    with torch.no_grad():
        for _ in range(runs):
            for m in timed:
                times[m].append(do_bench(lambda: table[m](q, k, v, causal), warmup=25, rep=100,
                                         return_mode="median") / 1e3)
    flops = br.attention_flops(batch, heads, n, head_dim, causal)
    rows = []
    for m in table:
        seconds = statistics.median(times[m]) if times.get(m) else None
        rows.append(dict(head_dim=head_dim, n=n, batch=batch, heads=heads, causal=causal, mode="fwd", method=m,
                         ms=seconds and seconds * 1e3, tflops=seconds and flops / seconds / 1e12,
                         runs_ms=[t * 1e3 for t in times[m]] if times.get(m) else None,
                         spread=(max(times[m]) - min(times[m])) / seconds if times.get(m) else None,
                         max_error_vs_sdpa_flash=errors[m]))
    return rows, errors


def autotune_choices() -> dict:
    """The config each autotuner kept, per key (lengths bucket, head dim, flags)."""
    from attention_lab.flash import hopper
    from attention_lab.flash import triton_attention as ta

    return {name: {str(key): str(config) for key, config in getattr(tuner, "cache", {}).items()}
            for name, tuner in (("teaching_forward", ta._attn_fwd_tuned), ("hopper", hopper._attn_fwd_hopper_tuned))}


# ---------------------------------------------------------------------- report


table_text = br.hopper_table
ratio_lines = br.hopper_step_ratios


def plot(results: dict, path: Path) -> None:
    """TFLOP/s against N for every method, one panel per (head_dim, causal) (:func:`br.plot_hopper_steps`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = br.plot_hopper_steps(results)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="D=128, N in {1024, 4096} only")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compiles take the longest)")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON in --out (no GPU)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    if args.plot_only:
        plot(load_result(NAME, out_dir), out_dir / f"{NAME}.png")
        return
    if not torch.cuda.is_available():
        sys.exit("hopper_steps.py needs a CUDA GPU (an H100/H200 for the fast path); on one it writes "
                 "attention_lab/results/flash_hopper.json and flash_hopper.png")
    from decode_common import environment

    from attention_lab.flash import hopper

    started = time.perf_counter()
    dtype = torch.bfloat16
    measured = shapes(args.quick)
    probe = make_inputs(1, 1, 128, 128, dtype)
    if not hopper.supports(*probe):
        print(f"note: the fast path does not run here ({hopper.unsupported_reason(*probe)}): its rows stay empty")
    precompile_all(sorted({d for d, _, _ in measured}), dtype)
    print(f"precompiled in {time.perf_counter() - started:.0f} s", flush=True)
    table = methods(with_flex=not args.no_flex)
    results = {"environment": environment(), "dtype": "bfloat16", "tokens": TOKENS, "hidden": HIDDEN, "runs": RUNS,
               "flops": "fwd 4·B·H·N²·D (÷2 causal)",
               "timing": f"triton.testing.do_bench median (warmup 25 ms, rep 100 ms, L2 flushed); {RUNS} interleaved "
                         f"runs per shape, median of the runs; every method checked against SDPA-flash first",
               "methods": LABELS, "persistent_heads_per_group": "hopper.heads_at_once (half the L2)",
               "rows": [], "errors": []}
    for head_dim, n, causal in measured:
        rows, errors = time_shape(table, head_dim, n, causal, dtype)
        results["rows"] += rows
        results["errors"].append(dict(head_dim=head_dim, n=n, causal=causal, **errors))
        results["seconds"] = round(time.perf_counter() - started)
        save_result(NAME, results, out_dir)
        print(f"D={head_dim} N={n} causal={causal} done at {results['seconds']} s: " + ", ".join(
            f"{r['method']} {r['tflops']:.0f}" for r in rows if r["tflops"]), flush=True)
    results["autotune"] = autotune_choices()
    results["seconds"] = round(time.perf_counter() - started)
    save_result(NAME, results, out_dir)
    plot(results, out_dir / f"{NAME}.png")
    env = results["environment"]
    print(f"\n{env['card']} | torch {env['torch']} | triton {env['triton']} | CUDA {env['cuda']} | bf16")
    print(f"\nTFLOP/s, forward:\n{table_text(results)}\n")
    print("\n".join(ratio_lines(results)))
    print(f"max spread of the {RUNS} runs: {max(r['spread'] for r in results['rows'] if r['spread'] is not None):.1%}")
    print(f"total {results['seconds']} s")


if __name__ == "__main__":
    main()
