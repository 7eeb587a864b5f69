"""Particle sets of solved projects: RELION particles STARs and CryoSPARC particle ``.cs`` files.

Every reader returns one row per particle with the package's convention: ``micrograph`` (the name
as the file lists it), ``x`` = column, ``y`` = row, the particle CENTRE in pixels of the original
micrograph, and ``pixel_size`` (the micrograph's Angstrom per pixel; NaN where the file does not
say).

RELION particles STAR (Extract, Select, Class2D/3D, Refine3D, Polish...)
----------------------------------------------------------------------
``rlnCoordinateX/Y`` is where the particle was picked (micrograph pixels). A refinement records
how far the particle's centre lies from the box centre as an origin shift; the refined centre is
the coordinate MINUS the shift, as ``relion_preprocess --reextract_data_star --recenter`` computes
it (src/preprocessing.cpp, ``Preprocessing::getCoordinateMetaDataTable``, RELION 3.1-5.0)::

    xoff = rlnOriginXAngst / particle_angpix      # "now in run_data's pixels"
    xoff *= particle_angpix / micrograph_angpix   # "now in micrograph's pixel" (rescale_fndata)
    rlnCoordinateX -= xoff

so the shift in micrograph pixels is ``rlnOriginXAngst / micrograph_angpix`` whatever the
extraction rescaling (RELION rounds it to whole pixels for re-extraction; the exact value is kept
here).

- RELION 3.1+: tables ``data_optics`` and ``data_particles``; shifts ``rlnOriginXAngst/YAngst``
  (Angstrom). The MICROGRAPH pixel size is ``rlnMicrographPixelSize`` of the optics group when it
  is there; Extract removes that column from a new particles STAR (it keeps only
  ``rlnImagePixelSize``, the possibly rescaled particle pixel size, which is NOT the micrograph's),
  so it usually comes from the micrographs STAR (``mics=``) or the micrograph's MRC header.
- RELION 3.0: one table; shifts ``rlnOriginX/Y`` in pixels of the particle images, whose pixel size
  is ``1e4 * rlnDetectorPixelSize / rlnMagnification`` (Extract scales the magnification when it
  rescales); shift in micrograph pixels = ``rlnOriginX * particle_angpix / micrograph_angpix``.
  Without a particle pixel size the images are taken to be unscaled (shift already in micrograph
  pixels).

CryoSPARC particle ``.cs``
--------------------------
``location/micrograph_path``, ``location/center_x_frac`` / ``center_y_frac`` and
``location/micrograph_shape`` (rows, cols): ``x = center_x_frac * cols``, ``y = center_y_frac *
rows`` (:mod:`.cryosparc` gives the evidence); ``location/micrograph_psize_A`` when present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import JobError
from .star import read_star

__all__ = ["read_particles_star", "refined_centres", "read_particles_cs", "is_particles_star"]

_COORDS = ("rlnCoordinateX", "rlnCoordinateY")


def _particle_block(blocks: dict[str, pd.DataFrame], path: Path) -> pd.DataFrame:
    """The particle table of a STAR file (3.1+ ``data_particles`` or a 3.0 single table)."""
    if "particles" in blocks and set(_COORDS) <= set(blocks["particles"].columns):
        return blocks["particles"]
    for name, df in blocks.items():
        if name != "optics" and set(_COORDS) <= set(df.columns) and "rlnMicrographName" in df.columns:
            return df
    raise JobError("has no particle table with rlnMicrographName, rlnCoordinateX and rlnCoordinateY "
                   "(is it a particles STAR?)", path)


def is_particles_star(blocks: dict[str, pd.DataFrame]) -> bool:
    """Whether the parsed STAR blocks hold particles (rlnMicrographName with rlnCoordinateX/Y)."""
    return any(
        {"rlnMicrographName", *_COORDS} <= set(df.columns) for name, df in blocks.items() if name != "optics"
    )


def _numeric(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(float)
    if not np.all(np.isfinite(values)):
        raise JobError(f"column {column} has non-numeric values", path)
    return values


def _optics_column(optics: pd.DataFrame | None, parts: pd.DataFrame, column: str) -> np.ndarray:
    """Per particle, the optics group's ``column`` (NaN where absent)."""
    n = len(parts)
    if optics is None or column not in optics.columns or "rlnOpticsGroup" not in optics.columns:
        return np.full(n, np.nan)
    per_group = dict(zip(optics["rlnOpticsGroup"].astype(int), pd.to_numeric(optics[column], errors="coerce")))
    if "rlnOpticsGroup" in parts.columns:
        return parts["rlnOpticsGroup"].astype(int).map(per_group).to_numpy(float)
    return np.full(n, float(next(iter(per_group.values()))))


def read_particles_star(path: str | Path) -> pd.DataFrame:
    """A RELION particles STAR (3.0 or 3.1+) -> one row per particle.

    Columns: ``micrograph`` (rlnMicrographName), ``coord_x`` / ``coord_y`` (rlnCoordinateX/Y, micrograph
    pixels: where it was picked), ``shift_x_A`` / ``shift_y_A`` (the refined origin shift in
    Angstrom; 0 without shift columns), ``pixel_size`` (micrograph Angstrom per pixel from the optics
    group's rlnMicrographPixelSize, NaN if the file does not hold it). Turn these into centres with
    :func:`refined_centres`. Raises :class:`JobError` naming the file on any problem.
    """
    path = Path(path)
    blocks = read_star(path)
    parts = _particle_block(blocks, path).reset_index(drop=True)
    optics = blocks.get("optics")
    cx, cy = _numeric(parts, "rlnCoordinateX", path), _numeric(parts, "rlnCoordinateY", path)
    mic_px = _optics_column(optics, parts, "rlnMicrographPixelSize")
    if "rlnMicrographPixelSize" in parts.columns:
        mic_px = np.where(np.isfinite(mic_px), mic_px, pd.to_numeric(parts["rlnMicrographPixelSize"], errors="coerce"))
    if {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(parts.columns):  # 3.1+
        sx, sy = _numeric(parts, "rlnOriginXAngst", path), _numeric(parts, "rlnOriginYAngst", path)
    elif {"rlnOriginX", "rlnOriginY"} <= set(parts.columns):  # 3.0: pixels of the particle images
        ox, oy = _numeric(parts, "rlnOriginX", path), _numeric(parts, "rlnOriginY", path)
        image_px = np.full(len(parts), np.nan)
        if {"rlnDetectorPixelSize", "rlnMagnification"} <= set(parts.columns):
            image_px = 1e4 * _numeric(parts, "rlnDetectorPixelSize", path) / _numeric(parts, "rlnMagnification", path)
        image_px = np.where(np.isfinite(image_px), image_px, _optics_column(optics, parts, "rlnImagePixelSize"))
        if np.all(np.isfinite(image_px)):
            sx, sy = ox * image_px, oy * image_px
        else:  # unscaled images: the shift is already in micrograph pixels; keep it as "pixels"
            sx, sy = ox * np.nan, oy * np.nan
            parts = parts.assign(_shift_px_x=ox, _shift_px_y=oy)
    else:
        sx, sy = np.zeros(len(parts)), np.zeros(len(parts))
    out = pd.DataFrame({
        "micrograph": parts["rlnMicrographName"].astype(str).to_numpy(),
        "coord_x": cx, "coord_y": cy, "shift_x_A": sx, "shift_y_A": sy,
        "pixel_size": np.asarray(mic_px, float),
    })  # fmt: skip
    if "_shift_px_x" in parts.columns:
        out["shift_x_px"] = parts["_shift_px_x"].to_numpy(float)
        out["shift_y_px"] = parts["_shift_px_y"].to_numpy(float)
    if "rlnClassNumber" in parts.columns:
        out["class_number"] = pd.to_numeric(parts["rlnClassNumber"], errors="coerce").to_numpy(float)
    out.attrs["path"] = str(path)
    return out


def refined_centres(table: pd.DataFrame, pixel_sizes: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Particle centres (``micrograph``, ``x``, ``y`` in micrograph pixels, ``pixel_size``) of a
    :func:`read_particles_star` table: coordinate minus the origin shift (Angstrom / micrograph
    Angstrom per pixel). ``pixel_sizes`` (micrograph name -> Angstrom per pixel) fills the
    micrographs whose pixel size the STAR does not give (and wins over it when given).

    Raises :class:`JobError` when a particle has a shift but its micrograph's pixel size is unknown.
    """
    px = table["pixel_size"].to_numpy(float).copy()
    if pixel_sizes:
        given = table["micrograph"].map(lambda m: pixel_sizes.get(m, np.nan)).to_numpy(float)
        px = np.where(np.isfinite(given) & (given > 0), given, px)
    sx, sy = table["shift_x_A"].to_numpy(float), table["shift_y_A"].to_numpy(float)
    dx, dy = sx / px, sy / px
    if "shift_x_px" in table.columns:  # 3.0 without a particle pixel size: micrograph pixels
        dx = np.where(np.isfinite(sx), dx, table["shift_x_px"].to_numpy(float))
        dy = np.where(np.isfinite(sy), dy, table["shift_y_px"].to_numpy(float))
    no_shift = (sx == 0) & (sy == 0)
    dx, dy = np.where(no_shift, 0.0, dx), np.where(no_shift, 0.0, dy)
    bad = ~(np.isfinite(dx) & np.isfinite(dy))
    if bad.any():
        mic = table["micrograph"].iloc[int(np.flatnonzero(bad)[0])]
        raise JobError(
            f"the micrograph pixel size of {mic} is unknown, so the refined shifts (Angstrom) cannot be "
            "converted to pixels: give the micrographs STAR (mics=...) or the pixel size (angpix=...)",
            table.attrs.get("path"),
        )
    return pd.DataFrame({
        "micrograph": table["micrograph"].to_numpy(),
        "x": table["coord_x"].to_numpy(float) - dx,
        "y": table["coord_y"].to_numpy(float) - dy,
        "pixel_size": px,
    })  # fmt: skip


def read_particles_cs(path: str | Path) -> pd.DataFrame:
    """A CryoSPARC particle ``.cs`` -> ``micrograph`` (location/micrograph_path), ``x``, ``y``
    (centres, micrograph pixels), ``pixel_size`` (location/micrograph_psize_A, NaN if absent).

    Loaded with cryosparc-tools (numpy without pickle). Raises :class:`JobError` naming the file.
    """
    from cryosparc.dataset import Dataset

    from .cryosparc import from_fractions

    path = Path(path)
    if not path.is_file():
        raise JobError("CryoSPARC particle file not found", path)
    try:
        data = Dataset.load(path)
    except Exception as err:  # numpy / cryosparc raise assorted errors on bad files
        raise JobError(f"not a readable CryoSPARC .cs file ({type(err).__name__}: {err})", path) from None
    needed = ["location/micrograph_path", "location/micrograph_shape",
              "location/center_x_frac", "location/center_y_frac"]  # fmt: skip
    missing = [f for f in needed if f not in data]
    if missing:
        raise JobError(f"has no particle locations (missing {', '.join(missing)})", path)
    if len(data) == 0:
        return pd.DataFrame({"micrograph": [], "x": [], "y": [], "pixel_size": []})
    x, y = from_fractions(data["location/center_x_frac"], data["location/center_y_frac"],
                          np.asarray(data["location/micrograph_shape"]))  # fmt: skip
    px = (np.asarray(data["location/micrograph_psize_A"], float) if "location/micrograph_psize_A" in data
          else np.full(len(data), np.nan))  # fmt: skip
    px = np.where(px > 0, px, np.nan)
    return pd.DataFrame({"micrograph": [str(p) for p in data["location/micrograph_path"]],
                         "x": np.asarray(x, float), "y": np.asarray(y, float), "pixel_size": px})  # fmt: skip
