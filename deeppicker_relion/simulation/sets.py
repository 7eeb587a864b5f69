"""Simulated micrographs of random molecules, to mix into a training run on real data sets.

The conditions follow the shipped recipe (training/make_general_model.py, ``draw_conditions``
with realistic SNR): a new random protein-like molecule on every micrograph
(:func:`.simulate.synthetic_molecule`, 70-450 A), particle diameter 24-160 px (pixel sizes
0.9-7.5 A), micrographs 11-18 diameters on a side (at most 1024 px here, to keep generation
cheap), defocus 1-3.5 um, SNR 70 % log-uniform 0.1-0.6 and 30 % 0.02-0.1, fog, ice gradients,
sometimes contamination and carbon edges, sparse to touching, 8 % empty. Written once per
(count, seed) into a cache folder as MRC files with exact-centre coordinate STARs and an
``index.csv``; reused afterwards. Deterministic in the seed.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

_DIAMETERS_PX = np.round(np.geomspace(24, 160, 9))
MAX_SIDE_PX = 1024


EMPTY_SHARE = 0.08  # the recipe's share of empty micrographs


def _conditions(rng: np.random.Generator, diameter_A: float, empty_share: float = EMPTY_SHARE) -> dict:
    """The recipe's realistic conditions for one micrograph of a molecule ``diameter_A`` across
    (empty, i.e. no particle, with probability ``empty_share``)."""
    allowed = [d for d in _DIAMETERS_PX if 0.9 <= diameter_A / d <= 7.5] or [float(_DIAMETERS_PX[0])]
    diameter_px = float(rng.choice(allowed))
    boxes = rng.uniform(11, 18, size=2)
    shape = tuple(int(min(MAX_SIDE_PX, max(320, round(b * diameter_px)))) for b in boxes)
    density = rng.uniform(0.03, 0.42)
    empty = rng.uniform() < empty_share
    n = 0 if empty else max(1, int(round(density * shape[0] * shape[1] / diameter_px**2)))
    lo, hi = (0.1, 0.6) if rng.uniform() < 0.7 else (0.02, 0.1)
    return dict(
        shape=shape, pixel_size_A=diameter_A / diameter_px, diameter_px=diameter_px, n_particles=n,
        defocus_um=float(rng.uniform(1.0, 3.5)), astigmatism_um=float(rng.uniform(0.0, 0.15)),
        b_factor_A2=float(rng.uniform(80, 400)), snr=float(np.exp(rng.uniform(np.log(lo), np.log(hi)))),
        ice_noise_fraction=float(rng.uniform(0.15, 0.6)), fog_fraction=float(rng.uniform(0.05, 0.5)),
        fog_cutoff=float(np.exp(rng.uniform(np.log(0.03), np.log(0.2)))), mtf_falloff=float(rng.uniform(0.2, 1.5)),
        min_distance=float(rng.uniform(0.75, 1.1)), ice=float(rng.uniform(0.0, 0.3)),
        n_contaminants=int(rng.integers(1, 4)) if rng.uniform() < 0.25 else 0,
        carbon_edge=bool(rng.uniform() < 0.12),
        output=str(rng.choice(["float32", "random_affine", "uint16", "int8"], p=[0.5, 0.2, 0.15, 0.15])),
    )  # fmt: skip


def simulate_one(seed: int, index: int, empty_share: float = EMPTY_SHARE) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Micrograph ``index`` of set ``seed``: (image float32 [row, col], centres x/y in pixels,
    conditions incl. ``pixel_size_A`` and ``diameter_px``)."""
    from .simulate import estimate_diameter_A, simulate_micrograph_parts, synthetic_molecule

    rng = np.random.default_rng(np.random.SeedSequence([24, seed, index]))
    size_A = float(np.exp(rng.uniform(np.log(70), np.log(450))))
    map_px = size_A / 40
    volume = synthetic_molecule(size_A, map_px, seed=rng)
    diameter_A = estimate_diameter_A(volume, map_px)
    cond = _conditions(rng, diameter_A, empty_share)
    sim = simulate_micrograph_parts(
        cond["shape"], cond["pixel_size_A"], [(volume, map_px)], cond["n_particles"], names=["random"],
        **{k: v for k, v in cond.items() if k not in ("shape", "pixel_size_A", "diameter_px", "n_particles")},
        seed=rng, fft_workers=1,
    )  # fmt: skip
    return sim.image, sim.centres[["x", "y"]].reset_index(drop=True), cond


def simulated_set(n: int, seed: int, cache: Path, progress: bool = False, empty_share: float = EMPTY_SHARE) -> Path:
    """Folder ``cache/n<n>_seed<seed>/`` holding ``n`` simulated micrographs (``NAME.mrc``), their
    centres (``NAME.star``) and ``index.csv`` (name, file, coords, pixel_size, diameter_px,
    n_particles); generated on first use, written atomically (index last), reused afterwards.
    ``empty_share``: the chance that a micrograph holds no particle (other than the recipe's 0.08:
    the folder is ``n<n>_seed<seed>_empty<share>``)."""
    from ..io.atomic import atomic_path
    from ..io.mrc import write_mrc
    from ..io.star import write_coordinate_star

    folder = Path(cache) / (f"n{n}_seed{seed}" + (f"_empty{empty_share:g}" if empty_share != EMPTY_SHARE else ""))
    index = folder / "index.csv"
    if index.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    items = range(n)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="simulating", unit="micrograph")
    for i in items:
        name = f"sim{seed}_{i:04d}"
        image, centres, cond = simulate_one(seed, i, empty_share)
        write_mrc(folder / f"{name}.mrc", image, cond["pixel_size_A"])
        write_coordinate_star(folder / f"{name}.star", centres.assign(score=1.0))
        rows.append(dict(name=name, file=f"{name}.mrc", coords=f"{name}.star", pixel_size=cond["pixel_size_A"],
                         diameter_px=cond["diameter_px"], n_particles=len(centres)))  # fmt: skip
        log.debug("simulated %s: %d particles, %.0f px diameter", name, len(centres), cond["diameter_px"])
    with atomic_path(index) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    return folder


def diameter_px_ok(value: float) -> bool:
    return math.isfinite(value) and value > 0
