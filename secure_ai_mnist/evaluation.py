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

# The seed report's file names: its FGSM defense is "defense", and its FGSM test set is the one
# crafted on the baseline.
SEED_MODEL_NAMES = {"defense_fgsm": "defense"}
SEED_TEST_SET_NAMES = {"fgsm_transfer_from_baseline": "fgsm"}


def confusion_png(images_dir: Path, model: str, test_set: str) -> Path:
    """``<model>_confusion_<test set>.png`` under the seed's names (for example
    defense_confusion_fgsm.png: the FGSM defense on FGSM crafted against the baseline)."""
    return images_dir / (f"{SEED_MODEL_NAMES.get(model, model)}_confusion_"
                         f"{SEED_TEST_SET_NAMES.get(test_set, test_set)}.png")


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
    into["clean"], _ = evaluate(model, x, y, f"{title} - clean test set", confusion_png(images_dir, name, "clean"),
                                cfg)
    into["triggered"], triggered_pred = evaluate(model, x_triggered, y, f"{title} - triggered test set",
                                                 confusion_png(images_dir, name, "triggered"), cfg)
    return triggered_pred


def evaluate_defense(
    model: keras.Model, name: str, x: np.ndarray, x_fgsm_baseline: np.ndarray, y: np.ndarray, images_dir: Path,
    cfg: Config,
) -> dict[str, Any]:
    """A defense on clean images, on FGSM crafted against the baseline, and on white-box FGSM."""
    from .attacks import generate_fgsm

    x_whitebox, _ = generate_fgsm(model, x, y, cfg, f"test set vs {name}")
    sets = {"clean": (x, "clean test set"),
            "fgsm_transfer_from_baseline": (x_fgsm_baseline, "FGSM crafted on baseline (the seed's FGSM test set)"),
            "fgsm_whitebox": (x_whitebox, "FGSM crafted on the model (white-box)")}
    return {key: evaluate(model, images, y, f"{name} - {title}", confusion_png(images_dir, name, key), cfg)[0]
            for key, (images, title) in sets.items()}


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


def eps_curve(
    net: keras.Model, x: np.ndarray, y: np.ndarray, eps_grid: tuple[float, ...], cfg: Config,
    rng: np.random.Generator,
) -> np.ndarray:
    """White-box accuracy of ``net`` at each eps: row 0 FGSM, row 1 PGD (eps 0 = clean accuracy).

    PGD uses cfg.pgd_steps steps of max(cfg.pgd_step_size, 2.5 * eps / steps) from a random start,
    so every eps in the grid can be reached; one start per point.
    """
    from .attacks import linf_attack, make_linf_attack

    attack = make_linf_attack(net)
    clean = accuracy(net, x, y, cfg.attack_batch_size)
    curve = np.full((2, len(eps_grid)), clean)
    for j, eps in enumerate(eps_grid):
        if eps == 0:
            continue
        fooled = linf_attack(attack, x, y, eps, eps, 1, batch_size=cfg.attack_batch_size)[1]
        curve[0, j] = np.mean(~fooled)
        step = max(cfg.pgd_step_size, 2.5 * eps / cfg.pgd_steps)
        fooled = linf_attack(attack, x, y, eps, step, cfg.pgd_steps, restarts=1, rng=rng,
                             batch_size=cfg.attack_batch_size)[1]
        curve[1, j] = np.mean(~fooled)
    return curve


def robustness_tables(
    models: dict[str, keras.Model], pgd: dict[str, tuple[np.ndarray, dict[str, Any]]], curves: dict[str, np.ndarray],
    x_test: np.ndarray, y_test: np.ndarray, subset: np.ndarray, cfg: Config, images_dir: Path,
) -> dict[str, Any]:
    """From each model's white-box PGD set ``pgd[name]`` (images, info) on the test images
    ``subset`` and its eps curve: the PGD evaluations, the FGSM and PGD transfer tables
    (white-box FGSM is crafted here on the same subset) and the accuracy-vs-eps figure.

    Returns {"pgd": ..., "transfer": ..., "accuracy_vs_eps": ..., "pgd_evals": {model: metrics}}.
    """
    from .attacks import generate_fgsm
    from .config import EPS_GRID
    from .plots import plot_eps_curves

    x_sub, y_sub = x_test[subset], y_test[subset]
    pgd_evals, fgsm_sets = {}, {}
    for name, net in models.items():
        pgd_evals[name], _ = evaluate(net, pgd[name][0], y_sub, f"{name} - PGD-{cfg.pgd_steps} white-box (n={len(y_sub)})",
                                      confusion_png(images_dir, name, "pgd_whitebox"), cfg)
        fgsm_sets[name] = generate_fgsm(net, x_sub, y_sub, cfg, f"subset vs {name}")[0]
    transfer = {"pgd": transfer_matrix(models, {n: s for n, (s, _) in pgd.items()}, y_sub, cfg.attack_batch_size),
                "fgsm": transfer_matrix(models, fgsm_sets, y_sub, cfg.attack_batch_size)}
    n_curve = len(subset[: cfg.curve_limit] if cfg.curve_limit else subset)
    table: dict[str, Any] = {"eps": list(EPS_GRID), "n": int(n_curve), "fgsm": {}, "pgd": {}}
    for name, curve in curves.items():
        table["fgsm"][name], table["pgd"][name] = [float(a) for a in curve[0]], [float(a) for a in curve[1]]
        LOG.info("accuracy vs eps, %s: FGSM %s / PGD %s", name, [round(float(a), 3) for a in curve[0]],
                 [round(float(a), 3) for a in curve[1]])
    table["png"] = plot_eps_curves(table, images_dir / "accuracy_vs_eps.png")
    return {
        "pgd": {"n_test_images": int(len(subset)), "subset_sha256": sha256_bytes(subset.tobytes()),
                "per_model": {name: info for name, (_, info) in pgd.items()}},
        "transfer": {"n_test_images": int(len(subset)), "eps": {"fgsm": cfg.fgsm_eps, "pgd": cfg.pgd_eps},
                     "meaning": "accuracy[attack][crafted_on][evaluated_on]; the diagonal is white-box",
                     "accuracy": transfer},
        "accuracy_vs_eps": table,
        "pgd_evals": pgd_evals,
    }
