"""Chapter 13's executed notebook: what it printed is what the committed JSON says, and what its prose claims
holds in the numbers it printed (the notebook's outputs are read, not re-run)."""

import re
from pathlib import Path

import nbformat
import pytest

from attention_lab import quality
from attention_lab.book.results import load
from attention_lab.costs.gpu_facts import GPU_TABLE
from attention_lab.side_by_side import (gpu_decode_lines, results_from_dicts, results_table, seed_values,
                                        single_run_lines, study_cache_bytes_per_token)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "13_side_by_side.ipynb"


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


@pytest.fixture(scope="module")
def printed(notebook) -> str:
    """Every text the code cells printed, with tqdm's carriage-return redraws kept."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif "text/plain" in output.get("data", {}):
                parts.append(output.data["text/plain"])
    return "\n".join(parts)


def test_the_study_is_printed_as_its_json_says(printed):
    report = load("quality_ch13")
    assert quality.study_header(report) in printed
    assert quality.study_table(report) in printed
    for line in quality.study_conclusion_lines(report):
        assert line in printed
    for line in single_run_lines(load("side_by_side"), report):
        assert line in printed
    for name, value in study_cache_bytes_per_token(report).items():
        assert f"  {name:<10} {value:>7,.0f}   MHA / this = " in printed
    for objective in ("corpus", "recall"):
        for name, values in seed_values(report, objective).items():
            assert f"  {name:<10} " + "  ".join(f"{v:.3f}" for v in values) in printed
    resolved = [c for c in report["conclusions"] if c["resolved"]]
    assert {(c["a"], c["b"]) for c in resolved} == {("window 8", "MHA")}  # the prose: only the window differs
    assert "; ".join(f"{c['what']}: {c['a']} − {c['b']}" for c in resolved) in printed
    mla = seed_values(report, "recall")["MLA"]
    assert f"widest recall spread: MLA, from {min(mla):.3f} to {max(mla):.3f}" in printed
    assert max(mla) > 0.9 and min(mla) < 0.5  # the prose: bimodal over seeds


def test_the_committed_gpu_table_and_what_it_measured_are_printed(printed):
    old = load("side_by_side")
    assert results_table(results_from_dicts(old["results"])) in printed
    lines = gpu_decode_lines(old, GPU_TABLE["H100 SXM"].bandwidth_bytes_s)
    for line in lines:
        assert line in printed
    shares = [float(re.search(r"= ([\d.]+)% of the step", line).group(1)) for line in lines]
    assert max(shares) < 1.0  # the prose: reading the whole cache is under a percent of each step


def test_the_live_run_bar_ends_at_100_percent(printed):
    ends = re.findall(r"ch13: 100%\|██████████\| (\d+)/(\d+)", printed)
    assert ends and all(done == total for done, total in ends)
    assert "— over 1 seeds [0]" in printed


def _decode_table(printed: str) -> dict[str, dict[int, tuple[float, float]]]:
    lines = printed.split("ms per step (MiB of cache read) at this many positions")[1].splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("variant")):]
    contexts = [int(c.replace(",", "")) for c in lines[0].split()[2:]]
    table = {}
    for line in lines[1:]:
        if not line.strip():
            break
        name, rest = re.match(r"(.{14})\s*\d+ MiB(.*)", line).groups()
        cells = re.findall(r"([\d.]+) \(\s*([\d.]+)\)|—", rest)
        table[name.strip()] = {c: (float(ms), float(mib)) for c, (ms, mib) in zip(contexts, cells) if ms}
    return table


def test_the_decode_claims_hold_in_the_printed_timings(printed):
    table = _decode_table(printed)
    assert set(table) == {"MHA", "GQA-8", "MQA", "MLA absorbed", "MLA naive", "window 4096"}
    longest = max(table["MHA"])
    mha = table["MHA"]
    short = min(mha)
    # MHA: at long context the growth is most of the step, and it grows with the bytes it reads
    assert (mha[longest][0] - mha[short][0]) / mha[longest][0] > 0.5
    # the window: MHA until its window is full, flat after it
    window = table["window 4096"]
    assert window[longest][1] == window[4096][1] and window[longest][0] < 1.3 * window[4096][0]
    # the smaller caches are faster than MHA at the longest context, by less than their cache ratio
    for name in ("GQA-8", "MQA", "MLA absorbed", "window 4096"):
        speedup, ratio = mha[longest][0] / table[name][longest][0], mha[longest][1] / table[name][longest][1]
        assert 1 < speedup < ratio
        said = re.search(rf"at {longest:,} positions {name} is ([\d.]+)× faster than MHA, reading {ratio:.0f}× less cache",
                         printed)
        assert said and float(said.group(1)) == pytest.approx(speedup, abs=0.1)  # the table's ms are rounded
    naive, absorbed = table["MLA naive"], table["MLA absorbed"]
    common = max(naive)
    assert naive[common][0] > 5 * absorbed[common][0]  # MLA must decode absorbed
    said = re.search(r"absorbed is (\d+)× faster", printed)
    assert said and int(said.group(1)) == pytest.approx(naive[common][0] / absorbed[common][0], abs=1)
    # MQA and MLA move far fewer cache bytes per extra second than MHA (arithmetic-bound on one thread)
    rates = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+(?: \S+)?): .*?, ([\d.]+) GB of cache per extra second",
                                                             printed, re.M)}
    assert rates["MQA"] < rates["MHA"] / 2 and rates["MLA absorbed"] < rates["MHA"] / 2
    ridge = float(re.search(r"ridge ([\d.]+) FLOP per byte\n", printed).group(1))
    intensity = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+(?: \S+)?): .*; ([\d.]+) FLOP per cache byte$",
                                                                 printed, re.M)}
    assert min(intensity["MQA"], intensity["MLA absorbed"]) > 3 * ridge  # "many times this core's ridge"
    assert "all memory-bound there" in printed
    # at short context every step follows its weights: similar GB/s of weights (naive MLA aside)
    weights = {m.group(1).strip(): float(m.group(2)) for m in re.finditer(r"^  (.{13}) +([\d.]+) GB/s$", printed, re.M)}
    others = [v for k, v in weights.items() if k != "MLA naive"]
    assert len(others) == 5 and max(others) < 2 * min(others)  # "of the same order"


ALLOWED = [r"GQA-\d", r"window \d+", r"Llama-3-8B", r"DeepSeek-V2", r"d_model \d+", r"H100",
           r"chapters? \d\d(?: and \d\d)?", r"^# # 13", r"N×N", r"\bch13\b"]


def test_every_number_in_the_prose_is_printed_by_a_cell(notebook, printed):
    """The book's rule: no typed number. A number in a markdown cell is a name (GQA-4, Llama-3-8B, a chapter)
    or appears in what the cells printed."""
    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            continue
        text = cell.source
        for pattern in ALLOWED:
            text = re.sub(pattern, " ", text, flags=re.M)
        for number in re.findall(r"\d[\d,.]*\d|\d", text):
            assert number in printed, f"typed number {number!r} in: {cell.source[:80]!r}"
