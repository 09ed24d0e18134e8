"""Multi-seed studies (attention_lab.quality, benchmarks/quality_studies.py): matched parameters, mean ± sd,
conclusions' wording from given numbers, and smoke runs that write the JSON the chapters load."""

import doctest
import json
import subprocess
from dataclasses import replace

import pytest
import torch

from attention_lab import MLASettings, TinyGPT, TinyGPTConfig
from attention_lab import quality
from attention_lab.book import results
from attention_lab.receptive_field import receptive_field
from attention_lab.quality import (STUDIES, compare, count_parameters, match_parameters, mean_sd, metric_values,
                                   ordering_by_step, results_name, run_chapter_study, stable_since, steps_to_accuracy,
                                   uptraining_values, window_recall_summary)
from reference import load_benchmark

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = TinyGPTConfig(vocab_size=65, context_length=64, d_model=64, n_layers=2, n_heads=8)


def test_the_module_docstring_example_is_what_compare_prints():
    assert doctest.testmod(quality).failed == 0


def test_count_parameters_is_the_models_count_and_leaves_the_rng_alone():
    config = replace(BASE, n_kv_heads=2)
    state = torch.random.get_rng_state()
    assert torch.equal(state, torch.random.get_rng_state())
    assert count_parameters(config) == TinyGPT(config).num_parameters()


@pytest.mark.parametrize("overrides", [dict(n_kv_heads=1), dict(n_kv_heads=2), dict(n_kv_heads=4),
                                       dict(attention="mla", settings=MLASettings()),
                                       dict(attention="mla", settings=MLASettings(kv_latent_dim=8, rope_dim=4)),
                                       dict(attention="mla", settings=MLASettings(kv_latent_dim=96, rope_dim=8))])
def test_match_parameters_lands_within_half_a_hidden_unit(overrides):
    variant = replace(BASE, **overrides)
    before = count_parameters(variant)
    found = match_parameters(BASE, variant)
    target = count_parameters(BASE)
    assert found.target == target and found.parameters == count_parameters(found.config)
    assert found.config.mlp_hidden == found.mlp_hidden and found.config.attention == variant.attention
    assert abs(found.parameters - target) <= BASE.n_layers * (BASE.d_model + 0.5)
    assert abs(found.relative_difference) < 0.02
    assert before != target  # the variant really needed matching ...
    assert (found.mlp_hidden > 4 * BASE.d_model) == (before < target)  # ... and the width moved the right way
    assert found.config.n_kv_heads == variant.n_kv_heads and found.config.settings == variant.settings


def test_a_window_changes_no_parameter_and_keeps_the_width():
    found = match_parameters(BASE, replace(BASE, window=8))
    assert found.mlp_hidden == 4 * BASE.d_model and found.parameters == found.target
    assert "+0.00%" in found.describe("window 8")


def test_match_parameters_refuses_what_it_cannot_match():
    with pytest.raises(ValueError, match="d_model"):
        match_parameters(BASE, replace(BASE, d_model=32, n_heads=4))
    tiny = replace(BASE, mlp_hidden=1)
    with pytest.raises(ValueError, match="no MLP width"):
        match_parameters(tiny, replace(tiny, attention="mla", settings=MLASettings(kv_latent_dim=512)))
    with pytest.raises(ValueError, match="tolerance"):
        match_parameters(BASE, BASE, tolerance=0.0)


def test_mean_sd_uses_the_sample_standard_deviation():
    found = mean_sd([1.0, 2.0, 3.0, 6.0])
    assert found.mean == 3.0 and found.sd == pytest.approx((14 / 3) ** 0.5) and found.n == 4
    assert mean_sd([0.5]).sd == 0.0
    assert found.format(2) == "3.00 ± 2.16"
    with pytest.raises(ValueError):
        mean_sd([])


def test_conclusion_wording_for_a_difference_larger_than_the_spread():
    found = compare("MQA", [1.25, 1.27, 1.23], "MHA", [1.20, 1.22, 1.21], unit="nats", what="validation loss")
    assert found.difference.mean == pytest.approx(0.04) and found.spread == pytest.approx(0.02)
    assert found.resolved and found.ratio == pytest.approx(2.0)
    assert found.sentence == ("validation loss: MQA − MHA = +0.040 ± 0.017 nats over 3 seeds "
                              "(seed-to-seed spread 0.020): 2.0× the spread — MQA is worse")


def test_conclusion_wording_within_the_spread_and_for_accuracy():
    within = compare("GQA-2", [1.30, 1.34, 1.32], "MHA", [1.31, 1.29, 1.33], unit="nats")
    assert not within.resolved
    assert within.sentence == ("GQA-2 − MHA = +0.010 ± 0.035 nats over 3 seeds (seed-to-seed spread 0.020): "
                               "within the spread — no difference at this budget")
    better = compare("MHA", [0.99, 1.0, 0.98], "window 8", [0.52, 0.50, 0.51], unit="", higher_is_better=True,
                     what="recall accuracy")
    assert better.sentence.startswith("recall accuracy: MHA − window 8 = +0.480 ± 0.017 over 3 seeds (seed-to-seed spread 0.010)")
    assert better.sentence.endswith("48.0× the spread — MHA is better")
    hint = compare("MLA", [1.235, 1.215, 1.225], "MHA", [1.20, 1.22, 1.21], unit="nats")
    assert not hint.resolved and hint.hint and hint.ratio == pytest.approx(1.5)
    assert hint.sentence.endswith("1.5× the spread — a hint that MLA is worse, not resolved over 3 seeds")
    same = compare("a", [1.0, 1.0], "b", [1.0, 1.0])
    assert same.ratio == 0.0 and not same.resolved
    assert compare("a", [1.0, 1.0], "b", [0.9, 0.9]).sentence.endswith("more than 100× the spread — a is worse")


def test_a_conclusion_needs_two_seeds_and_paired_numbers():
    with pytest.raises(ValueError, match="2 seeds"):
        compare("a", [1.0], "b", [1.1])
    with pytest.raises(ValueError, match="one number per seed"):
        compare("a", [1.0, 1.1], "b", [1.1])


def _report_with_curves():
    """A hand-made two-variant report: B is ahead at the first record, A from the second on."""
    runs = []
    for variant, curves in {"A": ([2.0, 1.0, 0.8], [2.1, 1.1, 0.9]), "B": ([1.5, 1.2, 1.0], [1.6, 1.3, 1.1])}.items():
        for seed, losses in enumerate(curves):
            runs.append({"variant": variant, "seed": seed, "objective": "corpus",
                         "curve": {"steps": [100, 200, 300], "val_loss": losses}, "final": {"val_loss": losses[-1]}})
    return {"seeds": [0, 1], "objectives": {"corpus": {"metric": "val_loss"}},
            "variants": {"corpus": {"A": {}, "B": {}}}, "runs": runs}


def test_ordering_by_step_and_since_when_it_holds():
    report = _report_with_curves()
    steps, orderings = ordering_by_step(report, "corpus")
    assert steps == [100, 200, 300] and orderings == [["B", "A"], ["A", "B"], ["A", "B"]]
    assert stable_since(report, "corpus") == 200
    assert metric_values(report, "corpus", "B") == [1.0, 1.1]


def test_window_recall_summary_splits_distances_by_the_receptive_field():
    distances = list(range(1, 20))
    accuracy = [1.0 if d <= 3 else 0.5 if d <= 6 else 0.25 for d in distances]  # window 4, 2 layers: reach 6
    runs = [{"variant": "window 4", "seed": s, "objective": "recall",
             "final": {"distances": distances, "accuracy_by_distance": accuracy}} for s in (0, 1)]
    report = {"seeds": [0, 1], "runs": runs, "objectives": {"recall": {"metric": "accuracy", "task": {"chance": 0.25}}},
              "variants": {"recall": {"window 4": {"config": {"window": 4, "n_layers": 2}}}}}
    found = window_recall_summary(report, "window 4")
    assert found["receptive_field"] == 7
    assert found["zones"]["one hop"]["distances"] == [1, 3] and found["zones"]["one hop"]["mean"] == 1.0
    assert found["zones"]["relayed"]["distances"] == [4, 6] and found["zones"]["relayed"]["mean"] == 0.5
    assert found["zones"]["out of reach"]["distances"] == [7, 19] and found["zones"]["out of reach"]["mean"] == 0.25
    assert "receptive field 7 tokens" in found["sentence"] and "chance 0.25" in found["sentence"]


def test_steps_to_accuracy_reads_the_curve():
    curve = {"steps": [50, 100, 150], "val_accuracy": [0.2, 0.91, 1.0]}
    assert steps_to_accuracy(curve) == 100 and steps_to_accuracy(curve, 0.95) == 150
    assert steps_to_accuracy(curve, 1.01) is None


def test_every_study_is_defined_with_three_seeds_and_matched_where_it_matters():
    assert set(STUDIES) == {"ch04", "ch05", "ch06", "ch12", "ch13"}
    for spec in STUDIES.values():
        assert len(spec.seeds) >= 3
    ch13 = STUDIES["ch13"]
    assert list(ch13.variants) == ["MHA", "GQA-4", "GQA-2", "MQA", "MLA", "window 8"]
    assert ch13.model["settings"].rope and ch13.match_parameters  # RoPE for all: MLA has its decoupled RoPE
    assert STUDIES["ch06"].uptraining["alphas"] == (0.0, 0.05, 0.1, 0.25, 0.5)
    assert set(STUDIES["ch06"].uptraining["methods"]) == {"mean", "first", "random"}


def _load_script():
    return load_benchmark("quality_studies")


def test_git_clean_says_whether_the_files_are_the_commit_recorded(tmp_path):
    """A lent GPU machine gets the working tree with an older .git: the report must not claim that commit ran."""
    git_clean = _load_script().git_clean
    assert git_clean(tmp_path) is None  # not a checkout

    def run(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    run("init", "-q")
    (tmp_path / "study.py").write_text("steps = 1\n")
    run("add", "study.py")
    run("commit", "-qm", "one")
    assert git_clean(tmp_path) is True
    (tmp_path / "notes.txt").write_text("untracked files do not change the code that ran\n")
    assert git_clean(tmp_path) is True
    (tmp_path / "study.py").write_text("steps = 2\n")
    assert git_clean(tmp_path) is False


def test_smoke_run_of_the_script_writes_json_whose_claims_match_its_numbers(tmp_path):
    threads = torch.get_num_threads()
    assert _load_script().main(["ch05", "--smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    torch.set_num_threads(threads)
    report = json.loads((tmp_path / results_name("ch05", smoke=True)).read_text())
    assert report == results.load(results_name("ch05", smoke=True), tmp_path)
    assert report["study"] == "ch05" and report["smoke"] is True and report["seeds"] == [0, 1, 2]
    assert report["steps"] == {"corpus": 3, "recall": 3}
    for key in ("device", "threads", "torch", "python", "machine", "numpy", "attention_lab", "git_commit", "git_clean"):
        assert key in report["environment"]
    assert report["environment"]["threads"] == 1 and report["command"].endswith("--no-progress")
    names = ["MHA", "GQA-4", "GQA-2", "MQA"]
    assert len(report["runs"]) == 2 * len(names) * 3
    for objective in ("corpus", "recall"):
        assert list(report["variants"][objective]) == names
        counts = [report["variants"][objective][n]["parameters"] for n in names]
        assert max(abs(c / counts[0] - 1) for c in counts) < 0.02
        for name in names:
            runs = [r for r in report["runs"] if (r["objective"], r["variant"]) == (objective, name)]
            assert sorted(r["seed"] for r in runs) == [0, 1, 2]
            assert all(r["curve"]["steps"][-1] == 3 and r["parameters"] == counts[names.index(name)] for r in runs)
            summary = report["summary"][objective][name]
            metric = "val_loss" if objective == "corpus" else "accuracy"
            assert summary[metric]["mean"] == pytest.approx(mean_sd(r["final"][metric] for r in runs).mean)
    recall_run = next(r for r in report["runs"] if r["objective"] == "recall")
    assert len(recall_run["final"]["distances"]) == len(recall_run["final"]["accuracy_by_distance"])
    # every printed conclusion is recomputed from the per-seed numbers in the same file
    for conclusion in report["conclusions"]:
        metric, objective = conclusion["metric"], conclusion["objective"]
        again = compare(conclusion["a"], metric_values(report, objective, conclusion["a"], metric), conclusion["b"],
                        metric_values(report, objective, conclusion["b"], metric), unit=conclusion["unit"],
                        higher_is_better=conclusion["higher_is_better"], digits=0 if metric == "steps_to_90" else 3,
                        what=conclusion["what"])
        assert again.sentence == conclusion["sentence"]
    assert {c["a"] for c in report["conclusions"] if c["metric"] == "val_loss"} == {"GQA-4", "GQA-2", "MQA"}


def test_smoke_uptraining_study_has_every_cell_and_equal_total_steps():
    report = run_chapter_study("ch06", smoke=True, progress=False)
    seeds, groups, methods, alphas = report["seeds"], report["groups"], report["methods"], report["alphas"]
    assert alphas == [0.0, 0.5] and groups == [1, 2] and len(seeds) == 3
    assert len(report["rows"]) == len(seeds) * len(alphas) * (1 + len(groups) * (len(methods) + 1))
    base, extra = report["base_steps"], report["uptrain_steps"]
    for row in report["rows"]:
        assert row["total_steps"] == base + extra[str(row["alpha"])]
    assert len(report["base_curves"]) == 3 and report["base_curves"][0]["steps"][-1] == base
    # at α = 0 "mean" and "first" are the converted checkpoint itself: same parameters, no training
    for g in groups:
        scratch = [r for r in report["rows"] if r["kind"] == "scratch" and r["n_groups"] == g]
        converted = [r for r in report["rows"] if r["kind"] == "uptrained" and r["n_groups"] == g]
        assert {r["parameters"] for r in scratch} == {r["parameters"] for r in converted}
    sentences = [c["sentence"] for c in report["conclusions"]]
    assert any(s.startswith("validation loss: MQA (mean, +2 steps) − MQA from scratch (5 steps)") for s in sentences)
    found = next(c for c in report["conclusions"] if c["topic"] == "uptrained vs scratch" and c["n_groups"] == 2
                 and c["alpha"] == 0.5)
    again = compare(found["a"], uptraining_values(report, "uptrained", 2, "mean", 0.5), found["b"],
                    uptraining_values(report, "scratch", 2, None, 0.5), what="validation loss")
    assert again.sentence == found["sentence"]


def test_seeds_run_apart_and_merged_give_the_numbers_of_one_run(capsys):
    together = run_chapter_study("ch04", smoke=True, seeds=[0, 1], progress=True)
    total = 2 * 4 * 2 * 3  # objectives × variants × seeds × steps: one kept bar, ending at 100 %
    assert f"100%|██████████| {total}/{total}" in capsys.readouterr().err
    parts = [run_chapter_study("ch04", smoke=True, seeds=[s], progress=False) for s in (0, 1)]
    merged = quality.merge_reports(parts)
    assert merged["seeds"] == [0, 1]
    finals = lambda report: sorted((r["objective"], r["variant"], r["seed"], json.dumps(r["final"])) for r in report["runs"])
    assert finals(merged) == finals(together)
    assert [c["sentence"] for c in merged["conclusions"]] == [c["sentence"] for c in together["conclusions"]]
    assert merged["summary"] == together["summary"]
    with pytest.raises(ValueError, match="share seeds"):
        quality.merge_reports([parts[0], parts[0]])
    with pytest.raises(ValueError, match="differ in 'steps'"):
        quality.merge_reports([parts[0], {**parts[1], "steps": {"corpus": 99, "recall": 3}}])


def test_a_live_run_takes_a_subset_of_variants_and_the_figures_draw_it():
    import matplotlib
    matplotlib.use("Agg")
    report = run_chapter_study("ch13", smoke=True, seeds=[0, 1], variants=["MHA", "window 8"], progress=False)
    assert list(report["variants"]["recall"]) == ["MHA", "window 8"] and len(report["runs"]) == 2 * 2 * 2
    ax = quality.plot_recall_by_distance(report)
    assert len(ax.lines) == 2 + 1 + 1  # two variants, the window's receptive-field edge, chance
    window = report["variants"]["recall"]["window 8"]["config"]
    edge = receptive_field(window["n_layers"], window["window"]) - 0.5
    assert list(report["window_recall"]) == ["window 8"]  # the smoke model's window is 8 // 4 = 2
    assert report["window_recall"]["window 8"]["receptive_field"] == receptive_field(2, 2) == 3
    assert any(list(line.get_xdata()) == [edge, edge] for line in ax.lines)
    ax = quality.plot_learning_curves(report, "corpus")
    assert [line.get_label() for line in ax.lines] == ["MHA", "window 8"]
    with pytest.raises(ValueError, match="subset"):
        run_chapter_study("ch13", smoke=True, variants=["MHA", "Mamba"], progress=False)


@pytest.mark.parametrize("name", ["ch05", "ch13"])
def test_the_study_figure_has_three_labelled_panels_and_one_legend(name):
    """Chapters 05 and 13 draw their committed study with quality.plot_study: a title naming the study and its
    seeds, three panels with titles and axis labels (units included), one legend naming every variant."""
    import matplotlib

    matplotlib.use("Agg")
    report = results.load(f"quality_{name}")
    fig = quality.plot_study(report)
    assert fig._suptitle.get_text() == f"{report['title']} — mean ± sd over 3 seeds"
    corpus, recall, by_distance = fig.axes
    assert all(ax.get_title() and ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    assert "nats / token" in corpus.get_ylabel() and "tokens" in by_distance.get_xlabel()
    assert all(ax.get_legend() is None for ax in fig.axes)
    variants = quality.variant_names(report, "recall")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [*variants, "chance"]
    assert [line.get_label() for line in corpus.lines] == quality.variant_names(report, "corpus")
    assert quality.plot_study(report, title="Shown", variants=variants[:2])._suptitle.get_text().startswith("Shown — ")


@pytest.mark.parametrize("name", ["ch04", "ch05", "ch12", "ch13"])
def test_the_committed_studies_print_what_their_numbers_say(name):
    """The committed JSON (package data) of each study: 3 seeds, parameters matched within 2 % where the study
    matches them, and the table and conclusions a chapter prints are the numbers of its runs."""
    from attention_lab.book import results
    from attention_lab.quality import study_conclusion_lines, study_header, study_table

    report = results.load(f"quality_{name}")
    assert report is not None and report["seeds"] == [0, 1, 2] and not report["smoke"]
    assert "over 3 seeds [0, 1, 2]" in study_header(report)
    table = study_table(report)
    for objective, by_variant in report["summary"].items():
        metric = report["objectives"][objective]["metric"]
        for variant, entry in by_variant.items():
            values = [r["final"][metric] for r in report["runs"] if (r["objective"], r["variant"]) == (objective, variant)]
            assert len(values) == 3 and entry[metric]["mean"] == pytest.approx(sum(values) / 3)
            assert f"{variant:<12} {entry['parameters']:>9,} parameters" in table
            if report["parameters_matched"]:
                assert abs(report["variants"][objective][variant]["relative_difference"]) <= 0.02
    lines = study_conclusion_lines(report)
    assert lines and all("over 3 seeds" in line for line in lines)
    recomputed = quality.study_conclusions(report)
    assert [c["sentence"] for c in recomputed] == lines  # the committed sentences follow from the runs


def test_a_small_live_uptraining_study_and_its_table_and_figure():
    """Chapter 06's live run: the uptraining study with fewer groups and α values; the table prints every
    (G, α) row with the numbers of the summary; the figure draws one line per method plus scratch and MHA."""
    import matplotlib

    matplotlib.use("Agg")
    report = run_chapter_study("ch06", smoke=True, seeds=[0, 1], uptraining={"groups": (1,), "alphas": (0.0, 0.5)},
                               tokenizer="char", progress=False)
    assert report["groups"] == [1] and report["alphas"] == [0.0, 0.5]
    table = quality.uptraining_table(report)
    assert table.count("\nMQA ") == 2 and "GQA" not in table
    cell = next(c for c in report["summary"] if (c["kind"], c["alpha"]) == ("scratch", 0.5))
    assert f"{cell['val_loss']['mean']:.3f} ± {cell['val_loss']['sd']:.3f}" in table  # the summary's numbers
    ax = quality.plot_uptraining(report, 1)
    assert len(ax.containers) == len(report["methods"]) + 2
    with pytest.raises(ValueError, match="uptraining may override"):
        run_chapter_study("ch06", smoke=True, uptraining={"steps": 3})
    with pytest.raises(ValueError, match="not an uptraining study"):
        run_chapter_study("ch05", smoke=True, uptraining={"alphas": (0.0,)})


def test_the_uptraining_study_split_in_parts_gives_the_numbers_of_one_run():
    """A seed's checkpoint-and-conversions part and its from-scratch part can run apart (two processes, or a
    GPU's time split) and merge into the numbers and conclusions of one run; a part alone concludes nothing."""
    options = dict(smoke=True, seeds=[0, 1], tokenizer="char", progress=False)
    whole = run_chapter_study("ch06", uptraining={"groups": (1,)}, **options)
    halves = [run_chapter_study("ch06", uptraining={"groups": (1,), "parts": (p,)}, **options)
              for p in ("scratch", "uptrained")]
    assert all(h["conclusions"] == [] for h in halves) and halves[0]["base_curves"] == []
    merged = quality.merge_reports(halves)
    assert merged["parts"] == ["uptrained", "scratch"] and merged["seeds"] == [0, 1]
    key = lambda c: (c["kind"], c["n_groups"], str(c["method"]), c["alpha"])  # noqa: E731
    for a, b in zip(sorted(whole["summary"], key=key), sorted(merged["summary"], key=key)):
        assert key(a) == key(b) and a["val_loss"]["mean"] == pytest.approx(b["val_loss"]["mean"], rel=1e-6)
    assert [c["sentence"] for c in merged["conclusions"]] == [c["sentence"] for c in whole["conclusions"]]
    with pytest.raises(ValueError, match="each seed"):
        quality.merge_reports([halves[0], halves[0]])
    for bad in (("both",), ("uptrained", "bogus"), ()):  # an unknown part is refused, not dropped
        with pytest.raises(ValueError, match="parts must be"):
            run_chapter_study("ch06", uptraining={"parts": bad}, **options)


def test_the_script_merges_seeds_run_in_separate_folders_and_refuses_mixed_code(tmp_path):
    """--merge: seeds run apart (one process each, maybe on a GPU call each) become the file one run would write."""
    script = _load_script()
    threads = torch.get_num_threads()
    for seed in (0, 1):
        assert script.main(["ch04", "--smoke", "--seeds", str(seed), "--out", str(tmp_path / str(seed)),
                            "--no-progress"]) == 0
    torch.set_num_threads(threads)
    name = results_name("ch04", smoke=True)
    parts = [results.load(name, tmp_path / str(seed)) for seed in (0, 1)]
    assert script.main(["ch04", "--smoke", "--merge", str(tmp_path / "0"), str(tmp_path / "1"),
                        "--out", str(tmp_path / "merged")]) == 0
    merged = results.load(name, tmp_path / "merged")
    expected = quality.merge_reports(parts)
    assert merged["seeds"] == [0, 1] and merged["summary"] == expected["summary"]
    assert [c["sentence"] for c in merged["conclusions"]] == [c["sentence"] for c in expected["conclusions"]]
    assert merged["merged_from"] == [p["command"] for p in parts] and "--merge" in merged["command"]
    assert merged["wall_seconds"] == max(p["wall_seconds"] for p in parts)
    other = {**parts[1], "environment": {**parts[1]["environment"], "git_commit": "0" * 40}}
    results.save(name, other, tmp_path / "other")
    with pytest.raises(SystemExit, match="differ in git_commit"):
        script.main(["ch04", "--smoke", "--merge", str(tmp_path / "0"), str(tmp_path / "other")])
    with pytest.raises(SystemExit, match="no quality_ch04_smoke.json in"):
        script.main(["ch04", "--smoke", "--merge", str(tmp_path / "0"), str(tmp_path / "missing")])
