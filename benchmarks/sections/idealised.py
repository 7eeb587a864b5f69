"""How far is ours from an idealised picker? ``--only oracle``: benchmarks/oracle.py (told each
particle's exact image, the noise spectrum and the contamination) against ours on the simulated
held-out sets."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from common import (
    NETWORK_SNR_BINS, best_f1, metrics, network_snr, recall_at_precision, resimulate, simulated_sets, topn_tp,
)


PICKERS = ("ours", "idealised", "idealised, network grid")


def section_oracle(results: dict, args: argparse.Namespace) -> None:
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

    for mol, idx, cands, refs, box in simulated_sets(args.allow_train):
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
