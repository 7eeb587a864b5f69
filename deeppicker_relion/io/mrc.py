"""Reading and writing micrographs as MRC files (every mode mrcfile reads).

Images are numpy arrays indexed ``[row, column]`` = ``[y, x]``, as mrcfile returns them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from ..errors import MicrographError
from .atomic import atomic_path


@dataclass
class Micrograph:
    """One micrograph: float32 pixels ``[row, column]`` and the pixel size in Angstrom (or None)."""

    data: np.ndarray
    pixel_size: float | None
    path: str

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) = (height, width) in pixels."""
        return self.data.shape  # type: ignore[return-value]


def _open(path: Path):
    """Open strictly; fall back to permissive mode for files with header quirks other tools accept."""
    try:
        return mrcfile.open(path, mode="r", permissive=False)
    except ValueError as strict_err:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mrc = mrcfile.open(path, mode="r", permissive=True)
        if mrc.data is None:
            mrc.close()
            reason = str(caught[-1].message) if caught else str(strict_err)
            raise MicrographError(f"not a readable MRC file ({strict_err}; {reason})", path) from None
        return mrc


def read_micrograph(path: str | Path) -> Micrograph:
    """Read a single micrograph as float32.

    Accepts 2D images and single-frame stacks (1, ny, nx). Raises :class:`MicrographError` with one
    line naming the file for a missing, truncated or non-MRC file, a movie (several frames),
    NaN/Inf pixels, or a constant image. The pixel size comes from the header's voxel size
    (None when the header holds 0).
    """
    path = Path(path)
    if not path.is_file():
        raise MicrographError("micrograph file not found", path)
    try:
        mrc = _open(path)
    except MicrographError:
        raise
    except (OSError, EOFError) as err:
        raise MicrographError(f"cannot read MRC file ({err})", path) from None
    with mrc:
        data = mrc.data
        if data.ndim == 3:
            if data.shape[0] != 1:
                raise MicrographError(
                    f"is a stack of {data.shape[0]} frames (a movie?); a single motion-corrected "
                    "micrograph is expected",
                    path,
                )
            data = data[0]
        if data.ndim != 2:
            raise MicrographError(f"has {data.ndim} dimensions; a 2D micrograph is expected", path)
        if np.iscomplexobj(data):
            raise MicrographError("holds complex (Fourier-space) data; a real image is expected", path)
        image = np.asarray(data, dtype=np.float32).copy()
        pixel_size = float(mrc.voxel_size.x)
    if not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise MicrographError(f"has {bad} NaN or Inf pixels", path)
    if image.size == 0 or float(image.max()) == float(image.min()):
        raise MicrographError("is a constant image (no contrast)", path)
    return Micrograph(image, pixel_size if pixel_size > 0 else None, str(path))


def write_mrc(path: str | Path, image: np.ndarray, pixel_size: float | None = None) -> None:
    """Write a 2D image atomically as MRC (mode chosen by mrcfile from the dtype)."""
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(image))
            if pixel_size:
                mrc.voxel_size = pixel_size


def read_shape(path: str | Path) -> tuple[int, int]:
    """(rows, columns) of a micrograph, from the header only."""
    path = Path(path)
    try:
        with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
            return int(mrc.header.ny), int(mrc.header.nx)
    except (OSError, ValueError) as err:
        raise MicrographError(f"cannot read MRC header ({err})", path) from None
