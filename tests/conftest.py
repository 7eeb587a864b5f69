"""Shared fixtures: tiny generated micrographs written as real MRC files, and paths to ../shared."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

torch.set_num_threads(2)


def blob_micrograph(
    seed: int, shape: tuple[int, int] = (300, 340), n: int = 12, box: float = 32.0, snr: float = 2.0
) -> tuple[np.ndarray, pd.DataFrame]:
    """A micrograph with ``n`` dark soft discs of diameter ``box`` px in white noise, and their
    exact centres (x = column, y = row). For fast unit tests; tests/test_simulate.py covers the
    realistic simulator."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 1.0, shape).astype(np.float32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    pts: list[np.ndarray] = []
    for _ in range(2000):
        if len(pts) == n:
            break
        p = rng.uniform([box, box], [shape[1] - box, shape[0] - box])
        if all(np.hypot(*(p - q)) > box for q in pts):
            pts.append(p)
    for x, y in pts:
        r = np.hypot(xx - x, yy - y) / (box / 2)
        image -= snr * np.clip(1 - r**2, 0, None)
    xy = np.array(pts).reshape(-1, 2)
    return image, pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]})


def write_mrc(path: Path, data: np.ndarray, pixel_size: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if pixel_size:
            mrc.voxel_size = pixel_size
    return path


@pytest.fixture
def shared() -> Path:
    """../shared, or skip: a user's clone does not have it."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present (only the project's own CI and developers have it)")
    return SHARED


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, str, float]:
    """``deeppicker demo`` run once per session exactly as the README's first command (the installed
    console script, a fresh process, in an empty folder): (its deeppicker_demo/ folder, stdout,
    wall-clock seconds). Used by tests/test_demo.py and tests/test_readme.py."""
    import shutil
    import subprocess
    import sys
    import time

    from deeppicker_relion.model import default_weights_path

    if not default_weights_path().is_file():
        pytest.skip(f"the shipped model {default_weights_path()} is missing (being trained?)")
    cwd = tmp_path_factory.mktemp("demo_run")
    script = Path(sys.executable).parent / "deeppicker"
    command = [str(script)] if script.is_file() else [shutil.which("deeppicker") or "deeppicker"]
    start = time.perf_counter()
    proc = subprocess.run([*command, "demo"], cwd=cwd, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, f"deeppicker demo failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return cwd / "deeppicker_demo", proc.stdout, seconds
