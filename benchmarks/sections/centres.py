"""How well centred are the picks, and the references? ``--only centres``: the apoferritin
annotations against template-aligned centres; ``--only refine``: sub-grid refinement of the score
map's peaks; ``--only centring``: the centring network on and off."""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import pandas as pd
from scipy import ndimage

import common
from common import (
    APOFERRITIN_OUTER_DIAMETER_PX, FLOOR, apoferritin, boxes, default_picks, load_model, metrics, pick_candidates,
    recipe, references, ribosome, selection_and_heldout_sets, sim_test,
)
from deeppicker_relion.picking.centring import attached_centring
from deeppicker_relion.metrics import MATCH_RADIUS, match
from deeppicker_relion.io.mrc import read_micrograph
from deeppicker_relion.model import DeepPickerNet
from deeppicker_relion.picking.candidates import PickParams, find_candidates
from deeppicker_relion.picking.preprocess import preprocess
from deeppicker_relion.picking.scoring import score_map_dense


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


def section_centres(results: dict, args: argparse.Namespace) -> None:
    """Are the apoferritin annotations centred? Two checks that need no annotation: (1) the mean
    image around a set of centres is symmetric about the particles' true centre (checked on the
    simulated sets' exact centres); (2) each particle (a near-spherical shell, round in every view)
    aligned by cross-correlation to the rotational average of all of them."""
    print("\n## Centring of the references: apoferritin annotations vs template-aligned centres\n")
    model = load_model(common.WEIGHTS if common.SINGLE_MODEL is None else common.SINGLE_MODEL)[0]
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


def section_refine(results: dict, args: argparse.Namespace) -> None:
    """Sub-grid refinement: the parabola through each peak on the score map smoothed by
    ``refine_sigma`` x box (0: the raw grid). Chosen on the selection micrographs of random molecules
    and random cages (the recipe's "rule" split, exact centres, none of them a benchmarked molecule);
    the held-out sets are reported for the choice made there."""
    print("\n## Sub-grid refinement: smoothing of the score map (PickParams.refine_sigma)\n")
    model = load_model(common.WEIGHTS if common.SINGLE_MODEL is None else common.SINGLE_MODEL)[0]
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


def section_centring(results: dict, args: argparse.Namespace) -> None:
    """The centring network (PickParams.recentre): the same candidates with and without it, on the
    selection micrographs of random molecules and cages (exact centres; none a benchmarked molecule)
    and on every held-out set; with it, the centre error of the default picks by score."""
    print("\n## Centring network: picks at the score map's peaks vs re-centred (PickParams.recentre)\n")
    model = load_model(common.WEIGHTS if common.SINGLE_MODEL is None else common.SINGLE_MODEL)[0]
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
