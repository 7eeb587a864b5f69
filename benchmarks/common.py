"""What every accuracy section shares (benchmarks/accuracy.py and benchmarks/sections/): the
held-out sets, picking a set, the metrics, the models that pick each set, and the options the driver
sets (WEIGHTS, SINGLE_MODEL, LOMO_DIR, AUGMENT, CENTRING; read them as ``common.WEIGHTS`` etc., as the
driver changes them after import).

The held-out sets and the metrics are described in the driver's docstring (benchmarks/accuracy.py).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import make_general_model as recipe  # noqa: E402

from deeppicker_relion.picking.centring import attach_centring, attached_centring, load_centring  # noqa: E402
from deeppicker_relion.metrics import MATCH_RADIUS, evaluate, match, topn_curve  # noqa: E402
from deeppicker_relion.io.coords import read_coordinates  # noqa: E402
from deeppicker_relion.io.mrc import read_micrograph  # noqa: E402
from deeppicker_relion.model import DeepPickerNet  # noqa: E402
from deeppicker_relion.model import load_model as _load_model  # noqa: E402
from deeppicker_relion.picking.fom import IDENTITY, calibrate_candidates  # noqa: E402
from deeppicker_relion.picking.candidates import PickParams, find_candidates, select, select_picks  # noqa: E402
from deeppicker_relion.picking.pipeline import ParticleSize  # noqa: E402
from deeppicker_relion.picking.preprocess import preprocess  # noqa: E402
from deeppicker_relion.picking.scoring import score_map_dense  # noqa: E402

log = logging.getLogger("accuracy")
CACHE = REPO / "benchmarks" / "cache"
SHARED = REPO.parent / "shared" / "data"
APOFERRITIN_DIR = SHARED / "apoferritin"
APOFERRITIN_DIAMETER_PX = 57.0  # README: ~57 px disc drawn by the annotators (the ring's centre line)
# The particles' outer diameter: the radial profile around the reference centres is light inside
# (r < 15 px), darkest at r ~ 29-30 px (the protein shell) and light again (Fresnel fringe) at
# r ~ 44 px, so the shell's outer edge is at r ~ 38-40 px: diameter ~78 px. Picks are matched within
# 0.2 x 57 px of the references whatever box the picker is given.
APOFERRITIN_OUTER_DIAMETER_PX = 78.0
CONTAMINATION_DIR = SHARED / "ucsf_contamination"
THRESHOLD = PickParams().threshold  # the default threshold (of the figure of merit)
# Candidates kept for the ranking figures (top-N, best F1): every local maximum of the score map, as
# Topaz's candidates (threshold -1e6) and RELION LoG's (adjust -5) are; the picks at the defaults
# (>= 0.01 at most) are the same whatever the floor. Until 2026-11-25 this was 0.01, which cut the
# ranking figures of low-SNR micrographs, whose particles score below it.
FLOOR = 1e-5


# --------------------------------------------------------------------------------------------------
# data sets: index tables with name, path, coords, diameter_px
# --------------------------------------------------------------------------------------------------


def sim_test(molecule: str, empty: bool = False) -> pd.DataFrame:
    idx = recipe.simulate_split(molecule, "test")
    return idx[idx["name"].str.startswith("empty_" if empty else "mic_")].reset_index(drop=True)


def ribosome() -> pd.DataFrame:
    return recipe.ribosome_index()


def apoferritin(box_px: float = APOFERRITIN_DIAMETER_PX) -> pd.DataFrame:
    """The real apoferritin set, picked with a ``box_px`` box (diameter given to the picker),
    matched within 0.2 x 57 px (``eval_diameter_px``) in every case."""
    rows = []
    for mrc in sorted((APOFERRITIN_DIR / "micrographs").glob("*.mrc")):
        rows.append(dict(name=mrc.stem, path=str(mrc), coords=str(APOFERRITIN_DIR / "coords" / f"{mrc.stem}.star"),
                         diameter_px=box_px, eval_diameter_px=APOFERRITIN_DIAMETER_PX))  # fmt: skip
    return pd.DataFrame(rows)


CENTRING: Path | None = None  # --centring: centring network for every model (None: the shipped one where it fits)
AUGMENT: int | None = None  # --augment: test-time copies for every model (None: each model's own)


def load_model(path):
    """(model, metadata); the model carries its window/diameter ratio (``context``) from the metadata,
    and scores with ``--augment`` copies when given (with the weights' calibration for that count)."""
    model, info = _load_model(path)
    if CENTRING is not None:  # --centring: another centring network than the shipped one (experiments)
        attach_centring(model, load_centring(CENTRING)[0] if CENTRING.name != "none" else None)
    model.context = float(info.get("context", 1.0))
    if AUGMENT is not None:
        model.augment = AUGMENT
    return model, info


def references(index: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {row["name"]: read_coordinates(row["coords"]) for _, row in index.iterrows()}


# --------------------------------------------------------------------------------------------------
# picking and scoring
# --------------------------------------------------------------------------------------------------


def pick_candidates(model: DeepPickerNet, index: pd.DataFrame, params: PickParams | None = None) -> tuple[dict[str, pd.DataFrame], float]:
    """Every candidate (raw network score >= FLOOR) of each micrograph as picking finds it, with
    ``score`` = its figure of merit (deeppicker_relion/picking/fom.py; the network's score in ``raw_score``),
    and the mean seconds per micrograph. ``params.floor`` is always FLOOR: the figure of merit
    describes each micrograph by all its candidates down to it, as picking does."""
    params = PickParams(**{**(params or PickParams()).__dict__, "floor": FLOOR})
    out, start = {}, time.perf_counter()
    context = getattr(model, "context", 1.0)
    if context != 1.0:  # a model whose window is context x the diameter (experiments)
        params = PickParams(**{**params.__dict__, "peak_window": params.peak_window / context})
    for _, row in index.iterrows():
        mic = read_micrograph(row["path"])
        pre = preprocess(mic.data, context * float(row["diameter_px"]), model.normalisation)
        found = find_candidates(score_map_dense(model, pre.image), pre, params, attached_centring(model))
        out[row["name"]] = calibrate_candidates(found, getattr(model, "fom", IDENTITY))
    return out, (time.perf_counter() - start) / max(1, len(index))


def boxes(index: pd.DataFrame) -> dict[str, float]:
    """Diameter that sets the match radius (0.2 x) and the centre-error unit of each micrograph."""
    col = "eval_diameter_px" if "eval_diameter_px" in index.columns else "diameter_px"
    return {row["name"]: float(row[col]) for _, row in index.iterrows()}


def _ranked_hits(cands: dict[str, pd.DataFrame], refs: dict[str, pd.DataFrame], box: dict[str, float]) -> tuple[np.ndarray, np.ndarray, int]:
    """Every candidate of every micrograph pooled, best score first: (scores, whether each matches a
    particle when all candidates down to its score are kept, number of particles)."""
    scores, hits, n_ref = [], [], 0
    for name, ref in refs.items():
        c = cands.get(name, pd.DataFrame({"x": [], "y": [], "score": []}))
        matched, _ = match(c, ref, MATCH_RADIUS * box[name])
        order = np.argsort(-c["score"].to_numpy(float), kind="stable")
        scores.append(c["score"].to_numpy(float)[order])
        hits.append(matched >= 0)
        n_ref += len(ref)
    s, h = np.concatenate(scores), np.concatenate(hits)
    order = np.argsort(-s, kind="stable")
    return s[order], h[order], n_ref


def best_f1(cands: dict[str, pd.DataFrame], refs: dict[str, pd.DataFrame], box: dict[str, float]) -> tuple[float, float]:
    """(best F1 over one global score threshold, that threshold)."""
    s, h, n_ref = _ranked_hits(cands, refs, box)
    if not len(s):
        return 0.0, float("nan")
    tp = np.cumsum(h)
    f1 = 2 * tp / (np.arange(1, len(s) + 1) + n_ref)
    k = int(np.argmax(f1))
    return float(f1[k]), float(s[k])


TARGET_PRECISION = 0.85  # the precision target


def recall_at_precision(cands: dict[str, pd.DataFrame], refs: dict[str, pd.DataFrame], box: dict[str, float],
                        precision: float = TARGET_PRECISION) -> float:
    """The highest recall one global score threshold reaches with precision >= ``precision`` (0 if
    none does): an oracle threshold, as for the best F1."""
    s, h, n_ref = _ranked_hits(cands, refs, box)
    tp = np.cumsum(h)
    ok = tp >= precision * np.arange(1, len(s) + 1)
    return float(tp[ok].max() / n_ref) if ok.any() and n_ref else 0.0


def default_picks(candidates: pd.DataFrame) -> pd.DataFrame:
    """The picks ``deeppicker pick`` writes at its defaults: figure of merit >= the default threshold."""
    return select_picks(candidates, PickParams())


def metrics(cands: dict[str, pd.DataFrame], index: pd.DataFrame, threshold: float = THRESHOLD) -> dict:
    refs = references(index)
    box = boxes(index)
    # at our default threshold, what the picker writes; other scores (Topaz logits): a cut at ``threshold``
    picks = {n: default_picks(c) if threshold == THRESHOLD else select(c, threshold) for n, c in cands.items()}
    total = evaluate(picks, refs, box).iloc[-1]
    curve = topn_curve(cands, refs, box, ratios=np.array([1.0])).iloc[0]
    bf, bt = best_f1(cands, refs, box)
    return dict(
        n_micrographs=len(index), n_reference=int(total["n_reference"]), n_picks=int(total["n_picks"]),
        precision=float(total["precision"]), recall=float(total["recall"]), f1=float(total["f1"]),
        centre_error=float(total["centre_error"]), topn_f1=float(curve["f1"]), best_f1=bf, best_threshold=bt,
    )  # fmt: skip


def fixed_n(cands: dict[str, pd.DataFrame], index: pd.DataFrame) -> dict:
    """The N best candidates of every micrograph with ONE N for the set, the median number of
    reference particles per micrograph (what a user who knows the typical count gets with
    ``--threshold 0 --max-picks N``, down to the saved candidates): n, precision, recall, F1."""
    refs = references(index)
    n = int(round(float(np.median([len(r) for r in refs.values()]))))
    total = evaluate({k: c.sort_values("score", ascending=False, kind="stable").head(n) for k, c in cands.items()},
                     refs, boxes(index)).iloc[-1]  # fmt: skip
    return dict(n=n, precision=float(total["precision"]), recall=float(total["recall"]), f1=float(total["f1"]))


def topn_table(cands: dict[str, pd.DataFrame], index: pd.DataFrame) -> pd.DataFrame:
    return topn_curve(cands, references(index), boxes(index), ratios=np.array([0.5, 0.75, 1.0, 1.25, 1.5, 2.0]))


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------


LOMO_DIR = recipe.CACHE / "lomo"
WEIGHTS: Path | None = None  # the shipped model unless --weights


def fold_path(holdout: str) -> Path:
    return LOMO_DIR / f"{holdout}.safetensors"


SINGLE_MODEL: Path | None = None  # --single-model: one model held out from every set picks them all


def fold_model(holdout: str, allow_train: bool) -> DeepPickerNet | None:
    if SINGLE_MODEL is not None:
        return load_model(SINGLE_MODEL)[0]
    path = fold_path(holdout)
    if not path.is_file():
        if not allow_train:
            log.warning("no fold model %s (run: python training/make_general_model.py --holdout %s)", path, holdout)
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        recipe.make_model(path, holdout)
    return load_model(path)[0]


def fmt_row(name: str, m: dict) -> str:
    return (f"| {name} | {m['n_micrographs']} | {m['n_reference']} | {m['n_picks']} | {m['precision']:.3f} | "
            f"{m['recall']:.3f} | {m['f1']:.3f} | {m['centre_error']:.3f} | {m['topn_f1']:.3f} | "
            f"{m['best_f1']:.3f} @ {m['best_threshold']:.2f} |")  # fmt: skip


HEADER = ("| held-out set | mics | particles | picks | precision | recall | F1 | centre err / box | top-N F1 | best F1 @ thr |\n"
          "|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip


# --------------------------------------------------------------------------------------------------
# shared by several sections
# --------------------------------------------------------------------------------------------------


def size_checked(model: DeepPickerNet, index: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """The set as ``deeppicker pick`` picks it at its defaults: the size check (``auto``) run on it as
    one job (its first, middle and last micrograph), and the set's diameters x the factor used. The
    match radius and centre-error unit stay 0.2 x / 1 x the set's own diameter (``eval_diameter_px``)."""
    from deeppicker_relion.picking.sizecheck import DEFAULT_MODE, check_size, factor_to_use

    truth = index if "eval_diameter_px" in index.columns else index.assign(eval_diameter_px=index["diameter_px"])
    mics, size = size_job(truth, 1.0)
    factor = factor_to_use(check_size(mics, model, size), DEFAULT_MODE, model)
    return truth.assign(diameter_px=truth["diameter_px"] * factor), factor


def size_note(name: str, factor: float) -> str:
    return name if factor == 1.0 else f"{name} (size check: picked at x {factor:.2f})"


def size_job(index: pd.DataFrame, factor: float) -> tuple[pd.DataFrame, ParticleSize]:
    """A pick job's micrograph list and size for a set given ``factor`` x its diameter: a diameter in
    Angstrom where the set has pixel sizes (simulated sets mix several), else a box in pixels."""
    if "pixel_size_A" in index.columns and index["pixel_size_A"].notna().all():
        diameter = float((index["diameter_px"] * index["pixel_size_A"]).median())
        return index.assign(pixel_size=index["pixel_size_A"]), ParticleSize(diameter_A=diameter * factor)
    return index, ParticleSize(box_px=float(index["diameter_px"].iloc[0]) * factor)


NETWORK_SNR_BINS = (0.0, 0.15, 0.3, 0.6, np.inf)


def topn_tp(candidates: pd.DataFrame, ref: pd.DataFrame, box: float) -> int:
    """How many of the N best candidates match a particle, N = the number of particles."""
    top = candidates.sort_values("score", ascending=False, kind="stable").head(len(ref))
    return int((match(top, ref, MATCH_RADIUS * box)[0] >= 0).sum())


def network_snr(sim, diameter_px: float) -> float:
    """SNR the network sees: the simulation's noise-free signal and its stochastic noise, each
    resampled and band-passed as preprocessing does (so the box spans 64 px), then the variance of
    the signal inside the particles' discs over the variance of the noise. The simulator's SNR is
    the same ratio at the micrograph's own pixel size, before any filtering."""
    from deeppicker_relion.picking.preprocess import INPUT_SIZE, _fourier_resample, box_scale, resampled_shape
    from deeppicker_relion.simulation.simulate import _disc_mask

    shape = resampled_shape(sim.image.shape, box_scale(diameter_px))
    signal = _fourier_resample(sim.signal - sim.signal.mean(), shape, INPUT_SIZE)
    noise = _fourier_resample(sim.noise - sim.noise.mean(), shape, INPUT_SIZE)
    scale = np.array([shape[1] / sim.image.shape[1], shape[0] / sim.image.shape[0]])
    centres = sim.centres[["x", "y"]].to_numpy(float) * scale
    inside = _disc_mask(shape, centres, np.full(len(centres), INPUT_SIZE / 2))
    return float(signal[inside].var() / noise.var())


def resimulate(molecule: str, row: pd.Series):
    """The simulation (signal, noise and background apart) of a cached test micrograph, re-run with
    its own seed; checked against the cached micrograph's conditions."""
    number = int(row["name"].rsplit("_", 1)[1])
    cond, sim = recipe.simulate_parts(molecule, "test", "mic", number, False)
    if abs(cond.snr - float(row["snr"])) > 1e-9 or len(sim.centres) != int(row["n_particles"]):
        raise RuntimeError(f"{row['name']}: re-simulation differs from the cached micrograph")
    return sim


def simulated_sets(allow_train: bool):
    """Each simulated molecule's test micrographs picked by the model held out from it, as in the
    leave-one-molecule-out table: (molecule, index, candidates, references, boxes) per molecule
    whose model exists."""
    for mol in recipe.molecules():
        model = fold_model(mol, allow_train)
        if model is not None:
            idx = sim_test(mol)
            yield mol, idx, pick_candidates(model, idx)[0], references(idx), boxes(idx)


def set_model(holdout: str) -> DeepPickerNet | None:
    """The model that picks a side-by-side set: the shipped one (``"shipped"``, or --single-model)
    or the fold model without ``holdout``."""
    if holdout == "shipped" and SINGLE_MODEL is None:
        return load_model(WEIGHTS)[0]
    return fold_model("all" if holdout == "shipped" else holdout, False)


def selection_and_heldout_sets() -> dict[str, pd.DataFrame]:
    """The selection micrographs (the recipe's "rule" split of random molecules and random cages,
    exact centres, none a benchmarked molecule) and every held-out set (apoferritin at 78 px)."""
    selection = pd.concat([recipe.simulate_split(m, "rule") for m in (recipe.SYNTHETIC, recipe.CAGES)], ignore_index=True)
    sets = {"selection (random molecules and cages)": selection[selection["name"].str.startswith("mic_")].reset_index(drop=True)}
    sets.update({mol: sim_test(mol) for mol in recipe.molecules()})
    sets["ribosome (real)"] = ribosome()
    sets["apoferritin (real), box 78 px"] = apoferritin(APOFERRITIN_OUTER_DIAMETER_PX)
    return sets
