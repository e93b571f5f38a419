"""Corner-trigger data poisoning (BadNets-style) and its attack success rate."""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import ConfigError, sha256_bytes
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


def backdoor_summary(
    cfg: Config, y_train: np.ndarray, poison_idx: np.ndarray, y_test: np.ndarray, clean_model_pred: np.ndarray,
    poisoned_model_pred: np.ndarray, examples_png: str,
) -> dict[str, Any]:
    """The backdoor section of the metrics JSON: attack settings and the ASR of both models
    (predictions are on the triggered test set)."""
    labels, counts = np.unique(y_train[poison_idx], return_counts=True)
    return {
        "poison_count": int(cfg.poison_count),
        "poison_fraction": float(cfg.poison_count / len(y_train)),
        "target_class": cfg.target_class,
        "trigger": {"shape": "square", "size": cfg.trigger_size, "margin": cfg.trigger_margin,
                    "corner": "bottom-right", "value": 1.0},
        "poison_indices_sha256": sha256_bytes(poison_idx.astype(np.int64).tobytes()),
        "poison_source_label_counts": {str(k): int(v) for k, v in zip(labels, counts)},
        "attack_success_rate": {
            "baseline": attack_success_rate(clean_model_pred, y_test, cfg.target_class),
            "poisoned": attack_success_rate(poisoned_model_pred, y_test, cfg.target_class),
        },
        "asr_definition": "share of triggered test images whose true class is not the target that are predicted "
                          "as the target",
        "examples_png": examples_png,
    }
