"""GPU probe of the Gluon backward kernels for Hopper (attention_lab/flash/gluon_backward.py): correctness first (dK,
dV, dQ against the teaching backward and float64 autograd on odd shapes), then a timing of the Gluon dK/dV and dQ
kernels against the teaching ones (``_attn_bwd_kv``, ``_attn_bwd_q``), alone and inside the whole backward (delta
kernel + dK/dV + dQ; and with delta computed in the dQ kernel's prologue, ``FUSED_DELTA_BACKWARD``), at bf16, D=128 (``--head-dim 64``: D=64), H·D = 2048, B·N = 32k, N ∈ {1k, 4k}, causal and
not (one process, 3 interleaved do_bench medians); both kernels also with other tiles (``Q_TILES``, ``KV_TILES``); ``--ns`` other key counts.
Prints a table; ``--json PATH`` also writes what it measured. About a minute on an H200 (the teaching kernels
autotune at each shape first).

    export PYTHONPATH=$PWD; python3 benchmarks/gluon_backward_probe.py [--json out.json]

The teaching kernels are timed by replaying the launches ``flash_attention_backward(fused_dq=False)`` makes
(recorded from ``triton_attention._launch``), so both sides run exactly what the library launches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from attention_lab.flash import gluon_backward as gb  # noqa: E402
from attention_lab.flash import triton_attention as ta  # noqa: E402

CASES = [  # (B, H, Hkv, Nq, Nk, D, causal, layout, dtype)
    (2, 4, 4, 1000, 1000, 128, False, "bhnd", torch.bfloat16),
    (2, 4, 4, 1000, 1000, 128, True, "bhnd", torch.bfloat16),
    (1, 8, 4, 300, 777, 128, True, "bhnd", torch.float16),
    (1, 8, 1, 777, 300, 64, True, "bhnd", torch.bfloat16),
    (2, 4, 4, 513, 513, 64, False, "bnhd", torch.float16),
    (1, 2, 2, 64, 64, 128, True, "bnhd", torch.bfloat16),
    (1, 16, 2, 200, 1100, 64, False, "bhnd", torch.bfloat16),
    (4, 16, 16, 2048, 2048, 128, True, "bhnd", torch.bfloat16),  # many programs at once: races show here
]
Q_TILES = {128: [{"BLOCK_N": 64, "NUM_STAGES": 2}, {"BLOCK_N": 64, "NUM_STAGES": 3}, {"BLOCK_N": 128, "NUM_STAGES": 2}],
           64: [{"BLOCK_N": 128, "NUM_STAGES": 2}, {"BLOCK_N": 64, "NUM_STAGES": 2}, {"BLOCK_N": 128, "NUM_STAGES": 3}]}
# the dK/dV kernel's tiles timed beside its default (gb.kv_tile_for); at D=128 nothing else fits without spills
KV_TILES = {128: [], 64: [{"BLOCK_M": 64, "NUM_STAGES": 2}, {"BLOCK_M": 128, "NUM_STAGES": 2}]}


def timed_shapes(head_dim: int, ns=(1024, 4096)) -> list[tuple]:
    """(B, H, N, causal): B·N = 32k tokens, H·D = 2048."""
    return [(32768 // n, 2048 // head_dim, n, causal) for n in ns for causal in (False, True)]


def make(b, h, hkv, nq, nk, d, layout, dtype, seed=0):
    """do, q ``(B, H, Nq, D)``, k, v ``(B, Hkv, Nk, D)``; a (B, N, H, D) view for ``layout="bnhd"``."""
    g = torch.Generator(device="cuda").manual_seed(seed)

    def one(heads, n):
        if layout == "bnhd":
            return torch.randn(b, n, heads, d, device="cuda", dtype=dtype, generator=g).transpose(1, 2)
        return torch.randn(b, heads, n, d, device="cuda", dtype=dtype, generator=g)
    return one(h, nq), one(h, nq), one(hkv, nk), one(hkv, nk)


def forward_state(do, q, k, v, causal, scale):
    """The forward's O and base-2 lse, and delta = rowsum(dO ∘ O) ``(B, H, Nq)`` fp32."""
    out, lse = ta.flash_attention_forward(q, k, v, None, causal, None, scale)
    return out, lse, (do.float() * out.float()).sum(-1)


def check(report: dict) -> bool:
    """dK, dV of the Gluon kernel vs the teaching backward and float64 autograd at every case of :data:`CASES`."""
    from reference import attention_fp64

    ok = True
    for b, h, hkv, nq, nk, d, causal, layout, dtype in CASES:
        name = f"B{b} H{h}/{hkv} Nq{nq} Nk{nk} D{d} {'causal' if causal else 'full'} {layout} {str(dtype)[6:]}"
        try:
            do, q, k, v = make(b, h, hkv, nq, nk, d, layout, dtype)
            scale = d ** -0.5
            out, lse, delta = forward_state(do, q, k, v, causal, scale)
            dk, dv = gb.flash_attention_backward_kv_hopper(do, q, k, v, lse, delta, causal, scale)
            dq = gb.flash_attention_backward_q_hopper(do, q, k, v, lse, delta, causal, scale)
            dq_t, dk_t, dv_t = ta.flash_attention_backward(do, q, k, v, out, lse, None, causal, None, scale,
                                                           hopper_path=False)
            q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
            attention_fp64(q64, k64, v64, causal=causal, scale=scale).backward(do.double())
            row = {"case": name}
            for grad, got, teaching, want in (("dk", dk, dk_t, k64.grad), ("dv", dv, dv_t, v64.grad),
                                              ("dq", dq, dq_t, q64.grad)):
                row[f"{grad}_error"] = (got.double() - want).abs().max().item()
                row[f"{grad}_teaching_error"] = (teaching.double() - want).abs().max().item()
                row[f"{grad}_vs_teaching"] = (got.float() - teaching.float()).abs().max().item()
            row["ok"] = all(row[f"{g}_error"] <= 2 * row[f"{g}_teaching_error"] + 1e-3 for g in ("dk", "dv", "dq"))
        except Exception:  # a failing case is reported, the others still run
            row = {"case": name, "ok": False, "error": traceback.format_exc(limit=3)}
        ok = ok and row["ok"]
        report["checks"].append(row)
        print(f"{'ok  ' if row['ok'] else 'FAIL'} {name}: " + (
            row.get("error", "").strip().splitlines()[-1] if "error" in row else
            f"dk err {row['dk_error']:.2e} (teaching {row['dk_teaching_error']:.2e}), "
            f"dv err {row['dv_error']:.2e} (teaching {row['dv_teaching_error']:.2e}), "
            f"dq err {row['dq_error']:.2e} (teaching {row['dq_teaching_error']:.2e})"), flush=True)
    return ok


def recorded_launches(do, q, k, v, out, lse, causal, scale) -> dict:
    """The teaching backward's launches (delta, dK/dV, dQ kernels), recorded for replay: name -> a function."""
    launches = {}
    original = ta._launch

    def record(tuned, kernel, grid, args, flags, tile):
        original(tuned, kernel, grid, args, flags, tile)
        name = getattr(kernel, "__name__", None) or kernel.fn.__name__
        launches[name] = lambda: original(tuned, kernel, grid, args, flags, tile)
    ta._launch = record
    try:
        ta.flash_attention_backward(do, q, k, v, out, lse, None, causal, None, scale, fused_dq=False,
                                    hopper_path=False)
    finally:
        ta._launch = original
    return launches


def timing(report: dict, d: int, ns=(1024, 4096)) -> None:
    from triton.testing import do_bench

    for b, h, n, causal in timed_shapes(d, ns):
        do, q, k, v = make(b, h, h, n, n, d, "bhnd", torch.bfloat16)
        scale = d ** -0.5
        out, lse, delta = forward_state(do, q, k, v, causal, scale)
        teaching = recorded_launches(do, q, k, v, out, lse, causal, scale)
        kv_delta = teaching["_attn_bwd_delta"]
        fused_delta = torch.empty_like(delta)  # written by the dQ kernel of "gluon_fused_delta_backward"

        def gluon_q(tile=None):
            return lambda: gb.flash_attention_backward_q_hopper(do, q, k, v, lse, delta, causal, scale, tile)

        def gluon_kv(tile=None):
            return lambda: gb.flash_attention_backward_kv_hopper(do, q, k, v, lse, delta, causal, scale, tile)
        methods = {
            "teaching_kv": teaching["_attn_bwd_kv"],
            "gluon_kv": gluon_kv(),
            **{"gluon_kv_{BLOCK_M}x{NUM_STAGES}".format(**tile): gluon_kv(tile) for tile in KV_TILES[d]},
            "teaching_q": teaching["_attn_bwd_q"],
            **{"gluon_q_{BLOCK_N}x{NUM_STAGES}".format(**tile): gluon_q(tile) for tile in Q_TILES[d]},
            "teaching_backward": lambda: (kv_delta(), teaching["_attn_bwd_kv"](), teaching["_attn_bwd_q"]()),
            "gluon_kv_backward": lambda: (kv_delta(), gluon_kv()(), teaching["_attn_bwd_q"]()),
            "gluon_backward": lambda: (kv_delta(), gluon_kv()(), gluon_q()()),
            # delta computed in the dQ kernel's prologue (FUSED_DELTA_BACKWARD): no delta kernel, dQ before dK/dV
            "gluon_fused_delta_backward": lambda: (gb.flash_attention_backward_q_hopper(
                do, q, k, v, lse, fused_delta, causal, scale, out=out), gb.flash_attention_backward_kv_hopper(
                do, q, k, v, lse, fused_delta, causal, scale)),
        }
        runs = {m: [] for m in methods}
        for _ in range(3):  # interleaved: each method once per round
            for m, fn in methods.items():
                runs[m].append(do_bench(fn, warmup=10, rep=40, return_mode="median"))
        pairs = b * h * n * n * (0.5 if causal else 1.0)  # (query, key) pairs seen
        products = {"kv": 4, "q": 3, "backward": 7}  # matrix products of 2·pairs·D each
        row = {"B": b, "H": h, "N": n, "D": d, "causal": causal, "default_q_tile": gb.q_tile_for(d),
               "default_kv_tile": gb.kv_tile_for(d, causal, False)}
        for m, times in runs.items():
            ms = statistics.median(times)
            kind = "backward" if m.endswith("backward") else m.split("_")[1]
            row[m] = {"ms": ms, "tflops": 2 * products[kind] * pairs * d / ms / 1e9, "runs_ms": times,
                      "spread": (max(times) - min(times)) / ms}
        row["kv_speedup"] = row["teaching_kv"]["ms"] / row["gluon_kv"]["ms"]
        default_q = "gluon_q_{BLOCK_N}x{NUM_STAGES}".format(**gb.q_tile_for(d))
        row["q_speedup"] = row["teaching_q"]["ms"] / row[default_q]["ms"]
        row["backward_speedup"] = row["teaching_backward"]["ms"] / row["gluon_backward"]["ms"]
        row["fused_delta_speedup"] = row["gluon_backward"]["ms"] / row["gluon_fused_delta_backward"]["ms"]
        report["timing"].append(row)
        q_tiles = ", ".join(f"{m[8:]} {row[m]['ms']:.3f}" for m in methods if m.startswith("gluon_q_"))
        kv_tiles = "".join(f", {m[9:]} {row[m]['ms']:.3f}" for m in methods if m.startswith("gluon_kv_") and
                           not m.endswith("backward"))
        print(f"N {n:>5} {'causal' if causal else 'full  '}  dK/dV: teaching {row['teaching_kv']['ms']:.3f} ms "
              f"({row['teaching_kv']['tflops']:.0f} TFLOP/s), Gluon {row['gluon_kv']['ms']:.3f} ms "
              f"({row['gluon_kv']['tflops']:.0f}){kv_tiles}, ×{row['kv_speedup']:.2f};  dQ: teaching {row['teaching_q']['ms']:.3f}"
              f" ({row['teaching_q']['tflops']:.0f}), Gluon {q_tiles} ({row[default_q]['tflops']:.0f}), "
              f"×{row['q_speedup']:.2f};  backward: teaching {row['teaching_backward']['ms']:.3f} ms, Gluon dK/dV "
              f"{row['gluon_kv_backward']['ms']:.3f}, both Gluon {row['gluon_backward']['ms']:.3f} "
              f"(×{row['backward_speedup']:.2f}), delta in the dQ kernel {row['gluon_fused_delta_backward']['ms']:.3f} "
              f"(×{row['fused_delta_speedup']:.2f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-timing", action="store_true", help="correctness only")
    parser.add_argument("--head-dim", type=int, default=128, choices=sorted(Q_TILES), help="of the timed shapes")
    parser.add_argument("--ns", type=int, nargs="+", default=[1024, 4096], help="key counts of the timed shapes")
    args = parser.parse_args()
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)):
        sys.exit("needs an sm_90 GPU (H100/H200)")
    import triton

    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "checks": [], "timing": []}
    ok = check(report)
    if ok and not args.no_timing:  # a wrong kernel is not timed
        timing(report, args.head_dim, args.ns)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
