"""Chapter 11 — address translation in a paged KV cache, and how many blocks a sequence needs."""

from __future__ import annotations

import random
from typing import Callable

from attention_lab.caches.paged import blocks_needed, slot_of
from attention_lab.exercises.core import ExerciseError, call, exercise_check, expect_int


def _tables(seed: int = 11):
    """Random block tables (distinct physical blocks in a random order), their block size, and a length."""
    rng = random.Random(seed)
    for block_size in (4, 1, 3, 16):
        for n_blocks in (5, 2, 1):
            table = rng.sample(range(40), n_blocks)
            yield table, block_size, n_blocks * block_size


_SLOT_HINT = ("Split the position into a logical block (position // block_size) and an offset "
              "(position % block_size); look the logical block up in the table; the slot is "
              "physical_block * block_size + offset.")


def _slot_mistakes(table: list[int], position: int, block_size: int) -> list[tuple[str, Callable[[], int]]]:
    logical, offset = position // block_size, position % block_size
    return [
        ("Off by one block: you used table[position // block_size + 1]. Logical blocks are numbered from 0, so "
         "positions 0 .. block_size-1 live in table[0].", lambda: table[logical + 1] * block_size + offset),
        ("Off by one block: you used table[position // block_size - 1]. Logical blocks are numbered from 0, so "
         "positions 0 .. block_size-1 live in table[0].",
         lambda: table[logical - 1] * block_size + offset),  # table[-1] for logical block 0, as Python indexes
        ("That is the logical position: the block table says WHERE each logical block physically lives — go "
         "through table[position // block_size].", lambda: position),
        ("// and % are swapped: the logical block is position // block_size (which block) and the offset "
         "position % block_size (where inside it).",
         lambda: table[offset] * block_size + logical if offset < len(table) else None),
        ("The physical block is a block NUMBER: multiply it by block_size to get its first row, then add the "
         "offset position % block_size.", lambda: table[logical] + offset),
        ("Add the offset inside the block, position % block_size: table[...] * block_size is only the block's "
         "first row.", lambda: table[logical] * block_size),
        ("Add the offset inside the block (position % block_size), not the logical block number.",
         lambda: table[logical] * block_size + logical),
        ("The offset inside the block is position % block_size, not the position itself.",
         lambda: table[logical] * block_size + position),
        ("That is the physical BLOCK, table[position // block_size]: the slot is that block times block_size "
         "plus the offset position % block_size.", lambda: table[logical]),
    ]


def _mistake_value(table: list[int], position: int, block_size: int, index: int):
    """What mistake number ``index`` of :func:`_slot_mistakes` answers at ``position`` (None if it cannot)."""
    try:
        return _slot_mistakes(table, position, block_size)[index][1]()
    except IndexError:
        return None


def _which_slot_mistake(physical_slot: Callable, table: list[int], block_size: int, length: int, position: int,
                        got) -> str | None:
    """The mistake that explains the student's slots at every position of this table that it answers (one
    wrong position alone can fit several mistakes)."""
    observed = {position: got}
    for other in range(length):
        if other not in observed:
            try:
                observed[other] = physical_slot(list(table), other, block_size)
            except Exception:  # noqa: BLE001 - a position the student's code cannot answer tells nothing
                continue
    for index, (hint, _) in enumerate(_slot_mistakes(table, position, block_size)):
        here = _mistake_value(table, position, block_size, index)
        if here is None or here == slot_of(table, position, block_size):
            continue  # this mistake makes no difference at the failing position
        if here != got:
            continue
        values = {p: _mistake_value(table, p, block_size, index) for p in observed}
        if all(value is None or value == observed[p] for p, value in values.items()):  # None: cannot be formed
            return hint
    return None


@exercise_check("logical -> physical slot")
def check_physical_slot(physical_slot: Callable[[list[int], int, int], int]) -> None:
    """``physical_slot(block_table, position, block_size)``: the pool row (an int) holding token ``position``;
    ``block_table`` stays as it was."""
    for table, block_size, length in _tables():
        for position in range(length):
            expected = slot_of(table, position, block_size)
            what = f"logical -> physical slot: table={table}, block_size={block_size}, position={position}"
            given = list(table)
            try:
                got = physical_slot(given, position, block_size)
            except IndexError:
                raise ExerciseError(f"{what}: your function indexed past the end of the table. "
                                    "Logical block i is table[i] with i = position // block_size, counted from 0."
                                    ) from None
            except TypeError as error:
                raise ExerciseError(f"the check stopped with TypeError: {error} — in {what}. A list index must be an int: "
                                    "position // block_size (integer division), not position / block_size."
                                    ) from error
            except ValueError as error:
                raise ExerciseError(f"the check stopped with ValueError: {error} — in {what}. The table is indexed BY the "
                                    "logical block number (table[i] is where logical block i lives): no search "
                                    "(table.index) is needed.") from error
            if given != table:
                raise ExerciseError(f"{what}: your function changed the block table (now {given}); it only reads it.")
            if not isinstance(got, bool) and isinstance(got, int) and got == expected:
                continue
            if isinstance(got, float) and got == expected:
                raise ExerciseError(f"{what}: got {got!r}, a float: a slot is a row index, an int — use // "
                                    "(integer division), not / .")
            hint = _which_slot_mistake(physical_slot, table, block_size, length, position, got)
            got_int = expect_int(got, what, _SLOT_HINT)
            if got_int == expected:
                continue  # an int-like answer (a 0-dim integer tensor, a numpy int)
            raise ExerciseError(f"{what}: expected {expected}, got {got}. {hint or _SLOT_HINT}")


@exercise_check("blocks needed")
def check_blocks_needed(count_blocks: Callable[[int, int], int]) -> None:
    """``count_blocks(n_tokens, block_size)``: the number of blocks (an int) that hold ``n_tokens`` tokens."""
    for block_size in (4, 16, 3, 1):
        for n_tokens in (1, 0, block_size - 1, block_size, block_size + 1, 2 * block_size + 1, 5 * block_size,
                         5 * block_size + 3, 5 * block_size + block_size // 2 + 1):
            if n_tokens < 0:
                continue
            expected = blocks_needed(n_tokens, block_size)
            what = f"blocks needed: {n_tokens} tokens in blocks of {block_size}"
            got = call(count_blocks, n_tokens, block_size, what=what)
            if isinstance(got, float) or (hasattr(got, "dtype") and not isinstance(got, int)
                                          and "float" in str(getattr(got, "dtype", ""))):
                if got == expected:
                    raise ExerciseError(f"{what}: got {got!r}, a float: a number of blocks is an int (math.ceil gives "
                                        "one; int(...) converts).")
                if got == n_tokens / block_size:
                    raise ExerciseError(f"{what}: expected {expected}, got {got!r}: that is the exact quotient — a "
                                        "partly filled last block still takes a whole block (round UP to an int).")
            if not isinstance(got, bool) and got == expected:
                expect_int(got, what)
                continue
            if n_tokens == 0 and got == 1:
                detail = ("0 tokens need 0 blocks: round UP (n // block_size + 1 over-counts whenever the tokens fill "
                          "whole blocks).")
            elif got == n_tokens // block_size:
                detail = "That rounds DOWN: a partly filled last block still takes a whole block (round UP)."
            elif got == n_tokens // block_size + 1:
                detail = ("n // block_size + 1 counts one block too many when n is a multiple of block_size: round "
                          "UP instead, and 0 tokens need 0 blocks.")
            elif got == round(n_tokens / block_size):
                detail = "round() goes to the NEAREST whole number: a partly filled block still counts, so round UP."
            elif got == n_tokens:
                detail = "That is the number of tokens: divide by block_size, rounding UP."
            else:
                detail = "A partly filled last block still takes a whole block (round UP), and 0 tokens need 0 blocks."
            raise ExerciseError(f"{what}: expected {expected}, got {got}. {detail}")
