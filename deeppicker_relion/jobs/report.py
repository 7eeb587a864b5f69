"""The visual report of a pick job folder: ``logfile.pdf`` (RELION 4/5 show it on the job's page),
PNGs and a plain-text summary.

Files written into the pick job folder by :func:`write_pick_report`:

- ``report.txt``: what was picked (micrographs, particles, threshold, box, time, failures) and how
  many picks other thresholds would give;
- ``report_micrographs.png``: a few micrographs, low-passed and binned, with a circle of the box
  size at every pick, coloured by score;
- ``report_scores.png``: histogram of ALL saved candidate scores, the threshold, and the number of
  picks each threshold would give;
- ``report_picks_per_micrograph.png``;
- ``logfile.pdf``: all of the above (plus the evaluation pages, see below) in one file.

``deeppicker evaluate --picks <pick job folder>`` adds ``report_evaluation.txt``,
``report_topn_curve.png`` (precision/recall against the number of picks kept) and
``report_evaluation.png`` (picks against the reference on one micrograph) with
:func:`add_evaluation_to_report`; a new pick report removes them (they described older picks).

Cost: reads every micrograph's candidate STAR (scores only, with a fast parser) and only the few
micrographs drawn; never all micrographs.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import DeepPickerError
from .figures import Panel, display_image, picks_at_thresholds, plot_micrographs, plot_picks_per_micrograph
from .figures import plot_scores, plot_topn_curve
from ..io.atomic import atomic_path, write_text_atomic
from ..io.coords import read_coordinates
from ..io.mrc import read_micrograph
from ..io.star import first_loop, read_candidate_star, read_coordinate_star
from ..picking.candidates import select_picks

__all__ = ["write_pick_report", "add_evaluation_to_report", "write_logfile_pdf", "candidate_scores", "plot_topn_curve"]

PDF_NAME = "logfile.pdf"
TEXT_PAGES = ("report.txt", "report_evaluation.txt")
PNG_PAGES = (
    "report_micrographs.png",
    "report_scores.png",
    "report_picks_per_micrograph.png",
    "report_topn_curve.png",
    "report_evaluation.png",
)
EVALUATION_FILES = ("report_evaluation.txt", "report_topn_curve.png", "report_evaluation.png")
OTHER_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def write_pick_report(
    outdir: str | Path,
    summary,
    job,
    micrographs: pd.DataFrame | None = None,
    *,
    n_shown: int = 4,
    notes: Iterable[str] = (),
) -> Path:
    """Write the visual report of a pick job into ``outdir``; returns the path of ``logfile.pdf``.

    ``summary``: the :class:`~deeppicker_relion.jobs.pick.JobSummary` of :func:`run_pick_job` or
    :func:`rethreshold` (its ``table`` lists every micrograph: rlnMicrographName, status, n_picks,
    ...; ``failed`` the reasons). ``job``: the :class:`~deeppicker_relion.jobs.pick.PickJob` (where the
    candidates are, threshold, max picks, particle size). ``micrographs``: the micrograph list of
    :func:`~deeppicker_relion.io.micrographs.micrograph_list` (columns name, path, pixel_size), used
    to find the files of the ``n_shown`` micrographs drawn (evenly spread over the list); without
    it, names are tried as paths. ``notes``: extra lines for the text summary (e.g. the model used).
    Micrographs that cannot be read are left out of the drawing, not an error.
    """
    outdir = Path(outdir)
    table = summary.table.reset_index(drop=True)
    ok = table[table["status"] != "failed"]
    scores = {name: candidate_scores(job.candidate_path(name)) for name in ok["rlnMicrographName"]}
    for name in EVALUATION_FILES:
        (outdir / name).unlink(missing_ok=True)
    text = _summary_text(outdir, table, summary.failed, job, scores, notes)
    write_text_atomic(outdir / "report.txt", text)
    plot_scores(list(scores.values()), outdir / "report_scores.png", job.params.threshold, job.params.floor,
                job.params.max_picks)
    plot_picks_per_micrograph(table, outdir / "report_picks_per_micrograph.png")
    panels = _panels(table, job, micrographs, n_shown)
    plot_micrographs(panels, outdir / "report_micrographs.png", job.params.threshold,
                     title=f"picks at threshold {job.params.threshold:g} (circle = box, colour = score)")
    return write_logfile_pdf(outdir)


def candidate_scores(path: str | Path) -> np.ndarray:
    """The scores (rlnAutopickFigureOfMerit) of a candidates STAR, parsed quickly (the files this
    package writes: one loop); falls back to the full STAR reader for anything else. A missing
    file gives no scores."""
    path = Path(path)
    if not path.is_file():
        return np.zeros(0)
    try:
        columns, rows = first_loop(path)
        col = columns.index("rlnAutopickFigureOfMerit")
        return np.array([float(r[col]) for r in rows], dtype=float)
    except (ValueError, IndexError, OSError):
        try:
            return read_coordinate_star(path)["score"].to_numpy(float)
        except DeepPickerError:
            return np.zeros(0)


def _summary_text(outdir: Path, table: pd.DataFrame, failed: pd.DataFrame, job, scores: dict[str, np.ndarray],
                  notes: Iterable[str]) -> str:
    params = job.params
    ok = table["status"] != "failed"
    n_picks = table.loc[ok, "n_picks"].to_numpy(int)
    before = int((table["status"] == "done before").sum())
    box = pd.to_numeric(table.loc[ok, "box_px"], errors="coerce").dropna()
    px = pd.to_numeric(table.loc[ok, "pixel_size"], errors="coerce").dropna()
    seconds = table.loc[table["status"] == "picked", "seconds"].to_numpy(float)
    seconds = seconds[seconds > 0]
    lines = [
        f"DeepPicker pick job report, {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"folder: {outdir}",
        "",
        f"micrographs: {len(table)} listed, {int(ok.sum())} picked"
        + (f" ({before} of them in an earlier run)" if before else "")
        + f", {len(table) - int(ok.sum())} failed",
        f"particles: {int(n_picks.sum())} at threshold {params.threshold:g}"
        + (f", at most {params.max_picks} per micrograph" if params.max_picks is not None else ""),
    ]
    if len(n_picks):
        lines.append(f"picks per micrograph: mean {n_picks.mean():.1f}, median {np.median(n_picks):.0f}, "
                     f"min {n_picks.min()}, max {n_picks.max()}; {int((n_picks == 0).sum())} micrographs without picks")
    if job.size.diameter_A is not None:
        box_text = f" = box {box.median():.1f} px" if len(box) else ""
        px_text = f" at {px.median():g} A/px" if len(px) else ""
        lines.append(f"particle size: diameter {job.size.diameter_A:g} A{box_text}{px_text} (circles in the figures)")
    else:
        lines.append(f"particle size: box {job.size.box_px:g} px (circles in the figures)")
    n_cand = sum(len(s) for s in scores.values())
    lines.append(f"candidates saved for re-thresholding: {n_cand} with a figure of merit >= {params.save_floor:g} "
                 "(in candidates/)")
    lines += _merit_lines(table)
    if seconds.size:
        lines.append(f"time: {seconds.mean():.2f} s per micrograph (reading, preprocessing, scoring), "
                     f"{seconds.sum():.1f} s in all")
    lines += list(notes)
    t = np.array(OTHER_THRESHOLDS)
    counts = picks_at_thresholds(list(scores.values()), t, params.max_picks)
    lines += ["", "picks other thresholds would give (deeppicker pick ... --rethreshold --threshold T, no re-scoring):",
              "  threshold " + " ".join(f"{v:>6g}" for v in t),
              "  picks     " + " ".join(f"{int(v):>6d}" for v in counts)]
    if len(failed):
        lines += ["", f"failed micrographs ({len(failed)}; all listed in {job.failed_path.name}):"]
        lines += [f"  {r}" for r in failed["reason"].astype(str).head(10)]
        if len(failed) > 10:
            lines.append(f"  ... and {len(failed) - 10} more")
    lines += ["", "files: coordinate files "
              f"<micrograph path>_{job.pickname}.{job.fmt}, candidates/, {job.summary_path.name}, "
              "report.txt, report_*.png, logfile.pdf"]
    return "\n".join(lines) + "\n"


def _merit_lines(table: pd.DataFrame) -> list[str]:
    """What the figure of merit says of the micrographs: expected particles and precision, flags."""
    from ..picking.fom import EMPTY_EXPECTED, EMPTY_FOM, FLAG_EMPTY, FLAG_OK, FLAG_REMOVED, REMOVED_MOSTLY

    ok = table[table["status"] != "failed"]
    if "expected_particles" not in ok.columns or ok.empty:
        return []
    expected = pd.to_numeric(ok["expected_particles"], errors="coerce")
    n_picks = pd.to_numeric(ok["n_picks"], errors="coerce").fillna(0)
    precision = pd.to_numeric(ok["expected_precision"], errors="coerce")
    pooled = float((precision.fillna(0) * n_picks).sum() / n_picks.sum()) if n_picks.sum() else float("nan")
    flags = ok["flag"].astype(str).value_counts()
    lines = [f"figure of merit (rlnAutopickFigureOfMerit: the calibrated probability that a pick is a particle): "
             f"{expected.sum():.0f} particles expected on the micrographs picked; expected precision of the picks "
             f"{pooled:.2f}",
             f"micrographs flagged: {int(flags.get(FLAG_EMPTY, 0))} empty (fewer than {EMPTY_EXPECTED:g} particles "
             f"expected among candidates of figure of merit >= {EMPTY_FOM:g}), {int(flags.get(FLAG_REMOVED, 0))} mostly ice, carbon or contamination (over "
             f"{REMOVED_MOSTLY:.0%} removed); {int(flags.get(FLAG_OK, 0))} hold particles"]
    flagged = ok[ok["flag"].astype(str) != FLAG_OK]
    for _, row in flagged.head(10).iterrows():
        lines.append(f"  {row['rlnMicrographName']}: {row['flag']} ({float(row['expected_particles']):.1f} particles expected)")
    if len(flagged) > 10:
        lines.append(f"  ... and {len(flagged) - 10} more (picking_summary.star, column flag)")
    return lines


def _panels(table: pd.DataFrame, job, micrographs: pd.DataFrame | None, n_shown: int) -> list[Panel]:
    """Up to ``n_shown`` micrographs spread evenly over the successfully picked ones."""
    ok = table[table["status"] != "failed"]
    if ok.empty or n_shown <= 0:
        return []
    where = {}
    if micrographs is not None and len(micrographs):
        pixel_sizes = micrographs["pixel_size"] if "pixel_size" in micrographs else [math.nan] * len(micrographs)
        where = {str(n): (str(p), s) for n, p, s in zip(micrographs["name"], micrographs["path"], pixel_sizes)}
    chosen = np.unique(np.linspace(0, len(ok) - 1, min(n_shown, len(ok))).round().astype(int))
    panels = []
    for _, row in ok.iloc[chosen].iterrows():
        name = str(row["rlnMicrographName"])
        path, pixel_size = where.get(name, (name, math.nan))
        try:
            mic = read_micrograph(path)
            box = float(row["box_px"])
            if not _positive(box):
                given = next((v for v in (pixel_size, row.get("pixel_size"), mic.pixel_size) if _positive(v)), None)
                box = job.size.in_pixels(given, path)
            picks = read_coordinates(job.coordinate_path(name))
            if picks["score"].isna().all() and len(picks):  # .box files hold no scores
                picks = select_picks(read_candidate_star(job.candidate_path(name)), job.params)
        except DeepPickerError:
            continue
        image = display_image(mic.data, box)
        title = f"{Path(name).name}: {len(picks)} picks"
        panels.append(Panel(image, mic.shape, box, picks, title))
        del mic
    return panels


def _positive(value) -> bool:
    try:
        return math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False


def add_evaluation_to_report(folder: str | Path, text: str, pngs: dict[str, Path]) -> Path:
    """Add evaluation pages to a pick job folder's report and rebuild its ``logfile.pdf``.

    ``text``: the evaluation summary (written as ``report_evaluation.txt``); ``pngs``: figures to
    copy in, keyed by their report name (``report_topn_curve.png``, ``report_evaluation.png``).
    """
    folder = Path(folder)
    write_text_atomic(folder / "report_evaluation.txt", text)
    for name, source in pngs.items():
        if name not in EVALUATION_FILES:
            raise ValueError(f"{name} is not an evaluation page of the report")
        with atomic_path(folder / name) as tmp:
            shutil.copyfile(source, tmp)
    return write_logfile_pdf(folder)


def write_logfile_pdf(folder: str | Path) -> Path:
    """(Re)build ``folder/logfile.pdf`` from the report files present in ``folder``: the text
    summaries first, then the figures, in a fixed order."""
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    folder = Path(folder)
    path = folder / PDF_NAME
    with atomic_path(path) as tmp:
        with PdfPages(tmp, metadata={"Title": "DeepPicker report", "Creator": "deeppicker"}) as pdf:
            for name in TEXT_PAGES:
                if (folder / name).is_file():
                    for page in _text_pages((folder / name).read_text()):
                        pdf.savefig(page)
                        plt.close(page)
            for name in PNG_PAGES:
                if (folder / name).is_file():
                    page = _image_page(folder / name)
                    pdf.savefig(page)
                    plt.close(page)
    return path


def _text_pages(text: str, lines_per_page: int = 64) -> Sequence:
    import matplotlib.pyplot as plt

    lines = [ln if len(ln) <= 110 else ln[:107] + "..." for ln in text.splitlines()] or [""]
    pages = []
    for start in range(0, len(lines), lines_per_page):
        fig = plt.figure(figsize=(8.27, 11.69))
        fig.text(0.05, 0.96, "\n".join(lines[start : start + lines_per_page]), family="monospace",
                 fontsize=7.5, va="top", ha="left")
        pages.append(fig)
    return pages


def _image_page(png: Path):
    import matplotlib.pyplot as plt

    image = plt.imread(png)
    h, w = image.shape[:2]
    fig = plt.figure(figsize=(w / 110, h / 110))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image, interpolation="none")
    ax.axis("off")
    return fig
