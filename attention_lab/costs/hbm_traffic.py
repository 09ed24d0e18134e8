"""How many bytes attention moves through device memory (HBM): separate kernels vs one fused kernel.

Standard attention run as four kernels writes the ``N × N`` score matrix to HBM and reads it back at
every step (QKᵀ → mask → softmax → ·V); a fused kernel reads Q, K, V once and writes O once. The
FlashAttention paper (Dao et al., 2022, Theorem 2) puts it as Θ(Nd + N²) HBM accesses for standard
attention against Θ(N²d²/M) for FlashAttention with an SRAM of M elements (d ≤ M ≤ Nd).

Every count here is per attention call over ``batch_heads = B·H`` independent heads, for
self-attention of ``n`` tokens with head size ``d`` stored in ``bytes_per_element`` bytes.
"""

from __future__ import annotations

import math

import torch

from attention_lab.validation import check_positive_int
from attention_lab.costs.roofline import KernelCost, elementwise_cost, matmul_cost, softmax_cost


# FlashAttention paper (Dao et al., 2022, arXiv:2205.14135), Figure 2 left: GPT-2 medium attention, forward +
# backward, on an A100: standard attention vs FlashAttention.
FLASH_PAPER_GPT2_MEDIUM = {"batch": 64, "heads": 16, "n": 1024, "d": 64, "gpu": "A100",
                           "standard_hbm_gb": 40.3, "flash_hbm_gb": 4.4, "standard_ms": 41.7, "flash_ms": 7.3}


def _check(n: int, d: int, batch_heads: int, bytes_per_element: int) -> None:
    check_positive_int("n", n)
    check_positive_int("d", d)
    check_positive_int("batch_heads", batch_heads)
    check_positive_int("bytes_per_element", bytes_per_element)


def unfused_forward_kernels(n: int, d: int, batch_heads: int = 1, bytes_per_element: int = 2,
                            mask_bytes_per_element: int = 1) -> list[KernelCost]:
    """The four kernels of standard attention, each reading its inputs from and writing its output to HBM.

    1. ``S = Q Kᵀ · scale``: reads Q, K (2Nd), writes S (N²) — the scale rides in the matmul's epilogue.
    2. mask: reads S (N²) and the bool mask (N² × ``mask_bytes_per_element``), writes S (N²).
    3. softmax: reads S (N²), writes P (N²).
    4. ``O = P V``: reads P (N²) and V (Nd), writes O (Nd).

    Pass ``mask_bytes_per_element=0`` for a mask generated on the fly (no mask tensor read).
    """
    _check(n, d, batch_heads, bytes_per_element)
    e, bh = bytes_per_element, batch_heads
    return [
        matmul_cost(n, n, d, e, name="S = QKᵀ", batch=bh),
        elementwise_cost(bh * n * n, e, 1.0, extra_bytes_read=bh * n * n * mask_bytes_per_element, name="mask"),
        softmax_cost(bh * n, n, e, name="softmax"),
        matmul_cost(n, d, n, e, name="O = PV", batch=bh),
    ]


def fused_softmax_kernels(n: int, d: int, batch_heads: int = 1, bytes_per_element: int = 2,
                          pv_in_same_kernel: bool = False) -> list[KernelCost]:
    """The lecture slides' "fused kernel": QKᵀ, mask and softmax fused into one kernel that still writes the
    weights ``A″ = softmax(mask(QKᵀ))`` (``N × N``) to HBM — which FlashAttention never does.

    1. ``A″ = softmax(mask(Q Kᵀ · scale))``: reads Q, K (2Nd), writes A″ (N²); the mask is computed from the
       positions inside the kernel, so no mask tensor is read.
    2. ``O = A″ V``: reads A″ (N²) and V (Nd), writes O (Nd).

    Total ``4Nd + 2N²`` elements. ``pv_in_same_kernel=True`` is the most generous reading — one kernel that
    also multiplies by V and writes O beside A″ (reads Q, K, V; writes A″ and O): ``4Nd + N²``, still N².
    """
    _check(n, d, batch_heads, bytes_per_element)
    e, bh = bytes_per_element, batch_heads
    qk, pv = matmul_cost(n, n, d, e, batch=bh), matmul_cost(n, d, n, e, batch=bh)
    softmax_flops = softmax_cost(bh * n, n, e).flops + bh * n * n  # + one compare per element for the mask
    if pv_in_same_kernel:
        return [KernelCost("QKᵀ+mask+softmax+PV, writes A″", qk.flops + softmax_flops + pv.flops,
                           float(bh * 3 * n * d * e), float(bh * (n * n + n * d) * e))]
    return [KernelCost("QKᵀ+mask+softmax, writes A″", qk.flops + softmax_flops, qk.bytes_read, qk.bytes_written),
            KernelCost("O = A″V", pv.flops, pv.bytes_read, pv.bytes_written)]


def unfused_backward_kernels(n: int, d: int, batch_heads: int = 1, bytes_per_element: int = 2,
                             mask_bytes_per_element: int = 1) -> list[KernelCost]:
    """Standard attention's backward from the saved P (N²), again one kernel per step.

    1. ``dV = Pᵀ dO``: reads P (N²), dO (Nd), writes dV (Nd).
    2. ``dP = dO Vᵀ``: reads dO, V (2Nd), writes dP (N²).
    3. softmax backward ``dS = P ∘ (dP − rowsum(dP ∘ P))``: reads P, dP (2N²), writes dS (N²).
    4. mask backward (zero the masked entries): reads dS and the mask, writes dS (N²).
    5. ``dQ = dS K · scale``: reads dS (N²), K (Nd), writes dQ (Nd).
    6. ``dK = dSᵀ Q · scale``: reads dS (N²), Q (Nd), writes dK (Nd).
    """
    _check(n, d, batch_heads, bytes_per_element)
    e, bh = bytes_per_element, batch_heads
    elements = bh * n * n
    return [
        matmul_cost(n, d, n, e, name="dV = PᵀdO", batch=bh),
        matmul_cost(n, n, d, e, name="dP = dO Vᵀ", batch=bh),
        KernelCost("softmax backward", 4.0 * elements, 2.0 * elements * e, float(elements * e)),
        elementwise_cost(elements, e, 1.0, extra_bytes_read=elements * mask_bytes_per_element, name="mask backward"),
        matmul_cost(n, d, n, e, name="dQ = dS K", batch=bh),
        matmul_cost(n, d, n, e, name="dK = dSᵀQ", batch=bh),
    ]


def fused_forward_bytes(n: int, d: int, batch_heads: int = 1, bytes_per_element: int = 2,
                        save_lse: bool = False) -> int:
    """The floor for any fused forward: read Q, K, V once, write O once (4Nd elements); ``save_lse`` adds the
    fp32 log-sum-exp (4 bytes per query) kept for the backward."""
    _check(n, d, batch_heads, bytes_per_element)
    return batch_heads * (4 * n * d * bytes_per_element + (4 * n if save_lse else 0))


def fused_backward_bytes(n: int, d: int, batch_heads: int = 1, bytes_per_element: int = 2) -> int:
    """The floor for any fused backward: read Q, K, V, O, dO once and write dQ, dK, dV once (8Nd elements),
    plus the fp32 LSE read (4 bytes per query) and ``D = rowsum(dO ∘ O)`` written and read (8 bytes)."""
    _check(n, d, batch_heads, bytes_per_element)
    return batch_heads * (8 * n * d * bytes_per_element + 12 * n)


def total_bytes(kernels: list[KernelCost]) -> float:
    """Bytes read plus written by a list of kernels."""
    return float(sum(kernel.bytes_moved for kernel in kernels))


def paper_block_sizes(sram_elements: int, d: int) -> tuple[int, int]:
    """FlashAttention (Algorithm 1) block sizes for an SRAM of ``sram_elements``: ``Bc = ⌈M/4d⌉``, ``Br = min(Bc, d)``."""
    check_positive_int("sram_elements", sram_elements)
    check_positive_int("d", d)
    block_k = math.ceil(sram_elements / (4 * d))
    return min(block_k, d), block_k


def flash_forward_accesses_paper(n: int, d: int, sram_elements: int) -> int:
    """HBM accesses (elements, one head) of the FlashAttention paper's Algorithm 1 forward.

    Outer loop over ``Tc = ⌈N/Bc⌉`` key/value blocks (K, V read once: 2Nd); for each, the inner loop
    reads Q, O, ℓ, m in full and writes O, ℓ, m back (3Nd + 4N). Total 2Nd + Tc·(3Nd + 4N) — which is
    Θ(N²d²/M) because Tc ≈ 4Nd/M.
    """
    check_positive_int("n", n)
    _, block_k = paper_block_sizes(sram_elements, d)
    n_key_blocks = math.ceil(n / block_k)
    return 2 * n * d + n_key_blocks * (3 * n * d + 4 * n)


def standard_forward_accesses_paper(n: int, d: int) -> int:
    """HBM accesses (elements, one head) of the paper's Algorithm 0: S = QKᵀ (read 2Nd, write N²),
    P = softmax(S) (read N², write N²), O = PV (read N² + Nd, write Nd): 4Nd + 4N² = Θ(Nd + N²)."""
    check_positive_int("n", n)
    check_positive_int("d", d)
    return 4 * n * d + 4 * n * n


def tiled_forward_bytes(n: int, d: int, block_q: int, batch_heads: int = 1, bytes_per_element: int = 2) -> int:
    """Bytes moved by :func:`attention_lab.flash.tiled.tiled_attention`'s loop order (outer loop over
    query blocks, as in FlashAttention-2): Q read once, O written once, K and V re-read once per query block
    (``⌈N/Br⌉`` times), fp32 LSE written once — with no cache hits."""
    _check(n, d, batch_heads, bytes_per_element)
    check_positive_int("block_q", block_q)
    query_blocks = math.ceil(n / block_q)
    return batch_heads * ((2 * n * d + query_blocks * 2 * n * d) * bytes_per_element + 4 * n)


def fa1_forward_bytes(n: int, d: int, block_k: int, batch_heads: int = 1, bytes_per_element: int = 2) -> int:
    """Bytes moved by FlashAttention-1's loop order (:func:`attention_lab.flash.tiled.tiled_attention_forward_fa1`:
    outer loop over key/value blocks): K and V read once (2Nd); for each of the ``⌈N/Bc⌉`` key blocks the inner
    loop reads all of Q, reads and writes all of O (3Nd) and reads and writes the fp32 ℓ and m (16 bytes per
    query) — with no cache hits. The paper's count (:func:`flash_forward_accesses_paper`) in bytes; like it,
    it leaves out the initial write of O = 0, ℓ = 0, m = −inf."""
    _check(n, d, batch_heads, bytes_per_element)
    check_positive_int("block_k", block_k)
    key_blocks = math.ceil(n / block_k)
    e = bytes_per_element
    return batch_heads * (2 * n * d * e + key_blocks * (3 * n * d * e + 4 * n * 4))


def flash_backward_bytes(n: int, d: int, block_k: int, batch_heads: int = 1, bytes_per_element: int = 2) -> int:
    """Bytes of a FlashAttention-2-style backward (outer loop over key blocks of ``block_k``):
    ``D = rowsum(dO ∘ O)`` reads dO, O, writes D (fp32); K, V read and dK, dV written once (4Nd);
    per key block Q and dO are read (2Nd), dQ read and written (2Nd), LSE and D read (8N bytes)."""
    _check(n, d, batch_heads, bytes_per_element)
    check_positive_int("block_k", block_k)
    key_blocks = math.ceil(n / block_k)
    e = bytes_per_element
    per_head = (2 * n * d * e + 4 * n) + 4 * n * d * e + key_blocks * (4 * n * d * e + 8 * n)
    return batch_heads * per_head


def unfused_attention_chain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            blocked: torch.Tensor | None = None) -> torch.Tensor:
    """Standard attention as the four separate kernels that :func:`unfused_forward_kernels` counts,
    in the inputs' dtype (what a GPU timing of "the unfused chain" should run).

    Args:
        q, k, v: ``(B, H, N, D)`` (same number of heads; this is the object of study, not a backend).
        blocked: optional bool ``(N, N)`` with True where attention is NOT allowed (i.e. ``~mask``),
            precomputed so the timed chain reads it as one tensor.

    Returns:
        ``(B, H, N, D)``; equals :func:`attention_lab.attention.scaled_dot_product_attention` up to rounding.
    """
    batch, heads, n, d = q.shape
    q3, k3, v3 = (t.reshape(batch * heads, t.shape[2], t.shape[3]) for t in (q, k, v))  # (BH, N, D)
    empty = torch.empty(1, 1, 1, dtype=q.dtype, device=q.device)  # ignored: beta=0
    scores = torch.baddbmm(empty, q3, k3.transpose(1, 2), beta=0.0, alpha=d**-0.5)  # 1. (BH, N, N)
    if blocked is not None:
        scores.masked_fill_(blocked, float("-inf"))  # 2. (BH, N, N), in place: read S + mask, write S
    weights = torch.softmax(scores, dim=-1)  # 3. (BH, N, N)
    out = torch.bmm(weights, v3)  # 4. (BH, N, D)
    return out.reshape(batch, heads, n, v.shape[-1])  # (B, H, N, D)


# --- figures of committed GPU results (attention_lab/results/hbm_traffic.json) --------------------------------


def plot_kernel_steps(results: dict, ax=None):
    """Bars: each unfused kernel's measured time vs the traffic model's bytes / measured copy bandwidth."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    rows = results["steps"]["rows"]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [row["seconds"] * 1e3 for row in rows], 0.4, label="measured")
    ax.bar(x + 0.2, [row["predicted_seconds"] * 1e3 for row in rows], 0.4, label="model bytes / copy bandwidth")
    ax.set_xticks(x, [row["kernel"] for row in rows])
    shape = results["steps"]
    ax.set_title(f"Unfused attention, kernel by kernel (B={shape['batch']}, H={shape['heads']}, "
                 f"N={shape['n']}, d={shape['d']}, {results['dtype'].removeprefix('torch.')})")
    ax.set_xlabel("kernel")
    ax.set_ylabel("time (ms)")
    ax.grid(alpha=0.3, axis="y")
    tallest = max(max(row["seconds"], row["predicted_seconds"]) for row in rows) * 1e3
    ax.set_ylim(0, tallest * 1.3)  # headroom: the legend sits above the bars, not on them
    ax.legend(loc="upper left", fontsize=10)
    return ax


def roofline_predictions(results: dict) -> tuple[list[float], list[float]]:
    """Roofline floors (seconds) for each row of ``results["chain_vs_sdpa"]``, from the card's MEASURED
    ceilings (copy bandwidth, fp16 matmul rate): the unfused chain as Σ over its kernels of
    max(bytes / bandwidth, FLOPs / peak), the fused causal kernel as max(4Nd bytes / bandwidth,
    2·N²·d FLOPs / peak) (causal halves the 4·N²·d of QKᵀ and PV)."""
    bandwidth = results["copy_bandwidth_bytes_s"][str(results["copy_bandwidth_used_bytes"])]
    peak = results["matmul_flops"]["fp16"]
    element = 4 if "float32" in results["dtype"] else 2
    chain, fused = [], []
    for row in results["chain_vs_sdpa"]:
        n, d, bh = row["n"], row["d"], row["batch"] * row["heads"]
        chain.append(sum(kernel.time_bound(peak, bandwidth) for kernel in unfused_forward_kernels(n, d, bh, element)))
        fused.append(max(fused_forward_bytes(n, d, bh, element, save_lse=True) / bandwidth, 2.0 * n * n * d * bh / peak))
    return chain, fused


def plot_chain_vs_fused(results: dict, ax=None):
    """Log-log forward time vs N: the unfused chain and SDPA's fused kernel, measured (solid) and the
    roofline floor the traffic model gives with the card's measured ceilings (dashed)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    rows = results["chain_vs_sdpa"]
    n = [row["n"] for row in rows]
    chain_floor, fused_floor = roofline_predictions(results)
    ax.plot(n, [row["chain_fwd_s"] * 1e3 for row in rows], "o-", color="C3", label="unfused chain, measured")
    ax.plot(n, [t * 1e3 for t in chain_floor], "--", color="C3", label="unfused chain, model floor")
    ax.plot(n, [row["sdpa_fwd_s"] * 1e3 for row in rows], "o-", color="C0", label="SDPA flash (fused), measured")
    ax.plot(n, [t * 1e3 for t in fused_floor], "--", color="C0", label="fused, model floor")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title(f"Causal forward, B·H={rows[0]['batch'] * rows[0]['heads']}, d={rows[0]['d']}, "
                 f"{results['dtype'].removeprefix('torch.')}")
    ax.set_xlabel("sequence length N (tokens)")
    ax.set_ylabel("time (ms)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=10)
    return ax
