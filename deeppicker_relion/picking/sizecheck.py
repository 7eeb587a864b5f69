"""Size check: does the model find the particles at the size the user gave?

The network sees a window of exactly the given particle diameter. Blob-like particles are still
found when the diameter is 20-30 % off, but a diameter much too large (say RELION's extraction box,
1.5-2 x the particle) loses most picks, and a hollow particle given too small a diameter (the inner
ring of apoferritin) loses all of them. Before picking, a few sample micrographs are scored at the
given size and at the size x / / ``STEP`` (each on its central ``SAMPLE_BOXES`` x ``SAMPLE_BOXES``
given boxes); the number of confident candidates (score >= ``CHECK_SCORE``) is compared:

- a size ``STEP`` x larger that yields at least ``GAIN`` x as many confident candidates wins;
- else a size ``STEP`` x smaller wins on the same terms, provided the larger size does not also
  yield more (beyond ``MIN_PER_MICROGRAPH`` per micrograph): a diameter that is already too small
  breaks particles into fragments, which raises the count at any smaller size; only a size past
  the particle's makes the count fall both ways;
- the winner is checked the same way in the same direction, up to ``MAX_STEPS`` times.

At least ``MIN_PER_MICROGRAPH`` confident candidates per sample micrograph are needed to move, so
empty micrographs never move the size, and no box under ``MIN_BOX_PX`` is tried. The size found
is a factor on the given one; coordinates stay in pixels of the original micrographs. Measured
(``benchmarks/accuracy.py --only sizecheck``, MODEL_CARD.md "Size check"): it finds the size of
held-out particles given 0.73 x (apoferritin's inner ring), 1.5 x or 2 x their diameter more
often than not, but it also moves some right sizes of single random-molecule micrographs of low
SNR, where a handful of candidates decide.

Modes: ``adopt`` picks at the size found; ``warn`` logs it and picks at the given size; ``auto``
(the default) repeats the search upwards only, demanding ``STRONG_PER_MICROGRAPH`` confident
candidates per sample micrograph at every step, and picks at the larger size that search finds if
the model is a cross-molecule one (calibrated by the general recipe: ``model.augment_calibration``;
a model trained on a user's micrographs is calibrated on fewer and only warns); otherwise it warns
as ``warn`` does; ``off`` skips the check. Upwards only, because on selection micrographs every
wrong move was to a smaller size (a box too small sees fragments of particles and noise as
particles; one too large rarely yields more), while a larger size was found only where the given
one was too small (a hollow particle's ring).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import DeepPickerError, JobError
from ..io.atomic import write_text_atomic
from ..io.mrc import Micrograph, read_micrograph
from ..model import DeepPickerNet
from .candidates import PickParams, find_candidates
from .pipeline import ParticleSize, choose_pixel_size, sample_order
from .preprocess import box_scale, preprocess, resampled_shape
from .scoring import score_map_dense

log = logging.getLogger(__name__)

MODES = ("auto", "adopt", "warn", "off")
DEFAULT_MODE = "auto"  # adopt moves right sizes of single low-SNR micrographs down (MODEL_CARD.md "Size check")
CHECK_SCORE = 0.5  # a confident candidate
STEP = 1.4  # sizes tried: given x STEP**k
GAIN = 2.0  # a size must yield this many times the confident candidates to win
MIN_PER_MICROGRAPH = 3  # ... and at least this many per sample micrograph
STRONG_PER_MICROGRAPH = 15  # ... for the upward search whose size "auto" adopts
MAX_STEPS = 3  # x 0.36 .. x 2.7 at most
SAMPLES = 3  # micrographs: first, middle, last (then others, if unreadable)
MIN_BOX_PX = 20.0  # smallest box tried (original pixels; the shipped model saw particles of 24-160 px): on
# smaller boxes the upsampled noise of empty micrographs yields confident candidates
MAX_RESAMPLED_PX = 4096 * 4096  # largest resampled micrograph tried
# Each sample micrograph is scored on its central part at most SAMPLE_BOXES given boxes on a side:
# the counts above were chosen on micrographs 11-18 boxes on a side (MODEL_CARD.md), and on a
# large micrograph of small particles noise alone would reach them more easily; it also keeps the
# check's cost bounded (a 4k micrograph of a 60 px particle is scored on 1080 x 1080 px).
SAMPLE_BOXES = 18.0
RECORD = "size_check.json"


@dataclass
class SizeCheck:
    """Outcome: ``factor`` on the given size (1.0: keep it); ``strong_factor``: the same search
    demanding ``STRONG_PER_MICROGRAPH`` confident candidates per micrograph (what ``auto``
    adopts); ``counts``: confident candidates on the sample micrographs at each factor tried;
    ``samples``: their paths."""

    factor: float
    counts: dict[float, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    strong_factor: float = 1.0

    def describe(self, size: ParticleSize, factor: float | None = None) -> str:
        """One line for the log: what was tried and what it found (``factor``: the one to name,
        default ``self.factor``)."""
        factor = self.factor if factor is None else factor
        tried = ", ".join(f"x {f:.2f}: {n}" for f, n in sorted(self.counts.items()))
        given = _describe_size(size)
        if factor == 1.0:
            verdict = f"the given {given} gives the most"
        else:
            verdict = f"{_describe_size(scaled_size(size, factor))} (given {given} x {factor:.2f}) gives the most"
        return (f"size check on {len(self.samples)} micrographs, candidates scoring >= {CHECK_SCORE:g} at the given "
                f"size x factor: {tried}; {verdict}")


def _describe_size(size: ParticleSize) -> str:
    return f"diameter {size.diameter_A:.4g} A" if size.diameter_A is not None else f"box {size.box_px:.4g} px"


def scaled_size(size: ParticleSize, factor: float) -> ParticleSize:
    """The same kind of size (diameter in Angstrom or box in pixels) times ``factor``."""
    if size.diameter_A is not None:
        return ParticleSize(diameter_A=size.diameter_A * factor)
    return ParticleSize(box_px=float(size.box_px) * factor)


def sample_micrographs(micrographs: pd.DataFrame, n: int = SAMPLES) -> list[tuple[Micrograph, float | None]]:
    """Up to ``n`` readable micrographs of a list (first, middle, last, then the others in order)
    with their pixel size (the list's ``pixel_size`` column wins over the header)."""
    order = sample_order(len(micrographs))
    out: list[tuple[Micrograph, float | None]] = []
    for index in order:
        if len(out) >= n:
            break
        row = micrographs.iloc[index]
        try:
            mic = read_micrograph(row["path"])
        except DeepPickerError:
            continue
        out.append((mic, choose_pixel_size(row.get("pixel_size"), mic.pixel_size)))
    return out


def central_part(mic: Micrograph, side_px: float) -> Micrograph:
    """The central ``side_px`` x ``side_px`` pixels of a micrograph (all of it along an axis that is
    shorter), as a micrograph with the same pixel size and path."""
    rows, cols = mic.shape
    h, w = min(rows, int(round(side_px))), min(cols, int(round(side_px)))
    r0, c0 = (rows - h) // 2, (cols - w) // 2
    return Micrograph(mic.data[r0 : r0 + h, c0 : c0 + w], mic.pixel_size, mic.path)


def count_confident(model: DeepPickerNet, mic: Micrograph, box_px: float, params: PickParams = PickParams(),
                    device: str | torch.device = "cpu") -> int:
    """Candidates scoring >= CHECK_SCORE on one micrograph picked with a ``box_px`` box (pixels)."""
    check = PickParams(threshold=CHECK_SCORE, floor=CHECK_SCORE, clean=params.clean,
                       dark_sigma=params.dark_sigma, outlier_fraction=params.outlier_fraction,
                       peak_window=params.peak_window)
    pre = preprocess(mic.data, box_px, model.normalisation)
    cands = find_candidates(score_map_dense(model, pre.image, device=device), pre, check)
    return int((cands["score"] >= CHECK_SCORE).sum())


def check_size(micrographs: pd.DataFrame, model: DeepPickerNet, size: ParticleSize,
               params: PickParams = PickParams(), device: str | torch.device = "cpu",
               samples: int = SAMPLES) -> SizeCheck:
    """Search the particle size on up to ``samples`` micrographs of the list (module docstring);
    returns factor 1.0 when no micrograph can be read or no size has a pixel size to work with."""
    mics = sample_micrographs(micrographs, samples)
    try:
        boxes = [size.in_pixels(px) for _, px in mics]
    except DeepPickerError:
        return SizeCheck(1.0)
    fits = [box <= min(m.shape) for (m, _), box in zip(mics, boxes)]
    mics = [(central_part(m, SAMPLE_BOXES * box), px) for (m, px), box, ok in zip(mics, boxes, fits) if ok]
    boxes = [box for box, ok in zip(boxes, fits) if ok]
    result = SizeCheck(1.0, samples=[m.path for m, _ in mics])
    if not mics:
        return result

    def count(factor: float) -> int | None:
        key = round(factor, 6)
        if key not in result.counts:
            total = 0
            for (mic, _), box in zip(mics, boxes):
                b = box * factor
                out_of_range = b > min(mic.shape) / 2 or b < MIN_BOX_PX  # the given size is always scored
                too_large = np.prod(resampled_shape(mic.shape, box_scale(b))) > MAX_RESAMPLED_PX
                if key != 1.0 and (out_of_range or too_large):
                    return None
                total += count_confident(model, mic, b, params, device)
            result.counts[key] = total
        return result.counts[key]

    result.factor = _search(count, MIN_PER_MICROGRAPH * len(mics))
    result.strong_factor = _search(count, STRONG_PER_MICROGRAPH * len(mics), downwards=False)
    return result


def _search(count, need: int, downwards: bool = True) -> float:
    """The search of the module docstring over ``count(factor)`` (confident candidates of all
    sample micrographs at given size x factor; None where that size cannot be tried), moving only
    to sizes with at least ``need`` of them; ``downwards=False``: only to larger sizes."""
    factor, current, direction = 1.0, count(1.0), 0
    for _ in range(MAX_STEPS):
        up = count(factor * STEP)
        if direction >= 0 and up is not None and up >= GAIN * current and up >= need:
            factor, current, direction = factor * STEP, up, 1
            continue
        if direction <= 0 and downwards:
            larger_gains = up is not None and up > max(current, need)
            # a smaller size cannot win then: not scored (the costliest size of the check)
            down = None if larger_gains else count(factor / STEP)
            if down is not None and down >= GAIN * current and down >= need and not larger_gains:
                factor, current, direction = factor / STEP, down, -1
                continue
        break
    return round(factor, 6)


def cross_molecule(model: DeepPickerNet | None) -> bool:
    """Whether ``model`` was calibrated across molecules by the general recipe (the shipped model
    and others made by training/make_general_model.py: they carry a calibration per count of
    test-time copies), whose size check ``auto`` trusts."""
    return bool(getattr(model, "augment_calibration", None))


def factor_to_use(check: SizeCheck, mode: str, model: DeepPickerNet | None) -> float:
    """The factor a job in ``mode`` picks at (module docstring)."""
    if mode == "adopt":
        return check.factor
    if mode == "auto" and cross_molecule(model):
        return check.strong_factor
    return 1.0


def record_path(outdir: Path) -> Path:
    return Path(outdir) / RECORD


def write_record(outdir: Path, given: ParticleSize, check: SizeCheck, mode: str, used: float) -> None:
    """``OUTDIR/size_check.json``: the given size, the factor picking used, what was measured
    (``deeppicker pick --rethreshold`` reads the factor back)."""
    record = {"given": {"diameter_A": given.diameter_A, "box_px": given.box_px}, "mode": mode,
              "factor_found": check.factor, "factor_strong": check.strong_factor, "factor_used": used,
              "check_score": CHECK_SCORE, "counts": {f"{f:g}": n for f, n in sorted(check.counts.items())},
              "samples": check.samples}
    write_text_atomic(record_path(outdir), json.dumps(record, indent=1) + "\n")


def _read_record(outdir: Path, given: ParticleSize) -> dict | None:
    """The record of a job in ``outdir`` if it was made for this given size."""
    try:
        record = json.loads(record_path(outdir).read_text())
        same = record["given"] == {"diameter_A": given.diameter_A, "box_px": given.box_px}
        float(record["factor_used"]), float(record["factor_found"])
        return record if same else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recorded_factor(outdir: Path, given: ParticleSize) -> float:
    """The factor a job in ``outdir`` picked with for this given size (1.0 if none is recorded,
    or if it was recorded for another size)."""
    record = _read_record(outdir, given)
    return float(record["factor_used"]) if record else 1.0


def apply_size_check(micrographs: pd.DataFrame, model: DeepPickerNet, size: ParticleSize, mode: str,
                     outdir: Path | None = None, params: PickParams = PickParams(),
                     device: str | torch.device = "cpu", reuse: bool = False,
                     picked_before: int = 0) -> tuple[ParticleSize, str | None]:
    """Run the size check in ``mode`` (module docstring: ``auto``, ``adopt``, ``warn`` or
    ``off``) and record it in ``outdir``. Returns the size to pick at and a note for the report
    (None when the check is off). ``reuse``: a job resumed in ``outdir`` takes the size its record
    holds for the same given size and mode (so that every micrograph of a job, and every shard, is
    picked at one size), else the check runs again. ``picked_before``: micrographs of this job
    already picked; if the size to pick at differs from the one their record holds (the given size
    where there is no record: picked with the check off), raises :class:`JobError` (the job would
    mix two sizes)."""
    if mode not in MODES:
        raise JobError(f"size check {mode!r}: choose one of {', '.join(MODES)}")
    record = _read_record(outdir, size) if outdir is not None else None
    if mode == "off" or len(micrographs) == 0:
        _refuse_mixing(record, 1.0, picked_before, outdir, mode)
        return size, None
    if reuse and record is not None and record.get("mode") == mode:
        counts = {float(f): int(n) for f, n in record.get("counts", {}).items()}
        check = SizeCheck(float(record["factor_found"]), counts, list(record.get("samples", [])),
                          float(record.get("factor_strong", 1.0)))
        used = float(record["factor_used"])
        log.info("size check: taken from %s (this job's earlier run)", record_path(outdir))
    else:
        check = check_size(micrographs, model, size, params, device)
        used = factor_to_use(check, mode, model)
        _refuse_mixing(record, used, picked_before, outdir, mode)
        if outdir is not None:
            write_record(outdir, size, check, mode, used)
    if used != 1.0:
        line = check.describe(size, used)
        log.warning("%s: picking at that size (size check %r)", line, mode)
        return scaled_size(size, used), line + "; adopted"
    line = check.describe(size)
    if check.factor == 1.0:
        log.info("%s", line)
        return size, line
    if mode == "auto":
        if not cross_molecule(model):
            why = "only a cross-molecule model's size is adopted"
        elif check.factor < 1.0:
            why = "only a larger size is adopted"
        else:
            why = "too few confident candidates to adopt it"
        log.warning("%s: check the particle size; picking at the given one (size check 'auto': %s; 'adopt' picks "
                    "at the size found)", line, why)
        return size, line + f"; not adopted (size check 'auto': {why})"
    log.warning("%s: check the particle size; picking at the given one (size check 'warn'; 'adopt' picks at "
                "the size found)", line)
    return size, line + "; not adopted (size check 'warn')"


def _refuse_mixing(record: dict | None, factor: float, picked_before: int, outdir: Path | None, mode: str) -> None:
    """Raise if micrographs were picked before at another size than ``factor`` x the given one
    (no record: at the given size, as with the check off)."""
    before = float(record["factor_used"]) if record is not None else 1.0
    if picked_before <= 0 or abs(before - factor) < 1e-6:
        return
    how = f"size check {record.get('mode')!r}" if record is not None else "no size check recorded"
    raise JobError(
        f"{picked_before} micrographs here were picked at the given size x {before:.2f} ({how}); size check "
        f"{mode!r} would pick the others at x {factor:.2f}: pick them all again (--overwrite; in RELION, a new "
        "job) or use another output folder", record_path(outdir) if outdir is not None else None)
