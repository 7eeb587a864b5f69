"""DeepPicker particle picking as a RELION External job (RELION 3.1, 4 and 5).

In RELION's External job: External executable = deeppicker_relion_pick; Input micrographs = a
micrographs STAR (e.g. CtfFind/job004/micrographs_ctf.star); Params tab: particle_diameter (Angstrom,
required) and optionally threshold, max_picks, gpu, weights, pickname, relion_version. Output, in
the job directory: one coordinate STAR per micrograph in RELION's sub-folder layout
(<job>/<micrograph path without Type/jobNNN/ and extension>_<pickname>.star; rlnCoordinateX = column,
rlnCoordinateY = row, particle centres in pixels of the micrograph, score in
rlnAutopickFigureOfMerit), the coordinate node for Extract (3.1: coords_suffix_<pickname>.star;
4/5: autopick.star), RELION_OUTPUT_NODES.star, particles.cs for CryoSPARC, candidates/ (for
re-thresholding), picking_summary.star (per micrograph: expected particles, expected precision of
its picks, flag), failed_micrographs.star, and a second output node, micrographs_with_particles.star:
the input micrographs less those flagged empty or mostly ice / carbon / contamination, for Extract.
The score in rlnAutopickFigureOfMerit is the figure of merit: the calibrated probability that the
pick is a particle; the threshold applies to it and to nothing else.

Continue (the same command in the same job directory) skips micrographs already picked; with a new
threshold or max_picks it first re-thresholds them from the saved candidates, without scoring again.

Example usage (what RELION runs, in the project directory):
  deeppicker_relion_pick --o External/job005/ --in_mics CtfFind/job004/micrographs_ctf.star \\
      --particle_diameter 180 --threshold 0.6 --j 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Sequence

from deeppicker_relion.errors import JobError

from .job import Progress, RelionJob, make_parser, optional, run_external

DEFAULT_SIZE_CHECK = "auto"  # = deeppicker_relion.picking.sizecheck.DEFAULT_MODE (tested); that module imports torch

PROGRAM = "deeppicker_relion_pick"
SETTINGS = "deeppicker_settings"
log = logging.getLogger("deeppicker.relion.pick")


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    first, _, rest = doc.partition("\n")
    parser = make_parser(PROGRAM, first, rest.strip())
    parser.add_argument("--in_mics", metavar="STAR", help="input micrographs STAR (RELION: Input micrographs)")
    optional(parser, "--particle_diameter", type=float, default=None, metavar="A",
             help="particle diameter in Angstrom (required)")
    optional(parser, "--threshold", type=float, default=0.6, metavar="P",
             help="minimum figure of merit 0..1 (default 0.6): the calibrated probability that a pick is a particle, "
                  "written as rlnAutopickFigureOfMerit; a new value on continue re-thresholds without re-scoring")
    optional(parser, "--max_picks", type=int, default=None, metavar="N",
             help="at most N picks per micrograph, best first (default: no limit; 0 = no limit)")
    optional(parser, "--augment", type=int, default=None, metavar="N",
             help="test-time augmentation: score each window over 1, 2 (and its half turn), 4 (rotations) or 8 "
                  "(and mirror images) symmetric copies (default: what the model was calibrated with; the shipped "
                  "model: 2, with calibrations for 1 and 4 too)")
    optional(parser, "--dark_sigma", type=float, default=4.0, metavar="K",
             help="drop candidates in or near dark regions over 2 boxes large (contamination, ice crystals) "
                  "darker than K robust SDs (default 4; 0 = off)")
    optional(parser, "--recentre", default="yes", metavar="YES/NO",
             help="move each pick to the particle centre the shipped centring network reads around it (default "
                  "yes, with models that normalise micrographs as it does, such as the shipped one; no: keep the "
                  "score map's peaks)")
    optional(parser, "--size_check", default=DEFAULT_SIZE_CHECK, metavar="MODE",
             help="before picking, score the first, middle and last micrograph at the given diameter and at x / / "
                  "1.4 of it; where another size finds at least twice the confident candidates (a diameter much too "
                  "large, or a hollow particle's inner ring): auto (default: pick at that size if it is larger and holds "
                  "at least 15 of them per micrograph and the model is the shipped cross-molecule one, else warn), "
                  "warn (log the size found, pick at the given diameter), adopt (pick at the size found) or off")
    optional(parser, "--gpu", default="", metavar="IDS",
             help="CUDA devices, e.g. 0, or 0,1 for one worker process per GPU; empty = CPU (default)")
    optional(parser, "--weights", default=None, metavar="FILE",
             help="model file (default: the shipped general model; or model.safetensors of a "
                  "deeppicker_relion_train job)")
    optional(parser, "--pickname", default="deeppicker", metavar="NAME",
             help="suffix of the coordinate files (default deeppicker)")
    optional(parser, "--relion_version", default="auto", metavar="V",
             help="layout of the node files: auto (default: read default_pipeline.star), 3.1, 4 or 5")
    optional(parser, "--shard", default=None, metavar="I/N",
             help="pick only share I of N of the micrographs (several jobs in one directory; "
                  "then run deeppicker merge to write the node files and particles.cs)")
    return parser


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_arguments(args: argparse.Namespace) -> None:
    if not args.in_mics:
        raise JobError("no input micrographs: set 'Input micrographs' on the External job's Input tab (--in_mics)")
    if args.particle_diameter is None:
        raise JobError("no particle diameter: add the parameter particle_diameter (in Angstrom) on the Params tab")
    if not (math.isfinite(args.particle_diameter) and args.particle_diameter > 0):
        raise JobError(f"particle_diameter must be a positive number of Angstrom (got {args.particle_diameter})")
    if not (0.0 <= args.threshold <= 1.0):
        raise JobError(f"threshold must lie between 0 and 1 (got {args.threshold})")
    from deeppicker_relion.model import AUGMENTATIONS
    from deeppicker_relion.picking.candidates import check_dark_sigma

    if args.augment is not None and args.augment not in AUGMENTATIONS:
        raise JobError(f"augment must be one of {', '.join(map(str, AUGMENTATIONS))} (got {args.augment})")
    check_dark_sigma(args.dark_sigma, "dark_sigma")
    answer = str(args.recentre).strip().lower()
    if answer not in ("yes", "no", "true", "false", "1", "0"):
        raise JobError(f"recentre must be yes or no (got {args.recentre!r})")
    args.recentre = answer in ("yes", "true", "1")
    from deeppicker_relion.picking.sizecheck import MODES

    if args.size_check not in MODES:
        raise JobError(f"size_check must be one of {', '.join(MODES)} (got {args.size_check!r})")
    if args.max_picks is not None and args.max_picks <= 0:
        args.max_picks = None
    name = str(args.pickname)
    if not name or any(c in name for c in "/\\") or any(c.isspace() for c in name):
        raise JobError(f"pickname {name!r} must be a plain word (no slashes or spaces)")
    if args.j is None or args.j < 1:
        args.j = 1


def _previous_settings(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s is unreadable; treating the job as new", path)
        return None


def run(args: argparse.Namespace, job: RelionJob) -> None:
    """The job's work; any exception is turned into RELION's exit markers by :class:`RelionJob`."""
    _check_arguments(args)
    from deeppicker_relion.io import relion_nodes
    from deeppicker_relion.io.atomic import write_text_atomic
    from deeppicker_relion.io.micrographs import micrograph_list

    version, why = relion_nodes.resolve_relion_version(args.relion_version)
    mics = micrograph_list([args.in_mics])
    log.info("%d micrographs in %s; node files for RELION %s (%s)", len(mics), args.in_mics, version, why)

    import torch

    from deeppicker_relion.model import default_weights_path, load_model
    from deeppicker_relion.jobs.parallel import default_threads, parse_devices, pick_in_processes
    from deeppicker_relion.jobs.pick import (PARTICLE_MICROGRAPHS, PickJob, flags_message, parse_shard, rethreshold,
                                           run_pick_job, shard_rows, write_cryosparc, write_particle_micrographs)
    from deeppicker_relion.jobs.report import write_pick_report
    from deeppicker_relion.picking.candidates import PickParams
    from deeppicker_relion.picking.pipeline import ParticleSize, resolve_device
    from deeppicker_relion.picking.sizecheck import apply_size_check

    torch.set_num_threads(args.j)
    pick = PickJob(
        outdir=job.outdir,
        size=ParticleSize(diameter_A=args.particle_diameter),
        params=PickParams(threshold=args.threshold, max_picks=args.max_picks, dark_sigma=args.dark_sigma,
                          recentre=args.recentre),
        pickname=args.pickname,
        fmt="star",
        resume=True,
        shard=parse_shard(args.shard),
        augment=args.augment,
    )
    weights = Path(args.weights) if args.weights else default_weights_path()
    if not weights.is_file():
        raise JobError("weights file not found", weights)
    devices = parse_devices(args.gpu)
    if len(devices) > 1 and pick.shard is not None:
        raise JobError("--shard and a list of GPUs cannot be combined: give one GPU per shard")
    device = resolve_device(args.gpu)
    model, info = load_model(weights, device)
    log.info("model %s (%s); particle diameter %g A, threshold %g, max picks %s, device %s, %d threads",
             weights, info.get("recipe", "no recipe recorded"), args.particle_diameter, args.threshold,
             args.max_picks or "no limit", device, args.j)

    notes: list[str] = []
    # Continue: what were the micrographs already in this job directory picked with?
    tag = f".shard-{pick.shard[0]}-of-{pick.shard[1]}" if pick.shard else ""
    settings_path = job.outdir / f"{SETTINGS}{tag}.json"
    settings = {
        "particle_diameter": args.particle_diameter,
        "weights_sha256": _sha256(weights),
        "weights": str(weights),
        "pickname": args.pickname,
        "threshold": args.threshold,
        "max_picks": args.max_picks,
        "augment": args.augment,
        "dark_sigma": args.dark_sigma,
        "recentre": args.recentre,
        "size_check": args.size_check,
        "in_mics": str(args.in_mics),  # for deeppicker merge, which writes the node files of shards
        "relion_version": version,
    }
    previous = _previous_settings(settings_path)
    mine = shard_rows(mics, pick.shard)
    n_done = int(mine["name"].map(pick.is_done).sum())
    if previous is not None and n_done:
        # settings files written before dark_sigma / recentre existed: both were off. Another size_check
        # mode is refused by apply_size_check below only if it would pick at another size.
        before = {"dark_sigma": 0.0, "recentre": False}
        for key, what in (("particle_diameter", "particle diameter"), ("weights_sha256", "weights"),
                          ("augment", "augment setting"), ("dark_sigma", "dark_sigma setting"),
                          ("recentre", "recentre setting")):
            old = previous.get(key, before.get(key))
            if old != settings[key]:
                shown = previous.get("weights") if key == "weights_sha256" else old
                raise JobError(
                    f"{n_done} micrographs of this job were picked with another {what} ({shown}); "
                    "continuing with a different one would mix both: run a new job instead",
                    settings_path,
                )
    pick.size, size_note = apply_size_check(mics, model, pick.size, args.size_check, job.outdir, pick.params, device,
                                            reuse=True, picked_before=n_done)
    notes += [size_note] if size_note else []
    if previous is not None and n_done:
        keys = ("threshold", "max_picks")
        if any(previous.get(k, settings[k]) != settings[k] for k in keys):
            rethreshold(mics, pick)
            log.info("re-thresholded %d micrographs picked before from their saved candidates "
                     "(threshold %g -> %g, max picks %s -> %s; no re-scoring)",
                     n_done, previous.get("threshold"), args.threshold, previous.get("max_picks") or "no limit",
                     args.max_picks or "no limit")
    write_text_atomic(settings_path, json.dumps(settings, indent=1) + "\n")
    if n_done:
        log.info("%d of %d micrographs were picked before and are kept", n_done, len(mine))

    if len(devices) > 1:  # one worker process per GPU, each on 1/n of the micrographs, then merged
        del model
        summary = pick_in_processes(mics, pick, weights, devices, threads=default_threads(len(devices)))
    else:
        summary = run_pick_job(mics, model, pick, str(device), should_abort=job.should_abort, on_progress=Progress(log))
    table = summary.table
    n_failed = len(summary.failed)
    if summary.n_picked == 0:
        raise JobError(f"no micrograph could be picked ({n_failed} failed; see {pick.failed_path} and run.err)",
                       args.in_mics)
    picked = table.loc[table["status"] != "failed", "rlnMicrographName"].astype(str).tolist()
    if summary.n_particles == 0:
        log.warning("no particle scored %g or more: continue this job with a lower threshold (re-thresholding "
                    "takes seconds) before extracting", args.threshold)
    log.info("picked %d particles on %d of %d micrographs (%d of them picked before); %s",
             summary.n_particles, summary.n_picked, len(table), int((table["status"] == "done before").sum()),
             f"{n_failed} failed, listed in {pick.failed_path}" if n_failed else "none failed")
    if pick.shard is not None:
        log.info("shard %d/%d done (summary %s); run deeppicker merge to write the node files and particles.cs",
                 pick.shard[0], pick.shard[1], pick.summary_path.name)
        return
    n_cs = write_cryosparc(table, pick, job.outdir / "particles.cs")
    report = write_pick_report(job.outdir, summary, pick, mics,
                               notes=[f"model: {weights}", f"RELION {version} External job {args.o}", *notes])
    log.info("visual report: %s", report)
    job_dir = str(args.o)
    node = relion_nodes.write_coordinate_node(job_dir, picked, args.pickname, args.in_mics, version)
    mics_node = job_dir.rstrip("/") + "/" + PARTICLE_MICROGRAPHS
    n_mics = write_particle_micrographs(args.in_mics, table, job.outdir / PARTICLE_MICROGRAPHS)
    relion_nodes.write_output_nodes(job_dir, [(node, relion_nodes.COORDINATES), (mics_node, relion_nodes.MICROGRAPHS)],
                                    version)
    log.info("coordinates: %s (RELION %s node for Extract); CryoSPARC: %s (%d particles)",
             node, version, job.outdir / "particles.cs", n_cs)
    log.info("%s", flags_message(table, mics_node, n_mics))


def main(argv: Sequence[str] | None = None) -> int:
    return run_external(PROGRAM, argv, build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
