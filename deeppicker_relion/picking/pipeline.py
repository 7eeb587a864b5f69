"""Per-micrograph processing: read, preprocess, score, find candidates; with read-ahead.

Reading and preprocessing (file I/O and FFTs, which release the GIL) run in a background thread
a bounded number of micrographs ahead of scoring, so memory stays flat in the number of
micrographs.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

import pandas as pd
import torch

from .centring import attached_centring
from ..errors import DeepPickerError, JobError, MicrographError
from ..io.mrc import Micrograph, read_header, read_micrograph
from ..model import DeepPickerNet
from .fom import IDENTITY, calibrate_candidates
from .candidates import PickParams, find_candidates, select_picks
from .preprocess import DEFAULT_NORMALISATION, Preprocessed, preprocess
from .scoring import DEFAULT_STEP, ScoreMap, score_map_dense, score_map_patches


@dataclass
class ParticleSize:
    """Particle size: a diameter in Angstrom (needs the pixel size) or a box in pixels.

    The box (the 64 px network input, the peak window and the match radius are fractions of it)
    equals the particle diameter.
    """

    diameter_A: float | None = None
    box_px: float | None = None

    def __post_init__(self) -> None:
        if (self.diameter_A is None) == (self.box_px is None):
            raise JobError("give the particle size either as a diameter in Angstrom or as a box in pixels (not both)")
        value = self.diameter_A if self.diameter_A is not None else self.box_px
        if not (value is not None and math.isfinite(value) and value > 0):
            raise JobError(f"particle size must be a positive number (got {value})")

    def in_pixels(self, pixel_size: float | None, where: str = "") -> float:
        """Box in pixels of a micrograph with ``pixel_size`` Angstrom per pixel."""
        if self.box_px is not None:
            return float(self.box_px)
        if pixel_size is None or not (pixel_size > 0) or math.isnan(pixel_size):
            raise MicrographError(
                "no pixel size (not in the STAR's data_optics nor in the MRC header); give --angpix "
                "or the box in pixels", where or None
            )
        return float(self.diameter_A) / float(pixel_size)


def choose_pixel_size(given, header: float | None) -> float | None:
    """The pixel size to use: ``given`` (the micrograph list's column or the user's, in Angstrom)
    when it is a positive number, else the MRC header's (None if neither)."""
    try:
        value = float(given) if given is not None else math.nan
    except (TypeError, ValueError):
        value = math.nan
    return value if math.isfinite(value) and value > 0 else header


def sample_order(n: int) -> list[int]:
    """Rows of an ``n``-micrograph list to sample, in order: first, middle, last, then the others."""
    return list(dict.fromkeys([0, n // 2, n - 1, *range(n)])) if n > 0 else []


def check_particle_size(micrographs: pd.DataFrame, size: ParticleSize, samples: int = 3) -> None:
    """Job-level checks of the particle size before any micrograph is picked, from the headers of
    up to ``samples`` readable micrographs (first, middle, last, then others): raises
    :class:`JobError` when NONE of them has a pixel size (STAR column ``pixel_size`` or MRC header)
    although the size is a diameter in Angstrom, or when the box exceeds ALL of them. One odd
    micrograph is left to the per-micrograph checks of :func:`prepare` (skipped, not fatal).
    Unreadable micrographs are not sampled (they fail on their own later)."""
    n = len(micrographs)
    if n == 0:
        return
    order = sample_order(n)
    seen: list[tuple[str, tuple[int, int], float | None]] = []
    for index in order[: max(samples, 1) + 7]:
        row = micrographs.iloc[index]
        try:
            shape, header_px = read_header(row["path"])
        except DeepPickerError:
            continue
        px = choose_pixel_size(row.get("pixel_size"), header_px)
        seen.append((str(row["path"]), shape, px))
        if len(seen) >= samples:
            break
    if not seen:
        return
    path, shape, _ = seen[0]
    if size.box_px is None and all(px is None for _, _, px in seen):
        raise JobError(
            "no pixel size: not in the micrographs STAR (data_optics or rlnMicrographPixelSize), not given, "
            "and the MRC header holds 0; give the pixel size (--angpix) or the particle box in pixels (--box)",
            path,
        )
    boxes = [(size.in_pixels(px, p), shp, px) for p, shp, px in seen if px is not None or size.box_px is not None]
    if boxes and all(box > min(shp) for box, shp, _ in boxes):
        box, shp, px = boxes[0]
        what = f"{size.diameter_A:g} A = {box:.0f} px at {px:g} A/px" if size.diameter_A is not None else f"{box:.0f} px"
        raise JobError(
            f"the particle box ({what}) is larger than the micrograph ({shp[1]} x {shp[0]} px); check the "
            "particle diameter and the pixel size",
            path,
        )


@dataclass
class Prepared:
    """A micrograph read and preprocessed, ready to score."""

    name: str
    micrograph: Micrograph
    pre: Preprocessed
    box_px: float
    pixel_size: float | None
    seconds: float


@dataclass
class MicrographResult:
    """Candidates (figure of merit down to ``PickParams.save_floor``; attrs: the micrograph's
    features and expected number of particles, :func:`.fom.calibrate_candidates`) and picks of one
    micrograph. ``score`` is the figure of merit. Coordinates: original pixels."""

    name: str
    candidates: pd.DataFrame
    picks: pd.DataFrame
    shape: tuple[int, int]
    pixel_size: float | None
    box_px: float
    seconds: float
    score_map: ScoreMap | None = None
    pre: Preprocessed | None = None


def prepare(
    name: str, path: str, size: ParticleSize, pixel_size: float | None = None, normalisation: str = DEFAULT_NORMALISATION
) -> Prepared:
    """Read and preprocess one micrograph. ``pixel_size`` (from the STAR or the user) wins over the
    MRC header; ``normalisation`` must be the scoring model's (``model.normalisation``). Raises
    :class:`MicrographError` for any problem with this micrograph."""
    start = time.perf_counter()
    mic = read_micrograph(path)
    px = choose_pixel_size(pixel_size, mic.pixel_size)
    box = size.in_pixels(px, path)
    if box > min(mic.shape):
        raise MicrographError(
            f"particle box ({box:.0f} px) is larger than the micrograph ({mic.shape[1]} x {mic.shape[0]} px); "
            "check the diameter and the pixel size",
            path,
        )
    try:
        pre = preprocess(mic.data, box, normalisation)
    except ValueError as err:
        raise MicrographError(str(err), path) from None
    return Prepared(name, mic, pre, box, px, time.perf_counter() - start)


def pick_prepared(
    prep: Prepared,
    model: DeepPickerNet,
    params: PickParams = PickParams(),
    device: str | torch.device = "cpu",
    step: int = DEFAULT_STEP,
    keep_maps: bool = False,
    patch_by_patch: bool = False,
    score_map: ScoreMap | None = None,
) -> MicrographResult:
    """Score a prepared micrograph and pick it. ``patch_by_patch`` uses the reference sliding
    window instead of the dense pass (same scores, for benchmarks). ``score_map``: its map when
    already scored (several micrographs per batch on a GPU, :func:`.scoring.score_ahead`)."""
    start = time.perf_counter()
    scorer = score_map_patches if patch_by_patch else score_map_dense
    smap = score_map if score_map is not None else scorer(model, prep.pre.image, step=step, device=device)
    found = find_candidates(smap, prep.pre, params, attached_centring(model), device)
    calibrated = calibrate_candidates(found, getattr(model, "fom", IDENTITY))
    candidates = calibrated[calibrated["score"] >= params.save_floor].reset_index(drop=True)
    candidates.attrs = calibrated.attrs
    picks = select_picks(candidates, params)
    return MicrographResult(
        prep.name,
        candidates,
        picks,
        prep.micrograph.shape,
        prep.pixel_size,
        prep.box_px,
        prep.seconds + time.perf_counter() - start,
        smap if keep_maps else None,
        prep.pre if keep_maps else None,
    )


def pick_micrograph(
    path: str,
    model: DeepPickerNet,
    size: ParticleSize,
    params: PickParams = PickParams(),
    device: str | torch.device = "cpu",
    pixel_size: float | None = None,
    keep_maps: bool = False,
) -> MicrographResult:
    """Read, preprocess, score and pick one micrograph file."""
    prep = prepare(path, path, size, pixel_size, model.normalisation)
    return pick_prepared(prep, model, params, device, keep_maps=keep_maps)


def prefetch(
    micrographs: pd.DataFrame, size: ParticleSize, ahead: int = 2, normalisation: str = DEFAULT_NORMALISATION,
    workers: int = 1,
) -> Iterator[tuple[pd.Series, Prepared | DeepPickerError]]:
    """Yield (row, Prepared or the error) for each row of a micrograph list, reading up to
    ``ahead`` micrographs in a background thread while the caller scores the current one.
    ``normalisation``: the model's (:func:`prepare`)."""
    rows = [row for _, row in micrographs.iterrows()]
    if not rows:
        return

    def load(row: pd.Series) -> Prepared:
        return prepare(row["name"], row["path"], size, row.get("pixel_size"), normalisation)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # workers > 1: GPU jobs (scoring.read_ahead)
        pending: list[tuple[pd.Series, Future]] = []
        it: Iterable[pd.Series] = iter(rows)
        for row in it:
            pending.append((row, pool.submit(load, row)))
            if len(pending) > ahead:
                break
        while pending:
            row, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load, nxt)))
            try:
                yield row, fut.result()
            except DeepPickerError as err:
                yield row, err
            except (MemoryError, OSError, ValueError) as err:
                yield row, MicrographError(f"{type(err).__name__}: {err}", row["path"])


def resolve_device(gpu: str | None) -> torch.device:
    """``None``/empty -> CPU; ``"0"`` or ``"0,1"`` -> the first listed CUDA device."""
    if gpu is None or str(gpu).strip() == "":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise JobError(f"--gpu {gpu} was given but CUDA is not available (PyTorch {torch.__version__})")
    first = str(gpu).split(",")[0].strip()
    return torch.device(f"cuda:{int(first)}")

