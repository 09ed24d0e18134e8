"""Chapter 02's look inside a trained TinyGPT: attention maps equal the weights the model used, the hero's
positions are found for characters and BPE tokens alike, and removing a head is undone afterwards."""

import pytest
import torch

from attention_lab import MHASettings, MLASettings, TinyGPT, TinyGPTConfig
from attention_lab.attention_maps import (attention_maps, hero_attention, hero_attention_by_story, hero_mentions,
                                          hero_of, hero_recall, sentence_subjects, uniform_share)
from attention_lab.data import CharTokenizer, CompactBPETokenizer, load_corpus

STORY = "once there was a fox. the fox is on a mat. the fox sees the dog."


def reference_maps(model, idx):
    """Every layer's weights, recomputed loop by loop from the modules: softmax(q kᵀ / √D) over keys j <= i."""
    positions = torch.arange(idx.shape[1])
    x = model.token_embedding(idx) + model.position_embedding(positions)
    maps = []
    for block in model.blocks:
        attn = block.attn
        q, k, _ = attn.project_qkv(block.ln1(x))  # (B, H, T, D), (B, Hkv, T, D)
        if attn.rotary is not None:
            q, k = attn.rotary(q, positions), attn.rotary(k, positions)
        k = k.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=1)
        t = idx.shape[1]
        weights = torch.zeros(idx.shape[0], attn.n_heads, t, t)
        for i in range(t):
            low = 0 if attn.window is None else max(0, i - attn.window + 1)
            scores = q[:, :, i:i + 1] @ k[:, :, low:i + 1].transpose(-1, -2) / attn.head_dim ** 0.5  # (B, H, 1, n)
            weights[:, :, i, low:i + 1] = torch.softmax(scores, dim=-1)[:, :, 0]
        maps.append(weights)
        x = block(x, positions)
    return maps


@pytest.mark.parametrize("settings", [dict(), dict(n_kv_heads=2), dict(window=5), dict(settings=MHASettings(rope=True))])
def test_attention_maps_are_the_weights_the_model_used(settings):
    torch.manual_seed(0)
    model = TinyGPT(TinyGPTConfig(vocab_size=30, context_length=16, d_model=32, n_layers=2, n_heads=4, **settings))
    model.train()
    idx = torch.randint(30, (2, 11), generator=torch.Generator().manual_seed(1))
    maps = attention_maps(model, idx)
    assert model.training  # the mode is given back
    with torch.no_grad():
        expected = reference_maps(model, idx)
    assert len(maps) == 2
    for got, want in zip(maps, expected):
        assert got.shape == (2, 4, 11, 11)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.sum(-1), torch.ones(2, 4, 11))
        assert (got.triu(1) == 0).all()


def test_attention_maps_refuse_a_model_without_multi_head_attention():
    model = TinyGPT(TinyGPTConfig(vocab_size=30, context_length=16, d_model=32, n_layers=1, n_heads=4,
                                  attention="mla", settings=MLASettings(kv_latent_dim=8, rope_dim=4)))
    with pytest.raises(ValueError, match="MultiHeadAttention"):
        attention_maps(model, torch.zeros(1, 4, dtype=torch.long))


def _texts(tokenizer, ids, positions):
    return ["".join(tokenizer.decode([ids[t]])) for t in positions]


def test_hero_mentions_in_characters():
    tokenizer = CharTokenizer(load_corpus())
    mention = hero_mentions(STORY, tokenizer)
    assert mention.hero == "fox"
    assert "".join(_texts(tokenizer, mention.ids, mention.introduction)) == "fox"
    assert len(mention.recalls) == 2  # "the fox is", "the fox sees" — not "the dog"
    assert all(tokenizer.decode(mention.ids[: t + 1]).endswith("the ") for t in mention.recalls)
    assert [tokenizer.decode([i]) for i in mention.targets] == ["f", "f"]
    assert "".join(_texts(tokenizer, mention.ids, mention.names)) == "foxfoxfox"
    assert mention.names_before(mention.recalls[0]) == mention.introduction
    short = hero_mentions(STORY, tokenizer, max_tokens=28)  # cut inside the second sentence
    assert len(short.recalls) == 1 and len(short.ids) == 28


def test_hero_mentions_in_bpe_tokens():
    tiktoken = pytest.importorskip("tiktoken")
    from test_ch02_bpe_tokenizer import make_encoding

    corpus = load_corpus()
    tokenizer = CompactBPETokenizer(corpus, make_encoding(corpus))
    mention = hero_mentions(STORY, tokenizer)
    assert "".join(_texts(tokenizer, mention.ids, mention.introduction)).strip() == "fox"
    assert len(mention.recalls) == 2
    assert all(tokenizer.decode([mention.ids[t + 1]]).strip().startswith("f") for t in mention.recalls)
    assert all(tokenizer.decode(mention.ids[: t + 1]).endswith("the") for t in mention.recalls)
    assert tiktoken is not None


def test_a_story_must_open_with_its_hero():
    with pytest.raises(ValueError, match="once there was a"):
        hero_mentions("the fox is on a mat.", CharTokenizer(load_corpus()))
    with pytest.raises(ValueError, match="once there was a"):
        hero_of("a fox.")
    assert hero_of(STORY) == "fox"
    assert sentence_subjects(STORY) == ["fox", "fox"]


def test_shares_recall_and_removing_a_head():
    corpus = load_corpus()
    tokenizer = CharTokenizer(corpus)
    stories = corpus.strip().split("\n")[-5:]
    torch.manual_seed(0)
    model = TinyGPT(TinyGPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=32, n_layers=2,
                                  n_heads=4))
    share = hero_attention(model, stories, tokenizer)
    assert share.shape == (2, 4) and ((share >= 0) & (share <= 1)).all()
    by_story = hero_attention_by_story(model, stories, tokenizer)
    torch.testing.assert_close(torch.cat([s for _, s in by_story]).mean(0), share)
    accuracy, count = hero_recall(model, stories, tokenizer)
    assert 0 <= accuracy <= 1 and count == sum(len(m.recalls) for m, _ in by_story)
    idx = torch.tensor([tokenizer.encode(stories[0])[:64]])
    with torch.no_grad():
        before = model(idx)[0]
    hero_recall(model, stories, tokenizer, without=(1, 2))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], before)  # the removal is undone
    with pytest.raises(ValueError, match="without must name"):
        hero_recall(model, stories, tokenizer, without=(0, 4))


def test_uniform_share_counts_the_name_tokens_before_each_recall():
    tokenizer = CharTokenizer(load_corpus())
    mention = hero_mentions(STORY, tokenizer)
    expected = sum(len(mention.names_before(t)) / (t + 1) for t in mention.recalls) / len(mention.recalls)
    assert uniform_share([STORY], tokenizer, 64) == pytest.approx(expected)
    assert expected == pytest.approx((3 / 26 + 6 / 47) / 2)
