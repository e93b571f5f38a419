"""Corner-trigger data poisoning (BadNets-style) and its attack success rate."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from .common import LOG, ConfigError, sha256_bytes
from .config import Config
from .detection import detection_metrics


def make_corner_trigger(x: np.ndarray, size: int = 3, margin: int = 1) -> np.ndarray:
    """Copy of ``x`` (N, H, W[, C]) with a white ``size``x``size`` square ``margin`` pixels
    from the bottom-right corner. White is 1.0 for float images and 255 for uint8."""
    return make_trigger(x, "square", size, margin)


def make_trigger(x: np.ndarray, shape: str, size: int, margin: int, corner: str = "bottom-right") -> np.ndarray:
    """Copy of ``x`` with a white trigger ``margin`` pixels from ``corner`` (bottom-right or
    top-left): ``square`` fills size x size pixels, ``checker`` only those with an even row +
    column sum (the same place, another shape). Only the trigger's pixels change."""
    if shape not in ("square", "checker") or corner not in ("bottom-right", "top-left"):
        raise ValueError(f"unknown trigger {shape!r} at {corner!r}")
    triggered = np.array(x, copy=True)
    white = 255 if triggered.dtype == np.uint8 else 1.0
    height, width = triggered.shape[1], triggered.shape[2]
    top = height - margin - size if corner == "bottom-right" else margin
    left = width - margin - size if corner == "bottom-right" else margin
    rows, cols = np.indices((size, size))
    mask = np.ones((size, size), bool) if shape == "square" else (rows + cols) % 2 == 0
    triggered[:, top + rows[mask], left + cols[mask], ...] = white
    return triggered


TRIGGER_CONTROLS = {  # name: (shape, corner) at the configured size and margin
    "trained_trigger": ("square", "bottom-right"),
    "other_place_top_left": ("square", "top-left"),
    "other_shape_checker": ("checker", "bottom-right"),
}


def trigger_controls(
    predict: Any, x_test: np.ndarray, y_test: np.ndarray, cfg: Config
) -> dict[str, float]:
    """ASR of ``predict`` (images -> labels) with the trained trigger and with each control
    trigger of TRIGGER_CONTROLS drawn on the test set (does the backdoor generalise?)."""
    return {name: attack_success_rate(predict(make_trigger(x_test, shape, cfg.trigger_size, cfg.trigger_margin,
                                                           corner)), y_test, cfg.target_class)
            for name, (shape, corner) in TRIGGER_CONTROLS.items()}


def parse_int_list(text: str) -> tuple[int, ...]:
    """'0,10,25' -> (0, 10, 25); empty text -> ()."""
    return tuple(int(part) for part in text.split(",") if part.strip())


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


def sweep_sets(
    x_train: np.ndarray, y_train: np.ndarray, cfg: Config, rng: np.random.Generator,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """(poison count, trigger size, poison indices, poisoned x, poisoned y) for each point of
    cfg.poison_sweep x cfg.sweep_trigger_sizes, size-major. One poison set per count, drawn
    without replacement from ``rng`` and shared by every trigger size, so the sizes compare
    like for like; the same ``rng`` seed gives the same sets."""
    counts, sizes = parse_int_list(cfg.poison_sweep), parse_int_list(cfg.sweep_trigger_sizes)
    picks = {count: select_poison_indices(y_train, count, cfg.target_class, rng) for count in counts}
    for size in sizes:
        sized = dataclasses.replace(cfg, trigger_size=size)
        for count in counts:
            yield (count, size, picks[count], *poison_dataset(x_train, y_train, picks[count], sized))


def sweep_label(count: int, size: int) -> str:
    return f"sweep_n{count}_s{size}"


def poison_sweep(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, cfg: Config,
    rng: np.random.Generator, train: Any,
) -> list[dict[str, Any]]:
    """Clean accuracy and ASR for each point of ``sweep_sets``. ``train(x, y, label) -> predict``
    trains a fresh model for cfg.sweep_epochs epochs and returns its label function."""
    rows = []
    for count, size, _, x_p, y_p in sweep_sets(x_train, y_train, cfg, rng):
        predict = train(x_p, y_p, sweep_label(count, size))
        clean = float(np.mean(predict(x_test) == y_test))
        asr = attack_success_rate(predict(make_corner_trigger(x_test, size, cfg.trigger_margin)), y_test,
                                  cfg.target_class)
        rows.append({"poison_count": count, "trigger_size": size, "poison_fraction": count / len(y_train),
                     "clean_accuracy": clean, "attack_success_rate": asr})
        LOG.info("poison sweep: %d poisons, trigger %dpx: clean %.4f, ASR %.4f", count, size, clean, asr)
    return rows


def sweep_detection(
    x_train: np.ndarray, y_train: np.ndarray, cfg: Config, rng: np.random.Generator, detect: Any,
) -> list[dict[str, Any]]:
    """Scoring code: ``detect(x, y, label) -> flags`` (blind: it gets one point's training set
    and label only) at each point of ``sweep_sets``, scored against that point's poisons."""
    rows = []
    for count, size, picks, x_p, y_p in sweep_sets(x_train, y_train, cfg, rng):
        scored = detection_metrics(detect(x_p, y_p, sweep_label(count, size)), np.isin(np.arange(len(y_p)), picks))
        rows.append(scored)
        LOG.info("poison sweep: %d poisons, trigger %dpx: blind detector flagged %d, F1 %.3f", count, size,
                 scored["flagged"], scored["f1"])
    return rows


def removal_summary(
    detection: dict[str, Any], training: dict[str, Any], evals: dict[str, Any], asr: dict[str, float], png: str
) -> dict[str, Any]:
    """The JSON record of removing the configured detector's flags and retraining (scored here,
    after the fact), with the issue's goals (ASR <= 1%, clean accuracy within 0.3 points of the
    baseline, cost <= one training) as measured booleans."""
    base = evals["baseline"]["clean"]["accuracy"]
    after = evals["poison_cleaned"]["clean"]["accuracy"]
    scored = detection[training["detector"]]
    return {
        "detector": training["detector"], "chosen_by": "configuration (--detector), not by a score against the truth",
        "method": training["method"], "removed": training["removed"], "poisons_removed": scored["true_positives"],
        "poisons_left": scored["false_negatives"], "clean_samples_removed": scored["false_positives"],
        "clean_accuracy": after, "attack_success_rate": asr["poison_cleaned"],
        "attack_success_rate_before_removal": asr["poisoned"], "baseline_clean_accuracy": base,
        "clean_accuracy_change_vs_baseline_points": 100 * (after - base), "cost_s": training["train_time_s"],
        "goal_asr_at_most_1pct": asr["poison_cleaned"] <= 0.01,
        "goal_clean_within_0_3_points_of_baseline": abs(100 * (after - base)) <= 0.3,
        "png": png,
    }
