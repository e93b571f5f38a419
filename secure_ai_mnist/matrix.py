"""The backdoor matrix (--backdoor-matrix): every trigger family at two poison rates, each point
a poisoned model faced by every detector, blind, and by the one configured defense's removal.

The target class and the trigger's place (badnets: corner, margin, size, pattern; blended and
wanet: the random draw; sig: the frequency) are drawn per point from the run's seed, so that no
defense is tuned to one class or one corner. The poison rates are fixed per family, chosen so
that the higher rate plants a strong backdoor in the seed CNN (measured; see the README).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .backdoor import apply_poison, attack_success_rate, select_cross_indices, select_poison_indices
from .model import stage_seed
from .triggers import CORNERS, PATTERNS, TriggerSpec, stamp

# poison share of the training set per family: (low, high)
MATRIX_RATES = {"badnets": (0.002, 0.005), "blended": (0.005, 0.01), "sig": (0.005, 0.01), "wanet": (0.05, 0.1)}
WANET_STRENGTH = 1.0  # at WaNet's MNIST default of 0.5 the seed CNN learned 87% ASR from 10% poisons in 3 epochs


@dataclass(frozen=True)
class MatrixPoint:
    """One attack of the matrix: its name, family, poison count, target class and trigger."""

    label: str
    family: str
    poison_count: int
    target_class: int
    spec: TriggerSpec

    def record(self) -> dict[str, Any]:
        return {"label": self.label, "family": self.family, "poison_count": self.poison_count,
                "target_class": self.target_class, "trigger": self.spec.describe()}


def draw_spec(family: str, rng: np.random.Generator) -> TriggerSpec:
    """A trigger of ``family`` whose place and random parts are drawn from ``rng``."""
    seed = int(rng.integers(2**31))
    if family == "badnets":
        return TriggerSpec(size=int(rng.integers(3, 5)), margin=int(rng.integers(0, 3)),
                           corner=str(rng.choice(CORNERS)), pattern=str(rng.choice(PATTERNS)), seed=seed)
    if family == "sig":
        return TriggerSpec(family="sig", frequency=float(rng.integers(4, 9)), seed=seed)
    if family == "wanet":
        return TriggerSpec(family="wanet", strength=WANET_STRENGTH, seed=seed)
    return TriggerSpec(family=family, seed=seed)


def matrix_points(n_train: int, seed: int) -> list[MatrixPoint]:
    """Every family of MATRIX_RATES at both rates, target class and trigger drawn from ``seed``."""
    rng = np.random.default_rng(stage_seed(seed, "backdoor matrix"))
    points = []
    for family, rates in MATRIX_RATES.items():
        for rate in rates:
            target, spec = int(rng.integers(10)), draw_spec(family, rng)
            count = max(1, round(rate * n_train))
            points.append(MatrixPoint(f"{family}_{100 * rate:g}pct", family, count, target, spec))
    return points


def poisoned_set(x: np.ndarray, y: np.ndarray, point: MatrixPoint,
                 seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(poison indices, poisoned x, poisoned y) of ``point`` on the training set (x, y); the
    same seed and point always give the same set."""
    rng = np.random.default_rng(stage_seed(seed, f"matrix:{point.label}"))
    idx = select_poison_indices(y, point.poison_count, point.target_class, rng, point.spec.clean_label)
    cross = select_cross_indices(len(y), idx, point.spec, 2.0, rng)
    return (idx, *apply_poison(x, y, idx, point.spec, point.target_class, cross, rng))


def attack_record(predict: Any, x_test: np.ndarray, y_test: np.ndarray, point: MatrixPoint) -> dict[str, float]:
    """Clean accuracy and ASR of ``predict`` (images -> labels) against ``point``'s trigger."""
    return {"clean_accuracy": float(np.mean(predict(x_test) == y_test)),
            "attack_success_rate": attack_success_rate(predict(stamp(x_test, point.spec)), y_test,
                                                       point.target_class)}


def runtime_record(check: Any, x_test: np.ndarray, y_test: np.ndarray, point: MatrixPoint) -> dict[str, Any]:
    """The configured defense's runtime input check at ``point``: the share of triggered test images
    (those not already of the target class) and of clean test images it flags; None for both when
    the defense recovered no trigger (``check`` None or empty), and the record says so."""
    if check is None or not len(check.classes):
        return {"trigger_recovered": False, "flag_rate_triggered": None, "flag_rate_clean": None}
    triggered = stamp(x_test[y_test != point.target_class], point.spec)
    return {"trigger_recovered": True, "flag_rate_triggered": float(check.flags(triggered).mean()),
            "flag_rate_clean": float(check.flags(x_test).mean())}


def f1_table(points: list[dict[str, Any]], detectors: list[str]) -> np.ndarray:
    """(points, detectors) F1 scores from the scored points."""
    return np.array([[p["detection"][name]["f1"] for name in detectors] for p in points], float)
