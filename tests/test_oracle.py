"""The benchmarks' idealised picker (benchmarks/oracle.py): its scores are in standard deviations of
the whitened noise, its detectability d' grows as the square root of the SNR, and its candidates
come back in our convention (x = column, y = row) on a micrograph wider than tall."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import ROOT
from deeppicker_relion.simulation import simulate as sim
from deeppicker_relion.metrics import match

sys.path.insert(0, str(ROOT / "benchmarks"))
import oracle  # noqa: E402

PIXEL = 5.0


@pytest.fixture(scope="module")
def molecule():
    return sim.synthetic_molecule(120.0, PIXEL, seed=3), PIXEL


def parts(molecule, snr, seed, shape=(256, 448), n=12, pixel=PIXEL):
    return sim.simulate_micrograph_parts(shape, pixel, [molecule], n, snr=snr, ice=0.0, seed=seed)


def test_scores_on_coloured_noise_have_unit_spread(molecule):
    """One particle's whitened correlation with noise alone (CTF-shaped, fog: far from white) has
    mean 0 and spread 1, whatever the noise's colour; without whitening it would not be unit."""
    p = parts(molecule, 0.1, seed=1, n=1)
    other = parts(molecule, 0.1, seed=2, n=1)  # independent noise of the same spectrum
    scores = oracle.score_map(other.noise, p.signal, p.noise, p.centres, 24.0)[0]
    assert abs(scores.mean()) < 0.1
    assert 0.9 < scores.std() < 1.1


def test_detectability_grows_as_square_root_of_snr(molecule):
    d = [np.median(oracle.score_map(q.signal + q.noise, q.signal, q.noise, q.centres, 24.0)[1])
         for q in (parts(molecule, snr, seed=4) for snr in (0.05, 0.2))]  # fmt: skip
    assert d[1] / d[0] == pytest.approx(2.0, rel=0.1)


def test_candidates_at_particle_centres_in_our_convention(molecule):
    p = parts(molecule, 0.3, seed=5)
    diameter = float(p.centres["diameter_px"].iloc[0])
    rest = p.noise + p.background
    found = oracle.oracle_candidates(p.signal + rest, p.signal, rest, p.centres, diameter)
    assert found["score"].is_monotonic_decreasing
    top = found.head(len(p.centres))
    assert (match(top, p.centres, 0.2 * diameter)[0] >= 0).mean() >= 0.9
    swapped = top.rename(columns={"x": "y", "y": "x"})[["x", "y", "score"]]
    assert (match(swapped, p.centres, 0.2 * diameter)[0] >= 0).mean() <= 0.2


@pytest.mark.parametrize("pixel", [5.0, 1.6])  # particle ~24 px (grid upsampled) / ~75 px (downsampled)
def test_network_grid_candidates_in_original_pixels(molecule, pixel):
    """On the network's grid (resampled so the diameter spans 64 px), candidates come back in
    pixels of the original micrograph, at the particle centres."""
    p = parts(molecule, 0.5, seed=6, shape=(int(1280 / pixel), int(2240 / pixel)), pixel=pixel)
    diameter = float(p.centres["diameter_px"].iloc[0])
    rest = p.noise + p.background
    found = oracle.network_grid_candidates(p.signal, rest, p.centres, diameter)
    top = found.head(len(p.centres))
    matched, dist = match(top, p.centres, 0.2 * diameter)
    assert (matched >= 0).mean() >= 0.9
    assert np.nanmean(dist) < 0.1 * diameter
