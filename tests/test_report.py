"""The visual report of a pick job folder, without a model: candidates and picks written by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import blob_micrograph, write_mrc
from pdfcheck import pdf_pages

from deeppicker_relion.jobs.evaluate import pick_job_folder, run_evaluation, summary_micrographs
from deeppicker_relion.jobs.figures import picks_at_thresholds
from deeppicker_relion.io.micrographs import micrograph_list
from deeppicker_relion.io.star import read_coordinate_star, write_coordinate_star, write_star
from deeppicker_relion.jobs.pick import JobSummary, PickJob, _row, write_outputs
from deeppicker_relion.picking.candidates import PickParams, select
from deeppicker_relion.picking.pipeline import MicrographResult, ParticleSize
from deeppicker_relion.jobs.report import EVALUATION_FILES, candidate_scores, write_pick_report

BOX = 32.0


def _job(tmp_path: Path, n: int = 3) -> tuple[PickJob, pd.DataFrame, JobSummary, dict[str, pd.DataFrame]]:
    """A pick job folder as run_pick_job leaves it: n blob micrographs with candidates (true centres
    scored 0.6-1, background 0.05-0.4) and picks at 0.5, one more micrograph that failed."""
    rng = np.random.default_rng(0)
    job = PickJob(outdir=tmp_path / "picks", size=ParticleSize(box_px=BOX), params=PickParams(threshold=0.5))
    rows, truth = [], {}
    for i in range(n):
        image, centres = blob_micrograph(i, box=BOX)
        path = write_mrc(tmp_path / "mics" / f"m{i}.mrc", image)
        background = pd.DataFrame({"x": rng.uniform(0, 340, 30), "y": rng.uniform(0, 300, 30),
                                   "score": rng.uniform(0.05, 0.4, 30)})
        candidates = pd.concat([centres.assign(score=rng.uniform(0.6, 1.0, len(centres))), background])
        candidates = candidates.sort_values("score", ascending=False).reset_index(drop=True)
        result = MicrographResult(str(path), candidates, select(candidates, 0.5), image.shape, None, BOX, 0.2)
        write_outputs(job, result)
        rows.append(_row(str(path), "picked", len(result.picks), len(candidates), 0.2, BOX, image.shape))
        truth[f"m{i}"] = centres
    rows.append(_row(str(tmp_path / "mics" / "gone.mrc"), "failed", 0, 0, 0.0, float("nan")))
    failed = pd.DataFrame({"rlnMicrographName": [rows[-1]["rlnMicrographName"]],
                           "reason": ["gone.mrc: micrograph file not found"]})
    summary = JobSummary(pd.DataFrame(rows), failed, [])
    write_star(job.summary_path, {"picking_summary": summary.table})
    mics = micrograph_list([str(tmp_path / "mics" / f"m{i}.mrc") for i in range(n)])
    return job, mics, summary, truth


def test_pick_report_files_and_pdf(tmp_path: Path) -> None:
    job, mics, summary, _ = _job(tmp_path)
    pdf = write_pick_report(job.outdir, summary, job, mics, n_shown=2, notes=["model: test"])
    assert pdf == job.outdir / "logfile.pdf" and pdf_pages(pdf) == 4
    text = (job.outdir / "report.txt").read_text()
    assert "4 listed, 3 picked" in text and "1 failed" in text and "model: test" in text
    assert "gone.mrc: micrograph file not found" in text
    n_picks = int(summary.table["n_picks"].sum())
    assert f"particles: {n_picks} at threshold 0.5" in text
    for name in ("report_micrographs.png", "report_scores.png", "report_picks_per_micrograph.png"):
        assert (job.outdir / name).stat().st_size > 5000, name


def test_report_needs_no_micrograph_list_and_survives_missing_files(tmp_path: Path) -> None:
    """Without a list, names are tried as paths; a micrograph that vanished is left out of the drawing."""
    job, _, summary, _ = _job(tmp_path)
    (tmp_path / "mics" / "m0.mrc").unlink()
    assert pdf_pages(write_pick_report(job.outdir, summary, job)) == 4


def test_evaluation_pages_join_the_report_and_a_new_report_drops_them(tmp_path: Path) -> None:
    job, mics, summary, truth = _job(tmp_path)
    write_pick_report(job.outdir, summary, job, mics)
    assert pick_job_folder([str(job.outdir)]) == job.outdir and pick_job_folder([str(tmp_path)]) is None
    found = summary_micrographs(job.outdir)  # the micrographs of a pick job folder, when they exist
    assert found is not None and found["path"].tolist() == mics["path"].tolist()
    picks = {Path(n).stem: read_coordinate_star(job.coordinate_path(n)) for n in mics["name"]}
    result = run_evaluation(picks, truth, BOX, tmp_path / "eval", micrographs=mics, report_dir=job.outdir)
    assert result.total.recall == 1.0 and result.total.precision == 1.0
    assert (tmp_path / "eval" / "evaluation_picks.png").is_file()
    assert all((job.outdir / name).is_file() for name in EVALUATION_FILES)
    assert pdf_pages(job.outdir / "logfile.pdf") == 7
    write_pick_report(job.outdir, summary, job, mics)  # new picks: the evaluation is stale
    assert not any((job.outdir / name).exists() for name in EVALUATION_FILES)
    assert pdf_pages(job.outdir / "logfile.pdf") == 4


def test_candidate_scores_fast_parser_agrees_with_the_star_reader(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [1.5, 20.25, 3.0], "y": [4.0, 5.5, 6.0], "score": [0.91, 0.5, 0.07]})
    write_coordinate_star(tmp_path / "c.star", frame)
    assert candidate_scores(tmp_path / "c.star") == pytest.approx(read_coordinate_star(tmp_path / "c.star")["score"])
    write_coordinate_star(tmp_path / "empty.star", frame.iloc[:0])
    assert len(candidate_scores(tmp_path / "empty.star")) == 0
    assert len(candidate_scores(tmp_path / "missing.star")) == 0
    (tmp_path / "other.star").write_text("data_a\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1 2\n")
    assert np.isnan(candidate_scores(tmp_path / "other.star")).all()  # no score column: full reader


def test_picks_at_thresholds_counts_per_micrograph_and_caps_at_max_picks() -> None:
    scores = [np.array([0.9, 0.8, 0.3]), np.array([0.95, 0.6, 0.55, 0.1])]
    t = np.array([0.0, 0.5, 0.85, 1.0])
    assert picks_at_thresholds(scores, t, None).tolist() == [7, 5, 2, 0]
    assert picks_at_thresholds(scores, t, 2).tolist() == [4, 4, 2, 0]


def test_score_histogram_of_a_job_without_candidates_draws_without_warnings(tmp_path: Path) -> None:
    import warnings

    from deeppicker_relion.jobs.figures import plot_scores

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib: "Data has no positive values, ... log-scaled"
        path = plot_scores([np.zeros(0), np.zeros(0)], tmp_path / "scores.png", threshold=0.5, floor=0.01)
    assert path.is_file() and path.stat().st_size > 1000
