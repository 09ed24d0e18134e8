"""The paged KV cache (chapter 11): a pool of fixed-size blocks, a free-list allocator with reference
counts, one block table per sequence, copy-on-write forks, and a reference paged attention.

A contiguous cache reserves ``max_len`` slots per sequence up front. A paged cache hands out
``block_size``-token blocks as a sequence grows, wherever they happen to be free, and remembers
where they went in the sequence's *block table* (logical block ``i`` -> physical block
``table[i]``), the way an operating system maps virtual pages to physical frames. Token
``position`` of a sequence lives at

    physical block  = table[position // block_size]
    offset in block = position %  block_size
    slot            = physical block · block_size + offset      (the row in the flattened pool)

Layouts (one pool per layer, stacked):
    keys, values    ``(n_layers, num_blocks, block_size, n_kv_heads, head_dim)``
    block table     list of physical block ids; as a batch tensor ``(B, max_blocks)`` int32
    context lengths ``(B,)`` int32, tokens stored per sequence
"""

from __future__ import annotations

import torch

from attention_lab.validation import (check_float_dtype, check_int_dtype, check_int_range, check_positive_int,
                                     check_rank, check_values_in_range)
from attention_lab.attention import scaled_dot_product_attention


class OutOfBlocksError(RuntimeError):
    """The pool has no free block left. A scheduler catches it to preempt a sequence; nothing was changed."""


def blocks_needed(n_tokens: int, block_size: int) -> int:
    """Blocks that hold ``n_tokens`` tokens: ``ceil(n_tokens / block_size)`` (0 for 0 tokens)."""
    return -(-n_tokens // block_size)


def slot_of(block_table: list[int], position: int, block_size: int) -> int:
    """Logical -> physical address translation: the pool row holding token ``position`` of a sequence."""
    if not 0 <= position < len(block_table) * block_size:
        raise ValueError(f"position must lie in [0, {len(block_table) * block_size}) for a table of "
                         f"{len(block_table)} blocks of {block_size}, got {position}")
    return block_table[position // block_size] * block_size + position % block_size


class BlockAllocator:
    """A free list of physical block ids with a reference count per block.

    ``allocate`` pops a free block (ref count 1), ``share`` adds a reference (a forked sequence
    pointing at the same block), ``release`` drops one and returns the block to the free list
    when the count reaches zero.
    """

    def __init__(self, num_blocks: int) -> None:
        check_positive_int("num_blocks", num_blocks)
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: block 0 is handed out first

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def allocate(self) -> int:
        """Take a free block (its ref count becomes 1); :class:`OutOfBlocksError` if there is none."""
        if not self._free:
            raise OutOfBlocksError(f"out of KV blocks: all {self.num_blocks} blocks of the pool are in use "
                                   "(free a sequence, preempt one, or make the pool larger)")
        block = self._free.pop()
        self.ref_counts[block] = 1
        return block

    def share(self, block: int) -> None:
        """One more sequence points at ``block`` (which must be in use)."""
        self._check_used(block)
        self.ref_counts[block] += 1

    def release(self, block: int) -> None:
        """One sequence stops pointing at ``block``; the last one returns it to the free list."""
        self._check_used(block)
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self._free.append(block)

    def _check_used(self, block: int) -> None:
        if not 0 <= block < self.num_blocks or self.ref_counts[block] == 0:
            raise ValueError(f"block {block} is not in use (pool of {self.num_blocks} blocks)")

    def check_invariants(self) -> None:
        """Every block is either free with ref count 0 or in use with ref count > 0, never both."""
        free = set(self._free)
        if len(free) != len(self._free):
            raise AssertionError("a block appears twice in the free list")
        for block, count in enumerate(self.ref_counts):
            if count < 0 or (block in free) != (count == 0):
                raise AssertionError(f"block {block}: ref count {count}, {'free' if block in free else 'used'}")


class PagedKVCache:
    """Keys and values of every layer for many sequences, in one pool of ``block_size``-token blocks.

    Sequences are integer ids. :meth:`append` reserves slots for new tokens (allocating blocks and
    copying a shared last block on write); :meth:`write` stores one layer's keys/values into those
    slots; :meth:`fork` makes a sequence that shares all of its parent's blocks; :meth:`free`
    gives a sequence's blocks back. All layers share the block tables: a physical block id names
    the same slots in every layer's pool.
    """

    def __init__(self, n_layers: int, num_blocks: int, block_size: int, n_kv_heads: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 value_dim: int | None = None) -> None:
        """``value_dim``: width of each stored value (default ``head_dim``). ``0`` stores keys only — MLA's
        pool, whose one row per token ``[c^KV ; k^R]`` is the key and whose first ``d_c`` entries are the value
        (the serving engine reads them as a view of the keys, so nothing is stored twice)."""
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer number of tokens per block, got {block_size!r}")
        for name, value in (("n_layers", n_layers), ("num_blocks", num_blocks),
                            ("n_kv_heads", n_kv_heads), ("head_dim", head_dim)):
            check_positive_int(name, value)
        value_dim = head_dim if value_dim is None else check_positive_int("value_dim", value_dim, minimum=0)
        shape = (n_layers, num_blocks, block_size, n_kv_heads, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)  # (L, num_blocks, block_size, Hkv, D)
        self.values = torch.zeros(shape[:-1] + (value_dim,), device=device, dtype=dtype)  # (L, …, Hkv, Dv)
        self.block_size = block_size
        self.allocator = BlockAllocator(num_blocks)
        self.block_tables: dict[int, list[int]] = {}  # sequence id -> physical block ids
        self.lengths: dict[int, int] = {}  # sequence id -> tokens stored
        self.copies = 0  # blocks copied on write so far
        self._freed: set[int] = set()
        self._next_id = 0

    # ------------------------------------------------------------------ sequences
    def add_sequence(self) -> int:
        """A new, empty sequence; returns its id."""
        seq = self._next_id
        self._next_id += 1
        self.block_tables[seq], self.lengths[seq] = [], 0
        return seq

    def fork(self, parent: int) -> int:
        """A new sequence sharing every block of ``parent`` (no copy until one of them writes)."""
        table = self._table(parent)
        child = self.add_sequence()
        for block in table:
            self.allocator.share(block)
        self.block_tables[child], self.lengths[child] = list(table), self.lengths[parent]
        return child

    def free(self, seq: int) -> None:
        """Give back ``seq``'s blocks (a shared block stays until its last user frees it)."""
        for block in self._table(seq):
            self.allocator.release(block)
        del self.block_tables[seq], self.lengths[seq]
        self._freed.add(seq)

    def _table(self, seq: int) -> list[int]:
        if seq in self._freed:
            raise ValueError(f"sequence {seq} was freed; its blocks may already belong to another sequence")
        if seq not in self.block_tables:
            raise ValueError(f"unknown sequence id {seq}; live sequences: {sorted(self.block_tables)}")
        return self.block_tables[seq]

    # ------------------------------------------------------------------ writing
    def append(self, seq: int, n_tokens: int = 1) -> torch.Tensor:
        """Reserve slots for ``n_tokens`` new tokens of ``seq``; returns their pool rows ``(n_tokens,)`` int64.

        Allocates blocks as needed. If the partly filled last block is shared with another
        sequence (after :meth:`fork`), it is copied first (copy-on-write) so the write does not
        change what the other sequence sees. Raises :class:`OutOfBlocksError` without changing
        anything when the pool cannot hold the new tokens.
        """
        table = self._table(seq)
        check_positive_int("n_tokens", n_tokens, minimum=0)
        length = self.lengths[seq]
        copy_last = length % self.block_size != 0 and n_tokens > 0 and self.allocator.ref_counts[table[-1]] > 1
        new_blocks = blocks_needed(length + n_tokens, self.block_size) - len(table)
        if new_blocks + copy_last > self.allocator.num_free:
            raise OutOfBlocksError(f"out of KV blocks: sequence {seq} needs {new_blocks + copy_last} more "
                                   f"block(s) of {self.block_size} tokens, {self.allocator.num_free} free "
                                   f"of {self.allocator.num_blocks}")
        if copy_last:
            shared = table[-1]
            private = self.allocator.allocate()
            self.keys[:, private] = self.keys[:, shared]  # every layer's copy of that one block
            self.values[:, private] = self.values[:, shared]
            self.allocator.release(shared)
            table[-1] = private
            self.copies += 1
        for _ in range(new_blocks):
            table.append(self.allocator.allocate())
        positions = torch.arange(length, length + n_tokens)  # (n_tokens,)
        physical = torch.tensor(table, dtype=torch.long)[positions // self.block_size]  # (n_tokens,)
        self.lengths[seq] = length + n_tokens
        return physical * self.block_size + positions % self.block_size  # (n_tokens,) pool rows

    def _check_layer(self, layer: int) -> int:
        return check_int_range("layer", layer, 0, self.keys.shape[0])

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store keys ``(n_tokens, Hkv, D)`` and values ``(n_tokens, Hkv, Dv)`` of ``layer`` at pool rows ``slots`` ``(n_tokens,)``.

        ``layer`` lies in ``[0, n_layers)``; ``slots`` is an integer tensor of rows in
        ``[0, num_blocks · block_size)`` (as :meth:`append` returns them); k and v are floating point.
        """
        self._check_layer(layer)
        check_rank("slots", slots, 1, "(n_tokens,)")
        check_int_dtype("slots", slots)
        n_kv_heads, head_dim = self.keys.shape[-2:]
        value_dim = self.values.shape[-1]
        for name, t, width in (("k", k, head_dim), ("v", v, value_dim)):
            expected = (slots.shape[0], n_kv_heads, width)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected:
                dims = "head_dim" if name == "k" else "value_dim"
                raise ValueError(f"{name} must have shape (n_tokens, n_kv_heads, {dims}) = {expected}, "
                                 f"got {tuple(getattr(t, 'shape', ())) or type(t).__name__}")
            check_float_dtype(name, t)
        check_values_in_range("slots (pool rows)", slots, 0, self.allocator.num_blocks * self.block_size)
        slots = slots.to(self.keys.device)
        self.keys[layer].view(-1, n_kv_heads, head_dim)[slots] = k.to(self.keys.dtype)
        if value_dim:  # a keys-only pool (MLA's) stores no values
            self.values[layer].view(-1, n_kv_heads, value_dim)[slots] = v.to(self.values.dtype)

    # ------------------------------------------------------------------ reading
    def gather(self, layer: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``seq``'s keys ``(Hkv, length, D)`` and values ``(Hkv, length, Dv)`` of ``layer`` in order (copies)."""
        self._check_layer(layer)
        table = torch.tensor(self._table(seq), dtype=torch.long, device=self.keys.device)
        length = self.lengths[seq]
        k = self.keys[layer][table].flatten(0, 1)[:length]  # (length, Hkv, D)
        v = self.values[layer][table].flatten(0, 1)[:length]  # (length, Hkv, Dv)
        return k.transpose(0, 1), v.transpose(0, 1)  # (Hkv, length, D), (Hkv, length, Dv)

    def batch_tables(self, seqs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Block tables ``(B, max_blocks)`` int32 (padded with 0) and context lengths ``(B,)`` int32."""
        tables = [self._table(s) for s in seqs]
        width = max([len(t) for t in tables] + [1])
        padded = torch.zeros(len(seqs), width, dtype=torch.int32)
        for row, table in enumerate(tables):
            padded[row, :len(table)] = torch.tensor(table, dtype=torch.int32)
        lengths = torch.tensor([self.lengths[s] for s in seqs], dtype=torch.int32)
        device = self.keys.device
        return padded.to(device), lengths.to(device)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> tuple:
        """A copy of the bookkeeping (allocator, block tables, lengths, counters) for :meth:`rollback`.

        Block contents are not copied: every block written after the checkpoint was free at the
        checkpoint (writes go to slots :meth:`append` reserved, a shared block is copied before it is
        written), so restoring the bookkeeping restores everything a sequence can read. Checkpoints
        compare equal when the bookkeeping is the same.
        """
        return (list(self.allocator.ref_counts), list(self.allocator._free),
                {seq: list(table) for seq, table in self.block_tables.items()}, dict(self.lengths),
                self.copies, frozenset(self._freed), self._next_id)

    def rollback(self, checkpoint: tuple) -> None:
        """Return to a :meth:`checkpoint`: sequences made since are gone, their blocks free again."""
        ref_counts, free, tables, lengths, copies, freed, next_id = checkpoint
        self.allocator.ref_counts, self.allocator._free = list(ref_counts), list(free)
        self.block_tables = {seq: list(table) for seq, table in tables.items()}
        self.lengths, self.copies, self._freed, self._next_id = dict(lengths), copies, set(freed), next_id

    # ------------------------------------------------------------------ accounting
    @property
    def block_bytes(self) -> int:
        """Bytes of one block across all layers, keys and values."""
        per_layer = (self.keys[0, 0].numel() + self.values[0, 0].numel()) * self.keys.element_size()
        return self.keys.shape[0] * per_layer

    def tokens_stored(self) -> int:
        """Filled slots in the pool, a shared block counted once."""
        filled: dict[int, int] = {}
        for seq, table in self.block_tables.items():
            length = self.lengths[seq]
            for i, block in enumerate(table):
                filled[block] = max(filled.get(block, 0), min(self.block_size, length - i * self.block_size))
        return sum(filled.values())

    def utilisation(self) -> float:
        """Filled slots / slots in allocated blocks (1.0 when nothing is allocated)."""
        used = self.allocator.num_used * self.block_size
        return self.tokens_stored() / used if used else 1.0

    def pool_map(self) -> torch.Tensor:
        """Who holds each slot of the pool: ``(num_blocks, block_size)`` int64 with the sequence id of a filled
        slot (the lowest id when a block is shared), -1 for an empty slot of an allocated block, -2 for a free block."""
        owners = torch.full((self.allocator.num_blocks, self.block_size), -2, dtype=torch.long)
        for seq in sorted(self.block_tables, reverse=True):  # lower ids written last: they win on shared blocks
            length = self.lengths[seq]
            for i, block in enumerate(self.block_tables[seq]):
                filled = min(self.block_size, length - i * self.block_size)
                owners[block, filled:] = torch.where(owners[block, filled:] == -2, -1, owners[block, filled:])
                owners[block, :filled] = seq
        return owners

    def check_invariants(self) -> None:
        """Allocator invariants, each block's ref count equals the tables pointing at it, tables fit lengths."""
        self.allocator.check_invariants()
        counts = [0] * self.allocator.num_blocks
        for seq, table in self.block_tables.items():
            if len(table) != blocks_needed(self.lengths[seq], self.block_size):
                raise AssertionError(f"sequence {seq}: {len(table)} blocks for {self.lengths[seq]} tokens")
            for block in table:
                counts[block] += 1
        if counts != self.allocator.ref_counts:
            raise AssertionError("reference counts disagree with the block tables")


# ---------------------------------------------------------------------- reference paged attention
def check_paged_inputs(q: torch.Tensor, key_blocks: torch.Tensor, value_blocks: torch.Tensor,
                       block_tables: torch.Tensor, context_lens: torch.Tensor, check_values: bool = True,
                       value_dim_may_differ: bool = False) -> None:
    """Validate the decode inputs of the reference and the Triton kernel (shapes: :func:`paged_attention_reference`).

    Shapes, dtypes (q and the pools one float dtype; block tables and lengths integer, never bool or float),
    at least one sequence, head and feature. With ``check_values`` also the values: every ``context_lens``
    entry in ``[0, max_blocks · block_size]``, and every block-table entry that a sequence uses (the first
    ``ceil(context_lens[b] / block_size)`` of row ``b``) in ``[0, num_blocks)``; the padding after them is
    never read and may hold anything. ``check_values=False`` skips these two value checks, which read the
    tensors back from the GPU (a sync that a CUDA graph cannot capture): the caller then vouches for them.
    ``value_dim_may_differ`` (the reference): values may be ``(num_blocks, block_size, Hkv, Dv)`` with their own
    ``Dv >= 1`` (MLA's latent values); the Triton kernel needs ``Dv == D``.
    """
    check_rank("q", q, 4, "(batch, n_heads, 1, head_dim)")
    check_rank("key_blocks", key_blocks, 4, "(num_blocks, block_size, n_kv_heads, head_dim)")
    check_rank("value_blocks", value_blocks, 4, "(num_blocks, block_size, n_kv_heads, head_dim)")
    check_rank("block_tables", block_tables, 2, "(batch, max_blocks)")
    check_rank("context_lens", context_lens, 1, "(batch,)")
    check_float_dtype("q", q)
    check_int_dtype("block_tables", block_tables)
    check_int_dtype("context_lens", context_lens)
    batch, n_heads, n_queries, head_dim = q.shape
    if n_queries != 1:
        raise ValueError(f"q must hold one query token per sequence, shape (B, H, 1, D), got {tuple(q.shape)}")
    if batch < 1 or n_heads < 1 or head_dim < 1:
        raise ValueError(f"q must have shape (B, H, 1, D) with B, H, D >= 1, got {tuple(q.shape)}")
    if value_dim_may_differ:
        if tuple(value_blocks.shape[:3]) != tuple(key_blocks.shape[:3]) or value_blocks.shape[3] < 1:
            raise ValueError(f"value_blocks must have shape (num_blocks, block_size, n_kv_heads, Dv >= 1) = "
                             f"{tuple(key_blocks.shape[:3])} + (Dv,), got {tuple(value_blocks.shape)}")
    elif tuple(value_blocks.shape) != tuple(key_blocks.shape):
        raise ValueError(f"value_blocks must have the shape of key_blocks {tuple(key_blocks.shape)}, "
                         f"got {tuple(value_blocks.shape)}")
    if key_blocks.shape[-1] != head_dim:
        raise ValueError(f"key_blocks must have head_dim={head_dim} like q: (num_blocks, block_size, "
                         f"n_kv_heads, {head_dim}), got {tuple(key_blocks.shape)}")
    num_blocks, block_size, n_kv_heads = key_blocks.shape[:3]
    if num_blocks < 1 or block_size < 1 or n_kv_heads < 1:
        raise ValueError(f"key_blocks must have shape (num_blocks, block_size, n_kv_heads, head_dim) with every "
                         f"size >= 1, got {tuple(key_blocks.shape)}")
    if n_heads % n_kv_heads != 0:
        raise ValueError(f"n_kv_heads={n_kv_heads} (key_blocks.shape[2]) must divide n_heads={n_heads}")
    if key_blocks.dtype != q.dtype or value_blocks.dtype != q.dtype:
        raise ValueError(f"q, key_blocks and value_blocks must share one dtype, got {q.dtype}, "
                         f"{key_blocks.dtype}, {value_blocks.dtype}")
    if block_tables.shape[0] != batch or context_lens.shape[0] != batch:
        raise ValueError(f"block_tables (B, max_blocks) and context_lens (B,) need B={batch}, got "
                         f"{tuple(block_tables.shape)} and {tuple(context_lens.shape)}")
    devices = {t.device for t in (q, key_blocks, value_blocks, block_tables, context_lens)}
    if len(devices) > 1:
        raise ValueError(f"q, key_blocks, value_blocks, block_tables and context_lens must be on one device, "
                         f"got {sorted(str(d) for d in devices)}")
    if not check_values:
        return
    capacity = block_tables.shape[1] * block_size
    lengths = context_lens.long()
    if int(lengths.max()) > capacity or int(lengths.min()) < 0:
        raise ValueError(f"context_lens must lie in [0, max_blocks · block_size = {capacity}], "
                         f"got {context_lens.tolist()}")
    used = torch.arange(block_tables.shape[1], device=block_tables.device)[None, :] < \
        blocks_needed(lengths, block_size)[:, None]  # (B, max_blocks): the entries the sequences read
    entries = block_tables.long()
    bad = used & ((entries < 0) | (entries >= num_blocks))  # (B, max_blocks)
    if bool(bad.any()):
        rows, cols = bad.nonzero(as_tuple=True)
        where = ", ".join(f"[{r}, {c}] = {int(entries[r, c])}" for r, c in zip(rows[:4].tolist(), cols[:4].tolist()))
        raise ValueError(f"block_tables entries must be block ids in [0, num_blocks={num_blocks}) in each "
                         f"sequence's first ceil(context_lens / block_size) entries, got {where}"
                         f"{' …' if rows.numel() > 4 else ''}")


def gather_kv(key_blocks: torch.Tensor, value_blocks: torch.Tensor, block_tables: torch.Tensor,
              context_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Copy every sequence's keys and values out of the pool, padded to the longest.

    key_blocks, value_blocks ``(num_blocks, block_size, Hkv, D)``; block_tables ``(B, max_blocks)``;
    context_lens ``(B,)``. Returns k, v ``(B, Hkv, N_max, D)`` and ``valid`` ``(B, N_max)`` bool
    (True where a position holds a real token).
    """
    block_size = key_blocks.shape[1]
    n_max = int(context_lens.max()) if context_lens.numel() else 0
    n_blocks = blocks_needed(n_max, block_size)
    tables = block_tables[:, :n_blocks].long()  # (B, n_blocks)
    used = torch.arange(n_blocks, device=tables.device)[None, :] < blocks_needed(context_lens.long(), block_size)[:, None]
    tables = tables.masked_fill(~used, 0)  # padding past a sequence's blocks may hold anything: read block 0 there
    k = key_blocks[tables].flatten(1, 2)[:, :n_max]  # (B, n_blocks·block_size, Hkv, D) -> (B, N_max, Hkv, D)
    v = value_blocks[tables].flatten(1, 2)[:, :n_max]  # (B, N_max, Hkv, D)
    positions = torch.arange(n_max, device=key_blocks.device)  # (N_max,)
    valid = positions[None, :] < context_lens.to(key_blocks.device).long()[:, None]  # (B, N_max)
    return k.transpose(1, 2), v.transpose(1, 2), valid  # (B, Hkv, N_max, D) twice, (B, N_max)


def paged_attention_reference(q: torch.Tensor, key_blocks: torch.Tensor, value_blocks: torch.Tensor,
                              block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float | None = None,
                              attend=scaled_dot_product_attention) -> torch.Tensor:
    """Decode attention through block tables: gather each sequence's keys/values, then ordinary attention.

    Args:
        q: the newest token's queries ``(B, H, 1, D)``.
        key_blocks, value_blocks: one layer's pool ``(num_blocks, block_size, Hkv, D)``; ``Hkv`` divides ``H``.
            The values may have their own width ``Dv`` (MLA's latent values, ``(…, Hkv, d_c)``).
        block_tables: ``(B, max_blocks)`` integer, physical block of each logical block (padding ignored).
        context_lens: ``(B,)`` tokens each sequence may attend to (the query is the last of them).
        attend: the attention function used after the gather (the reference by default).

    Returns:
        ``(B, H, 1, Dv)``; a sequence of length 0 gets zeros.
    """
    check_paged_inputs(q, key_blocks, value_blocks, block_tables, context_lens, value_dim_may_differ=True)
    k, v, valid = gather_kv(key_blocks, value_blocks, block_tables, context_lens)  # (B, Hkv, N_max, D)
    mask = None if bool(valid.all()) else valid[:, None, None, :]  # (B, 1, 1, N_max): padding masked out
    if k.shape[2] == 0:
        return q.new_zeros(q.shape[:3] + (v.shape[-1],))
    return attend(q, k, v, mask=mask, scale=scale)  # (B, H, 1, D)
