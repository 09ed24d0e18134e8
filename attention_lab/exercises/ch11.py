"""Chapter 11 — address translation in a paged KV cache, and how many blocks a sequence needs."""

from __future__ import annotations

import random
from typing import Callable

from attention_lab.caches.paged import blocks_needed, slot_of
from attention_lab.exercises.core import ExerciseError, exercise_check


def _tables(seed: int = 11):
    """Random block tables (distinct physical blocks in a random order), their block size, and a length."""
    rng = random.Random(seed)
    for block_size in (4, 1, 3, 16):
        for n_blocks in (5, 2, 1):
            table = rng.sample(range(40), n_blocks)
            yield table, block_size, n_blocks * block_size


@exercise_check("logical -> physical slot")
def check_physical_slot(physical_slot: Callable[[list[int], int, int], int]) -> None:
    """``physical_slot(block_table, position, block_size)``: the pool row holding token ``position``."""
    for table, block_size, length in _tables():
        for position in range(length):
            expected = slot_of(table, position, block_size)
            try:
                got = physical_slot(list(table), position, block_size)
            except IndexError:
                raise ExerciseError(f"logical -> physical slot: table={table}, block_size={block_size}, "
                                    f"position={position}: your function indexed past the end of the table. "
                                    "Logical block i is table[i] with i = position // block_size, counted from 0."
                                    ) from None
            if got == expected:
                continue
            logical = position // block_size
            hint = ("Split the position into a logical block (position // block_size) and an offset "
                    "(position % block_size); look the logical block up in the table; the slot is "
                    "physical_block * block_size + offset.")
            if logical + 1 < len(table) and got == table[logical + 1] * block_size + position % block_size:
                hint = ("Off by one block: you used table[position // block_size + 1]. Logical blocks are "
                        "numbered from 0, so positions 0 .. block_size-1 live in table[0].")
            elif got == position:
                hint = ("That is the logical position: the block table says WHERE each logical block "
                        "physically lives — go through table[position // block_size].")
            raise ExerciseError(f"logical -> physical slot: table={table}, block_size={block_size}, "
                                f"position={position}: expected {expected}, got {got}. {hint}")


@exercise_check("blocks needed")
def check_blocks_needed(count_blocks: Callable[[int, int], int]) -> None:
    """``count_blocks(n_tokens, block_size)``: the number of blocks that hold ``n_tokens`` tokens."""
    for block_size in (1, 4, 16):
        for n_tokens in (0, 1, block_size - 1, block_size, block_size + 1, 5 * block_size, 5 * block_size + 3):
            expected, got = blocks_needed(n_tokens, block_size), count_blocks(n_tokens, block_size)
            if got != expected:
                raise ExerciseError(
                    f"blocks needed: {n_tokens} tokens in blocks of {block_size}: expected {expected}, got {got}. "
                    "A partly filled last block still takes a whole block (round UP), and 0 tokens need 0 blocks.")
