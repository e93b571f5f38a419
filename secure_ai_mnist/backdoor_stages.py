"""The backdoor study's stages: plant the trigger, train and evaluate the poisoned model with its
trigger controls, then the blind defense (detection on the defender's view, its unpoisoned
control, scoring against the answer key, removal by retraining, the runtime trigger check).

Each stage is ``(cfg, inputs) -> result`` as in the entry script's table of contents. The
detectors and the removal read ``train_view`` (images, labels, model), never ``poison``; only
``score_detection`` and the figures read the poison indices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from .backdoor import poison_dataset, select_cross_indices, select_poison_indices, trigger_controls, trigger_spec
from .common import LOG, NUM_CLASSES
from .config import Config
from .datasets import save_npz
from .detection import (
    DETECTORS,
    OURS,
    detection_metrics,
    random_filter,
    run_detectors,
    runtime_trigger_check,
    selected_flags,
)
from .evaluation import evaluate_clean_and_triggered
from .model import layer_output, predicted_labels, stage_seed, train_cnn
from .plots import plot_detection_view, plot_poison_examples, plot_trigger_families
from .stages import DETECT, DETECT_MODULES, TRAIN, Stage, StageInputs
from .triggers import FAMILIES, stamp


def plant_backdoor(cfg: Config, inputs: StageInputs) -> dict[str, np.ndarray]:
    """Poison indices (and WaNet's cross indices), the poisoned training set and the triggered test set."""
    d, spec, rng = inputs["data"], trigger_spec(cfg), inputs["data"]["rngs"]["poison"]
    poison_idx = select_poison_indices(d["y_train"], cfg.poison_count, cfg.target_class, rng, spec.clean_label)
    cross_idx = select_cross_indices(len(d["y_train"]), poison_idx, spec, cfg.wanet_cross_ratio, rng)
    x_poisoned, y_poisoned = poison_dataset(d["x_train"], d["y_train"], poison_idx, cfg, cross_idx, rng)
    return {"idx": poison_idx, "cross_idx": cross_idx, "x": x_poisoned, "y": y_poisoned,
            "x_test_triggered": stamp(d["x_test"], spec)}


def train_poisoned(cfg: Config, inputs: StageInputs) -> tuple[Any, dict[str, Any]]:
    return train_cnn(inputs["poison"]["x"], inputs["poison"]["y"], cfg, "poisoned")


def clean_and_triggered(name: str, title: str) -> Callable[[Config, StageInputs], dict[str, Any]]:
    """Stage: model ``name`` on the clean and the triggered test set; keeps the triggered predictions."""
    def run(cfg: Config, inputs: StageInputs) -> dict[str, Any]:
        d, evals = inputs["data"], {}
        pred = evaluate_clean_and_triggered(inputs[name][0], name, title, d["x_test"],
                                            inputs["poison"]["x_test_triggered"], d["y_test"], evals,
                                            inputs.images, cfg)
        return {"evals": evals, "triggered_pred": pred}
    return run


def backdoor_controls(cfg: Config, inputs: StageInputs) -> dict[str, Any]:
    """ASR with the trained and the control triggers on both models, the poison examples figure and
    the figure of every trigger family on one training image."""
    d, p = inputs["data"], inputs["poison"]
    families = {f: dataclasses.replace(trigger_spec(cfg), family=f) for f in FAMILIES}
    return {"controls": {name: trigger_controls(predicted_labels(inputs[name][0], cfg.attack_batch_size),
                                                d["x_test"], d["y_test"], cfg) for name in ("baseline", "poisoned")},
            "png": plot_poison_examples(d["x_train"], p["x"], d["y_train"], p["y"], p["idx"],
                                        inputs.images / "method1_poison_examples.png"),
            "families_png": plot_trigger_families(d["x_train"][0], {f: stamp(d["x_train"][:1], s)[0]
                                                                    for f, s in families.items()},
                                                  inputs.images / "trigger_families.png")}


def defender_view(cfg: Config, inputs: StageInputs) -> dict[str, np.ndarray]:
    """The poisoned training set as a defender holds it: images and labels, no answer key."""
    return {"x": inputs["poison"]["x"], "y": inputs["poison"]["y"]}


def detect_poisons(cfg: Config, inputs: StageInputs) -> tuple[np.ndarray, dict[str, Any]]:
    """Every detector on the poisoned training set and model; reads no poison index, count or trigger."""
    return run_detectors(inputs["poisoned"][0], inputs["train_view"]["x"], inputs["train_view"]["y"], cfg)


def detect_on_clean(cfg: Config, inputs: StageInputs) -> tuple[np.ndarray, dict[str, Any]]:
    """The unpoisoned control: our detector on the clean training set and the baseline trained on it."""
    d = inputs["data"]
    return run_detectors(inputs["baseline"][0], d["x_train"], d["y_train"], cfg, references=False)


def score_detection(cfg: Config, inputs: StageInputs) -> dict[str, Any]:
    """Scoring code (it reads the answer key): each detector's flags against the poison indices,
    a random filter flagging as many as ours, and the unpoisoned control."""
    p, (rows, info), control = inputs["poison"], inputs["poison_detection"], inputs["detection_control"]
    is_poison = np.zeros(len(p["y"]), bool)
    is_poison[p["idx"]] = True
    chance = random_filter(len(is_poison), int(selected_flags(cfg, inputs["poison_detection"]).sum()),
                           np.random.default_rng(stage_seed(cfg.seed, "random filter")))
    scored = {name: {**{k: v for k, v in info.get(name, {}).items() if k != "trigger_check"},
                     **detection_metrics(row.astype(bool), is_poison), "uses_ground_truth": False,
                     "flagged_per_class": np.bincount(p["y"][row.astype(bool)], minlength=NUM_CLASSES).tolist()}
              for name, row in zip(DETECTORS, rows)}
    for name, entry in scored.items():
        LOG.info("poison detection, %s: flagged %d (%d poisons, %d clean); precision %.3f, recall %.3f, F1 %.3f",
                 name, entry["flagged"], entry["true_positives"], entry["false_positives"], entry["precision"],
                 entry["recall"], entry["f1"])
    return {**scored, "activations": info["activations"], "selected": cfg.detector,
            "random_filter": {**detection_metrics(chance, is_poison), "uses_ground_truth": False,
                              "method": f"uniform without replacement, as many flags as {cfg.detector}"},
            "unpoisoned_control": control_summary(cfg, control)}


def control_summary(cfg: Config, control: tuple[np.ndarray, dict[str, Any]]) -> dict[str, Any]:
    """The unpoisoned control: what the configured detector and each of ours flagged on clean data."""
    rows, info = control
    reversal = info["trigger_reversal"]
    return {"detector": cfg.detector, "flagged": int(rows[DETECTORS.index(cfg.detector)].sum()),
            "flagged_share": float(rows[DETECTORS.index(cfg.detector)].mean()),
            "flagged_by": {name: int(rows[DETECTORS.index(name)].sum()) for name in DETECTORS if name in info},
            "suspicious_classes": sorted({c for name in OURS for c in info[name]["suspicious_classes"]}),
            "candidate_classes": reversal["candidate_classes"], "anomaly_index": reversal["anomaly_index"],
            "time_s": round(sum(info[name]["time_s"] for name in OURS), 3)}


def retrain_without_flagged(cfg: Config, inputs: StageInputs) -> tuple[Any, dict[str, Any]]:
    """A fresh model on the training set without the configured detector's flags (blind)."""
    keep = ~selected_flags(cfg, inputs["poison_detection"])
    model, record = train_cnn(inputs["train_view"]["x"][keep], inputs["train_view"]["y"][keep], cfg, "poison_cleaned")
    return model, {**record, "removed": int((~keep).sum()), "detector": cfg.detector, "method": "retrain"}


def runtime_check(cfg: Config, inputs: StageInputs) -> dict[str, Any]:
    """The configured detector's recovered trigger as an input filter, measured on the clean and the
    triggered test set; written to models/trigger_check.npz for ``predict --check-trigger``. A
    detector that recovers no trigger gets no check, and the record says so."""
    d, check = inputs["data"], runtime_trigger_check(inputs["poison_detection"][1], cfg.detector)
    if check is None or not len(check.classes):
        why = "recovers no trigger" if check is None else "recovered no trigger on this training set"
        LOG.info("runtime trigger check: %s %s, so there is no input filter", cfg.detector, why)
        return {"trigger_recovered": False, "flag_rate_triggered": None, "flag_rate_clean": None, "file": None,
                "method": f"none: {cfg.detector} {why}", "suspicious_classes": [],
                "n_test_images": int(len(d["y_test"]))}
    file = save_npz(inputs.dirs["models"] / "trigger_check.npz", **check.arrays())
    rates = {"flag_rate_triggered": float(check.flags(inputs["poison"]["x_test_triggered"]).mean()),
             "flag_rate_clean": float(check.flags(d["x_test"]).mean())}
    LOG.info("runtime trigger check: %.2f%% of triggered and %.2f%% of clean test images flagged",
             100 * rates["flag_rate_triggered"], 100 * rates["flag_rate_clean"])
    return {**rates, "trigger_recovered": True,
            "method": f"score against {cfg.detector}'s recovered masks and patterns above its cut",
            "suspicious_classes": check.classes.tolist(), "n_test_images": int(len(d["y_test"])), "file": file}


def detection_view(cfg: Config, inputs: StageInputs) -> str:
    """PCA of the target class's penultimate activations, poisons vs clean, the selected detector's flags ringed."""
    p, chosen, flags = inputs["poison"], cfg.detector, selected_flags(cfg, inputs["poison_detection"])
    in_target = p["y"] == cfg.target_class
    is_poison = np.isin(np.arange(len(p["y"])), p["idx"])
    return plot_detection_view(layer_output(inputs["poisoned"][0], "penultimate", p["x"][in_target]),
                               is_poison[in_target], flags[in_target],
                               f"Class {cfg.target_class}, penultimate activations (PCA): {chosen}",
                               inputs.images / "poison_detection_view.png")


def backdoor_defense_stages() -> list[Stage]:
    """Blind poison detection (and its unpoisoned control), scoring, removal, the runtime check.
    The detectors and the removal read the defender's view (images, labels, model), never ``poison``."""
    detect_modules = DETECT_MODULES
    return [
        Stage("train_view", defender_view, reads=("poison",)),
        Stage("poison_detection", detect_poisons, reads=("train_view", "poisoned"), config=DETECT,
              modules=detect_modules, cache="arrays", label="poison detection flags", title="blind poison detection"),
        Stage("detection_control", detect_on_clean, reads=("data", "baseline"), config=DETECT, modules=detect_modules,
              cache="arrays", label="unpoisoned control flags", title="poison detection on the clean baseline"),
        Stage("detection_scores", score_detection, reads=("poison", "poison_detection", "detection_control"),
              config=("detector",)),
        Stage("poison_cleaned", retrain_without_flagged, reads=("train_view", "poison_detection"),
              config=(*TRAIN, "detector"), modules=("model",), cache="model",
              label="model retrained without flagged samples"),
        Stage("poison_cleaned_eval", clean_and_triggered("poison_cleaned", "Retrained without flagged samples"),
              reads=("data", "poison", "poison_cleaned")),
        Stage("runtime_check", runtime_check, reads=("data", "poison", "poison_detection"), config=("detector",)),
        Stage("detection_view", detection_view, reads=("poison", "poisoned", "poison_detection")),
    ]
