"""Plot helpers shared by the chapters: every figure gets a title, labelled axes and units."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


def heatmap(matrix, row_labels: Sequence[str], col_labels: Sequence[str], title: str,
            xlabel: str = "key", ylabel: str = "query", fmt: str = "{:.2f}", ax=None, cmap: str = "Blues"):
    """Annotated heat map of a 2-D array (e.g. attention weights); NaN/−inf cells are shown blank."""
    matrix = np.asarray(matrix, dtype=float)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.75 * len(col_labels) + 2, 0.6 * len(row_labels) + 1.5))
    shown = np.where(np.isfinite(matrix), matrix, np.nan)
    image = ax.imshow(shown, cmap=cmap)
    ax.set_xticks(range(len(col_labels)), labels=col_labels, rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), labels=row_labels)
    finite = shown[np.isfinite(shown)]
    middle = (finite.max() + finite.min()) / 2 if finite.size else 0.0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = matrix[i, j]
            if np.isnan(value):
                continue  # an unknown cell stays blank
            text = "−∞" if value == -np.inf else fmt.format(value)
            color = "white" if np.isfinite(value) and value > middle else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def loss_curve(result, title: str = "TinyGPT training", ax=None, label: str | None = None):
    """Train and validation cross-entropy (nats/token) against step, from a :class:`~attention_lab.train.TrainResult`."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    prefix = f"{label} " if label else ""
    ax.plot(result.steps, result.train_loss, label=f"{prefix}train")
    ax.plot(result.steps, result.val_loss, "--", label=f"{prefix}validation")
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
