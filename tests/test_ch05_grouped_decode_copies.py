"""Chapter 05's exercise forbids copying a shared key/value head once per query head; the checker enforces it
by memory, whatever the spelling (issue #17). The prose names the routes the checker rejects."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attention_lab.exercises import ExerciseError
from attention_lab.exercises.ch05 import check_grouped_decode

SOURCE = Path(__file__).resolve().parents[1] / "notebooks" / "src" / "05_multi_query.py"


def _group(q, k):
    return q.shape[1] // k.shape[1]


def _softmax_attend(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v


def _einsum_with_repeated_heads(q, k, v):
    k, v = torch.repeat_interleave(k, _group(q, k), dim=1), torch.repeat_interleave(v, _group(q, k), dim=1)
    weights = torch.softmax(torch.einsum("bhqd,bhnd->bhqn", q, k) * q.shape[-1] ** -0.5, dim=-1)
    return torch.einsum("bhqn,bhnd->bhqd", weights, v)


def _keys_repeated_values_grouped(q, k, v):  # only the keys copied: still more than the whole cache
    batch, heads, _, head_dim = q.shape
    weights = torch.softmax(q @ k.repeat_interleave(_group(q, k), 1).transpose(-1, -2) * head_dim ** -0.5, dim=-1)
    grouped = weights.reshape(batch, k.shape[1], _group(q, k), k.shape[2])
    return (grouped @ v).reshape(batch, heads, 1, head_dim)


def _per_batch_and_kv_head_copies(q, k, v):  # one kv head copied for its group, one (batch, kv head) at a time
    batch, heads, _, head_dim = q.shape
    group, out = _group(q, k), []
    for b in range(batch):
        rows = []
        for j in range(k.shape[1]):
            keys = k[b, j].expand(group, *k.shape[2:]).contiguous()  # (G, N, D): a copy per query head
            values = v[b, j].expand(group, *v.shape[2:]).contiguous()
            rows.append(_softmax_attend(q[b, j * group:(j + 1) * group], keys, values))
        out.append(torch.cat(rows))
    return torch.stack(out)


def _loop_over_heads_without_copies(q, k, v):  # slow but honest: every head reads its kv head in place
    group, out = _group(q, k), torch.empty_like(q)
    for h in range(q.shape[1]):
        out[:, h] = _softmax_attend(q[:, h], k[:, h // group], v[:, h // group])
    return out


@pytest.mark.parametrize("answer", [_einsum_with_repeated_heads, _keys_repeated_values_grouped,
                                    _per_batch_and_kv_head_copies], ids=lambda f: f.__name__)
def test_copies_of_the_shared_heads_are_rejected_with_the_reason(answer):
    with pytest.raises(ExerciseError, match="more than the whole cache") as error:
        check_grouped_decode(answer)
    assert "reshape the QUERIES" in str(error.value)


@pytest.mark.parametrize("answer", [_loop_over_heads_without_copies,
                                    lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)],
                         ids=["loop over heads", "torch SDPA with enable_gqa"])
def test_answers_that_read_the_shared_heads_in_place_pass(answer):
    check_grouped_decode(answer)  # the rule is about memory: these never build a per-query-head copy


def test_the_exercise_prose_forbids_what_the_checker_rejects_and_says_why():
    source = SOURCE.read_text(encoding="utf-8")
    start = source.index("## Exercise: one decoding step of grouped-query attention")
    prose = re.sub(r"\s*\n#\s*", " ", source[start:source.index("def grouped_decode", start)])  # one line of text
    assert "Forbidden" in prose
    for route in ("repeat_interleave", "repeat", "expand", "torch.cat", "torch.stack", "torch.matmul"):
        assert f"`{route}" in prose, route  # every route the checker's message names is named to the student
    assert "gives back the memory" in prose  # why: the copy undoes what sharing saved
    assert "more numbers than the cache" in prose  # what the checker measures
