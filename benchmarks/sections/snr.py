"""How does recall fall with the SNR the network sees? ``--only snr``: every simulated test
micrograph re-simulated to separate signal and noise, recall and top-N recall by that SNR."""

from __future__ import annotations

import argparse

import pandas as pd

from common import NETWORK_SNR_BINS, default_picks, network_snr, resimulate, simulated_sets, topn_tp
from deeppicker_relion.metrics import MATCH_RADIUS, match


def section_snr(results: dict, args: argparse.Namespace) -> None:
    """Recall against the SNR the network sees (:func:`network_snr`), per test micrograph of each
    simulated molecule (re-simulated with its own seed to separate signal and noise), picked as in
    the leave-one-molecule-out table. Top-N recall (the N best candidates, N = particles) shows
    whether the particles are ranked first at all, whatever the threshold."""
    print("\n## Recall by the SNR the network sees (simulated held-out sets)\n")
    rows = []
    for mol, idx, cands, refs, box in simulated_sets(args.allow_train):
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
