"""A blind detector for triggers that are not small patches: robust activation outliers.

A poisoned sample of class t is an image of another class that the model maps to t through the
trigger; in the model's penultimate layer the poisons of t sit together, away from t's clean
images, whatever the trigger looks like (a blended noise image, a sinusoid, a patch). Per class:

1. the penultimate activations, reduced to PCA_DIMS dimensions;
2. each sample's Mahalanobis distance from the class's robust centre and shape (minimum
   covariance determinant, Rousseeuw 1984, fitted on up to FIT_LIMIT of the class), so that the
   poisons cannot pull the centre towards themselves;
3. a Gaussian mixture of 2 to 4 components on the log distances, the count chosen by BIC. The
   top component is flagged only when it holds less than half of the class and is clearly apart
   from the next one (Ashman's D >= MIN_SEPARATION, the same bar as trigger reversal's cut).
   A class whose distances form one heavy-tailed mass (every clean class measured) is left alone.

What it cannot see: a backdoor whose poisons make up half of their class or more (WaNet needs
poison rates near 10%), where the robust centre is no longer the clean images' centre. It
recovers no trigger, so it gives no runtime check.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import LOG, NUM_CLASSES
from .config import Config
from .detector_api import Detection
from .model import layer_output, stage_seed

if TYPE_CHECKING:
    import keras

PCA_DIMS = 10
FIT_LIMIT = 2000  # the robust fit's cost grows with the class size; 2,000 pin the centre well
MIN_SEPARATION = 4.0  # Ashman's D between the top component and the next
COMPONENTS = (2, 3, 4)
MIN_CLASS = 10 * PCA_DIMS  # fewer samples than this per class make the robust shape degenerate: not judged


def robust_distances(features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mahalanobis distances (N,) >= 0 of ``features`` (N, D) from their minimum-covariance-
    determinant centre and shape, in PCA_DIMS principal dimensions."""
    from sklearn.covariance import MinCovDet
    from sklearn.decomposition import PCA

    seed = int(rng.integers(2**31))
    reduced = PCA(min(PCA_DIMS, features.shape[1], len(features) - 1), random_state=seed).fit_transform(features)
    fit_on = reduced[rng.choice(len(reduced), size=min(FIT_LIMIT, len(reduced)), replace=False)]
    return MinCovDet(random_state=seed).fit(fit_on).mahalanobis(reduced)


def far_group(scores: np.ndarray, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The top component of a BIC-chosen Gaussian mixture on ``scores`` (N,), when it holds less
    than half of them and its Ashman's D from the next component is >= MIN_SEPARATION; nothing
    otherwise. Returns (flagged bool (N,), {components, separation, high_share})."""
    from sklearn.mixture import GaussianMixture

    none = np.zeros(len(scores), bool)
    if len(scores) < 20 or np.ptp(scores) == 0:
        return none, {"components": 0, "separation": 0.0, "high_share": 0.0}
    column = scores[:, None]
    fits = [GaussianMixture(n, random_state=seed, reg_covar=1e-6).fit(column) for n in COMPONENTS]
    best = min(fits, key=lambda g: g.bic(column))
    means, variances = best.means_[:, 0], best.covariances_.ravel()
    top, second = np.argsort(means)[-1], np.argsort(means)[-2]
    separation = float((means[top] - means[second]) / np.sqrt((variances[top] + variances[second]) / 2))
    flagged = best.predict(column) == top
    info = {"components": int(best.n_components), "separation": round(separation, 3),
            "high_share": round(float(flagged.mean()), 5)}
    if separation < MIN_SEPARATION or not 0 < flagged.mean() < 0.5:
        return none, info
    return flagged, info


def detect_activation_outliers(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config) -> Detection:
    """Per class, the far, compact group of penultimate activations (module docstring).
    Returns flags (N,) and a report per class; no runtime check. Takes no poison indices,
    count, target class or trigger."""
    start = time.perf_counter()
    seed = stage_seed(cfg.seed, "activation outliers")
    rng = np.random.default_rng(seed)
    features = layer_output(model, "penultimate", x)
    flags, per_class = np.zeros(len(y), bool), {}
    for label in range(NUM_CLASSES):
        members = np.flatnonzero(y == label)
        if len(members) < MIN_CLASS:
            per_class[str(label)] = {"components": 0, "separation": 0.0, "high_share": 0.0, "flagged": 0,
                                     "skipped": f"fewer than {MIN_CLASS} samples"}
            continue
        group, info = far_group(np.log(robust_distances(features[members], rng) + 1e-9), seed)
        flags[members[group]] = True
        per_class[str(label)] = {**info, "flagged": int(group.sum())}
    suspicious = [int(c) for c, info in per_class.items() if info["flagged"]]
    report = {"method": "per class: penultimate activations, PCA to 10 dims, robust (MCD) Mahalanobis distance, "
                        "BIC-chosen Gaussian mixture on the log distances, far minority component flagged",
              "layer": "penultimate", "pca_dims": PCA_DIMS, "min_separation": MIN_SEPARATION,
              "per_class": per_class, "suspicious_classes": suspicious, "flagged": int(flags.sum()),
              "recovers_trigger": False, "time_s": round(time.perf_counter() - start, 3)}
    LOG.info("activation outliers: suspicious %s, %d flagged (%.1f s)", suspicious, report["flagged"], report["time_s"])
    return Detection(flags, report)
