"""Write README.md's "GPU results" section from the committed result files in ``attention_lab/results/``.

    python benchmarks/readme_results.py            # rewrite the section between the results markers
    python benchmarks/readme_results.py --check    # exit 1 and print a diff when README.md differs

Every number in the section (ranges, ratios, TFLOP/s, MiB, TB/s, percentages, step and pass counts) and
every card and version is computed here from the JSON the benchmarks wrote, so the README cannot drift
from the committed results; ``tests/test_book_readme_results.py`` fails when it does. After a benchmark
writes new results, run this script and commit README.md with them.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing the package
    sys.path.insert(0, str(ROOT))
from attention_lab.book.results import RESULTS_DIR, load  # noqa: E402
from attention_lab.flash import benchmark_report as br  # noqa: E402

RESULTS = RESULTS_DIR
README = ROOT / "README.md"
CHAPTERS = ROOT / "notebooks" / "src"  # one source per chapter: what "the whole book" means
START, END = "<!-- results:start -->", "<!-- results:end -->"
FILES = ("flash_benchmark.json", "flash_flex.json", "flash_hopper.json", "paged_decode.json", "decode_gqa.json", "mla_decode.json",
         "hbm_traffic.json", "side_by_side.json", "notebooks_gpu.json", "gpu_tests.json",
         "installed_wheel_gpu.json")
MIN_N = 4096  # the flash headline is about long sequences (DESIGN §5: "D=128, N ≥ 4k")
WIDTH = 118  # README paragraphs are wrapped at this width
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


# --- reading the result files -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Environment:
    """The card and software versions one result file records."""

    card: str
    torch: str
    triton: str
    cuda: str

    @property
    def versions(self) -> str:
        return f"torch {self.torch}, Triton {self.triton}, CUDA {self.cuda}"


def load_result(name: str, results_dir: Path = RESULTS) -> dict:
    """The committed result file ``results_dir / name``; a clear error naming the file when it is missing."""
    path = Path(results_dir) / name
    data = load(name, results_dir)
    if data is None:
        raise FileNotFoundError(f"{path}: result file missing; the README's GPU results are built from it "
                                f"(run the benchmark that writes it, or restore it from git)")
    return data


def load_all(results_dir: Path = RESULTS) -> dict[str, dict]:
    """Every result file the section reads, by file name."""
    return {name: load_result(name, results_dir) for name in FILES}


def environment(data: dict, name: str = "result") -> Environment:
    """Card and versions from any of the three layouts the benchmarks write.

    ``environment: {card, torch, ...}`` (flash, flex, decode, MLA); ``device: {name}`` with ``versions``
    (hbm_traffic); ``device: "<card>"`` with the versions at the top level (side_by_side, notebooks).
    """
    if isinstance(data.get("environment"), dict):
        versions, card = data["environment"], data["environment"].get("card")
    elif isinstance(data.get("device"), dict):
        versions, card = data.get("versions", {}), data["device"].get("name")
    else:
        versions, card = data, data.get("device")
    missing = [key for key in ("torch", "triton", "cuda") if key not in versions]
    if not isinstance(card, str) or missing:
        raise KeyError(f"{name} records no card or no {', '.join(missing) or 'card'}: cannot say where it ran")
    return Environment(card, versions["torch"], versions["triton"], versions["cuda"])


def single(rows: list[dict], key: str):
    """The one value of ``key`` that all ``rows`` share (an error if they differ: the sentence would be wrong)."""
    values = {row[key] for row in rows}
    if len(values) != 1:
        raise ValueError(f"expected one {key} in these results, found {sorted(values)}")
    return values.pop()


# --- formatting ---------------------------------------------------------------------------------------------

def fmt_range(lo: float, hi: float, fmt: str = "{:.2f}", unit: str = "") -> str:
    """``lo–hi`` formatted with ``fmt``, the unit once at the end; one value when both ends print the same."""
    a, b = fmt.format(lo), fmt.format(hi)
    return f"{a}{unit}" if a == b else f"{a}–{b}{unit}"


def fmt_times(x: float) -> str:
    """A speed-up with two significant figures for small ones: 1.8×, 5.7×, 20×, 24×."""
    return f"{x:.1f}×" if x < 9.95 else f"{x:.0f}×"


def tokens(n: int) -> str:
    """A sequence length as the README writes it: 4096 → '4k', 512 → '512'."""
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def mib(n_bytes: float) -> str:
    """Bytes in whole MiB."""
    return f"{n_bytes / 2**20:.0f}"


def short_dtype(dtype: str) -> str:
    """'bfloat16' or 'torch.bfloat16' → 'bf16'."""
    name = dtype.removeprefix("torch.")
    return DTYPES.get(name, name)


def short_card(card: str) -> str:
    """The model of a card's name: 'NVIDIA H100 80GB HBM3' → 'H100'."""
    model = re.search(r"\b[A-Z]\d{2,4}\b", card)
    return model.group(0) if model else card.removeprefix("NVIDIA ")


def article(word: str) -> str:
    """'a' or 'an' before a model name read letter by letter: 'an H100', 'an A100', 'a T4'."""
    return "an" if word[:1].upper() in "AEFHILMNORSX" else "a"


def and_join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def proportion(ours: float, theirs: float) -> str:
    """How ``ours`` compares, in words where they are plain: 'equal to', 'half of', else '0.73× of'."""
    ratio = ours / theirs
    if abs(ratio - 1) < 0.01:
        return "equal to"
    if abs(ratio - 0.5) < 0.01:
        return "half of"
    return f"{ratio:.2f}× of"


def wrap(text: str) -> str:
    """A markdown paragraph wrapped at :data:`WIDTH`, never inside a `code span`, ``N = 4k`` or ``130 MiB``."""
    nbsp = "\u00a0"
    protected = re.sub(r"`[^`]*`", lambda m: m.group(0).replace(" ", nbsp), text)
    protected = re.sub(r"(?<=\S) ([=≥]) (?=\S)", f"{nbsp}\\1{nbsp}", protected)
    protected = re.sub(r"(?<=\d) (?=MiB|MB|TB/s|TFLOP/s|%)", nbsp, protected)
    return textwrap.fill(protected, WIDTH, break_long_words=False, break_on_hyphens=False).replace(nbsp, " ")


def image(alt: str, path: str) -> str:
    return f"![{alt}]({path})"


def on(env: Environment, shared_versions: bool) -> str:
    """'on one NVIDIA H100 80GB HBM3', with the versions when they are not the same for every result."""
    return f"on one {env.card}" + ("" if shared_versions else f" ({env.versions})")


def on_alt(env: Environment) -> str:
    """'on an H100', for an image's alternative text."""
    model = short_card(env.card)
    return f"on {article(model)} {model}"


# --- numbers ------------------------------------------------------------------------------------------------

def ratio_span(results: dict, *, baseline: str, causal: bool | None = None, head_dims: list[int] | None = None,
               modes: tuple[str, ...] = ("fwd", "fwd_bwd"), min_n: int = 0) -> tuple[float, float]:
    """(min, max) of Triton's speed over ``baseline``'s across head dims, modes and (optionally) one mask."""
    subset = results if causal is None else {"rows": br.rows(results, causal=causal)}
    if head_dims is None:
        head_dims = sorted({row["head_dim"] for row in results["rows"]})
    spans = [br.ratio_range(subset, d, mode, min_n=min_n, baseline=baseline) for d in head_dims for mode in modes]
    spans = [s for s in spans if s is not None]
    if not spans:
        raise ValueError(f"no Triton/{baseline} ratio in these results (causal={causal}, D={head_dims}, {modes})")
    return min(lo for lo, _ in spans), max(hi for _, hi in spans)


def tflops_span(results: dict, head_dim: int, causal: bool, min_n: int = 0,
                method: str = "triton") -> tuple[float, float]:
    """(min, max) forward TFLOP/s of ``method`` at ``head_dim`` over N >= ``min_n``."""
    values = [r["tflops"] for r in br.rows(results, head_dim=head_dim, causal=causal, mode="fwd", method=method)
              if r["n"] >= min_n and r["tflops"]]
    if not values:
        raise ValueError(f"no forward TFLOP/s for {method} at D={head_dim}, causal={causal}, N >= {min_n}")
    return min(values), max(values)


def extra_memory(results: dict, method: str, mode: str, n: int) -> int:
    """Extra bytes of one ``method`` call (``mode``) at sequence length ``n``, from the memory rows."""
    found = [r["extra_bytes"] for r in results["memory"]
             if r["method"] == method and r["mode"] == mode and r["n"] == n and r["extra_bytes"] is not None]
    if not found:
        raise ValueError(f"no memory measurement of {method} {mode} at N={n}")
    return found[0]


def gqa_ratios(results: dict) -> dict[int, dict[int, float]]:
    """Triton's speed over SDPA (``enable_gqa=True``), by context then kv-head count, from the flat rows."""
    ms = {(r["context"], r["n_kv_heads"], r["impl"]): r["ms"] for r in results["rows"]}
    ratios: dict[int, dict[int, float]] = {}
    for (context, heads, impl), triton_ms in sorted(ms.items()):
        if impl == "triton_grouped" and (context, heads, "sdpa_enable_gqa") in ms:
            ratios.setdefault(context, {})[heads] = ms[(context, heads, "sdpa_enable_gqa")] / triton_ms
    return ratios


# --- the paragraphs -----------------------------------------------------------------------------------------

def flash_paragraph(results: dict, env: Environment, shared: bool) -> str:
    """Chapter 10's kernel against SDPA (flash and cuDNN backends): speed and memory."""
    d = max(row["head_dim"] for row in results["rows"])
    plain, causal = tflops_span(results, d, False, MIN_N), tflops_span(results, d, True, MIN_N)
    vs_plain = ratio_span(results, baseline="sdpa_flash", causal=False, head_dims=[d], modes=("fwd",), min_n=MIN_N)
    vs_causal = ratio_span(results, baseline="sdpa_flash", causal=True, head_dims=[d], modes=("fwd",), min_n=MIN_N)
    both = ratio_span(results, baseline="sdpa_flash", head_dims=[d], modes=("fwd_bwd",), min_n=MIN_N)
    cudnn = ratio_span(results, baseline="sdpa_cudnn", head_dims=[d], modes=("fwd",), min_n=MIN_N)
    n_mem = max(r["n"] for r in results["memory"])
    fwd = extra_memory(results, "triton", "fwd", n_mem), extra_memory(results, "sdpa_flash", "fwd", n_mem)
    fb = extra_memory(results, "triton", "fwd_bwd", n_mem), extra_memory(results, "sdpa_flash", "fwd_bwd", n_mem)
    fwd_mib = f"{mib(fwd[0])} MiB" if mib(fwd[0]) == mib(fwd[1]) else f"{mib(fwd[0])} vs {mib(fwd[1])} MiB"
    if cudnn[1] < 1:
        cudnn_text = f"PyTorch's cuDNN backend is still faster: our forward is {fmt_range(*cudnn, unit='×')} of it."
    else:
        cudnn_text = f"Against PyTorch's cuDNN backend our forward is {fmt_range(*cudnn, unit='×')}."
    return wrap(
        f"**FlashAttention in Triton (chapter 10)** — `python3 benchmarks/flash.py`, {on(env, shared)}. "
        f"{short_dtype(results['dtype'])}, B·N = {tokens(results['tokens'])} tokens, H·D = {results['hidden']}. "
        f"Forward at D = {d}, N ≥ {tokens(MIN_N)}: {fmt_range(*plain, fmt='{:.0f}')} TFLOP/s, "
        f"**{fmt_range(*vs_plain, unit='×')} SDPA's FlashAttention-2 backend** (causal: "
        f"{fmt_range(*causal, fmt='{:.0f}')}, {fmt_range(*vs_causal, unit='×')}); forward+backward "
        f"{fmt_range(*both, unit='×')}; extra memory at N = {tokens(n_mem)} {proportion(*fwd)} SDPA-flash forward "
        f"({fwd_mib}) and {proportion(*fb)} it forward+backward ({mib(fb[0])} vs {mib(fb[1])} MiB). {cudnn_text}")


def flex_paragraph(results: dict, env: Environment, shared: bool) -> str:
    """The library's kernels against FlexAttention on every shape, with SDPA and the teaching kernels alone measured
    again in the same run (chapter 10 reads the same run with ``benchmark_report.flex_reading``)."""
    head_dims = sorted({row["head_dim"] for row in results["rows"]})
    ns = sorted({row["n"] for row in results["rows"]})

    def span(mode: str, baseline: str, method: str = "triton") -> str:
        """``method`` ("triton": what the library runs today at each shape, br.library_choice) over ``baseline``."""
        ratios = br.choice_ratios(results, mode, baseline, teaching=method == "triton_teaching")
        if not ratios:
            raise ValueError(f"no {method}/{baseline} ratio in flash_flex.json ({mode})")
        return fmt_range(min(ratios), max(ratios), unit="×")

    teaching = ""
    if br.rows(results, method="triton_teaching"):
        teaching = (f" The teaching kernels alone (no Hopper path), measured beside them: {span('fwd', 'flex', 'triton_teaching')} "
                    f"Flex forward, {span('fwd_bwd', 'flex', 'triton_teaching')} forward+backward.")
    return wrap(
        f"**FlashAttention vs FlexAttention (chapter 10)** — `python3 benchmarks/flex.py`, {on(env, shared)}: "
        f"`flash_attention` as the library runs it on this card (at D=64 with 1k keys its teaching forward) against PyTorch's FlexAttention (`torch.compile`'d, "
        f"default options) on every shape (D ∈ {{{', '.join(map(str, head_dims))}}}, N = {tokens(ns[0])}–"
        f"{tokens(ns[-1])}, causal and not), with SDPA's flash and cuDNN backends measured again in the same run. "
        f"Library/Flex: **{span('fwd', 'flex')} forward**, **{span('fwd_bwd', 'flex')} forward+backward**; against "
        f"cuDNN {span('fwd', 'sdpa_cudnn')} forward and {span('fwd_bwd', 'sdpa_cudnn')} forward+backward; against "
        f"SDPA's flash backend {span('fwd', 'sdpa_flash')} and {span('fwd_bwd', 'sdpa_flash')}.{teaching}")


def hopper_paragraph(results: dict, env: Environment, shared: bool) -> str:
    """Chapter 10's Hopper fast path (the warp-specialised Gluon forward, the library's choice on sm_90) against
    cuDNN, FlexAttention and the teaching kernel, measured in one run, at the shapes where the library takes it
    (:func:`attention_lab.flash.benchmark_report.fast_path_shapes`); the others are named."""
    head_dims = sorted({row["head_dim"] for row in results["rows"]})
    ns = sorted({row["n"] for row in results["rows"]})
    taken_shapes, other_shapes = br.fast_path_shapes(results)
    taken = [row for row in br.rows(results, method="gluon_ws")
             if (row["head_dim"], row["n"], row["causal"]) in taken_shapes]
    not_taken = sorted({(head_dim, n) for head_dim, n, _ in other_shapes})

    def span(baseline: str) -> str:
        ratios = []
        for row in taken:
            base = br.rows(results, method=baseline, head_dim=row["head_dim"], n=row["n"], causal=row["causal"])
            if row["tflops"] and base and base[0]["tflops"]:
                ratios.append(row["tflops"] / base[0]["tflops"])
        if not ratios:
            raise ValueError(f"no gluon_ws/{baseline} ratio in flash_hopper.json")
        return fmt_range(min(ratios), max(ratios), unit="×")

    tflops = [r["tflops"] for r in taken if r["tflops"]]
    where = ""
    if not_taken:
        where = (" wherever the library takes it (not at " + ", ".join(f"D = {d} with {tokens(n)} keys"
                                                                      for d, n in not_taken)
                 + ", where the teaching kernel measured faster and runs instead)")
    return wrap(
        f"**Hopper fast path (chapter 10)** — `python3 benchmarks/hopper_steps.py`, {on(env, shared)}: the forward that "
        f"`flash_attention` runs on an H100/H200, a warp-specialised Gluon kernel (a TMA producer warp, two consumer "
        f"warpgroups, the softmax of one key block beside the next block's matrix products), at D ∈ "
        f"{{{', '.join(map(str, head_dims))}}}, N = {tokens(ns[0])}–{tokens(ns[-1])}, causal and not{where}: "
        f"{fmt_range(min(tflops), max(tflops), fmt='{:.0f}')} TFLOP/s, **{span('sdpa_cudnn')} SDPA's cuDNN backend**, "
        f"{span('flex')} FlexAttention and {span('triton')} the teaching kernel, all in the same run.")


def paged_paragraph(results: dict, env: Environment, shared: bool) -> str:
    """Chapter 11's paged decode kernel: fraction of copy bandwidth and speed against contiguous SDPA."""
    rows = results["rows"]

    def measured(group: list[dict]) -> str:
        of_copy = [r["of_copy"]["paged_triton"] for r in group]
        speed = [r["paged_vs_sdpa_speed"] for r in group]
        return (f"{fmt_range(min(of_copy) * 100, max(of_copy) * 100, '{:.0f}', ' %')} of the copy bandwidth at "
                f"{fmt_range(min(speed), max(speed), unit='×')} the speed of SDPA decode on a contiguous cache")

    by_heads = {}
    for r in rows:
        by_heads.setdefault(r.get("n_kv_heads", single(rows, "heads")), []).append(r)
    shared_kv = [h for h in by_heads if h == 1]  # MQA: a step reads little, so launch and merge overheads weigh
    full = [r for h, group in by_heads.items() if h not in shared_kv for r in group]
    heads = sorted((h for h in by_heads if h not in shared_kv), reverse=True)
    parts = [f"with {' and '.join(map(str, heads))} kv heads it reads **{measured(full)}**"] if full else []
    if shared_kv:
        mqa = by_heads[1]
        small = min(mqa, key=lambda r: r["kv_bytes"])
        parts.append(f"with one kv head (MQA; {small['kv_bytes'] / 1e6:.0f} MB per step at "
                     f"{tokens(small['context'])} context, so fixed costs weigh) {measured(mqa)}")
    return wrap(
        f"**Paged decode (chapter 11)** — `python3 benchmarks/paged_decode.py`, {on(env, shared)}. "
        f"B = {single(rows, 'batch')}, H = {single(rows, 'heads')}, D = {single(rows, 'head_dim')}, "
        f"{short_dtype(single(rows, 'dtype'))}, blocks of {single(rows, 'block_size')}, measured copy bandwidth "
        f"{results['copy_tb_s']:.1f} TB/s: {'; '.join(parts)}.")


def gqa_paragraph(results: dict, env: Environment, shared: bool) -> str:
    """Chapter 05's grouped decode against SDPA with enable_gqa, per context and kv-head count; the shortfall."""
    ratios = gqa_ratios(results)
    contexts = sorted(ratios)
    heads = sorted(ratios[contexts[0]], reverse=True)  # MHA first, the fewest kv heads (bold) last

    def series(context: int) -> str:
        values = [f"{ratios[context][h]:.2f}" for h in heads]
        return " / ".join(values[:-1] + [f"**{values[-1]}×**"])

    first = f"{series(contexts[0])} at {tokens(contexts[0])} context for {' / '.join(map(str, heads))} kv heads"
    rest = [f"{series(c)} at {tokens(c)}" for c in contexts[1:]]
    text = (f"**Grouped (GQA/MQA) decode (chapter 05)** — `python3 benchmarks/decode_gqa.py`, {on(env, shared)}. "
            f"The same kernel on a contiguous cache vs SDPA with `enable_gqa=True`: "
            f"{first}{', and ' + and_join(rest) if rest else ''}.")
    worst_context, worst_heads = min(((c, h) for c in contexts for h in ratios[c]), key=lambda k: ratios[k[0]][k[1]])
    if ratios[worst_context][worst_heads] < 1:
        shape = next(s for s in results["shapes"] if s["context"] == worst_context and s["n_kv_heads"] == worst_heads)
        label = "MQA" if worst_heads == 1 else f"{worst_heads} kv heads"
        cache = f"{shape['kv_bytes'] / 1e6:.0f} MB cache"
        why = (f"the split-K merge's fixed cost dominates a {cache}" if shape["kernel_plan"]["partitions"] > 1
               else f"a {cache}")
        text += (f" Short of the \"at least as fast at every ratio\" aim at {tokens(worst_context)} "
                 f"({label}: {why}).")
    return wrap(text)


def mla_paragraph(results: dict, env: Environment, shared: bool) -> str:
    """Chapter 12's absorbed MLA decode against naive decompression at the longest context."""
    speedups = results["speedup_absorbed_over_naive"]
    context = max(speedups, key=int)
    text = (f"**MLA decode (chapter 12)** — `python3 benchmarks/mla_decode.py`, {on(env, shared)}. DeepSeek-V2 "
            f"sizes, {short_dtype(results['dtype'])}, batch {results['batch']}: the absorbed path (attention over "
            f"the cached latent) is **{fmt_times(speedups[context]['graph'])} faster than naive decompression at "
            f"{tokens(int(context))}** (SDPA core, CUDA graph)")
    if "triton_graph" in speedups[context]:
        text += f", and the chapter's Triton split-K latent kernel {fmt_times(speedups[context]['triton_graph'])}"
    return wrap(text + ".")


def hbm_paragraph(results: dict, env: Environment, shared: bool) -> str:
    """Chapter 07's unfused chain against SDPA's fused kernel, at the shortest and longest N."""
    rows = sorted(results["chain_vs_sdpa"], key=lambda r: r["n"])
    first, last = rows[0], rows[-1]
    return wrap(
        f"**Memory traffic (chapter 07)** — `python3 benchmarks/hbm_traffic.py`, {on(env, shared)}: the unfused "
        f"QKᵀ → mask → softmax → ·V chain kernel by kernel against the byte model; SDPA's fused kernel is "
        f"{fmt_times(first['chain_fwd_s'] / first['sdpa_fwd_s'])} (N = {first['n']}) to "
        f"{fmt_times(last['chain_fwd_s'] / last['sdpa_fwd_s'])} (N = {last['n']}) faster.")


def side_by_side_paragraph(results: dict, env: Environment, shared: bool) -> str:
    """Chapter 13's TinyGPT variants: the model and the training length."""
    config = results["config"]
    return wrap(
        f"**All variants side by side (chapter 13)** — `python3 benchmarks/side_by_side.py`, {on(env, shared)}: "
        f"one TinyGPT ({config['n_layers']} layers, d = {config['d_model']}, context {config['context_length']}), "
        f"{results['steps']} steps each.")


def chapter_outcomes(rows: list[dict], key: str, chapters: list[str] | None) -> tuple[list[str], ...]:
    """``(chapters, passed, failed, absent)`` for a report whose ``rows`` name a chapter under ``key`` and have a
    ``status``; ``chapters`` defaults to the book's sources (or, without them, the report's own chapters)."""
    if chapters is None:
        chapters = sorted(p.stem for p in CHAPTERS.glob("*.py")) or [r[key] for r in rows]
    passed = [r[key] for r in rows if r["status"] == "passed"]
    failed = [r[key] for r in rows if r["status"] != "passed"]
    return chapters, passed, failed, [c for c in chapters if c not in {r[key] for r in rows}]


def notebooks_paragraph(results: dict, env: Environment, shared: bool, chapters: list[str] | None = None) -> str:
    """The whole-book run: how many chapters passed, which did not, and whether the report joins several runs."""
    chapters, passed, failed, absent = chapter_outcomes(results["notebooks"], "notebook", chapters)
    text = (f"**The whole book on a GPU** — `python3 benchmarks/run_all_notebooks.py`: {len(passed)} of "
            f"{len(chapters)} chapters executed top to bottom and passed {on(env, shared)}")
    notes = []
    if failed:
        notes.append(f"failed: {', '.join(failed)}")
    if absent:
        notes.append(f"not in the report: {', '.join(absent)}")
    if results.get("runs", 1) > 1:
        notes.append("report assembled from more than one run with `--append`")
    if notes:
        text += f" ({'; '.join(notes)})"
    return wrap(text + "; see [attention_lab/results/notebooks_gpu.md](attention_lab/results/notebooks_gpu.md).")


def gpu_tests_paragraph(results: dict, env: Environment, shared: bool) -> str:
    """The GPU tests: how many passed out of how many, in how many test files, which failed, at which commit."""
    files = sorted({r["file"] for r in results["tests"]})
    failed = [r["test"] for r in results["tests"] if r["status"] == "failed"]
    text = (f"**The GPU tests** — `{results['command']}`, reported by "
            f"`python3 benchmarks/gpu_test_report.py`: {results['passed']} of {len(results['tests'])} passed "
            f"{on(env, shared)} (commit {results['commit'][:7]}), in {len(files)} test files: the kernels against "
            f"float64 over head dims, odd and unequal lengths, causal, windows, masks, GQA, fp16 and bf16, strided "
            f"inputs' gradients, the Hopper paths, decode and MLA")
    notes = ([f"{len(failed)} failed: {', '.join(failed)}"] if failed else []) + (
        [f"{results['skipped']} skipped"] if results["skipped"] else [])
    return wrap(text + (f" ({'; '.join(notes)})" if notes else "") +
                "; see [attention_lab/results/gpu_tests.md](attention_lab/results/gpu_tests.md).")


def wheel_paragraph(results: dict, env: Environment, shared: bool, chapters: list[str] | None = None) -> str:
    """The installed-wheel test on a GPU: how many chapters ran alone from the wheel, which did not, which are absent."""
    chapters, passed, failed, absent = chapter_outcomes([r for r in results["tests"] if r["chapter"]], "chapter", chapters)
    others = [r for r in results["tests"] if not r["chapter"]]
    text = (f"**Each chapter alone from the installed wheel, on a GPU** — `python3 benchmarks/gpu_test_report.py`: "
            f"{len(passed)} of {len(chapters)} chapters opened alone in an empty folder, offline, against the package "
            f"installed from its wheel, ran and passed {on(env, shared)} (commit {results['commit'][:7]}), the way a "
            f"Colab GPU student meets them")
    notes = ([f"failed: {', '.join(failed)}"] if failed else []) + ([f"not run: {', '.join(absent)}"] if absent else [])
    notes += [f"{sum(r['status'] == 'passed' for r in others)} of {len(others)} packaging checks passed"] if others else []
    return wrap(f"{text} ({'; '.join(notes)}); see "
                "[attention_lab/results/installed_wheel_gpu.md](attention_lab/results/installed_wheel_gpu.md).")


def opening(envs: list[Environment]) -> str:
    """Which cards produced the results, the versions (once, where shared), and how to reproduce them."""
    cards = list(dict.fromkeys(env.card for env in envs))
    versions = list(dict.fromkeys(env.versions for env in envs))
    rest = ("the JSON next to each plot records card, versions and shapes. Reproduce with the script named in "
            "each result.")
    if len(cards) == 1:
        shared = f" ({versions[0]})" if len(versions) == 1 else ""
        return wrap(f"All measured on one **{cards[0]}**{shared}, each against PyTorch's own kernels **in the same "
                    f"run**; {rest}")
    shared = f", all with {versions[0]}" if len(versions) == 1 else ""
    return wrap(f"Each result names the card that produced it (here {and_join([f'**{c}**' for c in cards])}{shared}) "
                f"and was measured against PyTorch's own kernels **in the same run**; {rest}")


def results_section(results_dir: Path = RESULTS, chapters: list[str] | None = None) -> str:
    """README.md's text between the results markers, built from the committed result files."""
    data = load_all(results_dir)
    envs = {name: environment(payload, name) for name, payload in data.items()}
    shared = len({env.versions for env in envs.values()}) == 1

    def args(name: str) -> tuple[dict, Environment, bool]:
        return data[name], envs[name], shared

    flash, flex = envs["flash_benchmark.json"], envs["flash_flex.json"]
    blocks = [
        opening(list(envs.values())),
        flash_paragraph(*args("flash_benchmark.json")),
        image(f"FlashAttention in Triton vs PyTorch SDPA {on_alt(flash)}", "attention_lab/results/flash_tflops.png"),
        flex_paragraph(*args("flash_flex.json")),
        image(f"FlashAttention in Triton vs FlexAttention {on_alt(flex)}", "attention_lab/results/flash_flex.png"),
        hopper_paragraph(*args("flash_hopper.json")),
        image(f"The Hopper fast path, step by step {on_alt(envs['flash_hopper.json'])}",
              "attention_lab/results/flash_hopper.png"),
        paged_paragraph(*args("paged_decode.json")),
        image(f"Paged decode bandwidth {on_alt(envs['paged_decode.json'])}", "attention_lab/results/paged_decode.png"),
        gqa_paragraph(*args("decode_gqa.json")),
        image(f"Grouped decode vs SDPA {on_alt(envs['decode_gqa.json'])}", "attention_lab/results/decode_gqa.png"),
        mla_paragraph(*args("mla_decode.json")),
        image(f"MLA decode {on_alt(envs['mla_decode.json'])}", "attention_lab/results/mla_decode.png"),
        hbm_paragraph(*args("hbm_traffic.json")),
        image(f"HBM traffic {on_alt(envs['hbm_traffic.json'])}", "attention_lab/results/hbm_traffic.png"),
        side_by_side_paragraph(*args("side_by_side.json")),
        image(f"TinyGPT variants {on_alt(envs['side_by_side.json'])}", "attention_lab/results/side_by_side.png"),
        notebooks_paragraph(*args("notebooks_gpu.json"), chapters=chapters),
        gpu_tests_paragraph(*args("gpu_tests.json")),
        wheel_paragraph(*args("installed_wheel_gpu.json"), chapters=chapters),
    ]
    return "\n\n".join(blocks)


# --- README.md ----------------------------------------------------------------------------------------------

def section_of(readme: str) -> str:
    """The text between the results markers (without the newline after the first and before the second)."""
    if START not in readme or END not in readme:
        raise ValueError(f"README.md needs the markers {START} and {END}")
    return readme.split(START, 1)[1].split(END, 1)[0].removeprefix("\n").removesuffix("\n")


def readme_with_results(readme: str, section: str | None = None) -> str:
    """``readme`` with the text between the results markers replaced by ``section`` (default: built now)."""
    section_of(readme)  # the markers must be there
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{results_section() if section is None else section}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 and print a diff when README.md differs")
    args = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    updated = readme_with_results(current)
    if args.check:
        if current == updated:
            return 0
        sys.stdout.writelines(difflib.unified_diff(current.splitlines(keepends=True), updated.splitlines(keepends=True),
                                                   "README.md (committed)", "README.md (from attention_lab/results)"))
        print("\nREADME.md's GPU results are stale: run `python benchmarks/readme_results.py`")
        return 1
    if current != updated:
        README.write_text(updated, encoding="utf-8")
        print("README.md: GPU results section rewritten")
    else:
        print("README.md: GPU results section already current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
