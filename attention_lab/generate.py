"""Text generation: greedy, temperature and top-k sampling, with or without the KV cache."""

from __future__ import annotations

import torch

from attention_lab.validation import check_positive_int, check_rank


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from logits ``(B, vocab)``: greedy if ``temperature == 0``, else sample. Returns ``(B, 1)``."""
    check_rank("logits", logits, 2, "(batch, vocab)")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits.float() / temperature
    if top_k is not None:
        check_positive_int("top_k", top_k)
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, vocab)
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None,
             return_logits: bool = False):
    """Continue token ids ``idx`` ``(B, T)`` by ``max_new_tokens`` tokens. Returns ``(B, T + new)``.

    With ``use_cache`` the prompt is prefilled once and each step feeds only the newest token,
    attending to the cached keys/values; without it every step re-runs the whole sequence.
    Both paths produce the same tokens (tested). ``return_logits`` also returns the
    ``(B, new, vocab)`` logits each step sampled from.
    """
    check_rank("idx", idx, 2, "(batch, seq)")
    check_positive_int("max_new_tokens", max_new_tokens, minimum=0)
    context_length = model.config.context_length
    if idx.shape[1] + max_new_tokens > context_length:
        raise ValueError(f"prompt ({idx.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"context_length={context_length}")
    model.eval()
    cache = model.new_cache(idx.shape[0], idx.shape[1] + max_new_tokens) if use_cache else None
    step_logits = []
    next_input = idx
    for _ in range(max_new_tokens):
        logits, _ = model(next_input if use_cache else idx, cache=cache)
        last = logits[:, -1, :]  # (B, vocab)
        step_logits.append(last)
        token = sample_next(last, temperature, top_k, generator)  # (B, 1)
        idx = torch.cat([idx, token], dim=1)
        next_input = token
    if return_logits:
        empty = idx.new_zeros((idx.shape[0], 0, model.config.vocab_size), dtype=torch.float32)
        return idx, (torch.stack(step_logits, dim=1) if step_logits else empty)
    return idx
