"""What chapter 12 reads out of its committed results: the latent-rank study and the MLA decode benchmark.

* :func:`latent_rank_summary` and :func:`latent_rank_findings` turn the multi-seed study
  ``quality_ch12.json`` (:mod:`attention_lab.quality`: MHA, GQA-2, MQA and MLA at several latent ranks
  ``d_c``, parameters matched, corpus loss and associative recall) into numbers per rank and printed
  sentences; :func:`plot_latent_rank_cost` draws what the rank costs, with MHA/GQA/MQA as reference lines.
* :func:`plot_mla_decode` draws ``mla_decode.json`` (one decode step of DeepSeek-V2's attention layer:
  naive against absorbed, time and speed-up against context) and, given ``mla_kernel_sweep.json``, the
  Triton latent kernel alone against the copy bandwidth. ``benchmarks/mla_decode.py`` saves its PNG
  with the same function.
"""

from __future__ import annotations

from typing import Sequence

from attention_lab.quality import compare, mean_sd, metric_values, variant_names

LEARNED = 0.9  # a seed "learned the lookup" when its final recall accuracy reaches this


def latent_ranks(report: dict, objective: str = "corpus") -> dict[str, int]:
    """``{variant: d_c}`` for the MLA variants of ``report`` on ``objective``, largest rank first."""
    ranks = {}
    for variant in variant_names(report, objective):
        config = report["variants"][objective][variant]["config"]
        if config["attention"] == "mla":
            ranks[variant] = int(config["settings"]["kv_latent_dim"])
    return dict(sorted(ranks.items(), key=lambda item: -item[1]))


def cache_numbers_per_token(report: dict, objective: str = "corpus") -> dict[str, int]:
    """``{variant: numbers cached per token per layer}``, read off the real cache of each variant's model
    (rebuilt from the study's config): ``2·n_kv·d_h`` for MHA/GQA/MQA, ``d_c + d_h^R`` for MLA."""
    import torch

    from attention_lab.model import TinyGPT, TinyGPTConfig

    out = {}
    for variant in variant_names(report, objective):
        config = TinyGPTConfig(**report["variants"][objective][variant]["config"])
        with torch.random.fork_rng(devices=[]):
            cache = TinyGPT(config).new_cache(batch_size=1, max_len=1)
        out[variant] = cache.nbytes // (4 * config.n_layers)  # fp32: 4 bytes a number
    return out


def latent_rank_summary(report: dict) -> dict:
    """Per objective, the final metric of every variant over the seeds of the study.

    Returns ``{objective: {"metric", "ranks": [{"variant", "d_c", "mean", "sd", "values"}, ...] (largest rank
    first), "references": [{"variant", "mean", "sd", "values"}, ...] (the variants without a latent)}}``;
    ``values`` holds one number per seed, in ``report["seeds"]`` order.
    """
    out = {}
    for objective, settings in report["objectives"].items():
        ranks = latent_ranks(report, objective)

        def entry(variant: str) -> dict:
            values = metric_values(report, objective, variant)
            found = mean_sd(values)
            return {"variant": variant, "mean": found.mean, "sd": found.sd, "values": values}

        out[objective] = {
            "metric": settings["metric"],
            "ranks": [{**entry(v), "d_c": d_c} for v, d_c in ranks.items()],
            "references": [entry(v) for v in variant_names(report, objective) if v not in ranks],
        }
    return out


def latent_rank_findings(report: dict) -> list[str]:
    """Sentences about what the latent rank costs, each printed from the study's numbers.

    Corpus: the ranks whose validation loss differs from the baseline's by at least twice the seed-to-seed
    spread (:func:`attention_lab.quality.compare`), and those with only a hint. Recall: for every rank, its
    accuracy seed by seed, how many seeds learned the lookup (final accuracy ≥ :data:`LEARNED`) and when
    each reached it — at small rank the seeds split, so their mean ± sd alone would mislead.
    """
    baseline = report["baseline"]
    lines = []
    corpus = "corpus" in report["objectives"]
    if corpus:
        base = metric_values(report, "corpus", baseline)
        found = {v: compare(v, metric_values(report, "corpus", v), baseline, base, what="validation loss")
                 for v in latent_ranks(report, "corpus")}
        worse = [v for v, c in found.items() if c.resolved]
        hint = [v for v, c in found.items() if c.hint]
        same = [v for v, c in found.items() if not c.resolved and not c.hint]
        n = len(report["seeds"])
        beyond = f"beyond twice the spread at {', '.join(worse)}" if worse else "no rank beyond twice the spread"
        lines.append(f"corpus loss over {n} seeds, against {baseline}: " + beyond
                     + (f"; a hint (one to two spreads) at {', '.join(hint)}" if hint else "")
                     + (f"; within the spread at {', '.join(same)}" if same else "") + ".")
    if "recall" in report["objectives"]:
        budget = report["steps"]["recall"]
        for variant, d_c in latent_ranks(report, "recall").items():
            values = metric_values(report, "recall", variant)
            reached = metric_values(report, "recall", variant, "steps_to_90")
            learned = sum(v >= LEARNED for v in values)
            seeds = ", ".join(
                f"seed {s} {v:.3f} ({f'90 % at step {r:,}' if r is not None else f'not 90 % within {budget:,} steps'})"
                for s, v, r in zip(report["seeds"], values, reached))
            lines.append(f"recall at d_c={d_c}: {learned} of {len(values)} seeds learned the lookup "
                         f"(final accuracy ≥ {LEARNED:.0%}); {seeds}.")
    return lines


def plot_latent_rank_cost(report: dict, axes: Sequence | None = None):
    """What the latent rank costs: final validation loss and recall accuracy against ``d_c`` (log scale),
    mean ± sd over the seeds as error bars, every seed as a small dot (at small rank the seeds split),
    and the variants without a latent (MHA, GQA, MQA) as horizontal lines. Returns the two ``Axes``."""
    import matplotlib.pyplot as plt

    summary = latent_rank_summary(report)
    objectives = [o for o in ("corpus", "recall") if o in summary]
    if axes is None:
        axes = plt.subplots(1, len(objectives), figsize=(6.2 * len(objectives), 4.2), squeeze=False)[1][0]
    labels = {"val_loss": "final validation loss (nats / token)", "accuracy": "final recall accuracy (fraction)"}
    n = len(report["seeds"])
    for ax, objective in zip(axes, objectives):
        entry = summary[objective]
        ranks = [r["d_c"] for r in entry["ranks"]]
        ax.errorbar(ranks, [r["mean"] for r in entry["ranks"]], yerr=[r["sd"] for r in entry["ranks"]], fmt="o-",
                    color="tab:red", capsize=4, lw=2, label=f"MLA, mean ± sd over {n} seeds")
        for i, r in enumerate(entry["ranks"]):
            ax.scatter([r["d_c"]] * len(r["values"]), r["values"], s=14, color="tab:red", alpha=0.45, zorder=3,
                       label="MLA, one seed" if i == 0 else None)
        for reference, style in zip(entry["references"], ("-", "--", ":", "-.")):
            ax.axhline(reference["mean"], color="gray", ls=style, lw=1.2,
                       label=f"{reference['variant']} ({reference['mean']:.3f} ± {reference['sd']:.3f})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, labels=[str(r) for r in ranks])
        ax.invert_xaxis()  # from a large latent (cheap compression) to a tiny one
        ax.set_xlabel("latent rank d_c (latent numbers per token per layer, log scale)")
        ax.set_ylabel(labels.get(entry["metric"], entry["metric"]))
        steps = report["steps"][objective]
        ax.set_title(f"{objective} after {steps:,} steps: the cost of a smaller latent")
        if entry["metric"] == "accuracy":
            ax.axhline(report["objectives"]["recall"]["task"]["chance"], color="k", ls=":", lw=0.8, label="chance")
            ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left" if entry["metric"] == "val_loss" else "lower left")
    return axes


def plot_recall_curves_by_seed(report: dict, variants: Sequence[str], ax=None):
    """Held-out recall accuracy against training step, one line per (variant, seed) — colour = variant,
    line style = seed — so that a seed that learns the lookup late, or not at all, stays visible (a mean
    ± sd band would blur it). Returns the ``Axes``."""
    import matplotlib.pyplot as plt

    ax = plt.subplots(figsize=(6.5, 4))[1] if ax is None else ax
    styles = ("-", "--", ":", "-.")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, variant in enumerate(variants):
        runs = {r["seed"]: r for r in report["runs"] if r["objective"] == "recall" and r["variant"] == variant}
        for j, seed in enumerate(report["seeds"]):
            curve = runs[seed]["curve"]
            ax.plot(curve["steps"], curve["val_accuracy"], styles[j % len(styles)], color=colours[i % len(colours)],
                    label=f"{variant}, seed {seed}")
    ax.axhline(report["objectives"]["recall"]["task"]["chance"], color="k", ls=":", lw=0.8, label="chance")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out recall accuracy (fraction)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Recall, seed by seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, ncol=2)
    return ax


# ----------------------------------------------------------------------------------------------------------
# The decode benchmark (benchmarks/mla_decode.py)
# ----------------------------------------------------------------------------------------------------------

DECODE_LABELS = {"naive": "MLA naive (decompress cache)", "absorbed": "MLA absorbed, SDPA core",
                 "absorbed_triton": "MLA absorbed, Triton split-K latent kernel",
                 "mha_sdpa": "MHA attention core only, same heads, full K/V cache (SDPA)"}
SPEEDUP_LABELS = {"graph": "SDPA core, GPU time (CUDA graph)", "eager": "SDPA core, eager",
                  "triton_graph": "Triton kernel, GPU time (CUDA graph)", "triton_eager": "Triton kernel, eager"}
KERNEL_TARGET = 0.7  # DESIGN.md's aim for the latent kernel at long context: 70 % of the copy bandwidth


def kernel_fraction_of_copy(kernel: dict) -> dict[str, dict[str, list[float]]]:
    """Per tile of ``kernel["kernel_rows"]``: contexts, and cache bytes per second ÷ copy bandwidth at the
    median (``of_copy``), the slowest (``low``) and the fastest (``high``) of its runs."""
    copy = kernel["kernel_copy_tb_s"] * 1e12
    out: dict[str, dict[str, list[float]]] = {}
    for row in kernel["kernel_rows"]:
        entry = out.setdefault(row["config"], {"context": [], "of_copy": [], "low": [], "high": []})
        entry["context"].append(row["context"])
        entry["of_copy"].append(row["of_copy"])
        entry["low"].append(row["cache_bytes"] / (max(row["runs_ms"]) * 1e-3) / copy)
        entry["high"].append(row["cache_bytes"] / (min(row["runs_ms"]) * 1e-3) / copy)
    return out


def _context_axis(ax, contexts: Sequence[int]) -> None:
    """A log₂ context axis labelled 1k, 4k, … at the measured contexts."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(contexts), labels=[f"{c // 1024}k" if c >= 1024 else str(c) for c in contexts])
    ax.set_xlabel("context (cached tokens, log scale)")


def plot_mla_decode(decode: dict, kernel: dict | None = None):
    """The MLA decode benchmark as a figure: time per decode step of each path against context (log-log),
    the speed-up of absorbed over naive, and — from ``kernel`` (``mla_kernel_sweep.json``, or ``decode``
    itself when it carries ``kernel_rows``) — the latent kernel alone as a fraction of the copy bandwidth,
    with the spread of its runs. Each panel names the card it was measured on. Returns the ``Figure``."""
    import matplotlib.pyplot as plt

    if kernel is None and "kernel_rows" in decode:
        kernel = decode
    rows = decode["rows"]
    card = decode["environment"].get("card", "CPU")
    fig, axes = plt.subplots(1, 3 if kernel else 2, figsize=(17 if kernel else 11.5, 4.4))
    ax_time, ax_speed = axes[0], axes[1]
    for path, style in (("naive", "o-"), ("absorbed", "s-"), ("absorbed_triton", "D-"), ("mha_sdpa", "^--")):
        points = [r for r in rows if r["path"] == path]
        if points:
            ax_time.plot([r["context"] for r in points], [r["graph_ms"] for r in points], style,
                         label=DECODE_LABELS[path])
    _context_axis(ax_time, sorted({r["context"] for r in rows}))
    ax_time.set_yscale("log")
    ax_time.set_ylabel("GPU time per decode step (ms, one layer, log)")
    ax_time.set_title(f"Decode step, batch {decode['batch']}, {decode.get('dtype', 'bf16')} — {card}", fontsize=10)
    ax_time.grid(alpha=0.3, which="both")
    ax_time.legend(fontsize=7)
    speedups = decode["speedup_absorbed_over_naive"]
    contexts = sorted(int(c) for c in speedups)
    for key, style in (("graph", "s-"), ("eager", "s--"), ("triton_graph", "D-"), ("triton_eager", "D--")):
        if key in speedups[str(contexts[0])]:
            ax_speed.plot(contexts, [speedups[str(c)][key] for c in contexts], style, label=SPEEDUP_LABELS[key])
    ax_speed.axhline(1, color="k", lw=0.8, ls=":", label="no gain")
    _context_axis(ax_speed, contexts)
    ax_speed.set_yscale("log")
    ax_speed.set_ylabel("speed-up: naive time / absorbed time (×, log)")
    ax_speed.set_title(f"Absorbed over naive — {card}", fontsize=10)
    ax_speed.grid(alpha=0.3, which="both")
    ax_speed.legend(fontsize=7)
    if kernel:
        ax = axes[2]
        tiles = {r["config"]: r["tile"] for r in kernel["kernel_rows"]}
        for name, entry in kernel_fraction_of_copy(kernel).items():
            tile = tiles[name]
            ax.errorbar(entry["context"], entry["of_copy"],
                        yerr=[[m - lo for m, lo in zip(entry["of_copy"], entry["low"])],
                              [hi - m for m, hi in zip(entry["of_copy"], entry["high"])]], fmt="D-", capsize=2,
                        label=f"{name}: {tile['block_h']} heads, {tile['tile_n']} keys, {tile['num_warps']} warps")
        ax.axhline(KERNEL_TARGET, color="gray", lw=1, ls=":", label=f"aim: {KERNEL_TARGET:.0%} of copy")
        _context_axis(ax, sorted({r["context"] for r in kernel["kernel_rows"]}))
        ax.set_ylim(0, 1)
        ax.set_ylabel("cache bytes/s ÷ measured copy bandwidth")
        heads = kernel.get("sizes", decode.get("sizes", {})).get("n_heads", "?")
        ax.set_title(f"Latent kernel alone, B={kernel['kernel_batch']}, {heads} heads — "
                     f"{kernel['environment'].get('card', '?')}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5, loc="center left")
    fig.suptitle("MLA decode, one layer of DeepSeek-V2's attention sizes", fontsize=11)
    fig.tight_layout()
    return fig
