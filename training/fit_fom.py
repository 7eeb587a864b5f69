"""Recipe step: fit the figure of merit (deeppicker_relion/picking/fom.py) of a weights file on the recipe's
own selection micrographs, and store it in the weights' metadata (``"fom"``).

    python training/fit_fom.py                                   # the shipped general.safetensors
    python training/fit_fom.py --weights W.safetensors --check   # fit on half, report the other half

Selection micrographs (simulated by training/make_general_model.py, cached under training/cache/,
never a benchmarked molecule): the recipe's "rule" split (288 random protein-like molecules and 96
random cages over the test sets' wide SNR range 0.02-0.5, and 36 EMPTY micrographs drawn for each
shipped map's conditions: ice, noise, contamination, carbon, no particle of the map) and its
validation split (random molecules and cages at the realistic SNR mix, and the maps' empty
validation micrographs). Every candidate down to a raw score of 1e-5 is found as picking finds it
(centring network included), labelled a particle when it lies within 0.2 x the diameter of a true
centre (one to one, best first), and the FOM is fitted by maximum likelihood over all of them.

``--check`` fits on the even-numbered micrographs and prints the reliability of the odd-numbered
ones (expected calibration error), then fits on all and writes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(REPO / "training") not in sys.path:
    sys.path.insert(0, str(REPO / "training"))

import make_general_model as recipe  # noqa: E402

from deeppicker_relion.picking.fom import FitTable, expected_calibration_error, fit_fom, reliability  # noqa: E402
from deeppicker_relion.training.calibrate import labelled_candidates  # noqa: E402
from deeppicker_relion.io.atomic import atomic_path  # noqa: E402
from deeppicker_relion.model import default_weights_path, load_model, read_safetensors  # noqa: E402

log = logging.getLogger("fit_fom")
CACHE = recipe.CACHE / "fom"


def selection_index() -> pd.DataFrame:
    """The selection micrographs (module docstring): the recipe's rule split and validation split."""
    val = [recipe.simulate_split(m, recipe.VAL) for m in [recipe.SYNTHETIC, recipe.CAGES]]
    val += [v[v["n_particles"] == 0] for v in (recipe.simulate_split(m, recipe.VAL) for m in recipe.molecules())]
    rule = [recipe.simulate_split(m, "rule") for m in [recipe.SYNTHETIC, recipe.CAGES] + recipe.molecules()]
    return pd.concat(rule + val, ignore_index=True).drop_duplicates("name").reset_index(drop=True)


def held_out_check(items: list[tuple[pd.DataFrame, np.ndarray]], max_iter: int = 100) -> dict:
    """Fit on the even-numbered micrographs, measure on the odd-numbered ones."""
    from deeppicker_relion.picking.fom import calibrate_candidates

    fit = fit_fom(FitTable.from_micrographs(items[0::2]), max_iter=max_iter)
    foms, hits = [], []
    for cands, h in items[1::2]:
        # candidates and labels are best first; the FOM keeps that order (it never reorders a micrograph)
        foms.append(calibrate_candidates(cands, fit)["score"].to_numpy(float))
        hits.append(np.asarray(h))
    f, h = np.concatenate(foms), np.concatenate(hits)
    return {"ece_all": expected_calibration_error(f, h), "ece_above_0.1": expected_calibration_error(f, h, lowest=0.1),
            "reliability": reliability(f, h).round(3).to_dict("records")}


def network_digest(weights: Path) -> str:
    """Short SHA-256 of the network's tensors (not of the file: the "fom" metadata written into it
    does not change the scores, so the cached candidates stay valid)."""
    digest = hashlib.sha256()
    for _, tensor in sorted(read_safetensors(weights)[0].items()):
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:12]


def write_fom(weights: Path, fom_meta: dict, output: Path) -> None:
    """Copy ``weights`` to ``output`` (may be the same file) with ``fom_meta`` as its metadata's "fom"."""
    from safetensors.torch import save_file

    state, meta, info = read_safetensors(weights)
    info["fom"] = fom_meta
    meta = dict(meta)
    meta["info"] = json.dumps(info, sort_keys=True)
    with atomic_path(output) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=default_weights_path())
    parser.add_argument("-o", "--output", type=Path, default=None, help="default: overwrite --weights")
    parser.add_argument("--check", action="store_true", help="also fit on half and print the other half's reliability")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--stride", type=int, default=1, help="use every N-th selection micrograph (default all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, _ = load_model(args.weights)
    index = selection_index().iloc[:: max(1, args.stride)].reset_index(drop=True)
    items = labelled_candidates(model, index, CACHE / network_digest(args.weights))
    log.info("candidates of %d micrographs in %.0f s", len(items), time.perf_counter() - start)
    if args.check:
        check = held_out_check(items)
        print(json.dumps({k: v for k, v in check.items() if k != "reliability"}, indent=1))
        print(pd.DataFrame(check["reliability"]).to_string(index=False))
    n_empty = int(sum(1 for _, row in index.iterrows() if int(row["n_particles"]) == 0))
    fitted_on = (f"{len(index)} selection micrographs of the recipe ({len(index) - n_empty} of random molecules and cages, "
                 f"{n_empty} empty): training/fit_fom.py")
    fom = fit_fom(FitTable.from_micrographs(items), fitted_on=fitted_on, max_iter=100)
    write_fom(args.weights, fom.to_metadata(), args.output or args.weights)
    log.info("wrote the figure of merit into %s (%.0f s in all): %s", args.output or args.weights,
             time.perf_counter() - start, json.dumps(fom.to_metadata()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
