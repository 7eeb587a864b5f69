"""The DeepPicker CNN, its dense (fully convolutional) form, and weights files.

Reference architecture ``deeppicker2016`` (Wang et al. 2016, as in the authors' code): a 64 x 64
patch -> conv 9x9 (8) -> conv 5x5 (16) -> conv 3x3 (32) -> conv 2x2 (64), each ReLU + 2x2 max-pool,
-> FC 256 -> 128 (ReLU, dropout 0.5) -> FC 128 -> 2 -> softmax; class 1 = particle.

Weights are stored as safetensors (no pickle: loading never executes code), with metadata naming
the architecture and the training recipe. Plain PyTorch state_dict files (``.pt``/``.pth``) are
read with ``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import JobError
from .io.atomic import atomic_path
from .picking.preprocess import DEFAULT_NORMALISATION, INPUT_SIZE, NORMALISATIONS

FORMAT_VERSION = "1"
# Test-time augmentation: a score map is the mean logit margin over this many symmetric copies of
# the micrograph (1: as is; 2: as is and turned by 180 degrees; 4: the four 90-degree rotations;
# 8: rotations and their mirror images).
AUGMENTATIONS = (1, 2, 4, 8)


class DeepPickerNet(nn.Module):
    """The 2016 DeepPicker classifier; ``forward`` maps (N, 1, 64, 64) patches to (N, 2) logits.

    ``dense_logits`` runs the same network fully convolutionally over a whole image and returns the
    logit margin of every 64 x 64 window whose top-left corner is a multiple of ``step``.
    """

    architecture = "deeppicker2016"

    def __init__(self, channels: tuple[int, int, int, int] = (8, 16, 32, 64), hidden: int = 128, batchnorm: bool = False):
        super().__init__()
        # test-time augmentation the model's scores (and calibration) are meant for: one of
        # AUGMENTATIONS, stored in the weights file's metadata ("augment"); see scoring.py
        self.augment = 1
        # The count the calibration folded into fc2 was made for (load_model: the metadata's
        # "augment"); ``augment`` may be changed afterwards (--augment) to score with another.
        self.calibrated_augment: int | None = None
        # Calibrations per count of copies (``calibration_by_augment`` in the metadata; set by
        # load_model, never saved from here): {n: (a, c)}, the margin calibrated for ``n`` copies
        # being a * (raw margin) + c; used when scoring with another count (augment_correction).
        self.augment_calibration: dict[int, tuple[float, float]] = {}
        # How micrographs are normalised when this network scores them or is fine-tuned on them
        # (preprocess.normalise); stored in the weights' metadata ("normalisation"; weights
        # without it were made with "global")
        self.normalisation = DEFAULT_NORMALISATION
        kernels = (9, 5, 3, 2)
        c_in = 1
        self.convs = nn.ModuleList()
        for c_out, k in zip(channels, kernels):
            self.convs.append(nn.Conv2d(c_in, c_out, k))
            c_in = c_out
        # Optional batch normalisation after each convolution (before its ReLU): at inference it is
        # an affine map per channel, folded into the convolution (``_conv_params``), so the dense
        # pass costs the same as without it.
        self.norms = nn.ModuleList([nn.BatchNorm2d(c) for c in channels]) if batchnorm else None
        side = INPUT_SIZE
        for k in kernels:
            side = (side - k + 1) // 2
        self.feature_side = side  # 2 for the reference network
        self.fc1 = nn.Linear(c_in * side * side, hidden)
        self.fc2 = nn.Linear(hidden, 2)
        self.dropout = nn.Dropout(0.5)
        # He initialisation for ReLU layers: with PyTorch's default, SGD sat on the class-prior
        # plateau for many epochs on small training sets (measured: 12 epochs at batch 128).
        for layer in [*self.convs, self.fc1, self.fc2]:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = F.max_pool2d(F.relu(x), 2)
        x = torch.flatten(x, 1)
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)

    def dense_logits(self, image: torch.Tensor, step: int = 4) -> torch.Tensor:
        """Logit margins (particle logit - background logit; softmax probability =
        sigmoid(margin)) of all 64 x 64 windows at a ``step``-pixel grid, in one pass.

        ``image``: (B, 1, H, W). Returns (B, (H - 64) // step + 1, (W - 64) // step + 1); entry
        [i, j] belongs to the window whose top-left corner is (row step*i, column step*j), identical
        to ``forward`` on that patch. Pools are kept at stride 2 until the accumulated stride equals
        ``step``; later pools run at stride 1 and later layers are dilated instead (a trous /
        shift-and-stitch), so no window position is skipped and none is computed twice.
        """
        if step not in (1, 2, 4, 8, 16):
            raise ValueError("step must be 1, 2, 4, 8 or 16")
        cl = torch.channels_last  # ~25 % less CPU time for these convolutions (oneDNN), same numbers
        x = image.contiguous(memory_format=cl)
        stride, dilation = 1, 1
        for i in range(len(self.convs)):
            weight, bias = self._conv_params(i)
            x = F.conv2d(x, weight.contiguous(memory_format=cl), bias, dilation=dilation)
            if stride < step:
                x = _pool2(x)
                stride *= 2
            else:
                x = _shifted_max(x, dilation)
                dilation *= 2
            x = F.relu(x)  # after the pool: the same result on 4x fewer pixels
        c = x.shape[1]
        w1 = self.fc1.weight.view(-1, c, self.feature_side, self.feature_side).contiguous(memory_format=cl)
        x = F.relu(F.conv2d(x, w1, self.fc1.bias, dilation=dilation))
        x = F.conv2d(x, self.fc2.weight[:, :, None, None].contiguous(memory_format=cl), self.fc2.bias)
        margin = x[:, 1] - x[:, 0]
        rows = (image.shape[-2] - INPUT_SIZE) // step + 1
        cols = (image.shape[-1] - INPUT_SIZE) // step + 1
        return margin[:, :rows, :cols]

    def _conv_params(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of convolution ``i`` with its batch normalisation (running statistics,
        i.e. inference mode) folded in: ``bn(conv(x)) = conv'(x)`` exactly."""
        conv = self.convs[i]
        if self.norms is None:
            return conv.weight, conv.bias
        bn = self.norms[i]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return conv.weight * scale[:, None, None, None], (conv.bias - bn.running_mean) * scale + bn.bias


def _pool2(x: torch.Tensor) -> torch.Tensor:
    """2 x 2 max-pool at stride 2 (floor mode) as maxima of strided views (faster than max_pool2d
    on CPUs), separable: pairs of columns, then pairs of rows (2 passes over memory instead of 3;
    the same numbers: the max of four)."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    cols = torch.maximum(x[..., 0:h, 0:w:2], x[..., 0:h, 1:w:2])
    return torch.maximum(cols[..., 0::2, :], cols[..., 1::2, :])


def _shifted_max(x: torch.Tensor, d: int) -> torch.Tensor:
    """2 x 2 max-pool at stride 1 with dilation ``d``: the max of four shifted views, separable
    (columns, then rows)."""
    cols = torch.maximum(x[..., :, :-d], x[..., :, d:])
    return torch.maximum(cols[..., :-d, :], cols[..., d:, :])


class DeepPickerWide(DeepPickerNet):
    """``deeppicker2016-wide``: the reference layer layout (same kernels, pools, 64 x 64 input,
    dense scoring) with twice the convolution channels (16, 32, 64, 64) and batch normalisation
    after each convolution (folded into it at inference)."""

    architecture = "deeppicker2016-wide"

    def __init__(self) -> None:
        super().__init__(channels=(16, 32, 64, 64), hidden=128, batchnorm=True)


ARCHITECTURES: dict[str, type[DeepPickerNet]] = {cls.architecture: cls for cls in (DeepPickerNet, DeepPickerWide)}


@torch.no_grad()
def fold_logit_calibration(model: DeepPickerNet, scale: float, offset: float) -> DeepPickerNet:
    """Calibrate ``model`` in place so that its logit margin becomes ``scale * margin + offset``
    (Platt scaling), by rescaling its last layer: exact, and every scoring path (dense, patch by
    patch, CLI, RELION job, fine-tuning from these weights) then uses the calibrated scores with no
    code of its own. Peak positions do not change (``scale`` > 0). Returns ``model``."""
    if not scale > 0:
        raise ValueError(f"calibration scale must be > 0, got {scale}")
    model.fc2.weight.mul_(scale)
    model.fc2.bias.mul_(scale)
    model.fc2.bias[1] += offset
    return model


def augment_correction(model: DeepPickerNet, n: int) -> tuple[float, float]:
    """(scale, shift) that turn the model's margin (calibrated for ``model.calibrated_augment``
    copies, the count in its weights file) into the margin calibrated for ``n`` copies: ``scale *
    margin + shift``. (1, 0) when ``n`` is that count or no calibration for ``n`` is recorded (then
    the scores are the model's own calibration applied to ``n`` copies)."""
    table = getattr(model, "augment_calibration", {}) or {}
    calibrated = getattr(model, "calibrated_augment", None)
    own, other = table.get(calibrated), table.get(int(n))
    if n == calibrated or own is None or other is None:
        return 1.0, 0.0
    scale = other[0] / own[0]
    return scale, other[1] - scale * own[1]


def build_model(architecture: str = "deeppicker2016") -> DeepPickerNet:
    """A freshly initialised network of the named architecture."""
    if architecture not in ARCHITECTURES:
        raise JobError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture]()


def write_safetensors(model: nn.Module, path: str | Path, info: dict) -> None:
    """Write ``model``'s weights as safetensors, atomically (temp file + rename), with its
    ``architecture``, the input size and ``info`` (JSON) as metadata."""
    from safetensors.torch import save_file

    meta = {
        "format_version": FORMAT_VERSION,
        "architecture": model.architecture,
        "input_size": str(INPUT_SIZE),
        "info": json.dumps(info, sort_keys=True),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def save_model(model: DeepPickerNet, path: str | Path, metadata: dict | None = None) -> None:
    """Save weights as safetensors, atomically, with the architecture and ``metadata`` (JSON)."""
    info = dict(metadata or {})
    info.setdefault("augment", int(getattr(model, "augment", 1)))
    info["normalisation"] = getattr(model, "normalisation", DEFAULT_NORMALISATION)
    write_safetensors(model, path, info)


def default_weights_path() -> Path:
    """The shipped general (cross-molecule) model."""
    return Path(str(resources.files("deeppicker_relion") / "pretrained" / "general.safetensors"))


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], dict]:
    """(tensors, metadata, the metadata's "info" JSON or {}) of a safetensors weights file (no
    pickle). Raises :class:`JobError` naming the file if it cannot be read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise JobError(f"corrupt or unreadable safetensors weights ({err})", path) from None
    try:
        info = json.loads(meta.get("info", "{}"))
    except json.JSONDecodeError:
        info = {}
    return state, meta, info if isinstance(info, dict) else {}


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[DeepPickerNet, dict]:
    """Load a weights file (default: the shipped general model) -> (model in eval mode, metadata).

    The shipped centring network is attached to the model (``centring.attached_centring``) when it
    reads micrographs normalised as the model does: its picks are then re-centred (centring.py).

    Raises :class:`JobError` naming the file if it is missing, corrupt, pickled code, or of
    another architecture.
    """
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise JobError("weights file not found", path)
    info: dict = {}
    architecture = DeepPickerNet.architecture
    if path.suffix == ".safetensors":
        state, meta, info = read_safetensors(path)
        architecture = meta.get("architecture", architecture)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError for pickled code, RuntimeError for corrupt zips
            raise JobError(
                "refused: not a plain weights file (pickled objects are never loaded; "
                f"use .safetensors or a state_dict) [{type(err).__name__}]",
                path,
            ) from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise JobError("does not hold a state_dict of tensors", path)
    model = build_model(architecture) if architecture in ARCHITECTURES else None
    if model is None:
        raise JobError(f"weights are for unknown architecture {architecture!r}", path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise JobError(
            f"weights do not fit the {architecture} network ({first[1].strip() if len(first) > 1 else first[0]})",
            path,
        ) from None
    augment = info.get("augment", 1)
    if augment not in AUGMENTATIONS:
        raise JobError(f"metadata 'augment' is {augment!r}; expected one of {', '.join(map(str, AUGMENTATIONS))}", path)
    model.augment = model.calibrated_augment = int(augment)
    table = info.get("calibration_by_augment", {})
    try:
        model.augment_calibration = {int(n): (float(c["a"]), float(c["b"]) + float(c["offset"])) for n, c in table.items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise JobError("metadata 'calibration_by_augment' is malformed (expected {n: {a, b, offset}})", path) from None
    if any(n not in AUGMENTATIONS or not a > 0 for n, (a, _) in model.augment_calibration.items()):
        raise JobError(f"metadata 'calibration_by_augment' has a count outside {AUGMENTATIONS} or a scale <= 0", path)
    normalisation = info.get("normalisation", "global")  # older weights: the whole micrograph's spread
    if normalisation not in NORMALISATIONS:
        raise JobError(f"metadata 'normalisation' is {normalisation!r}; expected one of {', '.join(NORMALISATIONS)}", path)
    model.normalisation = normalisation
    from .picking.fom import FomModel  # the figure of merit of this model's picks (fom.py)

    try:
        model.fom = FomModel.from_metadata(info.get("fom"))
    except ValueError as err:
        raise JobError(f"metadata 'fom': {err}", path) from None
    model.to(device).eval()
    attach_centring(model, shipped_centring_for(normalisation, device))
    return model, info


# --------------------------------------------------------------------------------------------------
# The centring network (centring.py moves picks with it): its class and weights files live here,
# beside the classifier it is built on, so that load_model attaches it without importing centring.py.
# --------------------------------------------------------------------------------------------------

CENTRING_ARCHITECTURE = "deeppicker2016-wide-centring"
# the network's outputs are offsets / CENTRING_OUTPUT_SCALE (resampled px): unit-sized targets for training
CENTRING_OUTPUT_SCALE = 4.0


class CentringNet(DeepPickerWide):
    """``deeppicker2016-wide-centring``: the ``deeppicker2016-wide`` layers with a 2-output last layer;
    ``forward`` maps (N, 1, 64, 64) windows to (N, 2) offsets (dx, dy) in resampled pixels of the
    particle's centre from the window's centre (index 32)."""

    architecture = CENTRING_ARCHITECTURE

    def __init__(self) -> None:
        super().__init__()
        self.fc2 = nn.Linear(self.fc1.out_features, 2)
        nn.init.zeros_(self.fc2.weight)  # starts as "no correction"
        nn.init.zeros_(self.fc2.bias)
        self.dropout = nn.Dropout(0.1)
        self.normalisation = "local"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return CENTRING_OUTPUT_SCALE * super().forward(x)

    def dense_logits(self, image: torch.Tensor, step: int = 4) -> torch.Tensor:  # pragma: no cover - guard
        raise TypeError("the centring network regresses offsets of single windows; it does not score micrographs")


def default_centring_path() -> Path:
    """The shipped centring network."""
    return Path(str(resources.files("deeppicker_relion") / "pretrained" / "centring.safetensors"))


def load_centring(path: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[CentringNet, dict]:
    """Load a centring network (default: the shipped one) -> (network in eval mode, metadata).
    Raises :class:`JobError` naming the file if it is missing, unreadable or not a centring network."""
    path = Path(path) if path is not None else default_centring_path()
    if not path.is_file():
        raise JobError("centring weights file not found", path)
    state, meta, info = read_safetensors(path)
    if meta.get("architecture") != CENTRING_ARCHITECTURE:
        raise JobError(f"not a centring network (architecture {meta.get('architecture')!r}, expected {CENTRING_ARCHITECTURE!r})", path)
    net = CentringNet()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise JobError(f"weights do not fit the centring network ({str(err).strip().splitlines()[0]})", path) from None
    normalisation = info.get("normalisation", "local")
    if normalisation not in NORMALISATIONS:
        raise JobError(f"metadata 'normalisation' is {normalisation!r}; expected one of {', '.join(NORMALISATIONS)}", path)
    net.normalisation = normalisation
    return net.to(device).eval(), info


def shipped_centring_for(normalisation: str, device: str | torch.device = "cpu") -> CentringNet | None:
    """The shipped centring network if it reads micrographs normalised as ``normalisation`` (the
    classifier's) and is installed; else None (picks keep the score map's centres)."""
    path = default_centring_path()
    if not path.is_file():
        return None
    net, _ = load_centring(path, device)
    return net if net.normalisation == normalisation else None


def attach_centring(model: nn.Module, net: CentringNet | None) -> None:
    """Give a classifier the centring network its picks use (None: none). Kept outside the
    classifier's modules, so its weights file, state dict and fine-tuning are unaffected."""
    model.__dict__["centring"] = net


def attached_centring(model: nn.Module) -> CentringNet | None:
    """The centring network attached to a classifier (:func:`attach_centring`; load_model attaches
    the shipped one where it fits), or None."""
    return model.__dict__.get("centring")
