"""Micrograph lists (a micrographs STAR, MRC files, globs or folders) and their coordinate files."""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import JobError
from .star import micrograph_table, read_star

JOB_PREFIX = re.compile(r"^[A-Za-z0-9_]+/job\d+/")


def resolve_name(name: str, star_dir: Path | None) -> Path:
    """Where a micrograph name from a STAR lives: relative to the current directory (RELION's
    project directory), else relative to the STAR's own folder."""
    path = Path(name)
    if path.is_absolute() or star_dir is None or path.exists():
        return path
    beside = star_dir / path
    return beside if beside.exists() else path


def micrograph_list(inputs: Sequence[str | Path], pixel_size: float | None = None) -> pd.DataFrame:
    """The micrographs to process, one row each: ``name`` (as listed: the STAR's rlnMicrographName
    or the path given), ``path`` (where the file is), ``pixel_size`` (Angstrom; NaN = read from the
    MRC header later). ``pixel_size`` given here overrides every other source.

    ``inputs``: one micrographs STAR, or MRC files, glob patterns and folders (``*.mrc`` inside).
    """
    rows: list[tuple[str, str, float]] = []
    for item in inputs:
        item = str(item)
        if item.endswith(".star"):
            table = micrograph_table(item)
            star_dir = Path(item).parent
            for name, px in zip(table["rlnMicrographName"], table["pixel_size"]):
                rows.append((name, str(resolve_name(name, star_dir)), float(px)))
        elif Path(item).is_dir():
            found = sorted(Path(item).glob("*.mrc")) + sorted(Path(item).glob("*.mrcs"))
            if not found:
                raise JobError("folder holds no .mrc files", item)
            rows += [(str(p), str(p), np.nan) for p in found]
        elif any(ch in item for ch in "*?["):
            found = sorted(glob.glob(item))
            if not found:
                raise JobError("pattern matches no files", item)
            rows += [(p, p, np.nan) for p in found]
        else:
            rows.append((item, item, np.nan))
    if not rows:
        raise JobError("no micrographs given")
    table = pd.DataFrame(rows, columns=["name", "path", "pixel_size"])
    if table["name"].duplicated().any():
        dup = table.loc[table["name"].duplicated(), "name"].iloc[0]
        raise JobError(f"micrograph {dup} is listed twice")
    if pixel_size is not None:
        if not pixel_size > 0:
            raise JobError(f"pixel size must be positive (got {pixel_size})")
        table["pixel_size"] = float(pixel_size)
    return table


IMAGE_EXTENSIONS = (".mrc", ".mrcs", ".tif", ".tiff", ".eer", ".map", ".st")


def strip_image_extension(name: str) -> str:
    """``name`` without an image file extension (``.mrc``, ``.tiff``...). Other dots stay:
    ``May08_03.05.02.mrc`` -> ``May08_03.05.02`` (``Path.stem`` would cut ``.02`` as well)."""
    lower = name.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def relative_output_stem(name: str) -> str:
    """The micrograph's path without a leading ``Type/jobNNN/`` and without extension, as RELION
    uses it below a picking job's folder (``MotionCorr/job002/Movies/a.mrc`` -> ``Movies/a``)."""
    stem = JOB_PREFIX.sub("", name.lstrip("./")) if not Path(name).is_absolute() else Path(name).name
    return strip_image_extension(stem)


def coordinate_files(micrographs: pd.DataFrame, coords: Sequence[str | Path]) -> dict[str, Path]:
    """Match coordinate files to micrographs: ``{micrograph name: coordinate file}``.

    ``coords`` may be: a RELION 3.1 node ``coords_suffix_<name>.star`` (files at
    ``<node dir>/<micrograph path minus Type/jobNNN/ and extension>_<name>.star``); a RELION 4/5
    ``manualpick.star`` / ``autopick.star`` (table of rlnMicrographName and
    rlnMicrographCoordinates); or files, globs and folders whose file names start with the
    micrograph's file name stem (``mic01.box``, ``mic01_manualpick.star``, ``mic01.txt``).
    Micrographs without a file are left out.
    """
    coords = [str(c) for c in coords]
    if len(coords) == 1 and Path(coords[0]).name.startswith("coords_suffix_"):
        return _from_suffix_node(micrographs, Path(coords[0]))
    if len(coords) == 1 and coords[0].endswith(".star") and Path(coords[0]).is_file():
        blocks = read_star(coords[0])
        for df in blocks.values():
            if {"rlnMicrographName", "rlnMicrographCoordinates"} <= set(df.columns):
                return _from_coordinate_table(micrographs, df, Path(coords[0]))
    candidates: list[Path] = []
    for item in coords:
        if Path(item).is_dir():
            # a pick job's own candidates/ folder holds all candidates, not picks: skip it
            candidates += [
                p for p in Path(item).rglob("*")
                if p.suffix.lower() in _COORD_SUFFIXES and "candidates" not in p.relative_to(item).parts[:-1]
            ]
        elif any(ch in item for ch in "*?["):
            candidates += [Path(p) for p in glob.glob(item, recursive=True)]
        elif Path(item).is_file():
            candidates.append(Path(item))
        else:
            raise JobError("coordinate file or folder not found", item)
    by_stem: dict[str, Path] = {}
    for name in micrographs["name"]:
        stem = strip_image_extension(Path(name).name)
        matches = [p for p in candidates if p.stem == stem or p.stem.startswith(stem + "_")]
        if len(matches) > 1:
            # Prefer the one that keeps the micrograph's sub-folder (RELION layout), then the shortest.
            rel = relative_output_stem(name)
            matches.sort(key=lambda p: (rel not in str(p.with_suffix("")), len(p.name)))
        if matches:
            by_stem[name] = matches[0]
    return by_stem


_COORD_SUFFIXES = {".star", ".box", ".txt", ".csv", ".tsv", ".coords"}


def _from_suffix_node(micrographs: pd.DataFrame, node: Path) -> dict[str, Path]:
    suffix = node.name[len("coords_suffix") : -len(".star")]  # "_manualpick"
    found = {}
    for name in micrographs["name"]:
        path = node.parent / f"{relative_output_stem(name)}{suffix}.star"
        if path.is_file():
            found[name] = path
    return found


def _from_coordinate_table(micrographs: pd.DataFrame, table: pd.DataFrame, star: Path) -> dict[str, Path]:
    listed = dict(zip(table["rlnMicrographName"].astype(str), table["rlnMicrographCoordinates"].astype(str)))
    found = {}
    for name in micrographs["name"]:
        if name in listed:
            found[name] = resolve_name(listed[name], star.parent.parent.parent)
    return found
