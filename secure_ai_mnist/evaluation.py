"""Model evaluation: loss, accuracy, timing, confusion matrix and per-class accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import LOG, NUM_CLASSES
from .config import Config
from .model import predict_probabilities
from .plots import plot_confusion

if TYPE_CHECKING:
    import keras

def cross_entropy(probabilities: np.ndarray, y: np.ndarray, eps: float = 1e-7) -> float:
    """Mean categorical cross-entropy, clipped like Keras' (eps = 1e-7)."""
    p_true = np.clip(probabilities[np.arange(len(y)), y], eps, 1 - eps)
    return float(-np.mean(np.log(p_true)))


def evaluate(
    model: keras.Model, x: np.ndarray, y: np.ndarray, title: str, png: Path, cfg: Config
) -> tuple[dict[str, Any], np.ndarray]:
    """Loss, accuracy, timing, confusion matrix (+ heatmap PNG) and per-class accuracy.

    Returns the metrics dict and the predicted labels (N,).
    """
    from sklearn.metrics import confusion_matrix

    probabilities, elapsed = predict_probabilities(model, x, cfg.attack_batch_size)
    predictions = probabilities.argmax(axis=1)
    matrix = confusion_matrix(y, predictions, labels=list(range(NUM_CLASSES)))
    support = matrix.sum(axis=1)
    per_class = np.divide(np.diag(matrix), support, out=np.full(NUM_CLASSES, np.nan), where=support > 0)
    plot_confusion(matrix, title, png)
    metrics = {
        "n": int(len(y)),
        "loss": cross_entropy(probabilities, y),
        "accuracy": float(np.mean(predictions == y)),
        "inference_time_total_s": round(elapsed, 4),
        "inference_time_per_sample_ms": round(1000 * elapsed / max(len(y), 1), 5),
        "confusion_matrix": matrix.tolist(),
        "per_class_accuracy": [None if np.isnan(v) else float(v) for v in per_class],
        "confusion_png": str(png),
    }
    LOG.info("%s: accuracy %.4f, loss %.4f", title, metrics["accuracy"], metrics["loss"])
    return metrics, predictions
