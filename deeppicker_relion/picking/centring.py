"""Centring network: moves each pick to where a second network reads the particle's centre.

The classifier's score map peaks near, not exactly at, a particle's centre: the network learnt
"is a particle centred in this window" with no exact target for the position. The centring network
(``deeppicker2016-wide-centring``) has the classifier's layers (initialised from it) but its last
layer regresses the particle's offset from the window's centre: given the 64 x 64 window of the
preprocessed micrograph centred (index 32) on the integer pixel nearest a pick, it returns (dx,
dy), resampled pixels, x = column, y = row, such that the particle's centre is at the window centre
+ (dx, dy). Trained on simulated micrographs of random molecules with exact centres, windows drawn
around each particle at offsets like a picker's errors and larger (training/make_centring_model.py).

At picking (:func:`recentre`) each candidate's window is read as is and turned by half a turn (the
mean of both predictions, mapped back, cancels a constant bias of the network), and the candidate
moves by the predicted offset, at most ``max_shift`` x box (:func:`.candidates.find_candidates` then
drops the lower of two candidates that moved closer than the peak spacing). Scores do not change. The shipped
weights (``pretrained/centring.safetensors``) are used with any classifier whose micrographs are
normalised as they were trained (``normalisation`` in their metadata); ``PickParams.recentre``,
``deeppicker pick --no-recentre`` turn it off. Measured: docs/experiments.md, "Centring network".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# the network's class and weights files are in model.py (load_model attaches it); re-exported here
from ..model import CENTRING_ARCHITECTURE as ARCHITECTURE
from ..model import CENTRING_OUTPUT_SCALE as OUTPUT_SCALE
from ..model import (
    CentringNet,
    attach_centring,
    attached_centring,
    default_centring_path,
    load_centring,
    shipped_centring_for,
    write_safetensors,
)
from .preprocess import INPUT_SIZE
from .scoring import window_forward

__all__ = [
    "ARCHITECTURE", "MAX_SHIFT", "OUTPUT_SCALE", "CentringNet", "attach_centring", "attached_centring", "cut_windows",
    "default_centring_path", "load_centring", "predict_offsets", "recentre", "save_centring", "shipped_centring_for",
    "transform_offsets",
]

HALF = INPUT_SIZE // 2
# largest move of a pick, fraction of the box: a correction, never a jump to another particle
MAX_SHIFT = 0.15


def cut_windows(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows (N, 64, 64) centred (index 32) on the integer pixels nearest (x, y) (resampled px,
    x = column), the image mirrored beyond its edges; returns (windows, centre x, centre y)."""
    pad = INPUT_SIZE
    padded = np.pad(np.asarray(image, np.float32), pad, mode="reflect")
    wx = np.clip(np.round(np.asarray(x, float)).astype(int), HALF - pad, image.shape[1] + pad - HALF)
    wy = np.clip(np.round(np.asarray(y, float)).astype(int), HALF - pad, image.shape[0] + pad - HALF)
    out = np.empty((len(wx), INPUT_SIZE, INPUT_SIZE), np.float32)
    for i, (a, b) in enumerate(zip(wx + pad, wy + pad)):
        out[i] = padded[b - HALF : b + HALF, a - HALF : a + HALF]
    return out, wx, wy


def transform_offsets(offsets: torch.Tensor, quarter_turns: int, mirrored: bool) -> torch.Tensor:
    """Offsets (N, 2) = (dx, dy) from index 32 of a window, as they are in the window with its columns
    reversed (``mirrored``, first) and then turned by ``torch.rot90(window, quarter_turns, (-2, -1))``
    (a 64 px window turns about 31.5, so a point at 32 + d goes to 31 - d under a half turn)."""
    col = offsets[:, 0] + HALF
    row = offsets[:, 1] + HALF
    last = INPUT_SIZE - 1
    if mirrored:
        col = last - col
    for _ in range(quarter_turns % 4):
        row, col = last - col, row
    return torch.stack([col - HALF, row - HALF], dim=1)


def _forward(net: CentringNet, batch: torch.Tensor) -> torch.Tensor:
    """``net(batch)``; for a plain CentringNet its eval-mode forward without per-layer overheads
    (:func:`.scoring.window_forward`: same offsets to float rounding, ~1e-5 px; ~2x faster on CPUs)."""
    if type(net).forward is CentringNet.forward and not net.training:
        return OUTPUT_SCALE * window_forward(net, batch)
    return net(batch)


@torch.no_grad()
def predict_offsets(net: CentringNet, windows: np.ndarray, device: str | torch.device = "cpu", batch_size: int = 512) -> np.ndarray:
    """(N, 2) offsets (dx, dy), resampled px, of the particle centre from each window's index 32:
    the mean of the window's prediction and its half turn's (mapped back)."""
    net.eval()
    out = np.zeros((len(windows), 2), np.float32)
    for start in range(0, len(windows), batch_size):
        batch = torch.from_numpy(windows[start : start + batch_size]).to(device)[:, None]
        direct = _forward(net, batch)
        turned = transform_offsets(_forward(net, torch.rot90(batch, 2, dims=(-2, -1))), 2, False)
        out[start : start + len(batch)] = (0.5 * (direct + turned)).float().cpu().numpy()
    return out


def recentre(net: CentringNet, image: np.ndarray, x: np.ndarray, y: np.ndarray, max_shift: float = MAX_SHIFT,
             device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """New positions (x, y) of picks at resampled pixels (x, y) of a preprocessed ``image`` (a box
    spans 64 px): each moved by the predicted offset of its particle's centre, at most ``max_shift``
    x box (64 px)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if x.size == 0:
        return x.copy(), y.copy()
    windows, wx, wy = cut_windows(image, x, y)
    offsets = predict_offsets(net, windows, device)
    nx, ny = wx + offsets[:, 0].astype(float), wy + offsets[:, 1].astype(float)
    dx, dy = nx - x, ny - y
    dist = np.hypot(dx, dy)
    limit = max_shift * INPUT_SIZE
    shrink = np.where(dist > limit, limit / np.maximum(dist, 1e-12), 1.0)
    return x + shrink * dx, y + shrink * dy


def save_centring(net: CentringNet, path: str | Path, metadata: dict | None = None) -> None:
    """Save a centring network as safetensors, atomically, with its architecture, normalisation and
    ``metadata`` (JSON)."""
    write_safetensors(net, path, {**(metadata or {}), "normalisation": net.normalisation})
