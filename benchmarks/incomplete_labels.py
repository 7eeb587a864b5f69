"""Incomplete labels: does the background of a curated particle set land on unlabelled particles,
and what does that cost? Measures the strategies of ``deeppicker train`` (TrainParams.incomplete_labels).

Two experiments, each fine-tuning the shipped general model for the same epochs with 3 background
patches per particle (30 % near misses), once per strategy:

1. Simulated, ground truth known: random-molecule micrographs (deeppicker_relion.simulation.sets)
   with 40 % of the labels dropped, as classification drops true particles. Reported: the fraction
   of background patches centred within 0.3 box of a DROPPED particle (negatives on unlabelled
   particles), and on held-out simulated micrographs (complete truth) recall, precision and F1 at
   p >= 0.5 and average precision (AP).
2. Real, EMPIAR-10028 ribosomes (../shared; labels incomplete): train on 6 micrographs, test on the
   other 4: recall at p >= 0.5, top-N recall (N = labels) and AP against the labels (precision is
   a lower bound: unlabelled ribosomes count as false), picks per micrograph.

Peaks are found here (local maxima of the score map over 0.8 box, no ice cleaning or re-centring)
so that the figures depend on the network only. Match radius 0.2 x box.

Usage:
  python benchmarks/incomplete_labels.py                      # both, strategies none / blobs / model
  python benchmarks/incomplete_labels.py --only real --epochs 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RIBOSOME = REPO.parent / "shared" / "data" / "empiar10028_ribosome"
STRATEGIES = ("none", "blobs", "model", "weighted")


def peaks(model, pre, device: str = "cpu") -> pd.DataFrame:
    """Local maxima of the score map over 0.8 box scoring >= 1e-3: x, y (original px), score."""
    from scipy import ndimage

    from deeppicker_relion.picking.preprocess import INPUT_SIZE
    from deeppicker_relion.picking.scoring import score_map_dense

    smap = score_map_dense(model, pre.image, device=device)
    s = smap.scores
    size = max(1, int(round(0.8 * INPUT_SIZE / smap.step))) | 1
    rows, cols = np.nonzero((s == ndimage.maximum_filter(s, size=size, mode="constant")) & (s >= 1e-3))
    x, y = smap.centres(rows, cols)
    ox, oy = pre.to_original(x, y)
    order = np.argsort(-s[rows, cols], kind="stable")
    return pd.DataFrame({"x": ox[order], "y": oy[order], "score": s[rows, cols][order].astype(float)})


def scores(cands: list[pd.DataFrame], refs: list[np.ndarray], radii: list[float]) -> dict:
    """Recall / precision / F1 at p >= 0.5, top-N recall and AP over micrographs."""
    from deeppicker_relion.metrics import match

    hits, all_scores, tp5, n5, top = [], [], 0, 0, 0
    n_ref = sum(len(r) for r in refs)
    for c, r, rad in zip(cands, refs, radii):
        matched, _ = match(c, pd.DataFrame({"x": r[:, 0], "y": r[:, 1]}), rad)
        ok = matched >= 0
        hits.append(ok)
        all_scores.append(c["score"].to_numpy())
        sel = c["score"].to_numpy() >= 0.5
        tp5 += int(ok[sel].sum())
        n5 += int(sel.sum())
        top += int(ok[: len(r)].sum())
    ok = np.concatenate(hits)
    order = np.argsort(-np.concatenate(all_scores), kind="stable")
    tp = np.cumsum(ok[order])
    prec = tp / np.arange(1, len(tp) + 1)
    ap = float((prec * ok[order]).sum() / max(1, n_ref))
    recall, precision = tp5 / max(1, n_ref), tp5 / max(1, n5)
    return {"recall@0.5": round(recall, 3), "precision@0.5": round(precision, 3),
            "f1@0.5": round(2 * recall * precision / max(1e-9, recall + precision), 3),
            "topN_recall": round(top / max(1, n_ref), 3), "AP": round(ap, 3),
            "picks_per_mic@0.5": round(n5 / max(1, len(cands)), 1)}  # fmt: skip


def examples(items: list[dict], strategy: str, params, vet, norm: str, seed: int = 0):
    """Training patches of ``items`` (path, pixel, box, labels, optional all = complete truth) and
    the fraction of background within 0.3 box of an unlabelled true particle."""
    from scipy.spatial import cKDTree

    from deeppicker_relion.picking.pipeline import ParticleSize, prepare
    from deeppicker_relion.training.train import TrainingSet, micrograph_examples, vet_micrograph

    rng = np.random.default_rng(seed)
    params.incomplete_labels = strategy
    parts, on_unlabelled, n_bg = [], 0, 0
    for it in items:
        prep = prepare(it["path"], it["path"], ParticleSize(box_px=it["box"]), it["pixel"], norm)
        pre = prep.pre
        cx, cy = pre.to_resampled(it["labels"][:, 0], it["labels"][:, 1])
        vetting = vet_micrograph(vet, pre.image, np.column_stack([cx, cy]), params) if strategy in ("model", "weighted") else None
        part, info = micrograph_examples(pre, it["labels"], rng, params, complete=False, vetting=vetting)
        parts.append(part)
        bg = info["background_xy"]
        n_bg += len(bg)
        hidden = it.get("hidden")
        if hidden is not None and len(hidden) and len(bg):
            hx, hy = pre.to_resampled(hidden[:, 0], hidden[:, 1])
            on_unlabelled += int((cKDTree(np.column_stack([hx, hy])).query(bg)[0] < 0.3 * 64).sum())
    return TrainingSet.concat(parts), on_unlabelled / max(1, n_bg)


def evaluate(model, items: list[dict]) -> dict:
    from deeppicker_relion.picking.pipeline import ParticleSize, prepare

    cands, refs, radii = [], [], []
    for it in items:
        prep = prepare(it["path"], it["path"], ParticleSize(box_px=it["box"]), it["pixel"], model.normalisation)
        cands.append(peaks(model, prep.pre))
        refs.append(it["all"])
        radii.append(0.2 * it["box"])
    return scores(cands, refs, radii)


def run(name: str, train_items, test_items, strategies, epochs: int, out: dict, seed: int = 0, lr: float = 0.01,
        radius: float | None = None) -> None:
    from deeppicker_relion.model import load_model
    from deeppicker_relion.training.train import TrainParams, train

    general, _ = load_model(None)
    if seed == 0:
        row = {"strategy": "shipped model (no training)", **evaluate(general, test_items)}
        print(f"{name}: {row}", flush=True)
        out.setdefault(name, []).append(row)
    for strategy in strategies:
        t0 = time.perf_counter()
        params = TrainParams(max_epochs=epochs, patience=epochs, negative_ratio=3.0, near_miss_fraction=0.3, max_positives=300,
                             seed=seed, lr=lr)  # fmt: skip
        if radius is not None:
            params.unlabelled_radius = radius
        data, frac = examples(train_items, strategy, params, general, general.normalisation, seed)
        model, hist = train(data, params, init=general)
        model.normalisation = general.normalisation
        row = {"strategy": strategy, "seed": seed, "background_on_unlabelled": round(frac, 4), "particles": int(data.labels.sum()),
               "background": int((data.labels == 0).sum()), **evaluate(model, test_items),
               "seconds": round(time.perf_counter() - t0)}  # fmt: skip
        print(f"{name}: {row}", flush=True)
        out.setdefault(name, []).append(row)


def simulated_items(n: int, seed: int, drop: float, cache: Path, drop_seed: int = 0) -> list[dict]:
    from deeppicker_relion.io.coords import read_coordinates
    from deeppicker_relion.simulation.sets import simulated_set

    folder = simulated_set(n, seed, cache)
    index = pd.read_csv(folder / "index.csv")
    rng = np.random.default_rng([seed, drop_seed])
    items = []
    for _, r in index.iterrows():
        xy = read_coordinates(folder / r["coords"])[["x", "y"]].to_numpy(float).reshape(-1, 2)
        if len(xy) < 4:
            continue
        keep = rng.uniform(size=len(xy)) >= drop
        items.append({"path": str(folder / r["file"]), "pixel": float(r["pixel_size"]), "box": float(r["diameter_px"]),
                      "labels": xy[keep], "hidden": xy[~keep], "all": xy})  # fmt: skip
    return items


def ribosome_items() -> list[dict]:
    from deeppicker_relion.io.coords import read_coordinates

    items = []
    for mrc in sorted((RIBOSOME / "micrographs").glob("*.mrc")):
        xy = read_coordinates(RIBOSOME / "coords" / f"{mrc.stem}.star")[["x", "y"]].to_numpy(float)
        items.append({"path": str(mrc), "pixel": 5.36, "box": 56.0, "labels": xy, "all": xy})
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("simulated", "real"), default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--radius", type=float, default=None, help="TrainParams.unlabelled_radius (box; default: the library's)")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate of the fine-tuning (default 0.01, the CLI's)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", type=int, default=1, help="repeat each training with this many seeds (label drop and training)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=HERE / "cache" / "incomplete_labels")
    parser.add_argument("--json", type=Path, default=HERE / "cache" / "incomplete_labels.json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    strategies = [s for s in args.strategies.split(",") if s]
    out: dict = {"epochs": args.epochs, "lr": args.lr, "seeds": args.seeds, "radius": args.radius}
    if args.only in (None, "simulated"):
        test = simulated_items(6, 202, 0.0, args.cache)
        for seed in range(args.seeds):
            train_items = simulated_items(10, 101, 0.4, args.cache, drop_seed=seed)
            run("simulated (40 % of labels dropped)", train_items, test, strategies, args.epochs, out, seed, args.lr, args.radius)
    if args.only in (None, "real"):
        if not RIBOSOME.is_dir():
            print("../shared is missing: real experiment skipped")
        else:
            items = ribosome_items()
            for seed in range(args.seeds):
                run("EMPIAR-10028 ribosome (train 6, test 4)", items[:6], items[6:], strategies, args.epochs, out, seed, args.lr, args.radius)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for name, rows in out.items():
        if not isinstance(rows, list):
            continue
        table = pd.DataFrame(rows)
        if "seed" in table.columns:
            summary = table.dropna(subset=["seed"]).groupby("strategy")[["background_on_unlabelled", "f1@0.5", "topN_recall", "AP",
                                                                      "picks_per_mic@0.5"]].agg(["mean", "std"]).round(3)
            print(f"\n{name}: mean and SD over {args.seeds} seed(s)\n{summary.to_string()}")
    args.json.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
