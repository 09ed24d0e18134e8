"""Text generation: greedy, temperature and top-k sampling, with or without the KV cache."""

from __future__ import annotations

import torch

from attention_lab.validation import check_positive_int, check_rank, check_real


def check_sampling(temperature: float, top_k: int | None) -> tuple[float, int | None]:
    """Validate the sampling settings shared by :func:`sample_next`, :func:`generate` and the serving engine.

    ``temperature`` must be a finite real number ``>= 0`` (0 = greedy); ``top_k`` None or an integer ``>= 1``
    (checked for greedy decoding too, so a bad value never waits for the first sampled request).
    Returns them as ``(float, int | None)``.
    """
    temperature = check_real("temperature", temperature, minimum=0.0)
    if top_k is not None:
        top_k = check_positive_int("top_k", top_k)
    return temperature, top_k


def check_logits(logits: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``logits`` ``(B, vocab)`` is a float tensor whose every row has a finite entry
    and no NaN or +inf (−inf marks a token that may not be drawn). One device sync."""
    check_rank("logits", logits, 2, "(batch, vocab)")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (batch >= 1, vocab >= 1), got {tuple(logits.shape)}")
    invalid, blank = torch.stack([(torch.isnan(logits) | torch.isposinf(logits)).any(),
                                  torch.isneginf(logits).all(dim=-1).any()]).tolist()
    if invalid:
        raise ValueError("logits must not hold NaN or +inf")
    if blank:
        raise ValueError("logits must have at least one finite entry per row (every token of a row is -inf)")


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from logits ``(B, vocab)``: greedy if ``temperature == 0``, else sample. Returns ``(B, 1)``.

    A temperature so small that ``logits / temperature`` overflows samples among the largest logits
    (the limit of greedy decoding) instead of returning NaN probabilities.
    """
    temperature, top_k = check_sampling(temperature, top_k)
    check_logits(logits)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits.float()
    scaled = logits / temperature
    if bool((torch.isfinite(logits) & ~torch.isfinite(scaled)).any()):  # overflow: shift by the row max first
        #   (the same softmax, and no inf - inf)
        scaled = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None:
        kth = torch.topk(scaled, min(top_k, scaled.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)  # (B, vocab)
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None,
             return_logits: bool = False):
    """Continue token ids ``idx`` ``(B, T)`` by ``max_new_tokens`` tokens. Returns ``(B, T + new)``.

    With ``use_cache`` the prompt is prefilled once and each step feeds only the newest token,
    attending to the cached keys/values; without it every step re-runs the whole sequence.
    Both paths produce the same tokens (tested). ``return_logits`` also returns the
    ``(B, new, vocab)`` logits each step sampled from. ``idx`` holds at least one token id in
    ``[0, vocab_size)`` per row; every argument is checked before the model runs.
    """
    from attention_lab.model import check_token_ids  # imported here: attention_lab.model imports the attention stack

    check_token_ids("idx", idx, model.config.vocab_size)
    check_positive_int("max_new_tokens", max_new_tokens, minimum=0)
    temperature, top_k = check_sampling(temperature, top_k)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
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
