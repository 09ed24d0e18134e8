"""What paging costs the decode kernel (chapter 11): a reading of ``benchmarks/paged_decode.py``'s results.

The benchmark times the same tokens several ways (``attention_lab/results/paged_decode.json``, milliseconds per
decoding step, every shape B=32, H=32, D=128):

* ``paged_triton`` — the paged kernel on a pool of 16-token blocks handed out in random order, token-major
  ``(num_blocks, 16, Hkv, D)``;
* ``paged_triton_blocks_in_order`` — the same pool, each sequence's blocks consecutive (no scatter);
* ``paged_triton_head_major`` — the same tokens in a pool stored head-major, read through its strides;
* ``contiguous_triton`` — the same kernel, no block table, on a ``(B, Hkv, N, D)`` cache;
* ``contiguous_triton_bnhd`` — the same on a ``(B, N, Hkv, D)`` cache: the pool's token-major order, unpaged.

Each ratio below is a time over ``paged_triton``'s (or the contiguous kernel's), so 1.02 means 2 % slower.
"""

from __future__ import annotations

DIAGNOSTICS = ("paged_triton_blocks_in_order", "paged_triton_head_major", "contiguous_triton",
               "contiguous_triton_bnhd")
TARGET_OF_COPY, TARGET_SPEED_VS_SDPA = 0.85, 1 / 1.15  # DESIGN §5, as chapter 11 states them


def misses_target(row: dict) -> bool:
    """True where a shape reads under 85 % of the copy bandwidth or is more than 15 % slower than contiguous SDPA."""
    return row["of_copy"]["paged_triton"] < TARGET_OF_COPY or row["paged_vs_sdpa_speed"] < TARGET_SPEED_VS_SDPA


def paged_cost_reading(bench: dict) -> tuple[list[str], dict[str, bool]]:
    """One line per shape: the paged kernel's time over each diagnostic's; and the statements chapter 11 makes.

    Raises ValueError when the file lacks a diagnostic column (a run of an older ``paged_decode.py``)."""
    rows = bench["rows"]
    missing = sorted({name for r in rows for name in DIAGNOSTICS if name not in r["ms"]})
    if missing:
        raise ValueError(f"paged_decode results without {missing}: run benchmarks/paged_decode.py again")
    lines, in_order, head_major, vs_contiguous, bnhd = [], [], [], [], []
    for r in rows:
        ms = r["ms"]
        paged = ms["paged_triton"]
        in_order.append(paged / ms["paged_triton_blocks_in_order"])
        head_major.append(paged / ms["paged_triton_head_major"])
        vs_contiguous.append(paged / ms["contiguous_triton"])
        bnhd.append(ms["contiguous_triton_bnhd"] / ms["contiguous_triton"])
        lines.append(f"Hkv={r['n_kv_heads']:2} N={r['context']:6,}: paged / blocks in order {in_order[-1]:.3f}, "
                     f"/ head-major pool {head_major[-1]:.3f}, / contiguous cache {vs_contiguous[-1]:.3f}; "
                     f"contiguous (B, N, Hkv, D) / (B, Hkv, N, D) {bnhd[-1]:.3f}")
    claims = {
        "handing the blocks out in order saves at most 3 %": max(in_order) <= 1.03,
        "storing the pool head-major saves at most 3 %": max(head_major) <= 1.03,
        "the token-major order costs the contiguous kernel less than the paged kernel trails it, at every shape":
            all(order < gap for order, gap in zip(bnhd, vs_contiguous)),
        "the paged kernel is slower than the same kernel on a contiguous cache at every shape": min(vs_contiguous) > 1,
        "every shape that misses a target has at most 4k tokens of context":
            all(r["context"] <= 4096 for r in rows if misses_target(r)),
    }
    return lines, claims
