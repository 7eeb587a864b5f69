"""Accuracy benchmark of the general model: leave-one-molecule-out, real micrographs, noise guard,
contamination, the size check, self-training / semi-automated training, and Topaz and RELION's LoG picker
side by side. Prints figures (markdown tables); not a timed test.

    python benchmarks/accuracy.py                  # everything (trains missing fold models: hours)
    python benchmarks/accuracy.py --only lomo      # sections: lomo, calibration, snr, oracle, shipped, empty, contamination, centres, refine, centring, diameter, sizecheck, finetune, topaz, relion_log
    python benchmarks/accuracy.py --no-train       # use only fold models that exist

Held-out sets (never used to train or calibrate the model that picks them):
- each simulated molecule: 10 test micrographs (training/cache/sim/MOL/test, seeds of their own),
  picked by the fold model trained WITHOUT that molecule (training/cache/lomo/MOL.safetensors);
- the 10 real EMPIAR-10028 ribosome micrographs: picked by the model trained on simulations only
  (training/cache/lomo/ribosome.safetensors); labels are incomplete (precision is understated);
- the 17 real apoferritin micrographs (../shared/data/apoferritin), which no model ever trains on:
  picked by the shipped model and by every fold model;
- 80 empty simulated micrographs (ice, noise, sometimes contamination or carbon; 20 per
  molecule's conditions): picked by the fold model of that molecule and by the shipped model.

Metrics (deeppicker_relion.metrics): one-to-one matching within 0.2 x diameter, best score first;
precision, recall, F1 and mean centre error / box at the default threshold (0.6, on the figure of
merit); the figure of merit's calibration (`--only calibration`); the best F1 over
all thresholds (an oracle threshold); top-N F1 (N = number of reference particles per micrograph).
Results are also written to benchmarks/cache/accuracy.json.

This file is the driver: the held-out sets, picking and metrics are in benchmarks/common.py, each
section (a question) in benchmarks/sections/; a section is registered by one line in SECTIONS.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path

import torch

import common

# --only name -> "module:function" in benchmarks/sections/, called as function(results, args); in the
# order they run by default. Register a new section with one line here.
SECTIONS = {
    "lomo": "lomo:section_lomo",
    "calibration": "calibration:section_calibration",
    "snr": "snr:section_snr",
    "oracle": "idealised:section_oracle",
    "shipped": "shipped:section_shipped",
    "empty": "noise_guard:section_empty",
    "contamination": "noise_guard:section_contamination",
    "centres": "centres:section_centres",
    "refine": "centres:section_refine",
    "centring": "centres:section_centring",
    "diameter": "size:section_diameter",
    "sizecheck": "size:section_sizecheck",
    "finetune": "finetune:section_finetune",
    "topaz": "side_by_side:section_topaz",
    "relion_log": "side_by_side:section_relion_log",
}


def section_function(name: str):
    """The function of section ``name`` (imported only when it runs)."""
    module, function = SECTIONS[name].split(":")
    return getattr(importlib.import_module(f"sections.{module}"), function)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--no-train", action="store_true", help="do not train missing fold models")
    parser.add_argument("--finetune-targets", nargs="+", default=["ribosome", "proteasome20S_3j9i"])
    parser.add_argument("--topaz-only", action="store_true", help="only run Topaz on every set (fills its cache)")
    parser.add_argument("--lomo-dir", type=Path, default=common.LOMO_DIR, help="fold models (default training/cache/lomo)")
    parser.add_argument("--weights", type=Path, default=None, help="general model (default: the shipped one)")
    parser.add_argument("--single-model", type=Path, default=None,
                        help="pick every held-out set with this one model (trained on none of them, e.g. "
                             "make_general_model.py --holdout all): a quick proxy of the LOMO table")
    parser.add_argument("--augment", type=int, choices=[1, 2, 4, 8], default=None,
                        help="test-time copies for every model (default: each model's own; the shipped: 2)")
    parser.add_argument("--centring", type=Path, default=None,
                        help="centring network for every model ('none': none; default: the shipped one where it fits)")
    parser.add_argument("--results", type=Path, default=common.CACHE / "accuracy.json")
    parser.add_argument("-j", "--threads", type=int, default=2)
    args = parser.parse_args(argv)
    common.LOMO_DIR, common.WEIGHTS, common.SINGLE_MODEL = args.lomo_dir, args.weights, args.single_model
    common.AUGMENT, common.CENTRING = args.augment, args.centring
    args.allow_train = not args.no_train
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    if args.topaz_only:
        from sections.side_by_side import topaz_candidates, topaz_sets

        for name, (idx, _) in topaz_sets().items():
            topaz_candidates(name, idx)
        return 0
    results: dict = {}
    out = args.results
    if out.is_file():
        results = json.loads(out.read_text())
    for section in args.only:
        section_function(section)(results, args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
