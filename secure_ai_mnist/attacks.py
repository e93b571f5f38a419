"""Evasion attacks: ART FGSM and the epsilon/range sanity check."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import IMAGE_SHAPE, LOG, NUM_CLASSES, AttackBoundError
from .config import Config

if TYPE_CHECKING:
    import keras

def build_fgsm_attack(model: keras.Model, eps: float, batch_size: int) -> Any:
    """ART FastGradientMethod (L-inf, untargeted) on the model's logits, pixels clipped to [0, 1]."""
    import keras
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import TensorFlowV2Classifier

    # Gradients of the cross-entropy taken through the softmax vanish on confident samples
    # (float32 saturation), which would understate FGSM; the logits avoid that.
    logits_model = keras.Model(model.inputs, model.get_layer("logits").output)
    classifier = TensorFlowV2Classifier(
        model=logits_model,
        nb_classes=NUM_CLASSES,
        input_shape=IMAGE_SHAPE,
        loss_object=keras.losses.CategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )
    return FastGradientMethod(estimator=classifier, norm=np.inf, eps=eps, targeted=False, batch_size=batch_size)


def check_linf_bound(x_adv: np.ndarray, x: np.ndarray, eps: float, tol: float = 1e-6) -> dict[str, float]:
    """Raise AttackBoundError unless every |x_adv - x| <= eps and x_adv is in [0, 1]."""
    max_perturbation = float(np.max(np.abs(x_adv - x))) if len(x) else 0.0
    lo = float(x_adv.min()) if len(x) else 0.0
    hi = float(x_adv.max()) if len(x) else 0.0
    if x_adv.shape != x.shape:
        raise AttackBoundError(f"adversarial shape {x_adv.shape} != clean shape {x.shape}")
    if max_perturbation > eps + tol:
        raise AttackBoundError(f"perturbation {max_perturbation:.6f} exceeds eps {eps}")
    if lo < -tol or hi > 1 + tol:
        raise AttackBoundError(f"adversarial pixels leave [0, 1]: [{lo:.6f}, {hi:.6f}]")
    return {"max_linf": max_perturbation, "min_pixel": lo, "max_pixel": hi}


def generate_fgsm(
    model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config, label: str, chunk: int = 10_000
) -> tuple[np.ndarray, dict[str, Any]]:
    """FGSM images for (x, y) against ``model``: float32, same shape, within eps and [0, 1].

    True labels drive the attack. Returns the images and {time_s, n, bound check}.
    """
    import keras

    attack = build_fgsm_attack(model, cfg.fgsm_eps, cfg.attack_batch_size)
    y_onehot = keras.utils.to_categorical(y, NUM_CLASSES)
    start = time.perf_counter()
    parts = []
    for i in range(0, len(x), chunk):
        parts.append(attack.generate(x=x[i : i + chunk], y=y_onehot[i : i + chunk]).astype(np.float32))
        LOG.info("FGSM %s: %d/%d images", label, min(i + chunk, len(x)), len(x))
    x_adv = np.concatenate(parts) if parts else np.empty_like(x)
    elapsed = time.perf_counter() - start
    bound = check_linf_bound(x_adv, x, cfg.fgsm_eps)
    return x_adv, {"n": int(len(x)), "time_s": round(elapsed, 3), "eps": cfg.fgsm_eps, "bound_check": bound}
