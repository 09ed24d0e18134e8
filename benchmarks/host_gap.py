"""GPU diagnostic: how much of an eager forward+backward's measured time is the host's, at flex.py's shapes.

    export PYTHONPATH=$PWD; python3 benchmarks/host_gap.py [--json OUT.json] [--ns 1024 2048 4096]

``benchmarks/flex.py`` times forward+backward the way a Python training loop runs it: ``do_bench`` records an
event, the step is launched from Python, another event follows. When the host needs longer to reach a kernel's
launch than the GPU needs for the work queued before it, the GPU waits and the wait is counted. This times the
library (``triton``) and SDPA's cuDNN backend at the same shapes (bf16, B·N = 32k, H·D = 2048) both ways: eagerly
as flex.py does, and replayed from a CUDA graph (the GPU's time alone). The graph's step takes the gradients with
``torch.autograd.grad`` so that nothing is accumulated into ``.grad`` inside the graph (which would add three
additions to every method's time). 3 interleaved runs per shape, the median reported. Prints a table; ``--json``
also writes every number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import flash as fb  # noqa: E402  (benchmarks/flash.py)
from attention_lab.flash import benchmark_report as br  # noqa: E402

METHODS = ("triton", "sdpa_cudnn")
RUNS = 3


def eager_ms(fn, q, k, v, causal, grad_out) -> float:
    """flex.py's forward+backward timing: do_bench median, L2 flushed, gradients set to None between steps."""
    return fb.median_seconds(lambda: fn(q, k, v, causal).backward(grad_out), grad_to_none=[q, k, v]) * 1e3


def graph_ms(fn, q, k, v, causal, grad_out) -> float:
    """The same step replayed from a CUDA graph: the GPU's time, no host work, no accumulation into ``.grad``."""
    from triton.testing import do_bench_cudagraph

    def step():
        torch.autograd.grad(fn(q, k, v, causal), (q, k, v), grad_out)

    step()
    torch.cuda.synchronize()
    return do_bench_cudagraph(step, rep=100, return_mode="median")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--ns", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[128, 64])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("host_gap.py needs a CUDA GPU")
    dtype = fb.half_dtype()
    fb.precompile_all(args.head_dims, dtype)
    rows = []
    for head_dim in args.head_dims:
        heads = fb.HIDDEN // head_dim
        for n in args.ns:
            batch = fb.TOKENS // n
            for causal in (False, True):
                q, k, v = fb.make_inputs(batch, heads, n, head_dim, dtype, grad=True)
                grad_out = torch.randn_like(q)
                times = {(m, how): [] for m in METHODS for how in ("eager", "graph")}
                for _ in range(RUNS):
                    for method in METHODS:
                        fn = fb.METHODS[method]
                        times[method, "eager"].append(eager_ms(fn, q, k, v, causal, grad_out))
                        times[method, "graph"].append(graph_ms(fn, q, k, v, causal, grad_out))
                flops = br.attention_flops(batch, heads, n, head_dim, causal, "fwd_bwd")
                row = dict(head_dim=head_dim, n=n, batch=batch, heads=heads, causal=causal,
                           ms={f"{m}_{how}": statistics.median(t) for (m, how), t in times.items()},
                           runs_ms={f"{m}_{how}": t for (m, how), t in times.items()})
                row["tflops"] = {name: flops / ms / 1e9 for name, ms in row["ms"].items()}
                ms = row["ms"]
                row["vs_cudnn_eager"] = ms["sdpa_cudnn_eager"] / ms["triton_eager"]
                row["vs_cudnn_graph"] = ms["sdpa_cudnn_graph"] / ms["triton_graph"]
                rows.append(row)
                print(f"D={head_dim:3} N={n:5} {'causal' if causal else 'full  '}: triton eager {ms['triton_eager']:.3f} "
                      f"graph {ms['triton_graph']:.3f} ms | cuDNN eager {ms['sdpa_cudnn_eager']:.3f} graph "
                      f"{ms['sdpa_cudnn_graph']:.3f} ms | triton / cuDNN eager {row['vs_cudnn_eager']:.3f}, "
                      f"graph {row['vs_cudnn_graph']:.3f}", flush=True)
                del q, k, v, grad_out
                torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps({"environment": fb.environment(), "dtype": str(dtype).removeprefix("torch."),
                                         "tokens": fb.TOKENS, "hidden": fb.HIDDEN, "runs": RUNS, "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()
