"""How much KV-cache memory holds real tokens: a request-trace simulation (chapter 11).

A server has a fixed KV budget (in token slots) and a queue of requests with random prompt and
output lengths. Each step every running request stores one more token. Two ways to hand out
memory:

* **Contiguous, max length.** Each request reserves ``max_len`` slots when it starts (the most
  it could ever need), as systems before vLLM did. That is the same as paging with one block of
  ``max_len`` slots per request, so one simulator covers both.
* **Paged.** A request holds ``ceil(length / block_size)`` blocks, taking a new one only when the
  last is full; when no block is free, the newest request is preempted (freed, requeued, and
  later recomputed from its prompt plus what it had produced).

Every allocated slot is, at a given moment, one of: a *stored* token, *reserved* for a token the
request will still produce, or *never used* (past the request's final length: the internal
fragmentation of a block or of a max-length reservation). The scheduling rules are exactly those
of :class:`attention_lab.caches.serving.ServingEngine`, so the simulator predicts what the real allocator
does when it drives TinyGPT (tested step by step).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from attention_lab.validation import check_positive_int, check_real
from attention_lab.caches.paged import blocks_needed


@dataclass(frozen=True)
class TraceRequest:
    prompt_len: int  # tokens in the prompt
    output_len: int  # tokens the request will generate
    arrival_step: int = 0


def make_trace(n_requests: int, max_len: int = 2048, mean_prompt: float = 160.0, mean_output: float = 340.0,
               arrival_rate: float | None = None, seed: int = 0) -> list[TraceRequest]:
    """Random requests: exponential prompt and output lengths (at least 1) with ``prompt + output <= max_len``.

    ``arrival_rate`` requests per step arrive as a Poisson process; ``None`` puts them all at step 0
    (a saturated server: the number running then measures how many fit).
    """
    check_positive_int("n_requests", n_requests)
    check_positive_int("max_len", max_len, minimum=2)
    check_real("mean_prompt", mean_prompt, minimum=0.0, strict=True)
    check_real("mean_output", mean_output, minimum=0.0, strict=True)
    if arrival_rate is not None:
        check_real("arrival_rate", arrival_rate, minimum=0.0, strict=True)
    check_positive_int("seed", seed, minimum=0)
    rng = np.random.default_rng(seed)
    prompts = np.clip(np.ceil(rng.exponential(mean_prompt, n_requests)), 1, max_len - 1).astype(int)
    outputs = np.ceil(rng.exponential(mean_output, n_requests)).astype(int)
    outputs = np.clip(outputs, 1, max_len - prompts)
    if arrival_rate is None:
        arrivals = np.zeros(n_requests, dtype=int)
    else:
        arrivals = np.floor(np.cumsum(rng.exponential(1.0 / arrival_rate, n_requests))).astype(int)
    return [TraceRequest(int(p), int(o), int(a)) for p, o, a in zip(prompts, outputs, arrivals)]


@dataclass
class SimulationResult:
    """Per-step totals over the running requests (numpy arrays of one entry per step) and summaries."""

    block_size: int
    capacity_tokens: int
    running: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # requests in memory
    allocated: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # slots in allocated blocks
    stored: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # slots holding a token
    reserved: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # slots a later token will fill
    never_used: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # slots past the final length
    waiting: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # arrived requests not in memory
    preemptions: int = 0
    generated_tokens: int = 0

    @property
    def steps(self) -> int:
        return len(self.running)

    @property
    def saturated(self) -> np.ndarray:
        """Steps at which requests were queued: the server was full, so these measure capacity."""
        return self.waiting > 0

    def _steps_measured(self) -> np.ndarray:
        return self.saturated if self.saturated.any() else np.ones(self.steps, dtype=bool)

    @property
    def utilisation(self) -> float:
        """Stored tokens / allocated slots over the saturated steps (token-steps)."""
        steps = self._steps_measured()
        total = self.allocated[steps].sum()
        return float(self.stored[steps].sum() / total) if total else 1.0

    @property
    def budget_used(self) -> float:
        """Stored tokens / the whole budget over the saturated steps: the share of KV memory holding tokens."""
        steps = self._steps_measured()
        return float(self.stored[steps].sum() / (self.capacity_tokens * max(int(steps.sum()), 1)))

    @property
    def mean_running(self) -> float:
        """Requests in memory at once, averaged over the saturated steps: how many fit in the budget."""
        steps = self._steps_measured()
        return float(self.running[steps].mean()) if self.steps else 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.generated_tokens / max(self.steps, 1)


@dataclass(eq=False)  # identity, not field equality: two identical requests are still two
class _Live:
    prompt_len: int  # tokens fed at admission: the prompt, plus what it had produced before a preemption
    remaining: int  # tokens still to sample
    final_len: int  # cached tokens when it finishes: original prompt + output - 1
    arrival: int
    length: int = 0  # tokens cached
    blocks: int = 0  # blocks held
    resident: bool = False  # in the pool (admitted and not preempted or retired since)


def simulate(trace: list[TraceRequest], capacity_tokens: int, block_size: int,
             max_batch: int | None = None) -> SimulationResult:
    """Serve ``trace`` with a KV budget of ``capacity_tokens`` slots cut into ``block_size``-slot blocks.

    ``block_size = max_len`` is contiguous max-length reservation. Each step follows
    :class:`attention_lab.caches.serving.ServingEngine` (one sample per request) rule for rule:

    1. admit waiting requests that have arrived, in arrival order, while the next one's prompt blocks
       are free and ``max_batch`` allows; its prefill samples its first token (a request of
       ``output_len = 1`` is then finished);
    2. grow every request admitted in an earlier step by one token, oldest first; when no block is free,
       preempt the newest request (possibly one admitted in this step, or the growing request itself):
       its blocks are freed and it waits at the head of the queue to be recomputed from its prompt plus
       what it produced, unless it had already produced everything, in which case it simply finishes;
    3. record; retire the finished requests.

    The per-step ``running``, ``allocated`` and ``stored`` counts, the preemptions and the tokens
    generated equal the engine's (tested on random traces). Every request is checked first: lengths
    ``>= 1``, arrival ``>= 0``, and fitting the pool alone. The loop always ends: each step either
    generates a token or waits for an arrival.
    """
    check_positive_int("block_size", block_size)
    check_positive_int("capacity_tokens", capacity_tokens)
    if max_batch is not None:
        check_positive_int("max_batch", max_batch)
    if not isinstance(trace, (list, tuple)):
        raise ValueError(f"trace must be a list of TraceRequest, got {type(trace).__name__}")
    num_blocks = capacity_tokens // block_size
    if num_blocks < 1:
        raise ValueError(f"capacity_tokens={capacity_tokens} holds no block of {block_size} slots")
    for i, r in enumerate(trace):
        if not isinstance(r, TraceRequest):
            raise ValueError(f"trace[{i}] must be a TraceRequest, got {type(r).__name__}")
        try:
            check_positive_int("prompt_len", r.prompt_len)
            check_positive_int("output_len", r.output_len)
            check_positive_int("arrival_step", r.arrival_step, minimum=0)
        except ValueError as error:
            raise ValueError(f"request {i}: {error}") from None
        if blocks_needed(r.prompt_len + r.output_len - 1, block_size) > num_blocks:
            raise ValueError(f"request {i} ({r.prompt_len} + {r.output_len} tokens) cannot fit "
                             f"{num_blocks} blocks of {block_size}")
    result = SimulationResult(block_size, capacity_tokens)
    live = [_Live(r.prompt_len, r.output_len, r.prompt_len + r.output_len - 1, r.arrival_step)
            for r in sorted(trace, key=lambda r: r.arrival_step)]
    waiting: deque[_Live] = deque(live)
    running: list[_Live] = []  # resident requests in admission order: the newest is last
    free = num_blocks
    rows: list[tuple[int, ...]] = []
    last_step = max((r.arrival_step for r in trace), default=0) + sum(r.output_len for r in trace)
    step = 0
    while waiting or running:
        if step > last_step:  # a step without an arrival to wait for generates a token: cannot happen
            raise RuntimeError(f"simulate made no progress by step {step}; this is a bug in the simulator")
        # 1. Admit: the prompt's blocks, then the prefill samples the first token.
        n_admitted = 0
        while waiting and waiting[0].arrival <= step:
            request = waiting[0]
            need = blocks_needed(request.prompt_len, block_size)
            if (max_batch is not None and len(running) + 1 > max_batch) or need > free:
                break
            waiting.popleft()
            free -= need
            request.blocks, request.length, request.resident = need, request.prompt_len, True
            request.remaining -= 1
            result.generated_tokens += 1
            running.append(request)
            n_admitted += 1
        # 2. Decode: every request admitted before this step takes one slot, oldest first.
        for request in running[:len(running) - n_admitted]:  # a snapshot: preemption pops from `running`
            while request.resident:
                extra = blocks_needed(request.length + 1, block_size) - request.blocks
                if extra <= free:
                    free -= extra
                    request.blocks += extra
                    request.length += 1
                    request.remaining -= 1
                    result.generated_tokens += 1
                    break
                victim = running.pop()  # the newest request gives its blocks back (maybe `request` itself)
                free += victim.blocks
                if victim.remaining > 0:  # recompute later: everything it holds plus its last sampled token
                    victim.prompt_len = victim.length + 1
                    waiting.appendleft(victim)
                victim.blocks, victim.length, victim.resident = 0, 0, False  # (remaining 0: it just finishes)
                result.preemptions += 1
        # 3. Record, then retire the finished requests.
        allocated = sum(r.blocks for r in running) * block_size
        stored = sum(r.length for r in running)
        usable = sum(min(r.blocks * block_size, r.final_len) for r in running)
        queued = sum(1 for r in waiting if r.arrival <= step)
        rows.append((len(running), allocated, stored, usable - stored, allocated - usable, queued))
        for request in [r for r in running if r.remaining == 0]:
            free += request.blocks
            request.blocks, request.length, request.resident = 0, 0, False
            running.remove(request)
        step += 1
    columns = np.array(rows, dtype=int).reshape(-1, 6).T
    (result.running, result.allocated, result.stored, result.reserved, result.never_used,
     result.waiting) = columns
    return result


def compare_allocators(trace: list[TraceRequest], capacity_tokens: int, max_len: int,
                       block_sizes: tuple[int, ...] = (1, 8, 16, 32, 128)) -> dict[str, SimulationResult]:
    """``{'contiguous': ..., 'paged 1': ..., 'paged 8': ...}``: the same trace and budget under each allocator."""
    check_positive_int("max_len", max_len)
    if not isinstance(block_sizes, (list, tuple)):
        raise ValueError(f"block_sizes must be a tuple of block sizes, got {block_sizes!r}")
    for size in block_sizes:
        check_positive_int("block_sizes entry", size)
    results = {"contiguous": simulate(trace, capacity_tokens, max_len)}
    for size in block_sizes:
        results[f"paged {size}"] = simulate(trace, capacity_tokens, size)
    return results
