"""Particle coordinate files in every format the picker reads or writes.

All functions use the package convention: ``x`` = column, ``y`` = row, particle CENTRE, pixels of the
original micrograph. Formats:

- ``.star``: RELION coordinate STAR (``rlnCoordinateX/Y``, optional ``rlnAutopickFigureOfMerit``).
- ``.box``: EMAN box file, ``x_left y_bottom width height`` per line: the box's corner, so the centre
  is ``x + width / 2``; read without flipping y, as RELION and Topaz do.
- ``.txt`` / ``.csv`` / ``.tsv`` / ``.coords``: columns ``x y [score]`` separated by whitespace or
  commas, optional header line; Topaz's table (``image_name x_coord y_coord score``) is recognised
  by its header.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import JobError
from .atomic import atomic_path
from .star import read_coordinate_star, write_coordinate_star

FORMATS = ("star", "box", "txt")


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"x": [], "y": [], "score": []}, dtype=float)


def read_box(path: str | Path) -> pd.DataFrame:
    """EMAN ``.box`` file -> centres (corner + half the box)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        fields = line.replace(",", " ").split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            x, y, w, h = (float(v) for v in fields[:4])
        except ValueError:
            raise JobError(f"bad .box line {line!r} (expected x y width height)", path) from None
        rows.append((x + w / 2.0, y + h / 2.0))
    if not rows:
        return _empty()
    arr = np.array(rows, dtype=float)
    return pd.DataFrame({"x": arr[:, 0], "y": arr[:, 1], "score": np.nan})


def write_box(path: str | Path, picks: pd.DataFrame, box_px: int) -> None:
    """Write centres as an EMAN ``.box`` file with ``box_px`` boxes (corner = centre - box / 2)."""
    half = box_px / 2.0
    lines = [
        f"{x - half:.2f}\t{y - half:.2f}\t{box_px}\t{box_px}"
        for x, y in zip(np.asarray(picks["x"], float), np.asarray(picks["y"], float))
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))


def read_text(path: str | Path) -> pd.DataFrame:
    """Whitespace/comma separated ``x y [score]`` (or Topaz ``image_name x_coord y_coord score``)."""
    text = Path(path).read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return _empty()
    sep = "," if "," in lines[0] else r"\s+"
    first = lines[0].replace(",", " ").split()
    has_header = any(_not_number(v) for v in first)
    df = pd.read_csv(io.StringIO("\n".join(lines)), sep=sep, header=0 if has_header else None, engine="python")
    if has_header:
        cols = {c.lower(): c for c in df.columns}
        xc = cols.get("x_coord", cols.get("x"))
        yc = cols.get("y_coord", cols.get("y"))
        sc = cols.get("score")
        if xc is None or yc is None:
            raise JobError("coordinate table needs x and y (or x_coord and y_coord) columns", path)
    else:
        if df.shape[1] < 2:
            raise JobError("coordinate table needs at least two columns (x y)", path)
        xc, yc = df.columns[0], df.columns[1]
        sc = df.columns[2] if df.shape[1] > 2 else None
    try:
        out = pd.DataFrame(
            {
                "x": df[xc].astype(float).to_numpy(),
                "y": df[yc].astype(float).to_numpy(),
                "score": df[sc].astype(float).to_numpy() if sc is not None else np.nan,
            }
        )
    except ValueError as err:
        raise JobError(f"non-numeric coordinates ({err})", path) from None
    return out


def _not_number(value: str) -> bool:
    try:
        float(value)
        return False
    except ValueError:
        return True


def read_coordinates(path: str | Path) -> pd.DataFrame:
    """Read one per-micrograph coordinate file of any supported format (by extension)."""
    path = Path(path)
    if not path.is_file():
        raise JobError("coordinate file not found", path)
    suffix = path.suffix.lower()
    if suffix == ".star":
        return read_coordinate_star(path)
    if suffix == ".box":
        return read_box(path)
    if suffix in (".txt", ".csv", ".tsv", ".coords", ".dat"):
        return read_text(path)
    raise JobError("unknown coordinate format (use .star, .box, .txt/.csv)", path)


def write_text(path: str | Path, picks: pd.DataFrame) -> None:
    """Write ``x y score`` with a header line, tab separated."""
    with atomic_path(path) as tmp:
        picks[["x", "y", "score"]].to_csv(tmp, sep="\t", index=False, float_format="%.3f")


def write_coordinates(path: str | Path, picks: pd.DataFrame, fmt: str, box_px: int | None = None) -> None:
    """Write picks in ``fmt`` (``star``, ``box`` or ``txt``) atomically."""
    if fmt == "star":
        write_coordinate_star(path, picks)
    elif fmt == "box":
        if box_px is None:
            raise ValueError("box format needs box_px")
        write_box(path, picks, box_px)
    elif fmt == "txt":
        write_text(path, picks)
    else:
        raise ValueError(f"unknown coordinate format {fmt!r}; choose from {FORMATS}")
