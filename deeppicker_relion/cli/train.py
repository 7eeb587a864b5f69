"""Train a model: on your own picks (semi-automated mode), or on several solved projects (cross-molecule).

One data set (your picks on these micrographs): micrographs + --coords + --diameter. Coordinates: a
RELION coords_suffix_<name>.star node (3.1), a manualpick.star / autopick.star (4/5), or
coordinate files / globs / folders (.star, EMAN .box, x y text) whose names start with the
micrograph's name. Negatives are drawn at least 0.6 x box from every given particle, so the
coordinates should cover all particles of the micrographs used.

Several data sets, one per molecule, each with its own diameter (docs/training.md): --data SOURCE
DIAMETER [key=value ...] (repeatable) and/or --datasets LIST (one such line per data set). SOURCE:
a RELION particles STAR (Extract/Select/Class2D/3D/Refine3D; centres = coordinates minus the
refined shifts), a RELION coordinate node, a CryoSPARC particle .cs, empiar:NNNNN (downloaded into
a cache), or 'simulated' (random simulated molecules; also --simulated N). DIAMETER in Angstrom
(180) or pixels (56px). Curated particle sets are incomplete: --incomplete-labels model keeps
background off the particles the vetting model confidently finds unlabelled (measured: it did not
pick better, docs/training.md; default none).

Example usage:
  deeppicker train mics.star --coords ManualPick/job004/coords_suffix_manualpick.star --diameter 180 -o my.safetensors
  deeppicker train --data /data/P1/Refine3D/job020/run_data.star 180 \\
                   --data /data/P2/Class2D/job031/run_it025_data.star 240 mics=/data/P2/CtfFind/job004/micrographs_ctf.star \\
                   --data /data/P3/J42_particles.cs 120 root=/data/cs/P3 --simulated 24 -o facility.safetensors
  deeppicker train --datasets solved_projects.txt -o facility.safetensors
  deeppicker pick new/mics.star --diameter 150 --weights facility.safetensors -o picks/
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("deeppicker.train")
# maximum epochs with data sets: 5 data sets / 50 micrographs take ~128 s per epoch on 2 cores
# (benchmarks/training_cost.py), so 20 end within the hour even without early stopping
DATASETS_EPOCHS = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("micrographs", nargs="*",
                        help="one data set: a RELION micrographs STAR, or MRC files, glob patterns or folders (with --coords)")
    parser.add_argument("--angpix", type=float, default=None,
                        help="pixel size in Angstrom; overrides the STAR's data_optics and the MRC header")
    parser.add_argument("--coords", nargs="+", help="particle coordinates of the micrographs (see above)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--diameter", type=float, help="particle diameter in Angstrom (with micrographs and --coords)")
    size.add_argument("--box", type=float, help="particle box (= diameter) in micrograph pixels (with micrographs and --coords)")
    parser.add_argument("--data", nargs="+", action="append", default=[], metavar="SOURCE DIAMETER [key=value]",
                        help="a labelled data set (repeatable): SOURCE DIAMETER [mics=... root=... angpix=... "
                             "max_mics=N labels=complete|incomplete coords=... url=...]")
    parser.add_argument("--datasets", type=Path, action="append", default=[], metavar="LIST",
                        help="a file listing data sets, one 'SOURCE DIAMETER [key=value ...]' per line")
    parser.add_argument("--simulated", type=int, default=0, metavar="N",
                        help="mix in N micrographs of random simulated molecules (generated once into the cache)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="weights file to write (.safetensors)")
    parser.add_argument("--init", default="general",
                        help="start from: 'general' (fine-tune the shipped model, default), 'scratch', or a weights file")
    parser.add_argument("--epochs", type=int, default=None,
                        help="maximum epochs (default 30 for one data set, 20 for data sets: 5 sets / 50 micrographs then "
                             "train within an hour on 2 cores; early stopping on validation loss)")
    parser.add_argument("--patience", type=int, default=4, help="epochs without validation improvement before stopping (default 4)")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01, momentum 0.9)")
    parser.add_argument("--negative-ratio", type=float, default=None,
                        help="background patches per particle (default 1 as the paper for one data set; 3 for data sets)")
    parser.add_argument("--near-miss", type=float, default=None,
                        help="fraction of background 0.25-0.6 box from a particle (default 0 for one data set; 0.3 for data sets)")
    parser.add_argument("--incomplete-labels", choices=("none", "model", "weighted", "blobs"), default="none",
                        help="background on data sets with incomplete labels: 'none' (default: anywhere 0.6 box from "
                             "a label), 'model' (not on peaks the vetting model, --init or the shipped one, confidently "
                             "calls particles), 'weighted' (there, but counted 0.3), 'blobs' (not on dark blobs); "
                             "measured in docs/training.md")
    parser.add_argument("--max-particles", type=int, default=300,
                        help="at most this many particles per micrograph with data sets (default 300; 0 = all)")
    parser.add_argument("--fom-micrographs", type=int, default=None, metavar="N",
                        help="after training, fit the model's figure of merit (the calibrated probability the "
                             "threshold applies to) on N simulated micrographs of random molecules, three in ten empty "
                             "(default 48 with data sets, about a minute; 0 for one data set, whose model is made for "
                             "one particle: the network's score is then the figure of merit)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="download/simulation cache (default $DEEPPICKER_CACHE or ~/.cache/deeppicker)")
    parser.add_argument("--empiar-url", default=None,
                        help="EMPIAR base URL (default $DEEPPICKER_EMPIAR_URL or https://ftp.ebi.ac.uk/empiar/world_availability)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--gpu", default=None, help="CUDA device, e.g. 0 (default: CPU)")
    parser.add_argument("-j", "--threads", type=int, default=0, help="CPU threads (default: all cores)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every micrograph")


def data_specs(args: argparse.Namespace) -> list:
    """The data sets named by --data, --datasets and --simulated (empty: the one-data-set mode)."""
    from ..training.datasets import DataSpec, parse_spec, read_list

    specs = [parse_spec(tokens, "--data " + " ".join(tokens)) for tokens in args.data]
    for path in args.datasets:
        specs += read_list(path)
    if args.simulated:
        specs.append(DataSpec("simulated", options={"n": str(args.simulated), "seed": str(args.seed)}, where="--simulated"))
    if specs and args.micrographs:
        from ..errors import JobError

        if len(args.micrographs) != 1 or not args.coords or not (args.diameter or args.box):
            raise JobError("with --data/--datasets, give other micrographs as one more --data SOURCE DIAMETER coords=...")
        size = f"{args.diameter}" if args.diameter else f"{args.box}px"
        specs.append(parse_spec([args.micrographs[0], size, "coords=" + args.coords[0], "labels=complete"], "micrographs"))
    if args.empiar_url:
        for spec in specs:
            if spec.source.startswith("empiar:"):
                spec.options.setdefault("url", args.empiar_url)
    return specs


def main(args: argparse.Namespace) -> int:
    from ..errors import JobError
    from .common import setup

    setup(args)
    if args.output.suffix != ".safetensors":
        raise JobError("the output weights file must end in .safetensors", args.output)
    if args.fom_micrographs is not None and args.fom_micrographs < 0:
        raise JobError(f"--fom-micrographs must be 0 (none) or more (got {args.fom_micrographs})")
    specs = data_specs(args)
    if specs:
        return _train_datasets(args, specs)
    if not args.micrographs or not args.coords or not (args.diameter or args.box):
        raise JobError("give micrographs, --coords and --diameter (or --box), or data sets with --data / --datasets")
    return _train_one(args)


def _init_model(args: argparse.Namespace, device):
    from ..model import load_model

    if args.init == "scratch":
        return None
    model, _ = load_model(None if args.init == "general" else args.init, device)
    return model


def _train_datasets(args: argparse.Namespace, specs: list) -> int:
    from ..training.datasets import read_datasets
    from ..jobs.pick import prepare_output_dir
    from ..picking.pipeline import resolve_device
    from ..jobs.train import train_from_datasets
    from ..training.calibrate import DEFAULT_MICROGRAPHS
    from ..training.train import TrainParams

    sets = read_datasets(specs, args.cache, progress=True)
    prepare_output_dir(args.output.parent)  # before hours of training, not after
    device = resolve_device(args.gpu)
    init = _init_model(args, device)
    params = TrainParams(
        max_epochs=DATASETS_EPOCHS if args.epochs is None else args.epochs, patience=args.patience, lr=args.lr,
        negative_ratio=3.0 if args.negative_ratio is None else args.negative_ratio,
        near_miss_fraction=0.3 if args.near_miss is None else args.near_miss,
        incomplete_labels=args.incomplete_labels, max_positives=args.max_particles, seed=args.seed,
        fom_micrographs=DEFAULT_MICROGRAPHS if args.fom_micrographs is None else args.fom_micrographs,
    )  # fmt: skip
    train_from_datasets(sets, args.output, params, init, str(device), progress=True,
                        extra_info={"init": args.init, "data": [s.where for s in specs]}, cache=args.cache)
    return 0


def _train_one(args: argparse.Namespace) -> int:
    from ..io.micrographs import coordinate_files, micrograph_list
    from ..jobs.pick import prepare_output_dir
    from ..picking.pipeline import ParticleSize, check_particle_size, resolve_device
    from ..jobs.train import train_from_files
    from ..training.train import TrainParams

    size = ParticleSize(diameter_A=args.diameter, box_px=args.box)
    mics = micrograph_list(args.micrographs, args.angpix)
    coords = coordinate_files(mics, args.coords)
    log.info("read %d micrographs; %d have coordinates", len(mics), len(coords))
    prepare_output_dir(args.output.parent)  # before hours of training, not after
    check_particle_size(mics[mics["name"].isin(coords.keys())], size)
    device = resolve_device(args.gpu)
    init = _init_model(args, device)
    params = TrainParams(
        max_epochs=30 if args.epochs is None else args.epochs, patience=args.patience, lr=args.lr,
        negative_ratio=1.0 if args.negative_ratio is None else args.negative_ratio,
        near_miss_fraction=0.0 if args.near_miss is None else args.near_miss, seed=args.seed,
        fom_micrographs=args.fom_micrographs or 0,
    )  # fmt: skip
    train_from_files(mics, coords, size, args.output, params, init, str(device), progress=True,
                     extra_info={"init": args.init}, cache=args.cache)
    return 0
