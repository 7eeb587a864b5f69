"""Training from files: micrographs + their coordinate files -> a weights file."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..errors import DeepPickerError, JobError
from ..io.coords import read_coordinates
from ..model import DeepPickerNet, save_model
from .pick import Aborted
from ..picking.pipeline import ParticleSize, prefetch
from ..picking.preprocess import DEFAULT_NORMALISATION
from ..training.train import History, TrainingSet, TrainParams, make_training_set, train

log = logging.getLogger(__name__)


def build_training_set(
    micrographs: pd.DataFrame,
    coordinates: dict[str, Path],
    size: ParticleSize,
    params: TrainParams,
    should_abort: Callable[[], bool] | None = None,
    normalisation: str = DEFAULT_NORMALISATION,
) -> tuple[TrainingSet, list[float]]:
    """Patches from every micrograph that has a coordinate file; returns (set, box sizes in px).
    ``normalisation``: the trained model's (preprocess.normalise).

    Micrographs without coordinates are left out (a ManualPick job rarely covers them all).
    ``should_abort`` is polled between micrographs (raises :class:`~.pick.Aborted`).
    """
    rng = np.random.default_rng(params.seed)
    use = micrographs[micrographs["name"].isin(coordinates.keys())]
    if use.empty:
        raise JobError("no coordinate file matches any micrograph (check the names and the --coords argument)")
    sets, boxes = [], []
    for row, prepared in prefetch(use, size, normalisation=normalisation):
        _check_abort(should_abort)
        if isinstance(prepared, DeepPickerError):
            log.warning("skipped for training: %s", prepared)
            continue
        coords = read_coordinates(coordinates[row["name"]])
        if coords.empty:
            continue
        sets.append(make_training_set(prepared.pre, coords[["x", "y"]].to_numpy(float), rng, params))
        boxes.append(prepared.box_px)
        log.info("%s: %d particles", row["name"], len(coords))
    data = TrainingSet.concat(sets)
    if len(data) == 0:
        raise JobError("no particles to train on: the coordinate files are empty or no micrograph could be read")
    return data, boxes


def train_from_files(
    micrographs: pd.DataFrame,
    coordinates: dict[str, Path],
    size: ParticleSize,
    output: Path,
    params: TrainParams = TrainParams(),
    init: DeepPickerNet | None = None,
    device: str = "cpu",
    progress: bool = False,
    extra_info: dict | None = None,
    should_abort: Callable[[], bool] | None = None,
    cache: Path | None = None,
) -> tuple[DeepPickerNet, History]:
    """Train (or fine-tune ``init``) and save the best weights to ``output`` (safetensors).
    ``cache``: where the figure of merit's micrographs are simulated (``params.fom_micrographs``).

    ``should_abort`` is polled between micrographs and before each epoch (raises
    :class:`~.pick.Aborted`; nothing is saved then).
    """
    # a fine-tuned model keeps the normalisation it was made with; a new one gets the default
    normalisation = init.normalisation if init is not None else DEFAULT_NORMALISATION
    data, boxes = build_training_set(micrographs, coordinates, size, params, should_abort, normalisation)
    n_pos = int(data.labels.sum())
    log.info("training on %d particle and %d background patches from %d micrographs", n_pos, len(data) - n_pos, len(boxes))
    model, history, info = _train_and_save(data, params, device, init, progress, should_abort, output, {
        "recipe": "deeppicker train",
        "n_micrographs": len(boxes),
        "box_px": float(np.median(boxes)) if boxes else None,
        **(extra_info or {}),
    }, cache)
    log.info(
        "wrote %s (best epoch %d of %d, validation loss %.4f, accuracy %.3f)",
        output, history.best_epoch + 1, len(history.val_loss), info["val_loss"], info["val_accuracy"],
    )
    return model, history


def _check_abort(should_abort: Callable[[], bool] | None) -> None:
    if should_abort is not None and should_abort():
        raise Aborted("abort requested")


# --------------------------------------------------------------------------------------------------
# Several data sets (cross-molecule training from solved projects)
# --------------------------------------------------------------------------------------------------


def dataset_examples(
    sets: list,
    params: TrainParams,
    normalisation: str,
    vet_model: DeepPickerNet | None = None,
    device: str = "cpu",
    should_abort: Callable[[], bool] | None = None,
    progress: bool = False,
) -> tuple[TrainingSet, list[dict]]:
    """Patches of every micrograph of every :class:`~..training.datasets.LabelledSet`, read ONE micrograph at a
    time (only patches are kept: 16 KiB each). ``normalisation``: the trained model's;
    ``vet_model`` (needed for ``params.incomplete_labels in ("model", "weighted")``) scores the micrographs of
    sets with incomplete labels. Returns (patches, one summary per set)."""
    from ..picking.pipeline import prepare
    from ..picking.preprocess import preprocess
    from ..training.train import micrograph_examples, vet_micrograph

    rng = np.random.default_rng(params.seed)
    parts: list[TrainingSet] = []
    summaries = []
    total = sum(len(s.micrographs) for s in sets)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="reading micrographs", unit="micrograph")
    for s in sets:
        size = ParticleSize(diameter_A=s.diameter_A) if s.diameter_A else (ParticleSize(box_px=s.box_px) if s.box_px else None)
        counts = {"name": s.name, "micrographs": 0, "particles": 0, "background": 0, "skipped": 0,
                  "labels": "complete" if s.complete else "incomplete"}
        for _, row in s.micrographs.iterrows():
            _check_abort(should_abort)
            box = row.get("box_px", np.nan)
            mic_size = ParticleSize(box_px=float(box)) if box == box and box > 0 else size
            try:
                if mic_size is None:
                    raise JobError("no particle size for this micrograph", row["path"])
                prepared = prepare(row["name"], row["path"], mic_size, row.get("pixel_size"), normalisation)
            except DeepPickerError as err:
                log.warning("skipped for training: %s", err)
                counts["skipped"] += 1
                continue
            vetting = None
            if not s.complete and params.incomplete_labels in ("model", "weighted"):
                if vet_model is None:
                    raise JobError("incomplete labels with the 'model' strategy need a vetting model")
                pre = prepared.pre
                image = pre.image
                if vet_model.normalisation != normalisation:
                    image = preprocess(prepared.micrograph.data, prepared.box_px, vet_model.normalisation).image
                cx, cy = pre.to_resampled(*s.centres[row["name"]].T)
                vetting = vet_micrograph(vet_model, image, np.column_stack([cx, cy]), params, device)
            part, info = micrograph_examples(prepared.pre, s.centres[row["name"]], rng, params, s.complete, vetting)
            parts.append(part)
            counts["micrographs"] += 1
            counts["particles"] += info["particles"]
            counts["background"] += info["background"]
            log.debug("%s %s: %s", s.name, row["name"], info)
            del prepared, vetting
            if bar is not None:
                bar.update(1)
        log.info("data set %s: %d particle and %d background patches from %d micrographs (%d skipped)",
                 s.name, counts["particles"], counts["background"], counts["micrographs"], counts["skipped"])
        summaries.append(counts)
    if bar is not None:
        bar.close()
    data = TrainingSet.concat(parts)
    if len(data) == 0:
        raise JobError("no particles to train on: no micrograph of any data set could be read")
    return data, summaries


def train_from_datasets(
    sets: list,
    output: Path,
    params: TrainParams = TrainParams(),
    init: DeepPickerNet | None = None,
    device: str = "cpu",
    progress: bool = False,
    extra_info: dict | None = None,
    should_abort: Callable[[], bool] | None = None,
    vet_model: DeepPickerNet | None = None,
    cache: Path | None = None,
) -> tuple[DeepPickerNet, History]:
    """Train (or fine-tune ``init``) on several labelled data sets and save the best weights to
    ``output`` (safetensors). ``vet_model``: the model that vets background on sets with incomplete
    labels (default: ``init``, else the shipped general model); ``cache``: where the figure of
    merit's micrographs are simulated (``params.fom_micrographs``)."""
    normalisation = init.normalisation if init is not None else DEFAULT_NORMALISATION
    if params.incomplete_labels in ("model", "weighted") and any(not s.complete for s in sets) and vet_model is None:
        if init is not None:
            vet_model = init
        else:
            from ..model import load_model

            vet_model, _ = load_model(None, device)
    data, summaries = dataset_examples(sets, params, normalisation, vet_model, device, should_abort, progress)
    n_pos = int(data.labels.sum())
    log.info("training on %d particle and %d background patches from %d data sets", n_pos, len(data) - n_pos, len(sets))
    model, history, info = _train_and_save(data, params, device, init, progress, should_abort, output, {
        "recipe": "deeppicker train (data sets)",
        "datasets": summaries,
        **(extra_info or {}),
    }, cache)
    log.info("wrote %s (best epoch %d of %d, validation loss %.4f, accuracy %.3f)",
             output, history.best_epoch + 1, len(history.val_loss), info["val_loss"], info["val_accuracy"])
    return model, history


def _train_and_save(data, params: TrainParams, device, init, progress, should_abort, output: Path,
                    about: dict, cache: Path | None = None) -> tuple:
    """Train on ``data`` (abort polled each epoch), save the weights with ``about`` and what the
    training measured in their metadata, then fit and add the figure of merit when
    ``params.fom_micrographs`` > 0 (micrographs simulated into ``cache``); returns (model, history,
    metadata)."""
    try:
        model, history = train(data, params, device=device, init=init, progress=progress,
                               on_epoch=lambda epoch: _check_abort(should_abort))
    except ValueError as err:
        raise JobError(str(err)) from None
    n_pos = int(data.labels.sum())
    info = {
        "train_params": asdict(params),
        "n_particles": n_pos,
        "n_background": len(data) - n_pos,
        "best_epoch": history.best_epoch + 1,
        "val_loss": history.val_loss[history.best_epoch],
        "val_accuracy": history.val_accuracy[history.best_epoch],
        "fine_tuned": init is not None,
        **about,
    }
    save_model(model, output, info)
    if params.fom_micrographs > 0:  # the figure of merit of the new network (deeppicker_relion.training.calibrate)
        from ..model import load_model
        from ..training.calibrate import fit_model_fom

        _check_abort(should_abort)
        picker, _ = load_model(output, device)  # as picking loads it: with its centring network
        info["fom"] = fit_model_fom(picker, params.fom_micrographs, cache, progress).to_metadata()
        save_model(model, output, info)
    return model, history, info
