"""Does the figure of merit mean what it says? ``--only calibration``: on every held-out set, how often
a pick with figure of merit p is a particle (reliability diagram, expected calibration error), the
threshold that gives the highest recall at precision >= 0.8 while empty micrographs keep fewer than
0.5 picks each (the default's operating point), and the micrograph flags.

The figure of merit (deeppicker_relion/picking/fom.py) is fitted on the recipe's selection micrographs
(training/fit_fom.py); every set here is held out from it and from the network.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd

import common
from common import (
    APOFERRITIN_DIAMETER_PX, CACHE, apoferritin, boxes, fold_model, match, pick_candidates, recipe, references, ribosome,
    sim_test, size_checked,
)
from deeppicker_relion.metrics import MATCH_RADIUS
from deeppicker_relion.picking.fom import FLAG_OK, expected_calibration_error, micrograph_flag, reliability

OPERATING_PRECISION = 0.8  # 2D classification wants recall first (DeepPicker 2016), at this precision
MAX_EMPTY_PICKS = 0.5  # picks per empty micrograph
ECE_FROM = 0.1  # the expected calibration error is measured over picks with a figure of merit >= this
THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)
POOLED_COMPLETE = "pooled, complete labels (all but the ribosomes)"


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a share k / n (nan, nan when n = 0)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _labelled(cands: dict[str, pd.DataFrame], index: pd.DataFrame) -> list[tuple[str, pd.DataFrame, np.ndarray]]:
    """(name, candidates by figure of merit, whether each matches a reference particle)."""
    refs, box = references(index), boxes(index)
    out = []
    for name, c in cands.items():
        c = c.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
        hits = match(c, refs[name], MATCH_RADIUS * box[name])[0] >= 0 if len(refs[name]) else np.zeros(len(c), bool)
        out.append((name, c, hits))
    return out


def _held_out_sets(args: argparse.Namespace):
    """(set name, its model, its index as picked at the defaults: the size check run as a job)."""
    for mol in recipe.molecules():
        model = fold_model(mol, args.allow_train)
        if model is not None:
            yield mol, model, size_checked(model, sim_test(mol))[0]
    model = fold_model("ribosome", args.allow_train)
    if model is not None:
        yield "ribosome (real, labels incomplete)", model, size_checked(model, ribosome())[0]
    model = fold_model("all", False) if common.SINGLE_MODEL is not None else common.load_model(common.WEIGHTS)[0]
    yield "apoferritin (real)", model, size_checked(model, apoferritin(APOFERRITIN_DIAMETER_PX))[0]


def _at(items, t: float) -> tuple[int, int, int]:
    """(picks, true picks, reference particles) at threshold ``t``."""
    n = tp = 0
    for _, c, h, n_ref in items:
        keep = c["score"].to_numpy(float) >= t
        n, tp = n + int(keep.sum()), tp + int(h[keep].sum())
    return n, tp, sum(it[3] for it in items)


def _plot(tables: dict[str, pd.DataFrame], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hx) = plt.subplots(2, 1, figsize=(6, 7.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfectly calibrated")
    for name, t in tables.items():
        t = t[t["n"] >= 20]
        style = (dict(lw=2.5, color="k") if name == "pooled" else dict(lw=2, color="k", ls=":") if name == POOLED_COMPLETE
                 else dict(lw=1, alpha=0.8))
        ax.plot(t["mean_fom"], t["particles"], marker="o", ms=3, label=name, **style)
    ax.set_ylabel("share of picks that are particles")
    ax.set_title("Figure of merit on held-out micrographs (reliability)")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    pooled = tables["pooled"]
    hx.bar((pooled["lo"] + pooled["hi"]) / 2, pooled["n"], width=0.09, color="0.5")
    hx.set_yscale("log")
    hx.set_xlabel("figure of merit (rlnAutopickFigureOfMerit)")
    hx.set_ylabel("candidates")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section_calibration(results: dict, args: argparse.Namespace) -> None:
    print("\n## Calibration of the figure of merit (held-out micrographs)\n")
    sets: dict[str, list] = {}
    per_mic: list[dict] = []
    for name, model, index in _held_out_sets(args):
        cands, _ = pick_candidates(model, index)
        refs = references(index)
        sets[name] = [(n, c, h, len(refs[n])) for n, c, h in _labelled(cands, index)]
        for n, c, h, n_ref in sets[name]:
            attrs = c.attrs
            per_mic.append(dict(set=name, n_ref=n_ref, expected=attrs["expected_particles"],
                                picked_true=int(h[c["score"].to_numpy(float) >= common.THRESHOLD].sum()),
                                flag=micrograph_flag(attrs["confident_particles"], attrs.get("removed_fraction", 0.0),
                                                     attrs.get("dark_fraction", 0.0))))
    empty = []
    for mol in recipe.molecules():
        model = fold_model(mol, args.allow_train)
        if model is None:
            continue
        idx = sim_test(mol, empty=True)
        cands, _ = pick_candidates(model, idx)
        empty += [(n, c, np.zeros(len(c), bool), 0) for n, c in cands.items()]
    for n, c, _, _ in empty:
        per_mic.append(dict(set="empty", n_ref=0, expected=c.attrs["expected_particles"], picked_true=0,
                            flag=micrograph_flag(c.attrs["confident_particles"], c.attrs.get("removed_fraction", 0.0),
                                                 c.attrs.get("dark_fraction", 0.0))))
    sets["empty micrographs"] = empty

    # reliability per set and pooled
    def foms(items):
        f = np.concatenate([c["score"].to_numpy(float) for _, c, _, _ in items]) if items else np.zeros(0)
        h = np.concatenate([h for _, _, h, _ in items]) if items else np.zeros(0, bool)
        return f, h

    # The ribosome labels are incomplete (precision ~0.72 at recall ~0.99 against them): there a pick of
    # an unlabelled particle counts as false, so their ECE measures the labels as much as the FOM. The
    # second pooled row leaves them out.
    complete = [it for k, v in sets.items() if "labels incomplete" not in k for it in v]
    tables, rows = {}, []
    pooled = {"pooled": [it for v in sets.values() for it in v], POOLED_COMPLETE: complete}
    for name, items in {**sets, **pooled}.items():
        f, h = foms(items)
        tables[name] = reliability(f, h)
        high = (f >= 0.8) & (f < 0.9)
        rows.append(dict(set=name, candidates=int((f >= ECE_FROM).sum()), ece=expected_calibration_error(f, h, 9, ECE_FROM),
                         ece_all=expected_calibration_error(f, h), n_08_09=int(high.sum()),
                         share_08_09=float(h[high].mean()) if high.any() else math.nan,
                         interval_08_09=wilson_interval(int(h[high].sum()), int(high.sum()))))
    print(f"Expected calibration error (ECE): candidate-weighted mean |mean FOM - share of particles| over bins of 0.1, "
          f"over candidates with FOM >= {ECE_FROM:g} (and over all candidates)\n")
    print("| held-out set | candidates (FOM >= 0.1) | ECE | ECE, all candidates | picks at FOM 0.8-0.9 | of them particles (95 % interval) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["interval_08_09"]
        print(f"| {r['set']} | {r['candidates']} | {r['ece']:.3f} | {r['ece_all']:.3f} | {r['n_08_09']} | "
              f"{r['share_08_09']:.2f} ({lo:.2f}-{hi:.2f}) |")
    print("\nPooled reliability (bins of the figure of merit): " + "; ".join(
        f"[{r.lo:.1f},{r.hi:.1f}) n {r.n} FOM {r.mean_fom:.2f} particles {r.particles:.2f}"
        for r in tables["pooled"].itertuples() if r.n))
    CACHE.mkdir(parents=True, exist_ok=True)
    png = CACHE / "calibration_reliability.png"
    _plot({k: v for k, v in tables.items()}, png)
    print(f"\nreliability diagram: {png}")

    # operating point: the highest pooled recall at precision >= 0.8 with < 0.5 picks per empty micrograph
    particle_sets = {k: v for k, v in sets.items() if k != "empty micrographs"}
    pooled = [it for v in particle_sets.values() for it in v]
    curve = []
    for t in THRESHOLDS:
        n, tp, n_ref = _at(pooled, t)
        n_empty = _at(empty, t)[0] / max(1, len(empty))
        curve.append(dict(threshold=float(t), precision=tp / max(1, n), recall=tp / max(1, n_ref), empty_picks=n_empty))
    curve = pd.DataFrame(curve)
    ok = curve[(curve["precision"] >= OPERATING_PRECISION) & (curve["empty_picks"] < MAX_EMPTY_PICKS)]
    chosen = float(ok.sort_values(["recall", "threshold"], ascending=[False, False]).iloc[0]["threshold"]) if len(ok) else math.nan
    print(f"\nOperating point: the highest recall over all held-out particle sets pooled at precision >= "
          f"{OPERATING_PRECISION:g} with < {MAX_EMPTY_PICKS:g} picks per empty micrograph: threshold {chosen:g} "
          f"(the default is {common.THRESHOLD:g})\n")
    print("| threshold | pooled precision | pooled recall | picks per empty micrograph |")
    print("|---|---|---|---|")
    for t in sorted({0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, chosen, common.THRESHOLD} - {math.nan}):
        r = curve[np.isclose(curve["threshold"], t)].iloc[0]
        print(f"| {t:g} | {r.precision:.3f} | {r.recall:.3f} | {r.empty_picks:.2f} |")
    print("\nPer set at the default threshold and at the operating point: precision / recall / F1\n")
    print(f"| held-out set | at {common.THRESHOLD:g} | at {chosen:g} |")
    print("|---|---|---|")
    per_set = {}
    for name, items in particle_sets.items():
        cells = []
        for t in (common.THRESHOLD, chosen):
            n, tp, n_ref = _at(items, t)
            p, r = tp / max(1, n), tp / max(1, n_ref)
            cells.append((p, r, 2 * tp / max(1, n + n_ref)))
        per_set[name] = cells
        print(f"| {name} | " + " | ".join(f"{p:.3f} / {r:.3f} / {f:.3f}" for p, r, f in cells) + " |")

    # flags
    flags = pd.DataFrame(per_mic)
    print("\nMicrograph flags (empty: fewer than 2 particles expected among the candidates of figure of merit >= 0.3)\n")
    print(f"| set | micrographs | flagged empty | flagged ice/carbon/contamination | particles on flagged micrographs | "
          f"particles picked at {common.THRESHOLD:g} on flagged micrographs |")
    print("|---|---|---|---|---|---|")
    for name, g in flags.groupby("set", sort=False):
        bad = g["flag"] != FLAG_OK
        print(f"| {name} | {len(g)} | {int((g['flag'] == 'empty').sum())} | {int((g['flag'] == 'ice/carbon/contamination').sum())} | "
              f"{int(g.loc[bad, 'n_ref'].sum())} of {int(g['n_ref'].sum())} | {int(g.loc[bad, 'picked_true'].sum())} of "
              f"{int(g['picked_true'].sum())} |")
    results["calibration"] = dict(
        ece=rows, reliability={k: v.round(4).to_dict("list") for k, v in tables.items()}, operating_threshold=chosen,
        curve=curve.round(4).to_dict("list"), per_set=per_set, flags=flags.groupby("set")["flag"].value_counts().to_dict().__repr__(),
    )
