"""MLA decode on a GPU: naive (decompress the latent cache every step) vs absorbed (attend over the latents).

One attention layer with DeepSeek-V2's sizes (arXiv 2405.04434 §3.1.2: d_model 5120, n_h 128 heads of
d_h 128, d_c 512, d_c' 1536, d_h^R 64), bf16, batch 4, one new token per step with 1k … 32k tokens
already cached. Each step is ``MultiHeadLatentAttention.forward`` on a ``LatentCache`` — the library's
own code. Paths: ``naive``; ``absorbed`` with PyTorch's SDPA as the attention core (``backend='torch'``);
``absorbed_triton`` with the split-K latent kernel of :mod:`attention_lab.kernels.latent_decode` (skipped with
``--no-triton``, or recorded as ``triton_error`` if it fails). For scale, the attention core of plain
MHA with the same heads over a full per-head K/V cache (SDPA) is timed too.

Checks first (bf16 paths vs an fp32 run of the same layer), then times every context (GPU time of a
CUDA-graph replay, and eager time with Python launching each kernel), writes ``mla_decode.json`` and
``mla_decode.png`` and prints a table.

Then the latent kernel alone (``kernel_rows``): :func:`attention_lab.kernels.latent_decode.latent_decode` on
absorbed queries (B=4, 128 heads, d_c + d_R = 576) and a cache of each context, with the device's own tile and
the 16-head tile (``--sweep``: more tiles), 3 interleaved runs each: the cache bytes read per second as a
fraction of the copy bandwidth measured in the same run, and TFLOP/s (2·B·H·N·(2·d_c + d_R) FLOPs). At 128
heads the kernel does ~240 FLOPs per cache byte, above the H100/H200 ridge point (~200), so its time is set
by the tensor cores as much as by memory.

    python benchmarks/mla_decode.py                 # on a CUDA GPU; results -> attention_lab/results/
    python benchmarks/mla_decode.py --out $OUT      # on the lent device
    python benchmarks/mla_decode.py --quick         # CPU smoke test of the script on tiny sizes
    python benchmarks/mla_decode.py --plot-only     # redraw mla_decode.png from mla_decode.json (+ mla_kernel_sweep.json)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # decode_common, beside this file
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # attention_lab, when not installed

from attention_lab.book.results import RESULTS_DIR  # noqa: E402
from attention_lab.mla import DEEPSEEK_V2, MultiHeadLatentAttention  # noqa: E402

TINY = dict(d_model=64, n_heads=4, head_dim=16, kv_latent_dim=32, q_latent_dim=48, rope_dim=8)
CONTEXTS = [1024, 4096, 8192, 16384, 32768]
BATCH = 4


def make_layer(sizes: dict, mode: str, device: torch.device, dtype: torch.dtype,
               triton_decode: bool = False) -> MultiHeadLatentAttention:
    torch.manual_seed(0)
    layer = MultiHeadLatentAttention(sizes["d_model"], sizes["n_heads"], sizes["kv_latent_dim"], sizes["rope_dim"],
                                     head_dim=sizes["head_dim"], q_latent_dim=sizes["q_latent_dim"], mode=mode,
                                     backend="torch", triton_decode=triton_decode)
    return layer.to(device=device, dtype=dtype).eval()


def filled_cache(layer: MultiHeadLatentAttention, batch: int, context: int, seed: int, dtype: torch.dtype):
    """A cache holding ``context - 1`` random rows (latents of RMS 1, like the RMSNorm output)."""
    device = layer.out_proj.weight.device
    cache = layer.make_cache(batch, context, device, dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    cache.rows.normal_(generator=generator)
    cache.length = context - 1
    return cache


def step_fn(layer, cache, x):
    """One decode step at a fixed position: rewind the fill pointer, append one token, attend over ``context`` rows."""
    def step():
        cache.length = cache.max_len - 1
        return layer(x, cache=cache)  # (B, 1, d_model)
    return step


def bytes_and_flops(sizes: dict, batch: int, context: int, weight_bytes: int, path: str) -> dict:
    """The bytes each path must move per step (each tensor read or written once) and its matmul FLOPs."""
    n_heads, head_dim, latent, rope = sizes["n_heads"], sizes["head_dim"], sizes["kv_latent_dim"], sizes["rope_dim"]
    element = 2  # bf16
    cache = batch * context * (latent + rope) * element
    if path.startswith("absorbed"):  # read the cached rows once; scores and context over d_c + d_R and d_c per head
        return dict(bytes=cache + weight_bytes, cache_bytes=cache,
                    flops=2 * batch * n_heads * context * ((latent + rope) + latent))
    if path == "naive":  # also write the decompressed keys [k^C; k^R] and values, then read them back
        keys = batch * n_heads * context * (head_dim + rope) * element
        values = batch * n_heads * context * head_dim * element
        return dict(bytes=cache + weight_bytes + 2 * (keys + values), cache_bytes=cache,
                    flops=2 * batch * context * latent * n_heads * 2 * head_dim
                    + 2 * batch * n_heads * context * ((head_dim + rope) + head_dim))
    cache = 2 * batch * n_heads * context * head_dim * element  # plain MHA: per-head K and V
    return dict(bytes=cache, cache_bytes=cache, flops=4 * batch * n_heads * context * head_dim)


def check_correctness(sizes: dict, device: torch.device, context: int, triton: bool) -> dict:
    """bf16 absorbed vs bf16 naive vs the same layer and cache in fp32: relative errors of one decode step.

    With ``triton``, also the Triton latent kernel; if it fails, the error is recorded (``triton_error``)
    and the other paths are still timed."""
    layer32 = make_layer(sizes, "naive", device, torch.float32)
    cache32 = filled_cache(layer32, 2, context, seed=1, dtype=torch.float32)
    x32 = torch.randn(2, 1, sizes["d_model"], device=device, generator=torch.Generator(device=device).manual_seed(2))
    with torch.no_grad():
        reference = step_fn(layer32, cache32, x32)().double()
        absorbed32 = copy.deepcopy(layer32)
        absorbed32.mode = "absorbed"
        outputs = {"fp32 absorbed": step_fn(absorbed32, cache32, x32)()}
        triton_error = None
        for mode, triton_decode in (("naive", False), ("absorbed", False)) + ((("absorbed", True),) if triton else ()):
            layer = copy.deepcopy(layer32).to(torch.bfloat16)
            layer.mode, layer.triton_decode = mode, triton_decode
            cache = layer.make_cache(2, context, device, torch.bfloat16)
            cache.rows.copy_(cache32.rows)
            try:
                outputs[f"bf16 {mode}{' (Triton)' if triton_decode else ''}"] = step_fn(layer, cache, x32.to(torch.bfloat16))()
            except Exception as error:  # only the optional Triton path may fail here
                if not triton_decode:
                    raise
                triton_error = f"{type(error).__name__}: {error}"
                print(f"Triton latent kernel failed, timing the other paths: {triton_error}")
    errors = {name: float((out.double() - reference).norm() / reference.norm()) for name, out in outputs.items()}
    errors["bf16 absorbed vs bf16 naive"] = float((outputs["bf16 absorbed"].double() - outputs["bf16 naive"].double()).norm()
                                                  / outputs["bf16 naive"].double().norm())
    return {"context": context, "batch": 2, "relative_error_vs_fp32_naive": errors, "triton_error": triton_error}


def time_call(calls: list, device: torch.device) -> tuple[float, float]:
    """(graph seconds, eager seconds) per call: GPU time of a CUDA-graph replay, and eager wall time."""
    if device.type != "cuda":
        from attention_lab.costs.timing import time_function

        seconds = time_function(calls[0], warmup=1, repeats=3, device=device)
        return seconds, seconds
    from decode_common import time_eager, time_graph

    graph = time_graph(calls)
    eager = time_eager(calls[0], repeats=10)
    return graph, eager


def run(sizes: dict, contexts: list[int], batch: int, device: torch.device, paths: list[str]) -> dict:
    dtype = torch.bfloat16
    layers = {path: make_layer(sizes, "naive" if path == "naive" else "absorbed", device, dtype,
                               triton_decode=path == "absorbed_triton") for path in paths}
    for path in paths:
        layers[path].load_state_dict(layers["naive"].state_dict())
    weight_bytes = sum(p.numel() * p.element_size() for p in layers["naive"].parameters())
    x = torch.randn(batch, 1, sizes["d_model"], device=device, dtype=dtype)
    rows = []
    for context in contexts:
        cache_bytes = batch * context * (sizes["kv_latent_dim"] + sizes["rope_dim"]) * 2
        copies = 1 if device.type != "cuda" else max(1, -(-(256 * 2**20) // cache_bytes))  # rotate past the L2
        caches = [filled_cache(layers["naive"], batch, context, seed=i, dtype=dtype) for i in range(copies)]
        with torch.no_grad():
            for path in paths:
                calls = [step_fn(layers[path], cache, x) for cache in caches]
                graph_s, eager_s = time_call(calls, device)
                rows.append(dict(context=context, path=path, graph_ms=graph_s * 1e3, eager_ms=eager_s * 1e3,
                                 **bytes_and_flops(sizes, batch, context, weight_bytes, path)))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            del caches
            # Plain MHA with the same heads for scale: one query per head over a full per-head K/V cache.
            shape = (batch, sizes["n_heads"], context, sizes["head_dim"])
            k, v = torch.randn(shape, device=device, dtype=dtype), torch.randn(shape, device=device, dtype=dtype)
            q = torch.randn(batch, sizes["n_heads"], 1, sizes["head_dim"], device=device, dtype=dtype)
            graph_s, eager_s = time_call([lambda: F.scaled_dot_product_attention(q, k, v)], device)
            rows.append(dict(context=context, path="mha_sdpa", graph_ms=graph_s * 1e3, eager_ms=eager_s * 1e3,
                             **bytes_and_flops(sizes, batch, context, 0, "mha")))
            del k, v
        for row in rows[-len(paths) - 1:]:
            row["achieved_GBps"] = row["bytes"] / (row["graph_ms"] * 1e-3) / 1e9
        if device.type == "cuda":
            torch.cuda.empty_cache()
    speedups = {}
    for context in contexts:
        ms = {r["path"]: r["graph_ms"] for r in rows if r["context"] == context}
        eager = {r["path"]: r["eager_ms"] for r in rows if r["context"] == context}
        speedups[str(context)] = {"graph": ms["naive"] / ms["absorbed"], "eager": eager["naive"] / eager["absorbed"]}
        if "absorbed_triton" in ms:
            speedups[str(context)].update(triton_graph=ms["naive"] / ms["absorbed_triton"],
                                          triton_eager=eager["naive"] / eager["absorbed_triton"])
    return {"rows": rows, "speedup_absorbed_over_naive": speedups, "layer_weight_bytes": weight_bytes}


def kernel_configs(capability: int, sweep: bool) -> dict:
    """The latent-kernel tiles to time: the library's choice for this device, the 16-head tile, more with ``sweep``."""
    from attention_lab.kernels.latent_decode import LatentDecodeConfig, latent_decode_config

    configs = {"library": latent_decode_config(capability), "block_h16": LatentDecodeConfig(16, 32, 4, 2)}
    if sweep and capability >= 90:
        configs.update({"h64_t32_w8_s3": LatentDecodeConfig(64, 32, 8, 3, True),
                        "h64_t16_w8_s3": LatentDecodeConfig(64, 16, 8, 3, True),
                        "h64_t32_w8_s2_queries_first": LatentDecodeConfig(64, 32, 8, 2, False),
                        "h32_t32_w4_s2": LatentDecodeConfig(32, 32, 4, 2, True)})
    return configs


def time_kernel(sizes: dict, contexts: list[int], batch: int, sweep: bool) -> dict:
    """The latent kernel alone, per tile and context: ms (median of 3 runs), cache TB/s, fraction of copy, TFLOP/s."""
    from decode_common import copy_bandwidth, relative_error, summary, time_runs

    from attention_lab.kernels.common import device_capability
    from attention_lab.kernels.latent_decode import latent_decode

    copy = copy_bandwidth()
    n_heads, latent, rope = sizes["n_heads"], sizes["kv_latent_dim"], sizes["rope_dim"]
    scale = (sizes["head_dim"] + rope) ** -0.5
    configs = kernel_configs(device_capability("cuda"), sweep)
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for context in contexts:
        cache_bytes = batch * context * (latent + rope) * 2
        copies = max(1, -(-(256 * 2**20) // cache_bytes))
        q = torch.randn(batch, n_heads, latent + rope, device="cuda", generator=g).bfloat16() * 0.05
        caches = [torch.randn(batch, context, latent + rope, device="cuda", generator=g).bfloat16() for _ in range(copies)]
        reference = torch.softmax(q.double() @ caches[0].double().transpose(1, 2) * scale, -1) @ caches[0].double()[..., :latent]
        errors = {name: relative_error(latent_decode(q, caches[0], latent, scale, config=c), reference)
                  for name, c in configs.items()}
        times = time_runs({name: [lambda rows_=rows_, c=c: latent_decode(q, rows_, latent, scale, config=c)
                                  for rows_ in caches] for name, c in configs.items()})
        flops = 2 * batch * n_heads * context * (2 * latent + rope)
        for name, runs in times.items():
            stats = summary(runs)
            rows.append(dict(context=context, config=name, tile=vars(configs[name]), ms=stats["median"] * 1e3,
                             runs_ms=[t * 1e3 for t in runs], spread=stats["spread"], cache_bytes=cache_bytes,
                             tb_s=cache_bytes / stats["median"] / 1e12, of_copy=cache_bytes / stats["median"] / copy,
                             tflops=flops / stats["median"] / 1e12, relative_error=errors[name]))
            print(f"latent kernel N={context:6d} {name:28s} {rows[-1]['ms']:.4f} ms ±{stats['spread']:.1%} "
                  f"{rows[-1]['tb_s']:.2f} TB/s ({rows[-1]['of_copy']:.0%} of copy) {rows[-1]['tflops']:.0f} TFLOP/s "
                  f"err {errors[name]:.1e}", flush=True)
        del caches
        torch.cuda.empty_cache()
    return {"kernel_rows": rows, "kernel_copy_tb_s": copy / 1e12, "kernel_batch": batch}


def plot(result: dict, path: Path, kernel: dict | None = None) -> None:
    """Save the figure of :func:`attention_lab.mla_study.plot_mla_decode` (the one chapter 12 draws) as a PNG;
    ``kernel``: a separate latent-kernel sweep (``mla_kernel_sweep.json``) for its third panel."""
    import matplotlib

    matplotlib.use("Agg")
    from attention_lab.mla_study import plot_mla_decode

    plot_mla_decode(result, kernel).savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and contexts (CPU smoke test)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON in --out")
    parser.add_argument("--no-triton", action="store_true", help="skip the Triton latent-decode kernel")
    parser.add_argument("--sweep", action="store_true", help="time more tiles of the latent kernel alone")
    parser.add_argument("--kernel-only", action="store_true", help="only the latent kernel alone (tuning)")
    args = parser.parse_args()
    if args.plot_only:
        sweep = args.out / "mla_kernel_sweep.json"
        plot(json.loads((args.out / "mla_decode.json").read_text()), args.out / "mla_decode.png",
             json.loads(sweep.read_text()) if sweep.exists() else None)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.quick:
        sys.exit("mla_decode.py needs a CUDA GPU (use --quick for a CPU smoke test of the script)")
    sizes, contexts = (TINY, [64, 256]) if args.quick else (DEEPSEEK_V2, CONTEXTS)
    started = time.perf_counter()
    if device.type == "cuda":
        from decode_common import environment

        env = environment()
    else:
        import platform

        env = {"card": "CPU (smoke test)", "torch": torch.__version__, "python": platform.python_version()}
    triton = not args.no_triton and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
    if args.kernel_only:
        result = {"benchmark": "mla_decode_kernel", "environment": env, "sizes": sizes,
                  **time_kernel(sizes, contexts, BATCH, args.sweep)}
        args.out.mkdir(parents=True, exist_ok=True)
        from decode_common import save_json

        save_json(args.out / "mla_kernel_sweep.json", result)
        return
    correctness = check_correctness(sizes, device, context=contexts[1], triton=triton)
    paths = ["naive", "absorbed"] + (["absorbed_triton"] if triton and correctness["triton_error"] is None else [])
    result = {"benchmark": "mla_decode", "environment": env, "sizes": sizes, "batch": BATCH, "dtype": "bfloat16",
              "attention_backend": "torch (F.scaled_dot_product_attention)", "correctness": correctness}
    result.update(run(sizes, contexts, BATCH, device, paths))
    if device.type == "cuda" and "absorbed_triton" in paths:
        result.update(time_kernel(sizes, contexts, BATCH, args.sweep))
    result["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    from decode_common import save_json

    save_json(args.out / "mla_decode.json", result)
    plot(result, args.out / "mla_decode.png")
    print(f"{env.get('card')} | torch {env.get('torch')} | triton {env.get('triton', '-')} | CUDA {env.get('cuda', '-')}")
    print("correctness (relative error vs fp32):",
          {k: f"{v:.2e}" for k, v in correctness["relative_error_vs_fp32_naive"].items()})
    print(f"{'context':>8} {'path':>15} {'graph ms':>9} {'eager ms':>9} {'MB moved':>10} {'GB/s':>7}")
    for r in result["rows"]:
        print(f"{r['context']:>8} {r['path']:>15} {r['graph_ms']:>9.3f} {r['eager_ms']:>9.3f} "
              f"{r['bytes'] / 1e6:>10.1f} {r['achieved_GBps']:>7.0f}")
    for context, s in result["speedup_absorbed_over_naive"].items():
        triton_part = (f"; Triton kernel {s['triton_graph']:.1f}x (graph), {s['triton_eager']:.1f}x (eager)"
                       if "triton_graph" in s else "")
        print(f"absorbed over naive at {context}: SDPA core {s['graph']:.1f}x (graph), {s['eager']:.1f}x (eager)"
              + triton_part)


if __name__ == "__main__":
    main()
