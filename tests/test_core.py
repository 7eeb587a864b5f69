"""Preprocessing, the network (dense == patch-by-patch), picking and evaluation, stage by stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deeppicker_relion.errors import JobError
from deeppicker_relion.metrics import evaluate, match, topn_curve
from deeppicker_relion.model import DeepPickerNet, build_model, load_model, save_model
from deeppicker_relion.picking.candidates import (
    PickParams,
    clean_ice,
    dark_regions,
    find_candidates,
    select,
    select_picks,
    smooth_logits,
)
from deeppicker_relion.picking.preprocess import DEFAULT_NORMALISATION, INPUT_SIZE, NORMALISATIONS, Preprocessed, normalise, preprocess
from deeppicker_relion.picking.scoring import ScoreMap, score_map_dense, score_map_patches


# --- preprocessing and coordinates through binning -------------------------------------------


_SHAPES = [(301, 457), (512, 512), (255, 256), (1023, 769)]
_BOXES = [17.0, 64.0, 150.0, 223.5]


@pytest.mark.parametrize(
    "shape, box", [(shape, box) for shape in _SHAPES for box in _BOXES if min(shape) >= box * 1.5]
)
def test_coordinates_survive_resampling(shape: tuple[int, int], box: float) -> None:
    """A Gaussian blob at a sub-pixel position is found at the mapped position after resampling
    (non-square, odd sizes, binning and up-sampling), and maps back to the original pixel."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    x0, y0 = shape[1] * 0.37 + 0.3, shape[0] * 0.61 - 0.2
    sigma = box / 5
    image = -np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2)).astype(np.float32)
    pre = preprocess(image, box)
    assert max(pre.image.shape) == pytest.approx(max(shape) * INPUT_SIZE / box, abs=1)
    im = -pre.image
    w = np.clip(im - 0.5 * im.max(), 0, None)
    gy, gx = np.mgrid[: im.shape[0], : im.shape[1]]
    cx, cy = (w * gx).sum() / w.sum(), (w * gy).sum() / w.sum()
    bx, by = pre.to_original(cx, cy)
    assert abs(bx - x0) < 0.02 * box and abs(by - y0) < 0.02 * box
    rx, ry = pre.to_original(*pre.to_resampled(np.array([x0]), np.array([y0])))
    assert rx[0] == pytest.approx(x0) and ry[0] == pytest.approx(y0)


def test_preprocess_normalises_and_ignores_offset_and_scale() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(size=(400, 300)).astype(np.float32)
    a = preprocess(image, 40).image
    b = preprocess(1000 + 37 * image, 40).image
    assert abs(np.median(a)) < 0.05 and 0.8 < 1.4826 * np.median(np.abs(a)) < 1.2
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_local_normalisation_scales_each_region_by_its_own_noise() -> None:
    """A micrograph one third carbon (darker, 1.5 x noisier): normalised locally, the ice's noise
    and the carbon's are each ~1 away from the boundary, while the whole micrograph's spread counts
    the step and the carbon as noise and shrinks the ice's contrast. A flat (padded) border is not
    blown up."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    noise = rng.normal(size=(1024, 1200)).astype(np.float32)
    image = noise.copy()
    image[:, :400] = 1.5 * image[:, :400] - 3.0  # carbon
    local, whole = normalise(image, "local"), normalise(image, "global")
    ice, carbon = np.s_[:, 700:], np.s_[:, :150]
    assert np.std(local[ice]) == pytest.approx(1.0, abs=0.05)
    assert np.std(local[carbon]) == pytest.approx(1.0, abs=0.05)
    assert np.std(whole[ice]) < 0.75  # the ice's particles would lose a quarter of their contrast
    assert abs(np.median(local)) < 0.05
    # the block-grid computation against a direct full-resolution one (scipy Gaussian filters)
    detail = image - ndimage.gaussian_filter(image, 64, mode="reflect")
    direct = np.sqrt(ndimage.gaussian_filter(detail * detail, 128, mode="reflect"))
    from deeppicker_relion.picking.preprocess import _upsample, local_spread
    np.testing.assert_allclose(_upsample(local_spread(image), image.shape), direct, rtol=0.02)
    # uniform noise: both agree; a flat border: floored at half the global spread, not divided by ~0
    np.testing.assert_allclose(normalise(noise, "local"), normalise(noise, "global"), rtol=0.06, atol=0.06)
    padded = noise.copy()
    padded[:, :300] = 0.0
    assert np.abs(normalise(padded, "local")[:, :300]).max() < 1e-3 + 2 * abs(float(np.median(noise)))
    assert np.std(normalise(padded, "local")[:, 290:310]) < 2.5
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise(noise, "tiles")


def test_weights_record_their_normalisation(tmp_path: Path, random_model: DeepPickerNet) -> None:
    """Weights say how micrographs are normalised for them (new ones: the default; weights without
    the key: the global spread); fine-tuning keeps the initial model's; a bad value is refused."""
    from deeppicker_relion.training.train import TrainingSet, TrainParams, train

    assert build_model().normalisation == DEFAULT_NORMALISATION
    save_model(random_model, tmp_path / "new.safetensors")
    assert load_model(tmp_path / "new.safetensors")[0].normalisation == DEFAULT_NORMALISATION
    other = next(n for n in NORMALISATIONS if n != DEFAULT_NORMALISATION)
    model = load_model(tmp_path / "new.safetensors")[0]
    model.normalisation = other
    save_model(model, tmp_path / "other.safetensors")
    loaded, info = load_model(tmp_path / "other.safetensors")
    assert loaded.normalisation == info["normalisation"] == other
    rng = np.random.default_rng(0)
    data = TrainingSet(rng.normal(size=(36, 1, INPUT_SIZE, INPUT_SIZE)).astype(np.float32), np.arange(36) % 2)
    tuned, _ = train(data, TrainParams(max_epochs=1, batch_size=16), init=loaded)
    assert tuned.normalisation == other
    torch.save(random_model.state_dict(), tmp_path / "plain.pt")  # a plain state_dict: no metadata
    assert load_model(tmp_path / "plain.pt")[0].normalisation == "global"
    save_model(random_model, tmp_path / "bad.safetensors", {"note": "x"})
    _rewrite_info(tmp_path / "bad.safetensors", normalisation="tiles")
    with pytest.raises(JobError, match=r"bad\.safetensors.*normalisation"):
        load_model(tmp_path / "bad.safetensors")


def _rewrite_info(path: Path, **changes) -> None:
    """Edit a safetensors file's JSON metadata in place (save_model always writes the model's own
    normalisation, so a bad one has to be written by hand)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
        state = {k: handle.get_tensor(k) for k in handle.keys()}
    meta["info"] = json.dumps(json.loads(meta["info"]) | changes)
    save_file(state, str(path), metadata=meta)


def test_picking_normalises_as_the_model_was_trained(tmp_path: Path, random_model: DeepPickerNet) -> None:
    """The pick and train paths preprocess with the model's normalisation, not the default."""
    from deeppicker_relion.io.mrc import write_mrc
    from deeppicker_relion.picking.pipeline import ParticleSize, prefetch

    rng = np.random.default_rng(5)
    image = rng.normal(size=(600, 640)).astype(np.float32)
    image[:, :200] -= 3.0
    path = tmp_path / "m.mrc"
    write_mrc(path, image, pixel_size=1.0)
    mics = pd.DataFrame({"name": ["m"], "path": [str(path)]})
    for norm in NORMALISATIONS:
        (_, prepared), = list(prefetch(mics, ParticleSize(box_px=40.0), normalisation=norm))
        np.testing.assert_array_equal(prepared.pre.image, preprocess(image, 40.0, norm).image)
    assert not np.allclose(preprocess(image, 40.0, "local").image, preprocess(image, 40.0, "global").image)


def test_preprocess_refuses_micrograph_smaller_than_box() -> None:
    with pytest.raises(ValueError, match="smaller than the particle box"):
        preprocess(np.zeros((50, 80), np.float32), 60)


# --- network: dense scoring equals the patch-by-patch sliding window ---------------------------


@pytest.fixture(scope="module")
def random_model() -> DeepPickerNet:
    torch.manual_seed(0)
    return DeepPickerNet().eval()


def test_reference_architecture_shapes(random_model: DeepPickerNet) -> None:
    assert [c.kernel_size[0] for c in random_model.convs] == [9, 5, 3, 2]
    assert [c.out_channels for c in random_model.convs] == [8, 16, 32, 64]
    assert (random_model.fc1.in_features, random_model.fc1.out_features) == (256, 128)
    assert random_model.fc2.out_features == 2 and random_model.dropout.p == 0.5
    assert random_model(torch.zeros(3, 1, 64, 64)).shape == (3, 2)


@pytest.mark.parametrize(
    "shape, step",
    [((64, 64), 1), ((97, 83), 1), ((123, 141), 2), ((157, 203), 4), ((300, 257), 4), ((211, 190), 8), ((240, 260), 16)],
)
def test_dense_equals_patch_by_patch(random_model: DeepPickerNet, shape, step: int) -> None:
    image = np.random.default_rng(shape[0] + step).normal(size=shape).astype(np.float32)
    dense = score_map_dense(random_model, image, step=step)
    patches = score_map_patches(random_model, image, step=step)
    assert dense.scores.shape == ((shape[0] - 64) // step + 1, (shape[1] - 64) // step + 1)
    np.testing.assert_allclose(dense.scores, patches.scores, atol=1e-4)
    np.testing.assert_allclose(dense.logits, patches.logits, atol=1e-4)


@pytest.fixture(scope="module")
def random_wide_model() -> DeepPickerNet:
    """The wide architecture with non-trivial batch-norm statistics and affine parameters (as after
    training), so that folding them into the convolutions is really exercised."""
    torch.manual_seed(1)
    model = build_model("deeppicker2016-wide")
    with torch.no_grad():
        for bn in model.norms:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 3.0)
            bn.weight.uniform_(-1.5, 1.5)  # negative scales too: pooling must commute with the fold
            bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_wide_architecture_shapes(random_wide_model: DeepPickerNet) -> None:
    assert random_wide_model.architecture == "deeppicker2016-wide"
    assert [c.kernel_size[0] for c in random_wide_model.convs] == [9, 5, 3, 2]
    assert [c.out_channels for c in random_wide_model.convs] == [16, 32, 64, 64]
    assert random_wide_model(torch.zeros(3, 1, 64, 64)).shape == (3, 2)


@pytest.mark.parametrize("shape, step", [((64, 64), 1), ((97, 83), 1), ((123, 141), 2), ((300, 257), 4), ((211, 190), 8)])
def test_wide_dense_equals_patch_by_patch(random_wide_model: DeepPickerNet, shape, step: int) -> None:
    """Batch normalisation folded into the convolutions of the dense pass gives the network's own
    (eval-mode) scores of every window."""
    image = np.random.default_rng(shape[0] + step).normal(size=shape).astype(np.float32)
    dense = score_map_dense(random_wide_model, image, step=step)
    patches = score_map_patches(random_wide_model, image, step=step)
    np.testing.assert_allclose(dense.logits, patches.logits, atol=1e-4)


def test_wide_weights_round_trip(tmp_path: Path, random_wide_model: DeepPickerNet) -> None:
    path = tmp_path / "wide.safetensors"
    save_model(random_wide_model, path)
    model, _ = load_model(path)
    assert model.architecture == "deeppicker2016-wide"
    x = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(model(x), random_wide_model(x))
    assert path.stat().st_size < 1_000_000


def test_dense_strips_do_not_change_scores(random_model: DeepPickerNet) -> None:
    image = np.random.default_rng(3).normal(size=(410, 333)).astype(np.float32)
    whole = score_map_dense(random_model, image).logits
    strips = score_map_dense(random_model, image, max_pixels=100 * 333).logits
    np.testing.assert_allclose(whole, strips, atol=1e-5)


@pytest.mark.parametrize("augment", [2, 4, 8])
@pytest.mark.parametrize("shape", [(150, 203), (97, 64)])
def test_augmented_dense_equals_patch_by_patch(random_model: DeepPickerNet, shape, augment: int) -> None:
    """Test-time augmentation: the dense pass over rotated/mirrored copies of the whole image
    gives, window by window, the mean over the rotated/mirrored copies of each window; and it
    changes the scores of a network that is not rotation invariant."""
    image = np.random.default_rng(augment).normal(size=shape).astype(np.float32)
    dense = score_map_dense(random_model, image, augment=augment)
    patches = score_map_patches(random_model, image, augment=augment)
    plain = score_map_dense(random_model, image, augment=1)
    assert dense.logits.shape == plain.logits.shape
    np.testing.assert_allclose(dense.logits, patches.logits, atol=1e-4)
    assert np.abs(dense.logits - plain.logits).max() > 1e-2


def test_eightfold_augmentation_makes_scores_rotation_equivariant(random_model: DeepPickerNet) -> None:
    image = np.random.default_rng(5).normal(size=(148, 200)).astype(np.float32)  # whole grid steps
    base = score_map_dense(random_model, image, augment=8).logits
    for k in (1, 2, 3):
        turned = score_map_dense(random_model, np.ascontiguousarray(np.rot90(image, k)), augment=8).logits
        np.testing.assert_allclose(np.rot90(base, k), turned, atol=1e-5)
    mirrored = score_map_dense(random_model, np.ascontiguousarray(image[:, ::-1]), augment=8).logits
    np.testing.assert_allclose(base[:, ::-1], mirrored, atol=1e-5)


@pytest.mark.parametrize("augment", [4, 8])
def test_augmented_window_centres_turn_with_the_image(random_model: DeepPickerNet, augment: int) -> None:
    """With the mean over rotated copies, the score map turns with the image, so the window centre
    that a grid point stands for must turn with it too: the best window of the turned image is the
    turned best window of the image, to the pixel (true only for a centre of 31.5, the middle of a
    64 px window; a centre of 32 puts it 1 px off on one axis)."""
    image = np.random.default_rng(9).normal(size=(148, 200)).astype(np.float32)  # whole grid steps
    height, width = image.shape
    for scorer in (score_map_dense, score_map_patches):
        base = scorer(random_model, image, augment=augment)
        turned = scorer(random_model, np.ascontiguousarray(np.rot90(image)), augment=augment)
        x, y = base.centres(*np.unravel_index(np.argmax(base.logits), base.logits.shape))
        xt, yt = turned.centres(*np.unravel_index(np.argmax(turned.logits), turned.logits.shape))
        # np.rot90 sends pixel (row y, column x) to (row width - 1 - x, column y)
        assert (float(xt), float(yt)) == pytest.approx((float(y), width - 1 - float(x)))
        assert 0 <= x < width and 0 <= y < height
    assert score_map_dense(random_model, image, augment=1).centre == 32.0


def test_half_turn_augmentation_turns_with_a_half_turned_image(random_model: DeepPickerNet) -> None:
    """``augment=2`` (the window and its half turn): the score map of the micrograph turned by 180
    degrees is the score map turned by 180 degrees, and its best window is the turned best window,
    to the pixel (window centre 31.5); a quarter turn is not a symmetry of it."""
    image = np.random.default_rng(11).normal(size=(148, 200)).astype(np.float32)  # whole grid steps
    height, width = image.shape
    for scorer in (score_map_dense, score_map_patches):
        base = scorer(random_model, image, augment=2)
        turned = scorer(random_model, np.ascontiguousarray(image[::-1, ::-1]), augment=2)
        np.testing.assert_allclose(turned.logits, base.logits[::-1, ::-1], atol=1e-4)
        x, y = base.centres(*np.unravel_index(np.argmax(base.logits), base.logits.shape))
        xt, yt = turned.centres(*np.unravel_index(np.argmax(turned.logits), turned.logits.shape))
        assert base.centre == 31.5
        assert (float(xt), float(yt)) == pytest.approx((width - 1 - float(x), height - 1 - float(y)))
    quarter = score_map_dense(random_model, np.ascontiguousarray(np.rot90(image[:, :148])), augment=2).logits
    assert np.abs(quarter - np.rot90(score_map_dense(random_model, image[:, :148], augment=2).logits)).max() > 1e-2


def test_model_carries_its_augmentation(tmp_path: Path, random_model: DeepPickerNet) -> None:
    """The weights file records the augmentation the model is calibrated for; scoring uses it by
    default; a bad value in the metadata is refused naming the file."""
    model = build_model()
    model.load_state_dict(random_model.state_dict())
    model.augment = 4
    path = tmp_path / "aug.safetensors"
    save_model(model, path, {"note": "x"})
    loaded, info = load_model(path)
    assert loaded.augment == 4 and info["augment"] == 4
    image = np.random.default_rng(2).normal(size=(130, 140)).astype(np.float32)
    np.testing.assert_allclose(score_map_dense(loaded, image).logits, score_map_dense(random_model, image, augment=4).logits, atol=1e-5)
    save_model(random_model, tmp_path / "bad.safetensors", {"augment": 3})
    with pytest.raises(JobError, match=r"bad\.safetensors.*augment"):
        load_model(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="augment"):
        score_map_dense(random_model, image, augment=3)


def test_other_augment_counts_use_their_own_recorded_calibration(tmp_path: Path, random_model: DeepPickerNet) -> None:
    """Weights calibrated for 2 copies that also record calibrations for 1 and 4
    (``calibration_by_augment``: margin = a * raw + b + offset): scoring with another count applies
    that count's calibration on both scoring paths; the own count is unchanged; a count without a
    record keeps the model's; a malformed table is refused naming the file."""
    model = build_model()
    model.load_state_dict(random_model.state_dict())
    model.augment = 2
    table = {"2": {"a": 3.0, "b": 0.5, "offset": -1.5}, "1": {"a": 2.0, "b": -1.0, "offset": -1.0},
             "4": {"a": 3.0, "b": 0.0, "offset": -0.5}}
    save_model(model, tmp_path / "cal.safetensors", {"calibration_by_augment": table})
    loaded, _ = load_model(tmp_path / "cal.safetensors")
    assert loaded.augment_calibration == {2: (3.0, -1.0), 1: (2.0, -2.0), 4: (3.0, -0.5)}
    image = np.random.default_rng(4).normal(size=(130, 140)).astype(np.float32)
    for scorer in (score_map_dense, score_map_patches):
        own = scorer(random_model, image, augment=1).logits  # the model's calibration on one pass
        # raw = (own - (-1)) / 3; calibrated for one pass: 2 * raw - 2
        np.testing.assert_allclose(scorer(loaded, image, augment=1).logits, 2 * (own + 1) / 3 - 2, atol=1e-4)
        np.testing.assert_allclose(scorer(loaded, image).logits, scorer(random_model, image, augment=2).logits, atol=1e-5)
        four = scorer(random_model, image, augment=4).logits
        np.testing.assert_allclose(scorer(loaded, image, augment=4).logits, four + 0.5, atol=1e-4)
        np.testing.assert_allclose(scorer(loaded, image, augment=8).logits, scorer(random_model, image, augment=8).logits, atol=1e-5)
    # as `deeppicker pick --augment 1` and the RELION job do: change the model's scoring count
    loaded.augment = 1
    np.testing.assert_allclose(score_map_dense(loaded, image).logits, score_map_dense(loaded, image, augment=1).logits)
    np.testing.assert_allclose(score_map_dense(loaded, image).logits,
                               2 * (score_map_dense(random_model, image, augment=1).logits + 1) / 3 - 2, atol=1e-4)
    save_model(model, tmp_path / "bad_table.safetensors", {"calibration_by_augment": {"1": {"a": 1.0}}})
    with pytest.raises(JobError, match=r"bad_table\.safetensors.*calibration_by_augment"):
        load_model(tmp_path / "bad_table.safetensors")
    save_model(model, tmp_path / "bad_count.safetensors", {"calibration_by_augment": {"3": {"a": 1.0, "b": 0, "offset": 0}}})
    with pytest.raises(JobError, match=r"bad_count\.safetensors.*calibration_by_augment"):
        load_model(tmp_path / "bad_count.safetensors")


def test_fine_tuning_drops_the_initial_models_calibration_table(random_model: DeepPickerNet) -> None:
    """New weights trained from a calibrated model no longer carry its per-count calibrations (which
    would otherwise shift the fine-tuned model's scores under --augment)."""
    from deeppicker_relion.training.train import TrainingSet, TrainParams, train

    rng = np.random.default_rng(0)
    data = TrainingSet(rng.normal(size=(36, 1, INPUT_SIZE, INPUT_SIZE)).astype(np.float32), np.arange(36) % 2)
    init = build_model()
    init.load_state_dict(random_model.state_dict())
    init.augment_calibration = {1: (2.0, -1.0), 2: (3.0, 0.0)}
    tuned, _ = train(data, TrainParams(max_epochs=1, batch_size=16), init=init)
    assert tuned.augment_calibration == {} and init.augment_calibration == {1: (2.0, -1.0), 2: (3.0, 0.0)}


def test_weights_round_trip(tmp_path: Path, random_model: DeepPickerNet) -> None:
    path = tmp_path / "m.safetensors"
    save_model(random_model, path, {"note": "test"})
    model, info = load_model(path)
    x = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(model(x), random_model(x))
    assert info == {"note": "test", "augment": 1, "normalisation": DEFAULT_NORMALISATION}
    # a plain state_dict .pt is accepted too
    torch.save(random_model.state_dict(), tmp_path / "m.pt")
    torch.testing.assert_close(load_model(tmp_path / "m.pt")[0](x), random_model(x))


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/deeppicker_pwned"),))


def test_weights_refuse_pickle_corrupt_and_wrong_architecture(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, evil)
    Path("/tmp/deeppicker_pwned").unlink(missing_ok=True)
    with pytest.raises(JobError, match="refused"):
        load_model(evil)
    assert not Path("/tmp/deeppicker_pwned").exists()
    corrupt = tmp_path / "c.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(JobError, match="corrupt"):
        load_model(corrupt)
    other = tmp_path / "o.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(JobError, match="do not fit"):
        load_model(other)
    with pytest.raises(JobError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


# --- picking ------------------------------------------------------------------------------------


def _map_with_peaks(peaks: list[tuple[float, float, float]], shape=(60, 70)) -> ScoreMap:
    """Logit map with Gaussian bumps: (row, col, height)."""
    r, c = np.mgrid[: shape[0], : shape[1]]
    logits = np.full(shape, -6.0, np.float32)
    for pr, pc, h in peaks:
        logits = np.maximum(logits, h - ((r - pr) ** 2 + (c - pc) ** 2) / 3.0).astype(np.float32)
    return ScoreMap(logits, 4)


def _pre(shape=(60, 70), scale=1.0) -> Preprocessed:
    rows, cols = (shape[0] - 1) * 4 + 64, (shape[1] - 1) * 4 + 64
    return Preprocessed(np.zeros((rows, cols), np.float32), (scale, scale), (int(rows / scale), int(cols / scale)))


def test_peaks_are_refined_to_subgrid_positions() -> None:
    smap = _map_with_peaks([(20.3, 30.6, 5.0)])
    cand = find_candidates(smap, _pre(), PickParams(floor=0.01, outlier_fraction=1.0))
    assert len(cand) == 1
    assert cand.loc[0, "x"] == pytest.approx(30.6 * 4 + 32, abs=0.05)
    assert cand.loc[0, "y"] == pytest.approx(20.3 * 4 + 32, abs=0.05)


def test_smoothed_refinement_centres_noisy_peaks_better() -> None:
    # broad peaks (as the network's, ~1.5 cells wide) at random sub-grid positions, with cell-to-cell
    # noise: the parabola on the smoothed map (the default) lands closer than on the raw grid
    rng = np.random.default_rng(7)
    r, c = np.mgrid[:200, :200]
    truth = np.column_stack([rng.uniform(-0.5, 0.5, 100) + np.repeat(np.arange(10, 200, 19), 10)[:100],
                             rng.uniform(-0.5, 0.5, 100) + np.tile(np.arange(10, 200, 19), 10)[:100]])
    logits = np.full(r.shape, -12.0)
    for pr, pc in truth:
        logits = np.maximum(logits, 4.0 - ((r - pr) ** 2 + (c - pc) ** 2) / (2 * 1.5**2))
    logits = (logits + rng.normal(0, 0.4, logits.shape)).astype(np.float32)
    pre = _pre(shape=logits.shape)
    errors = {}
    for sigma in (0.0, PickParams().refine_sigma):
        cand = find_candidates(ScoreMap(logits, 4), pre, PickParams(floor=0.01, outlier_fraction=1.0, clean=False, dark_sigma=0,
                                                                  refine_sigma=sigma))
        found = np.column_stack([(cand["y"] - 32) / 4, (cand["x"] - 32) / 4])
        d = np.hypot(*(found[:, None] - truth[None]).transpose(2, 0, 1)).min(axis=1)
        assert len(cand) == 100 and d.max() < 2.0  # one pick per peak, each at its own peak
        errors[sigma] = d.mean()
    assert errors[PickParams().refine_sigma] < 0.85 * errors[0.0], errors


def test_smoothing_ignores_cells_removed_as_ice() -> None:
    logits = np.full((20, 20), -3.0)
    logits[8:12, :6] = -np.inf  # an ice region removed by cleaning
    logits[10, 8] = 2.0
    out = smooth_logits(logits, 0.7)
    assert np.isinf(out[8:12, :6]).all() and np.isfinite(out[:, 6:]).all()
    assert out[10, 8] == out[:, 6:].max() and out[10, 8] > -3.0  # the -inf cells do not drag it down
    assert smooth_logits(logits, 0.0) is logits


def test_coordinates_are_in_original_pixels() -> None:
    smap = _map_with_peaks([(20.0, 30.0, 5.0)])
    cand = find_candidates(smap, _pre(scale=0.5), PickParams(floor=0.01, outlier_fraction=1.0))
    assert (cand.loc[0, "x"], cand.loc[0, "y"]) == pytest.approx(((30 * 4 + 32) / 0.5, (20 * 4 + 32) / 0.5))


def test_no_two_picks_closer_than_04_box() -> None:
    # 16 grid cells per box: peaks 4 cells apart (0.25 box) must merge; 8 apart (0.5 box) survive
    smap = _map_with_peaks([(20, 20, 5.0), (20, 24, 4.0), (40, 20, 5.0), (40, 28, 4.5)])
    cand = find_candidates(smap, _pre(), PickParams(floor=0.01, outlier_fraction=1.0, clean=False))
    xy = cand[["x", "y"]].to_numpy()
    d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    assert len(cand) == 3
    assert d[np.triu_indices(len(xy), 1)].min() >= 0.4 * 64


def test_ice_cleaning_drops_large_regions_only() -> None:
    logits = np.full((80, 80), -5.0, np.float32)
    for k in range(6):
        logits[5 + 12 * k : 8 + 12 * k, 5:8] = 3.0  # six particle-sized regions (9 cells)
    logits[30:70, 30:70] = 3.0  # one ice region (1600 cells)
    cleaned, removed = clean_ice(logits)
    assert removed == 1
    assert np.isinf(cleaned[50, 50]) and cleaned[6, 6] == 3.0


def test_outlier_filter_drops_contamination() -> None:
    smap = _map_with_peaks([(20, 20, 5.0), (40, 50, 5.0)])
    pre = _pre()
    x, y = 50 * 4 + 32, 40 * 4 + 32
    pre.image[y - 30 : y + 30, x - 30 : x + 30] = -12.0  # a dark blob many sigma deep
    cand = find_candidates(smap, pre, PickParams(floor=0.01))
    assert len(cand) == 1 and cand.loc[0, "x"] == pytest.approx(20 * 4 + 32, abs=0.5)


def _contaminated_micrograph(ramp: float = 3.0, blob_depth: float = 5.0, seed: int = 0,
                             blob: tuple[int, int] = (400, 380), radius: float = 100):
    """A 1024 px micrograph (box 64 px, unit pixel noise) with an ice gradient of ``ramp`` noise
    SDs across it, 20 particle-sized dark discs (depth 1) and one dark blob (contamination,
    ``blob_depth``; by default ~3 boxes across), preprocessed as the picker does; returns
    (Preprocessed, blob centre (x, y), particle centres)."""
    shape = (1024, 1024)
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    raw = rng.normal(size=shape).astype(np.float32) + ramp * cols / shape[1]
    raw[np.hypot(cols - blob[0], rows - blob[1]) < radius] -= blob_depth
    particles: list[tuple[int, int]] = []
    while len(particles) < 20:
        x, y = int(rng.integers(40, shape[1] - 40)), int(rng.integers(40, shape[0] - 40))
        if np.hypot(x - blob[0], y - blob[1]) > radius + 80 and all(np.hypot(x - a, y - b) > 70 for a, b in particles):
            particles.append((x, y))
            raw[np.hypot(cols - x, rows - y) < 22] -= 1.0
    return preprocess(raw, 64.0), blob, particles


def test_dark_regions_mask_contamination_not_particles_or_ice_gradients() -> None:
    pre, (bx, by), particles = _contaminated_micrograph()
    mask = dark_regions(pre.image, 4.0)
    assert mask.shape == pre.image.shape
    rows, cols = np.mgrid[: mask.shape[0], : mask.shape[1]]
    dist = np.hypot(cols - bx, rows - by)
    assert mask[dist < 100].mean() > 0.95  # the blob
    assert mask[(dist > 100) & (dist < 120)].mean() > 0.5  # its rim, where picks gather
    assert not mask[dist > 100 + 1.5 * 64].any()  # nothing else: not the particles, not the gradient
    assert not any(mask[y, x] for x, y in particles)
    assert not dark_regions(pre.image, 0.0).any()
    # contamination cut by the edge of the micrograph, reaching 3.1 boxes in, is masked too (on
    # flat ice); the thin dark band a gradient leaves along an edge is not (checked above, and alone:)
    cut, _, _ = _contaminated_micrograph(ramp=0.0, blob=(0, 500), radius=200)
    assert dark_regions(cut.image)[500, :200].all()
    # a blob no darker than the particles is not contamination; a strong gradient alone masks nothing
    assert not dark_regions(_contaminated_micrograph(blob_depth=1.0)[0].image).any()
    assert not dark_regions(_contaminated_micrograph(ramp=10.0, blob_depth=0.0)[0].image).any()
    assert not dark_regions(np.zeros((300, 300), np.float32)).any()


def test_picks_on_dark_regions_are_dropped_unless_the_filter_is_off() -> None:
    pre, (bx, by), particles = _contaminated_micrograph()
    shape = ((pre.image.shape[0] - 64) // 4 + 1, (pre.image.shape[1] - 64) // 4 + 1)
    rim = (bx + 105, by)  # on the blob's rim
    keep = particles[0]
    peaks = [((y - 32) / 4, (x - 32) / 4, 5.0) for x, y in (rim, keep)]
    smap = _map_with_peaks(peaks, shape)
    on = find_candidates(smap, pre, PickParams(floor=0.01, outlier_fraction=1.0))
    off = find_candidates(smap, pre, PickParams(floor=0.01, outlier_fraction=1.0, dark_sigma=0.0))
    assert len(off) == 2 and len(on) == 1
    assert (on.loc[0, "x"], on.loc[0, "y"]) == pytest.approx(keep, abs=1.0)


def test_select_threshold_and_top_n() -> None:
    cand = pd.DataFrame({"x": [1.0, 2, 3, 4], "y": [1.0, 2, 3, 4], "score": [0.3, 0.9, 0.6, 0.8]})
    assert select(cand, 0.5)["score"].tolist() == [0.9, 0.8, 0.6]
    assert select(cand, 0.0, max_picks=2)["score"].tolist() == [0.9, 0.8]
    assert select_picks(cand, PickParams(threshold=0.7))["score"].tolist() == [0.9, 0.8]  # the job's threshold
    assert select_picks(cand, PickParams(threshold=0.5, max_picks=1))["score"].tolist() == [0.9]


def test_find_candidates_records_the_area_in_boxes() -> None:
    pre = _pre((40, 56), scale=0.5)
    cand = find_candidates(_map_with_peaks([(20, 20, 3.0)], (40, 56)), pre, PickParams(floor=0.01, outlier_fraction=1.0, dark_sigma=0.0))
    assert len(cand) == 1 and cand.attrs["area_boxes"] == pytest.approx(pre.image.size / 64**2)


def test_relion_job_and_cli_default_to_the_same_threshold() -> None:
    from deeppicker_relion.cli.main import build_parser
    from relion_external.pick import build_parser as relion_parser

    relion = relion_parser().parse_args(["--o", "x", "--in_mics", "m.star"])
    cli = build_parser("pick").parse_args(["pick", "m.mrc", "--box", "64", "-o", "x"])
    assert relion.threshold == cli.threshold == PickParams().threshold
    for retired in ("low_threshold", "min_confident", "confident_threshold"):  # the two-level rule is gone
        assert not hasattr(relion, retired) and not hasattr(cli, retired)


# --- evaluation ---------------------------------------------------------------------------------


def test_matching_is_one_to_one_best_score_first() -> None:
    ref = pd.DataFrame({"x": [100.0, 200.0], "y": [100.0, 100.0]})
    picks = pd.DataFrame({"x": [101.0, 99.0, 260.0], "y": [100.0, 100.0, 100.0], "score": [0.6, 0.9, 0.8]})
    matched, dist = match(picks, ref, radius=10)
    assert matched.tolist() == [0, -1, -1]  # 0.9 takes ref 0; 0.8 is too far; 0.6 finds ref 0 taken
    table = evaluate({"m": picks}, {"m": ref}, box_px=50)
    total = table.iloc[-1]
    assert (total.true_positives, total.precision, total.recall) == (1, pytest.approx(1 / 3), 0.5)
    assert total.centre_error == pytest.approx(1 / 50)


def test_topn_curve() -> None:
    ref = pd.DataFrame({"x": [10.0, 50.0, 90.0, 130.0], "y": [10.0] * 4})
    picks = pd.DataFrame({"x": [10.0, 300.0, 50.0, 90.0], "y": [10.0] * 4, "score": [0.9, 0.8, 0.7, 0.6]})
    curve = topn_curve({"m": picks}, {"m": ref}, box_px=20, ratios=[0.5, 1.0])
    assert curve["true_positives"].tolist() == [1, 3]
    assert curve["recall"].tolist() == [0.25, 0.75]
