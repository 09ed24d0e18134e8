"""Every exercise checker (chapters 00-13 but 10): it passes the chapter's own solution, fails the student
stub with "not written yet", and fails each plausible wrong answer of its family with the hint that fits
that mistake — and no message shows the solution.

The solutions and the stubs are not copies: they are read from ``notebooks/src/NN_*.py`` (the function that
holds the ``### BEGIN SOLUTION`` region), the stub being what the student-notebook builder makes of it.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from pathlib import Path

import pytest
import torch

from attention_lab.exercises import ExerciseError
from attention_lab.exercises.registry import EXERCISES
from attention_lab.exercises.student import BEGIN, END, strip_solutions

SOURCES = Path(__file__).resolve().parents[1] / "notebooks" / "src"
SKIPPED_CHAPTERS = {"10"}  # chapter 10's Triton checker has its own tests (tests/test_ch10_flash_triton.py)
EXERCISE_LIST = [e for chapter, exercises in EXERCISES.items() if chapter not in SKIPPED_CHAPTERS for e in exercises]
BY_FUNCTION = {e.function: e for e in EXERCISE_LIST}


@functools.cache
def _source(chapter: str) -> str:
    (path,) = SOURCES.glob(f"{chapter}_*.py")
    return path.read_text(encoding="utf-8")


@functools.cache
def _function_source(chapter: str, name: str) -> str:
    source = _source(chapter)
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            lines = source.splitlines(keepends=True)
            segment = "".join(lines[node.lineno - 1:node.end_lineno])
            rest = lines[node.end_lineno:]
            while rest and rest[0].strip().startswith("#") and END not in segment:  # the closing marker
                segment += rest.pop(0)  # is a comment after the function's last statement
            assert BEGIN in segment and END in segment, f"{name} in chapter {chapter} has no solution region"
            return segment
    raise AssertionError(f"chapter {chapter} defines no function {name}")


def _define(code: str, name: str):
    namespace = {"torch": torch, "math": math}
    exec(compile(code, f"<notebook function {name}>", "exec"), namespace)  # noqa: S102 - the book's own source
    return namespace[name]


def solution(chapter: str, name: str):
    return _define(_function_source(chapter, name), name)


def stub(chapter: str, name: str):
    return _define(strip_solutions(_function_source(chapter, name)), name)


def _normalise(text: str) -> str:
    return re.sub(r"\s+", "", text).replace("'", '"')


@functools.cache
def _solution_fragments(chapter: str, name: str) -> tuple[str, ...]:
    """Each solution line and its right-hand side (normalised), minus what the exercise's text already says."""
    source = _function_source(chapter, name)
    body = source[source.index(BEGIN) + len(BEGIN):source.index(END)]
    given = _normalise(_source(chapter).replace(body, ""))  # the notebook without this solution: prose, stub
    fragments = []
    for line in body.splitlines()[1:]:
        code = line.split("#")[0].strip()
        for part in {code, code.removeprefix("return "), code.split("=", 1)[-1] if "=" in code else code}:
            part = _normalise(part)
            if len(part) >= 12 and part not in given and not re.fullmatch(r"[\w,]+", part):  # not a bare tuple
                fragments.append(part)
    return tuple(fragments)


# Words that would give a solution away although no solution line appears verbatim (the old chapter 12 hint
# printed torch.einsum('bhtd,hdc->bhtc', q, w)).
GIVEAWAYS = {"12": ["einsum", "bhtd"]}


def assert_no_solution_in(message: str, exercise) -> None:
    normalised = _normalise(message)
    for fragment in _solution_fragments(exercise.chapter, exercise.function):
        assert fragment not in normalised, f"the message shows the solution ({fragment}): {message}"
    for word in GIVEAWAYS.get(exercise.chapter, []):
        assert word not in message, f"the message gives the solution away ({word}): {message}"


# --- every checker: the notebook's solution passes, its stub fails as not written --------------------------------

@pytest.mark.parametrize("exercise", EXERCISE_LIST, ids=lambda e: f"ch{e.chapter}-{e.function}")
def test_the_chapters_solution_passes(exercise, capsys):
    assert exercise.checker(solution(exercise.chapter, exercise.function)) is True
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize("exercise", EXERCISE_LIST, ids=lambda e: f"ch{e.chapter}-{e.function}")
def test_the_stub_fails_as_not_written_yet(exercise):
    with pytest.raises(ExerciseError) as failure:
        exercise.checker(stub(exercise.chapter, exercise.function))
    assert "not written yet" in str(failure.value)
    assert_no_solution_in(str(failure.value), exercise)


# --- the wrong answers, by chapter ---------------------------------------------------------------------------------
# Each: (function the exercise asks for, wrong answer, a piece of the hint that fits the mistake).

WRONG: list[tuple[str, object, str]] = []


def wrong(function: str, hint: str):
    def register(fn):
        WRONG.append((function, fn, hint))
        return fn

    return register


# chapter 00: additive attention
def _additive(query, keys, values, w_query, w_key, v, hidden=None, dim=-1):
    projected = (query @ w_query.T).unsqueeze(1) + keys @ w_key.T
    weights = torch.softmax((torch.tanh(projected) if hidden is None else hidden(projected)) @ v, dim=dim)
    return (weights.unsqueeze(1) @ values).squeeze(1), weights


wrong("my_additive_attention", "No tanh")(lambda *a: _additive(*a, hidden=lambda h: h))
wrong("my_additive_attention", "not over the batch")(lambda *a: _additive(*a, dim=0))
wrong("my_additive_attention", "wrong way round")(lambda *a: _additive(*a)[::-1])
wrong("my_additive_attention", "return a pair")(lambda *a: _additive(*a)[0])


@wrong("my_additive_attention", "not normalised")
def _additive_exp(query, keys, values, w_query, w_key, v):
    weights = torch.exp(torch.tanh((query @ w_query.T).unsqueeze(1) + keys @ w_key.T) @ v)
    return (weights.unsqueeze(1) @ values).squeeze(1), weights


@wrong("my_additive_attention", "without the softmax")
def _additive_raw(query, keys, values, w_query, w_key, v):
    weights = torch.tanh((query @ w_query.T).unsqueeze(1) + keys @ w_key.T) @ v
    return (weights.unsqueeze(1) @ values).squeeze(1), weights


@wrong("my_additive_attention", "BEFORE the dot with v")
def _additive_tanh_late(query, keys, values, w_query, w_key, v):
    weights = torch.softmax(torch.tanh(((query @ w_query.T).unsqueeze(1) + keys @ w_key.T) @ v), dim=-1)
    return (weights.unsqueeze(1) @ values).squeeze(1), weights


@wrong("my_additive_attention", "Luong")
def _additive_multiplicative(query, keys, values, w_query, w_key, v):
    weights = torch.softmax(((query @ w_query.T).unsqueeze(1) * (keys @ w_key.T)).sum(-1), dim=-1)
    return (weights.unsqueeze(1) @ values).squeeze(1), weights


@wrong("my_additive_attention", "w_query.T")
def _additive_untransposed(query, keys, values, w_query, w_key, v):
    weights = torch.softmax(torch.tanh((query @ w_query).unsqueeze(1) + keys @ w_key) @ v, dim=-1)
    return (weights.unsqueeze(1) @ values).squeeze(1), weights


@wrong("my_additive_attention", "not of the keys")
def _additive_sums_keys(query, keys, values, w_query, w_key, v):
    _, weights = _additive(query, keys, values, w_query, w_key, v)
    return (weights.unsqueeze(1) @ keys).squeeze(1), weights


wrong("my_additive_attention", "unweighted mean")(lambda q, k, values, *a: (values.mean(1), _additive(q, k, values, *a)[1]))


@wrong("my_additive_attention", "Keep the batch dimension")
def _additive_squeeze_all(query, keys, values, w_query, w_key, v):
    weights = torch.softmax(torch.tanh((query @ w_query.T).unsqueeze(1) + keys @ w_key.T) @ v, dim=-1)
    return (weights.unsqueeze(1) @ values).squeeze(1), weights.squeeze()


@wrong("my_additive_attention", "changed its argument `query` in place")
def _additive_mutates(query, keys, values, w_query, w_key, v):
    result = _additive(query, keys, values, w_query, w_key, v)
    query.zero_()
    return result


# chapter 01: scaled dot-product attention
def _sdpa(q, k, v, scale=None, dim=-1):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=dim) @ v


wrong("attention", "Missing the 1/√D scale")(lambda q, k, v: _sdpa(q, k, v, 1.0))
wrong("attention", "1/D instead of 1/√D")(lambda q, k, v: _sdpa(q, k, v, 1 / q.shape[-1]))
wrong("attention", "multiplied the scores by √D")(lambda q, k, v: _sdpa(q, k, v, q.shape[-1] ** 0.5))
wrong("attention", "not the number of keys")(lambda q, k, v: _sdpa(q, k, v, k.shape[-2] ** -0.5))
wrong("attention", "dim=-2 normalises over the queries")(lambda q, k, v: _sdpa(q, k, v, dim=-2))
wrong("attention", "not over the heads or the batch")(lambda q, k, v: _sdpa(q, k, v, dim=1))
wrong("attention", "Scale the SCORES before the softmax")(lambda q, k, v: _sdpa(q, k, v, 1.0) / q.shape[-1] ** 0.5)
wrong("attention", "No softmax")(lambda q, k, v: (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5) @ v)
wrong("attention", "table of weights")(lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -1))
wrong("attention", "k as the values")(lambda q, k, v: _sdpa(q, k, k))
wrong("attention", "only the dtype")(lambda q, k, v: _sdpa(q.double(), k.double(), v.double()))


@wrong("attention", "changed its argument `q` in place")
def _attention_scales_q_in_place(q, k, v):
    q /= q.shape[-1] ** 0.5
    return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v


# chapter 01: sinusoidal positions
def _pe(n, d, *, swap=False, halves=False, exponent=lambda two_i, d: two_i / d, sign=-1, start=0, base=10000.0,
        dtype=torch.float32):
    p = torch.arange(start, start + n, dtype=torch.float64).unsqueeze(1)
    two_i = torch.arange(0, d, 2, dtype=torch.float64)
    angles = p * base ** (sign * exponent(two_i, d))
    first, second = (torch.cos(angles), torch.sin(angles)) if swap else (torch.sin(angles), torch.cos(angles))
    if halves:
        return torch.cat([first, second], dim=1).to(dtype)
    table = torch.empty(n, d, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = first, second
    return table.to(dtype)


wrong("positional_encoding", "sin and cos are swapped")(lambda n, d: _pe(n, d, swap=True))
wrong("positional_encoding", "interleaved, not two halves")(lambda n, d: _pe(n, d, halves=True))
wrong("positional_encoding", "not i, over d")(lambda n, d: _pe(n, d, exponent=lambda two_i, d: two_i / 2 / d))
wrong("positional_encoding", "multiplying makes them explode")(lambda n, d: _pe(n, d, sign=1))
wrong("positional_encoding", "computed in integers")(lambda n, d: _pe(n, d, exponent=lambda two_i, d: two_i // d))
wrong("positional_encoding", "Positions start at 0")(lambda n, d: _pe(n, d, start=1))
wrong("positional_encoding", "The base is 10000")(lambda n, d: _pe(n, d, base=1000.0))
wrong("positional_encoding", "That is the transpose")(lambda n, d: _pe(n, d).T)
wrong("positional_encoding", "only the dtype")(lambda n, d: _pe(n, d, dtype=torch.float64))


@wrong("positional_encoding", "each column's own index")
def _pe_column_exponent(n, d):
    p = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    angles = p / 10000 ** (torch.arange(d, dtype=torch.float32) / d)  # (N, d): column j's own j/d
    table = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table


# chapter 01: multi-head attention, step by step
def _mha(x, w_q, w_k, w_v, w_o, n_heads, *, split="right", merge="right", scale=None, dim=-1, project=True,
         transpose_weights=True, values=None):
    b, n, d = x.shape
    dh = d // n_heads
    lin = (lambda t, w: t @ w.T) if transpose_weights else (lambda t, w: t @ w)
    splits = {"right": lambda t: t.view(b, n, n_heads, dh).transpose(1, 2),
              "view": lambda t: t.view(b, n_heads, n, dh),
              "columns": lambda t: t.view(b, n, dh, n_heads).permute(0, 3, 1, 2),
              "none": lambda t: t.view(b, n, 1, d).transpose(1, 2)}
    q, k = splits[split](lin(x, w_q)), splits[split](lin(x, w_k))
    v = splits[split](lin(x, w_v if values is None else values))
    scale = dh ** -0.5 if scale is None else scale
    context = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=dim) @ v
    merges = {"right": lambda c: c.transpose(1, 2).reshape(b, n, d), "reshape": lambda c: c.reshape(b, n, d),
              "columns": lambda c: c.permute(0, 2, 3, 1).reshape(b, n, d)}
    merged = merges[merge](context)
    return lin(merged, w_o) if project else merged


wrong("multi_head_attention", "view(B, H, N, head_dim) alone")(lambda x, q, k, v, o, h: _mha(x, q, k, v, o, h, split="view"))
wrong("multi_head_attention", "a contiguous block")(lambda x, q, k, v, o, h: _mha(x, q, k, v, o, h, split="columns"))
wrong("multi_head_attention", "merged in the wrong order")(lambda x, q, k, v, o, h: _mha(x, q, k, v, o, h, merge="reshape"))
wrong("multi_head_attention", "head_dim before the heads")(lambda x, q, k, v, o, h: _mha(x, q, k, v, o, h, merge="columns"))
wrong("multi_head_attention", "output projection is missing")(lambda x, q, k, v, o, h: _mha(x, q, k, v, o, h, project=False))
wrong("multi_head_attention", "Missing the 1/√head_dim")(lambda x, q, k, v, o, h: _mha(x, q, k, v, o, h, scale=1.0))
wrong("multi_head_attention", "not 1/√d_model")(
    lambda x, q, k, v, o, h: _mha(x, q, k, v, o, h, scale=x.shape[-1] ** -0.5))
wrong("multi_head_attention", "Softmax over the wrong axis")(lambda x, q, k, v, o, h: _mha(x, q, k, v, o, h, dim=-2))
wrong("multi_head_attention", "x @ w.T, not x @ w")(
    lambda x, q, k, v, o, h: _mha(x, q, k, v, o, h, transpose_weights=False))
wrong("multi_head_attention", "they are swapped")(lambda x, q, k, v, o, h: _mha(x, q, v, k, o, h))
wrong("multi_head_attention", "one head of width d_model")(lambda x, q, k, v, o, h: _mha(x, q, k, v, o, h, split="none"))
wrong("multi_head_attention", "one head of width d_model")(
    lambda x, q, k, v, o, h: _mha(x, q, k, v, o, h, split="none", scale=x.shape[-1] ** -0.5))
wrong("multi_head_attention", "only the dtype")(
    lambda x, q, k, v, o, h: _mha(x.double(), q.double(), k.double(), v.double(), o.double(), h))


@wrong("multi_head_attention", "use .reshape")
def _mha_merged_with_view(x, w_q, w_k, w_v, w_o, n_heads):
    b, n, d = x.shape
    q, k, v = ((x @ w.T).view(b, n, n_heads, d // n_heads).transpose(1, 2) for w in (w_q, w_k, w_v))
    context = torch.softmax(q @ k.transpose(-2, -1) / (d // n_heads) ** 0.5, dim=-1) @ v
    return context.transpose(1, 2).view(b, n, d) @ w_o.T  # not contiguous after the transpose


@wrong("multi_head_attention", "changed its argument `x` in place")
def _mha_normalises_x_in_place(x, w_q, w_k, w_v, w_o, n_heads):
    x /= 1.0 + x.abs().max()
    return _mha(x, w_q, w_k, w_v, w_o, n_heads)


# chapter 01: the masked softmax over valid lengths
def _by_length(scores, lengths, *, valid=None, fill=float("-inf"), dim=-1,
               zero_empty=True):
    keys = torch.arange(scores.shape[-1])
    real = (keys < lengths[:, None])[:, None, None, :] if valid is None else valid(keys, lengths, scores)
    weights = torch.softmax(scores.masked_fill(~real, fill), dim=dim)
    return weights.nan_to_num(0.0) if zero_empty else weights


wrong("valid_length_softmax", "not j <= length")(
    lambda s, n: _by_length(s, n, valid=lambda keys, n, s: (keys <= n[:, None])[:, None, None, :]))
wrong("valid_length_softmax", "hides the last real key")(
    lambda s, n: _by_length(s, n, valid=lambda keys, n, s: (keys < n[:, None] - 1)[:, None, None, :]))
wrong("valid_length_softmax", "Inverted")(
    lambda s, n: _by_length(s, n, valid=lambda keys, n, s: (keys >= n[:, None])[:, None, None, :]))
wrong("valid_length_softmax", "not the queries")(
    lambda s, n: _by_length(s, n, valid=lambda keys, n, s: (torch.arange(s.shape[-2]) < n[:, None])[:, None, :, None]))
wrong("valid_length_softmax", "every sequence used the first one")(
    lambda s, n: _by_length(s, n, valid=lambda keys, n, s: keys < n[0]))
wrong("valid_length_softmax", "reshape the (B, Nk) mask to (B, 1, 1, Nk)")(
    lambda s, n: _by_length(s, n, valid=lambda keys, n, s: keys < n[:, None]))
wrong("valid_length_softmax", "filled with 0")(lambda s, n: _by_length(s, n, fill=0.0))
wrong("valid_length_softmax", "zeroing the padding's weights after the softmax")(
    lambda s, n: torch.softmax(s, dim=-1) * (torch.arange(s.shape[-1]) < n[:, None])[:, None, None, :])
wrong("valid_length_softmax", "lengths are not used")(lambda s, n: torch.softmax(s, dim=-1))
wrong("valid_length_softmax", "Softmax over the wrong axis")(lambda s, n: _by_length(s, n, dim=-2))
wrong("valid_length_softmax", "large negative fill (-1e9)")(lambda s, n: _by_length(s, n, fill=-1e9))
wrong("valid_length_softmax", "changed its argument `scores` in place")(
    lambda s, n: torch.softmax(s.masked_fill_(~(torch.arange(s.shape[-1]) < n[:, None])[:, None, None, :],
                                              float("-inf")), dim=-1).nan_to_num(0.0))
wrong("valid_length_softmax", "only the dtype")(lambda s, n: _by_length(s.double(), n))


@wrong("valid_length_softmax", "(B, 1, 1, Nk)")
def _by_length_unbroadcastable(scores, lengths):
    real = torch.arange(scores.shape[-1]) < lengths[:, None]  # (B, Nk) cannot broadcast where Nq != B
    if scores.shape[-2] == scores.shape[0]:
        real = real[:, None, None, :]  # right here, so that the case where (B, Nk) would broadcast passes
    return torch.softmax(scores.masked_fill(~real, float("-inf")), dim=-1).nan_to_num(0.0)


# chapter 02: the causal mask
def _ones(n, dtype=torch.bool):
    return torch.ones(n, n, dtype=dtype)


wrong("make_causal_mask", "diagonal is missing")(lambda n: _ones(n).tril(-1))
wrong("make_causal_mask", "That is the transpose")(lambda n: _ones(n).triu())
wrong("make_causal_mask", "Inverted")(lambda n: _ones(n).triu(1))
wrong("make_causal_mask", "One step into the future")(lambda n: _ones(n).tril(1))
wrong("make_causal_mask", "Nothing is masked")(lambda n: _ones(n))
wrong("make_causal_mask", "torch.bool tensor, True = may attend")(lambda n: _ones(n, torch.float32).tril())
wrong("make_causal_mask", "torch.bool tensor, True = may attend")(lambda n: _ones(n, torch.int64).tril())
wrong("make_causal_mask", "expected shape")(lambda n: _ones(6).tril())
wrong("make_causal_mask", "expected a torch.Tensor")(lambda n: [[j <= i for j in range(n)] for i in range(n)])

# chapter 02: the masked softmax
NEG = float("-inf")
wrong("masked_softmax", "mask argument is ignored")(
    lambda s, m: torch.softmax(s.masked_fill(~torch.ones_like(s, dtype=torch.bool).tril(), NEG), dim=-1))
wrong("masked_softmax", "Inverted mask")(lambda s, m: torch.softmax(s.masked_fill(m, NEG), dim=-1))
wrong("masked_softmax", "not the queries (dim=-2)")(lambda s, m: torch.softmax(s.masked_fill(~m, NEG), dim=-2))
wrong("masked_softmax", "filled with 0")(lambda s, m: torch.softmax(s.masked_fill(~m, 0.0), dim=-1))
wrong("masked_softmax", "not applied at all")(lambda s, m: torch.softmax(s, dim=-1))
wrong("masked_softmax", "sum to 1")(lambda s, m: torch.softmax(s, dim=-1) * m)
wrong("masked_softmax", "may see NO key")(lambda s, m: torch.softmax(s.masked_fill(~m, -1e9), dim=-1))
wrong("masked_softmax", "changed its argument `scores` in place")(
    lambda s, m: torch.softmax(s.masked_fill_(~m, NEG), dim=-1))
wrong("masked_softmax", "only the dtype")(lambda s, m: torch.softmax(s.double().masked_fill(~m, NEG), dim=-1))


@wrong("masked_softmax", "broadcasts against the scores")
def _masked_softmax_boolean_index(scores, mask):
    scores = scores.clone()
    scores[~mask] = NEG  # a 2-D mask indexes the batch and head dims of the 4-D scores
    return torch.softmax(scores, dim=-1)


# chapter 03: the KV-cache append
def _append(keys, values, length, k, v, at=0, advance=None, swap=False, value_source=None):
    end = length + k.shape[2]
    keys[:, :, length + at:end + at] = k
    values[:, :, length + at:end + at] = v if value_source is None else value_source(k, v)
    new_length = end + at if advance is None else advance(length, k)
    out = (keys[:, :, :new_length], values[:, :, :new_length])
    return (*(out[::-1] if swap else out), new_length)


wrong("cache_append", "first free slot")(lambda *a: _append(*a, at=1))
wrong("cache_append", "did not move")(lambda *a: _append(*a, advance=lambda length, k: length))
wrong("cache_append", "advanced by 1")(lambda *a: _append(*a, advance=lambda length, k: length + 1))
wrong("cache_append", "wrong dimension")(lambda *a: _append(*a, advance=lambda length, k: length + k.shape[1]))
wrong("cache_append", "swapped")(lambda *a: _append(*a, swap=True))
wrong("cache_append", "receives v_new")(lambda *a: _append(*a, value_source=lambda k, v: k))
wrong("cache_append", "return an int")(lambda kb, vb, length, k, v: (*_append(kb, vb, length, k, v)[:2],
                                                                    float(length + k.shape[2])))


@wrong("cache_append", "only the new entries")
def _append_returns_new(keys, values, length, k, v):
    _append(keys, values, length, k, v)
    return k, v, length + k.shape[2]


@wrong("cache_append", "Write into the buffer in place")
def _append_by_concatenation(keys, values, length, k, v):
    return torch.cat([keys[:, :, :length], k], 2), torch.cat([values[:, :, :length], v], 2), length + k.shape[2]


@wrong("cache_append", "changed its argument `k_new` in place")
def _append_mutates_k(keys, values, length, k, v):
    result = _append(keys, values, length, k, v)
    k.zero_()
    return result


wrong("cache_append", "expected shape")(lambda kb, vb, length, k, v: (kb, vb, _append(kb, vb, length, k, v)[2]))


# chapter 04: the band mask
def _band(n, window, low=None, causal=True, transposed=False):
    query, key = torch.arange(n).unsqueeze(1), torch.arange(n).unsqueeze(0)
    if transposed:
        query, key = key, query
    low = window if low is None else low
    keep = (key > query - low) & ((key <= query) if causal else (key - query).abs() < low)
    return keep


wrong("band_mask", "one too many")(lambda n, w: _band(n, w + 1))
wrong("band_mask", "more than the")(lambda n, w: _band(n, w + 2))
wrong("band_mask", "one key too few")(lambda n, w: _band(n, w - 1) if w > 1 else _band(n, w))
wrong("band_mask", "FUTURE")(lambda n, w: _band(n, w, causal=False))
wrong("band_mask", "That is the transpose")(lambda n, w: _band(n, w, transposed=True))
wrong("band_mask", "No window at all")(lambda n, w: torch.ones(n, n, dtype=torch.bool).tril())
wrong("band_mask", "Inverted")(lambda n, w: ~_band(n, w))
wrong("band_mask", "diagonal is missing")(lambda n, w: _band(n, w + 1) & ~torch.eye(n, dtype=torch.bool))
wrong("band_mask", "torch.bool tensor, True = may attend")(lambda n, w: _band(n, w).float())


# chapter 04: the rolling read order
def _order(length, window):
    kept = min(length, window - 1)
    return torch.arange(length - kept, length) % window


wrong("read_order", "int64")(lambda length, window: _order(length, window).float())
wrong("read_order", "int64")(lambda length, window: _order(length, window).int())
wrong("read_order", "EMPTY list")(lambda length, window: torch.tensor(_order(length, window).tolist()))
wrong("read_order", "one too many")(lambda length, window: torch.arange(length - min(length, window), length) % window)
wrong("read_order", "fewer than window-1")(lambda length, window: torch.arange(length - (window - 1), length) % window)
wrong("read_order", "positions themselves")(
    lambda length, window: torch.arange(length - min(length, window - 1), length))
wrong("read_order", "new token's position")(
    lambda length, window: torch.arange(length - min(length, window - 1) + 1, length + 1) % window)
wrong("read_order", "newest first")(lambda length, window: _order(length, window).flip(0))
wrong("read_order", "wrong order")(lambda length, window: _order(length, window).sort().values)
wrong("read_order", "until the buffer wraps")(lambda length, window: torch.arange(min(length, window - 1)))
wrong("read_order", "expected a torch.Tensor")(lambda length, window: _order(length, window).tolist())


# chapter 05: the grouped-query decode step
def _attend(q, k, v, scale=None, dim=-1):
    return torch.softmax(q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale), dim=dim) @ v


def _groups(q, k, v, dim=-1, scale=None):
    batch, heads, _, head_dim = q.shape
    q_groups = q.reshape(batch, k.shape[1], heads // k.shape[1], head_dim)
    return _attend(q_groups, k, v, scale, dim).reshape(batch, heads, 1, head_dim)


def _group(q, k):
    return q.shape[1] // k.shape[1]


wrong("grouped_decode", "not i % Hkv")(
    lambda q, k, v: _attend(q, k.repeat(1, _group(q, k), 1, 1), v.repeat(1, _group(q, k), 1, 1)))
wrong("grouped_decode", "D ** -0.5")(lambda q, k, v: _groups(q, k, v, scale=1.0))
wrong("grouped_decode", "not 1 / D")(lambda q, k, v: _groups(q, k, v, scale=1 / q.shape[-1]))
wrong("grouped_decode", "query heads of a group")(lambda q, k, v: _groups(q, k, v, dim=-2))
wrong("grouped_decode", "not over the kv heads")(lambda q, k, v: _groups(q, k, v, dim=1))
wrong("grouped_decode", "query dim of length 1")(lambda q, k, v: _groups(q, k, v).squeeze(2))
wrong("grouped_decode", "more than the whole cache")(
    lambda q, k, v: _attend(q, k.repeat_interleave(_group(q, k), 1), v.repeat_interleave(_group(q, k), 1)))


@wrong("grouped_decode", "wrong place")
def _grouped_output_transposed(q, k, v):
    batch, heads, _, head_dim = q.shape
    out = _attend(q.reshape(batch, k.shape[1], heads // k.shape[1], head_dim), k, v)  # (B, Hkv, G, D)
    return out.transpose(1, 2).reshape(batch, heads, 1, head_dim)


@wrong("grouped_decode", "not i % Hkv")
def _grouped_interleaved_view(q, k, v):
    batch, heads, _, head_dim = q.shape
    q_groups = q.reshape(batch, heads // k.shape[1], k.shape[1], head_dim).transpose(1, 2)  # head i -> i % Hkv
    return _attend(q_groups, k, v).transpose(1, 2).reshape(batch, heads, 1, head_dim)


def _expanded(t, group):
    batch, kv, n, d = t.shape
    return t[:, :, None].expand(batch, kv, group, n, d)


wrong("grouped_decode", "more than the whole cache")(
    lambda q, k, v: _attend(q, _expanded(k, _group(q, k)).reshape(q.shape[0], q.shape[1], *k.shape[2:]),
                            _expanded(v, _group(q, k)).reshape(q.shape[0], q.shape[1], *v.shape[2:])))
wrong("grouped_decode", "more than the whole cache")(
    lambda q, k, v: _attend(q, torch.cat([k[:, h // _group(q, k)][:, None] for h in range(q.shape[1])], 1),
                            torch.stack([v[:, h // _group(q, k)] for h in range(q.shape[1])], 1)))
wrong("grouped_decode", "more than the whole cache")(
    lambda q, k, v: _attend(q, k[:, torch.arange(q.shape[1]) // _group(q, k)],
                            v.index_select(1, torch.arange(q.shape[1]) // _group(q, k))))


@wrong("grouped_decode", "more than the whole cache")
def _grouped_broadcast_matmul(q, k, v):  # torch.matmul expands the kv head over the group: a copy
    batch, heads, _, head_dim = q.shape
    q_groups = q.view(batch, k.shape[1], heads // k.shape[1], 1, head_dim)
    weights = torch.softmax(q_groups @ k[:, :, None].transpose(-1, -2) * head_dim ** -0.5, dim=-1)
    return (weights @ v[:, :, None]).reshape(batch, heads, 1, head_dim)


@wrong("grouped_decode", "more than the whole cache")
def _grouped_broadcast_product(q, k, v):
    batch, heads, _, head_dim = q.shape
    q_groups = q.reshape(batch, k.shape[1], heads // k.shape[1], 1, head_dim)
    weights = torch.softmax((q_groups * k[:, :, None]).sum(-1) * head_dim ** -0.5, dim=-1)
    return (weights @ v).reshape(batch, heads, 1, head_dim)


@wrong("grouped_decode", "changed its argument `q` in place")
def _grouped_scales_q_in_place(q, k, v):
    q *= q.shape[-1] ** -0.5
    return _groups(q, k, v, scale=1.0)


# chapter 06: mean-pooled key/value heads
def _heads(weight, n_heads, n_groups):
    return weight.reshape(n_groups, n_heads // n_groups, weight.shape[0] // n_heads, weight.shape[1])


def _flat(pooled):
    return pooled.reshape(-1, pooled.shape[-1])


wrong("mean_pool", "FIRST head")(lambda w, h, g: _flat(_heads(w, h, g)[:, 0]))
wrong("mean_pool", "SUM of each group")(lambda w, h, g: _flat(_heads(w, h, g).sum(1)))
wrong("mean_pool", "CONSECUTIVE")(
    lambda w, h, g: _flat(w.reshape(h // g, g, w.shape[0] // h, w.shape[1]).mean(0)))
wrong("mean_pool", "averages ROWS inside each head")(
    lambda w, h, g: w.reshape(g * (w.shape[0] // h), h // g, w.shape[1]).mean(1))
wrong("mean_pool", "Reshape the (n_groups, head_dim, d_model)")(lambda w, h, g: _heads(w, h, g).mean(1))
wrong("mean_pool", "Transposed")(lambda w, h, g: _flat(_heads(w, h, g).mean(1)).T)
wrong("mean_pool", "pool rows (whole heads)")(lambda w, h, g: w[:, : w.shape[1] // 2] if g < h else _flat(_heads(w, h, g).mean(1)))
wrong("mean_pool", "shares its memory")(lambda w, h, g: w if h == g else _flat(_heads(w, h, g).mean(1)))
wrong("mean_pool", "only the dtype")(lambda w, h, g: _flat(_heads(w, h, g).double().mean(1)))


@wrong("mean_pool", "changed its argument `weight` in place")
def _mean_pool_in_place(weight, n_heads, n_groups):
    heads = _heads(weight, n_heads, n_groups)
    heads[:, 0] = heads.mean(1)
    return _flat(heads[:, 0]).clone()


# chapter 07: the softmax kernel's bytes
for _hint, _bytes in [
    ("only the READ", lambda b, h, n, d, e: b * h * n * n * e),
    ("heads but not the batch", lambda b, h, n, d, e: 2 * h * n * n * e),
    ("batch but not the heads", lambda b, h, n, d, e: 2 * b * n * n * e),
    ("ELEMENTS", lambda b, h, n, d, e: 2 * b * h * n * n),
    ("instead of a fixed 2", lambda b, h, n, d, e: 2 * b * h * n * n * 2),
    ("instead of a fixed 4", lambda b, h, n, d, e: 2 * b * h * n * n * 4),
    ("in bits", lambda b, h, n, d, e: 16 * b * h * n * n * e),
    ("d does not appear", lambda b, h, n, d, e: 2 * b * h * n * d * e),
    ("Twice too much", lambda b, h, n, d, e: 4 * b * h * n * n * e),
    ("nothing else", lambda b, h, n, d, e: 2 * b * h * n * n * e + b * h * n * n),
    ("masked entries included", lambda b, h, n, d, e: b * h * n * (n + 1) * e),
    ("not in megabytes", lambda b, h, n, d, e: 2 * b * h * n * n * e / 1e6),
    ("must return a number of bytes", lambda b, h, n, d, e: str(2 * b * h * n * n * e)),
]:
    wrong("softmax_bytes", _hint)(_bytes)


# chapter 08: the online-softmax step (pure Python floats)
def _online(m_new=lambda m, s: max(m, s), rescale=lambda m, new, s: math.exp(m - new),
            weight=lambda m, new, s: math.exp(s - new), scale_n=True, scale_d=True, order=(0, 1, 2)):
    def step(m, numerator, denominator, score, value):
        new = m_new(m, score)
        r, w = rescale(m, new, score), weight(m, new, score)
        state = (new, (numerator * r if scale_n else numerator) + w * value,
                 (denominator * r if scale_d else denominator) + w)
        return tuple(state[i] for i in order)

    return step


wrong("step", "old numerator N is not rescaled")(_online(scale_n=False))
wrong("step", "old denominator D is not rescaled")(_online(scale_d=False))
wrong("step", "Neither old sum is rescaled")(_online(scale_n=False, scale_d=False))
wrong("step", "upside down")(_online(rescale=lambda m, new, s: 0.0 if m == -math.inf else math.exp(new - m)))
wrong("step", "exp(s) alone")(_online(weight=lambda m, new, s: math.exp(s)))
wrong("step", "relative to the NEW max")(_online(weight=lambda m, new, s: 1.0 if m == -math.inf else math.exp(s - m)))
wrong("step", "not the newest score")(_online(m_new=lambda m, s: s, weight=lambda m, new, s: 1.0))
wrong("step", "exp(m_old − s) is wrong")(_online(rescale=lambda m, new, s: math.exp(m - s)))
wrong("step", "Base e, not base 2")(_online(rescale=lambda m, new, s: 2.0 ** (m - new), weight=lambda m, new, s: 2.0 ** (s - new)))
wrong("step", "wrong order")(_online(order=(0, 2, 1)))
wrong("step", "running max m never moves")(lambda m, n, d, s, v: (0.0, n + math.exp(s) * v, d + math.exp(s)))
wrong("step", "use math.exp")(lambda m, n, d, s, v: (max(m, s), n * torch.exp(m - max(m, s)) + v, d))


# chapter 09: the tiled block update
def _block(q, k, v, m_i, l_i, acc, scale, *, scale_l=True, scale_acc=True, alpha_of=None, max_of=None,
           p_of=None, normalise=False):
    scores = (q @ k.T) * scale
    m_new = torch.maximum(m_i, scores.amax(-1)) if max_of is None else max_of(m_i, scores)
    p = torch.exp(scores - m_new[:, None]) if p_of is None else p_of(scores, m_i, m_new)
    alpha = torch.exp(m_i - m_new) if alpha_of is None else alpha_of(m_i, m_new)
    l_new = (alpha * l_i if scale_l else l_i) + p.sum(-1)
    acc_new = (alpha[:, None] * acc if scale_acc else acc) + p @ v
    return m_new, l_new, acc_new / l_new[:, None] if normalise else acc_new


wrong("block_update", "acc is not rescaled")(lambda *a: _block(*a, scale_acc=False))
wrong("block_update", "l is not rescaled")(lambda *a: _block(*a, scale_l=False))
wrong("block_update", "Neither l nor acc is rescaled")(lambda *a: _block(*a, scale_l=False, scale_acc=False))
wrong("block_update", "alpha is upside down")(
    lambda *a: _block(*a, alpha_of=lambda m_i, m_new: torch.exp(m_new - m_i).nan_to_num(0.0, posinf=0.0)))
wrong("block_update", "Missing the softmax scale")(lambda q, k, v, m, l, acc, scale: _block(q, k, v, m, l, acc, 1.0))
wrong("block_update", "dividing by it")(lambda q, k, v, m, l, acc, scale: _block(q, k, v, m, l, acc, 1 / scale))
wrong("block_update", "Do not divide by l inside the loop")(lambda *a: _block(*a, normalise=True))
wrong("block_update", "must include the old one")(lambda *a: _block(*a, max_of=lambda m_i, s: s.amax(-1)))
wrong("block_update", "not exp(S − m_i)")(
    lambda *a: _block(*a, p_of=lambda s, m_i, m_new: torch.exp(s - m_i[:, None])))
wrong("block_update", "not a softmax of the block")(lambda *a: _block(*a, p_of=lambda s, m_i, m_new: torch.softmax(s, -1)))
wrong("block_update", "wrong order")(lambda *a: tuple(_block(*a)[i] for i in (0, 2, 1)))
wrong("block_update", "only the dtype")(lambda *a: tuple(t.float() for t in _block(*a)))


@wrong("block_update", "alpha[:, None]")
def _block_alpha_unbroadcast(q, k, v, m_i, l_i, acc, scale):
    scores = (q @ k.T) * scale
    m_new = torch.maximum(m_i, scores.amax(-1))
    p = torch.exp(scores - m_new[:, None])
    alpha = torch.exp(m_i - m_new)
    return m_new, alpha * l_i + p.sum(-1), alpha * acc + p @ v


@wrong("block_update", "changed its argument `q_block` in place")
def _block_scales_q_in_place(q, k, v, m_i, l_i, acc, scale):
    q *= scale
    return _block(q, k, v, m_i, l_i, acc, 1.0)


# chapter 11: paged attention's address translation and block count
for _hint, _slot in [
    ("table[position // block_size + 1]", lambda t, p, b: t[p // b + 1] * b + p % b),
    ("table[position // block_size - 1]", lambda t, p, b: t[p // b - 1] * b + p % b),
    ("That is the logical position", lambda t, p, b: p),
    ("// and % are swapped", lambda t, p, b: t[p % b] * b + p // b),
    ("multiply it by block_size", lambda t, p, b: t[p // b] + p % b),
    ("only the block's first row", lambda t, p, b: t[p // b] * b),
    ("not the logical block number", lambda t, p, b: t[p // b] * b + p // b),
    ("not the position itself", lambda t, p, b: t[p // b] * b + p),
    ("That is the physical BLOCK", lambda t, p, b: t[p // b]),
    ("a float", lambda t, p, b: float(t[p // b] * b + p % b)),
    ("integer division", lambda t, p, b: t[p / b] * b + p % b),
    ("no search", lambda t, p, b: t.index(p // b) * b + p % b),
    ("indexed past the end", lambda t, p, b: t[len(t) + p] * b),
    ("changed the block table", lambda t, p, b: t.pop(p // b) * b + p % b),
]:
    wrong("physical_slot", _hint)(_slot)

for _hint, _count in [
    ("rounds DOWN", lambda n, b: n // b),
    ("round UP", lambda n, b: n // b + 1),
    ("round UP", lambda n, b: round(n / b)),
    ("exact quotient", lambda n, b: n / b),
    ("a float", lambda n, b: float(-(-n // b))),
    ("number of tokens", lambda n, b: n),
]:
    wrong("count_blocks", _hint)(_count)


# chapter 12: MLA's absorbed query
def _blocks(q, w_uk):
    return w_uk.reshape(q.shape[1], q.shape[3], w_uk.shape[1])  # (H, D, d_c)


def _absorbed(q, w_uk):
    return (q.unsqueeze(-2) @ _blocks(q, w_uk)[None, :, None]).squeeze(-2)


wrong("absorbed_query", "Mind which side the matrix goes on")(lambda q, w: q @ _blocks(q, w).transpose(-1, -2))
wrong("absorbed_query", "interleaves the heads")(
    lambda q, w: (q.unsqueeze(-2) @ w.reshape(q.shape[3], q.shape[1], -1).transpose(0, 1)[None, :, None]).squeeze(-2))
wrong("absorbed_query", "No softmax scale here")(lambda q, w: _absorbed(q, w) * q.shape[-1] ** -0.5)
wrong("absorbed_query", "OWN block")(
    lambda q, w: (q.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1) @ w).unsqueeze(1))
wrong("absorbed_query", "heads come before the tokens")(lambda q, w: _absorbed(q, w).transpose(1, 2))
wrong("absorbed_query", "sizes come from the inputs")(lambda q, w: (q.unsqueeze(-2) @ w.reshape(3, 6, -1)[None, :, None]).squeeze(-2))
wrong("absorbed_query", "only the dtype")(lambda q, w: _absorbed(q.double(), w.double()))


@wrong("absorbed_query", "changed its argument `q_content` in place")
def _absorbed_in_place(q, w):
    result = _absorbed(q, w)
    q.zero_()
    return result


# chapter 13: KV-cache bytes per token
def _cache(config, b, *, kv=2, heads=None, positions=None, layers=None):
    n_kv = config.n_kv_heads or config.n_heads
    kept = config.context_length if config.window is None else min(config.window, config.context_length)
    positions = kept if positions is None else positions(config)
    layers = config.n_layers if layers is None else layers
    return kv * layers * (heads or n_kv) * config.head_dim * positions * b / config.context_length


def _window(change):
    return lambda c: c.context_length if c.window is None else change(c.window, c.context_length)


for _hint, _formula in [
    ("K AND V", lambda c, b: _cache(c, b, kv=1)),
    ("not the n_heads query heads", lambda c, b: _cache(c, b, heads=c.n_heads)),
    ("The window is ignored", lambda c, b: _cache(c, b, positions=lambda c: c.context_length)),
    ("Off by one", lambda c, b: _cache(c, b, positions=_window(lambda w, n: min(w + 1, n)))),
    ("Off by one", lambda c, b: _cache(c, b, positions=_window(lambda w, n: min(w - 1, n)))),
    ("cannot keep more positions than there are", lambda c, b: _cache(c, b, positions=_window(lambda w, n: w))),
    ("min, not max", lambda c, b: _cache(c, b, positions=_window(max))),
    ("multiply by n_layers", lambda c, b: _cache(c, b, layers=1)),
    ("instead of a fixed 4", lambda c, b: _cache(c, 4)),
    ("instead of a fixed 2", lambda c, b: _cache(c, 2)),
    ("PER TOKEN", lambda c, b: _cache(c, b) * c.context_length),
    ("in bits", lambda c, b: _cache(c, b) * 8),
    ("None for multi-head attention", lambda c, b: 2 * c.n_layers * c.n_kv_heads * c.head_dim * b),
    ("return a number of bytes", lambda c, b: str(_cache(c, b))),
]:
    wrong("cache_bytes_per_token", _hint)(_formula)


@pytest.mark.parametrize("function,answer,hint", WRONG, ids=[f"{f}-{h[:40]}" for f, _, h in WRONG])
def test_a_wrong_answer_fails_with_the_hint_that_fits(function, answer, hint):
    exercise = BY_FUNCTION[function]
    with pytest.raises(ExerciseError) as failure:
        exercise.checker(answer)
    message = str(failure.value)
    assert hint in message, f"expected the hint {hint!r}, got: {message}"
    assert "not written yet" not in message
    assert_no_solution_in(message, exercise)


def test_every_checker_has_a_family_of_wrong_answers():
    counts = {e.function: sum(1 for f, _, _ in WRONG if f == e.function) for e in EXERCISE_LIST}
    assert min(counts.values()) >= 6, counts


def test_the_solution_parser_reads_the_notebooks_own_code():
    source = _function_source("12", "absorbed_query")
    assert "einsum" in source and BEGIN in source  # the solution ...
    assert "einsum" not in strip_solutions(source)  # ... which the stub does not contain
    assert _solution_fragments("12", "absorbed_query")


def test_a_torch_not_implemented_error_is_not_taken_for_the_stub():
    def uses_something_unimplemented(q, k, v):
        raise NotImplementedError("aten::foo is not implemented for 'Bool'")

    with pytest.raises(ExerciseError, match="not written yet") as failure:
        BY_FUNCTION["attention"].checker(uses_something_unimplemented)
    assert "an operation you used is not implemented" in str(failure.value)
