"""MRC, STAR and coordinate file I/O: every mode, layout and format, with round trips."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from conftest import write_mrc
from deeppicker_relion.errors import JobError, MicrographError
from deeppicker_relion.io.coords import read_coordinates, write_coordinates
from deeppicker_relion.io.micrographs import coordinate_files, micrograph_list, relative_output_stem
from deeppicker_relion.io.mrc import read_micrograph
from deeppicker_relion.io.star import micrograph_table, read_coordinate_star, write_coordinate_star


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.int16, np.uint16])
def test_reads_every_mrc_mode_as_float32(tmp_path: Path, dtype) -> None:
    data = (np.arange(7 * 9).reshape(7, 9) % 50).astype(dtype)
    path = write_mrc(tmp_path / "m.mrc", data, pixel_size=1.5)
    mic = read_micrograph(path)
    assert mic.data.dtype == np.float32
    assert mic.shape == (7, 9)
    np.testing.assert_array_equal(mic.data, data.astype(np.float32))
    assert mic.pixel_size == pytest.approx(1.5)


def test_single_frame_stack_is_a_micrograph(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(1, 11, 13)).astype(np.float32)
    path = tmp_path / "s.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
    assert read_micrograph(path).shape == (11, 13)


def test_header_without_pixel_size_gives_none(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "m.mrc", np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32))
    assert read_micrograph(path).pixel_size is None


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b"definitely not an MRC file" * 40), "not a readable MRC"),
        (lambda p: write_mrc(p, np.ones((4, 5), np.float32)), "constant"),
        (lambda p: write_mrc(p, np.array([[1, np.nan], [2, 3]], np.float32)), "NaN or Inf"),
        (lambda p: write_mrc(p, np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32)), "stack of 3 frames"),
    ],
)
def test_bad_micrographs_give_one_line_naming_the_file(tmp_path: Path, make, message) -> None:
    path = tmp_path / "bad.mrc"
    make(path)
    with pytest.raises(MicrographError) as err:
        read_micrograph(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_truncated_mrc(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "t.mrc", np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32))
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(MicrographError, match="not a readable MRC"):
        read_micrograph(path)


def _mics_star(path: Path, names: list[str], optics: bool = True, pixel: float = 2.0) -> Path:
    table = pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": 1})
    if optics:
        blocks = {
            "optics": pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnMicrographPixelSize": [pixel]}),
            "micrographs": table,
        }
    else:
        blocks = {"": table.assign(rlnMicrographPixelSize=pixel)}
    starfile.write(blocks, path, overwrite=True)
    return path


def test_micrograph_star_31_and_30_layouts(tmp_path: Path) -> None:
    t31 = micrograph_table(_mics_star(tmp_path / "a.star", ["M/a.mrc", "M/b.mrc"], optics=True, pixel=1.7))
    t30 = micrograph_table(_mics_star(tmp_path / "b.star", ["M/a.mrc"], optics=False, pixel=2.3))
    assert list(t31["pixel_size"]) == [1.7, 1.7]
    assert list(t30["pixel_size"]) == [2.3]


def test_star_without_micrograph_names_is_a_job_error(tmp_path: Path) -> None:
    path = tmp_path / "x.star"
    starfile.write({"": pd.DataFrame({"rlnCoordinateX": [1.0]})}, path)
    with pytest.raises(JobError, match="rlnMicrographName"):
        micrograph_table(path)


def test_micrograph_list_resolves_names_beside_the_star(tmp_path: Path, monkeypatch) -> None:
    write_mrc(tmp_path / "data" / "Mics" / "a.mrc", np.zeros((4, 4), np.float32))
    star = _mics_star(tmp_path / "data" / "mics.star", ["Mics/a.mrc"])
    monkeypatch.chdir(tmp_path)
    table = micrograph_list([str(star)])
    assert table.loc[0, "name"] == "Mics/a.mrc"
    assert Path(table.loc[0, "path"]).resolve() == (tmp_path / "data" / "Mics" / "a.mrc").resolve()
    assert micrograph_list([str(star)], pixel_size=3.0).loc[0, "pixel_size"] == 3.0


def test_relative_output_stem_keeps_subfolders() -> None:
    assert relative_output_stem("MotionCorr/job002/Movies/a.mrc") == "Movies/a"
    assert relative_output_stem("Movies/sub/b.mrc") == "Movies/sub/b"
    assert relative_output_stem("/abs/path/c.mrc") == "c"


PICKS = pd.DataFrame({"x": [10.25, 200.5, 37.0], "y": [5.5, 99.75, 300.125], "score": [0.9, 0.7, 0.55]})


@pytest.mark.parametrize("fmt, suffix", [("star", ".star"), ("box", ".box"), ("txt", ".txt")])
def test_coordinate_round_trip_every_format(tmp_path: Path, fmt: str, suffix: str) -> None:
    path = tmp_path / f"mic{suffix}"
    write_coordinates(path, PICKS, fmt, box_px=41)
    back = read_coordinates(path)
    np.testing.assert_allclose(back["x"], PICKS["x"], atol=0.01)
    np.testing.assert_allclose(back["y"], PICKS["y"], atol=0.01)
    if fmt != "box":
        np.testing.assert_allclose(back["score"], PICKS["score"], atol=1e-3)


def test_box_file_is_corner_based(tmp_path: Path) -> None:
    path = tmp_path / "m.box"
    path.write_text("90\t40\t20\t20\n")
    back = read_coordinates(path)
    assert (back.loc[0, "x"], back.loc[0, "y"]) == (100.0, 50.0)


def test_topaz_table_and_plain_text(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("image_name\tx_coord\ty_coord\tscore\nmic\t12\t34\t-1.5\n")
    (tmp_path / "p.csv").write_text("1.5,2.5\n3,4\n")
    assert read_coordinates(tmp_path / "t.txt").iloc[0].tolist() == [12.0, 34.0, -1.5]
    assert read_coordinates(tmp_path / "p.csv")["y"].tolist() == [2.5, 4.0]


def test_empty_coordinate_star_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "e.star"
    write_coordinate_star(path, PICKS.iloc[:0])
    assert "_rlnCoordinateX" in path.read_text()
    assert len(read_coordinate_star(path)) == 0


def test_coordinate_files_relion31_node_and_stems(tmp_path: Path) -> None:
    mics = pd.DataFrame({"name": ["MotionCorr/job002/Movies/a.mrc", "MotionCorr/job002/Movies/b.mrc"]})
    job = tmp_path / "ManualPick" / "job004"
    write_coordinate_star(job / "Movies" / "a_manualpick.star", PICKS)
    (job / "coords_suffix_manualpick.star").write_text("CtfFind/job003/micrographs_ctf.star\n")
    found = coordinate_files(mics, [str(job / "coords_suffix_manualpick.star")])
    assert found == {"MotionCorr/job002/Movies/a.mrc": job / "Movies" / "a_manualpick.star"}
    # the same files found from the folder, by name
    assert coordinate_files(mics, [str(job)]) == found


def test_coordinate_files_relion4_table(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    mics = pd.DataFrame({"name": ["Movies/a.mrc"]})
    write_coordinate_star(tmp_path / "ManualPick/job004/Movies/a_manualpick.star", PICKS)
    starfile.write(
        {"coordinate_files": pd.DataFrame({"rlnMicrographName": ["Movies/a.mrc"], "rlnMicrographCoordinates": ["ManualPick/job004/Movies/a_manualpick.star"]})},
        tmp_path / "ManualPick/job004/manualpick.star",
    )
    found = coordinate_files(mics, ["ManualPick/job004/manualpick.star"])
    assert len(read_coordinates(found["Movies/a.mrc"])) == 3


def test_names_with_dots_keep_them(tmp_path: Path) -> None:
    """EPU-style names (May08_03.05.02.mrc): only the image extension is dropped."""
    from deeppicker_relion.io.micrographs import strip_image_extension

    assert strip_image_extension("May08_03.05.02.mrc") == "May08_03.05.02"
    assert strip_image_extension("May08_03.05.02") == "May08_03.05.02"
    assert relative_output_stem("MotionCorr/job002/Movies/May08_03.05.02.mrc") == "Movies/May08_03.05.02"
    write_coordinate_star(tmp_path / "May08_03.05.02_deeppicker.star", PICKS)
    write_coordinate_star(tmp_path / "May08_03.05.17_deeppicker.star", PICKS)
    mics = pd.DataFrame({"name": ["Movies/May08_03.05.02.mrc"]})
    assert coordinate_files(mics, [str(tmp_path)]) == {"Movies/May08_03.05.02.mrc": tmp_path / "May08_03.05.02_deeppicker.star"}
