"""Figures of the visual report (matplotlib, Agg backend: no display needed).

Every plotting function takes plain arrays / frames, writes one PNG atomically and closes its figure.
Coordinates are particle centres in pixels of the ORIGINAL micrograph (x = column, y = row); images
drawn are shown with an extent in those pixels, whatever their binning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import EllipseCollection  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ..io.atomic import atomic_path  # noqa: E402
from ..picking.preprocess import INPUT_SIZE, preprocess  # noqa: E402

DISPLAY_MAX_SIDE = 640  # px: micrographs are binned to at most this for drawing (a panel is ~500 px)
SCORE_CMAP = "plasma"
MATCHED, FALSE_POSITIVE, MISSED = "#2ca02c", "#d62728", "#1f9bff"


def _save(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return Path(path)


def display_image(data: np.ndarray, box_px: float, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """A micrograph low-passed and binned for display: the picker's own preprocessing (band-pass at
    ~1/12 of the box, zero median, unit robust std), binned further so the long side is at most
    ``max_side`` px. Draw it with ``extent`` in original pixels (:func:`_extent`)."""
    effective_box = max(float(box_px), INPUT_SIZE * max(data.shape) / float(max_side))
    return preprocess(data, min(effective_box, float(min(data.shape)))).image


def _extent(shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """imshow extent that puts pixel centres of the original micrograph at integer coordinates."""
    return (-0.5, shape[1] - 0.5, shape[0] - 0.5, -0.5)


def _circles(ax: plt.Axes, x: np.ndarray, y: np.ndarray, diameter: float, colors, lw: float = 1.0, ls: str = "-") -> None:
    """Circles of ``diameter`` (data units) at (x, y); one collection, fast for thousands."""
    if len(x) == 0:
        return
    n = len(x)
    coll = EllipseCollection(
        np.full(n, diameter), np.full(n, diameter), np.zeros(n), units="xy",
        offsets=np.column_stack([x, y]), offset_transform=ax.transData,
        facecolors="none", edgecolors=colors, linewidths=lw, linestyles=ls,
    )  # fmt: skip
    ax.add_collection(coll)


def _show(ax: plt.Axes, image: np.ndarray, shape: tuple[int, int]) -> None:
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0, 1)
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, extent=_extent(shape), interpolation="bilinear")
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(shape[0] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])


@dataclass
class Panel:
    """One micrograph to draw: its display image, original shape (rows, cols), box [px], picks
    (x, y, score) and a title."""

    image: np.ndarray
    shape: tuple[int, int]
    box_px: float
    picks: pd.DataFrame
    title: str


def _grid(n: int) -> tuple[int, int]:
    cols = 1 if n == 1 else 2 if n <= 4 else 3
    return (n + cols - 1) // cols, cols


def plot_micrographs(panels: Sequence[Panel], path: str | Path, threshold: float, title: str = "") -> Path:
    """Micrographs with a circle of the box size at every pick, coloured by score (colour bar from
    ``threshold`` to 1)."""
    n = max(1, len(panels))
    rows, cols = _grid(n)
    aspect = np.median([p.shape[0] / p.shape[1] for p in panels]) if panels else 1.0
    width = 4.6
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 1.0, width * aspect * rows + 0.7), squeeze=False,
                             layout="constrained")
    norm = Normalize(vmin=min(threshold, 0.99), vmax=1.0)
    cmap = plt.get_cmap(SCORE_CMAP)
    for ax, panel in zip(axes.flat, panels):
        _show(ax, panel.image, panel.shape)
        scores = panel.picks["score"].to_numpy(float) if "score" in panel.picks else np.ones(len(panel.picks))
        colors = cmap(norm(np.nan_to_num(scores, nan=1.0)))
        _circles(ax, panel.picks["x"].to_numpy(float), panel.picks["y"].to_numpy(float), panel.box_px, colors)
        ax.set_title(panel.title, fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if not panels:
        axes.flat[0].text(0.5, 0.5, "no micrograph could be drawn", ha="center", va="center")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.8, label="score")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def picks_at_thresholds(scores: Sequence[np.ndarray], thresholds: np.ndarray, max_picks: int | None) -> np.ndarray:
    """Total picks over micrographs at each threshold: per micrograph the candidates scoring at
    least the threshold, at most ``max_picks``."""
    total = np.zeros(len(thresholds), dtype=np.int64)
    for s in scores:
        s = np.sort(np.asarray(s, float))
        n = len(s) - np.searchsorted(s, thresholds, side="left")
        total += np.minimum(n, max_picks) if max_picks is not None and max_picks >= 0 else n
    return total


def plot_scores(scores: Sequence[np.ndarray], path: str | Path, threshold: float, floor: float,
                max_picks: int | None = None, title: str = "") -> Path:
    """Histogram of all candidate scores (log counts), the threshold, and how many picks each
    threshold would give (right axis)."""
    flat = np.concatenate([np.asarray(s, float) for s in scores]) if len(scores) else np.zeros(0)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.hist(flat, bins=np.linspace(0, 1, 41), color="#7f7f7f", log=flat.size > 0)  # no candidates: no log axis
    ax.set_xlabel("score")
    ax.set_ylabel(f"candidates (all micrographs, score >= {floor:g})")
    ax.set_xlim(0, 1)
    t = np.linspace(0, 1, 201)
    n = picks_at_thresholds(scores, t, max_picks)
    right = ax.twinx()
    right.plot(t, n, color="#1f77b4", lw=1.5)
    right.set_ylabel("picks at this threshold", color="#1f77b4")
    right.set_ylim(0, max(1, int(n.max())) * 1.05)
    at = int(picks_at_thresholds(scores, np.array([threshold]), max_picks)[0])
    ax.axvline(threshold, color="#d62728", lw=1.5)
    ax.text(threshold, 0.97, f" threshold {threshold:g}: {at} picks", transform=ax.get_xaxis_transform(),
            color="#d62728", va="top", ha="left" if threshold < 0.6 else "right", fontsize=8)
    ax.set_title(title or f"scores of {len(flat)} candidates on {len(scores)} micrographs", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_picks_per_micrograph(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Picks per micrograph in list order (bars; points beyond 120 micrographs); failed ones as
    red crosses at 0. ``table``: columns rlnMicrographName, status, n_picks."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    idx = np.arange(len(table))
    n = table["n_picks"].to_numpy(float) if len(table) else np.zeros(0)
    failed = (table["status"] == "failed").to_numpy() if len(table) else np.zeros(0, bool)
    if len(table) <= 120:
        ax.bar(idx[~failed], n[~failed], color="#1f77b4", width=0.8)
    else:
        ax.plot(idx[~failed], n[~failed], ".", ms=2, color="#1f77b4")
    if failed.any():
        ax.plot(idx[failed], np.zeros(failed.sum()), "x", color="#d62728", label=f"failed ({failed.sum()})")
        ax.legend(fontsize=8, loc="upper right")
    if (~failed).any():
        ax.axhline(n[~failed].mean(), color="grey", ls="--", lw=0.8)
    if 0 < len(table) <= 24:
        names = [Path(str(v)).stem for v in table["rlnMicrographName"]]
        ax.set_xticks(idx, names, rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("micrograph" if len(table) <= 24 else "micrograph (list order)")
    ax.set_ylabel("picks")
    ax.set_title(title or f"picks per micrograph (mean {n[~failed].mean() if (~failed).any() else 0:.1f})", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_picks_vs_reference(image: np.ndarray, shape: tuple[int, int], box_px: float, picks: pd.DataFrame,
                            reference: pd.DataFrame, matched_ref: np.ndarray, path: str | Path,
                            title: str = "") -> Path:
    """One micrograph: matched picks (green), unmatched picks (red), missed reference particles
    (blue, dashed). ``picks`` sorted as ``matched_ref`` (index of the matched reference or -1)."""
    fig, ax = plt.subplots(figsize=(7.0, 7.0 * shape[0] / shape[1] + 0.6))
    _show(ax, image, shape)
    ok = matched_ref >= 0
    px, py = picks["x"].to_numpy(float), picks["y"].to_numpy(float)
    missed = np.setdiff1d(np.arange(len(reference)), matched_ref[ok])
    _circles(ax, px[ok], py[ok], box_px, MATCHED, lw=1.2)
    _circles(ax, px[~ok], py[~ok], box_px, FALSE_POSITIVE, lw=1.2)
    rx, ry = reference["x"].to_numpy(float), reference["y"].to_numpy(float)
    _circles(ax, rx[missed], ry[missed], box_px, MISSED, lw=1.2, ls="--")
    handles = [
        Line2D([], [], color=MATCHED, marker="o", ls="", mfc="none", label=f"pick matching a reference ({ok.sum()})"),
        Line2D([], [], color=FALSE_POSITIVE, marker="o", ls="", mfc="none", label=f"pick without reference ({(~ok).sum()})"),
        Line2D([], [], color=MISSED, marker="o", ls="", mfc="none", label=f"reference not picked ({len(missed)})"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=3, fontsize=7, frameon=False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_topn_curve(curve: pd.DataFrame, path: str | Path, title: str = "") -> Path:
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
    return _save(fig, path, dpi=120)
