"""The demo: simulate a few small micrographs of a molecule the shipped model never saw, pick them,
evaluate the picks against the known centres, and write the visual report.

Folder layout (``deeppicker_demo/`` by default), a small RELION-style project:

- ``micrographs/demo_1.mrc`` ... ``demo_4.mrc`` (float32, pixel size in the header; the last one
  holds no particles: ice and noise only) and ``micrographs.star`` (RELION 3.1 micrographs STAR
  with optics and defocus);
- ``truth/demo_N.star``: the true particle centres (rlnCoordinateX = column, rlnCoordinateY = row);
- ``picks/``: a pick job folder, exactly what ``deeppicker pick`` writes (coordinate files,
  candidates/, picking_summary.star, report.txt, report_*.png, logfile.pdf with the evaluation);
- ``evaluation/``: evaluation.csv, topn_curve.csv/.png, evaluation_picks.png;
- ``demo.json``: how the data were made.

Deterministic: the molecule (:func:`~deeppicker_relion.simulation.simulate.synthetic_molecule`, seed
``MOLECULE_SEED``) and the micrographs are the same on every machine.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .errors import JobError
from .jobs.evaluate import Evaluation, run_evaluation
from .io.atomic import write_text_atomic
from .io.coords import read_coordinates
from .io.micrographs import micrograph_list
from .io.mrc import write_mrc
from .io.star import write_coordinate_star, write_star
from .model import default_weights_path, load_model
from .jobs.pick import JobSummary, PickJob, collect_picks, run_pick_job
from .picking.candidates import PickParams
from .picking.pipeline import ParticleSize
from .jobs.report import write_pick_report
from .simulation.simulate import simulate_micrograph, synthetic_molecule

MOLECULE_SEED = 271828  # not used for any training set of the shipped model
DIAMETER_A = 200.0  # the molecule's largest extent (within ~10 %), and the diameter given to the picker
PIXEL_A = 4.0
SHAPE = (600, 720)  # rows, columns: non-square on purpose
SNR = 0.2  # signal variance inside the particles / noise variance (binned data of a large particle)
# (particles, defocus in um, contaminants) per micrograph; the last one is empty.
MICROGRAPHS = ((30, 1.6, 0), (40, 2.2, 1), (45, 2.8, 0), (0, 2.0, 0))
MARKER = "demo.json"


@dataclass
class DemoData:
    """The simulated micrographs on disk."""

    folder: Path
    star: Path
    truth: Path
    n_particles: list[int]


@dataclass
class DemoResult:
    """What the demo did: the data, the pick job's summary, the evaluation and the timings."""

    data: DemoData
    picks: Path
    summary: JobSummary
    evaluation: Evaluation
    report: Path
    seconds: dict[str, float]


def check_folder(folder: Path) -> None:
    """Refuse to write into a non-empty folder that is not a previous demo's."""
    if folder.exists() and not folder.is_dir():
        raise JobError("exists and is not a folder; choose another output folder with -o", folder)
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise JobError("is not empty and holds no earlier demo; choose another output folder with -o", folder)


def simulate_demo_data(folder: str | Path) -> DemoData:
    """Simulate the demo micrographs into ``folder`` (see the module docstring); ~1-3 s."""
    folder = Path(folder)
    volume = synthetic_molecule(DIAMETER_A, PIXEL_A, seed=MOLECULE_SEED)
    names, defocus, counts = [], [], []
    for i, (n, defocus_um, contaminants) in enumerate(MICROGRAPHS, start=1):
        image, centres = simulate_micrograph(
            SHAPE, PIXEL_A, [(volume, PIXEL_A)], n_particles=n, snr=SNR, defocus_um=defocus_um,
            n_contaminants=contaminants, seed=MOLECULE_SEED + i,
        )  # fmt: skip
        name = f"micrographs/demo_{i}.mrc"
        write_mrc(folder / name, image, PIXEL_A)
        write_coordinate_star(folder / "truth" / f"demo_{i}.star", centres.assign(score=1.0))
        names.append(name)
        defocus.append(defocus_um * 1e4)
        counts.append(len(centres))
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnMicrographPixelSize": [PIXEL_A],
        "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
    })  # fmt: skip
    mics = pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": 1, "rlnDefocusU": defocus,
                         "rlnDefocusV": defocus, "rlnDefocusAngle": 0.0})
    star = folder / "micrographs.star"
    write_star(star, {"optics": optics, "micrographs": mics})
    info = {"molecule": f"synthetic_molecule(diameter_A={DIAMETER_A}, pixel_size_A={PIXEL_A}, seed={MOLECULE_SEED})",
            "pixel_size_A": PIXEL_A, "shape_rows_cols": list(SHAPE), "snr": SNR,
            "micrographs": [{"name": nm, "particles": c, "defocus_um": d / 1e4} for nm, c, d in zip(names, counts, defocus)]}
    write_text_atomic(folder / MARKER, json.dumps(info, indent=1) + "\n")
    return DemoData(folder, star, folder / "truth", counts)


def run_demo(
    folder: str | Path = "deeppicker_demo",
    weights: str | Path | None = None,
    device: str = "cpu",
    threshold: float | None = None,
    on_progress: Callable[[int, int, int, float], None] | None = None,
) -> DemoResult:
    """Simulate, pick (``weights``: default the shipped general model), evaluate and report into
    ``folder``. Raises :class:`JobError` if ``folder`` is a non-empty folder of something else."""
    folder = Path(folder)
    check_folder(folder)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    data = simulate_demo_data(folder)
    seconds["simulate"] = time.perf_counter() - start

    start = time.perf_counter()
    model, info = load_model(weights, device)
    mics = micrograph_list([data.star])
    size = ParticleSize(diameter_A=DIAMETER_A)
    params = PickParams() if threshold is None else PickParams(threshold=threshold)
    job = PickJob(outdir=folder / "picks", size=size, params=params, resume=False)
    summary = run_pick_job(mics, model, job, device, on_progress=on_progress)
    seconds["pick"] = time.perf_counter() - start

    start = time.perf_counter()
    model_name = str(weights) if weights else f"{default_weights_path().name} (shipped general model)"
    notes = [f"model: {model_name}, {info.get('recipe', 'no recipe recorded')}",
             f"demo data: {len(mics)} simulated micrographs, the last one empty; true centres in {data.truth}"]
    report = write_pick_report(job.outdir, summary, job, mics, notes=notes)
    box = DIAMETER_A / PIXEL_A
    picks = {Path(n).stem: frame for n, frame in collect_picks(summary.table, job).items()}
    truth = {p.stem: read_coordinates(p) for p in sorted(data.truth.glob("*.star"))}
    evaluation = run_evaluation(picks, truth, box, folder / "evaluation", micrographs=mics, report_dir=job.outdir)
    seconds["report"] = time.perf_counter() - start
    return DemoResult(data, job.outdir, summary, evaluation, report, seconds)


def empty_micrograph_picks(result: DemoResult) -> int:
    """Picks on the demo's empty micrograph (ice and noise only): false positives by construction."""
    table = result.evaluation.table
    empty = table[(table["micrograph"] != "TOTAL") & (table["n_reference"] == 0)]
    return int(np.sum(empty["n_picks"]))
