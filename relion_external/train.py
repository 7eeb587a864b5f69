"""DeepPicker training as a RELION External job: your own picks, or several solved projects -> a model.

External executable = deeppicker_relion_train. Two ways, which can be combined:

Your own picks (semi-automated): Input micrographs = the micrographs STAR the particles were picked
on; Input coordinates = the output of a ManualPick job (3.1: ManualPick/jobNNN/coords_suffix_
manualpick.star; 4/5: ManualPick/jobNNN/manualpick.star) or of any picking job; Params tab:
particle_diameter (Angstrom). Negatives are drawn away from every given particle, so pick all
particles of the micrographs you use.

Several molecules (retrain the facility's general model inside RELION): Input particles = a
particles STAR of a solved molecule (Select, Class2D/3D, Refine3D: centres = coordinates minus the
refined shifts) with particle_diameter; on the Params tab one parameter per further molecule,
each labelled data and valued 'SOURCE DIAMETER [key=value ...]' (e.g. data = /data/P2/Refine3D/
job040/run_data.star 240; SOURCE as for deeppicker train --data: particles STAR, coordinate node,
CryoSPARC .cs, empiar:NNNNN); datasets = a list file of such lines; simulated = N micrographs of
random simulated molecules. Curated particle sets are incomplete: incomplete_labels = model keeps
background off the particles the vetting model confidently finds unlabelled (default none:
measured, docs/training.md).

Optional: init (general = fine-tune the shipped general model, the default; scratch; or a weights
file), epochs, fom_micrographs, gpu, incomplete_labels (none, model, weighted, blobs), relion_version, seed.

Output: <job>/model.safetensors (a RELION 4/5 output node). Use it in a DeepPicker pick job:
weights = External/jobNNN/model.safetensors.

Example usage (what RELION runs, in the project directory):
  deeppicker_relion_train --o External/job006/ --in_mics CtfFind/job004/micrographs_ctf.star \\
      --in_coords ManualPick/job005/coords_suffix_manualpick.star --particle_diameter 180 --j 4
  deeppicker_relion_train --o External/job030/ --in_parts Refine3D/job020/run_data.star --particle_diameter 180 \\
      --data /data/P2/Refine3D/job040/run_data.star 240 --data /data/P3/J42_particles.cs 120 root=/data/cs/P3 \\
      --simulated 24 --j 4
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
    parser.add_argument("--in_parts", metavar="STAR",
                        help="particles STAR of a solved molecule (RELION: Input particles), with particle_diameter")
    parser.add_argument("--data", nargs="*", action="append", default=[], metavar="SOURCE DIAMETER [key=value]",
                        help="one more molecule: SOURCE DIAMETER [key=value ...] (repeat the parameter per molecule)")
    optional(parser, "--datasets", default=None, metavar="LIST", help="a list file of data sets, one per line")
    optional(parser, "--simulated", type=int, default=0, metavar="N",
             help="mix in N micrographs of random simulated molecules (default 0)")
    optional(parser, "--incomplete_labels", default="none", metavar="HOW",
             help="background on curated (incomplete) sets: none (default), model, weighted or blobs (docs/training.md)")
    optional(parser, "--particle_diameter", type=float, default=None, metavar="A",
             help="particle diameter in Angstrom (required)")
    optional(parser, "--init", default="general", metavar="FROM",
             help="general (fine-tune the shipped general model, default), scratch, or a weights file")
    optional(parser, "--epochs", type=int, default=None, metavar="N",
             help="maximum epochs (default 30 for your picks, 20 for several molecules; stops early when the "
                  "validation loss stops improving)")
    optional(parser, "--gpu", default="", metavar="IDS", help="CUDA device, e.g. 0; empty = CPU (default)")
    optional(parser, "--relion_version", default="auto", metavar="V",
             help="layout of RELION_OUTPUT_NODES.star: auto (default), 3.1, 4 or 5")
    optional(parser, "--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    optional(parser, "--fom_micrographs", type=int, default=None, metavar="N",
             help="after training, fit the model's figure of merit on N simulated micrographs of random molecules "
                  "(default 48 with several molecules, about a minute; 0 for your picks of one particle: the "
                  "network's score is then the figure of merit)")
    return parser


def run(args: argparse.Namespace, job: RelionJob) -> None:
    """The job's work; any exception is turned into RELION's exit markers by :class:`RelionJob`."""
    several = bool(args.in_parts or args.data or args.datasets or args.simulated)
    if not several:
        if not args.in_mics:
            raise JobError("no input: set 'Input micrographs' and 'Input coordinates' (your picks), or 'Input "
                           "particles' / data parameters (solved molecules) on the External job")
        if not args.in_coords:
            raise JobError("no input coordinates: set 'Input coordinates' on the Input tab (--in_coords), "
                           "e.g. the output of a ManualPick job")
    if (args.in_coords or args.in_parts) and not _positive(args.particle_diameter):
        raise JobError("particle_diameter (in Angstrom) is required on the Params tab and must be positive")
    if args.epochs is None:
        args.epochs = 20 if several else 30
    if args.fom_micrographs is None:
        from deeppicker_relion.training.calibrate import DEFAULT_MICROGRAPHS

        args.fom_micrographs = DEFAULT_MICROGRAPHS if several else 0
    if args.fom_micrographs < 0:
        raise JobError(f"fom_micrographs must be 0 (none) or more (got {args.fom_micrographs})")
    if args.epochs < 1:
        raise JobError(f"epochs must be at least 1 (got {args.epochs})")
    if args.incomplete_labels not in ("none", "model", "weighted", "blobs"):
        raise JobError(f"incomplete_labels must be none, model, weighted or blobs (got {args.incomplete_labels!r})")

    from deeppicker_relion.io import relion_nodes

    version, why = relion_nodes.resolve_relion_version(args.relion_version)
    specs = _data_specs(args) if several else []
    if specs:
        from deeppicker_relion.training.datasets import read_datasets

        sets = read_datasets(specs, progress=False)
        log.info("%d data sets, %d micrographs, %d labelled particles; RELION %s layout (%s)", len(sets),
                 sum(len(s.micrographs) for s in sets), sum(s.n_particles for s in sets), version, why)
    else:
        from deeppicker_relion.io.micrographs import coordinate_files, micrograph_list

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
    from deeppicker_relion.picking.pipeline import ParticleSize, resolve_device
    from deeppicker_relion.jobs.train import train_from_datasets, train_from_files
    from deeppicker_relion.training.train import TrainParams

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
    extra = {"init": init_from, "relion_job": str(args.o)}
    if specs:
        params = TrainParams(max_epochs=args.epochs, seed=args.seed, negative_ratio=3.0, near_miss_fraction=0.3,
                             incomplete_labels=args.incomplete_labels, max_positives=300,
                             fom_micrographs=args.fom_micrographs)
        train_from_datasets(sets, output, params, init, str(device), progress=False,
                            extra_info={**extra, "data": [s.where for s in specs]}, should_abort=job.should_abort)
    else:
        train_from_files(
            mics, coords, ParticleSize(diameter_A=args.particle_diameter), output,
            TrainParams(max_epochs=args.epochs, seed=args.seed, fom_micrographs=args.fom_micrographs), init,
            str(device), progress=False,
            extra_info={**extra, "in_coords": str(args.in_coords)}, should_abort=job.should_abort,
        )
    node = f"{str(args.o).rstrip('/')}/{MODEL_FILE}"
    written = relion_nodes.write_output_nodes(args.o, [(node, relion_nodes.MODEL)], version)
    if not written:
        log.info("RELION 3.1 has no node type for a model file: %s is not listed as an output node", node)
    log.info("model written: %s; use it in a deeppicker_relion_pick job with the parameter weights = %s",
             node, node)


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _data_specs(args: argparse.Namespace) -> list:
    """The data sets of a several-molecule job: Input particles (+ particle_diameter), Input
    micrographs + coordinates (+ particle_diameter, your complete picks), each data parameter, the
    datasets list and simulated."""
    from deeppicker_relion.training.datasets import DataSpec, parse_spec, read_list

    specs = []
    if args.in_parts:
        specs.append(parse_spec([args.in_parts, f"{args.particle_diameter:g}"], "Input particles (--in_parts)"))
    if args.in_coords:
        if not args.in_mics:
            raise JobError("Input coordinates need Input micrographs (--in_mics)")
        specs.append(parse_spec([args.in_mics, f"{args.particle_diameter:g}", f"coords={args.in_coords}", "labels=complete"],
                                "Input coordinates (--in_coords)"))
    for tokens in args.data:
        specs.append(parse_spec(tokens, "data parameter '" + " ".join(tokens) + "'"))
    if args.datasets:
        specs += read_list(args.datasets)
    if args.simulated:
        if args.simulated < 0:
            raise JobError(f"simulated must be a number of micrographs (got {args.simulated})")
        specs.append(DataSpec("simulated", options={"n": str(args.simulated), "seed": str(args.seed)}, where="simulated"))
    return specs


def main(argv: Sequence[str] | None = None) -> int:
    return run_external(PROGRAM, argv, build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
