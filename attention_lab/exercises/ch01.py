"""Chapter 01 — write scaled dot-product attention, the sinusoidal positions, multi-head attention step by step and the masked softmax over valid lengths."""

from __future__ import annotations

from typing import Callable

import torch

from attention_lab.attention import scaled_dot_product_attention
from attention_lab.exercises.core import (InputGuard, call, exercise_check, expect_close, random_generator,
                                          which_mistake)

# (B, H, Nq, Nk, D): odd sizes so that a transposed or mis-broadcast answer cannot pass by accident. The first
# case has Nq != Nk != D (every mistake is told apart there); then one token, a long row, and a wide head.
_SHAPES = [(2, 3, 5, 9, 16), (1, 1, 1, 1, 16), (2, 3, 7, 7, 16), (1, 2, 33, 33, 40), (3, 1, 5, 5, 64),
           (2, 2, 3, 9, 16)]

_HINT = ("Check the 1/√D scale (D = q.shape[-1]), that softmax runs over the KEYS (last dim), "
         "and that you multiply the weights by v.")


def _mistakes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> list[tuple[str, Callable]]:
    """(hint, answer): what each plausible mistake returns on (q, k, v)."""
    d = q.shape[-1]
    raw = q @ k.transpose(-2, -1)  # (B, H, Nq, Nk)
    return [
        ("Missing the 1/√D scale: divide the scores q kᵀ by √D (D = q.shape[-1]) before the softmax.",
         lambda: torch.softmax(raw, dim=-1) @ v),
        ("Scaled by 1/D instead of 1/√D: divide the scores by D ** 0.5.", lambda: torch.softmax(raw / d, dim=-1) @ v),
        ("The scale is 1/√D: you multiplied the scores by √D instead of dividing.",
         lambda: torch.softmax(raw * d ** 0.5, dim=-1) @ v),
        ("The scale uses the head dimension D = q.shape[-1], not the number of keys N.",
         lambda: torch.softmax(raw / k.shape[-2] ** 0.5, dim=-1) @ v),
        ("The scale uses the head dimension D = q.shape[-1], not the number of queries.",
         lambda: torch.softmax(raw / q.shape[-2] ** 0.5, dim=-1) @ v),
        ("Softmax over the wrong axis: it runs over the KEYS (dim=-1), so that each QUERY's weights sum to 1; "
         "dim=-2 normalises over the queries.", lambda: torch.softmax(raw / d ** 0.5, dim=-2) @ v),
        ("Softmax over the wrong axis: it runs over the keys (dim=-1), not over the heads or the batch.",
         lambda: torch.softmax(raw / d ** 0.5, dim=1) @ v),
        ("Softmax over the wrong axis: it runs over the keys (dim=-1), not over the heads or the batch.",
         lambda: torch.softmax(raw / d ** 0.5, dim=0) @ v),
        ("Scale the SCORES before the softmax: dividing after it (or dividing the output) is not the same.",
         lambda: torch.softmax(raw, dim=-1) @ v / d ** 0.5),
        ("No softmax: the weights must be softmax(q kᵀ / √D) over the keys, not the raw scores.",
         lambda: (raw / d ** 0.5) @ v),
        ("That is attention with k as the values: the weights multiply v.",
         lambda: torch.softmax(raw / d ** 0.5, dim=-1) @ k),
    ]


@exercise_check("scaled dot-product attention")
def check_attention(attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``attention(q, k, v)`` with q ``(B, H, Nq, D)``, k and v ``(B, H, Nk, D)`` must equal ``softmax(q kᵀ / √D) v``."""
    generator = random_generator(1)
    for batch, heads, n_queries, n_keys, d in _SHAPES:
        q = torch.randn(batch, heads, n_queries, d, generator=generator)
        k, v = (torch.randn(batch, heads, n_keys, d, generator=generator) for _ in range(2))
        expected = scaled_dot_product_attention(q, k, v)
        what = f"attention with q {tuple(q.shape)} and k, v {tuple(k.shape)}"
        guard = InputGuard(q=q, k=k, v=v)
        actual = call(attention, q, k, v, what=what,
                      hint="The scores are q times k with k's last two dims swapped: shape (B, H, Nq, Nk); "
                           "keys may outnumber queries.")
        guard.check(what)
        if isinstance(actual, torch.Tensor) and actual.shape == (batch, heads, n_queries, n_keys) and n_keys != d:
            hint = ("That is the (B, H, Nq, Nk) table of weights: attention returns those weights times v, "
                    "(B, H, Nq, D).")
        else:
            hint = which_mistake(actual, _mistakes(q, k, v)) or _HINT
        expect_close(actual, expected, what, hint=hint)


# --- sinusoidal positions ------------------------------------------------------------------------------------------

# (n_positions, d_model): a table with more positions than columns and the reverse, one position, one pair, and
# a size where a frequency exponent 2i/d computed in integers (2i // d = 0) cannot pass for the right one.
_POSITION_SHAPES = [(9, 8), (3, 12), (1, 4), (40, 2), (17, 30)]


def _position_mistakes(n: int, d: int) -> list[tuple[str, torch.Tensor]]:
    """(hint, table): what each plausible mistake gives for an (n, d) table (float64, compared by value)."""
    p = torch.arange(n, dtype=torch.float64).unsqueeze(1)  # (N, 1)
    two_i = torch.arange(0, d, 2, dtype=torch.float64)  # (d/2,)
    column = torch.arange(d, dtype=torch.float64)  # (d,)

    def interleave(sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        table = torch.empty(n, d, dtype=torch.float64)
        table[:, 0::2], table[:, 1::2] = sin, cos
        return table

    angles = p / 10000 ** (two_i / d)  # (N, d/2)
    return [
        ("sin and cos are swapped: the EVEN columns 2i hold sin(p / 10000^(2i/d)), the odd columns 2i+1 cos.",
         interleave(torch.cos(angles), torch.sin(angles))),
        ("The sin and cos columns are interleaved, not two halves: column 2i is sin and column 2i+1 cos of the "
         "same angle (PE[:, 0::2] and PE[:, 1::2]).", torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)),
        ("The exponent is 2i/d for BOTH columns of pair i (the even column's index 2i), not each column's own "
         "index j/d.", torch.where(column % 2 == 0, torch.sin(p / 10000 ** (column / d)),
                                     torch.cos(p / 10000 ** (column / d)))),
        ("The exponent uses the pair index i: 10000^(2i/d) has 2i (the even column's index), not i, over d.",
         interleave(torch.sin(p / 10000 ** (two_i / 2 / d)), torch.cos(p / 10000 ** (two_i / 2 / d)))),
        ("Divide the position by 10000^(2i/d) (the frequencies get LOWER along the columns); multiplying makes "
         "them explode.", interleave(torch.sin(p * 10000 ** (two_i / d)), torch.cos(p * 10000 ** (two_i / d)))),
        ("The exponent 2i/d was computed in integers (2i // d is 0): every pair got the same frequency. Make it a "
         "float division (or a float arange).", interleave(torch.sin(p), torch.cos(p))),
        ("Positions start at 0: the first row is sin(0) = 0, cos(0) = 1 in every pair.",
         interleave(torch.sin((p + 1) / 10000 ** (two_i / d)), torch.cos((p + 1) / 10000 ** (two_i / d)))),
        ("The base is 10000: p / 10000^(2i/d).",
         interleave(torch.sin(p / 1000 ** (two_i / d)), torch.cos(p / 1000 ** (two_i / d)))),
    ]


@exercise_check("sinusoidal positions")
def check_sinusoidal_positions(sinusoidal_positions: Callable[[int, int], torch.Tensor]) -> None:
    """``sinusoidal_positions(n_positions, d_model)`` must return the float32 ``(n_positions, d_model)`` table
    ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(p / 10000^(2i/d))``."""
    from attention_lab.positions import sinusoidal_positions as reference

    for n, d in _POSITION_SHAPES:
        what = f"sinusoidal positions for n_positions={n}, d_model={d}"
        expected = reference(n, d)
        actual = call(sinusoidal_positions, n, d, what=what,
                      hint="Positions p = 0..n_positions-1 are rows; column pairs (2i, 2i+1) share one frequency.")
        hint = "PE[p, 2i] = sin(p / 10000^(2i/d)) and PE[p, 2i+1] = cos(p / 10000^(2i/d)), p from 0."
        if isinstance(actual, torch.Tensor) and tuple(actual.shape) == (d, n) and n != d:
            hint = "That is the transpose: one ROW per position, (n_positions, d_model)."
        elif isinstance(actual, torch.Tensor) and actual.shape == expected.shape:
            hint = which_mistake(actual, _position_mistakes(n, d), expected) or hint
        expect_close(actual, expected, what, hint=hint, atol=1e-5, rtol=1e-4)


# --- multi-head attention, step by step ----------------------------------------------------------------------------

# (B, N, d_model, n_heads): the first case tells every mistake apart (N != H != head_dim); then one head (the
# split is trivial), one token, and a wide case.
_MHA_SHAPES = [(2, 5, 12, 3), (1, 7, 10, 2), (2, 6, 8, 1), (3, 1, 12, 4), (1, 9, 24, 4)]


def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x @ weight.T  # nn.Linear without bias: weight is (out, in)


def _mha_mistakes(x, w_q, w_k, w_v, w_o, n_heads) -> list[tuple[str, Callable[[], torch.Tensor]]]:
    """(hint, answer): what each plausible mistake in a multi-head forward returns."""
    b, n, d_model = x.shape
    dh = d_model // n_heads

    def forward(split=None, merge=None, scale=dh ** -0.5, dim=-1, project=True, weights=None, linear=_linear):
        w_q_, w_k_, w_v_ = weights or (w_q, w_k, w_v)
        split = split or (lambda t: t.view(b, n, n_heads, dh).transpose(1, 2))  # (B, H, N, dh)
        q, k, v = (split(linear(x, w)) for w in (w_q_, w_k_, w_v_))
        context = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=dim) @ v  # (B, H, N, dh)
        merged = (merge or (lambda c: c.transpose(1, 2).reshape(b, n, d_model)))(context)  # (B, N, d_model)
        return linear(merged, w_o) if project else merged

    return [
        ("The heads were split with view(B, H, N, head_dim) alone: each head must own head_dim COLUMNS of every "
         "token — view(B, N, H, head_dim), then transpose(1, 2) to (B, H, N, head_dim).",
         lambda: forward(split=lambda t: t.reshape(b, n_heads, n, dh))),
        ("Head h owns the columns h·head_dim … (h+1)·head_dim − 1, a contiguous block: view(B, N, H, head_dim), "
         "not view(B, N, head_dim, H).",
         lambda: forward(split=lambda t: t.view(b, n, dh, n_heads).permute(0, 3, 1, 2))),
        ("The heads were merged in the wrong order: transpose (B, H, N, head_dim) back to (B, N, H, head_dim) "
         "BEFORE reshaping to (B, N, d_model), so that each token's row holds its own heads.",
         lambda: forward(merge=lambda c: c.reshape(b, n, d_model))),
        ("Merged with the head_dim before the heads: (B, N, H, head_dim) reshapes to (B, N, H·head_dim), head 0's "
         "columns first.", lambda: forward(merge=lambda c: c.permute(0, 2, 3, 1).reshape(b, n, d_model))),
        ("The output projection is missing: the merged heads go through w_o (x @ w_o.T) at the end.",
         lambda: forward(project=False)),
        ("Missing the 1/√head_dim scale: divide each head's scores by √head_dim (head_dim = d_model / n_heads).",
         lambda: forward(scale=1.0)),
        ("The scale is 1/√head_dim, not 1/√d_model: each head's dot products have head_dim terms.",
         lambda: forward(scale=d_model ** -0.5)),
        ("Softmax over the wrong axis: each query's weights over the KEYS (dim=-1) sum to 1.",
         lambda: forward(dim=-2)),
        ("The weights are nn.Linear weights, (out, in): project with x @ w.T, not x @ w.",
         lambda: forward(linear=lambda t, w: t @ w)),
        ("Keys come from w_k and values from w_v: they are swapped.", lambda: forward(weights=(w_q, w_v, w_k))),
        ("The heads are not split: that is one head of width d_model. Split the projections into n_heads heads "
         "of head_dim = d_model / n_heads columns.",
         lambda: forward(split=lambda t: t.view(b, n, 1, d_model).transpose(1, 2), scale=dh ** -0.5)),
        ("The heads are not split: that is one head of width d_model (scaled by its own √d_model). Split the "
         "projections into n_heads heads.",
         lambda: forward(split=lambda t: t.view(b, n, 1, d_model).transpose(1, 2), scale=d_model ** -0.5)),
    ]


def _mha_crash_hint(error: Exception) -> str:
    if "view size is not compatible" in str(error):
        return ("After transpose the tensor is not contiguous, so .view cannot merge its dims: use .reshape "
                "(or .contiguous().view).")
    return ("x is (B, N, d_model); w_q, w_k, w_v, w_o are (d_model, d_model) nn.Linear weights, (out, in); "
            "head_dim = d_model // n_heads.")


@exercise_check("multi-head attention")
def check_multi_head_attention(multi_head_attention: Callable) -> None:
    """``multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads)`` with x ``(B, N, d_model)`` and the four
    ``(d_model, d_model)`` projection weights of an :class:`~attention_lab.attention.MultiHeadAttention` (no
    bias, no mask) must equal that module's forward: ``(B, N, d_model)``."""
    from attention_lab.attention import MultiHeadAttention

    generator = random_generator(11)
    for batch, n, d_model, n_heads in _MHA_SHAPES:
        module = MultiHeadAttention(d_model, n_heads, causal=False, bias=False)
        weights = []
        with torch.no_grad():
            for linear in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
                linear.weight.copy_(torch.randn(d_model, d_model, generator=generator) / d_model ** 0.5)
                weights.append(linear.weight.detach().clone())
        x = torch.randn(batch, n, d_model, generator=generator)
        with torch.no_grad():
            expected = module(x)
        what = f"multi-head attention with x {tuple(x.shape)} and n_heads={n_heads}"
        guard = InputGuard(x=x, w_q=weights[0], w_k=weights[1], w_v=weights[2], w_o=weights[3])
        with torch.no_grad():
            actual = call(multi_head_attention, x, *weights, n_heads, what=what, hint=_mha_crash_hint)
        guard.check(what)
        hint = which_mistake(actual, _mha_mistakes(x, *weights, n_heads), expected) or (
            "Project (x @ w.T), split into heads with view(B, N, H, head_dim).transpose(1, 2), attend per head with "
            "softmax(q kᵀ / √head_dim) v, merge with transpose(1, 2).reshape(B, N, d_model), then project with w_o.")
        expect_close(actual, expected, what, hint=hint, atol=1e-5, rtol=1e-4)


# --- the masked softmax around valid lengths (padding) -------------------------------------------------------------

def _length_cases(generator: torch.Generator):
    """(description, scores (B, H, Nq, Nk), lengths (B,))."""
    # three queries for three sequences: a (B, Nk) mask broadcasts there (wrongly, over the queries) instead of failing
    yield "lengths [2, 7, 5], 7 keys", torch.randn(3, 2, 3, 7, generator=generator) * 3, torch.tensor([2, 7, 5])
    yield "lengths [1, 4], 9 keys", torch.randn(2, 3, 9, 9, generator=generator) * 3, torch.tensor([1, 4])
    yield "one sequence of full length 6", torch.randn(1, 1, 6, 6, generator=generator) * 3, torch.tensor([6])
    yield ("lengths [0, 5] (the first sequence is all padding)", torch.randn(2, 2, 3, 5, generator=generator) * 3,
           torch.tensor([0, 5]))


def _length_mistakes(scores: torch.Tensor, lengths: torch.Tensor) -> list[tuple[str, Callable]]:
    from attention_lab.masks import padding_mask

    n_keys, n_queries = scores.shape[-1], scores.shape[-2]
    keys = torch.arange(n_keys)
    neg = float("-inf")

    def masked(valid: torch.Tensor, fill=neg, dim=-1):
        return torch.softmax(scores.masked_fill(~valid, fill), dim=dim).nan_to_num(0.0)

    valid = padding_mask(lengths, n_keys)  # (B, 1, 1, Nk)
    return [
        ("Off by one: key j is real when j < length (positions 0 … length-1), not j <= length.",
         lambda: masked((keys <= lengths[:, None])[:, None, None, :])),
        ("Off by one: key j is real when j < length; j < length − 1 hides the last real key.",
         lambda: masked((keys < (lengths[:, None] - 1))[:, None, None, :])),
        ("Inverted: the keys to hide are the padding ones, j >= length; the real keys j < length keep their scores.",
         lambda: masked(~valid)),
        ("The lengths mask the KEYS (the last dim: which tokens may be looked at), not the queries.",
         lambda: masked((torch.arange(n_queries) < lengths[:, None])[:, None, :, None])),
        ("Each sequence has its own length: lengths[b] masks sequence b — here every sequence used the first one.",
         lambda: masked((keys < lengths[0])[None, None, None, :])),
        ("The mask must broadcast against (B, H, Nq, Nk): reshape the (B, Nk) mask to (B, 1, 1, Nk) — as (B, Nk) it "
         "lines up with the last two dims (queries, keys) instead.",
         lambda: masked((keys < lengths[:, None]))),
        ("A sequence with no real key (length 0) must get weight 0 everywhere: a large negative fill (-1e9) makes "
         "its rows a uniform softmax over padding. Fill with -inf (its NaN rows are accepted) or set them to 0.",
         lambda: torch.softmax(scores.masked_fill(~valid, -1e9), dim=-1)),
        ("Padding keys filled with 0 still get weight exp(0 − max) > 0: fill them with -inf.",
         lambda: masked(valid, fill=0.0)),
        ("Rows must sum to 1 over the real keys: zeroing the padding's weights after the softmax leaves them "
         "un-renormalised — set the padding's scores to -inf BEFORE the softmax.",
         lambda: torch.softmax(scores, dim=-1) * valid),
        ("The lengths are not used: keys j >= lengths[b] must get weight 0.", lambda: torch.softmax(scores, dim=-1)),
        ("Softmax over the wrong axis: each query's weights over the KEYS (dim=-1) sum to 1.",
         lambda: masked(valid, dim=-2)),
    ]


def _length_crash_hint(scores: torch.Tensor, lengths: torch.Tensor) -> Callable[[Exception], str]:
    def hint(error: Exception) -> str:
        if "must match the size" in str(error) or "broadcast" in str(error):
            return (f"The scores are (B, H, Nq, Nk) = {tuple(scores.shape)}: a mask of the real keys must broadcast "
                    "against them, so make it (B, 1, 1, Nk) (lengths[:, None, None, None] or mask[:, None, None, :]).")
        return (f"scores are {tuple(scores.shape)} (B, H, Nq, Nk) and lengths {tuple(lengths.shape)} (B,): compare "
                "the key positions with the lengths to get a bool mask of the real keys.")

    return hint


@exercise_check("masked softmax over valid lengths")
def check_valid_length_softmax(valid_length_softmax: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``valid_length_softmax(scores, lengths)``: scores ``(B, H, Nq, Nk)``, lengths ``(B,)`` int64; sequence b's
    keys ``j >= lengths[b]`` are padding and get weight 0, each row renormalised over the real keys. A
    sequence of length 0 gets all-zero rows (NaN, what a softmax over only -inf gives, is accepted there)."""
    from attention_lab.masks import padding_mask

    generator = random_generator(12)
    for description, scores, lengths in _length_cases(generator):
        what = f"valid-length softmax with {description}"
        valid = padding_mask(lengths, scores.shape[-1])  # (B, 1, 1, Nk)
        expected = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1).nan_to_num(0.0)
        guard = InputGuard(scores=scores, lengths=lengths)
        actual = call(valid_length_softmax, scores, lengths, what=what, hint=_length_crash_hint(scores, lengths))
        guard.check(what)
        if isinstance(actual, torch.Tensor) and actual.shape == expected.shape:
            empty = (lengths == 0)[:, None, None, None].expand_as(actual)  # rows of an all-padding sequence
            actual = torch.where(empty & torch.isnan(actual), torch.zeros_like(actual), actual)
        hint = which_mistake(actual, _length_mistakes(scores, lengths), expected) or (
            "Mask key j of sequence b when j >= lengths[b] (a (B, 1, 1, Nk) bool mask), fill those scores with -inf, "
            "softmax over the keys, and give a sequence with no real key zeros.")
        expect_close(actual, expected, what, hint=hint)
