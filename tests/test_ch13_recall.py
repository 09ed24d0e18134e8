"""Associative recall (attention_lab.recall): exact layouts, distances, accuracy, and who can solve it."""

import pytest
import torch

from attention_lab import TinyGPT, TinyGPTConfig, scaled_dot_product_attention
from attention_lab.receptive_field import receptive_field
from attention_lab.recall import (IGNORE, RecallTask, accuracy, accuracy_by_distance, evaluate_recall, fact_influence,
                                  make_recall_batch, predicted_values, recall_loss, train_recall)

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = RecallTask(n_keys=8, n_values=5, seq_len=20, n_facts=6)


def _decode(task, batch, row):
    """Walk one sequence token by token: facts seen so far, and for every question the fact it must be about."""
    facts = {}  # key -> (position, value)
    questions = []  # (position, key, fact position, fact value)
    for t, token in enumerate(batch.tokens[row].tolist()):
        if token < task.n_keys * task.n_values:
            key, value = divmod(token, task.n_values)
            assert key not in facts, "a key is stated twice in one sequence"
            facts[key] = (t, value)
        else:
            key = token - task.n_keys * task.n_values
            assert 0 <= key < task.n_keys, "an answer token appears in the input"
            assert key in facts, "a question about a key not stated before it"
            questions.append((t, key, *facts[key]))
    return facts, questions


def test_vocabulary_is_three_disjoint_ranges():
    t = RecallTask(n_keys=3, n_values=4, seq_len=10, n_facts=3)
    facts = {t.fact_token(k, v) for k in range(3) for v in range(4)}
    queries = {t.query_token(k) for k in range(3)}
    answers = {t.answer_token(v) for v in range(4)}
    assert facts == set(range(12)) and queries == {12, 13, 14} and answers == {15, 16, 17, 18} == set(t.answer_ids)
    assert t.vocab_size == 19 and t.chance == 0.25 and t.distances == list(range(1, 10))


@pytest.mark.parametrize("kwargs", [dict(n_facts=9), dict(n_facts=0), dict(n_values=1), dict(seq_len=1),
                                    dict(n_keys=30, n_facts=20)])
def test_bad_task_is_refused(kwargs):
    with pytest.raises(ValueError):
        RecallTask(**{**dict(n_keys=8, n_values=5, seq_len=20, n_facts=6), **kwargs})


def test_mixed_batch_layout_is_exact():
    """Position 0 is a fact, n_facts facts with distinct keys, every other position a scored question whose
    target and distance are those of the one earlier fact with its key."""
    batch = make_recall_batch(TASK, 16, torch.Generator().manual_seed(3))
    assert batch.tokens.shape == batch.targets.shape == batch.distances.shape == (16, TASK.seq_len)
    assert batch.tokens.dtype == torch.long and (batch.anchors == -1).all()
    for row in range(16):
        facts, questions = _decode(TASK, batch, row)
        assert len(facts) == TASK.n_facts and batch.is_fact[row, 0]
        assert len(questions) == TASK.seq_len - TASK.n_facts
        for t, key, fact_position, value in questions:
            assert batch.targets[row, t] == TASK.answer_token(value)
            assert batch.distances[row, t] == t - fact_position >= 1
        assert (batch.targets[row][batch.is_fact[row]] == IGNORE).all()
        assert (batch.distances[row][batch.is_fact[row]] == -1).all()
    assert batch.scored.sum() == 16 * (TASK.seq_len - TASK.n_facts)


@pytest.mark.parametrize("distance", [1, 2, 5, 13, 19])
def test_fixed_distance_batch_scores_exactly_the_questions_at_that_distance(distance):
    batch = make_recall_batch(TASK, 32, torch.Generator().manual_seed(distance), distance=distance)
    assert (batch.distances[batch.scored] == distance).all()
    rows = torch.arange(32)
    assert batch.is_fact[rows, batch.anchors].all() and batch.scored[rows, batch.anchors + distance].all()
    for row in range(32):
        facts, questions = _decode(TASK, batch, row)
        for t, key, fact_position, value in questions:
            on_distance = t - distance >= 0 and bool(batch.is_fact[row, t - distance])
            assert bool(batch.scored[row, t]) == on_distance  # every question d after a fact, and only those
            if on_distance:
                assert fact_position == t - distance and batch.targets[row, t] == TASK.answer_token(value)
    # some questions are fillers (not scored) when the distance is short enough to leave room
    if distance < 5:
        assert (~batch.is_fact & ~batch.scored).any()


def test_batches_depend_only_on_the_generator():
    a = make_recall_batch(TASK, 4, torch.Generator().manual_seed(7), distance=4)
    b = make_recall_batch(TASK, 4, torch.Generator().manual_seed(7), distance=4)
    c = make_recall_batch(TASK, 4, torch.Generator().manual_seed(8), distance=4)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.tokens, c.tokens)


@pytest.mark.parametrize("distance", [0, TASK.seq_len, 2.5])
def test_bad_distance_is_refused(distance):
    with pytest.raises(ValueError, match="distance"):
        make_recall_batch(TASK, 2, distance=distance)


def _oracle_logits(task, batch, right=None):
    """Logits that put 5 on the right answer (``right`` True) or on the next value (False), per scored
    position, and 9 on a fact token everywhere (not an answer: must be ignored by the accuracy)."""
    logits = torch.zeros(*batch.tokens.shape, task.vocab_size)
    logits[..., 0] = 9.0
    values = (batch.targets - task.answer_ids.start).clamp(min=0)
    shown = values if right is None else torch.where(right, values, (values + 1) % task.n_values)
    logits.scatter_(2, (task.answer_ids.start + shown)[..., None], 5.0)
    return logits


def test_accuracy_counts_only_scored_questions_and_only_answer_tokens():
    batch = make_recall_batch(TASK, 8, torch.Generator().manual_seed(0), distance=3)
    assert accuracy(_oracle_logits(TASK, batch), batch, TASK) == 1.0
    right = torch.zeros_like(batch.scored)
    assert accuracy(_oracle_logits(TASK, batch, right), batch, TASK) == 0.0
    # exactly the first scored question of every row right
    first = batch.scored.long().argmax(dim=1)
    right[torch.arange(8), first] = True
    assert accuracy(_oracle_logits(TASK, batch, right), batch, TASK) == pytest.approx(8 / int(batch.scored.sum()))
    assert predicted_values(_oracle_logits(TASK, batch), TASK).max() < TASK.n_values


def test_accuracy_by_distance_groups_by_the_recorded_distance():
    batch = make_recall_batch(TASK, 8, torch.Generator().manual_seed(1))
    right = batch.distances <= 4
    found = accuracy_by_distance(_oracle_logits(TASK, batch, right), batch, TASK)
    for d, (correct, total) in found.items():
        assert total == int((batch.scored & (batch.distances == d)).sum())
        assert correct == (total if d <= 4 else 0)
    assert sum(total for _, total in found.values()) == int(batch.scored.sum())


def test_recall_loss_ignores_unscored_positions():
    batch = make_recall_batch(TASK, 4, torch.Generator().manual_seed(2), distance=2)
    logits = torch.randn(*batch.tokens.shape, TASK.vocab_size, generator=torch.Generator().manual_seed(0))
    changed = logits.clone()
    changed[~batch.scored] = 100 * torch.randn_like(changed[~batch.scored])
    assert recall_loss(logits, batch).item() == pytest.approx(recall_loss(changed, batch).item())
    scored = torch.nn.functional.cross_entropy(logits[batch.scored], batch.targets[batch.scored])
    assert recall_loss(logits, batch).item() == pytest.approx(scored.item())


def _one_lookup(task, tokens, window=None, sharpness=30.0):
    """A hand-built single attention layer that solves the task: a query's q and a fact's k are the one-hot
    key, a fact's v the one-hot value; returns answer logits ``(B, T, vocab)``."""
    n_pairs = task.n_keys * task.n_values
    is_fact = tokens < n_pairs
    key = torch.where(is_fact, tokens // task.n_values, tokens - n_pairs)
    one_hot_key = torch.nn.functional.one_hot(key, task.n_keys).float()  # (B, T, n_keys)
    q = (~is_fact)[..., None] * one_hot_key * sharpness
    k = is_fact[..., None] * one_hot_key
    v = is_fact[..., None] * torch.nn.functional.one_hot(tokens % task.n_values, task.n_values).float()
    out = scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], causal=True, window=window, scale=1.0)
    logits = torch.zeros(*tokens.shape, task.vocab_size)
    logits[..., task.answer_ids.start:task.answer_ids.stop] = out[:, 0]
    return logits


def test_one_attention_lookup_with_full_causal_attention_solves_every_distance():
    """The task is solvable in principle: one causal attention layer answers every question at every distance."""
    for distance in TASK.distances:
        batch = make_recall_batch(TASK, 16, torch.Generator().manual_seed(distance), distance=distance)
        assert accuracy(_one_lookup(TASK, batch.tokens), batch, TASK) == 1.0
    mixed = make_recall_batch(TASK, 16, torch.Generator().manual_seed(0))
    assert accuracy(_one_lookup(TASK, mixed.tokens), mixed, TASK) == 1.0


def test_the_same_lookup_through_a_window_answers_only_what_the_window_sees():
    window = 4  # sees the fact for distances 1..3
    for distance in range(1, window):
        batch = make_recall_batch(TASK, 16, torch.Generator().manual_seed(distance), distance=distance)
        assert accuracy(_one_lookup(TASK, batch.tokens, window=window), batch, TASK) == 1.0
    batch = make_recall_batch(TASK, 64, torch.Generator().manual_seed(0), distance=window)
    assert accuracy(_one_lookup(TASK, batch.tokens, window=window), batch, TASK) < 0.5


def _model(window=None, n_layers=2, seed=0):
    torch.manual_seed(seed)
    config = TinyGPTConfig(vocab_size=TASK.vocab_size, context_length=TASK.seq_len, d_model=16, n_layers=n_layers,
                           n_heads=2, window=window)
    return TinyGPT(config).eval()


@pytest.mark.parametrize("window,n_layers", [(4, 2), (3, 3), (6, 1)])
def test_a_window_cannot_answer_beyond_its_receptive_field(window, n_layers):
    """Beyond L·(w − 1) tokens the fact cannot change the answer at all (exactly 0), so accuracy there is
    chance whatever the training; at the edge of the receptive field it still can."""
    model = _model(window, n_layers)
    reach = receptive_field(n_layers, window) - 1
    assert fact_influence(model, TASK, reach) > 1e-6
    for distance in range(reach + 1, TASK.seq_len):
        assert fact_influence(model, TASK, distance) == 0.0


def test_full_attention_answer_depends_on_the_fact_at_every_distance():
    model = _model()
    assert all(fact_influence(model, TASK, d) > 1e-6 for d in TASK.distances)


def test_training_curve_evaluation_and_a_progress_bar_that_ends_at_100_percent(capsys):
    task = RecallTask(n_keys=4, n_values=4, seq_len=10, n_facts=4)
    torch.manual_seed(0)
    model = TinyGPT(TinyGPTConfig(vocab_size=task.vocab_size, context_length=task.seq_len, d_model=16, n_layers=1,
                                  n_heads=2))
    result = train_recall(model, task, steps=6, batch_size=4, eval_every=4, eval_batch_size=8)
    assert result.steps == [4, 6] and len(result.train_loss) == len(result.val_loss) == len(result.val_accuracy) == 2
    assert all(0.0 <= a <= 1.0 for a in result.val_accuracy) and result.seconds > 0
    assert "100%" in capsys.readouterr().err
    found = evaluate_recall(model, task, distances=[1, 5, 9], batch_size=8)
    assert sorted(found.accuracy_by_distance) == [1, 5, 9]
    assert all(n >= 8 for n in found.questions_per_distance.values())  # at least one scored question per sequence
    assert found == evaluate_recall(model, task, distances=[1, 5, 9], batch_size=8)  # same questions every call


def test_training_refuses_a_model_too_short_or_too_small_for_the_task():
    task = RecallTask(n_keys=4, n_values=4, seq_len=10, n_facts=4)
    short = TinyGPT(TinyGPTConfig(vocab_size=task.vocab_size, context_length=8, d_model=8, n_layers=1, n_heads=2))
    with pytest.raises(ValueError, match="context_length"):
        train_recall(short, task, steps=1, progress=False)
    small = TinyGPT(TinyGPTConfig(vocab_size=10, context_length=10, d_model=8, n_layers=1, n_heads=2))
    with pytest.raises(ValueError, match="vocab_size"):
        train_recall(small, task, steps=1, progress=False)
