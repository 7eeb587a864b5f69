"""The GPU path's logic, tested on the CPU: several micrographs per batch give each micrograph's own
scores, the batch size follows free memory, the read-ahead yields maps in order; the CUDA-only
checks skip without a CUDA device, and ``--gpu`` without one fails with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deeppicker_relion.errors import JobError, MicrographError
from deeppicker_relion.model import DeepPickerWide
from deeppicker_relion.picking.scoring import (
    BYTES_PER_PIXEL, batch_size_for, gpu_batch_size, half_precision, read_ahead, score_ahead, score_map_dense,
    score_maps_batched,
)

CUDA = torch.cuda.is_available()


def _model(augment: int = 2) -> DeepPickerWide:
    torch.manual_seed(3)
    model = DeepPickerWide().eval()
    for norm in model.norms:  # non-trivial folded batch normalisation
        norm.running_mean.uniform_(-0.1, 0.1)
        norm.running_var.uniform_(0.5, 1.5)
    model.augment = augment
    return model


def _images(n: int, shape=(150, 190), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


class _Prepared:  # what score_ahead reads of a pipeline.Prepared
    def __init__(self, image: np.ndarray) -> None:
        self.pre = type("Pre", (), {"image": image})()


def test_batch_size_follows_free_memory():
    shape = (2388, 2388)
    per32 = BYTES_PER_PIXEL[torch.float32] * shape[0] * shape[1]
    assert batch_size_for(int(10 * per32 / 0.5), shape) == 10
    assert batch_size_for(int(10 * per32 / 0.5), shape, half=True) > 10  # half precision: more per batch
    assert batch_size_for(80 << 30, shape, half=True) == 32  # capped (MAX_BATCH)
    assert batch_size_for(per32, shape) == 0  # not even one: scored in strips
    assert batch_size_for(80 << 30, (328, 328)) == 32
    assert gpu_batch_size("cpu", shape) == 1
    assert not half_precision("cpu")
    assert read_ahead("cpu", 2) == (2, 1)


@pytest.mark.parametrize("augment", [1, 2, 4])
def test_batched_scores_equal_each_micrographs_own(augment):
    model = _model(augment)
    images = _images(3)
    batched = score_maps_batched(model, images, device="cpu", half=False)
    for image, smap in zip(images, batched):
        own = score_map_dense(model, image)
        assert smap.logits.shape == own.logits.shape and smap.centre == own.centre and smap.step == own.step
        np.testing.assert_allclose(smap.logits, own.logits, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="one shape"):
        score_maps_batched(model, [images[0], images[0][:100]])


def test_score_ahead_batches_in_order_and_passes_errors_through():
    model = _model()
    images = _images(3) + _images(2, shape=(140, 140), seed=1)
    error = MicrographError("not a readable MRC file", "bad.mrc")
    stream = [(0, _Prepared(images[0])), (1, error), (2, _Prepared(images[1])), (3, _Prepared(images[2])),
              (4, _Prepared(images[3])), (5, _Prepared(images[4]))]
    out = list(score_ahead(iter(stream), model, "cpu", batch_size=2))
    assert [row for row, _, _ in out] == [0, 1, 2, 3, 4, 5]
    assert out[1][1] is error and out[1][2] is None
    for (_, prepared, smap) in (o for o in out if o[2] is not None):
        np.testing.assert_allclose(smap.logits, score_map_dense(model, prepared.pre.image).logits, atol=2e-5, rtol=0)
    # on the CPU without a batch size nothing is scored ahead (the caller scores, as before)
    assert all(smap is None for _, _, smap in score_ahead(iter(stream), model, "cpu"))


def test_half_precision_emulated_on_cpu_stays_close():
    """Mixed precision (the CUDA default) emulated with the CPU's float16 autocast: margins within a
    few hundredths of float32's on random weights and images (held-out figures: docs/speed.md)."""
    model = _model()
    images = _images(2, shape=(100, 100))
    try:
        half = score_maps_batched(model, images, device="cpu", half=True)
    except RuntimeError as err:  # pragma: no cover - a CPU build without float16 kernels
        pytest.skip(f"no float16 on this CPU build: {err}")
    full = score_maps_batched(model, images, device="cpu", half=False)
    for a, b in zip(half, full):
        scale = max(1.0, float(np.abs(b.logits).max()))
        assert np.abs(a.logits - b.logits).max() < 0.02 * scale


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_batched_scores_match_the_cpu():  # pragma: no cover - CUDA only
    model = _model()
    images = _images(4, shape=(300, 320))
    cpu = [score_map_dense(model, im).logits for im in images]
    full = score_maps_batched(model.to("cuda"), images, device="cuda", half=False)
    half = score_maps_batched(model, images, device="cuda", half=True)
    for c, f, h in zip(cpu, full, half):
        np.testing.assert_allclose(f.logits, c, atol=1e-3, rtol=1e-4)
        assert np.abs(h.logits - c).max() < 0.02 * max(1.0, float(np.abs(c).max()))
    assert gpu_batch_size("cuda", (2388, 2388)) >= 1
    assert read_ahead("cuda", 2)[0] >= 16


@pytest.mark.skipif(CUDA, reason="checks the error without a CUDA device")
def test_gpu_without_cuda_fails_with_one_line(tmp_path, capsys):
    from deeppicker_relion.jobs.parallel import parse_devices
    from deeppicker_relion.picking.pipeline import resolve_device

    for call in (lambda: parse_devices("0"), lambda: resolve_device("0")):
        with pytest.raises(JobError, match="CUDA is not available"):
            call()
    from deeppicker_relion.io.mrc import write_mrc
    from deeppicker_relion.cli.main import main

    write_mrc(tmp_path / "m.mrc", np.random.default_rng(0).standard_normal((200, 200)).astype(np.float32), 2.0)
    assert main(["pick", str(tmp_path / "m.mrc"), "--box", "60", "-o", str(tmp_path / "out"), "--gpu", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("deeppicker: error:") and "CUDA is not available" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_pick_job_with_several_micrographs_per_batch_writes_the_same_picks(monkeypatch, tmp_path):
    """The job code's batched path (what --gpu runs), forced on the CPU with 2 micrographs per batch,
    writes the same candidates and picks as one micrograph at a time; a bad file in between is
    still listed as failed."""
    import functools

    import pandas as pd

    from deeppicker_relion.jobs import pick as pickjob
    from deeppicker_relion.io.mrc import write_mrc
    from deeppicker_relion.io.star import read_coordinate_star
    from deeppicker_relion.model import load_model
    from deeppicker_relion.picking.pipeline import ParticleSize
    from deeppicker_relion.simulation.simulate import load_map, simulate_micrograph

    paths = []
    for k in range(3):
        image, _ = simulate_micrograph((260, 300), 3.0, [load_map("proteasome20S_3j9i")], n_particles=6, snr=0.2,
                                       seed=50 + k)
        paths.append(tmp_path / f"m{k}.mrc")
        write_mrc(paths[-1], image, 3.0)
    (tmp_path / "bad.mrc").write_text("not an MRC file")
    names = ["m0.mrc", "bad.mrc", "m1.mrc", "m2.mrc"]
    mics = pd.DataFrame({"name": names, "path": [str(tmp_path / n) for n in names]})
    model, _ = load_model()
    size = ParticleSize(diameter_A=180.0)
    one = pickjob.run_pick_job(mics, model, pickjob.PickJob(tmp_path / "one", size, resume=False))
    monkeypatch.setattr(pickjob, "score_ahead", functools.partial(pickjob.score_ahead, batch_size=2))
    batched = pickjob.run_pick_job(mics, model, pickjob.PickJob(tmp_path / "batched", size, resume=False))
    assert list(one.table["status"]) == list(batched.table["status"]) == ["picked", "failed", "picked", "picked"]
    for name in ("m0", "m1", "m2"):
        a = read_coordinate_star(tmp_path / "one" / "candidates" / f"{name}.star")
        b = read_coordinate_star(tmp_path / "batched" / "candidates" / f"{name}.star")
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a[["x", "y", "score"]].to_numpy(float), b[["x", "y", "score"]].to_numpy(float),
                                   atol=1e-3)
