"""The facility workflow end to end: solved projects (RELION particle STARs with refined shifts,
curated so labels are incomplete) -> ``deeppicker train`` on all of them -> ``deeppicker pick`` a
new molecule with the weights. The simulated-only version always runs; the real one uses
../shared (EMPIAR-10028 ribosomes solved, apoferritin picked) and skips without it.
Also the RELION External train job with several inputs, driven by the real RELION 3.1 pipeliner."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from deeppicker_relion.cli.main import main as cli
from deeppicker_relion.metrics import match
from deeppicker_relion.io.coords import read_coordinates
from deeppicker_relion.model import default_weights_path, load_model

from conftest import write_mrc

FAST = ["--epochs", "2", "--patience", "1", "-j", "2"]


def solved_project(root: Path, micrographs: list[tuple[np.ndarray, pd.DataFrame]], pixel_A: float,
                   keep: float = 0.7, seed: int = 0) -> tuple[Path, dict[str, pd.DataFrame]]:
    """A RELION 3.1 project as a finished refinement leaves it: MotionCorr/job002/Movies/*.mrc,
    CtfFind/job003/micrographs_ctf.star and Refine3D/job010/run_data.star with a fraction ``keep``
    of the particles (classification discarded the rest), each picked up to 0.15 box off centre and
    carrying the refined shift back to it (rlnOriginXAngst/YAngst; Extract's rescaled
    rlnImagePixelSize, no rlnMicrographPixelSize, as RELION writes it). Returns (the STAR, the
    complete true centres per micrograph name)."""
    rng = np.random.default_rng(seed)
    names, rows, truth = [], [], {}
    for i, (image, centres) in enumerate(micrographs):
        name = f"MotionCorr/job002/Movies/mic{i:02d}.mrc"
        write_mrc(root / name, image, pixel_A)
        names.append(name)
        truth[name] = centres[["x", "y"]].reset_index(drop=True)
        kept = centres.sample(frac=keep, random_state=seed + i)
        picked = np.round(kept[["x", "y"]].to_numpy() + rng.uniform(-4, 4, (len(kept), 2)))
        shift_A = (picked - kept[["x", "y"]].to_numpy()) * pixel_A
        rows.append(pd.DataFrame({"rlnCoordinateX": picked[:, 0], "rlnCoordinateY": picked[:, 1], "rlnMicrographName": name,
                                  "rlnOpticsGroup": 1, "rlnOriginXAngst": shift_A[:, 0], "rlnOriginYAngst": shift_A[:, 1],
                                  "rlnClassNumber": 1}))  # fmt: skip
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnMicrographOriginalPixelSize": [pixel_A / 2],
                           "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [2 * pixel_A], "rlnImageSize": [64], "rlnImageDimensionality": [2]})  # fmt: skip
    mic_optics = optics.drop(columns=["rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality"]).assign(rlnMicrographPixelSize=pixel_A)
    star = root / "Refine3D" / "job010" / "run_data.star"
    star.parent.mkdir(parents=True)
    starfile.write({"optics": optics, "particles": pd.concat(rows, ignore_index=True)}, star, overwrite=True, float_format="%.4f")
    mics = root / "CtfFind" / "job003" / "micrographs_ctf.star"
    mics.parent.mkdir(parents=True)
    starfile.write({"optics": mic_optics, "micrographs": pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": 1})},
                   mics, overwrite=True)  # fmt: skip
    return star, truth


def simulated_molecule(seed: int, n: int, shape=(384, 384), pixel_A: float = 4.0) -> tuple[list, float]:
    """``n`` micrographs of one random molecule: ([(image, centres)], diameter in Angstrom)."""
    from deeppicker_relion.simulation.simulate import estimate_diameter_A, simulate_micrograph_parts, synthetic_molecule

    rng = np.random.default_rng(seed)
    volume = synthetic_molecule(170.0, 4.0, seed=rng)
    diameter = estimate_diameter_A(volume, 4.0)
    out = []
    for i in range(n):
        sim = simulate_micrograph_parts(shape, pixel_A, [(volume, 4.0)], 14, snr=0.4, seed=seed * 100 + i, fft_workers=1)
        out.append((sim.image, sim.centres[["x", "y"]]))
    return out, diameter


def _pick_and_score(mics_star: Path, diameter: float, weights: Path, out: Path, truth: dict[str, pd.DataFrame]) -> dict:
    """``deeppicker pick`` with the weights, run in the project folder as RELION would; recall and
    precision against the true centres at 0.2 x diameter."""
    import os

    os.chdir(mics_star.parents[2])
    assert cli(["pick", str(mics_star), "--diameter", f"{diameter:g}", "--weights", str(weights), "-o", str(out),
                "--no-report", "--size-check", "off", "-j", "2"]) == 0  # fmt: skip
    tp = n_picks = n_ref = 0
    table = starfile.read(mics_star, always_dict=True)
    pixel = float(table["optics"]["rlnMicrographPixelSize"].iloc[0])
    for name in table["micrographs"]["rlnMicrographName"]:
        picks = read_coordinates(next(out.rglob(f"{Path(name).stem}_deeppicker.star")))
        matched, _ = match(picks, truth[name], 0.2 * diameter / pixel)
        tp += int((matched >= 0).sum())
        n_picks += len(picks)
        n_ref += len(truth[name])
    return {"recall": tp / max(1, n_ref), "precision": tp / max(1, n_picks), "picks": n_picks}


@pytest.fixture(scope="module")
def general() -> Path:
    if not default_weights_path().is_file():
        pytest.skip("the shipped general model is missing")
    return default_weights_path()


def test_facility_workflow_simulated(tmp_path, general, monkeypatch):
    """Two solved simulated molecules (particle STARs, shifts, 70 % of particles kept) + random
    molecules -> train -> pick a third molecule: the weights pick it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEEPPICKER_CACHE", str(tmp_path / "cache"))
    mols_a, diameter_a = simulated_molecule(1, 2)
    star_a, _ = solved_project(tmp_path / "A", mols_a, pixel_A=4.0)
    mols_b, diameter_b = simulated_molecule(2, 2)
    star_b, _ = solved_project(tmp_path / "B", mols_b, pixel_A=4.0, seed=1)
    mols_c, diameter_c = simulated_molecule(3, 2)
    _, truth_c = solved_project(tmp_path / "C", mols_c, pixel_A=4.0)
    listing = tmp_path / "solved.txt"
    listing.write_text(f"# facility archive\nB/Refine3D/job010/run_data.star {diameter_b:.0f}\n")
    weights = tmp_path / "facility.safetensors"
    assert cli(["train", "--data", str(star_a), f"{diameter_a:.0f}", "--datasets", str(listing),
                "--simulated", "2", "--incomplete-labels", "model", "-o", str(weights), *FAST]) == 0  # fmt: skip
    model, info = load_model(weights)
    assert [d["labels"] for d in info["datasets"]] == ["incomplete", "incomplete", "complete"]
    assert all(d["particles"] > 0 and d["background"] > 0 for d in info["datasets"])
    assert info["train_params"]["incomplete_labels"] == "model"
    scores = _pick_and_score(tmp_path / "C/CtfFind/job003/micrographs_ctf.star", diameter_c, weights, tmp_path / "picks", truth_c)
    print("simulated facility workflow:", scores)
    assert scores["recall"] >= 0.5, scores


@pytest.mark.shared
def test_facility_workflow_real(tmp_path, shared, general, monkeypatch):
    """Apoferritin (real) and a simulated molecule as solved projects in particle-STAR form with
    refined shifts; EMPIAR-10028 ribosomes (never seen; labels incomplete, so precision is a lower
    bound) are picked with the weights."""
    from deeppicker_relion.io.mrc import read_micrograph

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEEPPICKER_CACHE", str(tmp_path / "cache"))
    apo = shared / "data" / "apoferritin"
    apo_mics = [(read_micrograph(p).data, read_coordinates(apo / "coords" / f"{p.stem}.star")[["x", "y"]])
                for p in sorted((apo / "micrographs").glob("*.mrc"))[:2]]  # fmt: skip
    star_a, _ = solved_project(tmp_path / "apo", apo_mics, pixel_A=2.1, keep=0.8)
    mols, diameter_s = simulated_molecule(2, 2)
    star_s, _ = solved_project(tmp_path / "sim", mols, pixel_A=4.0, seed=1)
    ribo = shared / "data" / "empiar10028_ribosome"
    real = [(read_micrograph(p).data, read_coordinates(ribo / "coords" / f"{p.stem}.star")[["x", "y"]])
            for p in sorted((ribo / "micrographs").glob("*.mrc"))[-2:]]  # fmt: skip
    _, truth = solved_project(tmp_path / "ribosome", real, pixel_A=5.36)
    weights = tmp_path / "facility.safetensors"
    assert cli(["train", "--data", str(star_a), "120", "--data", str(star_s), f"{diameter_s:.0f}",
                "-o", str(weights), *FAST]) == 0  # fmt: skip
    scores = _pick_and_score(tmp_path / "ribosome/CtfFind/job003/micrographs_ctf.star", 300.0, weights, tmp_path / "picks", truth)
    print("real facility workflow:", scores)
    assert scores["recall"] >= 0.6 and scores["precision"] >= 0.4, scores


@pytest.mark.relion
def test_relion_train_job_several_molecules(tmp_path, general, monkeypatch):
    """The External train job in a real RELION 3.1 project (relion_pipeliner): Input particles = this
    project's refinement (molecule A) + particle_diameter, a data parameter per further molecule
    (B, another project), simulated; then a pick job of molecule C with its model.safetensors."""
    from relion_harness import add_external, requires_relion, run_jobs  # noqa: F401

    from relion_external import job as relion_job

    exe = Path(sys.executable).parent / "deeppicker_relion_train"
    if shutil.which("relion_pipeliner") is None or not exe.exists():
        pytest.skip("relion_pipeliner or the installed deeppicker_relion_train is missing")
    monkeypatch.setenv("DEEPPICKER_CACHE", str(tmp_path / "cache"))
    mols_a, diameter_a = simulated_molecule(1, 2)
    project = tmp_path / "A"
    solved_project(project, mols_a, pixel_A=4.0)
    (project / "default_pipeline.star").write_text("\n# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 1\n \n")
    mols_b, diameter_b = simulated_molecule(2, 2)
    star_b, _ = solved_project(tmp_path / "B", mols_b, pixel_A=4.0, seed=1)
    ext = add_external(project, exe, None, {"particle_diameter": f"{diameter_a:.0f}", "data": f"{star_b} {diameter_b:.0f}",
                                            "simulated": 1, "epochs": 1, "relion_version": "3.1",
                                            "incomplete_labels": "model"},
                       threads=2, in_parts="Refine3D/job010/run_data.star")  # fmt: skip
    assert run_jobs(project, [ext], timeout_s=300) == {ext: 2}
    assert [m for m in relion_job.EXIT_MARKERS if (project / ext / m).exists()] == [relion_job.SUCCESS]
    _, info = load_model(project / ext / "model.safetensors")
    assert [d["labels"] for d in info["datasets"]] == ["incomplete", "incomplete", "complete"]
    assert info["train_params"]["incomplete_labels"] == "model"
    out = (project / ext / "run.out").read_text()
    assert "3 data sets" in out and f"weights = {ext}model.safetensors" in out

    mols_c, diameter_c = simulated_molecule(3, 2)
    _, truth_c = solved_project(tmp_path / "C", mols_c, pixel_A=4.0)
    scores = _pick_and_score(tmp_path / "C/CtfFind/job003/micrographs_ctf.star", diameter_c, project / ext / "model.safetensors",
                             tmp_path / "picks", truth_c)  # fmt: skip
    assert scores["recall"] >= 0.5, scores


def test_trained_model_carries_its_own_figure_of_merit(tmp_path, general, monkeypatch):
    """``deeppicker train`` fits the new network's figure of merit on simulated micrographs (complete
    labels, some empty) and stores it in the weights, so the threshold means a probability for the
    facility's model too; ``--fom-micrographs 0`` leaves the network's score as the figure of merit."""
    from deeppicker_relion.picking.fom import IDENTITY

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEEPPICKER_CACHE", str(tmp_path / "cache"))
    fitted, plain = tmp_path / "fitted.safetensors", tmp_path / "plain.safetensors"
    assert cli(["train", "--simulated", "3", "--fom-micrographs", "6", "-o", str(fitted), *FAST]) == 0
    assert cli(["train", "--simulated", "3", "--fom-micrographs", "0", "-o", str(plain), *FAST]) == 0
    model, info = load_model(fitted)
    assert "6 simulated micrographs" in info["fom"]["fitted_on"]
    assert model.fom is not IDENTITY and model.fom.to_metadata() == info["fom"]
    assert info["train_params"]["fom_micrographs"] == 6
    model, info = load_model(plain)
    assert "fom" not in info and model.fom is IDENTITY
    assert cli(["train", "--simulated", "3", "--fom-micrographs", "-1", "-o", str(plain), *FAST]) != 0
