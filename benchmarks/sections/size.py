"""What if the diameter given is not the particle's? ``--only diameter``: F1 with the diameter x
0.7-2; ``--only sizecheck``: what the size check finds on selection and held-out micrographs."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

import common
from common import (
    APOFERRITIN_OUTER_DIAMETER_PX, apoferritin, load_model, metrics, pick_candidates, recipe, ribosome, sim_test,
    size_job,
)


DIAMETER_FACTORS = (0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5, 2.0)


def section_diameter(results: dict, args: argparse.Namespace) -> None:
    """How much the diameter the user gives may differ from the particle's: each held-out set
    picked with its diameter x each factor, matched and scored as in the main table. Apoferritin's
    diameter is its outer one (78 px); x 0.73 would be the annotators' 57 px disc."""
    print("\n## Given diameter vs the particle's: F1 at the defaults (best F1)\n")
    print("| held-out set | " + " | ".join(f"x {f:g}" for f in DIAMETER_FACTORS) + " |")
    print("|---|" + "---|" * len(DIAMETER_FACTORS))
    model = load_model(common.WEIGHTS if common.SINGLE_MODEL is None else common.SINGLE_MODEL)[0]
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


SIZE_FACTORS = (0.73, 1.0, 1.5, 2.0)  # given diameter / the particle's (0.73: apoferritin's 57 px ring)
SIZE_SELECTION_STRIDE = 6  # every 6th selection micrograph (each is checked 4 x; ~1-4 s a check)

def section_sizecheck(results: dict, args: argparse.Namespace) -> None:
    """The size check (deeppicker_relion/picking/sizecheck.py): (1) on selection micrographs (the rule
    split: random molecules and cages, and empty micrographs; one micrograph per check, a harder
    case than a job's three), how often the search ('adopt') and the strong search ('auto', the
    default) move a right diameter, move an empty micrograph, or bring a wrong one back within x
    0.8-1.25; (2) on every held-out set, checked as a job (its first, middle and last micrograph)
    given its diameter x SIZE_FACTORS: the factors found, and F1 at the defaults picking at the
    given size and at each size found."""
    from deeppicker_relion.picking.sizecheck import DEFAULT_MODE, check_size, factor_to_use

    model = load_model(common.WEIGHTS if common.SINGLE_MODEL is None else common.SINGLE_MODEL)[0]
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
        mics, size = size_job(rows, f)
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
            mics, size = size_job(truth, f)
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
