"""Chapter 13 on a GPU: every attention variant, one TinyGPT configuration, one training budget.

    python benchmarks/side_by_side.py            # writes attention_lab/results/side_by_side.{json,png}

The chapter-13 notebook plots the committed JSON when it runs without a GPU.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from attention_lab.side_by_side import VARIANTS, compare_variants, plot_comparison, results_table, results_to_dicts  # noqa: E402
from attention_lab.data import TokenDataset, get_tokenizer, load_corpus  # noqa: E402
from attention_lab.book.results import RESULTS_DIR as RESULTS  # noqa: E402
from attention_lab.book.setup_cell import triton_version  # noqa: E402
from attention_lab.model import TinyGPTConfig  # noqa: E402

# The GPU budget: a model big enough that attention, not Python overhead, decides the speed.
BASE = dict(context_length=256, d_model=256, n_layers=4, n_heads=8)
STEPS, BATCH, SPEED_BATCH = 1500, 64, 32


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("side_by_side.py measures the GPU budget and needs CUDA; the chapter-13 notebook runs the CPU budget.")
    torch.backends.cuda.matmul.allow_tf32 = True
    text = load_corpus()
    tokenizer = get_tokenizer(text)
    data = TokenDataset.from_text(text, tokenizer, BASE["context_length"])
    base = TinyGPTConfig(vocab_size=tokenizer.vocab_size, backend="torch", **BASE)
    names = list(VARIANTS)
    results = compare_variants(base, names, data, steps=STEPS, batch_size=BATCH, device="cuda",
                               speed_batch=SPEED_BATCH, progress=False)
    print(results_table(results))
    card = torch.cuda.get_device_name(0)
    report = {"device": card, "torch": torch.__version__, "triton": triton_version(), "cuda": torch.version.cuda,
              "python": platform.python_version(), "tokenizer": tokenizer.name,
              "config": {**BASE, "vocab_size": tokenizer.vocab_size, "backend (non-flash variants)": "torch"},
              "steps": STEPS, "batch_size": BATCH, "speed_batch": SPEED_BATCH, "results": results_to_dicts(results)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "side_by_side.json").write_text(json.dumps(report, indent=2) + "\n")
    fig = plot_comparison(results, f"TinyGPT variants, {STEPS} steps on {card}")
    fig.savefig(RESULTS / "side_by_side.png", dpi=120)


if __name__ == "__main__":
    main()
