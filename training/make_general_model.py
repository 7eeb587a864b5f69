"""Recipe of the shipped general (cross-molecule) model, from scratch, in one command.

    python training/make_general_model.py                      # -> deeppicker_relion/pretrained/general.safetensors (+ centring.safetensors)
    python training/make_general_model.py --holdout none       # + the four maps and the real ribosomes
    python training/make_general_model.py --holdout hemoglobin_4hhb    # -> training/cache/lomo/hemoglobin_4hhb.safetensors
    python training/make_general_model.py --holdout ribosome           # simulations only

Data (generated once, seeded, cached under training/cache/, git-ignored):

- simulated micrographs of the four shipped maps (deeppicker_relion/data/maps, copies of
  ../shared/data/maps) with exact centres, drawn per micrograph over realistic conditions
  (:func:`draw_conditions`): particle diameter 24-160 px (pixel sizes ~0.9-7.5 A/px), micrographs
  11-18 particle diameters on a side, defocus 1-3.5 um, SNR emphasising real binned data (70 %
  log-uniform 0.1-0.6, 30 % 0.02-0.1), CTF-shaped ice noise, low-frequency fog and ice gradients,
  crowding from sparse to touching, empty micrographs, contamination, carbon edges, detector-like
  integer and affine-scaled outputs;
- simulated micrographs of random protein-like molecules (deeppicker_relion.simulation.simulate.
  synthetic_molecule: unions of domains in random envelopes, elongated, flat, 30 % hollow
  rings/barrels, random point groups, 70-450 A), a new molecule on every micrograph;
- simulated micrographs of random hollow particles (:func:`random_cage`: cages of 12, 24 or 60
  subunits with tetrahedral / octahedral (apoferritin-like) / icosahedral symmetry, and
  :func:`random_shell`: textured spherical shells with pores), 12-35 % of the radius thick,
  sometimes with cargo, 70-450 A: about a quarter of the random molecules;
- the ten real EMPIAR-10028 ribosome micrographs of ../shared/data/empiar10028_ribosome (labels
  incomplete: background patches are kept 0.6 diameter away from every label AND from every dark
  blob a label-free blob detector finds, so unlabelled ribosomes are not taught as background).

../shared/data/apoferritin is never read here: it is the never-seen real test set. The held-out
test micrographs of each map (cache/sim/MAP/test, drawn over the wider SNR range 0.02-0.5) are
generated here too, for benchmarks/accuracy.py, and never used for training or calibration.

Training (network ``Recipe.architecture``, SGD + momentum, rotations/flips):
1. patches: particles at their exact centres (at most 28 per simulated micrograph, all real
   ones); background at a 4:1 ratio, 35 % of it "near misses" 0.2-0.6 diameter from a particle
   (0.2 = the match radius), the rest >= 0.6 diameter from every particle; empty micrographs give
   background only; the box given to preprocessing is jittered (users' diameters are rough);
2. training until the validation loss (a held-out tenth of the patches) has not improved for
   ``patience`` epochs, the learning rate divided on plateaus;
3. hard negatives: the model picks its own training micrographs; every candidate scoring
   >= 0.2 that is >= 0.2 diameter from every true centre becomes background; fine-tune on all;
4. calibration on whole validation micrographs (other seeds; molecules of the training set
   only): Platt scaling of the peak logit margins (a * margin + b), then an offset that puts
   p = 0.5 at the best F1 over the validation micrographs of realistic SNR (>= 0.1) while the
   empty validation micrographs get at most ``Recipe.max_empty_picks`` picks each; folded into the
   last layer so every picking path (CLI, RELION job, fine-tuning) uses the calibrated scores.

Then ``python training/fit_fom.py`` fits the figure of merit of the picks (deeppicker_relion/picking/fom.py:
the calibrated probability that a pick is a particle, given its score and its whole micrograph) on
the selection micrographs and stores it in the weights' metadata.

Last (for ``--holdout all`` only, unless ``--no-centring``): the centring network that moves each
pick to the particle centre it reads (training/make_centring_model.py), started from this
classifier and written to ``centring.safetensors`` beside it (~15 min).

The shipped model is ``--holdout all`` (the default): trained and calibrated on the random
molecules only (plus the maps' EMPTY validation micrographs for the noise guard), so every
molecule of the benchmark is held out from it. Measured (MODEL_CARD.md): adding the four maps and
the real ribosomes (``--holdout none``) did not pick the never-seen real apoferritin better
(best F1 0.75 vs 0.80). ``--holdout NAME`` leaves one molecule (a map name, or ``ribosome``) out of
training AND calibration, for the classic leave-one-molecule-out benchmark (benchmarks/accuracy.py).
``--set FIELD=VALUE`` overrides a :class:`Recipe` field (experiments; recorded in the metadata).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage, optimize
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deeppicker_relion.metrics import MATCH_RADIUS, match  # noqa: E402
from deeppicker_relion.io.coords import read_coordinates  # noqa: E402
from deeppicker_relion.io.mrc import read_micrograph, write_mrc  # noqa: E402
from deeppicker_relion.io.star import write_coordinate_star  # noqa: E402
from deeppicker_relion.model import DeepPickerNet, fold_logit_calibration, load_model, save_model  # noqa: E402
from deeppicker_relion.picking.candidates import PickParams, find_candidates  # noqa: E402
from deeppicker_relion.picking.preprocess import INPUT_SIZE, preprocess  # noqa: E402
from deeppicker_relion.picking.scoring import score_map_dense  # noqa: E402
from deeppicker_relion.simulation.simulate import (  # noqa: E402
    SimulatedMicrograph,
    _ellipsoid_union,
    available_maps,
    estimate_diameter_A,
    load_map,
    simulate_micrograph_parts,
    synthetic_molecule,
)
from deeppicker_relion.training.train import TrainingSet, TrainParams, cut_patches, train  # noqa: E402

log = logging.getLogger("make_general_model")

CACHE = REPO / "training" / "cache"
SHARED = REPO.parent / "shared" / "data"
RIBOSOME_DIR = SHARED / "empiar10028_ribosome"
RIBOSOME_DIAMETER_PX = 56.0  # README: ~300 A at 5.36 A/px
DEFAULT_OUTPUT = REPO / "deeppicker_relion" / "pretrained" / "general.safetensors"
HALF = INPUT_SIZE // 2
NEAR_MISS_MIN = 0.2  # x diameter: background windows start where a pick would no longer match
SEED = 2016
# Counts of test-time copies the weights carry a calibration for (``calibration_by_augment``): the
# shipped count and the two a user is likely to choose instead (1: faster; 4: best centring).
CALIBRATED_AUGMENTS = (1, 2, 4)

# Splits (the split is part of each micrograph's seed: no overlap). "test" holds the held-out
# test micrographs of the benchmark (first version's conditions, wide SNR 0.02-0.5: unchanged so
# figures stay comparable); "train2"/"val2" are the training and validation data of this recipe.
# (number of micrographs, number of extra EMPTY micrographs, SNR mode); training micrographs are
# in addition empty with probability 0.08.
# "rule": the selection micrographs (the figure of merit is fitted on them, training/fit_fom.py; the
# sub-grid refinement and the size check were chosen on them): random molecules over the wide SNR
# range of the test sets, and EMPTY micrographs only of the maps (no particle of them).
# "train_wide" (experiments, Recipe.train_snr = "wide"): training micrographs drawn over the test
# sets' wide SNR range instead of the realistic mix.
MAP_SPLITS = {"test": (10, 20, "wide"), "train2": (40, 0, "realistic"), "val2": (8, 12, "realistic"), "rule": (0, 36, "wide"),
              "train_wide": (40, 0, "wide")}
SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "train2": 3, "val2": 4, "rule": 5, "train_wide": 6}  # seeds; 0-1: first recipe
SYNTHETIC = "synthetic"  # random protein-like molecules (simulate.synthetic_molecule), one per micrograph
CAGES = "cages"  # random hollow particles (random_cage / random_shell), one per micrograph
FAMILY_SPLITS = {SYNTHETIC: {"train2": 480, "val2": 32, "rule": 288, "train_wide": 480},
                 CAGES: {"train2": 160, "val2": 12, "rule": 96, "train_wide": 160}}
FAMILY_IDS = {SYNTHETIC: 99, CAGES: 97}
TRAIN, VAL = "train2", "val2"


# --------------------------------------------------------------------------------------------------
# Simulated data
# --------------------------------------------------------------------------------------------------


def molecules() -> list[str]:
    return available_maps()


@dataclass
class Conditions:
    """Everything drawn for one simulated micrograph."""

    pixel_size_A: float
    diameter_px: float
    shape: tuple[int, int]
    n_particles: int
    defocus_um: float
    astigmatism_um: float
    b_factor_A2: float
    snr: float
    ice_noise_fraction: float
    fog_fraction: float
    fog_cutoff: float
    mtf_falloff: float
    min_distance: float
    ice: float
    n_contaminants: int
    carbon_edge: bool
    output: str


# particle diameters in pixels: a few log-spaced values (projectors are cached per pixel size)
_DIAMETERS_PX = np.round(np.geomspace(24, 160, 9))


def _draw_snr(rng: np.random.Generator, mode: str) -> float:
    """'wide': log-uniform 0.02-0.5 (the held-out test sets); 'realistic': 70 % log-uniform
    0.1-0.6 (binned real micrographs: EMPIAR-10028 ribosomes measure 0.36-0.45), 30 % 0.02-0.1."""
    if mode == "wide":
        return float(np.exp(rng.uniform(np.log(0.02), np.log(0.5))))
    lo, hi = (0.1, 0.6) if rng.uniform() < 0.7 else (0.02, 0.1)
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def draw_conditions(rng: np.random.Generator, diameter_A: float, empty: bool = False, snr_mode: str = "wide") -> Conditions:
    """Realistic, widely varied conditions for one micrograph of a molecule ``diameter_A`` across."""
    allowed = [d for d in _DIAMETERS_PX if 0.9 <= diameter_A / d <= 7.5] or [float(_DIAMETERS_PX[0])]
    diameter_px = float(rng.choice(allowed))
    pixel = diameter_A / diameter_px
    boxes = rng.uniform(11, 18, size=2)
    shape = tuple(int(min(3072, max(320, round(b * diameter_px)))) for b in boxes)
    area_boxes = shape[0] * shape[1] / diameter_px**2
    density = rng.uniform(0.03, 0.42)  # particles per box area: sparse ... touching
    n = 0 if empty else max(1, int(round(density * area_boxes)))
    output = str(rng.choice(["float32", "random_affine", "uint16", "int8"], p=[0.5, 0.2, 0.15, 0.15]))
    return Conditions(
        pixel_size_A=pixel,
        diameter_px=diameter_px,
        shape=shape,  # type: ignore[arg-type]
        n_particles=n,
        defocus_um=float(rng.uniform(1.0, 3.5)),
        astigmatism_um=float(rng.uniform(0.0, 0.15)),
        b_factor_A2=float(rng.uniform(80, 400)),
        snr=_draw_snr(rng, snr_mode),
        ice_noise_fraction=float(rng.uniform(0.15, 0.6)),
        fog_fraction=float(rng.uniform(0.05, 0.5)),
        fog_cutoff=float(np.exp(rng.uniform(np.log(0.03), np.log(0.2)))),
        mtf_falloff=float(rng.uniform(0.2, 1.5)),
        min_distance=float(rng.uniform(0.75, 1.1)),
        ice=float(rng.uniform(0.0, 0.3)),
        n_contaminants=int(rng.integers(1, 4)) if rng.uniform() < 0.25 else 0,
        carbon_edge=bool(rng.uniform() < 0.12),
        output=output,
    )


def random_shell(diameter_A: float, pixel_size_A: float, rng: np.random.Generator) -> np.ndarray:
    """A random hollow spherical shell (float32 [z, y, x], centred on voxel N // 2): 12-35 % of
    the radius thick, textured at the subunit scale, with pores in 0-40 % of its surface and
    sometimes some cargo inside; density level as the shipped maps'."""
    radius = 0.5 * diameter_A / pixel_size_A
    box = 2 * math.ceil(0.625 * diameter_A / pixel_size_A) + 4
    grid = np.arange(box, dtype=np.float32) - box // 2
    z, y, x = np.meshgrid(grid, grid, grid, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    thickness = rng.uniform(0.12, 0.35) * radius
    edge = max(0.7, 2.0 / pixel_size_A)
    shell = 1 / (1 + np.exp(-(r - (radius - thickness)) / edge)) / (1 + np.exp((r - radius) / edge))
    subunit = rng.uniform(0.1, 0.3) * radius  # texture at the subunit scale
    texture = ndimage.gaussian_filter(rng.standard_normal(shell.shape).astype(np.float32), 0.35 * subunit)
    texture /= max(float(texture.std()), 1e-12)
    pores = np.clip((texture - np.quantile(texture, rng.uniform(0.0, 0.4))) * 3, 0, 1)
    volume = shell * pores * (1 + 0.3 * texture)
    if rng.uniform() < 0.3:  # cargo
        volume += rng.uniform(0.1, 0.5) / (1 + np.exp((r - rng.uniform(0.3, 0.8) * (radius - thickness)) / edge))
    return _protein_level(np.clip(volume, 0, None))


def random_cage(diameter_A: float, pixel_size_A: float, rng: np.random.Generator) -> np.ndarray:
    """A random hollow protein cage (float32 [z, y, x], centred on voxel N // 2): ellipsoidal
    subunits lying flat in a shell 12-35 % of the radius thick, repeated by the tetrahedral (12),
    octahedral (24: apoferritin-like) or icosahedral (60) rotation group, 1-3 subunits per
    asymmetric unit, ~5 A texture, sometimes with cargo inside."""
    group = str(rng.choice(["T", "O", "O", "I"]))
    mats = Rotation.create_group(group).as_matrix()
    radius = 0.5 * diameter_A / pixel_size_A
    box = 2 * math.ceil(0.625 * diameter_A / pixel_size_A) + 4
    thickness = rng.uniform(0.12, 0.35)  # x radius
    mid = 1.0 - 0.5 * thickness
    n_per = int(rng.integers(1, 4))
    area = 4 * np.pi * mid**2 / (len(mats) * n_per)  # shell area per subunit (unit radius)
    centres, shapes = [], []
    for _ in range(n_per):
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        t1 = np.cross(normal, rng.normal(size=3))
        t1 /= np.linalg.norm(t1)
        t2 = np.cross(normal, t1)
        aspect = rng.uniform(1.0, 2.5)
        cover = rng.uniform(0.8, 1.4)  # < 1: gaps between subunits, > 1: overlapping
        a = math.sqrt(cover * area * aspect / np.pi)
        b = a / aspect
        axes = np.column_stack([normal * 0.5 * thickness * rng.uniform(0.9, 1.2), t1 * a, t2 * b])
        centres.append(normal * mid)
        shapes.append(axes)
    centres_all = np.concatenate([np.array(centres) @ m.T for m in mats])
    shapes_all = np.concatenate([m @ np.array(shapes) for m in mats])
    edge = max(0.5, 1.5 / pixel_size_A)
    volume = _ellipsoid_union(box, centres_all * radius, shapes_all * radius, edge_px=edge)
    if rng.uniform() < 0.25:  # cargo
        grid = np.arange(box, dtype=np.float32) - box // 2
        r = np.sqrt(grid[:, None, None] ** 2 + grid[None, :, None] ** 2 + grid[None, None, :] ** 2)
        inner = rng.uniform(0.3, 0.8) * (1 - thickness) * radius
        volume = np.maximum(volume, rng.uniform(0.1, 0.5) / (1 + np.exp((r - inner) / edge)))
    texture = ndimage.gaussian_filter(rng.standard_normal(volume.shape).astype(np.float32), 2.5 / pixel_size_A)
    volume *= np.clip(1 + 0.35 * texture / max(float(texture.std()), 1e-12), 0, None)
    volume = ndimage.gaussian_filter(volume, sigma=max(0.5, 1.5 / pixel_size_A), mode="constant")
    return _protein_level(np.clip(volume, 0, None))


def _protein_level(volume: np.ndarray) -> np.ndarray:
    inside = volume > 0.05 * volume.max()
    return (volume * (0.11 / float(volume[inside].mean()))).astype(np.float32)


def _family_molecule(family: str, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A new random molecule of a family, 70-450 A across: (volume, map pixel size)."""
    size_A = float(np.exp(rng.uniform(np.log(70), np.log(450))))
    map_px = size_A / 40
    if family == SYNTHETIC:
        return synthetic_molecule(size_A, map_px, seed=rng), map_px
    if rng.uniform() < 0.6:
        return random_cage(size_A, map_px, rng), map_px
    return random_shell(size_A, map_px, rng), map_px


def _split_jobs(molecule: str, split: str) -> list[tuple[str, int, bool]]:
    if molecule in FAMILY_SPLITS:
        return [("mic", i, False) for i in range(FAMILY_SPLITS[molecule][split])]
    n, n_empty, _ = MAP_SPLITS[split]
    return [("mic", i, False) for i in range(n)] + [("empty", i, True) for i in range(n_empty)]


def simulate_parts(molecule: str, split: str, kind: str, i: int, forced_empty: bool) -> tuple[Conditions, SimulatedMicrograph]:
    """The conditions and the simulation (with its noise-free signal and noise apart) of micrograph
    ``i`` of a split, ``kind`` "mic" or "empty": the same micrograph every time (seeded by its
    molecule, split, kind and number)."""
    family = molecule in FAMILY_SPLITS
    mol_id = FAMILY_IDS[molecule] if family else molecules().index(molecule)
    rng = np.random.default_rng(np.random.SeedSequence([SEED, mol_id, SPLIT_IDS[split], 0 if kind == "mic" else 1, i]))
    if family:
        volume = _family_molecule(molecule, rng)
    else:
        volume = load_map(molecule)
    diameter_A = estimate_diameter_A(*volume)
    empty = forced_empty or (split.startswith("train") and rng.uniform() < 0.08)
    snr_mode = "wide" if split in ("test", "rule", "train", "val", "train_wide") else "realistic"
    cond = draw_conditions(rng, diameter_A, empty, snr_mode)
    sim = simulate_micrograph_parts(
        cond.shape, cond.pixel_size_A, [volume], cond.n_particles, names=[molecule],
        defocus_um=cond.defocus_um, astigmatism_um=cond.astigmatism_um, b_factor_A2=cond.b_factor_A2,
        snr=cond.snr, ice_noise_fraction=cond.ice_noise_fraction, fog_fraction=cond.fog_fraction,
        fog_cutoff=cond.fog_cutoff, mtf_falloff=cond.mtf_falloff, min_distance=cond.min_distance,
        ice=cond.ice, n_contaminants=cond.n_contaminants, carbon_edge=cond.carbon_edge,
        output=cond.output, seed=rng, fft_workers=1,
    )  # fmt: skip
    return cond, sim


def _simulate_job(molecule: str, split: str, kind: str, i: int, forced_empty: bool, folder: str) -> dict:
    """Simulate and write one micrograph of a split (in a worker process)."""
    start = time.perf_counter()
    cond, sim = simulate_parts(molecule, split, kind, i, forced_empty)
    name = f"{kind}_{molecule.split('_')[0]}_{split}_{i:03d}"
    folder_p = Path(folder)
    write_mrc(folder_p / f"{name}.mrc", sim.image, cond.pixel_size_A)
    write_coordinate_star(folder_p / f"{name}.star", sim.centres[["x", "y"]].assign(score=1.0))
    log.info("%s: %s %d particles, %.1f s", molecule, name, len(sim.centres), time.perf_counter() - start)
    return dict(name=name, path=str(folder_p / f"{name}.mrc"), coords=str(folder_p / f"{name}.star"),
                pixel_size_A=cond.pixel_size_A, diameter_px=cond.diameter_px, n_particles=len(sim.centres),
                snr=cond.snr, empty=cond.n_particles == 0, conditions=json.dumps(asdict(cond)))  # fmt: skip


def simulate_split(molecule: str, split: str, cache: Path = CACHE, workers: int | None = None) -> pd.DataFrame:
    """Simulate (or read from the cache) one split of one molecule or family: ``cache/sim/MOL/SPLIT/``.

    Returns the index (one row per micrograph): name, path, coords, pixel_size_A, diameter_px,
    n_particles, snr, empty, conditions (JSON). Empty micrographs of the split are named ``empty_*``.
    Deterministic whatever the number of worker processes.
    """
    folder = cache / "sim" / molecule / split
    index_path = folder / "index.csv"
    if index_path.is_file():
        return pd.read_csv(index_path)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(molecule, split, kind, i, empty, str(folder)) for kind, i, empty in _split_jobs(molecule, split)]
    workers = workers or min(2, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 1:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(_simulate_job, *zip(*jobs), chunksize=2))
    else:
        rows = [_simulate_job(*job) for job in jobs]
    table = pd.DataFrame(rows)
    table.to_csv(index_path, index=False)
    return table


def ribosome_index() -> pd.DataFrame:
    """The real ribosome micrographs with their (incomplete) labels, in the same index format."""
    rows = []
    for mrc in sorted((RIBOSOME_DIR / "micrographs").glob("*.mrc")):
        rows.append(dict(name=mrc.stem, path=str(mrc), coords=str(RIBOSOME_DIR / "coords" / f"{mrc.stem}.star"),
                         pixel_size_A=5.36, diameter_px=RIBOSOME_DIAMETER_PX, n_particles=-1, snr=float("nan"),
                         empty=False, conditions="{}"))  # fmt: skip
    if not rows:
        raise FileNotFoundError(f"no ribosome micrographs in {RIBOSOME_DIR}")
    return pd.DataFrame(rows)


def read_centres(path: str) -> np.ndarray:
    coords = read_coordinates(path)
    return coords[["x", "y"]].to_numpy(float).reshape(-1, 2)


# --------------------------------------------------------------------------------------------------
# Recipe and patches
# --------------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    """Training recipe constants (recorded in the weights' metadata)."""

    # the reference layout with twice the channels and batch norm (model.py): validation F1 0.833 vs
    # 0.712 for "deeppicker2016" (2026-11-24; MODEL_CARD.md, "Recipe")
    architecture: str = "deeppicker2016-wide"
    context: float = 1.0  # network window = context x particle diameter
    # preprocess.normalise of the training patches (rounds 1 and 2) ...
    train_normalisation: str = "local"
    # ... and of the calibration and picking (the weights' "normalisation"). "local" for both since
    # the fifth version (2026-11-24): validation F1 0.840 vs 0.836 for "global" for both
    # (MODEL_CARD.md, "Normalisation"); "global" reproduces the fourth version's recipe.
    normalisation: str = "local"
    n_map_train: int = 40  # training micrographs per shipped map (of MAP_SPLITS["train2"])
    n_synthetic_train: int = 480
    n_cage_train: int = 160
    max_positives_per_micrograph: int = 28
    negative_ratio: float = 4.0
    near_miss_fraction: float = 0.35
    near_miss_min: float = NEAR_MISS_MIN  # near misses 0.2-0.6 diameter from a particle
    near_miss_max: float = 0.6
    empty_negatives: int = 60
    box_jitter_lo: float = 0.88  # box given to preprocessing = diameter x log-uniform(lo, hi)
    box_jitter_hi: float = 1.12
    ribosome_repeats: int = 1
    hard_negative_score: float = 0.2
    max_hard_per_micrograph: int = 40
    epochs_round1: int = 30
    patience_round1: int = 3
    epochs_round2: int = 4
    patience_round2: int = 2
    lr_round1: float = 0.01
    lr_round2: float = 0.003
    lr_decay: float = 0.3  # on a validation-loss plateau
    batch_size: int = 128
    calibration_min_snr: float = 0.1  # the F1-optimal threshold is set on validation micrographs of SNR >= this
    max_empty_picks: float = 0.3  # ... with at most this many picks per empty validation micrograph
    # test-time augmentation the model is calibrated and shipped with (scoring.py): 2 = each window
    # and its half turn, chosen on validation micrographs over 4 (same F1, half the scoring time)
    augment: int = 2
    seed: int = SEED
    # SNR of the training micrographs: "realistic" (70 % 0.1-0.6, 30 % 0.02-0.1; the shipped
    # recipe) or "wide" (log-uniform 0.02-0.5 as the test sets; other micrographs, split
    # "train_wide"; an experiment, MODEL_CARD.md "Recipe")
    train_snr: str = "realistic"


def pick_params(recipe: Recipe, **kw) -> PickParams:
    """Picking parameters for a network window of ``context`` x diameter (distances of
    PickParams are fractions of the window)."""
    base = PickParams(**kw)
    base.peak_window = base.peak_window / recipe.context
    return base


def dark_blobs(image: np.ndarray, unit: float = INPUT_SIZE, min_separation: float = 0.6) -> np.ndarray:
    """Label-free particle-like candidates of a preprocessed image (particle diameter ``unit``
    px): local minima of the image smoothed at the particle scale that are darker than its median
    by 3 x its robust spread (on EMPIAR-10028 this keeps every labelled ribosome and ~40 unlabelled
    dark blobs per micrograph). (x, y) in resampled pixels. Used to keep background patches off
    unlabelled particles."""
    smooth = ndimage.gaussian_filter(image, unit / 6)
    size = int(min_separation * unit) | 1
    low = ndimage.minimum_filter(smooth, size=size, mode="nearest")
    spread = 1.4826 * np.median(np.abs(smooth - np.median(smooth)))
    rows, cols = np.nonzero((smooth == low) & (smooth < np.median(smooth) - 3.0 * spread))
    return np.column_stack([cols, rows]).astype(float)


def _sample_background(
    shape: tuple[int, int], positives: np.ndarray, blockers: np.ndarray, n_far: int, n_near: int,
    rng: np.random.Generator, unit: float, near_min: float = NEAR_MISS_MIN, near_max: float = 0.6,
) -> np.ndarray:  # fmt: skip
    """Background window centres (x, y): ``n_far`` >= 0.6 diameter (``unit`` px) from every
    positive and blocker, ``n_near`` 0.2-0.6 diameter from a positive (and >= 0.2 from all
    positives, 0.6 from blockers)."""
    lo = np.array([HALF, HALF], float)
    hi = np.array([shape[1] - HALF, shape[0] - HALF], float)
    if np.any(hi <= lo):
        return np.zeros((0, 2))
    pos_tree = cKDTree(positives) if len(positives) else None
    block_tree = cKDTree(blockers) if len(blockers) else None
    out = []
    if n_near and pos_tree is not None:
        base = positives[rng.integers(0, len(positives), 6 * n_near)]
        ang = rng.uniform(0, 2 * np.pi, len(base))
        rad = rng.uniform(near_min, near_max, len(base)) * unit
        pts = base + np.column_stack([np.cos(ang), np.sin(ang)]) * rad[:, None]
        pts = pts[np.all((pts >= lo) & (pts < hi), axis=1)]
        pts = pts[pos_tree.query(pts)[0] >= near_min * unit]
        if block_tree is not None and len(pts):
            pts = pts[block_tree.query(pts)[0] >= 0.6 * unit]
        out.append(pts[:n_near])
    if n_far:
        pts = rng.uniform(lo, hi, size=(20 * n_far + 50, 2))
        for tree in (pos_tree, block_tree):
            if tree is not None and len(pts):
                pts = pts[tree.query(pts)[0] >= 0.6 * unit]
        out.append(pts[:n_far])
    return np.vstack(out) if out else np.zeros((0, 2))


def _jittered_box(row: pd.Series, rng: np.random.Generator, recipe: Recipe) -> tuple[float, float]:
    """(box given to preprocessing = context x jittered diameter, true diameter in resampled px)."""
    jitter = float(np.exp(rng.uniform(np.log(recipe.box_jitter_lo), np.log(recipe.box_jitter_hi))))
    box = recipe.context * float(row["diameter_px"]) * jitter
    return box, INPUT_SIZE / recipe.context / jitter


def micrograph_patches(
    row: pd.Series, rng: np.random.Generator, recipe: Recipe, real: bool = False
) -> tuple[TrainingSet, dict]:
    """Positive and background patches of one micrograph (see the module docstring)."""
    mic = read_micrograph(row["path"])
    centres = read_centres(row["coords"]) if isinstance(row["coords"], str) and row["coords"] else np.zeros((0, 2))
    box, unit = _jittered_box(row, rng, recipe)
    pre = preprocess(mic.data, box, recipe.train_normalisation)
    px, py = pre.to_resampled(centres[:, 0], centres[:, 1])
    positives = np.column_stack([px, py])
    inside = (px >= HALF) & (py >= HALF) & (px < pre.image.shape[1] - HALF) & (py < pre.image.shape[0] - HALF)
    use = np.flatnonzero(inside)
    if not real and len(use) > recipe.max_positives_per_micrograph:  # real particles: keep them all
        use = rng.choice(use, recipe.max_positives_per_micrograph, replace=False)
    blockers = dark_blobs(pre.image, unit) if real else np.zeros((0, 2))
    if len(positives):
        n_neg = int(round(recipe.negative_ratio * len(use)))
        n_near = 0 if real else int(round(recipe.near_miss_fraction * n_neg))
        if real:  # near misses only around labelled particles whose surroundings hold no blob
            n_near = int(round(0.2 * n_neg))
    else:
        n_neg, n_near = recipe.empty_negatives, 0
    neg = _sample_background(pre.image.shape, positives, blockers, n_neg - n_near, n_near, rng, unit,
                             recipe.near_miss_min, recipe.near_miss_max)
    pos_p = cut_patches(pre.image, positives[use, 0], positives[use, 1])
    neg_p = cut_patches(pre.image, neg[:, 0], neg[:, 1])
    labels = np.concatenate([np.ones(len(pos_p), np.int64), np.zeros(len(neg_p), np.int64)])
    info = dict(box=box, n_pos=len(pos_p), n_neg=len(neg_p), n_blobs=len(blockers))
    return TrainingSet(np.concatenate([pos_p, neg_p]), labels), info


def hard_negatives(model: DeepPickerNet, row: pd.Series, rng: np.random.Generator, recipe: Recipe) -> TrainingSet:
    """Background patches where ``model`` picks (score >= recipe.hard_negative_score) on a
    micrograph with COMPLETE labels, >= 0.2 diameter from every true centre."""
    mic = read_micrograph(row["path"])
    centres = read_centres(row["coords"])
    box, unit = _jittered_box(row, rng, recipe)
    pre = preprocess(mic.data, box, recipe.train_normalisation)  # training data: as round 1's
    smap = score_map_dense(model, pre.image)
    cand = find_candidates(smap, pre, pick_params(recipe, floor=recipe.hard_negative_score, clean=False, outlier_fraction=1.0, dark_sigma=0.0))
    xr, yr = pre.to_resampled(cand["x"].to_numpy(float), cand["y"].to_numpy(float))
    pts = np.column_stack([xr, yr])
    if len(centres) and len(pts):
        cx, cy = pre.to_resampled(centres[:, 0], centres[:, 1])
        d = cKDTree(np.column_stack([cx, cy])).query(pts)[0]
        pts = pts[d >= recipe.near_miss_min * unit]
    ok = (pts[:, 0] >= HALF) & (pts[:, 1] >= HALF) & (pts[:, 0] < pre.image.shape[1] - HALF) & (pts[:, 1] < pre.image.shape[0] - HALF)
    pts = pts[ok][: recipe.max_hard_per_micrograph]
    patches = cut_patches(pre.image, pts[:, 0], pts[:, 1])
    return TrainingSet(patches, np.zeros(len(patches), np.int64))


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


def candidate_margins(model: DeepPickerNet, index: pd.DataFrame, recipe: Recipe) -> pd.DataFrame:
    """Every peak candidate (floor p = 1e-6) of the micrographs of ``index`` (complete labels):
    columns micrograph, margin (raw logit margin), true (matches a particle one-to-one within 0.2
    diameter), snr, empty; plus attrs n_reference per micrograph."""
    per = []
    n_ref = {}
    for _, row in index.iterrows():
        mic = read_micrograph(row["path"])
        pre = preprocess(mic.data, recipe.context * float(row["diameter_px"]), model.normalisation)
        smap = score_map_dense(model, pre.image)
        # dark-region filter off, as when the shipped weights were calibrated (it came later)
        cand = find_candidates(smap, pre, pick_params(recipe, floor=1e-6, dark_sigma=0.0))
        ref = read_coordinates(row["coords"])
        n_ref[row["name"]] = len(ref)
        matched, _ = match(cand, ref, MATCH_RADIUS * float(row["diameter_px"]))
        p = np.clip(cand["score"].to_numpy(float), 1e-12, 1 - 1e-12)
        per.append(pd.DataFrame({"micrograph": row["name"], "margin": np.log(p / (1 - p)), "true": (matched >= 0).astype(float),
                                 "snr": float(row["snr"]), "empty": bool(row["n_particles"] == 0)}))  # fmt: skip
    table = pd.concat(per, ignore_index=True)
    table.attrs["n_reference"] = n_ref
    return table


def threshold_curve(table: pd.DataFrame, n_reference: int, n_empty: int, subset: np.ndarray) -> pd.DataFrame:
    """For every cut between consecutive margins of the ``subset`` rows (non-empty micrographs):
    cut, precision, recall, F1 there, and picks per empty micrograph (rows with ``empty``) at it."""
    m = table["margin"].to_numpy(float)[subset]
    t = table["true"].to_numpy(float)[subset]
    order = np.argsort(-m, kind="stable")
    m, tp = m[order], np.cumsum(t[order])
    k = np.arange(1, len(m) + 1)
    cut = np.append(0.5 * (m[:-1] + m[1:]), m[-1] - 0.5) if len(m) else m
    empty_m = np.sort(table["margin"].to_numpy(float)[table["empty"].to_numpy(bool)])
    empty_picks = (len(empty_m) - np.searchsorted(empty_m, cut, side="left")) / max(1, n_empty)
    return pd.DataFrame({"cut": cut, "precision": tp / k, "recall": tp / max(1, n_reference),
                         "f1": 2 * tp / (k + n_reference), "empty_picks": empty_picks})  # fmt: skip


def calibrate(model: DeepPickerNet, val: pd.DataFrame, recipe: Recipe) -> dict:
    """Platt scaling on all validation candidates, then an offset putting p = 0.5 at the best F1 on
    the validation micrographs of SNR >= ``recipe.calibration_min_snr`` subject to at most
    ``recipe.max_empty_picks`` picks per empty validation micrograph; folded into the last layer."""
    table = candidate_margins(model, val, recipe)
    a, b = fit_platt(table["margin"].to_numpy(float), table["true"].to_numpy(float))
    table["margin"] = a * table["margin"] + b
    n_ref = table.attrs["n_reference"]
    realistic = val[(val["snr"] >= recipe.calibration_min_snr) & (val["n_particles"] > 0)]["name"]
    subset = table["micrograph"].isin(set(realistic)).to_numpy()
    n_reference = int(sum(n_ref[n] for n in realistic))
    n_empty = int((val["n_particles"] == 0).sum())
    curve = threshold_curve(table, n_reference, n_empty, subset)
    best = int(curve["f1"].idxmax())
    ok = curve["empty_picks"] <= recipe.max_empty_picks
    chosen = int(curve["f1"].where(ok, -1).idxmax()) if ok.any() else best
    offset = float(np.clip(-curve.loc[chosen, "cut"], -6.0, 6.0))
    fold_logit_calibration(model, a, b + offset)
    row, row_best = curve.loc[chosen], curve.loc[best]
    all_sub = (table["micrograph"].isin(set(val[val["n_particles"] > 0]["name"]))).to_numpy()
    picked = (table["margin"].to_numpy(float) + offset >= 0) & all_sub
    n_ref_all = int(sum(n_ref[n] for n in val[val["n_particles"] > 0]["name"]))
    tp_all = float(table["true"].to_numpy(float)[picked].sum())
    return {"a": a, "b": b, "offset": offset, "folded_into": "fc2", "fit_on": f"{len(val)} validation micrographs",
            "n_candidates": int(len(table)), "n_true": int(table["true"].sum()),
            "rule": f"best F1 on validation micrographs with SNR >= {recipe.calibration_min_snr} "
                    f"with <= {recipe.max_empty_picks} picks per empty validation micrograph",
            "val_realistic": {"micrographs": int(len(realistic)), "precision": float(row["precision"]), "recall": float(row["recall"]),
                              "f1": float(row["f1"]), "empty_picks": float(row["empty_picks"])},
            "val_realistic_unconstrained_best": {"offset": float(-row_best["cut"]), "precision": float(row_best["precision"]),
                                                 "recall": float(row_best["recall"]), "f1": float(row_best["f1"]),
                                                 "empty_picks": float(row_best["empty_picks"])},
            "val_all_snr": {"precision": tp_all / max(1, int(picked.sum())), "recall": tp_all / max(1, n_ref_all)},
            "n_empty_validation": n_empty}  # fmt: skip


def calibrate_counts(model: DeepPickerNet, val: pd.DataFrame, recipe: Recipe) -> tuple[dict, dict]:
    """:func:`calibrate` the uncalibrated ``model`` in place for ``recipe.augment`` copies, and
    apply the same rule to copies of it for each other count in ``CALIBRATED_AUGMENTS`` (the
    weights' ``calibration_by_augment``, used when a user scores with another ``--augment N``).
    Returns (the calibration, {str(n): {a, b, offset, val_realistic}})."""
    model.augment = recipe.augment
    table = {}
    for n in CALIBRATED_AUGMENTS:
        if n == recipe.augment:
            continue
        other = copy.deepcopy(model)
        other.augment = n
        cal = calibrate(other, val, recipe)
        log.info("calibration for %d copies: %s", n, cal)
        table[str(n)] = cal
    own = calibrate(model, val, recipe)
    table[str(recipe.augment)] = own
    keys = ("a", "b", "offset", "val_realistic")
    return own, {n: {k: table[n][k] for k in keys} for n in sorted(table, key=int)}


def fit_platt(margins: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b), a > 0, minimising the log loss of sigmoid(a * margin + b) against the labels."""

    def loss(ab):
        z = ab[0] * margins + ab[1]
        return float(np.mean(np.logaddexp(0, z) - labels * z))

    res = optimize.minimize(loss, x0=[1.0, 0.0], method="L-BFGS-B", bounds=[(0.05, 5.0), (-20.0, 20.0)])
    return float(res.x[0]), float(res.x[1])


# --------------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------------


def training_index(holdout: str | None, recipe: Recipe) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(simulated training micrographs, real ribosome micrographs or empty, validation micrographs)."""
    maps = [] if holdout == "all" else [m for m in molecules() if m != holdout]
    if recipe.train_snr not in ("realistic", "wide"):
        raise ValueError(f"train_snr must be realistic or wide, not {recipe.train_snr!r}")
    train = TRAIN if recipe.train_snr == "realistic" else "train_wide"
    sims = [simulate_split(m, train).head(recipe.n_map_train) for m in maps]
    sims.append(simulate_split(SYNTHETIC, train).head(recipe.n_synthetic_train))
    sims.append(simulate_split(CAGES, train).head(recipe.n_cage_train))
    vals = [simulate_split(m, VAL) for m in maps + [SYNTHETIC, CAGES]]
    # the held-out maps' EMPTY validation micrographs (ice, noise, contamination, carbon: no particle
    # of the molecule) still calibrate the noise guard
    vals += [v[v["n_particles"] == 0] for v in (simulate_split(m, VAL) for m in molecules() if m not in maps)]
    ribo = ribosome_index() if holdout not in ("ribosome", "all") else ribosome_index().iloc[0:0]
    return pd.concat(sims, ignore_index=True), ribo, pd.concat(vals, ignore_index=True)


def build_set(sim: pd.DataFrame, ribo: pd.DataFrame, recipe: Recipe, rng: np.random.Generator) -> TrainingSet:
    sets = []
    for _, row in sim.iterrows():
        s, _ = micrograph_patches(row, rng, recipe)
        sets.append(s)
    for _ in range(recipe.ribosome_repeats):
        for _, row in ribo.iterrows():
            s, info = micrograph_patches(row, rng, recipe, real=True)
            log.info("ribosome %s: %s", row["name"], info)
            sets.append(s)
    return TrainingSet.concat(sets)


def make_model(
    output: Path, holdout: str | None = None, recipe: Recipe = Recipe(), threads: int = 0, cache: Path = CACHE
) -> dict:
    """Run the whole recipe; writes ``output`` and returns its metadata."""
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    sim, ribo, val = training_index(holdout, recipe)
    rng = np.random.default_rng(recipe.seed)
    data = build_set(sim, ribo, recipe, rng)
    n_pos = int(data.labels.sum())
    log.info("round 1: %d particle and %d background patches from %d micrographs (%.0f s)", n_pos, len(data) - n_pos,
             len(sim) + len(ribo), time.perf_counter() - t0)  # fmt: skip
    common = dict(batch_size=recipe.batch_size, architecture=recipe.architecture, lr_decay_factor=recipe.lr_decay)
    params1 = TrainParams(max_epochs=recipe.epochs_round1, lr=recipe.lr_round1, patience=recipe.patience_round1,
                          seed=recipe.seed, **common)  # fmt: skip
    model, hist1 = train(data, params1)
    log.info("round 1 done: best epoch %d of %d, val loss %.4f (%.0f s)", hist1.best_epoch + 1, len(hist1.val_loss),
             hist1.val_loss[hist1.best_epoch], time.perf_counter() - t0)  # fmt: skip
    hard = TrainingSet.concat([hard_negatives(model, row, rng, recipe) for _, row in sim.iterrows()])
    log.info("round 2: %d hard negatives (%.0f s)", len(hard), time.perf_counter() - t0)
    hist2 = None
    if recipe.epochs_round2 > 0:
        params2 = TrainParams(max_epochs=recipe.epochs_round2, lr=recipe.lr_round2, patience=recipe.patience_round2,
                              seed=recipe.seed + 1, **common)  # fmt: skip
        model, hist2 = train(TrainingSet.concat([data, hard]), params2, init=model)
        log.info("round 2 done: best epoch %d of %d, val loss %.4f (%.0f s)", hist2.best_epoch + 1, len(hist2.val_loss),
                 hist2.val_loss[hist2.best_epoch], time.perf_counter() - t0)  # fmt: skip
    model.normalisation = recipe.normalisation  # calibrated, shipped and picking with this one
    calibration, by_augment = calibrate_counts(model, val, recipe)  # for the scoring it ships with, and 1 / 4
    log.info("calibration %s (%.0f s)", calibration, time.perf_counter() - t0)
    maps = [] if holdout == "all" else [m for m in molecules() if m != holdout]
    info = {
        "recipe": "training/make_general_model.py" + (f" --holdout {holdout}" if holdout else " --holdout none"),
        "holdout": holdout,
        "architecture": recipe.architecture,
        "context": recipe.context,
        "augment": recipe.augment,
        "molecules": maps + [f"{recipe.n_synthetic_train} random synthetic molecules",
                             f"{recipe.n_cage_train} random hollow cages/shells"],
        "real_data": [] if holdout in ("ribosome", "all") else ["EMPIAR-10028 ribosome (10 micrographs, ../shared)"],
        "recipe_params": asdict(recipe),
        "n_particles": n_pos,
        "n_background": len(data) - n_pos + len(hard),
        "n_hard_negatives": len(hard),
        "calibration": calibration,
        "calibration_by_augment": by_augment,
        "epochs_round1": len(hist1.val_loss),
        "val_loss_round1": hist1.val_loss,
        "val_loss_round2": hist2.val_loss if hist2 else [],
        "seconds": round(time.perf_counter() - t0),
        "torch": torch.__version__,
    }  # fmt: skip
    save_model(model, output, info)
    log.info("wrote %s (%.0f s)", output, time.perf_counter() - t0)
    return info


def parse_overrides(items: list[str], base=None):
    """``FIELD=VALUE`` strings -> a copy of ``base`` (a recipe dataclass; default: :class:`Recipe`)
    with those fields changed."""
    recipe = copy.copy(base) if base is not None else Recipe()
    types = {f.name: type(getattr(recipe, f.name)) for f in fields(recipe)}
    for item in items:
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"unknown recipe field {key!r}; known: {', '.join(types)}")
        setattr(recipe, key, types[key](value))
    return recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=None, help=f"weights file (default {DEFAULT_OUTPUT})")
    parser.add_argument("--holdout", default="all",
                        help="leave this molecule (map name or 'ribosome') out; 'all' (default: the shipped "
                             "model) leaves out every map and the ribosomes; 'none' trains on everything")
    parser.add_argument("--simulate-only", action="store_true", help="generate the cached data and stop")
    parser.add_argument("--recalibrate", type=Path, default=None,
                        help="only redo step 4 (calibration) of an existing weights file, written to --output")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override recipe fields (experiments)")
    parser.add_argument("--no-centring", action="store_true",
                        help="do not train the centring network afterwards (training/make_centring_model.py; "
                             "run for the shipped model, --holdout all, into centring.safetensors beside it)")
    parser.add_argument("-j", "--threads", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.holdout not in ("ribosome", "all", "none") and args.holdout not in molecules():
        parser.error(f"--holdout must be one of {molecules()}, 'ribosome', 'all' or 'none'")
    default_output = (DEFAULT_OUTPUT if args.holdout == "all" else CACHE / "general_with_maps.safetensors"
                      if args.holdout == "none" else CACHE / "lomo" / f"{args.holdout}.safetensors")  # fmt: skip
    args.holdout = None if args.holdout == "none" else args.holdout
    recipe = parse_overrides(args.set)
    if args.simulate_only:
        for m in molecules():
            for split in MAP_SPLITS:
                simulate_split(m, split)
        for family, splits in FAMILY_SPLITS.items():
            for split in splits:
                simulate_split(family, split)
        return 0
    output = args.output or default_output
    output.parent.mkdir(parents=True, exist_ok=True)
    if args.recalibrate:
        if args.threads:
            torch.set_num_threads(args.threads)
        model, info = load_model(args.recalibrate)
        stored = {k: v for k, v in info.get("recipe_params", {}).items() if k in {f.name for f in fields(Recipe)}}
        # weights from before the normalisation fields were trained and calibrated globally
        stored.setdefault("train_normalisation", model.normalisation)
        stored.setdefault("normalisation", model.normalisation)
        recipe = Recipe(**stored)
        recipe = parse_overrides(args.set, base=recipe)  # the stored recipe, with --set changes
        model.normalisation = recipe.normalisation  # calibrated (and then picks) with the recipe's
        previous = info.get("calibration", {})
        _, _, val = training_index(args.holdout, recipe)
        a, b, off = previous.get("a", 1.0), previous.get("b", 0.0), previous.get("offset", 0.0)
        fold_logit_calibration(model, 1.0 / a, -(b + off) / a)  # undo the previous calibration
        model.augment_calibration, model.calibrated_augment = {}, None  # ... and its per-count table
        info["augment"] = recipe.augment
        info["calibration"], info["calibration_by_augment"] = calibrate_counts(model, val, recipe)
        info["recipe_params"] = asdict(recipe)
        save_model(model, output, info)
        log.info("recalibrated %s -> %s: %s", args.recalibrate, output, info["calibration"])
        return 0
    make_model(output, args.holdout, recipe, threads=args.threads)
    if args.holdout == "all" and not args.no_centring:
        # the shipped centring network starts from this classifier: its own recipe, run as a command
        # (make_centring_model.py imports this recipe's data functions, so this file does not import it)
        target = output.with_name("centring.safetensors") if args.output else None
        centring = [sys.executable, str(Path(__file__).with_name("make_centring_model.py")), "--init", str(output)]
        return subprocess.run(centring + (["-o", str(target)] if target else []), check=False).returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
