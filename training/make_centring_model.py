"""Recipe of the shipped centring network (deeppicker_relion/picking/centring.py), in one command.

    python training/make_centring_model.py       # -> deeppicker_relion/pretrained/centring.safetensors

Also run as the last step of ``training/make_general_model.py`` (the shipped model's recipe).

Data: the general recipe's cached simulations of random molecules and random cages (its
"train2" split for training, "val2" for choosing the epoch; generated if missing), so, like the
shipped classifier, it never sees a benchmarked molecule. Each micrograph is preprocessed as for
training the classifier (the box given jittered +-12 %, local normalisation); around each of up to
28 particles (exact centres), ``windows_per_particle`` 64 x 64 windows are cut at offsets drawn
like a picker's errors and beyond (60 %: Gaussian, sigma 0.05 box per axis; 40 %: uniform in a
disc of 0.2 box, the match radius), the target being the particle's offset from the window's
centre (index 32).

Training: the network starts from the classifier's weights (``--init``, default the shipped
general model; its last layer replaced by a zeroed 2-output one), Adam, cosine learning rate,
Huber loss (transition at 2 px), a random quarter turn and mirror per batch (targets turned with
the window: :func:`~deeppicker_relion.picking.centring.transform_offsets`); the epoch with the lowest
validation centre error (half-turn averaged, as at picking) is kept.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "training"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import make_general_model as recipe  # noqa: E402
from deeppicker_relion.picking.centring import CentringNet, cut_windows, default_centring_path, predict_offsets, save_centring  # noqa: E402
from deeppicker_relion.picking.centring import transform_offsets  # noqa: E402
from deeppicker_relion.io.mrc import read_micrograph  # noqa: E402
from deeppicker_relion.model import load_model  # noqa: E402
from deeppicker_relion.picking.preprocess import INPUT_SIZE, preprocess  # noqa: E402

log = logging.getLogger("make_centring_model")
HALF = INPUT_SIZE // 2


@dataclass
class CentringRecipe:
    """Constants of the centring recipe (recorded in the weights' metadata)."""

    windows_per_particle: int = 4
    max_particles_per_micrograph: int = 28
    gaussian_fraction: float = 0.6
    gaussian_sigma: float = 0.05  # x box, per axis
    disc_radius: float = 0.2  # x box
    epochs: int = 12
    lr: float = 1e-3
    batch_size: int = 256
    huber_px: float = 2.0
    seed: int = 2016


def draw_offsets(rng: np.random.Generator, n: int, r: CentringRecipe) -> np.ndarray:
    """(n, 2) offsets (px) of window centres from a particle's centre."""
    gauss = rng.normal(0.0, r.gaussian_sigma * INPUT_SIZE, size=(n, 2))
    radius = r.disc_radius * INPUT_SIZE * np.sqrt(rng.uniform(size=n))
    angle = rng.uniform(0, 2 * np.pi, n)
    disc = np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
    return np.where((rng.uniform(size=n) < r.gaussian_fraction)[:, None], gauss, disc)


def micrograph_windows(row: dict, seed: int, r: CentringRecipe) -> tuple[np.ndarray, np.ndarray]:
    """(windows (N, 64, 64), targets (N, 2) = particle centre - window centre, px) of one micrograph."""
    rng = np.random.default_rng(seed)
    if int(row["n_particles"]) == 0:
        return np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.float32), np.zeros((0, 2), np.float32)
    general = recipe.Recipe()
    centres = recipe.read_centres(row["coords"])
    box, _ = recipe._jittered_box(pd.Series(row), rng, general)
    pre = preprocess(read_micrograph(row["path"]).data, box, general.train_normalisation)
    px, py = pre.to_resampled(centres[:, 0], centres[:, 1])
    h, w = pre.image.shape
    use = np.flatnonzero((px >= HALF) & (py >= HALF) & (px < w - HALF) & (py < h - HALF))
    if len(use) > r.max_particles_per_micrograph:
        use = rng.choice(use, r.max_particles_per_micrograph, replace=False)
    k = r.windows_per_particle
    offsets = draw_offsets(rng, len(use) * k, r)
    tx, ty = np.repeat(px[use], k), np.repeat(py[use], k)
    windows, wx, wy = cut_windows(pre.image, tx + offsets[:, 0], ty + offsets[:, 1])
    return windows, np.column_stack([tx - wx, ty - wy]).astype(np.float32)


def build(split: str, r: CentringRecipe, workers: int) -> tuple[np.ndarray, np.ndarray]:
    index = pd.concat([recipe.simulate_split(recipe.SYNTHETIC, split), recipe.simulate_split(recipe.CAGES, split)],
                      ignore_index=True)
    rows = index.to_dict("records")
    seeds = [r.seed * 1_000_003 + recipe.SPLIT_IDS[split] * 100_000 + i for i in range(len(rows))]
    with ProcessPoolExecutor(max(1, workers)) as pool:
        parts = list(pool.map(micrograph_windows, rows, seeds, [r] * len(rows), chunksize=8))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def centre_error(net: CentringNet, windows: np.ndarray, targets: np.ndarray) -> float:
    """Mean distance (px) between predicted and true centres, half-turn averaged as at picking."""
    return float(np.linalg.norm(predict_offsets(net, windows) - targets, axis=1).mean())


def train_centring(init: Path | None, r: CentringRecipe, workers: int = 2) -> tuple[CentringNet, dict]:
    t0 = time.perf_counter()
    x, y = build(recipe.TRAIN, r, workers)
    xv, yv = build(recipe.VAL, r, workers)
    log.info("%d training and %d validation windows (%.0f s)", len(x), len(xv), time.perf_counter() - t0)
    torch.manual_seed(r.seed)
    net = CentringNet()
    classifier, _ = load_model(init)
    net.load_state_dict({k: v for k, v in classifier.state_dict().items() if not k.startswith("fc2.")}, strict=False)
    net.normalisation = classifier.normalisation
    opt = torch.optim.Adam(net.parameters(), lr=r.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, r.epochs)
    gen = torch.Generator().manual_seed(r.seed)
    xt, yt = torch.from_numpy(x)[:, None], torch.from_numpy(y)
    uncorrected = float(np.linalg.norm(yv, axis=1).mean())
    history, best, best_state = [], float("inf"), None
    for epoch in range(r.epochs):
        net.train()
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(order), r.batch_size):
            batch = order[start : start + r.batch_size]
            k = int(torch.randint(0, 4, (1,), generator=gen))
            mirrored = bool(torch.randint(0, 2, (1,), generator=gen))
            windows = xt[batch].flip(-1) if mirrored else xt[batch]
            windows = torch.rot90(windows, k, dims=(-2, -1))
            loss = F.smooth_l1_loss(net(windows), transform_offsets(yt[batch], k, mirrored), beta=r.huber_px)
            opt.zero_grad()
            loss.backward()
            opt.step()
        schedule.step()
        err = centre_error(net, xv, yv)
        history.append(round(err, 4))
        log.info("epoch %d: validation centre error %.3f px (uncorrected %.3f px) (%.0f s)", epoch + 1, err, uncorrected,
                 time.perf_counter() - t0)  # fmt: skip
        if err < best:
            best, best_state = err, {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    net.eval()
    info = {
        "recipe": "training/make_centring_model.py",
        "init": str(init) if init else "shipped general model",
        "recipe_params": asdict(r),
        "data": "random synthetic molecules and random cages (general recipe's train2 / val2 splits)",
        "n_windows": len(x),
        "n_validation_windows": len(xv),
        "validation_centre_error_px": history,
        "best_epoch": int(np.argmin(history)) + 1,
        "validation_uncorrected_px": round(uncorrected, 4),
        "seconds": round(time.perf_counter() - t0),
        "torch": torch.__version__,
    }
    return net, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=None, help=f"weights file (default {default_centring_path()})")
    parser.add_argument("--init", type=Path, default=None, help="classifier weights to start from (default: the shipped general model)")
    parser.add_argument("-j", "--threads", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override recipe fields (experiments)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    r = recipe.parse_overrides(args.set, CentringRecipe())
    net, info = train_centring(args.init, r)
    output = args.output or default_centring_path()
    save_centring(net, output, info)
    log.info("wrote %s", output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
