"""The run's adversarial and poisoned datasets as files (compressed ``.npz``), and their checked loading.

Every image file holds ``x`` (float32, (N, 28, 28, 1), in [0, 1]), ``y`` (int64 true labels),
``eps`` (the L-inf budget, 0 when not an evasion attack), ``model_sha256`` (the SHA-256 of the
saved model the images were crafted on, "" when none) and ``description``. Files are written
atomically and loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .common import NUM_CLASSES, UserError, atomic_path, sha256_file

MAX_DATASET_BYTES = 1_000_000_000
MAX_DATASET_IMAGES = 100_000


class DatasetError(UserError):
    """A dataset file that cannot be scored."""


def save_npz(path: Path, **arrays: Any) -> dict[str, str]:
    """Write ``arrays`` as a compressed .npz atomically; return its path and SHA-256."""
    with atomic_path(path) as tmp:
        with tmp.open("wb") as handle:
            np.savez_compressed(handle, **{k: np.asarray(v) for k, v in arrays.items()})
    return {"path": str(path), "sha256": sha256_file(path)}


def save_images(path: Path, x: np.ndarray, y: np.ndarray, eps: float, model_sha256: str, description: str,
                **extra: Any) -> dict[str, str]:
    """An image dataset file (see the module docstring); ``extra`` adds named settings."""
    return save_npz(path, x=x.astype(np.float32), y=y.astype(np.int64), eps=np.float64(eps),
                    model_sha256=np.str_(model_sha256), description=np.str_(description), **extra)


def load_images(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(x float32 (N, 28, 28, 1) in [0, 1], y int64 (N,) in 0..9, metadata) from an image dataset
    file, or DatasetError naming the first problem."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if path.stat().st_size > MAX_DATASET_BYTES:
        raise DatasetError(f"{path}: larger than {MAX_DATASET_BYTES} bytes")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable .npz without pickled objects ({type(exc).__name__})") from exc
    if not {"x", "y"} <= arrays.keys():
        raise DatasetError(f"{path}: needs arrays 'x' and 'y', has {sorted(arrays)}")
    x, y = arrays.pop("x"), arrays.pop("y")
    x = x[..., np.newaxis] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[1:] != (28, 28, 1) or x.dtype.kind != "f":
        raise DatasetError(f"{path}: 'x' is {x.dtype} {x.shape}, expected float (N, 28, 28[, 1])")
    if not 1 <= len(x) <= MAX_DATASET_IMAGES:
        raise DatasetError(f"{path}: {len(x)} images; expected 1 to {MAX_DATASET_IMAGES}")
    if not np.all(np.isfinite(x)) or x.min() < 0.0 or x.max() > 1.0:
        raise DatasetError(f"{path}: 'x' has values outside [0, 1] or NaN/inf")
    if y.shape != (len(x),) or y.dtype.kind not in "ui" or y.min() < 0 or y.max() >= NUM_CLASSES:
        raise DatasetError(f"{path}: 'y' must hold {len(x)} integer labels in 0..{NUM_CLASSES - 1}")
    meta = {name: (value.item() if value.ndim == 0 else value.tolist()) for name, value in arrays.items()
            if value.dtype.kind in "uifbU" and value.size <= 16}
    return x.astype(np.float32), y.astype(np.int64), meta
