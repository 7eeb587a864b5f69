"""The RELION External jobs (relion_external/) against the real RELION 3.1.3 binaries, plus the node
files of RELION 4 and 5 (not installable here) checked field by field against their formats.

Micrographs: 512 px (pipeline) and 256 px (abort) simulated with deeppicker_relion.simulation.simulate (20S
proteasome, 5 A/px: a 180 A particle is a 36 px box). Jobs run as RELION runs them
(``relion_pipeliner``: status 2 success, 3 failure, 4 aborted) or in-process through ``main(argv)``
in the project directory (same code, without the ~5 s start-up of a new Python with torch).
Picking tests use the shipped general model and are skipped while it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from deeppicker_relion.io import relion_nodes
from deeppicker_relion.io.star import read_coordinate_star
from deeppicker_relion.model import default_weights_path
from deeppicker_relion.jobs.pick import read_summary
from deeppicker_relion.picking.candidates import select
from deeppicker_relion.simulation.simulate import simulate_dataset
from relion_external import job as relion_job
from relion_external import pick as pick_job
from relion_external import train as train_job
from relion_harness import (
    JobStatus,
    add_external,
    class2d,
    class2d_model_star,
    extract,
    import_micrographs,
    imported_micrographs_star,
    job_output_nodes,
    make_project,
    read_output_nodes,
    requires_relion,
    run_jobs,
)

PIXEL_A = 5.0
DIAMETER_A = 180.0
BOX_PX = DIAMETER_A / PIXEL_A  # 36
EXTRACT_BOX = 64
MARKERS = relion_job.EXIT_MARKERS


# --------------------------------------------------------------------------- fixtures and helpers


def _exe(name: str) -> str:
    """The installed console script (its real path, not a pyenv shim)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (pip install -e .)")
    return found


@pytest.fixture(scope="module")
def shipped() -> Path:
    path = default_weights_path()
    if not path.is_file():
        pytest.skip(f"the shipped general model {path} is not there yet")
    return path


@pytest.fixture(scope="module")
def sim512(tmp_path_factory) -> pd.DataFrame:
    """Four 512 px micrographs with 10-15 proteasomes each, and their true centres."""
    out = tmp_path_factory.mktemp("sim512")
    table = simulate_dataset(out, n_micrographs=4, shape=(512, 512), pixel_size_A=PIXEL_A, maps=["proteasome"],
                             seed=3, particles_per_micrograph=(10, 15), empty_fraction=0.0, snr=(0.5, 1.0),
                             contamination_fraction=0.0, carbon_fraction=0.0)
    table["path"] = [out / p for p in table["micrograph_path"]]
    return table


@pytest.fixture
def project(tmp_path: Path, sim512: pd.DataFrame) -> Path:
    """A RELION project with the four micrographs in Micrographs/ and micrographs.star (CTF columns)."""
    return make_project(tmp_path / "project", list(sim512["path"]), PIXEL_A)


def run_main(module, project: Path, args: list[str], capsys) -> tuple[int, str, str]:
    """Run a job's main() in the project directory as RELION would; returns (code, run.out, run.err)."""
    cwd = os.getcwd()
    os.chdir(project)
    try:
        code = module.main(args)
    finally:
        os.chdir(cwd)
    out = capsys.readouterr()
    return code, out.out, out.err


def markers(job_dir: Path) -> list[str]:
    return [m for m in MARKERS if (job_dir / m).exists()]


def coordinate_files(job_dir: Path, pickname: str = "deeppicker") -> dict[str, Path]:
    """Micrograph stem -> coordinate STAR of a pick job (the candidates/ folder excluded)."""
    found = [p for p in job_dir.rglob(f"*_{pickname}.star")
             if p.relative_to(job_dir).parts[0] != "candidates" and not p.name.startswith("coords_suffix_")]
    return {p.name[: -len(f"_{pickname}.star")]: p for p in sorted(found)}


def assert_boxes_inside(job_dir: Path, shape: tuple[int, int], box: int = EXTRACT_BOX) -> int:
    """No pick may lie where RELION's Extract fails: a box COMPLETELY outside the micrograph
    (x + box/2 - 1 < 0 or x - box/2 >= width, same for y). The library's picks are centres of
    network windows that lie inside the micrograph, refined by at most half a grid step, so they
    keep at least ~0.45 particle box from every edge. Returns the number of picks checked."""
    rows, cols = shape
    n = 0
    for path in coordinate_files(job_dir).values():
        picks = read_coordinate_star(path)
        x, y = picks["x"].to_numpy(), picks["y"].to_numpy()
        x0, y0 = np.trunc(x) - box // 2, np.trunc(y) - box // 2
        assert not ((x0 + box - 1 < 0) | (x0 >= cols) | (y0 + box - 1 < 0) | (y0 >= rows)).any(), path
        edge = 0.4 * BOX_PX
        assert ((x >= edge) & (x <= cols - 1 - edge) & (y >= edge) & (y <= rows - 1 - edge)).all(), path
        n += len(picks)
    return n


# --------------------------------------------------------------------------- real RELION 3.1


@requires_relion
def test_pipeline_import_pick_extract_class2d(tmp_path: Path, sim512: pd.DataFrame, shipped: Path) -> None:
    """Import -> External (our pick job, shipped weights) -> Extract -> Class2D: all status 2.
    The micrographs are named as a MotionCorr job's (MotionCorr/job002/Movies/x.mrc): the picks
    must be found by Extract at External/job002/Movies/x_deeppicker.star."""
    project = make_project(tmp_path / "project", list(sim512["path"]), PIXEL_A, mics_dir="MotionCorr/job002/Movies")
    imp = import_micrographs(project)
    mics = imported_micrographs_star(imp)
    ext = add_external(project, _exe("deeppicker_relion_pick"), mics,
                       {"particle_diameter": DIAMETER_A, "threshold": 0.5}, threads=2)
    xtr = extract(project, mics, f"{ext}coords_suffix_deeppicker.star", EXTRACT_BOX)
    c2d = class2d(project, f"{xtr}particles.star", n_classes=2, n_iter=2, particle_diameter_A=DIAMETER_A)
    start = time.monotonic()
    statuses = run_jobs(project, [imp, ext, xtr, c2d], timeout_s=240)
    print(f"\nImport -> pick -> Extract -> Class2D: {time.monotonic() - start:.1f} s")
    assert statuses == {imp: 2, ext: 2, xtr: 2, c2d: 2}

    job_dir = project / ext
    assert markers(job_dir) == [relion_job.SUCCESS]
    assert job_output_nodes(project, ext) == [(f"{ext}coords_suffix_deeppicker.star", 2),
                                              (f"{ext}micrographs_with_particles.star", 1)]
    assert (job_dir / "coords_suffix_deeppicker.star").read_text().strip() == mics
    files = coordinate_files(job_dir)
    assert sorted(files) == [f"sim_{i:04d}" for i in range(4)]
    assert all(p.parent == job_dir / "Movies" for p in files.values())  # sub-folders kept, job prefix dropped
    n_picks = assert_boxes_inside(job_dir, (512, 512))
    assert n_picks > 8, f"the shipped model picked only {n_picks} particles"

    particles = starfile.read(project / xtr / "particles.star", always_dict=True)["particles"]
    assert len(particles) == n_picks
    assert "rlnAutopickFigureOfMerit" in particles.columns
    assert (project / class2d_model_star(c2d, 2)).is_file()

    out = (job_dir / "run.out").read_text()
    assert "progress: 4/4 micrographs" in out and f"picked {n_picks} particles on 4 of 4" in out
    assert (job_dir / "run.err").read_text().strip() == ""
    assert (job_dir / "particles.cs").is_file()
    # the visual report RELION 4/5 show for a job (logfile.pdf) and its PNGs
    assert (job_dir / "logfile.pdf").read_bytes()[:5] == b"%PDF-"
    assert (job_dir / "report_micrographs.png").stat().st_size > 10_000


def _manualpick_node(project: Path, sim512: pd.DataFrame, layout: str) -> str:
    """ManualPick-style coordinates (the true centres) in RELION's layout: a 3.1
    coords_suffix_manualpick.star node or a 4/5 manualpick.star table."""
    job = "ManualPick/job009/"
    rows = []
    for _, row in sim512.iterrows():
        name = f"Micrographs/{row['micrograph']}.mrc"
        path = project / relion_nodes.coordinate_file_name(job, name, "manualpick")
        path.parent.mkdir(parents=True, exist_ok=True)
        centres = row["centres"]
        starfile.write(pd.DataFrame({"rlnCoordinateX": centres["x"], "rlnCoordinateY": centres["y"],
                                     "rlnClassNumber": 0, "rlnAnglePsi": -999.0,
                                     "rlnAutopickFigureOfMerit": -999.0}), path, overwrite=True)
        rows.append((name, relion_nodes.coordinate_file_name(job, name, "manualpick")))
    if layout == "3.1":
        node = f"{job}coords_suffix_manualpick.star"
        (project / node).write_text("micrographs.star\n")
    else:
        node = f"{job}manualpick.star"
        starfile.write({"coordinate_files": pd.DataFrame(rows, columns=["rlnMicrographName",
                                                                       "rlnMicrographCoordinates"])},
                       project / node, overwrite=True)
    return node


@requires_relion
def test_train_job_then_pick_with_its_weights(project: Path, sim512: pd.DataFrame, capsys) -> None:
    """Semi-automated mode: a train job from a ManualPick node (real RELION), then a pick job with
    its model."""
    node = _manualpick_node(project, sim512, "3.1")
    ext = add_external(project, _exe("deeppicker_relion_train"), "micrographs.star",
                       {"particle_diameter": DIAMETER_A, "init": "scratch", "epochs": 4}, threads=1,
                       in_coords=node)
    assert run_jobs(project, [ext], timeout_s=180) == {ext: 2}
    model = project / ext / "model.safetensors"
    assert model.is_file()
    assert markers(project / ext) == [relion_job.SUCCESS]
    assert read_output_nodes(project / ext) == []  # RELION 3.1 has no node type for a model
    out = (project / ext / "run.out").read_text()
    assert "epoch 1:" in out and f"weights = {ext}model.safetensors" in out

    code, out, err = run_main(pick_job, project, ["--o", "External/job010/", "--in_mics", "micrographs.star",
                                                  "--particle_diameter", str(DIAMETER_A), "--weights",
                                                  f"{ext}model.safetensors", "--threshold", "0.3", "--j", "2"],
                              capsys)
    assert code == 0, err
    assert markers(project / "External/job010") == [relion_job.SUCCESS]
    assert f"model {ext}model.safetensors" in out
    assert assert_boxes_inside(project / "External/job010", (512, 512)) > 0


@requires_relion
def test_broken_input_star_gives_failure(project: Path) -> None:
    """A broken micrographs STAR: status 3, FAILURE marker, one line in run.err naming the file."""
    (project / "broken.star").write_text("data_particles\n\nloop_\n_rlnImageName #1\n1@a.mrcs\n")
    ext = add_external(project, _exe("deeppicker_relion_pick"), "broken.star",
                       {"particle_diameter": DIAMETER_A}, threads=1)
    assert run_jobs(project, [ext], timeout_s=60, check=False) == {ext: JobStatus.FAILED}
    assert markers(project / ext) == [relion_job.FAILURE]
    lines = [ln for ln in (project / ext / "run.err").read_text().splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "broken.star" in lines[0] and "rlnMicrographName" in lines[0] and "Traceback" not in lines[0]


@pytest.fixture
def many_small(tmp_path: Path) -> Path:
    """A project with 12 micrographs of 256 px (2 copies of 6 simulated ones)."""
    table = simulate_dataset(tmp_path / "sim256", n_micrographs=6, shape=(256, 256), pixel_size_A=PIXEL_A,
                             maps=["proteasome"], seed=5, particles_per_micrograph=(3, 5), empty_fraction=0.0,
                             snr=(0.5, 1.0), contamination_fraction=0.0, carbon_fraction=0.0)
    links = tmp_path / "many"
    links.mkdir()
    paths = []
    for copy in range(2):
        for name in table["micrograph_path"]:
            paths.append(Path(shutil.copy(tmp_path / "sim256" / name, links / f"c{copy}_{Path(name).name}")))
    return make_project(tmp_path / "project", paths, PIXEL_A)


@requires_relion
def test_abort_mid_run_then_continue(many_small: Path, shipped: Path, capsys) -> None:
    """RELION_JOB_ABORT_NOW while picking: status 4, ABORTED, ABORT_NOW removed, finished
    micrographs kept; the same command again (RELION's continue) picks only the rest."""
    project = many_small
    ext = add_external(project, _exe("deeppicker_relion_pick"), "micrographs.star",
                       {"particle_diameter": DIAMETER_A}, threads=2)
    job_dir = project / ext
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run_jobs(project, [ext], timeout_s=120, check=False)))
    runner.start()
    deadline = time.monotonic() + 100
    while not coordinate_files(job_dir) and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    (job_dir / relion_job.ABORT_NOW).touch()
    runner.join()
    assert result == {ext: JobStatus.ABORTED}
    assert markers(job_dir) == [relion_job.ABORTED]
    assert not (job_dir / relion_job.ABORT_NOW).exists()
    done = len(coordinate_files(job_dir))
    assert 1 <= done < 12
    assert "aborted on request" in (job_dir / "run.out").read_text()

    code, out, err = run_main(pick_job, project, ["--o", ext, "--in_mics", "micrographs.star",
                                                  "--particle_diameter", str(DIAMETER_A), "--j", "2"], capsys)
    assert code == 0, err
    assert markers(job_dir) == [relion_job.SUCCESS]
    assert f"{done} of 12 micrographs were picked before" in out
    summary = read_summary(job_dir / "picking_summary.star")
    assert (summary["status"] == "done before").sum() == done and (summary["status"] == "picked").sum() == 12 - done
    assert len(coordinate_files(job_dir)) == 12


# --------------------------------------------------------------------------- in-process


def pick_args(job: str, *extra: str) -> list[str]:
    return ["--o", job, "--in_mics", "micrographs.star", "--particle_diameter", str(DIAMETER_A), "--j", "2", *extra]


def test_continue_skips_done_and_rethresholds_without_rescoring(project: Path, shipped: Path, capsys,
                                                               monkeypatch) -> None:
    job_dir = project / "External/job003"
    code, out, err = run_main(pick_job, project, pick_args("External/job003/", "--threshold", "0.3"), capsys)
    assert code == 0, err
    cand = {p: p.stat().st_mtime_ns for p in (job_dir / "candidates").rglob("*.star")}
    picks = {p: p.stat().st_mtime_ns for p in coordinate_files(job_dir).values()}
    assert len(cand) == len(picks) == 4

    # Same command again: nothing is picked again.
    code, out, err = run_main(pick_job, project, pick_args("External/job003/", "--threshold", "0.3"), capsys)
    assert code == 0 and "4 of 4 micrographs were picked before" in out
    assert {p: p.stat().st_mtime_ns for p in coordinate_files(job_dir).values()} == picks
    assert set(read_summary(job_dir / "picking_summary.star")["status"]) == {"done before"}

    # A new threshold and max_picks: picks rewritten from the saved candidates, candidates untouched.
    code, out, err = run_main(pick_job, project, pick_args("External/job003/", "--threshold", "0.7",
                                                           "--max_picks", "5"), capsys)
    assert code == 0, err
    assert "re-thresholded 4 micrographs" in out and "no re-scoring" in out
    assert {p: p.stat().st_mtime_ns for p in cand} == cand
    for stem, path in coordinate_files(job_dir).items():
        expect = select(read_coordinate_star(job_dir / "candidates/Micrographs" / f"{stem}.star"), 0.7, 5)
        got = read_coordinate_star(path)
        assert len(got) <= 5 and (got["score"] >= 0.7).all()
        np.testing.assert_allclose(got[["x", "y", "score"]].to_numpy(), expect[["x", "y", "score"]].to_numpy(),
                                   atol=1e-3)
    assert markers(job_dir) == [relion_job.SUCCESS]

    # Another particle diameter cannot continue this job: FAILURE, one line naming the settings file.
    code, out, err = run_main(pick_job, project, ["--o", "External/job003/", "--in_mics", "micrographs.star",
                                                  "--particle_diameter", "150"], capsys)
    assert code == 1 and markers(job_dir) == [relion_job.FAILURE]
    assert len(err.strip().splitlines()) == 1 and "deeppicker_settings.json" in err and "new job" in err
    # ... nor another test-time augmentation (its scores differ)
    code, out, err = run_main(pick_job, project, pick_args("External/job003/", "--threshold", "0.7", "--max_picks", "5",
                                                           "--augment", "1"), capsys)  # fmt: skip
    assert code == 1 and markers(job_dir) == [relion_job.FAILURE]
    assert len(err.strip().splitlines()) == 1 and "augment setting" in err and "new job" in err
    # ... nor another dark-region filter (it acts when scoring, so saved candidates cannot follow it)
    code, out, err = run_main(pick_job, project, pick_args("External/job003/", "--threshold", "0.7", "--max_picks", "5",
                                                           "--dark_sigma", "0"), capsys)  # fmt: skip
    assert code == 1 and markers(job_dir) == [relion_job.FAILURE]
    assert len(err.strip().splitlines()) == 1 and "dark_sigma setting" in err and "new job" in err
    # ... nor without the centring network (it moves the candidates when scoring)
    code, out, err = run_main(pick_job, project, pick_args("External/job003/", "--threshold", "0.7", "--max_picks", "5",
                                                           "--recentre", "no"), capsys)  # fmt: skip
    assert code == 1 and markers(job_dir) == [relion_job.FAILURE]
    assert len(err.strip().splitlines()) == 1 and "recentre setting" in err and "new job" in err
    # ... nor a size check that would pick the rest at another size than the micrographs picked
    # (here forced: the counts come from a stand-in that finds most candidates at 1.4 x the box)
    from deeppicker_relion.picking import sizecheck

    record = json.loads((job_dir / "size_check.json").read_text())
    assert record["mode"] == "auto" and record["factor_used"] == 1.0
    given_px = DIAMETER_A / PIXEL_A
    monkeypatch.setattr(sizecheck, "count_confident",
                        lambda model, mic, box, params, device: 40 if abs(box / given_px - 1.4) < 0.01 else 5)
    code, out, err = run_main(pick_job, project, pick_args("External/job003/", "--threshold", "0.7", "--max_picks", "5",
                                                           "--size_check", "adopt"), capsys)  # fmt: skip
    assert code == 1 and markers(job_dir) == [relion_job.FAILURE]
    assert len(err.strip().splitlines()) == 1 and "size_check.json" in err and "new job" in err
    assert "picked at the given size x 1.00" in err and "others at x 1.40" in err
    # 'warn' and 'off' pick at the given size, as the job did
    for mode in ("warn", "off"):
        code, out, err = run_main(pick_job, project, pick_args("External/job003/", "--threshold", "0.7",
                                                               "--max_picks", "5", "--size_check", mode), capsys)  # fmt: skip
        assert code == 0 and markers(job_dir) == [relion_job.SUCCESS], err
    code, out, err = run_main(pick_job, project, pick_args("External/job003/", "--size_check", "sometimes"), capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "size_check must be one of" in err


def test_rethresholding_writes_what_a_fresh_job_picks(project: Path, shipped: Path, capsys) -> None:
    """Continuing with a new threshold keeps exactly the saved candidates a fresh job picks: those
    whose figure of merit is at least the threshold, with the same figures of merit."""
    for job, extra in (("External/job010/", ("--threshold", "0.95")), ("External/job010/", ("--threshold", "0.2")),
                       ("External/job011/", ("--threshold", "0.2"))):
        code, out, err = run_main(pick_job, project, pick_args(job, *extra), capsys)
        assert code == 0, err
    again, fresh = coordinate_files(project / "External/job010"), coordinate_files(project / "External/job011")
    assert again.keys() == fresh.keys() and len(fresh) == 4
    counts = []
    for stem in fresh:
        a, b = read_coordinate_star(again[stem]), read_coordinate_star(fresh[stem])
        np.testing.assert_allclose(a[["x", "y", "score"]].to_numpy(), b[["x", "y", "score"]].to_numpy(), atol=1e-3)
        counts.append(len(b))
    assert sum(counts) > 0


def test_bad_micrograph_is_skipped_and_the_job_succeeds(project: Path, shipped: Path, capsys) -> None:
    bad = project / "Micrographs" / "sim_0002.mrc"
    bad.unlink()
    bad.write_bytes(b"not an MRC file" * 10)
    code, out, err = run_main(pick_job, project, pick_args("External/job004/"), capsys)
    assert code == 0, err
    job_dir = project / "External/job004"
    assert markers(job_dir) == [relion_job.SUCCESS]
    failed = starfile.read(job_dir / "failed_micrographs.star")
    assert list(failed["rlnMicrographName"]) == ["Micrographs/sim_0002.mrc"]
    for text in (out, err):
        assert "Micrographs/sim_0002.mrc" in text and "skipped" in text
    # Only the three good micrographs are in the node / CryoSPARC outputs.
    assert sorted(coordinate_files(job_dir)) == ["sim_0000", "sim_0001", "sim_0003"]
    assert "1 failed, listed in" in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--in_mics", "missing.star", "--particle_diameter", "180"], "missing.star: STAR file not found"),
        (["--in_mics", "micrographs.star"], "particle_diameter"),
        (["--in_mics", "micrographs.star", "--particle_diameter", "180", "--weights", "bad.safetensors"],
         "bad.safetensors: corrupt or unreadable"),
        (["--in_mics", "micrographs.star", "--particle_diameter", "180", "--threshold", "2"], "threshold"),
        (["--in_mics", "micrographs.star", "--particle_diameter", "180", "--dark_sigma", "-1"], "dark_sigma"),
        (["--in_mics", "micrographs.star", "--particle_diameter", "180", "--recentre", "maybe"], "recentre must be yes or no"),
        (["--in_mics", "micrographs.star", "--particle_diameter", "abc"], "invalid float value: 'abc'"),
        (["--in_mics", "micrographs.star", "--particle_diameter", "180", "--relion_version", "2"], "RELION version"),
    ],
)
def test_whole_job_problems_give_one_line_and_failure(project: Path, capsys, args, needle) -> None:
    (project / "bad.safetensors").write_bytes(b"\0" * 64)
    code, out, err = run_main(pick_job, project, ["--o", "External/job005/", *args, "--pipeline_control",
                                                  "External/job005/"], capsys)
    assert code == 1
    assert markers(project / "External/job005") == [relion_job.FAILURE]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("deeppicker_relion_pick: error:"), err
    assert "ignoring unknown" not in out + err  # --pipeline_control is RELION's own


def test_exit_markers_on_every_path(tmp_path: Path, capsys) -> None:
    job_dir = tmp_path / "External/job001"
    job_dir.mkdir(parents=True)
    for name in MARKERS:  # stale markers of an earlier run
        (job_dir / name).touch()

    def crash(args, job):
        raise RuntimeError("boom")

    def abort(args, job):
        (job.outdir / relion_job.ABORT_NOW).touch()
        job.check_abort()

    def ok(args, job):
        assert markers(job.outdir) == []  # removed on entry

    parser = lambda: relion_job.make_parser("prog", "test")  # noqa: E731
    argv = ["--o", str(job_dir), "--unknown", "7", "--pipeline_control", str(job_dir)]
    assert relion_job.run_external("prog", argv, parser, ok) == 0
    assert markers(job_dir) == [relion_job.SUCCESS]
    assert "ignoring unknown arguments: --unknown 7" in capsys.readouterr().err

    assert relion_job.run_external("prog", argv, parser, crash) == 1
    err = capsys.readouterr().err
    assert markers(job_dir) == [relion_job.FAILURE]
    assert "Traceback" in err and 'raise RuntimeError("boom")' in err
    assert err.strip().splitlines()[-1] == "prog: unexpected error (please report it with run.err): RuntimeError: boom"

    assert relion_job.run_external("prog", argv, parser, abort) == 2
    assert markers(job_dir) == [relion_job.ABORTED] and not (job_dir / relion_job.ABORT_NOW).exists()

    def terminated(args, job):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    assert relion_job.run_external("prog", argv, parser, terminated) == 1
    assert markers(job_dir) == [relion_job.FAILURE] and "stopped by SIGTERM" in capsys.readouterr().err

    # Without --o nothing can be marked: an error line and exit code 2.
    assert relion_job.run_external("prog", ["--j", "2"], parser, ok) == 2
    assert "--o" in capsys.readouterr().err


def test_progress_lines_are_few() -> None:
    lines: list[str] = []

    class Log:
        def info(self, fmt, *args):
            lines.append(fmt % args)

    now = [0.0]
    progress = relion_job.Progress(Log(), clock=lambda: now[0])
    total = 10_000
    for done in range(1, total + 1):  # 0.01 s per micrograph: 100 s in all
        now[0] = done * 0.01
        progress(done, total, 3 * done, now[0])
    assert 20 <= len(lines) <= 45, len(lines)
    assert lines[-1].startswith("progress: 10000/10000 micrographs (100 %), 30000 particles, 0.01 s/micrograph, ETA 0 s")
    assert "ETA 1 min 40 s" in lines[0]

    lines.clear()
    slow = relion_job.Progress(Log(), clock=lambda: now[0])
    for done in range(1, 101):  # 60 s per micrograph: one line per 10 s at most
        now[0] = done * 60.0
        slow(done, 100, done, now[0])
    assert len(lines) <= 100 and "ETA 1 h 39 min" in lines[0]


def _pipeline_star(version: str) -> str:
    """default_pipeline.star of a project with one running External job, as each version writes it."""
    if version == "5":
        return ("\n# version 50001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 3\n\n\n# version 50001\n\n"
                "data_pipeline_processes\n\nloop_\n_rlnPipeLineProcessName #1\n_rlnPipeLineProcessAlias #2\n"
                "_rlnPipeLineProcessTypeLabel #3\n_rlnPipeLineProcessStatusLabel #4\n"
                "External/job002/ None relion.external Running\n\n")
    if version == "4":
        return ("\n# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 3\n\n\n# version 30001\n\n"
                "data_pipeline_processes\n\nloop_\n_rlnPipeLineProcessName #1\n_rlnPipeLineProcessAlias #2\n"
                "_rlnPipeLineProcessTypeLabel #3\n_rlnPipeLineProcessStatusLabel #4\n"
                "External/job002/ None relion.external Running\n\n")
    return ("\n# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 3\n\n\n# version 30001\n\n"
            "data_pipeline_processes\n\nloop_\n_rlnPipeLineProcessName #1\n_rlnPipeLineProcessAlias #2\n"
            "_rlnPipeLineProcessType #3\n_rlnPipeLineProcessStatus #4\nExternal/job002/ None 99 0\n\n")


@pytest.mark.parametrize("version", ["3.1", "4", "5"])
def test_detect_relion_version(tmp_path: Path, version: str) -> None:
    assert relion_nodes.detect_relion_version(tmp_path) is None
    (tmp_path / "default_pipeline.star").write_text(_pipeline_star(version))
    assert relion_nodes.detect_relion_version(tmp_path) == version
    assert relion_nodes.resolve_relion_version("auto", tmp_path)[0] == version
    assert relion_nodes.resolve_relion_version("4.0", tmp_path)[0] == "4"


def test_relion_nodes_library(tmp_path: Path) -> None:
    """The small public functions deeppicker merge uses too."""
    from deeppicker_relion.errors import JobError

    assert [relion_nodes.parse_relion_version(v) for v in ("auto", "", None, "3", "3.1.3", "4.0", "5", "v5.0")] == \
        [None, None, None, "3.1", "3.1", "4", "5", "5"]
    with pytest.raises(JobError):
        relion_nodes.parse_relion_version("6")
    assert relion_nodes.coordinate_file_name("External/job005", "MotionCorr/job002/Movies/a.mrc", "dp") == \
        "External/job005/Movies/a_dp.star"
    assert relion_nodes.coordinate_file_name("External/job005/", "Movies/sub/b.tiff.mrc", "dp") == \
        "External/job005/Movies/sub/b.tiff_dp.star"
    mics = ["MotionCorr/job002/Movies/a.mrc", "MotionCorr/job002/Movies/b.mrc"]
    for version, node, kind in (("3.1", "External/job005/coords_suffix_dp.star", 2),
                                ("4", "External/job005/autopick.star", RELION_FORMATS["4"][1]),
                                ("5", "External/job005/autopick.star", RELION_FORMATS["5"][1])):
        name = relion_nodes.write_coordinate_node("External/job005/", mics, "dp", "CtfFind/job003/mics.star", version,
                                                  project_dir=tmp_path)
        assert name == node == relion_nodes.coordinate_node_name("External/job005", "dp", version)
        if version == "3.1":
            assert (tmp_path / name).read_text() == "CtfFind/job003/mics.star\n"
        else:
            table = starfile.read(tmp_path / name)
            assert list(table["rlnMicrographCoordinates"]) == ["External/job005/Movies/a_dp.star",
                                                               "External/job005/Movies/b_dp.star"]
        rows = relion_nodes.write_output_nodes("External/job005/", [(name, relion_nodes.COORDINATES),
                                                                    ("External/job005/m.safetensors",
                                                                     relion_nodes.MODEL)], version, tmp_path)
        assert rows == relion_nodes.read_output_nodes("External/job005/", tmp_path)
        assert rows[0] == (node, kind) and len(rows) == (1 if version == "3.1" else 2)
    with pytest.raises(JobError):
        relion_nodes.write_coordinate_node("External/job005/", ["a b.mrc"], "dp", "m.star", "5", project_dir=tmp_path)


# RELION's own formats, from 3dem/relion src/pipeline_jobs.h (LABEL_AUTOPICK_COORDS of ver4.0 and
# ver5.0) and the autopick.star that AutoPick writes (data_coordinate_files: rlnMicrographName,
# rlnMicrographCoordinates), version line 30001 (4.0) / 50001 (5.0).
RELION_FORMATS = {
    "4": ("30001", "MicrographsCoords.star.relion.autopick"),
    "5": ("50001", "MicrographCoordsGroup.star.relion.autopick"),
}


def test_relion_4_and_5_layouts(project: Path, shipped: Path, capsys) -> None:
    job = "External/job006/"
    job_dir = project / job
    stems = [f"sim_{i:04d}" for i in range(4)]
    for version in ("5", "4"):  # the second run continues the first: only the node files change
        (project / "default_pipeline.star").write_text(_pipeline_star(version))
        code, out, err = run_main(pick_job, project, pick_args(job), capsys)
        assert code == 0, err
        assert f"node files for RELION {version} (detected from" in out
        version_line, label = RELION_FORMATS[version]

        text = (job_dir / "autopick.star").read_text()
        assert f"# version {version_line}" in text
        blocks = starfile.read(job_dir / "autopick.star", always_dict=True)
        assert list(blocks) == ["coordinate_files"]
        table = blocks["coordinate_files"]
        assert list(table.columns) == ["rlnMicrographName", "rlnMicrographCoordinates"]
        assert list(table["rlnMicrographName"]) == [f"Micrographs/{s}.mrc" for s in stems]
        assert list(table["rlnMicrographCoordinates"]) == [f"{job}Micrographs/{s}_deeppicker.star" for s in stems]
        assert all((project / p).is_file() for p in table["rlnMicrographCoordinates"])

        text = (job_dir / "RELION_OUTPUT_NODES.star").read_text()
        assert f"# version {version_line}" in text
        nodes = starfile.read(job_dir / "RELION_OUTPUT_NODES.star", always_dict=True)
        assert list(nodes) == ["output_nodes"]
        row = nodes["output_nodes"]
        row = row if isinstance(row, pd.DataFrame) else pd.DataFrame([row])
        assert list(row.columns) == ["rlnPipeLineNodeName", "rlnPipeLineNodeTypeLabel"]
        mics_label = relion_nodes.node_type(relion_nodes.MICROGRAPHS, version)
        assert mics_label == {"4": "MicrographsData.star.relion", "5": "MicrographGroupMetadata.star.relion"}[version]
        assert row.values.tolist() == [[f"{job}autopick.star", label], [f"{job}micrographs_with_particles.star", mics_label]]
        assert not (job_dir / "coords_suffix_deeppicker.star").exists()

        # Per-micrograph files: RELION's coordinate columns.
        coords = starfile.read(job_dir / "Micrographs" / "sim_0000_deeppicker.star")
        assert list(coords.columns) == ["rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit",
                                        "rlnClassNumber", "rlnAnglePsi"]

    # The model node of a train job.
    assert relion_nodes.node_type(relion_nodes.MODEL, "5") == "ParamsData.safetensors.deeppicker.model"
    assert relion_nodes.node_type(relion_nodes.MODEL, "4") == "ProcessData.safetensors.deeppicker.model"
    assert relion_nodes.node_type(relion_nodes.MODEL, "3.1") is None


def test_train_job_with_relion5_manualpick_star(project: Path, sim512: pd.DataFrame, capsys) -> None:
    node = _manualpick_node(project, sim512, "5")
    (project / "default_pipeline.star").write_text(_pipeline_star("5"))
    code, out, err = run_main(train_job, project, ["--o", "External/job007/", "--in_mics", "micrographs.star",
                                                   "--in_coords", node, "--particle_diameter", str(DIAMETER_A),
                                                   "--init", "scratch", "--epochs", "1", "--j", "2"], capsys)
    assert code == 0, err
    assert "4 with coordinates" in out
    assert relion_nodes.read_output_nodes("External/job007/", project) == [
        ("External/job007/model.safetensors", "ParamsData.safetensors.deeppicker.model")]


def test_cryosparc_round_trip_matches_star(project: Path, shipped: Path, capsys) -> None:
    from cryosparc.dataset import Dataset

    # "--gpu" and "--max_picks" without values: RELION passes a label whose value field is empty.
    code, out, err = run_main(pick_job, project, pick_args("External/job008/", "--threshold", "0.3", "--gpu",
                                                           "--max_picks"), capsys)
    assert code == 0, err
    assert "max picks no limit, device cpu" in out
    job_dir = project / "External/job008"
    cs = Dataset.load(job_dir / "particles.cs")
    star = {f"Micrographs/{stem}.mrc": read_coordinate_star(p) for stem, p in coordinate_files(job_dir).items()}
    assert len(cs) == sum(len(t) for t in star.values()) > 0
    paths = np.asarray(cs["location/micrograph_path"]).astype(str)
    shape = np.asarray(cs["location/micrograph_shape"])
    assert (shape == [512, 512]).all()
    for name, picks in star.items():
        rows = paths == name
        x = np.asarray(cs["location/center_x_frac"])[rows] * shape[rows, 1]
        y = np.asarray(cs["location/center_y_frac"])[rows] * shape[rows, 0]
        got = sorted(zip(np.round(x, 2), np.round(y, 2)))
        expect = sorted(zip(np.round(picks["x"], 2), np.round(picks["y"], 2)))
        np.testing.assert_allclose(np.array(got), np.array(expect), atol=0.02)
        np.testing.assert_allclose(np.sort(np.asarray(cs["pick_stats/ncc_score"])[rows]),
                                   np.sort(picks["score"].to_numpy()), atol=1e-5)
    np.testing.assert_allclose(np.asarray(cs["location/micrograph_psize_A"]), PIXEL_A)


def test_shards_write_their_own_summaries(project: Path, shipped: Path, capsys) -> None:
    for shard in ("0/2", "1/2"):
        code, out, err = run_main(pick_job, project, pick_args("External/job011/", "--shard", shard), capsys)
        assert code == 0, err
        assert "run deeppicker merge" in out
    job_dir = project / "External/job011"
    for i in range(2):
        table = read_summary(job_dir / f"picking_summary.shard-{i}-of-2.star")
        assert len(table) == 2
    assert len(coordinate_files(job_dir)) == 4
    for name in ("coords_suffix_deeppicker.star", "RELION_OUTPUT_NODES.star", "particles.cs"):
        assert not (job_dir / name).exists()  # deeppicker merge writes them
    settings = json.loads((job_dir / "deeppicker_settings.shard-1-of-2.json").read_text())
    assert settings["particle_diameter"] == DIAMETER_A



def test_size_check_adopt_picks_at_the_size_found_and_continue_keeps_it(project: Path, shipped: Path, capsys,
                                                                         monkeypatch) -> None:
    """RELION mode with size_check adopt: the size found (here forced: the counts come from a stand-in
    that finds most candidates at 1.4 x the given box) is what every micrograph is picked at, in the
    summary and the report notes; a continue reuses the record without scoring the samples again."""
    from deeppicker_relion.picking import sizecheck

    given_px = DIAMETER_A / PIXEL_A
    monkeypatch.setattr(sizecheck, "count_confident",
                        lambda model, mic, box, params, device: 40 if abs(box / given_px - 1.4) < 0.01 else 5)
    job_dir = project / "External/job021"
    code, out, err = run_main(pick_job, project, pick_args("External/job021/", "--size_check", "adopt"), capsys)
    assert code == 0 and markers(job_dir) == [relion_job.SUCCESS], err
    assert "picking at that size" in err
    record = json.loads((job_dir / "size_check.json").read_text())
    assert record["mode"] == "adopt" and record["factor_used"] == pytest.approx(1.4)
    summary = read_summary(job_dir / "picking_summary.star")
    np.testing.assert_allclose(summary["box_px"], 1.4 * given_px, rtol=1e-6)
    assert len(coordinate_files(job_dir)) == 4
    monkeypatch.setattr(sizecheck, "count_confident", lambda *a: pytest.fail("the samples were scored again"))
    code, out, err = run_main(pick_job, project, pick_args("External/job021/", "--size_check", "adopt",
                                                           "--threshold", "0.7"), capsys)  # fmt: skip
    assert code == 0 and "re-thresholded 4 micrographs" in out, err
