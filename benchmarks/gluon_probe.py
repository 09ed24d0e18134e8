"""GPU probe of the Gluon Hopper forward (attention_lab/flash/gluon_attention.py): correctness first, then a
quick timing of its tiles against the teaching kernel and SDPA's cuDNN and flash backends (one process, 3
interleaved do_bench medians). Prints only; ``--json PATH`` also writes what it measured.

    export PYTHONPATH=$PWD; python3 benchmarks/gluon_probe.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from attention_lab.flash import gluon_attention as ga  # noqa: E402
from attention_lab.flash import triton_attention as ta  # noqa: E402

CASES = [  # (B, H, Hkv, Nq, Nk, D, causal, layout, dtype)
    (2, 4, 4, 1000, 1000, 128, False, "bhnd", torch.bfloat16),
    (2, 4, 4, 1000, 1000, 128, True, "bhnd", torch.bfloat16),
    (1, 8, 2, 300, 777, 128, True, "bhnd", torch.float16),
    (1, 8, 1, 777, 300, 64, True, "bhnd", torch.bfloat16),
    (2, 4, 4, 513, 513, 64, False, "bnhd", torch.float16),
    (1, 2, 2, 64, 64, 128, True, "bnhd", torch.bfloat16),
    (1, 16, 16, 4096, 4096, 128, True, "bhnd", torch.bfloat16),
    (4, 16, 16, 2048, 2048, 64, True, "bhnd", torch.bfloat16),  # many programs at once: races show here
    (4, 16, 4, 2000, 2000, 128, False, "bhnd", torch.bfloat16),
]


def make(b, h, hkv, nq, nk, d, layout, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    if layout == "bnhd":
        q = torch.randn(b, nq, h, d, device="cuda", dtype=dtype, generator=g).transpose(1, 2)
        k = torch.randn(b, nk, hkv, d, device="cuda", dtype=dtype, generator=g).transpose(1, 2)
        v = torch.randn(b, nk, hkv, d, device="cuda", dtype=dtype, generator=g).transpose(1, 2)
    else:
        q = torch.randn(b, h, nq, d, device="cuda", dtype=dtype, generator=g)
        k = torch.randn(b, hkv, nk, d, device="cuda", dtype=dtype, generator=g)
        v = torch.randn(b, hkv, nk, d, device="cuda", dtype=dtype, generator=g)
    return q, k, v


def reference(q, k, v, causal):
    """float32 attention with queries aligned to the end of the keys; rows that see no key give 0."""
    from attention_lab.attention import scaled_dot_product_attention

    return scaled_dot_product_attention(q.float(), k.float(), v.float(), causal=causal)


def check(report: dict) -> bool:
    all_ok = True
    for case in CASES:
        b, h, hkv, nq, nk, d, causal, layout, dtype = case
        q, k, v = make(b, h, hkv, nq, nk, d, layout, dtype)
        for tile in ({}, {"BLOCK_N": 128, "NUM_STAGES": 2}, {"BLOCK_N": 64, "NUM_STAGES": 4},
                     {"BLOCK_N": 128, "NUM_STAGES": 2, "WARP_SPECIALIZE": True},
                     {"BLOCK_N": 64, "NUM_STAGES": 3, "WARP_SPECIALIZE": True}):
            name = f"{case[:8]} {str(dtype)[6:]} {tile}"
            try:
                reason = ga.unsupported_reason(q, k, v, None, None)
                if reason:
                    report["check"].append({"case": name, "skipped": reason})
                    print("skip", name, reason)
                    continue
                out, lse = ga.flash_attention_forward_hopper(q, k, v, causal, d ** -0.5, tile)
                ref = reference(q, k, v, causal)
                out_t, lse_t = ta.flash_attention_forward(q, k, v, None, causal, None, None)
                err = (out.float() - ref).abs().max().item()
                err_t = (out_t.float() - ref).abs().max().item()
                finite = torch.isfinite(lse_t)
                lse_err = (lse[finite] - lse_t[finite]).abs().max().item() if finite.any() else 0.0
                lse_inf_same = bool(torch.equal(torch.isinf(lse), torch.isinf(lse_t)))
                ok = err <= 2 * err_t + 1e-3 and lse_err < 1e-2 and lse_inf_same
                all_ok &= ok
                report["check"].append({"case": name, "max_err": err, "teaching_max_err": err_t, "lse_err": lse_err,
                                        "lse_inf_same": lse_inf_same, "ok": ok})
                print(f"{'ok ' if ok else 'BAD'} {name}: max|gluon-ref| {err:.2e} (teaching {err_t:.2e}), "
                      f"lse {lse_err:.1e}, inf rows same {lse_inf_same}", flush=True)
            except Exception as error:  # report and go on: the point of a probe
                all_ok = False
                report["check"].append({"case": name, "error": repr(error)[:500]})
                print("ERROR", name, repr(error)[:2000])
                traceback.print_exc(limit=4)
    return all_ok


def timing(report: dict, quick: bool, shapes: list | None = None) -> None:
    """Every tile of both Gluon kernels beside the teaching kernel (``triton``, ``hopper_path=False``) and SDPA's
    cuDNN and flash backends at each (D, N) of ``shapes`` (default: the headline shapes), causal and not."""
    from triton.testing import do_bench

    if shapes is None:
        shapes = [(128, 4096), (128, 16384), (64, 4096), (128, 1024)] if not quick else [(128, 4096)]
    for d, n in shapes:
        for causal in (False, True):
            h = 2048 // d
            b = 32768 // n
            q, k, v = make(b, h, h, n, n, d, "bhnd", torch.bfloat16)
            flops = 4 * b * h * n * n * d / (2 if causal else 1)
            methods = {"triton": lambda: ta.flash_attention_forward(q, k, v, None, causal, None, None, hopper_path=False)}
            for ws in (False, True):
                for bn in (64, 128):
                    for stages in (2, 3, 4):
                        if (d == 128 and bn == 128 and stages > 2) or (ws and stages == 4):
                            continue
                        tile = {"BLOCK_N": bn, "NUM_STAGES": stages, "WARP_SPECIALIZE": ws}
                        methods[f"gluon{'_ws' * ws}_{bn}_{stages}"] = (
                            lambda tile=tile: ga.flash_attention_forward_hopper(q, k, v, causal, d ** -0.5, tile))
            for backend, name in ((SDPBackend.CUDNN_ATTENTION, "cudnn"), (SDPBackend.FLASH_ATTENTION, "sdpa_flash")):
                def run(backend=backend):
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                methods[name] = run
            runs = {m: [] for m in methods}
            for _ in range(3):
                for m, fn in methods.items():
                    try:
                        runs[m].append(do_bench(fn, warmup=10, rep=40, return_mode="median"))
                    except Exception as error:
                        runs[m].append(float("nan"))
                        print("  ", m, "failed:", repr(error)[:300])
            row = {"d": d, "n": n, "b": b, "h": h, "causal": causal,
                   "tflops": {m: flops / (statistics.median(r) * 1e-3) / 1e12 for m, r in runs.items()},
                   "runs_ms": runs}
            report["timing"].append(row)
            best = max((m for m in row["tflops"] if m.startswith("gluon")), key=lambda m: row["tflops"][m])
            print(f"D={d} N={n} causal={causal}: " + ", ".join(f"{m} {t:.0f}" for m, t in row["tflops"].items())
                  + f" | best gluon {best}: {row['tflops'][best] / row['tflops']['cudnn']:.2f}x cuDNN, "
                  f"{row['tflops'][best] / row['tflops']['triton']:.2f}x teaching", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shapes", nargs="+", metavar="D:N", help="time only these, e.g. 64:1024 64:2048")
    parser.add_argument("--no-check", action="store_true", help="skip the correctness cases")
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in shape.split(":")) for shape in args.shapes] if args.shapes else None
    started = time.perf_counter()
    report = {"check": [], "timing": [], "card": torch.cuda.get_device_name(),
              "versions": {"torch": torch.__version__, "triton": __import__("triton").__version__}}
    ok = args.no_check or check(report)
    print(f"correctness {'skipped' if args.no_check else 'passed' if ok else 'FAILED'} in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    if ok:
        timing(report, args.quick, shapes)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
