"""How well does the general model pick a molecule it never saw? ``--only lomo``: the
leave-one-molecule-out table (each held-out set picked by the fold model trained without it, the
size check run as a job), by SNR, and the real ribosome and apoferritin sets."""

from __future__ import annotations

import argparse

import pandas as pd

import common
from common import (
    APOFERRITIN_DIAMETER_PX, APOFERRITIN_OUTER_DIAMETER_PX, HEADER, apoferritin, fixed_n, fmt_row, fold_model,
    metrics, pick_candidates, recipe, ribosome, sim_test, size_checked, size_note, topn_table,
)


def section_lomo(results: dict, args: argparse.Namespace) -> None:
    print(f"\n## Leave-one-molecule-out (default threshold {common.THRESHOLD:g} on the figure of merit; the size check as a job, default 'auto')\n")
    print(HEADER)
    for mol in recipe.molecules():
        model = fold_model(mol, args.allow_train)
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
        print(fmt_row(size_note(mol, factor), m), flush=True)
        _per_snr(results, mol, cands, idx)
    model = fold_model("ribosome", args.allow_train)
    if model is not None:
        idx, factor = size_checked(model, ribosome())
        cands, sec = pick_candidates(model, idx)
        m = metrics(cands, idx)
        m["topn"] = topn_table(cands, idx).round(3).to_dict("list")
        m["size_factor"] = factor
        m["fixed_n"] = fixed_n(cands, idx)
        results.setdefault("lomo", {})["ribosome (real)"] = m
        print(fmt_row(size_note("ribosome (real, labels incomplete)", factor), m), flush=True)
    for holdout in (["all"] if common.SINGLE_MODEL is not None else recipe.molecules() + ["ribosome"]):
        model = fold_model(holdout, False)
        if model is None:
            continue
        for box in (APOFERRITIN_DIAMETER_PX, APOFERRITIN_OUTER_DIAMETER_PX):
            idx, factor = size_checked(model, apoferritin(box))
            cands, _ = pick_candidates(model, idx)
            m = metrics(cands, idx)
            m["size_factor"] = factor
            results.setdefault("apoferritin_by_fold", {})[f"{holdout} box {box:g}"] = m
            print(fmt_row(size_note(f"apoferritin (real), box {box:g} px, fold model without {holdout}", factor), m),
                  flush=True)
    fixed = [(k, v["fixed_n"]) for k, v in results.get("lomo", {}).items() if "fixed_n" in v]
    if fixed:
        print("\nThe N best candidates of every micrograph, one N per set: the median particles per micrograph "
              "(`--threshold 0 --max-picks N`), precision / recall / F1: "
              + "; ".join(f"{k} (N {v['n']}) {v['precision']:.3f} / {v['recall']:.3f} / {v['f1']:.3f}" for k, v in fixed))



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
