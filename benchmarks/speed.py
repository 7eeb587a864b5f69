"""Speed benchmark: seconds per micrograph end to end (read, preprocess, score, pick, write) for
dense and patch-by-patch scoring, peak memory, and Topaz's pretrained `topaz extract` and RELION
3.1's LoG picker (`relion_autopick --LoG`, one process, full resolution) on the same micrographs,
measured in the same run.

Micrographs: simulated 1k, 2k and 4k square float32 MRCs (cached in benchmarks/cache/speed/) of the
20S proteasome at 0.9 A/px with a 180 A diameter, i.e. a 200 px box: the resampled image the
network sees is 64/200 of the micrograph (328, 655 and 1311 px). Each (size, method) runs in a
fresh subprocess so its peak RSS is its own. "dense" and "patches" score as the shipped model does
(its test-time augmentation: each window and its half turn, 2 passes); "dense x1" without
augmentation (`--augment 1`), "dense x4" over the 4 rotations (`--augment 4`).

Usage:
  python benchmarks/speed.py                      # all sizes, dense + patch-by-patch + Topaz if installed
  python benchmarks/speed.py --sizes 1024 --no-topaz --repeats 2
  python benchmarks/speed.py --gpu 0              # micrographs per second on CUDA for 1k/2k/4k, GPU busy share
  python benchmarks/speed.py --job 20             # the real-size job against LoG, per-stage table

Targets (2-core CPU): dense >= 20x faster than patch-by-patch; 4096 x 4096 end to end < 2 s; at
least 5x faster than Topaz (bash benchmarks/setup_topaz.sh installs it in its own venv).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache" / "speed"
PIXEL_A = 0.9
DIAMETER_A = 180.0
BOX_PX = DIAMETER_A / PIXEL_A


def make_micrographs(size: int, count: int) -> list[Path]:
    """``count`` simulated ``size`` x ``size`` micrographs (cached)."""
    from deeppicker_relion.io.mrc import write_mrc
    from deeppicker_relion.simulation.simulate import load_map, simulate_micrograph

    CACHE.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        path = CACHE / f"speed_{size}_{k}.mrc"
        if not path.is_file():
            n = int(40 * (size / 1024) ** 2 * (200 / BOX_PX) ** -2 / 16) + 10
            image, _ = simulate_micrograph(
                (size, size), PIXEL_A, [load_map("proteasome20S_3j9i")], n_particles=n, snr=0.1, defocus_um=2.0, seed=size + k
            )
            write_mrc(path, image, PIXEL_A)
        paths.append(path)
    return paths


# The real-size job (issue 26): 4096 x 4096 px micrographs at 1.64 A/px of a 180 A particle, i.e. a
# 110 px box, so the network sees a 2,388 px grid; about 300 particles each.
JOB_SIZE = 4096
JOB_PIXEL_A = 1.64
JOB_PARTICLES = 300


def make_job_micrographs(count: int) -> list[Path]:
    """``count`` simulated real-size micrographs (cached; ~10 s each to make)."""
    from deeppicker_relion.io.mrc import write_mrc
    from deeppicker_relion.simulation.simulate import load_map, simulate_micrograph

    CACHE.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        path = CACHE / f"job_{JOB_SIZE}_{k:02d}.mrc"
        if not path.is_file():
            image, _ = simulate_micrograph((JOB_SIZE, JOB_SIZE), JOB_PIXEL_A, [load_map("proteasome20S_3j9i")],
                                           n_particles=JOB_PARTICLES, snr=0.1, defocus_um=1.0 + 0.1 * k, seed=7000 + k)
            write_mrc(path, image, JOB_PIXEL_A)
        paths.append(path)
    return paths


# Stages of a pick job, timed by wrapping the functions that do them (stage_profile); time spent
# in a stage's callees that are stages themselves counts for those (exclusive times), except inside
# the size check, which counts as a whole. Reading and preprocessing run in the read-ahead thread,
# at the same time as scoring: their seconds overlap the others'.
STAGES = [  # (stage, module, function)
    ("start-up", None, None),
    ("model load", "deeppicker_relion.cli.pick", "load_model"),
    ("size check", "deeppicker_relion.cli.pick", "apply_size_check"),
    ("read", "deeppicker_relion.picking.pipeline", "read_micrograph"),
    ("prepare, other", "deeppicker_relion.picking.pipeline", "prepare"),
    ("resample", "deeppicker_relion.picking.preprocess", "_fourier_resample"),
    ("normalise", "deeppicker_relion.picking.preprocess", "normalise"),
    ("score", "deeppicker_relion.picking.pipeline", "score_map_dense"),
    ("centre", "deeppicker_relion.picking.candidates", "recentre"),
    ("peak finding", "deeppicker_relion.picking.pipeline", "find_candidates"),
    ("writing", "deeppicker_relion.jobs.pick", "write_outputs"),
    ("writing", "deeppicker_relion.jobs.pick", "write_star"),
    ("report", "deeppicker_relion.jobs.report", "write_pick_report"),
]
BACKGROUND = {"read", "prepare, other", "resample", "normalise"}  # the read-ahead thread's stages


def stage_profile() -> dict[str, float]:
    """Wrap the STAGES' functions (in the modules that call them) with timers; returns the dict
    that accumulates seconds per stage (thread-safe enough: one writer per stage and thread)."""
    import importlib
    import threading

    totals: dict[str, float] = {}
    local = threading.local()

    def wrap(stage, fn):
        def timed(*args, **kwargs):
            stack = getattr(local, "stack", None)
            if stack is None:
                stack = local.stack = []
            if any(frame[0] == "size check" for frame in stack):
                return fn(*args, **kwargs)  # inside the size check: counted there
            stack.append([stage, 0.0])
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                _, children = stack.pop()
                totals[stage] = totals.get(stage, 0.0) + elapsed - children
                if stack:
                    stack[-1][1] += elapsed
        return timed

    for stage, module, name in STAGES:
        if module is None:
            continue
        mod = importlib.import_module(module)
        if hasattr(mod, name):
            setattr(mod, name, wrap(stage, getattr(mod, name)))
    return totals


def job_worker(outdir: str, micrographs: list[str], box: float, extra: list[str]) -> dict:
    """In this process: `deeppicker pick` on the micrographs (the report included), every stage timed."""
    started = time.perf_counter()
    totals = stage_profile()  # imports the package (start-up)
    from deeppicker_relion.cli.main import main as cli_main

    totals["start-up"] = time.perf_counter() - started
    begin = time.perf_counter()
    code = cli_main(["pick", *micrographs, "--box", f"{box:.2f}", "-o", outdir, *extra])
    main_seconds = time.perf_counter() - begin
    return {"stages": totals, "main_seconds": main_seconds, "exit": code,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_job(paths: list[Path], extra: list[str]) -> dict:
    """Our whole command on ``paths`` in a fresh process (start-up included): wall seconds and the
    worker's stage times; ``extra``: more `deeppicker pick` options."""
    box = DIAMETER_A / JOB_PIXEL_A
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--job-worker", tmp, f"{box}", *map(str, paths), "--", *extra]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"deeppicker pick failed: {done.stderr[-2000:]}")
        out = json.loads(done.stdout.strip().splitlines()[-1])
    out["wall"] = wall
    out["stages"]["start-up"] = wall - out["main_seconds"]  # interpreter + imports
    return out


def stage_table(job: dict, n: int) -> list[str]:
    """The per-stage table of one job run."""
    wall, stages = job["wall"], job["stages"]
    lines = [f"{'stage':<16} {'seconds':>8} {'per mic':>8} {'% of wall':>9}", "-" * 44]
    names = list(dict.fromkeys(stage for stage, _, _ in STAGES))
    foreground = 0.0
    for name in names:
        sec = stages.get(name, 0.0)
        if name not in BACKGROUND:
            foreground += sec
        tag = " (read-ahead thread)" if name in BACKGROUND else ""
        lines.append(f"{name:<16} {sec:8.2f} {sec / n:8.3f} {100 * sec / wall:8.1f}%{tag}")
    other = wall - foreground
    lines.append(f"{'other':<16} {other:8.2f} {other / n:8.3f} {100 * other / wall:8.1f}% (main thread, not in a stage)")
    lines.append(f"{'wall':<16} {wall:8.2f} {wall / n:8.3f} {100.0:8.1f}%")
    return lines


def job_benchmark(count: int, repeats: int, no_log: bool, extra: list[str]) -> None:
    """The real-size job: ours (whole command, report included) and LoG on the same micrographs,
    back to back, ``repeats`` times; per-stage table of our last run."""
    paths = make_job_micrographs(count)
    box = DIAMETER_A / JOB_PIXEL_A
    print(f"real-size job: {count} simulated {JOB_SIZE} x {JOB_SIZE} px micrographs, {JOB_PIXEL_A} A/px, "
          f"{DIAMETER_A:.0f} A particle = {box:.1f} px box, network grid "
          f"{round(JOB_SIZE * 64 / box)} px; {os.cpu_count()} CPU cores; `deeppicker pick` defaults"
          f"{' ' + ' '.join(extra) if extra else ''} (report included)", flush=True)
    ratios = []
    job = None
    for k in range(repeats):
        order = ["ours", "log"] if k % 2 == 0 else ["log", "ours"]
        ours = log_s = None
        for who in order:
            if who == "ours":
                job = run_job(paths, extra)
                ours = job["wall"] / count
            elif not no_log:
                log_s = run_peer("relion_log", JOB_SIZE, count, paths)
        ratio = f"{log_s / ours:.1f}x" if log_s else "-"
        if log_s:
            ratios.append(log_s / ours)
        print(f"run {k + 1}: ours {ours:.2f} s per micrograph (peak RSS {job['peak_rss_mb']:.0f} MB), "
              f"LoG {log_s:.2f} s per micrograph; LoG / ours = {ratio}" if log_s else
              f"run {k + 1}: ours {ours:.2f} s per micrograph", flush=True)
    if ratios:
        print(f"LoG / ours over {len(ratios)} runs: median {sorted(ratios)[len(ratios) // 2]:.1f}x "
              f"(min {min(ratios):.1f}x, max {max(ratios):.1f}x)")
    print("per-stage profile of our last run (exclusive seconds over the job):")
    print("\n".join(stage_table(job, count)), flush=True)


def gpu_worker(size: int, count: int, gpu: str) -> dict:
    """In this process: a pick job of ``count`` micrographs of ``size`` on CUDA device ``gpu`` with the
    job code (run_pick_job: read-ahead threads, several micrographs per batch, mixed precision),
    after a warm-up job on 2 of them; micrographs per second and the share of the wall time the GPU
    spent in the dense passes (CUDA events around each batch's network pass)."""
    import pandas as pd
    import torch

    from deeppicker_relion.picking import scoring
    from deeppicker_relion.model import load_model
    from deeppicker_relion.jobs.pick import PickJob, run_pick_job
    from deeppicker_relion.picking.pipeline import ParticleSize, resolve_device

    device = resolve_device(gpu)
    model, _ = load_model(None, device)
    paths = make_micrographs(size, count)
    mics = pd.DataFrame({"name": [p.name for p in paths], "path": [str(p) for p in paths]})
    busy: list[tuple] = []
    dense = type(model).dense_logits

    def timed(self, image, step=4):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = dense(self, image, step)
        end.record()
        busy.append((start, end, image.shape[0]))
        return out

    type(model).dense_logits = timed
    with tempfile.TemporaryDirectory() as tmp:
        run_pick_job(mics.iloc[:2], model, PickJob(Path(tmp) / "warm", ParticleSize(box_px=BOX_PX), resume=False), str(device))
        torch.cuda.synchronize()
        busy.clear()
        start = time.perf_counter()
        run_pick_job(mics, model, PickJob(Path(tmp) / "job", ParticleSize(box_px=BOX_PX), resume=False), str(device))
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    gpu_seconds = sum(a.elapsed_time(b) for a, b, _ in busy) / 1000
    return {"size": size, "count": count, "wall": wall, "per_second": count / wall, "gpu_busy": gpu_seconds / wall,
            "batches": len(busy), "batch_sizes": sorted({n for _, _, n in busy}), "half": scoring.half_precision(device),
            "card": torch.cuda.get_device_name(device), "gpu_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def gpu_benchmark(sizes: list[int], count: int, gpu: str) -> None:
    """Micrographs per second per size on the GPU, each size in a fresh process."""
    from deeppicker_relion.errors import DeepPickerError
    from deeppicker_relion.picking.pipeline import resolve_device

    try:
        resolve_device(gpu)
    except DeepPickerError as err:
        sys.exit(f"speed.py: error: {err}")
    print(f"GPU job: {count} simulated micrographs per size, box {BOX_PX:.0f} px, the job code (read-ahead, "
          "several micrographs per batch), model loaded before the clock; warm-up job not timed", flush=True)
    print(f"{'size':>6} {'mic/s':>7} {'s/mic':>7} {'GPU busy':>8} {'batches':>7} {'batch':>8} {'half':>5} {'GPU MB':>7}  card")
    for size in sizes:
        make_micrographs(size, count)
        cmd = [sys.executable, __file__, "--gpu-worker", str(size), str(count), "--gpu", gpu]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"{size:>6} {out['per_second']:7.2f} {1 / out['per_second']:7.3f} {100 * out['gpu_busy']:7.0f}% "
              f"{out['batches']:>7} {','.join(map(str, out['batch_sizes'])):>8} {str(out['half']):>5} "
              f"{out['gpu_peak_mb']:7.0f}  {out['card']}", flush=True)


def worker(size: int, method: str, repeats: int, gpu: str | None) -> dict:
    """Pick ``repeats`` micrographs of one size in this process; per-micrograph seconds and peak RSS."""
    import torch

    from deeppicker_relion.io.coords import write_coordinates
    from deeppicker_relion.model import default_weights_path, load_model, DeepPickerNet
    from deeppicker_relion.picking.pipeline import ParticleSize, pick_prepared, prepare, resolve_device

    torch.set_num_threads(os.cpu_count() or 1)
    device = resolve_device(gpu)
    if default_weights_path().is_file():
        model, _ = load_model(None, device)
    else:  # timing does not depend on the weights' values
        model = DeepPickerNet().eval().to(device)
    if method in ("dense1", "dense4"):
        model.augment = int(method[-1])
    paths = make_micrographs(size, repeats)
    size_spec = ParticleSize(box_px=BOX_PX)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up on the first micrograph (imports, thread pools, oneDNN kernels), not timed
        warm = pick_prepared(prepare("w", str(paths[0]), size_spec), model, device=device, patch_by_patch=False)
        write_coordinates(Path(tmp) / "warm-up.star", warm.picks, "star")
        for path in paths:
            start = time.perf_counter()
            prep = prepare(path.name, str(path), size_spec)
            result = pick_prepared(prep, model, device=device, patch_by_patch=(method == "patches"))
            write_coordinates(Path(tmp) / f"{path.stem}.star", result.picks, "star")
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    return {"size": size, "method": method, "seconds": sorted(times)[len(times) // 2], "all": times,
            "peak_rss_mb": peak_mb, "gpu_peak_mb": gpu_mb, "resampled": int(round(size * 64 / BOX_PX))}


def run_worker(size: int, method: str, repeats: int, gpu: str | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(size), method, "--repeats", str(repeats)]
    if gpu:
        cmd += ["--gpu", gpu]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_peer(peer: str, size: int, count: int, paths: list[Path] | None = None) -> float | None:
    """Seconds per micrograph of a peer picker's whole run on ``count`` micrographs of ``size``
    (``peer``: "topaz" or "relion_log"), or None when it is not installed."""
    sys.path.insert(0, str(HERE))
    import peers

    if not (peers.topaz_available() if peer == "topaz" else peers.relion_log_available()):
        return None
    box, pixel = (BOX_PX, PIXEL_A) if paths is None else (DIAMETER_A / JOB_PIXEL_A, JOB_PIXEL_A)
    paths = make_micrographs(size, count) if paths is None else paths
    with tempfile.TemporaryDirectory() as tmp:
        if peer == "topaz":
            _, seconds = peers.run_topaz(paths, box, Path(tmp), threshold=-6.0)
        else:
            _, seconds = peers.run_relion_log(paths, box, pixel, Path(tmp))
    return seconds / count


def run_cli(size: int, count: int) -> float:
    """Our whole `deeppicker pick` command on the same micrographs (process start-up included)."""
    paths = make_micrographs(size, count)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(["deeppicker", "pick", *map(str, paths), "--box", str(BOX_PX), "-o", tmp, "--no-report"],
                       check=True, capture_output=True)
        return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 2048, 4096],
                        help="micrograph sizes of the table (none: only the --job section)")
    parser.add_argument("--patch-sizes", type=int, nargs="*", default=None,
                        help="sizes to time patch-by-patch (default: all; 4k takes a few minutes)")
    parser.add_argument("--repeats", type=int, default=3, help="micrographs per size (median reported)")
    parser.add_argument("--no-topaz", action="store_true")
    parser.add_argument("--no-log", action="store_true", help="skip RELION's LoG picker")
    parser.add_argument("--gpu", default=None)
    parser.add_argument("--job", type=int, default=None, metavar="N",
                        help="after the table, the real-size job: N simulated 4096 px micrographs (110 px box) picked "
                             "by the whole command and by LoG, back to back, with the per-stage table")
    parser.add_argument("--job-repeats", type=int, default=2, help="runs of the job (ours and LoG each)")
    parser.add_argument("--worker", nargs=2, metavar=("SIZE", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--job-worker", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-count", type=int, default=20, help="--gpu: micrographs per size (default 20)")
    parser.add_argument("--gpu-worker", nargs=2, metavar=("SIZE", "COUNT"), help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.job_worker:
        outdir, box, *mics = args.job_worker
        print(json.dumps(job_worker(outdir, mics, float(box), extra)))
        return
    if args.gpu_worker:
        print(json.dumps(gpu_worker(int(args.gpu_worker[0]), int(args.gpu_worker[1]), args.gpu)))
        return
    if args.gpu:
        gpu_benchmark(args.sizes, args.gpu_count, args.gpu)
        return
    if args.worker:
        print(json.dumps(worker(int(args.worker[0]), args.worker[1], args.repeats, args.gpu)))
        return
    patch_sizes = args.sizes if args.patch_sizes is None else args.patch_sizes
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {' '.join(sys.argv)}; {os.uname().nodename}, "
          f"{os.cpu_count()} CPU cores; torch {__import__('torch').__version__}", flush=True)
    if args.sizes:
        print(f"box {BOX_PX:.0f} px (diameter {DIAMETER_A:.0f} A at {PIXEL_A} A/px); {os.cpu_count()} CPU cores; "
              f"device {'cuda:' + args.gpu if args.gpu else 'cpu'}; median of {args.repeats} micrographs")
        header = f"{'size':>6} {'resampled':>9} {'dense x1 s':>10} {'dense s':>8} {'dense x4 s':>10} {'RSS MB':>7} {'patches s':>9} {'RSS MB':>7} {'speed-up':>8} {'CLI s':>6} {'Topaz s':>8} {'vs Topaz':>8} {'LoG s':>6} {'vs LoG':>7}"
        print(header)
        print("-" * len(header))
        for size in args.sizes:
            make_micrographs(size, args.repeats)
            dense1 = run_worker(size, "dense1", args.repeats, args.gpu)
            dense = run_worker(size, "dense", args.repeats, args.gpu)
            dense4 = run_worker(size, "dense4", args.repeats, args.gpu)
            patches = run_worker(size, "patches", 1, args.gpu) if size in patch_sizes else None
            cli = run_cli(size, args.repeats)
            topaz = None if args.no_topaz else run_peer("topaz", size, args.repeats)
            relion_log = None if args.no_log else run_peer("relion_log", size, args.repeats)
            ps = f"{patches['seconds']:9.2f} {patches['peak_rss_mb']:7.0f} {patches['seconds'] / dense['seconds']:7.1f}x" if patches else f"{'-':>9} {'-':>7} {'-':>8}"
            ts = f"{topaz:8.2f} {topaz / cli:7.1f}x" if topaz else f"{'-':>8} {'-':>8}"
            ts += f" {relion_log:6.2f} {relion_log / cli:6.1f}x" if relion_log else f" {'-':>6} {'-':>7}"
            print(f"{size:>6} {dense['resampled']:>9} {dense1['seconds']:10.3f} {dense['seconds']:8.3f} {dense4['seconds']:10.3f} {dense['peak_rss_mb']:7.0f} {ps} {cli:6.2f} {ts}", flush=True)
        print("dense/patches: one micrograph in-process, end to end (read, preprocess, score, pick, write), with the")
        print("shipped model's test-time augmentation (x2); dense x1 / x4: --augment 1 / 4;")
        print("CLI, Topaz and LoG: whole commands on the same micrographs, wall time / micrographs (start-up included).")
    if args.job is not None:
        print()
        job_benchmark(args.job, args.job_repeats, args.no_log, extra)


if __name__ == "__main__":
    main()
