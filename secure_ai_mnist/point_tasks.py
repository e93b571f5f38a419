"""The independent work of the poison sweep and the backdoor matrix, one function per kind of
task, each runnable in this process or in a Ray worker (``executor.run_tasks``).

A task gets one job (what to build) and the shared clean training set (put in Ray's object
store once), builds its training set from the clean one with the job's recipe, and returns
plain arrays: a model's weights, or a detector's flags. It returns no Keras object, so its
result crosses processes and machines cheaply. A task is seeded by its own label
(``model.train_cnn``), so it gives the same result wherever and in whatever order it runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import Config

if TYPE_CHECKING:
    import keras

Recipe = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
Clean = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class TrainJob:
    """Train a fresh seed CNN, seeded by ``label``, on ``recipe(x_clean, y_clean)``."""

    cfg: Config
    label: str
    recipe: Recipe


@dataclass(frozen=True)
class DetectJob:
    """Every detector, blind, on the model with ``weights`` and ``recipe(x_clean, y_clean)``."""

    cfg: Config
    weights: list[np.ndarray]
    recipe: Recipe
    references: bool = True


def _start(cfg: Config) -> None:
    from .model import configure_tensorflow

    configure_tensorflow(cfg.threads)  # a Ray worker starts TensorFlow itself


def model_from_weights(weights: list[np.ndarray], learning_rate: float = 1e-3) -> keras.Model:
    """The seed CNN holding ``weights`` (its predictions equal those of the model they came from)."""
    from .model import build_baseline_cnn

    model = build_baseline_cnn(learning_rate)
    model.set_weights(weights)
    return model


def train_task(job: TrainJob, clean: Clean) -> tuple[list[np.ndarray], dict[str, Any]]:
    """(weights, training record) of the model trained for ``job``."""
    from .model import train_cnn

    _start(job.cfg)
    model, info = train_cnn(*job.recipe(*clean), job.cfg, job.label)
    return model.get_weights(), info


def detect_task(job: DetectJob, clean: Clean) -> tuple[np.ndarray, dict[str, Any]]:
    """``detection.run_detectors``' (flags, info) for ``job``: the model and its training set only."""
    from .detection import run_detectors

    _start(job.cfg)
    model = model_from_weights(job.weights, job.cfg.learning_rate)
    return run_detectors(model, *job.recipe(*clean), job.cfg, references=job.references)


def matrix_recipe(x: np.ndarray, y: np.ndarray, point: Any, seed: int,
                  keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A matrix point's poisoned training set, less the removed images when ``keep`` is given."""
    from .matrix import poisoned_set

    _, x_p, y_p = poisoned_set(x, y, point, seed)
    return (x_p, y_p) if keep is None else (x_p[keep], y_p[keep])


def sweep_recipe(x: np.ndarray, y: np.ndarray, picks: np.ndarray, cfg: Config, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A sweep point's training set: ``picks`` poisoned with the configured trigger at ``size`` pixels."""
    from .backdoor import poison_dataset

    return poison_dataset(x, y, picks, dataclasses.replace(cfg, trigger_size=size))
