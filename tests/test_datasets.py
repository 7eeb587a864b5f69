"""Data sets of solved projects: particles STARs (3.0 / 3.1+, refined shifts), coordinate nodes,
CryoSPARC .cs files, data-set lists; checked against the real relion_preprocess where installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from deeppicker_relion.training.datasets import DataSpec, parse_spec, read_dataset, read_list
from deeppicker_relion.errors import JobError
from deeppicker_relion.io.particles import read_particles_star, refined_centres

from conftest import blob_micrograph, write_mrc

MIC_PX = 1.7  # micrograph Angstrom per pixel
PART_PX = 3.4  # particles extracted with 2x rescaling: NOT the micrograph's pixel size


def _project(tmp_path: Path, header_pixel: float | None = MIC_PX) -> tuple[Path, pd.DataFrame]:
    """A RELION-shaped project: MotionCorr/job002/Movies/mic{0,1}.mrc, CtfFind/job003/micrographs_ctf.star;
    returns (project dir, true centres with micrograph names)."""
    rows = []
    for i in range(2):
        image, centres = blob_micrograph(i, shape=(256, 300), n=6, box=30)
        name = f"MotionCorr/job002/Movies/mic{i}.mrc"
        write_mrc(tmp_path / name, image, header_pixel)
        rows.append(centres.assign(micrograph=name))
    star = tmp_path / "CtfFind" / "job003" / "micrographs_ctf.star"
    star.parent.mkdir(parents=True)
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnMicrographPixelSize": [MIC_PX],
                           "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    mics = pd.DataFrame({"rlnMicrographName": [f"MotionCorr/job002/Movies/mic{i}.mrc" for i in range(2)], "rlnOpticsGroup": [1, 1]})
    starfile.write({"optics": optics, "micrographs": mics}, star, overwrite=True)
    return tmp_path, pd.concat(rows, ignore_index=True)


def _shifted(truth: pd.DataFrame, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Picked coordinates (the truth plus up to 6 px, whole pixels as a picker writes) and the
    shifts (micrograph pixels) a refinement would find: picked - shift = truth."""
    rng = np.random.default_rng(seed)
    picked = np.round(truth[["x", "y"]].to_numpy() + rng.uniform(-6, 6, (len(truth), 2)))
    return picked, picked - truth[["x", "y"]].to_numpy()


def _particles_31(path: Path, truth: pd.DataFrame, with_mic_px: bool = False) -> Path:
    picked, shift = _shifted(truth)
    optics = {"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnMicrographOriginalPixelSize": [0.85],
              "rlnImagePixelSize": [PART_PX], "rlnImageSize": [32], "rlnImageDimensionality": [2],
              "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]}
    if with_mic_px:
        optics["rlnMicrographPixelSize"] = [MIC_PX]
    parts = pd.DataFrame({
        "rlnCoordinateX": picked[:, 0], "rlnCoordinateY": picked[:, 1],
        "rlnImageName": [f"{i + 1:06d}@Extract/job004/Movies/mic.mrcs" for i in range(len(truth))],
        "rlnMicrographName": truth["micrograph"], "rlnOpticsGroup": 1,
        "rlnOriginXAngst": shift[:, 0] * MIC_PX, "rlnOriginYAngst": shift[:, 1] * MIC_PX,
        "rlnAngleRot": 0.0, "rlnAngleTilt": 0.0, "rlnAnglePsi": 0.0, "rlnClassNumber": 1,
    })  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    starfile.write({"optics": pd.DataFrame(optics), "particles": parts}, path, overwrite=True, float_format="%.6f")
    return path


def test_particles_star_origin_angst_gives_refined_centres(tmp_path):
    """3.1+: centre = rlnCoordinate - rlnOriginXAngst / MICROGRAPH pixel size (not the particles'
    rlnImagePixelSize), the pixel size from mics=, the optics group, or the MRC header."""
    project, truth = _project(tmp_path)
    star = _particles_31(project / "Refine3D" / "job010" / "run_data.star", truth)
    table = read_particles_star(star)
    assert np.isnan(table["pixel_size"]).all()  # Extract drops rlnMicrographPixelSize
    with pytest.raises(JobError, match="pixel size of MotionCorr/job002/Movies/mic0.mrc is unknown.*mics="):
        refined_centres(table)
    centres = refined_centres(table, {m: MIC_PX for m in truth["micrograph"]})
    np.testing.assert_allclose(centres[["x", "y"]].to_numpy(), truth[["x", "y"]].to_numpy(), atol=1e-4)

    # the whole data set: pixel size from the micrographs STAR, names relative to the project
    for options in ({"mics": str(project / "CtfFind/job003/micrographs_ctf.star")}, {}):  # {}: MRC headers
        ds = read_dataset(DataSpec(str(star), 180.0, None, options))
        assert ds.micrographs["path"].map(lambda p: Path(p).is_file()).all()
        assert not ds.complete
        got = np.vstack([ds.centres[m] for m in ds.micrographs["name"]])
        np.testing.assert_allclose(got, truth[["x", "y"]].to_numpy(), atol=1e-4)
        np.testing.assert_allclose(ds.micrographs["pixel_size"], MIC_PX)

    # rlnMicrographPixelSize in the optics group (re-extracted particles keep it)
    star2 = _particles_31(project / "Extract" / "job011" / "particles.star", truth, with_mic_px=True)
    centres = refined_centres(read_particles_star(star2))
    np.testing.assert_allclose(centres[["x", "y"]].to_numpy(), truth[["x", "y"]].to_numpy(), atol=1e-4)


def test_particles_star_relion30(tmp_path):
    """3.0: rlnOriginX in pixels of the particle images (1e4 * rlnDetectorPixelSize / rlnMagnification)."""
    project, truth = _project(tmp_path)
    picked, shift = _shifted(truth, 1)
    mag = 10000.0
    detector = PART_PX * mag / 1e4  # -> particle pixel size PART_PX
    parts = pd.DataFrame({
        "rlnMicrographName": truth["micrograph"], "rlnCoordinateX": picked[:, 0], "rlnCoordinateY": picked[:, 1],
        "rlnOriginX": shift[:, 0] * MIC_PX / PART_PX, "rlnOriginY": shift[:, 1] * MIC_PX / PART_PX,
        "rlnDetectorPixelSize": detector, "rlnMagnification": mag,
    })  # fmt: skip
    star = project / "Class2D" / "job012" / "run_it025_data.star"
    star.parent.mkdir(parents=True)
    starfile.write({"images": parts}, star, overwrite=True, float_format="%.6f")
    ds = read_dataset(DataSpec(str(star), 180.0, None, {"mics": str(project / "CtfFind/job003/micrographs_ctf.star")}))
    got = np.vstack([ds.centres[m] for m in ds.micrographs["name"]])
    np.testing.assert_allclose(got, truth[["x", "y"]].to_numpy(), atol=1e-4)


@pytest.mark.relion
def test_refined_centres_agree_with_relion_recenter(tmp_path):
    """relion_preprocess --reextract_data_star --recenter (RELION 3.1) moves each coordinate by the
    shift rounded to whole micrograph pixels; ours is the exact centre: they agree within 0.5 px."""
    exe = shutil.which("relion_preprocess")
    if exe is None:
        pytest.skip("relion_preprocess is not installed")
    project, truth = _project(tmp_path)
    star = _particles_31(project / "Refine3D" / "job010" / "run_data.star", truth)
    (project / "Extract" / "job013").mkdir(parents=True)
    proc = subprocess.run(
        [exe, "--i", "CtfFind/job003/micrographs_ctf.star", "--reextract_data_star", "Refine3D/job010/run_data.star",
         "--recenter", "--part_star", "Extract/job013/particles.star", "--part_dir", "Extract/job013/",
         "--extract", "--extract_size", "32", "--scale", "16"],
        cwd=project, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    relion = read_particles_star(project / "Extract/job013/particles.star")
    ours = refined_centres(read_particles_star(star), {m: MIC_PX for m in truth["micrograph"]})
    key = ["micrograph"]
    merged = relion.assign(i=relion.groupby(key).cumcount()).merge(ours.assign(i=ours.groupby(key).cumcount()), on=key + ["i"])
    assert len(merged) == len(truth)
    assert np.abs(merged["coord_x"] - merged["x"]).max() <= 0.5 + 1e-3
    assert np.abs(merged["coord_y"] - merged["y"]).max() <= 0.5 + 1e-3


def test_cryosparc_particles(tmp_path):
    from deeppicker_relion.io.cryosparc import write_particles_cs

    project, truth = _project(tmp_path)
    picks = {m: g[["x", "y"]].assign(score=1.0) for m, g in truth.groupby("micrograph")}
    shapes = {m: (256, 300) for m in picks}
    cs = tmp_path / "cs" / "J7_particles.cs"
    write_particles_cs(cs, picks, shapes, {m: MIC_PX for m in picks}, exact=True)
    ds = read_dataset(parse_spec([str(cs), "51px", f"root={project}"]))
    assert ds.box_px == 51 and ds.diameter_A is None
    got = np.vstack([ds.centres[m] for m in ds.micrographs["name"]])
    np.testing.assert_allclose(got, truth[["x", "y"]].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(ds.micrographs["pixel_size"], MIC_PX, rtol=1e-6)
    with pytest.raises(JobError, match="micrographs not found.*root="):
        read_dataset(parse_spec([str(cs), "51px"]))


def test_coordinate_node_and_list_file(tmp_path):
    """A 3.1 coords_suffix node (its one line names the micrographs STAR, relative to the project)
    and a data-set list with relative paths, comments and options."""
    from deeppicker_relion.io.star import write_coordinate_star

    project, truth = _project(tmp_path)
    job = project / "ManualPick" / "job005"
    for m, g in truth.groupby("micrograph"):
        write_coordinate_star(job / "Movies" / (Path(m).stem + "_manualpick.star"), g[["x", "y"]].assign(score=1.0))
    (job / "coords_suffix_manualpick.star").write_text("CtfFind/job003/micrographs_ctf.star\n")
    listing = project / "solved.txt"
    listing.write_text("# solved projects\nManualPick/job005/coords_suffix_manualpick.star 120 labels=complete  # picked by hand\n"
                       "'MotionCorr/job002/Movies/mic*.mrc' 60px coords=ManualPick/job005/Movies max_mics=1\n")
    specs = read_list(listing)
    assert [s.diameter_A for s in specs] == [120.0, None] and specs[1].box_px == 60.0
    node = read_dataset(specs[0])
    assert node.complete and len(node.micrographs) == 2
    np.testing.assert_allclose(node.micrographs["pixel_size"], MIC_PX)
    np.testing.assert_allclose(np.vstack(list(node.centres.values())), truth[["x", "y"]].to_numpy(), atol=1e-3)
    files = read_dataset(specs[1])
    assert len(files.micrographs) == 1 and not files.complete


@pytest.mark.parametrize("tokens, message", [
    (["a.star"], "no particle diameter"),
    (["a.star", "-1"], "not a positive number"),
    (["a.star", "180", "colour=red"], "unknown data set option 'colour=red'"),
    (["a.star", "180", "labels=maybe"], "labels= must be complete or incomplete"),
    (["a.star", "-"], "needs a particle diameter"),
])  # fmt: skip
def test_bad_specs(tokens, message):
    with pytest.raises(JobError, match=message):
        parse_spec(tokens, "--data")


def test_bad_files(tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("x.star 180 'unclosed\n")
    with pytest.raises(JobError, match=r"list.txt.*line 1"):
        read_list(bad)
    with pytest.raises(JobError, match="data set file not found"):
        read_dataset(DataSpec(str(tmp_path / "missing.star"), 180.0))
    mics = tmp_path / "m.star"
    starfile.write({"micrographs": pd.DataFrame({"rlnMicrographName": ["a.mrc"]})}, mics)
    with pytest.raises(JobError, match="neither a particles STAR nor a coordinate node"):
        read_dataset(DataSpec(str(mics), 180.0))


def test_incomplete_label_strategies():
    """Half of the particles labelled; the vetting model 'finds' the other half: 'model' keeps every
    background window 0.35 box from them, 'weighted' keeps windows there at weight 0.3, 'none'
    ignores them; near misses stay in every strategy."""
    from scipy.spatial import cKDTree

    from deeppicker_relion.picking.preprocess import preprocess
    from deeppicker_relion.training.train import TrainParams, Vetting, micrograph_examples

    image, centres = blob_micrograph(3, shape=(600, 640), n=40, box=40, snr=2.0)
    pre = preprocess(image, 40.0)
    xy = centres[["x", "y"]].to_numpy()
    labels, hidden = xy[::2], xy[1::2]
    hx, hy = pre.to_resampled(hidden[:, 0], hidden[:, 1])
    grid = np.ones(((pre.image.shape[0] - 64) // 4 + 1, (pre.image.shape[1] - 64) // 4 + 1), bool)
    vetting = Vetting(grid, 4, 32.0, np.column_stack([hx, hy]))
    params = TrainParams(negative_ratio=6.0, near_miss_fraction=0.3)
    found = {}
    for strategy in ("none", "model", "weighted"):
        params.incomplete_labels = strategy
        data, info = micrograph_examples(pre, labels, np.random.default_rng(0), params, complete=False, vetting=vetting)
        d = cKDTree(np.column_stack([hx, hy])).query(info["background_xy"])[0] / 64
        found[strategy] = (d, data)
        assert info["particles"] == len(labels) and info["background"] == round(6 * len(labels))
    assert (found["none"][0] < 0.35).sum() > 0
    assert (found["model"][0] >= 0.35).all()
    d, data = found["weighted"]
    w = data.weights[data.labels == 0]
    np.testing.assert_array_equal(w < 1, d < 0.35)
    assert np.allclose(w[d < 0.35], 0.3) and data.weights[data.labels == 1].min() == 1.0
