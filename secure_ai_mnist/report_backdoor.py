"""REPORT.md's backdoor parts: trigger controls, the detection table, the runtime check, the
backdoor matrix, and the backdoor conclusions. Rendering only: every number comes from the summary."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from .detection import DETECTORS


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def image_link(summary_root: Path, path: str, alt: str) -> str:
    with contextlib.suppress(ValueError):
        path = str(Path(path).resolve().relative_to(summary_root.resolve()))
    return f"![{alt}]({path})"


def controls_lines(controls: dict[str, dict[str, float]]) -> list[str]:
    """ASR per model with the trained trigger and its controls (one respect changed each)."""
    names = list(next(iter(controls.values())))
    return ["Attack success rate (ASR: triggered test images of other classes predicted as the target) by trigger "
            "(each control changes one respect of the trained trigger):", "",
            "| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
            *(f"| {model} | " + " | ".join(pct(rates[k]) for k in names) + " |" for model, rates in controls.items()),
            ""]


def detection_lines(detection: dict[str, Any]) -> list[str]:
    """The detection table: every detector, the random filter and the unpoisoned control."""
    reversal, outliers, control = (detection["trigger_reversal"], detection["activation_outliers"],
                                   detection["unpoisoned_control"])
    rows = [(name, detection[name]) for name in (*DETECTORS, "random_filter")]
    return [
        "Detectors, all blind (none receives the poison indices, count, target or trigger); the scores against the "
        "known poison indices are computed afterwards. Ours: trigger_reversal (Neural Cleanse-style trigger "
        f"reverse-engineering, anomaly index > {reversal['anomaly_threshold']}, then a two-component cut on each "
        "candidate class's trigger scores), activation_outliers (per class, robust Mahalanobis distances of the "
        "penultimate activations and a far minority component), feature_clusters (per class, far and dense groups "
        "of the last conv feature map's channel statistics), label_consistency (pixel k-NN label disagreement in "
        "classes whose disagreement rate is an outlier), shared_residuals (label-inconsistent images whose pixel "
        "residuals from their neighbours share one direction, or share bright pixels with an outsized share of their "
        "class's candidates) and combined (the union of all of ours but "
        "feature_clusters, which is scored beside them while its cut is unproven). "
        f"activation_clustering and spectral_signature are ART's, on the `{detection['activations']['layer']}` layer "
        f"({detection['activations']['dim']} units). The configured defense is **{detection['selected']}**; the "
        "random filter flags as many samples as it does.",
        "",
        "| detector | flagged | poisons found | clean flagged | precision | recall | F1 |",
        "|---|---|---|---|---|---|---|",
        *(f"| {name} | {d['flagged']} | {d['true_positives']} | {d['false_positives']} | {d['precision']:.3f} | "
          f"{d['recall']:.3f} | {d['f1']:.3f} |" for name, d in rows),
        "",
        f"Suspicious classes: trigger_reversal {reversal['suspicious_classes'] or 'none'} (candidates by anomaly "
        f"index: {reversal['candidate_classes'] or 'none'}; {reversal['time_s']:.0f} s), activation_outliers "
        f"{outliers['suspicious_classes'] or 'none'} ({outliers['time_s']:.0f} s), feature_clusters "
        f"{detection['feature_clusters']['suspicious_classes'] or 'none'}, label_consistency "
        f"{detection['label_consistency']['suspicious_classes'] or 'none'}, shared_residuals "
        f"{detection['shared_residuals']['suspicious_classes'] or 'none'}. Unpoisoned control (our detectors "
        f"on the clean baseline and its training set): {detection['selected']} flagged {control['flagged']} "
        f"({pct(control['flagged_share'])}), suspicious classes {control['suspicious_classes'] or 'none'}.",
        "",
    ]


def runtime_line(runtime: dict[str, Any]) -> str:
    if not runtime["trigger_recovered"]:
        return (f"Runtime check (`predict --check-trigger`): none. {runtime['method']}; the report does not flag "
                "inputs by noise.")
    return (f"Runtime check (`predict --check-trigger`, {runtime['method']}): flags {pct(runtime['flag_rate_triggered'])}"
            f" of the triggered and {pct(runtime['flag_rate_clean'])} of the clean test images.")


def _met(value: bool | None) -> str:
    return "n/a" if value is None else "met" if value else "not met"


def backdoor_conclusions(backdoor: dict[str, Any]) -> list[str]:
    detection, runtime = backdoor["detection"], backdoor["runtime_check"]
    ours, control = detection[detection["selected"]], detection["unpoisoned_control"]
    return [
        f"- Blind poison detection ({detection['selected']}): precision {ours['precision']:.3f}, recall "
        f"{ours['recall']:.3f}, F1 {ours['f1']:.3f}; the goal (F1 >= 0.9, precision and recall >= 0.85) was "
        f"{_met(detection['goal_f1_at_least_0_9'])}. On the unpoisoned control it flagged {control['flagged']} samples "
        f"(goal <= 0.1% of the training set: {_met(detection['goal_control_at_most_0_1pct_flagged'])}).",
        f"- Runtime check: {pct(runtime['flag_rate_triggered'])} of triggered test images flagged (goal >= 95%: "
        f"{_met(runtime['goal_triggered_at_least_95pct'])}), {pct(runtime['flag_rate_clean'])} of clean ones (goal "
        f"<= 1%: {_met(runtime['goal_clean_at_most_1pct'])})" + ("." if runtime["trigger_recovered"] else
                                                                  "; no trigger was recovered, so there is no check."),
    ]


def matrix_lines(matrix: dict[str, Any] | None, root: Path) -> list[str]:
    """The backdoor matrix (--backdoor-matrix): one row per attack point, F1 per detector, and the
    configured defense's removal result."""
    if not matrix:
        return []
    names = matrix["detectors"]
    lines = [f"### Backdoor matrix: {len(matrix['points'])} attacks, every detector blind", "",
             f"Each point trains a poisoned model ({matrix['epochs']} epoch(s), {matrix['n_train']} training images); "
             "the target class and the trigger's place are drawn from the seed. Removal drops the configured "
             f"defense's (**{matrix['selected']}**) flags and retrains. F1 per detector:", "",
             "| attack | target | poisons | ASR | " + " | ".join(names)
             + " | removal: ASR after | clean after | runtime check: triggered / clean flagged |",
             "|---|---|---|---|" + "---|" * len(names) + "---|---|---|"]
    for p in matrix["points"]:
        f1 = " | ".join(f"{p['detection'][n]['f1']:.3f}" for n in names)
        runtime = p.get("runtime_check", {})
        check = (f"{pct(runtime['flag_rate_triggered'])} / {pct(runtime['flag_rate_clean'])}"
                 if runtime.get("trigger_recovered") else "none (no trigger recovered)")
        lines.append(f"| {p['label']} | {p['target_class']} | {p['poison_count']} | {pct(p['attack_success_rate'])} | "
                     f"{f1} | {pct(p['removal']['attack_success_rate'])} | {pct(p['removal']['clean_accuracy'])} | "
                     f"{check} |")
    lines += ["", f"Clean baseline accuracy for comparison: {pct(matrix['baseline_clean_accuracy'])}. Unpoisoned "
                  f"control of {matrix['selected']}: {matrix['control_flagged']} flagged.", "",
              image_link(root, matrix["heatmap_png"], "backdoor matrix heatmap"), "",
              image_link(root, matrix["examples_png"], "trigger families"), ""]
    return lines
