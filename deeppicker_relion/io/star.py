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
