"""Experiments a lecturer can trust: matched parameter counts, several seeds, mean ± sd, and conclusions
whose yardstick is the seed-to-seed spread.

One run trains one variant (a :class:`~attention_lab.model.TinyGPTConfig`) from one seed on one
*objective* — next-token prediction on the corpus (:class:`CorpusObjective`) or associative recall
(:class:`RecallObjective`, :mod:`attention_lab.recall`) — and returns a plain-dict record (learning curve,
final numbers, parameter count). A study runs every (variant, seed, objective), summarises each variant as
mean ± sd over the seeds and states its conclusions from those numbers:

    >>> compare("MQA", [1.25, 1.27, 1.23], "MHA", [1.20, 1.22, 1.21], unit="nats", what="validation loss").sentence
    'validation loss: MQA − MHA = +0.040 ± 0.017 nats over 3 seeds (seed-to-seed spread 0.020): 2.0× the spread — MQA is worse'

The chapters' studies (:data:`STUDIES`: ch04 window vs full, ch05 MHA/GQA/MQA, ch06 uptraining, ch12
MHA/GQA/MLA, ch13 every variant) are defined here with their budgets, so a chapter can run a small one live
(``run_chapter_study("ch05", seeds=[0], variants=["MHA", "MQA"], steps={"corpus": 300, "recall": 600})``)
beside the committed JSON that ``benchmarks/quality_studies.py`` writes with the full budget
(``attention_lab.book.results.load("quality_ch05")``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import torch
from attention_lab.progress import tqdm

from attention_lab.data import TokenDataset
from attention_lab.mla import MLASettings
from attention_lab.model import MHASettings, TinyGPT, TinyGPTConfig
from attention_lab.receptive_field import receptive_field
from attention_lab.recall import RecallTask, evaluate_recall, train_recall
from attention_lab.train import evaluate, train
from attention_lab.uptrain import CONVERSION_METHODS, convert_to_gqa, uptrain, uptrain_steps
from attention_lab.validation import check_positive_int

# ----------------------------------------------------------------------------------------------------------
# Parameter counts, matched through the MLP width
# ----------------------------------------------------------------------------------------------------------


def count_parameters(config: TinyGPTConfig) -> int:
    """Trainable parameters of ``TinyGPT(config)`` (built on the CPU and thrown away; the caller's random
    number generator is left where it was)."""
    with torch.random.fork_rng(devices=[]):
        return TinyGPT(config).num_parameters()


@dataclass(frozen=True)
class ParameterMatch:
    """The result of :func:`match_parameters`."""

    config: TinyGPTConfig  # the variant with its new mlp_hidden
    parameters: int  # its parameter count
    target: int  # the base config's parameter count
    mlp_hidden: int  # the MLP width chosen

    @property
    def relative_difference(self) -> float:
        """``(parameters − target) / target``."""
        return (self.parameters - self.target) / self.target

    def describe(self, name: str = "variant") -> str:
        return (f"{name}: {self.parameters:,} parameters with MLP width {self.mlp_hidden} "
                f"({self.relative_difference:+.2%} against the base's {self.target:,})")


def match_parameters(base: TinyGPTConfig, variant: TinyGPTConfig, tolerance: float = 0.02) -> ParameterMatch:
    """Give ``variant`` the MLP width that brings its parameter count to ``base``'s.

    How: attention variants differ in their attention weights only (MQA/GQA have smaller key/value
    projections, MLA its down- and up-projections, a window none at all). Every block's MLP has
    ``hidden · (2·d_model + 1) + d_model`` parameters (``up``: weight and bias, ``down``: weight, plus
    ``down``'s bias), so the count is linear in the width: each extra hidden unit adds
    ``n_layers · (2·d_model + 1)``. The width is moved by the rounded number of units that makes up the
    difference, which lands within half a unit's worth of the target — ``n_layers · (d_model + ½)``
    parameters, far inside ``tolerance`` (2 %) at the book's sizes. ``base`` keeps its own width.

    Raises ``ValueError`` if the width would have to drop below 1 or the result misses ``tolerance``.
    """
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must lie in (0, 1), got {tolerance}")
    if (variant.d_model, variant.n_layers) != (base.d_model, base.n_layers):
        raise ValueError("match_parameters changes only the MLP width: base and variant must have the same d_model "
                         f"and n_layers, got ({base.d_model}, {base.n_layers}) and ({variant.d_model}, {variant.n_layers})")
    target = count_parameters(base)
    width = 4 * variant.d_model if variant.mlp_hidden is None else variant.mlp_hidden
    per_unit = variant.n_layers * (2 * variant.d_model + 1)
    width += round((target - count_parameters(replace(variant, mlp_hidden=width))) / per_unit)
    if width < 1:
        raise ValueError(f"the variant's attention alone has more parameters than the base ({target:,}); "
                         "no MLP width can match it")
    config = replace(variant, mlp_hidden=width)
    match = ParameterMatch(config, count_parameters(config), target, width)
    if abs(match.relative_difference) > tolerance:
        raise ValueError(f"could not match parameters within {tolerance:.0%}: {match.describe()}")
    return match


# ----------------------------------------------------------------------------------------------------------
# Mean ± sd over seeds, and conclusions measured against the seed-to-seed spread
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanSD:
    """Mean and sample standard deviation (n − 1 in the denominator) of ``n`` numbers, one per seed."""

    mean: float
    sd: float
    n: int

    def format(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "sd": self.sd, "n": self.n}


def mean_sd(values: Iterable[float]) -> MeanSD:
    """Mean ± sample sd of ``values``; one value has sd 0.0 (no spread can be measured from it)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_sd needs at least one value")
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return MeanSD(statistics.fmean(values), sd, len(values))


RESOLVED_RATIO = 2.0  # a difference counts when it is at least twice the seed-to-seed spread


@dataclass(frozen=True)
class Comparison:
    """Variant ``a`` against variant ``b`` on one metric, seed by seed (see :func:`compare`)."""

    a: str
    b: str
    difference: MeanSD  # of the per-seed differences a_s − b_s
    spread: float  # the seed-to-seed yardstick: the larger of a's and b's sd over seeds
    unit: str
    higher_is_better: bool
    digits: int = 3
    what: str = ""  # the metric's name, printed first ("validation loss: …")

    @property
    def ratio(self) -> float:
        """``|mean difference| / spread`` (inf when the spread is 0 and the difference is not)."""
        if self.spread == 0.0:
            return 0.0 if self.difference.mean == 0.0 else math.inf
        return abs(self.difference.mean) / self.spread

    @property
    def resolved(self) -> bool:
        """Whether the difference is at least :data:`RESOLVED_RATIO` (2) times the seed-to-seed spread."""
        return self.ratio >= RESOLVED_RATIO - 1e-9

    @property
    def hint(self) -> bool:
        """Larger than the spread but under :data:`RESOLVED_RATIO` times it: a hint, not a result, at these seeds."""
        return 1.0 < self.ratio and not self.resolved

    @property
    def sentence(self) -> str:
        """E.g. ``"validation loss: MQA − MHA = +0.045 ± 0.020 nats over 3 seeds (seed-to-seed spread 0.018):
        2.5× the spread — MQA is worse"``; or ``"…: within the spread — no difference at this budget"``."""
        d, k = self.difference, self.digits
        unit = f" {self.unit}" if self.unit else ""
        head = (f"{self.what + ': ' if self.what else ''}{self.a} − {self.b} = {d.mean:+.{k}f} ± {d.sd:.{k}f}{unit} "
                f"over {d.n} seeds (seed-to-seed spread {self.spread:.{k}f})")
        if self.ratio <= 1.0:
            return f"{head}: within the spread — no difference at this budget"
        better = "better" if (d.mean > 0) == self.higher_is_better else "worse"
        ratio = "more than 100×" if self.ratio > 100 else f"{self.ratio:.1f}×"
        if self.hint:
            return f"{head}: {ratio} the spread — a hint that {self.a} is {better}, not resolved over {d.n} seeds"
        return f"{head}: {ratio} the spread — {self.a} is {better}"

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "difference": self.difference.to_dict(), "spread": self.spread,
                "ratio": self.ratio if math.isfinite(self.ratio) else None, "resolved": self.resolved, "hint": self.hint,
                "unit": self.unit, "higher_is_better": self.higher_is_better, "what": self.what,
                "sentence": self.sentence}


def compare(a: str, values_a: Sequence[float], b: str, values_b: Sequence[float], unit: str = "nats",
            higher_is_better: bool = False, digits: int = 3, what: str = "") -> Comparison:
    """Compare two variants measured with the same seeds (``values_a[i]`` and ``values_b[i]`` share seed i).

    The difference is the mean ± sd of the per-seed differences; the yardstick is the seed-to-seed
    spread, the larger of the two variants' sd over seeds. The difference counts (:attr:`Comparison.resolved`)
    when it is at least twice that spread; between one and two spreads it is only a hint. Needs at least 2 seeds.
    """
    if len(values_a) != len(values_b):
        raise ValueError(f"values_a and values_b must hold one number per seed each, got {len(values_a)} and {len(values_b)}")
    if len(values_a) < 2:
        raise ValueError("a conclusion needs at least 2 seeds: one run has no seed-to-seed spread to compare with")
    difference = mean_sd(x - y for x, y in zip(values_a, values_b))
    spread = max(mean_sd(values_a).sd, mean_sd(values_b).sd)
    return Comparison(a, b, difference, spread, unit, higher_is_better, digits, what)


# ----------------------------------------------------------------------------------------------------------
# Objectives: what a run trains on and how it is scored
# ----------------------------------------------------------------------------------------------------------


class _StepCountingData:
    """A :class:`TokenDataset` that advances a progress bar at every training batch drawn from it, so
    :func:`attention_lab.train.train` (run with ``progress=False``) moves an outer, kept bar step by step."""

    def __init__(self, data: TokenDataset, bar: tqdm | None) -> None:
        self.data, self.bar = data, bar
        self.context_length = data.context_length

    def batch(self, split: str, *args, **kwargs):
        if split == "train" and self.bar is not None:
            self.bar.update(1)
        return self.data.batch(split, *args, **kwargs)


@dataclass
class CorpusObjective:
    """Next-token prediction on a corpus; scored by validation cross-entropy (nats per token, lower is better)."""

    data: TokenDataset
    tokenizer_name: str = ""
    batch_size: int = 32
    lr: float = 3e-3
    eval_every: int = 100
    final_eval_batches: int = 16  # batches of batch_size windows for the final validation loss
    name: str = "corpus"
    metric: str = "val_loss"
    higher_is_better: bool = False
    unit: str = "nats"

    def model_config(self, config: TinyGPTConfig, vocab_size: int) -> TinyGPTConfig:
        return replace(config, vocab_size=vocab_size, context_length=self.data.context_length)

    def train(self, model: TinyGPT, steps: int, seed: int, bar: tqdm | None = None) -> dict:
        result = train(model, _StepCountingData(self.data, bar), steps, batch_size=self.batch_size, lr=self.lr,
                       eval_every=min(self.eval_every, steps), seed=seed, progress=False)
        return {"steps": result.steps, "train_loss": result.train_loss, "val_loss": result.val_loss,
                "seconds": result.seconds}

    def evaluate(self, model: TinyGPT) -> dict:
        return {"val_loss": evaluate(model, self.data, batches=self.final_eval_batches, batch_size=self.batch_size)}

    def describe(self) -> dict:
        return {"name": self.name, "tokenizer": self.tokenizer_name, "context_length": self.data.context_length,
                "train_tokens": len(self.data.train_ids), "val_tokens": len(self.data.val_ids),
                "batch_size": self.batch_size, "lr": self.lr, "eval_every": self.eval_every,
                "final_eval_batches": self.final_eval_batches, "metric": self.metric}


@dataclass
class RecallObjective:
    """Associative recall (:mod:`attention_lab.recall`); scored by accuracy (higher is better), overall on
    the training mix of distances and per distance."""

    task: RecallTask = field(default_factory=RecallTask)
    batch_size: int = 32
    lr: float = 3e-3
    eval_every: int = 50
    eval_batch_size: int = 128
    distances: list[int] | None = None  # None = every distance 1 … seq_len − 1
    name: str = "recall"
    metric: str = "accuracy"
    higher_is_better: bool = True
    unit: str = ""

    def model_config(self, config: TinyGPTConfig, vocab_size: int | None = None) -> TinyGPTConfig:
        return replace(config, vocab_size=self.task.vocab_size, context_length=self.task.seq_len)

    def train(self, model: TinyGPT, steps: int, seed: int, bar: tqdm | None = None) -> dict:
        result = train_recall(model, self.task, steps, batch_size=self.batch_size, lr=self.lr,
                              eval_every=min(self.eval_every, steps), seed=seed, progress=bar if bar is not None else False,
                              eval_batch_size=self.eval_batch_size)
        return {"steps": result.steps, "train_loss": result.train_loss, "val_loss": result.val_loss,
                "val_accuracy": result.val_accuracy, "seconds": result.seconds}

    def evaluate(self, model: TinyGPT) -> dict:
        found = evaluate_recall(model, self.task, self.distances, batch_size=self.eval_batch_size)
        distances = sorted(found.accuracy_by_distance)
        return {"accuracy": found.accuracy, "loss": found.loss, "distances": distances,
                "accuracy_by_distance": [found.accuracy_by_distance[d] for d in distances],
                "questions_per_distance": [found.questions_per_distance[d] for d in distances]}

    def describe(self) -> dict:
        return {"name": self.name, "task": self.task.to_dict(), "batch_size": self.batch_size, "lr": self.lr,
                "eval_every": self.eval_every, "eval_batch_size": self.eval_batch_size,
                "distances": self.distances or self.task.distances, "metric": self.metric}


Objective = CorpusObjective | RecallObjective

# ----------------------------------------------------------------------------------------------------------
# One run, one study
# ----------------------------------------------------------------------------------------------------------


def config_to_dict(config: TinyGPTConfig) -> dict:
    """A JSON-ready dict of ``config`` (its settings as a dict; ``TinyGPTConfig(**d)`` rebuilds it)."""
    return dataclasses.asdict(config)


def run_variant(name: str, config: TinyGPTConfig, objective: Objective, steps: int, seed: int,
                device: torch.device | str = "cpu", bar: tqdm | None = None) -> dict:
    """Train ``TinyGPT(config)`` from ``seed`` for ``steps`` steps on ``objective``; return its record.

    ``config`` must already fit the objective (``objective.model_config``). The seed fixes both the
    initial weights and the order of the training batches. The record (a JSON-ready dict) holds
    ``variant, seed, objective, steps, parameters, mlp_hidden, curve`` (the learning curve: ``steps``,
    ``train_loss``, ``val_loss`` and, for recall, ``val_accuracy``), ``final`` (the objective's numbers)
    and ``seconds``.
    """
    started = time.perf_counter()
    model, curve = train_variant(config, objective, steps, seed, device, bar)
    final = objective.evaluate(model)
    if "val_accuracy" in curve:
        final["steps_to_90"] = steps_to_accuracy(curve, 0.9)
    return {"variant": name, "seed": seed, "objective": objective.name, "steps": steps,
            "parameters": model.num_parameters(),
            "mlp_hidden": 4 * config.d_model if config.mlp_hidden is None else config.mlp_hidden,
            "curve": curve, "final": final, "seconds": time.perf_counter() - started}


def steps_to_accuracy(curve: dict, threshold: float = 0.9) -> int | None:
    """The first recorded step of a recall learning curve at which the held-out accuracy reached
    ``threshold``; None if it never did (how fast a variant learns to look things up)."""
    return next((step for step, acc in zip(curve["steps"], curve["val_accuracy"]) if acc >= threshold), None)


def prepare_variants(variants: dict[str, TinyGPTConfig], objective: Objective, vocab_size: int | None = None,
                     baseline: str | None = None, match: bool = True, tolerance: float = 0.02) -> dict[str, dict]:
    """Each variant fitted to ``objective`` and, with ``match``, given the baseline's parameter count
    (:func:`match_parameters`; the baseline is the first variant unless named). Returns
    ``{name: {"config": TinyGPTConfig, "parameters", "mlp_hidden", "relative_difference"}}``."""
    fitted = {name: objective.model_config(config, vocab_size) for name, config in variants.items()}
    baseline = next(iter(fitted)) if baseline is None else baseline
    out = {}
    for name, config in fitted.items():
        if match and name != baseline:
            found = match_parameters(fitted[baseline], config, tolerance)
            config, relative = found.config, found.relative_difference
        else:
            relative = count_parameters(config) / count_parameters(fitted[baseline]) - 1
        out[name] = {"config": config, "parameters": count_parameters(config),
                     "mlp_hidden": 4 * config.d_model if config.mlp_hidden is None else config.mlp_hidden,
                     "relative_difference": relative}
    return out


def run_study(variants: dict[str, TinyGPTConfig], objectives: Sequence[Objective], steps: dict[str, int],
              seeds: Sequence[int], vocab_size: int | None = None, baseline: str | None = None, match: bool = True,
              device: torch.device | str = "cpu", progress: bool = True, desc: str = "study") -> dict:
    """Every (objective, variant, seed): train, evaluate, record; then summaries and conclusions.

    ``steps[objective.name]`` is that objective's budget; ``vocab_size`` is the corpus tokenizer's (the
    recall task brings its own). One kept progress bar counts every training step of the study and ends
    at 100 %. Returns a JSON-ready dict: ``seeds, steps, baseline, objectives`` (their settings),
    ``variants`` (per objective: config, parameters, MLP width), ``runs`` (the records of
    :func:`run_variant`), ``summary`` (:func:`summarize`) and ``conclusions`` (:func:`study_conclusions`).
    """
    seeds = list(seeds)
    baseline = next(iter(variants)) if baseline is None else baseline
    prepared = {objective.name: prepare_variants(variants, objective, vocab_size, baseline, match)
                for objective in objectives}
    total = sum(steps[o.name] for o in objectives) * len(variants) * len(seeds)
    bar = tqdm(total=total, desc=desc, unit="step", leave=True, disable=not progress)
    runs = []
    for objective in objectives:
        for name, entry in prepared[objective.name].items():
            for seed in seeds:
                bar.set_description(f"{desc}: {objective.name}, {name}, seed {seed}")
                runs.append(run_variant(name, entry["config"], objective, steps[objective.name], seed, device, bar))
    bar.set_description(desc)
    bar.close()
    report = {
        "seeds": seeds, "steps": dict(steps), "baseline": baseline, "parameters_matched": match,
        "objectives": {o.name: o.describe() for o in objectives},
        "variants": {o: {name: {**{k: v for k, v in entry.items() if k != "config"},
                                "config": config_to_dict(entry["config"])} for name, entry in by_name.items()}
                     for o, by_name in prepared.items()},
        "runs": runs,
    }
    report["summary"] = summarize(report)
    report["conclusions"] = study_conclusions(report)
    report["window_recall"] = window_recall_summaries(report)
    return report


def window_recall_summaries(report: dict) -> dict:
    """:func:`window_recall_summary` of every windowed variant that ran on recall (``{}`` if none)."""
    if "recall" not in report["objectives"]:
        return {}
    return {variant: window_recall_summary(report, variant) for variant, entry in report["variants"]["recall"].items()
            if entry["config"]["window"] is not None}


def _runs(report: dict, objective: str, variant: str) -> list[dict]:
    """The runs of ``variant`` on ``objective``, in the report's seed order."""
    by_seed = {r["seed"]: r for r in report["runs"] if r["objective"] == objective and r["variant"] == variant}
    return [by_seed[s] for s in report["seeds"] if s in by_seed]


def variant_names(report: dict, objective: str) -> list[str]:
    """The variants of ``report`` that ran on ``objective``, in study order."""
    return list(report["variants"][objective])


def metric_values(report: dict, objective: str, variant: str, metric: str | None = None) -> list[float]:
    """The final ``metric`` of ``variant`` on ``objective``, one number per seed (in ``report["seeds"]`` order)."""
    metric = report["objectives"][objective]["metric"] if metric is None else metric
    return [r["final"][metric] for r in _runs(report, objective, variant)]


def summarize(report: dict) -> dict:
    """``{objective: {variant: {metric: {mean, sd, n}, ...}}}`` over the seeds of ``report["runs"]``; recall
    variants also get ``accuracy_by_distance``: ``{"distances", "mean", "sd"}`` (lists, one entry per distance)."""
    out: dict = {}
    for objective in report["objectives"]:
        out[objective] = {}
        for variant in variant_names(report, objective):
            runs = _runs(report, objective, variant)
            entry = {}
            for metric in ("val_loss", "accuracy", "loss"):
                if runs and metric in runs[0]["final"]:
                    entry[metric] = mean_sd(r["final"][metric] for r in runs).to_dict()
            if runs and "steps_to_90" in runs[0]["final"]:
                reached = [r["final"]["steps_to_90"] for r in runs if r["final"]["steps_to_90"] is not None]
                entry["steps_to_90"] = {**(mean_sd(reached).to_dict() if reached else {"mean": None, "sd": None, "n": 0}),
                                        "reached": len(reached), "of": len(runs)}
            if runs and "accuracy_by_distance" in runs[0]["final"]:
                columns = [mean_sd(values) for values in zip(*(r["final"]["accuracy_by_distance"] for r in runs))]
                entry["accuracy_by_distance"] = {"distances": runs[0]["final"]["distances"],
                                                 "mean": [c.mean for c in columns], "sd": [c.sd for c in columns]}
            entry["parameters"] = report["variants"][objective][variant]["parameters"]
            out[objective][variant] = entry
    return out


METRIC_NAMES = {"val_loss": "validation loss", "accuracy": "recall accuracy",
                "steps_to_90": "steps to 90 % recall accuracy"}


def study_conclusions(report: dict) -> list[dict]:
    """Every variant against the baseline on each objective's metric (:func:`compare`), as dicts with a
    ``sentence``; empty with fewer than 2 seeds."""
    if len(report["seeds"]) < 2:
        return []
    out = []
    for objective, settings in report["objectives"].items():
        baseline = report["baseline"]
        higher = settings["metric"] == "accuracy"
        for variant in variant_names(report, objective):
            if variant == baseline:
                continue
            found = compare(variant, metric_values(report, objective, variant), baseline,
                            metric_values(report, objective, baseline), unit="" if higher else "nats",
                            higher_is_better=higher, what=METRIC_NAMES[settings["metric"]])
            out.append({"objective": objective, "metric": settings["metric"], **found.to_dict()})
            if objective == "recall":
                a = metric_values(report, objective, variant, "steps_to_90")
                b = metric_values(report, objective, baseline, "steps_to_90")
                if None not in a + b:  # both learned the lookup on every seed: compare how fast
                    found = compare(variant, a, baseline, b, unit="steps", higher_is_better=False, digits=0,
                                    what=METRIC_NAMES["steps_to_90"])
                    out.append({"objective": objective, "metric": "steps_to_90", **found.to_dict()})
    return out


def ordering_by_step(report: dict, objective: str, curve_metric: str | None = None,
                     variants: Sequence[str] | None = None) -> tuple[list[int], list[list[str]]]:
    """At every recorded step of the learning curves: the variants sorted best first by their mean over seeds.

    ``curve_metric`` defaults to ``val_loss`` for the corpus and ``val_accuracy`` for recall. Returns
    ``(steps, orderings)``.
    """
    curve_metric = curve_metric or ("val_accuracy" if objective == "recall" else "val_loss")
    higher = curve_metric == "val_accuracy"
    variants = list(variants or variant_names(report, objective))
    curves = {v: [r["curve"][curve_metric] for r in _runs(report, objective, v)] for v in variants}
    steps = _runs(report, objective, variants[0])[0]["curve"]["steps"]
    orderings = []
    for i in range(len(steps)):
        means = {v: statistics.fmean(c[i] for c in curves[v]) for v in variants}
        orderings.append(sorted(variants, key=lambda v: -means[v] if higher else means[v]))
    return steps, orderings


def stable_since(report: dict, objective: str, curve_metric: str | None = None,
                 variants: Sequence[str] | None = None) -> int:
    """The first recorded step from which the ordering of :func:`ordering_by_step` no longer changes."""
    steps, orderings = ordering_by_step(report, objective, curve_metric, variants)
    since = steps[-1]
    for step, order in zip(reversed(steps), reversed(orderings)):
        if order != orderings[-1]:
            break
        since = step
    return since


def window_recall_summary(report: dict, variant: str, objective: str = "recall") -> dict:
    """What a windowed variant can recall, by zone of distance (means over distances, then over seeds).

    Zones for window ``w`` and ``L`` layers: ``one hop`` (d ≤ w − 1: the question's own attention sees the
    fact), ``relayed`` (w ≤ d ≤ L·(w − 1): reachable only through a chain of layers) and ``out of reach``
    (d > L·(w − 1): outside the receptive field, the answer cannot depend on the fact). Returns
    ``{"window", "n_layers", "receptive_field", "chance", "zones": {zone: {"distances": [lo, hi], mean, sd, n}}, "sentence"}``.
    """
    config = report["variants"][objective][variant]["config"]
    window, layers = config["window"], config["n_layers"]
    if window is None:
        raise ValueError(f"variant {variant!r} has no window")
    reach = receptive_field(layers, window) - 1  # the furthest distance that can still matter
    zones = {"one hop": (1, window - 1), "relayed": (window, reach), "out of reach": (reach + 1, math.inf)}
    runs = _runs(report, objective, variant)
    distances = runs[0]["final"]["distances"]
    chance = report["objectives"][objective]["task"]["chance"]
    out = {"window": window, "n_layers": layers, "receptive_field": reach + 1, "chance": chance, "zones": {}}
    for zone, (lo, hi) in zones.items():
        picked = [i for i, d in enumerate(distances) if lo <= d <= hi]
        if picked:
            per_seed = [statistics.fmean(r["final"]["accuracy_by_distance"][i] for i in picked) for r in runs]
            out["zones"][zone] = {"distances": [distances[picked[0]], distances[picked[-1]]],
                                  **mean_sd(per_seed).to_dict()}
    parts = [f"{zone} (d {z['distances'][0]}–{z['distances'][1]}) {z['mean']:.2f} ± {z['sd']:.2f}"
             for zone, z in out["zones"].items()]
    out["sentence"] = (f"{variant} (window {window}, {layers} layers: receptive field {reach + 1} tokens), recall "
                       f"accuracy over {len(runs)} seeds: " + ", ".join(parts) + f"; chance {chance:.2f}")
    return out


# ----------------------------------------------------------------------------------------------------------
# Chapter 06: uptraining, with seeds, an α sweep and from-scratch baselines at equal total steps
# ----------------------------------------------------------------------------------------------------------


UPTRAINING_PARTS = ("uptrained", "scratch")  # what uptraining_study(parts=...) can run apart


def uptraining_study(base: TinyGPTConfig, objective: CorpusObjective, base_steps: int, seeds: Sequence[int],
                     groups: Sequence[int] = (1, 2), methods: Sequence[str] = CONVERSION_METHODS,
                     alphas: Sequence[float] = (0.0, 0.05, 0.1, 0.25, 0.5), uptrain_lr: float = 1e-3,
                     device: torch.device | str = "cpu", progress: bool = True, desc: str = "uptraining",
                     parts: Sequence[str] = UPTRAINING_PARTS) -> dict:
    """The GQA paper's recipe on TinyGPT, once per seed.

    Per seed: an MHA checkpoint trained ``base_steps`` steps (``base``; its learning curve is kept); for
    every G in ``groups`` and conversion ``method``, the converted model's validation loss at α = 0 and
    after uptraining α · ``base_steps`` more steps (:func:`attention_lab.uptrain.uptrain`, learning rate
    ``uptrain_lr``) for each α > 0; the MHA checkpoint trained the same extra steps ("MHA + α"); and a
    G-kv-head model trained **from scratch** for ``base_steps + α · base_steps`` steps — the same total as
    the uptrained one (α = 0: the same steps as the checkpoint).

    ``parts`` runs a subset: ``"uptrained"`` (the checkpoint, MHA + α and the conversions) and/or
    ``"scratch"`` (the from-scratch models, which need no checkpoint), so one seed can be split over two
    processes and put back together by :func:`merge_reports`.

    Returns a JSON-ready dict: ``rows`` (one per seed, kind, G, method, α: ``val_loss``, ``total_steps``,
    ``parameters``; kind is ``"mha"``, ``"uptrained"`` or ``"scratch"``), ``base_curves``, ``summary``
    (:func:`summarize_uptraining`) and ``conclusions`` (:func:`uptraining_conclusions`).
    """
    if not parts or not set(parts) <= set(UPTRAINING_PARTS) or len(parts) != len(set(parts)):
        raise ValueError(f"parts must be a non-empty subset of {UPTRAINING_PARTS}, got {tuple(parts)}")
    seeds, alphas, parts = list(seeds), sorted(alphas), [p for p in UPTRAINING_PARTS if p in parts]
    if any(not 0.0 <= a <= 1.0 for a in alphas) or 0.0 not in alphas:
        raise ValueError(f"alphas must lie in [0, 1] and include 0 (the converted model before training), got {alphas}")
    for method in methods:
        if method not in CONVERSION_METHODS:
            raise ValueError(f"methods must be among {CONVERSION_METHODS}, got {method!r}")
    config = objective.model_config(base, base.vocab_size)
    extra = {a: uptrain_steps(base_steps, a) if a > 0 else 0 for a in alphas}
    per_seed = (("uptrained" in parts) * (base_steps + sum(extra.values()) * (1 + len(groups) * len(methods)))
                + ("scratch" in parts) * len(groups) * sum(base_steps + e for e in extra.values()))
    bar = tqdm(total=per_seed * len(seeds), desc=desc, unit="step", leave=True, disable=not progress)
    counted = _StepCountingData(objective.data, bar)
    rows, base_curves = [], []

    def record(seed: int, kind: str, n_groups: int, method: str | None, alpha: float, model: TinyGPT) -> None:
        rows.append({"seed": seed, "kind": kind, "n_groups": n_groups, "method": method, "alpha": alpha,
                     "total_steps": base_steps + extra[alpha], "parameters": model.num_parameters(),
                     "val_loss": objective.evaluate(model)["val_loss"]})

    def continue_training(model: TinyGPT, alpha: float, seed: int) -> TinyGPT:
        model = copy.deepcopy(model)
        uptrain(model, counted, base_steps, alpha, batch_size=objective.batch_size, lr=uptrain_lr, seed=seed + 1)
        return model

    for seed in seeds:
        if "uptrained" in parts:
            bar.set_description(f"{desc}: MHA checkpoint, seed {seed}")
            mha, curve = train_variant(config, objective, base_steps, seed, device, bar)
            base_curves.append({"seed": seed, **curve})
            bar.set_description(f"{desc}: MHA + α, seed {seed}")
            for alpha in alphas:
                record(seed, "mha", config.n_heads, None, alpha, mha if alpha == 0 else continue_training(mha, alpha, seed))
        for n_groups in groups:
            for method in (methods if "uptrained" in parts else ()):
                bar.set_description(f"{desc}: G={n_groups} {method}, seed {seed}")
                converted = convert_to_gqa(mha, n_groups, method, seed=seed)
                for alpha in alphas:
                    model = converted if alpha == 0 else continue_training(converted, alpha, seed)
                    record(seed, "uptrained", n_groups, method, alpha, model)
            for alpha in (alphas if "scratch" in parts else ()):
                bar.set_description(f"{desc}: G={n_groups} from scratch, {base_steps + extra[alpha]} steps, seed {seed}")
                scratch, _ = train_variant(replace(config, n_kv_heads=n_groups), objective, base_steps + extra[alpha],
                                           seed, device, bar)
                record(seed, "scratch", n_groups, None, alpha, scratch)
    bar.set_description(desc)
    bar.close()
    report = {"seeds": seeds, "parts": parts, "base_steps": base_steps, "groups": list(groups), "methods": list(methods),
              "alphas": alphas, "uptrain_steps": {str(a): extra[a] for a in alphas}, "uptrain_lr": uptrain_lr,
              "objectives": {objective.name: objective.describe()}, "config": config_to_dict(config),
              "base_curves": base_curves, "rows": rows}
    complete = len(parts) == len(UPTRAINING_PARTS)
    report["summary"] = summarize_uptraining(report)
    report["conclusions"] = uptraining_conclusions(report) if complete else []
    return report


def kv_variant_name(n_kv_heads: int, n_heads: int) -> str:
    """``"MQA"`` for one kv head, ``"MHA"`` for ``n_heads``, else ``"GQA-<n_kv_heads>"``."""
    return "MQA" if n_kv_heads == 1 else "MHA" if n_kv_heads == n_heads else f"GQA-{n_kv_heads}"


def uptraining_values(report: dict, kind: str, n_groups: int, method: str | None, alpha: float) -> list[float]:
    """Validation losses of one cell of :func:`uptraining_study`, one per seed (in ``report["seeds"]`` order)."""
    by_seed = {r["seed"]: r["val_loss"] for r in report["rows"]
               if (r["kind"], r["n_groups"], r["method"], r["alpha"]) == (kind, n_groups, method, alpha)}
    return [by_seed[s] for s in report["seeds"] if s in by_seed]


def summarize_uptraining(report: dict) -> list[dict]:
    """One entry per (kind, G, method, α): ``{kind, n_groups, method, alpha, total_steps, val_loss: {mean, sd, n}}``."""
    cells = []
    for r in report["rows"]:
        cell = (r["kind"], r["n_groups"], r["method"], r["alpha"])
        if cell not in [c[:4] for c in cells]:
            cells.append((*cell, r["total_steps"]))
    return [{"kind": kind, "n_groups": g, "method": method, "alpha": alpha, "total_steps": total,
             "val_loss": mean_sd(uptraining_values(report, kind, g, method, alpha)).to_dict()}
            for kind, g, method, alpha, total in cells]


def uptraining_cells(report: dict) -> dict[tuple, dict]:
    """The entries of ``report["summary"]`` (:func:`summarize_uptraining`) by cell: ``{(kind, n_groups, method,
    alpha): entry}``, e.g. ``uptraining_cells(report)[("scratch", 1, None, 0.5)]["val_loss"]["mean"]``."""
    return {(c["kind"], c["n_groups"], c["method"], c["alpha"]): c for c in report["summary"]}


def uptraining_conclusions(report: dict) -> list[dict]:
    """For every G and α: mean-pooled uptraining against (a) training from scratch for the same total
    steps, (b) every other conversion method, (c) the MHA checkpoint trained the same extra steps. Each is a
    :func:`compare` dict with ``topic``, ``n_groups`` and ``alpha`` added; empty with fewer than 2 seeds or
    without the ``"mean"`` method."""
    if len(report["seeds"]) < 2 or "mean" not in report["methods"]:
        return []
    out = []
    heads, n = report["config"]["n_heads"], report["base_steps"]
    for n_groups in report["groups"]:
        kind = kv_variant_name(n_groups, heads)
        for alpha in report["alphas"]:
            extra = report["uptrain_steps"][str(alpha)]
            mean = uptraining_values(report, "uptrained", n_groups, "mean", alpha)
            label = f"{kind} (mean, +{extra} steps)"
            against = [("uptrained vs scratch", f"{kind} from scratch ({n + extra} steps)",
                        uptraining_values(report, "scratch", n_groups, None, alpha))]
            against += [("conversion method", f"{kind} ({other}, +{extra} steps)",
                         uptraining_values(report, "uptrained", n_groups, other, alpha))
                        for other in report["methods"] if other != "mean"]
            against.append(("against MHA", f"MHA (+{extra} steps)", uptraining_values(report, "mha", heads, None, alpha)))
            for topic, other_label, other in against:
                found = compare(label, mean, other_label, other, unit="nats", what="validation loss")
                out.append({"topic": topic, "n_groups": n_groups, "alpha": alpha, **found.to_dict()})
    return out


# ----------------------------------------------------------------------------------------------------------
# Shared training helper
# ----------------------------------------------------------------------------------------------------------


def train_variant(config: TinyGPTConfig, objective: Objective, steps: int, seed: int,
                  device: torch.device | str = "cpu", bar: tqdm | None = None) -> tuple[TinyGPT, dict]:
    """``TinyGPT(config)`` initialised from ``seed`` and trained ``steps`` steps on ``objective``
    (batches in the order ``seed`` fixes); returns the model and its learning curve."""
    check_positive_int("steps", steps)
    torch.manual_seed(seed)
    model = TinyGPT(config).to(device)
    curve = objective.train(model, steps, seed, bar)
    return model, curve


# ----------------------------------------------------------------------------------------------------------
# The chapters' studies: variants, budgets, and the run that writes attention_lab/results/quality_chNN.json
# ----------------------------------------------------------------------------------------------------------

ROPE = MHASettings(rope=True)


@dataclass(frozen=True)
class StudySpec:
    """One chapter's study: what is compared, at which budget, and a tiny ``smoke`` version of it."""

    name: str  # "ch04", …: also the results file quality_<name>.json
    title: str
    model: dict  # TinyGPTConfig fields shared by every variant (vocab_size comes from the objective)
    variants: dict[str, dict]  # variant name -> TinyGPTConfig overrides (the first is the baseline)
    objectives: tuple[str, ...] = ("corpus", "recall")
    steps: dict[str, int] = field(default_factory=lambda: {"corpus": 2000, "recall": 1500})
    seeds: tuple[int, ...] = (0, 1, 2)
    match_parameters: bool = True
    uptraining: dict | None = None  # chapter 06: the arguments of uptraining_study besides the model


_BOOK_MODEL = dict(context_length=64, d_model=64, n_layers=2, backend="torch")  # the chapters' TinyGPT
RECALL_TASK = RecallTask(n_keys=16, n_values=16, seq_len=32, n_facts=12)  # the studies' recall task
RECALL_BATCH, CORPUS_BATCH = 32, 32

STUDIES: dict[str, StudySpec] = {
    "ch04": StudySpec(
        "ch04", "What a sliding window costs: full attention against windows of 16, 8 and 4 keys",
        {**_BOOK_MODEL, "n_heads": 4},
        {"full": {}, "window 16": {"window": 16}, "window 8": {"window": 8}, "window 4": {"window": 4}},
        match_parameters=False),  # a window adds and removes no weight
    "ch05": StudySpec(
        "ch05", "What sharing key/value heads costs: MHA, GQA-4, GQA-2 and MQA at one parameter count",
        {**_BOOK_MODEL, "n_heads": 8},
        {"MHA": {}, "GQA-4": {"n_kv_heads": 4}, "GQA-2": {"n_kv_heads": 2}, "MQA": {"n_kv_heads": 1}}),
    "ch06": StudySpec(
        "ch06", "Uptraining an MHA checkpoint to GQA/MQA: conversions, an α sweep, and from scratch at equal steps",
        {**_BOOK_MODEL, "n_heads": 8}, {"MHA": {}}, objectives=("corpus",), steps={"corpus": 2000},
        match_parameters=False,
        uptraining=dict(groups=(1, 2), methods=CONVERSION_METHODS, alphas=(0.0, 0.05, 0.1, 0.25, 0.5),
                        parts=UPTRAINING_PARTS)),
    "ch12": StudySpec(
        "ch12", "Compressing against sharing: MHA, GQA-2, MQA and MLA at several latent ranks, one parameter count",
        {**_BOOK_MODEL, "n_heads": 4, "settings": ROPE},
        {"MHA": {}, "GQA-2": {"n_kv_heads": 2}, "MQA": {"n_kv_heads": 1},
         **{f"MLA d_c={rank}": {"attention": "mla", "settings": MLASettings(kv_latent_dim=rank, rope_dim=16)}
            for rank in (48, 16, 8, 4, 2)}}),
    "ch13": StudySpec(
        "ch13", "Every variant on one budget, RoPE for all, parameters matched: corpus loss and recall",
        {**_BOOK_MODEL, "n_heads": 8, "settings": ROPE},
        {"MHA": {}, "GQA-4": {"n_kv_heads": 4}, "GQA-2": {"n_kv_heads": 2}, "MQA": {"n_kv_heads": 1},
         "MLA": {"attention": "mla", "settings": MLASettings()},  # d_c = 4·d_h, decoupled RoPE of d_h / 2
         "window 8": {"window": 8}}),
}

# The smoke version of every study: the same variants and code paths on a model and budget small enough
# for a test (seconds, not minutes). Its numbers mean nothing.
SMOKE_MODEL = dict(context_length=16, d_model=16, n_layers=2, backend="torch")
SMOKE_RECALL_TASK = RecallTask(n_keys=4, n_values=4, seq_len=12, n_facts=4)
SMOKE_STEPS = 3


def smoke_spec(spec: StudySpec) -> StudySpec:
    """``spec`` on :data:`SMOKE_MODEL` (its head count and settings kept), 3 steps per run, 3 seeds."""
    model = {**spec.model, **SMOKE_MODEL}
    variants = {}
    for name, overrides in spec.variants.items():
        overrides = dict(overrides)
        if isinstance(overrides.get("settings"), MLASettings):
            head_dim = model["d_model"] // model["n_heads"]
            rank = overrides["settings"].kv_latent_dim
            overrides["settings"] = MLASettings(kv_latent_dim=None if rank is None else max(1, rank // 4),
                                                rope_dim=2 * max(1, head_dim // 4))
        if overrides.get("window") is not None:
            overrides["window"] = max(2, overrides["window"] // 4)
        variants[name] = overrides
    uptraining = None if spec.uptraining is None else {**spec.uptraining, "alphas": (0.0, 0.5)}
    return replace(spec, model=model, variants=variants, steps={k: SMOKE_STEPS for k in spec.steps},
                   uptraining=uptraining)


def environment(device: torch.device | str = "cpu") -> dict:
    """Machine, versions and threads, recorded in every results file."""
    import numpy

    import attention_lab

    device = torch.device(device)
    info = {"device": str(device), "threads": torch.get_num_threads(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "system": platform.platform(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "attention_lab": attention_lab.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def make_objectives(spec: StudySpec, smoke: bool = False, tokenizer: str = "auto",
                    corpus: str = "synthetic") -> tuple[list[Objective], int | None]:
    """The study's objectives (the corpus read, tokenized and split at the model's context length) and
    the tokenizer's vocabulary size (None without a corpus objective)."""
    from attention_lab.data import get_tokenizer, load_corpus, synthetic_corpus

    objectives: list[Objective] = []
    vocab_size = None
    for name in spec.objectives:
        if name == "corpus":
            text = synthetic_corpus(n_stories=60) if smoke else load_corpus(corpus)
            tok = get_tokenizer(text, kind=tokenizer, verbose=False)
            data = TokenDataset.from_text(text, tok, spec.model["context_length"])
            objectives.append(CorpusObjective(data, tok.name, batch_size=8 if smoke else CORPUS_BATCH,
                                              eval_every=2 if smoke else 100, final_eval_batches=2 if smoke else 16))
            vocab_size = tok.vocab_size
        elif name == "recall":
            task = SMOKE_RECALL_TASK if smoke else RECALL_TASK
            objectives.append(RecallObjective(task, batch_size=8 if smoke else RECALL_BATCH, eval_every=2 if smoke else 50,
                                              eval_batch_size=16 if smoke else 128,
                                              distances=task.distances[::3] if smoke else None))
        else:
            raise ValueError(f"unknown objective {name!r}: 'corpus' or 'recall'")
    return objectives, vocab_size


def run_chapter_study(name: str, smoke: bool = False, device: torch.device | str = "cpu",
                      seeds: Sequence[int] | None = None, steps: dict[str, int] | None = None,
                      variants: Sequence[str] | None = None, tokenizer: str = "auto", corpus: str = "synthetic",
                      progress: bool = True, uptraining: dict | None = None) -> dict:
    """Run study ``name`` of :data:`STUDIES` (``smoke``: its tiny version) and return the JSON-ready report:
    ``study, title, smoke, environment`` (machine, versions, threads, device), ``model``, ``seconds`` and
    what :func:`run_study` or :func:`uptraining_study` returns.

    ``seeds``, ``steps`` and ``variants`` (a subset of the study's, the baseline first) override the
    spec's — a chapter's small live run, e.g. ``run_chapter_study("ch05", seeds=[0], variants=["MHA",
    "MQA"], steps={"corpus": 300, "recall": 600})``; ``uptraining`` overrides arguments of the uptraining
    study (chapter 06: ``{"groups": (1,), "alphas": (0.0, 0.25)}``).
    """
    if name not in STUDIES:
        raise ValueError(f"name must be one of {list(STUDIES)}, got {name!r}")
    spec = smoke_spec(STUDIES[name]) if smoke else STUDIES[name]
    if variants is not None:
        unknown = [v for v in variants if v not in spec.variants]
        if unknown or not variants:
            raise ValueError(f"variants must be a non-empty subset of {list(spec.variants)}, got {list(variants)}")
        spec = replace(spec, variants={v: spec.variants[v] for v in variants})
    if uptraining is not None:
        if spec.uptraining is None:
            raise ValueError(f"study {name!r} is not an uptraining study: uptraining= applies to 'ch06' only")
        unknown = sorted(set(uptraining) - set(spec.uptraining))
        if unknown:
            raise ValueError(f"uptraining may override {sorted(spec.uptraining)}, got {unknown}")
        spec = replace(spec, uptraining={**spec.uptraining, **uptraining})
    seeds = list(spec.seeds if seeds is None else seeds)
    steps = {**spec.steps, **(steps or {})}
    started = time.perf_counter()
    objectives, vocab_size = make_objectives(spec, smoke, tokenizer, corpus)
    base = TinyGPTConfig(vocab_size=vocab_size or 1, **spec.model)
    head = {"study": name, "title": spec.title, "smoke": smoke, "environment": environment(device),
            "model": config_to_dict(base)}
    if spec.uptraining is not None:
        body = uptraining_study(base, objectives[0], steps["corpus"], seeds, device=device, progress=progress,
                                desc=name, **spec.uptraining)
    else:
        variants = {v: replace(base, **overrides) for v, overrides in spec.variants.items()}
        body = run_study(variants, objectives, steps, seeds, vocab_size=vocab_size, match=spec.match_parameters,
                         device=device, progress=progress, desc=name)
    return {**head, **body, "seconds": time.perf_counter() - started}


def results_name(study: str, smoke: bool = False) -> str:
    """The results file of a study: ``quality_ch05.json`` (``quality_ch05_smoke.json`` for the smoke run)."""
    return f"quality_{study}{'_smoke' if smoke else ''}.json"


def estimate_seconds(name: str, device: torch.device | str = "cpu", timed_steps: int = 20,
                     tokenizer: str = "auto") -> dict:
    """Predict how long the full study ``name`` takes here, without running it: time ``timed_steps``
    training steps of every (objective, variant) at full size (after 3 warm-up steps) and one final
    evaluation, then scale by the study's steps and seeds. Returns ``{"per_run": {...}, "total": seconds}``."""
    spec = STUDIES[name]
    objectives, vocab_size = make_objectives(spec, tokenizer=tokenizer)
    base = TinyGPTConfig(vocab_size=vocab_size or 1, **spec.model)
    variants = {v: replace(base, **o) for v, o in spec.variants.items()}
    per_step, per_eval = {}, {}
    for objective in objectives:
        for variant, entry in prepare_variants(variants, objective, vocab_size, match=spec.match_parameters).items():
            model = TinyGPT(entry["config"]).to(device)
            objective.train(model, 3, 0)
            started = time.perf_counter()
            objective.train(model, timed_steps, 0)
            per_step[objective.name, variant] = (time.perf_counter() - started) / timed_steps
            started = time.perf_counter()
            objective.evaluate(model)
            per_eval[objective.name, variant] = time.perf_counter() - started
    seeds = len(spec.seeds)
    if spec.uptraining is None:
        per_run = {f"{o}/{v}": spec.steps[o] * per_step[o, v] + per_eval[o, v] for o, v in per_step}
        total = seeds * sum(per_run.values())
    else:  # every model of the uptraining study costs about what the MHA checkpoint's steps cost
        u = spec.uptraining
        n = spec.steps["corpus"]
        extra = sum(uptrain_steps(n, a) if a > 0 else 0 for a in u["alphas"])
        steps_per_seed = (n + extra * (1 + len(u["groups"]) * len(u["methods"]))
                          + len(u["groups"]) * sum(n + (uptrain_steps(n, a) if a > 0 else 0) for a in u["alphas"]))
        evals = len(u["alphas"]) * (1 + len(u["groups"]) * (len(u["methods"]) + 1))
        per_run = {"corpus/MHA per step": per_step["corpus", "MHA"], "steps per seed": steps_per_seed}
        total = seeds * (steps_per_seed * per_step["corpus", "MHA"] + evals * per_eval["corpus", "MHA"])
    return {"per_run_seconds": per_run, "total_seconds": total, "seeds": seeds, "timed_steps": timed_steps,
            "environment": environment(device)}


def merge_reports(parts: Sequence[dict]) -> dict:
    """One report from runs of the same study on disjoint seeds (e.g. one process per seed): the runs (or
    the uptraining rows and base curves) put together, then the summary and conclusions computed again
    over all seeds. ``seconds`` becomes the sum of the parts' (compute time, not wall time)."""
    if not parts:
        raise ValueError("merge_reports needs at least one report")
    first = parts[0]
    same = ("study", "smoke", "model", "steps", "base_steps", "variants", "objectives", "groups", "methods", "alphas")
    for part in parts[1:]:
        for key in same:
            if part.get(key) != first.get(key):
                raise ValueError(f"reports differ in {key!r}: only runs of one study with one setting can be merged")
    runs = [(seed, kind) for part in parts for seed in part["seeds"] for kind in part.get("parts", ["all"])]
    if len(set(runs)) != len(runs):
        raise ValueError(f"reports share seeds {sorted({s for s, _ in runs})}: each seed (and, for the uptraining "
                         "study, each part of it) must come from one report only")
    seeds = sorted({seed for seed, _ in runs}, key=[s for s, _ in runs].index)
    merged = {**copy.deepcopy(first), "seeds": seeds, "seconds": sum(part["seconds"] for part in parts)}
    if "rows" in first:  # uptraining_study
        kinds = {seed: {k for s, k in runs if s == seed} for seed in seeds}
        if any(k != set(UPTRAINING_PARTS) for k in kinds.values()) and len({frozenset(k) for k in kinds.values()}) > 1:
            raise ValueError(f"every seed needs the same parts of the uptraining study, got {kinds}")
        merged["parts"] = sorted(set.union(*kinds.values()), key=UPTRAINING_PARTS.index)
        merged["rows"] = [row for part in parts for row in part["rows"]]
        merged["base_curves"] = [curve for part in parts for curve in part["base_curves"]]
        merged["base_curves"].sort(key=lambda curve: seeds.index(curve["seed"]))
        merged["summary"] = summarize_uptraining(merged)
        merged["conclusions"] = uptraining_conclusions(merged) if len(merged["parts"]) == len(UPTRAINING_PARTS) else []
    else:
        merged["runs"] = [run for part in parts for run in part["runs"]]
        merged["summary"] = summarize(merged)
        merged["conclusions"] = study_conclusions(merged)
        merged["window_recall"] = window_recall_summaries(merged)
    return merged


# ----------------------------------------------------------------------------------------------------------
# What a chapter prints about a committed study
# ----------------------------------------------------------------------------------------------------------


def study_header(report: dict) -> str:
    """One line saying what a study is and where it ran: title, seeds, budget, tokenizer, machine, versions."""
    env = report["environment"]
    where = env.get("gpu") or env.get("processor") or env.get("machine", "?")
    if "steps" in report:
        budget = ", ".join(f"{objective} {n:,} steps" for objective, n in report["steps"].items())
    else:  # the uptraining study
        budget = f"MHA checkpoint {report['base_steps']:,} steps, uptraining α of it"
    tokenizer = next((o["tokenizer"] for o in report["objectives"].values() if "tokenizer" in o), None)
    return (f"{report['title']} — over {len(report['seeds'])} seeds {report['seeds']}, {budget}"
            f"{f', tokenizer {tokenizer}' if tokenizer else ''}; run on {where} ({env['device']}), torch {env['torch']}"
            f"{' — a smoke run: its numbers mean nothing' if report.get('smoke') else ''}")


def study_table(report: dict) -> str:
    """The committed numbers of :func:`run_study`, one row per (objective, variant): parameters (and the MLP
    width that matched them), the final metric as mean ± sd over the seeds, and for recall the steps to 90 %
    accuracy (with how many seeds got there)."""
    lines = []
    for objective, settings in report["objectives"].items():
        metric = settings["metric"]
        lines.append(f"{objective} ({METRIC_NAMES[metric]}, mean ± sd over {len(report['seeds'])} seeds):")
        for variant, entry in report["summary"][objective].items():
            shape = report["variants"][objective][variant]
            match = (f"MLP width {shape['mlp_hidden']}, {shape['relative_difference']:+.1%}"
                     if report.get("parameters_matched") else "no weights changed")
            line = (f"  {variant:<12} {entry['parameters']:>9,} parameters ({match})  "
                    f"{MeanSD(**entry[metric]).format()}")
            if "steps_to_90" in entry:
                reach = entry["steps_to_90"]
                line += (f"   90 % reached on {reach['reached']}/{reach['of']} seeds"
                         + (f", after {reach['mean']:,.0f} ± {reach['sd']:,.0f} steps" if reach["reached"] else ""))
            lines.append(line)
    return "\n".join(lines)


def study_conclusion_lines(report: dict, objective: str | None = None) -> list[str]:
    """The committed conclusions (every variant against the baseline, with the seeds' spread as the yardstick),
    as printed sentences; ``objective`` keeps one objective's."""
    return [c["sentence"] for c in report["conclusions"] if objective is None or c["objective"] == objective]


def uptraining_table(report: dict) -> str:
    """The committed numbers of :func:`uptraining_study`: one row per (G, α) with the validation loss (mean ± sd
    over the seeds) of every conversion method after uptraining, of the same G trained from scratch for the same
    total steps, and of the MHA checkpoint trained the same extra steps."""
    cells = uptraining_cells(report)
    heads = report["config"]["n_heads"]
    methods = report["methods"]
    header = (f"{'model':<7} {'α':>5} {'+steps':>6} {'total':>6} | "
              + " ".join(f"{m + ' (uptrained)':>16}" for m in methods)
              + f" | {'from scratch':>14} | {'MHA + same steps':>16}")
    lines = [f"validation loss (nats / token), mean ± sd over {len(report['seeds'])} seeds", header, "-" * len(header)]
    for n_groups in report["groups"]:
        for alpha in report["alphas"]:
            mha = cells[("mha", heads, None, alpha)]
            ups = [MeanSD(**cells[("uptrained", n_groups, m, alpha)]["val_loss"]).format() for m in methods]
            scratch = MeanSD(**cells[("scratch", n_groups, None, alpha)]["val_loss"]).format()
            lines.append(f"{kv_variant_name(n_groups, heads):<7} {alpha:>5g} {report['uptrain_steps'][str(alpha)]:>6} "
                         f"{mha['total_steps']:>6} | " + " ".join(f"{u:>16}" for u in ups)
                         + f" | {scratch:>14} | {MeanSD(**mha['val_loss']).format():>16}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Figures for the chapters
# ----------------------------------------------------------------------------------------------------------


def plot_learning_curves(report: dict, objective: str, variants: Sequence[str] | None = None, ax=None):
    """Mean learning curve of every variant (line) with its seed-to-seed sd (band): validation loss for the
    corpus, held-out accuracy for recall. Returns the matplotlib ``Axes``."""
    import matplotlib.pyplot as plt

    metric = "val_accuracy" if objective == "recall" else "val_loss"
    ax = plt.subplots(figsize=(6.5, 4))[1] if ax is None else ax
    for variant in variants or variant_names(report, objective):
        runs = _runs(report, objective, variant)
        steps = runs[0]["curve"]["steps"]
        columns = [mean_sd(values) for values in zip(*(r["curve"][metric] for r in runs))]
        mean = [c.mean for c in columns]
        ax.plot(steps, mean, label=variant)
        ax.fill_between(steps, [m - c.sd for m, c in zip(mean, columns)], [m + c.sd for m, c in zip(mean, columns)],
                        alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out recall accuracy" if objective == "recall" else "validation loss (nats / token)")
    ax.set_title(f"{objective}: mean ± sd over {len(report['seeds'])} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_recall_by_distance(report: dict, variants: Sequence[str] | None = None, ax=None):
    """Recall accuracy against the distance from fact to question, mean ± sd over seeds, with chance as a
    dotted line and, for a windowed variant, the edge of its receptive field as a dashed one."""
    import matplotlib.pyplot as plt

    ax = plt.subplots(figsize=(6.5, 4))[1] if ax is None else ax
    for variant in variants or variant_names(report, "recall"):
        entry = report["summary"]["recall"][variant]["accuracy_by_distance"]
        line = ax.plot(entry["distances"], entry["mean"], marker=".", label=variant)[0]
        ax.fill_between(entry["distances"], [m - s for m, s in zip(entry["mean"], entry["sd"])],
                        [m + s for m, s in zip(entry["mean"], entry["sd"])], color=line.get_color(), alpha=0.2)
        config = report["variants"]["recall"][variant]["config"]
        if config["window"] is not None:
            ax.axvline(receptive_field(config["n_layers"], config["window"]) - 0.5, color=line.get_color(), ls="--", lw=1)
    ax.axhline(report["objectives"]["recall"]["task"]["chance"], color="k", ls=":", lw=1, label="chance")
    ax.set_xlabel("distance from the fact to its question (tokens)")
    ax.set_ylabel("recall accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Associative recall, mean ± sd over {len(report['seeds'])} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_study(report: dict, title: str | None = None, variants: Sequence[str] | None = None,
               figsize: tuple[float, float] = (17, 5), fontsize: float = 12):
    """The three-panel figure of a committed :func:`run_study` report (chapters 05 and 13), sized to be read
    when projected: the corpus learning curves (validation loss, nats / token), the recall learning curves
    (held-out accuracy, the fraction of questions answered right) and the final recall accuracy by the
    distance from fact to question (tokens); each a mean over the seeds with a ± sd band.

    ``title`` (default: the study's own) heads the figure, with the seed count; ``variants`` keeps a subset
    (in the report's order by default); one legend below the panels names them (the dashed line marks a
    windowed variant's receptive field). ``fontsize`` is the axis labels' size in points (titles a little
    larger, ticks and the legend a little smaller). Returns the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    fig, (corpus, recall, by_distance) = plt.subplots(1, 3, figsize=figsize)
    plot_learning_curves(report, "corpus", variants, ax=corpus)
    plot_learning_curves(report, "recall", variants, ax=recall)
    plot_recall_by_distance(report, variants, ax=by_distance)
    corpus.set_title("Corpus: validation loss while training")
    recall.set_title("Recall: held-out accuracy while training")
    by_distance.set_title("Recall after training, by distance")
    for ax in (recall, by_distance):
        ax.set_ylabel(f"{ax.get_ylabel()} (fraction right)")
    for ax in (corpus, recall, by_distance):
        ax.title.set_fontsize(fontsize + 1)
        ax.xaxis.label.set_fontsize(fontsize)
        ax.yaxis.label.set_fontsize(fontsize)
        ax.tick_params(labelsize=fontsize - 1)
        ax.get_legend().remove()  # one legend for all three panels, below them, hiding no curve
    handles, labels = by_distance.get_legend_handles_labels()  # every variant (same colours in each panel) and chance
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=fontsize - 1, frameon=False)
    fig.suptitle(f"{title or report['title']} — mean ± sd over {len(report['seeds'])} seeds", fontsize=fontsize + 2)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def plot_uptraining(report: dict, n_groups: int, ax=None):
    """Validation loss against the extra steps α · base_steps for one G of :func:`uptraining_study`: each
    conversion method uptrained, the same G from scratch at the same total steps, and the MHA checkpoint
    trained on; mean over seeds with ± sd error bars. Returns the matplotlib ``Axes``."""
    import matplotlib.pyplot as plt

    ax = plt.subplots(figsize=(6.5, 4))[1] if ax is None else ax
    heads = report["config"]["n_heads"]
    cells = uptraining_cells(report)
    steps = [report["uptrain_steps"][str(a)] for a in report["alphas"]]
    series = [(f"{m}, uptrained", ("uptrained", n_groups, m), "o-") for m in report["methods"]]
    series += [(f"{kv_variant_name(n_groups, heads)} from scratch, same total steps", ("scratch", n_groups, None), "s--"),
               ("MHA checkpoint + the same steps", ("mha", heads, None), "k:")]
    for label, (kind, g, method), style in series:
        values = [cells[(kind, g, method, a)]["val_loss"] for a in report["alphas"]]
        ax.errorbar(steps, [v["mean"] for v in values], yerr=[v["sd"] for v in values], fmt=style, capsize=3,
                    label=label, markersize=4)
    ax.set_xlabel(f"extra training steps (α × {report['base_steps']:,} checkpoint steps)")
    ax.set_ylabel("validation loss (nats / token)")
    ax.set_title(f"{kv_variant_name(n_groups, heads)} from an MHA checkpoint, mean ± sd over {len(report['seeds'])} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
