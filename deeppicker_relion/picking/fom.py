"""The figure of merit of a pick: a calibrated probability that it is a particle, given its own
network score and what its whole micrograph shows.

The network scores one 64 x 64 window at a time; its score does not know that the micrograph is
full of particles, nearly empty, or mostly ice. The figure of merit (FOM) does. For every
candidate ``i`` of micrograph ``m``::

    FOM_i = q_m * P_i,   P_i = sigmoid( slope(f_m) * z_i  +  offset(f_m)  +  w * log(rank_density_i) ),
    (log slope(f_m), offset(f_m)) = W2 tanh(W1 f_m + b1) + b2,
    q_m = sigmoid( qb + qw . f_m + qs * log(1 + sum of the P_i >= 0.3 of the micrograph) )

- ``z_i``: the candidate's network logit (its raw score's log-odds, clipped to +-12);
- ``f_m``: features of the micrograph, standardised (:func:`micrograph_features`): the logit of
  its N-th best candidate for N = 0.02 ... 0.4 candidates per particle-box area (where its score
  distribution sits), the log density of candidates scoring >= 0.5, 0.25, 0.1 and 0.01 per box
  area, the log count of those >= 0.5, the share of the micrograph removed as ice / carbon
  (large high-scoring regions) and as dark contamination, and its log area;
- ``rank_density_i``: (rank of the candidate on its micrograph + 0.5) / usable area in boxes,
  with ``w <= 0``.

It is a two-level (empirical-Bayes) model. ``P_i`` is a Platt scaling whose slope and offset are
set per micrograph, by a small network (8 hidden units), fitted on micrographs that hold
particles: a micrograph whose candidates score above what empty ice gives holds particles, and
its moderate candidates are lifted. ``q_m`` is the probability that the micrograph holds particles
at all (logistic regression over micrographs with and without particles, on its features and on
how many particles ``P`` finds there confidently). The slope is positive and
``w <= 0``, so within a micrograph the FOM never reverses the network's ranking, and a higher
threshold always keeps a subset of the picks. The parameters are fitted (:func:`fit_fom`, by
``training/fit_fom.py``) on the recipe's own selection micrographs (random molecules and empty
micrographs, never a benchmarked molecule) and stored in the weights' metadata under ``"fom"``;
``deeppicker train`` fits one the same way for each model it trains on data sets
(:mod:`..training.calibrate`, simulated micrographs of random molecules).

A pick "is a particle" when it lies within 0.2 x the box of a true particle centre (one to one),
as in the benchmark. Weights without a ``"fom"`` entry (a model fine-tuned on a user's picks of one
particle) get the network's own score as the FOM (:data:`IDENTITY`).
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
LEVELS = (0.5, 0.25, 0.1, 0.01)  # raw scores whose candidate densities are counted
Q_LEVEL = 0.3  # q counts the particles found with P >= this
HIDDEN = 8  # hidden units of the network that sets each micrograph's slope and offset


def _tag(value: float) -> str:
    return f"{value:g}".replace(".", "p")  # STAR labels hold no dots


FEATURES = tuple([f"z_at_{_tag(d)}" for d in DENSITIES] + [f"log_density_{_tag(p)}" for p in LEVELS]
                 + ["log_count_0p5", "removed_fraction", "dark_fraction", "log_area"])
# Micrograph flags (picking_summary.star, the report, the micrographs node)
# "empty": fewer than EMPTY_EXPECTED particles expected among the candidates with a figure of merit
# of at least EMPTY_FOM (the sum over ALL candidates is inflated on empty micrographs by hundreds of
# candidates at ~0.02 each: median 6 on the empty selection micrographs; this sum: median 0.15,
# against 21 on those with particles; training/fit_fom.py's selection micrographs)
EMPTY_EXPECTED = 2.0
EMPTY_FOM = 0.3
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


def log_rank_density(z: np.ndarray, area: float) -> np.ndarray:
    """log((rank + 0.5) / area) of each candidate (rank 0 = the best logit ``z`` of its micrograph;
    ``area``: its usable area in particle boxes)."""
    rank = np.empty(len(z))
    rank[np.argsort(-np.asarray(z), kind="stable")] = np.arange(len(z))
    return np.log((rank + 0.5) / area)


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
    out["log_count_0p5"] = float(np.log1p((raw >= 0.5).sum()))
    out["removed_fraction"] = float(removed_fraction)
    out["dark_fraction"] = float(dark_fraction)
    out["log_area"] = float(np.log(max(float(area_boxes), 1.0)))
    return out


@dataclass
class FomModel:
    """Parameters of the figure of merit (module docstring). ``mean`` / ``scale`` standardise the
    features (in :data:`FEATURES` order); ``W1`` (HIDDEN x features), ``b1``, ``W2`` (2 x HIDDEN),
    ``b2`` map them to the micrograph's log slope and offset; ``w`` (<= 0) weighs the rank."""

    mean: list[float]
    scale: list[float]
    W1: list[list[float]]
    b1: list[float]
    W2: list[list[float]]
    b2: list[float]
    w: float
    qw: list[float] = field(default_factory=lambda: [0.0] * len(FEATURES))
    qb: float = 30.0  # q = 1: no micrograph-level factor
    qs: float = 0.0
    fitted_on: str = ""
    identity: bool = False
    extra: dict = field(default_factory=dict)

    def to_metadata(self) -> dict:
        """JSON-able dict for the weights' metadata (``"fom"``)."""
        as_list = (lambda a: np.asarray(a, dtype=float).tolist())
        return {"features": list(FEATURES), "mean": as_list(self.mean), "scale": as_list(self.scale),
                "W1": as_list(self.W1), "b1": as_list(self.b1), "W2": as_list(self.W2), "b2": as_list(self.b2),
                "w": float(self.w), "qw": as_list(self.qw), "qb": float(self.qb), "qs": float(self.qs), "fitted_on": self.fitted_on, **({"extra": self.extra} if self.extra else {})}

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
            mean, scale = np.asarray(meta["mean"], float), np.asarray(meta["scale"], float)
            W1, b1 = np.asarray(meta["W1"], float), np.asarray(meta["b1"], float)
            W2, b2 = np.asarray(meta["W2"], float), np.asarray(meta["b2"], float)
            h = len(b1)
            if mean.shape != (n,) or scale.shape != (n,) or not (scale > 0).all():
                raise ValueError("feature vectors of the wrong length or a scale <= 0")
            if W1.shape != (h, n) or W2.shape != (2, h) or b2.shape != (2,):
                raise ValueError("weights of the wrong shape")
            values = [mean, scale, W1, b1, W2, b2]
            if not all(np.isfinite(v).all() for v in values):
                raise ValueError("weights that are not finite")
            qw = np.asarray(meta["qw"], float)
            if qw.shape != (n,) or not np.isfinite(qw).all() or not math.isfinite(float(meta["qb"])):
                raise ValueError("micrograph-level weights of the wrong shape or not finite")
            if not math.isfinite(float(meta["qs"])):
                raise ValueError("micrograph-level weights that are not finite")
            model = cls(*[v.tolist() for v in values], min(0.0, float(meta["w"])), qw.tolist(), float(meta["qb"]),
                        float(meta["qs"]), str(meta.get("fitted_on", "")), extra=dict(meta.get("extra", {})))
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed figure-of-merit entry ({type(err).__name__}: {err})") from None
        return model

    def feature_vector(self, features: dict[str, float]) -> np.ndarray:
        raw = np.array([features[k] for k in FEATURES], dtype=float)
        return (raw - np.asarray(self.mean)) / np.asarray(self.scale)

    def slope_offset(self, features: dict[str, float]) -> tuple[float, float]:
        """(slope, offset) of the micrograph's Platt scaling."""
        f = self.feature_vector(features)
        a, b = np.asarray(self.W2) @ np.tanh(np.asarray(self.W1) @ f + np.asarray(self.b1)) + np.asarray(self.b2)
        return float(np.exp(np.clip(a, -5, 5))), float(b)

    def fom(self, raw_scores: np.ndarray, features: dict[str, float], area_boxes: float) -> np.ndarray:
        """FOM of candidates with ``raw_scores`` (any order) on a micrograph with ``features`` and
        ``area_boxes`` (its usable area is computed from the features' removed shares)."""
        raw = np.asarray(raw_scores, dtype=float)
        if self.identity:
            return raw.copy()
        z = logit(raw)
        area = usable_area(area_boxes, features["removed_fraction"], features["dark_fraction"])
        slope, offset = self.slope_offset(features)
        p = _sigmoid(slope * z + offset + self.w * log_rank_density(z, area))
        return self.holds_particles(features, p) * p

    def holds_particles(self, features: dict[str, float], p: np.ndarray) -> float:
        """Probability that the micrograph holds particles at all (``q``), given the second
        factor ``p`` of all its candidates."""
        p = np.asarray(p, dtype=float)
        confident = float(p[p >= Q_LEVEL].sum())
        return float(_sigmoid(self.qb + self.feature_vector(features) @ np.asarray(self.qw) + self.qs * np.log1p(confident)))


_N = len(FEATURES)
IDENTITY = FomModel([0.0] * _N, [1.0] * _N, [[0.0] * _N] * HIDDEN, [0.0] * HIDDEN, [[0.0] * HIDDEN] * 2, [0.0, 0.0],
                    0.0, fitted_on="none: the network's own score", identity=True)


def calibrate_candidates(candidates: pd.DataFrame, model: FomModel) -> pd.DataFrame:
    """Candidates of one micrograph (``x``, ``y``, ``score`` = raw network score, attrs
    ``area_boxes``, ``removed_fraction``, ``dark_fraction`` from :func:`~.candidates.find_candidates`)
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
    fom = out["score"].to_numpy(float)
    out.attrs = {**candidates.attrs, "features": features, "expected_particles": float(fom.sum()),
                 "confident_particles": float(fom[fom >= EMPTY_FOM].sum())}
    return out


def micrograph_flag(confident_particles: float, removed_fraction: float, dark_fraction: float) -> str:
    """What a micrograph looks like: :data:`FLAG_REMOVED` when more than half of it was removed as
    ice / carbon / contamination, :data:`FLAG_EMPTY` when fewer than :data:`EMPTY_EXPECTED`
    particles are expected among its candidates with a figure of merit of at least
    :data:`EMPTY_FOM` (``confident_particles``, their sum), else :data:`FLAG_OK`."""
    if removed_fraction + dark_fraction > REMOVED_MOSTLY:
        return FLAG_REMOVED
    if not confident_particles >= EMPTY_EXPECTED:
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
            zs.append(z)
            rs.append(log_rank_density(z, usable_area(area, removed, dark)))
            ms.append(np.full(len(z), k))
            ys.append(np.asarray(hits, dtype=float))
            feats.append(f)
        cat = (lambda a: np.concatenate(a) if a else np.zeros(0))
        return FitTable(cat(zs), cat(rs), cat(ms).astype(int), cat(ys), feats)


def fit_fom(table: FitTable, weight_decay: float = 1e-3, fitted_on: str = "", seed: int = 0,
            max_iter: int = 300) -> FomModel:
    """Maximum-likelihood parameters of the FOM (mean log loss over every candidate, a small L2
    penalty on the network's weights; full-batch L-BFGS), with the slope positive by construction
    and ``w <= 0``."""
    import torch

    raw = np.array([[f[k] for k in FEATURES] for f in table.features], dtype=float)
    mean = raw.mean(axis=0)
    scale = raw.std(axis=0)
    scale[~(scale > 1e-9)] = 1.0
    std = (raw - mean) / scale
    holds = np.bincount(table.m, weights=table.y, minlength=len(raw)) > 0  # any candidate matches a particle
    # P: the candidates of micrographs that hold particles
    keep = holds[table.m]
    index = np.full(len(raw), -1)
    index[holds] = np.arange(int(holds.sum()))
    gen = torch.Generator().manual_seed(seed)
    fm = torch.tensor(std[holds], dtype=torch.float64)
    z, r = torch.tensor(table.z[keep], dtype=torch.float64), torch.tensor(table.r[keep], dtype=torch.float64)
    m, y = torch.tensor(index[table.m[keep]], dtype=torch.long), torch.tensor(table.y[keep], dtype=torch.float64)
    n_f = fm.shape[1]
    W1 = (0.3 * torch.randn(HIDDEN, n_f, generator=gen, dtype=torch.float64)).requires_grad_()
    b1 = torch.zeros(HIDDEN, dtype=torch.float64, requires_grad=True)
    W2 = (0.1 * torch.randn(2, HIDDEN, generator=gen, dtype=torch.float64)).requires_grad_()
    b2 = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    rho = torch.zeros((), dtype=torch.float64, requires_grad=True)  # w = -softplus(rho)
    params = [W1, b1, W2, b2, rho]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_change=1e-10)

    def closure():
        opt.zero_grad()
        out = torch.tanh(fm @ W1.T + b1) @ W2.T + b2
        slope = torch.exp(out[:, 0].clamp(-5, 5))
        t = slope[m] * z + out[m, 1] - torch.nn.functional.softplus(rho) * r
        loss = torch.nn.functional.binary_cross_entropy_with_logits(t, y)
        loss = loss + weight_decay * ((W1**2).sum() + (W2**2).sum())
        loss.backward()
        return loss

    loss = opt.step(closure)
    w = -float(torch.nn.functional.softplus(rho.detach()))
    as_np = (lambda t: t.detach().numpy())
    # q: does the micrograph hold particles, from its features and the particles P finds confidently there
    with torch.no_grad():
        out = torch.tanh(torch.tensor(std) @ W1.T + b1) @ W2.T + b2
        t_all = torch.exp(out[:, 0].clamp(-5, 5))[torch.tensor(table.m)] * torch.tensor(table.z) + \
            out[torch.tensor(table.m), 1] + w * torch.tensor(table.r)
        p_all = torch.sigmoid(t_all).numpy()
    confident = np.bincount(table.m, weights=np.where(p_all >= Q_LEVEL, p_all, 0.0), minlength=len(raw))
    qb, q_all = _logistic(np.column_stack([std, np.log1p(confident)]), holds.astype(float), weight_decay)
    qw, qs = q_all[:-1], float(q_all[-1])
    return FomModel(mean.tolist(), scale.tolist(), as_np(W1).tolist(), as_np(b1).tolist(), as_np(W2).tolist(),
                    as_np(b2).tolist(), w, qw.tolist(), qb, qs, fitted_on,
                    extra={"log_loss_level2": float(loss.detach()), "n_candidates": int(len(table.z)),
                           "n_micrographs": int(len(raw)), "n_with_particles": int(holds.sum())})


def _logistic(x: np.ndarray, y: np.ndarray, weight_decay: float) -> tuple[float, np.ndarray]:
    """(bias, weights) of an L2-penalised logistic regression of ``y`` (0/1) on ``x``."""
    from scipy import optimize

    def loss(theta):
        t = theta[0] + x @ theta[1:]
        p = _sigmoid(t)
        val = float(np.mean(np.logaddexp(0, t) - y * t)) + weight_decay * float(theta[1:] @ theta[1:])
        g = (p - y) / len(y)
        return val, np.concatenate([[g.sum()], x.T @ g + 2 * weight_decay * theta[1:]])

    res = optimize.minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B")
    return float(res.x[0]), res.x[1:]


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
