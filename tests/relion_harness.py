"""Drive the real RELION 3.1 binaries from tests (no mocks).

A small library for integration tests: it builds a throw-away RELION project,
adds jobs with ``relion_pipeliner --addJob``, runs them with
``relion_pipeliner --RunJobs`` and reads the results back from
``default_pipeline.star`` and the job directories. Written against Debian's
RELION 3.1.3 (``apt-get install -y relion``); skipped where
``relion_pipeliner`` is not on PATH (``requires_relion``).

Typical use::

    project = make_project(tmp_path / "proj", mrc_paths, pixel_size_A=2.0)
    imp = import_micrographs(project)                  # "Import/job001/"
    mics = imported_micrographs_star(imp)              # "Import/job001/micrographs.star"
    ext = add_external(project, exe, mics, {"pickname": "deep"}, threads=2)
    xtr = extract(project, mics, f"{ext}coords_suffix_deep.star", box_px=64)
    c2d = class2d(project, f"{xtr}particles.star", particle_diameter_A=100)
    run_jobs(project, [imp, ext, xtr, c2d], timeout_s=300)   # raises on failure

Job option keys (the ``key == value`` pairs of ``--addJobOptions``) that work
with 3.1.3, each checked by a real run (see tests/test_relion_harness.py):

- Import (a STAR file): ``do_raw == No; do_other == Yes; fn_in_other == <star>;
  node_type == Micrographs STAR file (.star)``. Runs ``relion_import --do_other``
  and copies the file to ``Import/jobNNN/<basename>`` unchanged.
  Import (raw micrographs): ``do_raw == Yes; fn_in_raw == Micrographs/*.mrc;
  is_multiframe == No; angpix; kV; Cs; Q0; optics_group_name`` writes
  ``Import/jobNNN/micrographs.star`` (data_optics + data_micrographs, no CTF).
- External: ``fn_exe; in_mov; in_mic; in_part; in_coords; in_3dref; in_mask;
  param1_label .. param10_label; param1_value .. param10_value; nr_threads``.
  Command: ``<fn_exe> --o External/jobNNN/ [--in_movies F] [--in_mics F]
  [--in_parts F] [--in_coords F] [--in_3dref F] [--in_mask F]
  [--<label> <value>]... --j <nr_threads> [other_args]`` run through
  ``/bin/sh`` (``system()``), so a value with a space becomes two words.
  ``--pipeline_control External/jobNNN/`` is appended when the command line
  contains the text ``relion_`` anywhere (e.g. a pytest tmp dir named after a
  test called ``test_relion_...``).
- Extract: ``star_mics; coords_suffix; extract_size; do_invert; do_norm;
  bg_diameter`` (-1: 75 % of the box); also ``do_rescale/rescale``,
  ``white_dust``, ``black_dust``, ``nr_mpi``. 3.1 adds Extract jobs as
  "continue" jobs, so the command carries ``--only_do_unfinished``.
- Class2D: ``fn_img; nr_classes; nr_iter; particle_diameter; do_ctf_correction;
  use_gpu; nr_threads; nr_mpi``; also ``tau_fudge``, ``psi_sampling``,
  ``offset_range``, ``offset_step``, ``do_zero_mask``, ``highres_limit``,
  ``nr_pool``, ``do_preread_images``, ``dont_skip_align``. Output
  ``Class2D/jobNNN/run_it<nr_iter:03d>_model.star`` (+ ``_data.star``,
  ``_classes.mrcs``).
Booleans are ``Yes``/``No`` (Python ``True``/``False`` are converted here).

Findings about RELION 3.1.3 (read in src/preprocessing.cpp and checked by
running relion_preprocess on 512x512 micrographs with a 64 px box):

- Edge particles. Extract truncates the coordinate to an integer and takes the
  box ``[x-32, x+31]``. A box that is only PARTLY outside the micrograph is
  KEPT: the missing pixels are filled by repeating the nearest row/column
  inside the micrograph (stripes, not zeros). This holds even when the centre
  itself is outside (x = -20 with a 64 px box is extracted). A box lying
  COMPLETELY outside (``x + box/2 - 1 < 0`` or ``x - box/2 >= width``, same for
  y; e.g. x = -40 with 64 px) is not skipped: relion_preprocess stops with
  "ERROR: particle<N> lies completely outside micrograph ..." and the WHOLE
  Extract job fails. So particles.star has exactly one row per coordinate
  written, or the job fails. A picker should drop picks whose box leaves the
  micrograph itself if it does not want edge-padded particles.
- A micrograph whose coordinate file is missing is skipped with a warning
  ("coordinate file ... does not exist"); the job still succeeds.
- Required columns (tried by removing them): Extract needs data_micrographs
  with ``rlnMicrographName`` + ``rlnOpticsGroup`` and data_optics with
  ``rlnOpticsGroup``, ``rlnMicrographPixelSize``, ``rlnVoltage`` and
  ``rlnSphericalAberration``; without voltage/Cs the optics loader stops with
  "not all necessary variables defined in _optics.star file: rlnPixelSize,
  rlnVoltage and rlnSphericalAberration". ``rlnOpticsGroupName`` and
  ``rlnAmplitudeContrast`` are optional for Extract (written here anyway;
  Class2D's CTF uses the amplitude contrast). ``rlnMicrographOriginalPixelSize``
  is not read by 3.1.3 Extract. CTF columns
  are optional: when ``rlnDefocusU`` is present, ``rlnDefocusU/V/Angle``,
  ``rlnCtfBfactor``, ``rlnCtfScalefactor``, ``rlnPhaseShift`` (and
  ``rlnCtfMaxResolution``, ``rlnCtfFigureOfMerit`` when given) are copied into
  particles.star; without them Extract still succeeds. Class2D with
  ``do_ctf_correction == Yes`` (``--ctf``) also ran successfully on particles
  WITHOUT any CTF columns (3.1.3 does not check); :func:`make_project` writes
  CTF columns by default so that particles look like real ones.
- Output: particles.star holds data_optics (``rlnImagePixelSize``,
  ``rlnImageSize``, ``rlnImageDimensionality``, no ``rlnMicrographPixelSize``)
  and data_particles (``rlnCoordinateX/Y``, ``rlnImageName`` =
  ``000001@Extract/jobNNN/Micrographs/<mic>.mrcs``, ``rlnMicrographName``,
  ``rlnOpticsGroup``, + CTF); extra columns of the coordinate files (e.g.
  ``rlnAutopickFigureOfMerit``) are carried along.

Pipeliner facts (3.1.3):

- ``default_pipeline.star`` must exist before the first ``--addJob``.
- Status integers: 0 running, 1 scheduled, 2 finished, 3 failed, 4 aborted.
- ``--RunJobs`` runs the listed jobs one after the other, blocking; it polls
  every ``--sec_wait_after`` seconds for ``RELION_JOB_EXIT_*`` (default 10,
  i.e. >= 10 s per job: the 4-job test chain took 40 s; this module passes 1:
  ~5.5 s); after a failed (or aborted) job it stops and leaves the later
  jobs "scheduled". Its own exit code is 0 after a failed job: read the
  statuses (``run_jobs`` does).
- It waits forever (no timeout) for a job that never writes an exit file
  (the job stays 0 RUNNING) and for a missing input node (checked every 60 s,
  "Waiting 60 seconds" in ``pipeline_.log``; the job stays 1 SCHEDULED).
  Every call here is bounded by a timeout and the whole process group
  (pipeliner + job) is killed when it expires; the project stays usable.
- ``.relion_lock/`` is held only while the pipeline file is read/written. It
  was NOT left behind by the failures tried here (bad/unknown option keys,
  unknown job type or job name, empty required field, killed while waiting),
  but a pipeliner killed inside that window leaves it and every later call
  then fails; it is removed here after any failed or timed-out call.
- ``nr_mpi == 2`` works with ``RELION_MPIRUN="mpirun --oversubscribe"`` and
  the OMPI root variables (relion_preprocess_mpi / relion_refine_mpi), but on
  2 cores a tiny Class2D is ~4x slower with 2 MPI ranks than with 1 rank and 2
  threads: use the defaults (mpi=1).
"""

from __future__ import annotations

import enum
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence, TypeVar

import pytest

__all__ = [
    "RelionError", "RelionJobError", "RelionTimeout", "JobStatus", "CtfParams", "ExternalRun",
    "relion_available", "relion_version", "requires_relion", "RELION_MARKS", "relion_env", "make_project",
    "write_micrographs_star", "add_job", "run_jobs", "job_status", "job_statuses",
    "job_output_nodes", "import_micrographs", "import_raw_micrographs",
    "imported_micrographs_star", "add_external", "extract", "class2d", "class2d_model_star",
    "run_external_directly", "external_command", "read_output_nodes", "tail",
]

PIPELINER = "relion_pipeliner"
#: Binaries the wrappers need; ``relion_available`` checks all of them.
REQUIRED_BINARIES = ("relion_pipeliner", "relion_import", "relion_preprocess", "relion_refine")
PIPELINE_STAR = "default_pipeline.star"
LOCK_DIR = ".relion_lock"
EXIT_FILES = {
    "RELION_JOB_EXIT_SUCCESS": "success",
    "RELION_JOB_EXIT_FAILURE": "failure",
    "RELION_JOB_EXIT_ABORTED": "aborted",
}
#: Node type integers of RELION 3.1 (pipeline_jobs.h).
NODE_MOVIES, NODE_MICS, NODE_MIC_COORDS, NODE_PART_DATA = 0, 1, 2, 3
NODE_MODEL = 8


class JobStatus(enum.IntEnum):
    """``_rlnPipeLineProcessStatus`` values of RELION 3.1."""

    RUNNING = 0
    SCHEDULED = 1
    FINISHED = 2
    FAILED = 3
    ABORTED = 4


class RelionError(RuntimeError):
    """A pipeliner call failed (non-zero exit, bad option, ...)."""


class RelionTimeout(RelionError):
    """A RELION call did not finish within its timeout; its processes were killed."""


class RelionJobError(RelionError):
    """One or more jobs did not finish with status 2; message has run.out/run.err tails."""

    def __init__(self, message: str, statuses: Mapping[str, int | None]):
        super().__init__(message)
        self.statuses = dict(statuses)


# --------------------------------------------------------------------------- environment


def relion_version(timeout_s: float = 20) -> str | None:
    """"3.1.3" from ``relion_pipeliner --version``; None when it is missing or does not say."""
    if not shutil.which(PIPELINER):
        return None
    try:
        res = subprocess.run([PIPELINER, "--version"], capture_output=True, text=True,
                             timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (res.stdout + res.stderr).splitlines():
        if "RELION version:" in line:
            return line.split(":", 1)[1].strip() or None
    return None


def relion_available() -> bool:
    """True when RELION 3.x's pipeliner and the programs the wrappers run are on PATH.

    The harness speaks 3.1's pipeline format (integer statuses and node types),
    so a RELION 4/5 on PATH counts as unavailable.
    """
    if not all(shutil.which(b) for b in REQUIRED_BINARIES):
        return False
    version = relion_version()
    return version is not None and version.startswith("3.")


_SKIP_REASON = ("RELION 3.1 is not installed (needs relion_pipeliner, relion_import, "
                "relion_preprocess, relion_refine of version 3.x on PATH; Debian: "
                "apt-get install -y relion)")

#: Marks for a whole module: ``pytestmark = RELION_MARKS``.
RELION_MARKS = [pytest.mark.relion, pytest.mark.skipif(not relion_available(), reason=_SKIP_REASON)]

_T = TypeVar("_T")


def requires_relion(obj: _T) -> _T:
    """Decorator for a test function or class: mark ``relion`` and skip without RELION 3."""
    for mark in reversed(RELION_MARKS):
        obj = mark(obj)
    return obj


def relion_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` plus what RELION needs here: MPI as root, oversubscribed mpirun."""
    env = dict(os.environ)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("RELION_MPIRUN", "mpirun --oversubscribe")
    if extra:
        env.update(extra)
    return env


def tail(path: Path, n_lines: int = 30, max_chars: int = 4000) -> str:
    """Last lines of a text file ('' when missing)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    text = "\n".join(text.splitlines()[-n_lines:])
    return text[-max_chars:]


def _remove_lock(project: Path) -> None:
    shutil.rmtree(Path(project) / LOCK_DIR, ignore_errors=True)


def _run_bounded(args: Sequence[str] | str, cwd: Path, timeout_s: float,
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run in a new session; on timeout kill the whole process group (and its jobs)."""
    proc = subprocess.Popen(args, cwd=cwd, env=dict(env or relion_env()),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # a grandchild left the group and holds the pipes
            proc.kill()
            out, err = "", ""
        raise RelionTimeout(
            f"timed out after {timeout_s:g} s (process group {proc.pid} killed): "
            f"{args if isinstance(args, str) else shlex.join(args)}\n"
            f"--- stdout ---\n{(out or '')[-2000:]}\n--- stderr ---\n{(err or '')[-2000:]}")
    # RELION starts jobs with "&": never leave a member of our group running past the call.
    _kill_group(proc.pid)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _kill_group(pgid: int) -> None:
    """SIGTERM, then SIGKILL, the process group ``pgid`` (a session we started)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return  # group empty: done
        time.sleep(0.3)


def _pipeliner(project: Path, args: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess:
    """One bounded ``relion_pipeliner`` call in ``project``; raises with its output on error."""
    cmd = [PIPELINER, *args]
    try:
        res = _run_bounded(cmd, Path(project), timeout_s)
    except RelionTimeout:
        _remove_lock(project)
        raise
    if res.returncode != 0:
        _remove_lock(project)
        raise RelionError(f"{shlex.join(cmd)} exited with {res.returncode} in {project}\n"
                          f"--- stdout ---\n{res.stdout[-3000:]}\n--- stderr ---\n{res.stderr[-3000:]}")
    return res


# --------------------------------------------------------------------------- project


@dataclass(frozen=True)
class CtfParams:
    """Per-micrograph CTF values written to the micrographs STAR (same for all)."""

    defocus_u_A: float = 15000.0
    defocus_v_A: float = 14500.0
    defocus_angle_deg: float = 30.0
    max_resolution_A: float = 4.0
    figure_of_merit: float = 0.1


def write_micrographs_star(path: Path, mic_names: Sequence[str], pixel_size_A: float,
                           voltage_kV: float = 300.0, cs_mm: float = 2.7,
                           amplitude_contrast: float = 0.1,
                           ctf: CtfParams | None = CtfParams(),
                           optics_group_name: str = "opticsGroup1") -> Path:
    """Write a RELION 3.1 micrographs STAR (data_optics + data_micrographs)."""
    lines = [
        "", "# version 30001", "", "data_optics", "", "loop_",
        "_rlnOpticsGroupName #1", "_rlnOpticsGroup #2", "_rlnMicrographPixelSize #3",
        "_rlnVoltage #4", "_rlnSphericalAberration #5", "_rlnAmplitudeContrast #6",
        f"{optics_group_name} 1 {pixel_size_A:.6f} {voltage_kV:.6f} {cs_mm:.6f} "
        f"{amplitude_contrast:.6f}",
        "", "", "# version 30001", "", "data_micrographs", "", "loop_",
        "_rlnMicrographName #1", "_rlnOpticsGroup #2",
    ]
    if ctf is not None:
        lines += ["_rlnDefocusU #3", "_rlnDefocusV #4", "_rlnDefocusAngle #5",
                  "_rlnCtfAstigmatism #6", "_rlnCtfMaxResolution #7", "_rlnCtfFigureOfMerit #8"]
    for name in mic_names:
        if any(c.isspace() for c in name):
            raise ValueError(f"RELION cannot handle white space in file names: {name!r}")
        row = f"{name} 1"
        if ctf is not None:
            row += (f" {ctf.defocus_u_A:.6f} {ctf.defocus_v_A:.6f} {ctf.defocus_angle_deg:.6f}"
                    f" {abs(ctf.defocus_u_A - ctf.defocus_v_A):.6f} {ctf.max_resolution_A:.6f}"
                    f" {ctf.figure_of_merit:.6f}")
        lines.append(row)
    path = Path(path)
    path.write_text("\n".join(lines) + "\n \n")
    return path


def _write_empty_pipeline(project: Path) -> None:
    (Path(project) / PIPELINE_STAR).write_text(
        "\n# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 1\n \n")


def make_project(root: Path, micrographs: Sequence[Path], pixel_size_A: float,
                 voltage_kV: float = 300.0, cs_mm: float = 2.7, amplitude_contrast: float = 0.1,
                 ctf: CtfParams | None = CtfParams(), mics_dir: str = "Micrographs",
                 star_name: str = "micrographs.star", copy: bool = False) -> Path:
    """Create a RELION project directory ready for :func:`import_micrographs`.

    Micrographs are symlinked (``copy=True``: copied) into ``root/mics_dir/``,
    listed in ``root/star_name`` with names relative to the project
    (``Micrographs/a.mrc``), and an empty ``default_pipeline.star`` is written.
    ``ctf=None`` leaves the CTF columns out. Returns ``root``.
    """
    root = Path(root).resolve()
    (root / mics_dir).mkdir(parents=True, exist_ok=True)
    names = []
    for mic in micrographs:
        mic = Path(mic).resolve()
        dest = root / mics_dir / mic.name
        if dest.exists() or dest.is_symlink():
            if dest.resolve() != mic:
                raise FileExistsError(f"{dest} exists (two micrographs named {mic.name}?)")
        elif copy:
            shutil.copy2(mic, dest)
        else:
            dest.symlink_to(mic)
        names.append(f"{mics_dir}/{mic.name}")
    write_micrographs_star(root / star_name, names, pixel_size_A, voltage_kV, cs_mm,
                           amplitude_contrast, ctf)
    if not (root / PIPELINE_STAR).exists():
        _write_empty_pipeline(root)
    return root


# --------------------------------------------------------------------------- pipeline


def _read_pipeline(project: Path) -> dict:
    import starfile  # local: keep module import cheap for collection

    path = Path(project) / PIPELINE_STAR
    return starfile.read(path, always_dict=True)


def job_statuses(project: Path) -> dict[str, JobStatus]:
    """All processes of the pipeline, name -> status."""
    data = _read_pipeline(project)
    procs = data.get("pipeline_processes")
    if procs is None or len(procs) == 0:
        return {}
    return {str(n): JobStatus(int(s)) for n, s in
            zip(procs["rlnPipeLineProcessName"], procs["rlnPipeLineProcessStatus"])}


def _norm_job(job: str) -> str:
    return job if job.endswith("/") else job + "/"


def job_status(project: Path, job: str) -> JobStatus:
    """Status of ``job`` ("Extract/job003/") in default_pipeline.star.

    3.1: 0 RUNNING (also a job whose program exited without an exit file, or
    whose pipeliner was killed), 1 SCHEDULED, 2 FINISHED, 3 FAILED, 4 ABORTED.
    """
    statuses = job_statuses(project)
    job = _norm_job(job)
    if job not in statuses:
        raise KeyError(f"{job} is not in {Path(project) / PIPELINE_STAR}: {sorted(statuses)}")
    return statuses[job]


def job_output_nodes(project: Path, job: str) -> list[tuple[str, int]]:
    """Output nodes (name, 3.1 node type) the pipeline records for ``job``."""
    data = _read_pipeline(project)
    edges = data.get("pipeline_output_edges")
    nodes = data.get("pipeline_nodes")
    if edges is None or nodes is None or len(edges) == 0:
        return []
    types = dict(zip(nodes["rlnPipeLineNodeName"], nodes["rlnPipeLineNodeType"]))
    job = _norm_job(job)
    return [(str(n), int(types.get(n, -1))) for p, n in
            zip(edges["rlnPipeLineEdgeProcess"], edges["rlnPipeLineEdgeToNode"]) if p == job]


def _format_options(options: Mapping[str, object]) -> str:
    parts = []
    for key, value in options.items():
        if isinstance(value, bool):
            value = "Yes" if value else "No"
        text = str(value)
        if ";" in text or ";" in key or "==" in text:
            raise ValueError(f"option {key!r}: RELION cannot pass ';' or '==' in a value: {text!r}")
        parts.append(f"{key} == {text}")
    return ";".join(parts)


def add_job(project: Path, job_type: str, options: Mapping[str, object],
            timeout_s: float = 60) -> str:
    """Schedule a job (``relion_pipeliner --addJob``); returns its name, e.g. "External/job002/".

    ``job_type`` is a 3.1 process name: Import, MotionCorr, CtfFind, ManualPick,
    AutoPick, Extract, Class2D, Class3D, Refine3D, External, ... Option keys are
    the GUI's ``joboptions`` keys (see the module docstring).
    """
    project = Path(project)
    if not (project / PIPELINE_STAR).exists():
        _write_empty_pipeline(project)
    before = set(job_statuses(project))
    _pipeliner(project, ["--addJob", job_type, "--addJobOptions", _format_options(options)],
               timeout_s)
    new = [j for j in job_statuses(project) if j not in before]
    if len(new) != 1:
        raise RelionError(f"--addJob {job_type} added {len(new)} processes: {new}")
    return new[0]


def _job_report(project: Path, job: str, status: int | None) -> str:
    d = Path(project) / job
    exits = [f for f in EXIT_FILES if (d / f).exists()]
    name = JobStatus(status).name if status in set(JobStatus) else "not in pipeline"
    return (f"=== {job}: status {status} ({name}); exit files: {exits or 'none'}\n"
            f"--- {job}note.txt (tail) ---\n{tail(d / 'note.txt', 6)}\n"
            f"--- {job}run.out (tail) ---\n{tail(d / 'run.out')}\n"
            f"--- {job}run.err (tail) ---\n{tail(d / 'run.err')}\n")


def run_jobs(project: Path, jobs: Iterable[str], timeout_s: float = 600,
             check: bool = True, sec_wait_after: int = 1) -> dict[str, JobStatus]:
    """Run scheduled jobs in order with ``relion_pipeliner --RunJobs``; block until done.

    Returns name -> status. With ``check`` (default) raises
    :class:`RelionJobError` unless every job ends FINISHED (2), with the tails
    of each unfinished job's run.out/run.err. On timeout the pipeliner and the
    running job are killed, ``.relion_lock`` is removed, and
    :class:`RelionTimeout` is raised (with the same job report appended).
    """
    project = Path(project)
    jobs = [_norm_job(j) for j in jobs]
    if not jobs:
        return {}
    # Trailing space: 3.1 miscounts the job list without it.
    args = ["--RunJobs", " ".join(jobs) + " ", "--sec_wait_after", str(int(sec_wait_after))]
    try:
        _pipeliner(project, args, timeout_s)
    except RelionTimeout as exc:
        statuses = _safe_statuses(project)
        report = "".join(_job_report(project, j, statuses.get(j)) for j in jobs)
        raise RelionTimeout(f"{exc}\n{report}") from None
    statuses = _safe_statuses(project)
    result = {j: statuses.get(j) for j in jobs}
    bad = [j for j in jobs if result[j] != JobStatus.FINISHED]
    if check and bad:
        _remove_lock(project)
        report = "".join(_job_report(project, j, result[j]) for j in bad)
        raise RelionJobError(f"RELION jobs did not finish (status 2) in {project}: "
                             f"{ {j: result[j] for j in bad} }\n{report}", result)
    return result


def _safe_statuses(project: Path) -> dict[str, JobStatus]:
    try:
        return job_statuses(project)
    except Exception:  # pragma: no cover - a half-written pipeline after a kill
        return {}


# --------------------------------------------------------------------------- job wrappers


def import_micrographs(project: Path, mics_star: str = "micrographs.star",
                       timeout_s: float = 60) -> str:
    """Schedule an Import of a micrographs STAR file (relative to the project).

    The output node is ``<job><basename of mics_star>``
    (:func:`imported_micrographs_star`).
    """
    return add_job(project, "Import", {
        "do_raw": False, "do_other": True, "fn_in_other": mics_star,
        "node_type": "Micrographs STAR file (.star)",
    }, timeout_s)


def import_raw_micrographs(project: Path, pattern: str, pixel_size_A: float,
                           voltage_kV: float = 300.0, cs_mm: float = 2.7,
                           amplitude_contrast: float = 0.1, timeout_s: float = 60) -> str:
    """Schedule an Import of micrograph files (``pattern`` like "Micrographs/*.mrc").

    Output: ``<job>micrographs.star`` without CTF columns.
    """
    return add_job(project, "Import", {
        "do_raw": True, "do_other": False, "fn_in_raw": pattern, "is_multiframe": False,
        "angpix": pixel_size_A, "kV": voltage_kV, "Cs": cs_mm, "Q0": amplitude_contrast,
        "optics_group_name": "opticsGroup1",
    }, timeout_s)


def imported_micrographs_star(import_job: str, mics_star: str = "micrographs.star") -> str:
    """Node written by :func:`import_micrographs` (or the raw import: micrographs.star)."""
    return f"{_norm_job(import_job)}{Path(mics_star).name}"


def add_external(project: Path, exe: str | Path, in_mics: str | None,
                 params: Mapping[str, object] | None = None, threads: int = 1,
                 in_parts: str | None = None, in_coords: str | None = None,
                 in_movies: str | None = None, in_3dref: str | None = None,
                 in_mask: str | None = None, other_args: str = "",
                 timeout_s: float = 60) -> str:
    """Schedule an External job; ``params`` become param1_label/param1_value ... (max 10)."""
    params = dict(params or {})
    if len(params) > 10:
        raise ValueError(f"RELION 3.1 External jobs take at most 10 parameters, got {len(params)}")
    options: dict[str, object] = {"fn_exe": str(exe), "nr_threads": int(threads)}
    for key, value in (("in_mic", in_mics), ("in_part", in_parts), ("in_coords", in_coords),
                       ("in_mov", in_movies), ("in_3dref", in_3dref), ("in_mask", in_mask)):
        if value:
            options[key] = value
    for i, (label, value) in enumerate(params.items(), start=1):
        options[f"param{i}_label"] = label
        options[f"param{i}_value"] = value
    if other_args:
        options["other_args"] = other_args
    return add_job(project, "External", options, timeout_s)


def extract(project: Path, mics_star: str, coords_node: str, box_px: int,
            invert: bool = True, normalise: bool = True, bg_diameter_px: float = -1,
            rescale_px: int | None = None, mpi: int = 1,
            extra: Mapping[str, object] | None = None, timeout_s: float = 60) -> str:
    """Schedule an Extract job from a 3.1 ``coords_suffix_<name>.star`` node.

    Output: ``<job>particles.star``. See the module docstring for edge particles.
    """
    if box_px % 2:
        raise ValueError("RELION extracts even box sizes only")
    options: dict[str, object] = {
        "star_mics": mics_star, "coords_suffix": coords_node, "extract_size": int(box_px),
        "do_invert": bool(invert), "do_norm": bool(normalise), "bg_diameter": bg_diameter_px,
        "nr_mpi": int(mpi),
    }
    if rescale_px:
        options.update(do_rescale=True, rescale=int(rescale_px))
    options.update(extra or {})
    return add_job(project, "Extract", options, timeout_s)


def class2d(project: Path, particles_star: str, n_classes: int = 2, n_iter: int = 3,
            particle_diameter_A: float = 100, ctf: bool = True, threads: int = 2, mpi: int = 1,
            extra: Mapping[str, object] | None = None, timeout_s: float = 60) -> str:
    """Schedule a CPU Class2D job. Output: ``<job>run_it<n_iter:03d>_model.star``."""
    options: dict[str, object] = {
        "fn_img": particles_star, "nr_classes": int(n_classes), "nr_iter": int(n_iter),
        "particle_diameter": particle_diameter_A, "do_ctf_correction": bool(ctf),
        "use_gpu": False, "nr_threads": int(threads), "nr_mpi": int(mpi),
    }
    options.update(extra or {})
    return add_job(project, "Class2D", options, timeout_s)


def class2d_model_star(job: str, n_iter: int) -> str:
    """The last iteration's model STAR of a Class2D job."""
    return f"{_norm_job(job)}run_it{n_iter:03d}_model.star"


# --------------------------------------------------------------------------- External, directly


@dataclass
class ExternalRun:
    """Result of :func:`run_external_directly`."""

    command: str                      # the command line as RELION would build it
    outdir: Path                      # absolute job directory
    returncode: int | None            # exit code of the program (RELION ignores it)
    exit_state: str | None            # "success" / "failure" / "aborted" / None (no exit file)
    output_nodes: list[tuple[str, int | str]] = field(default_factory=list)
    stdout_tail: str = ""
    stderr_tail: str = ""

    @property
    def succeeded(self) -> bool:
        return self.exit_state == "success"


def external_command(exe: str | Path, outdir: str, in_mics: str | None = None,
                     params: Mapping[str, object] | None = None, threads: int = 1,
                     in_parts: str | None = None, in_coords: str | None = None,
                     in_movies: str | None = None, in_3dref: str | None = None,
                     in_mask: str | None = None, other_args: str = "") -> str:
    """The command line RELION 3.1 builds for an External job (run via /bin/sh)."""
    outdir = _norm_job(outdir)
    cmd = f"{exe} --o {outdir}"
    for flag, value in (("--in_movies", in_movies), ("--in_mics", in_mics),
                        ("--in_parts", in_parts), ("--in_coords", in_coords),
                        ("--in_3dref", in_3dref), ("--in_mask", in_mask)):
        if value:
            cmd += f" {flag} {value}"
    for label, value in (params or {}).items():
        if label:
            cmd += f" --{label} {value}"
    cmd += f" --j {int(threads)} {other_args}"
    if "relion_" in cmd:
        cmd += f" --pipeline_control {outdir}"
    return cmd


def run_external_directly(project: Path, exe: str | Path, outdir: str = "External/job999/",
                          in_mics: str | None = None, params: Mapping[str, object] | None = None,
                          threads: int = 1, timeout_s: float = 300, **inputs: str) -> ExternalRun:
    """Run an External program as RELION does, without the pipeliner or default_pipeline.star.

    In ``project`` (the working directory), create ``outdir``, run the command
    of :func:`external_command` through /bin/sh with stdout/stderr appended to
    ``<outdir>run.out``/``run.err``, wait (bounded by ``timeout_s``; the process
    group is killed on expiry and :class:`RelionTimeout` raised), then read the
    ``RELION_JOB_EXIT_*`` file and ``RELION_OUTPUT_NODES.star``. ``inputs``:
    in_parts, in_coords, in_movies, in_3dref, in_mask, other_args.
    """
    project = Path(project).resolve()
    outdir = _norm_job(outdir)
    out = project / outdir
    out.mkdir(parents=True, exist_ok=True)
    cmd = external_command(exe, outdir, in_mics, params, threads, **inputs)
    full = f"{cmd} >> {outdir}run.out 2>> {outdir}run.err"
    res = _run_bounded(["/bin/sh", "-c", full], project, timeout_s)
    state = next((s for f, s in EXIT_FILES.items() if (out / f).exists()), None)
    nodes = read_output_nodes(out) if (out / "RELION_OUTPUT_NODES.star").exists() else []
    return ExternalRun(cmd, out, res.returncode, state, nodes,
                       tail(out / "run.out"), tail(out / "run.err"))


def read_output_nodes(job_dir: Path) -> list[tuple[str, int | str]]:
    """``(name, type)`` rows of ``<job_dir>/RELION_OUTPUT_NODES.star``.

    The type is the 3.1 integer ``_rlnPipeLineNodeType`` when present, else the
    4.0/5.0 text ``_rlnPipeLineNodeTypeLabel``. Missing file: FileNotFoundError.
    """
    import starfile

    path = Path(job_dir) / "RELION_OUTPUT_NODES.star"
    if not path.exists():
        raise FileNotFoundError(path)
    data = starfile.read(path, always_dict=True)
    table = data.get("output_nodes")
    if table is None:
        raise RelionError(f"{path} has no data_output_nodes table: {list(data)}")
    if not hasattr(table, "columns"):  # a single row written without loop_
        import pandas as pd
        table = pd.DataFrame([table])
    names = [str(n) for n in table["rlnPipeLineNodeName"]]
    if "rlnPipeLineNodeType" in table.columns:
        types: list[int | str] = [int(t) for t in table["rlnPipeLineNodeType"]]
    elif "rlnPipeLineNodeTypeLabel" in table.columns:
        types = [str(t) for t in table["rlnPipeLineNodeTypeLabel"]]
    else:
        raise RelionError(f"{path}: no node type column")
    return list(zip(names, types))
