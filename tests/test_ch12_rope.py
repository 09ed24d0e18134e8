"""RoPE: the score depends only on i − j, matrix form, dtypes, errors; RoPE inside MultiHeadAttention and TinyGPT."""

import pytest
import torch

from attention_lab import MultiHeadAttention, TinyGPT, TinyGPTConfig
from attention_lab.generate import generate
from attention_lab.model import MHASettings
from attention_lab.rope import RotaryEmbedding, apply_rope, rope_angles, rotation_matrix
from reference import tolerance


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _score(q: torch.Tensor, k: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """Dot product of q rotated to position i with k rotated to position j (q, k: (D,) float64)."""
    qi = apply_rope(q[None], torch.tensor([i]))[0]
    kj = apply_rope(k[None], torch.tensor([j]))[0]
    return qi @ kj


@pytest.mark.parametrize("dim", [2, 8, 64])
def test_score_depends_only_on_the_offset(dim):
    g = torch.Generator().manual_seed(dim)
    q, k = torch.randn(dim, generator=g, dtype=torch.float64), torch.randn(dim, generator=g, dtype=torch.float64)
    for offset in (-7, 0, 1, 5, 40):
        scores = torch.stack([_score(q, k, i, i + offset) for i in (0, 3, 17, 250, 4096, 30000)])
        torch.testing.assert_close(scores, scores[:1].expand_as(scores), **tolerance("fp64_rotations"))
    # ... and it really does depend on the offset.
    assert not torch.isclose(_score(q, k, 3, 4), _score(q, k, 3, 9))


def test_matrix_form_rotations_compose_and_keep_lengths():
    dim = 12
    x = torch.randn(5, dim, dtype=torch.float64)
    positions = torch.tensor([0, 1, 7, 100, 2047])
    rotated = apply_rope(x, positions)
    for row, p in enumerate(positions.tolist()):
        torch.testing.assert_close(rotated[row], rotation_matrix(p, dim) @ x[row])
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths
    torch.testing.assert_close(apply_rope(x, torch.zeros(5, dtype=torch.long)), x)  # position 0: identity
    # R_iᵀ R_j = R_{j−i}: the relative property in matrix form.
    torch.testing.assert_close(rotation_matrix(13, dim).T @ rotation_matrix(20, dim), rotation_matrix(7, dim))
    # Pair i turns at θ_i = 10000^(-2i/dim): pair 0 at 1 rad per position, the last one slowest.
    angles = rope_angles(torch.tensor([1]), dim)[0]
    assert angles[0] == 1.0 and torch.all(angles[1:] < angles[:-1])


def test_batched_heads_and_half_precision():
    x = torch.randn(2, 3, 9, 16)
    positions = torch.arange(4, 13)
    out = apply_rope(x, positions)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out[1, 2], apply_rope(x[1, 2], positions))
    for dtype in (torch.bfloat16, torch.float16):
        half = apply_rope(x.to(dtype), positions)
        assert half.dtype == dtype
        torch.testing.assert_close(half.float(), out, **tolerance("fp16_rotations"))


def test_rope_in_multihead_attention_is_translation_invariant():
    """With RoPE and no absolute positions, shifting every position by 17 leaves the output unchanged."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(24, 3, n_kv_heads=1, rope=True).double()
    x = torch.randn(2, 8, 24, dtype=torch.float64)
    torch.testing.assert_close(attn(x, positions=torch.arange(8)), attn(x, positions=torch.arange(17, 25)))
    plain = MultiHeadAttention(24, 3, n_kv_heads=1).double()
    plain.load_state_dict(attn.state_dict())  # RoPE adds no parameters
    assert not torch.allclose(plain(x), attn(x))


def test_tinygpt_with_rope_caches_exactly():
    torch.manual_seed(0)
    model = TinyGPT(TinyGPTConfig(vocab_size=29, context_length=40, d_model=32, n_heads=4, n_kv_heads=2,
                                  settings=MHASettings(rope=True))).eval()
    prompt = torch.randint(0, 29, (2, 6), generator=torch.Generator().manual_seed(1))
    cached, cached_logits = generate(model, prompt, 25, use_cache=True, return_logits=True)
    plain, plain_logits = generate(model, prompt, 25, use_cache=False, return_logits=True)
    assert torch.equal(cached, plain)
    torch.testing.assert_close(cached_logits, plain_logits, **tolerance("fp32_paths"))


@pytest.mark.parametrize("call,message", [
    (lambda: apply_rope(torch.randn(4, 6), torch.arange(5)), r"positions must have shape \(T,\) = \(4,\)"),
    (lambda: apply_rope(torch.randn(4, 7), torch.arange(4)), "head_dim.* must be even"),
    (lambda: apply_rope(torch.randn(4, 6), torch.arange(4).view(2, 2)), "positions must have shape"),
    (lambda: RotaryEmbedding(5), "dim must be even"),
    (lambda: RotaryEmbedding(8, base=1.0), "base must be a finite real number > 1"),
    (lambda: RotaryEmbedding(8)(torch.randn(3, 6), torch.arange(3)), r"dim=8"),
])
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("call,message", [  # issue #18, item 15: these returned NaN or integer garbage
    (lambda: apply_rope(torch.ones(3, 4, dtype=torch.long), torch.arange(3)), "x must be a floating-point tensor"),
    (lambda: apply_rope(torch.ones(3, 4), torch.arange(3), base=0), "base must be a finite real number > 1"),
    (lambda: apply_rope(torch.ones(3, 4), torch.arange(3), base=-10.0), "base must be a finite real number > 1"),
    (lambda: apply_rope(torch.ones(3, 4), torch.arange(3), base=float("inf")), "base must be a finite real number > 1"),
])
def test_bad_rope_arguments_are_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
