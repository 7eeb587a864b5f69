"""Score maps: the particle probability of every 64 x 64 window at a fixed step.

A score map ``S`` of a resampled micrograph has ``S[i, j]`` = probability that the window with
top-left corner (row ``step * i``, column ``step * j``) is centred on a particle; that window's
centre is at resampled pixel (row ``step * i + c``, column ``step * j + c``) with ``c`` =
``ScoreMap.centre``: 32 for one pass (the network is trained with the particle centre at index 32
of its window), 31.5 with test-time augmentation (a 64 px window turns about index 31.5, so its
rotated copies put that centre at 31 or 32 on each axis: their mean score peaks at 31.5).

Two implementations give the same numbers (tested to 1e-4): :func:`score_map_dense` (one fully
convolutional pass, processed in strips to bound memory) and :func:`score_map_patches` (the
reference: every window cut out and classified on its own).

Test-time augmentation (``augment``, default: the model's own, ``model.augment``): the logit
margin of each window is the mean over the window and its half turn (``augment=2``), its 4
rotations by 90 degrees (``augment=4``) or those and their mirror images (``augment=8``). The
network is not exactly rotation invariant; averaging symmetric copies smooths the score map, which
measurably ranks particles better and centres them closer (benchmarks/accuracy.py, MODEL_CARD.md)
at 2x / 4x / 8x the scoring time. The half turn alone already cancels a constant offset of the
network's peaks (it maps an offset (dx, dy) to (-dx, -dy)).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .model import AUGMENTATIONS, DeepPickerNet, augment_correction
from .preprocess import INPUT_SIZE

DEFAULT_STEP = 4
log = logging.getLogger(__name__)
HALF = INPUT_SIZE // 2


@dataclass
class ScoreMap:
    """Scores on a grid: ``logits[i, j]`` belongs to the window centred at resampled pixel
    (row ``step * i + centre``, column ``step * j + centre``); ``centre`` is 32 for one pass, 31.5
    for a mean over symmetric copies (module docstring).

    ``logits`` are the network's logit margins (particle minus background); ``scores`` are the
    softmax probabilities, ``sigmoid(logits)``. Peaks are found on the margins, which keep
    their shape where probabilities saturate at 1.
    """

    logits: np.ndarray
    step: int
    centre: float = float(HALF)

    @property
    def scores(self) -> np.ndarray:
        """Particle probability (softmax over the two classes) of each window, float32."""
        return (0.5 * (1.0 + np.tanh(0.5 * self.logits))).astype(np.float32)

    def centres(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid indices (may be fractional) -> resampled pixel coordinates (x, y)."""
        return np.asarray(cols, float) * self.step + self.centre, np.asarray(rows, float) * self.step + self.centre


def _grid_shape(shape: tuple[int, int], step: int) -> tuple[int, int]:
    return (shape[0] - INPUT_SIZE) // step + 1, (shape[1] - INPUT_SIZE) // step + 1


def _centre(n: int) -> float:
    """Window centre (resampled px from its top-left pixel) of a score averaged over ``n`` copies."""
    return float(HALF) if n == 1 else HALF - 0.5


def _augment_count(model: DeepPickerNet, augment: int | None) -> int:
    n = int(getattr(model, "augment", 1) if augment is None else augment)
    if n not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, not {n}")
    return n


def _transforms(n: int) -> list[tuple[int, bool]]:
    """(quarter turns, mirrored) of the ``n`` symmetric copies (mirror = columns reversed first):
    2 = as is and a half turn; 4 = the four rotations; 8 = those and their mirror images."""
    if n == 2:
        return [(0, False), (2, False)]
    return [(k, flip) for flip in (False, True) for k in range(4)][:n]


def _forward(array: np.ndarray, k: int, flip: bool) -> np.ndarray:
    return np.rot90(array[..., ::-1] if flip else array, k, axes=(-2, -1))


def _backward(array: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = np.rot90(array, -k, axes=(-2, -1))
    return out[..., ::-1] if flip else out


@torch.no_grad()
def score_map_dense(
    model: DeepPickerNet,
    image: np.ndarray,
    step: int = DEFAULT_STEP,
    device: str | torch.device = "cpu",
    max_pixels: int = 1 << 22,
    augment: int | None = None,
) -> ScoreMap:
    """Dense scoring in horizontal strips of at most ``max_pixels`` input pixels each.

    With ``augment`` 2, 4 or 8 (default ``model.augment``), the mean margin over the symmetric copies
    of the image (cropped to whole grid steps first, which drops no window, so that the grid maps
    onto itself under rotation).

    Strips start at multiples of ``step`` input rows, so every strip sees exactly the windows (and
    the pooling grid) the whole image would: results do not depend on the strip size. Lower
    ``max_pixels`` on GPUs with little memory. On an out-of-memory error the strip height is halved
    and the strip retried (down to one grid row), and the smaller size is kept for the device.

    With an ``augment`` other than the model's own, the margins are recalibrated for it when the
    weights record a calibration for that count (:func:`~.model.augment_correction`).
    """
    model.eval()
    rows, cols = _grid_shape(image.shape, step)
    n = _augment_count(model, augment)
    if rows < 1 or cols < 1:
        return ScoreMap(np.zeros((max(rows, 0), max(cols, 0)), np.float32), step, _centre(n))
    if n == 1:
        logits = _dense_pass(model, image, step, device, max_pixels)
    else:
        image = image[: (rows - 1) * step + INPUT_SIZE, : (cols - 1) * step + INPUT_SIZE]
        total = np.zeros((rows, cols), dtype=np.float64)
        for k, flip in _transforms(n):
            copy = np.ascontiguousarray(_forward(image, k, flip))
            total += _backward(_dense_pass(model, copy, step, device, max_pixels), k, flip)
        logits = total / n
    scale, shift = augment_correction(model, n)
    return ScoreMap((scale * logits + shift).astype(np.float32), step, _centre(n))


def _dense_pass(model: DeepPickerNet, image: np.ndarray, step: int, device: str | torch.device, max_pixels: int) -> np.ndarray:
    """One fully convolutional pass over ``image`` in strips (score_map_dense): margins, float32."""
    rows, cols = _grid_shape(image.shape, step)
    out = np.empty((rows, cols), dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    max_pixels = min(max_pixels, _STRIP_LIMIT.get(str(device), max_pixels))
    strip_rows = min(rows, max(1, (max_pixels // image.shape[1] - INPUT_SIZE) // step))
    r0 = 0
    while r0 < rows:
        r1 = min(rows, r0 + strip_rows)
        top = r0 * step
        bottom = (r1 - 1) * step + INPUT_SIZE
        try:
            strip = tensor[top:bottom].to(device, non_blocking=True)[None, None]
            out[r0:r1] = model.dense_logits(strip, step)[0].float().cpu().numpy()[: r1 - r0]
        except torch.cuda.OutOfMemoryError:
            if strip_rows == 1:
                raise
            strip = None  # free before retrying
            strip_rows = max(1, strip_rows // 2)
            _STRIP_LIMIT[str(device)] = (strip_rows * step + INPUT_SIZE) * image.shape[1]
            log.warning("out of memory on %s scoring %d x %d px: retrying in strips of %d rows (kept for later micrographs)",
                        device, bottom - top, image.shape[1], (strip_rows - 1) * step + INPUT_SIZE)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        r0 = r1
    return out


# Largest strip (input pixels) that fitted per device after an out-of-memory error: on CUDA the
# batch of windows scored at once shrinks when memory runs short, instead of the job crashing.
_STRIP_LIMIT: dict[str, int] = {}


@torch.no_grad()
def score_map_patches(
    model: DeepPickerNet,
    image: np.ndarray,
    step: int = DEFAULT_STEP,
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
    augment: int | None = None,
) -> ScoreMap:
    """Reference sliding window: cut out every 64 x 64 window at ``step`` and classify each (with
    ``augment`` > 1: each of its symmetric copies, margins averaged)."""
    model.eval()
    n = _augment_count(model, augment)
    rows, cols = _grid_shape(image.shape, step)
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    windows = tensor.unfold(0, INPUT_SIZE, step).unfold(1, INPUT_SIZE, step)  # rows, cols, 64, 64
    flat = windows.reshape(-1, INPUT_SIZE, INPUT_SIZE)
    scores = np.empty(flat.shape[0], dtype=np.float32)
    for start in range(0, flat.shape[0], batch_size):
        batch = flat[start : start + batch_size].to(device)[:, None]
        margin = torch.zeros(batch.shape[0], device=batch.device)
        for k, flip in _transforms(n):
            copy = torch.rot90(batch.flip(-1) if flip else batch, k, dims=(-2, -1))
            logits = model(copy)
            margin += logits[:, 1] - logits[:, 0]
        scores[start : start + batch.shape[0]] = (margin / n).float().cpu().numpy()
    scale, shift = augment_correction(model, n)
    return ScoreMap((scale * scores.reshape(rows, cols) + shift).astype(np.float32), step, _centre(n))
