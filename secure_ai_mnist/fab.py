"""FAB-T: the targeted Fast Adaptive Boundary attack, L-inf (Croce and Hein 2020, ICML), compiled.

FAB looks for the smallest L-inf perturbation that changes the label. At each iteration it
linearizes the boundary between the true class y and the target t at the current point, projects
both the current point and the original image onto that hyperplane (inside the [0, 1] box, the
exact L-inf projection), and moves to a mix of the two projections, overshooting by ``ETA``;
once a point is misclassified it steps back towards the original image (``BETA``), so later
iterations shrink the perturbation. A point counts as broken at eps only if a misclassified
point within eps of it is found. Held against SciPy's linear-programming solver in the tests: on
an affine classifier the minimal distance is an LP, which FAB must meet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .attacks import check_linf_bound, logits_model
from .common import IMAGE_SHAPE

if TYPE_CHECKING:
    import keras

ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9  # the paper's and AutoAttack's defaults


def linf_projection(x: Any, w: Any, c: Any) -> Any:
    """The smallest L-inf step d with <w, d> = c and x + d in [0, 1] (TensorFlow, per row).

    x, w: (N, D); c: (N,). Moving pixel i by up to t in the direction of w's sign gains
    |w_i| min(t, room_i), where room_i is the distance to the box edge on that side; the gain is
    piecewise linear in t, so sorting the rooms gives the least t. Where no step in the box
    reaches the hyperplane, every pixel moves to its edge (the closest the box allows).
    """
    import tensorflow as tf

    flip = tf.where(c < 0, -1.0, 1.0)[:, None]  # so that the step always has to gain c >= 0
    w, c = w * flip, tf.abs(c)
    room = tf.where(w > 0, 1.0 - x, x)
    order = tf.argsort(room, axis=1)
    r, a = tf.gather(room, order, batch_dims=1), tf.gather(tf.abs(w), order, batch_dims=1)
    below_ar = tf.cumsum(a * r, axis=1, exclusive=True)  # gain of the pixels already at their edge
    below_a = tf.cumsum(a, axis=1, exclusive=True)
    rest = tf.reduce_sum(a, axis=1, keepdims=True) - below_a  # weight of the pixels still moving
    gain_at = below_ar + r * rest  # the gain when t equals each sorted room
    reached = gain_at >= c[:, None]
    k = tf.argmax(tf.cast(reached, tf.int32), axis=1, output_type=tf.int32)
    t = (c - tf.gather(below_ar, k, batch_dims=1)) / tf.maximum(tf.gather(rest, k, batch_dims=1), 1e-12)
    t = tf.where(tf.reduce_any(reached, axis=1), t, tf.reduce_max(room, axis=1))
    return tf.sign(w) * tf.minimum(t[:, None], room)


def make_fab(model: keras.Model) -> Callable[..., Any]:
    """A compiled targeted L-inf FAB on ``model``'s logits, inference mode.

    ``fab(x, y, target, eps, n_iter) -> (x_best, norm_best)``: for each image the misclassified
    point with the smallest L-inf distance found in n_iter iterations (the image itself and inf
    when none), in [0, 1]. Each iteration costs one gradient and one extra forward pass. It stops
    early once every image has a misclassified point within eps (eps 0: run every iteration).
    """
    import tensorflow as tf

    logits_of = logits_model(model)
    image, label = tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32), tf.TensorSpec([None], tf.int64)

    def gap_and_grad(x, y, target):  # g = z_t - z_y: the label changes to t where g > 0
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = logits_of(x, training=False)
            gap = tf.gather(z, target, batch_dims=1) - tf.gather(z, y, batch_dims=1)
            total = tf.reduce_sum(gap)  # inside the tape: each row's gradient is its own
        return gap, tf.reshape(tape.gradient(total, x), [tf.shape(x)[0], -1])

    def misclassified(x, y):
        return tf.argmax(logits_of(x, training=False), axis=1) != y

    @tf.function(input_signature=[image, label, label, tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)])
    def fab(x, y, target, eps, n_iter):
        flat = tf.reshape(x, [tf.shape(x)[0], -1])
        broken = misclassified(x, y)
        best = tf.where(broken, 0.0, np.inf)
        x_best, x_k = flat, flat
        for _ in tf.range(n_iter):
            if tf.logical_and(eps > 0, tf.reduce_all(best <= eps)):
                break
            gap, grad = gap_and_grad(tf.reshape(x_k, tf.shape(x)), y, target)
            to_plane = -gap  # <grad, d> needed from x_k to reach the linearized boundary
            step_k = linf_projection(x_k, grad, to_plane)
            step_0 = linf_projection(flat, grad, to_plane - tf.reduce_sum(grad * (flat - x_k), axis=1))
            size_k, size_0 = tf.reduce_max(tf.abs(step_k), axis=1), tf.reduce_max(tf.abs(step_0), axis=1)
            alpha = tf.minimum(size_k / tf.maximum(size_k + size_0, 1e-12), ALPHA_MAX)[:, None]
            x_new = tf.clip_by_value((1.0 - alpha) * (x_k + ETA * step_k) + alpha * (flat + ETA * step_0), 0.0, 1.0)
            fooled = misclassified(tf.reshape(x_new, tf.shape(x)), y)
            norm = tf.reduce_max(tf.abs(x_new - flat), axis=1)
            better = fooled & (norm < best)
            x_best = tf.where(better[:, None], x_new, x_best)
            best = tf.where(better, norm, best)
            x_k = tf.where(fooled[:, None], (1.0 - BETA) * flat + BETA * x_new, x_new)
        return tf.reshape(x_best, tf.shape(x)), best
    return fab


def run_fab(
    model: keras.Model, x: np.ndarray, y: np.ndarray, target: np.ndarray, eps: float, n_iter: int, batch_size: int,
    attack: Callable[..., Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAB-T (``make_fab``) from the clean images (AutoAttack's standard setting: one run, no
    random start), batched; ``attack``, when given, is ``make_fab(model)``'s function (one trace
    for repeated calls). Returns (x_adv float32 within eps of x and in [0, 1], fooled bool
    (N,), the smallest L-inf distance found (N,), inf where none): x_adv is FAB's point pulled
    into the eps ball, and fooled says the model misclassifies it."""
    import tensorflow as tf

    attack = attack or make_fab(model)
    x_adv, norms = np.empty_like(x, dtype=np.float32), np.full(len(x), np.inf, np.float32)
    fooled = np.zeros(len(x), bool)
    net = logits_model(model)
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].astype(np.float32, copy=False)
        best, norm = attack(tf.constant(xb), tf.constant(y[i : i + batch_size], tf.int64),
                            tf.constant(target[i : i + batch_size], tf.int64), tf.constant(eps, tf.float32),
                            tf.constant(n_iter, tf.int32))
        inside = np.clip(xb + np.clip(best.numpy() - xb, -eps, eps), 0.0, 1.0)
        x_adv[i : i + batch_size], norms[i : i + batch_size] = inside, norm.numpy()
        fooled[i : i + batch_size] = net(inside, training=False).numpy().argmax(axis=1) != y[i : i + batch_size]
    check_linf_bound(x_adv, x, eps)
    return x_adv, fooled, norms
