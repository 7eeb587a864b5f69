"""The size check (deeppicker_relion/picking/sizecheck.py): the search rule on given counts, the shipped
model on generated micrographs, and its place in pick jobs (record, rethreshold, RELION continue)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from conftest import blob_micrograph, write_mrc
from deeppicker_relion.picking import sizecheck
from deeppicker_relion.model import default_weights_path, load_model
from deeppicker_relion.picking.pipeline import ParticleSize
from deeppicker_relion.picking.sizecheck import STEP, apply_size_check, check_size, recorded_factor, scaled_size


def _mics(tmp_path: Path, images: list[np.ndarray], stem: str = "m") -> pd.DataFrame:
    paths = [str(write_mrc(tmp_path / f"{stem}{i}.mrc", img)) for i, img in enumerate(images)]
    return pd.DataFrame({"name": paths, "path": paths})


def _with_counts(monkeypatch, counts_at) -> None:
    """Replace the scoring with a count per micrograph that depends only on the box tried."""
    monkeypatch.setattr(sizecheck, "count_confident", lambda model, mic, box, params, device: counts_at(box))


@pytest.fixture
def three_noise_mics(tmp_path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return _mics(tmp_path, [rng.normal(0, 1, (300, 300)).astype(np.float32) for _ in range(3)], "noise")


def _peaked_at(true_box: float, fragments: bool = False):
    """Confident candidates per micrograph: 40 at the particle's box, falling off on both sides;
    with ``fragments``, a box too small finds 25 at x 0.75 and more and more below it (particles
    broken into parts, as with haemoglobin given 0.76 x its diameter)."""

    def counts(box: float) -> int:
        ratio = box / true_box
        if ratio > 1.25:
            return int(40 / ratio**6)
        if ratio < 0.8:
            return int(25 * (0.75 / ratio) ** 3) if fragments else int(40 * ratio**4)
        return 40

    return counts


@pytest.mark.parametrize("given, true_box, fragments, expected", [
    (40.0, 40.0, False, 1.0),  # right: stays
    (40.0, 80.0, False, STEP**2),  # too small (a hollow particle's inner ring): up twice
    (80.0, 40.0, False, 1 / STEP**2),  # too large (the extraction box): down twice
    (30.0, 40.0, False, STEP),  # a bit too small: up once
    (30.0, 40.0, True, 1.0),  # the larger size gains under 2 x; fragments fill the smaller ones: no move down
    (60.0, 40.0, True, 1 / STEP),  # too large: down, then fragments do not pull it further
])  # fmt: skip
def test_search_moves_only_on_a_clear_gain_and_not_towards_fragments(
    monkeypatch, three_noise_mics: pd.DataFrame, given, true_box, fragments, expected
) -> None:
    _with_counts(monkeypatch, _peaked_at(true_box, fragments))
    check = check_size(three_noise_mics, model=None, size=ParticleSize(box_px=given))
    assert check.factor == pytest.approx(expected, rel=1e-5)
    assert len(check.samples) == 3


def test_search_needs_enough_confident_candidates(monkeypatch, three_noise_mics: pd.DataFrame) -> None:
    # 0 -> 2 per micrograph is "twice as many" but below MIN_PER_MICROGRAPH: noise, no move
    _with_counts(monkeypatch, lambda box: 2 if box > 50 else 0)
    assert check_size(three_noise_mics, None, ParticleSize(box_px=40.0)).factor == 1.0
    _with_counts(monkeypatch, lambda box: 5 if box > 50 else 0)
    assert check_size(three_noise_mics, None, ParticleSize(box_px=40.0)).factor == pytest.approx(STEP)


def test_search_never_tries_boxes_below_the_minimum_or_over_half_the_micrograph(
    monkeypatch, three_noise_mics: pd.DataFrame
) -> None:
    tried: list[float] = []

    def counts(box: float) -> int:
        tried.append(box)
        return 100 if box < 25 else 1

    _with_counts(monkeypatch, counts)
    assert check_size(three_noise_mics, None, ParticleSize(box_px=26.0)).factor == 1.0  # 26 / 1.4 < 20 px
    assert min(tried) >= sizecheck.MIN_BOX_PX and max(tried) <= 150
    _with_counts(monkeypatch, lambda box: 100 if box > 120 else 1)
    assert check_size(three_noise_mics, None, ParticleSize(box_px=110.0)).factor == 1.0  # 154 px > 300 / 2
    _with_counts(monkeypatch, lambda box: 100 if box > 25 else 1)
    assert check_size(three_noise_mics, None, ParticleSize(box_px=18.0)).factor == pytest.approx(STEP)  # 18 px is scored


@pytest.fixture(scope="module")
def shipped():
    if not default_weights_path().is_file():
        pytest.skip("the shipped model is missing")
    return load_model(None)[0]


def test_shipped_model_finds_the_size_of_blobs_given_too_small(tmp_path: Path, shipped) -> None:
    images = [blob_micrograph(seed, shape=(400, 400), n=14, box=32.0)[0] for seed in range(3)]
    mics = _mics(tmp_path, images)
    assert check_size(mics, shipped, ParticleSize(box_px=32.0)).factor == 1.0
    found = check_size(mics, shipped, ParticleSize(box_px=24.0))  # 0 confident candidates at 24 px
    assert found.factor > 1.0 and 28 <= 24 * found.factor <= 50
    assert found.counts[1.0] < found.counts[round(found.factor, 6)] / 2


def test_shipped_model_leaves_the_size_of_pure_noise_alone(three_noise_mics: pd.DataFrame, shipped) -> None:
    for box in (24.0, 64.0):
        check = check_size(three_noise_mics, shipped, ParticleSize(box_px=box))
        assert check.factor == 1.0, check.counts


def test_diameter_in_angstrom_scales_with_each_micrographs_pixel_size(monkeypatch, tmp_path: Path) -> None:
    boxes: list[float] = []
    _with_counts(monkeypatch, lambda box: boxes.append(box) or 0)
    noise = np.random.default_rng(1).normal(0, 1, (200, 200)).astype(np.float32)
    paths = [str(write_mrc(tmp_path / f"{name}.mrc", noise, px)) for name, px in (("a", 2.0), ("b", 4.0))]
    mics = pd.DataFrame({"name": paths, "path": paths})
    check_size(mics, None, ParticleSize(diameter_A=160.0))
    assert {80.0, 40.0} <= set(np.round(boxes, 6))
    assert scaled_size(ParticleSize(diameter_A=160.0), 1.4).diameter_A == pytest.approx(224.0)
    assert scaled_size(ParticleSize(box_px=40.0), 0.5).box_px == pytest.approx(20.0)


def test_apply_records_adopts_warns_and_reuses(monkeypatch, three_noise_mics: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "job"
    out.mkdir()
    _with_counts(monkeypatch, _peaked_at(80.0))
    given = ParticleSize(box_px=40.0)
    size, note = apply_size_check(three_noise_mics, None, given, "warn", out)
    assert size == given and "not adopted" in note
    assert recorded_factor(out, given) == 1.0  # warn picks at the given size
    size, note = apply_size_check(three_noise_mics, None, given, "adopt", out)
    assert size.box_px == pytest.approx(40.0 * STEP**2) and "adopted" in note
    record = json.loads((out / sizecheck.RECORD).read_text())
    assert record["factor_used"] == pytest.approx(STEP**2) and record["mode"] == "adopt"
    assert recorded_factor(out, given) == pytest.approx(STEP**2)
    assert recorded_factor(out, ParticleSize(box_px=41.0)) == 1.0  # recorded for another size
    # a resumed job takes the recorded size without scoring again
    _with_counts(monkeypatch, lambda box: pytest.fail("scored again"))
    size, _ = apply_size_check(three_noise_mics, None, given, "adopt", out, reuse=True)
    assert size.box_px == pytest.approx(40.0 * STEP**2)
    assert apply_size_check(three_noise_mics, None, given, "off", out) == (given, None)
    # ... but once micrographs were picked at the adopted size, another mode would mix two sizes
    from deeppicker_relion.errors import JobError

    _with_counts(monkeypatch, _peaked_at(80.0))
    for mode in ("warn", "off"):
        with pytest.raises(JobError, match=r"2 micrographs here were picked at the given size x 1.96.*--overwrite"):
            apply_size_check(three_noise_mics, None, given, mode, out, reuse=True, picked_before=2)
    assert recorded_factor(out, given) == pytest.approx(STEP**2)  # the record is left as it was


def test_auto_adopts_strong_findings_of_cross_molecule_models_only(monkeypatch, three_noise_mics: pd.DataFrame,
                                                                    tmp_path: Path) -> None:
    """auto picks at the size the strong search finds (STRONG_PER_MICROGRAPH confident candidates per
    micrograph at every step) when the model was calibrated across molecules; otherwise it warns."""
    from types import SimpleNamespace

    general = SimpleNamespace(augment_calibration={2: (2.0, -2.0)})  # what load_model sets from the metadata
    user = SimpleNamespace(augment_calibration={})
    given = ParticleSize(box_px=40.0)
    def strong(box: float) -> int:  # 40 per micrograph at the particle's size (56 px), 4 elsewhere
        return 40 if abs(box / 56.0 - 1) < 0.01 else 4

    _with_counts(monkeypatch, strong)
    size, note = apply_size_check(three_noise_mics, general, given, "auto", tmp_path / "a")
    assert size.box_px == pytest.approx(56.0) and "adopted" in note
    record = json.loads((tmp_path / "a" / sizecheck.RECORD).read_text())
    assert record["mode"] == "auto" and record["factor_used"] == record["factor_strong"] == pytest.approx(STEP)
    size, note = apply_size_check(three_noise_mics, user, given, "auto", tmp_path / "b")
    assert size == given and "only a cross-molecule model's size is adopted" in note
    assert recorded_factor(tmp_path / "b", given) == 1.0
    # weak: the lenient search moves (adopt would), the strong one does not
    _with_counts(monkeypatch, lambda box: strong(box) // 4)  # 10 per micrograph at the particle's size
    size, note = apply_size_check(three_noise_mics, general, given, "auto", tmp_path / "c")
    assert size == given and "too few confident candidates" in note
    record = json.loads((tmp_path / "c" / sizecheck.RECORD).read_text())
    assert record["factor_found"] == pytest.approx(STEP) and record["factor_strong"] == 1.0
    assert apply_size_check(three_noise_mics, general, given, "adopt", tmp_path / "d")[0].box_px == pytest.approx(56.0)
    # the strong search only moves up: a smaller size (fragments and noise of a low-SNR micrograph, or
    # a given diameter that is too large) is only warned about
    _with_counts(monkeypatch, lambda box: {40.0: 1, 28.57: 10}.get(round(box, 2), 23 if box < 28 else 0))
    check = check_size(three_noise_mics, general, given)
    assert check.strong_factor == 1.0 and check.factor < 1.0
    _with_counts(monkeypatch, _peaked_at(20.0))  # given twice the particle's size, 40 per micrograph there
    size, note = apply_size_check(three_noise_mics, general, given, "auto", tmp_path / "e")
    assert size == given and "too few confident candidates" not in note and "not adopted" in note
    assert json.loads((tmp_path / "e" / sizecheck.RECORD).read_text())["factor_found"] == pytest.approx(1 / STEP**2)


def test_shipped_model_is_cross_molecule_and_a_new_one_is_not() -> None:
    from deeppicker_relion.model import build_model

    assert sizecheck.cross_molecule(load_model()[0])
    assert not sizecheck.cross_molecule(build_model("deeppicker2016-wide")) and not sizecheck.cross_molecule(None)


def test_cli_pick_warns_adopts_on_request_and_rethreshold_keeps_the_size(tmp_path: Path, shipped, capsys) -> None:
    from deeppicker_relion.cli.main import main as cli

    for seed in range(3):
        write_mrc(tmp_path / "mics" / f"mic{seed}.mrc", blob_micrograph(seed, shape=(400, 400), n=14, box=32.0)[0])
    warned = tmp_path / "warned"
    cli(["pick", str(tmp_path / "mics" / "*.mrc"), "--box", "24", "-o", str(warned), "--no-report",
         "--size-check", "warn"])
    err = capsys.readouterr().err
    assert "WARNING" in err and "check the particle size" in err and "box 33.6 px" in err
    record = json.loads((warned / sizecheck.RECORD).read_text())
    assert record["mode"] == "warn" and record["factor_found"] > 1.0 and record["factor_used"] == 1.0
    summary = next(iter(starfile.read(warned / "picking_summary.star", always_dict=True).values()))
    assert np.allclose(summary["box_px"], 24.0)
    out = tmp_path / "picks"
    assert cli(["pick", str(tmp_path / "mics" / "*.mrc"), "--box", "24", "-o", str(out), "--no-report",
                "--size-check", "adopt"]) == 0
    record = json.loads((out / sizecheck.RECORD).read_text())
    used = 24 * record["factor_used"]
    assert record["factor_used"] > 1.0
    summary = next(iter(starfile.read(out / "picking_summary.star", always_dict=True).values()))
    assert np.allclose(summary["box_px"], used)
    assert cli(["pick", str(tmp_path / "mics" / "*.mrc"), "--box", "24", "-o", str(out), "--no-report",
                "--size-check", "adopt", "--rethreshold", "--threshold", "0.6"]) == 0
    summary = next(iter(starfile.read(out / "picking_summary.star", always_dict=True).values()))
    assert np.allclose(summary["box_px"], used)  # the size recorded is the size picked at
    # the same folder again with --size-check warn would pick new micrographs at another size
    write_mrc(tmp_path / "mics" / "mic3.mrc", blob_micrograph(3, shape=(400, 400), n=14, box=32.0)[0])
    capsys.readouterr()
    assert cli(["pick", str(tmp_path / "mics" / "*.mrc"), "--box", "24", "-o", str(out), "--no-report",
                "--size-check", "warn"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "3 micrographs here were picked at the given size x 1.40" in err, err
    assert not (out / "micrographs" / "mic3_deeppicker.star").exists() and not list(out.rglob("mic3*"))
    off = tmp_path / "off"
    # 0 picks at 24 px: exit code 1 ("no micrograph picked"), but every micrograph is processed
    cli(["pick", str(tmp_path / "mics" / "*.mrc"), "--box", "24", "-o", str(off), "--no-report", "--size-check", "off"])
    assert not (off / sizecheck.RECORD).exists()
    summary = next(iter(starfile.read(off / "picking_summary.star", always_dict=True).values()))
    assert np.allclose(summary["box_px"], 24.0) and not math.isnan(summary["box_px"].iloc[0])


def test_relion_job_and_cli_default_to_the_same_mode() -> None:
    import argparse

    from deeppicker_relion.cli.pick import add_arguments
    from relion_external.pick import build_parser

    cli = argparse.ArgumentParser()
    add_arguments(cli)
    assert cli.get_default("size_check") == build_parser().get_default("size_check") == sizecheck.DEFAULT_MODE
    size_help = next(a.help for a in build_parser()._actions if a.dest == "size_check")
    assert f"{sizecheck.STRONG_PER_MICROGRAPH} of them per micrograph" in size_help


def test_cli_continue_of_a_folder_picked_without_the_check_refuses_another_size(tmp_path: Path, shipped, capsys,
                                                                                monkeypatch) -> None:
    """Micrographs picked with the check off were picked at the given size; continuing the folder with
    the default check, which here (forced counts) picks at 1.4 x, would mix two sizes: refused."""
    from deeppicker_relion.cli.main import main as cli

    for seed in range(3):
        write_mrc(tmp_path / "mics" / f"mic{seed}.mrc", blob_micrograph(seed, shape=(400, 400), n=14, box=32.0)[0])
    out = tmp_path / "picks"
    assert cli(["pick", str(tmp_path / "mics" / "*.mrc"), "--box", "32", "-o", str(out), "--no-report",
                "--size-check", "off"]) == 0
    assert not (out / sizecheck.RECORD).exists()
    write_mrc(tmp_path / "mics" / "mic3.mrc", blob_micrograph(3, shape=(400, 400), n=14, box=32.0)[0])
    _with_counts(monkeypatch, lambda box: 40 if abs(box / (32.0 * STEP) - 1) < 0.01 else 4)
    capsys.readouterr()
    assert cli(["pick", str(tmp_path / "mics" / "*.mrc"), "--box", "32", "-o", str(out), "--no-report"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "3 micrographs here were picked at the given size x 1.00 (no size check" in err
    assert "size check 'auto' would pick the others at x 1.40" in err
    assert not list(out.rglob("mic3*"))


def test_each_sample_is_scored_on_its_central_boxes(monkeypatch, tmp_path: Path) -> None:
    """A large micrograph is checked on its central SAMPLE_BOXES x SAMPLE_BOXES given boxes (the
    counts' rule was chosen on micrographs of 11-18 boxes a side); a small one whole."""
    seen: list[tuple[tuple[int, int], float, np.ndarray]] = []
    monkeypatch.setattr(sizecheck, "count_confident",
                        lambda model, mic, box, params, device: seen.append((mic.shape, box, mic.data)) or 0)
    big = np.random.default_rng(2).normal(0, 1, (900, 1300)).astype(np.float32)
    small = np.random.default_rng(3).normal(0, 1, (300, 250)).astype(np.float32)
    mics = _mics(tmp_path, [big, small])
    check_size(mics, None, ParticleSize(box_px=20.0))
    side = int(sizecheck.SAMPLE_BOXES * 20)
    shapes = {shape for shape, _, _ in seen}
    assert shapes == {(side, side), (300, 250)}
    crop = next(data for shape, _, data in seen if shape == (side, side))
    r0, c0 = (900 - side) // 2, (1300 - side) // 2
    np.testing.assert_array_equal(crop, big[r0 : r0 + side, c0 : c0 + side])
    assert {round(box, 6) for _, box, _ in seen} >= {20.0, 28.0}
