"""The benchmarks' RELION LoG runner (benchmarks/peers.py) with the real relion_autopick: its picks
come back in our convention (original pixels, x = column, y = row, particle centre), on a micrograph
taller than wide so that swapped axes would show."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT, blob_micrograph, write_mrc
from deeppicker_relion.metrics import match

sys.path.insert(0, str(ROOT / "benchmarks"))
import peers  # noqa: E402


@pytest.mark.skipif(not peers.relion_log_available(), reason="relion_autopick not installed (apt-get install relion)")
def test_relion_log_picks_in_our_convention(tmp_path):
    image, truth = blob_micrograph(3, shape=(420, 260), n=10, box=32.0, snr=3.0)
    mic = write_mrc(tmp_path / "in" / "tall.mrc", image, pixel_size=2.0)
    picks, seconds = peers.run_relion_log([mic], diameter_px=32.0, pixel_size_A=2.0, workdir=tmp_path / "log")
    found = picks["tall"]
    assert list(found.columns) == ["x", "y", "score"] and seconds > 0
    assert found["score"].is_monotonic_decreasing
    top = found.head(len(truth))
    matched, _ = match(top, truth, 0.2 * 32.0)
    assert (matched >= 0).sum() >= 8  # LoG finds strong dark discs at their centres
    # swapped axes could not: most swapped positions fall outside the 260 px wide micrograph
    swapped = top.rename(columns={"x": "y", "y": "x"})[["x", "y", "score"]]
    assert (match(swapped, truth, 0.2 * 32.0)[0] >= 0).sum() <= 2
