"""Merge the shards of a pick job (deeppicker pick --shard I/N, e.g. a SLURM array) into one job.

Checks that all N shards finished (else lists the missing ones and fails), then writes into OUTDIR:
picking_summary.star and failed_micrographs.star for all micrographs; with --in-mics a RELION
micrographs STAR (by default the list the shards were given), the RELION coordinate node (3.1:
coords_suffix_<pickname>.star; 4/5: autopick.star) and RELION_OUTPUT_NODES.star, names relative to
--project-dir; with --cs
particles.cs for CryoSPARC; and the visual report (unless --no-report). Coordinate files stay where
the shards wrote them. Running it again gives the same files.

Example usage (in the RELION project directory):
  deeppicker pick CtfFind/job004/micrographs_ctf.star --diameter 180 -o External/job010/ --shard 0/2
  deeppicker pick CtfFind/job004/micrographs_ctf.star --diameter 180 -o External/job010/ --shard 1/2
  deeppicker merge External/job010/ --in-mics CtfFind/job004/micrographs_ctf.star --shards 2 --cs
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from ..errors import JobError
from ..io import relion_nodes
from ..io.micrographs import micrograph_list
from ..jobs.merge import Merged, find_shards, merge_shards, read_shard_settings, shard_files, write_relion_nodes
from .common import setup

log = logging.getLogger("deeppicker.merge")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=Path, help="the output folder the shards picked into")
    parser.add_argument("--in-mics", nargs="+", default=None, metavar="MICS",
                        help="the micrographs the shards were run on (default: as deeppicker pick --shard recorded "
                        "them); a RELION micrographs STAR also gives the RELION coordinate node; checks that every "
                        "micrograph was picked by a shard")
    parser.add_argument("--shards", type=int, default=None, metavar="N",
                        help="number of shards (default: the one count found in OUTPUT)")
    parser.add_argument("--pickname", default=None, help="suffix of the coordinate files (default deeppicker)")
    parser.add_argument("--format", choices=["star", "box", "txt"], default="star", help="coordinate format of the shards")
    parser.add_argument("--relion-version", default="auto",
                        help="layout of the RELION node files: auto (read PROJECT/default_pipeline.star), 3.1, 4 or 5")
    parser.add_argument("--project-dir", type=Path, default=Path("."),
                        help="RELION project directory (default: the current directory)")
    parser.add_argument("--cs", action="store_true", help="also write OUTPUT/particles.cs for CryoSPARC")
    parser.add_argument("--no-report", action="store_true", help="skip the visual report (logfile.pdf, report_*.png)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")


def main(args: argparse.Namespace) -> int:
    setup(args)
    outdir: Path = args.output
    if not outdir.is_dir():
        raise JobError("output folder not found", outdir)
    n_shards = len(find_shards(outdir, args.shards)) if args.shards or shard_files(outdir) else None
    settings = read_shard_settings(outdir, n_shards) if n_shards else {}
    if not args.in_mics and settings.get("micrographs"):
        args.in_mics = list(settings["micrographs"])
        log.info("micrographs: %s (as the shards were given them)", " ".join(args.in_mics))
    mics = micrograph_list(args.in_mics) if args.in_mics else None
    merged = merge_shards(outdir, n_shards, mics)
    if not merged.picked:
        raise JobError(f"no micrograph was picked by any of the {merged.n_shards} shards "
                       f"({len(merged.failed)} failed; see failed_micrographs.star)", outdir)
    pickname = args.pickname or settings.get("pickname") or "deeppicker"
    from ..jobs.pick import JobSummary, write_cryosparc

    job = _pick_job(outdir, merged, settings, pickname, args.format)
    star = args.in_mics[0] if args.in_mics and len(args.in_mics) == 1 and args.in_mics[0].endswith(".star") else None
    if star is not None:
        version, why = relion_nodes.resolve_relion_version(args.relion_version, args.project_dir)
        node = write_relion_nodes(outdir, merged, pickname, star, version, args.project_dir)
        log.info("RELION %s coordinate node %s and RELION_OUTPUT_NODES.star written (%s)", version, node, why)
    if args.cs:
        n = write_cryosparc(merged.table, job, outdir / "particles.cs")
        log.info("wrote %s (%d particles for CryoSPARC)", outdir / "particles.cs", n)
    if not args.no_report:
        from ..jobs.report import write_pick_report

        pdf = write_pick_report(outdir, JobSummary(merged.table, merged.failed, []), job, mics,
                                notes=[f"merged from {merged.n_shards} shards"])
        log.info("report: %s", pdf)
    log.info("%d particles on %d of %d micrographs (%d failed) in %s", merged.n_particles, len(merged.picked),
             len(merged.table), len(merged.failed), outdir)
    return 0


def _pick_job(outdir: Path, merged: Merged, settings: dict, pickname: str, fmt: str):
    """The PickJob the shards ran (where the files are; threshold and size for the report)."""
    from ..jobs.pick import PickJob
    from ..picking.candidates import PickParams
    from ..picking.pipeline import ParticleSize

    if settings.get("particle_diameter"):
        size = ParticleSize(diameter_A=float(settings["particle_diameter"]))
    elif settings.get("box_px"):
        size = ParticleSize(box_px=float(settings["box_px"]))
    else:
        boxes = pd.to_numeric(merged.table.get("box_px", pd.Series(dtype=float)), errors="coerce").dropna()
        size = ParticleSize(box_px=float(boxes.median()) if len(boxes) else 64.0)
    params = PickParams(threshold=float(settings.get("threshold", 0.5)), max_picks=settings.get("max_picks"))
    return PickJob(outdir=outdir, size=size, params=params, pickname=pickname, fmt=fmt)
