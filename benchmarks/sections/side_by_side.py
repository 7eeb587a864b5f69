"""How does it compare with other pickers on the same micrographs? ``--only topaz``: Topaz's
pretrained model; ``--only relion_log``: RELION 3.1's LoG picker (runners in benchmarks/peers.py,
picks cached in benchmarks/cache/)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from common import (
    APOFERRITIN_DIAMETER_PX, APOFERRITIN_OUTER_DIAMETER_PX, CACHE, NETWORK_SNR_BINS, apoferritin, boxes, log,
    metrics, pick_candidates, recipe, references, ribosome, set_model, sim_test, size_checked, size_note, topn_tp,
)
from deeppicker_relion.metrics import evaluate
from deeppicker_relion.io.mrc import read_header


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


def section_topaz(results: dict, args: argparse.Namespace) -> None:
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
        print(f"| {size_note(name, factor)} | {ours['f1']:.3f} | {ours['best_f1']:.3f} | {ours['topn_f1']:.3f} | "
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


def section_relion_log(results: dict, args: argparse.Namespace) -> None:
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
        print(f"| {size_note(name, factor)} | {len(idx)} | {ours['precision']:.3f} / {ours['recall']:.3f} / {ours['f1']:.3f} | "
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
