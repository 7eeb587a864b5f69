"""An idealised picker for simulated micrographs: a reference for what a picker could reach on them.

It is given what no real picker has: the exact noise-free image of every particle on the
micrograph (its projection through the micrograph's CTF, at its true orientation, cut from the
simulation's signal), the power spectrum of everything else on the micrograph (the simulation's
noise and background: ice gradient, contamination, carbon) and where contamination and carbon lie. It does not know where the particles are. It whitens the
micrograph and each particle image by that spectrum and cross-correlates them (the matched filter,
the optimal linear detector of a known signal in Gaussian noise); the score of a position is the
best of these correlations over the micrograph's own particle images, in units of the whitened
noise's standard deviation (a score of 3 is 3 sigma above what noise alone gives). Candidates are
the maxima of that score at least 0.4 diameter apart (the picker's own peak window), as for our
picker, away from the edges and from contamination and carbon.

It is not a strict bound: a particle image cut from the signal holds the edges of touching
neighbours, and the best of ~50 correlations lifts noise peaks (as any picker that must try many
views does). But it knows far more than a picker that must recognise a molecule it has never seen
in any orientation. Used by ``benchmarks/accuracy.py --only oracle``.

:func:`network_grid_candidates` runs it on the micrograph as the network sees it (resampled so
the diameter spans 64 px and band-passed, as preprocessing does): what that step costs in
detectable information.

Coordinates: x = column, y = row, pixels of the simulated micrograph.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.fft as sfft
from scipy import ndimage

from deeppicker_relion.picking.preprocess import INPUT_SIZE, _fourier_resample, box_scale, resampled_shape
from deeppicker_relion.simulation.simulate import _filtered_power

PEAK_WINDOW = 0.8  # diameters: one maximum per window, as deeppicker_relion.picking.candidates's default
TEMPLATE_SIZE = 1.25  # diameters: side of the square cut around each particle (CTF fringes included)
SMOOTH_PX = 5  # frequency pixels over which the noise periodogram is averaged


def noise_power(noise: np.ndarray) -> np.ndarray:
    """Power spectrum of ``noise`` on the rfft2 grid, smoothed over a few frequency pixels (its
    periodogram is one noisy sample per frequency), normalised so that white noise of unit variance
    has power 1 at every frequency. Not radially averaged: resampling and filters can make the
    spectrum anisotropic."""
    rows, cols = noise.shape
    spec = sfft.rfft2(noise - noise.mean(), workers=-1)
    power = (np.abs(spec) ** 2) / (rows * cols)
    negative_rows = np.roll(power[::-1], 1, axis=0)  # row i holds frequency -ky of row i
    mirror = np.arange(cols // 2 + 1, cols)  # full-grid columns of negative kx = column - cols
    full = np.concatenate([power, negative_rows[:, cols - mirror]], axis=1)  # standard FFT order
    smooth = ndimage.uniform_filter(full, size=SMOOTH_PX, mode="wrap")[:, : power.shape[1]]
    return np.maximum(smooth, 1e-12 * smooth.max()).astype(np.float64)


def whitening(noise: np.ndarray) -> np.ndarray:
    """The whitening filter of ``noise`` on the rfft2 grid: 1 / sqrt(its power); 0 at zero frequency
    (a micrograph's mean carries no position) and where the power is below 1e-6 of its peak (no
    content there, e.g. beyond the original Nyquist of an upsampled micrograph)."""
    power = noise_power(noise)
    out = 1.0 / np.sqrt(power)
    out[power < 1e-6 * power.max()] = 0.0
    out[0, 0] = 0.0
    return out


def _template_spectrum(signal: np.ndarray, x: float, y: float, half: int, whiten: np.ndarray) -> np.ndarray:
    """Whitened spectrum of the signal around (x, y), placed so that its centre sits at pixel 0."""
    rows, cols = signal.shape
    ix, iy = int(round(x)), int(round(y))
    r0, r1 = max(0, iy - half), min(rows, iy + half + 1)
    c0, c1 = max(0, ix - half), min(cols, ix + half + 1)
    placed = np.zeros(signal.shape, np.float64)
    patch = signal[r0:r1, c0:c1].astype(np.float64)
    rr = (np.arange(r0, r1) - iy) % rows
    cc = (np.arange(c0, c1) - ix) % cols
    placed[np.ix_(rr, cc)] = patch
    return sfft.rfft2(placed, workers=-1) * whiten


def score_map(data: np.ndarray, signal: np.ndarray, noise: np.ndarray, centres: pd.DataFrame,
              diameter_px: float) -> tuple[np.ndarray, np.ndarray]:
    """The idealised picker's score at every pixel of ``data``: the best whitened correlation with
    the particle images cut from ``signal`` around ``centres`` (x, y), in standard deviations of the
    whitened ``noise`` (on noise alone, each correlation has mean 0 and spread 1); and each
    particle's detectability d' (the whitened norm of its image: its mean score at its centre)."""
    whiten = whitening(noise)
    data_w = sfft.rfft2(data - data.mean(), workers=-1) * whiten
    half = int(np.ceil(0.5 * TEMPLATE_SIZE * diameter_px))
    best = np.full(data.shape, -np.inf)
    dprime = np.zeros(len(centres))
    for i, (x, y) in enumerate(centres[["x", "y"]].to_numpy(float)):
        template = _template_spectrum(signal, x, y, half, whiten)
        dprime[i] = np.sqrt(_filtered_power(template, data.shape[1]))  # Parseval: the image's sum of squares
        if dprime[i] > 0:
            np.maximum(best, sfft.irfft2(data_w * np.conj(template), s=data.shape, workers=-1) / dprime[i], out=best)
    return best, dprime


def oracle_candidates(data: np.ndarray, signal: np.ndarray, noise: np.ndarray, centres: pd.DataFrame,
                      diameter_px: float, forbidden: np.ndarray | None = None) -> pd.DataFrame:
    """Candidates (x, y, score: :func:`score_map`) of the idealised picker on ``data``, best first;
    ``.attrs["dprime"]``: each particle's d' (:func:`score_map`).

    ``data``: the micrograph (signal + noise + background); ``signal``: its noise-free particles;
    ``noise``: everything else (noise and background), whose spectrum whitens; ``centres``: x, y of
    the particles (only to cut their images from ``signal``); ``diameter_px``: particle diameter;
    ``forbidden``: where contamination or carbon lies (> 0.5), also known to this picker: no
    candidate within half a diameter of it. Positions within half a diameter of an edge are not
    scored (no particle is simulated there).
    """
    best, dprime = score_map(data, signal, noise, centres, diameter_px)
    if not np.isfinite(best).any():
        out = pd.DataFrame({"x": [], "y": [], "score": []})
        out.attrs["dprime"] = dprime
        return out
    size = max(1, int(round(PEAK_WINDOW * diameter_px)))
    peaks = best == ndimage.maximum_filter(best, size=size, mode="nearest")
    edge = int(np.ceil(0.5 * diameter_px))
    peaks[:edge], peaks[-edge:], peaks[:, :edge], peaks[:, -edge:] = False, False, False, False
    if forbidden is not None and (forbidden > 0.5).any():
        peaks &= ndimage.distance_transform_edt(forbidden <= 0.5) > 0.5 * diameter_px
    rows, cols = np.nonzero(peaks)
    out = pd.DataFrame({"x": cols.astype(float), "y": rows.astype(float), "score": best[rows, cols]})
    out = out.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    out.attrs["dprime"] = dprime
    return out


def network_grid_candidates(signal: np.ndarray, noise: np.ndarray, centres: pd.DataFrame, diameter_px: float,
                            forbidden: np.ndarray | None = None) -> pd.DataFrame:
    """:func:`oracle_candidates` on the micrograph resampled and band-passed as preprocessing does
    (the diameter spans 64 px); candidates in pixels of the original micrograph."""
    shape = resampled_shape(signal.shape, box_scale(diameter_px))
    sy, sx = shape[0] / signal.shape[0], shape[1] / signal.shape[1]
    sig = _fourier_resample(signal - signal.mean(), shape, INPUT_SIZE)
    rest = _fourier_resample(noise - noise.mean(), shape, INPUT_SIZE)
    grid_centres = centres.assign(x=centres["x"] * sx, y=centres["y"] * sy)
    mask = None
    if forbidden is not None:
        rows = np.clip(np.round((np.arange(shape[0]) + 0.5) / sy - 0.5).astype(int), 0, signal.shape[0] - 1)
        cols = np.clip(np.round((np.arange(shape[1]) + 0.5) / sx - 0.5).astype(int), 0, signal.shape[1] - 1)
        mask = forbidden[np.ix_(rows, cols)]
    found = oracle_candidates(sig + rest, sig, rest, grid_centres, float(INPUT_SIZE), mask)
    return found.assign(x=found["x"] / sx, y=found["y"] / sy)
