"""Does training on the user's data help? ``--only finetune``: self-training and semi-automated
training (400 picks of the target) against the general model."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from common import fold_model, metrics, pick_candidates, recipe, ribosome, sim_test
from deeppicker_relion.io.coords import read_coordinates
from deeppicker_relion.io.mrc import read_micrograph
from deeppicker_relion.model import DeepPickerNet
from deeppicker_relion.picking.candidates import PickParams
from deeppicker_relion.picking.preprocess import DEFAULT_NORMALISATION, preprocess


def _finetune_sets(target: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(micrographs holding the 400 target picks, held-out test micrographs) of a target."""
    if target == "ribosome":
        idx = ribosome()
        train_part = idx[idx["name"].str[:3].astype(int) < 300]  # CryoPPP train/valid split 061-065
        return train_part.reset_index(drop=True), idx[idx["name"].str[:3].astype(int) > 300].reset_index(drop=True)
    train_idx = recipe.simulate_split(target, recipe.TRAIN)
    return train_idx[train_idx["n_particles"] > 0].reset_index(drop=True), sim_test(target)


def semi_automated(init: DeepPickerNet | None, index: pd.DataFrame, n_picks: int = 400, seed: int = 0,
                   epochs: int = 10) -> DeepPickerNet:
    """Fine-tune ``init`` (or train from scratch) on the first ``n_picks`` labelled particles of
    ``index`` (whole micrographs, as a user would pick them), with the library's training code."""
    from deeppicker_relion.training.train import TrainingSet, TrainParams, make_training_set, train

    rng = np.random.default_rng(seed)
    norm = init.normalisation if init is not None else DEFAULT_NORMALISATION  # as the model will pick
    sets, total = [], 0
    for _, row in index.iterrows():
        if total >= n_picks:
            break
        ref = read_coordinates(row["coords"])[["x", "y"]].to_numpy(float)
        ref = ref[: n_picks - total]
        total += len(ref)
        pre = preprocess(read_micrograph(row["path"]).data, float(row["diameter_px"]), norm)
        params = TrainParams(negative_ratio=3.0, near_miss_fraction=0.3, seed=seed)
        sets.append(make_training_set(pre, ref, rng, params))
    params = TrainParams(max_epochs=epochs, negative_ratio=3.0, near_miss_fraction=0.3, seed=seed,
                         lr=0.01 if init is None else 0.003, patience=3, batch_size=128)  # fmt: skip
    model, _ = train(TrainingSet.concat(sets), params, init=init)
    return model


def section_finetune(results: dict, args: argparse.Namespace) -> None:
    from deeppicker_relion.picking.pipeline import ParticleSize
    from deeppicker_relion.picking.selftrain import self_train
    from deeppicker_relion.training.train import TrainParams

    print("\n## Self-training and semi-automated training (400 picks of the target)\n")
    print("| target | model | precision | recall | F1 @ 0.5 | top-N F1 | best F1 |")
    print("|---|---|---|---|---|---|---|")
    for target in args.finetune_targets:
        base = fold_model(target, False)
        if base is None:
            continue
        labelled, test = _finetune_sets(target)
        variants = {"general (fold) model": base}
        # self-training on the target's own micrographs (the test micrographs; no labels used):
        # fine-tune on every pick >= 0.5, background kept off every candidate, then pick again
        mics = pd.DataFrame({"name": test["name"], "path": test["path"]})
        if target == "ribosome":
            size = ParticleSize(box_px=recipe.RIBOSOME_DIAMETER_PX)
        else:
            size = ParticleSize(diameter_A=float((test["diameter_px"] * test["pixel_size_A"]).median()))
        st_params = TrainParams(max_epochs=10, negative_ratio=3.0, near_miss_fraction=0.3, lr=0.003, patience=3, batch_size=128)
        st_model, _ = self_train(mics, base, size, 10_000, PickParams(), st_params)
        variants["+ self-training (picks >= 0.5)"] = st_model
        variants["semi-automated: fine-tune general on 400 picks"] = semi_automated(base, labelled)
        variants["semi-automated: from scratch on 400 picks"] = semi_automated(None, labelled, epochs=20)
        for name, model in variants.items():
            cands, _ = pick_candidates(model, test)
            m = metrics(cands, test)
            results.setdefault("finetune", {}).setdefault(target, {})[name] = m
            print(f"| {target} | {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['topn_f1']:.3f} | {m['best_f1']:.3f} |", flush=True)
