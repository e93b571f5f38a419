"""ART's two reference poison detectors on the penultimate layer, each with the shared detector
signature (``detector_api``): activation clustering and spectral signatures."""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import LOG, NUM_CLASSES
from .config import Config
from .detector_api import Detection
from .model import seed_everything, stage_seed

if TYPE_CHECKING:
    import keras


def penultimate_classifier(model: keras.Model) -> Any:
    """ART TensorFlowV2Classifier whose last layer is the model's 'penultimate' dense layer.

    ART's ActivationDefence and SpectralSignatureDefense analyse the last layer a classifier
    lists, and TensorFlowV2Classifier computes activations only for Sequential models; on the
    full model that layer would be the 10-way output. This Sequential shares the model's layers
    (and weights) from the input up to 'penultimate', so the detectors see its 128 ReLU units.
    """
    import keras
    from art.estimators.classification import TensorFlowV2Classifier

    layers = []
    for layer in model.layers[1:]:
        layers.append(layer)
        if layer.name == "penultimate":
            break
    else:
        raise ValueError("model has no 'penultimate' layer")
    features = keras.Sequential([keras.Input(model.input_shape[1:]), *layers], name="penultimate_features")
    return TensorFlowV2Classifier(model=features, nb_classes=NUM_CLASSES, input_shape=model.input_shape[1:],
                                  clip_values=(0.0, 1.0))


def silhouette_analysis(
    clusters_by_class: list[np.ndarray], reduced_by_class: list[np.ndarray], size_threshold: float = 0.35,
    silhouette_threshold: float = 0.1,
) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Chen et al.'s decision, as ART's ClusteringAnalyzer.analyze_by_silhouette_score states it:
    in each class, a cluster holding less than ``size_threshold`` of the class is poison when
    the class's silhouette score exceeds ``silhouette_threshold``. (ART 1.20.1's own version
    raises IndexError when a class has a small cluster but a low silhouette score.)
    Returns (flagged bool array per class, a report per class)."""
    from sklearn.metrics import silhouette_score

    flagged, report = [], []
    for clusters, reduced in zip(clusters_by_class, reduced_by_class):
        clusters = np.asarray(clusters, dtype=int)
        sizes = np.bincount(clusters, minlength=2) if len(clusters) else np.zeros(2, int)
        shares = sizes / max(int(sizes.sum()), 1)
        score = float(silhouette_score(reduced, clusters)) if len(np.unique(clusters)) > 1 else 0.0
        small = np.flatnonzero(shares < size_threshold)
        suspicious = bool(len(small)) and score > silhouette_threshold
        flagged.append(np.isin(clusters, small) if suspicious else np.zeros(len(clusters), bool))
        report.append({"cluster_sizes": sizes.tolist(), "silhouette": round(score, 4), "suspicious": suspicious})
    return flagged, report


def _art_inputs(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config) -> tuple[Any, np.ndarray]:
    """ART's view of the model (``penultimate_classifier``) and one-hot labels. ART's FastICA
    and k-means draw from NumPy's global generator: it is seeded here, so that the flags do not
    depend on which stages ran before."""
    import keras

    seed_everything(stage_seed(cfg.seed, "poison detection"))
    return penultimate_classifier(model), keras.utils.to_categorical(y, NUM_CLASSES)


def activations_record(model: keras.Model, x: np.ndarray) -> dict[str, Any]:
    """What ART analyses: the layer's name and width, and whether ART's activations equal the
    model's own 'penultimate' outputs (checked on up to 256 images)."""
    import keras

    classifier, probe = penultimate_classifier(model), x[: min(len(x), 256)]
    art_view = classifier.get_activations(probe, layer=len(classifier.layer_names) - 1, batch_size=128)
    ours = keras.Model(model.inputs, model.get_layer("penultimate").output).predict_on_batch(probe)
    return {"layer": classifier.layer_names[-1], "dim": int(art_view.shape[1]),
            "equal_to_model_penultimate": bool(np.allclose(art_view, ours, atol=1e-5))}


def detect_activation_clustering(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config) -> Detection:
    """ART's ActivationDefence (Chen et al. 2018) on the penultimate layer: per class, FastICA to
    10 dims and 2-means; a small cluster is poison when the class's silhouette score says so
    (``silhouette_analysis``). Blind: no poison indices, count, target or trigger."""
    from art.defences.detector.poison import ActivationDefence

    classifier, y_onehot = _art_inputs(model, x, y, cfg)
    settings = {"nb_clusters": 2, "nb_dims": 10, "reduce": "FastICA"}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            clusters, reduced = ActivationDefence(classifier, x, y_onehot).cluster_activations(**settings)
        except ValueError as exc:  # FastICA on a class whose activations are degenerate (dead units, tiny sets)
            LOG.warning("activation clustering (ART reference row) failed, nothing flagged: %s", exc)
            return Detection(np.zeros(len(y), bool), {"art_class": "ActivationDefence", **settings, "error": str(exc),
                                                      "suspicious_classes": [],
                                                      "time_s": round(time.perf_counter() - start, 3)})
    unconverged = sum("FastICA did not converge" in str(w.message) for w in caught)
    if unconverged:
        LOG.info("activation clustering: FastICA stopped at its iteration limit in %d of %d classes; those "
                 "classes' 10-dim reductions are approximate", unconverged, NUM_CLASSES)
    flagged, class_report = silhouette_analysis(clusters, reduced)
    flags = np.zeros(len(y), bool)
    for label in range(NUM_CLASSES):
        flags[np.flatnonzero(y == label)] = flagged[label]
    return Detection(flags, {"art_class": "ActivationDefence (clusters), silhouette analysis", **settings,
                             "size_threshold": 0.35, "silhouette_threshold": 0.1,
                             "suspicious_classes": [c for c, r in enumerate(class_report) if r["suspicious"]],
                             "per_class": class_report, "time_s": round(time.perf_counter() - start, 3)})


def detect_spectral_signature(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config) -> Detection:
    """ART's SpectralSignatureDefense (Tran et al. 2018) on the penultimate layer: per class, the
    cfg.detection_fraction x 1.5 samples most aligned with the top singular vector (a stated
    setting, never derived from the poison count)."""
    from art.defences.detector.poison import SpectralSignatureDefense

    classifier, y_onehot = _art_inputs(model, x, y, cfg)
    start = time.perf_counter()
    spectral = SpectralSignatureDefense(classifier, x, y_onehot, expected_pp_poison=cfg.detection_fraction,
                                        eps_multiplier=1.5, batch_size=128)
    _, is_clean = spectral.detect_poison()
    return Detection(np.asarray(is_clean) == 0, {
        "art_class": "SpectralSignatureDefense", "expected_pp_poison": cfg.detection_fraction,
        "eps_multiplier": 1.5, "time_s": round(time.perf_counter() - start, 3)})
