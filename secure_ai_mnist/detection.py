"""The poison detectors by name, the combined defense, and the scoring code.

Every detector has the signature of ``detector_api``: (model, training images, labels, config)
in, a ``Detection`` (flags, report, runtime check or None) out; one module each:
- ``trigger_reversal`` (ours, detect_reversal.py): Neural Cleanse-style trigger reverse-engineering
  with a data-driven cut; recovers the trigger, so it gives a runtime check;
- ``activation_outliers`` (ours, detect_activations.py): robust Mahalanobis outliers of the
  penultimate activations per class; for triggers that are not small patches;
- ``feature_clusters`` (ours, detect_clusters.py): far, dense groups of the last conv feature map's
  channel statistics per class; for triggers that change texture everywhere (blended noise);
- ``label_consistency`` (ours, detect_knn.py): pixel-space k-NN label disagreement, for classes that
  a backdoor filled with poisons (WaNet needs 5-10% of the training set);
- ``shared_residuals`` (ours, detect_residuals.py): label-inconsistent images whose pixel residuals
  from their neighbours point the same way, or are bright at the same few pixels (residual_pixels.py)
  (one trigger shared by all poisons: blended noise, patches down to 2x2);
- ``combined``: the union of IN_COMBINED (trigger reversal, activation outliers, label
  consistency, shared residuals), one configured defense for every trigger family.
  feature_clusters runs and is scored beside them but stays out of the union: it flagged 20 clean
  images of one class on a 1-epoch model trained on 2,000 images with no poison;
- ``activation_clustering`` and ``spectral_signature`` (ART's, detect_art.py): reference rows.
The scoring (``detection_metrics``) and the chance row (``random_filter``) live here too; they
are the only code that sees the truth, and it is passed to them after detection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import Config
from .detect_activations import detect_activation_outliers
from .detect_art import detect_activation_clustering, detect_spectral_signature
from .detect_clusters import detect_feature_clusters
from .detect_knn import detect_label_consistency
from .detect_residuals import detect_shared_residuals
from .detect_reversal import detect_trigger_reversal
from .detector_api import Detection, TriggerCheck

if TYPE_CHECKING:
    import keras

Detector = Callable[["keras.Model", np.ndarray, np.ndarray, Config], Detection]

OURS: dict[str, Detector] = {"trigger_reversal": detect_trigger_reversal,
                             "activation_outliers": detect_activation_outliers,
                             "feature_clusters": detect_feature_clusters,
                             "label_consistency": detect_label_consistency,
                             "shared_residuals": detect_shared_residuals}
REFERENCES: dict[str, Detector] = {"activation_clustering": detect_activation_clustering,
                                   "spectral_signature": detect_spectral_signature}
COMBINED = "combined"
IN_COMBINED = ("trigger_reversal", "activation_outliers", "label_consistency", "shared_residuals")
DETECTORS = (*OURS, COMBINED, *REFERENCES)  # the row order of run_detectors' flags


def detection_metrics(flagged: np.ndarray, is_poison: np.ndarray) -> dict[str, Any]:
    """Scoring code, not a detector: precision, recall and F1 of ``flagged`` (bool per training
    sample) against the truth ``is_poison``."""
    tp = int(np.sum(flagged & is_poison))
    fp = int(np.sum(flagged & ~is_poison))
    fn = int(np.sum(~flagged & is_poison))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"flagged": tp + fp, "true_positives": tp, "false_positives": fp, "false_negatives": fn,
            "precision": precision, "recall": recall, "f1": f1}


def random_filter(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """The chance row: ``count`` of ``n`` samples flagged uniformly, without replacement."""
    flagged = np.zeros(n, bool)
    flagged[rng.choice(n, size=min(count, n), replace=False)] = True
    return flagged


def run_detectors(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config,
                  references: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Every detector on the training set (x, y) and the model trained on it, blind: flags as
    rows in DETECTORS order (bool (len(DETECTORS), N); ART's rows stay False when ``references``
    is False) and each detector's report. A detector that recovers a trigger carries its runtime
    check under "trigger_check"; ``combined`` carries trigger reversal's, the only one it has."""
    results = {name: detect(model, x, y, cfg) for name, detect in OURS.items()}
    union = [results[name] for name in IN_COMBINED]
    results[COMBINED] = Detection(np.logical_or.reduce([r.flags for r in union]),
                                  {"union_of": list(IN_COMBINED), "suspicious_classes": sorted({
                                      c for r in union for c in r.report["suspicious_classes"]}),
                                   "time_s": round(sum(r.report["time_s"] for r in union), 3)},
                                  results["trigger_reversal"].check)
    if references:
        results.update({name: detect(model, x, y, cfg) for name, detect in REFERENCES.items()})
    info: dict[str, Any] = {}
    for name, result in results.items():
        info[name] = {**result.report, "flagged": int(result.flags.sum()),
                      **({"trigger_check": result.check.to_info()} if result.check is not None else {})}
    if references:
        from .detect_art import activations_record

        info["activations"] = activations_record(model, x)
    rows = np.stack([results[name].flags if name in results else np.zeros(len(y), bool) for name in DETECTORS])
    return rows, info


def selected_flags(cfg: Config, detection: tuple[np.ndarray, dict[str, Any]]) -> np.ndarray:
    """The flags of the detector named by cfg.detector (never chosen by its score)."""
    return detection[0][DETECTORS.index(cfg.detector)].astype(bool)


def runtime_trigger_check(info: dict[str, Any], detector: str) -> TriggerCheck | None:
    """The runtime check of ``detector`` from run_detectors' report, or None when that
    detector recovers no trigger."""
    entry = info.get(detector, {})
    return TriggerCheck.from_arrays(entry["trigger_check"]) if "trigger_check" in entry else None
