"""Evaluate picks against reference picks: precision, recall, F1, centre error, top-N curve.

A pick matches a reference particle within --radius x box (default 0.2), one to one, best score
first. Writes OUTDIR/evaluation.csv (per micrograph and TOTAL), OUTDIR/topn_curve.csv and
OUTDIR/topn_curve.png (precision and recall keeping the top N = ratio x N_reference picks).
Picks and references are coordinate files (.star, .box, text), folders or globs, paired by
micrograph name: a pick file matches a reference file when its name starts with the reference's
name (mic01_deeppicker.star <-> mic01.star). With --micrographs (or when --picks is a pick job folder
whose micrographs are found from the current folder, as in a RELION project), OUTDIR/evaluation_picks.png
shows the picks against the reference on one micrograph. When --picks is a pick job folder, its
logfile.pdf gets these pages too.

Example usage:
  deeppicker evaluate --picks 'picks/Micrographs/*_deeppicker.star' --reference 'truth/*.star' --box 64 -o eval/
  deeppicker evaluate --picks picks/ --reference truth/ --diameter 180 --angpix 5 --micrographs mics.star -o eval/
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from ..errors import JobError
from ..jobs.evaluate import pick_job_folder, run_evaluation, summary_micrographs
from ..metrics import MATCH_RADIUS
from ..io.coords import read_coordinates
from ..io.micrographs import coordinate_files, micrograph_list
from .common import setup

log = logging.getLogger("deeppicker.evaluate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--picks", nargs="+", required=True, help="pick files, folders or globs")
    parser.add_argument("--reference", nargs="+", required=True, help="reference coordinate files, folders or globs")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--box", type=float, help="particle box (= diameter) in pixels")
    group.add_argument("--diameter", type=float, help="particle diameter in Angstrom (needs --angpix)")
    parser.add_argument("--angpix", type=float, help="pixel size in Angstrom (with --diameter)")
    parser.add_argument("--radius", type=float, default=MATCH_RADIUS, help="match radius as a fraction of the box (default 0.2)")
    parser.add_argument("--threshold", type=float, default=None, help="ignore picks scoring below this (score 0..1; default: use all picks)")
    parser.add_argument("--micrographs", nargs="+", default=None,
                        help="micrographs STAR, MRC files or globs: draw the picks against the reference on one of "
                        "them (default: those of the pick job folder given as --picks, when found)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")


def load_sets(picks: list[str], reference: list[str]) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Reference and pick frames keyed by the reference file's name stem."""
    ref_paths = _expand(reference)
    names = pd.DataFrame({"name": [p.stem for p in ref_paths]})
    refs = {p.stem: read_coordinates(p) for p in ref_paths}
    pick_files = coordinate_files(names, picks)
    return {n: read_coordinates(p) for n, p in pick_files.items()}, refs


def _expand(items: list[str]) -> list[Path]:
    import glob

    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in {".star", ".box", ".txt", ".csv"})
        elif any(ch in item for ch in "*?["):
            out += sorted(Path(p) for p in glob.glob(item, recursive=True))
        elif path.is_file():
            out.append(path)
        else:
            raise JobError("reference file or folder not found", item)
    if not out:
        raise JobError("no reference coordinate files found: " + " ".join(items))
    return out


def main(args: argparse.Namespace) -> int:
    setup(args)
    if args.box is None:
        if not args.angpix:
            raise JobError("--diameter needs --angpix to convert to pixels")
        box = args.diameter / args.angpix
    else:
        box = args.box
    picks, refs = load_sets(args.picks, args.reference)
    if args.threshold is not None:
        picks = {k: v[v["score"] >= args.threshold] for k, v in picks.items()}
    missing = sorted(set(refs) - set(picks))
    if len(missing) == len(refs):
        raise JobError("no pick file matches any reference file (pick files must start with the reference's name)")
    if missing:
        log.warning("%d references have no pick file (counted as no picks): %s", len(missing), ", ".join(missing[:5]))
    report_dir = pick_job_folder(args.picks)
    if args.micrographs:
        mics = micrograph_list(args.micrographs, args.angpix)
    else:  # a pick job folder in a RELION project: its micrographs are found from its summary
        mics = summary_micrographs(report_dir) if report_dir is not None else None
    result = run_evaluation(picks, refs, box, args.output, args.radius, mics, report_dir)
    table = result.table
    total = table.iloc[-1]
    print(
        f"{len(refs)} micrographs: precision {total.precision:.3f}  recall {total.recall:.3f}  "
        f"F1 {total.f1:.3f}  centre error {total.centre_error:.3f} x box  "
        f"({int(total.true_positives)} matched of {int(total.n_picks)} picks, {int(total.n_reference)} reference)"
    )
    log.info("wrote %s", ", ".join(str(f) for f in result.files))
    return 0
