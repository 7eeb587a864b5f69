"""RELION pipeline files of a picking job: the coordinate node and ``RELION_OUTPUT_NODES.star``.

Small public functions used by the RELION External jobs (``relion_external``) and by
``deeppicker merge``. All paths that RELION reads are relative to the PROJECT directory (where
RELION runs the job, the current directory by default): pass ``job_dir`` as RELION gives it
(``External/job005/``) and ``project_dir`` when the current directory is elsewhere.

Formats (read in RELION's source, branches ver3.1, ver4.0 and ver5.0, and checked with RELION
3.1.3):

- Per-micrograph coordinate files, all versions: ``<job_dir><micrograph path without a leading
  Type/jobNNN/ and without extension>_<pickname>.star`` (:func:`coordinate_file_name`).
- 3.1 coordinate node: ``<job_dir>coords_suffix_<pickname>.star``, one line: the input micrographs
  STAR. Extract then runs with ``--coord_dir <job_dir> --coord_suffix _<pickname>.star``.
- 4.0 / 5.0 coordinate node: ``<job_dir>autopick.star``, table ``data_coordinate_files`` with
  ``_rlnMicrographName`` and ``_rlnMicrographCoordinates`` (one row per micrograph that has a
  coordinate file), as RELION's own AutoPick writes it.
- ``RELION_OUTPUT_NODES.star``: table ``data_output_nodes`` with ``_rlnPipeLineNodeName`` and, in
  3.1, the integer ``_rlnPipeLineNodeType`` (coordinates = 2); in 4.0 and 5.0 the text
  ``_rlnPipeLineNodeTypeLabel``, taken as written (4.0 ``MicrographsCoords.star.relion.autopick``,
  5.0 ``MicrographCoordsGroup.star.relion.autopick``; pipeline_jobs.h ``LABEL_AUTOPICK_COORDS``).
  RELION 4/5 ignore the integer column and 3.1 ignores the label, so the label of the version that
  runs the job must be written (the 5.x GUI lists only ``MicrographCoordsGroup`` nodes as Extract
  input).
- Version of a project: ``default_pipeline.star`` says ``# version 50001`` in 5.x; 3.1 and 4.0 both
  write ``# version 30001``, and 4.0's tables use ``_rlnPipeLineProcessTypeLabel`` /
  ``_rlnPipeLineNodeTypeLabel`` (text) where 3.1 uses ``_rlnPipeLineProcessType`` /
  ``_rlnPipeLineNodeType`` (integers).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import JobError
from .atomic import write_text_atomic
from .micrographs import relative_output_stem

__all__ = [
    "VERSIONS",
    "COORDINATES",
    "MICROGRAPHS",
    "PARTICLES",
    "MODEL",
    "OUTPUT_NODES",
    "parse_relion_version",
    "detect_relion_version",
    "resolve_relion_version",
    "node_type",
    "coordinate_file_name",
    "coordinate_node_name",
    "write_coordinate_node",
    "write_output_nodes",
    "read_output_nodes",
]

#: RELION versions whose layouts are written: "3.1", "4" (4.0) and "5" (5.0).
VERSIONS = ("3.1", "4", "5")

# Node kinds (what a node holds); node_type() turns them into the version's type.
COORDINATES = "coordinates"
MICROGRAPHS = "micrographs"
PARTICLES = "particles"
MODEL = "model"

OUTPUT_NODES = "RELION_OUTPUT_NODES.star"
PIPELINE = "default_pipeline.star"

# 3.1: integer node types of pipeline_jobs.h (NODE_MICS 1, NODE_MIC_COORDS 2, NODE_PART_DATA 3). 3.1
# has no type for a weights file: a model node is not registered there.
_TYPES_31 = {MICROGRAPHS: 1, COORDINATES: 2, PARTICLES: 3}
# 4.0 / 5.0: labels of pipeline_jobs.h (LABEL_AUTOPICK_COORDS, LABEL_MICS_CPIPE, LABEL_PARTS_CPIPE);
# a weights file is labelled like RELION's Topaz model (LABEL_AUTOPICK_TOPAZMODEL:
# "ProcessData.sav.topaz.model" in 4.0, "ParamsData.sav.topaz.model" in 5.0).
_LABELS = {
    "4": {
        COORDINATES: "MicrographsCoords.star.relion.autopick",
        MICROGRAPHS: "MicrographsData.star.relion",
        PARTICLES: "ParticlesData.star.relion",
        MODEL: "ProcessData.safetensors.deeppicker.model",
    },
    "5": {
        COORDINATES: "MicrographCoordsGroup.star.relion.autopick",
        MICROGRAPHS: "MicrographGroupMetadata.star.relion",
        PARTICLES: "ParticleGroupMetadata.star.relion",
        MODEL: "ParamsData.safetensors.deeppicker.model",
    },
}
# The version line RELION writes above every table.
_STAR_VERSION = {"3.1": "30001", "4": "30001", "5": "50001"}


def parse_relion_version(value: str | None) -> str | None:
    """``"auto"`` / empty / None -> None; ``3``, ``3.1``, ``3.1.3`` -> ``"3.1"``; ``4``, ``4.0`` ->
    ``"4"``; ``5``, ``5.0`` -> ``"5"``. Raises :class:`JobError` for anything else."""
    text = "" if value is None else str(value).strip().lower()
    if text in ("", "auto"):
        return None
    match = re.fullmatch(r"v?(\d+)(?:\.(\d+))?(?:\.\d+)?", text)
    if match:
        major, minor = int(match.group(1)), int(match.group(2) or 0)
        if major == 3 and minor in (0, 1):
            return "3.1"
        if major in (4, 5):
            return str(major)
    raise JobError(f"RELION version {value!r} is not supported: use auto, 3.1, 4 or 5")


def detect_relion_version(project_dir: str | Path = ".") -> str | None:
    """The RELION version of a project, from its ``default_pipeline.star``: ``"3.1"``, ``"4"``,
    ``"5"``, or None when the file is missing or holds no table that tells (a new 3.1/4.0 project
    before its first job)."""
    path = Path(project_dir) / PIPELINE
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    versions = [int(v) for v in re.findall(r"^#\s*version\s+(\d+)", text, flags=re.MULTILINE)]
    if versions and max(versions) >= 50000:
        return "5"
    labels = set(re.findall(r"^\s*(_rlnPipeLine\w+)", text, flags=re.MULTILINE))
    if labels & {"_rlnPipeLineProcessTypeLabel", "_rlnPipeLineNodeTypeLabel", "_rlnPipeLineProcessStatusLabel"}:
        return "4"
    if labels & {"_rlnPipeLineProcessType", "_rlnPipeLineNodeType", "_rlnPipeLineProcessStatus"}:
        return "3.1"
    return None


def resolve_relion_version(requested: str | None, project_dir: str | Path = ".") -> tuple[str, str]:
    """The version to write for and why: ``(version, reason)``.

    ``requested`` as for :func:`parse_relion_version`; ``auto`` reads the project's
    ``default_pipeline.star``. When that does not tell, the 3.1 layout is used (RELION 4 and 5
    Extract read it too, by file name) and ``reason`` says so.
    """
    version = parse_relion_version(requested)
    if version is not None:
        return version, "as requested"
    detected = detect_relion_version(project_dir)
    if detected is not None:
        return detected, f"detected from {Path(project_dir) / PIPELINE}"
    return "3.1", (
        f"{Path(project_dir) / PIPELINE} does not tell the RELION version; 3.1 assumed "
        "(RELION 4 and 5 Extract read it too; give relion_version 4 or 5 for their node labels)"
    )


def _check_version(version: str) -> str:
    if version not in VERSIONS:
        raise JobError(f"RELION version {version!r} is not one of {', '.join(VERSIONS)}")
    return version


def node_type(kind: str, version: str) -> int | str | None:
    """The node type of ``kind`` (:data:`COORDINATES`, :data:`MICROGRAPHS`, :data:`PARTICLES`,
    :data:`MODEL`) in ``version``: an integer in 3.1, a label in 4 and 5; None when the version has
    no type for it (a model in 3.1)."""
    version = _check_version(version)
    table = _TYPES_31 if version == "3.1" else _LABELS[version]
    if kind not in (COORDINATES, MICROGRAPHS, PARTICLES, MODEL):
        raise ValueError(f"unknown node kind {kind!r}")
    return table.get(kind)


def _prefix(job_dir: str | Path) -> str:
    """``job_dir`` as RELION writes it: forward slashes, one trailing slash."""
    text = str(job_dir).replace("\\", "/")
    return text if text.endswith("/") else text + "/"


def coordinate_file_name(job_dir: str | Path, micrograph_name: str, pickname: str) -> str:
    """Name (relative to the project) of the coordinate STAR of ``micrograph_name`` in a picking
    job: ``External/job005/`` + ``MotionCorr/job002/Movies/a.mrc`` -> ``External/job005/Movies/a_<pickname>.star``."""
    return f"{_prefix(job_dir)}{relative_output_stem(micrograph_name)}_{pickname}.star"


def coordinate_node_name(job_dir: str | Path, pickname: str, version: str) -> str:
    """The coordinate node of a picking job: ``<job_dir>coords_suffix_<pickname>.star`` (3.1) or
    ``<job_dir>autopick.star`` (4, 5)."""
    version = _check_version(version)
    name = f"coords_suffix_{pickname}.star" if version == "3.1" else "autopick.star"
    return _prefix(job_dir) + name


def _star_table(block: str, columns: Sequence[str], rows: Iterable[Sequence[object]], version: str) -> str:
    """One STAR table in RELION's own layout (version line, ``loop_``, ``_label #n``)."""
    lines = ["", f"# version {_STAR_VERSION[version]}", "", f"data_{block}", "", "loop_"]
    lines += [f"_{column} #{i}" for i, column in enumerate(columns, start=1)]
    for row in rows:
        values = [str(v) for v in row]
        if any(not v or any(c.isspace() for c in v) for v in values):
            raise JobError(f"RELION cannot read an empty value or white space in {values}")
        lines.append(" ".join(values))
    return "\n".join(lines) + "\n \n"


def write_coordinate_node(
    job_dir: str | Path,
    micrograph_names: Iterable[str],
    pickname: str,
    in_mics_star: str | Path,
    version: str,
    project_dir: str | Path = ".",
) -> str:
    """Write the coordinate node of a picking job; returns its name (relative to the project).

    ``micrograph_names``: the micrographs (names as in the input micrographs STAR) that have a
    coordinate file in the job (:func:`coordinate_file_name`); only 4 and 5 list them.
    ``in_mics_star``: the input micrographs STAR as given to the job (3.1 writes it into the node).
    """
    name = coordinate_node_name(job_dir, pickname, version)
    if version == "3.1":
        text = f"{in_mics_star}\n"
    else:
        rows = [(mic, coordinate_file_name(job_dir, mic, pickname)) for mic in micrograph_names]
        text = _star_table("coordinate_files", ["rlnMicrographName", "rlnMicrographCoordinates"], rows, version)
    write_text_atomic(Path(project_dir) / name, text)
    return name


def write_output_nodes(
    job_dir: str | Path,
    nodes: Iterable[tuple[str, str]],
    version: str,
    project_dir: str | Path = ".",
) -> list[tuple[str, int | str]]:
    """Write ``<job_dir>RELION_OUTPUT_NODES.star`` listing ``nodes``: ``(name relative to the
    project, kind)`` pairs. Returns the ``(name, type)`` rows written; a node whose kind has no type
    in ``version`` (a model in 3.1) is left out, and the table may then be empty."""
    version = _check_version(version)
    rows = [(name, node_type(kind, version)) for name, kind in nodes]
    rows = [(name, t) for name, t in rows if t is not None]
    column = "rlnPipeLineNodeType" if version == "3.1" else "rlnPipeLineNodeTypeLabel"
    text = _star_table("output_nodes", ["rlnPipeLineNodeName", column], rows, version)
    write_text_atomic(Path(project_dir) / _prefix(job_dir) / OUTPUT_NODES, text)
    return rows


def read_output_nodes(job_dir: str | Path, project_dir: str | Path = ".") -> list[tuple[str, int | str]]:
    """``(name, type)`` rows of a job's ``RELION_OUTPUT_NODES.star`` (integer type of 3.1, else the
    label). Raises :class:`JobError` when it is missing or unreadable."""
    from .star import read_star

    path = Path(project_dir) / _prefix(job_dir) / OUTPUT_NODES
    blocks = read_star(path)
    table = blocks.get("output_nodes")
    if table is None:
        raise JobError("has no data_output_nodes table", path)
    if "rlnPipeLineNodeName" not in table.columns:
        return []
    if "rlnPipeLineNodeType" in table.columns:
        types: list[int | str] = [int(t) for t in table["rlnPipeLineNodeType"]]
    elif "rlnPipeLineNodeTypeLabel" in table.columns:
        types = [str(t) for t in table["rlnPipeLineNodeTypeLabel"]]
    else:
        raise JobError("has no node type column", path)
    return list(zip((str(n) for n in table["rlnPipeLineNodeName"]), types))
