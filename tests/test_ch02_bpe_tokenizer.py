"""The BPE path as Colab meets it, offline: a small byte-level tiktoken Encoding built here stands in for GPT-2.

Online, ``get_tokenizer`` returns a :class:`CompactBPETokenizer` over tiktoken's GPT-2 BPE. This test builds
an Encoding of the same kind (every single byte a token, GPT-2's pre-tokenizer regex, merges learnt from the
corpus's words plus a few the corpus never has) and sends every prompt the chapters encode through the
library's own tokenizer path, with exact round trips.
"""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path

import pytest
import torch

from attention_lab import data
from attention_lab.data import CharTokenizer, CompactBPETokenizer, TokenDataset, get_tokenizer, load_corpus

tiktoken = pytest.importorskip("tiktoken")

SOURCES = Path(__file__).resolve().parents[1] / "notebooks" / "src"
# GPT-2's pre-tokenizer (tiktoken_ext.openai_public.r50k_pat_str), written out so the test owns it.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Chapter 03 encodes these through a loop variable (``for prompt_text, new_tokens in [...]``).
CHAPTER_03_PROMPTS = ["once there was a ", "the dog", "o", "the king is on the "]
# Text a student may type: pieces the corpus never had, capitals, digits, accents, emoji, a special token's text.
UNSEEN_TEXTS = ["", " ", "  ", "the dog ", "Once upon a time, the ZEBRA sat.", "la reine est fâchée — ça va?",
                "tab\tand\nnew lines\r\n", "1234 + 5678 = 6912", "🙂 emoji 👩‍💻", "<|endoftext|> is just text here",
                "don't we'll they've", " zebra zebras", "日本語のテキスト"]
MERGED_ELSEWHERE = [" zebra", " time", " upon"]  # tokens of the Encoding that the corpus never uses


def byte_rank(b: int) -> int:
    """Single bytes get permuted ids (as in GPT-2, where byte b is not id b): catches mixing bytes and ids."""
    return (7 * b + 3) % 256


def make_encoding(corpus: str) -> "tiktoken.Encoding":
    """A byte-level BPE made here: 256 byte tokens, prefix-chain merges of the corpus's words, one special token."""
    ranks = {bytes([b]): byte_rank(b) for b in range(256)}
    pieces = sorted(set(re.findall(r" ?[a-z]+|\.", corpus))) + MERGED_ELSEWHERE
    for piece in pieces:
        raw = piece.encode()
        for end in range(2, len(raw) + 1):
            ranks.setdefault(raw[:end], len(ranks))
    return tiktoken.Encoding(name="test-byte-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": len(ranks)})


def chapter_prompts() -> list[str]:
    """Every string literal a chapter passes to ``tokenizer.encode(...)``, plus chapter 03's loop prompts."""
    prompts = set()
    for source in sorted(SOURCES.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "encode"
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                prompts.add(node.args[0].value)
    return sorted(prompts) + CHAPTER_03_PROMPTS


@pytest.fixture(scope="module")
def corpus() -> str:
    return load_corpus()


@pytest.fixture(scope="module")
def encoding(corpus):
    return make_encoding(corpus)


@pytest.fixture
def online_bpe(monkeypatch, encoding):
    """The library believes it is online and that tiktoken handed it GPT-2: it gets the test's Encoding."""
    monkeypatch.setenv("ATTENTION_LAB_OFFLINE", "0")
    asked = []
    monkeypatch.setattr(data, "load_gpt2_encoding", lambda timeout=30.0: asked.append(timeout) or encoding)
    return asked


def test_chapter_03_prompts_are_the_chapters_own():
    source = (SOURCES / "03_kv_cache.py").read_text(encoding="utf-8")
    for prompt in CHAPTER_03_PROMPTS:
        assert repr(prompt) in source or f'"{prompt}"' in source, f"chapter 03 no longer uses {prompt!r}"
    assert "once there was a " in chapter_prompts() and "the dog" in chapter_prompts()


def test_get_tokenizer_online_gives_the_compact_bpe(online_bpe, corpus, capsys):
    tokenizer = get_tokenizer(corpus)
    assert online_bpe, "get_tokenizer must obtain the GPT-2 encoding through data.load_gpt2_encoding"
    assert isinstance(tokenizer, CompactBPETokenizer)
    assert tokenizer.unit == "token" and tokenizer.units == "tokens"
    assert "tiktoken GPT-2 BPE" in capsys.readouterr().out
    assert tokenizer.vocab_size == len(set(tokenizer.corpus_ids) | set(range(256)))  # byte ranks are 0..255 here
    assert get_tokenizer(corpus, kind="bpe", verbose=False).gpt2_ids == tokenizer.gpt2_ids


def assert_exact(tokenizer: CompactBPETokenizer, encoding, text: str) -> list[int]:
    """decode(encode(text)) == text, encode(decode(ids)) == ids, and the ids spell GPT-2's own tokens or bytes."""
    ids = tokenizer.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode(tokenizer.decode(ids)) == ids
    gpt2 = encoding.encode_ordinary(text)
    if set(gpt2) <= set(tokenizer.gpt2_ids):  # every token in the vocabulary: exactly GPT-2's tokens, renumbered
        assert [tokenizer.gpt2_ids[i] for i in ids] == gpt2
    else:  # unseen tokens are spelled by their bytes; the known ones stay whole
        assert b"".join(encoding.decode_single_token_bytes(tokenizer.gpt2_ids[i]) for i in ids) == text.encode()
        assert len(ids) > len(gpt2)
    return ids


def test_every_chapter_prompt_encodes_and_round_trips(online_bpe, corpus, encoding):
    tokenizer = get_tokenizer(corpus, verbose=False)
    for prompt in chapter_prompts():
        ids = assert_exact(tokenizer, encoding, prompt)
        assert ids, prompt
    # The trailing space of "once there was a " is a GPT-2 token the corpus never has on its own: kept as its byte.
    trailing = tokenizer.encode("once there was a ")
    assert tokenizer.gpt2_ids[trailing[-1]] == encoding.encode_single_token(b" ")
    assert tokenizer.encode("once there was a cat.") == [tokenizer.gpt2_ids.index(g)
                                                         for g in encoding.encode_ordinary("once there was a cat.")]


@pytest.mark.parametrize("text", UNSEEN_TEXTS)
def test_text_the_corpus_never_had_encodes_exactly(online_bpe, corpus, encoding, text):
    tokenizer = get_tokenizer(corpus, verbose=False)
    assert_exact(tokenizer, encoding, text)


def test_tokens_merged_in_gpt2_but_not_in_the_corpus_fall_back_to_bytes(online_bpe, corpus, encoding):
    tokenizer = get_tokenizer(corpus, verbose=False)
    zebra = encoding.encode_single_token(b" zebra")
    assert zebra not in tokenizer.gpt2_ids  # the vocabulary stays compact
    ids = tokenizer.encode(" zebra")
    assert [tokenizer.gpt2_ids[i] for i in ids] == [byte_rank(b) for b in b" zebra"]
    assert tokenizer.decode(ids) == " zebra"


def test_slices_of_the_corpus_round_trip(online_bpe, corpus, encoding):
    """Chapter 11 encodes story prefixes cut anywhere, mid-word too."""
    tokenizer = get_tokenizer(corpus, verbose=False)
    rng = random.Random(0)
    stories = corpus.splitlines()
    for _ in range(200):
        story = rng.choice(stories)
        assert_exact(tokenizer, encoding, story[:rng.randint(1, len(story))])
    assert tokenizer.decode(tokenizer.encode(corpus)) == corpus


def test_ids_a_model_generates_always_decode(online_bpe, corpus, encoding):
    """Any id sequence decodes (invalid UTF-8 bytes show as U+FFFD, as in tiktoken); bad ids are a ValueError."""
    tokenizer = get_tokenizer(corpus, verbose=False)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tokenizer.vocab_size, (500,), generator=g).tolist()
    assert isinstance(tokenizer.decode(ids), str)
    lone = tokenizer.encode("é")[:1]  # the first byte of a two-byte character
    assert tokenizer.decode(lone) == "\ufffd"
    with pytest.raises(ValueError, match=r"ids must lie in \[0, "):
        tokenizer.decode([tokenizer.vocab_size])
    with pytest.raises(ValueError, match="ids must lie"):
        tokenizer.decode([-1])
    with pytest.raises(ValueError, match="text must be a str"):
        tokenizer.encode(b"bytes")


def test_chapter_paths_run_under_bpe(online_bpe, corpus):
    """Chapters 02/03/04: a dataset from the corpus, a TinyGPT, cached == uncached generation from each prompt."""
    from attention_lab.generate import generate
    from attention_lab.model import TinyGPT, TinyGPTConfig

    tokenizer = get_tokenizer(corpus, verbose=False)
    dataset = TokenDataset.from_text(corpus, tokenizer, context_length=32)
    x, y = dataset.batch("train", 2, torch.Generator().manual_seed(0))
    assert int(x.max()) < tokenizer.vocab_size and torch.equal(x[:, 1:], y[:, :-1])
    torch.manual_seed(0)
    model = TinyGPT(TinyGPTConfig(vocab_size=tokenizer.vocab_size, context_length=32, d_model=16, n_layers=1,
                                  n_heads=2)).eval()
    for prompt_text in chapter_prompts():
        prompt = torch.tensor([tokenizer.encode(prompt_text)])
        cached = generate(model, prompt, 5, use_cache=True)
        assert torch.equal(cached, generate(model, prompt, 5, use_cache=False))
        assert tokenizer.decode(cached[0].tolist()).startswith(prompt_text)


def test_an_encoding_without_single_byte_tokens_is_refused():
    ranks = {bytes([b]): b for b in range(128)}  # ASCII only: "é" could not be encoded
    ascii_only = tiktoken.Encoding(name="ascii-only", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    with pytest.raises(ValueError, match="every single byte"):
        CompactBPETokenizer("abc", ascii_only)
    with pytest.raises(ValueError, match="must not be empty"):
        CompactBPETokenizer("", make_encoding("abc"))


def test_the_character_tokenizer_names_its_unit():
    tokenizer = CharTokenizer("the cat")
    assert tokenizer.unit == "character" and tokenizer.units == "characters"
    with pytest.raises(ValueError, match="ids must lie"):
        tokenizer.decode([99])
