"""Accuracy benchmark of the general model: leave-one-molecule-out, real micrographs, noise guard,
contamination, the size check, self-training / semi-automated training, and Topaz and RELION's LoG picker
side by side. Prints figures (markdown tables); not a timed test.

    python benchmarks/accuracy.py                  # everything (trains missing fold models: hours)
    python benchmarks/accuracy.py --only lomo      # sections: rule, lomo, snr, oracle, shipped, empty, contamination, centres, refine, centring, diameter, sizecheck, finetune, topaz, relion_log
    python benchmarks/accuracy.py --no-train       # use only fold models that exist

Held-out sets (never used to train or calibrate the model that picks them):
- each simulated molecule: 10 test micrographs (training/cache/sim/MOL/test, seeds of their own),
  picked by the fold model trained WITHOUT that molecule (training/cache/lomo/MOL.safetensors);
- the 10 real EMPIAR-10028 ribosome micrographs: picked by the model trained on simulations only
  (training/cache/lomo/ribosome.safetensors); labels are incomplete (precision is understated);
- the 17 real apoferritin micrographs (../shared/data/apoferritin), which no model ever trains on:
  picked by the shipped model and by every fold model;
- 80 empty simulated micrographs (ice, noise, sometimes contamination or carbon; 20 per
  molecule's conditions): picked by the fold model of that molecule and by the shipped model.

Metrics (deeppicker_relion.evaluate): one-to-one matching within 0.2 x diameter, best score first;
precision, recall, F1 and mean centre error / box at the default threshold 0.5; the best F1 over
all thresholds (an oracle threshold); top-N F1 (N = number of reference particles per micrograph).
Results are also written to benchmarks/cache/accuracy.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import make_general_model as recipe  # noqa: E402

from deeppicker_relion.centring import attach_centring, attached_centring, load_centring  # noqa: E402
from deeppicker_relion.evaluate import MATCH_RADIUS, evaluate, match, topn_curve  # noqa: E402
from deeppicker_relion.io.coords import read_coordinates  # noqa: E402
from deeppicker_relion.io.mrc import read_header, read_micrograph  # noqa: E402
from deeppicker_relion.model import DeepPickerNet  # noqa: E402
from deeppicker_relion.model import load_model as _load_model  # noqa: E402
from deeppicker_relion.picking import PickParams, find_candidates, holds_particles, select, select_picks  # noqa: E402
from deeppicker_relion.pipeline import ParticleSize  # noqa: E402
from deeppicker_relion.preprocess import DEFAULT_NORMALISATION, preprocess  # noqa: E402
from deeppicker_relion.scoring import score_map_dense  # noqa: E402

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
THRESHOLD = 0.5
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
    """Every candidate (score >= FLOOR) of each micrograph, and the mean seconds per micrograph."""
    params = params or PickParams(floor=FLOOR)
    out, start = {}, time.perf_counter()
    context = getattr(model, "context", 1.0)
    if context != 1.0:  # a model whose window is context x the diameter (experiments)
        params = PickParams(**{**params.__dict__, "peak_window": params.peak_window / context})
    for _, row in index.iterrows():
        mic = read_micrograph(row["path"])
        pre = preprocess(mic.data, context * float(row["diameter_px"]), model.normalisation)
        out[row["name"]] = find_candidates(score_map_dense(model, pre.image), pre, params, attached_centring(model))
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


TARGET_PRECISION = 0.85  # the issue's precision target


def recall_at_precision(cands: dict[str, pd.DataFrame], refs: dict[str, pd.DataFrame], box: dict[str, float],
                        precision: float = TARGET_PRECISION) -> float:
    """The highest recall one global score threshold reaches with precision >= ``precision`` (0 if
    none does): an oracle threshold, as for the best F1."""
    s, h, n_ref = _ranked_hits(cands, refs, box)
    tp = np.cumsum(h)
    ok = tp >= precision * np.arange(1, len(s) + 1)
    return float(tp[ok].max() / n_ref) if ok.any() and n_ref else 0.0


def default_picks(candidates: pd.DataFrame) -> pd.DataFrame:
    """The picks ``deeppicker pick`` writes at its defaults (threshold 0.5 with the two-level rule)."""
    return select_picks(candidates, PickParams())


def metrics(cands: dict[str, pd.DataFrame], index: pd.DataFrame, threshold: float = THRESHOLD) -> dict:
    refs = references(index)
    box = boxes(index)
    # at our default threshold, what the picker writes (two-level rule); other scores (Topaz logits): plain cut
    picks = {n: default_picks(c) if threshold == THRESHOLD else select(c, threshold) for n, c in cands.items()}
    total = evaluate(picks, refs, box).iloc[-1]
    curve = topn_curve(cands, refs, box, ratios=np.array([1.0])).iloc[0]
    bf, bt = best_f1(cands, refs, box)
    extra = {}
    if threshold == THRESHOLD:  # the same candidates at a plain cut at 0.5 (--low-threshold 0.5)
        plain = evaluate({n: select(c, THRESHOLD) for n, c in cands.items()}, refs, box).iloc[-1]
        extra["plain"] = {k: float(plain[k]) for k in ("precision", "recall", "f1")} | {"n_picks": int(plain["n_picks"])}
    return extra | dict(
        n_micrographs=len(index), n_reference=int(total["n_reference"]), n_picks=int(total["n_picks"]),
        precision=float(total["precision"]), recall=float(total["recall"]), f1=float(total["f1"]),
        centre_error=float(total["centre_error"]), topn_f1=float(curve["f1"]), best_f1=bf, best_threshold=bt,
    )  # fmt: skip


def fixed_n(cands: dict[str, pd.DataFrame], index: pd.DataFrame) -> dict:
    """The N best candidates of every micrograph with ONE N for the set, the median number of
    reference particles per micrograph (what a user who knows the typical count gets with
    ``--threshold 0.0001 --low-threshold 0.0001 --max-picks N``): n, precision, recall, F1."""
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
# sections
# --------------------------------------------------------------------------------------------------


def size_checked(model: DeepPickerNet, index: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """The set as ``deeppicker pick`` picks it at its defaults: the size check (``auto``) run on it as
    one job (its first, middle and last micrograph), and the set's diameters x the factor used. The
    match radius and centre-error unit stay 0.2 x / 1 x the set's own diameter (``eval_diameter_px``)."""
    from deeppicker_relion.sizecheck import DEFAULT_MODE, check_size, factor_to_use

    truth = index if "eval_diameter_px" in index.columns else index.assign(eval_diameter_px=index["diameter_px"])
    mics, size = _size_job(truth, 1.0)
    factor = factor_to_use(check_size(mics, model, size), DEFAULT_MODE, model)
    return truth.assign(diameter_px=truth["diameter_px"] * factor), factor


def _size_note(name: str, factor: float) -> str:
    return name if factor == 1.0 else f"{name} (size check: picked at x {factor:.2f})"


def section_lomo(results: dict, allow_train: bool) -> None:
    print("\n## Leave-one-molecule-out (default threshold 0.5; the size check as a job, default 'auto')\n")
    print(HEADER)
    for mol in recipe.molecules():
        model = fold_model(mol, allow_train)
        if model is None:
            continue
        idx, factor = size_checked(model, sim_test(mol))
        cands, sec = pick_candidates(model, idx)
        m = metrics(cands, idx)
        m["seconds_per_micrograph"] = sec
        m["topn"] = topn_table(cands, idx).round(3).to_dict("list")
        m["size_factor"] = factor
        m["fixed_n"] = fixed_n(cands, idx)
        results.setdefault("lomo", {})[mol] = m
        print(fmt_row(_size_note(mol, factor), m), flush=True)
        _per_snr(results, mol, cands, idx)
    model = fold_model("ribosome", allow_train)
    if model is not None:
        idx, factor = size_checked(model, ribosome())
        cands, sec = pick_candidates(model, idx)
        m = metrics(cands, idx)
        m["topn"] = topn_table(cands, idx).round(3).to_dict("list")
        m["size_factor"] = factor
        m["fixed_n"] = fixed_n(cands, idx)
        results.setdefault("lomo", {})["ribosome (real)"] = m
        print(fmt_row(_size_note("ribosome (real, labels incomplete)", factor), m), flush=True)
    for holdout in (["all"] if SINGLE_MODEL is not None else recipe.molecules() + ["ribosome"]):
        model = fold_model(holdout, False)
        if model is None:
            continue
        for box in (APOFERRITIN_DIAMETER_PX, APOFERRITIN_OUTER_DIAMETER_PX):
            idx, factor = size_checked(model, apoferritin(box))
            cands, _ = pick_candidates(model, idx)
            m = metrics(cands, idx)
            m["size_factor"] = factor
            results.setdefault("apoferritin_by_fold", {})[f"{holdout} box {box:g}"] = m
            print(fmt_row(_size_note(f"apoferritin (real), box {box:g} px, fold model without {holdout}", factor), m),
                  flush=True)
    fixed = [(k, v["fixed_n"]) for k, v in results.get("lomo", {}).items() if "fixed_n" in v]
    if fixed:
        print("\nThe N best candidates of every micrograph, one N per set: the median particles per micrograph "
              "(`--threshold 0.0001 --low-threshold 0.0001 --max-picks N`), precision / recall / F1: "
              + "; ".join(f"{k} (N {v['n']}) {v['precision']:.3f} / {v['recall']:.3f} / {v['f1']:.3f}" for k, v in fixed))
    plain = [(k, v["plain"]) for k, v in {**results.get("lomo", {}), **results.get("apoferritin_by_fold", {})}.items()
             if "plain" in v]  # fmt: skip
    if plain:
        print("\nPlain threshold 0.5 (--low-threshold 0.5), precision / recall / F1: "
              + "; ".join(f"{k} {v['precision']:.3f} / {v['recall']:.3f} / {v['f1']:.3f}" for k, v in plain))


def _per_snr(results: dict, mol: str, cands: dict, idx: pd.DataFrame) -> None:
    bins = [(0.0, 0.05), (0.05, 0.15), (0.15, 1.0), (0.1, 1.0)]
    out = {}
    for lo, hi in bins:
        sub = idx[(idx["snr"] >= lo) & (idx["snr"] < hi)]
        if len(sub):
            m = metrics({n: cands[n] for n in sub["name"]}, sub)
            out[f"{lo}-{hi}"] = {k: m[k] for k in ("n_micrographs", "precision", "recall", "f1", "topn_f1")}
    results.setdefault("lomo_by_snr", {})[mol] = out
    print("|  by SNR: " + "; ".join(f"{k}: n={v['n_micrographs']} P {v['precision']:.2f} R {v['recall']:.2f} "
                                     f"F1 {v['f1']:.2f}" for k, v in out.items()) + " | | | | | | | | | |")  # fmt: skip


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
    from deeppicker_relion.preprocess import INPUT_SIZE, _fourier_resample, box_scale, resampled_shape
    from deeppicker_relion.simulate import _disc_mask

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


def section_snr(results: dict, allow_train: bool) -> None:
    """Recall against the SNR the network sees (:func:`network_snr`), per test micrograph of each
    simulated molecule (re-simulated with its own seed to separate signal and noise), picked as in
    the leave-one-molecule-out table. Top-N recall (the N best candidates, N = particles) shows
    whether the particles are ranked first at all, whatever the threshold."""
    print("\n## Recall by the SNR the network sees (simulated held-out sets)\n")
    rows = []
    for mol, idx, cands, refs, box in simulated_sets(allow_train):
        for i, row in idx.iterrows():
            sim = resimulate(mol, row)
            ref, c = refs[row["name"]], cands[row["name"]]
            picks = default_picks(c)
            hits = match(picks, ref, MATCH_RADIUS * box[row["name"]])[0] >= 0
            rows.append(dict(molecule=mol, name=row["name"], diameter_px=float(row["diameter_px"]), snr=float(row["snr"]),
                             network_snr=network_snr(sim, float(row["diameter_px"])), particles=len(ref),
                             picks=len(picks), tp=int(hits.sum()), topn_tp=topn_tp(c, ref, box[row["name"]])))  # fmt: skip
    if not rows:
        return
    table = pd.DataFrame(rows).sort_values("network_snr", kind="stable")
    print("| micrograph | diameter (px) | SNR (simulated) | SNR (network) | particles | picks | recall | precision | top-N recall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in table.itertuples():
        print(f"| {r.name} | {r.diameter_px:g} | {r.snr:.3f} | {r.network_snr:.3f} | {r.particles} | {r.picks} | "
              f"{r.tp / r.particles:.2f} | {r.tp / max(1, r.picks):.2f} | {r.topn_tp / r.particles:.2f} |")
    print("\nPooled by the SNR the network sees:\n")
    print("| SNR (network) | micrographs | particles | recall | precision | top-N recall |")
    print("|---|---|---|---|---|---|")
    pooled = {}
    for lo, hi in zip(NETWORK_SNR_BINS[:-1], NETWORK_SNR_BINS[1:]):
        sub = table[(table["network_snr"] >= lo) & (table["network_snr"] < hi)]
        if not len(sub):
            continue
        n, tp, picks, top = sub["particles"].sum(), sub["tp"].sum(), sub["picks"].sum(), sub["topn_tp"].sum()
        pooled[f"{lo:g}-{hi:g}"] = dict(micrographs=len(sub), particles=int(n), recall=tp / n,
                                        precision=tp / max(1, picks), topn_recall=top / n)
        print(f"| {lo:g}-{hi:g} | {len(sub)} | {n} | {tp / n:.3f} | {tp / max(1, picks):.3f} | {top / n:.3f} |")
    results["snr"] = dict(micrographs=table.to_dict("records"), pooled=pooled)


PICKERS = ("ours", "idealised", "idealised, network grid")


def section_oracle(results: dict, allow_train: bool) -> None:
    """How far ours is from what a picker could do on the simulated held-out sets: an idealised
    picker (benchmarks/oracle.py) that knows every particle's exact noise-free image, the spectrum of
    the rest of the micrograph and where contamination and carbon lie, at the micrograph's own
    sampling and on the network's grid (resampled and band-passed as preprocessing does), against
    ours (picked as in the leave-one-molecule-out table), on the same re-simulated micrographs. Per
    set and by the SNR the network sees: the highest recall one global threshold reaches at
    precision >= 0.85 (the issue's precision target; an oracle threshold for each picker) and top-N
    recall; d' is the idealised picker's mean score at a particle in noise standard deviations."""
    import oracle

    print("\n## An idealised picker (knows each particle's exact image) vs ours, simulated held-out sets\n")
    print("Each cell: recall at precision >= 0.85 (one threshold over the set) / top-N recall.\n")
    print("| held-out set | particles | ours R / P @ defaults | " + " | ".join(PICKERS) + " | idealised best F1 | particles with d' < 4 |")
    print("|---|---|---|---|---|---|---|---|")
    rows, per_set, refs_all, box_all = [], {}, {}, {}
    found_all: dict[str, dict] = {p: {} for p in PICKERS}

    def figures(found: dict, names: list[str], refs: dict) -> dict:
        """{picker: (recall at precision >= 0.85, top-N recall)} over ``names``."""
        sub_refs = {k: refs[k] for k in names}
        n = sum(len(r) for r in sub_refs.values())
        return {p: (recall_at_precision({k: found[p][k] for k in names}, sub_refs, box_all),
                    sum(topn_tp(found[p][k], sub_refs[k], box_all[k]) for k in names) / max(1, n)) for p in PICKERS}  # fmt: skip

    for mol, idx, cands, refs, box in simulated_sets(allow_train):
        refs_all |= refs
        box_all |= box
        found_all["ours"] |= cands
        dprimes = []
        for _, row in idx.iterrows():
            sim = resimulate(mol, row)
            name, diameter = row["name"], float(row["diameter_px"])
            rest = sim.noise + sim.background  # everything but the particles: what the whitening is for
            found_all["idealised"][name] = oracle.oracle_candidates(sim.signal + rest, sim.signal, rest, sim.centres,
                                                                    diameter, sim.forbidden)  # fmt: skip
            found_all["idealised, network grid"][name] = oracle.network_grid_candidates(sim.signal, rest, sim.centres,
                                                                                        diameter, sim.forbidden)  # fmt: skip
            dprimes.append(found_all["idealised"][name].attrs["dprime"])
            rows.append(dict(molecule=mol, name=name, network_snr=network_snr(sim, diameter), particles=len(refs[name]),
                             dprime=float(np.median(dprimes[-1]))))  # fmt: skip
        ours = metrics(cands, idx)
        names = list(refs)
        d = np.concatenate(dprimes)
        entry = dict(particles=sum(len(r) for r in refs.values()), ours_recall=ours["recall"], ours_precision=ours["precision"],
                     pickers=figures(found_all, names, refs_all),
                     ideal_best_f1=best_f1({k: found_all["idealised"][k] for k in names}, refs, box)[0],
                     share_dprime_below_4=float((d < 4).mean()))  # fmt: skip
        per_set[mol] = entry
        cells = " | ".join(f"{r:.3f} / {t:.3f}" for r, t in entry["pickers"].values())
        print(f"| {mol} | {entry['particles']} | {entry['ours_recall']:.3f} / {entry['ours_precision']:.3f} | {cells} | "
              f"{entry['ideal_best_f1']:.3f} | {entry['share_dprime_below_4']:.2f} |", flush=True)  # fmt: skip
    if not rows:
        return
    table = pd.DataFrame(rows)
    print("\nPooled over the four molecules, by the SNR the network sees (one threshold per bin):\n")
    print("| SNR (network) | micrographs | particles | median d' | " + " | ".join(PICKERS) + " |")
    print("|---|---|---|---|---|---|---|")
    pooled = {}
    bins = list(zip(NETWORK_SNR_BINS[:-1], NETWORK_SNR_BINS[1:])) + [(0.0, np.inf)]
    for lo, hi in bins:
        sub = table[(table["network_snr"] >= lo) & (table["network_snr"] < hi)]
        if not len(sub):
            continue
        key = "all" if (lo, hi) == (0.0, np.inf) else f"{lo:g}-{hi:g}"
        pooled[key] = dict(micrographs=len(sub), particles=int(sub["particles"].sum()),
                           median_dprime=float(np.median(sub["dprime"])),
                           pickers=figures(found_all, list(sub["name"]), refs_all))  # fmt: skip
        cells = " | ".join(f"{r:.3f} / {t:.3f}" for r, t in pooled[key]["pickers"].values())
        print(f"| {key} | {len(sub)} | {pooled[key]['particles']} | {pooled[key]['median_dprime']:.1f} | {cells} |")
    results["oracle"] = dict(sets=per_set, pooled=pooled, micrographs=table.to_dict("records"))


def section_shipped(results: dict) -> None:
    print("\n## Shipped model on never-seen real data and on its own simulated test micrographs\n")
    print(HEADER)
    model, info = load_model(WEIGHTS)
    for box in (APOFERRITIN_DIAMETER_PX, APOFERRITIN_OUTER_DIAMETER_PX):
        idx = apoferritin(box)
        cands, sec = pick_candidates(model, idx)
        m = metrics(cands, idx)
        m["topn"] = topn_table(cands, idx).round(3).to_dict("list")
        m["seconds_per_micrograph"] = sec
        results["shipped_apoferritin" + ("" if box == APOFERRITIN_DIAMETER_PX else f"_box{box:g}")] = m
        print(fmt_row(f"apoferritin (real, never trained on), box {box:g} px", m), flush=True)
    for mol in recipe.molecules():
        idx = sim_test(mol)
        cands, _ = pick_candidates(model, idx)
        m = metrics(cands, idx)
        results.setdefault("shipped_sim_test", {})[mol] = m
        print(fmt_row(f"{mol} test (molecule seen in training)", m), flush=True)


def section_empty(results: dict, allow_train: bool) -> None:
    print("\n## Noise guard: empty micrographs (ice + noise, no particles)\n")
    print("| model | micrographs | picks / micrograph at 0.5 | max picks | candidates >= 0.1 / mic | score percentiles of candidates (50/90/99/max) |")
    print("|---|---|---|---|---|---|")
    shipped = load_model(WEIGHTS)[0]
    all_scores = {"shipped": [], "fold": []}
    counts = {"shipped": [], "fold": []}
    for mol in recipe.molecules():
        idx = sim_test(mol, empty=True)
        for kind, model in (("fold", fold_model(mol, allow_train)), ("shipped", shipped)):
            if model is None:
                continue
            cands, _ = pick_candidates(model, idx, PickParams(floor=1e-4))
            n = [len(default_picks(c)) for c in cands.values()]  # what the picker writes at its defaults
            counts[kind] += n
            all_scores[kind] += [c["score"].to_numpy(float) for c in cands.values()]
            s = np.concatenate([c["score"].to_numpy(float) for c in cands.values()])
            n01 = np.mean([int((c["score"] >= 0.1).sum()) for c in cands.values()])
            print(f"| {kind} ({mol} conditions) | {len(idx)} | {np.mean(n):.2f} | {max(n)} | {n01:.1f} | "
                  f"{np.percentile(s, 50):.3g} / {np.percentile(s, 90):.3g} / {np.percentile(s, 99):.3g} / {s.max():.3g} |", flush=True)  # fmt: skip
    hist_edges = [0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0001]
    for kind in ("fold", "shipped"):
        if not counts[kind]:
            continue
        s = np.concatenate(all_scores[kind])
        hist, _ = np.histogram(s, bins=hist_edges)
        results.setdefault("empty", {})[kind] = dict(
            micrographs=len(counts[kind]), picks_per_micrograph=float(np.mean(counts[kind])),
            max_picks=int(max(counts[kind])), histogram_edges=hist_edges, histogram_counts=hist.tolist(),
        )  # fmt: skip
        print(f"\n{kind} models, all {len(counts[kind])} empty micrographs: {np.mean(counts[kind]):.2f} picks per micrograph at 0.5; "
              "histogram of candidate peak scores (per micrograph): "
              + ", ".join(f"[{a:g},{b:.2g}): {c / len(counts[kind]):.1f}" for a, b, c in zip(hist_edges[:-1], hist_edges[1:], hist)))  # fmt: skip


def contamination_box() -> float:
    """The UCSF micrograph's particle is undocumented; its RELION autopicks on clean ice are
    ~20-30 px blobs. We pick with a 28 px box."""
    return 28.0


def section_contamination(results: dict) -> None:
    print("\n## Contamination / carbon check (real UCSF micrograph with a contamination mask)\n")
    import mrcfile

    model = load_model(WEIGHTS)[0]
    path = CONTAMINATION_DIR / "Ucsf_stack_1142_DW.mrc"
    with mrcfile.open(CONTAMINATION_DIR / "Ucsf_stack_1142_DW_contamination_mask.mrc", permissive=True) as mrc:
        mask = np.asarray(mrc.data, dtype=np.float32)
    out = {}
    for box in (20.0, contamination_box(), 40.0):
        idx = pd.DataFrame([dict(name="ucsf", path=str(path), coords="", diameter_px=box)])
        cands, _ = pick_candidates(model, idx)
        picks = default_picks(cands["ucsf"])
        x = np.clip(np.round(picks["x"].to_numpy(float)).astype(int), 0, mask.shape[1] - 1)
        y = np.clip(np.round(picks["y"].to_numpy(float)).astype(int), 0, mask.shape[0] - 1)
        on = mask[y, x] > 0.5
        frac_area = float((mask > 0.5).mean())
        out[f"box{box:g}"] = dict(picks=len(picks), on_contamination=int(on.sum()), fraction=float(on.mean()) if len(on) else 0.0,
                                  area_fraction=frac_area)  # fmt: skip
        print(f"box {box:g} px: {len(picks)} picks at the defaults, {int(on.sum())} on contamination (mask > 0.5) = "
              f"{(on.mean() if len(on) else 0):.3f} of picks (the mask covers {frac_area:.3f} of the image; "
              "RELION's autopicks: 12 of 45 = 0.27)")
    results["contamination"] = out


# --------------------------------------------------------------------------------------------------
# how well placed are the apoferritin references themselves?
# --------------------------------------------------------------------------------------------------


def _smoothed(path: str) -> np.ndarray:
    data = read_micrograph(path).data.astype(np.float64)
    return ndimage.gaussian_filter((data - data.mean()) / data.std(), 1.0)


def _patch(image: np.ndarray, x: float, y: float, radius: int) -> np.ndarray:
    """(2 radius + 1)^2 bilinear patch whose centre pixel [radius, radius] is at (x, y) (x = column)."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(float)
    return ndimage.map_coordinates(image, [y + yy, x + xx], order=1, mode="nearest")


def _parabola(m: float, c: float, p: float) -> float:
    d = m - 2 * c + p
    return 0.5 * (m - p) / d if d < 0 else 0.0


def _peak(cc: np.ndarray) -> tuple[float, float]:
    """Sub-pixel (row, column) of the maximum of ``cc``."""
    i, j = np.unravel_index(int(np.argmax(cc)), cc.shape)
    di = _parabola(cc[i - 1, j], cc[i, j], cc[i + 1, j]) if 0 < i < cc.shape[0] - 1 else 0.0
    dj = _parabola(cc[i, j - 1], cc[i, j], cc[i, j + 1]) if 0 < j < cc.shape[1] - 1 else 0.0
    return i + di, j + dj


def symmetry_offset(mean_patch: np.ndarray) -> tuple[float, float]:
    """(dx, dy) pixels from the centre of ``mean_patch`` (odd size) to the point it is symmetric
    about under a half turn: half the shift that best overlays it on its own half-turned copy. A mean
    over many particles in random orientations is symmetric about the particles' true centre."""
    a = mean_patch - mean_patch.mean()
    b = a[::-1, ::-1]
    cc = np.fft.fftshift(np.real(np.fft.ifft2(np.fft.fft2(a) * np.conj(np.fft.fft2(b)))))
    # the overlay shift is twice the offset; search offsets up to an eighth of the patch only (a
    # ring-like mean, e.g. a barrel's top views, also overlays at shifts near the patch's period)
    centre = cc.shape[0] // 2
    reach = max(2, cc.shape[0] // 4)
    sub = cc[centre - reach : centre + reach + 1, centre - reach : centre + reach + 1]
    i, j = _peak(sub)
    return (j - reach) / 2, (i - reach) / 2


def radial_template(mean_patch: np.ndarray) -> np.ndarray:
    """The rotational average of ``mean_patch`` about its centre, zero mean inside its disc."""
    radius = mean_patch.shape[0] // 2
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    r = np.hypot(yy, xx)
    ring = np.round(r).astype(int)
    profile = np.bincount(ring.ravel(), mean_patch.ravel()) / np.bincount(ring.ravel())
    template = np.interp(r, np.arange(profile.size), profile)
    inside = r <= radius
    template = np.where(inside, template - template[inside].mean(), 0.0)
    return template


def align_to_template(image: np.ndarray, x: float, y: float, template: np.ndarray, search: float) -> tuple[float, float]:
    """(x, y) moved to the best cross-correlation with ``template`` within ``search`` pixels."""
    from scipy.signal import fftconvolve

    reach = template.shape[0] // 2 + int(np.ceil(search)) + 1
    region = _patch(image, x, y, reach)
    cc = fftconvolve(region, template[::-1, ::-1], mode="valid")
    i, j = _peak(cc)
    centre = cc.shape[0] // 2
    dx, dy = j - centre, i - centre
    if np.hypot(dx, dy) > search:
        return x, y
    return x + dx, y + dy


def mean_offset(picks: dict[str, pd.DataFrame], refs: dict[str, pd.DataFrame], box: dict[str, float]) -> tuple[float, float]:
    """Mean (pick - reference) x and y of the matched picks, in diameters."""
    dx, dy = [], []
    for name, ref in refs.items():
        p = picks.get(name, pd.DataFrame({"x": [], "y": [], "score": []}))
        p = p.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
        matched, _ = match(p, ref, MATCH_RADIUS * box[name])
        ok = matched >= 0
        dx.extend((p["x"].to_numpy(float)[ok] - ref["x"].to_numpy(float)[matched[ok]]) / box[name])
        dy.extend((p["y"].to_numpy(float)[ok] - ref["y"].to_numpy(float)[matched[ok]]) / box[name])
    return (float(np.mean(dx)), float(np.mean(dy))) if dx else (float("nan"), float("nan"))


def section_centres(results: dict) -> None:
    """Are the apoferritin annotations centred? Two checks that need no annotation: (1) the mean
    image around a set of centres is symmetric about the particles' true centre (checked on the
    simulated sets' exact centres); (2) each particle (a near-spherical shell, round in every view)
    aligned by cross-correlation to the rotational average of all of them."""
    print("\n## Centring of the references: apoferritin annotations vs template-aligned centres\n")
    model = load_model(WEIGHTS if SINGLE_MODEL is None else SINGLE_MODEL)[0]
    out = {}
    sets = {mol: sim_test(mol) for mol in recipe.molecules()}
    sets["ribosome"] = ribosome()  # not round: the symmetry check only
    sets["apoferritin"] = apoferritin(APOFERRITIN_OUTER_DIAMETER_PX)
    one_pass = copy.deepcopy(model)
    one_pass.augment = 1
    for name, idx in sets.items():
        refs, box = references(idx), boxes(idx)
        cands, _ = pick_candidates(model, idx)
        offsets = {}
        for label, c in (("shipped", cands), ("one_pass", pick_candidates(one_pass, idx)[0])):
            offsets[label] = mean_offset({n: default_picks(v) for n, v in c.items()}, refs, box)
        out.setdefault(name, {})["mean_offset_box"] = offsets
        print(f"{name}: mean offset (x, y) of matched picks / diameter, at the defaults: ({offsets['shipped'][0]:+.4f}, "
              f"{offsets['shipped'][1]:+.4f}); one pass (--augment 1): ({offsets['one_pass'][0]:+.4f}, {offsets['one_pass'][1]:+.4f})")
        images = {row["name"]: _smoothed(row["path"]) for _, row in idx.iterrows()}
        radius = int(round(0.62 * float(idx["diameter_px"].max())))  # the particle and its rim
        mean_ref = {}
        for label, points in (("references", refs), ("picks", {n: default_picks(c) for n, c in cands.items()})):
            patches = [_patch(images[n], x, y, radius) for n, p in points.items() for x, y in p[["x", "y"]].to_numpy(float)]
            mean = np.mean(patches, axis=0)
            mean_ref.setdefault("mean", mean)
            dx, dy = symmetry_offset(mean)
            out.setdefault(name, {})[f"{label}_symmetry_offset_px"] = [float(dx), float(dy)]
        print(f"{name}: mean image around the references is symmetric about (dx, dy) = "
              f"({out[name]['references_symmetry_offset_px'][0]:+.2f}, {out[name]['references_symmetry_offset_px'][1]:+.2f}) px, "
              f"around our picks (defaults) ({out[name]['picks_symmetry_offset_px'][0]:+.2f}, {out[name]['picks_symmetry_offset_px'][1]:+.2f}) px")
        if name != "apoferritin":
            continue
        template = radial_template(mean_ref["mean"])
        unit = float(next(iter(box.values())))
        d_pick_ref, d_ref_al, d_pick_al = [], [], []
        for n, ref in refs.items():
            picks = default_picks(cands[n]).sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
            matched, dist = match(picks, ref, MATCH_RADIUS * box[n])
            for k in np.flatnonzero(matched >= 0):
                rx, ry = ref.iloc[matched[k]][["x", "y"]].to_numpy(float)
                ax, ay = align_to_template(images[n], rx, ry, template, MATCH_RADIUS * box[n])
                d_pick_ref.append(dist[k])
                d_ref_al.append(np.hypot(ax - rx, ay - ry))
                d_pick_al.append(np.hypot(ax - picks["x"][k], ay - picks["y"][k]))
        m = {k: float(np.mean(v) / unit) for k, v in
             (("picks_vs_references", d_pick_ref), ("references_vs_aligned", d_ref_al), ("picks_vs_aligned", d_pick_al))}  # fmt: skip
        m["n_matched"] = len(d_pick_ref)
        out[name].update(m)
        print(f"apoferritin, {len(d_pick_ref)} matched picks (defaults, box 78 px), mean distance / 57 px: our picks to the "
              f"references {m['picks_vs_references']:.3f}; the references to the template-aligned centres "
              f"{m['references_vs_aligned']:.3f}; our picks to the template-aligned centres {m['picks_vs_aligned']:.3f}")
    results["reference_centring"] = out


# --------------------------------------------------------------------------------------------------
# self-training and semi-automated training on 400 picks
# --------------------------------------------------------------------------------------------------


def _finetune_sets(target: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(micrographs holding the 400 target picks, held-out test micrographs) of a target."""
    if target == "ribosome":
        idx = ribosome()
        train_part = idx[idx["name"].str[:3].astype(int) < 300]  # CryoPPP train/valid split 061-065
        return train_part.reset_index(drop=True), idx[idx["name"].str[:3].astype(int) > 300].reset_index(drop=True)
    train_idx = recipe.simulate_split(target, recipe.TRAIN)
    return train_idx[train_idx["n_particles"] > 0].reset_index(drop=True), sim_test(target)


def semi_automated(init: DeepPickerNet | None, index: pd.DataFrame, n_picks: int = 400, seed: int = 0,
                   epochs: int = 10) -> DeepPickerNet:
    """Fine-tune ``init`` (or train from scratch) on the first ``n_picks`` labelled particles of
    ``index`` (whole micrographs, as a user would pick them), with the library's training code."""
    from deeppicker_relion.training import TrainingSet, TrainParams, make_training_set, train

    rng = np.random.default_rng(seed)
    norm = init.normalisation if init is not None else DEFAULT_NORMALISATION  # as the model will pick
    sets, total = [], 0
    for _, row in index.iterrows():
        if total >= n_picks:
            break
        ref = read_coordinates(row["coords"])[["x", "y"]].to_numpy(float)
        ref = ref[: n_picks - total]
        total += len(ref)
        pre = preprocess(read_micrograph(row["path"]).data, float(row["diameter_px"]), norm)
        params = TrainParams(negative_ratio=3.0, near_miss_fraction=0.3, seed=seed)
        sets.append(make_training_set(pre, ref, rng, params))
    params = TrainParams(max_epochs=epochs, negative_ratio=3.0, near_miss_fraction=0.3, seed=seed,
                         lr=0.01 if init is None else 0.003, patience=3, batch_size=128)  # fmt: skip
    model, _ = train(TrainingSet.concat(sets), params, init=init)
    return model


def section_finetune(results: dict, targets: list[str]) -> None:
    from deeppicker_relion.pipeline import ParticleSize
    from deeppicker_relion.selftrain import self_train
    from deeppicker_relion.training import TrainParams

    print("\n## Self-training and semi-automated training (400 picks of the target)\n")
    print("| target | model | precision | recall | F1 @ 0.5 | top-N F1 | best F1 |")
    print("|---|---|---|---|---|---|---|")
    for target in targets:
        base = fold_model(target, False)
        if base is None:
            continue
        labelled, test = _finetune_sets(target)
        variants = {"general (fold) model": base}
        # self-training on the target's own micrographs (the test micrographs; no labels used):
        # fine-tune on every pick >= 0.5, background kept off every candidate, then pick again
        mics = pd.DataFrame({"name": test["name"], "path": test["path"]})
        if target == "ribosome":
            size = ParticleSize(box_px=recipe.RIBOSOME_DIAMETER_PX)
        else:
            size = ParticleSize(diameter_A=float((test["diameter_px"] * test["pixel_size_A"]).median()))
        st_params = TrainParams(max_epochs=10, negative_ratio=3.0, near_miss_fraction=0.3, lr=0.003, patience=3, batch_size=128)
        st_model, _ = self_train(mics, base, size, 10_000, PickParams(), st_params)
        variants["+ self-training (picks >= 0.5)"] = st_model
        variants["semi-automated: fine-tune general on 400 picks"] = semi_automated(base, labelled)
        variants["semi-automated: from scratch on 400 picks"] = semi_automated(None, labelled, epochs=20)
        for name, model in variants.items():
            cands, _ = pick_candidates(model, test)
            m = metrics(cands, test)
            results.setdefault("finetune", {}).setdefault(target, {})[name] = m
            print(f"| {target} | {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['topn_f1']:.3f} | {m['best_f1']:.3f} |", flush=True)


# --------------------------------------------------------------------------------------------------
# Topaz side by side
# --------------------------------------------------------------------------------------------------


def _peer_candidates(cache: Path, index: pd.DataFrame, keys: list[str], run, label: str) -> dict[str, pd.DataFrame]:
    """A peer picker's candidates of each micrograph of a set, from ``cache`` (CSV) if present,
    else by ``run(paths, group)`` -> (picks by file stem, seconds) on the set grouped by ``keys``,
    then cached (atomically)."""
    empty = pd.DataFrame({"x": [], "y": [], "score": []})
    if cache.is_file():
        table = pd.read_csv(cache, dtype={"micrograph": str})
        groups = {n: g[["x", "y", "score"]].reset_index(drop=True) for n, g in table.groupby("micrograph")}
        return {n: groups.get(n, empty) for n in index["name"]}
    out, seconds = {}, 0.0
    for key, group in index.groupby(keys):
        picks, sec = run([Path(p) for p in group["path"]], key if isinstance(key, tuple) else (key,))
        seconds += sec
        stem_to_name = {Path(p).stem: n for p, n in zip(group["path"], group["name"])}
        out.update({stem_to_name[s]: df for s, df in picks.items()})
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    pd.concat([df.assign(micrograph=n) for n, df in out.items()], ignore_index=True).to_csv(tmp, index=False)
    tmp.replace(cache)
    log.info("%s: %.2f s per micrograph", label, seconds / len(index))
    return out


def topaz_candidates(name: str, index: pd.DataFrame) -> dict[str, pd.DataFrame] | None:
    """Topaz resnet16_u64 picks of a set (cached in benchmarks/cache/topaz/NAME.csv)."""
    import peers

    cache = CACHE / "topaz" / f"{name}.csv"
    if not cache.is_file() and not peers.topaz_available():
        log.warning("Topaz is not installed: bash benchmarks/setup_topaz.sh")
        return None
    work = CACHE / "topaz" / f"work_{name}"
    return _peer_candidates(cache, index, ["diameter_px"],
                            lambda paths, key: peers.run_topaz(paths, float(key[0]), work, threads=2), f"Topaz on {name}")


def topaz_sets() -> dict[str, tuple[pd.DataFrame, str]]:
    """Each held-out set and the fold model that picks it."""
    # Topaz takes 30-130 s per micrograph here (2 shared cores): the first 5 test micrographs of
    # each simulated molecule, all 10 ribosome and the first 6 apoferritin micrographs
    sets = {mol: (sim_test(mol).iloc[:5], mol) for mol in recipe.molecules()}
    sets["ribosome"] = (ribosome(), "ribosome")
    sets["apoferritin"] = (apoferritin().iloc[:6], "shipped")
    # the same micrographs, both pickers given the measured outer diameter
    sets[f"apoferritin_box{APOFERRITIN_OUTER_DIAMETER_PX:g}"] = (apoferritin(APOFERRITIN_OUTER_DIAMETER_PX).iloc[:6], "shipped")
    return sets


def set_model(holdout: str) -> DeepPickerNet | None:
    """The model that picks a side-by-side set: the shipped one (``"shipped"``, or --single-model)
    or the fold model without ``holdout``."""
    if holdout == "shipped" and SINGLE_MODEL is None:
        return load_model(WEIGHTS)[0]
    return fold_model("all" if holdout == "shipped" else holdout, False)


def section_topaz(results: dict) -> None:
    print("\n## Side by side with Topaz (resnet16_u64 pretrained general model), same micrographs\n")
    print("| held-out set | DeepPicker F1 @ 0.5 | DeepPicker best F1 | DeepPicker top-N F1 | Topaz F1 @ logit 0 | Topaz best F1 | Topaz top-N F1 |")
    print("|---|---|---|---|---|---|---|")
    for name, (idx, holdout) in topaz_sets().items():
        tz = topaz_candidates(name, idx)
        model = set_model(holdout)
        if tz is None or model is None:
            continue
        checked, factor = size_checked(model, idx)  # ours as `deeppicker pick` runs by default
        cands, _ = pick_candidates(model, checked)
        ours = metrics(cands, checked) | {"size_factor": factor}
        # Topaz scores are logits: threshold 0 = probability 0.5, as our default
        theirs = metrics(tz, idx, threshold=0.0)
        results.setdefault("topaz", {})[name] = dict(deeppicker=ours, topaz=theirs)
        print(f"| {_size_note(name, factor)} | {ours['f1']:.3f} | {ours['best_f1']:.3f} | {ours['topn_f1']:.3f} | "
              f"{theirs['f1']:.3f} | {theirs['best_f1']:.3f} | {theirs['topn_f1']:.3f} |", flush=True)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# RELION's LoG picker side by side
# --------------------------------------------------------------------------------------------------

LOG_DEFAULT = 0.0  # RELION's default --LoG_adjust_threshold (the GUI's too)
LOG_ALL = -5.0  # low enough that essentially every LoG peak comes back, with its figure of merit


def relion_log_candidates(name: str, index: pd.DataFrame, adjust: float) -> dict[str, pd.DataFrame] | None:
    """RELION 3.1 ``relion_autopick --LoG`` picks of a set at ``--LoG_adjust_threshold adjust``
    (diameters 0.8-1.2 x each micrograph's diameter, its own pixel size; one run per diameter,
    pixel size and micrograph size, which RELION needs the same within a run; cached in
    benchmarks/cache/relion_log/NAME_ADJUST.csv). Score: rlnAutopickFigureOfMerit."""
    import peers

    cache = CACHE / "relion_log" / f"{name}_{adjust:g}.csv"
    if not cache.is_file() and not peers.relion_log_available():
        log.warning("relion_autopick is not installed (Debian: apt-get install relion)")
        return None
    work = CACHE / "relion_log" / f"work_{name}"
    return _peer_candidates(cache, index, ["diameter_px", "pixel_size_A", "shape"],
                            lambda paths, key: peers.run_relion_log(paths, float(key[0]), float(key[1]), work, threshold=adjust),
                            f"RELION LoG on {name} (adjust {adjust:g})")  # fmt: skip


def relion_log_sets() -> dict[str, tuple[pd.DataFrame, str]]:
    """Every held-out set, whole (LoG takes about a second per micrograph), and the model that
    picks it (as :func:`topaz_sets`)."""
    sets = {mol: (sim_test(mol), mol) for mol in recipe.molecules()}
    sets["ribosome"] = (ribosome(), "ribosome")
    for box in (APOFERRITIN_DIAMETER_PX, APOFERRITIN_OUTER_DIAMETER_PX):
        sets[f"apoferritin_box{box:g}"] = (apoferritin(box), "shipped")
    for name, (idx, holdout) in sets.items():
        # LoG's diameters are in A (the micrographs' own pixel size); one run takes one micrograph size
        headers = [read_header(p) for p in idx["path"]]
        sets[name] = (idx.assign(pixel_size_A=[px for _, px in headers], shape=[str(shape) for shape, _ in headers]), holdout)
    return sets


def _pooled_topn(by_name: dict[str, tuple[int, int]], snr: dict[str, float]) -> dict[str, float]:
    """Top-N recall pooled by the SNR the network sees: {bin: recall} from {name: (top-N hits, particles)}."""
    out = {}
    for lo, hi in zip(NETWORK_SNR_BINS[:-1], NETWORK_SNR_BINS[1:]):
        names = [n for n, v in snr.items() if lo <= v < hi and n in by_name]
        if names:
            out[f"{lo:g}-{hi:g}"] = sum(by_name[n][0] for n in names) / max(1, sum(by_name[n][1] for n in names))
    return out


def _topn_hits(cands: dict[str, pd.DataFrame], index: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """{micrograph: (particles among its N best candidates, N = its particles)}."""
    refs, box = references(index), boxes(index)
    return {name: (topn_tp(cands[name], ref, box[name]), len(ref)) for name, ref in refs.items()}


def section_relion_log(results: dict) -> None:
    """RELION's Laplacian-of-Gaussian picker (the picker RELION users start from when they have no
    template) on every held-out set, whole: at RELION's default threshold (``--LoG_adjust_threshold
    0``), and every LoG peak ranked by its figure of merit (best F1 at one global threshold, top-N).
    Ours: the same sets, picked as in the leave-one-molecule-out table (size check, defaults)."""
    print("\n## Side by side with RELION 3.1's LoG picker, every held-out micrograph\n")
    print("| held-out set | mics | DeepPicker P / R / F1 @ defaults | DeepPicker best F1 | DeepPicker top-N F1 | "
          "LoG P / R / F1 @ RELION default | LoG best F1 | LoG top-N F1 |")
    print("|---|---|---|---|---|---|---|---|")
    snr = {r["name"]: r["network_snr"] for r in results.get("snr", {}).get("micrographs", [])}
    ours_hits, log_hits = {}, {}
    for name, (idx, holdout) in relion_log_sets().items():
        default, everything = relion_log_candidates(name, idx, LOG_DEFAULT), relion_log_candidates(name, idx, LOG_ALL)
        model = set_model(holdout)
        if default is None or everything is None or model is None:
            continue
        checked, factor = size_checked(model, idx)
        cands, _ = pick_candidates(model, checked)
        ours = metrics(cands, checked) | {"size_factor": factor}
        theirs = metrics(everything, idx, threshold=-np.inf)  # ranking figures over every LoG peak
        at_default = evaluate(default, references(idx), boxes(idx)).iloc[-1]
        theirs |= {k: float(at_default[k]) for k in ("precision", "recall", "f1", "centre_error")}
        theirs["n_picks"] = int(at_default["n_picks"])
        results.setdefault("relion_log", {})[name] = dict(deeppicker=ours, relion_log=theirs)
        if name in recipe.molecules():
            ours_hits |= _topn_hits(cands, checked)
            log_hits |= _topn_hits(everything, idx)
        print(f"| {_size_note(name, factor)} | {len(idx)} | {ours['precision']:.3f} / {ours['recall']:.3f} / {ours['f1']:.3f} | "
              f"{ours['best_f1']:.3f} | {ours['topn_f1']:.3f} | {theirs['precision']:.3f} / {theirs['recall']:.3f} / "
              f"{theirs['f1']:.3f} | {theirs['best_f1']:.3f} | {theirs['topn_f1']:.3f} |", flush=True)  # fmt: skip
    if not snr:
        print("\n(top-N recall by the SNR the network sees: run with `--only snr relion_log`)")
        return
    ours_by, log_by = _pooled_topn(ours_hits, snr), _pooled_topn(log_hits, snr)
    results["relion_log_topn_by_snr"] = dict(deeppicker=ours_by, relion_log=log_by)
    print("\nTop-N recall (the N best candidates, N = particles) by the SNR the network sees, simulated sets:\n")
    print("| SNR (network) | DeepPicker | RELION LoG |")
    print("|---|---|---|")
    for k in ours_by:
        print(f"| {k} | {ours_by[k]:.3f} | {log_by.get(k, float('nan')):.3f} |")


DIAMETER_FACTORS = (0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5, 2.0)


def section_diameter(results: dict) -> None:
    """How much the diameter the user gives may differ from the particle's: each held-out set
    picked with its diameter x each factor, matched and scored as in the main table. Apoferritin's
    diameter is its outer one (78 px); x 0.73 would be the annotators' 57 px disc."""
    print("\n## Given diameter vs the particle's: F1 at the defaults (best F1)\n")
    print("| held-out set | " + " | ".join(f"x {f:g}" for f in DIAMETER_FACTORS) + " |")
    print("|---|" + "---|" * len(DIAMETER_FACTORS))
    model = load_model(WEIGHTS if SINGLE_MODEL is None else SINGLE_MODEL)[0]
    sets = {"erythrocruorin": sim_test("erythrocruorin_2gtl"), "20S proteasome": sim_test("proteasome20S_3j9i"),
            "ribosome": ribosome(), "apoferritin": apoferritin(APOFERRITIN_OUTER_DIAMETER_PX)}  # fmt: skip
    out = results.setdefault("diameter", {})
    for name, idx in sets.items():
        # matched as in the main table (apoferritin within 0.2 x 57 px), whatever diameter picks
        truth = idx if "eval_diameter_px" in idx.columns else idx.assign(eval_diameter_px=idx["diameter_px"])
        cells = []
        for f in DIAMETER_FACTORS:
            cands, _ = pick_candidates(model, truth.assign(diameter_px=truth["diameter_px"] * f))
            m = metrics(cands, truth)
            out.setdefault(name, {})[f"{f:g}"] = m
            cells.append(f"{m['f1']:.3f} ({m['best_f1']:.3f})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


# The two-level rule's grid: (confident_threshold, min_confident, low_threshold)
RULE_GRID = [(c, k, low) for c in (0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1) for k in (3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20)
             for low in (0.01, 0.02, 0.03, 0.05, 0.1)]


def rule_selection_set() -> pd.DataFrame:
    """Micrographs that choose the two-level rule; none of them holds a benchmarked molecule: the
    recipe's "rule" split (random molecules and random cages over the test sets' wide SNR range,
    and empty micrographs drawn for each map's conditions) and the recipe's validation micrographs."""
    _, _, val = recipe.training_index("all", recipe.Recipe())
    rule = [recipe.simulate_split(m, "rule") for m in [recipe.SYNTHETIC, recipe.CAGES] + recipe.molecules()]
    return pd.concat(rule + [val], ignore_index=True)


def _rule_outcome(mics: list[tuple[pd.DataFrame, np.ndarray, int]], rule: tuple[float, int, float],
                  scaled: bool = True) -> dict:
    """Pooled precision / recall / F1 over micrographs with particles, and on empty micrographs the
    picks per micrograph and how many were switched to the low cut, at threshold 0.5 with ``rule``
    (the count scaled with each micrograph's area, as picking does: :func:`holds_particles`)."""
    conf, k, low = rule
    tp = n = n_ref = flips = empty_picks = n_empty = 0
    for cands, hits, refs in mics:
        switched = holds_particles(cands, conf, k, cands.attrs.get("area_boxes") if scaled else None)
        kept = cands["score"].to_numpy(float) >= (low if switched else THRESHOLD)
        if refs:
            tp, n, n_ref = tp + int(hits[kept].sum()), n + int(kept.sum()), n_ref + refs
        else:
            n_empty, flips, empty_picks = n_empty + 1, flips + int(switched), empty_picks + int(kept.sum())
    p, r = tp / max(1, n), tp / max(1, n_ref)
    return dict(precision=p, recall=r, f1=2 * p * r / max(p + r, 1e-12), empty_switched=flips,
                empty_picks=empty_picks / max(1, n_empty), n_empty=n_empty)


def section_rule(results: dict) -> None:
    """Choose the two-level rule: among the rules that switch NO empty selection micrograph to the low
    cut, the one with the best pooled F1 (ties: first in RULE_GRID). The count of each rule scales
    with the micrograph's area beyond CONFIDENT_AREA boxes, as in picking."""
    print("\n## Two-level rule, chosen on the rule-selection micrographs (no benchmarked molecule)\n")
    idx = rule_selection_set()
    model = load_model(WEIGHTS)[0]
    cands, _ = pick_candidates(model, idx)
    refs, box, mics = references(idx), boxes(idx), []
    for name, ref in refs.items():
        c = cands[name]
        hits = match(c, ref, MATCH_RADIUS * box[name])[0] >= 0 if len(ref) else np.zeros(len(c), bool)
        mics.append((c, hits, len(ref)))
    rows = [dict(confident_threshold=c, min_confident=k, low_threshold=low, **_rule_outcome(mics, (c, k, low)))
            for c, k, low in RULE_GRID]
    table = pd.DataFrame(rows)
    d = PickParams()
    current = _rule_outcome(mics, (d.confident_threshold, d.min_confident, d.low_threshold))
    before = _rule_outcome(mics, (THRESHOLD, 5, 0.05), scaled=False)  # the rule shipped until 2026-11-24
    safe = table[table["empty_switched"] == 0].sort_values("f1", ascending=False, kind="stable")
    n_part = sum(1 for m in mics if m[2])
    print(f"{n_part} micrographs with particles, {len(mics) - n_part} empty; threshold {THRESHOLD}; "
          f"{len(table)} rules, {len(safe)} switch no empty micrograph\n")
    print("| rule (confident threshold, count, low threshold) | precision | recall | F1 | empty switched | picks / empty |")
    print("|---|---|---|---|---|---|")
    fmt_rule = "({:g}, {}, {:g})".format
    named = [("before (0.5, 5, 0.05), count not scaled", before),
             ("defaults " + fmt_rule(d.confident_threshold, d.min_confident, d.low_threshold), current)]
    named += [(fmt_rule(r.confident_threshold, r.min_confident, r.low_threshold), r._asdict()) for r in safe.head(8).itertuples()]
    for label, m in named:
        print(f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['empty_switched']} | {m['empty_picks']:.2f} |")
    best = safe.iloc[0]
    chosen = (float(best.confident_threshold), int(best.min_confident), float(best.low_threshold))
    agree = chosen == (d.confident_threshold, d.min_confident, d.low_threshold)
    print(f"\nchosen: confident_threshold {chosen[0]:g}, min_confident {chosen[1]}, low_threshold {chosen[2]:g} "
          f"({'= the PickParams defaults' if agree else 'DIFFERS from the PickParams defaults'})", flush=True)
    results["rule"] = dict(chosen=chosen, defaults=current, before=before, agree=agree,
                           top=safe.head(8).to_dict("records"))


SIZE_FACTORS = (0.73, 1.0, 1.5, 2.0)  # given diameter / the particle's (0.73: apoferritin's 57 px ring)
SIZE_SELECTION_STRIDE = 6  # every 6th selection micrograph (each is checked 4 x; ~1-4 s a check)


def _size_job(index: pd.DataFrame, factor: float) -> tuple[pd.DataFrame, ParticleSize]:
    """A pick job's micrograph list and size for a set given ``factor`` x its diameter: a diameter in
    Angstrom where the set has pixel sizes (simulated sets mix several), else a box in pixels."""
    if "pixel_size_A" in index.columns and index["pixel_size_A"].notna().all():
        diameter = float((index["diameter_px"] * index["pixel_size_A"]).median())
        return index.assign(pixel_size=index["pixel_size_A"]), ParticleSize(diameter_A=diameter * factor)
    return index, ParticleSize(box_px=float(index["diameter_px"].iloc[0]) * factor)


def section_sizecheck(results: dict) -> None:
    """The size check (deeppicker_relion/sizecheck.py): (1) on selection micrographs (the rule
    split: random molecules and cages, and empty micrographs; one micrograph per check, a harder
    case than a job's three), how often the search ('adopt') and the strong search ('auto', the
    default) move a right diameter, move an empty micrograph, or bring a wrong one back within x
    0.8-1.25; (2) on every held-out set, checked as a job (its first, middle and last micrograph)
    given its diameter x SIZE_FACTORS: the factors found, and F1 at the defaults picking at the
    given size and at each size found."""
    from deeppicker_relion.sizecheck import DEFAULT_MODE, check_size, factor_to_use

    model = load_model(WEIGHTS if SINGLE_MODEL is None else SINGLE_MODEL)[0]
    print("\n## Size check\n")
    rule = pd.concat([recipe.simulate_split(m, "rule") for m in [recipe.SYNTHETIC, recipe.CAGES] + recipe.molecules()],
                     ignore_index=True)
    part = rule[~rule["empty"].astype(bool)].iloc[::SIZE_SELECTION_STRIDE]
    empty = rule[rule["empty"].astype(bool)].iloc[::SIZE_SELECTION_STRIDE]
    print(f"Selection micrographs, each checked alone: {len(part)} with particles, {len(empty)} empty. Size found "
          "vs the particle's: closer (within x 0.8-1.25 of it), closer (still outside), the same, further; "
          f"'adopt' picks at the search's size, '{DEFAULT_MODE}' (the default) at the strong search's\n")
    print("| given diameter x | search | closer, within x 0.8-1.25 | closer, outside | unchanged | further | empty micrographs moved |")
    print("|---|---|---|---|---|---|---|")
    out = results.setdefault("sizecheck", {"selection": {}, "held_out": {}})

    def found_factors(rows: pd.DataFrame, f: float) -> dict[str, float]:
        mics, size = _size_job(rows, f)
        check = check_size(mics, model, size)
        return {"adopt": f * factor_to_use(check, "adopt", model), DEFAULT_MODE: f * factor_to_use(check, DEFAULT_MODE, model)}

    for f in SIZE_FACTORS:
        found = [found_factors(part.iloc[[i]], f) for i in range(len(part))]
        found_empty = [found_factors(empty.iloc[[i]], f) for i in range(len(empty))]
        for mode in ("adopt", DEFAULT_MODE):
            got = [g[mode] for g in found]
            off = [abs(np.log(g)) - abs(np.log(f)) for g in got]
            within = sum(1 for g, d in zip(got, off) if d < -1e-9 and 0.8 <= g <= 1.25)
            closer = sum(1 for d in off if d < -1e-9) - within
            same = sum(1 for g in got if abs(g - f) < 1e-9)
            further = len(got) - within - closer - same
            moved_empty = sum(1 for g in found_empty if g[mode] != f)
            out["selection"][f"{f:g} {mode}"] = dict(found=got, within=within, closer=closer, same=same,
                                                    further=further, moved_empty=moved_empty, n_empty=len(empty))
            print(f"| {f:g} | {mode} | {within} | {closer} | {same} | {further} | {moved_empty} / {len(empty)} |", flush=True)
    sets = {mol: sim_test(mol) for mol in recipe.molecules()}
    sets["ribosome"] = ribosome()
    sets["apoferritin"] = apoferritin(APOFERRITIN_OUTER_DIAMETER_PX)
    sets["apoferritin, Topaz's 6"] = apoferritin(APOFERRITIN_OUTER_DIAMETER_PX).iloc[:6]
    print("\nHeld-out sets, checked as a job: size found (x the particle's diameter) by the search ('adopt') and "
          f"by the strong search ('{DEFAULT_MODE}'); F1 at the defaults at the given size -> at the size found -> at "
          "the strong search's size\n")
    print("| held-out set | " + " | ".join(f"given x {f:g}" for f in SIZE_FACTORS) + " |")
    print("|---|" + "---|" * len(SIZE_FACTORS))
    for name, idx in sets.items():
        truth = idx if "eval_diameter_px" in idx.columns else idx.assign(eval_diameter_px=idx["diameter_px"])
        cells = []
        for f in SIZE_FACTORS:
            mics, size = _size_job(truth, f)
            check = check_size(mics, model, size)
            factors = {"adopt": factor_to_use(check, "adopt", model), DEFAULT_MODE: factor_to_use(check, DEFAULT_MODE, model)}
            f1 = {}
            for g in sorted({1.0, *factors.values()}):
                f1[g] = metrics(pick_candidates(model, truth.assign(diameter_px=truth["diameter_px"] * f * g))[0], truth)["f1"]
            out["held_out"].setdefault(name, {})[f"{f:g}"] = dict(
                found=f * factors["adopt"], found_strong=f * factors[DEFAULT_MODE], f1_given=f1[1.0],
                f1_found=f1[factors["adopt"]], f1_strong=f1[factors[DEFAULT_MODE]])  # fmt: skip
            cells.append(f"x {f * factors['adopt']:.2f} / x {f * factors[DEFAULT_MODE]:.2f}: {f1[1.0]:.3f} -> "
                         f"{f1[factors['adopt']]:.3f} / {f1[factors[DEFAULT_MODE]]:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def selection_and_heldout_sets() -> dict[str, pd.DataFrame]:
    """The selection micrographs (the recipe's "rule" split of random molecules and random cages,
    exact centres, none a benchmarked molecule) and every held-out set (apoferritin at 78 px)."""
    selection = pd.concat([recipe.simulate_split(m, "rule") for m in (recipe.SYNTHETIC, recipe.CAGES)], ignore_index=True)
    sets = {"selection (random molecules and cages)": selection[selection["name"].str.startswith("mic_")].reset_index(drop=True)}
    sets.update({mol: sim_test(mol) for mol in recipe.molecules()})
    sets["ribosome (real)"] = ribosome()
    sets["apoferritin (real), box 78 px"] = apoferritin(APOFERRITIN_OUTER_DIAMETER_PX)
    return sets


REFINE_SIGMAS = (0.0, 0.03, 0.044, 0.06, 0.08)  # PickParams.refine_sigma, fractions of the box


def _candidates_by_sigma(model: DeepPickerNet, index: pd.DataFrame, sigmas=REFINE_SIGMAS) -> dict[float, dict[str, pd.DataFrame]]:
    """Candidates of every micrograph for each ``refine_sigma``, from one scoring per micrograph."""
    out: dict[float, dict[str, pd.DataFrame]] = {s: {} for s in sigmas}
    for _, row in index.iterrows():
        pre = preprocess(read_micrograph(row["path"]).data, float(row["diameter_px"]), model.normalisation)
        smap = score_map_dense(model, pre.image)
        for s in sigmas:
            out[s][row["name"]] = find_candidates(smap, pre, PickParams(floor=FLOOR, refine_sigma=s), attached_centring(model))
    return out


SCORE_BINS = (0.0, 0.1, 0.5, 0.9, 1.0)


def centre_error_by_score(cands: dict[str, pd.DataFrame], index: pd.DataFrame) -> list[tuple[float, float, float, int]]:
    """(low, high, mean centre error / box, matched picks) of the default picks by score bin."""
    refs, box = references(index), boxes(index)
    scores, errors = [], []
    for name, ref in refs.items():
        picks = default_picks(cands.get(name, pd.DataFrame({"x": [], "y": [], "score": []})))
        picks = picks.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
        matched, dist = match(picks, ref, MATCH_RADIUS * box[name])
        ok = matched >= 0
        scores.extend(picks["score"].to_numpy(float)[ok])
        errors.extend(dist[ok] / box[name])
    s, e = np.asarray(scores), np.asarray(errors)
    out = []
    for lo, hi in zip(SCORE_BINS[:-1], SCORE_BINS[1:]):
        inside = (s >= lo) & ((s < hi) if hi < 1.0 else (s <= hi))
        out.append((lo, hi, float(e[inside].mean()) if inside.any() else float("nan"), int(inside.sum())))
    return out


def section_refine(results: dict) -> None:
    """Sub-grid refinement: the parabola through each peak on the score map smoothed by
    ``refine_sigma`` x box (0: the raw grid). Chosen on the selection micrographs of random molecules
    and random cages (the recipe's "rule" split, exact centres, none of them a benchmarked molecule);
    the held-out sets are reported for the choice made there."""
    print("\n## Sub-grid refinement: smoothing of the score map (PickParams.refine_sigma)\n")
    model = load_model(WEIGHTS if SINGLE_MODEL is None else SINGLE_MODEL)[0]
    sets = selection_and_heldout_sets()
    print("| set | " + " | ".join(f"sigma {s:g}: F1 / centre err" for s in REFINE_SIGMAS) + " |")
    print("|---|" + "---|" * len(REFINE_SIGMAS))
    out, notes = results.setdefault("refine", {}), []
    for name, idx in sets.items():
        by_sigma = _candidates_by_sigma(model, idx)
        cells = []
        for s, cands in by_sigma.items():
            m = metrics(cands, idx)
            out.setdefault(name, {})[f"{s:g}"] = {k: m[k] for k in ("precision", "recall", "f1", "centre_error")}
            cells.append(f"{m['f1']:.3f} / {m['centre_error']:.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        bins = centre_error_by_score(by_sigma[PickParams().refine_sigma], idx)
        out[name]["by_score"] = bins
        notes.append(f"{name}: " + ", ".join(f"[{lo:g}, {hi:g}{']' if hi == 1.0 else ')'} {e:.3f} (n={n})"
                                             for lo, hi, e, n in bins))
    print("\nCentre error / box of the matched default picks by score (default refine_sigma):")
    print("\n".join(notes))


def section_centring(results: dict) -> None:
    """The centring network (PickParams.recentre): the same candidates with and without it, on the
    selection micrographs of random molecules and cages (exact centres; none a benchmarked molecule)
    and on every held-out set; with it, the centre error of the default picks by score."""
    print("\n## Centring network: picks at the score map's peaks vs re-centred (PickParams.recentre)\n")
    model = load_model(WEIGHTS if SINGLE_MODEL is None else SINGLE_MODEL)[0]
    net = attached_centring(model)
    if net is None:
        print("no centring network fits this model (normalisation %r): nothing to compare" % model.normalisation)
        return
    sets = selection_and_heldout_sets()
    print("| set | off: P / R / F1 / centre err | on: P / R / F1 / centre err | seconds per micrograph, off / on |")
    print("|---|---|---|---|")
    out, notes = results.setdefault("centring", {}), []
    for name, idx in sets.items():
        cands: dict[bool, dict[str, pd.DataFrame]] = {False: {}, True: {}}
        seconds = {False: 0.0, True: 0.0}
        for _, row in idx.iterrows():
            pre = preprocess(read_micrograph(row["path"]).data, float(row["diameter_px"]), model.normalisation)
            smap = score_map_dense(model, pre.image)
            for on in (False, True):
                start = time.perf_counter()
                cands[on][row["name"]] = find_candidates(smap, pre, PickParams(floor=FLOOR, recentre=on), net)
                seconds[on] += time.perf_counter() - start
        cells = []
        for on in (False, True):
            m = metrics(cands[on], idx)
            out.setdefault(name, {})["on" if on else "off"] = {k: m[k] for k in ("precision", "recall", "f1", "centre_error", "topn_f1")}
            cells.append(f"{m['precision']:.3f} / {m['recall']:.3f} / {m['f1']:.3f} / {m['centre_error']:.4f}")
        n = max(1, len(idx))
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds[False] / n:.2f} / {seconds[True] / n:.2f} |", flush=True)
        bins = centre_error_by_score(cands[True], idx)
        out[name]["by_score"] = bins
        notes.append(f"{name}: " + ", ".join(f"[{lo:g}, {hi:g}{']' if hi == 1.0 else ')'} {e:.3f} (n={k})"
                                             for lo, hi, e, k in bins))
    print("\n(seconds: finding candidates from the score map, i.e. peaks, refinement, centring, filters)")
    print("\nCentre error / box of the matched default picks by score, re-centred:")
    print("\n".join(notes))


SECTIONS = ("rule", "lomo", "snr", "oracle", "shipped", "empty", "contamination", "centres", "refine", "centring", "diameter",
            "sizecheck", "finetune", "topaz", "relion_log")


def main(argv: list[str] | None = None) -> int:
    global LOMO_DIR, WEIGHTS, SINGLE_MODEL, AUGMENT, CENTRING
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--no-train", action="store_true", help="do not train missing fold models")
    parser.add_argument("--finetune-targets", nargs="+", default=["ribosome", "proteasome20S_3j9i"])
    parser.add_argument("--topaz-only", action="store_true", help="only run Topaz on every set (fills its cache)")
    parser.add_argument("--lomo-dir", type=Path, default=LOMO_DIR, help="fold models (default training/cache/lomo)")
    parser.add_argument("--weights", type=Path, default=None, help="general model (default: the shipped one)")
    parser.add_argument("--single-model", type=Path, default=None,
                        help="pick every held-out set with this one model (trained on none of them, e.g. "
                             "make_general_model.py --holdout all): a quick proxy of the LOMO table")
    parser.add_argument("--augment", type=int, choices=[1, 2, 4, 8], default=None,
                        help="test-time copies for every model (default: each model's own; the shipped: 2)")
    parser.add_argument("--centring", type=Path, default=None,
                        help="centring network for every model ('none': none; default: the shipped one where it fits)")
    parser.add_argument("--results", type=Path, default=CACHE / "accuracy.json")
    parser.add_argument("-j", "--threads", type=int, default=2)
    args = parser.parse_args(argv)
    LOMO_DIR, WEIGHTS, SINGLE_MODEL, AUGMENT = args.lomo_dir, args.weights, args.single_model, args.augment
    CENTRING = args.centring
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    if args.topaz_only:
        for name, (idx, _) in topaz_sets().items():
            topaz_candidates(name, idx)
        return 0
    results: dict = {}
    out = args.results
    if out.is_file():
        results = json.loads(out.read_text())
    allow_train = not args.no_train
    for section in args.only:
        if section == "rule":
            section_rule(results)
        elif section == "lomo":
            section_lomo(results, allow_train)
        elif section == "snr":
            section_snr(results, allow_train)
        elif section == "oracle":
            section_oracle(results, allow_train)
        elif section == "shipped":
            section_shipped(results)
        elif section == "empty":
            section_empty(results, allow_train)
        elif section == "contamination":
            section_contamination(results)
        elif section == "centres":
            section_centres(results)
        elif section == "refine":
            section_refine(results)
        elif section == "centring":
            section_centring(results)
        elif section == "diameter":
            section_diameter(results)
        elif section == "sizecheck":
            section_sizecheck(results)
        elif section == "finetune":
            section_finetune(results, args.finetune_targets)
        elif section == "topaz":
            section_topaz(results)
        elif section == "relion_log":
            section_relion_log(results)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
