"""Chapter 13: every attention variant side by side — quality, cache, decode time — and a map of the book.

* The committed seeded study (:mod:`attention_lab.quality`, ``quality_ch13.json``) beside each variant's real
  cache bytes per token: :func:`study_cache_bytes_per_token`, :func:`seed_values`, :func:`plot_quality_and_cache`,
  and what the old single GPU run said against it (:func:`single_run_lines`, :func:`gpu_decode_lines`).
* One decode step of one attention layer at a real model's size (:data:`DECODE_SHAPE`, :data:`DECODE_VARIANTS`:
  MHA, GQA, MQA, MLA absorbed and naive, a window), timed from short to long context to show where a step is
  its fixed costs and where it is its cache: :func:`decode_step`, :func:`time_decode_steps`,
  :func:`decode_breakdown`, :func:`plot_decode_timing`.
* The single-seed whole-model comparison that ``benchmarks/side_by_side.py`` runs on a GPU
  (:func:`compare_variants`, :func:`results_table`) and the book's cost map (:func:`plot_cost_map`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from attention_lab.attention import MultiHeadAttention, scaled_dot_product_attention
from attention_lab.caches.contiguous import KVCache
from attention_lab.caches.rolling import RollingKVCache
from attention_lab.data import TokenDataset
from attention_lab.mla import LatentCache, MLASettings, MultiHeadLatentAttention
from attention_lab.model import TinyGPT, TinyGPTConfig
from attention_lab.train import train
from attention_lab.validation import check_positive_int

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
    """The book's closing map, drawn to be read from the back of a lecture hall: one row per idea, one column
    per cost, each cell a labelled tile ("main target", "helps", or empty)."""
    from matplotlib.patches import Patch

    grid = np.array(list(IDEAS.values()))
    colors = {0: "#f4f4f4", 1: "#a8d5a2", 2: "#2e7d32"}
    labels = {0: "", 1: "helps", 2: "main target"}
    fig, ax = plt.subplots(figsize=(12, 6.5))
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.add_patch(plt.Rectangle((j - 0.47, i - 0.45), 0.94, 0.9, color=colors[int(value)], ec="white"))
            ax.text(j, i, labels[int(value)], ha="center", va="center", fontsize=13,
                    color="white" if value == 2 else "black", weight="bold" if value == 2 else "normal")
    wrapped = [cost.replace(" (", "\n(") for cost in COSTS]
    ax.set_xticks(range(len(COSTS)), labels=wrapped, fontsize=12)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_yticks(range(len(IDEAS)), labels=[idea.replace(" + ", " +\n") for idea in IDEAS], fontsize=12)
    ax.set_xlim(-0.5, len(COSTS) - 0.5)
    ax.set_ylim(len(IDEAS) - 0.5, -0.5)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_xlabel("the cost of attention it cuts", fontsize=12, labelpad=10)
    ax.set_ylabel("idea of the book (chapters)", fontsize=12)
    ax.legend(handles=[Patch(color=colors[2], label="main target"), Patch(color=colors[1], label="helps"),
                       Patch(facecolor=colors[0], edgecolor="0.7", label="no effect")],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=12, frameon=False)
    ax.set_title("Which idea attacks which cost of attention", fontsize=15, pad=16)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------------
# One decode step of one attention layer at a real model's size: where the time goes as the context grows
# ----------------------------------------------------------------------------------------------------------

# The attention layer of a 7-8B model (Llama-2-7B / Llama-3-8B: d_model 4096, 32 query heads of 128).
DECODE_SHAPE = dict(d_model=4096, n_heads=32, head_dim=128)


@dataclass(frozen=True)
class DecodeVariant:
    """One attention layer's decode-time shape.

    ``n_kv_heads`` None means MHA; ``window`` keeps that many positions (a rolling buffer); ``latent_dim`` set
    means MLA with a cache row of ``latent_dim + rope_dim`` numbers per token, decoded through ``mode``
    ('absorbed': attend over the latents; 'naive': decompress every cached latent every step). ``max_context``
    caps the contexts it is timed at (the naive path's work grows so fast that long contexts would take minutes).
    """

    n_kv_heads: int | None = None
    window: int | None = None
    latent_dim: int | None = None
    rope_dim: int = 64
    mode: str = "absorbed"
    max_context: int | None = None


DECODE_VARIANTS: dict[str, DecodeVariant] = {
    "MHA": DecodeVariant(),
    "GQA-8": DecodeVariant(n_kv_heads=8),  # Llama-3-8B's 8 kv heads
    "MQA": DecodeVariant(n_kv_heads=1),
    "MLA absorbed": DecodeVariant(latent_dim=512, rope_dim=64),  # DeepSeek-V2's d_c = 512, d_h^R = 64
    "MLA naive": DecodeVariant(latent_dim=512, rope_dim=64, mode="naive", max_context=4096),
    "window 4096": DecodeVariant(window=4096),  # Mistral-7B's window, here on MHA's 32 kv heads
}


def build_decode_layer(variant: DecodeVariant, d_model: int = 4096, n_heads: int = 32, head_dim: int = 128,
                       dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """The book's own attention module for ``variant``: :class:`~attention_lab.attention.MultiHeadAttention`
    (RoPE on, the reference backend, which reads shared kv heads in place) or
    :class:`~attention_lab.mla.MultiHeadLatentAttention` (decoupled RoPE) — random weights, no gradients."""
    torch.manual_seed(seed)
    if variant.latent_dim is not None:
        layer: nn.Module = MultiHeadLatentAttention(d_model, n_heads, variant.latent_dim, variant.rope_dim,
                                                    head_dim=head_dim, mode=variant.mode, backend="reference")
    else:
        layer = MultiHeadAttention(d_model, n_heads, variant.n_kv_heads, head_dim=head_dim, window=variant.window,
                                   backend="reference", rope=True)
    return layer.to(dtype).requires_grad_(False)


DecodeCache = KVCache | RollingKVCache | LatentCache  # what filled_cache returns, one layer's cache


def filled_cache(layer: nn.Module, context: int, seed: int = 0) -> DecodeCache:
    """A cache for one sequence of ``layer`` holding ``context`` positions of random entries (as if a prompt
    had been prefilled; a decode step's cost does not depend on the values): a
    :class:`~attention_lab.caches.contiguous.KVCache` ``(1, Hkv, context, D)``, a
    :class:`~attention_lab.caches.rolling.RollingKVCache` of ``min(window, context)`` slots, or MLA's
    :class:`~attention_lab.mla.LatentCache` ``(1, context, d_c + d_h^R)``."""
    check_positive_int("context", context)
    dtype = next(layer.parameters()).dtype
    generator = torch.Generator().manual_seed(seed)
    if isinstance(layer, MultiHeadLatentAttention):
        cache = layer.make_cache(1, context, "cpu", dtype)
        buffers = [cache.rows]
    elif layer.window is not None:
        cache = RollingKVCache(1, min(layer.window, context), layer.n_kv_heads, layer.head_dim, device="cpu",
                               dtype=dtype)
        buffers = [cache.keys, cache.values]
    else:
        cache = layer.make_cache(1, context, "cpu", dtype)
        buffers = [cache.keys, cache.values]
    for buffer in buffers:
        buffer.normal_(generator=generator)
    cache.length = context
    return cache


def decode_step(layer: nn.Module, cache: DecodeCache, x: torch.Tensor, context: int) -> torch.Tensor:
    """One decoding step: the token ``x`` ``(1, 1, d_model)`` at position ``context - 1`` attends to the
    ``context`` positions up to and including itself, the first ``context - 1`` of them read from ``cache``
    (made by :func:`filled_cache` for at least ``context`` positions) -> ``(1, 1, d_model)``.

    MHA/GQA/MQA and MLA (naive or absorbed, by ``layer.mode``) run their module's own forward on the cache.
    A window attends over its rolling buffer in slot order — with the rotation applied before caching the
    order of the keys does not matter to one query that may see them all — so a step reads the ``window``
    slots in place (the book's :class:`RollingKVCache.update` copies them into position order first, which is
    what a multi-token query needs and a decoding engine avoids).
    """
    check_positive_int("context", context)
    if isinstance(layer, MultiHeadLatentAttention) or layer.window is None:
        if context > cache.max_len:
            raise ValueError(f"context={context} does not fit this cache of max_len={cache.max_len}")
        cache.length = context - 1
        return layer(x, cache=cache)  # (1, 1, d_model)
    slots = cache.slots
    if context > slots and slots < layer.window:
        raise ValueError(f"context={context} needs min(window, context) = {min(layer.window, context)} slots, "
                         f"this cache has {slots}")
    position = torch.tensor([context - 1])
    q, k, v = layer.project_qkv(x)  # (1, H, 1, D), (1, Hkv, 1, D)
    q, k = layer.rotary(q, position), layer.rotary(k, position)
    slot = (context - 1) % slots
    cache.keys[:, :, slot] = k[:, :, 0]
    cache.values[:, :, slot] = v[:, :, 0]
    cache.length = context
    visible = min(context, slots)  # the window's positions context-visible … context-1, in slot order
    out = scaled_dot_product_attention(q, cache.keys[:, :, :visible], cache.values[:, :, :visible])  # (1, H, 1, D)
    return layer.out_proj(out.transpose(1, 2).reshape(1, 1, layer.n_heads * layer.head_dim))


def cache_bytes_read(layer: nn.Module, context: int) -> int:
    """Bytes of cache one decode step at ``context`` reads: K and V of ``min(window, context)`` positions and
    ``n_kv_heads`` heads, or MLA's ``context`` rows of ``d_c + d_h^R`` numbers (both paths read every row; the
    naive one then writes and reads ``2 · n_heads · head_dim`` decompressed numbers per row besides)."""
    check_positive_int("context", context)
    element = next(layer.parameters()).element_size()
    if isinstance(layer, MultiHeadLatentAttention):
        return context * layer.cache_numbers_per_token * element
    kept = context if layer.window is None else min(layer.window, context)
    return 2 * layer.n_kv_heads * layer.head_dim * kept * element


def attention_flops(layer: nn.Module, context: int) -> int:
    """FLOPs one decode step spends on the cache (not the projections of the new token): scores and weighted
    sum over the ``min(window, context)`` cached positions, ``4 · n_heads · head_dim`` per position for
    MHA/GQA/MQA; MLA absorbed ``2 · n_heads · (2 d_c + d_h^R)`` per position (every head dots its absorbed query
    with the whole row, then sums the latents); MLA naive adds decompressing every row into keys and values,
    ``4 · d_c · n_heads · head_dim``, and attends at head width."""
    check_positive_int("context", context)
    if isinstance(layer, MultiHeadLatentAttention):
        heads, d_c, d_r, d_h = layer.n_heads, layer.kv_latent_dim, layer.rope_dim, layer.head_dim
        if layer.mode == "absorbed":
            return context * 2 * heads * (2 * d_c + d_r)
        return context * (4 * d_c * heads * d_h + 2 * heads * (2 * d_h + d_r))
    kept = context if layer.window is None else min(layer.window, context)
    return kept * 4 * layer.n_heads * layer.head_dim


def weight_bytes(layer: nn.Module) -> int:
    """Bytes of the layer's weights, all of which every decode step reads (the step's fixed traffic)."""
    return sum(p.numel() * p.element_size() for p in layer.parameters())


@dataclass(frozen=True)
class DecodeTiming:
    variant: str
    context: int  # positions attended to, the new token included
    seconds: float  # fastest of the repeats, one step
    cache_bytes: int  # cache read by the step (cache_bytes_read)
    weight_bytes: int  # weights read by the step (weight_bytes)
    cache_flops: int  # arithmetic the step does over the cache (attention_flops)


def time_decode_steps(names: list[str], contexts: list[int], repeats: int = 3, rounds: int = 2,
                      min_seconds: float = 0.1, max_repeats: int = 25,
                      variants: dict[str, DecodeVariant] | None = None, progress: bool = True,
                      **shape: int) -> list[DecodeTiming]:
    """Time :func:`decode_step` of each variant (a key of ``variants``, default :data:`DECODE_VARIANTS`) at
    each context (up to the variant's ``max_context``) and keep the fastest run
    (:func:`~attention_lab.costs.timing.least_time`: process CPU time, so set one thread).

    A busy machine only ever adds time, so: each point runs at least ``repeats`` times after one warm-up, more
    for fast steps (as many as fill ``min_seconds``, at most ``max_repeats``), in each of ``rounds`` rounds; within
    a round the variants take turns at every context, so a disturbance lands on all variants alike rather than
    on one variant's whole series. ``shape`` overrides :data:`DECODE_SHAPE` (``d_model``, ``n_heads``,
    ``head_dim``). All layers and caches are alive together: at the default shape and 32k positions about
    1.2 GiB of weights and 1.5 GiB of caches in fp32."""
    from attention_lab.progress import tqdm

    from attention_lab.costs.timing import least_time

    variants = DECODE_VARIANTS if variants is None else variants
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise ValueError(f"names must be keys of {list(variants)}, got {unknown}")
    check_positive_int("rounds", rounds)
    plan = {n: [c for c in contexts if variants[n].max_context is None or c <= variants[n].max_context]
            for n in names}
    names = [n for n in names if plan[n]]
    layers = {n: build_decode_layer(variants[n], **{**DECODE_SHAPE, **shape}) for n in names}
    caches = {n: filled_cache(layers[n], max(plan[n])) for n in names}
    inputs = {n: torch.randn(1, 1, layers[n].d_model, dtype=next(layers[n].parameters()).dtype) for n in names}
    best: dict[tuple[str, int], float] = {}
    with tqdm(total=rounds * sum(len(plan[n]) for n in names), desc="decode steps", disable=not progress) as bar:
        for _ in range(rounds):
            for context in sorted(set(contexts)):
                for name in (n for n in names if context in plan[n]):
                    def step(name: str = name, context: int = context) -> torch.Tensor:
                        return decode_step(layers[name], caches[name], inputs[name], context)

                    with torch.no_grad():
                        first = least_time(step, repeats=1)
                        more = min(max_repeats, max(repeats, int(min_seconds / max(first, 1e-9)))) - 1
                        seconds = min(first, least_time(step, repeats=more, warmup=0)) if more > 0 else first
                    best[name, context] = min(best.get((name, context), float("inf")), seconds)
                    bar.update()
    return [DecodeTiming(name, context, best[name, context], cache_bytes_read(layers[name], context),
                         weight_bytes(layers[name]), attention_flops(layers[name], context))
            for name in names for context in plan[name]]


def measure_read_bandwidth(n_bytes: int = 2**28, repeats: int = 3) -> float:
    """Bytes per second this process reads from memory: the fastest ``sum`` over an fp32 tensor of ``n_bytes``
    (far larger than the CPU's caches, so every byte comes from DRAM)."""
    from attention_lab.costs.timing import least_time

    check_positive_int("n_bytes", n_bytes)
    data = torch.ones(max(1, n_bytes // 4))
    return data.numel() * 4 / least_time(lambda: data.sum(), repeats=repeats)


@dataclass(frozen=True)
class DecodeBreakdown:
    """What a variant's step costs at its shortest and longest timed context."""

    variant: str
    short_context: int
    long_context: int
    short_seconds: float  # ≈ the fixed costs: projections (reading the weights) and overhead
    long_seconds: float
    weight_bytes: int
    cache_bytes_long: int
    cache_bytes_short: int
    flops_long: int
    flops_short: int

    @property
    def growth_seconds(self) -> float:
        """Time the longer context added: the cost of reading (and attending over) more cache."""
        return self.long_seconds - self.short_seconds

    @property
    def cache_share(self) -> float:
        """Share of the long-context step that the growth with context takes."""
        return max(0.0, self.growth_seconds) / self.long_seconds

    @property
    def growth_bytes_per_second(self) -> float:
        """Extra cache bytes per extra second between the two contexts (inf if the time did not grow)."""
        extra = self.cache_bytes_long - self.cache_bytes_short
        return float("inf") if self.growth_seconds <= 0 else extra / self.growth_seconds

    @property
    def flops_per_byte(self) -> float:
        """Arithmetic per byte of cache read: what the step does with each cached number it reads."""
        return self.flops_long / self.cache_bytes_long

    def sentence(self) -> str:
        """One line: the step at both contexts, the growth's share of the long step, cache bytes per extra
        second, and the arithmetic per cache byte."""
        rate = self.growth_bytes_per_second
        return (f"{self.variant}: {self.short_seconds * 1e3:.1f} ms at {self.short_context:,} positions (fixed: "
                f"{self.weight_bytes / 2**20:,.0f} MiB of weights), {self.long_seconds * 1e3:.1f} ms at "
                f"{self.long_context:,} ({self.cache_bytes_long / 2**20:,.1f} MiB of cache): the growth is "
                f"{self.cache_share:.0%} of the step"
                + ("" if rate == float("inf") else f", {rate / 1e9:.1f} GB of cache per extra second")
                + f"; {self.flops_per_byte:.1f} FLOP per cache byte")


def decode_breakdown(rows: list[DecodeTiming]) -> dict[str, DecodeBreakdown]:
    """Per variant, its shortest and longest timed context side by side (:class:`DecodeBreakdown`)."""
    found = {}
    for name in dict.fromkeys(r.variant for r in rows):
        mine = sorted((r for r in rows if r.variant == name), key=lambda r: r.context)
        short, long = mine[0], mine[-1]
        found[name] = DecodeBreakdown(name, short.context, long.context, short.seconds, long.seconds,
                                      short.weight_bytes, long.cache_bytes, short.cache_bytes, long.cache_flops,
                                      short.cache_flops)
    return found


def decode_timing_table(rows: list[DecodeTiming]) -> str:
    """Milliseconds per step (and MiB of cache read) per variant and context, with each variant's weight MiB."""
    contexts = sorted({r.context for r in rows})
    names = list(dict.fromkeys(r.variant for r in rows))
    head = f"{'variant':<14}{'weights':>9}" + "".join(f"{c:>18,}" for c in contexts)
    lines = [f"{'':<23}" + f"{'ms per step (MiB of cache read) at this many positions':^{18 * len(contexts)}}",
             head]
    for name in names:
        mine = {r.context: r for r in rows if r.variant == name}
        first = next(iter(mine.values()))
        cells = "".join(f"{mine[c].seconds * 1e3:>9.1f} ({mine[c].cache_bytes / 2**20:>6.1f})" if c in mine
                        else f"{'—':>18}" for c in contexts)
        lines.append(f"{name:<14}{first.weight_bytes / 2**20:>5.0f} MiB" + cells)
    return "\n".join(lines)


def plot_decode_timing(rows: list[DecodeTiming], read_bytes_per_second: float | None = None,
                       title: str = "One decode step of one attention layer") -> plt.Figure:
    """Left: ms per step against context (log-log). Right: the time the context added (over the variant's
    shortest context) against the cache bytes read, with the line of reading at ``read_bytes_per_second``."""
    fig, (ax_t, ax_g) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name in dict.fromkeys(r.variant for r in rows):
        mine = sorted((r for r in rows if r.variant == name), key=lambda r: r.context)
        line = ax_t.plot([r.context for r in mine], [r.seconds * 1e3 for r in mine], marker="o", label=name)[0]
        grown = [((r.cache_bytes - mine[0].cache_bytes) / 2**20, (r.seconds - mine[0].seconds) * 1e3)
                 for r in mine[1:] if r.seconds > mine[0].seconds]
        if grown:
            ax_g.plot(*zip(*grown), marker="o", color=line.get_color(), label=name)
    if read_bytes_per_second:
        sizes = np.geomspace(1.0, max(r.cache_bytes for r in rows) / 2**20)
        ax_g.plot(sizes, sizes * 2**20 / read_bytes_per_second * 1e3, "k--", lw=1,
                  label=f"reading at {read_bytes_per_second / 1e9:.1f} GB/s (measured)")
    for ax, where in ((ax_t, "upper left"), (ax_g, "lower right")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=9, loc=where)
    ax_t.set_xlabel("context (positions attended to)")
    ax_t.set_ylabel("time per step (ms)")
    ax_t.set_title("Step time: flat = fixed costs, rising = the cache")
    ax_g.set_xlabel("cache the longer context added to the read (MiB)")
    ax_g.set_ylabel("time added over the shortest context (ms)")
    ax_g.set_title("What the context added, against the bytes it added")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------------
# The committed quality study (attention_lab.quality, quality_ch13.json) beside each variant's cache
# ----------------------------------------------------------------------------------------------------------


def study_cache_bytes_per_token(report: dict, objective: str = "corpus") -> dict[str, float]:
    """KV-cache bytes per token (all layers, fp32 as trained) of each variant of a :mod:`attention_lab.quality`
    study, from the real cache tensors of its TinyGPT at the study's context length: ``new_cache(1, context)``
    bytes divided by ``context`` (a window's buffer holds ``window`` positions, so per token it is
    ``window / context`` of MHA's)."""
    found = {}
    for name, entry in report["variants"][objective].items():
        config = TinyGPTConfig(**entry["config"])
        found[name] = TinyGPT(config).new_cache(1, config.context_length).nbytes / config.context_length
    return found


def seed_values(report: dict, objective: str) -> dict[str, list[float]]:
    """Each variant's final metric (validation loss for the corpus, accuracy for recall), one value per seed
    in the report's seed order."""
    metric = report["objectives"][objective]["metric"]
    found = {}
    for name in report["variants"][objective]:
        by_seed = {r["seed"]: r["final"][metric] for r in report["runs"]
                   if (r["objective"], r["variant"]) == (objective, name)}
        found[name] = [by_seed[s] for s in report["seeds"]]
    return found


def plot_quality_and_cache(report: dict, cache_bytes: dict[str, float]) -> plt.Figure:
    """Three panels over the study's variants: corpus validation loss and recall accuracy (mean ± sd over the
    seeds as error bars, every seed as a dot) and KV-cache bytes per token (``cache_bytes``)."""
    names = list(report["variants"]["corpus"])
    seeds = report["seeds"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    panels = [("corpus", "validation loss (nats / token)", "Corpus: lower is better"),
              ("recall", "recall accuracy (held-out)", "Associative recall: higher is better")]
    x = np.arange(len(names))
    for ax, (objective, label, title) in zip(axes, panels):
        values = seed_values(report, objective)
        means = [float(np.mean(values[n])) for n in names]
        sds = [float(np.std(values[n], ddof=1)) if len(values[n]) > 1 else 0.0 for n in names]
        ax.errorbar(x, means, yerr=sds, fmt="o", color="C0", ms=8, capsize=6, lw=2, label="mean ± sd")
        for i, n in enumerate(names):
            offsets = np.linspace(-0.15, 0.15, len(values[n]))
            ax.scatter(x[i] + offsets, values[n], color="C1", s=18, zorder=3,
                       label=f"each of the {len(seeds)} seeds" if i == 0 else None)
        ax.set_ylabel(label)
        ax.set_title(title)
        if objective == "recall":
            ax.axhline(report["objectives"]["recall"]["task"]["chance"], color="k", ls=":", lw=1, label="chance")
            ax.set_ylim(0, 1.05)
        ax.legend(fontsize=9)
    ax_c = axes[2]
    ax_c.bar(x, [cache_bytes[n] for n in names], color="C2")
    for i, n in enumerate(names):
        ax_c.annotate(f"{cache_bytes[n]:,.0f}", (x[i], cache_bytes[n]), ha="center", va="bottom", fontsize=9)
    ax_c.set_ylabel("KV-cache bytes per token (all layers, fp32)")
    ax_c.set_title(f"Cache per token at context {report['model']['context_length']}")
    for ax in axes:
        ax.set_xticks(x, labels=names, rotation=30, ha="right")
        ax.set_xlabel("variant")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{len(names)} variants, parameters matched, over {len(seeds)} seeds "
                 f"({', '.join(f'{o} {n:,} steps' for o, n in report['steps'].items())})")
    fig.tight_layout()
    return fig


def single_run_lines(old: dict, study: dict) -> list[str]:
    """What the committed single-seed GPU run (side_by_side.json) said against what the seeded, matched study
    says: the same model on two kernels (its own run-to-run noise), and MQA − MHA in both."""
    by_name = {r["name"]: r for r in old["results"]}
    mha, flash, mqa = by_name["MHA"], by_name["MHA + Triton flash"], by_name["MQA"]
    corpus = seed_values(study, "corpus")
    sd_mha = float(np.std(corpus["MHA"], ddof=1))
    gap = {c["a"]: c for c in study["conclusions"] if c["metric"] == "val_loss"}["MQA"]
    noise = flash["val_loss"] - mha["val_loss"]
    mqa_gap = mqa["val_loss"] - mha["val_loss"]
    return [
        f"single run: 'MHA + Triton flash' − MHA = {noise:+.3f} nats — the same model and weights' initialisation, "
        f"only the attention kernel differs: this is that run's noise",
        f"single run: MQA − MHA = {mqa_gap:+.3f} nats ({abs(mqa_gap / noise):.1f}× that noise), with MQA at "
        f"{mqa['parameters']:,} parameters against MHA's {mha['parameters']:,} "
        f"({mqa['parameters'] / mha['parameters'] - 1:+.0%}: not matched)",
        f"study: MQA − MHA = {gap['difference']['mean']:+.3f} ± {gap['difference']['sd']:.3f} nats over "
        f"{len(study['seeds'])} seeds at matched parameters (MHA's seed-to-seed sd {sd_mha:.3f}): "
        + ("within the spread" if not gap["resolved"] else "resolved"),
    ]


def gpu_decode_lines(old: dict, bandwidth_bytes_per_s: float) -> list[str]:
    """What the committed GPU decode column measured: per variant, one step's time (batch / tokens per s) and
    how long reading its whole cache at the end of the context takes at ``bandwidth_bytes_per_s``."""
    batch, context = old["speed_batch"], old["config"]["context_length"]
    lines = []
    for r in old["results"]:
        step = batch / r["decode_tokens_per_s"]
        cache = r["cache_bytes_per_token"] * context * batch
        lines.append(f"{r['name']:<20} step {step * 1e3:5.2f} ms; whole cache {cache / 2**20:5.1f} MiB, read in "
                     f"{cache / bandwidth_bytes_per_s * 1e3:.3f} ms = {cache / bandwidth_bytes_per_s / step:.1%} "
                     f"of the step")
    return lines
