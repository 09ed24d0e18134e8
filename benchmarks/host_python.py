"""CPU diagnostic: the library's own Python per FlashAttention training step, with every kernel launch faked.

    python3 benchmarks/host_python.py            # any machine, no GPU needed

At a batch of one an eager forward+backward step on an H200 needs more host time than GPU time
(``benchmarks/launch_overhead.py``). Part of the host's time is Triton's launch machinery, which needs a GPU to
measure; the rest is this library's Python around it — checks, dispatch, buffers, autograd — which does not.
This measures that rest on the CPU: ``flash_attention(q, k, v, causal=True).backward(grad)`` on CPU tensors shaped
like the B=1 benchmark (H=16 query heads of D=128 over 16 or 1 kv heads, fp16; N=512 rather than 4k, so that
the CPU allocator's cost for large buffers, which a GPU's caching allocator does not have, stays out of it) with the device check, the
teaching launches and the Hopper kernels replaced by stubs that return buffers of the right shape, as if on an
H100/H200 with the Gluon kernels chosen. Prints microseconds per step (median of 5 runs of 300 steps) and the
costliest functions (cProfile). Prints only; nothing is written.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attention_lab.flash import gluon_attention, gluon_backward  # noqa: E402
from attention_lab.flash import triton_attention as ta  # noqa: E402
from attention_lab.kernels.common import DeviceFacts  # noqa: E402


def stubbed():
    """The patches that turn every launch into an allocation (an H200's 132 SMs for the split rule)."""
    def forward(q, k, v, causal, scale):
        return torch.empty_like(q), torch.empty(q.shape[:3])

    def backward_kv(do, q, k, v, lse, delta, causal, scale, kv_splits=1):
        return torch.empty_like(k), torch.empty_like(v)

    return [mock.patch.object(ta, "_check_device", lambda q: None), mock.patch.object(ta, "_launch", lambda *a: None),
            mock.patch.object(ta, "device_facts", lambda device: DeviceFacts(capability=90, n_sms=132)),
            mock.patch.object(gluon_attention, "unsupported_reason", lambda *a: None),
            mock.patch.object(gluon_attention, "flash_attention_forward_hopper", forward),
            mock.patch.object(gluon_backward, "unsupported_reason", lambda *a: None),
            mock.patch.object(gluon_backward, "flash_attention_backward_kv_hopper", backward_kv),
            mock.patch.object(gluon_backward, "flash_attention_backward_q_hopper",
                              lambda do, q, k, v, lse, delta, causal, scale: torch.empty_like(q))]


def main() -> None:
    torch.set_num_threads(1)
    patches = stubbed()
    for patch in patches:
        patch.start()
    try:
        for n_kv_heads in (16, 1):
            q = torch.randn(1, 16, 512, 128, dtype=torch.float16, requires_grad=True)
            k = torch.randn(1, n_kv_heads, 512, 128, dtype=torch.float16, requires_grad=True)
            v = torch.randn_like(k, requires_grad=True)
            grad = torch.randn_like(q)

            def step():
                ta.flash_attention(q, k, v, causal=True).backward(grad)
                q.grad = k.grad = v.grad = None

            for _ in range(20):
                step()
            runs = []
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(300):
                    step()
                runs.append((time.perf_counter() - start) / 300 * 1e6)
            print(f"Hkv={n_kv_heads:2}: {statistics.median(runs):.0f} µs of the library's Python per fwd+bwd step "
                  f"(runs {', '.join(f'{r:.0f}' for r in runs)})", flush=True)
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(300):
            step()
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(15)
        print(text.getvalue())
    finally:
        for patch in patches:
            patch.stop()


if __name__ == "__main__":
    main()
