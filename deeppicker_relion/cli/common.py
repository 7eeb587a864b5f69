"""Arguments and set-up shared by several subcommands."""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from ..picking.pipeline import ParticleSize


def add_micrograph_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "micrographs",
        nargs="+",
        help="a RELION micrographs STAR, or MRC files, glob patterns ('mics/*.mrc') or folders",
    )
    parser.add_argument(
        "--angpix",
        type=float,
        default=None,
        help="pixel size in Angstrom; overrides the STAR's data_optics and the MRC header",
    )


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--diameter", type=float, help="particle diameter in Angstrom: the full outer diameter (the box equals it); if unsure, err large")
    group.add_argument("--box", type=float, help="particle box (= diameter) in pixels of the original micrograph, not the extraction box")


def particle_size(args: argparse.Namespace) -> ParticleSize:
    return ParticleSize(diameter_A=args.diameter, box_px=args.box)


def add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpu", default=None, help="CUDA device, e.g. 0 (default: CPU); pick: a list such as 0,1 runs one worker process per GPU")
    parser.add_argument("-j", "--threads", type=int, default=0, help="CPU threads (default: all cores)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every micrograph")


def setup(args: argparse.Namespace) -> None:
    """Logging to stderr and the number of CPU threads."""
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    threads = getattr(args, "threads", 0)
    if threads and threads > 0:
        torch.set_num_threads(threads)
