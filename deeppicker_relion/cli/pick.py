"""Pick particles on micrographs with a trained model (default: the shipped general model).

Writes one coordinate file per micrograph below OUTDIR, in RELION's layout
(OUTDIR/<micrograph path without Type/jobNNN/ and extension>_<pickname>.star), particle centres
in pixels of the original micrograph (rlnCoordinateX = column, rlnCoordinateY = row) with the score
as rlnAutopickFigureOfMerit; all candidates above a low floor are kept in OUTDIR/candidates/ so
--rethreshold can write new picks in seconds.

Example usage:
  deeppicker pick CtfFind/job003/micrographs_ctf.star --diameter 180 -o picks/
  deeppicker pick 'mics/*.mrc' --box 120 --threshold 0.7 --format box -o picks/
  deeppicker pick mics.star --diameter 180 -o picks/ --rethreshold --threshold 0.8
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from ..io.micrographs import micrograph_list
from ..model import load_model
from ..pickjob import PickJob, parse_shard, rethreshold, run_pick_job, write_cryosparc
from ..picking import PickParams
from ..pipeline import resolve_device
from ..selftrain import self_train
from ..training import TrainParams
from .common import add_compute_arguments, add_micrograph_arguments, add_size_arguments, particle_size, setup

log = logging.getLogger("deeppicker.pick")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_micrograph_arguments(parser)
    add_size_arguments(parser)
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    parser.add_argument("--weights", default=None, help="model file (default: the shipped general model)")
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum score, 0..1 (default 0.5)")
    parser.add_argument("--max-picks", type=int, default=None, help="at most this many picks per micrograph, best first")
    parser.add_argument("--format", choices=["star", "box", "txt"], default="star", help="coordinate format (default star)")
    parser.add_argument("--pickname", default="deeppicker", help="suffix of the coordinate files (default deeppicker)")
    parser.add_argument("--cs", action="store_true", help="also write OUTDIR/particles.cs for CryoSPARC")
    parser.add_argument("--no-clean", action="store_true", help="skip the ice-cleaning step (large connected high-score regions)")
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
    parser.add_argument("--report", action="store_true", help="write PNG and PDF report (picks drawn, score histogram)")
    add_compute_arguments(parser)


def main(args: argparse.Namespace) -> int:
    setup(args)
    size = particle_size(args)
    params = PickParams(threshold=args.threshold, max_picks=args.max_picks, clean=not args.no_clean)
    mics = micrograph_list(args.micrographs, args.angpix)
    job = PickJob(
        outdir=args.output,
        size=size,
        params=params,
        pickname=args.pickname,
        fmt=args.format,
        resume=not args.overwrite,
        shard=parse_shard(args.shard),
    )
    log.info("read %d micrographs from %s", len(mics), " ".join(args.micrographs))
    if args.rethreshold:
        summary = rethreshold(mics, job)
        log.info("re-thresholded %d micrographs at %.3f: %d particles", len(summary.table), args.threshold, summary.n_particles)
        return 0 if summary.failed.empty else 1
    device = resolve_device(args.gpu)
    model, info = load_model(args.weights, device)
    log.info("model %s (%s)", args.weights or "shipped general model", info.get("recipe", "no recipe recorded"))
    if args.self_train > 0:
        model, _ = self_train(mics, model, size, args.self_train, params, TrainParams(max_epochs=10), str(device))
        job.resume = False
    bar = tqdm(total=len(mics) if job.shard is None else len(mics.iloc[job.shard[0] :: job.shard[1]]), unit="mic", desc="picking")

    def progress(done: int, total: int, particles: int, seconds: float) -> None:
        bar.n = done
        bar.set_postfix(particles=particles)
        bar.refresh()

    summary = run_pick_job(mics, model, job, str(device), on_progress=progress, keep_results=args.report)
    bar.close()
    if args.cs:
        n = write_cryosparc(summary.table, job, args.output / "particles.cs")
        log.info("wrote %s (%d particles for CryoSPARC)", args.output / "particles.cs", n)
    if args.report:
        from ..report import write_pick_report

        write_pick_report(args.output, summary, job)
    log.info(
        "picked %d particles on %d of %d micrographs into %s (%d failed)",
        summary.n_particles, summary.n_picked, len(summary.table), args.output, len(summary.failed),
    )
    return 0 if summary.n_picked > 0 else 1
