"""Evasion attacks: compiled L-inf FGSM/PGD, ART's FGSM/PGD (the reference), and the eps/range check.

The compiled attacks follow ART's update rule exactly (sign of the input gradient of the
cross-entropy on the logits, step, clip to [0, 1], project onto the eps ball) but run the
whole PGD loop inside one TensorFlow graph per batch; tests hold them equal to ART's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import IMAGE_SHAPE, LOG, NUM_CLASSES, AttackBoundError
from .config import Config

if TYPE_CHECKING:
    import keras

@dataclass(frozen=True)
class LinfAttack:
    """Compiled functions for one model: ``perturb(x, y, x_start, eps, step, steps) -> x_adv``
    and ``labels(x) -> predicted classes``."""

    perturb: Callable[..., Any]
    labels: Callable[..., Any]


def logits_model(model: keras.Model) -> keras.Model:
    """The model up to its 'logits' layer (softmax removed).

    Gradients of the cross-entropy taken through the softmax vanish on confident samples
    (float32 saturation), which would understate every gradient attack; the logits avoid that.
    """
    import keras

    return keras.Model(model.inputs, model.get_layer("logits").output)


def art_classifier(model: keras.Model) -> Any:
    """ART TensorFlowV2Classifier on the model's logits, pixels clipped to [0, 1]."""
    import keras
    from art.estimators.classification import TensorFlowV2Classifier

    return TensorFlowV2Classifier(
        model=logits_model(model),
        nb_classes=NUM_CLASSES,
        input_shape=IMAGE_SHAPE,
        loss_object=keras.losses.CategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )


def build_fgsm_attack(model: keras.Model, eps: float, batch_size: int) -> Any:
    """ART FastGradientMethod (L-inf, untargeted) on the model's logits."""
    from art.attacks.evasion import FastGradientMethod

    return FastGradientMethod(estimator=art_classifier(model), norm=np.inf, eps=eps, targeted=False,
                              batch_size=batch_size)


def build_art_pgd(model: keras.Model, eps: float, step: float, steps: int, restarts: int, batch_size: int) -> Any:
    """ART ProjectedGradientDescent (L-inf, untargeted); random start when restarts > 0."""
    from art.attacks.evasion import ProjectedGradientDescent

    return ProjectedGradientDescent(estimator=art_classifier(model), norm=np.inf, eps=eps, eps_step=step,
                                    max_iter=steps, targeted=False, num_random_init=restarts,
                                    batch_size=batch_size, verbose=False)


def make_linf_attack(model: keras.Model) -> LinfAttack:
    """A compiled L-inf PGD for ``model``: ``steps`` signed-gradient steps of size ``step`` from
    ``x_start``, each clipped to [0, 1] and projected onto the eps ball around ``x``.

    FGSM is the special case x_start = x, step = eps, steps = 1.
    """
    import tensorflow as tf

    logits_of = logits_model(model)
    image = tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32)

    @tf.function(input_signature=[image, tf.TensorSpec([None], tf.int64), image, tf.TensorSpec([], tf.float32),
                                  tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)])
    def attack(x, y, x_start, eps, step, steps):
        x_adv = x_start
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                # A sum, not a mean: the sign is the same and tiny gradients do not underflow.
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits_of(x_adv, training=False)))
            x_adv = tf.clip_by_value(x_adv + step * tf.sign(tape.gradient(loss, x_adv)), 0.0, 1.0)
            x_adv = x + tf.clip_by_value(x_adv - x, -eps, eps)
        return x_adv

    @tf.function(input_signature=[image])
    def labels(x):
        return tf.argmax(logits_of(x, training=False), axis=1)

    return LinfAttack(perturb=attack, labels=labels)


def linf_attack(
    attack: LinfAttack,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    step: float,
    steps: int,
    restarts: int = 0,
    rng: np.random.Generator | None = None,
    batch_size: int = 64,
    return_fooled: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Untargeted L-inf attack (from ``make_linf_attack``) on (x, y); ``restarts`` > 0 runs that
    many starts, each from uniform noise in the eps ball drawn from ``rng``.

    Returns (x_adv float32 like x, fooled bool (N,) or None when not asked for). A sample counts
    as robust (fooled False) only if it survives every start; x_adv holds the first start that
    fooled the model, else the last start's result. Every x_adv is within eps of x and in [0, 1].
    """
    import tensorflow as tf

    if restarts and rng is None:
        raise ValueError("random restarts need an explicit numpy Generator")
    starts = max(restarts, 1)
    # Labels of x_adv cost one more forward pass: skip it when nobody reads them (plain FGSM).
    track = return_fooled or starts > 1
    x_adv = np.empty_like(x, dtype=np.float32)
    fooled = np.zeros(len(x), dtype=bool)
    args = (tf.constant(eps, tf.float32), tf.constant(step, tf.float32), tf.constant(steps, tf.int32))
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].astype(np.float32, copy=False)
        yb = y[i : i + batch_size]
        adv_b, done = x_adv[i : i + batch_size], fooled[i : i + batch_size]  # views, written in place
        for start in range(starts):
            # A fooled sample stays fooled: later starts attack only the survivors (same noise
            # draw as attacking all of them, so results do not depend on the batch's history).
            noise = rng.uniform(-eps, eps, size=xb.shape).astype(np.float32) if restarts else None
            todo = np.flatnonzero(~done) if start else np.arange(len(xb))
            if not len(todo):
                continue
            xs, ys = xb[todo], yb[todo]
            x0 = np.clip(xs + noise[todo], 0, 1) if restarts else xs
            adv = attack.perturb(tf.constant(xs), tf.constant(ys, tf.int64), tf.constant(x0), *args)
            adv_b[todo] = adv.numpy()
            if track:
                done[todo] |= attack.labels(adv).numpy() != ys
    return x_adv, (fooled if return_fooled else None)


def check_linf_bound(x_adv: np.ndarray, x: np.ndarray, eps: float, tol: float = 1e-6) -> dict[str, float]:
    """Raise AttackBoundError unless every |x_adv - x| <= eps and x_adv is in [0, 1]."""
    if x_adv.shape != x.shape:
        raise AttackBoundError(f"adversarial shape {x_adv.shape} != clean shape {x.shape}")
    max_perturbation = float(np.max(np.abs(x_adv - x))) if len(x) else 0.0
    lo = float(x_adv.min()) if len(x) else 0.0
    hi = float(x_adv.max()) if len(x) else 0.0
    if max_perturbation > eps + tol:
        raise AttackBoundError(f"perturbation {max_perturbation:.6f} exceeds eps {eps}")
    if lo < -tol or hi > 1 + tol:
        raise AttackBoundError(f"adversarial pixels leave [0, 1]: [{lo:.6f}, {hi:.6f}]")
    return {"max_linf": max_perturbation, "min_pixel": lo, "max_pixel": hi}


def generate_fgsm(
    model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config, label: str, chunk: int = 10_000
) -> tuple[np.ndarray, dict[str, Any]]:
    """FGSM images for (x, y) against ``model``: float32, same shape, within eps and [0, 1].

    True labels drive the attack; ``cfg.attack_backend`` picks the compiled attack or ART's.
    Returns the images and {n, time_s, eps, backend, bound_check}.
    """
    import keras

    start = time.perf_counter()
    parts = []
    attack = (build_fgsm_attack(model, cfg.fgsm_eps, cfg.attack_batch_size) if cfg.attack_backend == "art"
              else make_linf_attack(model))
    for i in range(0, len(x), chunk):
        xs, ys = x[i : i + chunk], y[i : i + chunk]
        if cfg.attack_backend == "art":
            parts.append(attack.generate(x=xs, y=keras.utils.to_categorical(ys, NUM_CLASSES)).astype(np.float32))
        else:
            parts.append(linf_attack(attack, xs, ys, cfg.fgsm_eps, cfg.fgsm_eps, 1,
                                     batch_size=cfg.attack_batch_size, return_fooled=False)[0])
        LOG.info("FGSM %s: %d/%d images", label, min(i + chunk, len(x)), len(x))
    x_adv = np.concatenate(parts) if parts else np.empty_like(x)
    elapsed = time.perf_counter() - start
    bound = check_linf_bound(x_adv, x, cfg.fgsm_eps)
    return x_adv, {"n": int(len(x)), "time_s": round(elapsed, 3), "eps": cfg.fgsm_eps,
                   "backend": cfg.attack_backend, "bound_check": bound}


def generate_pgd(
    model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config, rng: np.random.Generator, label: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """White-box L-inf PGD (random starts, ``cfg.pgd_restarts`` of them) against ``model``.

    Returns the worst-case images (within pgd_eps and [0, 1]) and {n, eps, step, steps,
    restarts, time_s, robust_accuracy, bound_check}; robust means surviving every start.
    """
    start = time.perf_counter()
    x_adv, fooled = linf_attack(make_linf_attack(model), x, y, cfg.pgd_eps, cfg.pgd_step_size, cfg.pgd_steps,
                                restarts=cfg.pgd_restarts, rng=rng, batch_size=cfg.attack_batch_size)
    elapsed = time.perf_counter() - start
    info = {"n": int(len(x)), "eps": cfg.pgd_eps, "step_size": cfg.pgd_step_size, "steps": cfg.pgd_steps,
            "restarts": cfg.pgd_restarts, "random_start": True, "time_s": round(elapsed, 3),
            "robust_accuracy": float(np.mean(~fooled)) if len(x) else float("nan"),
            "bound_check": check_linf_bound(x_adv, x, cfg.pgd_eps)}
    LOG.info("PGD-%d %s: robust accuracy %.4f on %d images (%.1f s)", cfg.pgd_steps, label,
             info["robust_accuracy"], len(x), elapsed)
    return x_adv, info
