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


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """Share of (x, y) the model classifies correctly."""
    return float(np.mean(predict_probabilities(model, x, batch_size)[0].argmax(axis=1) == y)) if len(y) else float("nan")


def transfer_matrix(
    models: dict[str, keras.Model], adversarial: dict[str, np.ndarray], y: np.ndarray, batch_size: int
) -> dict[str, dict[str, float]]:
    """``result[source][target]``: accuracy of ``target`` on the images crafted against ``source``.

    The diagonal is the white-box accuracy; off-diagonal entries are transfer attacks.
    """
    return {source: {target: accuracy(net, x_adv, y, batch_size) for target, net in models.items()}
            for source, x_adv in adversarial.items()}


def accuracy_vs_eps(
    models: dict[str, keras.Model], x: np.ndarray, y: np.ndarray, eps_grid: tuple[float, ...], cfg: Config,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """White-box FGSM and PGD accuracy of each model at each eps (eps 0 = clean accuracy).

    PGD uses cfg.pgd_steps steps of max(cfg.pgd_step_size, 2.5 * eps / steps) from a random start,
    so every eps in the grid can be reached; one start per point.
    """
    from .attacks import linf_attack, make_linf_attack

    curves: dict[str, Any] = {"eps": list(eps_grid), "n": int(len(y)), "fgsm": {}, "pgd": {}}
    for name, net in models.items():
        attack = make_linf_attack(net)
        clean = accuracy(net, x, y, cfg.attack_batch_size)
        fgsm_acc, pgd_acc = [], []
        for eps in eps_grid:
            if eps == 0:
                fgsm_acc.append(clean)
                pgd_acc.append(clean)
                continue
            fooled = linf_attack(attack, x, y, eps, eps, 1, batch_size=cfg.attack_batch_size)[1]
            fgsm_acc.append(float(np.mean(~fooled)))
            step = max(cfg.pgd_step_size, 2.5 * eps / cfg.pgd_steps)
            fooled = linf_attack(attack, x, y, eps, step, cfg.pgd_steps, restarts=1, rng=rng,
                                 batch_size=cfg.attack_batch_size)[1]
            pgd_acc.append(float(np.mean(~fooled)))
        curves["fgsm"][name], curves["pgd"][name] = fgsm_acc, pgd_acc
        LOG.info("accuracy vs eps, %s: FGSM %s / PGD %s", name, [round(a, 3) for a in fgsm_acc],
                 [round(a, 3) for a in pgd_acc])
    return curves
