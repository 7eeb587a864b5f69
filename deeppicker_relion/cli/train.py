"""Train a model on particle coordinates (semi-automated mode): micrographs + picks -> a weights file.

Coordinates (--coords): a RELION coords_suffix_<name>.star node (3.1), a manualpick.star /
autopick.star (4/5), or coordinate files / globs / folders (.star, EMAN .box, x y text) whose names
start with the micrograph's name (mic01.box, mic01_manualpick.star). Micrographs without
coordinates are not used. Negatives are drawn at least 0.6 x box from every given particle, so
coordinates should cover all particles of the micrographs used.

Example usage:
  deeppicker train mics.star --coords ManualPick/job004/coords_suffix_manualpick.star --diameter 180 -o my.safetensors
  deeppicker train 'mics/*.mrc' --coords 'picks/*.box' --box 120 --init scratch -o my.safetensors
  deeppicker pick mics.star --diameter 180 --weights my.safetensors -o picks/
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import JobError
from ..io.micrographs import coordinate_files, micrograph_list
from ..model import load_model
from ..pickjob import prepare_output_dir
from ..pipeline import check_particle_size, resolve_device
from ..trainjob import train_from_files
from ..training import TrainParams
from .common import add_compute_arguments, add_micrograph_arguments, add_size_arguments, particle_size, setup

log = logging.getLogger("deeppicker.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_micrograph_arguments(parser)
    parser.add_argument("--coords", nargs="+", required=True, help="particle coordinates (see above)")
    add_size_arguments(parser)
    parser.add_argument("-o", "--output", required=True, type=Path, help="weights file to write (.safetensors)")
    parser.add_argument(
        "--init",
        default="general",
        help="start from: 'general' (fine-tune the shipped model, default), 'scratch', or a weights file",
    )
    parser.add_argument("--epochs", type=int, default=30, help="maximum epochs (default 30; early stopping on validation loss)")
    parser.add_argument("--patience", type=int, default=4, help="epochs without validation improvement before stopping (default 4)")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01, momentum 0.9)")
    parser.add_argument("--negative-ratio", type=float, default=1.0, help="background patches per particle (default 1, as the paper)")
    parser.add_argument("--near-miss", type=float, default=0.0, help="fraction of background patches 0.25-0.6 box from a particle (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_compute_arguments(parser)


def main(args: argparse.Namespace) -> int:
    setup(args)
    if args.output.suffix != ".safetensors":
        raise JobError("the output weights file must end in .safetensors", args.output)
    size = particle_size(args)
    mics = micrograph_list(args.micrographs, args.angpix)
    coords = coordinate_files(mics, args.coords)
    log.info("read %d micrographs; %d have coordinates", len(mics), len(coords))
    prepare_output_dir(args.output.parent)  # before hours of training, not after
    check_particle_size(mics[mics["name"].isin(coords.keys())], size)
    device = resolve_device(args.gpu)
    init = None
    if args.init != "scratch":
        init, _ = load_model(None if args.init == "general" else args.init, device)
    params = TrainParams(
        max_epochs=args.epochs,
        patience=args.patience,
        lr=args.lr,
        negative_ratio=args.negative_ratio,
        near_miss_fraction=args.near_miss,
        seed=args.seed,
    )
    train_from_files(mics, coords, size, args.output, params, init, str(device), progress=True,
                     extra_info={"init": args.init})
    return 0
