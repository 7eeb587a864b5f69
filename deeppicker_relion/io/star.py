"""STAR files: micrograph lists (RELION 3.0 / 3.1+ layouts) and per-micrograph coordinate files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from ..errors import JobError
from .atomic import atomic_path

COORDINATE_COLUMNS = [
    "rlnCoordinateX",
    "rlnCoordinateY",
    "rlnAutopickFigureOfMerit",
    "rlnClassNumber",
    "rlnAnglePsi",
]


def read_star(path: str | Path) -> dict[str, pd.DataFrame]:
    """All data blocks of a STAR file, keyed by block name (``data_optics`` -> ``"optics"``).

    Raises :class:`JobError` naming the file when it is missing or not parseable.
    """
    path = Path(path)
    if not path.is_file():
        raise JobError("STAR file not found", path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as err:  # starfile raises assorted parser errors
        raise JobError(f"not a readable STAR file ({type(err).__name__}: {err})", path) from None
    if not blocks:
        raise JobError("STAR file holds no data blocks", path)
    return {name: (df if isinstance(df, pd.DataFrame) else pd.DataFrame([df])) for name, df in blocks.items()}


def write_star(path: str | Path, blocks: dict[str, pd.DataFrame], float_format: str = "%.6f") -> None:
    """Write data blocks to ``path`` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, overwrite=True, float_format=float_format)


def micrograph_table(path: str | Path) -> pd.DataFrame:
    """The micrograph table of a micrographs STAR with a ``pixel_size`` column (Angstrom; NaN if unknown).

    Accepts RELION 3.1+ (``data_optics`` + ``data_micrographs``, pixel size from
    ``rlnMicrographPixelSize`` or ``rlnImagePixelSize`` of the optics group) and RELION 3.0 (one
    table; pixel size from ``rlnMicrographPixelSize`` or ``rlnDetectorPixelSize`` and
    ``rlnMagnification`` if present).
    """
    blocks = read_star(path)
    table = None
    for name in ("micrographs", "", "images"):
        if name in blocks and "rlnMicrographName" in blocks[name].columns:
            table = blocks[name].copy()
            break
    if table is None:
        for df in blocks.values():
            if "rlnMicrographName" in df.columns:
                table = df.copy()
                break
    if table is None:
        raise JobError("has no rlnMicrographName column (is it a micrographs STAR?)", path)
    table = table.reset_index(drop=True)
    table["rlnMicrographName"] = table["rlnMicrographName"].astype(str)
    pixel = pd.Series(np.nan, index=table.index, dtype=float)
    if "rlnMicrographPixelSize" in table.columns:
        pixel = pd.to_numeric(table["rlnMicrographPixelSize"], errors="coerce")
    elif "rlnDetectorPixelSize" in table.columns and "rlnMagnification" in table.columns:
        pixel = 1e4 * pd.to_numeric(table["rlnDetectorPixelSize"]) / pd.to_numeric(table["rlnMagnification"])
    optics = blocks.get("optics")
    if optics is not None and "rlnOpticsGroup" in optics.columns:
        column = next(
            (c for c in ("rlnMicrographPixelSize", "rlnImagePixelSize") if c in optics.columns), None
        )
        if column is not None:
            per_group = dict(zip(optics["rlnOpticsGroup"].astype(int), optics[column].astype(float)))
            if "rlnOpticsGroup" in table.columns:
                from_optics = table["rlnOpticsGroup"].astype(int).map(per_group)
            else:
                from_optics = pd.Series(next(iter(per_group.values())), index=table.index)
            pixel = pixel.fillna(from_optics.astype(float))
    table["pixel_size"] = pixel.astype(float)
    return table


def read_coordinate_star(path: str | Path) -> pd.DataFrame:
    """Particle centres from a RELION coordinate STAR: columns ``x``, ``y`` (pixels) and ``score``.

    ``score`` is ``rlnAutopickFigureOfMerit`` when present, else NaN.
    """
    blocks = read_star(path)
    for df in blocks.values():
        if {"rlnCoordinateX", "rlnCoordinateY"} <= set(df.columns):
            score = df["rlnAutopickFigureOfMerit"] if "rlnAutopickFigureOfMerit" in df.columns else np.nan
            return pd.DataFrame(
                {
                    "x": pd.to_numeric(df["rlnCoordinateX"]).astype(float).to_numpy(),
                    "y": pd.to_numeric(df["rlnCoordinateY"]).astype(float).to_numpy(),
                    "score": pd.to_numeric(pd.Series(score, index=df.index)).astype(float).to_numpy(),
                }
            )
    # An empty coordinate file (header only) parses to an empty block.
    if all(len(df) == 0 for df in blocks.values()):
        return pd.DataFrame({"x": [], "y": [], "score": []}, dtype=float)
    raise JobError("has no rlnCoordinateX/rlnCoordinateY columns", path)


def coordinates_to_relion(picks: pd.DataFrame) -> pd.DataFrame:
    """Convert picks (``x``, ``y``, ``score``) to RELION's autopick coordinate columns."""
    n = len(picks)
    score = picks["score"] if "score" in picks.columns else pd.Series(np.zeros(n))
    return pd.DataFrame(
        {
            "rlnCoordinateX": np.asarray(picks["x"], dtype=float),
            "rlnCoordinateY": np.asarray(picks["y"], dtype=float),
            "rlnAutopickFigureOfMerit": np.asarray(score, dtype=float),
            "rlnClassNumber": np.zeros(n, dtype=int),
            "rlnAnglePsi": np.zeros(n, dtype=float),
        },
        columns=COORDINATE_COLUMNS,
    )


def write_coordinate_star(path: str | Path, picks: pd.DataFrame) -> None:
    """Write picks (``x``, ``y``, ``score``) as a RELION coordinate STAR, atomically.

    An empty ``picks`` frame writes a valid file with the column header and no rows.
    """
    write_star(path, {"": coordinates_to_relion(picks)})


CANDIDATE_RAW_COLUMN = "deeppickerNetworkScore"  # the network's own score; rlnAutopickFigureOfMerit: the FOM
MICROGRAPH_BLOCK = "micrograph"
MICROGRAPH_KEYS = ("area_boxes", "removed_fraction", "dark_fraction", "expected_particles", "confident_particles")


def write_candidate_star(path: str | Path, candidates: pd.DataFrame) -> None:
    """Write a micrograph's candidates for re-thresholding, atomically: a coordinate STAR whose
    ``rlnAutopickFigureOfMerit`` is the figure of merit, with the network's score in
    ``deeppickerNetworkScore`` (when ``candidates`` has ``raw_score``), followed by a
    ``data_micrograph`` block of what the figure of merit knows of the micrograph
    (``candidates.attrs``: ``features``, ``expected_particles``, ``area_boxes``, ...)."""
    table = coordinates_to_relion(candidates)
    if "raw_score" in candidates.columns:
        table[CANDIDATE_RAW_COLUMN] = np.asarray(candidates["raw_score"], dtype=float)
    blocks = {"": table}
    info = micrograph_info(candidates.attrs)
    if info:
        blocks[MICROGRAPH_BLOCK] = pd.DataFrame([info])
    write_star(path, blocks, float_format="%.8g")


def micrograph_info(attrs: dict) -> dict[str, float]:
    """The flat per-micrograph values of candidates' ``attrs`` (features included) for the
    ``data_micrograph`` block."""
    info = {k: float(attrs[k]) for k in MICROGRAPH_KEYS if attrs.get(k) is not None}
    info.update({k: float(v) for k, v in (attrs.get("features") or {}).items()})
    return info


def read_candidate_star(path: str | Path) -> pd.DataFrame:
    """Candidates written by :func:`write_candidate_star`: ``x``, ``y``, ``score`` (the figure of
    merit) and ``raw_score`` when saved; ``attrs`` from the ``data_micrograph`` block (empty for
    files of earlier versions)."""
    blocks = read_star(path)
    cands = read_coordinate_star(path)
    first = next((df for df in blocks.values() if {"rlnCoordinateX", "rlnCoordinateY"} <= set(df.columns)), None)
    if first is not None and CANDIDATE_RAW_COLUMN in first.columns:
        cands["raw_score"] = pd.to_numeric(first[CANDIDATE_RAW_COLUMN]).astype(float).to_numpy()
    info = blocks.get(MICROGRAPH_BLOCK)
    if info is not None and len(info):
        row = {k: float(v) for k, v in info.iloc[0].items()}
        attrs = {k: row.pop(k) for k in MICROGRAPH_KEYS if k in row}
        attrs["features"] = row
        cands.attrs = attrs
    return cands


def first_loop(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """(column labels without ``_``, rows as lists of strings) of the first loop of a STAR file
    written by this package, parsed quickly (a rerun or a report of a 50,000-micrograph job reads
    100,000 such files). Raises ValueError when the file is not laid out so (callers then use
    :func:`read_star`) and OSError when it cannot be read."""
    lines = Path(path).read_text().splitlines()
    blocks = [i for i, ln in enumerate(lines) if ln.startswith("data_")]
    end = blocks[1] if len(blocks) > 1 else len(lines)
    body = lines[: end]
    header = [i for i, ln in enumerate(body) if ln.startswith("_")]
    if not header or "loop_" not in (ln.strip() for ln in body[: header[0]]):
        raise ValueError("not a single loop")
    columns = [body[i].split()[0][1:] for i in header]
    rows = [ln.split() for ln in body[header[-1] + 1 :] if ln.strip() and not ln.lstrip().startswith("#")]
    if any(len(r) != len(columns) for r in rows):
        raise ValueError("rows do not match the labels")
    return columns, rows
