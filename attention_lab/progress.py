"""The book's progress bar: ``tqdm.auto`` — a widget in Jupyter and Colab, a text bar elsewhere.

Where ipywidgets is missing (a plain ``pip install`` with nbclient, as the book's build and CI execute the
chapters) ``tqdm.auto`` falls back to its text bar and warns that the widget is unavailable. The text bar
is what the committed chapters should show anyway (it keeps its final 100 % state in the saved output,
where a widget saves a frozen 0 %), so that one warning is silenced here; every other warning stays.
"""

from __future__ import annotations

import warnings

from tqdm import TqdmWarning

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
