"""The self-training iteration: fine-tune on the target's own best picks, then pick again.

DeepPicker's refinement step: the top ``top_n`` picks of each target micrograph become positives;
negatives are drawn at least 0.6 x box from every candidate the first pass found (not only the
top ones, which would put unpicked particles among the negatives).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..errors import DeepPickerError
from ..model import DeepPickerNet
from .candidates import PickParams, select
from .pipeline import ParticleSize, pick_prepared, prefetch
from ..training.train import History, TrainingSet, TrainParams, make_training_set, train

log = logging.getLogger(__name__)


def self_train(
    micrographs: pd.DataFrame,
    model: DeepPickerNet,
    size: ParticleSize,
    top_n: int,
    params: PickParams = PickParams(),
    train_params: TrainParams = TrainParams(),
    device: str = "cpu",
    max_micrographs: int = 100,
) -> tuple[DeepPickerNet, History]:
    """Fine-tune ``model`` on the top ``top_n`` picks of (up to ``max_micrographs``) target
    micrographs; returns the new model and its training history."""
    rng = np.random.default_rng(train_params.seed)
    subset = micrographs
    if len(micrographs) > max_micrographs:
        subset = micrographs.iloc[np.sort(rng.choice(len(micrographs), max_micrographs, replace=False))]
    sets = []
    for row, prepared in prefetch(subset, size, normalisation=model.normalisation):
        if isinstance(prepared, DeepPickerError):
            log.warning("self-training skips %s", prepared)
            continue
        result = pick_prepared(prepared, model, params, device)
        positives = select(result.candidates, params.threshold, top_n)
        if len(positives) == 0:
            continue
        exclude = result.candidates[["x", "y"]].to_numpy(float)
        sets.append(
            make_training_set(prepared.pre, positives[["x", "y"]].to_numpy(float), rng, train_params, exclude_xy=exclude)
        )
    data = TrainingSet.concat(sets)
    log.info("self-training on %d particles from %d micrographs", int(data.labels.sum()), len(sets))
    return train(data, train_params, device=device, init=model)
