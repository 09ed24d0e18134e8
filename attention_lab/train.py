"""A small training loop for TinyGPT: AdamW, a tqdm progress bar, periodic validation loss."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from attention_lab.progress import tqdm

from attention_lab.validation import check_positive_int, check_real
from attention_lab.data import TokenDataset


@dataclass
class TrainResult:
    steps: list[int] = field(default_factory=list)  # steps at which losses were recorded
    train_loss: list[float] = field(default_factory=list)  # mean training loss since the last record
    val_loss: list[float] = field(default_factory=list)  # validation loss at that step
    seconds: float = 0.0  # wall-clock training time

    @property
    def final_val_loss(self) -> float:
        return self.val_loss[-1]


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: TokenDataset, split: str = "val", batches: int = 8,
             batch_size: int = 32, seed: int = 1234) -> float:
    """Mean cross-entropy over ``batches`` fixed random batches of ``split`` (same batches every call).

    ``batches`` and ``batch_size`` are integers >= 1.
    """
    check_positive_int("batches", batches)
    check_positive_int("batch_size", batch_size)
    check_positive_int("seed", seed, minimum=0)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(batches):
        x, y = data.batch(split, batch_size, generator, device)
        total += model(x, y)[1].item()
    model.train(was_training)
    return total / batches


def train(model: torch.nn.Module, data: TokenDataset, steps: int, batch_size: int = 32, lr: float = 3e-3,
          eval_every: int = 50, seed: int = 0, progress: bool = True, warmup: int = 20) -> TrainResult:
    """Train ``model`` for ``steps`` AdamW steps (linear warm-up, cosine decay); return the loss history.

    ``steps``, ``batch_size`` and ``eval_every`` are integers >= 1, ``warmup`` an integer >= 0 (0: start at
    the full rate), ``lr`` a finite real number > 0.
    """
    import time

    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_positive_int("eval_every", eval_every)
    check_positive_int("warmup", warmup, minimum=0)
    check_positive_int("seed", seed, minimum=0)
    lr = check_real("lr", lr, minimum=0.0, strict=True)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))

    def rate(s: int) -> float:  # linear warm-up over `warmup` steps, then cosine decay to 0 at `steps`
        ramp = 1.0 if warmup == 0 else min(1.0, (s + 1) / warmup)
        return ramp * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    generator = torch.Generator().manual_seed(seed)
    result = TrainResult()
    running, count = 0.0, 0
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(1, steps + 1), disable=not progress, desc="training", leave=True)  # kept: ends at 100 %
    for step in bar:
        x, y = data.batch("train", batch_size, generator, device)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running, count = running + loss.item(), count + 1
        if step % eval_every == 0 or step == steps:
            result.steps.append(step)
            result.train_loss.append(running / count)
            result.val_loss.append(evaluate(model, data))
            running, count = 0.0, 0
            bar.set_postfix(train=f"{result.train_loss[-1]:.3f}", val=f"{result.val_loss[-1]:.3f}")
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
