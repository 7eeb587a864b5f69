"""The centring network (deeppicker_relion/picking/centring.py): geometry of its windows and offsets, the
shipped weights, and that it moves picks towards particle centres it has never seen (a random
synthetic molecule). Fast (seconds), no ../shared needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deeppicker_relion.picking.centring import (
    ARCHITECTURE,
    CentringNet,
    attach_centring,
    attached_centring,
    cut_windows,
    default_centring_path,
    load_centring,
    recentre,
    save_centring,
    transform_offsets,
)
from deeppicker_relion.errors import JobError
from deeppicker_relion.model import DeepPickerNet, default_weights_path, load_model, save_model
from deeppicker_relion.picking.candidates import PickParams, find_candidates
from deeppicker_relion.picking.preprocess import Preprocessed, preprocess
from deeppicker_relion.picking.scoring import ScoreMap, score_map_dense
from deeppicker_relion.simulation.simulate import estimate_diameter_A, simulate_micrograph, synthetic_molecule

PIXEL = 4.0


@pytest.fixture(scope="module")
def shipped() -> CentringNet:
    return load_centring()[0]


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("mirrored", [False, True])
def test_offsets_turn_with_the_window(k: int, mirrored: bool) -> None:
    """A point's offset from index 32 maps exactly as the window's pixels do (a 64 px window turns
    about 31.5, so a half turn maps an offset d to -d - 1)."""
    rng = np.random.default_rng(k + 4 * mirrored)
    for _ in range(5):
        row, col = rng.integers(0, 64, 2)
        window = torch.zeros(1, 1, 64, 64)
        window[0, 0, row, col] = 1.0
        turned = torch.rot90(window.flip(-1) if mirrored else window, k, dims=(-2, -1))
        new_row, new_col = np.unravel_index(int(turned.argmax()), (64, 64))
        got = transform_offsets(torch.tensor([[col - 32.0, row - 32.0]]), k, mirrored)[0]
        assert got.tolist() == [new_col - 32.0, new_row - 32.0]
    d = torch.tensor([[3.0, -5.0]])
    assert transform_offsets(d, 2, False).tolist() == [[-4.0, 4.0]]


def test_windows_are_centred_on_the_nearest_pixel_and_mirror_at_edges() -> None:
    image = np.arange(100 * 120, dtype=np.float32).reshape(100, 120)
    windows, wx, wy = cut_windows(image, np.array([50.4, 0.0, 119.6]), np.array([40.6, 3.0, 99.0]))
    assert windows.shape == (3, 64, 64)
    assert (wx.tolist(), wy.tolist()) == ([50, 0, 120], [41, 3, 99])
    assert windows[0, 32, 32] == image[41, 50]  # index 32 = the window's centre
    assert windows[1, 32, 32] == image[3, 0] and windows[1, 32, 31] == image[3, 1]  # mirrored beyond the edge


class BrightestPixel(CentringNet):
    """A perfect toy centring network: the particle is the window's brightest pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).argmax(dim=1)
        return torch.stack([flat % 64 - 32.0, flat // 64 - 32.0], dim=1)


def test_picks_move_to_the_centre_read_at_most_max_shift() -> None:
    image = np.zeros((200, 260), np.float32)
    image[90, 110] = image[60, 200] = 5.0  # two "particles" at (x, y) = (110, 90) and (200, 60)
    x, y = np.array([104.3, 180.0]), np.array([93.6, 60.0])
    nx, ny = recentre(BrightestPixel(), image, x, y)
    np.testing.assert_allclose(nx, [110.0, 180.0 + 0.15 * 64], atol=1e-6)  # the second is 20 px off: 0.15 box
    np.testing.assert_allclose(ny, [90.0, 60.0], atol=1e-6)
    nx, ny = recentre(BrightestPixel(), image, x, y, max_shift=0.05)
    assert np.hypot(nx - x, ny - y) == pytest.approx([3.2, 3.2])
    # a network that answers the same whatever it sees: the half turn cancels it (index 31.5)
    net = CentringNet().eval()
    net.fc2.bias.data.copy_(torch.tensor([40.0, 0.0]))
    nx, ny = recentre(net, image, x, y)
    np.testing.assert_allclose(np.column_stack([nx, ny]), np.column_stack([np.round(x), np.round(y)]) - 0.5, atol=1e-5)
    assert recentre(net, image, np.array([]), np.array([]))[0].size == 0


def test_shipped_weights_load_and_record_their_recipe(shipped) -> None:
    path = default_centring_path()
    assert path.is_file() and path.stat().st_size < 2_000_000
    _, info = load_centring(path)
    assert info["recipe"] == "training/make_centring_model.py" and info["normalisation"] == "local"
    assert min(info["validation_centre_error_px"]) < info["validation_uncorrected_px"]
    assert not shipped.training and shipped.architecture == ARCHITECTURE
    # the shipped classifier gets it (same normalisation) ...
    model, _ = load_model()
    assert attached_centring(model) is not None and "centring" not in "".join(model.state_dict())


def test_not_attached_to_models_normalised_otherwise(tmp_path) -> None:
    model = DeepPickerNet()
    model.normalisation = "global"
    save_model(model, tmp_path / "m.safetensors")
    loaded, _ = load_model(tmp_path / "m.safetensors")
    assert attached_centring(loaded) is None
    attach_centring(loaded, CentringNet())
    save_model(loaded, tmp_path / "again.safetensors")  # an attached network is not part of the weights
    assert set(load_model(tmp_path / "again.safetensors")[0].state_dict()) == set(model.state_dict())


def test_bad_centring_files_are_named(tmp_path) -> None:
    with pytest.raises(JobError, match="not found") as err:
        load_centring(tmp_path / "missing.safetensors")
    assert "missing.safetensors" in str(err.value)
    with pytest.raises(JobError, match="not a centring network"):
        load_centring(default_weights_path())  # the classifier
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a weights file")
    with pytest.raises(JobError, match="corrupt or unreadable"):
        load_centring(junk)
    net = CentringNet()
    save_centring(net, tmp_path / "c.safetensors", {"note": "test"})
    again, info = load_centring(tmp_path / "c.safetensors")
    assert info["note"] == "test" and all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))


@pytest.fixture(scope="module")
def unseen_micrographs():
    """Three micrographs of a random synthetic molecule no training set holds, exact centres."""
    volume = synthetic_molecule(170.0, PIXEL, seed=11, symmetry="C3")
    box = estimate_diameter_A(volume, PIXEL) / PIXEL
    out = [simulate_micrograph((448, 480), PIXEL, [(volume, PIXEL)], n_particles=14, snr=0.5, defocus_um=2.0, seed=s)
           for s in (1, 2, 3)]
    return out, box


def test_moves_displaced_picks_towards_unseen_particles(shipped, unseen_micrographs) -> None:
    """Picks put 0.1 box off each true centre, in random directions, come back: the mean distance to
    the centres falls by more than half."""
    micrographs, box = unseen_micrographs
    rng = np.random.default_rng(0)
    before, after = [], []
    for image, centres in micrographs:
        pre = preprocess(image, box, "local")
        tx, ty = pre.to_resampled(centres["x"].to_numpy(float), centres["y"].to_numpy(float))
        inside = (tx > 40) & (ty > 40) & (tx < pre.image.shape[1] - 40) & (ty < pre.image.shape[0] - 40)
        tx, ty = tx[inside], ty[inside]
        angle = rng.uniform(0, 2 * np.pi, tx.size)
        x, y = tx + 6.4 * np.cos(angle), ty + 6.4 * np.sin(angle)  # 0.1 x 64 px
        nx, ny = recentre(shipped, pre.image, x, y)
        before.extend(np.hypot(x - tx, y - ty))
        after.extend(np.hypot(nx - tx, ny - ty))
    assert len(before) >= 25
    assert np.mean(after) < 0.5 * np.mean(before), (np.mean(before), np.mean(after))


def test_find_candidates_recentres_only_when_asked(unseen_micrographs) -> None:
    model, _ = load_model()
    (image, _), box = unseen_micrographs[0][0], unseen_micrographs[1]
    pre = preprocess(image, box, model.normalisation)
    smap = score_map_dense(model, pre.image)
    params = PickParams(floor=0.2, dark_sigma=0, outlier_fraction=1.0)  # no filter depends on the positions
    on = find_candidates(smap, pre, params, attached_centring(model))
    off = find_candidates(smap, pre, PickParams(floor=0.2, dark_sigma=0, outlier_fraction=1.0, recentre=False),
                          attached_centring(model))
    plain = find_candidates(smap, pre, params)  # no network given
    assert len(on) == len(off) >= 5
    np.testing.assert_array_equal(on["score"], off["score"])  # scores never change
    np.testing.assert_array_equal(off[["x", "y"]], plain[["x", "y"]])
    moved = np.hypot(on["x"] - off["x"], on["y"] - off["y"]) / box
    assert moved.max() <= 0.15 + 1e-6 and moved.mean() > 0.005


def test_candidates_moved_together_keep_their_spacing() -> None:
    """Two peaks 0.5 box apart both move towards one particle between them: the better one stays,
    so picked centres remain >= 0.4 box apart after centring, as without it."""
    logits = np.full((40, 40), -6.0, np.float32)
    logits[20, 16], logits[20, 24] = 3.0, 2.0  # windows centred at x = 96 and 128 px, y = 112 px
    image = np.zeros((220, 220), np.float32)
    image[112, 112] = 5.0
    pre = Preprocessed(image, (1.0, 1.0), image.shape)
    params = PickParams(floor=0.01, clean=False, outlier_fraction=1.0, dark_sigma=0, refine=False)
    apart = find_candidates(ScoreMap(logits, 4), pre, params)
    moved = find_candidates(ScoreMap(logits, 4), pre, params, BrightestPixel())
    assert len(apart) == 2 and len(moved) == 1
    assert moved.loc[0, "score"] == apart.loc[0, "score"]
    assert (moved.loc[0, "x"], moved.loc[0, "y"]) == pytest.approx((96 + 0.15 * 64, 112.0))
