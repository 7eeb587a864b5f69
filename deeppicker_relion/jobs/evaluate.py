"""Evaluating picks against reference picks into an output folder: the job behind
``deeppicker evaluate`` and ``deeppicker demo``.

Writes ``evaluation.csv`` (per micrograph and TOTAL), ``topn_curve.csv`` / ``topn_curve.png``
(precision, recall, F1 keeping the top N = ratio x N_reference picks per micrograph) and, when the
micrographs are given, ``evaluation_picks.png`` (picks against the reference drawn on one
micrograph). When the picks come from a pick job folder, its visual report (``logfile.pdf``) gets
these pages too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import DeepPickerError
from ..metrics import MATCH_RADIUS, evaluate, match, topn_curve
from .figures import display_image, plot_picks_vs_reference, plot_topn_curve
from ..io.atomic import atomic_path
from ..io.micrographs import strip_image_extension
from ..io.mrc import read_micrograph
from .report import add_evaluation_to_report

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What :func:`run_evaluation` computed and wrote."""

    table: pd.DataFrame
    curve: pd.DataFrame
    files: list[Path] = field(default_factory=list)

    @property
    def total(self) -> pd.Series:
        """The TOTAL row of ``table`` (precision, recall, f1, centre_error, counts)."""
        return self.table.iloc[-1]


def run_evaluation(
    picks: dict[str, pd.DataFrame],
    reference: dict[str, pd.DataFrame],
    box_px: float,
    outdir: str | Path,
    radius: float = MATCH_RADIUS,
    micrographs: pd.DataFrame | None = None,
    report_dir: str | Path | None = None,
) -> Evaluation:
    """Evaluate ``picks`` against ``reference`` (both keyed by micrograph name stem; frames with x,
    y[, score] in original pixels) with a match radius of ``radius`` x ``box_px`` and write the
    files listed in the module docstring into ``outdir``.

    ``micrographs`` (a :func:`~deeppicker_relion.io.micrographs.micrograph_list` table): draw the
    picks against the reference on the first micrograph with reference particles. ``report_dir``:
    a pick job folder whose ``logfile.pdf`` gets the evaluation pages.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    table = evaluate(picks, reference, box_px, radius)
    curve = topn_curve(picks, reference, box_px, radius)
    files = [outdir / "evaluation.csv", outdir / "topn_curve.csv", outdir / "topn_curve.png"]
    with atomic_path(files[0]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(files[1]) as tmp:
        curve.to_csv(tmp, index=False, float_format="%.4f")
    plot_topn_curve(curve, files[2], title=f"{len(reference)} micrographs, match radius {radius:g} x box")
    drawn = _draw_one(picks, reference, box_px, radius, micrographs, outdir / "evaluation_picks.png")
    if drawn is not None:
        files.append(drawn)
    result = Evaluation(table, curve, files)
    if report_dir is not None:
        pngs = {"report_topn_curve.png": files[2]}
        if drawn is not None:
            pngs["report_evaluation.png"] = drawn
        pdf = add_evaluation_to_report(report_dir, evaluation_text(result, box_px, radius), pngs)
        files.append(pdf)
    return result


def evaluation_text(result: Evaluation, box_px: float, radius: float) -> str:
    """A plain-text summary of an evaluation (totals, the top-N point at N = N_reference, and the
    first micrographs)."""
    t = result.total
    lines = [
        "Evaluation against reference picks",
        f"match: one to one, best score first, within {radius:g} x box = {radius * box_px:.1f} px",
        f"micrographs: {len(result.table) - 1}; reference particles: {int(t.n_reference)}; picks: {int(t.n_picks)}",
        f"precision {t.precision:.3f}  recall {t.recall:.3f}  F1 {t.f1:.3f}  centre error {t.centre_error:.3f} x box",
    ]
    at_one = result.curve.loc[np.isclose(result.curve["ratio"], 1.0)]
    if len(at_one):
        r = at_one.iloc[0]
        lines.append(f"keeping the top N = N_reference picks per micrograph: precision {r.precision:.3f}  "
                     f"recall {r.recall:.3f}  F1 {r.f1:.3f} (ranking quality, independent of the threshold)")
    lines += ["", f"{'micrograph':<40} {'picks':>6} {'ref':>6} {'match':>6} {'prec':>6} {'recall':>6}"]
    for _, r in result.table.iloc[:-1].head(40).iterrows():
        lines.append(f"{str(r.micrograph)[:40]:<40} {int(r.n_picks):>6} {int(r.n_reference):>6} "
                     f"{int(r.true_positives):>6} {r.precision:>6.2f} {r.recall:>6.2f}")
    if len(result.table) > 41:
        lines.append(f"... {len(result.table) - 41} more in evaluation.csv")
    return "\n".join(lines) + "\n"


def _draw_one(picks, reference, box_px, radius, micrographs: pd.DataFrame | None, path: Path) -> Path | None:
    if micrographs is None or not len(micrographs):
        return None
    where = {strip_image_extension(Path(str(n)).name): str(p) for n, p in zip(micrographs["name"], micrographs["path"])}
    for name, ref in reference.items():
        if not len(ref) or name not in where:
            continue
        try:
            mic = read_micrograph(where[name])
        except DeepPickerError as err:
            log.warning("cannot draw %s: %s", name, err)
            continue
        mine = picks.get(name, pd.DataFrame({"x": [], "y": [], "score": []}))
        if "score" in mine.columns:
            mine = mine.sort_values("score", ascending=False, kind="stable", na_position="last")
        mine = mine.reset_index(drop=True)
        matched, _ = match(mine, ref, radius * box_px)
        return plot_picks_vs_reference(
            display_image(mic.data, box_px), mic.shape, box_px, mine, ref, matched, path,
            title=f"{name}: picks against the reference (circle = box {box_px:.0f} px)",
        )
    log.warning("no micrograph with reference particles found to draw the picks on")
    return None


def pick_job_folder(items: Sequence[str | Path]) -> Path | None:
    """The pick job folder the picks come from: ``items`` is one folder holding a
    ``picking_summary*.star``; else None."""
    if len(items) != 1 or not Path(items[0]).is_dir():
        return None
    folder = Path(items[0])
    return folder if any(folder.glob("picking_summary*.star")) else None


def summary_micrographs(folder: str | Path) -> pd.DataFrame | None:
    """The micrographs a pick job folder picked, as a micrograph list (name, path, pixel_size), from
    its picking summaries; only those whose names are paths that exist from the current folder
    (as in a RELION project directory). None when there are none."""
    from ..io.star import read_star

    names: list[str] = []
    for path in sorted(Path(folder).glob("picking_summary*.star")):
        try:
            table = next(iter(read_star(path).values()))
        except (DeepPickerError, StopIteration):
            continue
        if "rlnMicrographName" in table.columns:
            names += [str(n) for n in table["rlnMicrographName"] if Path(str(n)).is_file()]
    if not names:
        return None
    names = list(dict.fromkeys(names))
    return pd.DataFrame({"name": names, "path": names, "pixel_size": np.nan})

