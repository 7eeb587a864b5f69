"""The shipped general model: it loads, is what its card says, and picks a molecule it has never
seen (a random synthetic one) on small simulated micrographs while leaving empty ones alone.
Fast (a few seconds), no ../shared needed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from deeppicker_relion.metrics import evaluate, topn_curve
from deeppicker_relion.model import (
    DeepPickerNet,
    default_weights_path,
    fold_logit_calibration,
    load_model,
)
from deeppicker_relion.picking.candidates import PickParams, find_candidates, select
from deeppicker_relion.picking.preprocess import preprocess
from deeppicker_relion.picking.scoring import score_map_dense, score_map_patches
from deeppicker_relion.simulation.simulate import (
    estimate_diameter_A,
    simulate_micrograph,
    simulate_micrograph_parts,
    synthetic_molecule,
)

PIXEL = 4.0


@pytest.fixture(scope="module")
def general():
    return load_model()


def test_shipped_weights_load_and_are_documented(general) -> None:
    model, info = general
    path = default_weights_path()
    assert path.is_file() and path.stat().st_size < 5_000_000
    assert isinstance(model, DeepPickerNet) and model.architecture == "deeppicker2016-wide"
    assert info["architecture"] == info["recipe_params"]["architecture"] == model.architecture
    assert not model.training
    assert "make_general_model.py" in info["recipe"]
    # the shipped model is trained on random molecules only: every benchmark molecule is held out
    assert info["holdout"] == "all" and info["real_data"] == []
    assert 0 < info["calibration"]["a"] and info["calibration"]["folded_into"] == "fc2"
    # calibrated for, and scoring by default with, the mean over each window and its half turn
    assert model.augment == 2 and info["augment"] == info["recipe_params"]["augment"] == 2
    # ... and carries the same rule's calibration for 1 and 4 copies (--augment 1 / 4)
    own = info["calibration"]
    assert sorted(model.augment_calibration) == [1, 2, 4]
    assert model.augment_calibration[2] == pytest.approx((own["a"], own["b"] + own["offset"]))
    # trained, calibrated and picking on locally normalised micrographs (each pixel by the spread
    # around it), as the recipe records
    assert info["normalisation"] == info["recipe_params"]["normalisation"] == model.normalisation == "local"
    assert info["recipe_params"]["train_normalisation"] == "local"
    assert (path.parent / "MODEL_CARD.md").is_file()


def test_folded_calibration_is_exact_on_every_scoring_path() -> None:
    torch.manual_seed(0)
    model = DeepPickerNet().eval()
    image = np.random.default_rng(0).normal(size=(150, 170)).astype(np.float32)
    before = score_map_dense(model, image).logits
    fold_logit_calibration(model, 0.6, -2.5)
    after_dense = score_map_dense(model, image).logits
    after_patches = score_map_patches(model, image).logits
    np.testing.assert_allclose(after_dense, 0.6 * before - 2.5, atol=1e-4)
    np.testing.assert_allclose(after_patches, after_dense, atol=1e-4)
    with pytest.raises(ValueError):
        fold_logit_calibration(model, 0.0, 1.0)


def _picks(model, image, box) -> pd.DataFrame:
    pre = preprocess(image, box, model.normalisation)
    return select(find_candidates(score_map_dense(model, pre.image), pre, PickParams()), 0.5)


@pytest.fixture(scope="module")
def unseen():
    """A random protein-like molecule that appears nowhere in the training data."""
    volume = synthetic_molecule(170.0, PIXEL, seed=11, symmetry="C3")
    return volume, estimate_diameter_A(volume, PIXEL)


def _simulated(volume, snr: float) -> tuple[dict, dict]:
    picks, refs = {}, {}
    for seed in (1, 2, 3):
        image, centres = simulate_micrograph((448, 480), PIXEL, [volume], n_particles=14, snr=snr,
                                             defocus_um=2.0, seed=seed)  # fmt: skip
        refs[str(seed)] = centres
        picks[str(seed)] = image
    return picks, refs


def test_picks_a_never_seen_molecule(general, unseen) -> None:
    """Clearly visible particles (SNR 0.5): the default threshold gives clean picks (precision
    first: see MODEL_CARD.md), the README's recall threshold 0.05 finds nearly all of them; at SNR
    0.25 the ranking still finds most (top N) while the default threshold stays precise."""
    model, _ = general
    volume, diameter_A = unseen
    box = diameter_A / PIXEL

    def candidates(snr: float) -> tuple[dict, dict]:
        images, refs = _simulated((volume, PIXEL), snr)
        cands = {}
        for k, im in images.items():
            pre = preprocess(im, box, model.normalisation)
            cands[k] = find_candidates(score_map_dense(model, pre.image), pre, PickParams(floor=0.01))
        return cands, refs

    cands, refs = candidates(0.5)
    at_default = evaluate({k: select(c, 0.5) for k, c in cands.items()}, refs, box).iloc[-1]
    assert at_default["n_reference"] >= 30
    assert at_default["precision"] >= 0.9 and at_default["recall"] >= 0.4, at_default
    assert at_default["centre_error"] <= 0.1, at_default
    for_recall = evaluate({k: select(c, 0.05) for k, c in cands.items()}, refs, box).iloc[-1]
    assert for_recall["recall"] >= 0.9 and for_recall["precision"] >= 0.8, for_recall
    assert for_recall["centre_error"] <= 0.1, for_recall

    cands, refs = candidates(0.25)
    curve = topn_curve(cands, refs, box, ratios=np.array([1.0])).iloc[0]
    assert curve["recall"] >= 0.7, curve
    at_default = evaluate({k: select(c, 0.5) for k, c in cands.items()}, refs, box).iloc[-1]
    assert at_default["precision"] >= 0.9, at_default


def test_almost_nothing_on_empty_micrographs(general, unseen) -> None:
    """Ice, CTF-shaped noise and fog, no particles: the paper's "Einstein from noise" check."""
    model, _ = general
    volume, diameter_A = unseen
    n = 0
    for seed in (4, 5, 6, 7):
        sim = simulate_micrograph_parts((448, 480), PIXEL, [(volume, PIXEL)], 0, snr=0.25, defocus_um=2.0,
                                        ice=0.2, seed=seed)  # fmt: skip
        n += len(_picks(model, sim.image, diameter_A / PIXEL))
    assert n <= 2
