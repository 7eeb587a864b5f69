"""Reading and writing micrographs as MRC files (every mode mrcfile reads).

Images are numpy arrays indexed ``[row, column]`` = ``[y, x]``, as mrcfile returns them.
"""

from __future__ import annotations

import re
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


_MODE_BYTES = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2}
_NOT_MRC = "not a readable MRC file: no MAP identifier in the header (not an MRC file?)"


def _check_header(path: Path) -> None:
    """Reject a file that cannot be an MRC before mrcfile reads it: mrcfile's permissive mode trusts
    the header, and a text file's "extended header size" can make it allocate gigabytes."""
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if len(head) < 1024:
        raise MicrographError("not a readable MRC file: shorter than an MRC header (1024 bytes)", path)
    size = path.stat().st_size
    nsymbt = [int(np.frombuffer(head[92:96], dtype=f"{order}i4")[0]) for order in "<>"]
    if head[208:212] == b"MAP ":
        if not any(0 <= n <= size - 1024 for n in nsymbt):
            raise MicrographError("not a readable MRC file: corrupt header (extended header larger than the file)",
                                  path)
        return
    for order in "<>":  # very old files have no MAP identifier: accept them if the sizes add up
        nx, ny, nz, mode = (int(v) for v in np.frombuffer(head[:16], dtype=f"{order}i4"))
        nsymbt = int(np.frombuffer(head[92:96], dtype=f"{order}i4")[0])
        item = _MODE_BYTES.get(mode)
        dims_ok = all(0 < v < 1_000_000 for v in (nx, ny, nz)) and 0 <= nsymbt < 100_000_000
        if item and dims_ok and 1024 + nsymbt + nx * ny * nz * item <= size:
            return
    raise MicrographError(_NOT_MRC, path)


def _open(path: Path):
    """Open strictly, memory-mapped (the pixels are copied once, into the float32 array, straight
    from the page cache); fall back to permissive mode for files with header quirks other tools
    accept."""
    try:
        return mrcfile.mmap(path, mode="r", permissive=False)
    except ValueError as strict_err:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                mrc = mrcfile.open(path, mode="r", permissive=True)
            except ValueError as err:  # e.g. shorter than the 1024-byte header
                raise MicrographError(_describe(str(strict_err), str(err)), path) from None
        if mrc.data is None:
            mrc.close()
            reason = str(caught[-1].message) if caught else str(strict_err)
            raise MicrographError(_describe(str(strict_err), reason), path) from None
        return mrc


def _describe(strict: str, permissive: str) -> str:
    """One short reason from mrcfile's strict and permissive complaints."""
    sizes = re.search(r"Expected (\d+) bytes in data block but limit is (\d+)", strict + " " + permissive)
    if sizes:
        return (f"not a readable MRC file: truncated (the header promises {sizes.group(1)} data bytes, "
                f"the file holds {sizes.group(2)})")
    if "enough bytes for MRC header" in strict:
        return "not a readable MRC file: shorter than an MRC header (1024 bytes)"
    if "Map ID string not found" in strict:
        return "not a readable MRC file: no MAP identifier in the header (not an MRC file?)"
    reasons = strict if permissive in ("", strict) else f"{strict}; {permissive}"
    return f"not a readable MRC file ({reasons})"


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
        _check_header(path)
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
        image = np.array(data, dtype=np.float32)  # one copy, whatever the mode
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
    return read_header(path)[0]


def read_header(path: str | Path) -> tuple[tuple[int, int], float | None]:
    """((rows, columns), pixel size in Angstrom or None when the header holds 0), from the header
    only (fast: no pixel data is read). Raises :class:`MicrographError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MicrographError("micrograph file not found", path)
    try:
        _check_header(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                header = mrc.header
                if header is None or bytes(header.map) != b"MAP ":
                    raise MicrographError(_NOT_MRC, path)
                pixel = float(mrc.voxel_size.x)
                return (int(header.ny), int(header.nx)), (pixel if pixel > 0 else None)
    except (OSError, ValueError, EOFError) as err:
        raise MicrographError(f"cannot read MRC header ({err})", path) from None
