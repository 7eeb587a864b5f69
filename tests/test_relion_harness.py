"""Proves tests/relion_harness.py against the real RELION 3.1 binaries.

Import -> External (a throw-away picker written into tmp_path) -> Extract ->
Class2D on four synthetic 512x512 micrographs; an External job that reports
failure; one that never writes an exit file (timeout path); a direct,
pipeliner-free External run; and Extract's handling of edge coordinates.
Skipped when RELION is not installed.
"""

from __future__ import annotations

import stat
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from relion_harness import (
    RELION_MARKS,
    JobStatus,
    RelionJobError,
    RelionTimeout,
    add_external,
    add_job,
    class2d,
    class2d_model_star,
    extract,
    import_micrographs,
    import_raw_micrographs,
    imported_micrographs_star,
    job_output_nodes,
    job_status,
    make_project,
    read_output_nodes,
    run_external_directly,
    run_jobs,
)

pytestmark = RELION_MARKS

PIXEL_SIZE_A = 2.0
MIC_SIZE = 512
BOX_PX = 64
# Per micrograph; (20, 256) puts the 64 px box partly outside (x0 = -12): RELION keeps it.
COORDS = [(100, 100), (256, 256), (400, 300), (150, 420), (20, 256)]
PICKNAME = "testpick"

PICKER_SOURCE = '''\
#!{python}
"""Throw-away RELION 3.1 External picker written by the test (mode: {mode})."""
import os, sys

args = sys.argv[1:]
print("ARGV", " ".join(args), flush=True)
outdir = args[args.index("--o") + 1]
mode = {mode!r}
if mode == "fail":
    print("deliberate failure from the test picker", file=sys.stderr, flush=True)
    open(os.path.join(outdir, "RELION_JOB_EXIT_FAILURE"), "w").close()
    sys.exit(1)
if mode == "no_exit_file":
    sys.exit(0)  # RELION then shows the job as running forever

in_mics = args[args.index("--in_mics") + 1]
names, in_block, columns = [], False, []
for line in open(in_mics):
    words = line.split()
    if not words:
        continue
    if words[0].startswith("data_"):
        in_block, columns = words[0] == "data_micrographs", []
    elif in_block and words[0].startswith("_rln"):
        columns.append(words[0])
    elif in_block and columns and words[0] != "loop_":
        names.append(words[columns.index("_rlnMicrographName")])

coords = {coords!r}
for name in names:
    # Sub-folder layout: <outdir> + micrograph path (leading Type/jobNNN/ removed) + _<pick>.star
    parts = name.split("/")
    if len(parts) > 2 and parts[1].startswith("job"):
        parts = parts[2:]
    rel = os.path.splitext("/".join(parts))[0] + "_{pickname}.star"
    path = os.path.join(outdir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\\ndata_\\n\\nloop_\\n_rlnCoordinateX #1\\n_rlnCoordinateY #2\\n"
                 "_rlnAutopickFigureOfMerit #3\\n_rlnClassNumber #4\\n_rlnAnglePsi #5\\n")
        for x, y in coords:
            fh.write(f"{{x:.1f}} {{y:.1f}} 0.9 0 -999.0\\n")
with open(os.path.join(outdir, "coords_suffix_{pickname}.star"), "w") as fh:
    fh.write(in_mics + "\\n")
with open(os.path.join(outdir, "RELION_OUTPUT_NODES.star"), "w") as fh:
    fh.write("\\ndata_output_nodes\\n\\nloop_\\n_rlnPipeLineNodeName #1\\n_rlnPipeLineNodeType #2\\n"
             + outdir + "coords_suffix_{pickname}.star 2\\n")
open(os.path.join(outdir, "RELION_JOB_EXIT_SUCCESS"), "w").close()
'''


def write_picker(path: Path, mode: str = "pick", coords=COORDS) -> Path:
    """Write the throw-away External executable (modes: pick, fail, no_exit_file)."""
    path.write_text(PICKER_SOURCE.format(python=sys.executable, mode=mode, coords=list(coords),
                                         pickname=PICKNAME))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def write_micrographs(folder: Path, n: int = 4, seed: int = 0) -> list[Path]:
    """Noise plus dark Gaussian blobs at COORDS, float32, pixel size in the header."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:MIC_SIZE, 0:MIC_SIZE]
    paths = []
    for i in range(n):
        image = rng.normal(0.0, 1.0, (MIC_SIZE, MIC_SIZE))
        for x, y in COORDS:
            image -= 2.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 8.0 ** 2))
        path = folder / f"mic_{i:03d}.mrc"
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(image.astype(np.float32))
            mrc.voxel_size = PIXEL_SIZE_A
        paths.append(path)
    return paths


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project", write_micrographs(tmp_path / "raw"), PIXEL_SIZE_A)


def test_import_external_extract_class2d_chain(project: Path, tmp_path: Path) -> None:
    picker = write_picker(tmp_path / "test_picker.py")
    n_iter = 3
    start = time.monotonic()

    imp = import_micrographs(project, "micrographs.star")
    mics = imported_micrographs_star(imp, "micrographs.star")
    ext = add_external(project, picker, mics, {"particle_diameter": 100, "pickname": PICKNAME},
                       threads=2)
    xtr = extract(project, mics, f"{ext}coords_suffix_{PICKNAME}.star", BOX_PX,
                  invert=True, normalise=True)
    c2d = class2d(project, f"{xtr}particles.star", n_classes=2, n_iter=n_iter,
                  particle_diameter_A=100, ctf=True, threads=2)
    assert (imp, ext, xtr, c2d) == ("Import/job001/", "External/job002/", "Extract/job003/",
                                    "Class2D/job004/")
    for job in (imp, ext, xtr, c2d):
        assert job_status(project, job) == JobStatus.SCHEDULED

    statuses = run_jobs(project, [imp, ext, xtr, c2d], timeout_s=300)
    elapsed = time.monotonic() - start
    print(f"\nImport -> External -> Extract -> Class2D took {elapsed:.1f} s")

    assert statuses == {job: 2 for job in (imp, ext, xtr, c2d)}
    for job in (imp, ext, xtr, c2d):
        assert job_status(project, job) == 2

    # The picker's output, in the sub-folder layout, registered as a coordinates node (type 2).
    for i in range(4):
        assert (project / ext / "Micrographs" / f"mic_{i:03d}_{PICKNAME}.star").exists()
    assert read_output_nodes(project / ext) == [(f"{ext}coords_suffix_{PICKNAME}.star", 2)]
    assert job_output_nodes(project, ext) == [(f"{ext}coords_suffix_{PICKNAME}.star", 2)]
    argv = (project / ext / "run.out").read_text()
    assert f"--o {ext} --in_mics {mics} --particle_diameter 100 --pickname {PICKNAME} --j 2" in argv

    particles = starfile.read(project / xtr / "particles.star", always_dict=True)["particles"]
    assert len(particles) == 4 * len(COORDS)  # every coordinate, the edge one included
    assert sorted(set(zip(particles["rlnCoordinateX"], particles["rlnCoordinateY"]))) == \
        sorted((float(x), float(y)) for x, y in COORDS)
    assert {"rlnDefocusU", "rlnAutopickFigureOfMerit", "rlnImageName"} <= set(particles.columns)
    with mrcfile.open(project / xtr / "Micrographs" / "mic_000.mrcs") as stack:
        assert stack.data.shape == (len(COORDS), BOX_PX, BOX_PX)

    model = project / class2d_model_star(c2d, n_iter)
    assert model.exists()
    assert (class2d_model_star(c2d, n_iter), 8) in job_output_nodes(project, c2d)
    assert not (project / ".relion_lock").exists()


def test_external_failure_gives_status_3(project: Path, tmp_path: Path) -> None:
    picker = write_picker(tmp_path / "failing_picker.py", mode="fail")
    imp = import_micrographs(project)
    ext = add_external(project, picker, imported_micrographs_star(imp), {"pickname": PICKNAME})

    with pytest.raises(RelionJobError) as info:
        run_jobs(project, [imp, ext], timeout_s=60)
    assert info.value.statuses == {imp: 2, ext: 3}
    assert "deliberate failure from the test picker" in str(info.value)  # run.err tail
    assert job_status(project, ext) == JobStatus.FAILED
    assert run_jobs(project, [], timeout_s=5) == {}
    assert not (project / ".relion_lock").exists()


def test_missing_exit_file_times_out_and_stays_running(project: Path, tmp_path: Path) -> None:
    picker = write_picker(tmp_path / "silent_picker.py", mode="no_exit_file")
    ext = add_external(project, picker, "micrographs.star", {"pickname": PICKNAME})

    start = time.monotonic()
    with pytest.raises(RelionTimeout) as info:
        run_jobs(project, [ext], timeout_s=5)
    assert time.monotonic() - start < 20
    assert "exit files: none" in str(info.value)
    assert job_status(project, ext) == JobStatus.RUNNING
    assert not (project / ".relion_lock").exists()
    # The project stays usable: a new job can be added after the killed pipeliner.
    assert add_job(project, "Import", {"do_raw": False, "do_other": True,
                                       "fn_in_other": "micrographs.star",
                                       "node_type": "Micrographs STAR file (.star)"}) \
        == "Import/job002/"


def test_missing_input_node_times_out_and_stays_scheduled(project: Path) -> None:
    # The pipeliner waits (forever, 60 s per check) for an input node that never appears.
    xtr = extract(project, "micrographs.star", "Nowhere/coords_suffix_none.star", BOX_PX)
    with pytest.raises(RelionTimeout):
        run_jobs(project, [xtr], timeout_s=3)
    assert job_status(project, xtr) == JobStatus.SCHEDULED
    assert not (project / ".relion_lock").exists()


def test_run_external_directly(project: Path, tmp_path: Path) -> None:
    # "relion_" in the command line makes RELION append --pipeline_control <outdir>.
    picker = write_picker(tmp_path / "relion_fake_picker.py")
    run = run_external_directly(project, picker, "External/job001/", in_mics="micrographs.star",
                                params={"pickname": PICKNAME, "threshold": 0.5}, threads=2)

    assert run.succeeded and run.exit_state == "success"
    assert run.command.startswith(f"{picker} --o External/job001/ --in_mics micrographs.star "
                                  f"--pickname {PICKNAME} --threshold 0.5 --j 2")
    assert run.command.endswith("--pipeline_control External/job001/")
    assert "--pipeline_control External/job001/" in run.stdout_tail  # the picker got it
    assert run.output_nodes == [(f"External/job001/coords_suffix_{PICKNAME}.star", 2)]
    assert (run.outdir / "Micrographs" / f"mic_000_{PICKNAME}.star").exists()

    failing = write_picker(tmp_path / "failing_picker.py", mode="fail")
    run = run_external_directly(project, failing, "External/job002/", in_mics="micrographs.star")
    assert run.exit_state == "failure" and run.returncode == 1
    assert "deliberate failure" in run.stderr_tail


def write_coords(project: Path, coord_dir: str, coords) -> str:
    """Hand-written coordinate files for every micrograph + a 3.1 coords_suffix node."""
    for mic in sorted((project / "Micrographs").glob("*.mrc")):
        path = project / coord_dir / "Micrographs" / f"{mic.stem}_{PICKNAME}.star"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = "".join(f"{x} {y}\n" for x, y in coords)
        path.write_text(f"data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n{rows}")
    node = f"{coord_dir}coords_suffix_{PICKNAME}.star"
    (project / node).write_text("micrographs.star\n")
    return node


def test_extract_edge_coordinates_without_ctf_columns(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", write_micrographs(tmp_path / "raw", n=2),
                           PIXEL_SIZE_A, ctf=None)
    # Boxes partly outside (centre even outside at x = -20) are kept; x = -40 is entirely
    # outside a 64 px box (x + 31 < 0) and makes relion_preprocess stop with an error.
    partly = write_coords(project, "Picks/partly/", [(256, 256), (-20, 256), (511, 511), (30, 3)])
    fully = write_coords(project, "Picks/fully/", [(256, 256), (-40, 256)])
    good = extract(project, "micrographs.star", partly, BOX_PX)
    bad = extract(project, "micrographs.star", fully, BOX_PX)

    statuses = run_jobs(project, [good, bad], timeout_s=120, check=False)
    assert statuses == {good: 2, bad: 3}
    particles = starfile.read(project / good / "particles.star", always_dict=True)["particles"]
    assert len(particles) == 2 * 4
    assert "rlnDefocusU" not in particles.columns
    err = (project / bad / "run.err").read_text()
    assert "lies completely outside micrograph" in err


def test_import_raw_micrographs(project: Path) -> None:
    imp = import_raw_micrographs(project, "Micrographs/*.mrc", PIXEL_SIZE_A)
    run_jobs(project, [imp], timeout_s=60)
    star = starfile.read(project / imported_micrographs_star(imp), always_dict=True)
    assert list(star["micrographs"]["rlnMicrographName"]) == \
        [f"Micrographs/mic_{i:03d}.mrc" for i in range(4)]
    assert float(star["optics"]["rlnMicrographPixelSize"].iloc[0]) == PIXEL_SIZE_A
