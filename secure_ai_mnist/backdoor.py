"""Corner-trigger data poisoning (BadNets-style) and its attack success rate."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from .common import LOG, ConfigError, sha256_bytes
from .config import Config
from .detection import detection_metrics
from .model import stage_seed
from .triggers import TriggerSpec, cross_images, stamp


def trigger_spec(cfg: Config) -> TriggerSpec:
    """The configured trigger; its random parts (blend image, warping field, random patch) are
    drawn from the run's seed."""
    position = tuple(int(v) for v in cfg.trigger_position.split(",")) if cfg.trigger_position.strip() else None
    return TriggerSpec(family=cfg.backdoor, size=cfg.trigger_size, margin=cfg.trigger_margin,
                       corner=cfg.trigger_corner, position=position, pattern=cfg.trigger_pattern,
                       alpha=cfg.blend_alpha, amplitude=cfg.sig_amplitude, frequency=cfg.sig_frequency,
                       clean_label=cfg.sig_clean_label, grid=cfg.wanet_grid, strength=cfg.wanet_strength,
                       noise_mode=cfg.wanet_noise, seed=stage_seed(cfg.seed, "trigger"))


def make_corner_trigger(x: np.ndarray, size: int = 3, margin: int = 1) -> np.ndarray:
    """Copy of ``x`` (N, H, W[, C]) with a white ``size``x``size`` square ``margin`` pixels
    from the bottom-right corner. White is 1.0 for float images and 255 for uint8."""
    return stamp(x, TriggerSpec(size=size, margin=margin))


OPPOSITE = {"bottom-right": "top-left", "top-left": "bottom-right", "bottom-left": "top-right",
            "top-right": "bottom-left"}


def control_specs(spec: TriggerSpec) -> dict[str, TriggerSpec]:
    """The trained trigger and controls that differ from it in one respect each: for badnets the
    place (the opposite corner) and the shape; for sig the frequency; for blended and wanet the
    random draw (another noise image, another field). A backdoor that also fires on a control
    has learned something broader than the trigger."""
    specs = {"trained_trigger": spec}
    if spec.family == "badnets":
        corner = OPPOSITE[spec.corner] if spec.position is None else "top-left"
        other_shape = "checkerboard" if spec.pattern == "solid" else "solid"
        specs[f"other_place_{corner.replace('-', '_')}"] = dataclasses.replace(spec, corner=corner, position=None)
        specs["other_shape_checker" if other_shape == "checkerboard" else "other_shape_solid"] = \
            dataclasses.replace(spec, pattern=other_shape)
    elif spec.family == "sig":
        specs["other_frequency"] = dataclasses.replace(spec, frequency=spec.frequency / 2)
    else:
        specs["other_seed"] = dataclasses.replace(spec, seed=spec.seed + 1)
    return specs


def trigger_controls(
    predict: Any, x_test: np.ndarray, y_test: np.ndarray, cfg: Config
) -> dict[str, float]:
    """ASR of ``predict`` (images -> labels) with the trained trigger and with each control of
    ``control_specs`` drawn on the test set (does the backdoor generalise?)."""
    return {name: attack_success_rate(predict(stamp(x_test, spec)), y_test, cfg.target_class)
            for name, spec in control_specs(trigger_spec(cfg)).items()}


def parse_int_list(text: str) -> tuple[int, ...]:
    """'0,10,25' -> (0, 10, 25); empty text -> ()."""
    return tuple(int(part) for part in text.split(",") if part.strip())


def select_poison_indices(y: np.ndarray, count: int, target: int, rng: np.random.Generator,
                          clean_label: bool = False) -> np.ndarray:
    """``count`` distinct indices (sorted) of samples whose label is not ``target``, or, for a
    clean-label attack, whose label is ``target``."""
    candidates = np.flatnonzero((y == target) if clean_label else (y != target))
    if count > len(candidates):
        kind = "target-class" if clean_label else "non-target"
        raise ConfigError(f"--poison-count {count} exceeds the {len(candidates)} {kind} training images")
    return np.sort(rng.choice(candidates, size=count, replace=False))


def select_cross_indices(n: int, poison_idx: np.ndarray, spec: TriggerSpec, ratio: float,
                         rng: np.random.Generator) -> np.ndarray:
    """WaNet's noise mode: round(ratio x poisons) distinct indices outside the poisons (sorted);
    none for any other family or without noise mode."""
    if spec.family != "wanet" or not spec.noise_mode:
        return np.array([], np.int64)
    free = np.setdiff1d(np.arange(n), poison_idx)
    return np.sort(rng.choice(free, size=min(len(free), round(ratio * len(poison_idx))), replace=False))


def poison_dataset(x: np.ndarray, y: np.ndarray, indices: np.ndarray, cfg: Config,
                   cross: np.ndarray | None = None, rng: np.random.Generator | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Copies of (x, y) poisoned with the configured trigger and target (``apply_poison``)."""
    return apply_poison(x, y, indices, trigger_spec(cfg), cfg.target_class, cross, rng)


def apply_poison(x: np.ndarray, y: np.ndarray, indices: np.ndarray, spec: TriggerSpec, target: int,
                 cross: np.ndarray | None = None, rng: np.random.Generator | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Copies of (x, y) where ``indices`` carry the trigger and the label ``target`` (a
    clean-label attack keeps the label); ``cross`` images (WaNet's noise mode) carry a noisy
    field and keep their labels; nothing else changes."""
    x_poisoned = np.array(x, copy=True)
    y_poisoned = np.array(y, copy=True)
    x_poisoned[indices] = stamp(x[indices], spec)
    if not spec.clean_label:
        y_poisoned[indices] = target
    if cross is not None and len(cross):
        x_poisoned[cross] = cross_images(x[cross], spec, rng if rng is not None else np.random.default_rng(spec.seed))
    return x_poisoned, y_poisoned


def attack_success_rate(predictions: np.ndarray, y_true: np.ndarray, target: int) -> float:
    """Share of samples whose true class is not ``target`` that are predicted as ``target``."""
    mask = y_true != target
    if not mask.any():
        return float("nan")
    return float(np.mean(predictions[mask] == target))


def trigger_info(spec: TriggerSpec) -> dict[str, Any]:
    """The JSON record of a trigger: its settings, and for badnets the seed run's keys."""
    info = spec.describe()
    if spec.family == "badnets":
        info["shape"] = {"solid": "square", "checkerboard": "checker", "random": "random"}[spec.pattern]
    return info


def describe_trigger(spec: TriggerSpec) -> str:
    """One phrase for the report: what the trigger looks like."""
    if spec.family == "badnets":
        place = (f"at row {spec.position[0]}, column {spec.position[1]}" if spec.position
                 else f"{spec.margin} px from the {spec.corner} corner")
        return f"a white {spec.size}x{spec.size} {spec.pattern} patch {place}"
    if spec.family == "blended":
        return f"a fixed uniform-noise image blended in at alpha {spec.alpha}"
    if spec.family == "sig":
        kind = "clean-label: target-class images, labels kept" if spec.clean_label else "dirty-label"
        return f"an additive sinusoid (amplitude {spec.amplitude}, {spec.frequency:g} periods; {kind})"
    mode = ", with noise mode" if spec.noise_mode else ""
    return f"a smooth warping field (grid {spec.grid}, strength {spec.strength}{mode})"


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
        "family": cfg.backdoor,
        "trigger": trigger_info(trigger_spec(cfg)),
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


def sweep_picks(y_train: np.ndarray, cfg: Config, rng: np.random.Generator) -> list[tuple[int, int, np.ndarray]]:
    """(poison count, trigger size, poison indices) for each point of cfg.poison_sweep x
    cfg.sweep_trigger_sizes, size-major. One poison set per count, drawn without replacement from
    ``rng`` and shared by every trigger size, so the sizes compare like for like; the same
    ``rng`` seed gives the same sets."""
    counts, sizes = parse_int_list(cfg.poison_sweep), parse_int_list(cfg.sweep_trigger_sizes)
    picks = {count: select_poison_indices(y_train, count, cfg.target_class, rng) for count in counts}
    return [(count, size, picks[count]) for size in sizes for count in counts]


def sweep_sets(
    x_train: np.ndarray, y_train: np.ndarray, cfg: Config, rng: np.random.Generator,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """(poison count, trigger size, poison indices, poisoned x, poisoned y) for each point of
    ``sweep_picks``."""
    for count, size, picks in sweep_picks(y_train, cfg, rng):
        yield (count, size, picks, *poison_dataset(x_train, y_train, picks, dataclasses.replace(cfg, trigger_size=size)))


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
        asr = attack_success_rate(predict(stamp(x_test, trigger_spec(dataclasses.replace(cfg, trigger_size=size)))),
                                  y_test, cfg.target_class)
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
