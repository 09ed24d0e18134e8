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

from ._checks import check_divides, check_positive_int
from .bench import time_function
from .roofline import KernelCost


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
def time_decode_step(model, batch_size: int, context: int, warmup: int = 2, repeats: int = 5) -> float:
    """Median seconds of ONE decoding step of ``model`` (a TinyGPT) with ``context`` tokens already cached.

    The cache is filled with random keys and values instead of running a ``context``-token prompt
    (the time of a step does not depend on what the numbers are), then one new token per sequence
    ``(batch_size, 1)`` is fed through the model; the fill pointer is rewound before every repeat.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("context", context)
    if context + 1 > model.config.context_length:
        raise ValueError(f"context + 1 = {context + 1} exceeds the model's context_length={model.config.context_length}")
    model.eval()
    cache = model.new_cache(batch_size, context + 1)
    for layer in cache.layers:
        layer.keys.normal_()  # (B, Hkv, context + 1, D)
        layer.values.normal_()
    token = torch.zeros(batch_size, 1, dtype=torch.long, device=model.token_embedding.weight.device)  # (B, 1)

    def step() -> None:
        for layer in cache.layers:
            layer.length = context  # rewind: the step appends the new token at position `context`
        model(token, cache=cache)

    return time_function(step, warmup=warmup, repeats=repeats, device=token.device)


def decode_speed_sweep(config, kv_heads: list[int], contexts: list[int], batch_size: int,
                       repeats: int = 5, seed: int = 0) -> dict[int, list[float]]:
    """Decode tokens/s (``batch_size`` / step time) of ``config`` with each ``n_kv_heads`` in ``kv_heads``
    at each context length. Returns ``{n_kv_heads: [tokens/s per context]}``.

    Models get random weights (speed does not depend on them) and ``context_length = max(contexts) + 1``.
    """
    speeds: dict[int, list[float]] = {}
    for n_kv_heads in kv_heads:
        variant = dataclasses.replace(config, n_kv_heads=n_kv_heads, context_length=max(contexts) + 1)
        torch.manual_seed(seed)
        model = _tiny_gpt(variant)
        speeds[n_kv_heads] = [batch_size / time_decode_step(model, batch_size, n, repeats=repeats) for n in contexts]
        del model
    return speeds


def _tiny_gpt(config):
    from .model import TinyGPT

    return TinyGPT(config)
