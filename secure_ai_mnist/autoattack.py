"""Robust accuracy to the AutoAttack standard (Croce and Hein 2020), and attack-failure checks.

The ensemble of the standard version: APGD with the cross-entropy loss, targeted APGD with the
DLR loss and targeted FAB (``fab.py``) against each of the top-k other classes, then the
black-box Square attack, compiled here and held against ART's SquareAttack in the tests. Each
attack sees only the points still robust, and a point is robust only if it survives all of
them (worst case per point). Every headline figure is on the points that met all four attacks.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from collections.abc import Callable

from .attacks import check_linf_bound, logits_model
from .common import IMAGE_SHAPE, LOG, NUM_CLASSES
from .config import Config
from .fab import make_fab, run_fab

if TYPE_CHECKING:
    import keras


def apgd_checkpoints(n_iter: int) -> np.ndarray:
    """APGD's checkpoints w_j (Croce and Hein 2020, section 3.2): p_0 = 0, p_1 = 0.22 and
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), in whole iterations: the first span is
    0.22 n, each next one 0.03 n shorter but at least 0.06 n (each at least 1)."""
    span, shrink, floor = max(int(0.22 * n_iter), 1), max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)
    marks = [0]
    while marks[-1] + span <= n_iter:
        marks.append(marks[-1] + span)
        span = max(span - shrink, floor)
    return np.array(marks)


def apgd_loss(logits_of: Callable[..., Any], loss: str) -> Callable[..., Any]:
    """APGD's per-sample loss on the logits of ``logits_of`` (inference mode): "ce" or
    "dlr-targeted" (see ``make_apgd``). The returned ``f(x_adv, y, target)`` gives (per-sample
    loss (N,), its input gradient (N, 28, 28, 1), misclassified (N,) bool)."""
    import tensorflow as tf

    def loss_and_grad(x_adv, y, target):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = logits_of(x_adv, training=False)
            if loss == "ce":
                per_sample = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
            else:
                z = tf.sort(logits, axis=1, direction="DESCENDING")
                z_y = tf.gather(logits, y, batch_dims=1)
                z_t = tf.gather(logits, target, batch_dims=1)
                per_sample = -(z_y - z_t) / (z[:, 0] - (z[:, 2] + z[:, 3]) / 2 + 1e-12)
            total = tf.reduce_sum(per_sample)
        return per_sample, tape.gradient(total, x_adv), tf.argmax(logits, axis=1) != y

    return loss_and_grad


def make_apgd(model: keras.Model, loss: str) -> Callable[..., Any]:
    """A compiled APGD (Croce and Hein 2020) for ``model`` on its logits, L-inf, inference mode.

    ``loss``: "ce" (untargeted cross-entropy) or "dlr-targeted" (the targeted DLR loss
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)). The returned function
    ``apgd(x, y, target, x_start, eps, checkpoint_len) -> (x_adv, fooled)`` runs
    len(checkpoint_len) iterations from ``x_start``: step 2 eps, momentum 0.75, step halved at
    each checkpoint (checkpoint_len[k] > 0 marks one, holding the iterations since the last)
    when fewer than 75% of those steps raised the loss, or when the step was not halved at
    the last checkpoint and the best loss has not moved since; then the walk restarts from the
    best point. It stops early once every sample of the batch is misclassified. Returns the
    first misclassified point found per sample (else the best-loss point), within eps of x and
    in [0, 1], and whether it is misclassified.
    """
    import tensorflow as tf

    if loss not in ("ce", "dlr-targeted"):
        raise ValueError(f"unknown APGD loss {loss!r}")
    loss_and_grad = apgd_loss(logits_model(model), loss)
    image = tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32)
    label = tf.TensorSpec([None], tf.int64)

    @tf.function(input_signature=[image, label, label, image, tf.TensorSpec([], tf.float32),
                                  tf.TensorSpec([None], tf.float32)])
    def apgd(x, y, target, x_start, eps, checkpoint_len):
        def project(v):
            return x + tf.clip_by_value(tf.clip_by_value(v, 0.0, 1.0) - x, -eps, eps)

        def per_sample(flag, a, b):  # choose a where flag (N,) holds, else b
            return tf.where(tf.reshape(flag, [-1] + [1] * (len(a.shape) - 1)), a, b)

        n = tf.shape(x)[0]
        loss_k, grad, fooled = loss_and_grad(x_start, y, target)
        x_k, x_prev, x_best, grad_best, loss_best = x_start, x_start, x_start, grad, loss_k
        x_found = x_start
        eta = tf.fill([n], 2.0 * eps)
        increases = tf.zeros([n])
        best_at_check, halved_at_check = loss_best, tf.zeros([n], tf.bool)
        for k in tf.range(tf.shape(checkpoint_len)[0]):
            if tf.reduce_all(fooled):  # robust accuracy is all we report: a batch with no survivor is done
                break
            z = project(x_k + tf.reshape(eta, [-1, 1, 1, 1]) * tf.sign(grad))
            momentum = tf.where(k > 0, 0.75, 1.0)  # the first step has no previous step to follow
            x_new = project(x_k + momentum * (z - x_k) + (1.0 - momentum) * (x_k - x_prev))
            loss_new, grad_new, fooled_new = loss_and_grad(x_new, y, target)
            x_found = per_sample(fooled_new & ~fooled, x_new, x_found)
            fooled = fooled | fooled_new
            increases += tf.cast(loss_new > loss_k, tf.float32)
            better = loss_new > loss_best
            x_best, grad_best = per_sample(better, x_new, x_best), per_sample(better, grad_new, grad_best)
            loss_best = tf.where(better, loss_new, loss_best)
            x_prev, x_k, loss_k, grad = x_k, x_new, loss_new, grad_new
            at_check = tf.fill([n], checkpoint_len[k] > 0)
            halve = at_check & ((increases < 0.75 * checkpoint_len[k]) | (~halved_at_check & (best_at_check >= loss_best)))
            eta = tf.where(halve, eta / 2.0, eta)
            x_k, x_prev = per_sample(halve, x_best, x_k), per_sample(halve, x_best, x_prev)
            grad, loss_k = per_sample(halve, grad_best, grad), tf.where(halve, loss_best, loss_k)
            increases = tf.where(at_check, 0.0, increases)
            best_at_check = tf.where(at_check, loss_best, best_at_check)
            halved_at_check = tf.where(at_check, halve, halved_at_check)
        return per_sample(fooled, x_found, x_best), fooled

    return apgd


def apgd_schedule(n_iter: int) -> np.ndarray:
    """The ``checkpoint_len`` argument of ``make_apgd``'s function for ``n_iter`` iterations."""
    marks = apgd_checkpoints(n_iter)
    spans = np.zeros(n_iter, np.float32)
    for previous, mark in zip(marks[:-1], marks[1:]):
        if 0 < mark <= n_iter:
            spans[mark - 1] = mark - previous
    return spans


ATTACKS = "APGD-CE, APGD-T (DLR, top-k target classes), FAB-T (top-k target classes), Square"


def wilson_ci95(successes: int, n: int) -> list[float]:
    """95% Wilson score interval of a binomial proportion (SciPy's), [nan, nan] when n is 0."""
    if n == 0:
        return [float("nan"), float("nan")]
    from scipy.stats import binomtest

    interval = binomtest(int(successes), int(n)).proportion_ci(0.95, method="wilson")
    return [float(interval.low), float(interval.high)]


def predicted(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits (N, 10) of ``model`` on x, inference mode, batched."""
    net = logits_model(model)
    return np.concatenate([net(x[i : i + batch_size], training=False).numpy() for i in range(0, len(x), batch_size)]
                          or [np.empty((0, NUM_CLASSES), np.float32)])


def run_apgd(
    model: keras.Model, x: np.ndarray, y: np.ndarray, target: np.ndarray, loss: str, eps: float, n_iter: int,
    rng: np.random.Generator, batch_size: int, attack: Callable[..., Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """APGD (``make_apgd``) from a uniform random start in the eps ball, batched. ``attack``, when
    given, is ``make_apgd(model, loss)``'s function: repeated calls then share one trace.

    Returns (x_adv float32 within eps of x and in [0, 1], fooled bool (N,)).
    """
    import tensorflow as tf

    attack, spans = attack or make_apgd(model, loss), tf.constant(apgd_schedule(n_iter))
    x_adv, fooled = np.empty_like(x, dtype=np.float32), np.zeros(len(x), bool)
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].astype(np.float32, copy=False)
        x0 = np.clip(xb + rng.uniform(-eps, eps, size=xb.shape).astype(np.float32), 0.0, 1.0)
        adv, hit = attack(tf.constant(xb), tf.constant(y[i : i + batch_size], tf.int64),
                          tf.constant(target[i : i + batch_size], tf.int64), tf.constant(x0),
                          tf.constant(eps, tf.float32), spans)
        x_adv[i : i + batch_size], fooled[i : i + batch_size] = adv.numpy(), hit.numpy()
    check_linf_bound(x_adv, x, eps)
    return x_adv, fooled


SQUARE_HALVINGS = np.array([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])  # of a 10,000-iteration run


def square_sizes(n_iter: int, p_init: float = 0.8, side: int = IMAGE_SHAPE[0]) -> np.ndarray:
    """Side of Square's window at each iteration (Andriushchenko et al. 2020, L-inf): the share
    p of pixels changed starts at p_init and halves after iterations 10, 50, 200, 500, 1000,
    2000, 4000, 6000 and 8000 of a 10,000-iteration run (rescaled to n_iter); the side is
    round(sqrt(p * side^2)), between 1 and side - 1. int32 (n_iter,), never increasing."""
    progress = (np.arange(n_iter) * 10000 // max(n_iter, 1)).astype(int)
    p = p_init / 2.0 ** np.searchsorted(SQUARE_HALVINGS, progress, side="left")
    return np.clip(np.round(np.sqrt(p * side * side)), 1, side - 1).astype(np.int32)


def make_square(model: keras.Model) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """A compiled L-inf Square attack (Andriushchenko et al. 2020) on ``model``'s logits, as two
    functions, so that a caller can run the iterations in chunks and report progress.

    ``start(x, eps, seed) -> x_best``: vertical stripes of +-eps. ``steps(x, y, eps, sizes, seed,
    x_best, first, last) -> (x_best, margin)``: iterations first .. last - 1, where iteration k
    moves one random sizes[k]-pixel square window of each still-robust image to a random vertex
    (+eps or -eps; the other sign when the drawn one would not change the image) and keeps the
    move only if the margin z_y - max_{j != y} z_j falls. Iteration k's draws depend on seed and
    k alone, so chunks give the same result as one run. Black-box: only logits are read, one
    query per image and iteration. Stops once every image is misclassified (margin <= 0).
    x_best stays within eps of x and in [0, 1]; the stateless seed (2,) makes it repeatable.
    """
    import tensorflow as tf

    logits_of, side = logits_model(model), IMAGE_SHAPE[0]
    image, seed_spec = tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32), tf.TensorSpec([2], tf.int32)
    scalar, index = tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)

    def margin(x, y):
        z = logits_of(x, training=False)
        others = tf.where(tf.one_hot(y, NUM_CLASSES) > 0, tf.constant(-np.inf, z.dtype), z)
        return tf.gather(z, y, batch_dims=1) - tf.reduce_max(others, axis=1)

    def window(top, left, size):  # (N, side, side, 1) float mask of each image's square
        pos = tf.range(side)[None]
        rows = (pos >= top[:, None]) & (pos < top[:, None] + size)
        cols = (pos >= left[:, None]) & (pos < left[:, None] + size)
        return tf.cast(rows[:, :, None] & cols[:, None, :], tf.float32)[..., None]

    @tf.function(input_signature=[image, scalar, seed_spec])
    def start(x, eps, seed):
        stripes = tf.where(tf.random.stateless_uniform([tf.shape(x)[0], 1, side, 1], seed) < 0.5, -eps, eps)
        return tf.clip_by_value(x + stripes, 0.0, 1.0)

    @tf.function(input_signature=[image, tf.TensorSpec([None], tf.int64), scalar, tf.TensorSpec([None], tf.int32),
                                  seed_spec, image, index, index])
    def steps(x, y, eps, sizes, seed, x_best, first, last):
        n = tf.shape(x)[0]

        def step(k, x_best, best):
            size = sizes[k]
            draw = tf.random.stateless_uniform([n, 3], tf.random.experimental.stateless_fold_in(seed, k))
            corner = tf.cast(tf.floor(draw[:, :2] * tf.cast(side - size + 1, tf.float32)), tf.int32)
            mask = window(corner[:, 0], corner[:, 1], size)
            sign = tf.where(draw[:, 2] < 0.5, -eps, eps)[:, None, None, None]
            same = tf.reduce_all(tf.abs(tf.clip_by_value(x + sign, 0.0, 1.0) - x_best) * mask < 1e-7, axis=[1, 2, 3])
            sign = tf.where(same[:, None, None, None], -sign, sign)
            x_new = x_best * (1.0 - mask) + tf.clip_by_value(x + sign, 0.0, 1.0) * mask
            new = margin(x_new, y)
            better = (new < best) & (best > 0)
            return k + 1, tf.where(better[:, None, None, None], x_new, x_best), tf.where(better, new, best)

        def going(k, x_best, best):
            return (k < last) & tf.reduce_any(best > 0)

        return tf.while_loop(going, step, [first, x_best, margin(x_best, y)])[1:]

    return start, steps


def run_square(model: keras.Model, x: np.ndarray, y: np.ndarray, eps: float, queries: int,
               rng: np.random.Generator, chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Our compiled Square attack (``make_square``; L-inf, black-box, ``queries`` queries per
    image: the stripes, then queries - 1 window moves) on all points in one batch, seeded from
    ``rng``, logging progress every ``chunk`` queries (the result does not depend on chunk).
    Held against ART's SquareAttack in tests/test_autoattack.py.

    Returns (x_adv float32 within eps of x and in [0, 1], fooled bool (N,))."""
    import tensorflow as tf

    if not len(x) or queries < 1:
        return x.astype(np.float32), np.zeros(len(x), bool)
    seed = tf.constant(rng.integers(2**31, size=2), tf.int32)
    start, steps = make_square(model)
    x_t, y_t = tf.constant(x.astype(np.float32, copy=False)), tf.constant(y, tf.int64)
    eps_t, sizes = tf.constant(eps, tf.float32), square_sizes(queries - 1)
    x_best = start(x_t, eps_t, seed)
    for first in range(0, len(sizes), chunk):
        last = min(first + chunk, len(sizes))
        x_best, margins = steps(x_t, y_t, eps_t, tf.constant(sizes), seed, x_best, tf.constant(first),
                                tf.constant(last))
        LOG.info("  Square: %d of %d queries, %d of %d images fooled", last + 1, queries,
                 int((margins.numpy() <= 0).sum()), len(x))
        if (margins.numpy() <= 0).all():
            break
    x_adv = x_best.numpy()
    check_linf_bound(x_adv, x, eps)
    return x_adv, predicted(model, x_adv, 256).argmax(axis=1) != y


def make_ensemble(model: keras.Model) -> dict[str, Callable[..., Any]]:
    """The white-box ensemble's compiled attacks on ``model`` (apgd_ce, apgd_t, fab_t). Built once
    per model and passed to every ``whitebox_ensemble`` call on it, so that all target rounds and
    the stability rerun share one trace each: a trace costs about a second of a tiny run, and
    the iteration count is an argument of the graph, not part of it."""
    return {"apgd_ce": make_apgd(model, "ce"), "apgd_t": make_apgd(model, "dlr-targeted"), "fab_t": make_fab(model)}


def whitebox_ensemble(
    model: keras.Model, x: np.ndarray, y: np.ndarray, eps: float, n_iter: int, targets: int,
    rng: np.random.Generator, batch_size: int, attacks: dict[str, Callable[..., Any]] | None = None,
    restarts: int = 1,
) -> dict[str, np.ndarray]:
    """Clean check, APGD-CE from ``restarts`` random starts, APGD-T (DLR) and FAB-T, each targeted
    run on each of the ``targets`` highest-scoring other classes by the clean logits, each attack
    (and each restart) on the points still robust. ``attacks``: ``make_ensemble(model)``, built here
    when not given. The first start draws from ``rng`` as a single-start run does, so the APGD-CE
    mask of more restarts is a subset of a single start's.
    Returns the robust mask bool (N,) after each attack in turn (clean, apgd_ce, apgd_t, fab_t)."""
    attacks = attacks or make_ensemble(model)
    logits = predicted(model, x, batch_size)
    robust = logits.argmax(axis=1) == y
    masks = {"clean": robust.copy()}
    for start in range(restarts):
        todo = np.flatnonzero(robust)
        robust[todo] &= ~run_apgd(model, x[todo], y[todo], y[todo], "ce", eps, n_iter, rng, batch_size,
                                  attacks["apgd_ce"])[1]
        LOG.info("  APGD-CE (%d iterations, start %d of %d): %d of %d still robust", n_iter, start + 1, restarts,
                 robust.sum(), len(y))
    masks["apgd_ce"] = robust.copy()
    ranked = np.argsort(-np.where(np.eye(NUM_CLASSES, dtype=bool)[y], -np.inf, logits), axis=1, kind="stable")
    targeted_rounds(robust, ranked, targets, "APGD-T (DLR)", lambda idx, target: run_apgd(
        model, x[idx], y[idx], target, "dlr-targeted", eps, n_iter, rng, batch_size, attacks["apgd_t"])[1])
    masks["apgd_t"] = robust.copy()
    targeted_rounds(robust, ranked, targets, "FAB-T", lambda idx, target: run_fab(
        model, x[idx], y[idx], target, eps, n_iter, batch_size, attacks["fab_t"])[1])
    masks["fab_t"] = robust.copy()
    return masks


def targeted_rounds(robust: np.ndarray, ranked: np.ndarray, targets: int, name: str,
                    attack: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    """Run ``attack(indices, target classes) -> fooled`` once per target rank on the points still
    robust, clearing ``robust`` (in place) where it succeeds."""
    for k in range(min(targets, NUM_CLASSES - 1)):
        todo = np.flatnonzero(robust)
        if not len(todo):
            break
        robust[todo] &= ~attack(todo, ranked[todo, k])
        LOG.info("  %s, target %d of %d: %d of %d still robust", name, k + 1, targets, robust.sum(), len(robust))


def accuracies(masks: dict[str, np.ndarray], n: int) -> dict[str, float]:
    """The robust accuracy on the first n points after each attack in turn (cumulative)."""
    return {name: float(mask[:n].mean()) if n else float("nan") for name, mask in masks.items()}


def square_subset(cfg: Config, n: int) -> int:
    """How many of the n attacked points the complete ensemble covers: the first cfg.square_limit
    (0 = all of them), or all n when Square is off (cfg.square_queries 0)."""
    return min(cfg.square_limit, n) if cfg.square_queries and cfg.square_limit else n


def autoattack(
    model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config, rng: np.random.Generator, label: str,
) -> tuple[np.ndarray, dict[str, Any]]:
    """AutoAttack-style robust accuracy of ``model`` on (x, y) at cfg.pgd_eps: the white-box
    ensemble on every point, Square (cfg.square_queries) on the points still robust among the
    first ``square_subset`` of them, then the attack-failure checks (``failure_checks``).

    Returns (robust bool (n,), {robust_accuracy, ci95, n, per_attack, time_s, checks, ...}), every
    figure on the same first n points: robust means surviving every attack (worst case per
    point), and per_attack holds the accuracy after each attack in turn (cumulative, as
    AutoAttack reports it). When n is below len(y), ``whitebox_all`` holds the white-box attacks'
    figures on all points, an upper bound kept apart from the headline.
    """
    start, attacks = time.perf_counter(), make_ensemble(model)
    masks = whitebox_ensemble(model, x, y, cfg.pgd_eps, cfg.autoattack_iters, cfg.autoattack_targets, rng,
                              cfg.attack_batch_size, attacks, cfg.autoattack_restarts)
    n = square_subset(cfg, len(y))
    robust = masks["fab_t"][:n].copy()
    if cfg.square_queries:
        todo = np.flatnonzero(robust)
        LOG.info("  Square (%d queries) on the %d of the first %d images still robust", cfg.square_queries, len(todo), n)
        robust[todo] &= ~run_square(model, x[todo], y[todo], cfg.pgd_eps, cfg.square_queries, rng)[1]
        masks["square"] = np.concatenate([robust, masks["fab_t"][n:]])
    correct = int(robust.sum())
    info: dict[str, Any] = {"robust_accuracy": correct / n if n else float("nan"), "ci95": wilson_ci95(correct, n),
                            "n": int(n), "per_attack": accuracies(masks, n)}
    if n < len(y):
        white = {name: mask for name, mask in masks.items() if name != "square"}
        info["whitebox_all"] = {"n": int(len(y)), "robust_accuracy": float(white["fab_t"].mean()),
                                "ci95": wilson_ci95(int(white["fab_t"].sum()), len(y)),
                                "per_attack": accuracies(white, len(y))}
    info["time_s"] = round(time.perf_counter() - start, 3)
    LOG.info("AutoAttack %s: robust accuracy %.4f on %d images (APGD-CE %.4f, APGD-T %.4f, FAB-T %.4f) in %.1f s",
             label, info["robust_accuracy"], n, info["per_attack"]["apgd_ce"], info["per_attack"]["apgd_t"],
             info["per_attack"]["fab_t"], info["time_s"])
    info["checks"] = failure_checks(model, x, y, masks["fab_t"], cfg, rng, attacks)
    return robust, info


def failure_checks(
    model: keras.Model, x: np.ndarray, y: np.ndarray, whitebox: np.ndarray, cfg: Config, rng: np.random.Generator,
    attacks: dict[str, Callable[..., Any]] | None = None,
) -> dict[str, Any]:
    """The share of points with an all-zero input gradient, and the white-box ensemble rerun with
    twice the iterations on the first cfg.stability_limit points (``whitebox`` is the first run's
    robust mask; ``attacks`` the first run's ``make_ensemble``): a robust accuracy that still
    moves has not converged."""
    n = min(cfg.stability_limit, len(y))
    double = whitebox_ensemble(model, x[:n], y[:n], cfg.pgd_eps, 2 * cfg.autoattack_iters,
                               cfg.autoattack_targets, rng, cfg.attack_batch_size, attacks,
                               cfg.autoattack_restarts)["fab_t"]
    return {"zero_gradient_share": zero_gradient_share(model, x, y, cfg.attack_batch_size),
            "stability": {"n": int(n), "iterations": [cfg.autoattack_iters, 2 * cfg.autoattack_iters],
                          "accuracy": [float(whitebox[:n].mean()), float(double.mean())] if n else []}}


def zero_gradient_share(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """Share of points whose input gradient of the cross-entropy (on logits) is exactly zero:
    a gradient-masking symptom (Pintor et al. 2022)."""
    import tensorflow as tf

    net, zero = logits_model(model), 0
    for i in range(0, len(x), batch_size):
        xb = tf.constant(x[i : i + batch_size].astype(np.float32))
        with tf.GradientTape() as tape:
            tape.watch(xb)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                tf.constant(y[i : i + batch_size], tf.int64), net(xb, training=False)))
        grad = tape.gradient(loss, xb).numpy().reshape(len(xb), -1)
        zero += int(np.sum(~np.any(grad != 0, axis=1)))
    return zero / len(x) if len(x) else float("nan")

