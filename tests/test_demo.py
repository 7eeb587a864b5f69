"""``deeppicker demo`` with the shipped model: the files a user is told about exist, the report is a
valid PDF, and the printed numbers are the evaluation's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from pdfcheck import pdf_pages

from deeppicker_relion.demo import MARKER, MICROGRAPHS, check_folder
from deeppicker_relion.errors import JobError
from deeppicker_relion.io.star import micrograph_table, read_coordinate_star

PNG = b"\x89PNG\r\n\x1a\n"


def test_demo_writes_micrographs_truth_picks_report_and_evaluation(demo_run) -> None:
    folder, stdout, seconds = demo_run
    n = len(MICROGRAPHS)
    assert sorted(p.name for p in (folder / "micrographs").glob("*.mrc")) == [f"demo_{i}.mrc" for i in range(1, n + 1)]
    table = micrograph_table(folder / "micrographs.star")
    assert len(table) == n and (table["pixel_size"] == 4.0).all()
    truth = [read_coordinate_star(folder / "truth" / f"demo_{i}.star") for i in range(1, n + 1)]
    assert [len(t) for t in truth[:-1]] == [m[0] for m in MICROGRAPHS[:-1]] and len(truth[-1]) == 0
    info = json.loads((folder / MARKER).read_text())
    assert info["pixel_size_A"] == 4.0 and len(info["micrographs"]) == n
    picks = folder / "picks"
    assert sorted(p.name for p in (picks / "micrographs").glob("*_deeppicker.star")) == [
        f"demo_{i}_deeppicker.star" for i in range(1, n + 1)
    ]
    assert len(list((picks / "candidates" / "micrographs").glob("*.star"))) == n
    for name in ("report_micrographs.png", "report_scores.png", "report_picks_per_micrograph.png",
                 "report_topn_curve.png", "report_evaluation.png"):
        assert (picks / name).read_bytes()[:8] == PNG, name
    # two text pages (pick summary, evaluation) and the five figures
    assert pdf_pages(picks / "logfile.pdf") == 7
    assert "particles:" in (picks / "report.txt").read_text()
    assert "precision" in (picks / "report_evaluation.txt").read_text()
    for name in ("evaluation.csv", "topn_curve.csv"):
        assert (folder / "evaluation" / name).is_file()
    for name in ("topn_curve.png", "evaluation_picks.png"):
        assert (folder / "evaluation" / name).read_bytes()[:8] == PNG
    print(f"deeppicker demo: {seconds:.1f} s wall clock (fresh process, including imports)")
    assert seconds < 120, f"the demo took {seconds:.0f} s (target: under a minute on 2 cores)"


def test_demo_prints_the_evaluation_and_next_commands(demo_run) -> None:
    folder, stdout, _ = demo_run
    found = re.search(r"precision (\d\.\d+)\s+recall (\d\.\d+)\s+F1 (\d\.\d+)", stdout)
    assert found, stdout
    total = pd.read_csv(folder / "evaluation" / "evaluation.csv").iloc[-1]
    assert total["micrograph"] == "TOTAL"
    printed = [float(v) for v in found.groups()]
    assert printed == pytest.approx([total.precision, total.recall, total.f1], abs=1.5e-3)
    assert re.search(r"picks on the empty micrograph: \d+", stdout)
    assert "logfile.pdf" in stdout and "deeppicker pick" in stdout and "--rethreshold" in stdout


def test_demo_refuses_a_folder_of_something_else(tmp_path: Path) -> None:
    check_folder(tmp_path / "new")  # absent: fine
    check_folder(tmp_path)  # empty: fine
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(JobError, match="holds no earlier demo"):
        check_folder(tmp_path)
    (tmp_path / MARKER).write_text("{}")  # an earlier demo's folder is reused
    check_folder(tmp_path)
