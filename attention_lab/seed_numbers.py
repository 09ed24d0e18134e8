"""The numbers of the lecture slides the book was made from (the seed), as quoted in issue #17 — and only those.

The slides draw "THE CAT IS ON A CHAIR" as 6×6 attention tables: the plain self-attention table, a causal
(masked) table and a sliding-window (w=3) table. Those tables themselves are not available here; what is
available is what issue #17 quotes from them:

* the self-attention table's THE→THE weight, 0.268;
* the causal table's row sums, "0.268, 0.402, …": the causal table keeps the unmasked weights of the
  self-attention table and blanks the future, without renormalising (a correct causal row sums to 1);
* the two weights the w=3 table feeds to a second softmax for the CAT row, 0.124 (CAT→THE) and 0.278
  (CAT→CAT), and that table's result for that row, 0.461 / 0.538. Their sum, 0.402, is the causal table's
  CAT row sum, so they are the unmasked table's CAT→THE and CAT→CAT weights.

Nothing else of the slides' tables is known, and nothing else is filled in: a cell the issue does not quote
is absent (``None`` in :func:`slides_self_attention_table`). Chapters 01 (self-attention), 02 (causal) and
04 (sliding window) load these numbers and put the book's own computation beside them.
"""

from __future__ import annotations

import math

SOURCE = "the lecture slides (seed), as quoted in issue #17"
WORDS = ("THE", "CAT", "IS", "ON", "A", "CHAIR")  # the slides' sentence, one word per row and column

# The self-attention (unmasked) table: (query word, key word) -> weight, the cells the issue quotes. THE→THE is
# quoted as such; CAT→THE and CAT→CAT are the two weights the w=3 table's CAT row feeds to its second softmax
# ("softmax([0.124, 0.278])"): a window of 3 at CAT holds only THE and CAT.
SELF_ATTENTION = {("THE", "THE"): 0.268, ("CAT", "THE"): 0.124, ("CAT", "CAT"): 0.278}

# The causal table's row sums, as quoted ("0.268, 0.402, …"): rows THE and CAT. A causal softmax row sums to 1;
# these are the sums of the unmasked weights of the keys each row may see (THE: 0.268; CAT: 0.124 + 0.278).
CAUSAL_ROW_SUMS = {"THE": 0.268, "CAT": 0.402}

# The sliding-window (w=3) table's CAT row as the slides print it: softmax([0.124, 0.278]) rounded, a second
# softmax over already-softmaxed weights (the correct row is renormalised([0.124, 0.278]) = 0.308 / 0.692).
WINDOW = 3
WINDOW_ROWS = {"CAT": (0.461, 0.538)}


def unmasked_row(word: str) -> tuple[float, ...]:
    """The slides' unmasked weights of the keys ``word`` may see under a causal mask (itself and the words
    before it), where every one of them is quoted; a ``ValueError`` for a row the issue does not quote whole."""
    if word not in WORDS:
        raise ValueError(f"word must be one of {WORDS}, got {word!r}")
    keys = WORDS[: WORDS.index(word) + 1]
    missing = [key for key in keys if (word, key) not in SELF_ATTENTION]
    if missing:
        raise ValueError(f"the slides' weights {word}→{missing} are not quoted, so row {word} is unknown")
    return tuple(SELF_ATTENTION[(word, key)] for key in keys)


def slides_self_attention_table() -> list[list[float | None]]:
    """The slides' 6×6 self-attention table as far as it is known: rows are queries, columns keys (in
    :data:`WORDS` order); the quoted cells hold their value, every other cell ``None``."""
    return [[SELF_ATTENTION.get((query, key)) for key in WORDS] for query in WORDS]


def renormalised(row: tuple[float, ...]) -> tuple[float, ...]:
    """A row of kept weights divided by its sum: what the masked softmax gives over the same keys (the
    softmax's numerators e^{s_ij} do not depend on which other keys are present, so only the sum changes)."""
    total = sum(row)
    if not row or total <= 0:
        raise ValueError(f"row must hold at least one positive weight, got {row!r}")
    return tuple(w / total for w in row)


def softmax(row: tuple[float, ...]) -> tuple[float, ...]:
    """The softmax of a row of numbers (what the slides' window table applies a second time)."""
    if not row:
        raise ValueError("row must not be empty")
    top = max(row)
    exps = [math.exp(w - top) for w in row]
    return tuple(e / sum(exps) for e in exps)


def window_keys(word: str, window: int) -> tuple[str, ...]:
    """The words a query ``word`` sees under a sliding window of ``window`` keys, itself included (query i
    sees keys j with i − window < j ≤ i), oldest first: ``window_keys("CAT", 3) == ("THE", "CAT")``."""
    if word not in WORDS:
        raise ValueError(f"word must be one of {WORDS}, got {word!r}")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    i = WORDS.index(word)
    return WORDS[max(0, i - window + 1): i + 1]


def window_row(word: str, window: int) -> tuple[float, ...]:
    """The slides' unmasked weights of the keys ``word`` sees under a window of ``window`` keys
    (:func:`window_keys`), where every one of them is quoted — what a window table must renormalise; a
    ``ValueError`` for a row the issue does not quote whole."""
    keys = window_keys(word, window)
    missing = [key for key in keys if (word, key) not in SELF_ATTENTION]
    if missing:
        raise ValueError(f"the slides' weights {word}→{missing} are not quoted, so row {word} is unknown")
    return tuple(SELF_ATTENTION[(word, key)] for key in keys)
