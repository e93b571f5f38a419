"""A blind detector for backdoors planted in a large share of one class: pixel-space label consistency.

A poison is an image of one class labelled as another. Its nearest neighbours in pixel space are
images of its true class, so its label disagrees with theirs (k-NN label consistency, as in
Peri et al. 2020's Deep k-NN defense, here on pixels: the poisoned model's own features map the
poisons to the target class and would hide them). Natural MNIST disagreement is a few percent
of every class; a class that a backdoor has filled with poisons disagrees far more often.

1. Pixels reduced to PCA_DIMS dimensions; for every training image, the labels of its K nearest
   other images; it disagrees when fewer than half of them share its label.
2. Per class, the share of disagreeing images; a class is suspicious when that share is an
   outlier on the high side of the ten classes (anomaly index, the median absolute deviation
   scaled by 1.4826, > ANOMALY_THRESHOLD).
3. The disagreeing images of a suspicious class are flagged.

What it cannot see: a backdoor with few poisons (they hide in the class's natural disagreement;
trigger reversal and activation outliers cover those) and clean-label poisons (their labels are
right). It recovers no trigger, so it gives no runtime check.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from .common import LOG, NUM_CLASSES
from .config import Config
from .detector_api import Detection
from .model import stage_seed

if TYPE_CHECKING:
    import keras

PCA_DIMS = 50
NEIGHBOURS = 10
# Measured on models trained on 30,000 real MNIST images: clean classes score at most 1.6; a
# class with 5-10% of the training set as WaNet poisons 12-14. Blended and SIG poisons at 1%
# score 3.2-3.4 and are left to activation_outliers, which isolates them more precisely.
ANOMALY_THRESHOLD = 5.0


def pixel_neighbours(x: np.ndarray, seed: int) -> np.ndarray:
    """Indices (N, min(NEIGHBOURS, N - 1)) of each image's nearest other images in pixel space
    (PCA_DIMS principal dimensions), nearest first."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    reduced = PCA(min(PCA_DIMS, len(x) - 1), random_state=seed).fit_transform(x.reshape(len(x), -1))
    _, neighbours = NearestNeighbors(n_neighbors=min(NEIGHBOURS + 1, len(x))).fit(reduced).kneighbors(reduced)
    return neighbours[:, 1:]


def disagreement(y: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """bool (N,): fewer than half of the image's nearest images (``pixel_neighbours``) share its label."""
    return (y[neighbours] == y[:, None]).mean(axis=1) < 0.5


MIN_SPREAD = 0.01  # one point of disagreement: classes that all but agree differ by noise, not by poison


def high_outliers(values: np.ndarray) -> np.ndarray:
    """(value - median) / (1.4826 MAD) per entry, the spread at least MIN_SPREAD: large for an
    unusually high value."""
    median = float(np.median(values))
    mad = 1.4826 * float(np.median(np.abs(values - median)))
    return (values - median) / max(mad, MIN_SPREAD)


def detect_label_consistency(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config) -> Detection:
    """Disagreeing images of classes whose disagreement rate is an outlier (module docstring).
    ``model`` is not used: the test is on the data alone. Takes no poison indices, count,
    target class or trigger."""
    start = time.perf_counter()
    disagrees = disagreement(y, pixel_neighbours(x, stage_seed(cfg.seed, "label consistency")))
    rates = np.array([disagrees[y == c].mean() if np.any(y == c) else 0.0 for c in range(NUM_CLASSES)])
    index = high_outliers(rates)
    suspicious = [c for c in range(NUM_CLASSES) if index[c] > ANOMALY_THRESHOLD]
    flags = disagrees & np.isin(y, suspicious)
    report = {"method": f"pixel PCA-{PCA_DIMS}, {NEIGHBOURS}-NN label disagreement; classes whose disagreement rate "
                        f"has anomaly index > {ANOMALY_THRESHOLD}: their disagreeing images",
              "disagreement_rate": [round(float(r), 4) for r in rates],
              "anomaly_index": [round(float(a), 3) for a in index], "anomaly_threshold": ANOMALY_THRESHOLD,
              "suspicious_classes": suspicious, "flagged": int(flags.sum()), "recovers_trigger": False,
              "time_s": round(time.perf_counter() - start, 3)}
    LOG.info("label consistency: disagreement %s, suspicious %s, %d flagged (%.1f s)", report["disagreement_rate"],
             suspicious, report["flagged"], report["time_s"])
    return Detection(flags, report)
