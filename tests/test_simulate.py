"""Tests of the micrograph simulator: exact centres, contrast sign, SNR, CTF, determinism, files."""

from __future__ import annotations

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from scipy import ndimage
from scipy.spatial.transform import Rotation

from deeppicker_relion.simulation import simulate as sim

PIXEL = 5.0


def gaussian_volume(size: int = 33, sigma: float = 3.0, offset=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Gaussian blob, centred on voxel size // 2 plus ``offset`` (x, y, z) voxels; [z, y, x]."""
    g = np.arange(size) - size // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    r2 = (x - offset[0]) ** 2 + (y - offset[1]) ** 2 + (z - offset[2]) ** 2
    return np.exp(-r2 / (2 * sigma**2)).astype(np.float32)


def centroid(image: np.ndarray, x: float, y: float, radius: float) -> tuple[float, float]:
    """Intensity centroid (x, y) of ``image`` within ``radius`` of (x, y)."""
    rows, cols = np.indices(image.shape)
    w = image * (((cols - x) ** 2 + (rows - y) ** 2) <= radius**2)
    return float((w * cols).sum() / w.sum()), float((w * rows).sum() / w.sum())


@pytest.fixture(scope="module")
def small_molecule() -> tuple[np.ndarray, float]:
    return sim.synthetic_molecule(120.0, PIXEL, seed=7), PIXEL


# ---------------------------------------------------------------------------------------------- maps


def test_shipped_maps_load_with_pixel_size():
    names = sim.available_maps()
    assert names == ["erythrocruorin_2gtl", "hemoglobin_4hhb", "proteasome20S_3j9i", "tubulin_stathmin_1sa0"]
    volume, pixel = sim.load_map("hemoglobin")  # unique prefix
    assert volume.dtype == np.float32 and volume.shape == (32, 32, 32)
    assert pixel == pytest.approx(3.0)
    assert 60 < sim.estimate_diameter_A(volume, pixel) < 95  # 72 A molecule
    with pytest.raises(ValueError):
        sim.load_map("no_such_molecule")


def test_load_map_from_path(tmp_path):
    path = tmp_path / "blob.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(gaussian_volume(20))
        mrc.voxel_size = 2.5
    volume, pixel = sim.load_map(path)
    assert volume.shape == (20, 20, 20) and pixel == pytest.approx(2.5)


def test_synthetic_molecule_size_centre_and_seed():
    a = sim.synthetic_molecule(150.0, 4.0, seed=3)
    b = sim.synthetic_molecule(150.0, 4.0, seed=3)
    c = sim.synthetic_molecule(150.0, 4.0, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.ndim == 3 and len(set(a.shape)) == 1 and a.dtype == np.float32
    assert sim.estimate_diameter_A(a, 4.0) == pytest.approx(150.0, rel=0.15)
    com = np.array(ndimage.center_of_mass(np.clip(a, 0, None))) - a.shape[0] // 2
    assert np.abs(com).max() < 0.1
    for symmetry in ("C1", "C5", "D3"):
        assert sim.synthetic_molecule(100.0, 5.0, seed=1, symmetry=symmetry).max() > 0


# ------------------------------------------------------------------------------------------- centres


@pytest.mark.parametrize("pixel", [3.0, 4.3])
def test_particle_centres_are_exact_on_odd_non_square_micrograph(pixel):
    """Centrosymmetric blob, no CTF, no noise: the projected density's centroid is the given centre."""
    image, centres = sim.simulate_micrograph(
        (201, 317), pixel, [(gaussian_volume(), 3.0)], 6,
        defocus_um=None, snr=None, ice=0.0, mtf_falloff=0.0, seed=11,
    )  # fmt: skip
    assert image.shape == (201, 317)
    assert len(centres) == 6
    for x, y in centres[["x", "y"]].to_numpy():
        cx, cy = centroid(-image, x, y, radius=12 * 3.0 / pixel)
        assert abs(cx - x) < 0.05 and abs(cy - y) < 0.05
    # x is the column, y the row: the darkest pixel sits at [round(y), round(x)].
    x, y = centres.loc[0, ["x", "y"]]
    r, c = np.unravel_index(np.argmin(image[int(y) - 5 : int(y) + 6, int(x) - 5 : int(x) + 6]), (11, 11))
    assert (int(y) - 5 + r, int(x) - 5 + c) == (round(y), round(x))


def test_projection_of_off_centre_density_follows_the_rotation():
    """A blob at offset d from the map centre projects to box//2 + (R d)[:2] (x, y), scaled by pixel ratio."""
    offset = np.array([5.0, -3.0, 4.0])
    projector = sim.Projector(gaussian_volume(40, 2.0, offset), 3.0, 4.5)
    for seed in range(3):
        rot = Rotation.random(None, seed).as_matrix()
        image = projector.project(rot, shift=(0.3, -0.2))
        expect = projector.box // 2 + np.array([0.3, -0.2]) + (rot @ offset)[:2] * 3.0 / 4.5
        cx, cy = centroid(image, *expect, radius=6)
        assert abs(cx - expect[0]) < 0.05 and abs(cy - expect[1]) < 0.05


def test_fourier_projection_matches_real_space_projection():
    volume, pixel = sim.load_map("hemoglobin")
    n, c = volume.shape[0], volume.shape[0] // 2
    rot = Rotation.random(None, 5).as_matrix()
    g = np.arange(n) - c
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    src = rot.T @ np.stack([x.ravel(), y.ravel(), z.ravel()])
    direct = ndimage.map_coordinates(volume, src[::-1] + c, order=3).reshape(n, n, n).sum(axis=0) * pixel
    projector = sim.Projector(volume, pixel, pixel)
    b = projector.box // 2
    fourier = projector.project(rot)[b - c : b - c + n, b - c : b - c + n]
    low = lambda im: ndimage.gaussian_filter(im, 1.5)  # noqa: E731 (compare below the interpolation blur)
    assert np.abs(low(fourier) - low(direct)).max() < 0.03 * low(direct).max()
    assert fourier.sum() == pytest.approx(direct.sum(), rel=0.01)


# ------------------------------------------------------------------------------------ micrograph image


def test_same_seed_same_micrograph(small_molecule):
    kwargs = dict(n_contaminants=1, carbon_edge=True, seed=5)
    a = sim.simulate_micrograph((256, 300), PIXEL, [small_molecule], 10, **kwargs)
    b = sim.simulate_micrograph((256, 300), PIXEL, [small_molecule], 10, **kwargs)
    c = sim.simulate_micrograph((256, 300), PIXEL, [small_molecule], 10, n_contaminants=1, carbon_edge=True, seed=6)
    assert np.array_equal(a[0], b[0]) and a[1].equals(b[1])
    assert not np.array_equal(a[0], c[0])
    gen = sim.simulate_micrograph((256, 300), PIXEL, [small_molecule], 10, seed=np.random.default_rng(1))
    assert gen[0].dtype == np.float32


@pytest.mark.parametrize("shape", [(257, 385), (255, 129), (128, 401)])
def test_odd_and_non_square_shapes_respect_boundary(shape, small_molecule):
    image, centres = sim.simulate_micrograph(shape, PIXEL, [small_molecule], 15, boundary_px=10.0, seed=2)
    assert image.shape == shape
    assert len(centres) > 0
    assert (centres.x >= 10).all() and (centres.x <= shape[1] - 11).all()
    assert (centres.y >= 10).all() and (centres.y <= shape[0] - 11).all()


@pytest.mark.parametrize("min_distance", [0.6, 1.0])
def test_min_distance(min_distance, small_molecule):
    _, centres = sim.simulate_micrograph((256, 256), PIXEL, [small_molecule], 300, min_distance=min_distance, seed=3)
    assert 5 < len(centres) < 300  # the image fills up: fewer placed, no error
    xy = centres[["x", "y"]].to_numpy()
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.eye(len(xy)) * 1e9
    assert d.min() >= min_distance * centres.diameter_px.iloc[0] - 1e-6
    boundary = centres.diameter_px.iloc[0] / 2  # default: whole particles inside
    assert xy.min() >= boundary - 1e-6 and (xy[:, 0] <= 255 - boundary).all() and (xy[:, 1] <= 255 - boundary).all()


@pytest.mark.parametrize("defocus_um", [1.0, 2.5, None])
def test_particles_are_dark(defocus_um, small_molecule):
    parts = sim.simulate_micrograph_parts(
        (384, 384), PIXEL, [small_molecule], 25, defocus_um=defocus_um, snr=0.1, seed=4
    )
    low = ndimage.gaussian_filter(parts.image, parts.centres.diameter_px.iloc[0] / 4)  # low-pass to ~the size
    at_centres = low[parts.centres.y.round().astype(int), parts.centres.x.round().astype(int)]
    assert at_centres.mean() < low[~parts.particle_mask].mean() - 0.3 * low.std()


def test_snr_is_signal_variance_in_discs_over_noise_variance(small_molecule):
    for snr in (0.05, 0.5):
        parts = sim.simulate_micrograph_parts((512, 512), PIXEL, [small_molecule], 30, snr=snr, ice=0.0, seed=8)
        mask = parts.particle_mask
        assert np.allclose(parts.image, parts.signal + parts.noise + parts.background, atol=1e-4)
        measured = parts.signal[mask].var() / parts.noise.var()
        assert snr / 1.5 < measured < snr * 1.5
    # Independent of the returned parts: excess image variance inside the discs vs far from them.
    far = ndimage.distance_transform_edt(~mask) > 15
    excess = parts.image[mask].var() / parts.image[far].var() - 1
    assert 0.5 / 1.5 < excess < 0.5 * 1.5


def test_power_spectrum_shows_thon_rings():
    """Noise-only micrograph: its radial power spectrum dips at the CTF zeros and peaks between them."""
    defocus_A, pixel = 20000.0, 2.0
    parts = sim.simulate_micrograph_parts(
        (512, 512), pixel, [(gaussian_volume(), 3.0)], 0, defocus_um=defocus_A / 1e4, astigmatism_um=0.0,
        ice_noise_fraction=0.8, fog_fraction=0.0, b_factor_A2=50.0, ice=0.0, seed=1,
    )  # fmt: skip
    power = np.abs(np.fft.fft2(parts.image)) ** 2
    f = np.fft.fftfreq(512, d=pixel)
    s = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    lam = sim.electron_wavelength_A(300.0)
    chi = np.pi * lam * defocus_A * s**2 - 0.5 * np.pi * 2.7e7 * lam**3 * s**4
    ctf = sim.ctf_2d((512, 512), pixel, defocus_A, defocus_A)
    assert ctf[0, 0] == pytest.approx(-0.1)
    # First zero and first maximum of -(sqrt(1-Q^2) sin chi + Q cos chi):
    q = np.arctan2(0.1, np.sqrt(1 - 0.01))
    near_zero = np.abs(chi + q - np.pi) < 0.15
    near_max = np.abs(chi + q - np.pi / 2) < 0.15
    assert power[near_max].mean() > 3 * power[near_zero].mean()


def test_contamination_and_carbon_exclude_particles(small_molecule):
    parts = sim.simulate_micrograph_parts(
        (400, 400), PIXEL, [small_molecule], 40, n_contaminants=3, carbon_edge=True, snr=0.1, seed=9
    )
    assert parts.forbidden is not None and parts.forbidden.max() > 0.9
    at = parts.forbidden[parts.centres.y.round().astype(int), parts.centres.x.round().astype(int)]
    assert (at < 0.5).all()
    low = ndimage.gaussian_filter(parts.image, 3)
    assert low[parts.forbidden > 0.9].mean() < low[parts.forbidden < 0.1].mean()


@pytest.mark.parametrize("kind,dtype", [("uint16", np.uint16), ("int8", np.int8), ("random_affine", np.float32)])
def test_output_kinds(kind, dtype, small_molecule):
    image, _ = sim.simulate_micrograph((128, 160), PIXEL, [small_molecule], 3, output=kind, seed=1)
    assert image.dtype == dtype and image.shape == (128, 160)
    assert image.astype(float).std() > 0
    if kind != "random_affine":  # integers: rounded, but the noise still spans several levels
        assert len(np.unique(image)) > 10


# --------------------------------------------------------------------------------------------- dataset


def test_simulate_dataset_writes_relion_files(tmp_path, small_molecule):
    out = tmp_path / "sim"
    kwargs = dict(maps=[small_molecule, "hemoglobin"], seed=4, particles_per_micrograph=(3, 6), empty_fraction=0.4)
    table = sim.simulate_dataset(out, 5, (192, 241), PIXEL, **kwargs)
    assert len(table) == 5 and (table.n_particles == 0).any() and (table.n_particles > 0).any()
    blocks = starfile.read(out / "micrographs.star", always_dict=True)
    optics, mics = blocks["optics"], blocks["micrographs"]
    for column in ("rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographPixelSize", "rlnVoltage",
                   "rlnSphericalAberration", "rlnAmplitudeContrast"):  # fmt: skip
        assert column in optics.columns
    assert optics.rlnMicrographPixelSize.iloc[0] == pytest.approx(PIXEL)
    assert {"rlnMicrographName", "rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"} <= set(mics)
    assert ((mics.rlnDefocusU >= 0.9e4) & (mics.rlnDefocusU <= 3.6e4)).all()
    for row, name in zip(table.itertuples(), mics.rlnMicrographName):
        assert name == row.micrograph_path and not name.startswith("/")
        with mrcfile.open(out / name) as mrc:
            assert mrc.data.shape == (192, 241) and mrc.voxel_size.x == pytest.approx(PIXEL)
        coords = starfile.read(out / row.coords_path, always_dict=True)
        coords = next(iter(coords.values()))
        if row.n_particles:
            assert np.allclose(coords.rlnCoordinateX, row.centres.x, atol=1e-3)
            assert np.allclose(coords.rlnCoordinateY, row.centres.y, atol=1e-3)
        else:
            assert len(coords) == 0
    assert not list(out.rglob("*.tmp*"))  # atomic writes leave no temporary files
    with pytest.raises(FileExistsError):
        sim.simulate_dataset(out, 5, (192, 241), PIXEL, **kwargs)
    again = sim.simulate_dataset(tmp_path / "again", 5, (192, 241), PIXEL, **kwargs)
    for a, b in zip(table.micrograph_path, again.micrograph_path):
        assert np.array_equal(mrcfile.read(out / a), mrcfile.read(tmp_path / "again" / b))
    pd.testing.assert_frame_equal(table.drop(columns="centres"), again.drop(columns="centres"))
