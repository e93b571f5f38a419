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
3. The disagreeing images of a suspicious class are flagged; then the test is repeated with the
   flagged images set aside, so that poisons whose nearest images were other poisons are found
   too (RECHECK_ROUNDS at most).

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
# Poisons from one source class that fill a class become each other's neighbours and agree with
# their (wrong) label; set aside the flagged ones and they see their true class again. WaNet at
# 10% of 10,000 images: 894 of 1,000 poisons flagged at first, 998 after four rechecks, 13 clean
# either way.
RECHECK_ROUNDS = 5


def pixel_features(x: np.ndarray, seed: int) -> np.ndarray:
    """Images x (N, 28, 28, 1) in their first min(PCA_DIMS, N - 1) pixel principal components."""
    from sklearn.decomposition import PCA

    return PCA(min(PCA_DIMS, len(x) - 1), random_state=seed).fit_transform(x.reshape(len(x), -1))


def nearest(features: np.ndarray) -> np.ndarray:
    """Indices (N, min(NEIGHBOURS, N - 1)) of each row's nearest other rows, nearest first."""
    from sklearn.neighbors import NearestNeighbors

    _, neighbours = NearestNeighbors(n_neighbors=min(NEIGHBOURS + 1, len(features))).fit(features).kneighbors(features)
    return neighbours[:, 1:]


def pixel_neighbours(x: np.ndarray, seed: int) -> np.ndarray:
    """Indices (N, min(NEIGHBOURS, N - 1)) of each image's nearest other images in pixel space
    (PCA_DIMS principal dimensions), nearest first."""
    return nearest(pixel_features(x, seed))


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


def recheck_without_flagged(features: np.ndarray, y: np.ndarray, flags: np.ndarray,
                             suspicious: list[int]) -> tuple[np.ndarray, int]:
    """``flags`` grown by the images of the suspicious classes that disagree with their neighbours
    once the flagged images are set aside, repeated until nothing changes (at most RECHECK_ROUNDS).
    Returns (flags, rounds that added images)."""
    flags, rounds = flags.copy(), 0
    for _ in range(RECHECK_ROUNDS):
        kept = np.flatnonzero(~flags)
        newly = kept[disagreement(y[kept], nearest(features[kept])) & np.isin(y[kept], suspicious)]
        if not len(newly):
            break
        flags[newly], rounds = True, rounds + 1
    return flags, rounds


def detect_label_consistency(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config) -> Detection:
    """Disagreeing images of classes whose disagreement rate is an outlier (module docstring).
    ``model`` is not used: the test is on the data alone. Takes no poison indices, count,
    target class or trigger."""
    start = time.perf_counter()
    features = pixel_features(x, stage_seed(cfg.seed, "label consistency"))
    disagrees = disagreement(y, nearest(features))
    rates = np.array([disagrees[y == c].mean() if np.any(y == c) else 0.0 for c in range(NUM_CLASSES)])
    index = high_outliers(rates)
    suspicious = [c for c in range(NUM_CLASSES) if index[c] > ANOMALY_THRESHOLD]
    flags, rounds = disagrees & np.isin(y, suspicious), 0
    if flags.any():  # with nothing set aside, a recheck would repeat the search above exactly
        flags, rounds = recheck_without_flagged(features, y, flags, suspicious)
    report = {"method": f"pixel PCA-{PCA_DIMS}, {NEIGHBOURS}-NN label disagreement; classes whose disagreement rate "
                        f"has anomaly index > {ANOMALY_THRESHOLD}: their disagreeing images, rechecked with the "
                        "flagged images set aside until nothing changes",
              "recheck_rounds": rounds,
              "disagreement_rate": [round(float(r), 4) for r in rates],
              "anomaly_index": [round(float(a), 3) for a in index], "anomaly_threshold": ANOMALY_THRESHOLD,
              "suspicious_classes": suspicious, "flagged": int(flags.sum()), "recovers_trigger": False,
              "time_s": round(time.perf_counter() - start, 3)}
    LOG.info("label consistency: disagreement %s, suspicious %s, %d flagged (%.1f s)", report["disagreement_rate"],
             suspicious, report["flagged"], report["time_s"])
    return Detection(flags, report)
