"""A blind detector for triggers that change texture everywhere: far, dense groups of conv features.

A blended trigger (a fixed noise image mixed into every poison) leaves the penultimate layer,
where the poisons look like their target class, but it changes the texture statistics of the
convolutional layers in the same way on every poison. Per class:

1. the last convolutional feature map (the 4-D output just before the flatten), summarised as
   each channel's mean and maximum over the image;
2. reduced to PCA dimensions and whitened around the class's robust centre (minimum covariance
   determinant, as in activation_outliers), so the poisons cannot pull the centre to themselves;
3. each sample's score: log(distance from that centre / distance to its NEIGHBOURS-th nearest
   class member). Clean outliers are far from the centre and far from each other; the poisons
   share the trigger, so they are far from the centre and close to each other;
4. the same cut as activation_outliers: the top component of a BIC-chosen Gaussian mixture on
   the scores, flagged only when it is a minority with Ashman's D >= MIN_SEPARATION.

What it cannot see: a group of fewer than NEIGHBOURS poisons (none of them has enough close
neighbours), and triggers that leave the texture statistics alone (small patches, warps; trigger
reversal and the other detectors cover those). It recovers no trigger, so it gives no runtime check.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from .common import LOG
from .config import Config
from .detect_activations import MIN_SEPARATION, detection_jobs, per_class_far_groups, whiten
from .detector_api import Detection
from .model import stage_seed

if TYPE_CHECKING:
    import keras

NEIGHBOURS = 10


def last_feature_map(model: keras.Model) -> keras.layers.Layer:
    """The model's last computing layer with a 4-D output (batch, height, width, channels); input
    and dropout layers (the identity at inference) are skipped. Raises ValueError if there is none."""
    maps = [layer for layer in model.layers[1:]
            if len(layer.output.shape) == 4 and type(layer).__name__ not in ("InputLayer", "Dropout")]
    if not maps:
        raise ValueError("feature_clusters needs a model with a convolutional feature map")
    return maps[-1]


def channel_statistics(model: keras.Model, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Each channel's mean and maximum of the last feature map for images x: (N, 2 * channels).
    Batched, so that the full maps (2.2 GB for 60,000 images) are never held at once."""
    import keras

    features = keras.Model(model.inputs, last_feature_map(model).output)
    parts = []
    for i in range(0, len(x), batch_size):
        maps = np.asarray(features.predict_on_batch(x[i : i + batch_size]))
        parts.append(np.concatenate([maps.mean(axis=(1, 2)), maps.max(axis=(1, 2))], axis=1))
    return np.concatenate(parts)


def dense_far_scores(features: np.ndarray, draws: tuple[int, np.ndarray]) -> np.ndarray:
    """log(robust distance from the centre / distance to the NEIGHBOURS-th nearest other sample)
    for features (N, D): (N,). High for a sample far out with many close companions. ``draws``:
    the whitening's random choices (``whitening_draws``)."""
    from sklearn.neighbors import NearestNeighbors

    whitened = whiten(features, draws)
    centre = np.linalg.norm(whitened, axis=1)
    neighbour = NearestNeighbors(n_neighbors=NEIGHBOURS + 1).fit(whitened).kneighbors(whitened)[0][:, -1]
    return np.log(centre + 1e-9) - np.log(neighbour + 1e-9)


def detect_feature_clusters(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config) -> Detection:
    """Per class, the far and dense group of conv-feature statistics (module docstring).
    Returns flags (N,) and a report per class; no runtime check. Takes no poison indices,
    count, target class or trigger."""
    start = time.perf_counter()
    seed = stage_seed(cfg.seed, "feature clusters")
    features = channel_statistics(model, x)
    flags, per_class, suspicious = per_class_far_groups(features, y, dense_far_scores,
                                                        np.random.default_rng(seed), seed, detection_jobs(cfg))
    report = {"method": "per class: channel mean and max of the last conv feature map, PCA to 10 dims, robust (MCD) "
                        f"whitening, log(centre distance / {NEIGHBOURS}-NN distance), BIC-chosen Gaussian mixture, "
                        "far minority component flagged",
              "layer": type(last_feature_map(model)).__name__, "neighbours": NEIGHBOURS, "min_separation": MIN_SEPARATION,
              "per_class": per_class, "suspicious_classes": suspicious, "flagged": int(flags.sum()),
              "recovers_trigger": False, "time_s": round(time.perf_counter() - start, 3)}
    LOG.info("feature clusters: suspicious %s, %d flagged (%.1f s)", suspicious, report["flagged"], report["time_s"])
    return Detection(flags, report)
