"""Preprocessing: one Fourier-space pass per micrograph that resamples it so that the particle box
spans exactly the network's 64 px input, band-pass filters it (Gaussian low-pass against noise, a
gentle high-pass against ice gradients), and normalises it.

Coordinates: Fourier resampling keeps pixel 0 in place, so a point at original pixel ``x`` (column)
lies at ``x * scale_x`` in the resampled image, where ``scale_x = resampled width / original
width`` (the two axes can differ by a rounding step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

INPUT_SIZE = 64  # network input (pixels of the resampled micrograph) = one particle box

# Gaussian low-pass: amplitude falls to exp(-1/2) at this spatial frequency, in cycles per box:
# 64 px boxes, Nyquist is 32 cycles per box; particles are recognised at ~1/16 box resolution.
LOWPASS_CYCLES_PER_BOX = 12.0
# High-pass: remove variations slower than about four boxes (ice thickness gradients).
HIGHPASS_CYCLES_PER_BOX = 0.25


@dataclass
class Preprocessed:
    """A micrograph resampled to the network scale.

    ``image``: float32 ``[row, column]``, zero median, unit robust standard deviation.
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
    """Fourier crop/pad ``image`` to ``new_shape`` with the band-pass applied on the way."""
    ny, nx = image.shape
    my, mx = new_shape
    spec = scipy.fft.rfft2(image, workers=-1)
    # Frequencies (cycles per resampled pixel) kept in the output grid.
    ky = min(ny, my)
    kx = min(nx // 2 + 1, mx // 2 + 1)
    out = np.zeros((my, mx // 2 + 1), dtype=np.complex64)
    top = (ky + 1) // 2  # non-negative row frequencies
    bottom = ky // 2  # negative row frequencies
    out[:top, :kx] = spec[:top, :kx]
    if bottom:
        out[-bottom:, :kx] = spec[-bottom:, :kx]
    fy = scipy.fft.fftfreq(my).astype(np.float32)[:, None]
    fx = scipy.fft.rfftfreq(mx).astype(np.float32)[None, :]
    f2 = (fy**2 + fx**2) * np.float32(box_px_new**2)  # (cycles per box)^2
    band = np.exp(-f2 / (2 * LOWPASS_CYCLES_PER_BOX**2)) * (
        1 - np.exp(-f2 / (2 * HIGHPASS_CYCLES_PER_BOX**2))
    )
    out *= band.astype(np.float32)
    result = scipy.fft.irfft2(out, s=(my, mx), workers=-1)
    return (result * np.float32(my * mx / (ny * nx))).astype(np.float32)


def normalise(image: np.ndarray) -> np.ndarray:
    """Zero median, unit robust standard deviation (1.4826 x median absolute deviation), so that
    contamination and hot pixels do not set the scale."""
    sample = image[:: max(1, image.shape[0] // 256), :: max(1, image.shape[1] // 256)]
    centre = np.median(sample)
    spread = 1.4826 * np.median(np.abs(sample - centre))
    if not spread > 0:
        spread = float(image.std()) or 1.0
    return ((image - centre) / spread).astype(np.float32)


def preprocess(image: np.ndarray, box_px: float) -> Preprocessed:
    """Resample, band-pass and normalise a micrograph so the particle box spans 64 px.

    ``image``: ``[row, column]`` in any real dtype. ``box_px``: box (particle diameter) in pixels
    of this image. Raises ``ValueError`` if the micrograph is smaller than one box.
    """
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
        image=normalise(resampled),
        scale=(new_shape[0] / image.shape[0], new_shape[1] / image.shape[1]),
        original_shape=(int(image.shape[0]), int(image.shape[1])),
    )
