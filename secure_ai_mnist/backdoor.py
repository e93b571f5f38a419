"""Corner-trigger data poisoning (BadNets-style) and its attack success rate."""

from __future__ import annotations

import numpy as np

from .common import ConfigError
from .config import Config


def make_corner_trigger(x: np.ndarray, size: int = 3, margin: int = 1) -> np.ndarray:
    """Copy of ``x`` (N, H, W[, C]) with a white ``size``x``size`` square ``margin`` pixels
    from the bottom-right corner. White is 1.0 for float images and 255 for uint8."""
    triggered = np.array(x, copy=True)
    white = 255 if triggered.dtype == np.uint8 else 1.0
    height, width = triggered.shape[1], triggered.shape[2]
    rows = slice(height - margin - size, height - margin)
    cols = slice(width - margin - size, width - margin)
    triggered[:, rows, cols, ...] = white
    return triggered


def select_poison_indices(y: np.ndarray, count: int, target: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct indices of samples whose label is not ``target`` (sorted)."""
    candidates = np.flatnonzero(y != target)
    if count > len(candidates):
        raise ConfigError(f"--poison-count {count} exceeds the {len(candidates)} non-target training images")
    return np.sort(rng.choice(candidates, size=count, replace=False))


def poison_dataset(x: np.ndarray, y: np.ndarray, indices: np.ndarray, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Copies of (x, y) where ``indices`` carry the trigger and the target label; nothing else changes."""
    x_poisoned = np.array(x, copy=True)
    y_poisoned = np.array(y, copy=True)
    x_poisoned[indices] = make_corner_trigger(x[indices], cfg.trigger_size, cfg.trigger_margin)
    y_poisoned[indices] = cfg.target_class
    return x_poisoned, y_poisoned


def attack_success_rate(predictions: np.ndarray, y_true: np.ndarray, target: int) -> float:
    """Share of samples whose true class is not ``target`` that are predicted as ``target``."""
    mask = y_true != target
    if not mask.any():
        return float("nan")
    return float(np.mean(predictions[mask] == target))
