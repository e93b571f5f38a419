"""What every poison detector shares: its signature, its return type, and the runtime check.

A detector is ``detect(model, x, y, cfg) -> Detection``: the model trained on the training set,
the training images (N, 28, 28, 1) in [0, 1] and labels (N,), and the run's configuration. It
never receives the poison indices, the poison count, the target class or the trigger; those
reach only the scoring code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .common import NUM_CLASSES


@dataclass(frozen=True)
class Detection:
    """What every detector returns: flags (bool per training sample), its report (JSON-ready),
    and the recovered trigger as a runtime check, or None when it recovers no trigger."""

    flags: np.ndarray
    report: dict[str, Any]
    check: TriggerCheck | None = None


@dataclass(frozen=True)
class TriggerCheck:
    """The recovered triggers of the suspicious classes: masks and patterns (K, 28, 28, 1) in
    [0, 1], and each class's score threshold. K = 0 means no backdoor was found."""

    classes: np.ndarray
    masks: np.ndarray
    patterns: np.ndarray
    thresholds: np.ndarray

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(N, K) trigger scores of images x (N, 28, 28, 1) against each suspicious class."""
        return np.stack([trigger_scores(x, m, p) for m, p in zip(self.masks, self.patterns)], axis=1) \
            if len(self.classes) else np.zeros((len(x), 0))

    def flags(self, x: np.ndarray) -> np.ndarray:
        """True for each image that carries a recovered trigger (score above its class's threshold)."""
        return np.any(self.scores(x) > self.thresholds, axis=1)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"classes": self.classes, "masks": self.masks, "patterns": self.patterns, "thresholds": self.thresholds}

    def to_info(self) -> dict[str, Any]:
        """A JSON-ready copy (float32 masks and float64 thresholds round-trip exactly)."""
        return {name: array.tolist() for name, array in self.arrays().items()}

    @classmethod
    def from_arrays(cls, arrays: Any) -> TriggerCheck:
        """From ``arrays()``/``to_info()`` output or an .npz; shapes and value ranges checked."""
        classes = np.asarray(arrays["classes"], np.int64).reshape(-1)
        k = len(classes)
        masks = np.asarray(arrays["masks"], np.float32).reshape(k, 28, 28, 1)
        patterns = np.asarray(arrays["patterns"], np.float32).reshape(k, 28, 28, 1)
        thresholds = np.asarray(arrays["thresholds"], np.float64).reshape(k)
        if not (np.all((classes >= 0) & (classes < NUM_CLASSES)) and np.all((masks >= 0) & (masks <= 1))
                and np.all((patterns >= 0) & (patterns <= 1)) and np.all(np.isfinite(thresholds))):
            raise ValueError("trigger check arrays out of range")
        return cls(classes, masks, patterns, thresholds)


def trigger_scores(x: np.ndarray, mask: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Per image, the mask-weighted share of the pattern it carries: 1 - mean |x - pattern|
    over the mask, in [0, 1] for x, mask and pattern in [0, 1]."""
    weight = np.asarray(mask, np.float64)
    match = 1.0 - np.abs(np.asarray(x, np.float64) - pattern)
    return np.tensordot(match, weight, axes=((1, 2, 3), (0, 1, 2))) / max(float(weight.sum()), 1e-12)
