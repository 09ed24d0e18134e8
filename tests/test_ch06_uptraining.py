"""Chapter 06: converting a multi-head TinyGPT into GQA/MQA — exact reductions, shapes, errors — and the checker."""

import dataclasses

import pytest
import torch

from attention_lab import TinyGPT, TinyGPTConfig
from attention_lab.data import CharTokenizer, TokenDataset, synthetic_corpus
from attention_lab.exercises import ExerciseError
from attention_lab.exercises.ch06 import check_mean_pool
from attention_lab.uptrain import (convert_to_gqa, format_table, pool_kv_heads, uptrain, uptrain_steps,
                                   uptraining_study)
from reference import tolerance

H, D, D_MODEL = 6, 8, 48  # 6 heads of size 8: groups G = 1, 2, 3, 6


def _mha(seed=0, **overrides):
    torch.manual_seed(seed)
    config = dict(vocab_size=23, context_length=32, d_model=D_MODEL, n_layers=2, n_heads=H)
    config.update(overrides)
    model = TinyGPT(TinyGPTConfig(**config)).eval()
    with torch.no_grad():  # give every kv head a different, non-trivial weight (init std 0.02 is nearly zero)
        for block in model.blocks:
            block.attn.k_proj.weight.normal_(0, 0.3)
            block.attn.v_proj.weight.normal_(0, 0.3)
    return model


def _tokens(seed=0):
    return torch.randint(0, 23, (2, 19), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["mean", "first"])
def test_g_equal_h_reproduces_the_mha_model_exactly(method):
    base = _mha()
    converted = convert_to_gqa(base, n_groups=H, method=method)
    assert converted.config.n_kv_heads == H
    idx = _tokens()
    assert torch.equal(converted(idx)[0], base(idx)[0])


def test_g_equal_1_equals_an_mqa_model_built_from_the_pooled_weights():
    base = _mha()
    converted = convert_to_gqa(base, n_groups=1, method="mean")
    torch.manual_seed(123)
    mqa = TinyGPT(dataclasses.replace(base.config, n_kv_heads=1)).eval()
    state = base.state_dict()
    for name, value in state.items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            state[name] = value.view(H, D, D_MODEL).mean(dim=0)  # average of the 6 heads: (D, d_model)
    mqa.load_state_dict(state)
    idx = _tokens(1)
    torch.testing.assert_close(converted(idx)[0], mqa(idx)[0], **tolerance("exact"))
    assert converted.blocks[0].attn.n_kv_heads == 1


@pytest.mark.parametrize("n_groups", [1, 2, 3])
def test_pooled_keys_are_the_mean_of_each_groups_keys(n_groups):
    """Projections are linear, so the pooled head's key is the average of the original heads' keys of its group."""
    base = _mha()
    converted = convert_to_gqa(base, n_groups)
    x = torch.randn(2, 5, D_MODEL)
    _, k_mha, v_mha = base.blocks[1].attn.project_qkv(x)  # (2, 6, 5, 8)
    _, k_gqa, v_gqa = converted.blocks[1].attn.project_qkv(x)  # (2, G, 5, 8)
    size = H // n_groups
    torch.testing.assert_close(k_gqa, k_mha.view(2, n_groups, size, 5, D).mean(2))
    torch.testing.assert_close(v_gqa, v_mha.view(2, n_groups, size, 5, D).mean(2))
    # everything else is copied unchanged
    torch.testing.assert_close(converted.blocks[1].attn.q_proj.weight, base.blocks[1].attn.q_proj.weight)
    torch.testing.assert_close(converted.blocks[0].mlp.up.weight, base.blocks[0].mlp.up.weight)


def test_shapes_cache_and_first_head():
    base = _mha()
    weight = base.blocks[0].attn.k_proj.weight  # (48, 48)
    assert pool_kv_heads(weight, H, 2).shape == (2 * D, D_MODEL)
    assert pool_kv_heads(torch.arange(48.0), H, 3).shape == (3 * D,)
    torch.testing.assert_close(pool_kv_heads(weight, H, 2, "first"), torch.cat([weight[:D], weight[3 * D:4 * D]]))
    converted = convert_to_gqa(base, 2, "first")
    cache = converted.new_cache(batch_size=3, max_len=10)
    assert cache.layers[0].keys.shape == (3, 2, 10, D)
    assert base.new_cache(3, 10).nbytes == 3 * cache.nbytes


def test_random_init_is_seeded_and_leaves_the_base_and_global_rng_alone():
    base = _mha()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    rng_state = torch.get_rng_state()
    a, b = convert_to_gqa(base, 2, "random", seed=5), convert_to_gqa(base, 2, "random", seed=5)
    c = convert_to_gqa(base, 2, "random", seed=6)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    wa = a.blocks[0].attn.k_proj.weight
    assert torch.equal(wa, b.blocks[0].attn.k_proj.weight) and not torch.equal(wa, c.blocks[0].attn.k_proj.weight)
    assert 0.01 < wa.std().item() < 0.03  # the TinyGPT initialisation scale
    assert not torch.allclose(wa, convert_to_gqa(base, 2, "mean").blocks[0].attn.k_proj.weight)


def test_conversion_errors():
    base = _mha()
    with pytest.raises(ValueError, match="n_groups=4 must divide the model's n_kv_heads=6"):
        convert_to_gqa(base, 4)
    with pytest.raises(ValueError, match="n_groups must be an integer >= 1"):
        convert_to_gqa(base, 0)
    with pytest.raises(ValueError, match="method must be one of"):
        convert_to_gqa(base, 2, "median")
    with pytest.raises(ValueError, match="n_groups=4 must divide n_heads=6"):
        pool_kv_heads(base.blocks[0].attn.k_proj.weight, H, 4)
    with pytest.raises(ValueError, match=r"weight must have shape \(n_heads · head_dim, d_model\)"):
        pool_kv_heads(torch.zeros(50, 48), H, 2)
    gqa = convert_to_gqa(base, 3)  # a GQA model can be pooled further, by groups of its kv heads
    assert convert_to_gqa(gqa, 1).config.n_kv_heads == 1
    with pytest.raises(ValueError, match="n_groups=2 must divide the model's n_kv_heads=3"):
        convert_to_gqa(gqa, 2)


def test_uptrain_steps_and_errors():
    assert uptrain_steps(1000, 0.05) == 50
    assert uptrain_steps(10, 0.01) == 1
    with pytest.raises(ValueError, match="alpha must lie in"):
        uptrain_steps(100, 0.0)


def test_uptraining_study_and_table():
    text = synthetic_corpus(60, seed=2)
    tokenizer = CharTokenizer(text)
    data = TokenDataset.from_text(text, tokenizer, context_length=16)
    base = _mha(vocab_size=tokenizer.vocab_size, context_length=16, n_layers=1)
    result = uptrain(convert_to_gqa(base, 1), data, original_steps=40, alpha=0.05, batch_size=4)
    assert result.steps == [2]
    rows = uptraining_study(base, data, original_steps=20, groups=[1, 3], methods=("mean", "random"), alpha=0.1,
                            batch_size=4)
    assert [(r.n_groups, r.method) for r in rows] == [(1, "mean"), (1, "random"), (3, "mean"), (3, "random")]
    assert all(r.loss_converted > 0 and r.loss_uptrained > 0 for r in rows)
    table = format_table(["G", "loss"], [[r.n_groups, f"{r.loss_uptrained:.2f}"] for r in rows])
    assert table.splitlines()[0].startswith("G  loss") and len(table.splitlines()) == 6


# --- the chapter's exercise ------------------------------------------------------------------------------

def _solution(weight, n_heads, n_groups):
    head_dim = weight.shape[0] // n_heads
    heads = weight.view(n_groups, n_heads // n_groups, head_dim, weight.shape[1])
    return heads.mean(dim=1).reshape(n_groups * head_dim, weight.shape[1])


def _stub(weight, n_heads, n_groups):
    raise NotImplementedError("exercise: write this part")


def _interleaved_groups(weight, n_heads, n_groups):  # group j = heads j, j + G, j + 2G, … (the wrong axis)
    head_dim = weight.shape[0] // n_heads
    heads = weight.view(n_heads // n_groups, n_groups, head_dim, weight.shape[1])
    return heads.mean(dim=0).reshape(n_groups * head_dim, weight.shape[1])


def _first_head(weight, n_heads, n_groups):
    head_dim = weight.shape[0] // n_heads
    return weight.view(n_groups, n_heads // n_groups, head_dim, -1)[:, 0].reshape(n_groups * head_dim, -1)


def _pool_over_head_dim(weight, n_heads, n_groups):  # averages inside each head instead of across heads
    head_dim = weight.shape[0] // n_heads
    return weight.view(n_groups * head_dim, n_heads // n_groups, -1).mean(dim=1)


def test_mean_pool_checker_passes_the_solution(capsys):
    assert check_mean_pool(_solution)
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,message", [(_stub, "not written yet"), (_interleaved_groups, "CONSECUTIVE"),
                                           (_first_head, "FIRST head"), (_pool_over_head_dim, "CONSECUTIVE")])
def test_mean_pool_checker_rejects_wrong_answers(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        check_mean_pool(wrong)
