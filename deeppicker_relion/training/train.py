"""Training the classifier on particle and background patches.

Positives: 64 x 64 windows centred on the given particle centres. Negatives: windows centred at
least ``min_negative_distance`` x box from EVERY positive (the authors' code checked only one
particle) and, optionally, from extra "exclude" points (e.g. candidates a model found on micrographs
whose labels are incomplete). ``negative_ratio`` sets negatives per positive (1 = the paper);
``near_miss_fraction`` of them are taken 0.25-0.6 box from a particle (teaches centring; off in the
faithful recipe). Augmentation: random 90-degree rotations and flips. ``val_fraction`` of the
patches is held out; training stops when the validation loss has not improved for ``patience``
epochs and the best weights are kept.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from ..model import DeepPickerNet, build_model
from ..picking.preprocess import INPUT_SIZE, Preprocessed

log = logging.getLogger(__name__)
HALF = INPUT_SIZE // 2


@dataclass
class TrainParams:
    """Training settings (distances in fractions of the box)."""

    max_epochs: int = 30
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    patience: int = 4
    val_fraction: float = 1.0 / 9.0
    negative_ratio: float = 1.0
    near_miss_fraction: float = 0.0
    min_negative_distance: float = 0.6
    seed: int = 0
    architecture: str = "deeppicker2016"
    # learning-rate decay on plateaus: after ``lr_decay_patience`` epochs without a better
    # validation loss the rate is multiplied by ``lr_decay_factor`` (1 = constant rate)
    lr_decay_factor: float = 1.0
    lr_decay_patience: int = 1
    # Incomplete labels (curated particle sets; :func:`micrograph_examples`): "model" = no background
    # window within ``unlabelled_radius`` box of a peak a vetting model scores >= ``unlabelled_min_score``
    # away from the labels (a likely unlabelled particle; the shipped model is calibrated, so 0.7
    # keeps its confident picks and leaves its doubtful ones, mostly junk, as hard background), and
    # "far" background only where the vetting model scores the window itself below
    # ``background_max_score`` (1 = off: measured, a lower cut removes the hard background the
    # network needs; benchmarks/incomplete_labels.py); "blobs" = none within ``unlabelled_radius``
    # box of a dark particle-sized blob; "none" = as for complete labels.
    # default "none": measured (benchmarks/incomplete_labels.py, docs/training.md), "model" and
    # "blobs" keep fewer background windows on unlabelled particles but pick worse
    incomplete_labels: str = "none"
    background_max_score: float = 1.0
    unlabelled_min_score: float = 0.7
    unlabelled_radius: float = 0.35
    # "weighted": background windows within ``unlabelled_radius`` of such a peak are kept with this
    # weight in the loss (positive-unlabelled style: probably particles, so counted less)
    unlabelled_weight: float = 0.3
    # at most this many particles per micrograph (0 = all): crowded sets do not swamp the others
    max_positives: int = 0
    # after training, fit the model's figure of merit on this many simulated micrographs of random
    # molecules (deeppicker_relion.training.calibrate); 0: none, the network's score is the figure of merit
    fom_micrographs: int = 0


@dataclass
class TrainingSet:
    """Patches (N, 1, 64, 64) float32 and labels (N,) int64 (1 = particle); optional ``weights``
    (N,) float32 of each patch in the training loss (None = all 1)."""

    patches: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def concat(sets: list["TrainingSet"]) -> "TrainingSet":
        sets = [s for s in sets if len(s)]
        if not sets:
            return TrainingSet(np.zeros((0, 1, INPUT_SIZE, INPUT_SIZE), np.float32), np.zeros(0, np.int64))
        weights = None
        if any(s.weights is not None for s in sets):
            weights = np.concatenate([s.weights if s.weights is not None else np.ones(len(s), np.float32) for s in sets])
        return TrainingSet(np.concatenate([s.patches for s in sets]), np.concatenate([s.labels for s in sets]), weights)


@dataclass
class History:
    """Per-epoch losses and the epoch whose weights were kept."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = -1
    n_train: int = 0
    n_val: int = 0


def _inside(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = np.round(y).astype(int) - HALF
    c = np.round(x).astype(int) - HALF
    return (r >= 0) & (c >= 0) & (r + INPUT_SIZE <= image.shape[0]) & (c + INPUT_SIZE <= image.shape[1])


def cut_patches(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Windows centred at resampled pixels (x, y) (rounded; window centre = index 32). All must fit."""
    out = np.empty((len(x), 1, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for i, (xi, yi) in enumerate(zip(np.round(x).astype(int), np.round(y).astype(int))):
        out[i, 0] = image[yi - HALF : yi + HALF, xi - HALF : xi + HALF]
    return out


def sample_negatives(
    shape: tuple[int, int],
    positives: np.ndarray,
    n: int,
    rng: np.random.Generator,
    min_distance_px: float,
    exclude: np.ndarray | None = None,
    near_miss_fraction: float = 0.0,
) -> np.ndarray:
    """``n`` window centres (x, y), resampled pixels, each at least ``min_distance_px`` from every
    positive and every ``exclude`` point; ``near_miss_fraction`` of them instead 0.25-0.6 box from
    a positive (and at least 0.25 box from every positive)."""
    blockers = positives if exclude is None or len(exclude) == 0 else np.vstack([positives, exclude])
    tree = cKDTree(blockers) if len(blockers) else None
    pos_tree = cKDTree(positives) if len(positives) else None
    lo = np.array([HALF, HALF], float)
    hi = np.array([shape[1] - HALF, shape[0] - HALF], float)
    if np.any(hi <= lo):
        return np.zeros((0, 2))
    n_near = int(round(n * near_miss_fraction)) if len(positives) else 0
    found: list[np.ndarray] = []
    if n_near:
        for _ in range(20):
            base = positives[rng.integers(0, len(positives), 4 * n_near)]
            angle = rng.uniform(0, 2 * np.pi, len(base))
            radius = rng.uniform(0.25, 0.6, len(base)) * INPUT_SIZE
            pts = base + np.column_stack([np.cos(angle), np.sin(angle)]) * radius[:, None]
            ok = np.all((pts >= lo) & (pts < hi), axis=1)
            pts = pts[ok]
            d, _ = pos_tree.query(pts)
            pts = pts[d >= 0.25 * INPUT_SIZE - 1e-6]
            found.append(pts)
            if sum(len(f) for f in found) >= n_near:
                break
        near = np.vstack(found)[:n_near] if found else np.zeros((0, 2))
    else:
        near = np.zeros((0, 2))
    far: list[np.ndarray] = []
    need = n - len(near)
    for _ in range(50):
        if need <= 0:
            break
        pts = rng.uniform(lo, hi, size=(max(4 * need, 16), 2))
        if tree is not None:
            d, _ = tree.query(pts)
            pts = pts[d >= min_distance_px]
        far.append(pts[:need])
        need -= len(far[-1])
    far_arr = np.vstack(far) if far else np.zeros((0, 2))
    return np.vstack([near, far_arr])


def make_training_set(
    pre: Preprocessed,
    centres_xy: np.ndarray,
    rng: np.random.Generator,
    params: TrainParams,
    exclude_xy: np.ndarray | None = None,
    n_negatives: int | None = None,
) -> TrainingSet:
    """Positive and negative patches from one preprocessed micrograph.

    ``centres_xy``: (n, 2) particle centres (x, y) in ORIGINAL micrograph pixels; ``exclude_xy``
    likewise (points negatives must keep away from, not used as positives). ``n_negatives``
    overrides ``negative_ratio`` (e.g. for micrographs without particles).
    """
    centres_xy = np.asarray(centres_xy, float).reshape(-1, 2)
    px, py = pre.to_resampled(centres_xy[:, 0], centres_xy[:, 1])
    positives = np.column_stack([px, py])
    excl = None
    if exclude_xy is not None and len(exclude_xy):
        ex = np.asarray(exclude_xy, float).reshape(-1, 2)
        excl = np.column_stack(pre.to_resampled(ex[:, 0], ex[:, 1]))
    inside = _inside(pre.image, px, py)
    pos = cut_patches(pre.image, px[inside], py[inside])
    if n_negatives is None:
        n_negatives = int(round(params.negative_ratio * int(inside.sum())))
    neg_xy = sample_negatives(
        pre.image.shape,
        positives,
        n_negatives,
        rng,
        params.min_negative_distance * INPUT_SIZE,
        exclude=excl,
        near_miss_fraction=params.near_miss_fraction,
    )
    neg = cut_patches(pre.image, neg_xy[:, 0], neg_xy[:, 1])
    labels = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
    return TrainingSet(np.concatenate([pos, neg]), labels)


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 90-degree rotation and flip of each patch (the 8 symmetries of the square)."""
    ops = torch.randint(0, 8, (batch.shape[0],), generator=generator, device="cpu")
    out = batch.clone()
    for op in range(1, 8):
        idx = (ops == op).nonzero().flatten().to(batch.device)
        if idx.numel() == 0:
            continue
        sel = batch[idx]
        if op >= 4:
            sel = sel.flip(-1)
        out[idx] = torch.rot90(sel, op % 4, dims=(-2, -1))
    return out


def _evaluate(model: DeepPickerNet, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(y), batch):
            logits = model(x[s : s + batch])
            loss += F.cross_entropy(logits, y[s : s + batch], reduction="sum").item()
            correct += (logits.argmax(1) == y[s : s + batch]).sum().item()
    return loss / max(1, len(y)), correct / max(1, len(y))


def train(
    data: TrainingSet,
    params: TrainParams = TrainParams(),
    device: str | torch.device = "cpu",
    init: DeepPickerNet | None = None,
    progress: bool = False,
    on_epoch=None,
) -> tuple[DeepPickerNet, History]:
    """Train (or fine-tune ``init``) on ``data``; returns the weights of the best validation epoch.

    ``on_epoch(epoch)`` is called before each epoch (0-based); it may raise to stop training.
    """
    if len(data) < 10 or data.labels.min() == data.labels.max():
        raise ValueError(
            f"too few training patches ({int(data.labels.sum())} particles, "
            f"{int((data.labels == 0).sum())} background) to train on"
        )
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    gen = torch.Generator().manual_seed(params.seed)
    order = rng.permutation(len(data))
    n_val = max(2, int(round(len(data) * params.val_fraction)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    x_all = torch.from_numpy(data.patches)
    y_all = torch.from_numpy(data.labels)
    w_train = None if data.weights is None else torch.from_numpy(np.asarray(data.weights, np.float32))[train_idx].to(device)
    # channels-last tensors: ~1.9x faster training on CPUs (measured: 9.6 -> 5.0 ms per patch)
    fmt = torch.channels_last
    x_train = x_all[train_idx].to(device).contiguous(memory_format=fmt)
    y_train = y_all[train_idx].to(device)
    x_val = x_all[val_idx].to(device).contiguous(memory_format=fmt)
    y_val = y_all[val_idx].to(device)
    model = copy.deepcopy(init) if init is not None else build_model(params.architecture)
    model.augment_calibration = {}  # the initial model's calibrations do not hold for new weights
    from ..picking.fom import IDENTITY  # ... nor its figure of merit (fitted to its own scores): the network's score

    model.fom = IDENTITY
    model.to(device).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)
    history = History(n_train=len(train_idx), n_val=n_val)
    best_state, best_loss, stale = None, float("inf"), 0
    epochs = range(params.max_epochs)
    if progress:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc="training", unit="epoch")
    for epoch in epochs:
        if on_epoch is not None:
            on_epoch(epoch)
        model.train()
        perm = torch.randperm(len(y_train), generator=gen).to(device)
        total = 0.0
        for s in range(0, len(perm), params.batch_size):
            idx = perm[s : s + params.batch_size]
            xb = augment(x_train[idx], gen).contiguous(memory_format=fmt)
            if w_train is None:
                loss = F.cross_entropy(model(xb), y_train[idx])
            else:  # weighted mean (validation stays unweighted)
                w = w_train[idx]
                loss = (F.cross_entropy(model(xb), y_train[idx], reduction="none") * w).sum() / w.sum().clamp_min(1e-6)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        val_loss, val_acc = _evaluate(model, x_val, y_val, 1024)
        history.train_loss.append(total / len(perm))
        history.val_loss.append(val_loss)
        history.val_accuracy.append(val_acc)
        log.info("epoch %d: train loss %.4f, validation loss %.4f, accuracy %.3f", epoch + 1, total / len(perm), val_loss, val_acc)
        if progress:
            epochs.set_postfix(val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.3f}")
        if val_loss < best_loss - 1e-6:
            best_loss, stale, history.best_epoch = val_loss, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= params.patience:
                break
            if params.lr_decay_factor < 1.0 and stale % max(1, params.lr_decay_patience) == 0:
                for group in opt.param_groups:
                    group["lr"] *= params.lr_decay_factor
                log.info("learning rate -> %.3g", opt.param_groups[0]["lr"])
    model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    return model, history


# --------------------------------------------------------------------------------------------------
# Several data sets, some with incomplete labels
# --------------------------------------------------------------------------------------------------

INCOMPLETE_STRATEGIES = ("model", "weighted", "blobs", "none")


def dark_blobs(image: np.ndarray, min_separation: float = 0.6) -> np.ndarray:
    """Label-free particle-like spots of a preprocessed image (particle box = 64 px): local minima
    of the image smoothed at the particle scale, darker than its median by 3 robust spreads;
    (x, y) in resampled pixels. (The recipe's detector: on EMPIAR-10028 it keeps every labelled
    ribosome and ~40 unlabelled dark blobs per micrograph.)"""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(image, INPUT_SIZE / 6)
    low = ndimage.minimum_filter(smooth, size=int(min_separation * INPUT_SIZE) | 1, mode="nearest")
    spread = 1.4826 * np.median(np.abs(smooth - np.median(smooth)))
    rows, cols = np.nonzero((smooth == low) & (smooth < np.median(smooth) - 3.0 * spread))
    return np.column_stack([cols, rows]).astype(float)


@dataclass
class Vetting:
    """What a vetting model sees on one preprocessed micrograph: ``quiet`` (grid of the score map:
    True where the window scores below the background cut), the grid's ``step`` and ``centre``
    (resampled px), and ``unlabelled`` peaks (x, y, resampled px) scoring at least the unlabelled
    cut and >= 0.3 box from every label."""

    quiet: np.ndarray
    step: int
    centre: float
    unlabelled: np.ndarray

    def allows(self, pts: np.ndarray) -> np.ndarray:
        """Whether background windows centred at ``pts`` (x, y resampled px) score as background."""
        if len(pts) == 0:
            return np.zeros(0, bool)
        j = np.clip(np.round((pts[:, 0] - self.centre) / self.step).astype(int), 0, self.quiet.shape[1] - 1)
        i = np.clip(np.round((pts[:, 1] - self.centre) / self.step).astype(int), 0, self.quiet.shape[0] - 1)
        return self.quiet[i, j]


def vet_micrograph(
    model: DeepPickerNet, image: np.ndarray, positives: np.ndarray, params: TrainParams, device: str | torch.device = "cpu"
) -> Vetting:
    """Score a preprocessed micrograph (normalised as ``model`` expects) with the vetting model;
    ``positives``: labelled centres (x, y, resampled px)."""
    from scipy import ndimage

    from ..picking.scoring import score_map_dense

    smap = score_map_dense(model, image, device=device)
    scores = smap.scores
    peak = ndimage.maximum_filter(scores, size=max(1, int(round(0.6 * INPUT_SIZE / smap.step))) | 1, mode="nearest")
    rows, cols = np.nonzero((scores == peak) & (scores >= params.unlabelled_min_score))
    x, y = smap.centres(rows, cols)
    pts = np.column_stack([x, y])
    if len(positives) and len(pts):
        pts = pts[cKDTree(positives).query(pts)[0] >= 0.3 * INPUT_SIZE]
    return Vetting(scores < params.background_max_score if params.background_max_score < 1 else np.ones_like(scores, bool),
                   smap.step, smap.centre, pts)


def micrograph_examples(
    pre: Preprocessed,
    centres_xy: np.ndarray,
    rng: np.random.Generator,
    params: TrainParams,
    complete: bool = True,
    vetting: Vetting | None = None,
) -> tuple[TrainingSet, dict]:
    """Particle and background patches of one micrograph of a labelled data set.

    ``centres_xy``: (n, 2) particle centres (x, y) in ORIGINAL micrograph pixels. Particles: at most
    ``params.max_positives`` (0 = all) windows at the centres. Background: ``negative_ratio`` per
    particle, ``near_miss_fraction`` of them 0.25-0.6 box from a particle, the rest at least
    ``min_negative_distance`` box from every particle. With ``complete=False`` (labels known to be
    incomplete) background must also not sit on an UNLABELLED particle, by ``params.incomplete_labels``:
    "model" keeps every background window ``unlabelled_radius`` box from the peaks ``vetting``
    finds away from the labels, and the far ones where ``vetting`` scores them as background;
    "blobs" keeps them ``unlabelled_radius`` box from dark particle-sized blobs; "none" does
    nothing more. (Near misses stay: off-centre windows teach centring, and a window 0.35 box
    off an unlabelled particle is one of them.) Returns (patches, counts and
    ``background_xy``: the background window centres, resampled px).
    """
    centres_xy = np.asarray(centres_xy, float).reshape(-1, 2)
    px, py = pre.to_resampled(centres_xy[:, 0], centres_xy[:, 1])
    positives = np.column_stack([px, py])
    inside = np.flatnonzero(_inside(pre.image, px, py))
    if params.max_positives and len(inside) > params.max_positives:
        inside = np.sort(rng.choice(inside, params.max_positives, replace=False))
    n_neg = int(round(params.negative_ratio * len(inside)))
    n_near = int(round(params.near_miss_fraction * n_neg))
    strategy = "complete" if complete else params.incomplete_labels
    if strategy not in INCOMPLETE_STRATEGIES + ("complete",):
        raise ValueError(f"incomplete_labels must be one of {INCOMPLETE_STRATEGIES}, not {strategy!r}")
    blockers = np.zeros((0, 2))
    allowed = None
    if strategy == "blobs":
        blockers = dark_blobs(pre.image)
        if len(blockers) and len(positives):  # a blob on a label is that particle, not a blocker
            blockers = blockers[cKDTree(positives).query(blockers)[0] >= 0.3 * INPUT_SIZE]
    elif strategy in ("model", "weighted"):
        if vetting is None:
            raise ValueError("incomplete_labels='model' needs the vetting model's view of the micrograph")
        blockers = vetting.unlabelled
        allowed = vetting.allows if params.background_max_score < 1 and strategy == "model" else None
    min_px = params.min_negative_distance * INPUT_SIZE
    radius = params.unlabelled_radius * INPUT_SIZE
    block = cKDTree(blockers) if len(blockers) else None
    weigh = None
    if strategy == "weighted":  # keep the windows, but count those on likely unlabelled particles less
        weigh, block = block, None
    near = sample_negatives(pre.image.shape, positives, 3 * n_near, rng, min_px, near_miss_fraction=1.0) if n_near else np.zeros((0, 2))
    if block is not None and len(near):
        near = near[block.query(near)[0] >= radius]
    near = near[:n_near]
    n_far = n_neg - len(near)
    oversample = 1 if block is None and allowed is None else 8
    far = sample_negatives(pre.image.shape, positives, oversample * n_far, rng, min_px)
    if block is not None and len(far):
        far = far[block.query(far)[0] >= radius]
    if allowed is not None and len(far):
        far = far[allowed(far)]
    far = far[:n_far]
    neg = np.vstack([near, far]) if len(near) or len(far) else np.zeros((0, 2))
    pos_p = cut_patches(pre.image, px[inside], py[inside])
    neg_p = cut_patches(pre.image, neg[:, 0], neg[:, 1]) if len(neg) else np.zeros((0, 1, INPUT_SIZE, INPUT_SIZE), np.float32)
    labels = np.concatenate([np.ones(len(pos_p), np.int64), np.zeros(len(neg_p), np.int64)])
    weights = None
    if weigh is not None:
        weights = np.ones(len(labels), np.float32)
        if len(neg):
            on = weigh.query(neg)[0] < radius
            weights[len(pos_p):][on] = params.unlabelled_weight
    info = {"particles": len(pos_p), "background": len(neg_p), "wanted_background": n_neg,
            "unlabelled_blockers": int(len(blockers)), "background_xy": neg}
    return TrainingSet(np.concatenate([pos_p, neg_p]), labels, weights), info
