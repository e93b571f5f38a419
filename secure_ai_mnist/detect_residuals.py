"""A blind detector for dirty-label poisons that carry one shared trigger: shared pixel residuals.

A dirty-label poison is an image of one class labelled as another, with the trigger added. Two
facts single it out, whatever the trigger looks like (a corner patch, a blended noise image):

1. its label disagrees with its nearest images in pixel space (they are images of its true
   class; the same k-NN test as label_consistency): a candidate;
2. its residual (the image minus the mean of those neighbours) holds the trigger, and the
   trigger is the same in every poison, so the residuals of the poisons point the same way.
   Clean candidates (odd-looking or ambiguous digits) differ from their neighbours each in its
   own way.

Per class, each candidate's score is the mean cosine similarity of its residual to its
TOP_MATCHES most similar candidates of the same label. The cut is activation_outliers' (the top
components of a BIC-chosen Gaussian mixture on the scores, separated by Ashman's D >=
MIN_SEPARATION and holding less than half of the class), and the group must stand out from the
rest of the training set too: its median score at least MIN_HEIGHT robust standard deviations
above the candidates of all other classes.

A trigger of a few pixels (a 2x2 patch is 4 of 784) drowns in the shape differences that make up
the rest of a residual, so a second test on the same residuals counts pixel by pixel
(residual_pixels.py): candidates bright at the pixels where an outsized share of their class's
candidates are bright. The detector flags the union of both tests.

It reads only the data, not the model. What it cannot see: clean-label poisons (their labels
agree with their neighbours), triggers that differ from image to image (warps: label_consistency
covers those when they fill a class), triggers faint against the digits (SIG: activation_outliers
covers it), and groups of fewer than about TOP_MATCHES poisons. It gives no runtime check.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import LOG, NUM_CLASSES
from .config import Config
from .detect_activations import MIN_SEPARATION, far_group
from .detect_knn import disagreement, pixel_neighbours
from .detector_api import Detection
from .model import stage_seed
from .residual_pixels import BRIGHT, HOT_FACTOR, MIN_GROUP, pixel_groups

if TYPE_CHECKING:
    import keras

TOP_MATCHES = 10
MIN_CANDIDATES = 2 * TOP_MATCHES  # fewer candidates in a class: not judged (too few to fit a mixture)
# The flagged group's median score, in robust SDs (1.4826 MAD) above the candidates of the other
# classes (the judged class is left out, so its own poisons cannot widen the yardstick). Mixtures
# fitted to a few dozen clean candidates split them by chance (D >= 4 in 2 of 7 classes on 6,000
# clean images), but such groups sit inside the clean spread: the highest single clean candidate
# measured stood 4.4 SDs up (30,000 clean images), shared-trigger groups 5-7 SDs.
MIN_HEIGHT = 4.0


def residuals_from(x: np.ndarray, neighbours: np.ndarray, rows: int = 2048) -> np.ndarray:
    """Each image minus the mean of its neighbours' images, flattened: (N, 784) float32 in [-1, 1].
    ``rows`` images at a time: gathering every neighbour at once took (N, k, 784) floats (1.9 GB
    on 60,000 images, the full run's peak) and four times as long; each row's sum is the same."""
    flat = x.reshape(len(x), -1).astype(np.float32)
    residuals = np.empty_like(flat)
    for start in range(0, len(flat), rows):
        part = slice(start, start + rows)
        residuals[part] = flat[part] - flat[neighbours[part]].mean(axis=1)
    return residuals


def unit_rows(residuals: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (a zero row stays zero)."""
    return residuals / np.maximum(np.linalg.norm(residuals, axis=1, keepdims=True), 1e-9)


def shared_scores(residuals: np.ndarray) -> np.ndarray:
    """Per row of ``residuals`` (M, D) with unit rows, M > TOP_MATCHES: the mean cosine
    similarity to its TOP_MATCHES most similar other rows, in [-1, 1]: (M,)."""
    similarity = residuals @ residuals.T
    np.fill_diagonal(similarity, -np.inf)
    return np.sort(similarity, axis=1)[:, -TOP_MATCHES:].mean(axis=1)


def class_scores(residuals: np.ndarray, candidates: np.ndarray,
                 y: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per class with at least MIN_CANDIDATES candidates: (candidate indices, their shared_scores)."""
    out = {}
    for label in range(NUM_CLASSES):
        members = np.flatnonzero(candidates & (y == label))
        if len(members) >= MIN_CANDIDATES:
            out[label] = (members, shared_scores(residuals[members]))
    return out


def group_height(group: np.ndarray, others: np.ndarray) -> float:
    """How far the median of ``group``'s scores stands above ``others`` (the candidates of every
    other class), in robust standard deviations (1.4826 MAD) of ``others``; 0 for an empty group."""
    if not len(group):
        return 0.0
    centre = float(np.median(others))
    spread = max(1.4826 * float(np.median(np.abs(others - centre))), 1e-6)
    return (float(np.median(group)) - centre) / spread


def direction_groups(units: np.ndarray, y: np.ndarray, candidates: np.ndarray,
                     seed: int) -> tuple[np.ndarray, dict[str, dict[str, Any]]]:
    """The whole-residual test over every class, from the unit residuals (N, 784), labels and
    candidates: flags bool (N,) and a report per class."""
    scored = class_scores(units, candidates, y)
    flags, per_class = np.zeros(len(y), bool), {}
    for label in range(NUM_CLASSES):
        if label not in scored or len(scored) < 2:
            per_class[str(label)] = {"candidates": int(np.sum(candidates & (y == label))), "flagged": 0,
                                     "skipped": f"fewer than {MIN_CANDIDATES} candidates in this class or in all others"}
            continue
        members, scores = scored[label]
        group, info = far_group(scores, seed, population=int(np.sum(y == label)))
        height = group_height(scores[group], np.concatenate([s for c, (_, s) in scored.items() if c != label]))
        group &= height >= MIN_HEIGHT
        flags[members[group]] = True
        per_class[str(label)] = {"candidates": len(members), **info, "group_height": round(height, 3),
                                 "flagged": int(group.sum())}
    return flags, per_class


def detect_shared_residuals(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config) -> Detection:
    """Per class, the label-inconsistent images whose pixel residuals share one direction, or
    share bright pixels with an outsized share of their class's candidates (module docstring).
    ``model`` is not used. Returns flags (N,) and a report per class; no runtime check. Takes no
    poison indices, count, target class or trigger."""
    start = time.perf_counter()
    seed = stage_seed(cfg.seed, "shared residuals")
    neighbours = pixel_neighbours(x, seed)
    candidates = disagreement(y, neighbours)
    residuals = residuals_from(x, neighbours)
    by_direction, per_class = direction_groups(unit_rows(residuals), y, candidates, seed)
    by_pixels, pixel_report = pixel_groups(residuals, y, candidates)
    for label, info in pixel_report.items():
        per_class[label]["pixels"] = info
    flags = by_direction | by_pixels
    suspicious = sorted({int(label) for label in np.unique(y[flags])})
    report = {"method": "pixel k-NN label disagreement (candidates); per class, the mean cosine similarity of each "
                        f"candidate's residual from its neighbours to its {TOP_MATCHES} most similar candidates; "
                        "BIC-chosen Gaussian mixture, far minority component flagged when its median stands "
                        f">= {MIN_HEIGHT} robust SDs above the other classes' candidates; or (pixel test) candidates "
                        f"bright (residual > {BRIGHT}) at half of their class's hot pixels: pixels where a share of "
                        f"the class's candidates >= {HOT_FACTOR} x any other class's highest share is bright, "
                        f"held by >= {MIN_GROUP} candidates",
              "top_matches": TOP_MATCHES, "min_separation": MIN_SEPARATION, "min_height": MIN_HEIGHT,
              "bright": BRIGHT, "hot_factor": HOT_FACTOR, "min_group": MIN_GROUP, "per_class": per_class,
              "flagged_by_direction": int(by_direction.sum()), "flagged_by_pixels": int(by_pixels.sum()),
              "suspicious_classes": suspicious, "flagged": int(flags.sum()), "recovers_trigger": False,
              "time_s": round(time.perf_counter() - start, 3)}
    LOG.info("shared residuals: suspicious %s, %d flagged (%.1f s)", suspicious, report["flagged"], report["time_s"])
    return Detection(flags, report)
