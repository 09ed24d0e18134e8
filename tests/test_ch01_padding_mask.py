"""A padding mask over the keys, ``(B, 1, 1, Nk)`` (d2l's valid lengths as ``valid[:, None, None, :]``), is
accepted by every attention path and means the same as the full ``(B, 1, Nq, Nk)`` mask it broadcasts to."""

from __future__ import annotations

import pytest
import torch

from attention_lab.attention import build_mask, get_backend, scaled_dot_product_attention
from attention_lab.flash.tiled import tiled_attention_forward
from attention_lab.kernels.interpreter import interpreting
from reference import attention_fp64, random_qkv


def _padding(batch: int, n_keys: int, seed: int) -> torch.Tensor:
    """(B, 1, 1, Nk) bool: sequence b's first valid[b] keys are real, every sequence keeps at least one."""
    generator = torch.Generator().manual_seed(seed)
    valid = torch.randint(1, n_keys + 1, (batch,), generator=generator)
    return (torch.arange(n_keys)[None, :] < valid[:, None])[:, None, None, :]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("causal", [False, True])
def test_a_padding_mask_equals_its_full_broadcast_on_every_path(seed, causal):
    batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim = 3, 4, 2, 7, 13, 16
    q, k, v = random_qkv(batch, n_heads, n_kv_heads, n_queries, n_keys, head_dim, seed=seed)
    padding = _padding(batch, n_keys, seed)
    full = padding.expand(batch, 1, n_queries, n_keys).contiguous()
    expected = attention_fp64(q, k, v, mask=full, causal=causal)
    paths = {"reference": scaled_dot_product_attention, "torch": get_backend("torch"),
             "tiled": lambda *a, **kw: tiled_attention_forward(*a, block_q=4, block_k=4, **kw)[0]}
    if interpreting():
        paths["flash"] = get_backend("flash")
    for name, attend in paths.items():
        out = attend(q, k, v, mask=padding, causal=causal)
        if causal:  # the first queries may see no real key at all: every path gives them zeros or the reference's
            seen = build_mask(n_queries, n_keys, full, causal=True, batch=batch).any(-1, keepdim=True)  # (B, 1, Nq, 1)
            out, want = out.masked_fill(~seen, 0), expected.masked_fill(~seen, 0)
        else:
            want = expected
        torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5, msg=name)


def test_a_mask_with_a_wrong_query_axis_is_still_refused():
    with pytest.raises(ValueError, match=r"\(B\|1, H\|1, Nq\|1, Nk\)"):
        build_mask(7, 13, torch.ones(3, 1, 2, 13, dtype=torch.bool), batch=3, n_heads=4)
    with pytest.raises(ValueError, match="mask must have shape"):
        build_mask(7, 13, torch.ones(3, 1, 1, 12, dtype=torch.bool), batch=3, n_heads=4)
