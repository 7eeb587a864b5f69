"""CryoSPARC .cs output: real files through cryosparc-tools' Dataset, and the offline import path."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pandas as pd
import pytest

from deeppicker_relion.jobs.cryosparc_import import (
    REQUIRED_FIELDS,
    fill_output,
    import_to_cryosparc,
    load_particles_for_import,
    match_exposures,
    parse_output_ref,
)
from deeppicker_relion.errors import JobError
from deeppicker_relion.io.cryosparc import (
    PARTICLE_FIELDS,
    build_particles_dataset,
    from_fractions,
    micrograph_uid,
    read_particles_cs,
    to_fractions,
    write_particles_cs,
)

Dataset = pytest.importorskip("cryosparc.dataset").Dataset

MIC_A = "MotionCorr/job002/Movies/mic_a.mrc"
MIC_B = "MotionCorr/job002/Movies/mic_b.mrc"
MIC_C = "MotionCorr/job002/Movies/mic_c_empty.mrc"
SHAPES = {MIC_A: (511, 737), MIC_B: (737, 511), MIC_C: (4092, 5760)}  # (rows, cols)
PSIZES = {MIC_A: 1.06, MIC_B: 0.83, MIC_C: 1.5}

# CryoSPARC's field dtypes, as in cryosparc-tools tests/test_dataset.py and tests/conftest.py
EXPECTED_DTYPES = {
    "uid": ("<u8", ()),
    "location/micrograph_uid": ("<u8", ()),
    "location/exp_group_id": ("<u4", ()),
    "location/micrograph_path": ("|O", ()),
    "location/micrograph_shape": ("<u4", (2,)),
    "location/center_x_frac": ("<f4", ()),
    "location/center_y_frac": ("<f4", ()),
    "location/micrograph_psize_A": ("<f4", ()),
    "pick_stats/ncc_score": ("<f4", ()),
    "pick_stats/power": ("<f4", ()),
    "pick_stats/template_idx": ("<u4", ()),
    "pick_stats/angle_rad": ("<f4", ()),
}


def _picks(rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    def random_picks(n, shape):
        rows, cols = shape
        return pd.DataFrame(
            {"x": rng.uniform(0, cols - 1, n), "y": rng.uniform(0, rows - 1, n), "score": rng.uniform(0, 1, n)}
        )

    a = random_picks(40, SHAPES[MIC_A])
    # corners and edges of the non-square, odd-sized micrograph
    a.loc[len(a)] = [0.0, 0.0, 1.0]
    a.loc[len(a)] = [736.0, 510.0, 0.0]
    a.loc[len(a)] = [736.0, 0.0, 0.5]
    a.loc[len(a)] = [0.0, 510.0, 0.25]
    return {MIC_A: a, MIC_B: random_picks(25, SHAPES[MIC_B]), MIC_C: pd.DataFrame(columns=["x", "y", "score"])}


def _f32_bound(size: int) -> float:
    """Largest error of x -> float32(x / size) -> x * size for x in [0, size]."""
    return size * 2.0**-24 * 1.01


def test_written_file_has_cryosparc_fields_dtypes_and_fractions(tmp_path):
    picks = _picks(np.random.default_rng(0))
    path = tmp_path / "particles.cs"
    n = write_particles_cs(path, picks, SHAPES, PSIZES)
    assert n == 44 + 25

    ds = Dataset.load(path)
    assert len(ds) == n
    descr = {d[0]: (np.dtype(d[1]).str, tuple(d[2]) if len(d) > 2 else ()) for d in ds.descr()}
    assert descr == EXPECTED_DTYPES
    assert set(descr) == {"uid"} | {f[0] for f in PARTICLE_FIELDS}
    assert len(np.unique(ds["uid"])) == n

    # the file is also a plain numpy structured array, as pyem's csparc2star reads it
    arr = np.load(path, allow_pickle=False)
    assert arr.shape == (n,) and "location/center_x_frac" in arr.dtype.names

    paths = np.array([str(p) for p in ds["location/micrograph_path"]])
    assert set(paths) == {MIC_A, MIC_B}  # the empty micrograph has no rows
    for key in (MIC_A, MIC_B):
        sel = paths == key
        rows, cols = SHAPES[key]
        df = picks[key]
        assert (ds["location/micrograph_shape"][sel] == [rows, cols]).all()  # (rows, cols)
        assert (ds["location/micrograph_uid"][sel] == micrograph_uid(key)).all()
        np.testing.assert_allclose(ds["location/micrograph_psize_A"][sel], PSIZES[key], rtol=1e-6)
        # center_x_frac = x / cols, center_y_frac = y / rows (no flip by default)
        np.testing.assert_allclose(ds["location/center_x_frac"][sel], df["x"] / cols, rtol=0, atol=6e-8)
        np.testing.assert_allclose(ds["location/center_y_frac"][sel], df["y"] / rows, rtol=0, atol=6e-8)
        np.testing.assert_allclose(ds["pick_stats/ncc_score"][sel], df["score"], atol=6e-8)
        np.testing.assert_allclose(ds["pick_stats/power"][sel], df["score"], atol=6e-8)
        assert (ds["pick_stats/template_idx"][sel] == 0).all()
        assert (ds["pick_stats/angle_rad"][sel] == 0).all()
    assert micrograph_uid(MIC_A) != micrograph_uid(MIC_B)

    fx, fy = ds["location/center_x_frac"], ds["location/center_y_frac"]
    assert fx.min() >= 0 and fx.max() <= 1 and fy.min() >= 0 and fy.max() <= 1


def test_corner_fractions_on_511_x_737(tmp_path):
    picks = {MIC_A: pd.DataFrame({"x": [0.0, 736.0, 368.0], "y": [0.0, 510.0, 255.5], "score": [1, 1, 1]})}
    path = tmp_path / "c.cs"
    write_particles_cs(path, picks, SHAPES, PSIZES, exact=True)
    ds = Dataset.load(path)
    np.testing.assert_array_equal(ds["location/center_x_frac"], [0.0, 736 / 737, 368 / 737])
    np.testing.assert_array_equal(ds["location/center_y_frac"], [0.0, 510 / 511, 255.5 / 511])

    write_particles_cs(path, picks, SHAPES, PSIZES, exact=True, flip_y=True)
    ds = Dataset.load(path)
    np.testing.assert_array_equal(ds["location/center_x_frac"], [0.0, 736 / 737, 368 / 737])
    np.testing.assert_allclose(ds["location/center_y_frac"], [1.0, 1 - 510 / 511, 1 - 255.5 / 511], atol=1e-15)


@pytest.mark.parametrize("flip_y", [False, True])
def test_round_trip_exact(tmp_path, flip_y):
    picks = _picks(np.random.default_rng(1))
    path = tmp_path / "exact.cs"
    write_particles_cs(path, picks, SHAPES, PSIZES, exact=True, flip_y=flip_y)
    back = read_particles_cs(path, flip_y=flip_y)
    assert list(back) == [MIC_A, MIC_B]  # file order; empty micrograph absent
    for key, df in back.items():
        assert list(df.columns) == ["x", "y", "score"]
        assert all(df[c].dtype == np.float64 for c in df.columns)
        np.testing.assert_allclose(df["x"], picks[key]["x"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(df["y"], picks[key]["y"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(df["score"], picks[key]["score"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("flip_y", [False, True])
def test_round_trip_cryosparc_float32(tmp_path, flip_y):
    picks = _picks(np.random.default_rng(2))
    path = tmp_path / "f32.cs"
    write_particles_cs(path, picks, SHAPES, PSIZES, flip_y=flip_y)
    back = read_particles_cs(path, flip_y=flip_y)
    for key, df in back.items():
        rows, cols = SHAPES[key]
        assert np.abs(df["x"] - picks[key]["x"]).max() <= _f32_bound(cols)  # 4.4e-5 px for 737
        assert np.abs(df["y"] - picks[key]["y"]).max() <= _f32_bound(rows)
        np.testing.assert_allclose(df["score"], picks[key]["score"], atol=6e-8)


def test_flip_changes_only_y(tmp_path):
    picks = _picks(np.random.default_rng(3))
    write_particles_cs(tmp_path / "a.cs", picks, SHAPES, PSIZES, exact=True)
    write_particles_cs(tmp_path / "b.cs", picks, SHAPES, PSIZES, exact=True, flip_y=True)
    a = read_particles_cs(tmp_path / "a.cs")
    b = read_particles_cs(tmp_path / "b.cs")  # read without flip: mirrored in y
    for key in a:
        rows, _ = SHAPES[key]
        np.testing.assert_allclose(a[key]["x"], b[key]["x"], atol=1e-9)
        np.testing.assert_allclose(b[key]["y"], rows - a[key]["y"], atol=1e-9)


def test_fraction_helpers_are_inverse():
    x, y = np.array([0.0, 10.25, 736.0]), np.array([0.0, 3.5, 510.0])
    for flip in (False, True):
        xf, yf = to_fractions(x, y, (511, 737), flip_y=flip)
        x2, y2 = from_fractions(xf, yf, (511, 737), flip_y=flip)
        np.testing.assert_allclose(x2, x, atol=1e-12)
        np.testing.assert_allclose(y2, y, atol=1e-12)


def test_only_empty_micrographs(tmp_path):
    path = tmp_path / "none.cs"
    empty = {MIC_C: pd.DataFrame({"x": [], "y": [], "score": []})}
    assert write_particles_cs(path, empty, SHAPES, PSIZES) == 0
    ds = Dataset.load(path)
    assert len(ds) == 0 and "location/center_x_frac" in ds
    assert read_particles_cs(path) == {}
    # an empty micrograph needs neither a shape nor a pixel size
    assert write_particles_cs(path, {"unknown.mrc": pd.DataFrame({"x": [], "y": []})}, {}, {}) == 0


def test_atomic_write_leaves_no_temp_files(tmp_path):
    out = tmp_path / "out"
    picks = _picks(np.random.default_rng(4))
    write_particles_cs(out / "particles.cs", picks, SHAPES, PSIZES)
    assert [p.name for p in out.iterdir()] == ["particles.cs"]
    before = (out / "particles.cs").read_bytes()

    bad = dict(picks)
    bad[MIC_B] = pd.DataFrame({"x": [600.0], "y": [10.0], "score": [0.5]})  # x > cols = 511
    with pytest.raises(JobError, match="outside"):
        write_particles_cs(out / "particles.cs", bad, SHAPES, PSIZES)
    assert [p.name for p in out.iterdir()] == ["particles.cs"]
    assert (out / "particles.cs").read_bytes() == before


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p, s, z: s.pop(MIC_A), "no micrograph shape"),
        (lambda p, s, z: z.pop(MIC_A), "no pixel size"),
        (lambda p, s, z: s.__setitem__(MIC_A, (0, 737)), "invalid micrograph shape"),
        (lambda p, s, z: z.__setitem__(MIC_A, float("nan")), "invalid pixel size"),
        (lambda p, s, z: p[MIC_A].__setitem__("y", -1.0), "outside"),
        (lambda p, s, z: p[MIC_A].__setitem__("x", np.nan), "NaN"),
        (lambda p, s, z: p[MIC_A].__setitem__("score", 1.5), r"\[0, 1\]"),
        (lambda p, s, z: p.__setitem__(MIC_A, p[MIC_A].drop(columns="x")), "no 'x' column"),
    ],
)
def test_invalid_input_is_a_job_error(tmp_path, change, match):
    picks = {k: v.copy() for k, v in _picks(np.random.default_rng(5)).items()}
    shapes, psizes = dict(SHAPES), dict(PSIZES)
    change(picks, shapes, psizes)
    with pytest.raises(JobError, match=match):
        write_particles_cs(tmp_path / "x.cs", picks, shapes, psizes)
    assert list(tmp_path.iterdir()) == []


def test_optional_columns_and_exposure_groups(tmp_path):
    df = pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0], "power": [7.5, 8.5], "angle_rad": [0.1, 0.2]})
    path = tmp_path / "o.cs"
    write_particles_cs(path, {MIC_A: df}, SHAPES, PSIZES, exp_group_ids={MIC_A: 3})
    ds = Dataset.load(path)
    np.testing.assert_allclose(ds["pick_stats/ncc_score"], 1.0)  # no score column -> 1
    np.testing.assert_allclose(ds["pick_stats/power"], [7.5, 8.5])
    np.testing.assert_allclose(ds["pick_stats/angle_rad"], [0.1, 0.2], rtol=1e-6)
    assert (ds["location/exp_group_id"] == 3).all()


def test_micrograph_uid_is_stable_and_uses_cryosparc_prefix():
    assert micrograph_uid("a/b.mrc") == micrograph_uid("a/b.mrc")
    assert micrograph_uid("a/b.mrc") != micrograph_uid("a/c.mrc")
    assert 0 <= micrograph_uid("a/b.mrc") < 2**64
    # T20S example of cryosparc-tools' tests/conftest.py: file-name prefix == micrograph uid
    name = "J14/motioncorrected/012951868257382468663_14sep05c_00024sq_00004hl_00002es.frames_patch_aligned_doseweighted.mrc"
    assert micrograph_uid(name) == 12951868257382468663


def test_read_rejects_non_particle_files(tmp_path):
    with pytest.raises(JobError, match="not found"):
        read_particles_cs(tmp_path / "missing.cs")
    junk = tmp_path / "junk.cs"
    junk.write_bytes(b"not a dataset")
    with pytest.raises(JobError):
        read_particles_cs(junk)
    mics = Dataset.allocate(2, [("micrograph_blob/path", "O")])
    mics.save(tmp_path / "mics.cs")
    with pytest.raises(JobError, match="missing field"):
        read_particles_cs(tmp_path / "mics.cs")


def test_read_cryosparc_style_file_without_pick_stats(tmp_path):
    # a passthrough location slot as CryoSPARC writes it (cryosparc-tools tests/conftest.py)
    ds = Dataset.allocate(2, [f for f in PARTICLE_FIELDS if f[0].startswith("location/")])
    ds["location/micrograph_path"] = np.array(["J14/motioncorrected/m.mrc"] * 2, dtype=object)
    ds["location/micrograph_shape"] = np.array([[7676, 7420]] * 2)
    ds["location/center_x_frac"] = [0.22586207, 0.5]
    ds["location/center_y_frac"] = [0.10166667, 0.25]
    ds.save(tmp_path / "p.cs")
    back = read_particles_cs(tmp_path / "p.cs")
    df = back["J14/motioncorrected/m.mrc"]
    np.testing.assert_allclose(df["x"], [0.22586207 * 7420, 0.5 * 7420], rtol=1e-6)
    np.testing.assert_allclose(df["y"], [0.10166667 * 7676, 0.25 * 7676], rtol=1e-6)
    np.testing.assert_allclose(df["score"], 1.0)


# ----------------------------------------------------------------------------- import (offline)


def _written(tmp_path, picks=None, **kw):
    path = tmp_path / "particles.cs"
    write_particles_cs(path, picks or _picks(np.random.default_rng(6)), SHAPES, PSIZES, **kw)
    return path


def _exposures(shapes=SHAPES, names=(MIC_A, MIC_B, MIC_C)):
    """A micrographs output as CryoSPARC's Import Micrographs makes it (uid-prefixed names)."""
    ds = Dataset.allocate(
        len(names),
        [
            ("micrograph_blob/path", "O"),
            ("micrograph_blob/shape", "<u4", (2,)),
            ("micrograph_blob/psize_A", "<f4"),
            ("mscope_params/exp_group_id", "<u4"),
        ],
    )
    uids = np.asarray(ds["uid"])
    ds["micrograph_blob/path"] = np.array(
        [f"J3/imported/{u:021d}_{n.rsplit('/', 1)[-1]}" for u, n in zip(uids, names)], dtype=object
    )
    ds["micrograph_blob/shape"] = np.array([shapes[n] for n in names])
    ds["micrograph_blob/psize_A"] = [1.0, 2.0, 3.0][: len(names)]
    ds["mscope_params/exp_group_id"] = [5, 6, 7][: len(names)]
    return ds


def test_load_particles_for_import(tmp_path):
    ds = load_particles_for_import(_written(tmp_path))
    assert len(ds) == 69
    assert set(REQUIRED_FIELDS) <= set(ds.fields())
    # float64 fractions of an exact=True file are brought back to CryoSPARC's float32
    exact = load_particles_for_import(_written(tmp_path, exact=True))
    assert np.dtype(dict((d[0], d[1]) for d in exact.descr())["location/center_x_frac"]).str == "<f4"


def test_load_particles_for_import_rejects_bad_files(tmp_path):
    with pytest.raises(JobError, match="not found"):
        load_particles_for_import(tmp_path / "nope.cs")
    empty = tmp_path / "empty.cs"
    write_particles_cs(empty, {}, {}, {})
    with pytest.raises(JobError, match="no particles"):
        load_particles_for_import(empty)
    ds = Dataset.load(_written(tmp_path))
    ds.drop_fields(["pick_stats/ncc_score"])
    ds.save(tmp_path / "noscore.cs")
    with pytest.raises(JobError, match="ncc_score"):
        load_particles_for_import(tmp_path / "noscore.cs")
    ds = Dataset.load(_written(tmp_path))
    ds["location/center_x_frac"][0] = 1.5
    ds.save(tmp_path / "frac.cs")
    with pytest.raises(JobError, match=r"\[0, 1\]"):
        load_particles_for_import(tmp_path / "frac.cs")


def test_match_exposures(tmp_path):
    particles = load_particles_for_import(_written(tmp_path))
    exposures = _exposures()
    matched = match_exposures(particles, exposures)
    old_paths = np.array([str(p) for p in particles["location/micrograph_path"]])
    for key, j, psize, group in ((MIC_A, 0, 1.0, 5), (MIC_B, 1, 2.0, 6)):
        sel = old_paths == key
        assert (matched["location/micrograph_uid"][sel] == exposures["uid"][j]).all()
        assert {str(p) for p in matched["location/micrograph_path"][sel]} == {exposures["micrograph_blob/path"][j]}
        assert (matched["location/exp_group_id"][sel] == group).all()
        np.testing.assert_allclose(matched["location/micrograph_psize_A"][sel], psize)
    # coordinates untouched, input untouched
    np.testing.assert_array_equal(matched["location/center_x_frac"], particles["location/center_x_frac"])
    np.testing.assert_array_equal(matched["uid"], particles["uid"])
    assert set(old_paths) == {MIC_A, MIC_B}


def test_match_exposures_errors(tmp_path):
    particles = load_particles_for_import(_written(tmp_path))
    with pytest.raises(JobError, match="not found"):
        match_exposures(particles, _exposures(names=(MIC_A,)))
    wrong = dict(SHAPES)
    wrong[MIC_B] = (511, 737)
    with pytest.raises(JobError, match="511 x 737"):
        match_exposures(particles, _exposures(shapes=wrong))
    twice = _exposures()
    twice["micrograph_blob/path"][2] = twice["micrograph_blob/path"][0].replace("J3/", "J4/")
    with pytest.raises(JobError, match="several"):
        match_exposures(particles, twice)


def test_fill_output_copies_fields_and_keeps_server_extras(tmp_path):
    particles = load_particles_for_import(_written(tmp_path))
    # what job.alloc_output(name, particles) returns: the particles' uids + the server's fields
    server_fields = [f for f in PARTICLE_FIELDS] + [("location/min_dist_A", "<f4")]
    allocated = Dataset({"uid": particles["uid"]}).add_fields(server_fields)
    with pytest.warns(UserWarning, match="min_dist_A"):
        out = fill_output(allocated, particles)
    for name, *_ in PARTICLE_FIELDS:
        np.testing.assert_array_equal(out[name], particles[name])
    assert (out["location/min_dist_A"] == 0).all()

    shuffled = Dataset({"uid": particles["uid"][::-1]}).add_fields(server_fields)
    with pytest.raises(JobError, match="uids"):
        fill_output(shuffled, particles)


def test_parse_output_ref():
    assert parse_output_ref("J3:imported_micrographs") == ("J3", "imported_micrographs")
    assert parse_output_ref(("J12", "exposures_accepted")) == ("J12", "exposures_accepted")
    for bad in ("J3", "3:mics", "J3:", "J3:bad name", ("J3",)):
        with pytest.raises(JobError):
            parse_output_ref(bad)


class _FakeJob:
    """Records the cryosparc-tools calls of an ExternalJobController."""

    def __init__(self, log, exposures, extra_fields=()):
        self.uid = "J42"
        self.log = log
        self.exposures = exposures
        self.extra_fields = list(extra_fields)
        self.saved = None
        self.status = "building"

    def load_output(self, name):
        self.log.append(("load_output", name))
        return self.exposures

    def connect(self, target, job_uid, output, slots=()):
        self.log.append(("connect", target, job_uid, output, tuple(slots)))

    def add_output(self, type, name, slots=()):
        self.log.append(("add_output", type, name, tuple(slots)))
        self.output = (type, name)

    @contextlib.contextmanager
    def run(self):
        self.status = "running"
        try:
            yield self
        except Exception:
            self.status = "failed"
            raise
        self.status = "completed"

    def alloc_output(self, name, alloc):
        assert self.status == "running"
        self.log.append(("alloc_output", name))
        return Dataset({"uid": alloc["uid"]}).add_fields(list(PARTICLE_FIELDS) + self.extra_fields)

    def save_output(self, name, dataset):
        assert self.status == "running"
        self.log.append(("save_output", name))
        self.saved = dataset


class _FakeCryoSPARC:
    def __init__(self, exposures=None, extra_fields=()):
        self.log = []
        self.job = _FakeJob(self.log, exposures, extra_fields)

    def find_job(self, project_uid, job_uid):
        self.log.append(("find_job", project_uid, job_uid))
        return self.job

    def create_external_job(self, project_uid, workspace_uid, title="", desc=""):
        self.log.append(("create_external_job", project_uid, workspace_uid, title))
        return self.job


def test_import_to_cryosparc_with_fake_server(tmp_path):
    path = _written(tmp_path)
    exposures = _exposures()
    fake = _FakeCryoSPARC(exposures)
    uid = import_to_cryosparc(
        path, project_uid="P3", workspace_uid="W1", title="picks", micrographs="J3:imported_micrographs", client=fake
    )
    assert uid == "J42"
    assert fake.job.status == "completed"
    assert fake.log == [
        ("find_job", "P3", "J3"),
        ("load_output", "imported_micrographs"),
        ("create_external_job", "P3", "W1", "picks"),
        ("connect", "micrographs", "J3", "imported_micrographs", ("micrograph_blob",)),
        ("add_output", "particle", "particles", ("location", "pick_stats")),
        ("alloc_output", "particles"),
        ("save_output", "particles"),
    ]
    saved = fake.job.saved
    particles = Dataset.load(path)
    assert len(saved) == len(particles)
    np.testing.assert_array_equal(saved["uid"], particles["uid"])
    assert set(np.unique(saved["location/micrograph_uid"])) == {exposures["uid"][0], exposures["uid"][1]}
    np.testing.assert_array_equal(saved["location/center_y_frac"], particles["location/center_y_frac"])


def test_import_to_cryosparc_validates_before_creating_a_job(tmp_path):
    fake = _FakeCryoSPARC(_exposures(names=(MIC_A,)))  # MIC_B missing on the server
    with pytest.raises(JobError, match="not found"):
        import_to_cryosparc(
            _written(tmp_path), project_uid="P3", workspace_uid="W1", micrographs="J3:imported_micrographs", client=fake
        )
    assert not any(call[0] == "create_external_job" for call in fake.log)

    fake = _FakeCryoSPARC()
    with pytest.raises(JobError, match="not found"):
        import_to_cryosparc(tmp_path / "missing.cs", project_uid="P3", workspace_uid="W1", client=fake)
    assert fake.log == []


def test_import_without_micrographs_warns(tmp_path):
    fake = _FakeCryoSPARC()
    with pytest.warns(UserWarning, match="no CryoSPARC micrographs"):
        uid = import_to_cryosparc(_written(tmp_path), project_uid="P3", workspace_uid="W1", client=fake)
    assert uid == "J42" and fake.job.status == "completed"
    assert [c[0] for c in fake.log] == ["create_external_job", "add_output", "alloc_output", "save_output"]


def test_import_marks_job_failed_when_saving_fails(tmp_path):
    fake = _FakeCryoSPARC()

    def boom(name, dataset):
        raise RuntimeError("server said no")

    fake.job.save_output = boom
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="server said no"):
            import_to_cryosparc(_written(tmp_path), project_uid="P3", workspace_uid="W1", client=fake)
    assert fake.job.status == "failed"


def test_real_client_api_names_exist():
    """The cryosparc-tools 5 methods import_to_cryosparc calls exist with the expected names."""
    from cryosparc.controllers.job import ExternalJobController, JobController
    from cryosparc.tools import CryoSPARC

    for name in ("find_job", "create_external_job"):
        assert callable(getattr(CryoSPARC, name))
    assert callable(JobController.load_output)
    for name in ("connect", "add_output", "alloc_output", "save_output", "run", "start", "stop"):
        assert callable(getattr(ExternalJobController, name))


def test_connect_maps_arguments_to_cryosparc_tools(monkeypatch):
    import cryosparc.tools

    from deeppicker_relion.jobs.cryosparc_import import connect

    calls = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            calls.append((args, kwargs))

    monkeypatch.setattr(cryosparc.tools, "CryoSPARC", Recorder)
    connect("https://cs.example.org", email="a@b.c", password="pw")
    connect(host="node1", port=61000, email="a@b.c", password="pw")
    connect(host="node1", port="39000", license="abc")
    assert calls[0] == ((), {"base_url": "https://cs.example.org", "email": "a@b.c", "password": "pw", "timeout": 300})
    assert calls[1] == ((), {"host": "node1", "base_port": 61000, "email": "a@b.c", "password": "pw", "timeout": 300})
    assert calls[2][1]["license"] == "abc" and calls[2][1]["base_port"] == "39000"
    with pytest.raises(JobError, match="not both"):
        connect("https://cs.example.org", host="node1")


def test_cryosparc_import_cli_validates_before_contacting_a_server(tmp_path, monkeypatch, capsys):
    """`deeppicker cryosparc-import` refuses a missing or invalid .cs with one line, before any
    connection (the server part itself needs a running CryoSPARC and cannot run here)."""
    from deeppicker_relion.cli.main import main as cli

    monkeypatch.setenv("CRYOSPARC_PASSWORD", "unused")
    assert cli(["cryosparc-import", str(tmp_path / "missing.cs"), "--project", "P1", "--workspace", "W1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.cs" in err[0]
