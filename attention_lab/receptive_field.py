"""How far back a stack of sliding-window layers can see: measured by gradients, predicted by a formula.

One layer with a window of ``w`` keys mixes positions ``p-w+1 … p`` into position ``p``. Stacking
layers chains these windows: after ``L`` layers the last position depends on the last
``L·(w-1) + 1`` input positions — the receptive field grows by ``w-1`` per layer.
"""

from __future__ import annotations

import torch

from attention_lab.validation import check_positive_int


def receptive_field(n_layers: int, window: int, n_tokens: int | None = None) -> int:
    """Input positions that can influence one output after ``n_layers`` window-``window`` layers:
    ``n_layers · (window - 1) + 1``, capped at ``n_tokens`` when given."""
    check_positive_int("n_layers", n_layers)
    check_positive_int("window", window)
    field = n_layers * (window - 1) + 1
    return field if n_tokens is None else min(field, n_tokens)


def input_influence(model: torch.nn.Module, n_tokens: int, seed: int = 0) -> torch.Tensor:
    """Influence of every input position on the LAST position, after each block of a TinyGPT.

    Runs ``n_tokens`` random tokens through ``model.blocks`` and, after block ``l``, takes the
    gradient of a random projection of the last position's hidden state with respect to the
    block stack's input ``(1, N, d_model)``. Returns ``(n_layers, N)``: row ``l`` holds the
    gradient norm at each input position after ``l + 1`` blocks (exactly 0 where there is no path).
    """
    check_positive_int("n_tokens", n_tokens)
    config = model.config
    if n_tokens > config.context_length:
        raise ValueError(f"n_tokens={n_tokens} exceeds the model's context_length={config.context_length}")
    generator = torch.Generator().manual_seed(seed)
    device = model.token_embedding.weight.device
    idx = torch.randint(config.vocab_size, (1, n_tokens), generator=generator).to(device)  # (1, N)
    positions = torch.arange(n_tokens, device=device)  # (N,)
    with torch.no_grad():
        embedded = model.token_embedding(idx) + model.position_embedding(positions)  # (1, N, d_model)
    x0 = embedded.requires_grad_(True)
    probe = torch.randn(config.d_model, generator=generator).to(device)  # (d_model,) random read-out
    rows = []
    x = x0
    for block in model.blocks:
        x = block(x, positions)  # (1, N, d_model)
        (grad,) = torch.autograd.grad(x[0, -1] @ probe, x0, retain_graph=True)  # (1, N, d_model)
        rows.append(grad[0].norm(dim=-1))  # (N,)
    return torch.stack(rows).detach()  # (n_layers, N)
