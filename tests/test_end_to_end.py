"""End to end: train a small model on simulated micrographs of one molecule, pick HELD-OUT
micrographs (never seen in training) through the real CLI, evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from deeppicker_relion.cli.main import main as cli
from deeppicker_relion.io.mrc import write_mrc
from deeppicker_relion.io.star import write_coordinate_star
from deeppicker_relion.simulation.simulate import load_map, simulate_micrograph

PIXEL = 5.0
SHAPE = (384, 416)  # non-square on purpose


def _dataset(root: Path, seeds: list[int], volume) -> Path:
    """Micrographs + one coordinate STAR each + a RELION 3.1 micrographs STAR; returns the STAR."""
    names = []
    for seed in seeds:
        image, centres = simulate_micrograph(
            SHAPE, PIXEL, [volume], n_particles=18, snr=0.3, defocus_um=2.0, seed=seed
        )
        write_mrc(root / "mics" / f"m{seed}.mrc", image, PIXEL)
        write_coordinate_star(root / "coords" / f"m{seed}.star", centres.assign(score=1.0))
        names.append(f"mics/m{seed}.mrc")
    optics = pd.DataFrame({"rlnOpticsGroupName": ["g1"], "rlnOpticsGroup": [1], "rlnMicrographPixelSize": [PIXEL],
                           "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    star = root / "micrographs.star"
    starfile.write({"optics": optics, "micrographs": pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": 1})}, star)
    return star


@pytest.fixture(scope="module")
def proteasome():
    return load_map("proteasome20S_3j9i")


def test_train_then_pick_held_out_micrographs(tmp_path: Path, proteasome, monkeypatch) -> None:
    diameter = 180.0  # A; the proteasome's largest extent is 182 A
    train_star = _dataset(tmp_path / "train", list(range(1, 7)), proteasome)
    test_star = _dataset(tmp_path / "test", [101, 102], proteasome)
    weights = tmp_path / "model.safetensors"
    assert cli(["train", str(train_star), "--coords", str(tmp_path / "train" / "coords"), "--diameter", str(diameter),
                "--init", "scratch", "--epochs", "20", "--negative-ratio", "3", "--near-miss", "0.3",
                "-o", str(weights), "-j", "2"]) == 0
    monkeypatch.chdir(tmp_path / "test")
    assert cli(["pick", str(test_star), "--diameter", str(diameter), "--weights", str(weights), "-o", "picks"]) == 0
    assert cli(["evaluate", "--picks", "picks", "--reference", "coords", "--diameter", str(diameter),
                "--angpix", str(PIXEL), "-o", "eval"]) == 0
    table = pd.read_csv(tmp_path / "test" / "eval" / "evaluation.csv")
    total = table.iloc[-1]
    assert total["micrograph"] == "TOTAL" and total["n_reference"] > 25
    assert total["recall"] >= 0.8, table
    assert total["centre_error"] <= 0.12, table
    # ranking: keeping the top N = N_reference picks per micrograph finds most particles
    curve = pd.read_csv(tmp_path / "test" / "eval" / "topn_curve.csv").set_index("ratio")
    assert curve.loc[1.0, "f1"] >= 0.7, curve
    assert (tmp_path / "test" / "eval" / "topn_curve.png").stat().st_size > 1000
    # every pick lies in the micrograph and at least 0.4 x box from every other pick
    picks = starfile.read(tmp_path / "test" / "picks" / "mics" / "m101_deeppicker.star")
    xy = picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    assert np.all((xy >= 0) & (xy < [SHAPE[1], SHAPE[0]]))
    d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1)) + np.eye(len(xy)) * 1e9
    assert d.min() >= 0.4 * diameter / PIXEL - 1e-6
