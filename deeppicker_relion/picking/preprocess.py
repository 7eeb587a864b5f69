"""Preprocessing: one Fourier-space pass per micrograph that resamples it so that the particle box
spans exactly the network's 64 px input, band-pass filters it (Gaussian low-pass against noise, a
gentle high-pass against ice gradients), and normalises it.

Coordinates: Fourier resampling keeps pixel 0 in place, so a point at original pixel ``x`` (column)
lies at ``x * scale_x`` in the resampled image, where ``scale_x = resampled width / original
width`` (the two axes can differ by a rounding step).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from dataclasses import dataclass

import numpy as np
import scipy.fft
import torch
from scipy import ndimage

INPUT_SIZE = 64  # network input (pixels of the resampled micrograph) = one particle box

# Gaussian low-pass: amplitude falls to exp(-1/2) at this spatial frequency, in cycles per box:
# 64 px boxes, Nyquist is 32 cycles per box; particles are recognised at ~1/16 box resolution.
LOWPASS_CYCLES_PER_BOX = 12.0
# High-pass: remove variations slower than about four boxes (ice thickness gradients).
HIGHPASS_CYCLES_PER_BOX = 0.25


_ALLOCATOR_TUNED: list[bool] = []


def tune_allocator() -> bool:
    """Keep freed memory for reuse instead of handing it back to the system (glibc only; once per
    process; ``DEEPPICKER_MALLOC=default`` in the environment skips it). Returns whether it applied.

    glibc serves each allocation over its mmap threshold (a few MB) with fresh pages from the
    kernel and returns them on free, so every large intermediate array of the resampling and of the
    dense pass (hundreds of MB on a 4k micrograph) is page-faulted in anew: measured on 2 shared
    cores, one dense pass over a 2,388 px grid took 7-10 s with glibc's defaults and 2.4-4.5 s
    with the thresholds raised (same numbers; peak memory up to ~1.4x, since the heap keeps its
    largest size). Raising the mmap threshold to 1 GiB and the trim threshold to 2 GiB lets freed
    blocks be reused."""
    if _ALLOCATOR_TUNED:
        return _ALLOCATOR_TUNED[0]
    applied = False
    if sys.platform.startswith("linux") and os.environ.get("DEEPPICKER_MALLOC", "") != "default":
        try:
            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3
            applied = bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 31))
        except (OSError, AttributeError):  # not glibc (musl, macOS)
            applied = False
    _ALLOCATOR_TUNED.append(applied)
    return applied


@dataclass
class Preprocessed:
    """A micrograph resampled to the network scale.

    ``image``: float32 ``[row, column]``, zero median, unit noise spread (:func:`normalise`).
    ``scale``: (row scale, column scale) = resampled size / original size.
    ``original_shape``: (rows, columns) of the original micrograph.
    """

    image: np.ndarray
    scale: tuple[float, float]
    original_shape: tuple[int, int]

    def to_original(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Resampled pixel coordinates -> original micrograph pixels."""
        return np.asarray(x, float) / self.scale[1], np.asarray(y, float) / self.scale[0]

    def to_resampled(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Original micrograph pixels -> resampled pixel coordinates."""
        return np.asarray(x, float) * self.scale[1], np.asarray(y, float) * self.scale[0]


def box_scale(box_px: float) -> float:
    """Resampling factor that makes a ``box_px`` box (original pixels) span the 64 px input."""
    if not box_px > 0:
        raise ValueError(f"box size must be positive, got {box_px}")
    return INPUT_SIZE / float(box_px)


def resampled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """(rows, columns) after resampling by ``scale`` (at least 1 px each)."""
    return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))


def _fourier_resample(image: np.ndarray, new_shape: tuple[int, int], box_px_new: float) -> np.ndarray:
    """Fourier crop/pad ``image`` to ``new_shape`` with the band-pass applied on the way.

    Single precision throughout (float32 in, complex64 spectra), all cores (``workers=-1``), and the
    two axes transformed one after the other, the columns' frequencies cropped in between: the
    row transform then runs only over the columns kept (on a 4096 px micrograph resampled to
    2,388 px, 1,195 of 2,049), the same arithmetic as one 2D transform followed by the crop."""
    ny, nx = image.shape
    my, mx = new_shape
    # Frequencies (cycles per resampled pixel) kept in the output grid.
    ky = min(ny, my)
    kx = min(nx // 2 + 1, mx // 2 + 1)
    spec = scipy.fft.rfft(np.asarray(image, np.float32), axis=1, workers=-1)[:, :kx]
    spec = scipy.fft.fft(spec, axis=0, workers=-1, overwrite_x=True)
    out = np.zeros((my, mx // 2 + 1), dtype=np.complex64)
    top = (ky + 1) // 2  # non-negative row frequencies
    bottom = ky // 2  # negative row frequencies
    out[:top, :kx] = spec[:top]
    if bottom:
        out[-bottom:, :kx] = spec[-bottom:]
    del spec
    out *= _band(new_shape, float(box_px_new))
    result = scipy.fft.irfft2(out, s=(my, mx), workers=-1, overwrite_x=True)
    result *= np.float32(my * mx / (ny * nx))
    return result.astype(np.float32, copy=False)


@functools.lru_cache(maxsize=8)
def _band(shape: tuple[int, int], box_px: float) -> np.ndarray:
    """The band-pass (float32, on the rfft2 grid of ``shape``) of :func:`_fourier_resample`; cached:
    the micrographs of a job share one shape and box."""
    my, mx = shape
    fy = scipy.fft.fftfreq(my).astype(np.float32)[:, None]
    fx = scipy.fft.rfftfreq(mx).astype(np.float32)[None, :]
    f2 = (fy**2 + fx**2) * np.float32(box_px**2)  # (cycles per box)^2
    band = np.exp(-f2 / (2 * LOWPASS_CYCLES_PER_BOX**2)) * (
        1 - np.exp(-f2 / (2 * HIGHPASS_CYCLES_PER_BOX**2))
    )
    band = band.astype(np.float32)
    band.setflags(write=False)
    return band


# Normalisation (``preprocess(..., normalisation=...)``; the weights record the one they are used
# with, model.py). "global" divides by the robust SD of the whole micrograph (every weights file
# without the key, and new models trained from scratch). "local" divides each pixel by the RMS of the micrograph
# (less its mean over about a box) over about two boxes around it, never less than half the global
# robust SD (flat or padded borders), so that carbon, ice of another thickness or crowded areas are
# each scaled by their own spread: the network's scores depend steeply on contrast (x 1.1 can turn
# a micrograph's picks from 0 to 16), and on a simulated micrograph one quarter carbon the global
# spread was 15 % above that of its ice and the particles on the ice were lost. The shipped weights
# are trained, calibrated and pick with "local" since their fifth version (MODEL_CARD.md,
# "Normalisation": validation F1 0.840 vs 0.836, held out 0.24 vs 0.40 picks per empty micrograph).
NORMALISATIONS = ("local", "global")
DEFAULT_NORMALISATION = "global"
LOCAL_MEAN_BOXES = 1.0  # Gaussian sigma (boxes) of the local mean removed before measuring spread
LOCAL_SPREAD_BOXES = 2.0  # Gaussian sigma (boxes) of the window the spread is measured in
_BLOCK = 8  # px: the smooth maps are computed on a grid of 8 x 8 px block means


def _block_means(image: np.ndarray) -> np.ndarray:
    """Means of the 8 x 8 px blocks of ``image`` (the last partial blocks padded by reflection)."""
    ny, nx = image.shape
    by, bx = -(-ny // _BLOCK), -(-nx // _BLOCK)
    mode = "reflect" if min(ny, nx) > _BLOCK else "edge"
    padded = np.pad(image, ((0, by * _BLOCK - ny), (0, bx * _BLOCK - nx)), mode=mode)
    return padded.reshape(by, _BLOCK, bx, _BLOCK).mean(axis=(1, 3)).astype(np.float64)


def _upsample(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear interpolation of a block grid back to every pixel of ``shape`` (block centres at
    (i + 0.5) x 8 - 0.5 px; constant beyond the outer centres); float32."""
    grid = torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))[None, None]
    with torch.no_grad():
        out = torch.nn.functional.interpolate(grid, scale_factor=_BLOCK, mode="bilinear", align_corners=False)
    return out[0, 0, : shape[0], : shape[1]].numpy()


def local_spread(image: np.ndarray) -> np.ndarray:
    """RMS of ``image`` less its local mean (Gaussian, sigma LOCAL_MEAN_BOXES boxes) over a
    Gaussian window of sigma LOCAL_SPREAD_BOXES boxes, on the grid of 8 x 8 px blocks (the local
    mean taken as constant within a block; :func:`_upsample` brings it back to every pixel), so it
    costs a few passes over the image."""
    mean = _block_means(image)
    mean_sq = _block_means(image * image)
    local_mean = ndimage.gaussian_filter(mean, LOCAL_MEAN_BOXES * INPUT_SIZE / _BLOCK, mode="reflect")
    var = mean_sq - 2 * local_mean * mean + local_mean**2  # block mean of (image - local mean)^2
    var = ndimage.gaussian_filter(var, LOCAL_SPREAD_BOXES * INPUT_SIZE / _BLOCK, mode="reflect")
    return np.sqrt(np.maximum(var, 0.0))


def normalise(image: np.ndarray, normalisation: str = DEFAULT_NORMALISATION) -> np.ndarray:
    """Zero median (of the whole micrograph) and unit noise spread. ``"global"``: the robust
    standard deviation (1.4826 x median absolute deviation) of the whole micrograph, so that
    contamination and hot pixels do not set the scale. ``"local"``: at each pixel
    :func:`local_spread` (sigma 2 boxes = 128 px), floored at half the global robust SD (see
    NORMALISATIONS above)."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r}; known: {', '.join(NORMALISATIONS)}")
    image = np.asarray(image, dtype=np.float32)
    sample = image[:: max(1, image.shape[0] // 256), :: max(1, image.shape[1] // 256)]
    centre = np.median(sample)
    spread = 1.4826 * np.median(np.abs(sample - centre))
    if not spread > 0:
        spread = float(image.std()) or 1.0
    if normalisation == "global":
        return ((image - centre) / spread).astype(np.float32)
    scale = _upsample(1.0 / np.maximum(local_spread(image), 0.5 * spread), image.shape)
    out = np.subtract(image, centre, dtype=np.float32)  # one new array, scaled in place: same numbers
    out *= scale
    return out


def preprocess(image: np.ndarray, box_px: float, normalisation: str = DEFAULT_NORMALISATION) -> Preprocessed:
    """Resample, band-pass and normalise a micrograph so the particle box spans 64 px.

    ``image``: ``[row, column]`` in any real dtype. ``box_px``: box (particle diameter) in pixels
    of this image. ``normalisation``: see :func:`normalise`; use the model's
    (``model.normalisation``). Raises ``ValueError`` if the micrograph is smaller than one box.
    """
    tune_allocator()
    if min(image.shape) < box_px:
        raise ValueError(
            f"micrograph ({image.shape[1]} x {image.shape[0]} px) is smaller than the particle box ({box_px:.0f} px)"
        )
    scale = box_scale(box_px)
    new_shape = resampled_shape(image.shape, scale)
    data = np.asarray(image, dtype=np.float32)
    data = data - np.float32(data.mean())
    resampled = _fourier_resample(data, new_shape, INPUT_SIZE)
    return Preprocessed(
        image=normalise(resampled, normalisation),
        scale=(new_shape[0] / image.shape[0], new_shape[1] / image.shape[1]),
        original_shape=(int(image.shape[0]), int(image.shape[1])),
    )
