"""CryoSPARC particle-pick ``.cs`` files, written and read with cryosparc-tools' ``Dataset``.

What a CryoSPARC picker writes
------------------------------
A particle-pick output of CryoSPARC has two slots, ``location`` and ``pick_stats``.  Fields and
dtypes below are those of real CryoSPARC particle files as recorded in cryosparc-tools' own tests
(repo ``cryoem-uoft/cryosparc-tools``: ``tests/test_dataset.py`` lists the fields of a real
picked-and-extracted dataset; ``tests/conftest.py`` holds ``T20S_PARTICLES_PASSTHROUGH``, a real
``location`` slot, and the server's ``min_fields`` of the ``particle.location`` and
``particle.pick_stats`` results)::

    uid                            <u8   unique particle id
    location/micrograph_uid        <u8   uid of the exposure (micrograph) the particle is on
    location/exp_group_id          <u4   exposure group
    location/micrograph_path       O     micrograph path as CryoSPARC sees it
    location/micrograph_shape      <u4 (2,)   (rows, cols) = (ny, nx) of that micrograph
    location/center_x_frac         <f4   x / cols
    location/center_y_frac         <f4   see "Y axis" below
    location/micrograph_psize_A    <f4   pixel size of the micrograph (A/px), newer CryoSPARC
    pick_stats/ncc_score           <f4   "NCC score" of Inspect Picks   <- our score (0..1)
    pick_stats/power               <f4   "power" of Inspect Picks       <- picks["power"] or score
    pick_stats/template_idx        <u4   0 (no templates)
    pick_stats/angle_rad           <f4   picks["angle_rad"] or 0

Conventions (RELION picks -> CryoSPARC fractions)
-------------------------------------------------
* ``micrograph_shape`` is ``(rows, cols)``: the cryosparc-tools README (``cryoem-uoft/cryosparc-tools``,
  ``README.md``) unpacks it as ``mic_shape_y, mic_shape_x = particles["location/micrograph_shape"].T``;
  pyem (``asarnow/pyem``, ``pyem/metadata/cryosparc2.py``, ``cryosparc_2_cs_particle_locations``)
  says "'location/micrograph_shape' is [y, x]" and multiplies by ``micrograph_shape[:, ::-1]``; the
  real file in cryosparc-tools' ``tests/conftest.py`` has ``[7676, 7420]`` for a T20S micrograph.
* ``center_x_frac = x / cols`` -- no half-pixel offset.  Pixel = fraction * size in the
  cryosparc-tools README (``new_loc_x = particles["location/center_x_frac"] * mic_shape_x``), in
  pyem (``np.round(frac * micrograph_shape[:, ::-1])``) and in the crYOLO example of
  cryosparc-tools (tools.cryosparc.com/examples/cryolo.html, reproduced in
  ``Poko18/Cryosparc-tools-scripts`` ``crYOLO_particlepicker.py``:
  ``center_x = locations["rlnCoordinateX"] / width`` with ``height, width = mic["micrograph_blob/shape"]``).
  Every RELION<->CryoSPARC converter uses this mapping, so we do too (a "continuous" convention
  would differ by half a pixel, far below picking precision).
* Y axis: no flip (``flip_y=False``, the default): ``center_y_frac = y / rows``, i.e. both
  programs count rows of the same MRC array from its first stored row.  Evidence:
  the crYOLO example of cryosparc-tools (above) turns crYOLO's RELION-convention
  ``rlnCoordinateY`` into ``center_y = rlnCoordinateY / height`` on the very micrograph files
  crYOLO read, and saves them as the ``location`` slot of an External job -- exactly what we do;
  cryosparc-tools' ``mrc.read`` returns the array unflipped; helicon (``jianglab/helicon``) cuts
  particles out of CryoSPARC micrographs at row ``rint(center_y_frac * rows)`` of the mrcfile array
  (``src/helicon/plugins/cryosparc/extractparticles.py`` and ``src/helicon/commands/cryosparc.py``:
  default ``flip_y=0``; an earlier version defaulted to 1) and converts to RELION without
  inversion (``tests/test_integration_relion5.py``: "Y coordinate is NOT inverted (both CS and
  RELION use top-left origin)").
  Why pyem inverts by default: ``asarnow/pyem`` ``pyem/cli/csparc2star.py`` (``--inverty`` is
  ``store_false``) and ``pyem/metadata/cryosparc2.py`` (``COORDY = 1 - center_y_frac``) undo an
  inversion that CryoSPARC's *STAR importer* (Import Particle Stack) applies to RELION
  coordinates (pyem issues #81, #101), and CryoSPARC Patch Motion writes micrographs upside-down
  relative to MotionCor2/RELION (issue #81).  Neither applies here: we bypass the STAR importer
  and refer to the micrograph files RELION picked on.  ``flip_y=True`` writes
  ``1 - y / rows`` instead (what CryoSPARC's STAR importer would store, and what is needed if the
  fractions are to be used on CryoSPARC Patch Motion micrographs of the same movies).  The
  sources do not all agree, so check one micrograph in Inspect Picks; if the picks are mirrored
  top-to-bottom, rewrite with ``flip_y=True``.
* No X flip and no X/Y swap: x = column, y = row of the MRC array in both programs.

``location/micrograph_uid`` is what CryoSPARC groups and joins particles on (the crYOLO example
sets it to the exposure's ``uid``).  Files written here get a stable id per micrograph: the
CryoSPARC uid if the file name carries CryoSPARC's 21-digit uid prefix (``0129...663_name.mrc``:
in ``T20S_PARTICLES_PASSTHROUGH`` the prefix equals ``location/micrograph_uid``), else the first
8 bytes of BLAKE2b of the path.  ``deeppicker_relion.jobs.cryosparc_import`` can re-map uids and paths
onto the exposures of a CryoSPARC job when importing.

Precision: CryoSPARC stores fractions as float32, so a round trip x -> frac -> x is exact to
about ``size * 2**-24`` px (4e-5 px for 737 px).  ``exact=True`` stores float64 fractions
(round trip to 1e-9 px) -- not CryoSPARC's dtype, for archives and tests only.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path, PurePath
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import JobError
from .atomic import atomic_path

__all__ = [
    "LOCATION_FIELDS",
    "PICK_STATS_FIELDS",
    "PARTICLE_FIELDS",
    "micrograph_uid",
    "to_fractions",
    "from_fractions",
    "build_particles_dataset",
    "write_particles_cs",
    "read_particles_cs",
]

LOCATION_FIELDS: list[tuple] = [
    ("location/micrograph_uid", "<u8"),
    ("location/exp_group_id", "<u4"),
    ("location/micrograph_path", "O"),
    ("location/micrograph_shape", "<u4", (2,)),
    ("location/center_x_frac", "<f4"),
    ("location/center_y_frac", "<f4"),
    ("location/micrograph_psize_A", "<f4"),
]
PICK_STATS_FIELDS: list[tuple] = [
    ("pick_stats/ncc_score", "<f4"),
    ("pick_stats/power", "<f4"),
    ("pick_stats/template_idx", "<u4"),
    ("pick_stats/angle_rad", "<f4"),
]
PARTICLE_FIELDS: list[tuple] = LOCATION_FIELDS + PICK_STATS_FIELDS

_FRAC_FIELDS = ("location/center_x_frac", "location/center_y_frac")
_CS_UID_PREFIX = re.compile(r"^(\d{21})_")


def micrograph_uid(path: str) -> int:
    """A stable unsigned 64-bit id for a micrograph path.

    CryoSPARC names the files it imports or writes ``<21-digit uid>_<name>``; that uid is the
    exposure's ``uid`` and is used when present.  Otherwise: first 8 bytes of BLAKE2b of the
    path (as given, so the same string always gets the same id).
    """
    name = PurePath(str(path)).name
    match = _CS_UID_PREFIX.match(name)
    if match and int(match.group(1)) < 2**64:
        return int(match.group(1))
    digest = hashlib.blake2b(str(path).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def to_fractions(x, y, shape: tuple[int, int], *, flip_y: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """RELION pixel coordinates -> CryoSPARC ``(center_x_frac, center_y_frac)`` (float64).

    ``shape`` is ``(rows, cols)`` of the micrograph the coordinates refer to.
    """
    rows, cols = shape
    xf = np.asarray(x, dtype=np.float64) / cols
    yf = np.asarray(y, dtype=np.float64) / rows
    return xf, (1.0 - yf if flip_y else yf)


def from_fractions(x_frac, y_frac, shape, *, flip_y: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CryoSPARC fractions -> RELION pixel coordinates; ``shape`` is ``(rows, cols)`` (may be per row)."""
    shape = np.asarray(shape, dtype=np.float64)
    rows, cols = (shape[..., 0], shape[..., 1])
    xf = np.asarray(x_frac, dtype=np.float64)
    yf = np.asarray(y_frac, dtype=np.float64)
    return xf * cols, ((1.0 - yf) if flip_y else yf) * rows


def _check_shape(key: str, shape) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise JobError(f"micrograph shape must be (rows, cols), got {shape!r}", key) from None
    if rows <= 0 or cols <= 0 or rows >= 2**32 or cols >= 2**32:
        raise JobError(f"invalid micrograph shape (rows, cols) = ({rows}, {cols})", key)
    return rows, cols


def _column(df: pd.DataFrame, name: str, key: str, default=None) -> np.ndarray:
    if name not in df.columns:
        if default is None:
            raise JobError(f"picks have no '{name}' column", key)
        return np.full(len(df), default, dtype=np.float64)
    try:
        values = np.asarray(df[name], dtype=np.float64)
    except (TypeError, ValueError):
        raise JobError(f"picks column '{name}' is not numeric", key) from None
    if not np.all(np.isfinite(values)):
        raise JobError(f"picks column '{name}' has NaN or infinite values", key)
    return values


def build_particles_dataset(
    picks: Mapping[str, pd.DataFrame],
    shapes: Mapping[str, tuple[int, int]],
    pixel_sizes: Mapping[str, float],
    *,
    flip_y: bool = False,
    exp_group_ids: Mapping[str, int] | None = None,
    exact: bool = False,
):
    """Build the CryoSPARC particle ``Dataset`` (fields :data:`PARTICLE_FIELDS`) from picks.

    Micrographs with no picks contribute no rows.  Raises :class:`JobError` if a micrograph with
    picks has no shape or pixel size, or a pick lies outside its micrograph (which usually means
    the coordinates are not in pixels of the original micrograph).
    """
    from cryosparc.dataset import Dataset

    fields = list(PARTICLE_FIELDS)
    if exact:
        fields = [(f[0], "<f8") if f[0] in _FRAC_FIELDS else f for f in fields]

    blocks = []
    for key, df in picks.items():
        key = str(key)
        if df is None or len(df) == 0:
            continue
        if key not in shapes:
            raise JobError("no micrograph shape given", key)
        if key not in pixel_sizes:
            raise JobError("no pixel size given", key)
        rows, cols = _check_shape(key, shapes[key])
        psize = float(pixel_sizes[key])
        if not math.isfinite(psize) or psize <= 0:
            raise JobError(f"invalid pixel size {pixel_sizes[key]!r}", key)

        x = _column(df, "x", key)
        y = _column(df, "y", key)
        score = _column(df, "score", key, default=1.0)
        power = _column(df, "power", key) if "power" in df.columns else score
        angle = _column(df, "angle_rad", key, default=0.0)
        bad = (x < 0) | (x > cols) | (y < 0) | (y > rows)
        if bad.any():
            i = int(np.argmax(bad))
            raise JobError(
                f"{int(bad.sum())} pick(s) outside the {cols} x {rows} (cols x rows) micrograph, "
                f"e.g. x={x[i]:g}, y={y[i]:g}; coordinates must be in pixels of the original micrograph",
                key,
            )
        if ((score < 0) | (score > 1)).any():
            raise JobError("pick scores must lie in [0, 1]", key)
        xf, yf = to_fractions(x, y, (rows, cols), flip_y=flip_y)
        n = len(x)
        blocks.append(
            {
                "location/micrograph_uid": np.full(n, micrograph_uid(key), dtype=np.uint64),
                "location/exp_group_id": np.full(n, int((exp_group_ids or {}).get(key, 0)), dtype=np.uint32),
                "location/micrograph_path": np.full(n, key, dtype=object),
                "location/micrograph_shape": np.tile(np.array([rows, cols], dtype=np.uint32), (n, 1)),
                "location/center_x_frac": xf,
                "location/center_y_frac": yf,
                "location/micrograph_psize_A": np.full(n, psize),
                "pick_stats/ncc_score": score,
                "pick_stats/power": power,
                "pick_stats/template_idx": np.zeros(n, dtype=np.uint32),
                "pick_stats/angle_rad": angle,
            }
        )

    total = sum(len(b["location/center_x_frac"]) for b in blocks)
    dataset = Dataset.allocate(total, fields)  # random unique uids, as CryoSPARC makes them
    for name, *_ in fields:
        if not blocks:
            break
        values = np.concatenate([b[name] for b in blocks])
        dataset[name] = values
    return dataset


def write_particles_cs(
    path: str | Path,
    picks: Mapping[str, pd.DataFrame],
    shapes: Mapping[str, tuple[int, int]],
    pixel_sizes: Mapping[str, float],
    *,
    flip_y: bool = False,
    exp_group_ids: Mapping[str, int] | None = None,
    exact: bool = False,
) -> int:
    """Write picks as a CryoSPARC particle ``.cs`` file; return the number of particles written.

    ``picks``: micrograph path (as CryoSPARC should see it) -> DataFrame with ``x``, ``y`` (pixels
    of the original micrograph, RELION convention), ``score`` (0..1; optional, default 1) and
    optional ``power`` / ``angle_rad``.  ``shapes``: path -> ``(rows, cols)`` of the original
    micrograph.  ``pixel_sizes``: path -> A/px.  See the module docstring for the conventions.
    The file is written atomically in numpy ``.npy`` layout (``Dataset.save`` default), which both
    CryoSPARC and ``numpy.load`` read.
    """
    dataset = build_particles_dataset(
        picks, shapes, pixel_sizes, flip_y=flip_y, exp_group_ids=exp_group_ids, exact=exact
    )
    with atomic_path(path) as tmp:
        dataset.save(tmp)
    return len(dataset)


def read_particles_cs(path: str | Path, *, flip_y: bool = False) -> dict[str, pd.DataFrame]:
    """Read a particle ``.cs`` (ours or CryoSPARC's) back into the project convention.

    Returns micrograph path -> DataFrame with float64 ``x``, ``y``, ``score`` (``pick_stats/ncc_score``,
    or 1.0 if the file has no pick stats), in file order.  Micrographs without particles cannot be
    represented in a ``.cs`` and are absent.  ``flip_y`` must match the value used for writing.
    """
    from cryosparc.dataset import Dataset

    path = Path(path)
    if not path.is_file():
        raise JobError("file not found", path)
    try:
        dataset = Dataset.load(path)
    except Exception as err:  # numpy/cryosparc raise a variety of errors on bad files
        raise JobError(f"not a readable CryoSPARC dataset ({err})", path) from None
    needed = ["location/micrograph_path", "location/micrograph_shape", *_FRAC_FIELDS]
    missing = [f for f in needed if f not in dataset]
    if missing:
        raise JobError(f"missing field(s) {', '.join(missing)}; not a particle-location file", path)
    if len(dataset) == 0:
        return {}

    x, y = from_fractions(
        dataset["location/center_x_frac"],
        dataset["location/center_y_frac"],
        np.asarray(dataset["location/micrograph_shape"]),
        flip_y=flip_y,
    )
    if "pick_stats/ncc_score" in dataset:
        score = np.asarray(dataset["pick_stats/ncc_score"], dtype=np.float64)
    else:
        score = np.ones(len(dataset))
    table = pd.DataFrame(
        {
            "micrograph": [str(p) for p in dataset["location/micrograph_path"]],
            "x": x,
            "y": y,
            "score": score,
        }
    )
    return {
        str(name): group[["x", "y", "score"]].reset_index(drop=True)
        for name, group in table.groupby("micrograph", sort=False)
    }
