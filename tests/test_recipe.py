"""The training recipe's simulated splits (training/make_general_model.py): each micrograph is the
same every time it is simulated, so the benchmark can re-simulate a cached test micrograph to
separate its signal from its noise (benchmarks/accuracy.py --only snr)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from deeppicker_relion.io.coords import read_coordinates
from deeppicker_relion.io.mrc import read_micrograph

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import make_general_model as recipe  # noqa: E402


def test_simulate_parts_is_the_micrograph_the_split_writes(tmp_path: Path) -> None:
    cond, sim = recipe.simulate_parts("hemoglobin_4hhb", "test", "mic", 2, False)  # a float32 one
    again_cond, again = recipe.simulate_parts("hemoglobin_4hhb", "test", "mic", 2, False)
    assert cond == again_cond and np.array_equal(sim.image, again.image)
    other = recipe.simulate_parts("hemoglobin_4hhb", "test", "mic", 1, False)[1]
    assert other.image.shape != sim.image.shape or not np.array_equal(other.image, sim.image)
    # the parts add up to the image (float32 output here), and the particles are the written ones
    assert cond.output == "float32"
    np.testing.assert_allclose(sim.signal + sim.noise + sim.background, sim.image, atol=1e-5)
    row = recipe._simulate_job("hemoglobin_4hhb", "test", "mic", 2, False, str(tmp_path))
    assert row["snr"] == cond.snr and row["n_particles"] == len(sim.centres) and not row["empty"]
    np.testing.assert_array_equal(read_micrograph(row["path"]).data, sim.image)
    written = read_coordinates(row["coords"])
    np.testing.assert_allclose(written[["x", "y"]].to_numpy(), sim.centres[["x", "y"]].to_numpy(), atol=1e-3)


def test_training_snr_mix_is_a_recipe_choice() -> None:
    """The shipped recipe trains on the realistic SNR mix; "wide" (the test sets' range, an
    experiment) draws other micrographs; anything else is refused before any simulation."""
    assert recipe.Recipe().train_snr == "realistic"
    with pytest.raises(ValueError, match="train_snr"):
        recipe.training_index("all", recipe.Recipe(train_snr="high"))
    # a "wide" training micrograph is drawn by the test sets' rule: log-uniform 0.02-0.5
    snrs = [recipe.draw_conditions(np.random.default_rng(i), 120.0, snr_mode="wide").snr for i in range(200)]
    assert 0.02 <= min(snrs) and max(snrs) <= 0.5 and 0.35 < np.mean(np.array(snrs) < 0.1) < 0.65
    assert recipe.MAP_SPLITS["train_wide"][2] == "wide" and recipe.SPLIT_IDS["train_wide"] not in (
        recipe.SPLIT_IDS[s] for s in recipe.SPLIT_IDS if s != "train_wide")
