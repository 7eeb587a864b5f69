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
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..model import AUGMENTATIONS, DeepPickerNet, augment_correction
from .preprocess import INPUT_SIZE, tune_allocator

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
    tune_allocator()
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


@torch.no_grad()
def window_forward(model: DeepPickerNet, windows: torch.Tensor) -> torch.Tensor:
    """``model.forward`` in eval mode on (N, 1, 64, 64) windows, faster on CPUs (about 2x for a
    few hundred windows): batch normalisation folded into the convolutions, channels-last
    layout, the pools as maxima of strided views (as :meth:`~.model.DeepPickerNet.dense_logits`
    does). Same numbers to float rounding (~1e-6 relative). Returns the last layer's outputs
    (N, outputs), before any scaling a subclass's ``forward`` applies."""
    from ..model import _pool2

    cl = torch.channels_last
    x = windows.contiguous(memory_format=cl)
    for i in range(len(model.convs)):
        weight, bias = model._conv_params(i)
        x = F.relu(_pool2(F.conv2d(x, weight.contiguous(memory_format=cl), bias)))
    x = torch.flatten(x.contiguous(), 1)
    return model.fc2(F.relu(model.fc1(x)))


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


# ---------------------------------------------------------------------------------------------
# Several micrographs per batch (the GPU path). On a GPU one micrograph's dense pass leaves the
# device mostly idle between kernel launches and transfers; scoring several same-sized
# micrographs as one batch amortises both. The batch size is chosen from the device's free memory.

# Device memory the dense pass of the wide network needs per input pixel of a batch, with margin:
# the first convolution's 16 channels (64 B in float32) and the temporaries of its 2 x 2 pooling
# (~48 B) dominate; half precision halves them. Measured on CPU for one 2,388 px pass (peak
# allocations over the input): 1.3 GB ~ 120 B per pixel in float32.
BYTES_PER_PIXEL = {torch.float32: 128, torch.float16: 72}
MEMORY_FRACTION = 0.5  # of the free device memory given to one batch
MAX_BATCH = 32  # micrographs per batch at most
# Mixed precision on CUDA (float16 activations, float32 accumulation in cuDNN) for the dense pass;
# checked on held-out micrographs by emulating it on the CPU (docs/speed.md): scores within 2e-3,
# picks and F1 unchanged. ``DEEPPICKER_GPU_PRECISION=float32`` in the environment turns it off.
GPU_HALF = True


def batch_size_for(free_bytes: int, shape: tuple[int, int], half: bool = False, fraction: float = MEMORY_FRACTION,
                   limit: int = MAX_BATCH) -> int:
    """Micrographs of ``shape`` (resampled px) scored per batch given ``free_bytes`` of device
    memory: as many as fit in ``fraction`` of it at BYTES_PER_PIXEL, 1 to ``limit``. 0 when even one
    does not fit (it is then scored in strips, :func:`score_map_dense`)."""
    per = BYTES_PER_PIXEL[torch.float16 if half else torch.float32] * int(shape[0]) * int(shape[1])
    return int(min(limit, (fraction * free_bytes) // max(per, 1)))


def half_precision(device: str | torch.device) -> bool:
    """Whether the dense pass runs in mixed precision on ``device``: CUDA only, unless
    ``DEEPPICKER_GPU_PRECISION=float32``."""
    import os

    return (torch.device(device).type == "cuda" and GPU_HALF
            and os.environ.get("DEEPPICKER_GPU_PRECISION", "").lower() != "float32")


def gpu_batch_size(device: str | torch.device, shape: tuple[int, int]) -> int:
    """Micrographs of ``shape`` per batch on CUDA ``device`` from its free memory now; 1 on CPUs
    (one micrograph at a time, as its strips already keep the cores busy)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    return batch_size_for(free, shape, half_precision(device))


@torch.no_grad()
def score_maps_batched(model: DeepPickerNet, images: list[np.ndarray], step: int = DEFAULT_STEP,
                       device: str | torch.device = "cpu", augment: int | None = None,
                       half: bool | None = None) -> list[ScoreMap]:
    """Score maps of several micrographs of one shape, scored together: each symmetric copy of all
    of them is one batch (B, 1, H, W) through the dense pass, copied to the device from pinned
    memory on CUDA. The same numbers as :func:`score_map_dense` of each (tested on CPU: exactly;
    on CUDA to float rounding, or, with ``half`` (default :func:`half_precision`), within
    mixed precision's). On an out-of-memory error the batch is split in two and each half scored
    again (down to one micrograph, then in strips)."""
    if not images:
        return []
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"score_maps_batched takes micrographs of one shape, got {sorted(shapes)}")
    model.eval()
    device = torch.device(device)
    half = half_precision(device) if half is None else bool(half)
    n = _augment_count(model, augment)
    rows, cols = _grid_shape(images[0].shape, step)
    if rows < 1 or cols < 1 or len(images) == 1 and not half:
        return [score_map_dense(model, im, step, device, augment=augment) for im in images]
    try:
        if n > 1:
            images = [im[: (rows - 1) * step + INPUT_SIZE, : (cols - 1) * step + INPUT_SIZE] for im in images]
        total = np.zeros((len(images), rows, cols), dtype=np.float64)
        for k, flip in _transforms(n):
            copies = [np.ascontiguousarray(_forward(im, k, flip)) for im in images]
            total += _backward(_batch_pass(model, copies, step, device, half), k, flip)
        logits = total / n
    except torch.cuda.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(images) == 1:
            log.warning("out of memory on %s scoring one %d x %d px micrograph at once: scoring it in strips",
                        device, *images[0].shape)
            return [score_map_dense(model, images[0], step, device, augment=augment)]
        half_way = len(images) // 2
        log.warning("out of memory on %s scoring %d micrographs at once: %d per batch from now on", device,
                    len(images), half_way)
        return (score_maps_batched(model, images[:half_way], step, device, augment, half)
                + score_maps_batched(model, images[half_way:], step, device, augment, half))
    scale, shift = augment_correction(model, n)
    return [ScoreMap((scale * m + shift).astype(np.float32), step, _centre(n)) for m in logits]


def _batch_pass(model: DeepPickerNet, images: list[np.ndarray], step: int, device: torch.device,
                half: bool) -> np.ndarray:
    """One dense pass over a batch of same-shaped images: margins (B, rows, cols), float32."""
    shape = (len(images), 1, *images[0].shape)
    pin = device.type == "cuda"
    staging = torch.empty(shape, dtype=torch.float32, pin_memory=pin)
    for i, im in enumerate(images):
        staging[i, 0].copy_(torch.from_numpy(im))
    batch = staging.to(device, non_blocking=pin)
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=half):
        out = model.dense_logits(batch, step)
    return out.float().cpu().numpy()


def score_ahead(stream: Iterable, model: DeepPickerNet, device: str | torch.device = "cpu",
                batch_size: int | None = None) -> Iterator[tuple]:
    """(row, prepared, score map or None) for each (row, prepared) of ``stream`` (a read-ahead of
    :func:`~.pipeline.prefetch`; ``prepared``: a Prepared, or the error that stopped it).

    On CUDA (or whenever ``batch_size`` > 1) up to ``batch_size`` consecutive micrographs of one
    shape (default: as many as fit, :func:`gpu_batch_size`) are scored together
    (:func:`score_maps_batched`) and yielded with their maps, in the order of ``stream``; elsewhere
    nothing is scored here (None: the caller scores each micrograph as before)."""
    device = torch.device(device)
    if batch_size is None and device.type != "cuda":
        yield from ((row, prepared, None) for row, prepared in stream)
        return
    pending: list[tuple] = []

    def flush() -> Iterator[tuple]:
        ready = [(r, p) for r, p in pending if hasattr(p, "pre")]
        maps = iter(score_maps_batched(model, [p.pre.image for _, p in ready], device=device)) if ready else iter(())
        for row, prepared in pending:
            yield row, prepared, next(maps) if hasattr(prepared, "pre") else None
        pending.clear()

    limit = batch_size
    for row, prepared in stream:
        if hasattr(prepared, "pre"):
            shapes = {p.pre.image.shape for _, p in pending if hasattr(p, "pre")}
            if shapes and prepared.pre.image.shape not in shapes:
                yield from flush()
            if limit is None:
                limit = max(1, gpu_batch_size(device, prepared.pre.image.shape))
        pending.append((row, prepared))
        if sum(hasattr(p, "pre") for _, p in pending) >= (limit or 1):
            yield from flush()
    if pending:
        yield from flush()


def read_ahead(device: str | torch.device, default: int = 2) -> tuple[int, int]:
    """(micrographs read ahead, reader threads) for scoring on ``device``: ``default`` and one
    thread on CPUs (the cores score); on CUDA enough to fill the next batches while one is scored
    (16, or ``default`` if larger) with up to 8 threads (the CPU reads and resamples, the GPU scores)."""
    import os

    if torch.device(device).type != "cuda":
        return default, 1
    return max(default, 16), max(1, min(8, (os.cpu_count() or 2) // 2))
