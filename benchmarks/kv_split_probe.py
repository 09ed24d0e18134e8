"""GPU probe: how many programs should share one kv head's query heads in the Gluon dK/dV kernel at small batch?

    export PYTHONPATH=$PWD; python3 benchmarks/kv_split_probe.py        # on an H100/H200

At batch 1 a GQA/MQA dK/dV grid of B·Hkv·N/128 programs leaves most of the GPU idle (MQA, N=4k: 32 programs on
132 SMs), so ``flash_attention_backward`` splits each kv head's group of query heads over ``kv_splits`` programs
(:func:`attention_lab.flash.triton_attention.kv_splits_for`: about one program per SM). Causal programs are unequal —
the first key block is seen by every query, the last by few — so more, shorter programs may balance better than one
per SM, at the price of more fp32 partial sums to add. This times, for B=1, N=4k, H=16, D=128, bf16, causal and
not, Hkv ∈ {4, 1}, every split count s in 1, 2, 4, 8, 16 (≤ group): the Gluon dK/dV kernel with its partial sums
(``dkdv_ms``) and the whole backward (``backward_ms``), each replayed from a CUDA graph (the GPU's time, not the
host's), median of 3 ``do_bench_cudagraph`` runs; and the split the library's rule picks. Writes
``attention_lab/results/gqa_split_probe.json``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from attention_lab.book.results import RESULTS_DIR  # noqa: E402
from attention_lab.flash import gluon_backward as gb  # noqa: E402
from attention_lab.flash import triton_attention as ta  # noqa: E402
from decode_common import environment, save_json  # noqa: E402

HEADS, HEAD_DIM, BATCH, N = 16, 128, 1, 4096
SPLITS = [1, 2, 4, 8, 16]


def graph_ms(fn) -> float:
    from triton.testing import do_bench_cudagraph

    fn()
    torch.cuda.synchronize()
    return statistics.median(do_bench_cudagraph(fn, rep=50, return_mode="median") for _ in range(3))


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("kv_split_probe.py needs a CUDA GPU")
    results = {"benchmark": "gqa_split_probe", "environment": environment(), "dtype": "bfloat16", "batch": BATCH,
               "n": N, "heads": HEADS, "head_dim": HEAD_DIM,
               "timing": "do_bench_cudagraph median (GPU time, no host), median of 3 runs", "rows": []}
    for n_kv_heads in (4, 1):
        group = HEADS // n_kv_heads
        g = torch.Generator(device="cuda").manual_seed(n_kv_heads)
        q = torch.randn(BATCH, HEADS, N, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(BATCH, n_kv_heads, N, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn_like(k)
        do = torch.randn_like(q)
        for causal in (True, False):
            scale = HEAD_DIM ** -0.5
            out, lse = ta.flash_attention_forward(q, k, v, None, causal, None, scale)
            delta = (do.float() * out.float()).sum(-1)
            reference = None
            for splits in [s for s in SPLITS if s <= group]:
                dkdv = graph_ms(lambda: gb.flash_attention_backward_kv_hopper(do, q, k, v, lse, delta, causal, scale,
                                                                              kv_splits=splits))
                backward = graph_ms(lambda: ta.flash_attention_backward(do, q, k, v, out, lse, None, causal, None,
                                                                        scale, kv_splits=splits))
                dk, dv = gb.flash_attention_backward_kv_hopper(do, q, k, v, lse, delta, causal, scale, kv_splits=splits)
                if reference is None:
                    reference = (dk.float(), dv.float())
                differs = max((dk.float() - reference[0]).abs().max().item(),
                              (dv.float() - reference[1]).abs().max().item())
                row = dict(n_kv_heads=n_kv_heads, group=group, causal=causal, kv_splits=splits,
                           programs=BATCH * n_kv_heads * -(-N // gb.BLOCK_N) * splits, dkdv_ms=dkdv, backward_ms=backward, max_abs_vs_unsplit=differs)
                results["rows"].append(row)
                print(row, flush=True)
    save_json(RESULTS_DIR / "gqa_split_probe.json", results)


if __name__ == "__main__":
    main()
