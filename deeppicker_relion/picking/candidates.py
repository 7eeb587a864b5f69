"""From a score map to particle picks: clean, find peaks, filter, refine, sort, threshold.

Steps (DeepPicker 2016, with the authors' code's bugs fixed):

1. clean: connected regions of grid points scoring above ``clean_threshold`` that are larger than
   ``clean_factor`` x the mean region size are ice or carbon, not particles: they are removed
   (``clean=False`` skips this, e.g. for crowded micrographs where particles touch);
2. peaks: one maximum per ``peak_window`` x box window, then greedy non-maximum suppression so
   picked centres are at least ``peak_window / 2`` x box apart (no duplicate picks). Peaks are
   found on the logit margins, not on probabilities, which saturate at 1 over a plateau;
3. filter: candidates whose box holds more than ``outlier_fraction`` of pixels beyond
   ``outlier_sigma`` robust standard deviations of the micrograph are dropped (contamination,
   hot pixels, carbon edges); so are candidates in or within half a box of a dark region much
   larger than a particle (``dark_sigma``, :func:`dark_regions`: contamination, ice crystals,
   whose rims otherwise draw picks);
4. refine: a parabola through each peak and its neighbours, on the score map smoothed over
   ``refine_sigma`` x box, gives the sub-grid centre; then, when a centring network is given
   (:mod:`.centring`; the shipped one for the shipped model) and ``recentre`` is on, each candidate
   moves to the centre that network reads from the micrograph around it (of two that end closer than
   ``peak_window / 2`` x box, the better one stays);
5. sort by score. :func:`find_candidates` returns every candidate down to the raw score ``floor``
   (1e-5), with the shares of the micrograph removed as ice / carbon and as dark regions;
   :func:`.fom.calibrate_candidates` turns the raw scores into the figure of merit, and
   :func:`select_picks` keeps those whose figure of merit is at least ``threshold``, at most
   ``max_picks`` per micrograph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from .centring import CentringNet, recentre
from ..errors import JobError
from .fom import FEATURE_FLOOR, SAVE_FLOOR
from .preprocess import INPUT_SIZE, Preprocessed
from .scoring import ScoreMap


@dataclass
class PickParams:
    """Picking parameters. Distances are fractions of the particle box; ``threshold`` applies to the
    figure of merit (:mod:`.fom`: a calibrated probability that a pick is a particle, 0..1);
    ``floor`` is the raw network score down to which candidates are found (the figure of merit
    describes each micrograph by all of them)."""

    # the operating point 2D classification wants (recall first): the highest recall at precision
    # >= 0.8 over the held-out sets with fewer than 0.5 picks per empty micrograph
    # (benchmarks/accuracy.py --only calibration; MODEL_CARD.md, "Results")
    threshold: float = 0.6
    max_picks: int | None = None
    floor: float = FEATURE_FLOOR
    clean: bool = True
    clean_threshold: float = 0.5
    clean_factor: float = 4.0
    peak_window: float = 0.8
    outlier_sigma: float = 3.0
    outlier_fraction: float = 0.2
    # dark regions (contamination): darker than dark_sigma robust SDs at 0.5-2.5 box scales and
    # at least 2 box areas large; 0 turns the filter off. 4 chosen on validation micrographs
    # (benchmarks/accuracy.py, MODEL_CARD.md).
    dark_sigma: float = 4.0
    refine: bool = True
    # Gaussian smoothing (sigma, fraction of the box) of the logit margins before the sub-grid
    # parabola (positions only; scores and candidates are unchanged); 0: the parabola on the raw
    # grid. 0.044 box (0.7 grid cells at the default step) chosen on the selection micrographs of
    # random molecules (benchmarks/accuracy.py --only refine, MODEL_CARD.md).
    refine_sigma: float = 0.044
    # move each candidate to the particle centre the centring network reads around it (centring.py;
    # only where find_candidates is given one: the picking paths give the shipped network to models
    # whose micrographs are normalised as it was trained). Scores are unchanged.
    recentre: bool = True

    @property
    def save_floor(self) -> float:
        """Figure of merit down to which candidates are saved for re-thresholding."""
        return min(SAVE_FLOOR, self.threshold)


def _logit(p: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return float(np.log(p / (1 - p)))


def clean_ice(logits: np.ndarray, threshold: float = 0.5, factor: float = 4.0) -> tuple[np.ndarray, int]:
    """Remove connected regions scoring above ``threshold`` (probability) that are larger than
    ``factor`` x the mean region size: returns (copy with those regions set to -inf, number removed).
    """
    labels, n = ndimage.label(logits > _logit(threshold))
    if n < 2:
        return logits.copy(), 0
    sizes = np.bincount(labels.ravel())[1:]
    big = np.flatnonzero(sizes > factor * sizes.mean()) + 1
    cleaned = logits.copy()
    if big.size:
        cleaned[np.isin(labels, big)] = -np.inf
    return cleaned, int(big.size)


def _peaks(logits: np.ndarray, window_cells: float, floor_logit: float) -> tuple[np.ndarray, np.ndarray]:
    size = max(1, int(round(window_cells)))
    if size % 2 == 0:
        size += 1
    local_max = ndimage.maximum_filter(logits, size=size, mode="constant", cval=-np.inf)
    rows, cols = np.nonzero((logits == local_max) & (logits >= floor_logit))
    return rows, cols


def _nms(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, min_cells: float) -> np.ndarray:
    """Indices (into rows/cols, by descending value) kept with no two closer than ``min_cells``."""
    order = np.argsort(-values, kind="stable")
    if order.size == 0:
        return order
    tree = cKDTree(np.column_stack([rows, cols]).astype(float))
    suppressed = np.zeros(order.size, dtype=bool)
    keep = []
    for idx in order:
        if suppressed[idx]:
            continue
        keep.append(idx)
        for other in tree.query_ball_point([rows[idx], cols[idx]], r=min_cells - 1e-9):
            suppressed[other] = True
    return np.asarray(keep, dtype=int)


def _refine(logits: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-grid peak position: a parabola through each peak and its two neighbours, per axis,
    on the logit margins (offset clipped to half a grid step)."""
    padded = np.pad(np.where(np.isfinite(logits), logits, np.nan), 1, mode="edge")
    r, c = rows + 1, cols + 1
    centre = padded[r, c]

    def offset(minus: np.ndarray, plus: np.ndarray) -> np.ndarray:
        curvature = minus - 2 * centre + plus
        with np.errstate(invalid="ignore", divide="ignore"):
            off = np.where(curvature < 0, 0.5 * (minus - plus) / curvature, 0.0)
        return np.clip(np.nan_to_num(off), -0.5, 0.5)

    return rows + offset(padded[r - 1, c], padded[r + 1, c]), cols + offset(padded[r, c - 1], padded[r, c + 1])


def smooth_logits(logits: np.ndarray, sigma_cells: float) -> np.ndarray:
    """Copy of a logit map smoothed by a Gaussian of ``sigma_cells`` grid cells, for sub-grid
    refinement. Cells removed as ice (-inf) take no part (normalised convolution) and stay -inf.
    ``sigma_cells <= 0``: the map itself."""
    if sigma_cells <= 0 or logits.size == 0:
        return logits
    finite = np.isfinite(logits)
    weight = ndimage.gaussian_filter(finite.astype(np.float64), sigma_cells, mode="nearest")
    total = ndimage.gaussian_filter(np.where(finite, logits, 0.0).astype(np.float64), sigma_cells, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite & (weight > 1e-6), total / weight, -np.inf)


def _outlier_fraction(image: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    """Fraction of pixels beyond ``sigma`` (image is normalised) in the 64 px box at each centre."""
    beyond = (np.abs(image) > sigma).astype(np.float32)
    integral = np.pad(beyond.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    half = INPUT_SIZE // 2
    r0 = np.clip(np.round(y).astype(int) - half, 0, image.shape[0])
    c0 = np.clip(np.round(x).astype(int) - half, 0, image.shape[1])
    r1 = np.clip(r0 + INPUT_SIZE, 0, image.shape[0])
    c1 = np.clip(c0 + INPUT_SIZE, 0, image.shape[1])
    counts = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    area = np.maximum((r1 - r0) * (c1 - c0), 1)
    return counts / area


# dark_regions: smoothing scales, smallest region and margin, in boxes; computed on a grid of
# DARK_CELL resampled pixels (1/8 box), which is ample for scales of half a box and more
DARK_INNER, DARK_OUTER, DARK_MIN_AREA, DARK_MARGIN, DARK_CELL = 0.5, 2.5, 2.0, 0.5, 8
DARK_BORDER_REACH = 3.0  # a region touching the border must reach this far in (boxes)


def _reach(region: np.ndarray) -> float:
    """How far (cells) a region reaches into the image from the borders it touches (the least over
    them); inf if it touches none. A gradient across the micrograph, which the Fourier band-pass
    of preprocessing wraps round, leaves thin dark bands along an edge; contamination cut by the
    edge reaches far in."""
    rows, cols = np.nonzero(region)
    n_rows, n_cols = region.shape
    reach = []
    if rows.min() == 0:
        reach.append(rows.max() + 1)
    if rows.max() == n_rows - 1:
        reach.append(n_rows - rows.min())
    if cols.min() == 0:
        reach.append(cols.max() + 1)
    if cols.max() == n_cols - 1:
        reach.append(n_cols - cols.min())
    return float(min(reach)) if reach else np.inf


def check_dark_sigma(value: float, option: str) -> None:
    """One-line error (``JobError`` naming ``option``) unless ``value`` is 0 (off) or positive."""
    if not (math.isfinite(value) and value >= 0):
        raise JobError(f"{option} must be 0 (off) or a positive number of standard deviations (got {value})")


def dark_regions(image: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """Mask (same shape as ``image``, a preprocessed micrograph: 64 px per box) of dark regions
    much larger than a particle, grown by half a box: contamination and ice crystals.

    The image is averaged over cells of 1/8 box and band-passed between 0.5 and 2.5 boxes
    (difference of Gaussians, so ice gradients and single particles do not count); cells darker
    than the median by ``sigma`` robust standard deviations of that band, in connected regions of
    at least 2 box areas, are dark regions, except thin bands along the border (reaching less than
    3 boxes in: gradient artefacts). ``sigma <= 0``: nothing is masked.
    """
    mask = np.zeros(image.shape, dtype=bool)
    rows, cols = image.shape[0] // DARK_CELL, image.shape[1] // DARK_CELL
    if sigma <= 0 or rows < 2 or cols < 2:
        return mask
    coarse = image[: rows * DARK_CELL, : cols * DARK_CELL].reshape(rows, DARK_CELL, cols, DARK_CELL).mean(axis=(1, 3))
    cells_per_box = INPUT_SIZE / DARK_CELL
    band = ndimage.gaussian_filter(coarse, DARK_INNER * cells_per_box) - ndimage.gaussian_filter(coarse, DARK_OUTER * cells_per_box)
    centre = np.median(band)
    spread = 1.4826 * np.median(np.abs(band - centre))
    if not spread > 0:
        return mask
    labels, n = ndimage.label(band < centre - sigma * spread)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    big = [j for j in np.flatnonzero(sizes >= DARK_MIN_AREA * cells_per_box**2) + 1
           if _reach(labels == j) >= DARK_BORDER_REACH * cells_per_box]
    dark = np.isin(labels, big)
    if not dark.any():
        return mask
    dark = ndimage.distance_transform_edt(~dark) <= DARK_MARGIN * cells_per_box
    r = np.minimum(np.arange(image.shape[0]) // DARK_CELL, rows - 1)
    c = np.minimum(np.arange(image.shape[1]) // DARK_CELL, cols - 1)
    return dark[np.ix_(r, c)]


def find_candidates(score_map: ScoreMap, pre: Preprocessed, params: PickParams = PickParams(),
                    centring: CentringNet | None = None, device: str | torch.device = "cpu") -> pd.DataFrame:
    """All candidate particles scoring at least ``params.floor``, best first.

    Returns columns ``x``, ``y`` (original micrograph pixels, particle centre, x = column) and
    ``score`` (softmax probability). With a ``centring`` network (on ``device``) and
    ``params.recentre``, each candidate is moved to the centre it reads (:func:`.centring.recentre`)
    before the filters.
    """
    logits = score_map.logits
    if params.clean and logits.size:
        logits, _ = clean_ice(logits, params.clean_threshold, params.clean_factor)
    removed = float((~np.isfinite(logits)).mean()) if logits.size else 0.0
    dark = dark_regions(pre.image, params.dark_sigma) if params.dark_sigma > 0 else None
    cells_per_box = INPUT_SIZE / score_map.step
    rows, cols = _peaks(logits, params.peak_window * cells_per_box, _logit(params.floor))
    keep = _nms(rows, cols, logits[rows, cols], 0.5 * params.peak_window * cells_per_box)
    rows, cols = rows[keep], cols[keep]
    values = 1.0 / (1.0 + np.exp(-logits[rows, cols].astype(float)))
    if params.refine:
        fr, fc = _refine(smooth_logits(logits, params.refine_sigma * cells_per_box), rows, cols)
    else:
        fr, fc = rows.astype(float), cols.astype(float)
    xr, yr = score_map.centres(fr, fc)
    if centring is not None and params.recentre and xr.size:
        xr, yr = recentre(centring, pre.image, xr, yr, device=device)
        # two candidates may have moved towards one particle: keep the spacing (the better one)
        keep = np.sort(_nms(yr / score_map.step, xr / score_map.step, values, 0.5 * params.peak_window * cells_per_box))
        xr, yr, values = xr[keep], yr[keep], values[keep]
    if params.outlier_fraction < 1 and xr.size:
        ok = _outlier_fraction(pre.image, xr, yr, params.outlier_sigma) <= params.outlier_fraction
        xr, yr, values = xr[ok], yr[ok], values[ok]
    if dark is not None and xr.size:
        r = np.clip(np.round(yr).astype(int), 0, dark.shape[0] - 1)
        c = np.clip(np.round(xr).astype(int), 0, dark.shape[1] - 1)
        ok = ~dark[r, c]
        xr, yr, values = xr[ok], yr[ok], values[ok]
    x, y = pre.to_original(xr, yr)
    out = pd.DataFrame({"x": x, "y": y, "score": values})
    out = out.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    out.attrs["area_boxes"] = float(pre.image.size) / INPUT_SIZE**2  # for the figure of merit (fom.py)
    out.attrs["removed_fraction"] = removed
    out.attrs["dark_fraction"] = float(dark.mean()) if dark is not None and dark.size else 0.0
    return out


def area_in_boxes(shape: tuple[int, int], box_px: float) -> float | None:
    """Area of a micrograph of ``shape`` (rows, columns) in particle boxes (``box_px`` squared);
    None when either is unknown."""
    if not (box_px and box_px > 0) or not (shape[0] > 0 and shape[1] > 0):
        return None
    return float(shape[0]) * float(shape[1]) / float(box_px) ** 2


def select_picks(candidates: pd.DataFrame, params: PickParams) -> pd.DataFrame:
    """:func:`select` with the threshold and top-N of ``params`` (what every picking path uses);
    ``candidates["score"]`` is the figure of merit (:func:`.fom.calibrate_candidates`)."""
    return select(candidates, params.threshold, params.max_picks)


def select(candidates: pd.DataFrame, threshold: float = 0.5, max_picks: int | None = None) -> pd.DataFrame:
    """Candidates whose ``score`` is at or above ``threshold``, best first, at most ``max_picks``
    of them. A higher threshold always gives a subset of the picks."""
    picks = candidates[candidates["score"] >= threshold].sort_values("score", ascending=False, kind="stable")
    if max_picks is not None and max_picks >= 0:
        picks = picks.head(max_picks)
    return picks.reset_index(drop=True)
