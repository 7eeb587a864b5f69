"""Which two-level threshold rule? ``--only rule``: the rule (confident threshold, count, low
threshold) chosen on the selection micrographs (no benchmarked molecule), against the defaults."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

import common
from common import THRESHOLD, boxes, load_model, pick_candidates, recipe, references
from deeppicker_relion.evaluate import MATCH_RADIUS, match
from deeppicker_relion.picking import PickParams, holds_particles


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


def section_rule(results: dict, args: argparse.Namespace) -> None:
    """Choose the two-level rule: among the rules that switch NO empty selection micrograph to the low
    cut, the one with the best pooled F1 (ties: first in RULE_GRID). The count of each rule scales
    with the micrograph's area beyond CONFIDENT_AREA boxes, as in picking."""
    print("\n## Two-level rule, chosen on the rule-selection micrographs (no benchmarked molecule)\n")
    idx = rule_selection_set()
    model = load_model(common.WEIGHTS)[0]
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
