"""Bad input through the real ``deeppicker`` CLI: each case gives exactly one error line naming the
file and the problem, never a traceback.

Policy (issue 5): a problem with one micrograph skips it (one ``ERROR skipped: <file>: <problem>``
line), lists it in ``failed_micrographs.star`` and the job still succeeds (exit 0) when any
micrograph was picked; a problem with the job as a whole (arguments, STAR, weights, output folder)
stops it before any work with ``deeppicker: error: <file>: <problem>`` (exit 2). Every output file
is written atomically: an interrupted run leaves no half-written file, and a rerun picks only the
micrographs not finished (summary status ``done before`` for the others).

Micrographs: four 256 px simulated micrographs (20S proteasome, 5 A/px, 180 A = 36 px box), copied
as needed; a randomly initialised model saved as safetensors (what is picked does not matter
here). The CLI runs in-process (``main(argv)``) except where a real process must be killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from deeppicker_relion.cli.main import main as cli
from deeppicker_relion.io import atomic as _atomic
from deeppicker_relion.io.star import read_star
from deeppicker_relion.model import DeepPickerNet, build_model, save_model
from deeppicker_relion.jobs.pick import read_summary
from deeppicker_relion.simulation.simulate import simulate_dataset

PIXEL_A = 5.0
DIAMETER = "180"


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    """Four 256 px micrographs in ``sim/micrographs/`` (pixel size in the header) + their STAR."""
    out = tmp_path_factory.mktemp("sim")
    simulate_dataset(out, n_micrographs=4, shape=(256, 256), pixel_size_A=PIXEL_A, maps=["proteasome"], seed=7,
                     particles_per_micrograph=(4, 6), empty_fraction=0.0, snr=(0.5, 1.0),
                     contamination_fraction=0.0, carbon_fraction=0.0)
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random.safetensors"
    save_model(build_model(), path, {"recipe": "random, for tests"})
    return path


def write_mrc(path: Path, data: np.ndarray, pixel_size: float | None = PIXEL_A) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # mrcfile warns about the NaN / Inf written on purpose
        warnings.simplefilter("ignore")
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(data, dtype=data.dtype))
            if pixel_size:
                mrc.voxel_size = pixel_size
    return path


def mics_star(path: Path, names: list[str], pixel_size: float | None = PIXEL_A, optics: bool = True) -> Path:
    """A micrographs STAR: RELION 3.1 (data_optics + data_micrographs) or 3.0 (one table)."""
    mics = pd.DataFrame({"rlnMicrographName": names})
    if optics:
        groups = pd.DataFrame({"rlnOpticsGroupName": ["g1"], "rlnOpticsGroup": [1],
                               "rlnMicrographPixelSize": [pixel_size], "rlnVoltage": [300.0]})
        starfile.write({"optics": groups, "micrographs": mics.assign(rlnOpticsGroup=1)}, path, overwrite=True)
    else:
        starfile.write(mics, path, overwrite=True)
    return path


def project(root: Path, sim: Path, n: int = 3) -> Path:
    """A project folder with ``n`` good micrographs ``Micrographs/good<i>.mrc``."""
    (root / "Micrographs").mkdir(parents=True)
    sources = sorted((sim / "micrographs").glob("*.mrc"))
    for i in range(n):
        shutil.copy(sources[i % len(sources)], root / "Micrographs" / f"good{i}.mrc")
    return root


def run(argv: list[str], capsys, cwd: Path) -> tuple[int, str]:
    """``deeppicker <argv>`` in ``cwd``; returns (exit code, stderr)."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        code = cli(argv)
    finally:
        os.chdir(old)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if " ERROR " in ln or "error:" in ln]


def no_temporary_files(folder: Path) -> None:
    left = [p for p in folder.rglob(".*") if ".tmp" in p.name or "write-test" in p.name] if folder.exists() else []
    assert not left, left


def pick_argv(star: str, weights: Path, out: str = "picks", *extra: str) -> list[str]:
    return ["pick", star, "--diameter", DIAMETER, "--weights", str(weights), "-o", out, "-j", "1", "--no-report",
            *extra]


# --------------------------------------------------------------------------- one bad micrograph


def _frames(sim: Path) -> np.ndarray:
    return mrcfile.read(next((sim / "micrographs").glob("*.mrc"))).copy()


BAD_MICROGRAPHS = {
    "missing": (lambda p, img: None, "micrograph file not found"),
    "truncated": (lambda p, img: p.write_bytes(write_mrc(p, img).read_bytes()[:40000]), "truncated"),
    "empty_file": (lambda p, img: p.write_bytes(b""), "shorter than an MRC header"),
    "not_mrc": (lambda p, img: p.write_text("<html>a web page saved as .mrc</html>\n" * 50), "not an MRC file"),
    "nan": (lambda p, img: write_mrc(p, np.where(np.arange(img.size).reshape(img.shape) == 99, np.nan, img)
                                     .astype(np.float32)), "NaN or Inf"),
    "inf": (lambda p, img: write_mrc(p, np.where(np.arange(img.size).reshape(img.shape) == 7, np.inf, img)
                                     .astype(np.float32)), "NaN or Inf"),
    "constant": (lambda p, img: write_mrc(p, np.full(img.shape, 3.0, np.float32)), "constant image"),
    "smaller_than_box": (lambda p, img: write_mrc(p, img[:30, :40]), "larger than the micrograph"),
    "movie": (lambda p, img: write_mrc(p, np.stack([img, img, img])), "stack of 3 frames"),
}


@pytest.mark.parametrize("case", list(BAD_MICROGRAPHS))
def test_one_bad_micrograph_is_skipped_the_job_succeeds(case: str, sim: Path, weights: Path, tmp_path: Path,
                                                        capsys) -> None:
    make, problem = BAD_MICROGRAPHS[case]
    root = project(tmp_path / "p", sim, n=2)
    bad = root / "Micrographs" / f"{case}.mrc"
    make(bad, _frames(sim))
    names = ["Micrographs/good0.mrc", f"Micrographs/{case}.mrc", "Micrographs/good1.mrc"]
    mics_star(root / "micrographs.star", names)

    code, err = run(pick_argv("micrographs.star", weights), capsys, root)

    assert code == 0, err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert f"Micrographs/{case}.mrc" in lines[0] and problem in lines[0] and "skipped" in lines[0]
    summary = read_summary(root / "picks" / "picking_summary.star").set_index("rlnMicrographName")
    assert list(summary["status"]) == ["picked", "failed", "picked"]
    failed = starfile.read(root / "picks" / "failed_micrographs.star")
    assert list(failed["rlnMicrographName"]) == [f"Micrographs/{case}.mrc"]
    assert problem in failed["reason"].iloc[0]
    coords = sorted(p.name for p in (root / "picks" / "Micrographs").glob("*_deeppicker.star"))
    assert coords == ["good0_deeppicker.star", "good1_deeppicker.star"]
    no_temporary_files(root / "picks")


def test_all_micrographs_bad_fails(sim: Path, weights: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "p"
    (root / "Micrographs").mkdir(parents=True)
    write_mrc(root / "Micrographs" / "c.mrc", np.ones((64, 64), np.float32))
    code, err = run(pick_argv("Micrographs/c.mrc", weights), capsys, root)
    assert code == 1 and "Traceback" not in err
    assert len(error_lines(err)) == 1 and "constant" in error_lines(err)[0]
    assert "picked 0 particles on 0 of 1 micrographs" in err


# --------------------------------------------------------------------------- the job as a whole


def test_star_without_data_optics_is_accepted(sim: Path, weights: Path, tmp_path: Path, capsys) -> None:
    """RELION 3.0 layout: one table; the pixel size comes from the MRC header, or from
    rlnDetectorPixelSize / rlnMagnification when the header has none."""
    root = project(tmp_path / "p", sim, n=2)
    mics_star(root / "v30.star", ["Micrographs/good0.mrc", "Micrographs/good1.mrc"], optics=False)
    code, err = run(pick_argv("v30.star", weights), capsys, root)
    assert code == 0 and not error_lines(err), err
    assert set(read_summary(root / "picks" / "picking_summary.star")["status"]) == {"picked"}

    write_mrc(root / "Micrographs" / "nopx.mrc", _frames(sim), pixel_size=None)
    starfile.write(pd.DataFrame({"rlnMicrographName": ["Micrographs/nopx.mrc"], "rlnDetectorPixelSize": [5.0],
                                 "rlnMagnification": [10000.0]}), root / "v30px.star")
    code, err = run(pick_argv("v30px.star", weights, "picks_px"), capsys, root)
    assert code == 0 and not error_lines(err), err
    assert read_summary(root / "picks_px" / "picking_summary.star")["pixel_size"].iloc[0] == pytest.approx(5.0)


def _no_pixel_size(root: Path, sim: Path) -> str:
    for i in range(2):
        write_mrc(root / "Micrographs" / f"nopx{i}.mrc", _frames(sim), pixel_size=None)
    mics_star(root / "nopx.star", ["Micrographs/nopx0.mrc", "Micrographs/nopx1.mrc"], optics=False)
    return "nopx.star"


def test_no_pixel_size_anywhere_is_an_error_unless_given(sim: Path, weights: Path, tmp_path: Path, capsys) -> None:
    root = project(tmp_path / "p", sim, n=0)
    star = _no_pixel_size(root, sim)
    code, err = run(pick_argv(star, weights), capsys, root)
    assert code == 2 and "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("deeppicker: error:") and "no pixel size" in lines[0]
    assert "Micrographs/nopx0.mrc" in lines[0] and "--angpix" in lines[0]
    assert not (root / "picks" / "Micrographs").exists()  # nothing was picked
    code, err = run(pick_argv(star, weights, "picks", "--angpix", "5"), capsys, root)
    assert code == 0 and not error_lines(err), err
    code, err = run(["pick", star, "--box", "36", "--weights", str(weights), "-o", "picks_box", "--no-report"],
                    capsys, root)
    assert code == 0 and not error_lines(err), err


JOB_ERRORS = {
    # case: (argv after "pick" given the project, file named, problem)
    "star_without_micrograph_names": (lambda r, w: pick_argv("particles.star", w), "particles.star",
                                      "no rlnMicrographName"),
    "star_missing": (lambda r, w: pick_argv("nothere.star", w), "nothere.star", "STAR file not found"),
    "star_not_a_star": (lambda r, w: pick_argv("garbage.star", w), "garbage.star", "holds no data blocks"),
    "diameter_larger_than_micrograph": (lambda r, w: ["pick", "micrographs.star", "--diameter", "2000",
                                                      "--weights", str(w), "-o", "picks", "--no-report"],
                                        "Micrographs/good0.mrc", "larger than the micrograph"),
    "output_folder_is_a_file": (lambda r, w: pick_argv("micrographs.star", w, "afile/picks"), "afile/picks",
                                "cannot write to the output folder"),
    "weights_corrupt": (lambda r, w: pick_argv("micrographs.star", r / "corrupt.safetensors"),
                        "corrupt.safetensors", "corrupt"),
    "weights_wrong_architecture": (lambda r, w: pick_argv("micrographs.star", r / "small.safetensors"),
                                   "small.safetensors", "do not fit"),
    "weights_unknown_architecture": (lambda r, w: pick_argv("micrographs.star", r / "resnet.safetensors"),
                                     "resnet.safetensors", "unknown architecture"),
    "weights_pickle_payload": (lambda r, w: pick_argv("micrographs.star", r / "evil.pt"), "evil.pt", "refused"),
    "weights_missing": (lambda r, w: pick_argv("micrographs.star", r / "none.safetensors"), "none.safetensors",
                        "not found"),
    "bad_shard": (lambda r, w: pick_argv("micrographs.star", w, "picks", "--shard", "3/2"), "--shard", "0 <= i < n"),
    "negative_dark_sigma": (lambda r, w: pick_argv("micrographs.star", w, "picks", "--dark-sigma", "-2"), "--dark-sigma",
                            "0 (off) or a positive number"),
}


class _Payload:
    """Unpickling this would create a file: it must never happen."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _job_error_inputs(root: Path) -> None:
    mics_star(root / "micrographs.star", ["Micrographs/good0.mrc", "Micrographs/good1.mrc"])
    starfile.write(pd.DataFrame({"rlnImageName": ["1@a.mrcs"], "rlnCoordinateX": [1.0]}), root / "particles.star")
    (root / "garbage.star").write_bytes(b"\x00\x01 data_ loop_ _rln\xff\xfe" * 20)
    (root / "afile").write_text("a file where the output folder should be\n")
    (root / "corrupt.safetensors").write_bytes(b"\x00garbage" * 30)
    save_model(DeepPickerNet(channels=(4, 8, 16, 32)), root / "small.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(root / "resnet.safetensors"), metadata={"architecture": "resnet50"})
    torch.save({"state_dict": _Payload(root / "PWNED")}, root / "evil.pt")


@pytest.mark.parametrize("case", list(JOB_ERRORS))
def test_job_level_problem_one_line_before_any_work(case: str, sim: Path, weights: Path, tmp_path: Path,
                                                    capsys) -> None:
    make_argv, named, problem = JOB_ERRORS[case]
    root = project(tmp_path / "p", sim, n=2)
    _job_error_inputs(root)

    code, err = run(make_argv(root, weights), capsys, root)

    assert code == 2, err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("deeppicker: error:") and named in lines[0] and problem in lines[0], lines[0]
    assert not (root / "PWNED").exists()  # the pickle payload never ran
    assert not list(root.rglob("*_deeppicker.star")) and not list(root.rglob("picking_summary*.star"))
    no_temporary_files(root)


def test_unwritable_output_folder_without_permission(sim: Path, weights: Path, tmp_path: Path, capsys) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere; the 'a file is in the way' case covers the code path")
    root = project(tmp_path / "p", sim, n=1)
    mics_star(root / "micrographs.star", ["Micrographs/good0.mrc"])
    (root / "ro").mkdir()
    (root / "ro").chmod(0o500)
    try:
        code, err = run(pick_argv("micrographs.star", weights, "ro/picks"), capsys, root)
    finally:
        (root / "ro").chmod(0o700)
    assert code == 2 and len(error_lines(err)) == 1 and "cannot write to the output folder" in err


# --------------------------------------------------------------------------- train


def test_train_bad_inputs(sim: Path, weights: Path, tmp_path: Path, capsys) -> None:
    """train: a bad micrograph is skipped (one line) and training goes on; bad --init weights, no
    pixel size and an unwritable output stop it before any training, in one line."""
    root = project(tmp_path / "p", sim, n=2)
    _job_error_inputs(root)
    coords = root / "coords"
    coords.mkdir()
    for i, src in enumerate(sorted((sim / "coords").glob("*.star"))[:2]):
        shutil.copy(src, coords / f"good{i}.star")
    shutil.copy(coords / "good0.star", coords / "gone.star")
    mics_star(root / "train.star", ["Micrographs/good0.mrc", "Micrographs/gone.mrc", "Micrographs/good1.mrc"])
    common = ["train", "train.star", "--coords", "coords", "--diameter", DIAMETER, "--epochs", "1", "-j", "1"]
    base = [*common, "--init", "scratch"]

    code, err = run([*base, "-o", "model.safetensors"], capsys, root)
    assert code == 0 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "gone.mrc" in ln]
    assert len(lines) == 1 and "not found" in lines[0] and "WARNING" in lines[0]
    assert (root / "model.safetensors").is_file()

    for argv, named, problem in [
        ([*common, "--init", "evil.pt", "-o", "m2.safetensors"], "evil.pt", "refused"),
        ([*common, "--init", "corrupt.safetensors", "-o", "m3.safetensors"], "corrupt.safetensors", "corrupt"),
        ([*base, "-o", "afile/m.safetensors"], "afile", "cannot write to the output folder"),
        ([*base, "-o", "m.pt"], "m.pt", ".safetensors"),
    ]:
        code, err = run(argv, capsys, root)
        assert code == 2 and "Traceback" not in err, err
        lines = error_lines(err)
        assert len(lines) == 1 and named in lines[0] and problem in lines[0], err
    assert not (root / "PWNED").exists()

    star = _no_pixel_size(root, sim)
    shutil.copy(coords / "good0.star", coords / "nopx0.star")
    code, err = run(["train", star, "--coords", "coords", "--diameter", DIAMETER, "-o", "m4.safetensors",
                     "--init", "scratch", "--epochs", "1"], capsys, root)
    assert code == 2 and len(error_lines(err)) == 1 and "no pixel size" in err, err
    no_temporary_files(root)


# --------------------------------------------------------------------------- interrupted, aborted, continued


def _many(root: Path, sim: Path, n: int, shape: int = 512) -> Path:
    """``n`` micrographs of ``shape`` px (tiles of the simulated ones) + micrographs.star."""
    (root / "Micrographs").mkdir(parents=True)
    tiles = [mrcfile.read(p) for p in sorted((sim / "micrographs").glob("*.mrc"))]
    names = []
    for i in range(n):
        big = np.block([[tiles[(i + k) % 4] for k in range(2)], [tiles[(i + k + 2) % 4] for k in range(2)]])
        write_mrc(root / "Micrographs" / f"m{i:02d}.mrc", big[:shape, :shape].astype(np.float32))
        names.append(f"Micrographs/m{i:02d}.mrc")
    return mics_star(root / "micrographs.star", names)


def _done(out: Path) -> set[str]:
    """Micrographs whose coordinate AND candidate files exist (what a rerun skips)."""
    coords = {p.name[: -len("_deeppicker.star")] for p in (out / "Micrographs").glob("*_deeppicker.star")}
    cands = {p.stem for p in (out / "candidates" / "Micrographs").glob("*.star")}
    return coords & cands


def _every_visible_star_is_complete(out: Path) -> None:
    for path in out.rglob("*.star"):
        if not path.name.startswith("."):
            assert path.read_text().endswith("\n"), path
            read_star(path)  # parses completely


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_leaves_no_half_file_and_rerun_picks_the_rest(sig, sim: Path, weights: Path,
                                                                      tmp_path: Path, capsys) -> None:
    root = tmp_path / "p"
    _many(root, sim, 10)
    argv = [sys.executable, "-m", "deeppicker_relion.cli.main", *pick_argv("micrographs.star", weights)]
    proc = subprocess.Popen(argv, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = root / "picks"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None and len(_done(out)) < 2:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    done = _done(out)
    assert 2 <= len(done) < 10, (len(done), stderr)
    if sig == signal.SIGTERM:  # unwound: temporary files removed, one line, no traceback
        assert proc.returncode == 143 and "stopped by SIGTERM" in stderr and "Traceback" not in stderr, stderr
        no_temporary_files(out)
    else:
        assert proc.returncode == -signal.SIGKILL
        # what a kill during a write leaves (hidden, named after the dead writer), whether or not
        # this kill happened to hit one
        (out / "Micrographs" / f".m09_deeppicker.star.{_atomic._host()}-{proc.pid}.x1y2z3.tmp.star").write_text(
            "data_\nloop_\n_rlnCoordinateX #1\n12.")
    _every_visible_star_is_complete(out)
    assert not (out / "picking_summary.star").exists()

    code, err = run(pick_argv("micrographs.star", weights), capsys, root)  # the same command again
    assert code == 0 and not error_lines(err), err
    summary = read_summary(out / "picking_summary.star").set_index("rlnMicrographName")
    before = {Path(n).stem for n in summary.index[summary["status"] == "done before"]}
    assert before == done
    assert (summary["status"] == "picked").sum() == 10 - len(done)
    assert len(_done(out)) == 10
    no_temporary_files(out)  # stale temporary files of the killed process are removed
    _every_visible_star_is_complete(out)


def test_abort_file_stops_within_one_micrograph_then_continue(sim: Path, weights: Path, tmp_path: Path,
                                                              capsys) -> None:
    """RELION_JOB_ABORT_NOW in the output folder (RELION's abort button, or by hand) stops the CLI
    too; the rerun picks only the rest."""
    root = tmp_path / "p"
    _many(root, sim, 8)
    out = root / "picks"
    seen: dict[str, int] = {}

    def abort_after_first() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _done(out):
            time.sleep(0.005)
        (out / "RELION_JOB_ABORT_NOW").touch()
        seen["at_abort"] = len(_done(out))

    watcher = threading.Thread(target=abort_after_first)
    watcher.start()
    code, err = run(pick_argv("micrographs.star", weights), capsys, root)
    watcher.join()
    assert code == 3 and "aborted on request" in err and "Traceback" not in err, err
    done = _done(out)
    assert seen["at_abort"] <= len(done) <= seen["at_abort"] + 1 < 8  # within one micrograph
    no_temporary_files(out)

    (out / "RELION_JOB_ABORT_NOW").unlink()
    code, err = run(pick_argv("micrographs.star", weights), capsys, root)
    assert code == 0, err
    summary = read_summary(out / "picking_summary.star")
    assert (summary["status"] == "done before").sum() == len(done)
    assert (summary["status"] == "picked").sum() == 8 - len(done)


def test_console_script_bad_micrograph_has_no_traceback(sim: Path, weights: Path,
                                                                   tmp_path: Path) -> None:
    """The installed console script, as users run it."""
    exe = shutil.which("deeppicker")
    if exe is None:
        pytest.skip("the deeppicker console script is not installed (pip install -e .)")
    root = project(tmp_path / "p", sim, n=1)
    (root / "Micrographs" / "bad.mrc").write_text("not an image\n" * 30)
    mics_star(root / "micrographs.star", ["Micrographs/good0.mrc", "Micrographs/bad.mrc"])
    res = subprocess.run([exe, *pick_argv("micrographs.star", weights)], cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    lines = error_lines(res.stderr)
    assert len(lines) == 1 and "Micrographs/bad.mrc" in lines[0] and "not a readable MRC file" in lines[0]


def test_rerun_picks_again_a_micrograph_whose_output_is_unreadable(sim: Path, weights: Path, tmp_path: Path,
                                                                   capsys) -> None:
    root = project(tmp_path / "p", sim, n=3)
    mics_star(root / "micrographs.star", [f"Micrographs/good{i}.mrc" for i in range(3)])
    code, err = run(pick_argv("micrographs.star", weights), capsys, root)
    assert code == 0, err
    broken = root / "picks" / "Micrographs" / "good1_deeppicker.star"
    broken.write_bytes(b"\xff\xfe\x00 not text")
    code, err = run(pick_argv("micrographs.star", weights), capsys, root)
    assert code == 0 and "Traceback" not in err, err
    assert [ln for ln in err.splitlines() if "picking again" in ln and "good1_deeppicker.star" in ln]
    summary = read_summary(root / "picks" / "picking_summary.star").set_index("rlnMicrographName")
    assert summary["status"].to_dict() == {"Micrographs/good0.mrc": "done before", "Micrographs/good1.mrc": "picked",
                                           "Micrographs/good2.mrc": "done before"}
    read_star(broken)
