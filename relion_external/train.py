"""DeepPicker training as a RELION External job: your own picks -> a model for deeppicker_relion_pick.

The semi-automated mode. In RELION's External job: External executable = deeppicker_relion_train;
Input micrographs = the micrographs STAR the particles were picked on; Input coordinates = the
output of a ManualPick job (3.1: ManualPick/jobNNN/coords_suffix_manualpick.star; 4/5:
ManualPick/jobNNN/manualpick.star) or of any picking job; Params tab: particle_diameter (Angstrom,
required) and optionally init (general = fine-tune the shipped general model, the default; scratch;
or a weights file), epochs, gpu, relion_version. Only micrographs with coordinates are used, and
negatives are drawn away from every given particle, so pick all particles of the micrographs you use.

Output: <job>/model.safetensors. Use it in a DeepPicker pick job: weights = External/jobNNN/model.safetensors.

Example usage (what RELION runs, in the project directory):
  deeppicker_relion_train --o External/job006/ --in_mics CtfFind/job004/micrographs_ctf.star \\
      --in_coords ManualPick/job005/coords_suffix_manualpick.star --particle_diameter 180 --j 4
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Sequence

from deeppicker_relion.errors import JobError

from .job import RelionJob, make_parser, optional, run_external

PROGRAM = "deeppicker_relion_train"
MODEL_FILE = "model.safetensors"
log = logging.getLogger("deeppicker.relion.train")


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    first, _, rest = doc.partition("\n")
    parser = make_parser(PROGRAM, first, rest.strip())
    parser.add_argument("--in_mics", metavar="STAR", help="micrographs STAR (RELION: Input micrographs)")
    parser.add_argument("--in_coords", metavar="STAR",
                        help="coordinates node (RELION: Input coordinates), e.g. of a ManualPick job")
    optional(parser, "--particle_diameter", type=float, default=None, metavar="A",
             help="particle diameter in Angstrom (required)")
    optional(parser, "--init", default="general", metavar="FROM",
             help="general (fine-tune the shipped general model, default), scratch, or a weights file")
    optional(parser, "--epochs", type=int, default=30, metavar="N",
             help="maximum epochs (default 30; stops early when the validation loss stops improving)")
    optional(parser, "--gpu", default="", metavar="IDS", help="CUDA device, e.g. 0; empty = CPU (default)")
    optional(parser, "--relion_version", default="auto", metavar="V",
             help="layout of RELION_OUTPUT_NODES.star: auto (default), 3.1, 4 or 5")
    optional(parser, "--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    return parser


def run(args: argparse.Namespace, job: RelionJob) -> None:
    """The job's work; any exception is turned into RELION's exit markers by :class:`RelionJob`."""
    if not args.in_mics:
        raise JobError("no input micrographs: set 'Input micrographs' on the External job's Input tab (--in_mics)")
    if not args.in_coords:
        raise JobError("no input coordinates: set 'Input coordinates' on the Input tab (--in_coords), "
                       "e.g. the output of a ManualPick job")
    if args.particle_diameter is None or not (math.isfinite(args.particle_diameter) and args.particle_diameter > 0):
        raise JobError("particle_diameter (in Angstrom) is required on the Params tab and must be positive")
    if args.epochs is None or args.epochs < 1:
        raise JobError(f"epochs must be at least 1 (got {args.epochs})")

    from deeppicker_relion.io import relion_nodes
    from deeppicker_relion.io.micrographs import coordinate_files, micrograph_list

    version, why = relion_nodes.resolve_relion_version(args.relion_version)
    mics = micrograph_list([args.in_mics])
    if not Path(args.in_coords).exists():
        raise JobError("coordinates file not found", args.in_coords)
    coords = coordinate_files(mics, [args.in_coords])
    if not coords:
        raise JobError(f"no coordinate file of it matches a micrograph of {args.in_mics}", args.in_coords)
    log.info("%d micrographs in %s, %d with coordinates from %s; RELION %s layout (%s)",
             len(mics), args.in_mics, len(coords), args.in_coords, version, why)

    import torch

    from deeppicker_relion.model import load_model
    from deeppicker_relion.pipeline import ParticleSize, resolve_device
    from deeppicker_relion.trainjob import train_from_files
    from deeppicker_relion.training import TrainParams

    torch.set_num_threads(max(1, args.j or 1))
    device = resolve_device(args.gpu)
    init_from = str(args.init or "general")
    init = None
    if init_from != "scratch":
        init, info = load_model(None if init_from == "general" else init_from, device)
        log.info("fine-tuning %s (%s)", "the shipped general model" if init_from == "general" else init_from,
                 info.get("recipe", "no recipe recorded"))
    else:
        log.info("training from scratch")
    output = job.outdir / MODEL_FILE
    train_from_files(
        mics, coords, ParticleSize(diameter_A=args.particle_diameter), output,
        TrainParams(max_epochs=args.epochs, seed=args.seed), init, str(device), progress=False,
        extra_info={"init": init_from, "relion_job": str(args.o), "in_coords": str(args.in_coords)},
        should_abort=job.should_abort,
    )
    node = f"{str(args.o).rstrip('/')}/{MODEL_FILE}"
    written = relion_nodes.write_output_nodes(args.o, [(node, relion_nodes.MODEL)], version)
    if not written:
        log.info("RELION 3.1 has no node type for a model file: %s is not listed as an output node", node)
    log.info("model written: %s; use it in a deeppicker_relion_pick job with the parameter weights = %s",
             node, node)


def main(argv: Sequence[str] | None = None) -> int:
    return run_external(PROGRAM, argv, build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
