"""The pixel-wise test of shared_residuals: candidates bright at their class's hot pixels.

The whole-residual test compares residual directions, and a trigger of a few pixels (a 2x2
patch is 4 of 784) drowns there in the shape differences between a digit and its neighbours.
Counted pixel by pixel, it does not: every poison's residual is bright at the trigger's pixels,
while the bright residuals of clean candidates (odd-looking digits) lie on strokes that move
from image to image.

1. Per class and pixel, the share of the class's candidates whose residual exceeds BRIGHT there.
2. A class's hot pixels: a share at least HOT_FACTOR times the highest share that any other
   class reaches at any pixel (leave-one-class-out, so a class's own poisons cannot raise its
   yardstick), held by at least MIN_GROUP candidates.
3. Flagged: the class's candidates bright at half of its hot pixels or more, when they are at
   least MIN_GROUP.

It shares the candidates and residuals of detect_residuals (one k-NN search for both tests).
What it cannot see: triggers fainter than BRIGHT against the true class (blended noise, SIG),
triggers that move (warps) and groups too small to outnumber a class's odd digits at one pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import NUM_CLASSES

BRIGHT = 0.5  # a residual this far above the neighbours' mean: the image has ink where they have none
MIN_GROUP = 10  # candidates bright at a pixel, at least, for it to be hot; and the smallest flagged group
MIN_CANDIDATES = 2 * MIN_GROUP  # fewer candidates in a class: not judged
# Measured (data only, the highest share of a class over the highest of the others): unpoisoned
# sets of 6,000-60,000 real training images 0.97-1.33 in their top class; the 2x2 corner square
# with 100 poisons in 60,000 images 2.57 (50 poisons: 1.65, not flagged), 3x3 random patch at
# margin 0 with 20 poisons in 10,000 images 2.63.
HOT_FACTOR = 2.0


def bright_shares(bright: np.ndarray, candidates: np.ndarray,
                  y: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per class with at least MIN_CANDIDATES candidates: (candidate indices, the share (784,) of
    them bright at each pixel, in [0, 1])."""
    out = {}
    for label in range(NUM_CLASSES):
        members = np.flatnonzero(candidates & (y == label))
        if len(members) >= MIN_CANDIDATES:
            out[label] = (members, bright[members].mean(axis=0))
    return out


def hot_pixels(shares: np.ndarray, count: int, yardstick: float) -> np.ndarray:
    """Pixel indices whose share (of ``count`` candidates) is at least HOT_FACTOR x ``yardstick``
    and held by at least MIN_GROUP candidates."""
    return np.flatnonzero((shares >= HOT_FACTOR * yardstick) & (np.rint(shares * count) >= MIN_GROUP))


def judge_class(label: int, scored: dict[int, tuple[np.ndarray, np.ndarray]],
                bright: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Indices of the candidates of ``label`` bright at half of its hot pixels or more (none when
    fewer than MIN_GROUP), and the class's report. ``scored`` must hold another class."""
    members, shares = scored[label]
    yardstick = max(float(s.max()) for c, (_, s) in scored.items() if c != label)
    hot = hot_pixels(shares, len(members), yardstick)
    flagged = members[bright[members][:, hot].sum(axis=1) * 2 >= len(hot)] if len(hot) else members[:0]
    if len(flagged) < MIN_GROUP:
        flagged = members[:0]
    info = {"top_share": round(float(shares.max()), 4), "yardstick": round(yardstick, 4),
            "ratio": round(float(shares.max()) / max(yardstick, 1e-9), 3),
            "hot_pixels": [list(divmod(int(p), 28)) for p in hot], "flagged": len(flagged)}
    return flagged, info


def pixel_groups(residuals: np.ndarray, y: np.ndarray,
                 candidates: np.ndarray) -> tuple[np.ndarray, dict[str, dict[str, Any]]]:
    """The test over every class, from each image's residual (N, 784) (the image minus the mean of
    its pixel neighbours), the labels and the candidates: flags bool (N,) and a report per judged class."""
    bright = residuals > BRIGHT
    scored = bright_shares(bright, candidates, y)
    flags, per_class = np.zeros(len(y), bool), {}
    if len(scored) < 2:
        return flags, per_class
    for label in scored:
        flagged, per_class[str(label)] = judge_class(label, scored, bright)
        flags[flagged] = True
    return flags, per_class
