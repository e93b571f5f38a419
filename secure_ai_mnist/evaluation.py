"""Model evaluation: loss, accuracy, timing, confusion matrix and per-class accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import LOG, NUM_CLASSES, sha256_bytes
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


def evaluate_clean_and_triggered(
    model: keras.Model, name: str, title: str, x: np.ndarray, x_triggered: np.ndarray, y: np.ndarray,
    into: dict[str, Any], images_dir: Path, cfg: Config,
) -> np.ndarray:
    """Evaluate on the clean and the triggered test set, storing both metrics in ``into``
    ("clean", "triggered"); return the predictions on the triggered set (for the ASR)."""
    into["clean"], _ = evaluate(model, x, y, f"{title} - clean test set", images_dir / f"cm_{name}_clean.png", cfg)
    into["triggered"], triggered_pred = evaluate(model, x_triggered, y, f"{title} - triggered test set",
                                                 images_dir / f"cm_{name}_triggered.png", cfg)
    return triggered_pred


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


def robustness_study(
    models: dict[str, keras.Model], x_test: np.ndarray, y_test: np.ndarray, subset: np.ndarray, cfg: Config,
    rng: np.random.Generator, images_dir: Path,
) -> dict[str, Any]:
    """White-box PGD on every model, FGSM/PGD transfer tables and accuracy-vs-eps curves, all on
    the test images ``subset`` (curves on its first cfg.curve_limit).

    Returns {"pgd": ..., "transfer": ..., "accuracy_vs_eps": ..., "pgd_evals": {model: metrics}}.
    """
    from .attacks import generate_fgsm, generate_pgd
    from .config import EPS_GRID
    from .plots import plot_eps_curves

    x_sub, y_sub = x_test[subset], y_test[subset]
    pgd_info, pgd_evals, pgd_sets, fgsm_sets = {}, {}, {}, {}
    for name, net in models.items():
        pgd_sets[name], pgd_info[name] = generate_pgd(net, x_sub, y_sub, cfg, rng, f"vs {name}")
        pgd_evals[name], _ = evaluate(net, pgd_sets[name], y_sub,
                                      f"{name} - PGD-{cfg.pgd_steps} white-box (n={len(y_sub)})",
                                      images_dir / f"cm_{name}_pgd_whitebox.png", cfg)
        fgsm_sets[name] = generate_fgsm(net, x_sub, y_sub, cfg, f"subset vs {name}")[0]
    transfer = {"pgd": transfer_matrix(models, pgd_sets, y_sub, cfg.attack_batch_size),
                "fgsm": transfer_matrix(models, fgsm_sets, y_sub, cfg.attack_batch_size)}
    curve_idx = subset[: cfg.curve_limit] if cfg.curve_limit else subset
    curve_models = {name: net for name, net in models.items() if name != "poisoned"}
    curves = accuracy_vs_eps(curve_models, x_test[curve_idx], y_test[curve_idx], EPS_GRID, cfg, rng)
    curves["png"] = plot_eps_curves(curves, images_dir / "accuracy_vs_eps.png")
    return {
        "pgd": {"n_test_images": int(len(subset)), "subset_sha256": sha256_bytes(subset.tobytes()),
                "per_model": pgd_info},
        "transfer": {"n_test_images": int(len(subset)), "eps": {"fgsm": cfg.fgsm_eps, "pgd": cfg.pgd_eps},
                     "meaning": "accuracy[attack][crafted_on][evaluated_on]; the diagonal is white-box",
                     "accuracy": transfer},
        "accuracy_vs_eps": curves,
        "pgd_evals": pgd_evals,
    }
