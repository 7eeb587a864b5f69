"""Does it pick where there are no particles? ``--only empty``: empty simulated micrographs (ice,
noise, contamination, carbon); ``--only contamination``: picks on a real micrograph's masked
contamination."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

import common
from common import CONTAMINATION_DIR, default_picks, fold_model, load_model, pick_candidates, recipe, sim_test


def section_empty(results: dict, args: argparse.Namespace) -> None:
    print("\n## Noise guard: empty micrographs (ice + noise, no particles)\n")
    print(f"| model | micrographs | picks / micrograph at {common.THRESHOLD:g} | max picks | candidates with FOM >= 0.1 / mic | "
          "FOM percentiles of candidates (50/90/99/max) |")
    print("|---|---|---|---|---|---|")
    shipped = load_model(common.WEIGHTS)[0]
    all_scores = {"shipped": [], "fold": []}
    counts = {"shipped": [], "fold": []}
    for mol in recipe.molecules():
        idx = sim_test(mol, empty=True)
        for kind, model in (("fold", fold_model(mol, args.allow_train)), ("shipped", shipped)):
            if model is None:
                continue
            cands, _ = pick_candidates(model, idx)
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
        print(f"\n{kind} models, all {len(counts[kind])} empty micrographs: {np.mean(counts[kind]):.2f} picks per micrograph at {common.THRESHOLD:g}; "
              "histogram of candidate peak scores (per micrograph): "
              + ", ".join(f"[{a:g},{b:.2g}): {c / len(counts[kind]):.1f}" for a, b, c in zip(hist_edges[:-1], hist_edges[1:], hist)))  # fmt: skip


def contamination_box() -> float:
    """The UCSF micrograph's particle is undocumented; its RELION autopicks on clean ice are
    ~20-30 px blobs. We pick with a 28 px box."""
    return 28.0


def section_contamination(results: dict, args: argparse.Namespace) -> None:
    print("\n## Contamination / carbon check (real UCSF micrograph with a contamination mask)\n")
    import mrcfile

    model = load_model(common.WEIGHTS)[0]
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
