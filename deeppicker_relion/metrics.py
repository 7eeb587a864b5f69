"""Picks against reference picks: one-to-one matching, precision, recall, F1, centre error, and the
precision/recall curve over the number of top-scored picks.

Matching: picks are taken best score first; each takes the nearest still-unmatched reference
within ``radius`` (default 0.2 x box). The matching of the top N picks is therefore a prefix of the
full matching, which is what makes the top-N curve consistent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

MATCH_RADIUS = 0.2  # x box


def match(picks: pd.DataFrame, reference: pd.DataFrame, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching in descending score order.

    Returns (``matched_ref``: for each pick in descending score order, the index of its reference or
    -1; ``distance``: its distance in pixels or NaN). Picks with NaN scores keep file order.
    """
    order = _score_order(picks)
    pxy = np.column_stack([picks["x"].to_numpy(float), picks["y"].to_numpy(float)])[order]
    rxy = np.column_stack([reference["x"].to_numpy(float), reference["y"].to_numpy(float)])
    matched = np.full(len(pxy), -1, dtype=int)
    dist = np.full(len(pxy), np.nan)
    if len(pxy) == 0 or len(rxy) == 0:
        return matched, dist
    tree = cKDTree(rxy)
    taken = np.zeros(len(rxy), dtype=bool)
    for i, point in enumerate(pxy):
        for j in sorted(tree.query_ball_point(point, r=radius), key=lambda j: np.hypot(*(rxy[j] - point))):
            if not taken[j]:
                taken[j] = True
                matched[i] = j
                dist[i] = float(np.hypot(*(rxy[j] - point)))
                break
    return matched, dist


def _score_order(picks: pd.DataFrame) -> np.ndarray:
    if "score" not in picks.columns or picks["score"].isna().all():
        return np.arange(len(picks))
    return np.argsort(-picks["score"].fillna(-np.inf).to_numpy(float), kind="stable")


@dataclass
class Counts:
    """Matching counts for one micrograph (or a sum)."""

    n_picks: int
    n_reference: int
    true_positives: int
    error_sum_px: float  # sum of centre errors of matched picks (pixels)
    box_px: float

    @property
    def precision(self) -> float:
        return self.true_positives / self.n_picks if self.n_picks else float("nan")

    @property
    def recall(self) -> float:
        return self.true_positives / self.n_reference if self.n_reference else float("nan")

    @property
    def f1(self) -> float:
        denom = self.n_picks + self.n_reference
        return 2 * self.true_positives / denom if denom else float("nan")

    @property
    def centre_error(self) -> float:
        """Mean centre error of matched picks, as a fraction of the box."""
        return self.error_sum_px / self.true_positives / self.box_px if self.true_positives else float("nan")


def evaluate_micrograph(picks: pd.DataFrame, reference: pd.DataFrame, box_px: float, radius: float = MATCH_RADIUS) -> Counts:
    """Counts for one micrograph; ``radius`` is a fraction of ``box_px``."""
    matched, dist = match(picks, reference, radius * box_px)
    ok = matched >= 0
    return Counts(len(picks), len(reference), int(ok.sum()), float(np.nansum(dist[ok])), box_px)


def evaluate(
    picks: dict[str, pd.DataFrame],
    reference: dict[str, pd.DataFrame],
    box_px: float | dict[str, float],
    radius: float = MATCH_RADIUS,
) -> pd.DataFrame:
    """Per-micrograph and total metrics for every micrograph in ``reference``.

    Missing picks count as no picks. Returns one row per micrograph plus a final ``TOTAL`` row with
    columns micrograph, n_picks, n_reference, true_positives, precision, recall, f1, centre_error
    (mean centre error / box).
    """
    rows = []
    total = Counts(0, 0, 0, 0.0, 1.0)
    err_norm = 0.0
    empty = pd.DataFrame({"x": [], "y": [], "score": []})
    for name, ref in reference.items():
        box = box_px[name] if isinstance(box_px, dict) else box_px
        c = evaluate_micrograph(picks.get(name, empty), ref, box, radius)
        rows.append(_row(name, c))
        total.n_picks += c.n_picks
        total.n_reference += c.n_reference
        total.true_positives += c.true_positives
        err_norm += c.error_sum_px / box
    total.error_sum_px = err_norm
    rows.append(_row("TOTAL", total))
    return pd.DataFrame(rows)


def _row(name: str, c: Counts) -> dict:
    return {
        "micrograph": name,
        "n_picks": c.n_picks,
        "n_reference": c.n_reference,
        "true_positives": c.true_positives,
        "precision": c.precision,
        "recall": c.recall,
        "f1": c.f1,
        "centre_error": c.centre_error,
    }


def topn_curve(
    picks: dict[str, pd.DataFrame],
    reference: dict[str, pd.DataFrame],
    box_px: float | dict[str, float],
    radius: float = MATCH_RADIUS,
    ratios: np.ndarray | None = None,
) -> pd.DataFrame:
    """Precision and recall when keeping the top ``ratio x N_reference`` picks of each micrograph.

    Returns columns ratio, n_picks, true_positives, precision, recall, f1 (totals over micrographs).
    """
    ratios = np.round(np.arange(0.1, 2.01, 0.1), 2) if ratios is None else np.asarray(ratios, float)
    tp = np.zeros(len(ratios))
    npk = np.zeros(len(ratios))
    nref = 0
    empty = pd.DataFrame({"x": [], "y": [], "score": []})
    for name, ref in reference.items():
        box = box_px[name] if isinstance(box_px, dict) else box_px
        p = picks.get(name, empty)
        matched, _ = match(p, ref, radius * box)
        cum = np.concatenate([[0], np.cumsum(matched >= 0)])
        nref += len(ref)
        for k, r in enumerate(ratios):
            n = min(len(p), int(round(r * len(ref))))
            tp[k] += cum[n]
            npk[k] += n
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(npk > 0, tp / npk, np.nan)
        recall = tp / nref if nref else np.full(len(ratios), np.nan)
        f1 = np.where(npk + nref > 0, 2 * tp / (npk + nref), np.nan)
    return pd.DataFrame(
        {"ratio": ratios, "n_picks": npk.astype(int), "true_positives": tp.astype(int), "precision": precision, "recall": recall, "f1": f1}
    )
