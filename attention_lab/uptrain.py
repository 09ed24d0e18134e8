"""Uptraining (Ainslie et al. 2023, "GQA", arXiv 2305.13245): turn a trained multi-head checkpoint into
grouped-query attention with G key/value heads, then train a little more.

Conversion, per layer, for the key and the value projections (the query and output projections are kept):
the ``h`` heads are split into ``G`` groups of ``h / G`` consecutive heads — the same grouping the
attention uses, query head ``i`` reads kv head ``i // (h / G)`` — and each group's projection heads
become one head by

* ``"mean"``: their average (the paper's choice, and its best),
* ``"first"``: the group's first head,
* ``"random"``: a fresh random initialisation (what training from scratch would start from).

``G = h`` keeps multi-head attention (the conversion is then exact), ``G = 1`` is multi-query attention.
Then :func:`uptrain` continues training for a fraction α of the original steps (α = 0.05 in the paper).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from attention_lab.validation import check_divides, check_positive_int
from attention_lab.train import evaluate, train

CONVERSION_METHODS = ("mean", "first", "random")

# Table 1 of Ainslie et al. 2023 (arXiv 2305.13245): T5 models; inference time per sample in seconds and
# the average dev-set score over their summarisation, translation and question-answering tasks (higher is
# better). MQA-XXL and GQA-8-XXL (8 kv heads for T5-XXL's 64 query heads) are the MHA-XXL checkpoint
# uptrained with alpha = 0.05.
GQA_PAPER_TABLE1 = (
    # (model, seconds per sample, average score)
    ("MHA-Large", 0.37, 46.0),
    ("MHA-XXL", 1.51, 47.2),
    ("MQA-XXL", 0.24, 46.6),
    ("GQA-8-XXL", 0.28, 47.1),
)


def pool_kv_heads(weight: torch.Tensor, n_heads: int, n_groups: int, method: str = "mean",
                  generator: torch.Generator | None = None, init_std: float = 0.02) -> torch.Tensor:
    """Merge the heads of a key or value projection into ``n_groups`` heads.

    Args:
        weight: ``(n_heads · head_dim, d_model)`` (an ``nn.Linear`` weight; rows of head ``i`` are
            ``i·head_dim … (i+1)·head_dim − 1``) or a bias ``(n_heads · head_dim,)``.
        n_heads: heads in ``weight``; ``n_groups`` must divide it.
        method: ``"mean"``, ``"first"`` or ``"random"`` (normal with ``init_std``, zeros for a bias).

    Returns:
        ``(n_groups · head_dim, d_model)`` (or ``(n_groups · head_dim,)``): group ``j`` is made from
        heads ``j·s … (j+1)·s − 1`` with ``s = n_heads / n_groups``.
    """
    check_positive_int("n_heads", n_heads)
    check_positive_int("n_groups", n_groups)
    check_divides("n_groups", n_groups, "n_heads", n_heads)
    if method not in CONVERSION_METHODS:
        raise ValueError(f"method must be one of {CONVERSION_METHODS}, got {method!r}")
    if weight.dim() not in (1, 2) or weight.shape[0] % n_heads != 0:
        raise ValueError(f"weight must have shape (n_heads · head_dim, d_model) or (n_heads · head_dim,) "
                         f"with n_heads={n_heads}, got {tuple(weight.shape)}")
    head_dim = weight.shape[0] // n_heads
    group_size = n_heads // n_groups
    rest = tuple(weight.shape[1:])  # (d_model,) for a weight, () for a bias
    heads = weight.detach().reshape(n_groups, group_size, head_dim, *rest)  # (G, h/G, head_dim, d_model)
    if method == "mean":
        pooled = heads.mean(dim=1)  # (G, head_dim, d_model)
    elif method == "first":
        pooled = heads[:, 0]  # (G, head_dim, d_model)
    elif weight.dim() == 1:
        pooled = torch.zeros_like(heads[:, 0])
    else:
        noise = torch.randn(heads[:, 0].shape, generator=generator, dtype=torch.float32)
        pooled = (noise * init_std).to(device=weight.device, dtype=weight.dtype)
    return pooled.reshape(n_groups * head_dim, *rest).clone()  # (G·head_dim, d_model)


def convert_to_gqa(model, n_groups: int, method: str = "mean", seed: int = 0):
    """A new TinyGPT equal to ``model`` except that every attention layer has ``n_groups`` kv heads.

    ``model`` must use the ``"mha"`` attention variant; its ``n_kv_heads`` (h for multi-head) must be
    divisible by ``n_groups``. The key/value projections are pooled by :func:`pool_kv_heads`; every
    other weight is copied. ``model`` itself is left unchanged.
    """
    from attention_lab.model import TinyGPT

    config = model.config
    if config.attention != "mha":
        raise ValueError(f"model must use attention='mha' (MultiHeadAttention), got {config.attention!r}")
    check_positive_int("n_groups", n_groups)
    source_kv_heads = config.n_heads if config.n_kv_heads is None else config.n_kv_heads
    if source_kv_heads % n_groups != 0:
        raise ValueError(f"n_groups={n_groups} must divide the model's n_kv_heads={source_kv_heads} "
                         f"(n_heads={config.n_heads})")
    if method not in CONVERSION_METHODS:
        raise ValueError(f"method must be one of {CONVERSION_METHODS}, got {method!r}")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # building the new model must not move the caller's RNG
        converted = TinyGPT(dataclasses.replace(config, n_kv_heads=n_groups))
    parameter = next(model.parameters())
    converted = converted.to(device=parameter.device, dtype=parameter.dtype)
    kv_names = ("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias")
    state = {name: value for name, value in model.state_dict().items() if not name.endswith(kv_names)}
    missing, unexpected = converted.load_state_dict(state, strict=False)
    assert not unexpected and all(name.endswith(kv_names) for name in missing), (missing, unexpected)
    with torch.no_grad():
        for old_block, new_block in zip(model.blocks, converted.blocks):
            for projection in ("k_proj", "v_proj"):
                old, new = getattr(old_block.attn, projection), getattr(new_block.attn, projection)
                new.weight.copy_(pool_kv_heads(old.weight, source_kv_heads, n_groups, method, generator))
                if old.bias is not None:
                    new.bias.copy_(pool_kv_heads(old.bias, source_kv_heads, n_groups, method, generator))
    converted.train(model.training)
    return converted


def uptrain_steps(original_steps: int, alpha: float) -> int:
    """``round(alpha · original_steps)``, at least 1: the uptraining budget."""
    check_positive_int("original_steps", original_steps)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    return max(1, round(alpha * original_steps))


def uptrain(model, data, original_steps: int, alpha: float = 0.05, batch_size: int = 16, lr: float = 1e-3,
            seed: int = 1):
    """Continue training ``model`` for ``alpha · original_steps`` steps (short warm-up, cosine decay).

    Returns the :class:`~attention_lab.train.TrainResult`.
    """
    steps = uptrain_steps(original_steps, alpha)
    return train(model, data, steps, batch_size=batch_size, lr=lr, eval_every=steps, seed=seed,
                 progress=False, warmup=max(1, steps // 10))


@dataclass
class UptrainRow:
    """One converted model of an uptraining study."""

    method: str  # "mean", "first" or "random"
    n_groups: int  # key/value heads after conversion (G)
    loss_converted: float  # validation loss right after conversion, before any training
    loss_uptrained: float  # validation loss after alpha · original_steps more steps
    seconds: float  # wall time of the uptraining


def uptraining_study(base_model, data, original_steps: int, groups: list[int], methods=CONVERSION_METHODS,
                     alpha: float = 0.05, batch_size: int = 16, lr: float = 1e-3, seed: int = 1) -> list[UptrainRow]:
    """Convert ``base_model`` with every method and every G in ``groups``, evaluate, uptrain, evaluate again."""
    rows = []
    for n_groups in groups:
        for method in methods:
            model = convert_to_gqa(base_model, n_groups, method, seed=seed)
            before = evaluate(model, data)
            started = time.perf_counter()
            result = uptrain(model, data, original_steps, alpha, batch_size, lr, seed)
            rows.append(UptrainRow(method, n_groups, before, result.final_val_loss, time.perf_counter() - started))
    return rows


def format_table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table: columns padded to their widest entry, floats given as already formatted strings."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
