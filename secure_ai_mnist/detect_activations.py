"""A blind detector for triggers that are not small patches: robust activation outliers.

A poisoned sample of class t is an image of another class that the model maps to t through the
trigger; in the model's penultimate layer the poisons of t sit together, away from t's clean
images, whatever the trigger looks like (a blended noise image, a sinusoid, a patch). Per class:

1. the penultimate activations, reduced to PCA_DIMS dimensions;
2. each sample's Mahalanobis distance from the class's robust centre and shape (minimum
   covariance determinant, Rousseeuw 1984, fitted on up to FIT_LIMIT of the class), so that the
   poisons cannot pull the centre towards themselves;
3. a Gaussian mixture of 2 to 4 components on the log distances, the count chosen by BIC. The
   components above the mixture's lowest wide gap (Ashman's D >= MIN_SEPARATION, the same bar
   as trigger reversal's cut) are flagged, when they hold less than half of the class.
   A class whose distances form one heavy-tailed mass (every clean class measured) is left alone.

What it cannot see: a backdoor whose poisons make up half of their class or more (WaNet needs
poison rates near 10%), where the robust centre is no longer the clean images' centre. It
recovers no trigger, so it gives no runtime check.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from threadpoolctl import threadpool_limits

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


def plain_covariance(x: np.ndarray, assume_centered: bool = False) -> np.ndarray:
    """The maximum-likelihood covariance (D, D) of x (N, D), as sklearn's ``empirical_covariance``
    computes it, without its input validation: FastMCD calls it about 1,600 times per fit on
    arrays it made itself, and the validation was half of the fit's time (sklearn 1.9)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    covariance = np.dot(x.T, x) / x.shape[0] if assume_centered else np.cov(x.T, bias=1)
    return np.atleast_2d(covariance)


def min_cov_det(seed: int) -> Any:
    """sklearn's ``MinCovDet`` (FastMCD) with ``plain_covariance`` in its inner loop: the same
    estimate, digit for digit (a test holds it against the stock class), in 25-40% less time."""
    from sklearn.covariance import MinCovDet

    class LeanMinCovDet(MinCovDet):
        _nonrobust_covariance = staticmethod(plain_covariance)

    return LeanMinCovDet(random_state=seed)


def whitening_draws(n: int, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """The random choices of ``whiten`` on n samples, drawn from ``rng``: (the PCA and FastMCD
    seed, the indices of the up to FIT_LIMIT samples the fit sees, no repeats)."""
    seed = int(rng.integers(2**31))
    return seed, rng.choice(n, size=min(FIT_LIMIT, n), replace=False)


def whiten(features: np.ndarray, draws: tuple[int, np.ndarray]) -> np.ndarray:
    """``features`` (N, D) in PCA_DIMS principal dimensions, centred on their minimum-covariance-
    determinant centre and whitened by its shape: (N, min(PCA_DIMS, D, N - 1)). Clean samples
    have roughly unit spread in every direction; the poisons cannot pull the centre to themselves.
    ``draws`` (``whitening_draws``) fix its randomness: the same result in whichever process."""
    from sklearn.decomposition import PCA

    seed, fit_indices = draws
    reduced = PCA(min(PCA_DIMS, features.shape[1], len(features) - 1), random_state=seed).fit_transform(features)
    fit = min_cov_det(seed).fit(reduced[fit_indices])
    variances, axes = np.linalg.eigh(fit.covariance_)
    return (reduced - fit.location_) @ axes / np.sqrt(np.maximum(variances, 1e-12))


def log_robust_distances(features: np.ndarray, draws: tuple[int, np.ndarray]) -> np.ndarray:
    """activation_outliers' score (N,): the log of the squared Mahalanobis distances of ``features``
    from their minimum-covariance-determinant centre and shape (``whiten``)."""
    return np.log(np.sum(whiten(features, draws) ** 2, axis=1) + 1e-9)


def far_group(scores: np.ndarray, seed: int, population: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The components of a BIC-chosen Gaussian mixture on ``scores`` (N,) above its lowest wide
    gap: components sorted by mean, the first adjacent pair from the bottom with Ashman's D >=
    MIN_SEPARATION whose upper side holds less than half of ``population`` (default: N; a
    detector that scores a pre-selected part of a class passes the class size), and everything
    above it (a far group that the mixture splits in two is still one group); nothing when no
    gap is that wide. Returns (flagged bool (N,), {components, separation (that gap's D, or the widest), high_share})."""
    from sklearn.mixture import GaussianMixture

    none = np.zeros(len(scores), bool)
    if len(scores) < 20 or np.ptp(scores) == 0:
        return none, {"components": 0, "separation": 0.0, "high_share": 0.0}
    column = scores[:, None]
    fits = [GaussianMixture(n, random_state=seed, reg_covar=1e-6).fit(column) for n in COMPONENTS]
    best = min(fits, key=lambda g: g.bic(column))
    order = np.argsort(best.means_[:, 0])
    means, variances = best.means_[order, 0], best.covariances_.ravel()[order]
    gaps = (means[1:] - means[:-1]) / np.sqrt((variances[1:] + variances[:-1]) / 2)
    component = best.predict(column)
    shares = [float(np.isin(component, order[cut + 1 :]).sum() / (population or len(scores)))
              for cut in range(len(gaps))]
    wide = [cut for cut in range(len(gaps)) if gaps[cut] >= MIN_SEPARATION and 0 < shares[cut] < 0.5]
    cut = wide[0] if wide else int(np.argmax(gaps))
    info = {"components": int(best.n_components), "separation": round(float(gaps[cut]), 3),
            "high_share": round(shares[cut], 5)}
    return (np.isin(component, order[cut + 1 :]) if wide else none), info


ClassScore = Callable[[np.ndarray, tuple[int, np.ndarray]], np.ndarray]


def class_far_group(score: ClassScore, features: np.ndarray, draws: tuple[int, np.ndarray],
                    seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """``far_group`` of one class's ``score(features, draws)``, on one BLAS and OpenMP thread:
    these are small problems (PCA to 10 dims, FastMCD on <= 2,000 points, mixtures on one score
    per sample), where a second thread costs more than it saves, and one thread sums in the same
    order on every machine."""
    with threadpool_limits(limits=1):
        return far_group(score(features, draws), seed)


def per_class_far_groups(features: np.ndarray, y: np.ndarray, score: ClassScore, rng: np.random.Generator,
                         seed: int, jobs: int = 1) -> tuple[np.ndarray, dict[str, Any], list[int]]:
    """``far_group`` of ``score(features of one class, its whitening_draws)`` for every class with
    at least MIN_CLASS samples, the classes on up to ``jobs`` processes (``score`` a module-level
    function). The draws come from ``rng`` class by class first, so the result does not depend on
    ``jobs``. Returns (flags bool (N,), a report per class, the classes with a flagged group)."""
    from joblib import Parallel, delayed

    members = [np.flatnonzero(y == label) for label in range(NUM_CLASSES)]
    judged = [label for label in range(NUM_CLASSES) if len(members[label]) >= MIN_CLASS]
    draws = {label: whitening_draws(len(members[label]), rng) for label in judged}
    # FastMCD spends its time in Python-level loops (the GIL), so the classes go to processes.
    groups = dict(zip(judged, Parallel(n_jobs=min(jobs, len(judged)) or 1)(
        delayed(class_far_group)(score, features[members[label]], draws[label], seed) for label in judged)))
    flags, per_class = np.zeros(len(y), bool), {}
    for label in range(NUM_CLASSES):
        if label not in groups:
            per_class[str(label)] = {"components": 0, "separation": 0.0, "high_share": 0.0, "flagged": 0,
                                     "skipped": f"fewer than {MIN_CLASS} samples"}
            continue
        group, info = groups[label]
        flags[members[label][group]] = True
        per_class[str(label)] = {**info, "flagged": int(group.sum())}
    return flags, per_class, [int(c) for c, info in per_class.items() if info["flagged"]]


def detection_jobs(cfg: Config) -> int:
    """Processes for the per-class fits: --threads, or every core (0). The result is the same either way."""
    return cfg.threads or os.cpu_count() or 1


def detect_activation_outliers(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config) -> Detection:
    """Per class, the far, compact group of penultimate activations (module docstring).
    Returns flags (N,) and a report per class; no runtime check. Takes no poison indices,
    count, target class or trigger."""
    start = time.perf_counter()
    seed = stage_seed(cfg.seed, "activation outliers")
    features = layer_output(model, "penultimate", x)
    flags, per_class, suspicious = per_class_far_groups(features, y, log_robust_distances, np.random.default_rng(seed),
                                                        seed, detection_jobs(cfg))
    report = {"method": "per class: penultimate activations, PCA to 10 dims, robust (MCD) Mahalanobis distance, "
                        "BIC-chosen Gaussian mixture on the log distances, far minority component flagged",
              "layer": "penultimate", "pca_dims": PCA_DIMS, "min_separation": MIN_SEPARATION,
              "per_class": per_class, "suspicious_classes": suspicious, "flagged": int(flags.sum()),
              "recovers_trigger": False, "time_s": round(time.perf_counter() - start, 3)}
    LOG.info("activation outliers: suspicious %s, %d flagged (%.1f s)", suspicious, report["flagged"], report["time_s"])
    return Detection(flags, report)
