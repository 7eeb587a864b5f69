"""Try the picker in a minute: simulate micrographs, pick them, evaluate, and write the visual report.

Simulates four small micrographs (600 x 720 px, 4 A/px; the last one empty) of a 200 A molecule the
shipped model never saw, picks them with the shipped general model, evaluates the picks against the
true centres, and writes everything into OUTDIR (default ./deeppicker_demo): the micrographs and a
RELION micrographs STAR, the true centres, a pick job folder with its visual report
(picks/logfile.pdf) and the evaluation. Needs no data of yours; about half a minute on 2 CPU cores.

Example usage:
  deeppicker demo
  deeppicker demo -o /tmp/demo --threshold 0.3
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from tqdm import tqdm

from ..demo import DIAMETER_A, PIXEL_A, empty_micrograph_picks, run_demo
from ..picking.pipeline import resolve_device
from .common import add_compute_arguments, setup

log = logging.getLogger("deeppicker.demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, default=Path("deeppicker_demo"),
                        help="output folder (default deeppicker_demo in the current folder)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="minimum figure of merit, 0..1 (default: deeppicker pick's default)")
    # A model other than the shipped one (development; the demo's figures describe the shipped model).
    parser.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    add_compute_arguments(parser)


def main(args: argparse.Namespace) -> int:
    setup(args)
    start = time.perf_counter()
    bar = tqdm(total=4, unit="mic", desc="picking", leave=False)

    def progress(done: int, total: int, particles: int, seconds: float) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix(particles=particles, refresh=False)
        bar.refresh()

    result = run_demo(args.output, args.weights, str(resolve_device(args.gpu)), args.threshold, progress)
    from ..picking.candidates import PickParams

    threshold = PickParams().threshold if args.threshold is None else args.threshold
    bar.close()
    total = result.evaluation.total
    at_one = result.evaluation.curve.set_index("ratio").loc[1.0]
    out = args.output
    star = out / "micrographs.star"
    print(
        f"deeppicker demo: {len(result.summary.table)} simulated micrographs ({out / 'micrographs'}), "
        f"{sum(result.data.n_particles)} particles of a {DIAMETER_A:g} A molecule the model never saw, one micrograph empty\n"
        f"picked {result.summary.n_particles} particles at threshold {threshold:g} "
        f"({result.seconds['pick']:.1f} s; demo {time.perf_counter() - start:.0f} s in all)\n"
        f"against the true centres: precision {total.precision:.3f}  recall {total.recall:.3f}  F1 {total.f1:.3f}  "
        f"centre error {total.centre_error:.3f} x box; picks on the empty micrograph: {empty_micrograph_picks(result)}\n"
        f"top N = N_true picks per micrograph: F1 {at_one.f1:.3f} (ranking, whatever the threshold)\n"
        f"report:      {result.report}  (and {result.picks}/report_*.png, report.txt)\n"
        f"picks:       {result.picks}/micrographs/*_deeppicker.star  (all candidates in {result.picks}/candidates/)\n"
        f"evaluation:  {out / 'evaluation'}/evaluation.csv, topn_curve.png, evaluation_picks.png\n"
        "next:\n"
        f"  deeppicker pick {star} --diameter {DIAMETER_A:g} -o {result.picks} --rethreshold --threshold 0.3\n"
        f"  deeppicker evaluate --picks {result.picks} --reference {out / 'truth'} --diameter {DIAMETER_A:g} "
        f"--angpix {PIXEL_A:g} -o {out / 'evaluation'}\n"
        "  deeppicker pick your_micrographs.star --diameter <particle diameter in A> -o picks/"
    )
    return 0
