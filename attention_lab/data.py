"""Text, tokenizers and batches — all available offline; every download bounded in time.

* Corpus: :func:`synthetic_corpus` writes small stories from a tiny grammar the project owns, so
  training works with no network. On Colab, :func:`load_corpus` ("shakespeare") can download a
  public-domain text once into :func:`cache_dir` (``~/.cache/attention_lab`` unless
  ``ATTENTION_LAB_CACHE_DIR`` says otherwise; never committed).
* Tokenizer: tiktoken's GPT-2 BPE when its files can be loaded (restricted to the tokens the corpus
  uses plus the 256 single bytes, so the embedding stays small and any text still encodes); offline,
  the project's own character-level tokenizer, announced in one line. Both say what one position is
  (``tokenizer.unit``: "character" or "token") for printed output and plot labels.
* The network: one offline switch, ``ATTENTION_LAB_OFFLINE`` ("1"/"true"/"yes"/"on" = offline,
  "0"/"false"/"no"/"off"/unset = not), read by :func:`offline_requested` and nothing else; every
  download (tiktoken's GPT-2 files, the Shakespeare text) runs with a time limit and fails with one
  sentence (:class:`DownloadError`), so a server that accepts a connection and never answers cannot
  make a chapter wait forever.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, TypeVar

import torch

from attention_lab.validation import INTEGER_DTYPES, check_positive_int, is_integer

OFFLINE_VARIABLE = "ATTENTION_LAB_OFFLINE"  # the one offline switch (see offline_requested)
CACHE_VARIABLE = "ATTENTION_LAB_CACHE_DIR"  # where downloads are kept (see cache_dir)
DOWNLOAD_TIMEOUT_S = 30.0  # the longest any one download may take before it is given up
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_FILE = "tinyshakespeare.txt"
GPT2_HOST = "openaipublic.blob.core.windows.net"  # where tiktoken fetches GPT-2's vocab.bpe and encoder.json
PROBE_ADDRESS = (GPT2_HOST, 443)  # what is_offline() tries to reach

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")

_NOUNS = ["cat", "dog", "bird", "fox", "child", "king", "queen", "robot", "fish", "horse"]
_PLACES = ["chair", "mat", "table", "hill", "boat", "roof", "bed", "tree", "wall", "box"]
_ADJECTIVES = ["small", "big", "red", "old", "happy", "sleepy", "brave", "quiet"]
_VERBS = ["sees", "likes", "follows", "finds", "helps", "calls"]
_PREPOSITIONS = ["on", "under", "near", "behind"]


def _noun_phrase(rng: random.Random, nouns: list[str]) -> str:
    article = rng.choice(["the", "a"])
    if rng.random() < 0.4:
        return f"{article} {rng.choice(_ADJECTIVES)} {rng.choice(nouns)}"
    return f"{article} {rng.choice(nouns)}"


def _sentence(rng: random.Random, subject: str) -> str:
    kind = rng.random()
    if kind < 0.35:
        return f"{subject} is {rng.choice(_PREPOSITIONS)} {_noun_phrase(rng, _PLACES)}."
    if kind < 0.7:
        return f"{subject} {rng.choice(_VERBS)} {_noun_phrase(rng, _NOUNS)}."
    if kind < 0.85:
        return f"{subject} sat {rng.choice(_PREPOSITIONS)} {_noun_phrase(rng, _PLACES)} and slept."
    return f"{subject} was {rng.choice(_ADJECTIVES)}."


def synthetic_corpus(n_stories: int = 1500, seed: int = 0) -> str:
    """Deterministic short stories from a tiny grammar (the book's offline corpus, ~160 KB by default).

    Each story introduces a character and then refers back to it ("the cat ... the cat ..."),
    so a model must look back in the context to predict well — a job for attention.
    """
    rng = random.Random(seed)
    stories = []
    for _ in range(n_stories):
        hero = rng.choice(_NOUNS)
        lines = [f"once there was a {hero}."]
        for _ in range(rng.randint(2, 4)):
            lines.append(_sentence(rng, f"the {hero}"))
        stories.append(" ".join(lines))
    return "\n".join(stories) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# The network: one offline switch, one cache folder, downloads that always end.


class DownloadError(OSError):
    """A download failed or ran out of time; the message is one sentence saying what, where and what to do."""


def offline_requested() -> bool:
    """True when the offline switch ``ATTENTION_LAB_OFFLINE`` says so — the ONE reading of it in the package.

    "1", "true", "yes" or "on" (any case) mean offline: nothing is downloaded and the tokenizer is the
    project's own, so offline runs are the same on every machine. Unset, "", "0", "false", "no" or "off"
    mean online. Any other value is a :class:`ValueError` (a typo should not silently mean either).
    """
    value = os.environ.get(OFFLINE_VARIABLE, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{OFFLINE_VARIABLE} must be one of 1/true/yes/on (offline) or 0/false/no/off/empty "
                     f"(online), got {os.environ[OFFLINE_VARIABLE]!r}")


def cache_dir() -> Path:
    """The folder downloads are kept in: ``$ATTENTION_LAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/attention_lab``,
    else ``~/.cache/attention_lab`` — outside the package, so it works the same from a pip-installed wheel."""
    override = os.environ.get(CACHE_VARIABLE, "").strip()
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "attention_lab"


_T = TypeVar("_T")


def _check_timeout(timeout: float) -> float:
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _short(error: BaseException) -> str:
    """An exception as a short phrase for a one-sentence message: its type and first line."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text if len(text) <= 120 else text[:117] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _Attempt(Generic[_T]):
    """One call of ``fn`` in a daemon thread, so the caller can stop waiting for it after a time limit.

    Name resolution and some libraries' downloads (tiktoken's, through ``requests``) have no time limit
    of their own; the thread that runs them may outlive the wait, but never blocks the caller or exit.
    """

    def __init__(self, fn: Callable[[], _T], name: str) -> None:
        self.result: _T | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], _T]) -> None:
        try:
            self.result = fn()
        except BaseException as error:  # handed to the waiting caller
            self.error = error

    def wait(self, timeout: float) -> _T:
        """The result; re-raises ``fn``'s error; :class:`TimeoutError` when it is still running after ``timeout``."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"no answer within {timeout:g} s")
        if self.error is not None:
            raise self.error
        return self.result


def is_offline(timeout: float = 2.0) -> bool:
    """True when the offline switch is on, or GPT-2's file host (:data:`PROBE_ADDRESS`) cannot be reached within
    ``timeout`` seconds (connecting and resolving the name both count).

    A quick hint only: a host that accepts connections may still never answer, which is why every
    download has its own time limit as well.
    """
    timeout = _check_timeout(timeout)
    if offline_requested():
        return True

    def probe() -> None:
        socket.create_connection(PROBE_ADDRESS, timeout=timeout).close()

    try:
        _Attempt(probe, "attention_lab network probe").wait(timeout)
        return False
    except (OSError, TimeoutError):
        return True


def download(url: str, path: str | Path, timeout: float = DOWNLOAD_TIMEOUT_S, what: str = "the file") -> Path:
    """Fetch ``url`` into ``path`` within ``timeout`` seconds in all (connecting, waiting and reading).

    Written to a temporary name first and renamed when complete, so an interrupted download never
    leaves a half file behind. Raises :class:`DownloadError` (one sentence) when the switch says
    offline, the server fails, or the time runs out.
    """
    timeout = _check_timeout(timeout)
    path = Path(path)
    if offline_requested():
        raise DownloadError(f"{what[:1].upper()}{what[1:]} is not downloaded because {OFFLINE_VARIABLE} is set (offline); "
                            f"unset it to fetch {url}.")
    deadline = time.monotonic() + timeout
    cancelled = threading.Event()
    part = path.with_name(f"{path.name}.{uuid.uuid4().hex}.part")

    def fetch() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
                while not cancelled.is_set():
                    chunk = response.read(1 << 16)
                    if not chunk:
                        break
                    out.write(chunk)
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"not finished within {timeout:g} s")
            if cancelled.is_set():
                raise TimeoutError(f"not finished within {timeout:g} s")
            part.replace(path)
        finally:
            part.unlink(missing_ok=True)

    try:
        try:
            _Attempt(fetch, f"attention_lab download of {url}").wait(max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            raise TimeoutError(f"not finished within {timeout:g} s") from None
    except Exception as error:  # URLError, socket and HTTP errors, the time limit
        cancelled.set()
        raise DownloadError(f"Could not download {what} from {url} ({_short(error)}); check the network, "
                            f"or set {OFFLINE_VARIABLE}=1 to stay offline.") from None
    return path


def load_corpus(name: str = "synthetic", timeout: float = DOWNLOAD_TIMEOUT_S) -> str:
    """Return the text of corpus ``name``: 'synthetic' (offline, default) or 'shakespeare'.

    'shakespeare' is the tiny-Shakespeare text (:data:`SHAKESPEARE_URL`, public domain), downloaded once
    within ``timeout`` seconds into :func:`cache_dir` and read from there afterwards, offline too.
    """
    if name == "synthetic":
        return synthetic_corpus()
    if name == "shakespeare":
        path = cache_dir() / SHAKESPEARE_FILE
        if not path.exists():
            if offline_requested():
                raise ValueError(f"corpus 'shakespeare' needs a network connection once ({OFFLINE_VARIABLE} is "
                                 "set, and it is not cached yet); use name='synthetic' offline")
            download(SHAKESPEARE_URL, path, timeout=timeout, what="the tiny-Shakespeare text")
        return path.read_text(encoding="utf-8")
    raise ValueError(f"name must be 'synthetic' or 'shakespeare', got {name!r}")


_gpt2_lock = threading.Lock()
_gpt2_attempt: _Attempt | None = None


def load_gpt2_encoding(timeout: float = DOWNLOAD_TIMEOUT_S):
    """tiktoken's GPT-2 encoding, waiting at most ``timeout`` seconds for it; :class:`DownloadError` otherwise.

    tiktoken downloads GPT-2's ``vocab.bpe`` and ``encoder.json`` once from :data:`GPT2_HOST` (with no time
    limit of its own) and keeps them in its cache (``$TIKTOKEN_CACHE_DIR``, else ``<temp dir>/data-gym-cache``);
    the load therefore runs in a worker thread this function stops waiting for. A load still running
    from an earlier call is waited on again rather than started twice.
    """
    global _gpt2_attempt
    timeout = _check_timeout(timeout)
    if offline_requested():
        raise DownloadError(f"tiktoken's GPT-2 files are not fetched because {OFFLINE_VARIABLE} is set (offline).")
    try:
        import tiktoken
    except ImportError:
        raise DownloadError("tiktoken is not installed (pip install tiktoken), so GPT-2's BPE cannot be "
                            "loaded.") from None
    with _gpt2_lock:
        if _gpt2_attempt is None or (not _gpt2_attempt.thread.is_alive() and _gpt2_attempt.error is not None):
            _gpt2_attempt = _Attempt(lambda: tiktoken.get_encoding("gpt2"), "attention_lab GPT-2 BPE load")
        attempt = _gpt2_attempt
    try:
        return attempt.wait(timeout)
    except Exception as error:
        raise DownloadError(f"tiktoken could not load GPT-2's BPE files from {GPT2_HOST} ({_short(error)}); "
                            f"check the network, or set {OFFLINE_VARIABLE}=1 to stay offline.") from None


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers.


def _check_text(text: object, what: str = "text") -> str:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a str, got {type(text).__name__}")
    return text


def _check_ids(ids: object, vocab_size: int) -> list[int]:
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    try:
        ids = list(ids)
    except TypeError:
        raise ValueError(f"ids must be a list of integer token ids, got {type(ids).__name__}") from None
    not_ids = [i for i in ids if not is_integer(i)]  # 2.5, True and "3" are not token ids (int() would take them)
    if not_ids:
        raise ValueError(f"ids must be a list of integer token ids, got {not_ids[:5]}")
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"ids must lie in [0, {vocab_size}) (the vocabulary size), got {bad[:5]}")
    return ids


class CharTokenizer:
    """The project's own tokenizer: one id per distinct character of the corpus.

    It knows only the corpus's characters: encoding any other raises a ValueError naming them.
    """

    unit = "character"  # what one position is, for printed output and plot labels
    units = "characters"

    def __init__(self, text: str) -> None:
        _check_text(text)
        if not text:
            raise ValueError("text must not be empty: the tokenizer's vocabulary is built from it")
        self.symbols = sorted(set(text))
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self.name = f"character-level ({len(self.symbols)} symbols, built from the corpus)"

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def encode(self, text: str) -> list[int]:
        """One id per character; ValueError for characters the corpus never had."""
        _check_text(text)
        missing = sorted(set(text) - set(self._index))
        if missing:
            raise ValueError(f"text has characters outside the tokenizer's vocabulary: {missing[:10]}")
        return [self._index[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        """The characters of ``ids`` (``decode(encode(text)) == text``)."""
        return "".join(self.symbols[i] for i in _check_ids(ids, self.vocab_size))


class CompactBPETokenizer:
    """tiktoken's GPT-2 BPE, with ids renumbered to the tokens that occur in the corpus plus the 256 bytes.

    GPT-2 has 50,257 tokens; a tiny model trained on a small corpus needs only the few hundred it will
    ever see, which keeps the embedding table (and the CPU) light. Text the corpus never had (a trailing
    space, a new word, "é", an emoji) still encodes: a GPT-2 token outside the compact vocabulary is
    spelled by its bytes, and every single byte is a GPT-2 token kept in the vocabulary.

    What round-trips:

    * ``decode(encode(text)) == text`` for every text (lone surrogates, which UTF-8 cannot hold, become
      "\ufffd" as in tiktoken itself).
    * ``encode(text)`` is GPT-2's own tokenization, renumbered, whenever every GPT-2 token of ``text``
      occurs in the corpus or is a single byte; otherwise the unseen tokens are spelled by their bytes
      (the same text in more positions).
      Special tokens are not parsed: "<|endoftext|>" in the text is encoded as plain text.
    * ``encode(decode(ids)) == ids`` for ids that ``encode`` made. Ids a model generates freely may
      spell bytes that are not valid UTF-8; ``decode`` shows those as "\ufffd" (as tiktoken does).
    """

    unit = "token"  # what one position is, for printed output and plot labels
    units = "tokens"

    def __init__(self, text: str, encoding) -> None:
        _check_text(text)
        if not text:
            raise ValueError("text must not be empty: the tokenizer's vocabulary is built from it")
        try:
            byte_ids = [encoding.encode_single_token(bytes([b])) for b in range(256)]
        except KeyError:
            raise ValueError("encoding must have a token for every single byte (a byte-level BPE such as "
                             "GPT-2's), so that any text can be encoded") from None
        self.encoding = encoding
        self.corpus_ids = sorted(set(encoding.encode_ordinary(text)))  # GPT-2 ids the corpus uses
        self.gpt2_ids = sorted(set(self.corpus_ids) | set(byte_ids))  # compact id i <-> GPT-2 id gpt2_ids[i]
        self._to_compact = {g: i for i, g in enumerate(self.gpt2_ids)}
        self._byte_to_compact = [self._to_compact[g] for g in byte_ids]
        self.name = (f"tiktoken GPT-2 BPE ({len(self.corpus_ids)} of {encoding.n_vocab} tokens occur in the corpus, "
                     f"plus the 256 bytes for text it never had: {self.vocab_size} ids)")

    @property
    def vocab_size(self) -> int:
        return len(self.gpt2_ids)

    def encode(self, text: str) -> list[int]:
        """Compact ids of ``text``: GPT-2's tokens where the corpus has them, else their bytes."""
        out: list[int] = []
        for g in self.encoding.encode_ordinary(_check_text(text)):
            compact = self._to_compact.get(g)
            if compact is not None:
                out.append(compact)
            else:
                out.extend(self._byte_to_compact[b] for b in self.encoding.decode_single_token_bytes(g))
        return out

    def decode(self, ids: list[int]) -> str:
        """The text of compact ``ids`` (bytes that are not valid UTF-8 show as "\ufffd")."""
        return self.encoding.decode([self.gpt2_ids[i] for i in _check_ids(ids, self.vocab_size)])


def get_tokenizer(text: str, kind: str = "auto", verbose: bool = True, timeout: float = DOWNLOAD_TIMEOUT_S):
    """Tokenizer for ``text``: kind 'bpe' (tiktoken GPT-2), 'char' (the project's own) or 'auto'.

    'auto' uses tiktoken when its GPT-2 files load within ``timeout`` seconds (see
    :func:`load_gpt2_encoding`), else falls back to characters and says so in one line; with the
    offline switch on it does not try. 'bpe' raises a ValueError instead of falling back.
    """
    if kind not in ("auto", "bpe", "char"):
        raise ValueError(f"kind must be 'auto', 'bpe' or 'char', got {kind!r}")
    _check_text(text)
    tokenizer = None
    if kind in ("auto", "bpe"):
        reason = "offline" if offline_requested() else None
        if reason is None:
            try:
                tokenizer = CompactBPETokenizer(text, load_gpt2_encoding(timeout))
            except DownloadError as error:
                reason = str(error).rstrip(".")
        if tokenizer is None and kind == "bpe":
            raise ValueError(f"kind='bpe' needs tiktoken's GPT-2 encoding, which could not be loaded ({reason})")
        if tokenizer is None and verbose:
            print(f"Tokenizer: tiktoken's GPT-2 file is unavailable ({reason}); using the project's own "
                  "character-level tokenizer instead.")
    if tokenizer is None:
        tokenizer = CharTokenizer(text)
    if verbose:
        print(f"Tokenizer: {tokenizer.name}")
    return tokenizer


@dataclass
class TokenDataset:
    """Token ids split into train/validation; :meth:`batch` draws random windows for next-token prediction."""

    train_ids: torch.Tensor  # (n_train,) int64
    val_ids: torch.Tensor  # (n_val,) int64
    context_length: int

    def __post_init__(self) -> None:
        check_positive_int("context_length", self.context_length)  # 0, -3, 2.5 and True are refused
        for name in ("train_ids", "val_ids"):
            ids = getattr(self, name)
            if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype not in INTEGER_DTYPES:
                raise ValueError(f"{name} must be a 1-D integer tensor of token ids, got "
                                 f"{type(ids).__name__ if not isinstance(ids, torch.Tensor) else (ids.dtype, tuple(ids.shape))}")
            if len(ids) < self.context_length + 1:  # one window: T inputs and the token after them
                raise ValueError(f"{name} must hold at least context_length + 1 = {self.context_length + 1} tokens "
                                 f"(one window and its next token), got {len(ids)}")

    @classmethod
    def from_text(cls, text: str, tokenizer, context_length: int, val_fraction: float = 0.1) -> "TokenDataset":
        check_positive_int("context_length", context_length)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
        n_val = int(len(ids) * val_fraction)
        if n_val <= context_length + 1 or len(ids) - n_val <= context_length + 1:
            raise ValueError(f"text too short ({len(ids)} tokens) for context_length={context_length}")
        return cls(ids[:-n_val], ids[-n_val:], context_length)

    def batch(self, split: str, batch_size: int, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: inputs ``(B, T)`` and targets ``(B, T)`` shifted one token right.

        Every window of the split is equally likely, the last one (ending at the split's last token) included.
        """
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        check_positive_int("batch_size", batch_size)
        ids = self.train_ids if split == "train" else self.val_ids
        # a window starting at s reads ids[s : s + T + 1], so s runs over 0 .. len - T - 1 (randint's bound is exclusive)
        starts = torch.randint(0, len(ids) - self.context_length, (batch_size,), generator=generator)
        offsets = torch.arange(self.context_length)
        x = ids[starts[:, None] + offsets]  # (B, T)
        y = ids[starts[:, None] + offsets + 1]  # (B, T)
        return x.to(device), y.to(device)
