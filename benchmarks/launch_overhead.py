"""GPU diagnostic: how much of a small attention call is the host's (Python and launch) time, not the GPU's.

    export PYTHONPATH=$PWD; python3 benchmarks/launch_overhead.py
    python3 benchmarks/launch_overhead.py --trace OUT/eager_step.json   # torch.profiler of eager MQA steps only
    python3 benchmarks/launch_overhead.py --profile   # only cProfile of eager MQA forward and forward+backward

At a batch of one (B=1, H=16, N=4k, D=128, causal, bf16) the forward runs ~0.2 ms on an H200, and
``do_bench`` times a call from an event recorded before it is launched: when the host needs longer to launch a
call than the GPU needs for the work queued ahead of it, the measured time is the host's. For each kv-head
count this prints, for the Triton kernel and for SDPA: do_bench's median, the same call replayed from a CUDA
graph (no host work) and the host's own time per call (launches without waiting); the same for
forward+backward (also with the teaching backward kernels); then the costliest Python functions of 100 Triton
calls (cProfile). Prints only; nothing is written.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))

from attention_lab.flash import triton_attention as ta  # noqa: E402
from flash import kernel_variant  # noqa: E402  (benchmarks/flash.py)


def host_ms(fn, calls: int = 200) -> float:
    """Milliseconds of host time per call: ``calls`` launches without waiting for the GPU in between."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls * 1e3
    torch.cuda.synchronize()
    return host


def launcher_host_times(q, k, v) -> None:
    """Host milliseconds per call of each piece of a causal forward+backward on these inputs (the last kv-head count
    of :func:`main`), each launched 200 times without waiting: which launch costs the host what."""
    from attention_lab.flash import gluon_attention, gluon_backward

    scale = q.shape[-1] ** -0.5
    out, lse = ta.flash_attention_forward(q, k, v, None, True, None, scale)
    do = torch.randn_like(q)
    delta = (do.float() * out.float()).sum(-1)
    splits = ta.kv_splits_for(q.shape[0], k.shape[1], k.shape[2], q.shape[1] // k.shape[1], q.device, True)
    pieces = {
        "flash_attention_forward": lambda: ta.flash_attention_forward(q, k, v, None, True, None, scale),
        "flash_attention_backward": lambda: ta.flash_attention_backward(do, q, k, v, out, lse, None, True, None, scale),
        "gluon dK/dV launcher": lambda: gluon_backward.flash_attention_backward_kv_hopper(
            do, q, k, v, lse, delta, True, scale, kv_splits=splits),
        "gluon dQ launcher": lambda: gluon_backward.flash_attention_backward_q_hopper(do, q, k, v, lse, delta, True,
                                                                                      scale),
        "one TMA descriptor": lambda: gluon_attention._descriptor(q, 64),
        "prepare_inputs (checks)": lambda: ta.prepare_inputs(q, k, v, None, True, None, scale),
        "hopper_backward_applies": lambda: ta.hopper_backward_applies(do, q, k, v, lse, delta, None, None, False,
                                                                      None),
        "torch.empty_like(q)": lambda: torch.empty_like(q),
    }
    for name, fn in pieces.items():
        print(f"  host {name:26}: {host_ms(fn) * 1e3:7.1f} µs per call", flush=True)


def trace_eager_steps(q, k, v, steps: int = 20, path: str | None = None) -> None:
    """``steps`` eager causal forward+backward steps under ``torch.profiler`` (CPU and CUDA): prints the host's
    costliest operations by self CPU time and, per step, the host's wall time against the GPU's kernel time; with
    ``path`` also writes a Chrome trace (open it in chrome://tracing or Perfetto to see where the GPU waits)."""
    from torch.profiler import ProfilerActivity, profile

    q, k, v = (x.detach().requires_grad_(True) for x in (q, k, v))
    grad = torch.randn_like(q)

    def step():
        ta.flash_attention(q, k, v, causal=True).backward(grad)
        for x in (q, k, v):
            x.grad = None

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / steps * 1e3
    events = prof.key_averages()
    from torch.autograd import DeviceType  # count the kernels themselves, not the operators that launched them too
    kernel_ms = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / steps / 1e3
    print(f"  traced: {wall:.3f} ms per step (profiler on), GPU kernels {kernel_ms:.3f} ms per step")
    print(events.table(sort_by="self_cpu_time_total", row_limit=25))
    if path:
        prof.export_chrome_trace(path)


def main() -> None:
    from triton.testing import do_bench, do_bench_cudagraph

    if not torch.cuda.is_available():
        sys.exit("launch_overhead.py needs a CUDA GPU")
    heads, n, head_dim = 16, 4096, 128
    for n_kv_heads in (16, 4, 1):
        g = torch.Generator(device="cuda").manual_seed(n_kv_heads)
        q = torch.randn(1, heads, n, head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(1, n_kv_heads, n, head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn_like(k)
        methods = {"triton": lambda: ta.flash_attention(q, k, v, causal=True),
                   "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)}
        for name, fn in methods.items():
            with torch.no_grad():
                fn()
                bench = [do_bench(fn, return_mode="median") for _ in range(3)]
                graph = [do_bench_cudagraph(fn, return_mode="median") for _ in range(3)]
                host = host_ms(fn)
            print(f"Hkv={n_kv_heads:2d} {name:6}: do_bench {[round(b, 4) for b in bench]} ms, CUDA graph "
                  f"{[round(x, 4) for x in graph]} ms, host {host:.4f} ms per call", flush=True)
        print("  autotuner's forward choice:", {str(key): str(c) for key, c in ta._attn_fwd_tuned.cache.items()})
        q.requires_grad_(True)
        k.requires_grad_(True)
        v.requires_grad_(True)
        grad = torch.randn_like(q)
        teaching = kernel_variant(backward_options={"hopper_path": False})
        steps = {"triton": lambda: ta.flash_attention(q, k, v, causal=True).backward(grad),
                 "triton_teaching_bwd": lambda: teaching(q, k, v, True).backward(grad),
                 "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                enable_gqa=True).backward(grad)}
        for name, step in steps.items():
            step()
            bench = [do_bench(step, grad_to_none=[q, k, v], return_mode="median") for _ in range(3)]
            graph = [do_bench_cudagraph(step, return_mode="median") for _ in range(3)]
            print(f"  fwd+bwd {name:19}: do_bench {[round(b, 4) for b in bench]} ms, CUDA graph "
                  f"{[round(x, 4) for x in graph]} ms, host {host_ms(step, 50):.4f} ms per call", flush=True)
        for x in (q, k, v):
            x.grad = None
    launcher_host_times(q.detach(), k.detach(), v.detach())
    profile_python(q.detach(), k.detach(), v.detach(), steps["triton"])


def profile_python(q, k, v, step, calls: int = 100) -> None:
    """cProfile of ``calls`` eager forwards and ``calls`` eager forward+backward ``step()`` calls: the costliest
    Python functions, cumulative and by their own time."""
    for label, call in (("forward", lambda: ta.flash_attention(q, k, v, causal=True)), ("forward+backward", step)):
        call()
        torch.cuda.synchronize()
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(calls):
            call()
        profile.disable()
        torch.cuda.synchronize()
        for order in ("cumulative", "tottime"):
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats(order).print_stats(22)
            print(f"--- {label}, {calls} calls (B=1, Hkv={k.shape[1]}), by {order}\n" + text.getvalue()[-6000:])


def mqa_inputs():
    """q (1, 16, 4k, 128) and one kv head's k, v, bf16: the eager MQA step at batch 1 that --trace and --profile study."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 16, 4096, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 1, 4096, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    return q, k, torch.randn_like(k)


if __name__ == "__main__":
    if "--trace" in sys.argv:  # only the profiler trace of eager MQA steps at batch 1 (a Chrome trace beside it)
        after = sys.argv.index("--trace") + 1
        trace_eager_steps(*mqa_inputs(), path=sys.argv[after] if len(sys.argv) > after else None)
    elif "--profile" in sys.argv:  # only the cProfile of eager MQA calls at batch 1
        q, k, v = mqa_inputs()
        qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
        grad = torch.randn_like(q)
        profile_python(q, k, v, lambda: ta.flash_attention(qg, kg, vg, causal=True).backward(grad))
    else:
        main()
