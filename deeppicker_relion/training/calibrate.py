"""The figure of merit of a newly trained network, fitted on simulated micrographs with exact centres.

A network fine-tuned by ``deeppicker train`` scores on its own scale: its raw score is no longer a
calibrated probability (measured, benchmarks/real_sets.py: 85-97 picks per empty micrograph at
0.6). The shipped model's figure of merit (:mod:`..picking.fom`) was fitted for the shipped network
only. So after training, the new network picks micrographs of random simulated molecules whose
labels are complete (the user's data sets are not used: curated particle sets leave out true
particles, which would count as false picks and bias the fit), 30 % of them empty, and the figure of
merit is fitted on every candidate as ``training/fit_fom.py`` fits the shipped one (maximum
likelihood, every candidate down to a raw score of 1e-5, a candidate is a particle within 0.2 x
the diameter of a true centre).

The calibration micrographs are the same for every training run (seed ``CALIBRATION_SEED``, never a
training mix's seed), generated once into the cache.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..picking.fom import FitTable, FomModel, fit_fom

log = logging.getLogger(__name__)

CALIBRATION_SEED = 7919  # micrographs no training mix draws (those use the --seed, default 0)
EMPTY_SHARE = 0.3  # empty calibration micrographs: the figure of merit learns what "no particles" looks like
DEFAULT_MICROGRAPHS = 48


def labelled_candidates(model, index: pd.DataFrame, cache: Path | None = None,
                        progress: bool = False) -> list[tuple[pd.DataFrame, np.ndarray]]:
    """(candidates with raw scores and the attrs of ``find_candidates``, whether each is a particle)
    of every micrograph of ``index`` (columns ``name``, ``path``, ``coords``, ``diameter_px``),
    picked as ``deeppicker pick`` finds them (centring network included where the model has one).
    ``cache``: a folder for this network's candidates (npz + json, no pickle), reused when present."""
    from ..io.atomic import atomic_path
    from ..io.coords import read_coordinates
    from ..io.mrc import read_micrograph
    from ..metrics import MATCH_RADIUS, match
    from ..picking.candidates import PickParams, find_candidates
    from ..picking.centring import attached_centring
    from ..picking.preprocess import preprocess
    from ..picking.scoring import score_map_dense

    out = []
    params = PickParams()
    rows = index.iterrows()
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, total=len(index), desc="fitting the figure of merit", unit="micrograph")
    for _, row in rows:
        path = cache / f"{row['name']}.npz" if cache is not None else None
        if path is not None and path.is_file():
            data = np.load(path, allow_pickle=False)
            cands = pd.DataFrame({"x": data["x"], "y": data["y"], "score": data["score"]})
            cands.attrs = json.loads(str(data["attrs"]))
            out.append((cands, data["hits"].astype(bool)))
            continue
        mic = read_micrograph(row["path"])
        pre = preprocess(mic.data, float(row["diameter_px"]), model.normalisation)
        cands = find_candidates(score_map_dense(model, pre.image), pre, params, attached_centring(model))
        ref = read_coordinates(row["coords"])
        hits = np.zeros(len(cands), bool)
        if len(ref) and len(cands):
            matched, _ = match(cands, ref, MATCH_RADIUS * float(row["diameter_px"]))
            hits = matched >= 0  # candidates are sorted best first, as match orders them
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, x=cands["x"].to_numpy(float), y=cands["y"].to_numpy(float),
                             score=cands["score"].to_numpy(float), hits=hits, attrs=json.dumps(cands.attrs))
        out.append((cands, hits))
    return out


def calibration_index(n: int, cache: Path, progress: bool = False) -> pd.DataFrame:
    """The ``n`` calibration micrographs (generated into ``cache`` on first use): name, path,
    coords, diameter_px, n_particles."""
    from ..simulation.sets import simulated_set

    folder = simulated_set(n, CALIBRATION_SEED, cache, progress=progress, empty_share=EMPTY_SHARE)
    index = pd.read_csv(folder / "index.csv")
    return index.assign(path=[str(folder / f) for f in index["file"]], coords=[str(folder / c) for c in index["coords"]])


def fit_model_fom(model, n: int = DEFAULT_MICROGRAPHS, cache: Path | None = None, progress: bool = False) -> FomModel:
    """The figure of merit of ``model`` (loaded as picking loads it, so with its centring network),
    fitted on ``n`` calibration micrographs (module docstring). ``cache``: where the micrographs are
    generated (default: ``deeppicker train``'s cache)."""
    from .datasets import cache_dir

    start = time.perf_counter()
    index = calibration_index(n, cache_dir(cache) / "simulated", progress)
    items = labelled_candidates(model, index, progress=progress)
    n_empty = int((index["n_particles"] == 0).sum())
    fitted_on = (f"{len(index)} simulated micrographs of random molecules ({n_empty} empty), seed {CALIBRATION_SEED}: "
                 "deeppicker train")
    fom = fit_fom(FitTable.from_micrographs(items), fitted_on=fitted_on, max_iter=100)
    log.info("figure of merit fitted on %d simulated micrographs (%d empty) in %.0f s", len(index), n_empty,
             time.perf_counter() - start)
    return fom
