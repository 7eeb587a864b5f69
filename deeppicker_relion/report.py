"""Figures: precision/recall curves, picks drawn on micrographs, score histograms (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .io.atomic import atomic_path  # noqa: E402


def plot_topn_curve(curve: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Precision, recall and F1 against the number of top-scored picks kept (N / N_reference)."""
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    ax.plot(curve["ratio"], curve["precision"], "o-", ms=3, label="precision")
    ax.plot(curve["ratio"], curve["recall"], "s-", ms=3, label="recall")
    ax.plot(curve["ratio"], curve["f1"], "^-", ms=3, label="F1")
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("top N picks per micrograph / N reference")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
