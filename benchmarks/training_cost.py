"""Training cost: ``deeppicker train`` on 5 data sets and 50 micrographs, timed, with its peak memory.

The data sets: the ten EMPIAR-10028 ribosome micrographs and ten apoferritin micrographs of
../shared written as RELION particles STARs (when ../shared is there; else two more simulated
sets), and three sets of ten micrographs of random simulated molecules (``simulated n=10
seed=K``). The command runs in a fresh subprocess (its own peak RSS, from getrusage of the
child) exactly as a user types it, fine-tuning the shipped model with the defaults for data sets
(3 background patches per particle, 30 % near misses, background anywhere 0.6 box from a label,
then the new model's figure of merit fitted on 48 simulated micrographs). Micrographs are read one
at a time; only 64 x 64 patches are kept.

Reported: seconds to read the micrographs (and to simulate, the first time), seconds per epoch,
epochs run, seconds to fit the figure of merit, total wall time, peak RSS, patch counts.
``--epochs`` bounds the run (the default, at most 20 epochs with early stopping, is what a user
gets; a bounded run gives the per-epoch figure, and the report projects the full run from it).

Usage:
  python benchmarks/training_cost.py                  # 2 CPU threads
  python benchmarks/training_cost.py --epochs 3       # bounded run; projection printed
  python benchmarks/training_cost.py --gpu 0          # the same run on CUDA
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"
TARGET_S = 3600.0
TARGET_RSS_GB = 4.0


def real_set_as_particles_star(folder: Path, name: str, n: int, out: Path) -> Path:
    """The first ``n`` micrographs of a ../shared set as a RELION 3.1 particles STAR (no shifts)."""
    import starfile

    mics = starfile.read(folder / "micrographs.star", always_dict=True)
    pixel = float(mics["optics"]["rlnMicrographPixelSize"].iloc[0])
    rows = []
    for mic in sorted((folder / "micrographs").glob("*.mrc"))[:n]:
        coords = starfile.read(folder / "coords" / f"{mic.stem}.star")
        rows.append(pd.DataFrame({"rlnMicrographName": str(mic), "rlnCoordinateX": coords["rlnCoordinateX"],
                                  "rlnCoordinateY": coords["rlnCoordinateY"], "rlnOpticsGroup": 1}))  # fmt: skip
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnMicrographPixelSize": [pixel],
                           "rlnImagePixelSize": [pixel], "rlnImageSize": [64], "rlnImageDimensionality": [2]})  # fmt: skip
    path = out / f"{name}_particles.star"
    starfile.write({"optics": optics, "particles": pd.concat(rows, ignore_index=True)}, path, overwrite=True)
    return path


def data_list(out: Path) -> Path:
    """The 5 data sets / 50 micrographs as a data-set list file."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    if (SHARED / "empiar10028_ribosome").is_dir():
        lines.append(f"{real_set_as_particles_star(SHARED / 'empiar10028_ribosome', 'ribosome', 10, out)} 300")
        lines.append(f"{real_set_as_particles_star(SHARED / 'apoferritin', 'apoferritin', 10, out)} 120")
    else:
        lines += ["simulated - n=10 seed=11", "simulated - n=10 seed=12"]
    lines += [f"simulated - n=10 seed={k}" for k in (1, 2, 3)]
    path = out / "datasets.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(args: argparse.Namespace) -> dict:
    work = args.work
    listing = data_list(work)
    command = [sys.executable, "-m", "deeppicker_relion.cli.main", "train", "--datasets", str(listing), "-o",
               str(work / "cost.safetensors"), "--cache", str(work / "cache"), "-j", str(args.threads), "-v"]
    if args.epochs:
        command += ["--epochs", str(args.epochs)]
    if args.gpu is not None:
        command += ["--gpu", args.gpu]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    log = proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}):\n{log[-3000:]}")
    stamps = [(m.group(1), m.group(2)) for m in re.finditer(r"(\d\d:\d\d:\d\d) INFO ([^\r\n]*)", log)]

    def seconds(stamp: str) -> int:
        h, m, s = (int(v) for v in stamp.split(":"))
        return 3600 * h + 60 * m + s

    first = seconds(stamps[0][0])
    start_training = next(seconds(t) for t, msg in stamps if msg.startswith("training on"))
    epochs = [seconds(t) for t, msg in stamps if re.match(r"epoch \d+:", msg)]
    per_epoch = (epochs[-1] - start_training) / len(epochs) if epochs else float("nan")
    counts = re.search(r"training on (\d+) particle and (\d+) background patches from (\d+) data sets", log)
    fom = re.search(r"figure of merit fitted on \d+ simulated micrographs \(\d+ empty\) in (\d+) s", log)
    fom_s = int(fom.group(1)) if fom else 0
    result = {
        "device": f"cuda:{args.gpu}" if args.gpu is not None else f"CPU, {args.threads} threads",
        "data_sets": 5, "micrographs": 50,
        "particles": int(counts.group(1)), "background": int(counts.group(2)),
        "seconds_reading_and_vetting": start_training - first,
        "seconds_per_epoch": round(per_epoch, 1), "epochs_run": len(epochs),
        "wall_seconds": round(wall), "peak_rss_gb": round(rss_gb, 2),
        "seconds_figure_of_merit": fom_s,
        "projected_seconds_20_epochs": round(start_training - first + 20 * per_epoch + fom_s),
        "command": " ".join(command[1:]),
    }  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=0, help="bound the epochs (default: the CLI's 20 with early stopping)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu", default=None)
    parser.add_argument("--work", type=Path, default=HERE / "cache" / "training_cost")
    parser.add_argument("--json", type=Path, default=HERE / "cache" / "training_cost.json")
    args = parser.parse_args(argv)
    result = run(args)
    for key, value in result.items():
        print(f"{key:>30}: {value}")
    ok_time = result["wall_seconds"] <= TARGET_S and (args.epochs == 0 or result["projected_seconds_20_epochs"] <= TARGET_S)
    print(f"target: within {TARGET_S / 60:.0f} min and {TARGET_RSS_GB:g} GB -> "
          f"time {'met' if ok_time else 'NOT met'}, memory {'met' if result['peak_rss_gb'] <= TARGET_RSS_GB else 'NOT met'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
