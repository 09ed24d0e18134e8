"""Chapter 07/09 on a real GPU: the card's own numbers, and the unfused attention chain vs a fused kernel.

    export PYTHONPATH=$PWD; python3 benchmarks/hbm_traffic.py            # writes attention_lab/results/
    python3 benchmarks/hbm_traffic.py --plot-only attention_lab/results/hbm_traffic.json   # redraw the PNG

Measures, in one run:
1. what the driver reports (name, compute capability, SMs, L2, memory) next to the datasheet row;
2. copy bandwidth (device-to-device copy, bytes read + written) and the bf16/fp16 matmul ceiling;
3. the four kernels of standard attention (QKᵀ·scale → causal mask → softmax → ·V, fp16) timed one by one
   against the traffic model's bytes / measured bandwidth;
4. the whole unfused chain vs PyTorch SDPA (FlashAttention backend) over N, forward and forward+backward,
   with the bytes each must move per the model; and the paper's GPT-2-medium shape (B=64, H=16, N=1024, d=64);
5. peak extra memory vs N of the materialised reference, the tiled PyTorch FlashAttention of chapter 09 and
   SDPA, plus a correctness check of the tiled code in fp16 on the GPU.
Writes ``hbm_traffic.json`` (card, versions, shapes, every number) and ``hbm_traffic.png``; prints a table last.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attention_lab.attention import scaled_dot_product_attention  # noqa: E402
from attention_lab.book.results import RESULTS_DIR  # noqa: E402
from attention_lab.costs.timing import peak_memory, time_function  # noqa: E402
from attention_lab.costs.gpu_facts import detect_device, measure_copy_bandwidth, measure_matmul_flops  # noqa: E402
from attention_lab.costs.hbm_traffic import (fused_forward_bytes, total_bytes, unfused_attention_chain,  # noqa: E402
                                             unfused_backward_kernels, unfused_forward_kernels)


def versions() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        info["driver"] = None
    return info


DEVICE = "cuda"


def sdpa_flash(q, k, v, causal=True):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if q.device.type != "cuda":  # --cpu-smoke only
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)


def time_steps(batch, heads, n, d, dtype, bandwidth):
    """Time each kernel of the unfused chain on its own; compare with model bytes / bandwidth."""
    dev = DEVICE
    bh = batch * heads
    q3, k3, v3 = (torch.randn(bh, n, d, device=dev, dtype=dtype) for _ in range(3))
    blocked = torch.ones(n, n, dtype=torch.bool, device=dev).triu(1)
    empty = torch.empty(1, 1, 1, device=dev, dtype=dtype)
    scores = torch.baddbmm(empty, q3, k3.transpose(1, 2), beta=0.0, alpha=d**-0.5)
    weights = torch.softmax(scores, -1)
    steps = {
        "S = QKᵀ": lambda: torch.baddbmm(empty, q3, k3.transpose(1, 2), beta=0.0, alpha=d**-0.5),
        "mask": lambda: scores.masked_fill_(blocked, float("-inf")),
        "softmax": lambda: torch.softmax(scores, -1),
        "O = PV": lambda: torch.bmm(weights, v3),
    }
    model = {kernel.name: kernel for kernel in unfused_forward_kernels(n, d, bh, dtype.itemsize)}
    rows = []
    for name, fn in steps.items():
        seconds = time_function(fn, warmup=3, repeats=20, device=dev)
        kernel = model[name]
        rows.append({"kernel": name, "bytes_model": kernel.bytes_moved, "flops": kernel.flops,
                     "seconds": seconds, "predicted_seconds": kernel.bytes_moved / bandwidth,
                     "effective_bandwidth": kernel.bytes_moved / seconds})
    return rows


def time_chain_vs_sdpa(batch, heads, n, d, dtype, bandwidth, backward=True):
    dev = DEVICE
    q, k, v = (torch.randn(batch, heads, n, d, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
    blocked = torch.ones(n, n, dtype=torch.bool, device=dev).triu(1)
    grad = torch.randn(batch, heads, n, d, device=dev, dtype=dtype)
    bh, e = batch * heads, dtype.itemsize
    with torch.no_grad():
        err = (unfused_attention_chain(q, k, v, blocked).float() - sdpa_flash(q, k, v).float()).abs().max().item()
    row = {"batch": batch, "heads": heads, "n": n, "d": d, "max_abs_diff_chain_vs_sdpa": err}
    with torch.no_grad():
        row["chain_fwd_s"] = time_function(lambda: unfused_attention_chain(q, k, v, blocked), 3, 10, dev)
        row["sdpa_fwd_s"] = time_function(lambda: sdpa_flash(q, k, v), 3, 10, dev)
    row["chain_fwd_bytes_model"] = total_bytes(unfused_forward_kernels(n, d, bh, e))
    row["fused_fwd_bytes_model"] = fused_forward_bytes(n, d, bh, e, save_lse=True)
    row["chain_fwd_predicted_s"] = row["chain_fwd_bytes_model"] / bandwidth
    row["fused_fwd_predicted_s"] = row["fused_fwd_bytes_model"] / bandwidth
    if backward:
        def chain_fb():
            out = unfused_attention_chain(q, k, v, blocked)
            torch.autograd.grad(out, (q, k, v), grad)

        def sdpa_fb():
            out = sdpa_flash(q, k, v)
            torch.autograd.grad(out, (q, k, v), grad)

        row["chain_fwd_bwd_s"] = time_function(chain_fb, 2, 5, dev)
        row["sdpa_fwd_bwd_s"] = time_function(sdpa_fb, 2, 5, dev)
        row["chain_bwd_bytes_model"] = total_bytes(unfused_backward_kernels(n, d, bh, e))
    return row


def memory_vs_n(lengths, heads, d, dtype):
    from attention_lab.flash.tiled import tiled_attention

    dev = DEVICE
    rows = []
    for n in lengths:
        q, k, v = (torch.randn(1, heads, n, d, device=dev, dtype=dtype) for _ in range(3))
        row = {"n": n, "heads": heads, "d": d}
        candidates = {"reference_bytes": lambda: scaled_dot_product_attention(q, k, v, causal=True),
                      "tiled_bytes": lambda: tiled_attention(q, k, v, causal=True, block_q=128, block_k=128),
                      "sdpa_flash_bytes": lambda: sdpa_flash(q, k, v)}
        for key, fn in candidates.items():
            try:
                row[key] = peak_memory(fn, dev)
            except torch.cuda.OutOfMemoryError:
                row[key] = None  # recorded as missing, not as a number
            if dev == "cuda":
                torch.cuda.empty_cache()
        row["output_bytes"] = q.numel() * q.element_size()
        rows.append(row)
        del q, k, v
    return rows


def check_tiled_on_gpu():
    from attention_lab.flash.tiled import tiled_attention

    results = []
    for dtype in (torch.float16, torch.float32):
        q, k, v = (torch.randn(2, 4, 333, 64, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
        out = tiled_attention(q, k, v, causal=True, block_q=64, block_k=48)
        ref = scaled_dot_product_attention(q.double(), k.double(), v.double(), causal=True)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), g)
        ref_grads = torch.autograd.grad(ref, (q, k, v), g.double())
        results.append({"dtype": str(dtype), "out_max_err": (out.double() - ref).abs().max().item(),
                        "grad_max_err": max((a.double() - b).abs().max().item() for a, b in zip(grads, ref_grads))})
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attention_lab.costs.hbm_traffic import plot_chain_vs_fused, plot_kernel_steps

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    plot_kernel_steps(results, axes[0])
    plot_chain_vs_fused(results, axes[1])
    fig.suptitle(f"{results['device']['name']} — torch {results['versions']['torch']}, CUDA {results['versions']['cuda']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument("--plot-only", default=None, help="redraw the PNG from an existing JSON")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: checks the script runs")
    args = parser.parse_args()
    if args.plot_only:
        path = Path(args.plot_only)
        plot(json.loads(path.read_text()), path.with_suffix(".png"))
        return
    global DEVICE
    smoke = args.cpu_smoke
    if smoke:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        print("no GPU: this benchmark needs CUDA (chapter 07 plots the committed results instead)")
        return
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    info = detect_device()
    if smoke:
        from attention_lab.costs.gpu_facts import DeviceInfo

        info = DeviceInfo(True, "CPU smoke test", (0, 0), 0, 0.0)
    results = {"device": {"name": info.name, "compute_capability": info.compute_capability, "sms": info.sms,
                          "memory_gib": info.memory_gib, "l2_mib": info.l2_mib, "warp_size": info.warp_size,
                          "shared_memory_per_block_kib": info.shared_memory_per_block_kib,
                          "table_row": info.spec.name if info.spec else None},
               "versions": versions()}
    print(info.describe(), flush=True)
    sizes = (2**20, 2**22) if smoke else (2**26, 2**28, 2**30, 2**31)
    results["copy_bandwidth_bytes_s"] = {str(size): measure_copy_bandwidth(size, DEVICE, repeats=20) for size in sizes}
    bandwidth = results["copy_bandwidth_bytes_s"][str(sizes[-2])]
    results["copy_bandwidth_used_bytes"] = sizes[-2]
    mm = 256 if smoke else 8192
    results["matmul_flops"] = {"bf16": measure_matmul_flops(mm, torch.bfloat16, DEVICE),
                               "fp16": measure_matmul_flops(mm, torch.float16, DEVICE)}
    print(f"copy {bandwidth / 1e12:.2f} TB/s, bf16 matmul {results['matmul_flops']['bf16'] / 1e12:.0f} TFLOP/s", flush=True)
    dtype = torch.float32 if smoke else torch.float16
    results["dtype"] = str(dtype)
    step_shape = dict(batch=1, heads=2, n=64, d=16) if smoke else dict(batch=4, heads=16, n=4096, d=64)
    results["steps"] = {**step_shape, "rows": time_steps(**step_shape, dtype=dtype, bandwidth=bandwidth)}
    lengths = (32, 64) if smoke else (512, 1024, 2048, 4096, 8192)
    results["chain_vs_sdpa"] = [time_chain_vs_sdpa(1 if smoke else 4, 2 if smoke else 16, n, 16 if smoke else 64, dtype,
                                                   bandwidth) for n in lengths]
    print("chain vs sdpa done", flush=True)
    gpt2 = dict(batch=2, heads=2, n=64, d=16) if smoke else dict(batch=64, heads=16, n=1024, d=64)
    results["gpt2_medium"] = time_chain_vs_sdpa(**gpt2, dtype=dtype, bandwidth=bandwidth)
    results["memory_vs_n"] = memory_vs_n((64, 128) if smoke else (1024, 2048, 4096, 8192, 16384), 8, 64, dtype)
    results["tiled_check"] = check_tiled_on_gpu()
    results["elapsed_s"] = time.time() - started
    json_path = out_dir / "hbm_traffic.json"
    json_path.write_text(json.dumps(results, indent=1))
    try:
        plot(results, out_dir / "hbm_traffic.png")
    except Exception as error:  # matplotlib missing on the GPU machine: redraw with --plot-only
        print(f"plot skipped ({error})")
    print(f"\n{info.name}: {info.sms} SMs, copy {bandwidth / 1e12:.2f} TB/s (read + write)")
    print(f"{'kernel':>10} {'model MB':>10} {'time ms':>9} {'model ms':>9} {'GB/s':>7}")
    for row in results["steps"]["rows"]:
        print(f"{row['kernel']:>10} {row['bytes_model'] / 1e6:10.0f} {row['seconds'] * 1e3:9.3f} "
              f"{row['predicted_seconds'] * 1e3:9.3f} {row['effective_bandwidth'] / 1e9:7.0f}")
    print(f"{'N':>6} {'chain fwd ms':>12} {'sdpa fwd ms':>11} {'chain f+b':>10} {'sdpa f+b':>9} {'diff':>8}")
    for row in results["chain_vs_sdpa"] + [results["gpt2_medium"]]:
        print(f"{row['n']:>6} {row['chain_fwd_s'] * 1e3:12.3f} {row['sdpa_fwd_s'] * 1e3:11.3f} "
              f"{row['chain_fwd_bwd_s'] * 1e3:10.3f} {row['sdpa_fwd_bwd_s'] * 1e3:9.3f} {row['max_abs_diff_chain_vs_sdpa']:8.1e}")
    for row in results["memory_vs_n"]:
        print(f"N={row['n']}: reference {row['reference_bytes'] / 2**20:.0f} MiB, tiled {row['tiled_bytes'] / 2**20:.0f} MiB,"
              f" sdpa {row['sdpa_flash_bytes'] / 2**20:.0f} MiB")
    print(results["tiled_check"], f"elapsed {results['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
