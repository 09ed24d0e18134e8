"""Why decoding is memory-bound, and what sharing key/value heads buys (chapter 05).

One decoding step of one attention layer, for ``b`` sequences that have ``n`` cached tokens each,
``h`` query heads and ``g`` key/value heads of size ``k``, ``e`` bytes per number:

    attention FLOPs = 4·b·h·n·k      (h·n dot products q·k, and the h·n-term weighted sum of values)
    cache bytes     = 2·b·g·n·k·e    (every cached key and value is read once)

so the attention part does ``2h / (g·e)`` FLOPs per byte it reads, whatever ``n`` and ``b``: one FLOP
per byte for fp16 multi-head attention (g = h), far left of any GPU's ridge point (hundreds of FLOP
per byte), so the step waits on memory. Multi-query attention (g = 1, Shazeer 2019) reads h times
fewer bytes for the same FLOPs. Over a whole generation Shazeer's accounting gives a
memory-to-arithmetic ratio of Θ(n/d + 1/b) for multi-head and Θ(1/d + n/(d·h) + 1/b) for
multi-query attention (:func:`shazeer_ratio`; :func:`incremental_ratio` is the exact count).

:func:`decode_speed_sweep` measures tokens/s of TinyGPT decoding at growing context.
"""

from __future__ import annotations

import dataclasses

import torch

from attention_lab.validation import check_divides, check_positive_int
from attention_lab.costs.timing import time_function
from attention_lab.costs.roofline import KernelCost


def _check_heads(n_heads: int, n_kv_heads: int) -> None:
    check_positive_int("n_heads", n_heads)
    check_positive_int("n_kv_heads", n_kv_heads)
    check_divides("n_kv_heads", n_kv_heads, "n_heads", n_heads)


def decode_attention_cost(batch: int, context: int, n_heads: int, n_kv_heads: int, head_dim: int,
                          bytes_per_element: int = 2) -> KernelCost:
    """The attention of one decoding step, one layer: q ``(b, h, 1, k)`` against a cache ``(b, g, n, k)``.

    FLOPs ``4·b·h·n·k``; reads the cached keys and values ``2·b·g·n·k`` and the queries ``b·h·k``;
    writes the output ``b·h·k`` (numbers times ``bytes_per_element``).
    """
    for name, value in (("batch", batch), ("context", context), ("head_dim", head_dim),
                        ("bytes_per_element", bytes_per_element)):
        check_positive_int(name, value)
    _check_heads(n_heads, n_kv_heads)
    flops = 4.0 * batch * n_heads * context * head_dim
    read = (2 * batch * n_kv_heads * context * head_dim + batch * n_heads * head_dim) * bytes_per_element
    written = batch * n_heads * head_dim * bytes_per_element
    return KernelCost(f"decode attention (h={n_heads}, g={n_kv_heads})", flops, float(read), float(written))


def decode_layer_cost(batch: int, context: int, d_model: int, n_heads: int, n_kv_heads: int,
                      bytes_per_element: int = 2) -> KernelCost:
    """One decoding step through a whole attention sub-layer: projections + attention + output projection.

    The weights (``d·k·(2h + 2g)`` numbers: W_q, W_k, W_v, W_o) are read once per step whatever the
    batch; the new token's ``x`` ``(b, d)`` is read, its ``k, v`` ``(b, g, 1, k)`` and the output
    ``(b, d)`` are written. Head size ``k = d / h``.
    """
    check_positive_int("d_model", d_model)
    _check_heads(n_heads, n_kv_heads)
    check_divides("n_heads", n_heads, "d_model", d_model)
    head_dim = d_model // n_heads
    attention = decode_attention_cost(batch, context, n_heads, n_kv_heads, head_dim, bytes_per_element)
    weights = d_model * head_dim * (2 * n_heads + 2 * n_kv_heads)  # W_q, W_o: d·h·k each; W_k, W_v: d·g·k each
    flops = attention.flops + 2.0 * batch * weights
    read = attention.bytes_read + (weights + batch * d_model) * bytes_per_element
    written = attention.bytes_written + (2 * batch * n_kv_heads * head_dim + batch * d_model) * bytes_per_element
    return KernelCost(f"decode layer (h={n_heads}, g={n_kv_heads})", flops, read, written)


def incremental_ratio(n_tokens: int, d_model: int, n_heads: int, n_kv_heads: int, batch: int) -> float:
    """Memory accesses per arithmetic operation over generating ``n_tokens`` tokens one at a time.

    Sums :func:`decode_layer_cost` (counting numbers, not bytes) over the steps with 1, 2, …, n
    cached tokens — the exact count behind Shazeer's Θ expressions (:func:`shazeer_ratio`). Those assume
    ``n <= d`` (arithmetic Θ(b·n·d²)); for longer contexts the attention's own FLOPs grow with n too and
    the exact ratio levels off.
    """
    check_positive_int("n_tokens", n_tokens)
    memory, arithmetic = 0.0, 0.0
    for context in range(1, n_tokens + 1):
        step = decode_layer_cost(batch, context, d_model, n_heads, n_kv_heads, bytes_per_element=1)
        memory += step.bytes_moved
        arithmetic += step.flops
    return memory / arithmetic


def shazeer_ratio(n_tokens: int, d_model: int, n_heads: int, n_kv_heads: int, batch: int) -> float:
    """Shazeer (2019)'s memory-to-arithmetic ratio of incremental decoding, without its constants.

    ``n·g/(d·h) + 1/d + 1/b``: with ``g = h`` (multi-head) this is Θ(n/d + 1/b) — the 1/d is
    dominated by n/d — and with ``g = 1`` (multi-query) Θ(1/d + n/(d·h) + 1/b). The n/d term is the
    cache, 1/d the per-token activations, 1/b the weights (read once per step for the whole batch).
    """
    for name, value in (("n_tokens", n_tokens), ("d_model", d_model), ("batch", batch)):
        check_positive_int(name, value)
    _check_heads(n_heads, n_kv_heads)
    return n_tokens * n_kv_heads / (d_model * n_heads) + 1.0 / d_model + 1.0 / batch


@torch.no_grad()
def filled_cache(model, batch_size: int, max_len: int):
    """A cache of ``model`` for ``batch_size`` sequences of up to ``max_len`` tokens, every slot written with
    random numbers (so the memory is really touched: untouched zero pages would read from nowhere)."""
    cache = model.new_cache(batch_size, max_len)
    for layer in cache.layers:
        layer.keys.uniform_(-1.0, 1.0)  # (B, Hkv, max_len, D)
        layer.values.uniform_(-1.0, 1.0)
    return cache


@torch.no_grad()
def time_decode_step(model, batch_size: int, context: int, warmup: int = 2, repeats: int = 5, cache=None) -> float:
    """Median seconds of ONE decoding step of ``model`` (a TinyGPT) with ``context`` tokens already cached.

    The cache (``cache``, or a new :func:`filled_cache`) holds random keys and values instead of those of a
    real ``context``-token prompt: the time of a step does not depend on what the numbers are. One new
    token per sequence ``(batch_size, 1)`` goes through the model; the fill pointer is rewound to
    ``context`` before every repeat.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("context", context)
    if context + 1 > model.config.context_length:
        raise ValueError(f"context + 1 = {context + 1} exceeds the model's context_length={model.config.context_length}")
    cache = filled_cache(model, batch_size, context + 1) if cache is None else cache
    if cache.layers[0].keys.shape[0] != batch_size or cache.layers[0].max_len < context + 1:
        raise ValueError(f"cache must hold batch_size={batch_size} sequences of at least context + 1 = {context + 1} "
                         f"tokens, got keys of shape {tuple(cache.layers[0].keys.shape)}")
    model.eval()
    token = torch.zeros(batch_size, 1, dtype=torch.long, device=model.token_embedding.weight.device)  # (B, 1)

    def step() -> None:
        for layer in cache.layers:
            layer.length = context  # rewind: the step appends the new token at position `context`
        model(token, cache=cache)

    return time_function(step, warmup=warmup, repeats=repeats, device=token.device)


def decode_speed_sweep(config, kv_heads: list[int], contexts: list[int], batch_size: int, rounds: int = 5,
                       repeats: int = 3, seed: int = 0, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> dict[int, list[float]]:
    """Decode tokens/s (``batch_size`` / step time) of ``config`` with each ``n_kv_heads`` in ``kv_heads``
    at each context length. Returns ``{n_kv_heads: [tokens/s per context]}``.

    Models get random weights (speed does not depend on them), ``context_length = max(contexts) + 1``,
    and live on ``device`` in ``dtype``. The variants are timed in turn, ``rounds`` times over, and each
    point keeps its best round: on a shared machine, the round least disturbed by other work.
    """
    check_positive_int("rounds", rounds)
    longest = max(contexts) + 1
    models, caches = {}, {}
    for n_kv_heads in kv_heads:
        variant = dataclasses.replace(config, n_kv_heads=n_kv_heads, context_length=longest)
        torch.manual_seed(seed)
        models[n_kv_heads] = _tiny_gpt(variant).to(device=device, dtype=dtype)
        caches[n_kv_heads] = filled_cache(models[n_kv_heads], batch_size, longest)
    best = {g: [float("inf")] * len(contexts) for g in kv_heads}
    for _ in range(rounds):
        for i, context in enumerate(contexts):
            for g in kv_heads:
                seconds = time_decode_step(models[g], batch_size, context, warmup=1, repeats=repeats, cache=caches[g])
                best[g][i] = min(best[g][i], seconds)
    return {g: [batch_size / seconds for seconds in best[g]] for g in kv_heads}


def _tiny_gpt(config):
    from attention_lab.model import TinyGPT

    return TinyGPT(config)


# Field names accepted in attention_lab/results/decode_gqa.json rows (the GPU benchmark's output).
_IMPL_KEYS = ("impl", "implementation", "backend", "method", "kernel")
_CONTEXT_KEYS = ("context", "n_keys", "seq_len", "cache_len", "context_len")
_FRACTION_KEYS = ("fraction_of_copy", "bandwidth_fraction", "fraction_of_copy_bandwidth", "fraction")


def _pick(row: dict, keys: tuple[str, ...], what: str) -> object:
    for key in keys:
        if key in row:
            return row[key]
    raise ValueError(f"decode benchmark row needs a {what} field (one of {keys}), got keys {sorted(row)}")


def plot_decode_benchmark(results: dict, ax=None):
    """Effective cache-read bandwidth (fraction of copy bandwidth) against kv heads, one line per
    implementation and context, from the GPU benchmark's JSON ``{"device": …, "rows": [{"impl",
    "context", "n_kv_heads", "fraction_of_copy", …}, …]}``. Raises ``ValueError`` if fields are missing."""
    import matplotlib.pyplot as plt

    rows = results.get("rows") or results.get("results")
    if not rows:
        raise ValueError(f"decode benchmark results need a non-empty 'rows' list, got keys {sorted(results)}")
    lines: dict[tuple, list[tuple[int, float]]] = {}
    for row in rows:
        key = (_pick(row, _IMPL_KEYS, "implementation"), _pick(row, _CONTEXT_KEYS, "context"))
        lines.setdefault(key, []).append((_pick(row, ("n_kv_heads",), "n_kv_heads"),
                                          _pick(row, _FRACTION_KEYS, "fraction of copy bandwidth")))
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for (impl, context), points in sorted(lines.items(), key=lambda item: str(item[0])):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"{impl}, {context} tokens")
    heads = sorted({p[0] for points in lines.values() for p in points})
    ax.set_xscale("log")
    ax.set_xticks(heads, labels=[str(g) for g in heads])
    ax.minorticks_off()
    device = results.get("device", {})
    ax.set(xlabel="key/value heads", ylabel="cache bytes/s ÷ copy bandwidth",
           title=f"Decode step, effective cache-read bandwidth ({device.get('name', 'GPU') if isinstance(device, dict) else device})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return ax
