"""Defenses: the seed's static FGSM adversarial training set, and adversarial training with
examples generated per batch against the model being trained (FGSM from a random start,
Wong et al. 2020; PGD, Madry et al. 2018)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .attacks import make_linf_attack
from .common import NUM_CLASSES
from .config import Config
from .model import build_baseline_cnn, fit_and_record, seed_everything, stage_seed

if TYPE_CHECKING:
    import keras

def mix_clean_and_adversarial(
    x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The seed's training set: clean and adversarial copies of (x, y) together, shuffled (2N)."""
    order = rng.permutation(2 * len(x))
    return np.concatenate([x, x_adv])[order], np.concatenate([y, y])[order]


def attack_schedule(method: str, cfg: Config) -> tuple[float, int]:
    """(step size, steps) of the per-batch attack: FGSM-RS takes one step of 1.25 eps (Wong et
    al.); PGD takes cfg.pgd_train_steps steps of 2.5 eps / steps (Madry et al.)."""
    if method == "fgsm-rs":
        return 1.25 * cfg.pgd_eps, 1
    if method == "pgd":
        return 2.5 * cfg.pgd_eps / cfg.pgd_train_steps, cfg.pgd_train_steps
    raise ValueError(f"unknown per-batch defense {method!r}")


def train_per_batch_adversarial(
    x: np.ndarray, y: np.ndarray, cfg: Config, method: str, label: str
) -> tuple[keras.Model, dict[str, Any]]:
    """A fresh seed CNN trained only on adversarial examples (eps = cfg.pgd_eps, random start)
    crafted for each batch against the model's current weights. Returns (model, training record)."""
    import keras
    import tensorflow as tf

    seed_everything(stage_seed(cfg.seed, label))
    rng = np.random.default_rng(stage_seed(cfg.seed, f"{label}:batches"))
    model = build_baseline_cnn(cfg.learning_rate)
    attack = make_linf_attack(model)
    step, steps = attack_schedule(method, cfg)
    eps, batch = cfg.pgd_eps, cfg.batch_size
    consts = (tf.constant(eps, tf.float32), tf.constant(step, tf.float32), tf.constant(steps, tf.int32))

    class AdversarialBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.order = rng.permutation(len(x))

        def __len__(self) -> int:
            return -(-len(x) // batch)

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            idx = self.order[i * batch : (i + 1) * batch]
            xb, yb = x[idx], y[idx]
            x0 = np.clip(xb + rng.uniform(-eps, eps, size=xb.shape).astype(np.float32), 0.0, 1.0)
            x_adv = attack.perturb(tf.constant(xb), tf.constant(yb, tf.int64), tf.constant(x0), *consts)
            return x_adv.numpy(), keras.utils.to_categorical(yb, NUM_CLASSES)

        def on_epoch_end(self) -> None:
            self.order = rng.permutation(len(x))

    record = fit_and_record(model, cfg, label, len(x), x=AdversarialBatches())
    return model, {**record, "method": method, "eps": eps, "step_size": step, "steps": steps}
