"""Continuous batching on the paged KV cache (chapter 11): TinyGPT serving many requests at once.

Every step of :class:`ServingEngine`:

1. **Admit** waiting requests in arrival order while the pool has free blocks for their prompts
   (and ``max_batch`` allows). A new request is *prefilled*: its prompt runs through TinyGPT once,
   its keys/values land in freshly allocated blocks, and its first token is sampled. With
   ``n_samples > 1`` the prompt is prefilled once and the sequence is *forked*: the samples
   share the prompt's blocks until each writes its own tokens (copy-on-write).
2. **Decode** one token for every running sequence admitted earlier: one batched forward pass
   with one query per sequence, each attending to its own context through its block table
   (sequences of different lengths in one batch). When the pool runs out of blocks, the newest
   request is *preempted*: its blocks are freed and it goes back to the head of the queue, to be
   recomputed later from its prompt plus the tokens it already produced.
3. **Retire** sequences that have all their tokens, freeing their blocks for the next step.

Requests finish and join at any step, so the batch never waits for its slowest member. The
outputs equal generating each request alone with the contiguous cache
(:func:`attention_lab.generate.generate` with the same seed), which the tests check token by token, for
MHA, GQA and MQA models with or without RoPE (the decode step rotates each sequence's query and key by
that sequence's own position), and for MLA models (``attention='mla'``), whose pool holds one latent row
``[c^KV ; k^R]`` per token and layer — keys only, the values being the rows' first ``d_c`` entries — and
whose decode step attends over those rows through the block tables (the absorbed path of chapter 12).

Every request is checked before anything is allocated, and an error raised while serving (a kernel that
cannot run, an interrupt) gives back every block taken since the run began: after an error the engine,
its pool and its allocator are exactly as they were.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from attention_lab.validation import check_int_range, check_positive_int, is_integer
from attention_lab.generate import check_sampling, sample_next
from attention_lab.model import ModelCache, TinyGPT
from attention_lab.caches.paged import OutOfBlocksError, PagedKVCache, blocks_needed, paged_attention_reference
from attention_lab.mla import LatentCache, MultiHeadLatentAttention, absorb_query, expand_values


@dataclass
class Request:
    """One prompt to continue by ``max_new_tokens`` tokens, ``n_samples`` times.

    Sample ``i`` draws from ``torch.Generator().manual_seed(seed + i)``, so it equals
    ``generate(model, prompt, max_new_tokens, temperature, top_k, generator=that generator)``.
    """

    prompt: list[int]
    max_new_tokens: int
    n_samples: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None
    seed: int = 0
    arrival_step: int = 0  # the step at which the request reaches the server


@dataclass
class StepStats:
    """What the pool held after one step's decode (before finished sequences were freed)."""

    step: int
    running: int  # sequences in the cache
    waiting: int  # requests queued (arrived or not)
    blocks_used: int
    tokens_stored: int  # filled slots, a shared block counted once
    block_size: int
    preemptions: int  # requests preempted so far

    @property
    def utilisation(self) -> float:
        """Filled slots / slots in allocated blocks (1.0 for an empty pool)."""
        return self.tokens_stored / (self.blocks_used * self.block_size) if self.blocks_used else 1.0


@dataclass(eq=False)  # identity, not field equality: two identical requests are still two
class _Sequence:
    request: int  # index of its request
    sample: int  # which of the request's samples
    tokens: list[int]  # prompt + every token sampled so far (the last one is not cached yet)
    remaining: int  # tokens still to sample
    generator: torch.Generator | None
    seq_id: int = -1  # id in the paged cache while resident


@dataclass(eq=False)
class _Group:
    """Sequences admitted and preempted together: the samples of one request."""

    sequences: list[_Sequence]
    arrival: int
    fresh: bool = True  # nothing sampled yet: all samples share the prompt
    order: int = 0  # admission counter (the newest is preempted first)


@dataclass
class ServingResult:
    outputs: list[list[list[int]]]  # outputs[request][sample]: prompt + generated tokens
    stats: list[StepStats] = field(default_factory=list)
    copies: int = 0  # blocks copied on write
    peak_blocks: int = 0


class _PrefillLayer:
    """One layer's view of one paged sequence, with the ``update(k, v)`` interface TinyGPT's attention calls."""

    def __init__(self, cache: PagedKVCache, layer: int, seq_id: int, slots: torch.Tensor, start: int) -> None:
        self.cache, self.layer, self.seq_id, self.slots, self.length = cache, layer, seq_id, slots, start

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v ``(1, Hkv, T, D)`` in the reserved slots; return all of the sequence's ``(1, Hkv, length, D)``."""
        self.cache.write(self.layer, self.slots, k[0].transpose(0, 1), v[0].transpose(0, 1))  # (T, Hkv, D)
        keys, values = self.cache.gather(self.layer, self.seq_id)  # (Hkv, length, D)
        return keys.unsqueeze(0), values.unsqueeze(0)


def _write_latent_rows(cache: PagedKVCache, layer: int, slots: torch.Tensor, latent: torch.Tensor,
                       rope_key: torch.Tensor) -> None:
    """Store MLA's latent rows ``[c^KV ; k^R]`` of T tokens in the pool's keys at ``slots`` ``(T,)``.

    ``latent`` ``(1, T, d_c)`` and ``rope_key`` ``(1, T, d_R)``, as :meth:`MultiHeadLatentAttention.compress`
    returns them; each row is stored as one "kv head" of ``d_c + d_R`` entries, with empty values (the values
    are the rows' first ``d_c`` entries, read back from the keys).
    """
    rows = torch.cat([latent, rope_key], dim=-1)[0, :, None]  # (T, 1, d_c + d_R): one "kv head"
    cache.write(layer, slots, rows, rows.new_zeros(rows.shape[0], 1, 0))  # values (T, 1, 0)


class _PrefillLatentLayer(LatentCache):
    """One MLA layer's view of one paged sequence, with the ``update(latent, rope_key)`` interface of
    :class:`~attention_lab.mla.LatentCache` (which MLA's forward calls): rows go to the pool's keys."""

    def __init__(self, cache: PagedKVCache, layer: int, seq_id: int, slots: torch.Tensor, latent_dim: int,
                 rope_dim: int) -> None:  # no buffer of its own: the pool is the storage
        self.cache, self.layer, self.seq_id, self.slots = cache, layer, seq_id, slots
        self.latent_dim, self.rope_dim, self.length = latent_dim, rope_dim, 0

    def update(self, latent: torch.Tensor, rope_key: torch.Tensor) -> torch.Tensor:
        """Store rows ``[latent ; rope_key]`` ``(1, T, d_c + d_R)`` in the reserved slots; return all of the
        sequence's rows ``(1, length, d_c + d_R)``."""
        _write_latent_rows(self.cache, self.layer, self.slots, latent, rope_key)
        keys, _ = self.cache.gather(self.layer, self.seq_id)  # (1, length, d_c + d_R)
        self.length = keys.shape[1]
        return keys


class ServingEngine:
    """Continuous batching with TinyGPT on a :class:`~attention_lab.caches.paged.PagedKVCache` of ``num_blocks`` blocks.

    ``decode``: 'reference' (gather + the reference attention, any device), 'triton' (the paged
    decode kernel; a GPU, or the interpreter on the CPU), or 'auto' (Triton on a GPU).
    ``share_prompt=False`` prefills every sample separately (to measure what sharing saves).
    """

    def __init__(self, model: TinyGPT, num_blocks: int, block_size: int = 16, max_batch: int | None = None,
                 decode: str = "auto", share_prompt: bool = True) -> None:
        check_servable(model)
        if decode not in ("auto", "reference", "triton"):
            raise ValueError(f"decode must be 'auto', 'reference' or 'triton', got {decode!r}")
        if max_batch is not None:
            check_positive_int("max_batch", max_batch)
        if not isinstance(share_prompt, bool):
            raise ValueError(f"share_prompt must be True or False, got {share_prompt!r}")
        param = model.token_embedding.weight
        attn = model.blocks[0].attn
        self.latent = isinstance(attn, MultiHeadLatentAttention)
        if decode == "auto":
            decode = "triton" if param.device.type == "cuda" and not self.latent else "reference"
        if decode == "triton":
            if self.latent:
                raise ValueError("decode='triton' has no paged kernel for MLA's latent rows (the latent kernel of "
                                 "chapter 12 reads a contiguous cache); use decode='reference' for attention='mla'")
            _check_triton_decode(param.device)
        self.model, self.decode, self.max_batch, self.share_prompt = model, decode, max_batch, share_prompt
        if self.latent:  # one row [c^KV ; k^R] per token and layer, as one "kv head"; no separate values
            self.cache = PagedKVCache(len(model.blocks), num_blocks, block_size, 1,
                                      attn.kv_latent_dim + attn.rope_dim, device=param.device, dtype=param.dtype,
                                      value_dim=0)
        else:
            self.cache = PagedKVCache(len(model.blocks), num_blocks, block_size, attn.n_kv_heads, attn.head_dim,
                                      device=param.device, dtype=param.dtype)

    # ------------------------------------------------------------------ the loop
    @torch.no_grad()
    def run(self, requests: list[Request]) -> ServingResult:
        """Serve every request to completion; returns the outputs and one :class:`StepStats` per step.

        Every request is validated first (``ValueError`` naming the request and the field, nothing
        allocated). If serving then fails anyway, every block and sequence taken since the call began is
        given back before the error propagates: the engine is left exactly as it was.
        """
        if not isinstance(requests, (list, tuple)):
            raise ValueError(f"requests must be a list of Request, got {type(requests).__name__}")
        groups = [self._make_group(i, r) for i, r in enumerate(requests)]
        checkpoint, was_training = self.cache.checkpoint(), self.model.training
        self._requests = requests
        try:
            return self._serve(requests, groups)
        except BaseException:
            self.cache.rollback(checkpoint)
            self.model.train(was_training)
            raise
        finally:
            del self._requests

    def _serve(self, requests: list[Request], groups: list[_Group]) -> ServingResult:
        self.model.eval()
        waiting: deque[_Group] = deque(sorted(groups, key=lambda g: g.arrival))  # stable: ties keep order
        running: list[_Group] = []
        result = ServingResult(outputs=[[list(r.prompt) for _ in range(r.n_samples)] for r in requests])
        preemptions, admitted_count, step = 0, 0, 0
        while waiting or running:
            admitted = []
            while waiting and waiting[0].arrival <= step:
                group = waiting[0]
                in_batch = sum(len(g.sequences) for g in running)
                if self.max_batch is not None and in_batch + len(group.sequences) > self.max_batch:
                    break
                if self._blocks_to_admit(group) > self.cache.allocator.num_free:
                    break
                waiting.popleft()
                admitted_count += 1
                group.order = admitted_count
                self._prefill(group)
                running.append(group)
                admitted.append(group)
            if not running and waiting and waiting[0].arrival <= step:
                raise RuntimeError("the next request cannot be admitted into an empty pool")  # guarded in _make_group

            decoding = [s for g in running if g not in admitted for s in g.sequences if s.remaining > 0]
            slots: dict[int, torch.Tensor] = {}
            for seq in decoding:
                while seq.seq_id >= 0:
                    try:
                        slots[id(seq)] = self.cache.append(seq.seq_id, 1)
                        break
                    except OutOfBlocksError:
                        victim = running.pop()  # the newest request gives its blocks back
                        self._preempt(victim, result)
                        if victim.sequences:
                            waiting.appendleft(victim)
                        preemptions += 1
            batch = [s for s in decoding if s.seq_id >= 0]
            if batch:
                self._decode(batch, [slots[id(s)] for s in batch])

            result.stats.append(StepStats(step, len(self.cache.block_tables), len(waiting),
                                          self.cache.allocator.num_used, self.cache.tokens_stored(),
                                          self.cache.block_size, preemptions))
            result.peak_blocks = max(result.peak_blocks, self.cache.allocator.num_used)
            for group in list(running):
                for seq in group.sequences:
                    if seq.remaining == 0 and seq.seq_id >= 0:
                        self._retire(seq, result)
                if all(s.seq_id < 0 for s in group.sequences):
                    running.remove(group)
            step += 1
        result.copies = self.cache.copies
        return result

    # ------------------------------------------------------------------ pieces
    def _make_group(self, index: int, request: Request) -> _Group:
        """Check one request completely (before anything is allocated); return its sequences, nothing sampled."""
        if not isinstance(request, Request):
            raise ValueError(f"request {index} must be a Request, got {type(request).__name__}")
        try:
            check_positive_int("max_new_tokens", request.max_new_tokens)
            check_positive_int("n_samples", request.n_samples)
            check_sampling(request.temperature, request.top_k)
            check_int_range("seed", request.seed, 0, 2 ** 63 - request.n_samples)  # seed + sample seeds a Generator
            check_positive_int("arrival_step", request.arrival_step, minimum=0)
        except ValueError as error:
            raise ValueError(f"request {index}: {error}") from None
        vocab = self.model.config.vocab_size
        if not isinstance(request.prompt, (list, tuple)) or not request.prompt:
            raise ValueError(f"request {index}: prompt must be a non-empty list of token ids, got {request.prompt!r}")
        bad = [t for t in request.prompt if not is_integer(t) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"request {index}: prompt must hold integer token ids in [0, vocab_size={vocab}), "
                             f"got {bad[:8]}")
        total = len(request.prompt) + request.max_new_tokens
        if total > self.model.config.context_length:
            raise ValueError(f"request {index}: prompt ({len(request.prompt)}) + max_new_tokens "
                             f"({request.max_new_tokens}) exceeds context_length={self.model.config.context_length}")
        worst = request.n_samples * blocks_needed(total - 1, self.cache.block_size)
        if worst > self.cache.allocator.num_blocks:
            raise ValueError(f"request {index} may need {worst} blocks but the pool has only "
                             f"{self.cache.allocator.num_blocks}: make num_blocks larger")
        if self.max_batch is not None and request.n_samples > self.max_batch:
            raise ValueError(f"request {index}: n_samples={request.n_samples} exceeds max_batch={self.max_batch}")
        device = self.model.token_embedding.weight.device
        sequences = []
        for sample in range(request.n_samples):
            generator = None
            if request.temperature > 0:
                generator = torch.Generator(device=device).manual_seed(request.seed + sample)
            sequences.append(_Sequence(index, sample, [int(t) for t in request.prompt], request.max_new_tokens,
                                       generator))
        return _Group(sequences, request.arrival_step)

    def _blocks_to_admit(self, group: _Group) -> int:
        size = self.cache.block_size
        if group.fresh:
            copies = 1 if self.share_prompt else len(group.sequences)
            return copies * blocks_needed(len(group.sequences[0].tokens), size)
        return sum(blocks_needed(len(s.tokens), size) for s in group.sequences if s.remaining > 0)

    def _prefill(self, group: _Group) -> None:
        """Run the uncached tokens of the group's sequences through TinyGPT and sample each one's next token."""
        live = [s for s in group.sequences if s.remaining > 0]
        if group.fresh and self.share_prompt:
            first = live[0]
            first.seq_id = self.cache.add_sequence()
            logits = self._prefill_one(first.seq_id, first.tokens)
            for seq in live[1:]:
                seq.seq_id = self.cache.fork(first.seq_id)  # shares every prompt block
            all_logits = [logits] * len(live)
        else:
            all_logits = []
            for seq in live:
                seq.seq_id = self.cache.add_sequence()
                all_logits.append(self._prefill_one(seq.seq_id, seq.tokens))
        group.fresh = False
        for seq, logits in zip(live, all_logits):
            self._sample(seq, logits)

    def _prefill_one(self, seq_id: int, tokens: list[int]) -> torch.Tensor:
        """Feed ``tokens`` to a new paged sequence through TinyGPT's own forward; returns the last logits (1, vocab)."""
        device = self.model.token_embedding.weight.device
        slots = self.cache.append(seq_id, len(tokens))
        if self.latent:
            views = ModelCache([_PrefillLatentLayer(self.cache, i, seq_id, slots, b.attn.kv_latent_dim, b.attn.rope_dim)
                                for i, b in enumerate(self.model.blocks)])
        else:
            views = ModelCache([_PrefillLayer(self.cache, i, seq_id, slots, 0) for i in range(len(self.model.blocks))])
        logits, _ = self.model(torch.tensor([tokens], device=device), cache=views)  # (1, T, vocab)
        return logits[:, -1]  # (1, vocab)

    def _decode(self, batch: list[_Sequence], slots: list[torch.Tensor]) -> None:
        """One token for each sequence of ``batch``: a batched forward with one query per sequence."""
        model = self.model
        device = model.token_embedding.weight.device
        tokens = torch.tensor([[s.tokens[-1]] for s in batch], device=device)  # (B, 1)
        positions = torch.tensor([len(s.tokens) - 1 for s in batch], device=device)  # (B,)
        slot_rows = torch.cat(slots)  # (B,)
        tables, lengths = self.cache.batch_tables([s.seq_id for s in batch])  # (B, max_blocks), (B,)
        x = model.token_embedding(tokens) + model.position_embedding(positions)[:, None]  # (B, 1, d_model)
        for layer, block in enumerate(model.blocks):
            attn = block.attn
            if self.latent:
                context = self._attend_latent(attn, block.ln1(x), positions, layer, slot_rows, tables, lengths)
            else:
                q, k, v = attn.project_qkv(block.ln1(x))  # q (B, H, 1, D); k, v (B, Hkv, 1, D)
                if attn.rotary is not None:  # RoPE: each sequence's token turns by its own position (keys cached turned)
                    q, k = _rotate_each(attn.rotary, q, positions), _rotate_each(attn.rotary, k, positions)
                self.cache.write(layer, slot_rows, k[:, :, 0], v[:, :, 0])  # (B, Hkv, D)
                context = self._attend(q, layer, tables, lengths)  # (B, H, 1, D)
            context = context.transpose(1, 2).reshape(len(batch), 1, attn.n_heads * attn.head_dim)  # (B, 1, H·D)
            x = x + block.dropout(attn.out_proj(context))  # (B, 1, d_model)
            x = x + block.mlp(block.ln2(x))
        logits = model.lm_head(model.ln_final(x))[:, -1]  # (B, vocab)
        for i, seq in enumerate(batch):
            self._sample(seq, logits[i:i + 1])

    def _attend(self, q: torch.Tensor, layer: int, tables: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        keys, values = self.cache.keys[layer], self.cache.values[layer]  # (num_blocks, block_size, Hkv, D)
        if self.decode == "triton":
            from attention_lab.kernels.decode_attention import paged_decode

            return paged_decode(q, keys, values, tables, lengths)
        return paged_attention_reference(q, keys, values, tables, lengths)

    def _attend_latent(self, attn: MultiHeadLatentAttention, h: torch.Tensor, positions: torch.Tensor, layer: int,
                       slot_rows: torch.Tensor, tables: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """One MLA decode step for B sequences at their own positions: h ``(B, 1, d_model)`` -> ``(B, H, 1, d_h)``.

        The projections act on each token alone, so the batch axis can stand in for the token axis
        (``(1, B, d_model)`` with ``positions`` ``(B,)``): every sequence's RoPE turns by its own position.
        The new row is stored, then the absorbed queries ``[W^UKᵀ q^C ; q^R]`` attend over each sequence's
        rows through the block tables, the values being the rows' first ``d_c`` entries (a view of the keys).
        """
        tokens_as_time = h.transpose(0, 1)  # (1, B, d_model)
        q_content, q_rot = attn.project_queries(tokens_as_time, positions)  # (1, H, B, d_h), (1, H, B, d_R)
        latent, rope_key = attn.compress(tokens_as_time, positions)  # (1, B, d_c), (1, B, d_R)
        _write_latent_rows(self.cache, layer, slot_rows, latent, rope_key)  # the batch axis as the token axis
        q_latent = absorb_query(q_content.transpose(0, 2), attn.k_up.weight)  # (B, H, 1, d_c)
        queries = torch.cat([q_latent, q_rot.transpose(0, 2)], dim=-1)  # (B, H, 1, d_c + d_R)
        pool = self.cache.keys[layer]  # (num_blocks, block_size, 1, d_c + d_R)
        latent_context = paged_attention_reference(queries, pool, pool[..., :attn.kv_latent_dim], tables, lengths,
                                                   scale=attn.scale)  # (B, H, 1, d_c)
        return expand_values(latent_context, attn.v_up.weight)  # (B, H, 1, d_h)

    def _sample(self, seq: _Sequence, logits: torch.Tensor) -> None:
        request = self._requests[seq.request]
        token = sample_next(logits, request.temperature, request.top_k, seq.generator)  # (1, 1)
        seq.tokens.append(int(token))
        seq.remaining -= 1

    def _retire(self, seq: _Sequence, result: ServingResult) -> None:
        self.cache.free(seq.seq_id)
        seq.seq_id = -1
        result.outputs[seq.request][seq.sample] = list(seq.tokens)

    def _preempt(self, group: _Group, result: ServingResult) -> None:
        """Free all of the group's blocks; finished samples are kept, the rest will be recomputed."""
        for seq in group.sequences:
            if seq.seq_id >= 0:
                if seq.remaining == 0:
                    self._retire(seq, result)
                else:
                    self.cache.free(seq.seq_id)
                    seq.seq_id = -1
        group.sequences = [s for s in group.sequences if s.remaining > 0]
        group.fresh = False


def _rotate_each(rotary, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """RoPE for one token per sequence: x ``(B, heads, 1, D)``, sequence b's token at ``positions[b]`` ``(B,)``.

    The rotary layer turns the rows of a ``(..., T, D)`` tensor by ``positions`` ``(T,)``; moving the batch
    axis into the token axis, ``(1, heads, B, D)``, gives every sequence its own position.
    """
    return rotary(x.transpose(0, 2), positions).transpose(0, 2)  # (B, heads, 1, D)


def check_servable(model: TinyGPT) -> None:
    """Raise ``ValueError`` unless :class:`ServingEngine` can serve ``model`` exactly.

    It serves TinyGPT with full causal :class:`~attention_lab.attention.MultiHeadAttention` in every layer
    (MHA, GQA or MQA, with or without RoPE) or causal :class:`~attention_lab.mla.MultiHeadLatentAttention`
    in every layer (``attention='mla'``). Refused: a sliding ``window`` (the pool keeps every token and the
    decode step masks nothing) and a model mixing the two kinds of layer.
    """
    from attention_lab.attention import MultiHeadAttention

    if not isinstance(model, TinyGPT):
        raise ValueError(f"model must be a TinyGPT, got {type(model).__name__}")
    kinds = {type(block.attn) for block in model.blocks}
    if MultiHeadLatentAttention in kinds:
        if kinds != {MultiHeadLatentAttention}:
            raise ValueError(f"ServingEngine serves models whose layers are all MLA or all MultiHeadAttention, got "
                             f"{sorted(k.__name__ for k in kinds)}")
        for index, block in enumerate(model.blocks):
            if not block.attn.causal:
                raise ValueError(f"ServingEngine needs causal attention, but MLA layer {index} is not causal")
        return
    for index, block in enumerate(model.blocks):
        attn = block.attn
        if not isinstance(attn, MultiHeadAttention):
            raise ValueError(f"ServingEngine serves TinyGPT with MultiHeadAttention layers (attention='mha'); "
                             f"layer {index} is {type(attn).__name__}")
        if attn.window is not None or not attn.causal:
            raise ValueError("ServingEngine needs full causal MultiHeadAttention (window=None): the decode step "
                             f"attends to every cached token, but layer {index} has window={attn.window}, "
                             f"causal={attn.causal}")


def _check_triton_decode(device: torch.device) -> None:
    """Raise ``ValueError`` unless the paged Triton kernel can run on ``device`` (checked when the engine is made)."""
    from attention_lab.kernels.interpreter import interpreting
    from attention_lab.kernels.optional_triton import TRITON_AVAILABLE

    if not TRITON_AVAILABLE:
        raise ValueError("decode='triton' needs the triton package (Linux; pip install triton); "
                         "decode='reference' works anywhere")
    if device.type != "cuda" and not interpreting():
        raise ValueError(f"decode='triton' needs the model on a CUDA GPU (it is on {device}), or TRITON_INTERPRET=1 "
                         "set before attention_lab.kernels is imported to run the kernel on the CPU; "
                         "decode='reference' works anywhere")


def generate_paged(model: TinyGPT, prompts: list[list[int]], max_new_tokens: int | list[int], num_blocks: int,
                   block_size: int = 16, **engine_options) -> list[list[int]]:
    """Greedy continuation of several prompts at once on the paged cache; returns prompt + new tokens for each.

    ``max_new_tokens`` is one budget for every prompt, or a list of one budget per prompt (of the same length).
    """
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, (list, tuple)) for p in prompts):
        raise ValueError(f"prompts must be a list of token-id lists, got {prompts!r}"[:200])
    if isinstance(max_new_tokens, (list, tuple)):
        if len(max_new_tokens) != len(prompts):
            raise ValueError(f"max_new_tokens must be one integer or a list of one per prompt ({len(prompts)}), "
                             f"got a list of {len(max_new_tokens)}")
        budgets = list(max_new_tokens)
    else:
        budgets = [max_new_tokens] * len(prompts)
    engine = ServingEngine(model, num_blocks, block_size, **engine_options)
    result = engine.run([Request(list(p), n) for p, n in zip(prompts, budgets)])
    return [outputs[0] for outputs in result.outputs]
