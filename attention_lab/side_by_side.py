"""Chapter 13: one TinyGPT, every attention variant, one budget — and a map of which idea cuts which cost."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import matplotlib.pyplot as plt
import numpy as np
import torch

from attention_lab.data import TokenDataset
from attention_lab.mla import MLASettings
from attention_lab.model import TinyGPT, TinyGPTConfig
from attention_lab.train import train

# name -> overrides of the base config. The base has 8 query heads so that GQA-2, GQA-4 and MQA all exist.
VARIANTS: dict[str, dict] = {
    "MHA": {},
    "GQA-4": {"n_kv_heads": 4},
    "GQA-2": {"n_kv_heads": 2},
    "MQA": {"n_kv_heads": 1},
    "MLA": {"attention": "mla", "settings": MLASettings()},  # DeepSeek-V2's ratios: d_c = 4·d_h, d_h^R = d_h/2
    "sliding window": {"window": "quarter"},  # a quarter of the context
    "MHA + Triton flash": {"backend": "flash"},
}


def variant_config(base: TinyGPTConfig, name: str) -> TinyGPTConfig:
    """``base`` with the overrides of variant ``name`` (see :data:`VARIANTS`)."""
    if name not in VARIANTS:
        raise ValueError(f"name must be one of {list(VARIANTS)}, got {name!r}")
    overrides = dict(VARIANTS[name])
    if overrides.get("window") == "quarter":
        overrides["window"] = max(1, base.context_length // 4)
    return replace(base, **overrides)


@dataclass
class VariantResult:
    name: str
    parameters: int  # trainable parameters
    val_loss: float  # validation cross-entropy after training (nats/token)
    cache_bytes_per_token: float  # KV-cache bytes per token at full context, from the real cache tensors
    prefill_tokens_per_s: float  # tokens/s of one forward pass over full-length sequences
    decode_tokens_per_s: float  # tokens/s of cached generation, one token per sequence per step
    train_seconds: float


@torch.no_grad()
def measure_speed(model: TinyGPT, batch_size: int, repeats: int = 3) -> tuple[float, float]:
    """(prefill tokens/s over ``batch_size`` full-context sequences, cached decode tokens/s of the same batch)."""
    device = next(model.parameters()).device
    length = model.config.context_length
    idx = torch.randint(0, model.config.vocab_size, (batch_size, length), device=device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> float:
        fn()  # warm-up (and compilation for the Triton backend)
        synchronize()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            synchronize()
            best = min(best, time.perf_counter() - start)
        return best

    prefill = timed(lambda: model(idx))

    def decode() -> None:
        cache = model.new_cache(batch_size, length)
        model(idx[:, :1], cache=cache)
        for t in range(1, length):
            model(idx[:, t:t + 1], cache=cache)

    decode_seconds = timed(decode)
    return batch_size * length / prefill, batch_size * (length - 1) / decode_seconds


def compare_variants(base: TinyGPTConfig, names: list[str], data: TokenDataset, steps: int, batch_size: int = 32,
                     lr: float = 3e-3, device: torch.device | str = "cpu", speed_batch: int = 8,
                     seed: int = 0, progress: bool = True) -> list[VariantResult]:
    """Train one model per variant on the same data, steps and seed; measure quality, cache and speed."""
    results = []
    for name in names:
        config = variant_config(base, name)
        torch.manual_seed(seed)
        model = TinyGPT(config).to(device)
        history = train(model, data, steps=steps, batch_size=batch_size, lr=lr, eval_every=max(1, steps // 4),
                        seed=seed, progress=progress)
        cache = model.new_cache(1, config.context_length)
        prefill, decode = measure_speed(model, speed_batch)
        results.append(VariantResult(name, model.num_parameters(), history.final_val_loss,
                                     cache.nbytes / config.context_length, prefill, decode, history.seconds))
    return results


def results_table(results: list[VariantResult]) -> str:
    """A fixed-width text table of the comparison."""
    lines = [f"{'variant':<20}{'params':>9}{'val loss':>10}{'cache B/token':>15}{'prefill tok/s':>15}{'decode tok/s':>14}"]
    for r in results:
        lines.append(f"{r.name:<20}{r.parameters:>9,}{r.val_loss:>10.3f}{r.cache_bytes_per_token:>15,.0f}"
                     f"{r.prefill_tokens_per_s:>15,.0f}{r.decode_tokens_per_s:>14,.0f}")
    return "\n".join(lines)


def plot_comparison(results: list[VariantResult], title: str) -> plt.Figure:
    """Two panels: validation loss vs cache size, decode speed vs cache size (log x)."""
    fig, (ax_q, ax_s) = plt.subplots(1, 2, figsize=(12, 4.2))
    for r in results:
        for ax, y in ((ax_q, r.val_loss), (ax_s, r.decode_tokens_per_s)):
            ax.scatter(r.cache_bytes_per_token, y, s=50)
            ax.annotate(r.name, (r.cache_bytes_per_token, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    for ax in (ax_q, ax_s):
        ax.set_xscale("log")
        ax.set_xlabel("KV-cache bytes per token (all layers)")
        ax.grid(alpha=0.3)
    ax_q.set_ylabel("validation loss (nats / token)")
    ax_q.set_title("Quality vs cache size")
    ax_s.set_ylabel("decode throughput (tokens / s)")
    ax_s.set_title("Decode speed vs cache size")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def results_to_dicts(results: list[VariantResult]) -> list[dict]:
    return [asdict(r) for r in results]


def results_from_dicts(rows: list[dict]) -> list[VariantResult]:
    return [VariantResult(**row) for row in rows]


# Which idea of the book attacks which cost: 2 = its main target, 1 = a side effect.
COSTS = ["compute (FLOPs)", "memory traffic (HBM bytes)", "KV-cache size", "cache fragmentation"]
IDEAS: dict[str, list[int]] = {
    "KV cache (03)": [2, 1, 0, 0],
    "sliding window (04)": [2, 1, 2, 0],
    "MQA / GQA (05-06)": [0, 2, 2, 0],
    "online softmax + FlashAttention (08-10)": [0, 2, 0, 0],
    "PagedAttention (11)": [0, 0, 1, 2],
    "MLA (12)": [0, 2, 2, 0],
}


def plot_cost_map() -> plt.Figure:
    """The book's closing map: ideas (rows) against the costs they cut (columns)."""
    grid = np.array(list(IDEAS.values()))
    fig, ax = plt.subplots(figsize=(9, 4.2))
    ax.imshow(grid, cmap="Greens", vmin=0, vmax=2.5)
    ax.set_xticks(range(len(COSTS)), labels=COSTS, rotation=20, ha="right")
    ax.set_yticks(range(len(IDEAS)), labels=list(IDEAS))
    marks = {0: "", 1: "helps", 2: "main target"}
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, marks[int(value)], ha="center", va="center", fontsize=9)
    ax.set_title("Which idea attacks which cost of attention")
    ax.set_xlabel("cost")
    ax.set_ylabel("idea (chapter)")
    fig.tight_layout()
    return fig
