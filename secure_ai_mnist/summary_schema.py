"""The metrics summary's schema: its file name and version, the keys it must hold, its validation
and its atomic write. A summary that fails validation is never written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .common import NUM_CLASSES, atomic_write_bytes
from .detection import DETECTORS

DETECTION_KEYS = {"flagged", "true_positives", "false_positives", "precision", "recall", "f1", "uses_ground_truth"}
REMOVAL_KEYS = {"detector", "method", "removed", "clean_accuracy", "attack_success_rate", "cost_s"}

SCHEMA_VERSION = 4
SUMMARY_FILENAME = "metrics_summary_tasks5_6_7.json"


REQUIRED_SUMMARY_KEYS = {
    "schema_version": int,
    "generated_utc": str,
    "config": dict,
    "data": dict,
    "versions": dict,
    "host": dict,
    "models": dict,
    "backdoor": dict,
    "fgsm": dict,
    "pgd": dict,
    "transfer": dict,
    "accuracy_vs_eps": dict,
    "autoattack": dict,
    "sanity_checks": dict,
    "cache": dict,
    "timings_s": dict,
    "images": dict,
    "results_table": str,
}


REQUIRED_EVALS = {
    "baseline": ("clean", "triggered", "fgsm", "pgd_whitebox"),
    "poisoned": ("clean", "triggered", "pgd_whitebox"),
    "poison_cleaned": ("clean", "triggered"),
    "defense_fgsm": ("clean", "fgsm_transfer_from_baseline", "fgsm_whitebox", "pgd_whitebox"),
}


REQUIRED_METRICS = ("n", "loss", "accuracy", "inference_time_total_s", "inference_time_per_sample_ms",
                    "confusion_matrix", "per_class_accuracy", "confusion_png")


def validate_summary(summary: dict[str, Any]) -> None:
    """Raise ValueError naming the first missing or mistyped key of the metrics JSON."""
    for key, kind in REQUIRED_SUMMARY_KEYS.items():
        if not isinstance(summary.get(key), kind):
            raise ValueError(f"summary[{key!r}] missing or not {kind.__name__}")
    if summary["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema_version {summary['schema_version']} != {SCHEMA_VERSION}")
    for model_name, sets in REQUIRED_EVALS.items():
        model = summary["models"].get(model_name)
        if not isinstance(model, dict) or not {"training", "model_file", "eval"} <= model.keys():
            raise ValueError(f"summary['models'][{model_name!r}] incomplete")
        for set_name in sets:
            metrics = model["eval"].get(set_name)
            if not isinstance(metrics, dict) or not set(REQUIRED_METRICS) <= metrics.keys():
                raise ValueError(f"summary['models'][{model_name!r}]['eval'][{set_name!r}] incomplete")
            matrix = np.asarray(metrics["confusion_matrix"])
            if matrix.shape != (NUM_CLASSES, NUM_CLASSES) or int(matrix.sum()) != metrics["n"]:
                raise ValueError(f"confusion matrix of {model_name}/{set_name} does not match n")
            if not 0.0 <= metrics["accuracy"] <= 1.0:
                raise ValueError(f"accuracy of {model_name}/{set_name} outside [0, 1]")
    for model_name, result in summary["autoattack"].get("per_model", {}).items():
        if not {"robust_accuracy", "ci95", "n", "per_attack", "time_s"} <= result.keys():
            raise ValueError(f"summary['autoattack']['per_model'][{model_name!r}] incomplete")
        if not 0.0 <= result["robust_accuracy"] <= 1.0:
            raise ValueError(f"AutoAttack accuracy of {model_name} outside [0, 1]")
    backdoor = summary["backdoor"]
    for key in ("attack_success_rate", "poison_count", "target_class", "trigger_controls", "detection", "removal",
                "runtime_check", "sweep"):
        if key not in backdoor:
            raise ValueError(f"summary['backdoor'][{key!r}] missing")
    detection = backdoor["detection"]
    for detector in (*DETECTORS, "random_filter"):
        entry = detection.get(detector, {})
        if not DETECTION_KEYS <= entry.keys() or (detector != "random_filter" and "time_s" not in entry):
            raise ValueError(f"summary['backdoor']['detection'][{detector!r}] incomplete")
        if not all(0.0 <= entry[k] <= 1.0 for k in ("precision", "recall", "f1")):
            raise ValueError(f"detection metrics of {detector} outside [0, 1]")
        if entry["uses_ground_truth"] is not False:
            raise ValueError(f"detector {detector} is marked as using the ground truth")
    if detection.get("selected") not in DETECTORS or detection.get("activations", {}).get("layer") != "penultimate":
        raise ValueError("summary['backdoor']['detection']: no selected detector, or not the penultimate layer")
    if not {"flagged", "suspicious_classes"} <= detection.get("unpoisoned_control", {}).keys():
        raise ValueError("summary['backdoor']['detection']['unpoisoned_control'] incomplete")
    for model_name, rates in backdoor["trigger_controls"].items():
        if "trained_trigger" not in rates or len(rates) < 2:
            raise ValueError(f"trigger controls of {model_name} incomplete")
    if not REMOVAL_KEYS <= backdoor["removal"].keys():
        raise ValueError("summary['backdoor']['removal'] incomplete")
    if not {"flag_rate_triggered", "flag_rate_clean", "method", "trigger_recovered"} <= backdoor["runtime_check"].keys():
        raise ValueError("summary['backdoor']['runtime_check'] incomplete")
    sweep = backdoor["sweep"]
    if sweep is not None and not all({"poison_count", "trigger_size", "clean_accuracy", "attack_success_rate",
                                      "detection"} <= row.keys() for row in sweep.get("rows") or [{}]):
        raise ValueError("summary['backdoor']['sweep'] rows incomplete")


def write_summary(summary: dict[str, Any], path: Path) -> None:
    """Validate, then write the metrics JSON atomically."""
    validate_summary(summary)
    atomic_write_bytes(path, (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode())
