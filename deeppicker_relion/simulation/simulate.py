"""Fast simulation of cryo-EM micrographs with exact particle centres (numpy / scipy only).

Conventions (as everywhere in this package):

- Images are arrays indexed ``[row, column]`` = ``[y, x]``; shapes are ``(rows, columns)``.
- Particle centres are in pixels of the micrograph, ``x`` = column, ``y`` = row, 0-based, origin at
  the centre of the first pixel, as RELION's ``rlnCoordinateX`` / ``rlnCoordinateY``.
- 3D maps are arrays indexed ``[z, y, x]`` (as mrcfile returns them). The CENTRE of a map is voxel
  ``N // 2`` on each axis. A particle "at (x, y)" is the projection of that voxel landing at (x, y),
  to sub-pixel accuracy (projections are shifted by Fourier phase ramps, not by interpolation).
- Pixel sizes in Angstrom per pixel (``_A``), defocus in micrometres (``_um``) in the simulator's
  arguments and in Angstrom in STAR files (RELION), B-factors in A^2, angles in degrees.
- Contrast sign: particles are DARK on a lighter background, as in raw micrographs.
- Noise level: the stochastic noise (white + CTF-shaped + low-frequency "fog", see :func:`_noise`)
  has variance 1 in the default float32 output: image values are in noise-std units, around 0.
- SNR = variance of the noise-free particle signal over the pixels inside the particles' discs
  (radius = half the molecule's diameter), divided by the variance of that stochastic noise.

Method: each map is Fourier-cropped to about the micrograph pixel size once, oversampled 2x and its
3D Fourier transform used as cubic-spline coefficients (:class:`Projector`, cached by content). A projection
at rotation R is the central slice of that transform (Fourier slice theorem) sampled directly on the
particle box's frequency grid at the micrograph pixel size (which also rescales the map), shifted
to its sub-pixel position by a phase ramp and inverse-FFT'd. Projections are added to the
micrograph, which is then filtered by the CTF as a whole (so delocalisation is not cut at a box).
Cost: ~1-2 ms per particle plus a few 2D FFTs of the micrograph (0.2-0.3 s for 512 x 512 with 20
particles, 0.4-0.6 s for 1024 x 1024 with 50, on one CPU core).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal, Sequence, Union

import mrcfile
import numpy as np
import pandas as pd
import scipy.fft as sfft
import starfile
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..io.atomic import atomic_path

__all__ = [
    "Projector",
    "SimulatedMicrograph",
    "available_maps",
    "ctf_2d",
    "electron_wavelength_A",
    "estimate_diameter_A",
    "load_map",
    "simulate_dataset",
    "simulate_micrograph",
    "simulate_micrograph_parts",
    "synthetic_molecule",
]

MAP_SUFFIX = ".mrc.gz"
OutputKind = Literal["float32", "random_affine", "uint16", "int8"]
SeedLike = Union[int, np.random.Generator, np.random.SeedSequence, None]
Range = Union[float, tuple[float, float]]
_DENSITY_THRESHOLD = 0.05  # fraction of the map maximum that counts as "inside" (diameter, level)
_PROTEIN_LEVEL = 0.11  # mean density inside the shipped maps (gemmi units); synthetic maps match it


# --------------------------------------------------------------------------------------------------
# Maps: package data, loading, synthetic molecules
# --------------------------------------------------------------------------------------------------


def _maps_dir():
    return resources.files("deeppicker_relion").joinpath("data", "maps")


def available_maps() -> list[str]:
    """Names of the density maps shipped with the package (file names without ``.mrc.gz``), sorted."""
    names = [p.name[: -len(MAP_SUFFIX)] for p in _maps_dir().iterdir() if p.name.endswith(MAP_SUFFIX)]
    return sorted(names)


def _read_mrc_volume(path: Path) -> tuple[np.ndarray, float]:
    with mrcfile.open(path, mode="r", permissive=True) as mrc:
        if mrc.data is None or mrc.data.ndim != 3:
            raise ValueError(f"{path}: not a 3D MRC map")
        volume = np.asarray(mrc.data, dtype=np.float32).copy()
        pixel = float(mrc.voxel_size.x)
    if pixel <= 0:
        raise ValueError(f"{path}: the header holds no pixel size")
    return volume, pixel


def load_map(name_or_path: str | Path) -> tuple[np.ndarray, float]:
    """Load a 3D density map: ``(volume float32 [z, y, x], pixel_size_A)``.

    ``name_or_path`` is an existing MRC file (``.mrc`` or ``.mrc.gz``), or the name of a shipped map
    (see :func:`available_maps`; a unique prefix such as ``"proteasome"`` is enough). The map's centre
    is voxel ``N // 2``. Raises ``ValueError`` for an unknown name or a file without a pixel size.
    """
    path = Path(name_or_path)
    if path.is_file():
        return _read_mrc_volume(path)
    name = str(name_or_path)
    for suffix in (MAP_SUFFIX, ".mrc"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    names = available_maps()
    matches = [n for n in names if n == name] or [n for n in names if n.startswith(name)]
    if len(matches) != 1:
        raise ValueError(f"unknown map {name_or_path!r}: not a file, and not one of {names}")
    with resources.as_file(_maps_dir().joinpath(matches[0] + MAP_SUFFIX)) as file:
        return _read_mrc_volume(Path(file))


def estimate_diameter_A(volume: np.ndarray, pixel_size_A: float, threshold: float = _DENSITY_THRESHOLD) -> float:
    """Particle diameter in Angstrom: twice the largest distance from the map centre (voxel ``N // 2``)
    of a voxel denser than ``threshold`` x the map maximum. For the shipped maps this matches the
    molecule's largest extent to within a few percent."""
    volume = np.asarray(volume)
    centre = np.array([n // 2 for n in volume.shape], dtype=float)
    inside = np.argwhere(volume > threshold * float(volume.max()))
    if len(inside) == 0:
        raise ValueError("the map holds no density above the threshold")
    return float(2.0 * np.sqrt(((inside - centre) ** 2).sum(axis=1)).max() * pixel_size_A + pixel_size_A)


_SYMMETRIES = ("C1", "C1", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "D2", "D3", "D4", "D5", "D7")


def _symmetry_matrices(symmetry: str) -> np.ndarray:
    """Rotation matrices (k, 3, 3) of point group ``Cn`` or ``Dn`` (n-fold axis along z)."""
    kind, order = symmetry[0].upper(), int(symmetry[1:])
    if kind not in "CD" or order < 1:
        raise ValueError(f"unsupported symmetry {symmetry!r}; use Cn or Dn")
    mats = Rotation.from_euler("z", np.arange(order)[:, None] * 360.0 / order, degrees=True).as_matrix()
    if kind == "D":
        mats = np.concatenate([mats, mats @ Rotation.from_euler("x", 180, degrees=True).as_matrix()])
    return mats


def _domain_centres(
    rng: np.random.Generator, n_copies: int, dihedral: bool, n_domains: int | None, domain_volume: float
) -> np.ndarray:
    """Centres (n, 3) of one asymmetric unit's domains, (x, y, z) in units of the molecule radius:
    uniform inside a random envelope (axisymmetric about z when symmetric, hollow like a ring or
    barrel 30 % of the time), within the unit's wedge of angle 2 pi / n_copies (and z >= 0 for Dn).
    Without ``n_domains``, domains (of mean volume ``domain_volume``) adding up to 45-90 % of it."""
    if n_copies == 1:
        envelope = np.sort(rng.uniform(0.45, 1.0, 3))[::-1]
        envelope[0] = 1.0
        envelope = rng.permutation(envelope)
    else:
        height = rng.uniform(0.35, 1.6)
        envelope = np.array([1.0, 1.0, height]) / max(1.0, height)
    hollow = rng.uniform(0.3, 0.6) if rng.uniform() < 0.3 else 0.0
    if n_domains is None:
        capacity = 4.19 * 0.8**3 * float(np.prod(envelope)) * (1 - hollow**2)
        n_copies_all = n_copies * (2 if dihedral else 1)
        n_domains = max(1, int(round(rng.uniform(0.45, 0.9) * capacity / domain_volume / n_copies_all)))
    wedge = 2 * np.pi / n_copies
    centres: list[np.ndarray] = []
    while len(centres) < n_domains:
        p = rng.uniform(-1, 1, size=(256, 3)) * envelope * 0.8
        ok = ((p / envelope) ** 2).sum(axis=1) <= 0.64
        radial = np.hypot(p[:, 0], p[:, 1]) if n_copies > 1 else np.linalg.norm(p, axis=1)
        ok &= radial >= hollow * 0.8
        ok &= np.mod(np.arctan2(p[:, 1], p[:, 0]), 2 * np.pi) < wedge
        if dihedral:
            ok &= p[:, 2] >= 0
        centres.extend(p[ok][: n_domains - len(centres)])
    return np.array(centres)


def _ellipsoid_union(box: int, centres: np.ndarray, shapes: np.ndarray, edge_px: float) -> np.ndarray:
    """Soft union (max) of ellipsoids on a [z, y, x] grid centred on voxel ``box // 2``. ``centres``
    (n, 3) as (x, y, z) voxels from the centre; ``shapes`` (n, 3, 3) map unit-sphere coordinates to
    voxels (columns = semi-axes). ``edge_px``: width of the soft edge."""
    grid = np.arange(box, dtype=np.float32) - box // 2
    volume = np.zeros((box, box, box), np.float32)
    for c, m in zip(centres, shapes):
        reach = np.linalg.norm(m, axis=0).max() + 2 * edge_px
        lo = np.clip(np.floor(c - reach).astype(int) + box // 2, 0, box)
        hi = np.clip(np.ceil(c + reach).astype(int) + box // 2 + 1, 0, box)
        if np.any(hi <= lo):
            continue
        z, y, x = np.meshgrid(grid[lo[2] : hi[2]], grid[lo[1] : hi[1]], grid[lo[0] : hi[0]], indexing="ij")
        d = np.stack([x - c[0], y - c[1], z - c[2]], axis=-1) @ np.linalg.inv(m).T.astype(np.float32)
        r = np.sqrt((d**2).sum(axis=-1))
        scale = float(np.linalg.svd(m, compute_uv=False).min())
        soft = 0.5 * (1 - np.tanh((r - 1) * scale / edge_px))
        sub = volume[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
        np.maximum(sub, soft, out=sub)
    return volume


def synthetic_molecule(
    diameter_A: float = 150.0,
    pixel_size_A: float = 4.0,
    seed: SeedLike = None,
    *,
    symmetry: str | None = None,
    n_domains: int | None = None,
) -> np.ndarray:
    """A random protein-like density map (float32 [z, y, x], cubic, centred on voxel ``N // 2``).

    The molecule is a union of ellipsoidal domains (semi-axes 13-28 % of its radius) scattered in
    a random envelope (elongated, flat, or a hollow ring/barrel), repeated by a point group
    (``"C1"``, ``"Cn"``, ``"Dn"`` with the n-fold axis along z; random when ``symmetry`` is None),
    with ~5 A internal texture; its centre of mass is the map centre. ``diameter_A``: its largest
    extent in Angstrom (within ~10 %, as :func:`estimate_diameter_A` measures it). The box is
    ~1.25 x the diameter; the density level inside matches the shipped maps'. ``n_domains``:
    domains per asymmetric unit (default: volumes adding up to 45-90 % of the envelope).
    """
    rng = _rng(seed)
    mats = _symmetry_matrices(symmetry or str(rng.choice(_SYMMETRIES)))
    dihedral = len(mats) > 1 and np.allclose(mats[len(mats) // 2] @ [0, 0, 1], [0, 0, -1])
    n_copies = len(mats) // (2 if dihedral else 1)
    axes_range = (0.13, 0.28)
    centres = _domain_centres(rng, n_copies, dihedral, n_domains, 4.19 * np.mean(axes_range) ** 3)
    n_dom = len(centres)
    shapes = Rotation.random(n_dom, rng).as_matrix() * rng.uniform(*axes_range, size=(n_dom, 1, 3))
    centres = np.concatenate([centres @ m.T for m in mats])
    shapes = np.concatenate([m @ shapes for m in mats])
    reach = np.linalg.norm(centres, axis=1) + np.linalg.norm(shapes, axis=1).max(axis=1)
    centres, shapes = centres / reach.max(), shapes / reach.max()  # largest extent = the diameter
    radius_px = 0.5 * diameter_A / pixel_size_A
    box = 2 * math.ceil(0.625 * diameter_A / pixel_size_A) + 4
    volume = _ellipsoid_union(box, centres * radius_px, shapes * radius_px, edge_px=max(0.5, 1.5 / pixel_size_A))
    texture = ndimage.gaussian_filter(rng.standard_normal(volume.shape).astype(np.float32), 2.5 / pixel_size_A)
    volume *= np.clip(1 + 0.35 * texture / max(float(texture.std()), 1e-12), 0, None)
    volume = ndimage.gaussian_filter(volume, sigma=max(0.5, 1.5 / pixel_size_A), mode="constant")
    com = np.array(ndimage.center_of_mass(volume)) - box // 2
    volume = ndimage.shift(volume, -com, order=3, mode="constant")
    volume = np.clip(volume, 0, None)
    volume *= _PROTEIN_LEVEL / volume[volume > _DENSITY_THRESHOLD * volume.max()].mean()
    return volume.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Projections
# --------------------------------------------------------------------------------------------------


def _fourier_resize(volume: np.ndarray, new_size: int) -> np.ndarray:
    """Fourier-crop (or pad) a cubic volume to ``new_size``, keeping the centre voxel ``N // 2`` at
    ``new_size // 2`` and the density level (values, not sums)."""
    n = volume.shape[0]
    if new_size == n:
        return volume.astype(np.float64)
    spec = np.fft.fftshift(sfft.fftn(np.fft.ifftshift(volume)))
    out = np.zeros((new_size,) * 3, dtype=complex)
    m = min(n, new_size)
    src = slice(n // 2 - m // 2, n // 2 - m // 2 + m)
    dst = slice(new_size // 2 - m // 2, new_size // 2 - m // 2 + m)
    out[dst, dst, dst] = spec[src, src, src]
    resized = np.fft.fftshift(sfft.ifftn(np.fft.ifftshift(out))).real
    return resized * (new_size / n) ** 3


def _soft_sphere(size: int, radius: float, width: float = 2.0) -> np.ndarray:
    """Mask: 1 inside ``radius`` (voxels, around voxel ``size // 2``), cosine edge of ``width``."""
    grid = np.arange(size) - size // 2
    r = np.sqrt(grid[:, None, None] ** 2 + grid[None, :, None] ** 2 + grid[None, None, :] ** 2)
    return 0.5 * (1 + np.cos(np.pi * np.clip((r - radius + width) / width, 0, 1)))


def _spline_correction(size: int, padded: int) -> np.ndarray:
    """1D real-space factor (around voxel ``size // 2``) to divide the map by before its 2x padded
    FFT, so that evaluating that FFT AS cubic B-spline coefficients interpolates it correctly: the
    B-spline prefilter in wrap mode is a division by ``2/3 + cos(2 pi t)/3`` in real space, and the
    interpolation attenuates by ``sinc(t)^4 / (2/3 + cos(2 pi t)/3)``, ``t = x / padded``; together
    ``sinc(t)^4`` (no explicit spline filtering needed)."""
    t = (np.arange(size) - size // 2) / padded
    return np.sinc(t) ** 4


class Projector:
    """Fast projections of one 3D map at one micrograph pixel size.

    ``Projector(volume, pixel_size_A, target_pixel_size_A)`` prepares the map once (Fourier crop to
    about the target pixel size, soft spherical mask of the box's inscribed sphere, 2x oversampled
    3D FFT used as cubic-spline coefficients). :meth:`project` then costs ~1 ms per projection.
    Attributes: ``box`` (even side of the projection box, micrograph pixels), ``diameter_px``
    (molecule diameter in micrograph pixels), ``target_pixel_size_A``. Values of a projection are
    line integrals of the map's density in (density x Angstrom), independent of the pixel size.
    """

    def __init__(self, volume: np.ndarray, pixel_size_A: float, target_pixel_size_A: float, oversampling: int = 2):
        volume = np.asarray(volume, dtype=np.float64)
        if volume.ndim != 3 or len(set(volume.shape)) != 1:
            raise ValueError(f"a cubic 3D map is expected, got shape {volume.shape}")
        n = volume.shape[0]
        self.target_pixel_size_A = float(target_pixel_size_A)
        self.diameter_px = estimate_diameter_A(volume, pixel_size_A) / self.target_pixel_size_A
        size = min(n, math.ceil(n * pixel_size_A / self.target_pixel_size_A - 1e-6))
        vol = _fourier_resize(volume, size) * _soft_sphere(size, size / 2 - 0.5)
        self._pixel_A = pixel_size_A * n / size
        padded = oversampling * size
        corr = _spline_correction(size, padded)
        vol /= corr[:, None, None] * corr[None, :, None] * corr[None, None, :]
        grid = np.zeros((padded,) * 3, np.float32)
        lo = padded // 2 - size // 2
        grid[lo : lo + size, lo : lo + size, lo : lo + size] = vol
        self._coeffs = sfft.fftn(np.fft.ifftshift(grid), workers=-1).astype(np.complex64)
        self._coeffs.flags.writeable = False
        self._padded = padded
        self.box = 2 * math.ceil(size * self._pixel_A / self.target_pixel_size_A / 2)
        ky = sfft.fftfreq(self.box)[:, None]
        kx = sfft.rfftfreq(self.box)[None, :]
        self._kx, self._ky = np.broadcast_arrays(kx, ky)
        # Isotropic low-pass at the micrograph's Nyquist, or at the map's when that is lower (a map
        # coarser than the micrograph holds nothing beyond it; the FFT grid would wrap).
        limit = 0.5 * min(1.0, self.target_pixel_size_A / self._pixel_A)
        self._inside = (kx**2 + ky**2) < limit**2
        self._scale = self._pixel_A**3 / self.target_pixel_size_A**2

    def project(self, rotation: np.ndarray, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """Projection along z of the map rotated by ``rotation`` (3x3 matrix acting on (x, y, z)).

        Returns a float32 (box, box) image whose pixel ``[box//2 + dy, box//2 + dx]`` holds the
        projection of the map centre, with ``shift = (dx, dy)`` in pixels (sub-pixel allowed).
        """
        rotation = np.asarray(rotation, dtype=float)
        kx, ky = self._kx[self._inside], self._ky[self._inside]
        factor = self._padded * self._pixel_A / self.target_pixel_size_A
        q = factor * (np.outer(rotation[0], kx) + np.outer(rotation[1], ky))  # (x, y, z) x points
        values = ndimage.map_coordinates(
            self._coeffs, q[::-1], order=3, mode="grid-wrap", prefilter=False, output=np.complex64
        )
        dx, dy = self.box // 2 + shift[0], self.box // 2 + shift[1]
        slice_ = np.zeros(self._kx.shape, dtype=np.complex128)
        slice_[self._inside] = values * np.exp(-2j * np.pi * (kx * dx + ky * dy))
        return (sfft.irfft2(slice_, s=(self.box, self.box)) * self._scale).astype(np.float32)


_PROJECTOR_CACHE: OrderedDict[tuple, Projector] = OrderedDict()
_PROJECTOR_CACHE_SIZE = 8


def _get_projector(volume: np.ndarray, pixel_size_A: float, target_pixel_size_A: float) -> Projector:
    """A :class:`Projector`, cached by the map's CONTENT (hash of its bytes) and both pixel sizes."""
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    digest = hashlib.blake2b(volume.tobytes(), digest_size=16).hexdigest()
    key = (digest, volume.shape, round(float(pixel_size_A), 6), round(float(target_pixel_size_A), 6))
    if key in _PROJECTOR_CACHE:
        _PROJECTOR_CACHE.move_to_end(key)
        return _PROJECTOR_CACHE[key]
    projector = Projector(volume, pixel_size_A, target_pixel_size_A)
    _PROJECTOR_CACHE[key] = projector
    while len(_PROJECTOR_CACHE) > _PROJECTOR_CACHE_SIZE:
        _PROJECTOR_CACHE.popitem(last=False)
    return projector


# --------------------------------------------------------------------------------------------------
# CTF
# --------------------------------------------------------------------------------------------------


def electron_wavelength_A(voltage_kV: float) -> float:
    """Relativistic electron wavelength in Angstrom (0.0197 A at 300 kV)."""
    volts = voltage_kV * 1e3
    return 12.2643247 / math.sqrt(volts * (1 + 0.978466e-6 * volts))


def ctf_2d(
    shape: tuple[int, int],
    pixel_size_A: float,
    defocus_u_A: float,
    defocus_v_A: float,
    defocus_angle_deg: float = 0.0,
    *,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    b_factor_A2: float = 0.0,
) -> np.ndarray:
    """CTF on the ``rfft2`` grid of an image of ``shape`` (rows, cols): array (rows, cols // 2 + 1).

    RELION's convention: ``CTF = -(sqrt(1 - Q^2) sin(chi) + Q cos(chi)) * exp(-B s^2 / 4)`` with
    ``chi = pi lambda dz s^2 - pi/2 Cs lambda^3 s^4``, s in 1/A, defocus dz positive = underfocus (A),
    astigmatism ``dz(a) = (U + V)/2 + (U - V)/2 cos(2 (a - angle))``, a measured from the x (column)
    axis towards +y (row). CTF(0) = -Q < 0: a positive projected density then images DARK.
    """
    rows, cols = shape
    sy = sfft.fftfreq(rows, d=pixel_size_A)[:, None]
    sx = sfft.rfftfreq(cols, d=pixel_size_A)[None, :]
    s2 = sx**2 + sy**2
    angle = np.arctan2(sy, sx)
    dz = 0.5 * (defocus_u_A + defocus_v_A) + 0.5 * (defocus_u_A - defocus_v_A) * np.cos(
        2 * (angle - np.deg2rad(defocus_angle_deg))
    )
    lam = electron_wavelength_A(voltage_kV)
    chi = np.pi * lam * dz * s2 - 0.5 * np.pi * cs_mm * 1e7 * lam**3 * s2**2
    q = amplitude_contrast
    return -(math.sqrt(1 - q * q) * np.sin(chi) + q * np.cos(chi)) * np.exp(-0.25 * b_factor_A2 * s2)


# --------------------------------------------------------------------------------------------------
# Micrograph components
# --------------------------------------------------------------------------------------------------


def _rng(seed: SeedLike) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, cycles: float = 1.0) -> np.ndarray:
    """Smooth random field of unit std: a few Fourier modes (0.5 cycle steps, Gaussian weights of
    width ``cycles`` per image, not periodic) summed separably; gives gradients and broad patches."""
    rows, cols = shape
    k = np.arange(-2.0, 2.01, 0.5)
    weight = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * cycles**2))
    weight[len(k) // 2, len(k) // 2] = 0
    coeff = weight * (rng.normal(size=weight.shape) + 1j * rng.normal(size=weight.shape))
    ey = np.exp(2j * np.pi * np.outer(np.arange(rows) / rows, k))
    ex = np.exp(2j * np.pi * np.outer(np.arange(cols) / cols, k))
    field_ = (ey @ coeff @ ex.T).real
    return field_ / max(field_.std(), 1e-12)


def _contamination(shape, rng, diameter_px: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` irregular blobs (radius 0.6-4 particle diameters): (soft mask 0..1, thickness 0..1)."""
    rows, cols = shape
    mask, thick = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for _ in range(n):
        radius = diameter_px * float(np.exp(rng.uniform(np.log(0.6), np.log(4.0))))
        cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
        harm = rng.normal(scale=0.12, size=5) / np.arange(1, 6)
        phase = rng.uniform(0, 2 * np.pi, size=5)
        r0, r1 = max(0, int(cy - 1.8 * radius)), min(rows, int(cy + 1.8 * radius) + 1)
        c0, c1 = max(0, int(cx - 1.8 * radius)), min(cols, int(cx + 1.8 * radius) + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        yy = np.arange(r0, r1, dtype=np.float32)[:, None] - np.float32(cy)
        xx = np.arange(c0, c1, dtype=np.float32)[None, :] - np.float32(cx)
        theta = np.arctan2(yy, xx)
        edge = radius * (1 + sum(h * np.cos((m + 2) * theta + p) for m, (h, p) in enumerate(zip(harm, phase))))
        u = np.hypot(yy, xx) / edge
        soft = 0.5 * (1 - np.tanh((u - 1) * edge / 1.5))
        mask[r0:r1, c0:c1] = np.maximum(mask[r0:r1, c0:c1], soft)
        thick[r0:r1, c0:c1] = np.maximum(thick[r0:r1, c0:c1], soft * np.sqrt(np.clip(1 - u**2, 0, 1)))
    return mask, thick


def _carbon_mask(shape, rng) -> np.ndarray:
    """Soft mask (0..1) of carbon film outside a large circular hole whose edge crosses the image,
    covering 15-50 % of it."""
    rows, cols = shape
    diag = math.hypot(rows, cols)
    radius = diag * rng.uniform(1.0, 3.0)
    direction = rng.uniform(0, 2 * np.pi)
    cover = rng.uniform(0.15, 0.5)
    # Distance along `direction` from the image centre at which the edge crosses (approx. coverage).
    offset = (0.5 - cover) * (abs(math.cos(direction)) * cols + abs(math.sin(direction)) * rows)
    cy = rows / 2 - math.sin(direction) * (radius - offset)
    cx = cols / 2 - math.cos(direction) * (radius - offset)
    yy = np.arange(rows, dtype=np.float64)[:, None] - cy
    xx = np.arange(cols, dtype=np.float64)[None, :] - cx
    dist = (np.hypot(yy, xx) - radius).astype(np.float32)
    return 0.5 * (1 + np.tanh(dist / np.float32(2.0)))


def _free_distance(forbidden: np.ndarray, step: int = 4) -> tuple[np.ndarray, int]:
    """Distance (px, accurate to ~``step``) from each pixel to the forbidden region (mask >= 0.5),
    on a grid subsampled by ``step``: (distances, step)."""
    return ndimage.distance_transform_edt(forbidden[::step, ::step] < 0.5) * step, step


def _place_particles(
    rng: np.random.Generator,
    shape: tuple[int, int],
    diameters: np.ndarray,
    n: int,
    min_distance: float,
    boundary_px: float,
    free_distance: tuple[np.ndarray, int] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Random centres (x, y) and molecule indices for up to ``n`` particles.

    Centre-to-centre distance >= ``min_distance`` x mean of the two diameters; centres at least
    ``boundary_px`` from every edge; with ``free_distance`` (see :func:`_free_distance`), centres at
    least half their diameter away from forbidden regions. Returns fewer if the image is too full.
    """
    rows, cols = shape
    xy = np.zeros((n, 2))
    mols = np.zeros(n, dtype=int)
    if 2 * boundary_px > min(rows, cols) - 1:
        return xy[:0], mols[:0]  # no room
    placed, failures = 0, 0
    while placed < n and failures < 1000 + 10 * n:
        cand = rng.uniform([boundary_px, boundary_px], [cols - 1 - boundary_px, rows - 1 - boundary_px], (64, 2))
        cand_m = rng.integers(0, len(diameters), 64)
        for (x, y), m in zip(cand, cand_m):
            if placed >= n:
                break
            ok = free_distance is None or _free_at(free_distance, x, y) >= 0.5 * diameters[m]
            if ok and placed:
                d2 = ((xy[:placed] - (x, y)) ** 2).sum(axis=1)
                ok = not np.any(d2 < (min_distance * 0.5 * (diameters[mols[:placed]] + diameters[m])) ** 2)
            if ok:
                xy[placed], mols[placed] = (x, y), m
                placed += 1
            else:
                failures += 1
    return xy[:placed], mols[:placed]


def _free_at(free_distance: tuple[np.ndarray, int], x: float, y: float) -> float:
    dist, step = free_distance
    return float(dist[min(int(round(y / step)), dist.shape[0] - 1), min(int(round(x / step)), dist.shape[1] - 1)])


def _disc_mask(shape, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Union of discs (centres (n, 2) as x, y; radii in px)."""
    rows, cols = shape
    mask = np.zeros(shape, dtype=bool)
    for (x, y), r in zip(centres, radii):
        r0, r1 = max(0, int(y - r)), min(rows, int(y + r) + 2)
        c0, c1 = max(0, int(x - r)), min(cols, int(x + r) + 2)
        yy, xx = np.ogrid[r0:r1, c0:c1]
        mask[r0:r1, c0:c1] |= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
    return mask


def _paste(image: np.ndarray, patch: np.ndarray, row0: int, col0: int) -> None:
    """Add ``patch`` into ``image`` with its top-left pixel at (row0, col0), clipped at the edges."""
    rows, cols = image.shape
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + patch.shape[0], rows), min(col0 + patch.shape[1], cols)
    if r0 < r1 and c0 < c1:
        image[r0:r1, c0:c1] += patch[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0]


def _convert_output(image: np.ndarray, kind: OutputKind, rng: np.random.Generator) -> np.ndarray:
    """Emulate how real data arrive: plain float32, random offset/scale, or integer detector counts."""
    if kind == "float32":
        return image.astype(np.float32)
    if kind == "random_affine":
        scale = 10 ** rng.uniform(-2, 3)
        return (image * scale + rng.uniform(-1, 1) * scale * 10 ** rng.uniform(0, 3)).astype(np.float32)
    if kind == "uint16":
        std = 10 ** rng.uniform(1.2, 3.5)
        mean = std * rng.uniform(6, 15)
        return np.clip(np.rint(image * std + mean), 0, 65535).astype(np.uint16)
    if kind == "int8":
        return np.clip(np.rint(image * rng.uniform(8, 25) + rng.uniform(-10, 10)), -128, 127).astype(np.int8)
    raise ValueError(f"unknown output kind {kind!r}")


@dataclass
class SimulatedMicrograph:
    """A simulated micrograph and its parts (all float32 [row, column], in noise-std units).

    ``image = signal + noise + background`` before the ``output`` conversion, where ``signal`` is the
    particles (CTF-filtered, scaled to the requested SNR), ``noise`` the stochastic noise (variance
    1: white + CTF-shaped + low-frequency fog), ``background`` the ice gradient, contamination and
    carbon film.
    ``centres``: columns ``x``, ``y`` (pixels, column/row), ``molecule`` (name or index),
    ``diameter_px``. ``particle_mask``: pixels inside the particles' discs. ``ctf``: the CTF
    parameters used (``defocus_u_A``, ``defocus_v_A``, ``defocus_angle_deg``, ``b_factor_A2``,
    ``voltage_kV``, ``cs_mm``, ``amplitude_contrast``; empty without CTF). ``forbidden``: soft mask
    of contamination and carbon (None when there is none).
    """

    image: np.ndarray
    signal: np.ndarray
    noise: np.ndarray
    background: np.ndarray
    centres: pd.DataFrame
    particle_mask: np.ndarray
    ctf: dict = field(default_factory=dict)
    forbidden: np.ndarray | None = None


def _white_spectrum(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """rfft2 (half-plane) spectrum of unit-variance white noise, drawn directly in Fourier space."""
    half = (shape[0], shape[1] // 2 + 1)
    z = rng.standard_normal((2, *half), dtype=np.float32)
    return (z[0] + 1j * z[1]) * np.float32(math.sqrt(shape[0] * shape[1] / 2))


def _filtered_power(filter_: np.ndarray, cols: int) -> float:
    """Variance of unit white noise filtered by ``filter_`` (given on the rfft2 half-plane): the mean
    of |filter|^2 over the full frequency grid."""
    weight = np.full(filter_.shape[1], 2.0)
    weight[0] = 1.0
    if cols % 2 == 0:
        weight[-1] = 1.0
    return float((np.abs(filter_) ** 2 * weight).sum() / (filter_.shape[0] * cols))


def _noise(
    shape: tuple[int, int],
    rng: np.random.Generator,
    ctf: np.ndarray | None,
    mtf: np.ndarray,
    ice_fraction: float,
    fog_fraction: float = 0.0,
    fog_cutoff: float = 0.1,
    workers: int | None = None,
) -> np.ndarray:
    """Unit-variance noise, the sum of three independent parts (shares of the variance):

    - CTF-shaped (``ice_fraction``): ice and film structure imaged through the CTF (Thon rings);
    - "fog" (``fog_fraction``): low-frequency noise with power ``1 / (1 + (f / fog_cutoff)^2)``
      (f in cycles/px), as the smooth background of real power spectra (inelastic scattering,
      ice-thickness and charging fluctuations);
    - white (the rest): shot noise.

    All are filtered by ``mtf`` (rfft2 half-plane); one inverse FFT.
    """
    fog_fraction = min(fog_fraction, 1.0)
    ice_fraction = min(ice_fraction, 1.0 - fog_fraction) if ctf is not None else 0.0
    parts = [(mtf, 1.0 - ice_fraction - fog_fraction)]
    if ice_fraction > 0:
        parts.append((ctf * mtf, ice_fraction))
    if fog_fraction > 0:
        f2 = sfft.fftfreq(shape[0])[:, None] ** 2 + sfft.rfftfreq(shape[1])[None, :] ** 2
        parts.append((mtf / np.sqrt(1 + f2 / fog_cutoff**2).astype(np.float32), fog_fraction))
    spectrum = np.zeros(mtf.shape, np.complex64)
    for filter_, share in parts:
        if share > 0:
            spectrum += _white_spectrum(shape, rng) * (filter_ * math.sqrt(share / _filtered_power(filter_, shape[1])))
    noise = sfft.irfft2(spectrum, s=shape, workers=workers)
    return noise / noise.std()


def _mtf(shape, falloff: float) -> np.ndarray:
    """Detector-like amplitude roll-off on the rfft2 grid: ``1 / (1 + falloff * (f / 0.5)^2)``, f in
    cycles/px (so ``1 / (1 + falloff)`` at Nyquist)."""
    rows, cols = shape
    f2 = sfft.fftfreq(rows)[:, None] ** 2 + sfft.rfftfreq(cols)[None, :] ** 2
    return (1.0 / (1.0 + falloff * f2 / 0.25)).astype(np.float32)


def _resolve_volumes(volumes, pixel_size_A: float, names) -> tuple[list[Projector], list]:
    if volumes is None:
        names = names or available_maps()
        volumes = [load_map(n) for n in names]
    projectors = []
    for item in volumes:
        if isinstance(item, Projector):
            if abs(item.target_pixel_size_A - pixel_size_A) > 1e-6 * pixel_size_A:
                raise ValueError("a Projector made for another pixel size was given")
            projectors.append(item)
        else:
            volume, pixel = item
            projectors.append(_get_projector(volume, float(pixel), pixel_size_A))
    labels = list(names) if names is not None else list(range(len(projectors)))
    if len(labels) != len(projectors):
        raise ValueError("names must have one entry per volume")
    return projectors, labels


def simulate_micrograph_parts(
    shape: tuple[int, int] = (512, 512),
    pixel_size_A: float = 5.0,
    volumes: Sequence[tuple[np.ndarray, float] | Projector] | None = None,
    n_particles: int = 20,
    *,
    names: Sequence[str] | None = None,
    defocus_um: float | None = 2.0,
    astigmatism_um: float = 0.05,
    defocus_angle_deg: float | None = None,
    b_factor_A2: float = 250.0,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    snr: float | None = 0.1,
    ice_noise_fraction: float = 0.4,
    fog_fraction: float = 0.3,
    fog_cutoff: float = 0.1,
    mtf_falloff: float = 1.0,
    min_distance: float = 0.9,
    boundary_px: float | None = None,
    ice: float = 0.05,
    n_contaminants: int = 0,
    carbon_edge: bool = False,
    output: OutputKind = "float32",
    seed: SeedLike = None,
    fft_workers: int | None = None,
) -> SimulatedMicrograph:
    """Simulate one micrograph and return it with its parts; see :func:`simulate_micrograph`."""
    rng = _rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    projectors, labels = _resolve_volumes(volumes, pixel_size_A, names)
    diameters = np.array([p.diameter_px for p in projectors])
    boundary = 0.5 * float(diameters.max()) if boundary_px is None else float(boundary_px)

    background = (ice * _smooth_field(shape, rng)).astype(np.float32) if ice > 0 else np.zeros(shape, np.float32)
    contam = _contamination(shape, rng, float(diameters.max()), n_contaminants) if n_contaminants > 0 else None
    carbon = _carbon_mask(shape, rng) if carbon_edge else None
    masks = [m for m in (contam[0] if contam else None, carbon) if m is not None]
    forbidden = np.maximum.reduce(masks) if masks else None
    free = _free_distance(forbidden) if forbidden is not None else None
    centres, mols = _place_particles(rng, shape, diameters, n_particles, min_distance, boundary, free)
    projection = _render_particles(shape, projectors, centres, mols, rng)

    mtf = _mtf(shape, mtf_falloff)
    ctf_params: dict = {}
    ctf = None
    if defocus_um is not None:
        angle = float(rng.uniform(-90, 90)) if defocus_angle_deg is None else float(defocus_angle_deg)
        half_astig = 0.5e4 * astigmatism_um
        ctf_params = dict(
            defocus_u_A=defocus_um * 1e4 + half_astig, defocus_v_A=defocus_um * 1e4 - half_astig,
            defocus_angle_deg=angle, voltage_kV=voltage_kV, cs_mm=cs_mm,
            amplitude_contrast=amplitude_contrast, b_factor_A2=b_factor_A2,
        )  # fmt: skip
        ctf = ctf_2d(shape, pixel_size_A, **ctf_params).astype(np.float32)
    transfer = (ctf if ctf is not None else -np.ones_like(mtf)) * mtf  # no CTF: plain dark projections

    def through_ctf(img: np.ndarray) -> np.ndarray:
        return sfft.irfft2(sfft.rfft2(img, workers=fft_workers) * transfer, s=shape, workers=fft_workers)

    particle_mask = _disc_mask(shape, centres, 0.5 * diameters[mols])
    signal = through_ctf(projection) if len(centres) else np.zeros(shape, np.float32)
    if snr is None:
        noise = np.zeros(shape, np.float32)
        scale = 1.0 / max(float(signal[particle_mask].std()), 1e-30) if len(centres) else 1.0
    else:
        noise = _noise(shape, rng, ctf, mtf, ice_noise_fraction, fog_fraction, fog_cutoff, fft_workers)
        scale = math.sqrt(snr / max(float(signal[particle_mask].var()), 1e-30)) if len(centres) else 1.0
    signal *= np.float32(scale)
    if contam is not None or carbon is not None:
        background += _film_and_contamination(shape, rng, contam, carbon, through_ctf, ctf, mtf, snr, fft_workers)

    image = _convert_output(signal + noise + background, output, rng)
    table = pd.DataFrame(
        {
            "x": centres[:, 0].astype(float),
            "y": centres[:, 1].astype(float),
            "molecule": [labels[m] for m in mols],
            "diameter_px": diameters[mols].astype(float),
        }
    )
    f32 = np.float32
    return SimulatedMicrograph(
        image=image, signal=signal.astype(f32), noise=noise.astype(f32), background=background.astype(f32),
        centres=table, particle_mask=particle_mask, ctf=ctf_params,
        forbidden=None if forbidden is None else forbidden.astype(f32),
    )  # fmt: skip


def _render_particles(shape, projectors: list[Projector], centres: np.ndarray, mols: np.ndarray, rng) -> np.ndarray:
    """Sum of projections at uniformly random orientations (SO(3)), each centred exactly at its
    (x, y); float32 image in (density x A)."""
    image = np.zeros(shape, np.float32)
    if not len(centres):
        return image
    rotations = Rotation.random(len(centres), rng).as_matrix()
    for (x, y), m, rot in zip(centres, mols, rotations):
        proj = projectors[m]
        ix, iy = math.floor(x), math.floor(y)
        _paste(image, proj.project(rot, (x - ix, y - iy)), iy - proj.box // 2, ix - proj.box // 2)
    return image


def _film_and_contamination(shape, rng, contam, carbon, through_ctf, ctf, mtf, snr, workers) -> np.ndarray:
    """Background from contamination (dark: amplitude term, plus a phase term through the CTF that
    gives Fresnel fringes at its edge) and carbon film (darker step, fringe, extra CTF-shaped texture),
    in noise-std units."""
    amplitude = np.zeros(shape, np.float32)
    phase = np.zeros(shape, np.float32)
    if contam is not None:
        mask, thickness = contam
        depth = rng.uniform(1.5, 5.0)
        amplitude -= depth * (0.6 * mask + 0.4 * thickness)
        phase += rng.uniform(0.3, 1.0) * depth * mask
    if carbon is not None:
        amplitude -= rng.uniform(0.2, 1.5) * carbon
        phase += rng.uniform(0.5, 2.0) * carbon
        if snr is not None:
            texture = _noise(shape, rng, ctf, mtf, 1.0, 0.0, workers=workers)
            amplitude += rng.uniform(0.3, 1.0) * carbon * texture
    return amplitude + through_ctf(phase)


def simulate_micrograph(
    shape: tuple[int, int] = (512, 512),
    pixel_size_A: float = 5.0,
    volumes: Sequence[tuple[np.ndarray, float] | Projector] | None = None,
    n_particles: int = 20,
    **options,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Simulate one micrograph: ``(image [rows, cols], centres DataFrame)``.

    Arguments (units in brackets):

    - ``shape``: (rows, cols) [px]; any size, non-square and odd allowed.
    - ``pixel_size_A``: micrograph pixel size [A/px]; maps are rescaled to it.
    - ``volumes``: list of ``(volume [z, y, x], map pixel size [A])`` or :class:`Projector`; None =
      all shipped maps. ``names``: labels for the ``molecule`` column (default: index in ``volumes``).
    - ``n_particles``: how many to place (each picks a molecule at random); fewer are placed (no
      error) when the free area runs out.
    - ``defocus_um`` [um, 1.0-3.5 realistic; None = no CTF, particles are then plain negative
      projections], ``astigmatism_um`` [um, defocus U - V], ``defocus_angle_deg`` [deg, None =
      random], ``b_factor_A2`` [A^2, envelope exp(-B s^2/4)], ``voltage_kV`` (300), ``cs_mm`` (2.7),
      ``amplitude_contrast`` (0.1).
    - ``snr``: variance of the particle signal inside the particles' discs / noise variance
      (None = no noise, signal scaled to unit std in the discs). 0.02-0.1 for small particles and
      unbinned data; binned micrographs of large particles reach ~0.4 (EMPIAR-10028 ribosomes at
      5.36 A/px measure 0.36-0.45 by this definition).
    - Noise (variance 1): ``ice_noise_fraction`` of it is CTF-shaped (ice / film structure: Thon
      rings), ``fog_fraction`` is low-frequency "fog" with power 1 / (1 + (f / ``fog_cutoff``)^2)
      (f in cycles/px), the rest white. ``mtf_falloff``: amplitude roll-off 1/(1 + falloff) at
      Nyquist applied to signal and noise (detector MTF, binning filters).
    - ``min_distance``: minimum centre distance as a fraction of the (mean) diameter; < 1 lets
      particles touch or overlap. ``boundary_px``: minimum distance of centres from the edges
      [px] (default half the largest diameter, so particles lie inside the image).
    - ``ice``: std of the low-frequency background (ice-thickness gradient) [noise std units].
    - ``n_contaminants``: dark irregular blobs 0.6-4 diameters across (ice crystals, ethane);
      ``carbon_edge``: a carbon-film region (darker, textured, Fresnel fringe at its edge) over
      15-50 % of the image. Particles are not placed on either.
    - ``output``: ``"float32"`` (noise std 1 around 0), ``"random_affine"`` (float32, random offset
      and scale), ``"uint16"`` or ``"int8"`` (rounded, clipped detector-like integers).
    - ``seed``: int, SeedSequence or Generator: same seed, same micrograph.

    ``centres`` has columns ``x`` (column), ``y`` (row) [px, float, exact], ``molecule`` and
    ``diameter_px``. Particles are DARK. Use :func:`simulate_micrograph_parts` for the noise-free parts.
    """
    sim = simulate_micrograph_parts(shape, pixel_size_A, volumes, n_particles, **options)
    return sim.image, sim.centres


# --------------------------------------------------------------------------------------------------
# Datasets on disk
# --------------------------------------------------------------------------------------------------


def _draw(rng: np.random.Generator, value: Range, log: bool = False) -> float:
    """A fixed value, or uniform in (lo, hi) (log-uniform if ``log``)."""
    if isinstance(value, (tuple, list)):
        if log:
            return float(np.exp(rng.uniform(np.log(value[0]), np.log(value[1]))))
        return float(rng.uniform(value[0], value[1]))
    return float(value)


_DRAWN_OPTIONS = ("defocus_um", "astigmatism_um", "b_factor_A2", "snr", "ice_noise_fraction", "fog_fraction",
                  "fog_cutoff", "mtf_falloff", "min_distance", "ice")  # fmt: skip
_LOG_UNIFORM = ("snr", "fog_cutoff")


_WORKER_STATE: dict = {}


def _init_worker(projectors: list[Projector], labels: list[str]) -> None:
    """Give a worker process the dataset's projectors once (not with every job)."""
    _WORKER_STATE["projectors"], _WORKER_STATE["labels"] = projectors, labels


def _simulate_one(job: dict) -> dict:
    """Simulate and write one micrograph of a dataset (in this process or a worker process)."""
    rng = np.random.default_rng(job["seed"])
    opts = job["options"]
    projectors, labels = _WORKER_STATE["projectors"], _WORKER_STATE["labels"]
    if not job["mix"]:
        pick = int(rng.integers(len(projectors)))
        projectors, labels = [projectors[pick]], [labels[pick]]
    n = 0 if rng.uniform() < job["empty_fraction"] else int(rng.integers(job["ppm"][0], job["ppm"][1] + 1))
    drawn = {key: _draw(rng, opts[key], key in _LOG_UNIFORM) for key in _DRAWN_OPTIONS}
    n_contaminants = int(rng.integers(1, 4)) if rng.uniform() < opts["contamination_fraction"] else 0
    carbon_edge = bool(rng.uniform() < opts["carbon_fraction"])
    sim = simulate_micrograph_parts(
        job["shape"], job["pixel_size_A"], projectors, n, names=labels, **drawn,
        n_contaminants=n_contaminants, carbon_edge=carbon_edge, output=opts["output"], seed=rng,
    )  # fmt: skip
    out_dir, name = Path(job["out_dir"]), job["name"]
    with atomic_path(out_dir / "micrographs" / f"{name}.mrc") as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(sim.image))
            mrc.voxel_size = job["pixel_size_A"]
    coords = pd.DataFrame(
        {"rlnCoordinateX": sim.centres["x"].to_numpy(float), "rlnCoordinateY": sim.centres["y"].to_numpy(float)}
    )
    with atomic_path(out_dir / "coords" / f"{name}.star") as tmp:
        starfile.write(coords, tmp, overwrite=True, float_format="%.3f")
    return {
        "micrograph": name,
        "micrograph_path": f"micrographs/{name}.mrc",
        "coords_path": f"coords/{name}.star",
        "n_particles": len(sim.centres),
        "molecules": ",".join(str(label) for label in labels),
        "defocus_u_A": sim.ctf["defocus_u_A"],
        "defocus_v_A": sim.ctf["defocus_v_A"],
        "defocus_angle_deg": sim.ctf["defocus_angle_deg"],
        "snr": drawn["snr"],
        "n_contaminants": n_contaminants,
        "carbon_edge": carbon_edge,
        "centres": sim.centres,
    }


def _map_label(item, index: int) -> str:
    if isinstance(item, (str, Path)):
        return Path(str(item)).name.replace(MAP_SUFFIX, "").replace(".mrc", "")
    return f"molecule{index}"


def simulate_dataset(
    out_dir: str | Path,
    n_micrographs: int = 10,
    shape: tuple[int, int] = (1024, 1024),
    pixel_size_A: float = 5.0,
    maps: Sequence[str | Path | tuple[np.ndarray, float]] | None = None,
    seed: int = 0,
    particles_per_micrograph: tuple[int, int] = (20, 60),
    empty_fraction: float = 0.1,
    *,
    defocus_um: Range = (1.0, 3.5),
    astigmatism_um: Range = (0.0, 0.1),
    b_factor_A2: Range = (100.0, 400.0),
    snr: Range = (0.02, 0.5),
    ice_noise_fraction: Range = (0.2, 0.6),
    fog_fraction: Range = (0.1, 0.5),
    fog_cutoff: Range = (0.04, 0.2),
    mtf_falloff: Range = (0.2, 1.5),
    min_distance: Range = (0.8, 1.1),
    ice: Range = (0.0, 0.15),
    contamination_fraction: float = 0.2,
    carbon_fraction: float = 0.1,
    mix_molecules: bool = False,
    output: OutputKind = "float32",
    name_prefix: str = "sim",
    n_workers: int = 1,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Simulate ``n_micrographs`` micrographs and write them as a RELION project-style folder.

    Writes (each file atomically): ``out_dir/micrographs/NAME.mrc`` (pixel size in the header),
    ``out_dir/coords/NAME.star`` (``rlnCoordinateX/Y``: true centres, x = column, y = row, px) and
    ``out_dir/micrographs.star`` (RELION 3.1: ``data_optics`` with the optics group, pixel size,
    300 kV, Cs 2.7 mm, Q0 0.1; ``data_micrographs`` with ``rlnMicrographName`` relative to
    ``out_dir``, ``rlnOpticsGroup``, ``rlnDefocusU/V`` [A], ``rlnDefocusAngle`` [deg]).

    ``maps``: shipped map names, MRC paths or ``(volume, pixel_size_A)`` tuples (default: all
    shipped maps). Each micrograph holds one molecule chosen at random (all of them mixed when
    ``mix_molecules``), a number of particles uniform in ``particles_per_micrograph`` (inclusive), or
    none with probability ``empty_fraction``. Parameters given as (lo, hi) are drawn uniformly per
    micrograph (``snr`` and ``fog_cutoff`` log-uniformly; units as in :func:`simulate_micrograph`).
    The default ranges span real data: binned micrographs of large particles reach SNR ~0.4 by this
    definition (EMPIAR-10028 ribosomes at 5.36 A/px measure 0.36-0.45). ``contamination_fraction`` and
    ``carbon_fraction`` are the probabilities of 1-3 contaminants and of a carbon edge.
    Deterministic given ``seed`` whatever ``n_workers`` (processes). Raises ``FileExistsError`` if
    ``out_dir/micrographs.star`` exists and not ``overwrite``.

    Returns one row per micrograph: ``micrograph`` (NAME), ``micrograph_path`` and ``coords_path``
    (relative to ``out_dir``), ``n_particles``, ``molecules`` (those that could appear on it),
    ``defocus_u_A``, ``defocus_v_A``, ``defocus_angle_deg``, ``snr``, ``n_contaminants``,
    ``carbon_edge``, and ``centres`` (a DataFrame per micrograph: x, y, molecule, diameter_px).
    """
    out_dir = Path(out_dir)
    star_path = out_dir / "micrographs.star"
    if star_path.exists() and not overwrite:
        raise FileExistsError(f"{star_path} exists; pass overwrite=True to replace the dataset")
    items = list(maps) if maps is not None else available_maps()
    labels = [_map_label(item, i) for i, item in enumerate(items)]
    volumes = [load_map(item) if isinstance(item, (str, Path)) else item for item in items]
    projectors = [_get_projector(v, float(p), pixel_size_A) for v, p in volumes]
    options = dict(
        defocus_um=defocus_um, astigmatism_um=astigmatism_um, b_factor_A2=b_factor_A2, snr=snr,
        ice_noise_fraction=ice_noise_fraction, fog_fraction=fog_fraction, fog_cutoff=fog_cutoff,
        mtf_falloff=mtf_falloff, min_distance=min_distance, ice=ice,
        contamination_fraction=contamination_fraction, carbon_fraction=carbon_fraction, output=output,
    )  # fmt: skip
    seeds = np.random.SeedSequence(seed).spawn(n_micrographs)
    width = max(4, len(str(n_micrographs - 1)))
    jobs = [
        dict(
            seed=seeds[i], options=options, mix=mix_molecules,
            empty_fraction=empty_fraction, ppm=particles_per_micrograph, shape=tuple(shape),
            pixel_size_A=pixel_size_A, out_dir=str(out_dir), name=f"{name_prefix}_{i:0{width}d}",
        )  # fmt: skip
        for i in range(n_micrographs)
    ]
    if n_workers > 1:
        init = (projectors, labels)
        with concurrent.futures.ProcessPoolExecutor(n_workers, initializer=_init_worker, initargs=init) as pool:
            rows = list(pool.map(_simulate_one, jobs, chunksize=4))
    else:
        _init_worker(projectors, labels)
        try:
            rows = [_simulate_one(job) for job in jobs]
        finally:
            _WORKER_STATE.clear()
    table = pd.DataFrame(rows)
    _write_micrographs_star(star_path, table, pixel_size_A)
    return table


def _write_micrographs_star(path: Path, table: pd.DataFrame, pixel_size_A: float) -> None:
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnMicrographPixelSize": [float(pixel_size_A)],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
        }
    )
    mics = pd.DataFrame(
        {
            "rlnMicrographName": table["micrograph_path"].astype(str).to_list(),
            "rlnOpticsGroup": [1] * len(table),
            "rlnDefocusU": table["defocus_u_A"].astype(float).to_list(),
            "rlnDefocusV": table["defocus_v_A"].astype(float).to_list(),
            "rlnDefocusAngle": table["defocus_angle_deg"].astype(float).to_list(),
        }
    )
    with atomic_path(path) as tmp:
        starfile.write({"optics": optics, "micrographs": mics}, tmp, overwrite=True, float_format="%.6f")
