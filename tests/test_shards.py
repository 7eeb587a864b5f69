"""Past one process: ``--shard i/n`` + ``deeppicker merge``, ``--processes N`` (the code path of
``--gpu 0,1``, on CPU), GPU out-of-memory retries in dense scoring, stale temporary files.

Micrographs: four 256 px simulated micrographs (5 A/px, 180 A = 36 px box) and one unreadable
file; a randomly initialised model (identity of the picks is what matters, not their quality).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from deeppicker_relion.picking import scoring
from deeppicker_relion.cli.main import main as cli
from deeppicker_relion.io import atomic, relion_nodes
from deeppicker_relion.io.cryosparc import read_particles_cs
from deeppicker_relion.model import build_model, save_model
from deeppicker_relion.jobs.pick import read_summary
from deeppicker_relion.simulation.simulate import simulate_dataset

PIXEL_A = 5.0


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A project: Micrographs/ (4 simulated + 1 broken), micrographs.star, a random model."""
    base = tmp_path_factory.mktemp("shards")
    sim = simulate_dataset(base / "sim", n_micrographs=4, shape=(256, 256), pixel_size_A=PIXEL_A,
                           maps=["proteasome"], seed=11, particles_per_micrograph=(4, 6), empty_fraction=0.0,
                           snr=(0.5, 1.0), contamination_fraction=0.0, carbon_fraction=0.0)
    proj = base / "project"
    (proj / "Micrographs").mkdir(parents=True)
    names = []
    for i, path in enumerate(sim["micrograph_path"]):
        shutil.copy(base / "sim" / path, proj / "Micrographs" / f"mic{i}.mrc")
        names.append(f"Micrographs/mic{i}.mrc")
        if i == 1:
            (proj / "Micrographs" / "broken.mrc").write_text("not an MRC file\n" * 100)
            names.append("Micrographs/broken.mrc")
    optics = pd.DataFrame({"rlnOpticsGroupName": ["g1"], "rlnOpticsGroup": [1], "rlnMicrographPixelSize": [PIXEL_A]})
    starfile.write({"optics": optics, "micrographs": pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": 1})},
                   proj / "micrographs.star")
    torch.manual_seed(1)
    save_model(build_model(), proj / "model.safetensors", {"recipe": "random, for tests"})
    return proj


def run(root: Path, *argv: str) -> tuple[int, str]:
    """``deeppicker <argv>`` in-process in the project directory; returns (code, stderr), stderr
    read at the file-descriptor level so that worker processes' lines are in it too."""
    old = os.getcwd()
    os.chdir(root)
    err = tempfile.TemporaryFile(mode="a+", buffering=1)  # O_APPEND: this process and workers share it
    saved = os.dup(2)
    try:
        sys.stderr.flush()
        os.dup2(err.fileno(), 2)
        with contextlib.redirect_stderr(err):
            code = cli(list(argv))
    finally:
        err.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.chdir(old)
    err.seek(0)
    return code, err.read()


def pick(root: Path, out: str, *extra: str) -> tuple[int, str]:
    return run(root, "pick", "micrographs.star", "--diameter", "180", "--weights", "model.safetensors", "-o", out,
               "-j", "1", "--no-report", *extra)


def coordinate_texts(folder: Path) -> dict[str, str]:
    """Relative path -> content of every coordinate and candidate file (the STAR header comment
    holds a time stamp: left out)."""
    out = {}
    for path in sorted(folder.rglob("*.star")):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith("Micrographs/") or rel.startswith("candidates/"):
            out[rel] = "\n".join(ln for ln in path.read_text().splitlines() if not ln.startswith("# Created"))
    return out


def summary_rows(path: Path) -> list[tuple]:
    table = read_summary(path)
    return list(zip(table["rlnMicrographName"], table["status"], table["n_picks"], table["n_candidates"],
                    table["expected_particles"].fillna(-1).round(4), table["flag"]))


@pytest.fixture(scope="module")
def unsharded(root: Path) -> Path:
    code, err = pick(root, "full")
    assert code == 0, err
    return root / "full"


# --------------------------------------------------------------------------- shards + merge


def test_shards_then_merge_equal_an_unsharded_run(root: Path, unsharded: Path) -> None:
    for i in range(2):
        code, err = pick(root, "sharded", "--shard", f"{i}/2")
        assert code == 0, err
    out = root / "sharded"
    assert not (out / "picking_summary.star").exists()
    code, err = run(root, "merge", "sharded", "--cs", "--no-report")  # micrographs and count: as the shards recorded
    assert code == 0, err

    assert coordinate_texts(out) == coordinate_texts(unsharded) and len(coordinate_texts(out)) == 8
    assert summary_rows(out / "picking_summary.star") == summary_rows(unsharded / "picking_summary.star")
    failed = starfile.read(out / "failed_micrographs.star")
    assert list(failed["rlnMicrographName"]) == ["Micrographs/broken.mrc"]
    assert "not a readable MRC file" in failed["reason"].iloc[0]
    # RELION 3.1 layout (no default_pipeline.star tells otherwise)
    assert (out / "coords_suffix_deeppicker.star").read_text() == "micrographs.star\n"
    assert relion_nodes.read_output_nodes("sharded/", root) == [("sharded/coords_suffix_deeppicker.star", 2),
                                                                 ("sharded/micrographs_with_particles.star", 1)]
    # the micrographs node: the input STAR's micrographs flagged as holding particles, as the unsharded job flags them
    table = read_summary(unsharded / "picking_summary.star")
    kept = table.loc[(table["status"] != "failed") & (table["flag"] == "particles"), "rlnMicrographName"].tolist()
    assert starfile.read(out / "micrographs_with_particles.star", always_dict=True)["micrographs"][
        "rlnMicrographName"].tolist() == kept
    cs = read_particles_cs(out / "particles.cs")
    assert sorted(cs) == [f"Micrographs/mic{i}.mrc" for i in range(4)]
    assert sum(map(len, cs.values())) == read_summary(unsharded / "picking_summary.star")["n_picks"].sum()

    # RELION 5: autopick.star lists the picked micrographs and their coordinate files
    code, err = run(root, "merge", "sharded", "--in-mics", "micrographs.star", "--relion-version", "5",
                    "--no-report")
    assert code == 0, err
    table = starfile.read(out / "autopick.star")
    assert list(table["rlnMicrographName"]) == [f"Micrographs/mic{i}.mrc" for i in range(4)]
    assert all((root / p).is_file() for p in table["rlnMicrographCoordinates"])
    assert relion_nodes.read_output_nodes("sharded/", root) == [
        ("sharded/autopick.star", "MicrographCoordsGroup.star.relion.autopick"),
        ("sharded/micrographs_with_particles.star", "MicrographGroupMetadata.star.relion")]


def test_merge_lists_missing_shards(root: Path) -> None:
    code, err = pick(root, "partial", "--shard", "1/3")
    assert code == 0, err
    code, err = run(root, "merge", "partial", "--in-mics", "micrographs.star")
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert code == 2 and len(lines) == 1, err
    assert "2 of 3 shards have not finished" in lines[0] and "shard 0/3, 2/3" in lines[0] and "partial" in lines[0]
    assert not (root / "partial" / "picking_summary.star").exists()


def test_merge_refuses_shards_picked_differently_or_on_another_list(root: Path, tmp_path: Path) -> None:
    code, err = pick(root, "mixed", "--shard", "0/2", "--threshold", "0.5")
    assert code == 0, err
    code, err = pick(root, "mixed", "--shard", "1/2", "--threshold", "0.9")
    assert code == 0, err
    code, err = run(root, "merge", "mixed")
    assert code == 2 and "different threshold" in err and "Traceback" not in err, err

    other = root / "other.star"
    table = starfile.read(root / "micrographs.star")
    table["micrographs"] = pd.concat([table["micrographs"], table["micrographs"].iloc[:1].assign(
        rlnMicrographName="Micrographs/extra.mrc")])
    starfile.write(table, other)
    code, err = pick(root, "listed", "--shard", "0/1")
    assert code == 0, err
    code, err = run(root, "merge", "listed", "--in-mics", "other.star")
    assert code == 2 and "in no shard summary" in err and "Micrographs/extra.mrc" in err, err


# --------------------------------------------------------------------------- worker processes


def test_processes_give_the_same_picks_as_one_process(root: Path, unsharded: Path) -> None:
    """--processes 2 on CPU runs the --gpu 0,1 code path: spawned workers on shards 0/2 and 1/2,
    then the merge."""
    code, err = pick(root, "two", "--processes", "2")
    assert code == 0, err
    out = root / "two"
    assert coordinate_texts(out) == coordinate_texts(unsharded)
    assert summary_rows(out / "picking_summary.star") == summary_rows(unsharded / "picking_summary.star")
    assert starfile.read(out / "failed_micrographs.star")["rlnMicrographName"].tolist() == ["Micrographs/broken.mrc"]
    assert not list(out.glob("*.shard-*"))  # the workers' own summaries are merged away
    assert "[0/2 cpu]" in err and "[1/2 cpu]" in err and "broken.mrc" in err


def test_augment_reaches_the_worker_processes(root: Path, unsharded: Path) -> None:
    """--augment 8 in spawned workers gives what it gives in one process, and not what this
    model's own setting (1: it was saved without augmentation) gives."""
    assert pick(root, "one_x8", "--augment", "8")[0] == 0
    code, err = pick(root, "two_x8", "--processes", "2", "--augment", "8")
    assert code == 0, err
    assert coordinate_texts(root / "two_x8") == coordinate_texts(root / "one_x8")
    assert coordinate_texts(root / "one_x8") != coordinate_texts(unsharded)


def test_gpu_list_without_cuda_is_one_clear_error(root: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, err = pick(root, "gpus", "--gpu", "0,1")
    assert code == 2 and "CUDA is not available" in err and len(err.strip().splitlines()) <= 3, err


# --------------------------------------------------------------------------- CUDA out of memory


def test_dense_scoring_halves_strips_on_out_of_memory(monkeypatch, caplog) -> None:
    """An out-of-memory error above a strip size (injected on CPU) halves the strip and retries;
    the scores equal the normal ones and the smaller size is kept for the next micrograph."""
    torch.manual_seed(3)
    model = build_model().eval()
    image = np.random.default_rng(0).normal(size=(300, 180)).astype(np.float32)
    expected = scoring.score_map_dense(model, image, max_pixels=1 << 22).logits
    limit = 120 * 180  # input pixels a strip may hold before "the GPU" runs out
    real = model.dense_logits
    calls = {"oom": 0, "ok": 0}

    def tight(strip: torch.Tensor, step: int = 4) -> torch.Tensor:
        if strip.shape[-2] * strip.shape[-1] > limit:
            calls["oom"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        calls["ok"] += 1
        return real(strip, step)

    monkeypatch.setattr(model, "dense_logits", tight)
    monkeypatch.setattr(scoring, "_STRIP_LIMIT", {})
    with caplog.at_level(logging.WARNING, logger="deeppicker_relion.picking.scoring"):
        got = scoring.score_map_dense(model, image, max_pixels=1 << 22).logits
    np.testing.assert_allclose(got, expected, atol=1e-4)  # strips see the same windows
    assert calls["oom"] >= 1 and calls["ok"] >= 2
    assert any("out of memory" in r.message for r in caplog.records)
    assert "cpu" in scoring._STRIP_LIMIT

    calls.update(oom=0, ok=0)
    np.testing.assert_allclose(scoring.score_map_dense(model, image).logits, expected, atol=1e-4)
    assert calls["oom"] == 0  # remembered: no second failure


def test_out_of_memory_on_a_single_row_is_raised(monkeypatch) -> None:
    model = build_model().eval()

    def never(strip, step=4):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(model, "dense_logits", never)
    monkeypatch.setattr(scoring, "_STRIP_LIMIT", {})
    with pytest.raises(torch.cuda.OutOfMemoryError):
        scoring.score_map_dense(model, np.zeros((200, 100), np.float32))


# --------------------------------------------------------------------------- temporary files


def test_only_temporaries_of_dead_writers_on_this_host_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    host = atomic._host()
    names = {
        "dead": f".a_deeppicker.star.{host}-{dead}.k2j3.tmp.star",
        "alive": f".b_deeppicker.star.{host}-{os.getpid()}.k2j3.tmp.star",
        "other_host": f".c_deeppicker.star.otherhost-{dead}.k2j3.tmp.star",
        "not_ours": ".hidden.star",
    }
    (tmp_path / "sub").mkdir()
    for name in names.values():
        (tmp_path / "sub" / name).write_text("partial")
    removed = atomic.remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [names["dead"]]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == sorted(v for k, v in names.items() if k != "dead")
    with atomic.atomic_path(tmp_path / "x.star") as tmp:
        assert tmp.name.startswith(f".x.star.{host}-{os.getpid()}.") and tmp.name.endswith(".tmp.star")
        tmp.write_text("ok")
    assert (tmp_path / "x.star").read_text() == "ok"


def test_merge_shards_of_the_relion_pick_job(root: Path, unsharded: Path) -> None:
    """Shards run as the RELION External job (--shard parameter), merged by deeppicker merge into the
    node files RELION needs; pickname and settings come from the job's records."""
    pick_job = pytest.importorskip("relion_external.pick")
    old = os.getcwd()
    os.chdir(root)
    try:
        for i in range(2):
            code = pick_job.main(["--o", "External/job007/", "--in_mics", "micrographs.star", "--particle_diameter",
                                  "180", "--weights", "model.safetensors", "--pickname", "deep", "--shard", f"{i}/2",
                                  "--j", "1"])
            assert code == 0
    finally:
        os.chdir(old)
    code, err = run(root, "merge", "External/job007/", "--in-mics", "micrographs.star", "--cs", "--no-report")
    assert code == 0, err
    job = root / "External/job007"
    assert (job / "coords_suffix_deep.star").read_text() == "micrographs.star\n"
    assert relion_nodes.read_output_nodes("External/job007/", root) == [("External/job007/coords_suffix_deep.star", 2),
                                                                         ("External/job007/micrographs_with_particles.star", 1)]
    assert summary_rows(job / "picking_summary.star") == summary_rows(unsharded / "picking_summary.star")
    assert sorted(p.name for p in (job / "Micrographs").glob("*_deep.star")) == [f"mic{i}_deep.star" for i in range(4)]
    assert (job / "particles.cs").is_file()
