"""Pick particles on micrographs with a trained model (default: the shipped general model).

Writes one coordinate file per micrograph below OUTDIR, in RELION's layout
(OUTDIR/<micrograph path without Type/jobNNN/ and extension>_<pickname>.star), particle centres
in pixels of the original micrograph (rlnCoordinateX = column, rlnCoordinateY = row) with the score
as rlnAutopickFigureOfMerit; all candidates above a low floor are kept in OUTDIR/candidates/ so
--rethreshold can write new picks in seconds. The visual report (OUTDIR/logfile.pdf, report_*.png,
report.txt: picks drawn on a few micrographs, the score histogram with the threshold, picks per
micrograph) is written unless --no-report.

Example usage:
  deeppicker pick CtfFind/job003/micrographs_ctf.star --diameter 180 -o picks/
  deeppicker pick 'mics/*.mrc' --box 120 --threshold 0.7 --format box -o picks/
  deeppicker pick mics.star --diameter 180 -o picks/ --rethreshold --threshold 0.8
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..picking.centring import attached_centring
from ..errors import JobError
from ..io.micrographs import micrograph_list
from ..jobs.merge import write_shard_settings
from ..model import AUGMENTATIONS, default_weights_path, load_model
from ..jobs.parallel import default_threads, parse_devices, pick_in_processes
from ..jobs.pick import ABORT_FILE, Aborted, JobSummary, PickJob, abort_file_poller, parse_shard, prepare_output_dir
from ..jobs.pick import rethreshold, run_pick_job, shard_rows, write_cryosparc
from ..picking.candidates import PickParams, check_dark_sigma
from ..picking.pipeline import check_particle_size
from ..picking.selftrain import self_train
from ..picking.sizecheck import DEFAULT_MODE, MODES, STRONG_PER_MICROGRAPH, apply_size_check, recorded_factor, scaled_size
from ..training.train import TrainParams
from .common import add_compute_arguments, add_micrograph_arguments, add_size_arguments, particle_size, setup

log = logging.getLogger("deeppicker.pick")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_micrograph_arguments(parser)
    add_size_arguments(parser)
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    parser.add_argument("--weights", default=None, help="model file (default: the shipped general model)")
    parser.add_argument("--threshold", type=float, default=PickParams().threshold,
                        help=f"minimum figure of merit, 0..1 (default {PickParams().threshold:g}): the calibrated probability that a "
                        "pick is a particle, written as rlnAutopickFigureOfMerit; picks are exactly the candidates "
                        "whose figure of merit is at least this")
    parser.add_argument("--max-picks", type=int, default=None, help="at most this many picks per micrograph, best first")
    parser.add_argument("--augment", type=int, choices=list(AUGMENTATIONS), default=None,
                        help="score each window as the mean over 1, 2 (and its half turn), 4 (rotations) or 8 "
                             "(and mirror images) symmetric copies (default: what the model was calibrated with; "
                             "the shipped model: 2, with calibrations for 1 and 4 too); 1 scores 2x faster, 4 "
                             "centres slightly better at twice the time")
    parser.add_argument("--format", choices=["star", "box", "txt"], default="star", help="coordinate format (default star)")
    parser.add_argument("--pickname", default="deeppicker", help="suffix of the coordinate files (default deeppicker)")
    parser.add_argument("--cs", action="store_true", help="also write OUTDIR/particles.cs for CryoSPARC")
    parser.add_argument("--no-clean", action="store_true", help="skip the ice-cleaning step (large connected high-score regions)")
    parser.add_argument("--dark-sigma", type=float, default=4.0, metavar="K",
                        help="drop candidates in or near dark regions over 2 boxes large (contamination, ice crystals) "
                             "darker than K robust SDs at 0.5-2.5 box scales (default 4; 0 = off; applied when scoring, "
                             "not by --rethreshold)")
    parser.add_argument("--no-recentre", action="store_true",
                        help="keep each pick where the score map peaks instead of moving it to the particle centre "
                             "the shipped centring network reads around it (used by default with models that "
                             "normalise micrographs as it does, such as the shipped one; applied when scoring)")
    parser.add_argument("--size-check", choices=MODES, default=DEFAULT_MODE,
                        help="before picking, score the first, middle and last micrograph at the given size and at "
                             "x / / 1.4 of it; where another size finds at least twice the confident candidates "
                             "(a diameter much too large, or a hollow particle's inner ring), auto (default): pick "
                             "at that size if it is larger and holds at least "
                             f"{STRONG_PER_MICROGRAPH} of them per micrograph and the model is a cross-molecule one "
                             "(the shipped model), else warn; warn: log the size found and pick at the given one; "
                             "adopt: pick at the size found; off. Recorded in OUTDIR/size_check.json")
    parser.add_argument(
        "--self-train",
        type=int,
        default=0,
        metavar="N",
        help="self-training iteration: fine-tune on the top N picks of each micrograph, then pick again (default off)",
    )
    parser.add_argument("--rethreshold", action="store_true", help="rewrite picks from saved candidates with a new --threshold / --max-picks; no scoring")
    parser.add_argument("--overwrite", action="store_true", help="pick every micrograph again (default: skip those already picked)")
    parser.add_argument("--shard", default=None, help="pick only share i of n of the micrographs, e.g. 0/4 (see deeppicker merge)")
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        metavar="N",
        help="worker processes on this machine, each picking 1/N of the micrographs, then merged (default: one "
        "per GPU of --gpu, else 1)",
    )
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="skip the visual report (OUTDIR/logfile.pdf, report_*.png, report.txt: picks drawn on a few "
        "micrographs, score histogram, picks per micrograph); written by default",
    )
    add_compute_arguments(parser)


def main(args: argparse.Namespace) -> int:
    setup(args)
    size = particle_size(args)
    check_dark_sigma(args.dark_sigma, "--dark-sigma")
    params = PickParams(threshold=args.threshold, max_picks=args.max_picks, clean=not args.no_clean,
                        dark_sigma=args.dark_sigma,
                        recentre=not args.no_recentre)
    mics = micrograph_list(args.micrographs, args.angpix)
    job = PickJob(
        outdir=args.output,
        size=size,
        params=params,
        pickname=args.pickname,
        fmt=args.format,
        resume=not args.overwrite,
        shard=parse_shard(args.shard),
        augment=args.augment,
    )
    prepare_output_dir(job.outdir)
    log.info("read %d micrographs from %s", len(mics), " ".join(args.micrographs))
    if args.rethreshold:
        job.size = scaled_size(size, recorded_factor(job.outdir, size))  # as the picking run did
        summary = rethreshold(mics, job)
        log.info("re-thresholded %d micrographs at %.3f: %d particles", len(summary.table), args.threshold, summary.n_particles)
        if args.cs or (args.output / "particles.cs").exists():  # never left at another threshold than the picks
            n = write_cryosparc(summary.table, job, args.output / "particles.cs")
            log.info("wrote %s (%d particles for CryoSPARC)", args.output / "particles.cs", n)
        _report(args, summary, job, mics, ["re-thresholded from the saved candidates (no re-scoring)"])
        return 0 if summary.failed.empty else 1
    devices = parse_devices(args.gpu, args.processes)
    device = devices[0]
    model, info = load_model(args.weights, device if len(devices) == 1 else "cpu")  # workers load their own
    model_text = f"model {args.weights or 'shipped general model'} ({info.get('recipe', 'no recipe recorded')})"
    if args.augment is not None:
        model.augment = args.augment
    model_text += f", test-time augmentation x{model.augment}"
    if model.augment != model.calibrated_augment and model.calibrated_augment is not None:
        model_text += (f" (its calibration for x{model.augment})" if model.augment in model.augment_calibration
                       else f" (no calibration for x{model.augment} in the weights: scores calibrated for x{model.calibrated_augment})")
    model_text += f", micrographs normalised by {model.normalisation!r} (preprocess.normalise)"
    if not params.recentre:
        model_text += ", picks at the score map's peaks (--no-recentre)"
    elif attached_centring(model) is None:
        model_text += f", picks at the score map's peaks (the centring network does not read {model.normalisation!r}-normalised micrographs)"
    else:
        model_text += ", picks re-centred by the shipped centring network"
    log.info("%s", model_text)
    # micrographs this folder's earlier runs picked: the size check refuses to pick the rest at another size
    picked_before = int(shard_rows(mics, job.shard)["name"].map(job.is_done).sum()) if job.resume else 0
    job.size, size_note = apply_size_check(mics, model, size, args.size_check, job.outdir, params,
                                           device if len(devices) == 1 else "cpu", reuse=job.resume,
                                           picked_before=picked_before)
    if size_note:
        model_text += f"; {size_note}"
    if args.self_train > 0:
        if len(devices) > 1:
            raise JobError("--self-train runs in one process: drop --processes and give one --gpu")
        model, _ = self_train(mics, model, job.size, args.self_train, params, TrainParams(max_epochs=10), str(device))
        job.resume = False
        model_text += f", self-trained on the top {args.self_train} picks of each micrograph"
    if job.shard is not None:
        write_shard_settings(job.outdir, job.shard, _settings(args))
    try:
        summary = _pick(args, mics, model, job, devices)
    except Aborted:
        print(f"deeppicker: aborted on request ({job.outdir / ABORT_FILE} exists); the micrographs picked are kept: "
              "delete that file and run the same command to pick the rest", file=sys.stderr)
        return 3
    if args.cs:
        n = write_cryosparc(summary.table, job, args.output / "particles.cs")
        log.info("wrote %s (%d particles for CryoSPARC)", args.output / "particles.cs", n)
    _report(args, summary, job, mics, [model_text])
    log.info(
        "picked %d particles on %d of %d micrographs into %s (%d failed)",
        summary.n_particles, summary.n_picked, len(summary.table), args.output, len(summary.failed),
    )
    return 0 if summary.n_picked > 0 else 1


def _settings(args: argparse.Namespace) -> dict:
    """What this shard picks with; deeppicker merge checks that all shards agree."""
    weights = Path(args.weights) if args.weights else default_weights_path()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
    size = {"particle_diameter": args.diameter} if args.diameter is not None else {"box_px": args.box}
    return {**size, "weights_sha256": digest, "pickname": args.pickname, "threshold": args.threshold,
            "max_picks": args.max_picks, "augment": args.augment,
            "dark_sigma": args.dark_sigma, "recentre": not args.no_recentre, "size_check": args.size_check,
            "micrographs": list(args.micrographs)}


def _pick(args: argparse.Namespace, mics, model, job: PickJob, devices: list[str]) -> JobSummary:
    """One process with a progress bar, or one worker process per device (then merged)."""
    if len(devices) > 1:
        check_particle_size(mics, job.size)  # once here, not once per worker
        threads = args.threads if args.threads and args.threads > 0 else default_threads(len(devices))
        merged = pick_in_processes(mics, job, args.weights, devices, threads)
        return JobSummary(merged.table, merged.failed, [])
    total = len(shard_rows(mics, job.shard))
    with logging_redirect_tqdm(), tqdm(total=total, unit="mic", desc="picking", disable=None) as bar:

        def progress(done: int, total: int, particles: int, seconds: float) -> None:
            bar.n = done
            bar.set_postfix(particles=particles, refresh=False)
            bar.refresh()

        return run_pick_job(mics, model, job, devices[0], should_abort=abort_file_poller(job.outdir),
                            on_progress=progress)


def _report(args: argparse.Namespace, summary: JobSummary, job: PickJob, mics, notes: list[str]) -> None:
    """The visual report, unless --no-report; a shard leaves it to ``deeppicker merge`` (it needs
    the whole job)."""
    if args.no_report:
        return
    if job.shard is not None:
        log.info("report: skipped for a shard (written for the whole job by deeppicker merge)")
        return
    from ..jobs.report import write_pick_report

    pdf = write_pick_report(args.output, summary, job, mics, notes=notes)
    log.info("report: %s (and report.txt, report_*.png)", pdf)
