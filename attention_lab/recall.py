"""Associative recall: facts placed in the context and asked about later, at a distance we choose.

The corpus loss of a small model mixes everything it has learned into one number. This task asks one
question an attention layer either can or cannot answer: *"what value did the key k have?"*, where the
fact ``k = v`` stands ``d`` tokens before the question. Accuracy as a function of ``d`` then shows

* the sliding window's hard limit: after ``L`` layers of window ``w`` the question's position depends
  only on the last ``L·(w − 1) + 1`` tokens (:func:`~attention_lab.receptive_field.receptive_field`), so a
  fact further back cannot change the answer — accuracy falls to chance, ``1 / n_values``;
* what sharing key/value heads (MQA, GQA) and compressing them into a latent (MLA, rank ``d_c``) give up.

The task has its own vocabulary of ids (no text, no tokenizer), three kinds of token:

    fact  (k, v)   id  k · n_values + v                 one token holds a whole key–value pair
    query k        id  n_keys · n_values + k            "what was k?"
    answer v       id  n_keys · n_values + n_keys + v   only ever predicted, never in the input

A sequence of ``seq_len`` tokens holds ``n_facts`` facts with distinct keys (position 0 is always a fact)
and a question at every other position, each asking about one earlier fact. The model predicts, at a
question, the answer token of its fact (next-token prediction: the target sits at the question's own
position). Distances ``d`` are counted from the fact to the question: ``d = 1`` is the fact right before.

Why one token per fact: a two-token layout (``k v … k → v``) needs a second attention hop (a previous-token
head) before the lookup, which a 2-layer, 64-wide TinyGPT had not learned after 1,500 steps on a CPU
(measured while designing this task); with the pair in one token, one attention lookup answers the question,
and the question at every non-fact position gives ~25 training targets per sequence, so the same model
learns it in a few hundred steps. What the task measures is then exactly one thing: can this attention
find and read that token.

    task = RecallTask()                                  # 16 keys, 16 values, 32 tokens, 12 facts
    batch = make_recall_batch(task, 64, distance=10)     # every scored question 10 tokens after its fact
    model = TinyGPT(TinyGPTConfig(vocab_size=task.vocab_size, context_length=task.seq_len))
    train_recall(model, task, steps=600)
    evaluate_recall(model, task).accuracy_by_distance    # {1: 0.98, 2: 0.97, ...}
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from attention_lab.progress import tqdm

from attention_lab.validation import check_int_range, check_positive_int

IGNORE = -100  # target of a position that is not scored (F.cross_entropy's default ignore_index)


@dataclass(frozen=True)
class RecallTask:
    """The shape of the task: how many keys and values exist, how long a sequence is, how many facts it holds."""

    n_keys: int = 16  # distinct keys; every fact of a sequence has its own
    n_values: int = 16  # distinct values; chance accuracy is 1 / n_values
    seq_len: int = 32  # tokens per sequence (the model's context_length must be at least this)
    n_facts: int = 12  # facts per sequence (including position 0); the other positions are questions

    def __post_init__(self) -> None:
        check_positive_int("n_keys", self.n_keys)
        check_positive_int("n_values", self.n_values, minimum=2)
        check_positive_int("seq_len", self.seq_len, minimum=2)
        check_int_range("n_facts", self.n_facts, 1, min(self.n_keys, self.seq_len - 1) + 1)

    @property
    def vocab_size(self) -> int:
        """Fact ids, then query ids, then answer ids: ``n_keys·n_values + n_keys + n_values``."""
        return self.n_keys * self.n_values + self.n_keys + self.n_values

    @property
    def chance(self) -> float:
        """Accuracy of a guess that ignores the context: ``1 / n_values``."""
        return 1.0 / self.n_values

    @property
    def distances(self) -> list[int]:
        """Every distance a question can have: ``1 … seq_len − 1``."""
        return list(range(1, self.seq_len))

    @property
    def answer_ids(self) -> range:
        """Ids of the answer tokens, in value order (``answer_ids[v]`` is value ``v``'s answer)."""
        start = self.n_keys * self.n_values + self.n_keys
        return range(start, start + self.n_values)

    def fact_token(self, key: int | torch.Tensor, value: int | torch.Tensor) -> int | torch.Tensor:
        """The id of fact ``key = value``."""
        return key * self.n_values + value

    def query_token(self, key: int | torch.Tensor) -> int | torch.Tensor:
        """The id of the question "what was ``key``?"."""
        return self.n_keys * self.n_values + key

    def answer_token(self, value: int | torch.Tensor) -> int | torch.Tensor:
        """The id the model must predict when the answer is ``value``."""
        return self.n_keys * self.n_values + self.n_keys + value

    def to_dict(self) -> dict:
        return {**asdict(self), "vocab_size": self.vocab_size, "chance": self.chance}


@dataclass
class RecallBatch:
    """One batch of recall sequences; every tensor is ``(B, T)`` except ``anchors`` ``(B,)``."""

    tokens: torch.Tensor  # (B, T) int64: the model's input
    targets: torch.Tensor  # (B, T) int64: the answer id at scored questions, IGNORE elsewhere
    distances: torch.Tensor  # (B, T) int64: at every question, its distance to the fact it asks about; -1 at facts
    is_fact: torch.Tensor  # (B, T) bool
    anchors: torch.Tensor  # (B,) int64: with a fixed distance d, a fact whose question stands at anchor + d; else -1

    @property
    def scored(self) -> torch.Tensor:
        """``(B, T)`` bool: the positions whose prediction counts (targets != IGNORE)."""
        return self.targets != IGNORE


def make_recall_batch(task: RecallTask, batch_size: int, generator: torch.Generator | None = None,
                      distance: int | None = None, device: torch.device | str = "cpu") -> RecallBatch:
    """``batch_size`` random sequences of ``task``.

    Fact positions: position 0 and ``n_facts − 1`` others drawn uniformly; keys are a random subset of
    ``n_keys`` (distinct within a sequence), values uniform. Every other position is a question about an
    earlier fact.

    * ``distance=None`` (training): each question asks about a uniformly chosen earlier fact, and every
      question is scored — distances of all sizes are mixed.
    * ``distance=d``: each sequence has an *anchor* fact at a uniform position ``a ≤ T − 1 − d`` and a
      question at ``a + d``; every question standing exactly ``d`` after a fact asks about that fact and
      is scored; the others ask about a random earlier fact and are not scored. So every scored question
      of the batch is exactly ``d`` tokens after its fact (at least one per sequence).
    """
    check_positive_int("batch_size", batch_size)
    T, F_, B = task.seq_len, task.n_facts, batch_size
    if distance is not None:
        check_int_range("distance", distance, 1, T)
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    rows = torch.arange(B)[:, None]  # (B, 1)

    # Fact positions: the F smallest random scores, with position 0 (and the anchor) forced in.
    scores = torch.rand(B, T, generator=generator)  # (B, T)
    scores[:, 0] = -2.0
    anchors = torch.full((B,), -1, dtype=torch.long)
    if distance is not None:
        anchors = torch.randint(0, T - distance, (B,), generator=generator) if F_ > 1 else torch.zeros(B, dtype=torch.long)
        scores[torch.arange(B), anchors] = torch.minimum(scores[torch.arange(B), anchors], torch.tensor(-1.0))
        scores[torch.arange(B), anchors + distance] = 2.0  # the anchor's question must not be a fact
    fact_positions = scores.argsort(dim=1)[:, :F_].sort(dim=1).values  # (B, F) increasing
    is_fact = torch.zeros(B, T, dtype=torch.bool)
    is_fact[rows, fact_positions] = True

    keys = torch.rand(B, task.n_keys, generator=generator).argsort(dim=1)[:, :F_]  # (B, F) distinct per row
    values = torch.randint(0, task.n_values, (B, F_), generator=generator)  # (B, F)

    facts_so_far = is_fact.long().cumsum(dim=1)  # (B, T): facts at positions <= t
    # A question at t asks about fact number j (0-based, in position order) among the facts_so_far[t] before it.
    asked = (torch.rand(B, T, generator=generator) * facts_so_far).long().clamp(max=F_ - 1)  # (B, T)
    scored = ~is_fact if distance is None else torch.zeros(B, T, dtype=torch.bool)
    if distance is not None:
        fact_back = torch.zeros(B, T, dtype=torch.bool)  # a fact stands exactly `distance` before t
        fact_back[:, distance:] = is_fact[:, :T - distance]
        on_distance = fact_back & ~is_fact
        index_back = torch.zeros(B, T, dtype=torch.long)
        index_back[:, distance:] = facts_so_far[:, :T - distance] - 1
        asked = torch.where(on_distance, index_back, asked)
        scored = on_distance

    fact_index = (facts_so_far - 1).clamp(min=0)  # (B, T): at a fact position, that fact's number
    fact_ids = task.fact_token(keys.gather(1, fact_index), values.gather(1, fact_index))  # (B, T)
    query_ids = task.query_token(keys.gather(1, asked))  # (B, T)
    tokens = torch.where(is_fact, fact_ids, query_ids)
    targets = torch.where(scored, task.answer_token(values.gather(1, asked)), torch.tensor(IGNORE))
    positions = torch.arange(T).expand(B, T)
    distances = torch.where(is_fact, torch.tensor(-1), positions - fact_positions.gather(1, asked))
    return RecallBatch(tokens.to(device), targets.to(device), distances.to(device), is_fact.to(device),
                       anchors.to(device))


def predicted_values(logits: torch.Tensor, task: RecallTask) -> torch.Tensor:
    """``(B, T, vocab)`` logits -> ``(B, T)`` the value whose answer token scores highest (an int in
    ``[0, n_values)``; the other tokens of the vocabulary are not candidates)."""
    if logits.dim() != 3 or logits.shape[-1] != task.vocab_size:
        raise ValueError(f"logits must have shape (batch, seq, vocab_size={task.vocab_size}), got {tuple(logits.shape)}")
    answers = task.answer_ids
    return logits[..., answers.start:answers.stop].argmax(dim=-1)


def correct_answers(logits: torch.Tensor, batch: RecallBatch, task: RecallTask) -> torch.Tensor:
    """``(B, T)`` bool: scored positions where the predicted value is the fact's value (False elsewhere)."""
    values = batch.targets - task.answer_ids.start  # (B, T): the right value at scored positions
    return batch.scored & (predicted_values(logits, task) == values)


def accuracy(logits: torch.Tensor, batch: RecallBatch, task: RecallTask) -> float:
    """Fraction of the batch's scored questions answered right."""
    n = int(batch.scored.sum())
    if n == 0:
        raise ValueError("the batch has no scored question")
    return int(correct_answers(logits, batch, task).sum()) / n


def accuracy_by_distance(logits: torch.Tensor, batch: RecallBatch, task: RecallTask) -> dict[int, tuple[int, int]]:
    """``{distance: (correct, scored)}`` over the batch's scored questions, grouped by their distance."""
    correct = correct_answers(logits, batch, task)
    out: dict[int, tuple[int, int]] = {}
    for d in batch.distances[batch.scored].unique().tolist():
        here = batch.scored & (batch.distances == d)
        out[int(d)] = (int(correct[here].sum()), int(here.sum()))
    return out


def recall_loss(logits: torch.Tensor, batch: RecallBatch) -> torch.Tensor:
    """Mean cross-entropy (nats) over the scored questions; a scalar tensor."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1), ignore_index=IGNORE)


@dataclass
class RecallEvaluation:
    """Accuracy of one model on the task."""

    accuracy: float  # on the training mix of distances (distance=None batches)
    loss: float  # cross-entropy on those questions (nats)
    accuracy_by_distance: dict[int, float]  # on fixed-distance batches
    questions_per_distance: dict[int, int]  # scored questions behind each of those numbers


@torch.no_grad()
def evaluate_recall(model: torch.nn.Module, task: RecallTask, distances: list[int] | None = None,
                    batch_size: int = 128, seed: int = 1234) -> RecallEvaluation:
    """Accuracy on one fixed mixed batch, and on one fixed batch per distance (``task.distances`` by default).

    The batches depend only on ``seed``, so every model is asked exactly the same questions.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    mixed = make_recall_batch(task, batch_size, generator, device=device)
    logits = model(mixed.tokens)[0]
    mixed_accuracy, mixed_loss = accuracy(logits, mixed, task), recall_loss(logits, mixed).item()
    by_distance, counts = {}, {}
    for d in task.distances if distances is None else distances:
        batch = make_recall_batch(task, batch_size, torch.Generator().manual_seed(seed + d), distance=d, device=device)
        logits = model(batch.tokens)[0]
        by_distance[d], counts[d] = accuracy(logits, batch, task), int(batch.scored.sum())
    model.train(was_training)
    return RecallEvaluation(mixed_accuracy, mixed_loss, by_distance, counts)


@dataclass
class RecallTrainResult:
    """The learning curve of :func:`train_recall`."""

    steps: list[int] = field(default_factory=list)  # steps at which the curve was recorded
    train_loss: list[float] = field(default_factory=list)  # mean training loss since the last record
    val_loss: list[float] = field(default_factory=list)  # loss on a fixed held-out mixed batch
    val_accuracy: list[float] = field(default_factory=list)  # accuracy on that batch
    seconds: float = 0.0  # wall-clock training time


def train_recall(model: torch.nn.Module, task: RecallTask, steps: int, batch_size: int = 32, lr: float = 3e-3,
                 eval_every: int = 50, seed: int = 0, warmup: int = 20, progress: bool | tqdm = True,
                 eval_batch_size: int = 128) -> RecallTrainResult:
    """Train ``model`` on fresh random recall batches (mixed distances) for ``steps`` AdamW steps.

    The optimiser and schedule are :func:`attention_lab.train.train`'s (AdamW, weight decay 0.01,
    betas (0.9, 0.95), linear warm-up then cosine decay, gradient clipping at 1). ``progress``: ``True`` for
    a bar of its own (kept, ending at 100 %), ``False`` for none, or a ``tqdm`` bar to advance by one per step.
    """
    check_positive_int("steps", steps)
    check_positive_int("eval_every", eval_every)
    if model.config.context_length < task.seq_len:
        raise ValueError(f"the model's context_length={model.config.context_length} is shorter than "
                         f"task.seq_len={task.seq_len}")
    if model.config.vocab_size < task.vocab_size:
        raise ValueError(f"the model's vocab_size={model.config.vocab_size} is smaller than task.vocab_size={task.vocab_size}")
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    generator = torch.Generator().manual_seed(seed)
    held_out = make_recall_batch(task, eval_batch_size, torch.Generator().manual_seed(10_000 + seed), device=device)
    own_bar = progress is True
    bar = tqdm(total=steps, desc="recall training", leave=True) if own_bar else (progress or None)
    result = RecallTrainResult()
    running, count = 0.0, 0
    start = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        batch = make_recall_batch(task, batch_size, generator, device=device)
        loss = recall_loss(model(batch.tokens)[0], batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running, count = running + loss.item(), count + 1
        if step % eval_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                logits = model(held_out.tokens)[0]
                result.val_loss.append(recall_loss(logits, held_out).item())
                result.val_accuracy.append(accuracy(logits, held_out, task))
            model.train()
            result.steps.append(step)
            result.train_loss.append(running / count)
            running, count = 0.0, 0
            if bar is not None:
                bar.set_postfix(loss=f"{result.val_loss[-1]:.3f}", acc=f"{result.val_accuracy[-1]:.2f}")
        if bar is not None:
            bar.update(1)
    if own_bar:
        bar.close()
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


@torch.no_grad()
def fact_influence(model: torch.nn.Module, task: RecallTask, distance: int, batch_size: int = 16,
                   seed: int = 0) -> float:
    """How much the answer to a question moves when the value of its fact, ``distance`` tokens back, changes.

    For every sequence of a fixed-distance batch, the anchor fact's value is replaced by another value
    (``v + 1 mod n_values``, nothing else in the sequence changes) and the logits at the anchor's question
    are compared. Returns the largest absolute change over the batch. A model whose receptive field is
    shorter than ``distance + 1`` tokens (a window of ``w`` over ``L`` layers sees ``L·(w−1) + 1``) returns
    exactly 0.0: its answer cannot depend on the fact, so its accuracy at that distance is chance.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batch = make_recall_batch(task, batch_size, torch.Generator().manual_seed(seed), distance=distance, device=device)
    rows = torch.arange(batch_size, device=device)
    fact = batch.tokens[rows, batch.anchors]  # (B,) fact ids k·n_values + v
    key, value = fact // task.n_values, fact % task.n_values
    changed = batch.tokens.clone()
    changed[rows, batch.anchors] = task.fact_token(key, (value + 1) % task.n_values)
    question = batch.anchors + distance
    before = model(batch.tokens)[0][rows, question]  # (B, vocab)
    after = model(changed)[0][rows, question]  # (B, vocab)
    model.train(was_training)
    return (after - before).abs().max().item()
