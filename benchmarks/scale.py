"""Scale benchmark: pick 200 micrographs with the job code the CLI and RELION run
(:func:`deeppicker_relion.jobs.pick.run_pick_job`), and print throughput, peak memory along the run
(it must stay flat in the number of micrographs) and what the read-ahead (prefetch) buys.

Micrographs: 200 simulated 1024 x 1024 float32 MRCs (20S proteasome, 3 A/px, 180 A diameter, i.e.
a 60 px box: the network sees them resampled to 1092 px), generated once into
benchmarks/cache/scale_1024/ (about 2 minutes, 800 MB). Weights: the shipped general model, or,
while it is missing, a small placeholder trained once on 8 of the cached micrographs
(benchmarks/cache/scale_placeholder.safetensors). Each measurement runs in a fresh subprocess, so
its peak RSS is its own; all write their picks into temporary folders.

Printed:
- throughput: micrographs per second and seconds per micrograph over all micrographs (reading,
  preprocessing, scoring, picking, writing; the model is loaded before the clock starts);
- peak RSS (VmHWM) and current RSS after 10, 50, 100 and 200 micrographs;
- prefetch: the same first micrographs with read-ahead 0 (read, then score, in turn) and 2 (reading
  and preprocessing in a background thread while the previous micrograph is scored).

Usage:
  python benchmarks/scale.py                  # 200 micrographs, prefetch compared on 40
  python benchmarks/scale.py --n 50 --overlap-n 20 --threads 2
  python benchmarks/scale.py --gpu 0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
PIXEL_A = 3.0
DIAMETER_A = 180.0
CHECKPOINTS = (10, 50, 100, 200)


def dataset(n: int, size: int) -> Path:
    """The cached micrographs STAR with at least ``n`` micrographs of ``size`` px (made once)."""
    from deeppicker_relion.io.star import read_star
    from deeppicker_relion.simulation.simulate import simulate_dataset

    folder = CACHE / f"scale_{size}"
    star = folder / "micrographs.star"
    if star.is_file() and len(read_star(star)["micrographs"]) >= n:
        return star
    print(f"simulating {n} micrographs of {size} px into {folder} (once) ...", flush=True)
    start = time.perf_counter()
    simulate_dataset(folder, n_micrographs=n, shape=(size, size), pixel_size_A=PIXEL_A, maps=["proteasome20S_3j9i"],
                     seed=2024, particles_per_micrograph=(30, 60), overwrite=True)
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return star


def weights(star: Path) -> Path:
    """The shipped general model, else a placeholder trained once on 8 cached micrographs."""
    from deeppicker_relion.model import default_weights_path

    shipped = default_weights_path()
    if shipped.is_file():
        return shipped
    placeholder = CACHE / "scale_placeholder.safetensors"
    if placeholder.is_file():
        return placeholder
    print(f"the shipped model {shipped} is missing: training a placeholder {placeholder} (once) ...", flush=True)
    from deeppicker_relion.io.micrographs import micrograph_list
    from deeppicker_relion.picking.pipeline import ParticleSize
    from deeppicker_relion.jobs.train import train_from_files
    from deeppicker_relion.training.train import TrainParams

    mics = micrograph_list([str(star)]).iloc[:8]
    coords = {name: star.parent / "coords" / f"{Path(name).stem}.star" for name in mics["name"]}
    train_from_files(mics, coords, ParticleSize(diameter_A=DIAMETER_A), placeholder,
                     TrainParams(max_epochs=4, negative_ratio=2.0), extra_info={"recipe": "scale.py placeholder"})
    return placeholder


def _memory_mb() -> tuple[float, float]:
    """(peak RSS, current RSS) of this process in MB, from /proc/self/status."""
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = float(value.split()[0]) / 1024
    return fields.get("VmHWM", float("nan")), fields.get("VmRSS", float("nan"))


def worker(star: Path, n: int, ahead: int, weights_path: Path, threads: int, gpu: str | None) -> dict:
    """Pick the first ``n`` micrographs in this process; timings and memory at the checkpoints."""
    import torch

    from deeppicker_relion.io.micrographs import micrograph_list
    from deeppicker_relion.model import load_model
    from deeppicker_relion.jobs.pick import PickJob, run_pick_job
    from deeppicker_relion.picking.pipeline import ParticleSize, resolve_device

    torch.set_num_threads(threads)
    device = resolve_device(gpu)
    mics = micrograph_list([str(star)]).iloc[:n]
    model, _ = load_model(weights_path, device)
    points: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        job = PickJob(outdir=Path(tmp), size=ParticleSize(diameter_A=DIAMETER_A), resume=False, prefetch=ahead)

        def progress(done: int, total: int, particles: int, seconds: float) -> None:
            if done in CHECKPOINTS or done == total:
                peak, rss = _memory_mb()
                points[done] = {"seconds": seconds, "peak_rss_mb": peak, "rss_mb": rss, "particles": particles}

        start = time.perf_counter()
        summary = run_pick_job(mics, model, job, str(device), on_progress=progress)
        elapsed = time.perf_counter() - start
    return {"n": n, "ahead": ahead, "seconds": elapsed, "picked": summary.n_picked, "particles": summary.n_particles,
            "points": points}


def run_worker(star: Path, n: int, ahead: int, weights_path: Path, threads: int, gpu: str | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(star), str(n), str(ahead), str(weights_path),
           "--threads", str(threads)]
    if gpu:
        cmd += ["--gpu", gpu]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="micrographs to pick (default 200)")
    parser.add_argument("--size", type=int, default=1024, help="micrograph size in px (default 1024)")
    parser.add_argument("--overlap-n", type=int, default=40, help="micrographs for the prefetch comparison (default 40)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all)")
    parser.add_argument("--gpu", default=None, help="CUDA device (default: CPU)")
    parser.add_argument("--worker", nargs=4, metavar=("STAR", "N", "AHEAD", "WEIGHTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        star, n, ahead, weights_path = args.worker
        print(json.dumps(worker(Path(star), int(n), int(ahead), Path(weights_path), args.threads, args.gpu)))
        return

    star = dataset(args.n, args.size)
    model = weights(star)
    load = os.getloadavg()[0]
    print(f"\n{args.n} micrographs of {args.size} x {args.size} px (float32, {PIXEL_A:g} A/px, {DIAMETER_A:g} A "
          f"particles = {DIAMETER_A / PIXEL_A:.0f} px box); weights {model.name}; {args.threads} CPU threads"
          f"{', GPU ' + args.gpu if args.gpu else ''}; load average {load:.1f} on {os.cpu_count()} cores at start\n")

    full = run_worker(star, args.n, 2, model, args.threads, args.gpu)
    rate = full["n"] / full["seconds"]
    print(f"throughput: {rate:.2f} micrographs/s, {full['seconds'] / full['n']:.2f} s/micrograph "
          f"({full['picked']} picked, {full['particles']} particles, {full['seconds']:.0f} s in all)")
    print("\nmicrographs   elapsed s   peak RSS MB   RSS MB")
    for done, point in sorted(full["points"].items(), key=lambda kv: int(kv[0])):
        print(f"{int(done):>11}   {point['seconds']:>9.1f}   {point['peak_rss_mb']:>11.0f}   {point['rss_mb']:>6.0f}")
    points = sorted(full["points"].items(), key=lambda kv: int(kv[0]))
    if len(points) >= 2:
        first, last = points[0][1]["peak_rss_mb"], points[-1][1]["peak_rss_mb"]
        print(f"peak RSS grows by {last - first:.0f} MB from {points[0][0]} to {points[-1][0]} micrographs "
              f"({(last - first) / max(1, int(points[-1][0]) - int(points[0][0])):.2f} MB per micrograph)")

    m = min(args.overlap_n, args.n)
    serial = run_worker(star, m, 0, model, args.threads, args.gpu)
    overlapped = run_worker(star, m, 2, model, args.threads, args.gpu)
    gain = 1 - overlapped["seconds"] / serial["seconds"]
    print(f"\nprefetch on {m} micrographs: ahead=0 {serial['seconds']:.1f} s "
          f"({serial['seconds'] / m:.2f} s/micrograph), ahead=2 {overlapped['seconds']:.1f} s "
          f"({overlapped['seconds'] / m:.2f} s/micrograph): {100 * gain:+.0f} % time saved by overlapping")


if __name__ == "__main__":
    main()
