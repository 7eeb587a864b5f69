"""Several worker processes on one node: one per GPU (``--gpu 0,1``) or N on the CPU (``--processes
N``), each picking shard k of n (:func:`~deeppicker_relion.jobs.pick.shard_rows`) into the same output
folder; the shards are then merged (:func:`~deeppicker_relion.jobs.merge.merge_shards`, the code of
``deeppicker merge``). The CPU path runs exactly the code of the GPU path with ``cpu`` devices, so it
is what the tests exercise.

Workers are started with ``spawn`` (never ``fork`` after torch and its thread pools are up), load
the weights themselves and log to stderr with a ``[k/n device]`` prefix. SIGINT / SIGTERM of the
parent stop the workers; ``RELION_JOB_ABORT_NOW`` in the output folder stops all of them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from ..errors import DeepPickerError, JobError
from .merge import Merged, merge_shards
from .pick import Aborted, PickJob, abort_file_poller

log = logging.getLogger(__name__)

EXIT_OK, EXIT_JOB_ERROR, EXIT_ABORTED = 0, 2, 3


def parse_devices(gpu: str | None, processes: int | None = None) -> list[str]:
    """Devices of the worker processes: ``--gpu 0,1`` -> ``["cuda:0", "cuda:1"]`` (one process each,
    or ``processes`` spread over them); no GPU -> ``processes`` (default 1) times ``"cpu"``.
    Raises :class:`JobError` for a malformed list or when CUDA is missing."""
    ids: list[int] = []
    if gpu is not None and str(gpu).strip():
        try:
            ids = [int(v) for v in str(gpu).replace(" ", "").split(",") if v != ""]
        except ValueError:
            raise JobError(f"--gpu {gpu!r}: expected device numbers such as 0 or 0,1") from None
        if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
            raise JobError(f"--gpu {gpu!r}: device numbers must be distinct and >= 0")
    if processes is not None and processes < 1:
        raise JobError(f"--processes must be at least 1 (got {processes})")
    if not ids:
        return ["cpu"] * (processes or 1)
    import torch

    if not torch.cuda.is_available():
        raise JobError(f"--gpu {gpu} was given but CUDA is not available (PyTorch {torch.__version__})")
    if max(ids) >= torch.cuda.device_count():
        raise JobError(f"--gpu {gpu}: only {torch.cuda.device_count()} CUDA devices are visible")
    n = processes or len(ids)
    return [f"cuda:{ids[k % len(ids)]}" for k in range(n)]


def _worker(micrographs: pd.DataFrame, job: PickJob, weights: str | None, device: str, threads: int,
            level: int, abort_on_file: bool) -> None:
    """One worker process: pick shard ``job.shard`` on ``device``; the exit code tells the parent
    what happened (0 done, 2 job error already reported in one line, 3 aborted)."""
    import torch

    from ..model import load_model
    from .pick import run_pick_job

    k, n = job.shard  # type: ignore[misc]
    tag = f"[{k}/{n} {device}]"
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s {tag} %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it sends SIGTERM
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: temporary files are removed
    torch.set_num_threads(max(1, threads))
    every = max(1, len(micrographs) // n // 10)

    def progress(done: int, total: int, particles: int, seconds: float) -> None:
        if done % every == 0 or done == total:
            log.info("%d of %d micrographs, %d particles, %.1f s", done, total, particles, seconds)

    try:
        model, _ = load_model(weights, device)
        should_abort = abort_file_poller(job.outdir) if abort_on_file else None
        run_pick_job(micrographs, model, job, device, should_abort=should_abort, on_progress=progress)
    except Aborted:
        sys.exit(EXIT_ABORTED)
    except DeepPickerError as err:
        print(f"deeppicker: error: {tag} {err}", file=sys.stderr, flush=True)
        sys.exit(EXIT_JOB_ERROR)


def pick_in_processes(
    micrographs: pd.DataFrame,
    job: PickJob,
    weights: str | Path | None,
    devices: Sequence[str],
    threads: int = 1,
    abort_on_file: bool = True,
    on_start: Callable[[int], None] | None = None,
) -> Merged:
    """Pick ``micrographs`` with one worker process per entry of ``devices`` (``"cpu"``,
    ``"cuda:0"``...), worker k on shard k of n with ``threads`` CPU threads, then merge the shards
    into ``job.outdir`` (``picking_summary.star``, ``failed_micrographs.star``; the per-shard files
    are removed). Micrographs picked before are skipped when ``job.resume``.

    Raises :class:`Aborted` if a worker was aborted, :class:`JobError` if one failed.
    Check the job (output folder, weights, particle size) before: each worker would otherwise
    report the same problem.
    """
    if job.shard is not None:
        raise JobError("--shard and several processes (--processes / a --gpu list) cannot be combined")
    n = min(len(devices), max(1, len(micrographs)))
    if n < 1:
        raise JobError("no devices to pick on")
    ctx = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    procs = []
    for k in range(n):
        shard_job = replace(job, shard=(k, n))
        proc = ctx.Process(target=_worker, name=f"deeppicker-{k}-of-{n}",
                           args=(micrographs, shard_job, None if weights is None else str(weights), devices[k],
                                 threads, level, abort_on_file))
        procs.append(proc)
    log.info("picking %d micrographs in %d processes (%s), %d CPU threads each",
             len(micrographs), n, ", ".join(devices[:n]), threads)
    try:
        for proc in procs:
            proc.start()
        if on_start is not None:
            on_start(n)
        for proc in procs:
            proc.join()
    except BaseException:
        _stop(procs)
        raise
    codes = [proc.exitcode for proc in procs]
    if any(code == EXIT_ABORTED for code in codes):
        raise Aborted("abort requested")
    bad = [(k, code) for k, code in enumerate(codes) if code != EXIT_OK]
    if bad:
        what = ", ".join(f"{k}/{n} on {devices[k]} (exit code {code})" for k, code in bad)
        raise JobError(f"worker process {what} failed (its error is above); run the same command again to "
                       "pick the remaining micrographs")
    return merge_shards(job.outdir, n, micrographs, remove_shard_files=True)


def _stop(procs: list) -> None:
    """SIGTERM, then SIGKILL, every worker still running."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def default_threads(n_processes: int) -> int:
    """CPU threads per worker: the cores this process may use, shared evenly (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, n_processes))
