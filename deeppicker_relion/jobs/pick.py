"""Picking a list of micrographs into an output folder: the job the CLI and the RELION External
job both run.

Output layout (RELION's, so that Extract finds the files; the CLI uses it too):

- ``<out>/<micrograph path minus a leading Type/jobNNN/, minus extension>_<pickname>.star``: the
  picks of each micrograph (or ``.box`` / ``.txt`` in those formats);
- ``<out>/candidates/<same stem>.star``: every candidate down to a figure of merit of 0.01 (or the
  threshold, if lower), with its figure of merit and network score, and what the figure of merit
  knows of the micrograph, so picks can be re-thresholded without re-scoring;
- ``<out>/picking_summary[.shard-i-of-n].star``: one row per micrograph (status, picks,
  candidates, seconds, expected particles, expected precision of the picks, flag);
- ``<out>/micrographs_with_particles.star`` (:func:`write_particle_micrographs`): the input
  micrographs STAR less the micrographs flagged empty or mostly ice / carbon / contamination;
- ``<out>/failed_micrographs.star``: micrographs that could not be picked, with the reason.

Every file is written atomically. A micrograph whose coordinate and candidate files both exist is
done: a rerun with ``resume=True`` skips it.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..errors import DeepPickerError, JobError, MicrographError
from ..io.coords import read_coordinates, write_coordinates
from ..io.atomic import remove_stale_temporaries
from ..io.micrographs import relative_output_stem
from ..io.mrc import read_header, read_shape
from ..picking.fom import EMPTY_FOM, expected_precision, micrograph_flag
from ..io.star import first_loop, read_candidate_star, read_coordinate_star, read_star, write_candidate_star, write_star
from ..model import DeepPickerNet
from ..picking.candidates import PickParams, select_picks
from ..picking.scoring import read_ahead, score_ahead
from ..picking.pipeline import MicrographResult, ParticleSize, check_particle_size, choose_pixel_size, pick_prepared, prefetch

log = logging.getLogger(__name__)

EXTENSIONS = {"star": ".star", "box": ".box", "txt": ".txt"}
ABORT_FILE = "RELION_JOB_ABORT_NOW"


class Aborted(Exception):
    """The user asked the job to stop (RELION_JOB_ABORT_NOW)."""


@dataclass
class PickJob:
    """Where and how to write a pick job's outputs."""

    outdir: Path
    size: ParticleSize
    params: PickParams = field(default_factory=PickParams)
    pickname: str = "deeppicker"
    fmt: str = "star"
    resume: bool = True
    shard: tuple[int, int] | None = None
    prefetch: int = 2  # micrographs read and preprocessed ahead of scoring (0 = none)
    augment: int | None = None  # test-time augmentation (1, 2, 4, 8); None: the model's own (scoring.py)

    def coordinate_path(self, name: str) -> Path:
        """Coordinate file of micrograph ``name`` (its RELION path)."""
        return self.outdir / f"{relative_output_stem(name)}_{self.pickname}{EXTENSIONS[self.fmt]}"

    def candidate_path(self, name: str) -> Path:
        """All-candidates file of micrograph ``name``."""
        return self.outdir / "candidates" / f"{relative_output_stem(name)}.star"

    @property
    def summary_path(self) -> Path:
        tag = f".shard-{self.shard[0]}-of-{self.shard[1]}" if self.shard else ""
        return self.outdir / f"picking_summary{tag}.star"

    @property
    def failed_path(self) -> Path:
        tag = f".shard-{self.shard[0]}-of-{self.shard[1]}" if self.shard else ""
        return self.outdir / f"failed_micrographs{tag}.star"

    def is_done(self, name: str) -> bool:
        return self.coordinate_path(name).is_file() and self.candidate_path(name).is_file()


def prepare_output_dir(outdir: Path) -> None:
    """Create ``outdir`` and prove that files can be written there, before any work; raises
    :class:`JobError` naming the folder otherwise (a file in the way, no permission, read-only)."""
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=outdir, prefix=".deeppicker-write-test."):
            pass
    except OSError as err:
        raise JobError(f"cannot write to the output folder ({err.strerror or err})", outdir) from None


def abort_file_poller(outdir: Path) -> Callable[[], bool]:
    """``should_abort`` for :func:`run_pick_job`: true once ``outdir/RELION_JOB_ABORT_NOW`` exists
    (RELION's abort button creates it; every shard and worker process writing there sees it)."""
    path = Path(outdir) / ABORT_FILE
    return path.exists


def shard_rows(micrographs: pd.DataFrame, shard: tuple[int, int] | None) -> pd.DataFrame:
    """The deterministic share ``i`` of ``n`` of a micrograph list (every n-th row from row i)."""
    if shard is None:
        return micrographs
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise JobError(f"--shard {i}/{n}: need 0 <= i < n")
    return micrographs.iloc[i::n]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n); None or empty -> None."""
    if not text:
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise JobError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    shard_rows(pd.DataFrame(), (i, n))
    return i, n


@dataclass
class JobSummary:
    """What a pick job did: one row per micrograph in ``table`` and the failures."""

    table: pd.DataFrame
    failed: pd.DataFrame
    results: list[MicrographResult]

    @property
    def n_picked(self) -> int:
        return int((self.table["status"].isin(["picked", "done before"])).sum()) if len(self.table) else 0

    @property
    def n_particles(self) -> int:
        return int(self.table["n_picks"].sum()) if len(self.table) else 0


def write_outputs(job: PickJob, result: MicrographResult) -> None:
    """Candidates first, then the coordinate file (its presence marks the micrograph done)."""
    write_candidate_star(job.candidate_path(result.name), result.candidates)
    write_coordinates(job.coordinate_path(result.name), result.picks, job.fmt, box_px=int(round(result.box_px)))


def run_pick_job(
    micrographs: pd.DataFrame,
    model: DeepPickerNet,
    job: PickJob,
    device: str = "cpu",
    should_abort: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int, int, float], None] | None = None,
    keep_results: bool = False,
) -> JobSummary:
    """Pick every micrograph of the list (or of this job's shard) into ``job.outdir``.

    One bad micrograph is logged and listed in ``failed_micrographs.star``; the others go on.
    ``should_abort`` is polled between micrographs (raises :class:`Aborted`). ``on_progress(done,
    total, particles, seconds)`` is called after each micrograph.
    """
    mics = shard_rows(micrographs, job.shard)
    prepare_output_dir(job.outdir)
    if job.augment is not None:
        model.augment = int(job.augment)
    for stale in remove_stale_temporaries(job.outdir):
        log.info("removed %s, left by an interrupted run", stale)
    rows: list[dict] = []
    failed: list[dict] = []
    results: list[MicrographResult] = []
    todo = mics
    if job.resume:
        done = mics["name"].map(job.is_done)
        for index, row in mics.loc[done].iterrows():
            name = row["name"]
            try:
                n_picks = _count_picks(job.coordinate_path(name))
                cands = read_candidate_star(job.candidate_path(name))
            except DeepPickerError as err:  # unreadable output of an earlier run: pick it again
                log.warning("picking again: %s", err)
                done[index] = False
                continue
            shape = _shape_or_nan(row["path"])
            rows.append(_row(name, "done before", n_picks, len(cands), 0.0, math.nan, shape, row.get("pixel_size", math.nan),
                             **_merit(cands, cands["score"].to_numpy(float)[:n_picks])))
        todo = mics.loc[~done]
        if done.any():
            log.info("%d of %d micrographs were picked before; picking the other %d", int(done.sum()), len(mics), len(todo))
    if len(todo):
        check_particle_size(todo, job.size)
    total, particles, start = len(mics), sum(r["n_picks"] for r in rows), time.perf_counter()
    ahead, readers = read_ahead(device, job.prefetch)  # GPU: more read ahead, several micrographs per batch
    stream = prefetch(todo, job.size, ahead=ahead, normalisation=model.normalisation, workers=readers)
    for row, prepared, score_map in score_ahead(stream, model, device):
        if should_abort is not None and should_abort():
            raise Aborted("abort requested")
        name = row["name"]
        if isinstance(prepared, DeepPickerError):
            log.error("skipped: %s", prepared)
            failed.append({"rlnMicrographName": name, "reason": str(prepared)})
            rows.append(_row(name, "failed", 0, 0, 0.0, math.nan))
        else:
            try:
                result = pick_prepared(prepared, model, job.params, device, keep_maps=keep_results, score_map=score_map)
                _write_or_fail(write_outputs, job, result)
            except MicrographError as err:
                log.error("skipped: %s", err)
                failed.append({"rlnMicrographName": name, "reason": str(err)})
                rows.append(_row(name, "failed", 0, 0, 0.0, math.nan))
                continue
            particles += len(result.picks)
            rows.append(
                _row(name, "picked", len(result.picks), len(result.candidates), result.seconds, result.box_px,
                     result.shape, result.pixel_size, **_merit(result.candidates, result.picks["score"].to_numpy(float)))
            )
            if keep_results:
                results.append(result)
            log.debug("%s: %d picks (%d candidates) in %.2f s", name, len(result.picks), len(result.candidates), result.seconds)
        if on_progress is not None:
            on_progress(len(rows), total, particles, time.perf_counter() - start)
    summary = JobSummary(pd.DataFrame(rows, columns=_COLUMNS), pd.DataFrame(failed, columns=["rlnMicrographName", "reason"]), results)
    _write_or_fail(write_star, job.summary_path, {"picking_summary": summary.table})
    if failed:
        # starfile cannot read back a quoted value that holds a quote ("Couldn't read ..."): drop them
        reasons = summary.failed["reason"].astype(str).str.replace("'", "", regex=False).str.replace('"', "", regex=False)
        _write_or_fail(write_star, job.failed_path, {"failed_micrographs": summary.failed.assign(reason=reasons)})
    elif job.failed_path.exists():
        job.failed_path.unlink()
    return summary


def _write_or_fail(write: Callable[..., None], *args) -> None:
    """Run a writer; a full disk or a vanished folder fails the job with one line (JobError)."""
    try:
        write(*args)
    except OSError as err:
        raise JobError(f"cannot write output ({err.strerror or err})", err.filename or "") from None


_COLUMNS = ["rlnMicrographName", "status", "n_picks", "n_candidates", "seconds", "box_px", "rows", "cols", "pixel_size",
            "expected_particles", "expected_precision", "flag"]


def _row(
    name: str,
    status: str,
    n_picks: int,
    n_candidates: int,
    seconds: float,
    box_px: float,
    shape: tuple[int, int] = (0, 0),
    pixel_size: float | None = None,
    expected_particles: float = math.nan,
    expected_precision: float = math.nan,
    flag: str = "failed",
) -> dict:
    px = math.nan if pixel_size is None else float(pixel_size)
    values = (name, status, int(n_picks), int(n_candidates), float(seconds), float(box_px), int(shape[0]), int(shape[1]), px,
              float(expected_particles), float(expected_precision), str(flag))
    return dict(zip(_COLUMNS, values))


def _merit(candidates: pd.DataFrame, picks_fom: np.ndarray) -> dict:
    """The summary's figure-of-merit columns of one micrograph: its expected number of particles
    (the sum of all its candidates' figures of merit, recorded when it was picked), the expected
    precision of its picks (their mean figure of merit) and its flag (:func:`.fom.micrograph_flag`,
    from the expected particles among its candidates of figure of merit >= 0.3)."""
    attrs = candidates.attrs or {}
    fom = candidates["score"].to_numpy(float)
    expected = float(attrs.get("expected_particles", fom.sum()))
    confident = float(attrs.get("confident_particles", fom[fom >= EMPTY_FOM].sum()))
    flag = micrograph_flag(confident, float(attrs.get("removed_fraction", 0.0)), float(attrs.get("dark_fraction", 0.0)))
    return dict(expected_particles=expected, expected_precision=expected_precision(picks_fom), flag=flag)


def _count_picks(path: Path) -> int:
    """Number of rows of a coordinate file; STAR files of this package are counted without a full
    parse (a rerun of a 50,000-micrograph job reads 100,000 of them)."""
    if path.suffix != ".star":
        return len(read_coordinates(path))
    try:
        return len(first_loop(path)[1])
    except ValueError:  # not laid out as this package writes it, or not text
        return len(read_coordinate_star(path))
    except OSError as err:
        raise JobError(f"cannot read ({getattr(err, 'strerror', None) or err})", path) from None


def _shape_or_nan(path: str) -> tuple[int, int]:
    try:
        return read_shape(path)
    except DeepPickerError:
        return (0, 0)


def collect_picks(summary: pd.DataFrame, job: PickJob) -> dict[str, pd.DataFrame]:
    """Read back the picks of every successfully picked micrograph of a summary table."""
    ok = summary[summary["status"] != "failed"]
    return {name: read_coordinates(job.coordinate_path(name)) for name in ok["rlnMicrographName"]}


def write_cryosparc(summary: pd.DataFrame, job: PickJob, path: Path) -> int:
    """Write all picks of a job as a CryoSPARC ``.cs`` file; returns the number of particles."""
    from ..io.cryosparc import write_particles_cs

    picks = collect_picks(summary, job)
    ok = summary.set_index("rlnMicrographName")
    shapes = {n: (int(ok.at[n, "rows"]), int(ok.at[n, "cols"])) for n in picks}
    pixel_sizes = {n: float(ok.at[n, "pixel_size"]) for n in picks}
    return write_particles_cs(path, picks, shapes, pixel_sizes)


def rethreshold(micrographs: pd.DataFrame, job: PickJob) -> JobSummary:
    """Rewrite every micrograph's coordinate file from its saved candidates with the job's
    threshold and top-N, without scoring again: the picks are exactly the saved candidates whose
    figure of merit is at least the threshold (as picking keeps them). Micrographs without
    candidates, or with candidates saved by a version without the figure of merit, are listed as
    failed. Candidates are saved down to a figure of merit of 0.01 (or the threshold picked with,
    if lower): a lower threshold here cannot add picks below that, and the log says so."""
    rows, failed = [], []
    lowest = math.inf  # lowest saved candidate figure of merit
    for _, mic in shard_rows(micrographs, job.shard).iterrows():
        name = mic["name"]
        path = job.candidate_path(name)
        if not path.is_file():
            failed.append({"rlnMicrographName": name, "reason": f"{path}: no saved candidates (pick it first)"})
            rows.append(_row(name, "failed", 0, 0, 0.0, math.nan))
            continue
        candidates = read_candidate_star(path)
        if "expected_particles" not in candidates.attrs:
            failed.append({"rlnMicrographName": name, "reason": f"{path}: saved by an earlier version without the figure "
                           "of merit: pick it again (--overwrite, or a new RELION job)"})
            rows.append(_row(name, "failed", 0, 0, 0.0, math.nan))
            continue
        if len(candidates):
            lowest = min(lowest, float(candidates["score"].min()))
        shape, box_px, pixel_size = _geometry(mic, job)
        picks = select_picks(candidates, job.params)
        box = job.size.box_px if job.size.box_px is not None else 0
        write_coordinates(job.coordinate_path(name), picks, job.fmt, box_px=int(round(box)) or 64)
        rows.append(_row(name, "picked", len(picks), len(candidates), 0.0, box_px, shape, pixel_size,
                         **_merit(candidates, picks["score"].to_numpy(float))))
    saved_floor = PickParams().save_floor
    if job.params.threshold < saved_floor <= lowest < math.inf:
        log.warning("re-thresholding below %g adds no picks: the candidates were saved down to a figure of merit of "
                    "%g (lowest saved %.3g); to pick below it, score them again with the new threshold "
                    "(deeppicker pick: --overwrite without --rethreshold; RELION: a new job)",
                    saved_floor, saved_floor, lowest)
    summary = JobSummary(pd.DataFrame(rows, columns=_COLUMNS), pd.DataFrame(failed, columns=["rlnMicrographName", "reason"]), [])
    write_star(job.summary_path, {"picking_summary": summary.table})
    if failed:
        reasons = summary.failed["reason"].astype(str).str.replace("'", "", regex=False).str.replace('"', "", regex=False)
        write_star(job.failed_path, {"failed_micrographs": summary.failed.assign(reason=reasons)})
    return summary


PARTICLE_MICROGRAPHS = "micrographs_with_particles.star"


def flag_counts(table: pd.DataFrame) -> dict[str, int]:
    """How many micrographs of a summary table carry each flag (failed micrographs not counted)."""
    ok = table[table["status"] != "failed"] if len(table) else table
    if "flag" not in ok.columns:
        return {}
    return {str(k): int(v) for k, v in ok["flag"].astype(str).value_counts().items()}


def flags_message(table: pd.DataFrame, node: str, n_kept: int) -> str:
    """One line for the log: how many micrographs were flagged, and why, and the node that lists
    the others."""
    from ..picking.fom import EMPTY_EXPECTED, EMPTY_FOM, FLAG_EMPTY, FLAG_REMOVED, REMOVED_MOSTLY

    counts = flag_counts(table)
    n_empty, n_removed = counts.get(FLAG_EMPTY, 0), counts.get(FLAG_REMOVED, 0)
    return (f"{n_empty + n_removed} micrographs flagged: {n_empty} look empty (fewer than {EMPTY_EXPECTED:g} particles "
            f"expected among candidates of figure of merit >= {EMPTY_FOM:g}), {n_removed} mostly ice, carbon or contamination (over {REMOVED_MOSTLY:.0%} removed); "
            f"{node} lists the {n_kept} that hold particles (give it to Extract to leave the others out)")


def write_particle_micrographs(in_star: str | Path, table: pd.DataFrame, path: str | Path) -> int:
    """Write ``path``: the micrographs STAR ``in_star`` (every block kept, optics included) with only
    the micrographs whose flag in the summary ``table`` is "particles" (not empty, not mostly ice /
    carbon / contamination, not failed). Returns the number of micrographs written."""
    from ..picking.fom import FLAG_OK

    blocks = read_star(in_star)
    keep = set(table.loc[(table["status"] != "failed") & (table["flag"].astype(str) == FLAG_OK),
                         "rlnMicrographName"].astype(str))
    out, n = {}, 0
    for key, block in blocks.items():
        if "rlnMicrographName" in block.columns:
            block = block[block["rlnMicrographName"].astype(str).isin(keep)].reset_index(drop=True)
            n += len(block)
        out[key] = block
    write_star(path, out)
    return n


def _geometry(mic: pd.Series, job: PickJob) -> tuple[tuple[int, int], float, float | None]:
    """(shape, box in pixels, pixel size) of a micrograph from its header, as picking saw it; a
    zero shape and NaN box when the header cannot be read."""
    try:
        shape, header_px = read_header(mic["path"])
    except DeepPickerError:
        return (0, 0), math.nan, None
    pixel_size = choose_pixel_size(mic.get("pixel_size"), header_px)
    try:
        return shape, job.size.in_pixels(pixel_size, str(mic["path"])), pixel_size
    except DeepPickerError:
        return shape, math.nan, pixel_size


def read_summary(path: Path) -> pd.DataFrame:
    """A picking summary table written by :func:`run_pick_job`."""
    return next(iter(read_star(path).values()))
