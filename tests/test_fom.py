"""The figure of merit (deeppicker_relion/picking/fom.py) and the promises made with it: one calibrated number
per pick, the threshold applies to it and to nothing else, the report's table is what re-thresholding
writes, a higher threshold gives a subset, and the micrographs that hold particles get their own node."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from deeppicker_relion.errors import JobError
from deeppicker_relion.picking.fom import (
    FEATURE_FLOOR, FEATURES, FLAG_EMPTY, FLAG_OK, FLAG_REMOVED, IDENTITY, FitTable, FomModel, calibrate_candidates,
    expected_calibration_error, fit_fom, logit, micrograph_flag,
)
from deeppicker_relion.io.star import read_candidate_star, read_coordinate_star

# --------------------------------------------------------------------------- the model itself


def _simulated_micrograph(rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """Candidates of a made-up micrograph: background peaks (1.5 per box area, network logits around
    -7) and, on 70 % of micrographs, particles whose logits sit at a level of their own (the SNR)."""
    area = float(rng.uniform(60, 150))
    n_bg = rng.poisson(1.5 * area)
    n_p = 0 if rng.uniform() < 0.3 else int(rng.uniform(0.03, 0.4) * area)
    z = np.concatenate([rng.normal(-7.0, 2.0, n_bg), rng.normal(rng.uniform(-5, 5), 1.2, n_p)])
    hits = np.concatenate([np.zeros(n_bg, bool), np.ones(n_p, bool)])
    p = 1 / (1 + np.exp(-z))
    keep = p >= FEATURE_FLOOR
    order = np.argsort(-p[keep], kind="stable")
    cands = pd.DataFrame({"x": np.arange(keep.sum(), dtype=float), "y": 0.0, "score": p[keep][order]})
    cands.attrs = {"area_boxes": area, "removed_fraction": 0.0, "dark_fraction": 0.0}
    return cands, hits[keep][order]


@pytest.fixture(scope="module")
def fitted() -> FomModel:
    """The figure of merit fitted on 150 made-up micrographs."""
    rng = np.random.default_rng(0)
    return fit_fom(FitTable.from_micrographs([_simulated_micrograph(rng) for _ in range(150)]), max_iter=60,
                   fitted_on="test")


def test_fitted_figure_of_merit_is_calibrated_on_other_micrographs_and_keeps_the_ranking(fitted: FomModel) -> None:
    rng = np.random.default_rng(10)
    model = fitted
    foms, hits, raw = [], [], []
    for cands, h in (_simulated_micrograph(rng) for _ in range(150)):
        out = calibrate_candidates(cands, model)
        # the order of the network's scores is kept within a micrograph (so is the label order)
        assert np.all(np.diff(out["raw_score"].to_numpy()) <= 0)
        assert np.all(np.diff(out["score"].to_numpy()) <= 0)
        foms.append(out["score"].to_numpy())
        hits.append(h)
        raw.append(cands["score"].to_numpy())
    f, h, r = np.concatenate(foms), np.concatenate(hits), np.concatenate(raw)
    assert expected_calibration_error(f, h, 9, 0.1) < 0.05
    assert expected_calibration_error(r, h, 9, 0.1) > 0.1  # the raw scores are not calibrated: the test can fail


def test_a_micrograph_full_of_particle_like_candidates_lifts_their_figure_of_merit(fitted: FomModel) -> None:
    rng = np.random.default_rng(1)
    model = fitted
    bg = rng.normal(-7.0, 2.0, 150)
    crowded = np.concatenate([bg, rng.normal(-3.0, 1.0, 40), [-3.0]])
    sparse = np.concatenate([bg, [-3.0]])
    fom = {}
    for name, z in (("crowded", crowded), ("sparse", sparse)):
        c = pd.DataFrame({"x": 0.0, "y": 0.0, "score": 1 / (1 + np.exp(-z))})
        c.attrs = {"area_boxes": 100.0}
        out = calibrate_candidates(c, model)
        fom[name] = float(out.loc[np.isclose(out["raw_score"], 1 / (1 + np.exp(3.0))), "score"].iloc[0])
    assert fom["crowded"] > 0.5 > fom["sparse"], fom


def test_figure_of_merit_metadata_round_trip_and_refusals(tmp_path: Path, fitted: FomModel) -> None:
    rng = np.random.default_rng(2)
    model = fitted
    again = FomModel.from_metadata(json.loads(json.dumps(model.to_metadata())))
    cands, _ = _simulated_micrograph(rng)
    np.testing.assert_array_equal(calibrate_candidates(cands, model)["score"], calibrate_candidates(cands, again)["score"])
    assert FomModel.from_metadata(None) is IDENTITY
    np.testing.assert_allclose(calibrate_candidates(cands, IDENTITY)["score"], cands["score"], atol=5e-7)
    other = {**model.to_metadata(), "features": list(FEATURES)[:-1]}
    with pytest.raises(ValueError, match="features"):
        FomModel.from_metadata(other)

    # weights whose "fom" entry is broken: one line naming the file
    from deeppicker_relion.model import DeepPickerNet, load_model, save_model

    path = tmp_path / "w.safetensors"
    save_model(DeepPickerNet(), path, {"fom": {**model.to_metadata(), "scale": [0.0] * len(FEATURES)}})
    with pytest.raises(JobError, match="fom") as err:
        load_model(path)
    assert str(path) in str(err.value)
    save_model(DeepPickerNet(), path, {"fom": model.to_metadata()})
    assert load_model(path)[0].fom.to_metadata() == model.to_metadata()


def test_micrograph_flags() -> None:
    assert micrograph_flag(10.0, 0.1, 0.0) == FLAG_OK
    assert micrograph_flag(0.5, 0.0, 0.0) == FLAG_EMPTY
    assert micrograph_flag(10.0, 0.4, 0.2) == FLAG_REMOVED  # more than half removed
    assert logit(FEATURE_FLOOR) == pytest.approx(np.log(1e-5 / (1 - 1e-5)))


# --------------------------------------------------------------------------- the promises, on a real job


@pytest.fixture(scope="module")
def picked(demo_run, tmp_path_factory) -> Path:
    """A copy of the demo's folder (its pick job picked with the shipped model at the defaults)."""
    folder = tmp_path_factory.mktemp("fom") / "demo"
    shutil.copytree(demo_run[0], folder)
    return folder


def _rethreshold(folder: Path, threshold: float) -> dict[str, pd.DataFrame]:
    """``deeppicker pick ... --rethreshold --threshold T`` as the README shows it; the picks written."""
    from deeppicker_relion.cli.main import main

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["pick", "micrographs.star", "--diameter", "200", "-o", "picks/", "--rethreshold",
                     "--threshold", str(threshold), "--cs"]) == 0
    finally:
        os.chdir(cwd)
    return {p.name: read_coordinate_star(p) for p in sorted((folder / "picks" / "micrographs").glob("*_deeppicker.star"))}


def _report_table(folder: Path) -> dict[float, int]:
    text = (folder / "picks" / "report.txt").read_text()
    thresholds = re.search(r"^  threshold (.*)$", text, re.M).group(1).split()
    picks = re.search(r"^  picks     (.*)$", text, re.M).group(1).split()
    return {float(t): int(n) for t, n in zip(thresholds, picks)}


def test_report_table_equals_what_rethresholding_writes_and_thresholds_nest(picked: Path) -> None:
    from deeppicker_relion.io.cryosparc import read_particles_cs

    table = _report_table(picked)
    assert len(table) >= 8
    previous = None
    for t in sorted(table):
        picks = _rethreshold(picked, t)
        assert sum(map(len, picks.values())) == table[t], t  # the report's table is the output
        # the figure of merit written is the one thresholded: every pick has it >= T, and every saved
        # candidate with it >= T is written, with that same value
        for name, p in picks.items():
            cand = read_candidate_star(picked / "picks" / "candidates" / "micrographs" / name.replace("_deeppicker", ""))
            want = cand[cand["score"] >= t]
            assert (p["score"] >= t).all()
            np.testing.assert_array_equal(p[["x", "y", "score"]].to_numpy(), want[["x", "y", "score"]].to_numpy())
        cs = read_particles_cs(picked / "picks" / "particles.cs")
        assert sorted(np.concatenate([c["score"].to_numpy() for c in cs.values()]).round(6).tolist()) == sorted(
            np.concatenate([p["score"].to_numpy() for p in picks.values()]).round(6).tolist())
        # a higher threshold gives a subset of the picks
        now = {(n, x, y) for n, p in picks.items() for x, y in zip(p["x"], p["y"])}
        if previous is not None:
            assert now <= previous
        previous = now
        # the report redrawn at T says the same
        assert _report_table(picked) == table


def test_summary_reports_expected_particles_precision_and_flags(picked: Path) -> None:
    from deeppicker_relion.jobs.pick import read_summary

    summary = read_summary(picked / "picks" / "picking_summary.star")
    for _, row in summary.iterrows():
        name = Path(row["rlnMicrographName"]).stem
        picks = read_coordinate_star(picked / "picks" / "micrographs" / f"{name}_deeppicker.star")
        cand = read_candidate_star(picked / "picks" / "candidates" / "micrographs" / f"{name}.star")
        assert row["expected_particles"] == pytest.approx(cand.attrs["expected_particles"], abs=1e-3)
        assert row["expected_particles"] >= cand["score"].sum() - 1e-3  # all candidates count, saved or not
        if len(picks):
            assert row["expected_precision"] == pytest.approx(picks["score"].mean(), abs=1e-6)
    flags = dict(zip(summary["rlnMicrographName"].map(lambda n: Path(n).stem), summary["flag"]))
    assert flags["demo_4"] == FLAG_EMPTY  # the demo's empty micrograph
    assert [flags[f"demo_{i}"] for i in (1, 2, 3)] == [FLAG_OK] * 3
    assert "micrographs flagged: 1 empty" in (picked / "picks" / "report.txt").read_text()


def test_relion_job_writes_the_micrographs_that_hold_particles_as_a_second_node(picked: Path, capsys) -> None:
    from relion_external import pick as pick_job

    project = picked
    cwd = os.getcwd()
    os.chdir(project)
    try:
        code = pick_job.main(["--o", "External/job001/", "--in_mics", "micrographs.star", "--particle_diameter", "200",
                              "--relion_version", "5", "--j", "2"])
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert code == 0, out
    job = project / "External/job001"
    nodes = starfile.read(job / "RELION_OUTPUT_NODES.star", always_dict=True)["output_nodes"]
    assert nodes.values.tolist() == [["External/job001/autopick.star", "MicrographCoordsGroup.star.relion.autopick"],
                                     ["External/job001/micrographs_with_particles.star", "MicrographGroupMetadata.star.relion"]]
    kept = starfile.read(job / "micrographs_with_particles.star", always_dict=True)
    original = starfile.read(project / "micrographs.star", always_dict=True)
    assert list(kept) == list(original)  # optics kept
    assert [Path(n).stem for n in kept["micrographs"]["rlnMicrographName"]] == ["demo_1", "demo_2", "demo_3"]
    assert "1 micrographs flagged: 1 look empty" in out


def _preprocess_has_minimum_fom() -> bool:
    exe = shutil.which("relion_preprocess")
    if not exe:
        return False
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    return "minimum_pick_fom" in proc.stdout + proc.stderr


@pytest.mark.relion
@pytest.mark.skipif(not _preprocess_has_minimum_fom(), reason="the installed RELION's Extract has no --minimum_pick_fom "
                    "(RELION 4 and 5 have it; Debian's 3.1 does not)")
def test_relion_extract_minimum_fom_keeps_the_picks_of_that_threshold(picked: Path) -> None:
    """RELION Extract (relion_preprocess --minimum_pick_fom T) on picks at 0.1 keeps exactly the
    particles that re-thresholding at T writes."""
    _rethreshold(picked, 0.1)
    low = {n: len(p) for n, p in _rethreshold(picked, 0.1).items()}
    assert sum(low.values()) > 0
    (picked / "coords").mkdir(exist_ok=True)
    for t in (0.5, 0.8):
        star = picked / f"extract_{t}.star"
        subprocess.run(["relion_preprocess", "--i", "micrographs.star", "--coord_dir", "picks/",
                        "--coord_suffix", "_deeppicker.star", "--part_star", star.name, "--part_dir", f"Extract{t}/",
                        "--extract", "--extract_size", "64", "--minimum_pick_fom", str(t)],
                       cwd=picked, check=True, capture_output=True, timeout=300)
        particles = starfile.read(star, always_dict=True)["particles"]
        want = _rethreshold(picked, t)
        assert len(particles) == sum(map(len, want.values()))
        _rethreshold(picked, 0.1)
