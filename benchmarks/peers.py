"""Peer particle pickers for side-by-side benchmarks: Topaz 0.3.20 and RELION's LoG picker.

Both run as subprocesses (nothing of theirs is imported here) and return picks in one format:

    picks, seconds = run_topaz(micrographs, diameter_px, workdir)
    picks, seconds = run_relion_log(micrographs, diameter_px, pixel_size_A, workdir)

``picks`` maps each micrograph's stem (file name without extension) to a pandas DataFrame with
columns ``x``, ``y``, ``score`` (float), sorted by descending score; x = column, y = row, in pixels
of the ORIGINAL micrograph, at the particle centre (origin at the centre of the top-left pixel).
Every input micrograph has an entry (an empty frame when nothing was picked). ``seconds`` is the
wall time of the whole run, end to end (for Topaz: preprocessing, model start-up and extraction).

Both are run with permissive thresholds by default so that every candidate comes back with its
score; callers apply score thresholds or top-N themselves.

Topaz lives in its own virtual environment, made by ``bash benchmarks/setup_topaz.sh``
(``benchmarks/.venv-topaz``, or $DEEPPICKER_TOPAZ_VENV). RELION is Debian's ``relion`` package
(``relion_autopick`` on PATH, or $DEEPPICKER_RELION_AUTOPICK).
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from deeppicker_relion.io.star import read_coordinate_star

__all__ = [
    "PeerError",
    "TOPAZ_MODEL",
    "topaz_available",
    "topaz_executable",
    "topaz_scale_radius",
    "run_topaz",
    "relion_log_available",
    "run_relion_log",
]

HERE = Path(__file__).resolve().parent
TOPAZ_VENV = Path(os.environ.get("DEEPPICKER_TOPAZ_VENV", HERE / ".venv-topaz"))
TOPAZ_MODEL = "resnet16_u64"  # Topaz's pretrained general model (ships in the topaz-em wheel)
# Topaz's extraction stops at the first local maximum scoring <= threshold (its default, -6,
# is p >= 0.0025). Far below any logit the model produces: every local maximum comes back.
TOPAZ_ALL_CANDIDATES = -1.0e6
RELION_AUTOPICK = os.environ.get("DEEPPICKER_RELION_AUTOPICK", "relion_autopick")

COLUMNS = ["x", "y", "score"]


class PeerError(RuntimeError):
    """A peer picker is missing or failed; the message says which and how to fix it."""


# --------------------------------------------------------------------------------------------
# shared helpers


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=float) for c in COLUMNS})


def _frame(x, y, score) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "x": np.asarray(x, dtype=float),
            "y": np.asarray(y, dtype=float),
            "score": np.asarray(score, dtype=float),
        }
    )
    return df.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def _check_inputs(micrographs: Iterable[Path | str]) -> list[Path]:
    paths = [Path(m).resolve() for m in micrographs]
    if not paths:
        raise ValueError("no micrographs given")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"micrograph(s) not found: {', '.join(missing[:5])}")
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems and stems[p.stem] != p:
            raise ValueError(f"two micrographs share the stem {p.stem!r}: {stems[p.stem]} and {p}")
        stems[p.stem] = p
    return list(dict.fromkeys(paths))  # drop exact duplicates, keep order


def _mrc_shape(path: Path) -> tuple[int, int]:
    """(ny, nx) = (rows, columns) from an MRC header, either byte order."""
    with open(path, "rb") as fh:
        head = fh.read(12)
    if len(head) < 12:
        raise PeerError(f"{path}: too short to be an MRC file")
    for order in "<>":
        nx, ny, nz = struct.unpack(order + "3i", head)
        if 0 < nx < 1_000_000 and 0 < ny < 1_000_000 and 0 < nz < 1_000_000:
            return ny, nx
    raise PeerError(f"{path}: not an MRC file (header nx,ny,nz unreadable)")


def _run(cmd: Sequence[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> None:
    """Run a command, stdout+stderr to ``log``; raise PeerError with the log's tail on failure."""
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        fh.flush()
        try:
            proc = subprocess.run(
                [str(c) for c in cmd], cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError as exc:
            raise PeerError(f"cannot run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise PeerError(f"{Path(str(cmd[0])).name} {cmd[1] if len(cmd) > 1 else ''} failed "
                        f"(exit {proc.returncode}); log {log}:\n{tail}")


def _thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(var, None)  # never let our environment leak into the peer's
    env["PYTHONNOUSERSITE"] = "1"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


# --------------------------------------------------------------------------------------------
# Topaz


def topaz_executable() -> Path:
    return TOPAZ_VENV / "bin" / "topaz"


@functools.lru_cache(maxsize=None)
def _topaz_works(exe: str) -> bool:
    try:
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=300,
                              env=_thread_env(1), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def topaz_available() -> bool:
    """True when benchmarks/.venv-topaz holds a working ``topaz`` (run setup_topaz.sh if not)."""
    exe = topaz_executable()
    return exe.is_file() and os.access(exe, os.X_OK) and _topaz_works(str(exe))


def topaz_scale_radius(diameter_px: float) -> tuple[int, int]:
    """Topaz's recipe: downsample by S so the particle is ~20 px, extract with radius D/2/S."""
    if not diameter_px > 0:
        raise ValueError(f"diameter_px must be > 0, got {diameter_px}")
    scale = max(1, int(math.floor(diameter_px / 20.0 + 0.5)))
    radius = max(1, int(math.floor(diameter_px / 2.0 / scale + 0.5)))
    return scale, radius


def run_topaz(
    micrographs: list[Path],
    diameter_px: float,
    workdir: Path,
    threads: int = 2,
    *,
    model: str = TOPAZ_MODEL,
    threshold: float = TOPAZ_ALL_CANDIDATES,
) -> tuple[dict[str, pd.DataFrame], float]:
    """Pick with Topaz's pretrained general model: ``topaz preprocess`` then ``topaz extract``.

    Micrographs are downsampled by S = round(D/20) (Fourier cropping to int(N/S) pixels, GMM
    normalisation) and scored by ``model``; local maxima at least round(D/2/S) downsampled pixels
    apart come back with their logit score. Coordinates are mapped back by the exact size ratio
    n = int(N/S) per axis: Fourier cropping keeps the sampling origin, so downsampled pixel i sits
    at original position i * N / n (Topaz's integer ``-x S`` drifts by up to N mod S px towards
    the far edge; checked against reference picks). No flips: x_coord is the column.
    Topaz's GMM normalisation fits a random pixel sample, so picks vary slightly run to run.
    """
    mics = _check_inputs(micrographs)
    exe = topaz_executable()
    if not exe.is_file():
        raise PeerError(f"Topaz is not installed ({exe} missing): run `bash {HERE / 'setup_topaz.sh'}`")
    threads = max(1, int(threads))
    scale, radius = topaz_scale_radius(diameter_px)

    workdir = Path(workdir).resolve()
    pre = workdir / "topaz_preprocessed"
    out = workdir / "topaz_picks.txt"
    workdir.mkdir(parents=True, exist_ok=True)
    if pre.exists():
        shutil.rmtree(pre)
    pre.mkdir()
    out.unlink(missing_ok=True)
    env = _thread_env(threads)

    t0 = time.perf_counter()
    # preprocessing (Fourier downsampling + GMM normalisation fit) scales with worker processes,
    # not with threads (-t 2 -j 1 is ~2x faster than -t 0 -j 2 on 2 cores)
    workers = min(threads, len(mics)) if threads > 1 else 0
    per_worker = max(1, threads // max(1, workers))
    _run([exe, "preprocess", "-s", scale, "-d", "-1", "-t", workers, "-j", per_worker,
          "--format", "mrc", "-o", pre, *mics], workdir / "topaz_preprocess.log", cwd=workdir,
         env=_thread_env(per_worker))
    small = {m.stem: pre / f"{m.stem}.mrc" for m in mics}
    absent = [str(p) for p in small.values() if not p.is_file()]
    if absent:
        raise PeerError(f"topaz preprocess wrote no output for: {', '.join(absent[:5])} "
                        f"(log {workdir / 'topaz_preprocess.log'})")
    _run([exe, "extract", "-m", model, "-r", radius, f"--threshold={threshold:g}", "-d", "-1",
          "-j", threads, "-o", out, *small.values()], workdir / "topaz_extract.log", cwd=workdir, env=env)
    if not out.is_file():
        raise PeerError(f"topaz extract wrote no {out} (log {workdir / 'topaz_extract.log'})")
    table = pd.read_csv(out, sep="\t", dtype={"image_name": str})
    want = {"image_name", "x_coord", "y_coord", "score"}
    if not want <= set(table.columns):
        raise PeerError(f"{out}: expected columns {sorted(want)}, got {list(table.columns)}")

    picks: dict[str, pd.DataFrame] = {}
    groups = dict(tuple(table.groupby("image_name", sort=False)))
    for mic in mics:
        grp = groups.get(mic.stem)
        if grp is None or grp.empty:
            picks[mic.stem] = _empty()
            continue
        ny, nx = _mrc_shape(mic) if mic.suffix.lower() in (".mrc", ".mrcs") else (None, None)
        sy, sx = _mrc_shape(small[mic.stem])
        fx = nx / sx if nx else float(scale)
        fy = ny / sy if ny else float(scale)
        picks[mic.stem] = _frame(grp["x_coord"].to_numpy(float) * fx, grp["y_coord"].to_numpy(float) * fy,
                                 grp["score"].to_numpy(float))
    seconds = time.perf_counter() - t0
    return picks, seconds


# --------------------------------------------------------------------------------------------
# RELION 3.1 LoG picker


def relion_log_available() -> bool:
    return shutil.which(RELION_AUTOPICK) is not None


def run_relion_log(
    micrographs: list[Path],
    diameter_px: float,
    pixel_size_A: float,
    workdir: Path,
    threshold: float = 0.0,
    invert: bool = False,
    *,
    diam_range: tuple[float, float] = (0.8, 1.2),
    nprocs: int = 1,
) -> tuple[dict[str, pd.DataFrame], float]:
    """Pick with ``relion_autopick --LoG`` (RELION 3.1), score = rlnAutopickFigureOfMerit.

    LoG diameters span ``diam_range`` x the particle diameter (in A). ``threshold`` is RELION's
    ``--LoG_adjust_threshold`` (0 = RELION's default; negative returns more picks, e.g. -5 gives
    essentially every candidate peak). ``invert`` for white particles (RELION's flag is spelled
    ``--Log_invert``). Runs at full resolution (no ``--shrink``). ``nprocs > 1`` runs
    ``relion_autopick_mpi`` under mpirun, splitting the micrographs between processes.
    Coordinates are RELION's rlnCoordinateX/Y unchanged (x = column, y = row, original pixels).
    """
    mics = _check_inputs(micrographs)
    exe = shutil.which(RELION_AUTOPICK)
    if exe is None:
        raise PeerError(f"{RELION_AUTOPICK} not found: install RELION (Debian: apt-get install relion)")
    bad = [str(m) for m in mics if m.suffix.lower() != ".mrc"]
    if bad:
        raise PeerError(f"run_relion_log takes .mrc micrographs only, got: {', '.join(bad[:5])}")
    if not (diameter_px > 0 and pixel_size_A > 0):
        raise ValueError("diameter_px and pixel_size_A must be > 0")

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    mdir, odir = workdir / "Mics", workdir / "LoG"
    for d in (mdir, odir):
        if d.exists():
            shutil.rmtree(d)
    t0 = time.perf_counter()
    mdir.mkdir()
    for m in mics:  # one flat folder of links, so the output names are predictable
        (mdir / f"{m.stem}.mrc").symlink_to(m)
    diam_A = diameter_px * pixel_size_A
    cmd = [exe, "--i", "Mics/*.mrc", "--odir", "LoG/", "--pickname", "autopick",
           "--angpix", f"{pixel_size_A:g}", "--LoG",
           "--LoG_diam_min", f"{diam_range[0] * diam_A:.3f}", "--LoG_diam_max", f"{diam_range[1] * diam_A:.3f}",
           "--LoG_adjust_threshold", f"{threshold:g}"]
    if invert:
        cmd.append("--Log_invert")
    env = _thread_env(1)
    if nprocs > 1:
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            raise PeerError("nprocs > 1 needs mpirun (Debian: openmpi-bin)")
        cmd = [mpirun, "-np", str(int(nprocs)), "--oversubscribe", exe + "_mpi", *cmd[1:]]
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    _run(cmd, workdir / "relion_log.log", cwd=workdir, env=env)

    picks: dict[str, pd.DataFrame] = {}
    for m in mics:
        star = odir / "Mics" / f"{m.stem}_autopick.star"
        if not star.is_file():
            raise PeerError(f"relion_autopick wrote no {star} (log {workdir / 'relion_log.log'})")
        tab = read_coordinate_star(star)  # x, y, score (rlnAutopickFigureOfMerit), via starfile
        picks[m.stem] = _frame(tab["x"], tab["y"], tab["score"].fillna(0.0)) if len(tab) else _empty()
    seconds = time.perf_counter() - t0
    return picks, seconds
