"""The figure of merit of a pick: a calibrated probability that it is a particle, given its own
network score and what its whole micrograph shows.

The network scores one 64 x 64 window at a time; its score does not know that the micrograph is
full of particles, nearly empty, or mostly ice. The figure of merit (FOM) does. For every
candidate ``i`` of micrograph ``m``::

    FOM_i = sigmoid( exp(u0 + u . f_m) * z_i  +  (v0 + v . f_m)  +  w * log(rank_density_i) )

- ``z_i``: the candidate's network logit (its raw score's log-odds, clipped to +-12);
- ``f_m``: features of the micrograph, standardised (:func:`micrograph_features`): the logit of
  its N-th best candidate for N = 0.02 ... 0.4 candidates per particle-box area (where its score
  distribution sits), the log density of candidates scoring >= 0.5, 0.1 and 0.01 per box area,
  the share of the micrograph removed as ice / carbon (large high-scoring regions) and as dark
  contamination, and its log area;
- ``rank_density_i``: (rank of the candidate on its micrograph + 0.5) / usable area in boxes,
  with ``w <= 0``.

It is a Platt scaling whose slope and offset are set per micrograph from the micrograph's own
candidates (an empirical-Bayes idea: a micrograph whose candidates score above what empty ice
gives holds particles, and its moderate candidates are lifted). The slope is positive and
``w <= 0``, so within a micrograph the FOM never reverses the network's ranking, and a higher
threshold always keeps a subset of the picks. The parameters are fitted (:func:`fit_fom`, by
``training/fit_fom.py``) on the recipe's own selection micrographs (random molecules and empty
micrographs, never a benchmarked molecule) and stored in the weights' metadata under ``"fom"``.

A pick "is a particle" when it lies within 0.2 x the box of a true particle centre (one to one),
as in the benchmark. Weights without a ``"fom"`` entry (a model fine-tuned on a user's picks) get
the network's own score as the FOM (:data:`IDENTITY`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# Raw network score down to which candidates are found and described (the features need the bulk
# of a micrograph's candidates, not only the confident ones).
FEATURE_FLOOR = 1e-5
# FOM down to which candidates are saved for re-thresholding (or the threshold, if lower).
SAVE_FLOOR = 0.01
Z_CLIP = 12.0
DENSITIES = (0.02, 0.05, 0.1, 0.2, 0.4)  # candidates per particle-box area (the N-th best's logit)
LEVELS = (0.5, 0.1, 0.01)  # raw scores whose candidate densities are counted


def _tag(value: float) -> str:
    return f"{value:g}".replace(".", "p")  # STAR labels hold no dots


FEATURES = tuple([f"z_at_{_tag(d)}" for d in DENSITIES] + [f"log_density_{_tag(p)}" for p in LEVELS]
                 + ["removed_fraction", "dark_fraction", "log_area"])
# Micrograph flags (picking_summary.star, the report, the micrographs node)
EMPTY_EXPECTED = 2.0  # fewer expected particles than this: "empty"
REMOVED_MOSTLY = 0.5  # more than this share removed as ice / carbon / contamination: "ice/contamination"
FLAG_OK, FLAG_EMPTY, FLAG_REMOVED = "particles", "empty", "ice/carbon/contamination"


def logit(p: np.ndarray | float) -> np.ndarray:
    """Log-odds of probabilities, clipped to +-Z_CLIP."""
    p = np.clip(np.asarray(p, dtype=float), 1e-12, 1 - 1e-12)
    return np.clip(np.log(p / (1 - p)), -Z_CLIP, Z_CLIP)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=float)))


def usable_area(area_boxes: float, removed_fraction: float, dark_fraction: float) -> float:
    """Area in particle boxes left for particles once ice / carbon and dark regions are removed
    (at least 5 % of the micrograph, at least one box)."""
    return max(1.0, float(area_boxes) * max(0.05, 1.0 - float(removed_fraction) - float(dark_fraction)))


def micrograph_features(raw_scores: np.ndarray, area_boxes: float, removed_fraction: float = 0.0,
                        dark_fraction: float = 0.0) -> dict[str, float]:
    """The features (:data:`FEATURES`) of one micrograph from the raw network scores of all its
    candidates (down to :data:`FEATURE_FLOOR`), its area in particle boxes (box = diameter) and
    the shares of it removed as ice / carbon and as dark contamination (0..1)."""
    z = np.sort(logit(np.asarray(raw_scores, dtype=float)))[::-1]
    area = usable_area(area_boxes, removed_fraction, dark_fraction)
    out: dict[str, float] = {}
    low = float(logit(FEATURE_FLOOR))
    for d in DENSITIES:
        k = max(1, int(round(d * area)))
        out[f"z_at_{_tag(d)}"] = float(z[k - 1]) if len(z) >= k else low
    raw = np.asarray(raw_scores, dtype=float)
    for p in LEVELS:
        out[f"log_density_{_tag(p)}"] = float(np.log(0.01 + (raw >= p).sum() / area))
    out["removed_fraction"] = float(removed_fraction)
    out["dark_fraction"] = float(dark_fraction)
    out["log_area"] = float(np.log(max(float(area_boxes), 1.0)))
    return out


@dataclass
class FomModel:
    """Parameters of the figure of merit (module docstring). ``mean`` / ``scale`` standardise the
    features (in :data:`FEATURES` order); ``u`` (slope) and ``v`` (offset) weigh them."""

    mean: list[float]
    scale: list[float]
    u0: float
    u: list[float]
    v0: float
    v: list[float]
    w: float
    fitted_on: str = ""
    identity: bool = False
    extra: dict = field(default_factory=dict)

    def to_metadata(self) -> dict:
        """JSON-able dict for the weights' metadata (``"fom"``)."""
        return {"features": list(FEATURES), "mean": list(map(float, self.mean)), "scale": list(map(float, self.scale)),
                "u0": float(self.u0), "u": list(map(float, self.u)), "v0": float(self.v0), "v": list(map(float, self.v)),
                "w": float(self.w), "fitted_on": self.fitted_on, **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_metadata(cls, meta: dict | None) -> "FomModel":
        """The model stored in weights' metadata; :data:`IDENTITY` when there is none. Raises
        ValueError when the entry is malformed or was fitted on other features."""
        if not meta:
            return IDENTITY
        try:
            if list(meta["features"]) != list(FEATURES):
                raise ValueError(f"fitted on features {meta['features']}, this version computes {list(FEATURES)}")
            n = len(FEATURES)
            values = [list(map(float, meta[k])) for k in ("mean", "scale", "u", "v")]
            if any(len(v) != n for v in values) or not all(s > 0 for s in values[1]):
                raise ValueError("feature vectors of the wrong length or a scale <= 0")
            model = cls(values[0], values[1], float(meta["u0"]), values[2], float(meta["v0"]), values[3],
                        min(0.0, float(meta["w"])), str(meta.get("fitted_on", "")), extra=dict(meta.get("extra", {})))
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed figure-of-merit entry ({type(err).__name__}: {err})") from None
        return model

    def feature_vector(self, features: dict[str, float]) -> np.ndarray:
        raw = np.array([features[k] for k in FEATURES], dtype=float)
        return (raw - np.asarray(self.mean)) / np.asarray(self.scale)

    def slope_offset(self, features: dict[str, float]) -> tuple[float, float]:
        """(slope, offset) of the micrograph's Platt scaling."""
        f = self.feature_vector(features)
        return float(np.exp(np.clip(self.u0 + f @ np.asarray(self.u), -5, 5))), float(self.v0 + f @ np.asarray(self.v))

    def fom(self, raw_scores: np.ndarray, features: dict[str, float], area_boxes: float) -> np.ndarray:
        """FOM of candidates with ``raw_scores`` (any order) on a micrograph with ``features`` and
        ``area_boxes`` (its usable area is computed from the features' removed shares)."""
        raw = np.asarray(raw_scores, dtype=float)
        if self.identity:
            return raw.copy()
        z = logit(raw)
        rank = np.empty(len(z))
        rank[np.argsort(-z, kind="stable")] = np.arange(len(z))
        area = usable_area(area_boxes, features["removed_fraction"], features["dark_fraction"])
        slope, offset = self.slope_offset(features)
        return _sigmoid(slope * z + offset + self.w * np.log((rank + 0.5) / area))


IDENTITY = FomModel([0.0] * len(FEATURES), [1.0] * len(FEATURES), 0.0, [0.0] * len(FEATURES), 0.0,
                    [0.0] * len(FEATURES), 0.0, "none: the network's own score", identity=True)


def calibrate_candidates(candidates: pd.DataFrame, model: FomModel) -> pd.DataFrame:
    """Candidates of one micrograph (``x``, ``y``, ``score`` = raw network score, attrs
    ``area_boxes``, ``removed_fraction``, ``dark_fraction`` from :func:`~.picking.find_candidates`)
    -> the same candidates, best first, with ``raw_score`` (the network's) and ``score`` = the FOM.
    attrs gain ``features`` and ``expected_particles`` (sum of the FOMs)."""
    area = float(candidates.attrs.get("area_boxes") or 1.0)
    removed = float(candidates.attrs.get("removed_fraction", 0.0))
    dark = float(candidates.attrs.get("dark_fraction", 0.0))
    raw = candidates["score"].to_numpy(float)
    features = micrograph_features(raw, area, removed, dark)
    out = candidates.copy()
    out["raw_score"] = raw
    # rounded as the coordinate files write it (6 decimals): the figure of merit thresholded is the one written
    out["score"] = np.round(model.fom(raw, features, area), 6)
    out = out.sort_values(["score", "raw_score"], ascending=False, kind="stable").reset_index(drop=True)
    out.attrs = {**candidates.attrs, "features": features, "expected_particles": float(out["score"].sum())}
    return out


def micrograph_flag(expected_particles: float, removed_fraction: float, dark_fraction: float) -> str:
    """What a micrograph looks like: :data:`FLAG_REMOVED` when more than half of it was removed as
    ice / carbon / contamination, :data:`FLAG_EMPTY` when it is expected to hold fewer than
    :data:`EMPTY_EXPECTED` particles, else :data:`FLAG_OK`."""
    if removed_fraction + dark_fraction > REMOVED_MOSTLY:
        return FLAG_REMOVED
    if not expected_particles >= EMPTY_EXPECTED:
        return FLAG_EMPTY
    return FLAG_OK


def expected_precision(fom_of_picks: np.ndarray) -> float:
    """Expected share of particles among picks with these FOMs (their mean; NaN without picks)."""
    f = np.asarray(fom_of_picks, dtype=float)
    return float(f.mean()) if f.size else math.nan


# --------------------------------------------------------------------------------------------------
# fitting (training/fit_fom.py)
# --------------------------------------------------------------------------------------------------


@dataclass
class FitTable:
    """Candidates of many labelled micrographs, as :func:`fit_fom` needs them: per candidate its
    logit ``z``, log rank density ``r``, micrograph index ``m`` and label ``y`` (1: a particle);
    per micrograph its raw feature dict."""

    z: np.ndarray
    r: np.ndarray
    m: np.ndarray
    y: np.ndarray
    features: list[dict[str, float]]

    @staticmethod
    def from_micrographs(items: list[tuple[pd.DataFrame, np.ndarray]]) -> "FitTable":
        """``items``: (candidates with raw ``score`` and the attrs of find_candidates, whether each
        candidate is a particle)."""
        zs, rs, ms, ys, feats = [], [], [], [], []
        for k, (cands, hits) in enumerate(items):
            raw = cands["score"].to_numpy(float)
            area = float(cands.attrs.get("area_boxes") or 1.0)
            removed = float(cands.attrs.get("removed_fraction", 0.0))
            dark = float(cands.attrs.get("dark_fraction", 0.0))
            f = micrograph_features(raw, area, removed, dark)
            z = logit(raw)
            rank = np.empty(len(z))
            rank[np.argsort(-z, kind="stable")] = np.arange(len(z))
            zs.append(z)
            rs.append(np.log((rank + 0.5) / usable_area(area, removed, dark)))
            ms.append(np.full(len(z), k))
            ys.append(np.asarray(hits, dtype=float))
            feats.append(f)
        cat = (lambda a: np.concatenate(a) if a else np.zeros(0))
        return FitTable(cat(zs), cat(rs), cat(ms).astype(int), cat(ys), feats)


def fit_fom(table: FitTable, l2: float = 1e-3, fitted_on: str = "") -> FomModel:
    """Maximum-likelihood parameters of the FOM (log loss over every candidate, a small L2 penalty
    on the feature weights), with the slope positive by construction and ``w <= 0``."""
    from scipy import optimize

    raw = np.array([[f[k] for k in FEATURES] for f in table.features], dtype=float)
    mean = raw.mean(axis=0)
    scale = raw.std(axis=0)
    scale[~(scale > 1e-9)] = 1.0
    fm = (raw - mean) / scale  # micrographs x features
    n_f = fm.shape[1]
    z, r, m, y = table.z, table.r, table.m, table.y
    n = max(1, len(z))

    def unpack(theta):
        return theta[0], theta[1 : 1 + n_f], theta[1 + n_f], theta[2 + n_f : 2 + 2 * n_f], theta[-1]

    def loss(theta):
        u0, u, v0, v, w = unpack(theta)
        a = u0 + fm @ u
        slope = np.exp(np.clip(a, -5, 5))
        offset = v0 + fm @ v
        t = slope[m] * z + offset[m] + w * r
        val = float(np.sum(np.logaddexp(0, t) - y * t)) / n + l2 * float(u @ u + v @ v)
        g = (_sigmoid(t) - y) / n  # d loss / d t
        g_slope = np.bincount(m, weights=g * z, minlength=len(fm)) * slope * ((a > -5) & (a < 5))
        g_off = np.bincount(m, weights=g, minlength=len(fm))
        grad = np.concatenate([[g_slope.sum()], fm.T @ g_slope + 2 * l2 * u, [g_off.sum()], fm.T @ g_off + 2 * l2 * v,
                               [float(g @ r)]])
        return val, grad

    theta0 = np.zeros(2 * n_f + 3)
    bounds = [(None, None)] * (2 * n_f + 2) + [(None, 0.0)]
    res = optimize.minimize(loss, theta0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 2000})
    u0, u, v0, v, w = unpack(res.x)
    return FomModel(mean.tolist(), scale.tolist(), float(u0), u.tolist(), float(v0), v.tolist(), float(w), fitted_on,
                    extra={"log_loss": float(res.fun), "n_candidates": int(len(z)), "n_micrographs": int(len(fm))})


def reliability(fom: np.ndarray, hits: np.ndarray, bins: int = 10, lowest: float = 0.0) -> pd.DataFrame:
    """Reliability table of FOMs against outcomes: per equal-width bin of [lowest, 1] the number of
    candidates, their mean FOM and the share that are particles."""
    fom = np.asarray(fom, dtype=float)
    hits = np.asarray(hits, dtype=float)
    keep = fom >= lowest
    fom, hits = fom[keep], hits[keep]
    edges = np.linspace(lowest, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, fom, side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = idx == b
        rows.append(dict(lo=edges[b], hi=edges[b + 1], n=int(sel.sum()),
                         mean_fom=float(fom[sel].mean()) if sel.any() else math.nan,
                         particles=float(hits[sel].mean()) if sel.any() else math.nan))
    return pd.DataFrame(rows)


def expected_calibration_error(fom: np.ndarray, hits: np.ndarray, bins: int = 10, lowest: float = 0.0) -> float:
    """Expected calibration error: the candidate-weighted mean over the bins of :func:`reliability`
    of |mean FOM - share of particles| (NaN without candidates)."""
    table = reliability(fom, hits, bins, lowest)
    table = table[table["n"] > 0]
    if table.empty:
        return math.nan
    return float((table["n"] * (table["mean_fom"] - table["particles"]).abs()).sum() / table["n"].sum())
