"""What does the shipped model get? ``--only shipped``: the shipped model on never-seen real
apoferritin micrographs and on its own molecules' simulated test micrographs."""

from __future__ import annotations

import argparse

import common
from common import (
    APOFERRITIN_DIAMETER_PX, APOFERRITIN_OUTER_DIAMETER_PX, HEADER, apoferritin, fmt_row, load_model, metrics,
    pick_candidates, recipe, sim_test, topn_table,
)


def section_shipped(results: dict, args: argparse.Namespace) -> None:
    print("\n## Shipped model on never-seen real data and on its own simulated test micrographs\n")
    print(HEADER)
    model, info = load_model(common.WEIGHTS)
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
