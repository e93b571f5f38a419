"""The metrics summary: its schema, validation, headline table and atomic write."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from .common import NUM_CLASSES, atomic_write_bytes
from .config import Config

SCHEMA_VERSION = 1
DETECTORS = ("activation_clustering", "spectral_signature")
TRIGGER_CONTROL_NAMES = ("trained_trigger", "other_place_top_left", "other_shape_checker")
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
    backdoor = summary["backdoor"]
    for key in ("attack_success_rate", "poison_count", "target_class", "trigger_controls", "detection", "removal",
                "sweep"):
        if key not in backdoor:
            raise ValueError(f"summary['backdoor'][{key!r}] missing")
    for detector in DETECTORS:
        entry = backdoor["detection"].get(detector, {})
        if not {"precision", "recall", "f1", "flagged", "true_positives", "false_positives"} <= entry.keys():
            raise ValueError(f"summary['backdoor']['detection'][{detector!r}] incomplete")
        if not all(0.0 <= entry[k] <= 1.0 for k in ("precision", "recall", "f1")):
            raise ValueError(f"detection metrics of {detector} outside [0, 1]")
    if backdoor["detection"].get("activations", {}).get("layer") != "penultimate":
        raise ValueError("poison detection did not analyse the penultimate layer")
    for model_name, rates in backdoor["trigger_controls"].items():
        if set(rates) != set(TRIGGER_CONTROL_NAMES):
            raise ValueError(f"trigger controls of {model_name} incomplete")
    if not {"detector", "clean_accuracy", "attack_success_rate", "removed"} <= backdoor["removal"].keys():
        raise ValueError("summary['backdoor']['removal'] incomplete")
    sweep = backdoor["sweep"]
    if sweep is not None and not all({"poison_count", "trigger_size", "clean_accuracy", "attack_success_rate"}
                                     <= row.keys() for row in sweep.get("rows") or [{}]):
        raise ValueError("summary['backdoor']['sweep'] rows incomplete")


def library_versions() -> dict[str, str]:
    from importlib import metadata

    names = ("tensorflow", "tensorflow-cpu", "keras", "adversarial-robustness-toolbox", "numpy",
             "scikit-learn", "matplotlib", "seaborn")
    versions = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def host_summary() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count()}


def results_table(models: dict[str, Any], backdoor: dict[str, Any]) -> str:
    """Markdown table of the headline numbers, built only from measured values."""
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    def acc(model: str, test_set: str) -> float | None:
        return models[model]["eval"].get(test_set, {}).get("accuracy")

    asr = backdoor["attack_success_rate"]
    rows = [
        ("baseline", acc("baseline", "clean"), acc("baseline", "triggered"), asr["baseline"],
         None, acc("baseline", "fgsm"), acc("baseline", "pgd_whitebox")),
        ("poisoned", acc("poisoned", "clean"), acc("poisoned", "triggered"), asr["poisoned"], None, None,
         acc("poisoned", "pgd_whitebox")),
        *([("poison_cleaned", acc("poison_cleaned", "clean"), acc("poison_cleaned", "triggered"),
            asr.get("poison_cleaned"), None, None, None)] if "poison_cleaned" in models else []),
        ("defense_fgsm", acc("defense_fgsm", "clean"), None, None, acc("defense_fgsm", "fgsm_transfer_from_baseline"),
         acc("defense_fgsm", "fgsm_whitebox"), acc("defense_fgsm", "pgd_whitebox")),
    ]
    lines = [
        "| model | clean acc | triggered acc | backdoor ASR | FGSM acc (crafted on baseline, transfer) "
        "| FGSM acc (white-box) | PGD acc (white-box) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in models.items():
        if name.startswith("defense_") and name != "defense_fgsm":
            rows.append((name, acc(name, "clean"), None, None, acc(name, "fgsm_transfer_from_baseline"),
                         acc(name, "fgsm_whitebox"), acc(name, "pgd_whitebox")))
    for name, *values in rows:
        lines.append("| " + " | ".join([name, *(pct(v) for v in values)]) + " |")
    return "\n".join(lines)


def sanity_checks(
    models: dict[str, Any], transfer: dict[str, dict[str, dict[str, float]]], curves: dict[str, Any], cfg: Config
) -> dict[str, dict[str, Any]]:
    """Checks from the adversarial-evaluation literature; passed is True, False, or None (not applicable).

    A False means a robustness number in this run is not to be trusted.
    """
    checks: dict[str, dict[str, Any]] = {}
    same_eps = abs(cfg.pgd_eps - cfg.fgsm_eps) < 1e-12
    for name in transfer["pgd"]:
        pgd_acc, fgsm_acc = transfer["pgd"][name][name], transfer["fgsm"][name][name]
        checks[f"pgd_not_weaker_than_fgsm_{name}"] = {
            "description": f"{name}: white-box PGD accuracy <= white-box FGSM accuracy on the same images and eps",
            "passed": (pgd_acc <= fgsm_acc) if same_eps else None,
            "pgd_accuracy": pgd_acc, "fgsm_accuracy": fgsm_acc,
        }
    for attack, table in transfer.items():
        for target in table:
            whitebox = table[target][target]
            transferred = {source: table[source][target] for source in table if source != target}
            checks[f"whitebox_not_weaker_than_transfer_{attack}_{target}"] = {
                "description": f"{target}: {attack.upper()} crafted on the model itself is at least as strong as "
                               f"{attack.upper()} crafted on any other model",
                "passed": all(whitebox <= acc for acc in transferred.values()),
                "whitebox_accuracy": whitebox, "transfer_accuracy": transferred,
            }
    defense = models["defense_fgsm"]["eval"]
    wb, moved = defense["fgsm_whitebox"]["accuracy"], defense["fgsm_transfer_from_baseline"]["accuracy"]
    checks["whitebox_not_weaker_than_transfer_full_test_set_defense_fgsm"] = {
        "description": "defense_fgsm on the full test set: FGSM crafted on the model itself is at least as strong "
                       "as FGSM transferred from the baseline",
        "passed": wb <= moved, "whitebox_accuracy": wb, "transfer_accuracy": moved,
    }
    if 1.0 in curves["eps"]:
        at_one = {name: accs[curves["eps"].index(1.0)] for name, accs in curves["pgd"].items()}
        checks["accuracy_near_chance_at_eps_1"] = {
            "description": "at eps 1.0 the attacker can draw any image, so PGD accuracy must fall to chance "
                           "(<= 0.15) or below",
            "passed": all(acc <= 0.15 for acc in at_one.values()), "pgd_accuracy": at_one,
        }
    checks["eps_bound_and_pixel_range"] = {
        "description": "every generated adversarial set stays within its eps (L-inf) and inside [0, 1]; "
                       "the run stops with an error otherwise",
        "passed": True,
    }
    return checks


def write_summary(summary: dict[str, Any], path: Path) -> None:
    """Validate, then write the metrics JSON atomically."""
    validate_summary(summary)
    atomic_write_bytes(path, (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode())
